"""The signature check in front of the main site (DECISIONS D14).

It wraps the whole site, so no route, and no stored file, is reached unsigned: the Go server's
static handler served existing files before its check, which made read signatures optional in
practice (SPEC §15 #13).
"""

from __future__ import annotations

import json
from urllib.parse import parse_qs, unquote

from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

from imageserver.signature import SignatureError, Validator, should_validate


class SignatureGuard(Resource):
    """Answers 401 with the Go server's JSON body unless the request is signed."""

    isLeaf = True

    def __init__(self, wrapped: IResource, validator: Validator, for_reads: bool) -> None:
        super().__init__()
        self.wrapped = wrapped
        self.validator = validator
        self.for_reads = for_reads

    def check(self, method: bytes, uri: bytes) -> None:
        """Raise `SignatureError` unless a request for ``uri`` may go through."""
        text_method = method.decode("ascii", "replace")
        raw_path, _, raw_query = uri.decode("utf-8", "surrogateescape").partition("?")
        path = unquote(raw_path, errors="surrogateescape")
        if should_validate(text_method, path, self.for_reads):
            # The first value of each parameter, blank ones included, as Go's Query().Get.
            parsed = parse_qs(raw_query, keep_blank_values=True, errors="surrogateescape")
            query = {name: values[0] for name, values in parsed.items()}
            self.validator.validate(text_method, path, query)

    def refuses(self, method: bytes, uri: bytes) -> bool:
        """Whether the request will be refused: its body need not be kept."""
        try:
            self.check(method, uri)
        except SignatureError:
            return True
        return False

    def render(self, request: Request) -> bytes | int:
        try:
            self.check(request.method, request.uri)
        except SignatureError as error:
            request.setResponseCode(401)
            request.setHeader(b"Content-Type", b"application/json")
            body = {"error": error.code, "message": error.message}
            return json.dumps(body, separators=(",", ":")).encode() + b"\n"
        rendered: bytes | int = self.wrapped.render(request)
        return rendered
