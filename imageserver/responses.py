"""How the server answers: JSON bodies (DECISIONS D2) and cacheable files (D12)."""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.web import http, static
from twisted.web.iweb import IRequest
from twisted.web.server import Request

# Variants are immutable: a name always means the same pixels of the same original.
IMMUTABLE = b"public, max-age=31536000, immutable"
JSON_TYPE = b"application/json; charset=UTF-8"


def json_body(request: IRequest, status: int, body: Any) -> bytes:
    """Pretty JSON with a trailing newline, as the Go server writes it."""
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", JSON_TYPE)
    return json.dumps(body, indent=2).encode() + b"\n"


def error_body(request: IRequest, status: int, message: str, code: str) -> bytes:
    return json_body(request, status, {"error": message, "code": code})


def entity_tag(stat: os.stat_result) -> bytes:
    """A strong validator from size and modification time: it changes whenever the file does."""
    return b'"%x-%x"' % (stat.st_size, stat.st_mtime_ns)


class CachedFile(static.File):
    """A stored file with ``ETag``, ``Last-Modified`` and a year-long immutable ``Cache-Control``.

    `static.File` already answers ``Range``, ``HEAD`` and ``If-Modified-Since`` and streams from
    disk with a producer; this adds the validator and the caching headers.
    """

    def __init__(self, path: str, content_type: str) -> None:
        super().__init__(path, defaultType=content_type)
        self.type = content_type  # type: ignore[assignment]
        self.encoding = None

    def render_GET(self, request: Request) -> bytes | int:
        stat = os.stat(self.path)
        tag = entity_tag(stat)
        request.setHeader(b"ETag", tag)
        request.setHeader(b"Cache-Control", IMMUTABLE)
        if _matches(request.getHeader(b"If-None-Match"), tag):
            request.setResponseCode(http.NOT_MODIFIED)
            request.setLastModified(stat.st_mtime)
            return b""
        result: bytes | int = super().render_GET(request)
        return result

    render_HEAD = render_GET


def _matches(if_none_match: bytes | None, tag: bytes) -> bool:
    """``If-None-Match`` against our tag: a comma list, weak tags compared weakly, or ``*``."""
    if not if_none_match:
        return False
    candidates = (candidate.strip() for candidate in if_none_match.split(b","))
    return any(c == b"*" or c.removeprefix(b"W/") == tag for c in candidates)
