"""Sources at IPv6 literals (``?source=http://[::1]:port/…``), against a real source on ::1."""

from __future__ import annotations

import socket

from twisted.internet import reactor
from twisted.internet.protocol import Factory
from twisted.web import resource, server

from tests.support import WINE_HASH, ServerTestCase, fixture


def _has_ipv6_loopback() -> bool:
    """Whether a socket can listen on ::1 here (containers may have no IPv6 at all)."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


class IPv6Source(resource.Resource):
    """A real HTTP server on ::1 serving wine.jpg at every path and recording requests."""

    isLeaf = True

    def __init__(self, testcase: ServerTestCase) -> None:
        super().__init__()
        self.requests: list[server.Request] = []
        port = reactor.listenTCP(0, server.Site(self), interface="::1")
        testcase.addCleanup(port.stopListening)
        self.port = port.getHost().port
        self.url = f"http://[::1]:{self.port}/wine.jpg"

    def render_GET(self, request: server.Request) -> bytes:
        self.requests.append(request)
        return fixture("wine.jpg")


class IPv6LiteralTests(ServerTestCase):
    skip = None if _has_ipv6_loopback() else "no IPv6 loopback on this machine"

    async def test_fetched_where_allowed(self) -> None:
        """With private sources allowed, the literal is connected to, and named bracketed in
        the Host header."""
        await self.start_server(allow_private_sources=True)
        source = IPv6Source(self)
        response = await self.upload(b"{}", query=f"?source={source.url}")
        self.assertEqual(response.code, 200, response.body)
        self.assertEqual(response.json()["hash"], WINE_HASH)
        [sent] = source.requests
        self.assertEqual(sent.getHeader(b"Host"), f"[::1]:{source.port}".encode())

    async def test_refused_by_the_guard(self) -> None:
        await self.start_server(allow_private_sources=False)
        source = IPv6Source(self)
        response = await self.upload(b"{}", query=f"?source={source.url}")
        self.assert_error(
            response, 404, f"Unable to download image: {source.url}, refused: ::1 is ::1"
        )
        self.assertEqual(source.requests, [])
        self.assertEqual(self.store_files(), [])
        self.assert_no_partial_files()

    async def test_connection_refused_names_the_address_bracketed(self) -> None:
        """Go's wording, ``dial tcp [::1]:port``, so the port stays apart from the address."""
        await self.start_server(allow_private_sources=True)
        port = reactor.listenTCP(0, Factory(), interface="::1")
        number = port.getHost().port
        await port.stopListening()
        url = f"http://[::1]:{number}/wine.jpg"
        response = await self.upload(b"{}", query=f"?source={url}")
        self.assert_error(
            response, 404, f'Get "{url}": dial tcp [::1]:{number}: connect: connection refused'
        )
        self.assert_no_partial_files()
