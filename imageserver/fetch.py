"""Source downloads (``POST /{ns}?source=URL``): streamed to a `Spool`, bounded in size and time.

Errors keep the Go server's wording where the Ruby client classifies them
(docs/api.md#message-prefixes):
``Unable to download image: <url>, status code: N`` for a bad status, ``dial tcp`` for a connection
that failed, ``i/o timeout`` at the end of a timeout.  The HTTP client is injected, so the address
guard can wrap its agent without this module knowing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from hyperlink import EncodedURL
from twisted.internet import error as net_error
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseFailed
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IResponse

from imageserver.errors import BodyTooLarge, EmptyFile, ImageServerError, SourceUnavailable
from imageserver.spool import MINIMUM_IMAGE_BYTES, Spool

USER_AGENT = b"image-server"


class SourceDownloader:
    """Downloads one URL into a fresh spool in ``spool_directory``."""

    def __init__(
        self,
        http: Any,
        reactor: IReactorTime,
        spool_directory: str,
        timeout: float,
        max_bytes: int,
        refused: Mapping[str, str] | None = None,
    ) -> None:
        self._http = http
        self._refused = refused if refused is not None else {}
        self._reactor = reactor
        self._spool_directory = spool_directory
        self._timeout = timeout
        self._max_bytes = max_bytes

    def download(self, url: str) -> Deferred[Spool]:
        """Fire with the spool of the whole body, or fail with an `ImageServerError`."""
        address = _address(url)
        try:
            request = self._http.get(
                _request_target(url),
                headers={b"User-Agent": [USER_AGENT]},
                allow_redirects=False,
                unbuffered=True,  # the body goes to the spool as it arrives, never to memory
            )
        except Exception as error:  # a URL the HTTP client cannot even send
            raise SourceUnavailable(f"Unable to download image: {url}, {error}") from error
        spool = Spool(self._spool_directory, self._max_bytes)
        download = _Download(url, address, spool, self._reactor, self._timeout, self._refused)
        finished = download.start(request)
        finished.addErrback(_discard, spool)
        return finished


class _Download(Protocol):
    """Receives one response body into a spool; one deadline covers headers and body."""

    def __init__(
        self,
        url: str,
        address: str,
        spool: Spool,
        reactor: IReactorTime,
        timeout: float,
        refused: Mapping[str, str],
    ) -> None:
        self.url = url
        self.address = address
        self.refused = refused
        self.spool = spool
        self.timeout = timeout
        self.finished: Deferred[Spool] = Deferred()
        self._request: Deferred[IResponse] | None = None
        self._failing = False
        self._deadline: IDelayedCall = reactor.callLater(timeout, self._timed_out)

    def start(self, request: Deferred[IResponse]) -> Deferred[Spool]:
        self._request = request
        request.addCallbacks(self._response, self._request_failed)
        return self.finished

    def _response(self, response: IResponse) -> None:
        self._request = None
        if response.code != 200:
            response.deliverBody(_Refuse())
            self._fail(
                SourceUnavailable(
                    f"Unable to download image: {self.url}, status code: {response.code}"
                )
            )
            return
        response.deliverBody(self)

    def _request_failed(self, reason: Failure) -> None:
        self._request = None
        if not reason.check(CancelledError):
            self._fail(self._connection_error(reason))

    def _connection_error(self, reason: Failure) -> SourceUnavailable:
        """Why the download failed: the address guard's refusal, or Go-style transport wording."""
        failure = reason
        if reason.check(ResponseFailed) and reason.value.reasons:
            failure = reason.value.reasons[0]
        if failure.check(net_error.DNSLookupError):
            # The name that found no address: this URL's, or a redirect's.
            host = str(failure.value).rstrip(".").rpartition(": ")[2].strip("'")
            if host in self.refused:
                return SourceUnavailable(
                    f"Unable to download image: {self.url}, refused: {host} is"
                    f" {self.refused[host]}, not a public address"
                )
        return _connection_error(self.url, self.address, failure)

    def _timed_out(self) -> None:
        self._fail(SourceUnavailable(f'Get "{self.url}": dial tcp {self.address}: i/o timeout'))

    def dataReceived(self, data: bytes) -> None:
        self.spool.write(data)
        if self.spool.too_large:
            self._fail(
                BodyTooLarge(f"Unable to download image: {self.url}, over {self.spool.limit} bytes")
            )

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        if self.finished.called:
            return
        if not reason.check(ResponseDone, PotentialDataLoss):
            self._fail(self._connection_error(reason))
        elif self.spool.size < MINIMUM_IMAGE_BYTES:
            self._fail(EmptyFile())
        else:
            self._deadline.cancel()
            self.finished.callback(self.spool)

    def _fail(self, error: ImageServerError) -> None:
        # Cancelling the request below can fail it again, re-entering here: the first reason wins.
        if self.finished.called or self._failing:
            return
        self._failing = True
        if self._deadline.active():
            self._deadline.cancel()
        if self._request is not None:
            self._request.cancel()
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]
        self.finished.errback(error)


class _Refuse(Protocol):
    """The body of a response we do not want: stop it at once rather than read it."""

    def connectionMade(self) -> None:
        self.transport.stopProducing()  # type: ignore[union-attr]


def _address(url: str) -> str:
    """``host:port`` of an http or https URL, or `SourceUnavailable` for anything else."""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as error:
        raise SourceUnavailable(f"Unable to download image: {url}, {error}") from error
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SourceUnavailable(f"Unable to download image: {url}, only http and https URLs")
    if ":" in parts.hostname:  # an IPv6 literal, bracketed as Go writes it
        return f"[{parts.hostname}]:{port}"
    return f"{parts.hostname}:{port}"


def _connection_error(url: str, address: str, reason: Failure) -> SourceUnavailable:
    """Go-style wording for transport errors, so clients can tell refusal from a bad status."""
    failure = reason
    if reason.check(ResponseFailed) and reason.value.reasons:
        failure = reason.value.reasons[0]
    if failure.check(net_error.ConnectionRefusedError):
        detail = f"dial tcp {address}: connect: connection refused"
    elif failure.check(net_error.DNSLookupError):
        detail = f"dial tcp: lookup {address.rpartition(':')[0]}: no such host"
    elif failure.check(net_error.TimeoutError):
        detail = f"dial tcp {address}: i/o timeout"
    else:
        detail = f"dial tcp {address}: {failure.getErrorMessage()}"
    return SourceUnavailable(f'Get "{url}": {detail}')


def _request_target(url: str) -> EncodedURL:
    """The URL for the HTTP client: spaces escaped, the rest as the user wrote it.

    Parsed from text, not encoded to bytes: the client makes it ASCII itself (an
    internationalised name in its IDNA form, other non-ASCII characters percent-encoded), where
    it would refuse UTF-8 bytes.
    """
    return _SourceURL.from_text(url.replace(" ", "%20"))


class _SourceURL(EncodedURL):
    """A URL whose ASCII form keeps an IPv6 literal host as it is.

    treq makes every URL ASCII through hyperlink's ``to_uri``, which puts the host through IDNA;
    IDNA refuses the colons of an IPv6 literal, so ``http://[::1]/x.jpg`` could never be
    fetched.  A name still goes through IDNA (``bücher.example`` is sent as
    ``xn--bcher-kva.example``).
    """

    def to_uri(self) -> EncodedURL:
        if ":" not in self.host:  # only an IPv6 literal has one: the port is kept apart
            return super().to_uri()
        return self.replace(host="").to_uri().replace(host=self.host)


def _discard(reason: Failure, spool: Spool) -> Failure:
    spool.close()
    return reason
