"""``Range`` headers read into the byte spans to send, bounded whatever the client writes.

Pure: a header and a file size in, spans out.  Twisted's own range support sends overlapping
ranges once each (a 400-byte header could ask for a hundred copies of a file) and fails on some
multipart answers, leaving the connection open; here ranges are sorted and merged, and a header
asking for more than `MAX_RANGES` is ignored, as nginx's ``max_ranges`` does, so the bytes sent
never exceed the file plus the multipart framing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# More ranges than this in one header and the whole file is sent instead (200).
MAX_RANGES = 16
# A well-formed ``Range`` header: one or more byte ranges, ``first-[last]`` or ``-suffix``.
BYTE_RANGES = re.compile(rb"bytes=[ \t]*(?:\d+-\d*|-\d+)(?:[ \t]*,[ \t]*(?:\d+-\d*|-\d+))*[ \t]*")
_SPEC = re.compile(rb"(\d*)-(\d*)")
# Positions longer than this are beyond any file (and beyond what ``int`` parses quickly).
_MAX_DIGITS = 18


@dataclass(frozen=True)
class Span:
    """Bytes ``first`` to ``last`` of a file, both included."""

    first: int
    last: int

    @property
    def length(self) -> int:
        return self.last - self.first + 1

    def content_range(self, size: int) -> bytes:
        return b"bytes %d-%d/%d" % (self.first, self.last, size)


def requested_spans(header: bytes | None, size: int) -> list[Span] | None:
    """The spans a ``Range`` header asks of a file of ``size`` bytes, sorted and merged.

    None: send the whole file (no header, one that does not parse, or too many ranges: RFC 9110
    §14.2 lets a server ignore ``Range``).  An empty list: nothing asked for is inside the file
    (416).
    """
    if header is None or not BYTE_RANGES.fullmatch(header):
        return None
    specs = header.partition(b"=")[2].split(b",")
    if len(specs) > MAX_RANGES:
        return None
    spans = []
    for spec in specs:
        found = _SPEC.fullmatch(spec.strip())
        assert found is not None  # BYTE_RANGES has checked every one
        first, last = found.groups()
        if not first:  # ``-N``: the last N bytes
            suffix = _position(last)
            if suffix > 0 and size > 0:
                spans.append(Span(max(size - suffix, 0), size - 1))
            continue
        start = _position(first)
        end = _position(last) if last else size - 1
        if last and end < start:
            return None  # not a range at all: the header is ignored
        if start < size:
            spans.append(Span(start, min(end, size - 1)))
    return merge(spans)


def merge(spans: list[Span]) -> list[Span]:
    """Spans in file order, those that overlap or touch made one."""
    merged: list[Span] = []
    for span in sorted(spans, key=lambda s: s.first):
        if merged and span.first <= merged[-1].last + 1:
            merged[-1] = Span(merged[-1].first, max(merged[-1].last, span.last))
        else:
            merged.append(span)
    return merged


def _position(digits: bytes) -> int:
    if len(digits) > _MAX_DIGITS:
        return 10**_MAX_DIGITS
    return int(digits)


@dataclass(frozen=True)
class Multipart:
    """The framing of a ``multipart/byteranges`` answer (RFC 9110 §14.6)."""

    boundary: bytes
    part_type: bytes
    size: int

    @property
    def content_type(self) -> bytes:
        return b"multipart/byteranges; boundary=" + self.boundary

    def head(self, span: Span, first: bool) -> bytes:
        """What comes before a part's bytes."""
        return (
            b"" if first else b"\r\n"
        ) + b"--%s\r\nContent-Type: %s\r\nContent-Range: %s\r\n\r\n" % (
            self.boundary,
            self.part_type,
            span.content_range(self.size),
        )

    @property
    def tail(self) -> bytes:
        return b"\r\n--%s--\r\n" % self.boundary

    def segments(self, spans: list[Span]) -> list[bytes | Span]:
        """The whole body, in order: framing as bytes, file contents as spans."""
        body: list[bytes | Span] = []
        for index, span in enumerate(spans):
            body += [self.head(span, first=index == 0), span]
        body.append(self.tail)
        return body


def body_length(segments: list[bytes | Span]) -> int:
    return sum(len(s) if isinstance(s, bytes) else s.length for s in segments)
