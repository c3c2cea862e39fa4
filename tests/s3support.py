"""A real S3 protocol server for the tests: moto in server mode on 127.0.0.1, signatures checked.

One moto process serves the whole test run (started on first use, stopped at exit); every test
gets a bucket of its own.  The first three requests moto answers unsigned create an IAM user and
its keys; from then on every request must be signed with them, so a badly signed request fails.
Around it: a proxy that fails requests on purpose, and a bucket that never answers.
"""

from __future__ import annotations

import atexit
import itertools
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import botocore.session
import treq
from treq.client import HTTPClient
from twisted.internet import protocol, reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IAddress
from twisted.internet.task import LoopingCall
from twisted.protocols.portforward import ProxyFactory
from twisted.trial import unittest
from twisted.web import resource, server
from twisted.web.client import Agent, HTTPConnectionPool

from tests.processes import free_port

_buckets = itertools.count()


@dataclass
class Moto:
    endpoint: str
    access_key: str
    secret_key: str
    process: subprocess.Popen[bytes]

    def client(self, secret_key: str | None = None) -> Any:
        """A botocore S3 client signed with the test user's keys."""
        return botocore.session.get_session().create_client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
        )

    def new_bucket(self) -> str:
        name = f"images-{os.getpid()}-{next(_buckets)}"
        self.client().create_bucket(Bucket=name)
        return name

    def objects(self, bucket: str) -> dict[str, dict[str, Any]]:
        """Every object: key -> its body, content type and cache control."""
        s3 = self.client()
        found = {}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                got = s3.get_object(Bucket=bucket, Key=item["Key"])
                found[item["Key"]] = {
                    "body": got["Body"].read(),
                    "content_type": got.get("ContentType"),
                    "cache_control": got.get("CacheControl"),
                }
        return found


_moto: Moto | None = None


def moto() -> Moto:
    """The test run's moto server, started on first use."""
    global _moto
    if _moto is None:
        _moto = _start_moto()
        atexit.register(_moto.process.kill)
    return _moto


def _start_moto() -> Moto:
    port = free_port()
    binary = os.path.join(os.path.dirname(sys.executable), "moto_server")
    environment = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="3")
    process = subprocess.Popen(
        [binary, "-H", "127.0.0.1", "-p", str(port)],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            time.sleep(0.05)
    iam = botocore.session.get_session().create_client(
        "iam",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="bootstrap",
        aws_secret_access_key="bootstrap",
    )
    iam.create_user(UserName="imageserver")
    key = iam.create_access_key(UserName="imageserver")["AccessKey"]
    policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
    }
    iam.put_user_policy(UserName="imageserver", PolicyName="s3", PolicyDocument=json.dumps(policy))
    return Moto(endpoint, key["AccessKeyId"], key["SecretAccessKey"], process)


class FaultyProxy(resource.Resource):
    """A real HTTP server between the image server and moto that can fail requests on purpose.

    ``fail(method, times, status)`` answers the next ``times`` requests of that method with
    ``status``; everything else is forwarded as it is (the Host header too, so signatures hold).
    ``requests`` records (method, path) of every request seen.
    """

    isLeaf = True

    def __init__(self, testcase: unittest.TestCase, target: str) -> None:
        super().__init__()
        self.target = target
        self.failures: list[tuple[bytes, int]] = []
        self.requests: list[tuple[str, str]] = []
        self.payload_hashes: list[str] = []
        self.gates: dict[bytes, Deferred[None]] = {}
        self.port = reactor.listenTCP(0, server.Site(self), interface="127.0.0.1")
        testcase.addCleanup(self.port.stopListening)
        self.http = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
        self.endpoint = f"http://127.0.0.1:{self.port.getHost().port}"

    def fail(self, method: str, times: int, status: int = 500) -> None:
        self.failures.extend([(method.encode(), status)] * times)

    def hold(self, method: str) -> Deferred[None]:
        """Hold the answers to requests of ``method`` (moto has already acted on them) until the
        returned Deferred is fired."""
        gate: Deferred[None] = Deferred()
        self.gates[method.encode()] = gate
        return gate

    def render(self, request: server.Request) -> Any:
        self.requests.append((request.method.decode(), request.uri.decode()))
        self.payload_hashes.append((request.getHeader(b"x-amz-content-sha256") or b"").decode())
        for index, (method, status) in enumerate(self.failures):
            if method == request.method:
                del self.failures[index]
                request.setResponseCode(status)
                request.content.read()
                return b"<Error><Code>InternalError</Code><Message>injected</Message></Error>"
        ensureDeferred(self._forward(request))
        return server.NOT_DONE_YET

    async def _forward(self, request: server.Request) -> None:
        gate = self.gates.get(request.method)
        headers = {
            name: values
            for name, values in request.requestHeaders.getAllRawHeaders()
            if name.lower() not in (b"content-length", b"connection")
        }
        body = request.content.read()
        response = await self.http.request(
            request.method.decode(),
            (self.target + request.uri.decode()).encode(),
            headers=headers,
            data=body if body else None,
        )
        content = await treq.content(response)
        if gate is not None:
            await gate
        request.setResponseCode(response.code)
        for name, values in response.headers.getAllRawHeaders():
            if name.lower() not in (
                b"content-length",
                b"transfer-encoding",
                b"connection",
                b"date",
                b"server",
            ):
                for value in values:
                    request.responseHeaders.addRawHeader(name, value)
        request.write(content)
        request.finish()

    def puts_of(self, key_part: str) -> int:
        return sum(1 for method, path in self.requests if method == "PUT" and key_part in path)

    def gets_of(self, key_part: str) -> int:
        return sum(1 for method, path in self.requests if method == "GET" and key_part in path)


class _Silent(protocol.Protocol):
    """Accepts a connection and says nothing, or only what its `SilentBucket` is set to say."""

    def __init__(self, bucket: SilentBucket) -> None:
        self.bucket = bucket
        self.asked = False
        self.trickling = LoopingCall(lambda: self.transport.write(b"x"))  # type: ignore[union-attr]

    def connectionMade(self) -> None:
        self.bucket.connections.append(self)
        if not self.bucket.reads:
            self.transport.pauseProducing()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        if self.asked:
            return
        self.asked = True
        self.transport.write(self.bucket.prefix)  # type: ignore[union-attr]
        if self.bucket.trickle:
            self.trickling.start(0.3)

    def connectionLost(self, reason: object = None) -> None:
        if self.trickling.running:
            self.trickling.stop()


class SilentBucket(protocol.Factory):
    """A TCP server on 127.0.0.1 that accepts connections and never answers, as a proxy in front
    of an unreachable S3 does, until `forward_to` makes it forward new connections to a real one.

    ``reads = False`` leaves what is sent unread (the sender's buffers fill up); ``prefix`` is
    written on each connection once asked, before the silence (an answer that stops half-way), and
    ``trickle`` then sends a byte every 0.3 s.
    """

    def __init__(self, testcase: unittest.TestCase) -> None:
        self.connections: list[_Silent] = []
        self.reads = True
        self.prefix = b""
        self.trickle = False
        self._forward: ProxyFactory | None = None
        self.port = reactor.listenTCP(0, self, interface="127.0.0.1")
        testcase.addCleanup(self.close)
        self.endpoint = f"http://127.0.0.1:{self.port.getHost().port}"

    def buildProtocol(self, addr: IAddress) -> protocol.Protocol | None:
        if self._forward is not None:
            return self._forward.buildProtocol(addr)
        return _Silent(self)

    def forward_to(self, endpoint: str) -> None:
        host, port = endpoint.removeprefix("http://").split(":")
        self._forward = ProxyFactory(host, int(port))

    async def close(self) -> None:
        for connection in self.connections:
            connection.transport.abortConnection()  # type: ignore[union-attr]
        await self.port.stopListening()
