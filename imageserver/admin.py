"""The admin site (docs/api.md#health): liveness, readiness, Prometheus metrics, the web console.

The console (docs/console.md) is static HTML, CSS and JavaScript modules from
``imageserver/console/static`` and the JSON endpoints under ``/api`` here.  It reads the local
store directly (listings in a thread, stored files as the main site serves them) and reaches the
main site over HTTP, through ``/site/…``, for anything the main site must do: make a variant,
take an upload.  Going through the admin site keeps the console one origin, so the browser may
read every answer's size and timing, and only the admin port need be reachable.

Reading needs nothing more, as the admin site is meant for an internal network.  Uploading and
signing need ``--admin-token``: a bearer token, or the cookie the login form sets; both are
compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

import treq
from klein import Klein
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.application.internet import TCPServer
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.web import static
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IRequest
from twisted.web.resource import IResource, NoResource
from twisted.web.server import Request
from werkzeug.exceptions import HTTPException

import imageserver
from imageserver import paths
from imageserver.console import STATIC, listing
from imageserver.errors import BodyTooLarge, ImageServerError
from imageserver.history import History
from imageserver.lifecycle import Lifecycle
from imageserver.metrics import Metrics, PoolState, merged_exposition
from imageserver.names import check_file_name
from imageserver.options import CONFIG_FIELDS, Config
from imageserver.responses import CachedFile, error_body, json_body
from imageserver.signature import sign
from imageserver.site import Oversized
from imageserver.spool import Spool
from imageserver.store import LocalStore
from imageserver.usage import read_usage

# The one variant the console shows each image of a namespace as: a grid of them costs one
# stored file per image, whatever the page or screen.
THUMBNAIL = "x160.jpg"
# Images on a page of a namespace.
PER_PAGE = 48
# The cookie the login form sets: an HMAC of the token, never the token itself.
SESSION_COOKIE = b"image_server_console"
SESSION_MESSAGE = b"image-server admin console session"
# A browser sends this on the console's own requests; a form or page of another origin cannot
# (a custom header needs a CORS preflight, which this site never grants), so a cookie alone
# never uploads or signs anything.
CONSOLE_HEADER = b"X-Console"
# How long the signatures the relay adds live: they are used at once.
RELAY_SIGNATURE_SECONDS = 60
# Headers of the main site's answers the relay passes on.
RELAYED = (
    b"Content-Type",
    b"Content-Location",
    b"Content-Disposition",
    b"Cache-Control",
    b"ETag",
    b"Last-Modified",
    b"Vary",
    b"Retry-After",
    b"X-Content-Type-Options",
)
# Flags whose values never leave the server; the webhook's URL shows only its scheme and host,
# as services put their secret in its path.
SECRET_FLAGS = frozenset({"aws_access_key_id", "aws_secret_key", "webhook_secret", "admin_token"})
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
# The console's pages run only the console's own scripts and styles, and load only from here
# (and the previews it makes, as blobs): user-supplied text that slipped into markup would run
# nothing.
CONTENT_SECURITY_POLICY = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:;"
    b" connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)


class Refused(Exception):
    """A console request answered with a JSON error."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


@dataclass(frozen=True)
class Console:
    """What the console needs from the server: wired in `imageserver.service`."""

    config: Config
    store: LocalStore
    pool: PoolState
    history: History
    main_site: TCPServer
    secrets: Callable[[], Sequence[str]] | None  # the signing secrets, when there is a file
    reactor: Any

    def main_url(self) -> str:
        """Where the relay reaches the main site: its address, or loopback when it listens on
        every address."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(
            self.config.listen, self.config.listen
        )
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.main_port()}"

    def main_port(self) -> int:
        """The port the main site is bound to (the flag's may be 0)."""
        port = self.main_site._port
        assert port is not None  # bound before the server serves anything
        return int(port.getHost().port)


class Gate:
    """``--admin-token``: who may upload and sign.  Empty, nobody may."""

    def __init__(self, token: str) -> None:
        self.token = token.encode()

    @property
    def configured(self) -> bool:
        return bool(self.token)

    def session(self) -> bytes:
        """The login cookie's value: changes with the token, and does not reveal it."""
        return hmac.new(self.token, SESSION_MESSAGE, hashlib.sha256).hexdigest().encode()

    def matches(self, given: bytes) -> bool:
        """Compared in constant time, lengths included (both sides are hashed first)."""
        expected = hashlib.sha256(self.token).digest()
        return self.configured and hmac.compare_digest(hashlib.sha256(given).digest(), expected)

    def bearer(self, request: IRequest) -> bool:
        header = request.getHeader(b"Authorization") or b""
        scheme, _, token = header.partition(b" ")
        return scheme.lower() == b"bearer" and self.matches(token.strip())

    def authenticated(self, request: IRequest) -> bool:
        if not self.configured:
            return False
        cookie = request.getCookie(SESSION_COOKIE) or b""
        return self.bearer(request) or hmac.compare_digest(cookie, self.session())

    def require_change(self, request: IRequest) -> None:
        """Refuse an upload or a signature unless authenticated, and, with the cookie, asked by
        the console itself."""
        if not self.configured:
            raise Refused(403, "the admin site has no --admin-token", "no_admin_token")
        if self.bearer(request):
            return
        if not self.authenticated(request):
            raise Refused(401, "log in with the admin token first", "not_authenticated")
        if request.getHeader(CONSOLE_HEADER) is None:
            raise Refused(403, f"missing the {CONSOLE_HEADER.decode()} header", "not_console")


class AdminApp:
    app = Klein()

    def __init__(
        self,
        lifecycle: Lifecycle,
        metrics: Metrics,
        console: Console,
        scrape: Callable[[], Deferred[dict[int, bytes]]] | None = None,
    ) -> None:
        """``scrape``: the other main processes' metrics pages, when there are others."""
        self.lifecycle = lifecycle
        self.metrics = metrics
        self.scrape = scrape
        self.console = console
        self.gate = Gate(console.config.admin_token)
        # A connection per relayed request: they are few, local, and none is left open.
        pool = HTTPConnectionPool(console.reactor, persistent=False)
        self.agent = Agent(console.reactor, pool=pool)
        self.started = time.time()
        with open(os.path.join(STATIC, "index.html"), "rb") as index:
            self.index = index.read()

    def resource(self) -> IResource:
        return self.app.resource()

    @app.route("/probe/live")
    def live(self, request: IRequest) -> bytes:
        return json_body(request, 200, {"message": "OK"})

    @app.route("/probe/ready")
    def ready(self, request: IRequest) -> bytes:
        status, body = self.lifecycle.readiness()
        return json_body(request, status, body)

    @app.handle_errors(HTTPException)
    def not_found(self, request: IRequest, failure: Failure) -> bytes:
        return error_body(request, 404, "404 page not found", "not_found")

    @app.handle_errors(Refused)
    def refused(self, request: IRequest, failure: Failure) -> bytes:
        error = failure.value
        return error_body(request, error.status, error.message, error.code)

    @app.handle_errors(ImageServerError)
    def image_server_error(self, request: IRequest, failure: Failure) -> bytes:
        error = failure.value
        return error_body(request, error.status, error.message, error.code)

    @app.route("/metrics")
    async def metrics_page(self, request: IRequest) -> bytes:
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode())
        if self.scrape is None:
            return generate_latest(self.metrics.registry)
        return merged_exposition(self.metrics.registry, await self.scrape())

    # The console's files

    @app.route("/")
    def index_page(self, request: IRequest) -> bytes:
        _page_headers(request)
        request.setHeader(b"Content-Type", CONTENT_TYPES[".html"].encode())
        return self.index

    @app.route("/console/", branch=True)
    def static_files(self, request: IRequest) -> IResource:
        _page_headers(request)
        return _Static(STATIC)

    # Who is asking

    @app.route("/api/session")
    def session(self, request: IRequest) -> bytes:
        return json_body(request, 200, self._session(request))

    def _session(self, request: IRequest) -> dict[str, bool]:
        authenticated = self.gate.authenticated(request)
        return {
            "token_configured": self.gate.configured,
            "authenticated": authenticated,
            "can_sign": authenticated and self.console.secrets is not None,
        }

    @app.route("/api/login", methods=["POST"])
    def login(self, request: Request) -> bytes:
        if not self.gate.configured:
            raise Refused(403, "the admin site has no --admin-token", "no_admin_token")
        token = _json_request(request).get("token")
        if not isinstance(token, str) or not self.gate.matches(token.encode()):
            raise Refused(401, "wrong token", "wrong_token")
        request.addCookie(
            SESSION_COOKIE, self.gate.session(), path=b"/", httpOnly=True, sameSite="strict"
        )
        return json_body(request, 200, {"authenticated": True})

    @app.route("/api/logout", methods=["POST"])
    def logout(self, request: Request) -> bytes:
        request.addCookie(
            SESSION_COOKIE, b"", path=b"/", max_age=b"0", httpOnly=True, sameSite="strict"
        )
        return json_body(request, 200, {"authenticated": False})

    # The overview

    @app.route("/api/overview")
    def overview(self, request: IRequest) -> bytes:
        config, pool = self.console.config, self.console.pool
        status, readiness = self.lifecycle.readiness()
        body = {
            "version": imageserver.__version__,
            "git_hash": imageserver.GIT_HASH,
            "build_timestamp": imageserver.BUILD_TIMESTAMP,
            "python": platform.python_version(),
            "started": self.started,
            "ready": {"status": status, **readiness},
            "main_url": self.console.main_url(),
            "listens_everywhere": config.listen in ("0.0.0.0", "::", ""),
            "main_port": self.console.main_port(),
            "store": self.console.store.base,
            "thumbnail": THUMBNAIL,
            "limits": {
                "maximum_width": config.maximum_width,
                "default_quality": config.default_quality,
            },
            "main": {"pid": os.getpid(), **_usage(os.getpid())},
            "workers": {
                "size": pool.size,
                "busy": min(pool.in_flight, pool.size),
                "queued": pool.queued,
                "processes": [{"pid": pid, **_usage(pid)} for pid in pool.worker_pids()],
            },
            "flags": _flags(config),
            "session": self._session(request),
        }
        return json_body(request, 200, body)

    @app.route("/api/history")
    def history(self, request: IRequest) -> bytes:
        return json_body(request, 200, self.console.history.series())

    # The store

    @app.route("/api/namespaces")
    async def namespaces(self, request: IRequest) -> bytes:
        found = await self._in_thread(listing.namespaces, self.console.store.base)
        return json_body(request, 200, found)

    @app.route("/api/namespaces/<namespace>/images")
    async def images(self, request: IRequest, namespace: str) -> bytes:
        _check_namespace(namespace)
        page = _page(request)
        found = await self._in_thread(
            listing.images, self.console.store.base, namespace, page, PER_PAGE
        )
        return json_body(request, 200, found)

    @app.route("/api/images/<namespace>/<image_hash>")
    async def image(self, request: IRequest, namespace: str, image_hash: str) -> bytes:
        _check_namespace(namespace)
        if not paths.HASH.fullmatch(image_hash):
            raise Refused(404, "no such image", "not_found")
        found = await self._in_thread(listing.image, self.console.store.base, namespace, image_hash)
        if found is None:
            raise Refused(404, f"no image {namespace}/{image_hash} in the local store", "not_found")
        return json_body(request, 200, found)

    def _in_thread(self, function: Callable[..., Any], *arguments: Any) -> Any:
        reactor = self.console.reactor
        return deferToThreadPool(reactor, reactor.getThreadPool(), function, *arguments)

    @app.route("/files/<namespace>/<p1>/<p2>/<p3>/<p4>/<name>", methods=["GET", "HEAD"])
    def stored_file(self, request: IRequest, namespace: str, name: str, **parts: str) -> IResource:
        """A file of the local store, as the main site serves it (types, caching, attachments
        never inline), whatever the main site requires of its readers."""
        _check_namespace(namespace)
        partition = "/".join(parts[part] for part in ("p1", "p2", "p3", "p4"))
        if not paths.PARTITION.fullmatch(partition):
            raise Refused(404, "no such image", "not_found")
        check_file_name(name)
        relative = f"{namespace}/{partition}/{name}"
        if not self.console.store.exists(relative):
            raise Refused(404, f"{relative} is not in the local store", "not_found")
        return CachedFile(self.console.store.path(relative), relative)

    # The main site, through the relay

    @app.route("/site/", branch=True, methods=["GET", "HEAD"])
    async def relay(self, request: IRequest) -> bytes:
        """A GET or HEAD of an image's file on the main site, which makes a variant that is
        missing.  Signed for a logged-in user, and for thumbnails, when the server has signing
        secrets: ``--allowed-variants`` and signed reads bind the others, as on the main site.
        ``Server-Timing`` says how long the main site took to answer (to make the variant)."""
        raw_path, _, query = request.uri[len(b"/site") :].partition(b"?")
        path = unquote(raw_path.decode("ascii", "replace"))
        match = paths.FILE_PATH.fullmatch(path)
        if match is None:
            raise Refused(404, "the relay serves an image's files only", "not_found")
        signs = self.gate.authenticated(request) or match["name"] == THUMBNAIL
        if signs and self.console.secrets is not None:
            query = self._signature(request.method.decode(), path).encode()
        uri = self.console.main_url().encode() + raw_path + (b"?" + query if query else b"")
        headers = Headers()
        accept = request.getHeader(b"Accept")
        if accept is not None:
            headers.setRawHeaders(b"Accept", [accept])
        started = time.perf_counter()
        response = await self.agent.request(request.method, uri, headers)
        request.setResponseCode(response.code)
        for header in RELAYED:
            values = response.headers.getRawHeaders(header)
            if values:
                request.setHeader(header, values[0])
        # Twisted's client keeps the length apart from the headers (and has none for a HEAD).
        if request.method == b"GET" and response.length is not UNKNOWN_LENGTH:
            request.setHeader(b"Content-Length", b"%d" % response.length)
        milliseconds = (time.perf_counter() - started) * 1000
        request.setHeader(b"Server-Timing", b"main;dur=%.1f" % milliseconds)
        await treq.collect(response, request.write)
        return b""

    def _signature(self, method: str, path: str, ttl: int = RELAY_SIGNATURE_SECONDS) -> str:
        """The query that signs ``method`` on ``path``, with the first secret of the file."""
        assert self.console.secrets is not None
        secrets = self.console.secrets()
        if not secrets:
            raise Refused(503, "the signing secrets file has no secret", "no_secret")
        expires = int(time.time()) + ttl
        return urlencode(
            [
                ("X-Expires", str(expires)),
                ("X-Path", path),
                ("X-Signature", sign(secrets[0], method, path, expires)),
            ]
        )

    @app.route("/api/upload/<namespace>", methods=["POST"])
    async def upload(self, request: IRequest, namespace: str) -> bytes:
        """An upload to the main site (``POST /{namespace}``), signed when the server has
        signing secrets; its answer as the main site gave it."""
        self.gate.require_change(request)
        _check_namespace(namespace)
        path = f"/{namespace}"
        query = "" if self.console.secrets is None else "?" + self._signature("POST", path)
        content: Any = request.content
        if isinstance(content, Oversized):
            raise Refused(413, BodyTooLarge.over(content.limit).message, BodyTooLarge.code)
        # A spooled body is read from its file (the spool counts bytes, it does not seek).
        upload = open(content.path, "rb") if isinstance(content, Spool) else content  # noqa: SIM115
        headers = Headers({b"Content-Type": [b"application/octet-stream"]})
        uri = (self.console.main_url() + path + query).encode()
        try:
            upload.seek(0)
            response = await self.agent.request(b"POST", uri, headers, FileBodyProducer(upload))
            body: bytes = await treq.content(response)
        finally:
            upload.close()
        request.setResponseCode(response.code)
        request.setHeader(b"Content-Type", b"application/json; charset=UTF-8")
        return body

    @app.route("/api/sign", methods=["POST"])
    def sign_url(self, request: IRequest) -> bytes:
        """A signed URL (path and query) for the URL builder: ``{method, path, ttl}``."""
        self.gate.require_change(request)
        if self.console.secrets is None:
            raise Refused(409, "the server has no --signing-secrets-file", "no_secrets")
        asked = _json_request(request)
        method, path, ttl = asked.get("method"), asked.get("path"), asked.get("ttl")
        if method not in ("GET", "HEAD", "POST"):
            raise Refused(400, "method: GET, HEAD or POST", "invalid_parameter")
        if not isinstance(path, str) or not path.startswith("/") or len(path) > 2048:
            raise Refused(400, "path: an absolute path", "invalid_parameter")
        longest = self.console.config.signature_max_ttl
        longest = 60 if longest == 0 else longest
        if not isinstance(ttl, int) or ttl < 1 or (longest > 0 and ttl > longest * 60):
            limit = f"1 to {longest * 60}" if longest > 0 else "at least 1"
            raise Refused(400, f"ttl: {limit} seconds (--signature-max-ttl)", "invalid_parameter")
        return json_body(request, 200, {"signed": f"{path}?{self._signature(method, path, ttl)}"})


class _Static(static.File):
    """The console's files, with the types module scripts need, and no directory listings."""

    contentTypes = {**static.File.contentTypes, **CONTENT_TYPES}

    def directoryListing(self) -> IResource:
        return NoResource()


def _page_headers(request: IRequest) -> None:
    request.setHeader(b"Content-Security-Policy", CONTENT_SECURITY_POLICY)
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    request.setHeader(b"Referrer-Policy", b"no-referrer")
    request.setHeader(b"Cache-Control", b"no-cache")


def _check_namespace(namespace: str) -> None:
    if not paths.NAMESPACE.fullmatch(namespace) or namespace == paths.TMP_DIRECTORY:
        raise Refused(404, "no such namespace", "not_found")


def _page(request: IRequest) -> int:
    _, _, query = request.uri.decode("ascii", "replace").partition("?")
    raw = parse_qs(query).get("page", ["1"])[0]
    if not raw.isdigit() or not 1 <= int(raw) <= 1_000_000:
        raise Refused(400, "page: a number from 1", "invalid_parameter")
    return int(raw)


def _json_request(request: IRequest) -> dict[str, Any]:
    content: Any = request.content
    try:
        asked = json.loads(content.read(64 * 1024))
    except ValueError:
        asked = None
    if not isinstance(asked, dict):
        raise Refused(400, "expected a JSON object", "invalid_parameter")
    return asked


def _usage(pid: int) -> dict[str, float | None]:
    usage = read_usage(pid)
    if usage is None:
        return {"resident_bytes": None, "cpu_seconds": None}
    return {"resident_bytes": usage.resident_bytes, "cpu_seconds": usage.cpu_seconds}


def _flags(config: Config) -> list[dict[str, object]]:
    """Every flag in effect, as it would be written, secrets hidden."""
    flags = []
    for name, config_field in CONFIG_FIELDS.items():
        value = getattr(config, name)
        shown = _shown(value)
        if name in SECRET_FLAGS and value:
            shown = "(hidden)"
        elif name == "webhook_url" and value:
            parts = urlsplit(value)
            shown = f"{parts.scheme}://{parts.hostname}/…"
        flags.append(
            {
                "flag": "--" + Config.flag_name(name),
                "value": shown,
                "changed": value != config_field.default,
            }
        )
    return flags


def _shown(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)
