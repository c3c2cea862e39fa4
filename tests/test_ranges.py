"""``Range`` requests: merged, bounded, always answered, and nothing held once the client leaves."""

from __future__ import annotations

import contextlib
import json
import os
import re

from twisted.internet import reactor
from twisted.internet.defer import DeferredList, ensureDeferred
from twisted.trial import unittest

from imageserver.ranges import MAX_RANGES, Multipart, Span, body_length, requested_spans
from tests.processes import IMAGE_SERVER, start_process
from tests.support import (
    WINE_DIR,
    ServerTestCase,
    fixture,
    raw_connection,
    raw_exchange,
    request,
    sleep,
)

WINE = fixture("wine.jpg")
# The request of the report: a thousand one-byte ranges, about 8 KB of header.
THOUSAND_RANGES = "bytes=" + ",".join(f"{n}-{n}" for n in range(1000))


class SpanTests(unittest.TestCase):
    def test_overlapping_and_touching_ranges_are_merged(self) -> None:
        self.assertEqual(requested_spans(b"bytes=0-9,5-14,15-19", 100), [Span(0, 19)])
        self.assertEqual(requested_spans(b"bytes=50-59,0-9", 100), [Span(0, 9), Span(50, 59)])
        self.assertEqual(requested_spans(b"bytes=" + b",".join([b"0-"] * 16), 100), [Span(0, 99)])

    def test_more_than_the_maximum_is_the_whole_file(self) -> None:
        self.assertIsNone(requested_spans(THOUSAND_RANGES.encode(), 100))
        many = ",".join(f"{2 * n}-{2 * n}" for n in range(MAX_RANGES + 1))
        self.assertIsNone(requested_spans(f"bytes={many}".encode(), 100))
        most = ",".join(f"{2 * n}-{2 * n}" for n in range(MAX_RANGES))
        self.assertEqual(len(requested_spans(f"bytes={most}".encode(), 100) or []), MAX_RANGES)

    def test_suffixes_open_ends_and_the_end_of_the_file(self) -> None:
        self.assertEqual(requested_spans(b"bytes=-10", 100), [Span(90, 99)])
        self.assertEqual(requested_spans(b"bytes=-1000", 100), [Span(0, 99)])
        self.assertEqual(requested_spans(b"bytes=90-", 100), [Span(90, 99)])
        self.assertEqual(requested_spans(b"bytes=90-1000", 100), [Span(90, 99)])
        self.assertEqual(requested_spans(b"bytes=0-" + b"9" * 5000, 100), [Span(0, 99)])

    def test_nothing_inside_the_file_is_unsatisfiable(self) -> None:
        self.assertEqual(requested_spans(b"bytes=100-", 100), [])
        self.assertEqual(requested_spans(b"bytes=-0", 100), [])
        self.assertEqual(requested_spans(b"bytes=0-", 0), [])
        self.assertEqual(requested_spans(b"bytes=200-300,-0", 100), [])
        self.assertEqual(requested_spans(b"bytes=200-300,5-5", 100), [Span(5, 5)])

    def test_what_does_not_parse_is_ignored(self) -> None:
        for header in (b"bytes=", b"bytes=,", b"bytes=5-1", b"items=0-1", b"bytes=a-b", None):
            self.assertIsNone(requested_spans(header, 100), header)

    def test_multipart_length_is_what_is_written(self) -> None:
        framing = Multipart(b"edge", b"image/jpeg", 100)
        spans = [Span(0, 9), Span(50, 59)]
        segments = framing.segments(spans)
        written = b"".join(s if isinstance(s, bytes) else b"x" * s.length for s in segments)
        self.assertEqual(body_length(segments), len(written))
        self.assertTrue(written.startswith(b"--edge\r\nContent-Type: image/jpeg\r\n"))
        self.assertTrue(written.endswith(b"\r\n--edge--\r\n"))


def multipart_parts(body: bytes, content_type: str) -> list[tuple[int, int, bytes]]:
    """(first, last, bytes) of each part of a ``multipart/byteranges`` body."""
    boundary = content_type.partition("boundary=")[2].encode()
    parts = []
    for chunk in body.split(b"--" + boundary)[1:-1]:
        head, _, data = chunk.partition(b"\r\n\r\n")
        found = re.search(rb"Content-Range: bytes (\d+)-(\d+)/\d+", head)
        assert found is not None, head
        parts.append((int(found[1]), int(found[2]), data.removesuffix(b"\r\n")))
    return parts


def raw_get(path: str, header: str, close: bool = True) -> bytes:
    connection = "Connection: close\r\n" if close else ""
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n{connection}Range: {header}\r\n\r\n".encode("ascii")


class RangeServerTests(ServerTestCase):
    async def test_a_thousand_ranges_get_the_whole_file_at_once(self) -> None:
        await self.start_server()
        await self.upload_wine()
        path = f"/p/{WINE_DIR}/original"
        answer = ensureDeferred(raw_exchange(self.url, raw_get(path, THOUSAND_RANGES)))
        answer.addTimeout(10, reactor)
        head, _, body = (await answer).partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 200 "), head)
        self.assertEqual(body, WINE)

    async def test_overlapping_ranges_send_the_file_once(self) -> None:
        await self.start_server()
        await self.upload_wine()
        url = f"{self.url}/p/{WINE_DIR}/original"
        response = await request("GET", url, headers={"Range": "bytes=" + ",".join(["0-"] * 16)})
        self.assertEqual(response.code, 206)
        self.assertEqual(response.header("Content-Range"), f"bytes 0-{len(WINE) - 1}/{len(WINE)}")
        self.assertEqual(response.body, WINE)

    async def test_several_ranges_across_buffers(self) -> None:
        """Parts that end just short of a 64 KiB buffer, where Twisted's producer failed."""
        await self.start_server()
        await self.upload_wine()
        url = f"{self.url}/p/{WINE_DIR}/original"
        asked = [(0, 65499), (65530, 65540), (80000, len(WINE) - 1)]
        header = "bytes=" + ",".join(f"{a}-{b}" for a, b in reversed(asked))
        response = await request("GET", url, headers={"Range": header})
        self.assertEqual(response.code, 206)
        content_type = response.header("Content-Type") or ""
        self.assertTrue(content_type.startswith("multipart/byteranges; boundary="))
        parts = multipart_parts(response.body, content_type)
        self.assertEqual(parts, [(a, b, WINE[a : b + 1]) for a, b in asked])
        self.assertLess(len(response.body), len(WINE) + 500)

    async def test_unsatisfiable_and_if_range(self) -> None:
        await self.start_server()
        await self.upload_wine()
        url = f"{self.url}/p/{WINE_DIR}/original"
        outside = await request("GET", url, headers={"Range": f"bytes={len(WINE)}-"})
        self.assertEqual(outside.code, 416)
        self.assertEqual(outside.header("Content-Range"), f"bytes */{len(WINE)}")
        tag = (await request("HEAD", url)).header("ETag")
        same = await request("GET", url, headers={"Range": "bytes=0-9", "If-Range": tag})
        self.assertEqual((same.code, same.body), (206, WINE[:10]))
        other = await request("GET", url, headers={"Range": "bytes=0-9", "If-Range": '"old"'})
        self.assertEqual((other.code, other.body), (200, WINE))

    async def test_head_of_a_range(self) -> None:
        await self.start_server()
        await self.upload_wine()
        url = f"{self.url}/p/{WINE_DIR}/original"
        head = await request("HEAD", url, headers={"Range": "bytes=10-19"})
        self.assertEqual(head.code, 206)
        self.assertEqual(head.header("Content-Length"), "10")
        self.assertEqual(head.body, b"")

    async def test_a_client_that_leaves_mid_answer_holds_no_file(self) -> None:
        await self.start_server(max_upload_bytes=64 * 1024 * 1024)
        await self.upload_wine()
        large = os.urandom(32 * 1024 * 1024)
        url = f"{self.url}/p/{WINE_DIR}/large.bin"
        self.assertEqual((await request("POST", url, data=large)).code, 200)
        stored = os.path.realpath(self.local("p", *WINE_DIR.split("/"), "large.bin"))
        client = await raw_connection(self.url)
        client.transport.pauseProducing()  # read nothing: the server's buffers fill
        client.transport.write(raw_get(f"/p/{WINE_DIR}/large.bin", "bytes=0-10,1000-"))
        await self.wait_for(lambda: stored in open_files(), "the file to be opened")
        await sleep(0.2)
        client.transport.abortConnection()
        await self.wait_for(lambda: stored not in open_files(), "the file to be closed")


def open_files() -> set[str]:
    """The files this process (the server under test) has open."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            found.add(os.readlink(f"/proc/self/fd/{fd}"))
    return found


class DescriptorTests(unittest.TestCase):
    """Hundreds of hostile range requests against a server with few descriptors."""

    async def test_hundreds_of_range_requests_under_a_low_descriptor_limit(self) -> None:
        limited = ["/bin/sh", "-c", 'ulimit -n 128 && exec "$0" "$@"', IMAGE_SERVER, "server"]
        running = await start_process(self, limited)
        upload = await request("POST", running.url + "/p", data=WINE)
        self.assertEqual(upload.code, 200, upload.body)
        path = f"/p/{WINE_DIR}/original"
        hostile = [THOUSAND_RANGES, "bytes=" + ",".join(["0-"] * 100)]
        answers = []
        for index in range(300):
            answer = ensureDeferred(raw_exchange(running.url, raw_get(path, hostile[index % 2])))
            answer.addTimeout(60, reactor)
            answers.append(answer)
        results = await DeferredList(answers, consumeErrors=True)
        served = 0
        for succeeded, received in results:
            self.assertTrue(succeeded, received)  # every one answered, none left hanging
            head, _, body = received.partition(b"\r\n\r\n")
            if not received:
                continue  # closed unanswered by Twisted's recovery from a full descriptor table
            if head.startswith(b"HTTP/1.1 200 "):
                self.assertEqual(body, WINE)
                served += 1
            else:  # out of descriptors for the moment: told to come back, in JSON
                self.assertTrue(head.startswith(b"HTTP/1.1 503 "), head[:200])
                self.assertIn(b"Retry-After: 1", head)
                self.assertEqual(json.loads(body)["code"], "overloaded")
        self.assertGreater(served, 0)
        live = await request("GET", running.admin_url + "/probe/live")
        self.assertEqual(live.code, 200)
        again = await request("GET", running.url + path, headers={"Range": THOUSAND_RANGES})
        self.assertEqual((again.code, again.body), (200, WINE))
        self.assertLess(len(os.listdir(f"/proc/{running.process.pid}/fd")), 64)
