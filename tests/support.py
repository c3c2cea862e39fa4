"""What the end-to-end tests share: a real server on 127.0.0.1 with real workers, a real HTTP
source server, and an HTTP client that leaves no connection behind."""

from __future__ import annotations

import dataclasses
import io
import os
import shutil
from collections.abc import Callable
from typing import Any

import treq
from treq.client import HTTPClient
from twisted.internet import protocol, reactor
from twisted.internet.defer import Deferred
from twisted.trial import unittest
from twisted.web import resource, server
from twisted.web.client import Agent, HTTPConnectionPool

from imageserver.names import Variant
from imageserver.options import Config
from imageserver.service import ImageServer

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
WINE_HASH = "6e0072682e66287b662827da75b244a3"
WINE_DIR = "6e0/072/682/e66287b662827da75b244a3"


def sized(width: int, height: int, quality: int, output_format: str = "jpeg") -> Variant:
    """A plain variant of that size (0: unset), quality and format, as the worker renders it."""
    extension = {"jpeg": "jpg", "heic": "heic"}.get(output_format, output_format)
    return Variant(f"test.{extension}", width, height, quality, extension)


def fixture(name: str) -> bytes:
    with open(os.path.join(FIXTURES, name), "rb") as f:
        return f.read()


def client() -> HTTPClient:
    """treq without persistent connections, so no test leaves a socket open."""
    return HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))


@dataclasses.dataclass
class Response:
    code: int
    headers: Any
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None

    def json(self) -> Any:
        import json

        return json.loads(self.body)


async def request(method: str, url: str, **kwargs: Any) -> Response:
    response = await client().request(method, url, **kwargs)
    body = await treq.content(response)
    return Response(response.code, response.headers, body)


def image_size(body: bytes) -> tuple[int, int, str]:
    """Decode an output: its size and Pillow's format name."""
    from PIL import Image

    with Image.open(io.BytesIO(body)) as image:
        return image.width, image.height, image.format or ""


def distinct_jpeg(index: int) -> bytes:
    """A small JPEG of its own (a different colour each), so every upload has its own hash."""
    from PIL import Image

    buffer = io.BytesIO()
    colour = (index % 256, (index // 256) % 256, (index * 13) % 256)
    Image.new("RGB", (64, 48), colour).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


class ServerTestCase(unittest.TestCase):
    """Starts an `ImageServer` on ephemeral ports in a fresh store for each test."""

    # One worker keeps start-up fast; tests of parallel work raise it.
    config_overrides: dict[str, Any] = {}

    async def wait_for(self, condition: Callable[[], object], what: str, tries: int = 100) -> None:
        """Poll ``condition`` every 50 ms, ``tries`` times at most: bounded, then a failure."""
        for _ in range(tries):
            if condition():
                return
            await sleep(0.05)
        self.fail(f"timed out waiting for {what}")

    async def start_server(self, gc_interval: float = 3600.0, **overrides: Any) -> ImageServer:
        base = self.mktemp()
        os.makedirs(base)
        values: dict[str, Any] = {
            "port": 0,
            "admin_port": 0,
            "local_base_path": base,
            "processor_concurrency": 1,
            "processes": 1,  # whatever the machine's CPUs: several are tests/test_processes.py's
            # Sources in the tests are HTTP servers on 127.0.0.1; the guard's own tests turn it on.
            "allow_private_sources": True,
        }
        values.update(self.config_overrides)
        values.update(overrides)
        self.server = ImageServer(Config(**values), reactor, gc_interval=gc_interval)
        self.server.startService()
        self.addCleanup(self.server.stopService)
        await self.wait_ready()
        self.base_path = base
        self.url = f"http://127.0.0.1:{self.server.main_port._port.getHost().port}"
        self.admin_url = f"http://127.0.0.1:{self.server.admin_port._port.getHost().port}"
        return self.server

    async def wait_ready(self) -> None:
        for _ in range(600):
            if self.server.pool.ready:
                return
            await sleep(0.05)
        self.fail("the worker pool did not start")

    def local(self, *parts: str) -> str:
        return os.path.join(self.base_path, *parts)

    async def upload(self, body: bytes, namespace: str = "p", query: str = "") -> Response:
        """Upload as the Ruby client does: raw bytes with ``Content-Type: application/json``."""
        return await request(
            "POST",
            f"{self.url}/{namespace}{query}",
            data=body,
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )

    async def upload_wine(self, namespace: str = "p") -> None:
        response = await self.upload(fixture("wine.jpg"), namespace)
        self.assertEqual(response.code, 200, response.body)

    async def assert_refused(self, body: bytes, status: int, prefix: str, **kw: str) -> None:
        """An upload fails with a JSON error, stores nothing, and the server keeps serving."""
        response = await self.upload(body, **kw)
        self.assert_error(response, status, prefix)
        self.assertEqual(self.store_files(), [])
        self.assert_no_partial_files()
        await self.assert_still_serving()

    async def assert_still_serving(self) -> None:
        """A small upload still works (small enough for the tests' lowered body limits)."""
        response = await self.upload(fixture("test-hevc-alpha.heic"))
        self.assertEqual(response.code, 200, response.body)

    def assert_error(self, response: Response, status: int, prefix: str) -> None:
        """A JSON error with ``status`` whose message starts with ``prefix``."""
        self.assertEqual(response.code, status, response.body)
        self.assertTrue(response.header("Content-Type").startswith("application/json"))
        message = response.json()["error"]
        self.assertTrue(message.startswith(prefix), f"{message!r} does not start with {prefix!r}")

    def assert_no_partial_files(self) -> None:
        """Nothing half-written anywhere: ``tmp/`` is empty once requests are answered."""
        tmp = self.local("tmp")
        self.assertEqual(os.listdir(tmp) if os.path.isdir(tmp) else [], [])

    def store_files(self) -> list[str]:
        found = []
        for directory, _, files in os.walk(self.base_path):
            relative = os.path.relpath(directory, self.base_path)
            if relative.split(os.sep)[0] == "tmp":
                continue
            found.extend(os.path.join(relative, name) for name in files)
        return sorted(found)


class RawClient(protocol.Protocol):
    """A client that writes bytes by hand and keeps all it hears until the server closes."""

    def __init__(self) -> None:
        self.received = b""
        self.done: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: object = None) -> None:
        self.done.callback(self.received)


async def raw_connection(url: str) -> RawClient:
    """A raw TCP connection to the server at ``url`` (``http://127.0.0.1:port``)."""
    port = int(url.rsplit(":", 1)[1])
    client: RawClient = await protocol.ClientCreator(reactor, RawClient).connectTCP(
        "127.0.0.1", port
    )
    return client


async def raw_exchange(url: str, data: bytes) -> bytes:
    """Send bytes as they are and read the whole answer (for requests treq cannot shape)."""
    client = await raw_connection(url)
    client.transport.write(data)
    return await client.done


def sleep(seconds: float) -> Deferred[None]:
    from twisted.internet import task

    return task.deferLater(reactor, seconds, lambda: None)


class SourceServer(resource.Resource):
    """A real HTTP server on 127.0.0.1 serving ``{path: (status, body)}`` and recording requests."""

    isLeaf = True

    def __init__(self, testcase: unittest.TestCase) -> None:
        super().__init__()
        self.routes: dict[bytes, tuple[int, bytes]] = {}
        self.locations: dict[bytes, bytes] = {}
        self.requests: list[server.Request] = []
        port = reactor.listenTCP(0, server.Site(self), interface="127.0.0.1")
        testcase.addCleanup(port.stopListening)
        self.base = f"http://127.0.0.1:{port.getHost().port}"

    def serve(self, path: str, body: bytes, status: int = 200) -> str:
        self.routes[path.encode()] = (status, body)
        return self.base + path

    def redirect(self, path: str, target: str) -> str:
        """Answer ``path`` with a 302 to ``target``."""
        self.locations[path.encode()] = target.encode()
        return self.serve(path, b"", 302)

    def render_GET(self, request: server.Request) -> bytes:
        self.requests.append(request)
        status, body = self.routes.get(request.path, (404, b"not here"))
        request.setResponseCode(status)
        if request.path in self.locations:
            request.setHeader(b"Location", self.locations[request.path])
        return body


def copy_fixture(name: str, destination: str) -> str:
    shutil.copy(os.path.join(FIXTURES, name), destination)
    return destination
