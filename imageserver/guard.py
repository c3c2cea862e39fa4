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

    def render(self, request: Request) -> bytes | int:
        method = request.method.decode("ascii", "replace")
        path = unquote(request.path.decode("utf-8", "replace"))
        if should_validate(method, path, True, self.for_reads):
            _, _, raw_query = request.uri.decode("utf-8", "replace").partition("?")
            query = {name: values[0] for name, values in parse_qs(raw_query).items()}
            try:
                self.validator.validate(method, path, query)
            except SignatureError as error:
                request.setResponseCode(401)
                request.setHeader(b"Content-Type", b"application/json")
                body = {"error": error.code, "message": error.message}
                return json.dumps(body, separators=(",", ":")).encode() + b"\n"
        rendered: bytes | int = self.wrapped.render(request)
        return rendered
