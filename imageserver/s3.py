"""A small S3 client: botocore signs (SigV4), treq sends, over the server's one connection pool.

No boto3 and no threads per request: botocore is used only to sign, and only the credential
lookup, which may refresh a role's keys over the network, runs in a thread.  Bodies stream from
and to files.  S3's error XML becomes an `S3Error` carrying S3's own code.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote, urlencode, urlsplit

import treq
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials, ReadOnlyCredentials
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThread
from twisted.web.client import FileBodyProducer
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse

from imageserver.spool import Spool

_NAMESPACE = "{http://s3.amazonaws.com/doc/2006-03-01/}"
# Seconds until a response's headers: short for metadata, long for a PUT (its body goes first).
REQUEST_TIMEOUT = 30.0
PUT_TIMEOUT = 240.0
# Seconds for a whole GET body to arrive.
READ_TIMEOUT = 300.0
# Seconds frozen credentials from the AWS chain are reused (botocore refreshes role keys well
# before they expire, so a few minutes is safe).
CREDENTIALS_REUSE = 300.0


class S3Error(Exception):
    """S3 answered with an error (``code`` is S3's, e.g. ``AccessDenied``), or could not be reached
    (``status`` 0, ``code`` ``Unreachable``)."""

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
    """PUT, GET, HEAD, LIST and DELETE on one bucket."""

    def __init__(
        self,
        http: Any,
        bucket: Bucket,
        credentials: CredentialSource,
        reactor: IReactorTime,
        acl: str = "",
    ) -> None:
        self._http = http
        self.bucket = bucket
        self._credentials = credentials
        self._reactor = reactor
        self._acl = acl

    async def put_file(self, key: str, path: str, content_type: str, cache_control: str) -> None:
        headers = {"Content-Type": content_type, "Cache-Control": cache_control}
        if self._acl:
            headers["x-amz-acl"] = self._acl
        with open(path, "rb") as body:
            response = await self._request("PUT", key, headers, body=body, timeout=PUT_TIMEOUT)
        await _expect(response, 200)

    async def get_into(self, key: str, spool: Spool) -> bool:
        """Write an object into ``spool``; False when it does not exist.

        The whole body must arrive within `READ_TIMEOUT`, and as long as S3 said it would be.
        """
        response = await self._request("GET", key)
        if response.code == 404:
            await _read(response)
            return False
        await _expect(response, 200, keep_body=True)
        receiving = treq.collect(response, spool.write)
        receiving.addTimeout(READ_TIMEOUT, self._reactor)
        await _guarded(receiving, "the object's body did not arrive")
        if response.length not in (UNKNOWN_LENGTH, spool.size):
            raise S3Error(0, "Truncated", f"{key}: {spool.size} of {response.length} bytes")
        return True

    async def exists(self, key: str) -> bool:
        response = await self._request("HEAD", key)
        if response.code == 404:
            return False
        await _expect(response, 200)
        return True

    async def delete(self, key: str) -> None:
        response = await self._request("DELETE", key)
        await _expect(response, 204)

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
            response = await self._request("GET", "", query=query)
            document = ElementTree.fromstring(await _expect(response, 200))
            keys.extend(element.text or "" for element in document.iter(f"{_NAMESPACE}Key"))
            token = document.findtext(f"{_NAMESPACE}NextContinuationToken") or ""
            if document.findtext(f"{_NAMESPACE}IsTruncated") != "true" or not token:
                return keys

    async def check(self) -> None:
        """Raise `S3Error` unless the bucket answers to these credentials."""
        response = await self._request("HEAD", "")
        await _expect(response, 200)

    async def _request(
        self,
        method: str,
        key: str,
        headers: dict[str, str] | None = None,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        timeout: float = REQUEST_TIMEOUT,
    ) -> IResponse:
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
        sending = self._http.request(
            method,
            url.encode("ascii"),
            headers=signed,
            data=FileBodyProducer(body) if body is not None else None,
            timeout=timeout,
        )
        host = urlsplit(url).netloc
        response: IResponse = await _guarded(sending, f"{host} could not be reached")
        return response


class _UnsignedPayloadAuth(S3SigV4Auth):
    """SigV4 with ``X-Amz-Content-SHA256: UNSIGNED-PAYLOAD``: bodies stream from disk, so they are
    not hashed in advance (botocore would otherwise sign the hash of an empty body)."""

    def _should_sha256_sign_payload(self, request: AWSRequest) -> bool:
        return False


async def _guarded(operation: Deferred[Any], what: str) -> Any:
    """Await a network operation, turning any failure (refused, reset, timed out) into `S3Error`."""
    try:
        return await operation
    except S3Error:
        raise
    except Exception as error:
        raise S3Error(0, "Unreachable", f"{what}: {error}") from error


async def _read(response: IResponse) -> bytes:
    body: bytes = await _guarded(treq.content(response), "the response was cut off")
    return body


async def _expect(response: IResponse, status: int, keep_body: bool = False) -> bytes:
    """Return the body of a response with ``status``; raise `S3Error` for anything else."""
    if response.code == status or (status == 204 and response.code == 200):
        return b"" if keep_body else await _read(response)
    body = await _read(response)
    code, message = f"Http{response.code}", body.decode("utf-8", "replace")[:200]
    if body.startswith(b"<"):
        try:
            document = ElementTree.fromstring(body)
            code = document.findtext("Code") or code
            message = document.findtext("Message") or message
        except ElementTree.ParseError:
            pass
    raise S3Error(response.code, code, message)
