"""A small S3 client: botocore signs (SigV4), treq sends, over the server's one connection pool.

No boto3 and no threads per request: botocore is used only to sign, and only the credential
lookup, which may refresh a role's keys over the network, runs in a thread.  Bodies stream from
and to files.  S3's error XML becomes an `S3Error` carrying S3's own code.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote, urlencode, urlsplit

import treq
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials, ReadOnlyCredentials
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.web.client import FileBodyProducer
from twisted.web.iweb import IResponse

from imageserver.spool import Spool

_NAMESPACE = "{http://s3.amazonaws.com/doc/2006-03-01/}"
# Per request: time to the response's headers (a PUT's body streams within it).
REQUEST_TIMEOUT = 240.0
# A year-long immutable Cache-Control, for a CDN in front of the bucket (DECISIONS D8).
CACHE_CONTROL = "public, max-age=31536000, immutable"


class S3Error(Exception):
    """S3 answered with an error (``code`` is S3's, e.g. ``AccessDenied``), or could not be reached
    (``status`` 0, ``code`` ``Unreachable``)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"S3 {code} ({status}): {message}" if status else f"S3 {message}")
        self.status = status
        self.code = code

    @property
    def retryable(self) -> bool:
        """Worth trying again: S3 or the network failed, not the request."""
        return self.status == 0 or self.status >= 500 or self.code in ("SlowDown", "RequestTimeout")


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
    role's keys is a network call too.
    """

    def __init__(self) -> None:
        self._credentials: Credentials | None = None

    def frozen(self) -> Deferred[ReadOnlyCredentials]:
        return deferToThread(self._lookup)

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
        if self.endpoint:
            base = f"{self.endpoint.rstrip('/')}/{self.name}"
        else:
            base = f"https://{self.name}.s3.{self.region or 'us-east-1'}.amazonaws.com"
        url = f"{base}/{path}" if key else base
        if query:
            url += "?" + urlencode(sorted(query.items()), quote_via=quote, safe="~")
        return url


class S3Client:
    """PUT, GET, HEAD, LIST and DELETE on one bucket."""

    def __init__(
        self, http: Any, bucket: Bucket, credentials: CredentialSource, acl: str = ""
    ) -> None:
        self._http = http
        self.bucket = bucket
        self._credentials = credentials
        self._acl = acl

    async def put_file(self, key: str, path: str, content_type: str) -> None:
        headers = {"Content-Type": content_type, "Cache-Control": CACHE_CONTROL}
        if self._acl:
            headers["x-amz-acl"] = self._acl
        with open(path, "rb") as body:
            response = await self._request("PUT", key, headers=headers, body=body)
        await _expect(response, 200)

    async def get_into(self, key: str, spool: Spool) -> bool:
        """Write an object into ``spool``; False when it does not exist."""
        response = await self._request("GET", key)
        if response.code == 404:
            await treq.content(response)
            return False
        await _expect(response, 200, keep_body=True)
        await treq.collect(response, spool.write)
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

    async def list_keys(self, prefix: str, page_size: int = 1000) -> list[str]:
        """Every key under ``prefix``, following ListObjectsV2's pages."""
        keys: list[str] = []
        token = ""
        while True:
            query = {"list-type": "2", "prefix": prefix, "max-keys": str(page_size)}
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
    ) -> IResponse:
        url = self.bucket.url(key, query)
        request = AWSRequest(method=method, url=url, headers=dict(headers or {}))
        # Bodies stream from disk, so they are not hashed into the signature.
        request.headers["X-Amz-Content-SHA256"] = "UNSIGNED-PAYLOAD"
        credentials = await self._credentials.frozen()
        S3SigV4Auth(credentials, "s3", self.bucket.region or "us-east-1").add_auth(request)
        signed = {name.encode(): [value.encode()] for name, value in request.headers.items()}
        try:
            response: IResponse = await self._http.request(
                method,
                url.encode("ascii"),
                headers=signed,
                data=FileBodyProducer(body) if body is not None else None,
                timeout=REQUEST_TIMEOUT,
            )
        except Exception as error:  # connection refused, DNS, timeout...
            host = urlsplit(url).netloc
            raise S3Error(0, "Unreachable", f"{host} could not be reached: {error}") from error
        return response


async def _expect(response: IResponse, status: int, keep_body: bool = False) -> bytes:
    """Return the body of a response with ``status``; raise `S3Error` for anything else."""
    if response.code == status or (status == 204 and response.code == 200):
        return b"" if keep_body else await treq.content(response)
    body = await treq.content(response)
    code, message = f"Http{response.code}", body.decode("utf-8", "replace")[:200]
    if body.startswith(b"<"):
        try:
            document = ElementTree.fromstring(body)
            code = document.findtext("Code") or code
            message = document.findtext("Message") or message
        except ElementTree.ParseError:
            pass
    raise S3Error(response.code, code, message)
