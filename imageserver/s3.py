"""A small S3 client: botocore signs (SigV4), treq sends, over the server's one connection pool.

No boto3 and no threads per request: botocore is used only to sign, and only the credential
lookup, which may refresh a role's keys over the network, runs in a thread.  Bodies stream from
and to files.  S3's error XML becomes an `S3Error` carrying S3's own code, and so does a bucket out
of reach (a failure of the network, not any failure: a bug of ours keeps its own exception and its
traceback).  Every request is bounded (`_Watchdog`): a bucket that accepts connections and never
answers costs a caller seconds, not minutes.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO, NoReturn, Protocol
from urllib.parse import quote, urlencode, urlsplit

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials, ReadOnlyCredentials
from twisted.internet import protocol
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.interfaces import IConsumer, IReactorTime
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.web.client import FileBodyProducer, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse

from imageserver.backoff import NETWORK_ERRORS
from imageserver.spool import Spool

_NAMESPACE = "{http://s3.amazonaws.com/doc/2006-03-01/}"
# Bytes a second a body must at least move at: a request's whole duration is bounded by twice its
# timeout (one for the answer to start, one for the rest) plus its bodies at this rate.  A
# thumbnail gets a fraction of a second more, a 100 MB original (the default upload limit) 200 s:
# generous for a link that works, and a bucket that trickles a byte now and then cannot hold a
# request for ever.
MINIMUM_RATE = 512 * 1024
# Seconds frozen credentials from the AWS chain are reused (botocore refreshes role keys well
# before they expire, so a few minutes is safe).
CREDENTIALS_REUSE = 300.0


class S3Error(Exception):
    """S3 answered with an error (``code`` is S3's, e.g. ``AccessDenied``), or could not be reached
    (``status`` 0, ``code`` ``Unreachable``, or ``Timeout`` when it went silent)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"S3 {code} ({status}): {message}" if status else f"S3 {message}")
        self.status = status
        self.code = code


class CredentialSource(Protocol):
    def frozen(self) -> Deferred[ReadOnlyCredentials]: ...


@dataclass(frozen=True)
class StaticCredentials:
    """Keys given on the command line."""

    access_key: str
    secret_key: str

    def frozen(self) -> Deferred[ReadOnlyCredentials]:
        return Deferred.fromCoroutine(self._frozen())

    async def _frozen(self) -> ReadOnlyCredentials:
        return Credentials(self.access_key, self.secret_key).get_frozen_credentials()


class ChainCredentials:
    """The standard AWS chain (environment, profiles, container and instance roles).

    Looked up in a thread: the chain may call the instance metadata service, and refreshing a
    role's keys is a network call too.  Frozen keys are reused for a few minutes.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._credentials: Credentials | None = None
        self._frozen: tuple[float, ReadOnlyCredentials] | None = None
        self._clock = clock

    def frozen(self) -> Deferred[ReadOnlyCredentials]:
        if self._frozen is not None and self._clock() - self._frozen[0] < CREDENTIALS_REUSE:
            return succeed(self._frozen[1])
        looking = deferToThread(self._lookup)

        def keep(credentials: ReadOnlyCredentials) -> ReadOnlyCredentials:
            self._frozen = (self._clock(), credentials)
            return credentials

        return looking.addCallback(keep)

    def _lookup(self) -> ReadOnlyCredentials:
        if self._credentials is None:
            import botocore.session

            found = botocore.session.get_session().get_credentials()
            if found is None:
                raise S3Error(0, "NoCredentials", "no AWS credentials were found")
            self._credentials = found
        return self._credentials.get_frozen_credentials()


@dataclass(frozen=True)
class Bucket:
    """Where a bucket's objects are addressed.

    A custom endpoint (MinIO, moto, R2...) is addressed path-style, ``{endpoint}/{bucket}/{key}``;
    AWS itself virtual-hosted, ``https://{bucket}.s3.{region}.amazonaws.com/{key}``.
    """

    name: str
    region: str
    endpoint: str = ""

    def url(self, key: str = "", query: Mapping[str, str] | None = None) -> str:
        path = quote(key, safe="/~")
        region = self.region or "us-east-1"
        if self.endpoint:
            base = f"{self.endpoint.rstrip('/')}/{self.name}"
            url = f"{base}/{path}" if key else base
        elif "." in self.name:  # a dotted name breaks the wildcard certificate: path-style
            url = f"https://s3.{region}.amazonaws.com/{self.name}/{path}".removesuffix("/")
        else:  # virtual-hosted; the bucket itself is "/"
            url = f"https://{self.name}.s3.{region}.amazonaws.com/{path}"
        if query:
            url += "?" + urlencode(sorted(query.items()), quote_via=quote, safe="~")
        return url


class S3Client:
    """PUT, GET, HEAD, LIST and DELETE on one bucket, each bounded by its `_Watchdog`."""

    def __init__(
        self,
        http: Any,
        bucket: Bucket,
        credentials: CredentialSource,
        reactor: IReactorTime,
        timeout: float,
        acl: str = "",
    ) -> None:
        self._http = http
        self.bucket = bucket
        self._credentials = credentials
        self._reactor = reactor
        self._acl = acl
        self._timeout = timeout

    async def put_file(self, key: str, path: str, content_type: str, cache_control: str) -> None:
        headers = {"Content-Type": content_type, "Cache-Control": cache_control}
        if self._acl:
            headers["x-amz-acl"] = self._acl
        with open(path, "rb") as body:
            answer = await self._request("PUT", key, headers, body=body)
        await answer.expect(200)

    async def get_into(self, key: str, spool: Spool) -> bool:
        """Write an object into ``spool``; False when it does not exist.

        The body must arrive as long as S3 said it would be.
        """
        answer = await self._request("GET", key)
        if answer.code == 404:
            await answer.read()
            return False
        await answer.expect(200, keep_body=True)
        await answer.receive(spool.write)
        if answer.length not in (UNKNOWN_LENGTH, spool.size):
            raise S3Error(0, "Truncated", f"{key}: {spool.size} of {answer.length} bytes")
        return True

    async def exists(self, key: str) -> bool:
        answer = await self._request("HEAD", key)
        if answer.code == 404:
            await answer.read()
            return False
        await answer.expect(200)
        return True

    async def delete(self, key: str) -> None:
        answer = await self._request("DELETE", key)
        await answer.expect(204)

    async def list_keys(self, prefix: str, page_size: int = 1000, delimiter: str = "") -> list[str]:
        """Every key under ``prefix`` (with a delimiter, only the level below it), following
        ListObjectsV2's pages."""
        keys: list[str] = []
        token = ""
        while True:
            query = {"list-type": "2", "prefix": prefix, "max-keys": str(page_size)}
            if delimiter:
                query["delimiter"] = delimiter
            if token:
                query["continuation-token"] = token
            answer = await self._request("GET", "", query=query)
            document = ElementTree.fromstring(await answer.expect(200))
            keys.extend(element.text or "" for element in document.iter(f"{_NAMESPACE}Key"))
            token = document.findtext(f"{_NAMESPACE}NextContinuationToken") or ""
            if document.findtext(f"{_NAMESPACE}IsTruncated") != "true" or not token:
                return keys

    async def check(self) -> None:
        """Raise `S3Error` unless the bucket answers to these credentials."""
        answer = await self._request("HEAD", "")
        await answer.expect(200)

    async def _request(
        self,
        method: str,
        key: str,
        headers: dict[str, str] | None = None,
        query: Mapping[str, str] | None = None,
        body: BinaryIO | None = None,
    ) -> _Answer:
        """Send a request; the answer's status and headers, its body still to be read.

        The watchdog starts once the request is signed: it bounds connecting, sending the body,
        and waiting for the answer, then (in `_Answer`) reading the answer's body.
        """
        url = self.bucket.url(key, query)
        request = AWSRequest(method=method, url=url, headers=dict(headers or {}))
        try:
            credentials = await self._credentials.frozen()
        except S3Error:
            raise
        except Exception as error:  # the chain's own errors (expired SSO, no metadata service...)
            raise S3Error(0, "NoCredentials", f"AWS credentials: {error}") from error
        _UnsignedPayloadAuth(credentials, "s3", self.bucket.region or "us-east-1").add_auth(request)
        signed = {name.encode(): [value.encode()] for name, value in request.headers.items()}
        watchdog = _Watchdog(self._reactor, self._timeout, urlsplit(url).netloc)
        producer = None
        if body is not None:
            producer = _WatchedBody(body, watchdog.progress)
            watchdog.allow(producer.length)
        sending = self._http.request(
            method, url.encode("ascii"), headers=signed, data=producer, unbuffered=True
        )
        watchdog.cut(sending)
        try:
            response: IResponse = await sending
        except Exception as error:
            watchdog.stop()
            watchdog.fail(error, "could not be reached")
        watchdog.progress()
        return _Answer(response, watchdog)


class _Watchdog:
    """The clock of one S3 request: it cuts off a request that stalls or drags, so that nothing
    waits on a bucket that accepts connections and never answers.

    Stalling is ``timeout`` seconds without progress: the connection not made, no piece of the
    body taken by the socket, no answer, no byte of the answer's body.  Dragging is the whole
    exchange outlasting twice ``timeout`` plus its bodies at `MINIMUM_RATE`: a bucket that
    trickles a byte now and then is cut off too, while a large body on a slow but working link
    is not.
    """

    def __init__(self, reactor: IReactorTime, timeout: float, host: str) -> None:
        self._timeout = timeout
        self._host = host
        self._allowed = 2 * timeout
        self._target: Deferred[Any] | None = None
        self.expired = ""
        self._stall = reactor.callLater(timeout, self._expire, f"nothing for {timeout:g} s")
        self._whole = reactor.callLater(self._allowed, self._dragged)

    def cut(self, target: Deferred[Any]) -> None:
        """Cancel ``target`` (the step the request is at) when time runs out, or now if it has."""
        self._target = target
        if self.expired:
            target.cancel()

    def progress(self) -> None:
        if self._stall.active():
            self._stall.reset(self._timeout)

    def allow(self, size: int) -> None:
        """Give the whole exchange time for ``size`` more bytes of body."""
        if self._whole.active():
            self._allowed += size / MINIMUM_RATE
            self._whole.delay(size / MINIMUM_RATE)

    def stop(self) -> None:
        for call in (self._stall, self._whole):
            if call.active():
                call.cancel()

    def fail(self, error: Exception, what: str) -> NoReturn:
        """Raise what a failed step raises: `S3Error` (``Timeout`` once time ran out,
        ``Unreachable`` when the network failed), the cancellation itself when the caller
        cancelled (a server stopping), or ``error`` as it is: a bug, whose traceback must show."""
        if self.expired:
            raise S3Error(0, "Timeout", f"{self._host} timed out: {self.expired}") from error
        if _cancelled(error):
            raise CancelledError() from error
        if isinstance(error, NETWORK_ERRORS):
            raise S3Error(0, "Unreachable", f"{self._host} {what}: {error}") from error
        raise error

    def _dragged(self) -> None:
        self._expire(f"not done in {self._allowed:.3g} s")

    def _expire(self, why: str) -> None:
        self.stop()
        self.expired = why
        if self._target is not None:
            self._target.cancel()


def _cancelled(error: Exception) -> bool:
    """Whether ``error`` is a cancellation, or the HTTP client's wrapping of one (its errors carry
    the failures they wrap as ``reasons``)."""
    reasons: list[Failure] = getattr(error, "reasons", [])
    cancellations = (CancelledError, ConnectingCancelledError)
    return isinstance(error, cancellations) or any(r.check(*cancellations) for r in reasons)


class _WatchedBody(FileBodyProducer):
    """A file as a request body, telling the watchdog of each piece handed to the connection
    (which takes more only as the socket drains, so a peer that stops reading stalls it)."""

    def __init__(self, body: BinaryIO, progress: Callable[[], None]) -> None:
        super().__init__(body)
        self._progress = progress

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        return super().startProducing(_NotingConsumer(consumer, self._progress))


@dataclass(frozen=True)
class _NotingConsumer:
    consumer: IConsumer
    progress: Callable[[], None]

    def write(self, data: bytes) -> None:
        self.consumer.write(data)
        self.progress()


class _Answer:
    """S3's answer to one request: status and headers here, the body read under the request's
    watchdog, which stops once the body is in (or the read fails)."""

    def __init__(self, response: IResponse, watchdog: _Watchdog) -> None:
        self._response = response
        self._watchdog = watchdog

    @property
    def code(self) -> int:
        return self._response.code

    @property
    def length(self) -> int | object:
        return self._response.length

    async def receive(self, sink: Callable[[bytes], object]) -> None:
        """Hand the body to ``sink`` as it arrives."""
        if self._response.length is not UNKNOWN_LENGTH:
            self._watchdog.allow(self._response.length)
        receiver = _Receiver(sink, self._watchdog.progress)
        self._response.deliverBody(receiver)
        self._watchdog.cut(receiver.done)
        try:
            await receiver.done
        except Exception as error:
            self._watchdog.fail(error, "cut the answer off")
        finally:
            self._watchdog.stop()

    async def read(self) -> bytes:
        pieces: list[bytes] = []
        await self.receive(pieces.append)
        return b"".join(pieces)

    async def expect(self, status: int, keep_body: bool = False) -> bytes:
        """The body of an answer with ``status`` (none yet with ``keep_body``: the caller reads
        it); `S3Error` for any other status."""
        if self.code == status or (status == 204 and self.code == 200):
            return b"" if keep_body else await self.read()
        body = await self.read()
        # A HEAD's error has no body: the reason phrase is all there is to say why.
        reason = body.decode("utf-8", "replace")[:200] or self._response.phrase.decode("latin-1")
        code, message = f"Http{self.code}", reason
        if body.startswith(b"<"):
            try:
                document = ElementTree.fromstring(body)
                code = document.findtext("Code") or code
                message = document.findtext("Message") or message
            except ElementTree.ParseError:
                pass
        raise S3Error(self.code, code, message)


class _Receiver(protocol.Protocol):
    """Receives an answer's body into a sink; ``done`` fires when it is all in.  Cancelling
    ``done`` (the watchdog, or a caller going away) drops the connection."""

    def __init__(self, sink: Callable[[bytes], object], progress: Callable[[], None]) -> None:
        self._sink = sink
        self._progress = progress
        self.done: Deferred[None] = Deferred(lambda _: self._drop())

    def dataReceived(self, data: bytes) -> None:
        self._progress()
        try:
            self._sink(data)
        except Exception:
            self._finish(Failure())
            self._drop()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self._finish(None if reason.check(ResponseDone, PotentialDataLoss) else reason)

    def _drop(self) -> None:
        if self.transport is not None:
            self.transport.loseConnection()

    def _finish(self, failure: Failure | None) -> None:
        if self.done.called:
            return
        if failure is None:
            self.done.callback(None)
        else:
            self.done.errback(failure)


class _UnsignedPayloadAuth(S3SigV4Auth):
    """SigV4 with ``X-Amz-Content-SHA256: UNSIGNED-PAYLOAD``: bodies stream from disk, so they are
    not hashed in advance (botocore would otherwise sign the hash of an empty body)."""

    def _should_sha256_sign_payload(self, request: AWSRequest) -> bool:
        return False
