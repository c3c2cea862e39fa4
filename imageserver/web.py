"""The main site (SPEC §3, §4): upload, variants, batches, attachments and ``/status_check``.

Handlers only translate HTTP to `Images` calls and back; every failure becomes a JSON error through
one handler (DECISIONS D2).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs

from klein import Klein
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from werkzeug.exceptions import HTTPException

from imageserver import mime, paths
from imageserver.errors import BodyTooLarge, ImageServerError, NotFound, Overloaded
from imageserver.events import RequestTimed
from imageserver.images import Images
from imageserver.lifecycle import Lifecycle
from imageserver.names import split_outputs
from imageserver.responses import CachedFile, error_body, json_body
from imageserver.site import Oversized
from imageserver.spool import Spool

log = Logger()

IMAGE = "/<namespace>/<p1>/<p2>/<p3>/<p4>"
# What an overloaded server tells clients to wait before trying again.
RETRY_AFTER_SECONDS = 1
# As in the Go router, POST /status_check is an upload to the namespace "status_check".
HEALTH_METHODS = ["GET", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS"]


class MainApp:
    """Routes of the main site, bound to one `Images`."""

    app = Klein()

    def __init__(
        self,
        images: Images,
        lifecycle: Lifecycle,
        allowed_extensions: frozenset[str],
        default_outputs: tuple[str, ...] = (),
    ) -> None:
        self.images = images
        self.lifecycle = lifecycle
        self.allowed_extensions = allowed_extensions
        self.default_outputs = default_outputs

    def resource(self) -> IResource:
        return self.app.resource()

    @contextmanager
    def _timed(self, handler: str) -> Iterator[None]:
        """Time a handler for Prometheus and statsd (whether it succeeds or not)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - started
            self.images.metrics.latency.labels(handler).observe(seconds)
            self.images.events.emit(RequestTimed(handler, seconds))

    @app.route("/status_check", methods=HEALTH_METHODS)
    def status_check(self, request: IRequest) -> bytes:
        status, message = self.lifecycle.health()
        return json_body(request, status, {"message": message})

    @app.route("/<namespace>", methods=["POST"])
    async def upload(self, request: IRequest, namespace: str) -> bytes:
        metrics = self.images.metrics
        metrics.new_image.inc()
        with self._timed("new_image"):
            try:
                source = _argument(request, "source")
                if source:
                    details = await self.images.ingest_url(namespace, source)
                else:
                    details = await self.images.ingest_body(namespace, _body(request))
                outputs = _outputs(request)
                if outputs is None:
                    outputs = list(self.default_outputs)
                await self.images.make_outputs(namespace, details.hash, outputs, source or "")
            except Exception:
                metrics.new_image_failed.inc()
                raise
        return json_body(request, 200, details.as_dict())

    @app.route(IMAGE + "/process", methods=["POST"])
    async def process(self, request: IRequest, namespace: str, **parts: str) -> bytes:
        image_hash = _image_hash(namespace, parts)
        with self._timed("resize_many"):
            await self.images.make_outputs(namespace, image_hash, _outputs(request) or [])
        request.setResponseCode(200)
        return b""

    @app.route(IMAGE + "/<name>", methods=["GET", "HEAD"])
    async def fetch(self, request: IRequest, namespace: str, name: str, **parts: str) -> IResource:
        """A stored file, read back from the bucket or made first when need be."""
        image_hash = _image_hash(namespace, parts)
        with self._timed("resize_image"):
            path = await self.images.resolve(namespace, image_hash, name, self.allowed_extensions)
        relative = paths.relative_path(namespace, image_hash, name)
        return CachedFile(path, relative, mime.content_type_of(name, path))

    @app.route(IMAGE + "/<name>", methods=["POST"])
    async def attach(self, request: IRequest, namespace: str, name: str, **parts: str) -> bytes:
        image_hash = _image_hash(namespace, parts)
        with self._timed("new_file"):
            await self.images.store_attachment(namespace, image_hash, name, _body(request))
        return json_body(request, 200, {})

    @app.handle_errors(ImageServerError)
    def image_server_error(self, request: IRequest, failure: Failure) -> bytes:
        error: ImageServerError = failure.value
        if isinstance(error, Overloaded):
            request.setHeader(b"Retry-After", str(RETRY_AFTER_SECONDS).encode())
        return error_body(request, error.status, error.message, error.code)

    @app.handle_errors(HTTPException)
    def routing_error(self, request: IRequest, failure: Failure) -> bytes:
        # Like the Go server: an unknown route and a wrong method are both "404 page not found".
        return error_body(request, 404, "404 page not found", "not_found")

    @app.handle_errors(Exception)
    def unexpected_error(self, request: IRequest, failure: Failure) -> bytes:
        log.failure("unexpected error answering {uri}", failure, uri=request.uri)
        return error_body(request, 500, "internal server error", "internal_error")


def _image_hash(namespace: str, parts: dict[str, str]) -> str:
    partition = "/".join((parts["p1"], parts["p2"], parts["p3"], parts["p4"]))
    if not paths.NAMESPACE.fullmatch(namespace) or not paths.PARTITION.fullmatch(partition):
        raise NotFound("404 page not found")
    return partition.replace("/", "")


def _argument(request: IRequest, name: str) -> str | None:
    """A query argument, None when absent, '' for a bare key (which Twisted's parser drops)."""
    _, _, query = request.uri.decode("utf-8", "replace").partition("?")
    values = parse_qs(query, keep_blank_values=True).get(name)
    return values[0] if values else None


def _outputs(request: IRequest) -> list[str] | None:
    """``outputs`` as names; None when the query has no ``outputs`` at all."""
    raw = _argument(request, "outputs")
    return None if raw is None else split_outputs(raw)


def _body(request: Any) -> Spool | None:
    """The spooled body, or None for an empty one (which Twisted keeps in memory)."""
    content = request.content
    if isinstance(content, Oversized):
        raise BodyTooLarge.over(content.limit)
    return content if isinstance(content, Spool) else None
