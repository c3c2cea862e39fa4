"""The main site (docs/api.md#routes): upload, variants, batches, attachments and ``/status_check``.

Handlers only translate HTTP to `Images` calls and back; every failure becomes a JSON error through
one handler (docs/api.md#errors).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any
from urllib.parse import parse_qs, unquote_to_bytes

from klein import Klein
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request
from werkzeug.exceptions import HTTPException

from imageserver import paths
from imageserver.errors import BodyTooLarge, ImageServerError, NotFound, Overloaded
from imageserver.events import RequestTimed
from imageserver.images import Images
from imageserver.lifecycle import Lifecycle
from imageserver.names import AUTO, is_variant_name, split_outputs
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
        is_signed: Callable[[IRequest], bool] = lambda request: False,
    ) -> None:
        """``is_signed``: whether a request carries a valid signature, which lets it ask for
        variants ``--allowed-variants`` leaves out."""
        self.images = images
        self.lifecycle = lifecycle
        self.allowed_extensions = allowed_extensions
        self.default_outputs = default_outputs
        self.is_signed = is_signed

    def resource(self) -> IResource:
        return _Files(self, self.app.resource())

    @contextmanager
    def timed(self, handler: str) -> Iterator[None]:
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
        with self.timed("new_image"):
            try:
                source = _argument(request, "source")
                if source:
                    details = await self.images.ingest_url(namespace, source)
                else:
                    details = await self.images.ingest_body(namespace, _body(request))
                outputs = _outputs(request)
                if outputs is None:
                    outputs = list(self.default_outputs)
                await self.images.make_outputs(
                    namespace, details.hash, outputs, source or "", self.any_variant(request)
                )
            except Exception:
                metrics.new_image_failed.inc()
                raise
        return json_body(request, 200, details.as_dict())

    @app.route(IMAGE + "/process", methods=["POST"])
    async def process(self, request: IRequest, namespace: str, **parts: str) -> bytes:
        image_hash = _image_hash(namespace, parts)
        with self.timed("resize_many"):
            await self.images.make_outputs(
                namespace,
                image_hash,
                _outputs(request) or [],
                any_variant=self.any_variant(request),
            )
        request.setResponseCode(200)
        # An empty answer, as the Go server's: no Content-Type (Twisted's default, text/html,
        # would announce a page), which Twisted leaves out when the length is set to 0.
        request.setHeader(b"Content-Length", b"0")
        return b""

    @app.route(IMAGE + "/<name>", methods=["GET", "HEAD"])
    async def fetch(self, request: IRequest, namespace: str, name: str, **parts: str) -> IResource:
        """A file by a path with escapes (the others take `_Files`)."""
        return await self.file(request, namespace, _image_hash(namespace, parts), name)

    async def file(
        self,
        request: IRequest,
        namespace: str,
        image_hash: str,
        name: str,
        missing_here: bool = False,
    ) -> IResource:
        """A stored file, read back from the bucket or made first when need be.

        ``missing_here``: the caller has just looked in the local store, so it is not asked again.
        An ``.auto`` name is answered with the file of the format the request's ``Accept`` picks,
        which is what is stored; the answer says so (``Content-Location``) and that it depends on
        ``Accept`` (``Vary``), so that caches keep one copy per format.
        """
        images, any_variant = self.images, self.any_variant(request)
        with self.timed("resize_image"):
            served, varies = name, name.endswith("." + AUTO) and is_variant_name(name)
            if varies:
                accept = (request.getHeader(b"Accept") or b"").decode("latin-1")
                served = await images.negotiate(
                    namespace, image_hash, name, accept, self.allowed_extensions
                )
            find = images.obtain if missing_here and not varies else images.resolve
            path = await find(namespace, image_hash, served, self.allowed_extensions, any_variant)
        resource = _stored_file(images, path, namespace, image_hash, served)
        if varies:
            resource.extra_headers = {b"Vary": b"Accept", b"Content-Location": served.encode()}
        return resource

    def any_variant(self, request: IRequest) -> bool:
        """Whether ``--allowed-variants`` is set aside for this request: it is signed.  Checked
        only when there is an allow-list (a signature costs an HMAC per secret)."""
        return bool(self.images.limits.allowed_variants) and self.is_signed(request)

    @app.route(IMAGE + "/<name>", methods=["POST"])
    async def attach(self, request: IRequest, namespace: str, name: str, **parts: str) -> bytes:
        image_hash = _image_hash(namespace, parts)
        with self.timed("new_file"):
            await self.images.store_attachment(namespace, image_hash, name, _body(request))
        return json_body(request, 200, {})

    @app.handle_errors(ImageServerError)
    def image_server_error(self, request: IRequest, failure: Failure) -> bytes:
        return _error_answer(request, failure)

    @app.handle_errors(HTTPException)
    def routing_error(self, request: IRequest, failure: Failure) -> bytes:
        return _no_route(request)

    @app.handle_errors(Exception)
    def unexpected_error(self, request: IRequest, failure: Failure) -> bytes:
        return _error_answer(request, failure)


def _no_route(request: IRequest) -> bytes:
    # Like the Go server: an unknown route and a wrong method are both "404 page not found".
    return error_body(request, 404, "404 page not found", "not_found")


def _error_answer(request: IRequest, failure: Failure) -> bytes:
    """The JSON answer to a failure: ours say what went wrong, anything else is logged as a 500."""
    error = failure.value
    if not isinstance(error, ImageServerError):
        log.failure("unexpected error answering {uri}", failure, uri=request.uri)
        return error_body(request, 500, "internal server error", "internal_error")
    if isinstance(error, Overloaded):
        request.setHeader(b"Retry-After", str(RETRY_AFTER_SECONDS).encode())
    return error_body(request, error.status, error.message, error.code)


class _Files(Resource):
    """The main site: ``GET`` and ``HEAD`` of an image's files here, anything else to the routes.

    Those are most of what an image server answers, and the router, the coroutine and Klein's
    handling of results cost more than serving a small file (benchmarks/README.md has the
    figures): a file on disk is served at once, a variant to make is waited for with one callback.
    Paths with escapes or outside ASCII take the routes, which decode them the same way.
    """

    isLeaf = True

    def __init__(self, app: MainApp, routes: IResource) -> None:
        super().__init__()
        self.app = app
        self.routes = routes

    def render(self, request: Request) -> bytes | int:
        if not request.method.isupper() or not _decodes(request.path):
            # Methods are case-sensitive, and no route has a name that is not UTF-8: as an
            # unknown route (the router would take ``get`` for ``GET``, and answer bad UTF-8
            # in HTML).
            return _no_route(request)
        route = _file_route(request)
        if route is None:
            rendered: bytes | int = self.routes.render(request)
            return rendered
        path = self.app.images.local_file(*route)
        if path is not None:
            with self.app.timed("resize_image"):
                try:
                    self.app.images.check_stored_allowed(route[2], self.app.any_variant(request))
                    stored = _stored_file(self.app.images, path, *route)
                    served: bytes | int = stored.render(request)
                except ImageServerError:
                    served = _error_answer(request, Failure())
                return served
        answer = ensureDeferred(self.app.file(request, *route, missing_here=True))
        gone = request.notifyFinish()
        gone.addErrback(lambda _: answer.cancel())  # the client left: stop waiting (not the job)
        answer.addCallback(request.render)  # its failures too go to the error answer
        answer.addErrback(partial(_answer_error, request, gone))
        return NOT_DONE_YET


def _file_route(request: Request) -> tuple[str, str, str] | None:
    """(namespace, hash, name) of a plain GET or HEAD of an image's file, else None."""
    if request.method not in (b"GET", b"HEAD") or b"%" in request.path:
        return None
    try:
        match = paths.FILE_PATH.fullmatch(request.path.decode("ascii"))
    except UnicodeDecodeError:
        return None
    if match is None:
        return None
    namespace, partition, name = match.group("namespace", "partition", "name")
    return namespace, partition.replace("/", ""), name


def _decodes(path: bytes) -> bool:
    """Whether a URL path, escapes decoded, is UTF-8."""
    try:
        unquote_to_bytes(path).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _answer_error(request: Request, gone: Deferred[None], failure: Failure) -> None:
    if gone.called:
        return  # nobody to answer
    if request.startedWriting:  # failed half-way through a file: all that is left is to stop
        log.failure("failed while sending {uri}", failure, uri=request.uri)
        request.loseConnection()
        return
    body = _error_answer(request, failure)
    request.write(body)
    request.finish()


def _stored_file(
    images: Images, path: str, namespace: str, image_hash: str, name: str
) -> CachedFile:
    relative = paths.relative_path(namespace, image_hash, name)
    return CachedFile(path, relative, images.known_type(namespace, image_hash, name))


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
