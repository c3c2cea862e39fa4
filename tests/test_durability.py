"""``kill -9`` in the middle of uploads and variant requests loses nothing that was answered, nor
does it while the bucket is silent."""

from __future__ import annotations

import hashlib
import os
import signal

from twisted.internet import reactor
from twisted.internet.defer import DeferredList, ensureDeferred, gatherResults
from twisted.trial import unittest

from imageserver.paths import partition
from tests.processes import IMAGE_SERVER, start_process
from tests.s3support import SilentBucket, moto
from tests.support import distinct_jpeg, image_size, request, sleep

# What an upload without outputs stores.
NAMES = ("original", "info.json")


class KillTests(unittest.TestCase):
    timeout = 180

    async def test_kill_9_during_uploads(self) -> None:
        first = await start_process(
            self, [IMAGE_SERVER, "server"], ["--processor_concurrency", "2"]
        )
        answered: dict[str, bytes] = {}

        async def upload(index: int) -> None:
            body = distinct_jpeg(index)
            try:
                response = await request("POST", f"{first.url}/p?outputs=w32.webp", data=body)
            except Exception:  # the server died under this one
                return
            if response.code == 200:
                answered[response.json()["hash"]] = body

        # A bounded load: 60 uploads at once, the server killed while most are in flight.
        uploads = [ensureDeferred(upload(index)) for index in range(60)]
        for _ in range(3000):  # at most a minute
            if len(answered) >= 10 or all(upload.called for upload in uploads):
                break
            await sleep(0.02)
        os.kill(first.process.pid, signal.SIGKILL)
        await DeferredList(uploads, consumeErrors=True)
        await first.process.ended
        self.assertGreaterEqual(len(answered), 10)

        # Restarted on the same store: everything answered is there, byte for byte.
        second = await start_process(
            self, [IMAGE_SERVER, "server"], ["--local_base_path", first.store]
        )
        for image_hash, body in answered.items():
            directory = f"{image_hash[:3]}/{image_hash[3:6]}/{image_hash[6:9]}/{image_hash[9:]}"
            original = await request("GET", f"{second.url}/p/{directory}/original")
            self.assertEqual(original.body, body)
            variant = await request("GET", f"{second.url}/p/{directory}/w32.webp")
            self.assertEqual(image_size(variant.body), (32, 24, "WEBP"))
        # And no partial file anywhere: every original matches its hash, every file decodes or is
        # info.json, and tmp/ was emptied at start.
        store = first.store
        self.assertEqual(os.listdir(os.path.join(store, "tmp")), [])
        for directory, _, files in os.walk(os.path.join(store, "p")):
            for name in files:
                with open(os.path.join(directory, name), "rb") as stored:
                    data = stored.read()
                if name == "original":
                    expected = os.path.relpath(directory, os.path.join(store, "p")).replace("/", "")
                    self.assertEqual(hashlib.md5(data).hexdigest(), expected)
                elif name.endswith(".webp"):
                    self.assertEqual(image_size(data)[:2], (32, 24))

    async def test_kill_9_while_the_bucket_is_silent(self) -> None:
        """Uploads answered from the journal while the bucket never answers survive a ``kill -9``
        and reach the bucket, byte for byte, once a restarted server can reach it."""
        s3 = moto()
        bucket = s3.new_bucket()
        silent = SilentBucket(self)
        flags = [
            "--aws_bucket", bucket,
            "--aws_region", "us-east-1",
            "--aws_access_key_id", s3.access_key,
            "--aws_secret_key", s3.secret_key,
            "--processor_concurrency", "1",
            "--s3-timeout", "1",
        ]  # fmt: skip
        first = await start_process(
            self, [IMAGE_SERVER, "server"], [*flags, "--s3-endpoint", silent.endpoint]
        )
        bodies = [distinct_jpeg(1000 + index) for index in range(5)]
        uploads = [
            ensureDeferred(request("POST", f"{first.url}/p", data=body)).addTimeout(20, reactor)
            for body in bodies
        ]
        answers = await gatherResults(uploads)
        self.assertEqual([answer.code for answer in answers], [200] * 5)
        self.assertEqual(s3.objects(bucket), {})
        os.kill(first.process.pid, signal.SIGKILL)
        await first.process.ended

        await start_process(
            self,
            [IMAGE_SERVER, "server"],
            [*flags, "--s3-endpoint", s3.endpoint, "--local_base_path", first.store],
        )
        directories = [f"p/{partition(answer.json()['hash'])}" for answer in answers]
        keys = {f"{directory}/{name}" for directory in directories for name in NAMES}
        for _ in range(200):  # at most 20 s
            if set(s3.objects(bucket)) == keys:
                break
            await sleep(0.1)
        stored = s3.objects(bucket)
        self.assertEqual(set(stored), keys)
        for body, directory in zip(bodies, directories, strict=True):
            self.assertEqual(stored[f"{directory}/original"]["body"], body)
