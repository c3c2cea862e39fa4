"""The main site's requests: bodies spooled to the store, and a count of requests in flight.

Twisted keeps a request body in memory or an anonymous temporary file; ours goes straight into a
`Spool` in the store's ``tmp/`` directory with its MD5 computed as it arrives, so an upload of any
size costs the server no memory and no second pass.  The count lets a shutdown wait for in-flight
requests.
"""

from __future__ import annotations

from collections.abc import Callable
from io import BytesIO

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web import http, server
from twisted.web.resource import IResource

from imageserver.logs import ACCESS_NAMESPACE
from imageserver.spool import Spool

access_log = Logger(namespace=ACCESS_NAMESPACE)


class TimedRequest(server.Request):
    """A request that knows when its headers arrived, for the access log."""

    started: float | None = None

    def gotLength(self, length: int | None) -> None:
        self.started = self.channel.site.reactor.seconds()  # type: ignore[attr-defined]
        super().gotLength(length)


class LoggingSite(server.Site):
    """A `Site` that logs one structured line per request, instead of the combined log format."""

    requestFactory = TimedRequest

    def log(self, request: http.Request) -> None:
        started = getattr(request, "started", None)
        seconds = self.reactor.seconds() - started if started is not None else 0.0
        access_log.info(
            "{method} {path} {status} {bytes} {seconds:.3f}",
            method=request.method.decode("ascii", "replace"),
            # The path without its query: signatures and source URLs stay out of the logs.
            path=request.path.decode("utf-8", "replace"),
            status=request.code,
            bytes=request.sentLength,
            seconds=seconds,
        )


class SpoolingRequest(TimedRequest):
    """A request whose body is a `Spool`, or nothing when the body will be refused anyway."""

    def gotLength(self, length: int | None) -> None:
        """Headers are in: from here the request counts as in flight, body and all."""
        site = self._site()
        self.started = site.reactor.seconds()
        site.request_started()
        self.notifyFinish().addBoth(lambda _: site.request_ended())
        # The request line is in; Twisted keeps it on the channel until the body has arrived.
        method, uri = getattr(self.channel, "_command", b""), getattr(self.channel, "_path", b"")
        if length == 0:
            self.content = BytesIO()  # type: ignore[assignment]
        elif length is not None and length > site.max_body_bytes:
            self.content = Oversized(site.max_body_bytes)  # type: ignore[assignment]
        elif site.refuse_body is not None and site.refuse_body(method, uri):
            self.content = Unread()  # type: ignore[assignment]
        else:
            self.content = Spool(site.spool_directory, site.max_body_bytes)  # type: ignore[assignment]

    def _site(self) -> ImageSite:
        site: ImageSite = self.channel.site  # type: ignore[attr-defined]
        return site


class Unread(BytesIO):
    """The body of a request that will be refused: read off the socket, kept nowhere."""

    def write(self, data: bytes) -> int:  # type: ignore[override]
        return len(data)


class Oversized(Unread):
    """A body whose declared length is over the site's limit: the request gets a 413."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit


class ImageChannel(http.HTTPChannel):
    """An HTTP/1.1 channel that answers at once a request whose body would be refused.

    A client that sends ``Expect: 100-continue`` (curl does for bodies over 1 MB) waits for our go
    before sending its body; when that body is over the limit or the request's signature is bad,
    it gets its answer instead of the go, and no byte of the body crosses the network.  Other
    clients' refused bodies are read and dropped, so they see the answer rather than a reset.
    """

    def _send100Continue(self) -> None:
        if not isinstance(self.requests[-1].content, Unread):
            super()._send100Continue()
            return
        # The request is complete without its body; whatever the client sends later is never
        # read as a request of its own, as the connection closes after the answer.
        self.persistent = False
        self.requests[-1].setHeader(b"Connection", b"close")
        self.length = 0


class ImageSite(LoggingSite):
    """A `Site` that spools bodies to ``spool_directory`` and can wait for its requests to end."""

    requestFactory = SpoolingRequest
    protocol = ImageChannel  # type: ignore[assignment]  # plain HTTP/1.1, no HTTP/2 negotiation

    def __init__(
        self,
        resource: IResource,
        spool_directory: str,
        max_body_bytes: int,
        reactor: IReactorTime,
        refuse_body: Callable[[bytes, bytes], bool] | None = None,
        read_timeout: float = 60.0,
    ) -> None:
        # Never parse a body as a form: ``curl --data-binary`` labels images as form data, and
        # parsing would read the whole upload into memory on the reactor.  A client silent for
        # ``read_timeout`` seconds is dropped, and its half-sent body deleted with its request.
        super().__init__(
            resource, reactor=reactor, parsePOSTFormSubmission=False, timeout=read_timeout
        )
        self.refuse_body = refuse_body
        self.spool_directory = spool_directory
        self.max_body_bytes = max_body_bytes
        self.in_flight = 0
        self._idle: list[Deferred[None]] = []

    def request_started(self) -> None:
        self.in_flight += 1

    def request_ended(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            waiting, self._idle = self._idle, []
            for waiter in waiting:
                waiter.callback(None)

    def wait_idle(self) -> Deferred[None]:
        """Fire once no request is in flight."""
        idle: Deferred[None] = Deferred()
        if self.in_flight == 0:
            idle.callback(None)
        else:
            self._idle.append(idle)
        return idle
