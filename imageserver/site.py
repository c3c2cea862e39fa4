"""The main site's requests: bodies spooled to the store, and a count of requests in flight.

Twisted keeps a request body in memory or an anonymous temporary file; ours goes straight into a
`Spool` in the store's ``tmp/`` directory with its MD5 computed as it arrives, so an upload of any
size costs the server no memory and no second pass.  The count lets a shutdown wait for in-flight
requests.
"""

from __future__ import annotations

from collections.abc import Callable
from io import BytesIO
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.resource import IResource

from imageserver.errors import BodyTooLarge
from imageserver.logs import ACCESS_NAMESPACE
from imageserver.responses import JSON_TYPE, error_body, error_bytes
from imageserver.spool import Spool

log = Logger()
# How long a client whose body was cut off may go on sending before its connection is dropped.
LINGER_SECONDS = 5.0
access_log = Logger(namespace=ACCESS_NAMESPACE)


class TimedRequest(server.Request):
    """A request that knows when its headers arrived, for the access log, and that answers a
    failure no resource caught in JSON, like every other error (Twisted's is an HTML page)."""

    started: float | None = None

    def gotLength(self, length: int | None) -> None:
        self.started = self.channel.site.reactor.seconds()  # type: ignore[attr-defined]
        super().gotLength(length)

    def processingFailed(self, reason: Failure) -> None:
        log.failure("unexpected error answering {uri}", reason, uri=self.uri)
        if self.startedWriting:  # half an answer is out: all that is left is to stop
            self.loseConnection()
            return
        self.write(error_body(self, 500, "internal server error", "internal_error"))
        self.finish()


class LoggingSite(server.Site):
    """A `Site` that logs one structured line per request, instead of the combined log format."""

    requestFactory = TimedRequest

    def log(self, request: http.Request) -> None:
        started = getattr(request, "started", None)
        seconds = self.reactor.seconds() - started if started is not None else 0.0
        log_access(request.method, request.path, request.code, request.sentLength, seconds)


def log_access(method: bytes, path: bytes, status: int, sent: int, seconds: float) -> None:
    """One access log line.  ``path`` is without its query: signatures and source URLs stay
    out of the logs."""
    access_log.info(
        "{method} {path} {status} {bytes} {seconds:.3f}",
        method=method.decode("ascii", "replace"),
        path=path.decode("utf-8", "replace"),
        status=status,
        bytes=sent,
        seconds=seconds,
    )


class SpoolingRequest(TimedRequest):
    """A request whose body is a `Spool`, or nothing when the body will be refused anyway.

    A body that passes the site's limit as it arrives (a chunked one declares no length, an
    oversized one declared too much) is answered 413 at once and its connection closed: reading
    on until the client stops would let one client keep the reactor busy for as long as it likes.
    """

    cut_off = False

    def gotLength(self, length: int | None) -> None:
        """Headers are in: from here the request counts as in flight, body and all."""
        site = self._site()
        self.started = site.reactor.seconds()
        site.request_started()
        self.notifyFinish().addBoth(lambda _: site.request_ended())
        # The request line is in; Twisted keeps it on the channel until the body has arrived, in
        # private attributes (tests/test_private_api.py checks them).
        method, uri = getattr(self.channel, "_command", b""), getattr(self.channel, "_path", b"")
        if length == 0:
            self.content = BytesIO()  # type: ignore[assignment]
        elif length is not None and length > site.max_body_bytes:
            self.content = Oversized(site.max_body_bytes)  # type: ignore[assignment]
        elif site.refuse_body is not None and site.refuse_body(method, uri):
            self.content = Unread()  # type: ignore[assignment]
        else:
            self.content = Spool(site.spool_directory, site.max_body_bytes)  # type: ignore[assignment]

    def handleContentChunk(self, data: bytes) -> None:
        if self.cut_off:
            return  # what was already in the buffer when the answer went out
        super().handleContentChunk(data)
        content = self.content
        if isinstance(content, Spool | Oversized) and content.too_large:
            content.close()  # a spool's file goes now, not when the connection has closed
            self._cut_off(content.limit)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if not self.cut_off:  # else it has had its answer; its connection is closing
            super().requestReceived(command, path, version)

    def _cut_off(self, limit: int) -> None:
        """Answer 413 now, without the body's end, then close.

        The write side closes at once; what the client still sends is read and dropped for
        `LINGER_SECONDS` at most (as nginx's lingering close does): closing with unread bytes
        would make the kernel reset the connection, and the client could lose the answer.
        """
        self.cut_off = True
        error = BodyTooLarge.over(limit)
        body = error_bytes(error.message, error.code)
        head = b"HTTP/1.1 413 %s\r\n" % http.RESPONSES[413]
        head += b"Content-Type: %s\r\nContent-Length: %d\r\n" % (JSON_TYPE, len(body))
        head += b"Connection: close\r\n\r\n"
        transport: Any = self.channel.transport
        transport.write(head + body)
        transport.loseWriteConnection()
        ending = self._site().reactor.callLater(LINGER_SECONDS, transport.abortConnection)
        self.notifyFinish().addBoth(lambda _: _cancel(ending))
        # The request line is on the channel: the request has none until its body is in.
        method, uri = getattr(self.channel, "_command", b""), getattr(self.channel, "_path", b"")
        seconds = self._site().reactor.seconds() - (self.started or 0.0)
        log_access(method, uri.partition(b"?")[0], 413, len(body), seconds)

    def _site(self) -> ImageSite:
        site: ImageSite = self.channel.site  # type: ignore[attr-defined]
        return site


def _cancel(call: IDelayedCall) -> None:
    if call.active():
        call.cancel()


class Unread(BytesIO):
    """The body of a request that will be refused: read off the socket, kept nowhere."""

    def write(self, data: bytes) -> int:  # type: ignore[override]
        return len(data)


class Oversized(Unread):
    """A body whose declared length is over the site's limit: the request gets a 413."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.size = 0

    @property
    def too_large(self) -> bool:
        return self.size > self.limit

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.size += len(data)
        return len(data)


class ImageChannel(http.HTTPChannel):
    """An HTTP/1.1 channel that answers at once a request whose body would be refused.

    A client that sends ``Expect: 100-continue`` (curl does for bodies over 1 MB) waits for our go
    before sending its body; when that body is over the limit or the request's signature is bad,
    it gets its answer instead of the go, and no byte of the body crosses the network.  Other
    clients' refused bodies are read and dropped, so they see the answer rather than a reset.
    """

    # Private to Twisted, the only place to hold back the go: tests/test_private_api.py checks it.
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
