"""File work kept off the reactor: the collector's reads in a thread and its deletions in slices,
and an original's content type from its ``info.json`` instead of its bytes on every GET."""

from __future__ import annotations

import json
import os
import threading
import time

from twisted.internet import reactor
from twisted.trial import unittest

from imageserver import collector, mime
from imageserver.collector import GarbageCollector
from imageserver.store import LocalStore
from tests.support import WINE_DIR, ServerTestCase, fixture, request

DIRECTORY = "p/abc/def/ghi"


class FakeBucket:
    def __init__(self, names: set[str]) -> None:
        self.held = names

    async def names(self, directory: str) -> set[str]:
        return self.held


class FakeUploads:
    def __init__(self) -> None:
        self.later: list[tuple[str, str]] = []

    def is_pending(self, relative: str) -> bool:
        return False

    def store_later(self, relative: str, content_type: str) -> None:
        self.later.append((relative, content_type))


class CollectorTests(unittest.TestCase):
    def setUp(self) -> None:
        self.store = LocalStore(self.mktemp())
        self.store.prepare()
        self.uploads = FakeUploads()

    def old_files(self, names: list[str], data: bytes = b"x") -> None:
        an_hour_ago = time.time() - 3600
        for name in names:
            path = self.store.write(f"{DIRECTORY}/{name}", data)
            os.utime(path, (an_hour_ago, an_hour_ago))

    def collector(self, in_bucket: set[str]) -> GarbageCollector:
        bucket = FakeBucket(in_bucket)
        return GarbageCollector(self.store, bucket, self.uploads, 1, reactor)  # type: ignore[arg-type]

    async def test_files_to_upload_are_read_in_a_thread(self) -> None:
        self.old_files(["original"], fixture("a.png"))
        on_reactor: list[bool] = []
        content_type_of = mime.content_type_of

        def noting(name: str, path: str) -> str:
            on_reactor.append(threading.current_thread() is threading.main_thread())
            return content_type_of(name, path)

        self.patch(mime, "content_type_of", noting)
        self.assertEqual(await self.collector(set()).collect(), 0)
        self.assertEqual(self.uploads.later, [(f"{DIRECTORY}/original", "image/png")])
        self.assertEqual(on_reactor, [False])

    async def test_deletions_leave_the_reactor_free_between_slices(self) -> None:
        names = [f"w{width}.jpg" for width in range(10, 20)]
        self.old_files(names)
        self.patch(collector, "SLICE", 3)
        deleted: list[str] = []
        turns: list[int] = []
        remove_quietly = collector.remove_quietly

        def noting(path: str) -> None:
            if not deleted:  # runs once the reactor gets a turn
                reactor.callLater(0, lambda: turns.append(len(deleted)))
            deleted.append(path)
            remove_quietly(path)

        self.patch(collector, "remove_quietly", noting)
        self.assertEqual(await self.collector(set(names)).collect(), 10)
        self.assertEqual(len(turns), 1)
        self.assertLess(turns[0], 10, "every file deleted in one turn of the reactor")
        self.assertEqual(os.listdir(self.store.path(DIRECTORY)), [])


class OriginalTypeTests(ServerTestCase):
    def rewrite_info(self, content_type: str) -> None:
        path = self.local("p", WINE_DIR, "info.json")
        with open(path) as stored:
            details = json.load(stored)
        details["content_type"] = content_type
        with open(path, "w") as stored:
            json.dump(details, stored)

    async def content_type(self) -> str | None:
        response = await request("GET", f"{self.url}/p/{WINE_DIR}/original")
        self.assertEqual(response.body, fixture("wine.jpg"))
        return response.header("Content-Type")

    async def test_the_type_comes_from_info_json_read_once(self) -> None:
        await self.start_server()
        await self.upload_wine()
        self.rewrite_info("image/png")  # the bytes are a JPEG's
        self.assertEqual(await self.content_type(), "image/png")
        self.rewrite_info("image/gif")  # an original never changes: read once, remembered
        self.assertEqual(await self.content_type(), "image/png")

    async def test_without_info_json_the_bytes_tell(self) -> None:
        await self.start_server()
        await self.upload_wine()
        os.remove(self.local("p", WINE_DIR, "info.json"))
        self.assertEqual(await self.content_type(), "image/jpeg")
