"""The signature check in front of the main site (docs/api.md#signed-urls).

It wraps the whole site, so no route, and no stored file, is reached unsigned: the Go server's
static handler served existing files before its check, which made read signatures optional in
practice (docs/api.md#go-differences).
"""

from __future__ import annotations

import json
from urllib.parse import parse_qs, unquote

from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

from imageserver.signature import SignatureError, Validator, should_validate


def is_signed(validator: Validator, request: IRequest) -> bool:
    """Whether a request carries a valid signature, required or not."""
    try:
        validator.validate(*_signed_parts(request.method, request.uri))
    except SignatureError:
        return False
    return True


def _signed_parts(method: bytes, uri: bytes) -> tuple[str, str, dict[str, str]]:
    """The method, the decoded path and the query (the first value of each parameter, blank
    ones included, as Go's ``Query().Get``) that a signature covers."""
    raw_path, _, raw_query = uri.decode("utf-8", "surrogateescape").partition("?")
    path = unquote(raw_path, errors="surrogateescape")
    parsed = parse_qs(raw_query, keep_blank_values=True, errors="surrogateescape")
    query = {name: values[0] for name, values in parsed.items()}
    return method.decode("ascii", "replace"), path, query


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
        text_method, path, query = _signed_parts(method, uri)
        if should_validate(text_method, path, self.for_reads):
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
