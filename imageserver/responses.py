"""How the server answers: JSON bodies (DECISIONS D2) and cacheable files (D12)."""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any

from twisted.web import http, static
from twisted.web.iweb import IRequest
from twisted.web.server import Request

from imageserver import mime
from imageserver.names import cache_control, is_generated

JSON_TYPE = b"application/json; charset=UTF-8"
# A well-formed ``Range`` header: one or more byte ranges, ``first-[last]`` or ``-suffix``.
BYTE_RANGES = re.compile(rb"bytes=[ \t]*(?:\d+-\d*|-\d+)(?:[ \t]*,[ \t]*(?:\d+-\d*|-\d+))*[ \t]*")
# Files up to this size are read in one go; larger ones stream (the size of static.File's reads).
WHOLE_FILE_BYTES = 64 * 1024


def json_body(request: IRequest, status: int, body: Any) -> bytes:
    """Pretty JSON with a trailing newline, as the Go server writes it, and its length."""
    data = json.dumps(body, indent=2).encode() + b"\n"
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", JSON_TYPE)
    request.setHeader(b"Content-Length", b"%d" % len(data))
    return data


def error_body(request: IRequest, status: int, message: str, code: str) -> bytes:
    return json_body(request, status, {"error": message, "code": code})


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


class CachedFile(static.File):
    """A stored file with ``ETag``, ``Last-Modified`` and ``Cache-Control``.

    `static.File` answers ``Range`` and streams large files from disk with a producer; this adds
    the validator and the caching headers, sends a small file in one write, ignores unreadable
    conditional headers, and keeps content that a browser could run (HTML, SVG) from being shown
    inline.
    """

    def __init__(self, path: str, relative: str, content_type: str) -> None:
        super().__init__(path, defaultType=content_type)
        name = relative.rpartition("/")[2]
        self.inline = content_type in mime.INLINE_TYPES
        served_type = content_type if self.inline else "application/octet-stream"
        self.type = served_type  # type: ignore[assignment]
        self.type_header = served_type.encode()
        self.encoding = None
        self.cache_control = cache_control(name).encode()
        self.identity = relative if is_generated(name) else None

    def render_GET(self, request: Request) -> bytes | int:
        stat = os.stat(self.path)
        tag = entity_tag(stat, self.identity)
        request.setHeader(b"ETag", tag)
        request.setHeader(b"Cache-Control", self.cache_control)
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        if not self.inline:
            request.setHeader(b"Content-Disposition", b"attachment")
        if_none_match = request.getHeader(b"If-None-Match")
        if if_none_match:
            if _matches(if_none_match, tag):
                request.setResponseCode(http.NOT_MODIFIED)
                request.setLastModified(stat.st_mtime)
                return b""
            # RFC 9110 §13.1.3: with If-None-Match present, If-Modified-Since is ignored.
            request.requestHeaders.removeHeader(b"If-Modified-Since")
        _ignore_unreadable(request)
        if stat.st_size > WHOLE_FILE_BYTES or request.getHeader(b"Range") is not None:
            result: bytes | int = super().render_GET(request)  # streamed, or a range of it
            return result
        return self._whole(request, stat)

    def _whole(self, request: Request, stat: os.stat_result) -> bytes:
        """A small file in one write: `static.File` would take two turns of the reactor for it."""
        request.setHeader(b"Accept-Ranges", b"bytes")
        if request.setLastModified(stat.st_mtime) is http.CACHED:
            return b""
        request.setHeader(b"Content-Type", self.type_header)
        if request.method == b"HEAD":
            request.setHeader(b"Content-Length", b"%d" % stat.st_size)
            return b""
        with open(self.path, "rb") as stored:
            return stored.read()

    render_HEAD = render_GET


def _ignore_unreadable(request: Request) -> None:
    """Drop a ``Range`` or ``If-Modified-Since`` that does not parse, as RFC 9110 says to ignore
    them (§14.2, §13.1.3); Twisted would fail on some with a 500."""
    byte_range = request.getHeader(b"Range")
    if byte_range is not None and not BYTE_RANGES.fullmatch(byte_range):
        request.requestHeaders.removeHeader(b"Range")
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
