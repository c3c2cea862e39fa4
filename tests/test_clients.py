"""Clients that misbehave with their bodies: too large, too slow, silent, or gone half-way.

Each test speaks HTTP by hand over a real socket, so it can stop, stall or lie exactly where it
wants, and then checks that nothing is left in the store and that the server still serves.
"""

from __future__ import annotations

import json
import os

from tests.support import (
    WINE_HASH,
    ServerTestCase,
    fixture,
    raw_connection,
    raw_exchange,
    request,
    sleep,
)

LIMIT = 100_000  # over wine.jpg (90 KB)


def upload_head(length: int, *extra: bytes) -> bytes:
    """The request line and headers of a raw upload of ``length`` bytes to ``/p``."""
    lines = [b"POST /p HTTP/1.1", b"Host: x", b"Content-Length: %d" % length, *extra]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def status_and_body(answer: bytes) -> tuple[bytes, bytes, dict[str, object]]:
    """The status line, the raw head and the JSON body of one HTTP/1.1 answer."""
    head, _, body = answer.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in head.lower():
        body = dechunk(body)
    return head.split(b"\r\n", 1)[0], head, json.loads(body)


def dechunk(body: bytes) -> bytes:
    whole = b""
    while True:
        size, _, body = body.partition(b"\r\n")
        length = int(size, 16)
        if length == 0:
            return whole
        whole, body = whole + body[:length], body[length + 2 :]


class BodyTests(ServerTestCase):
    async def setUp(self) -> None:  # type: ignore[override]
        await self.start_server(max_upload_bytes=LIMIT, read_timeout=1)

    def spooled(self) -> list[str]:
        return os.listdir(self.local("tmp"))

    async def test_oversized_body_with_expect_is_refused_before_it_is_sent(self) -> None:
        """``Expect: 100-continue`` over the limit: a 413 instead of the go, then the end."""
        client = await raw_connection(self.url)
        client.transport.write(upload_head(10 * LIMIT, b"Expect: 100-continue"))
        answer = await client.done  # the server closes without a byte of the body
        status, head, body = status_and_body(answer)
        self.assertEqual(status, b"HTTP/1.1 413 Request Entity Too Large")
        self.assertNotIn(b"100 Continue", answer)
        self.assertIn(b"connection: close", head.lower())
        self.assertEqual(
            body, {"error": f"the body is over {LIMIT} bytes", "code": "body_too_large"}
        )
        self.assertEqual(self.spooled(), [])
        self.assertEqual(self.store_files(), [])
        await self.assert_still_serving()

    async def test_expect_within_the_limit_gets_the_go(self) -> None:
        body = fixture("wine.jpg")
        client = await raw_connection(self.url)
        client.transport.write(
            upload_head(len(body), b"Expect: 100-continue", b"Connection: close")
        )
        await self.wait_for(lambda: b"100 Continue" in client.received, "a 100 Continue")
        client.transport.write(body)
        go, _, answer = (await client.done).partition(b"\r\n\r\n")
        self.assertEqual(go, b"HTTP/1.1 100 Continue")
        status, _, details = status_and_body(answer)
        self.assertEqual(status, b"HTTP/1.1 200 OK")
        self.assertEqual(details["hash"], WINE_HASH)

    async def test_oversized_body_without_expect_is_never_written(self) -> None:
        """A client that sends a declared-too-large body at once gets its 413; no byte hits disk."""
        client = await raw_connection(self.url)
        client.transport.write(upload_head(3 * LIMIT) + b"x" * LIMIT)
        # Its headers are in: this is when a body's spool would have been made.
        await self.wait_for(lambda: self.server.site.in_flight == 1, "the request's headers")
        self.assertEqual(self.spooled(), [])  # nothing is spooled while the body arrives
        client.transport.write(b"x" * 2 * LIMIT)
        status, _, body = status_and_body(await client.done)
        self.assertEqual(status, b"HTTP/1.1 413 Request Entity Too Large")
        self.assertEqual(body["code"], "body_too_large")
        self.assertEqual(self.store_files(), [])
        await self.assert_still_serving()

    async def test_chunked_body_over_the_limit(self) -> None:
        """A chunked body declares no length: it is counted as it comes, refused once over."""
        chunk = b"x" * 30_000
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(4))
        answer = await raw_exchange(
            self.url,
            b"POST /p HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n",
        )
        status, _, body = status_and_body(answer)
        self.assertEqual(status, b"HTTP/1.1 413 Request Entity Too Large")
        self.assertEqual(body["error"], f"the body is over {LIMIT} bytes")
        self.assertEqual(self.spooled(), [])
        await self.assert_still_serving()

    async def send_until_answered(self, head: bytes, chunk: bytes) -> tuple[bytes, int]:
        """Send ``head`` then ``chunk`` after ``chunk`` until the server answers (bounded: 4000
        chunks or 20 s); the answer, and how many bytes of body had been sent by then."""
        client = await raw_connection(self.url)
        client.transport.write(head)
        sent = 0
        for _ in range(4000):
            if client.received or client.done.called:
                break
            client.transport.write(chunk)
            sent += len(chunk)
            await sleep(0.005)
        await self.wait_for(lambda: client.received, "an answer", tries=400)
        client.transport.loseConnection()
        return await client.done, sent

    async def test_endless_chunked_body_is_answered_as_it_passes_the_limit(self) -> None:
        """A chunked body that never ends gets its 413 as soon as it passes the limit, not when
        the client stops, and the connection closes."""
        data = b"x" * 16_000
        head = b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        answer, sent = await self.send_until_answered(head, b"%x\r\n%s\r\n" % (len(data), data))
        status, head, body = status_and_body(answer)
        self.assertEqual(status, b"HTTP/1.1 413 Request Entity Too Large")
        self.assertIn(b"connection: close", head.lower())
        self.assertEqual(body["code"], "body_too_large")
        self.assertLess(sent, 4000 * len(data))  # the client was still sending
        self.assertEqual(self.spooled(), [])
        await self.assert_still_serving()

    async def test_endless_declared_body_is_answered_as_it_passes_the_limit(self) -> None:
        answer, sent = await self.send_until_answered(upload_head(10**12), b"x" * 16_000)
        status, _, body = status_and_body(answer)
        self.assertEqual(status, b"HTTP/1.1 413 Request Entity Too Large")
        self.assertEqual(body["code"], "body_too_large")
        self.assertLess(sent, 4000 * 16_000)
        self.assertEqual(self.spooled(), [])
        await self.assert_still_serving()

    async def test_client_that_disconnects_half_way_leaves_nothing(self) -> None:
        body = fixture("wine.jpg")
        client = await raw_connection(self.url)
        client.transport.write(upload_head(len(body)) + body[: len(body) // 2])
        await self.wait_for(lambda: self.spooled() != [], "the body spooled to tmp/")
        client.transport.loseConnection()
        await client.done
        await self.wait_for(lambda: self.spooled() == [], "the half body deleted")
        self.assertEqual(self.store_files(), [])
        await self.assert_still_serving()

    async def test_silent_client_is_dropped_and_does_not_stall_others(self) -> None:
        """A client that stops sending half-way: others are served meanwhile; it is dropped after
        ``--read-timeout`` and its half body deleted."""
        body = fixture("wine.jpg")
        client = await raw_connection(self.url)
        client.transport.write(upload_head(len(body)) + body[:1000])
        await self.wait_for(lambda: self.spooled() != [], "the body spooled to tmp/")
        # A cheap request, so it is answered well within the 1 s read timeout on a slow machine.
        response = await request("GET", f"{self.url}/status_check")
        self.assertEqual(response.code, 200, response.body)
        self.assertFalse(client.done.called)  # still waiting for the rest
        await client.done  # the read timeout (1 s here) ends it
        self.assertNotIn(b"200 OK", client.received)
        await self.wait_for(lambda: self.spooled() == [], "the half body deleted")
        self.assertNotIn("p/6e0", " ".join(self.store_files()))

    async def test_slow_client_is_served(self) -> None:
        """Slow is not silent: a body that trickles in within the read timeout is stored whole."""
        body = fixture("wine.jpg")
        client = await raw_connection(self.url)
        client.transport.write(upload_head(len(body), b"Connection: close"))
        piece = len(body) // 8 + 1
        for start in range(0, len(body), piece):
            client.transport.write(body[start : start + piece])
            await sleep(0.2)
        status, _, answer = status_and_body(await client.done)
        self.assertEqual(status, b"HTTP/1.1 200 OK")
        self.assertEqual(answer["hash"], WINE_HASH)
