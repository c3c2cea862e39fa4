"""How the server answers: JSON bodies and cacheable files (docs/api.md#errors, #caching)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
from typing import Any, BinaryIO

from twisted.web import http
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from imageserver import mime, ranges
from imageserver.errors import NotFound, Overloaded
from imageserver.names import cache_control, is_generated
from imageserver.ranges import Span

JSON_TYPE = b"application/json; charset=UTF-8"
# Files up to this size are read in one go; larger ones stream, this much at a time.
WHOLE_FILE_BYTES = 64 * 1024


def json_bytes(body: Any) -> bytes:
    """Pretty JSON with a trailing newline, as the Go server writes it."""
    return json.dumps(body, indent=2).encode() + b"\n"


def error_bytes(message: str, code: str) -> bytes:
    """The body of every error answer."""
    return json_bytes({"error": message, "code": code})


def json_body(request: IRequest, status: int, body: Any) -> bytes:
    """`json_bytes` as the answer, with its status, type and length."""
    data = json_bytes(body)
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", JSON_TYPE)
    request.setHeader(b"Content-Length", b"%d" % len(data))
    return data


def error_body(request: IRequest, status: int, message: str, code: str) -> bytes:
    data = error_bytes(message, code)
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", JSON_TYPE)
    request.setHeader(b"Content-Length", b"%d" % len(data))
    return data


def entity_tag(stat: os.stat_result, identity: str | None) -> bytes:
    """A strong validator.

    A generated file (``identity``: its relative path) is the same bytes on every instance, so its
    tag is made of its path and size, and a CDN revalidating against another instance gets its 304.
    Anything else changes with its modification time.
    """
    if identity is not None:
        digest = hashlib.md5(f"{identity}:{stat.st_size}".encode()).hexdigest()[:20]
        return f'"{digest}"'.encode()
    return b'"%x-%x"' % (stat.st_size, stat.st_mtime_ns)


class CachedFile(Resource):
    """A stored file with ``ETag``, ``Last-Modified``, ``Cache-Control`` and ``Range``.

    A small file goes out in one write; a larger one, or any range of one, streams from disk
    through `_SegmentProducer`, which stops and closes the file when the client leaves.
    Conditional headers that do not parse are ignored, and content that a browser could run
    (HTML, SVG) is never shown inline.
    """

    isLeaf = True

    def __init__(self, path: str, relative: str, content_type: str | None = None) -> None:
        """``content_type``: the file's type when it is known already (an original's, from its
        ``info.json``), which spares reading its first bytes; else found from its name or bytes."""
        super().__init__()
        self.path = path
        self.relative = relative
        self.content_type = content_type
        self.name = relative.rpartition("/")[2]
        self.cache_control = cache_control(self.name).encode()
        self.identity = relative if is_generated(self.name) else None
        self.extra_headers: dict[bytes, bytes] = {}

    def render_GET(self, request: Request) -> bytes | int:
        try:
            stored = open(self.path, "rb")  # noqa: SIM115  # closed below or by the producer
        except FileNotFoundError:  # removed since it was found (the collector)
            raise NotFound(f"{self.relative} does not exist") from None
        except OSError as error:
            if error.errno in (errno.EMFILE, errno.ENFILE):
                raise Overloaded("too many open files: try again shortly") from None
            raise
        try:
            return self._answer(request, stored)
        except BaseException:
            stored.close()
            raise

    render_HEAD = render_GET

    def _answer(self, request: Request, stored: BinaryIO) -> bytes | int:
        # The open file's own size and date: an attachment replaced meanwhile is a new file.
        stat = os.fstat(stored.fileno())
        content_type = self.content_type or mime.content_type_of_open(self.name, stored)
        inline = content_type in mime.INLINE_TYPES
        served_type = (content_type if inline else "application/octet-stream").encode()
        tag = entity_tag(stat, self.identity)
        request.setHeader(b"ETag", tag)
        request.setHeader(b"Cache-Control", self.cache_control)
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        request.setHeader(b"Accept-Ranges", b"bytes")
        for header, value in self.extra_headers.items():
            request.setHeader(header, value)
        if not inline:
            request.setHeader(b"Content-Disposition", b"attachment")
        if_none_match = request.getHeader(b"If-None-Match")
        if if_none_match:
            if _matches(if_none_match, tag):
                request.setResponseCode(http.NOT_MODIFIED)
                request.setLastModified(stat.st_mtime)
                stored.close()
                return b""
            # RFC 9110 §13.1.3: with If-None-Match present, If-Modified-Since is ignored.
            request.requestHeaders.removeHeader(b"If-Modified-Since")
        _ignore_unreadable_date(request)
        if request.setLastModified(stat.st_mtime) is http.CACHED:
            stored.close()
            return b""
        segments = self._segments(request, stat, tag, served_type)
        if segments is None:
            stored.close()
            return b""
        request.setHeader(b"Content-Length", b"%d" % ranges.body_length(segments))
        if request.method == b"HEAD":
            stored.close()
            return b""
        if stat.st_size <= WHOLE_FILE_BYTES and len(segments) <= 1:
            # A small file, or one range of it, in one write, without a producer's turns of the
            # reactor.
            with stored:
                return _SegmentProducer.read_all(stored, segments)
        _SegmentProducer(request, stored, segments).start()
        return NOT_DONE_YET

    def _segments(
        self, request: Request, stat: os.stat_result, tag: bytes, served_type: bytes
    ) -> list[bytes | Span] | None:
        """What the body is made of, with the status and type set; None for a 416."""
        size = stat.st_size
        header = request.getHeader(b"Range")
        if header is not None and not _if_range_holds(request, tag, stat):
            header = None
        spans = ranges.requested_spans(header, size)
        if spans is None:
            request.setHeader(b"Content-Type", served_type)
            return [Span(0, size - 1)] if size else []
        if not spans:
            request.setResponseCode(http.REQUESTED_RANGE_NOT_SATISFIABLE)
            request.setHeader(b"Content-Range", b"bytes */%d" % size)
            request.setHeader(b"Content-Length", b"0")
            return None
        request.setResponseCode(http.PARTIAL_CONTENT)
        if len(spans) == 1:
            request.setHeader(b"Content-Type", served_type)
            request.setHeader(b"Content-Range", spans[0].content_range(size))
            return list(spans)
        framing = ranges.Multipart(secrets.token_hex(16).encode(), served_type, size)
        request.setHeader(b"Content-Type", framing.content_type)
        return framing.segments(spans)


class _SegmentProducer:
    """Writes framing and spans of an open file to a request, 64 KiB at a time as it is asked.

    A pull producer: the transport asks for more only once it has sent what it had, so a slow
    client holds one buffer, not the file.  It closes the file when done or when the client leaves.
    """

    def __init__(
        self, request: Request | None, stored: BinaryIO, segments: list[bytes | Span]
    ) -> None:
        self.request: Request | None = request
        self.stored = stored
        self.segments = iter(segments)
        self.current: bytes | Span | None = next(self.segments, None)
        self.sent = 0  # of the current span

    def start(self) -> None:
        assert self.request is not None
        self.request.notifyFinish().addErrback(lambda _: self.stopProducing())
        self.request.registerProducer(self, False)

    def resumeProducing(self) -> None:
        request = self.request
        if request is None:
            return
        chunk = self._next_chunk()
        if chunk:
            request.write(chunk)  # may come back here re-entrantly: everything is updated before
        elif self.request is not None:
            self.request = None
            request.unregisterProducer()
            request.finish()
            self.stored.close()

    @staticmethod
    def read_all(stored: BinaryIO, segments: list[bytes | Span]) -> bytes:
        """The whole body at once, for one that fits in a buffer."""
        producer = _SegmentProducer(None, stored, segments)
        return producer._next_chunk()

    def _next_chunk(self) -> bytes:
        """Up to one buffer of what comes next; b"" once everything has been written."""
        parts: list[bytes] = []
        room = WHOLE_FILE_BYTES
        while room > 0 and self.current is not None:
            if isinstance(self.current, bytes):
                parts.append(self.current)
                room -= len(self.current)
                self.current = next(self.segments, None)
                continue
            span = self.current
            self.stored.seek(span.first + self.sent)
            data = self.stored.read(min(room, span.length - self.sent))
            if not data:  # the file is shorter than it was: end the answer short
                self.current = None
                break
            parts.append(data)
            room -= len(data)
            self.sent += len(data)
            if self.sent == span.length:
                self.current, self.sent = next(self.segments, None), 0
        return b"".join(parts)

    def pauseProducing(self) -> None:
        pass  # a pull producer is only asked when there is room

    def stopProducing(self) -> None:
        self.request = None
        self.stored.close()


def _if_range_holds(request: Request, tag: bytes, stat: os.stat_result) -> bool:
    """Whether a ``Range`` still applies under ``If-Range`` (RFC 9110 §13.1.5): the file must be
    the one the client has part of, named by its strong tag or its exact date."""
    condition = request.getHeader(b"If-Range")
    if condition is None:
        return True
    condition = condition.strip()
    if condition.startswith((b'"', b"W/")):
        return condition == tag
    try:
        return http.stringToDatetime(condition) == int(stat.st_mtime)
    except (ValueError, IndexError):
        return False


def _ignore_unreadable_date(request: Request) -> None:
    """Drop an ``If-Modified-Since`` that does not parse, as RFC 9110 §13.1.3 says to ignore it;
    Twisted's parser fails on some with IndexError, a 500."""
    since = request.getHeader(b"If-Modified-Since")
    if since is not None:
        try:
            http.stringToDatetime(since.split(b";", 1)[0])
        except (ValueError, IndexError):
            request.requestHeaders.removeHeader(b"If-Modified-Since")


def _matches(if_none_match: bytes | None, tag: bytes) -> bool:
    """``If-None-Match`` against our tag: a comma list, weak tags compared weakly, or ``*``."""
    if not if_none_match:
        return False
    candidates = (candidate.strip() for candidate in if_none_match.split(b","))
    return any(c == b"*" or c.removeprefix(b"W/") == tag for c in candidates)
