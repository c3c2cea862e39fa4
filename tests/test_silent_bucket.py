"""A bucket that accepts connections and never answers (issue 16): every S3 request gives up
after ``--s3-timeout``, uploads are answered from the journal, the instance stays ready, and the
journal delivers once the bucket answers again."""

from __future__ import annotations

import os
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred, gatherResults
from twisted.trial import unittest
from twisted.web.client import Agent, HTTPConnectionPool

from imageserver.paths import partition
from imageserver.s3 import Bucket, S3Client, S3Error, StaticCredentials
from imageserver.spool import Spool
from tests.s3support import SilentBucket
from tests.support import distinct_jpeg, request
from tests.test_s3 import S3TestCase

# No answer within this long is a failure; the flag under test is 1 s.
DEADLINE = 20.0
READY = {"message": "OK", "bucket": "reachable"}


def within_deadline(work: Any) -> Deferred[Any]:
    """``work`` as a Deferred that fails if it takes more than `DEADLINE` seconds."""
    return ensureDeferred(work).addTimeout(DEADLINE, reactor)


def samples(page: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(page)
        for sample in family.samples
    }


class SilentBucketServerTests(S3TestCase):
    async def test_uploads_are_answered_and_delivered_later(self) -> None:
        silent = SilentBucket(self)
        await self.start_s3_server(endpoint=silent.endpoint, s3_timeout=1)
        bodies = [distinct_jpeg(index) for index in range(5)]
        answers = await gatherResults([within_deadline(self.upload(body)) for body in bodies])
        self.assertEqual([answer.code for answer in answers], [200] * 5)
        self.assertGreater(len(silent.connections), 0)
        self.assertEqual(self.objects(), {})
        self.assertEqual(self.server.uploads.pending, 10)

        # Still ready, and saying why the bucket is out of reach; /status_check as the Go server's.
        await self.wait_for(lambda: self.server.remote.state != "unchecked", "the first check")
        ready = await request("GET", f"{self.admin_url}/probe/ready")
        self.assertEqual(ready.code, 200)
        self.assertEqual(ready.json()["message"], "OK")
        host = silent.endpoint.removeprefix("http://")
        self.assertEqual(
            ready.json()["bucket"], f"unreachable: S3 {host} timed out: nothing for 1 s"
        )
        status = await request("GET", f"{self.url}/status_check")
        self.assertEqual((status.code, status.json()), (200, {"message": "OK"}))
        found = samples((await request("GET", f"{self.admin_url}/metrics")).body.decode())
        self.assertEqual(found[("image_server_s3_bucket_reachable", ())], 0)
        self.assertGreater(
            found[("image_server_s3_upload_failures_total", (("code", "Timeout"),))], 0
        )

        # The bucket answers again: the journal delivers every byte.
        silent.forward_to(self.moto.endpoint)
        await self.wait_for(lambda: self.server.uploads.pending == 0, "the journal", tries=400)
        stored = self.objects()
        for body, answer in zip(bodies, answers, strict=True):
            directory = f"p/{partition(answer.json()['hash'])}"
            self.assertEqual(stored[f"{directory}/original"]["body"], body)
            self.assertIn(f"{directory}/info.json", stored)
        self.assertEqual(len(stored), 10)
        await self.server.remote.check()
        ready = await request("GET", f"{self.admin_url}/probe/ready")
        self.assertEqual((ready.code, ready.json()), (200, READY))
        found = samples((await request("GET", f"{self.admin_url}/metrics")).body.decode())
        self.assertEqual(found[("image_server_s3_bucket_reachable", ())], 1)

    async def test_uploads_do_not_queue_behind_a_silent_bucket(self) -> None:
        """One upload slot, 24 files: one after the other, each held for the timeout, the last
        would wait 24 s.  Waiting for a slot is bounded by the timeout too."""
        silent = SilentBucket(self)
        await self.start_s3_server(endpoint=silent.endpoint, s3_timeout=1, uploader_concurrency=1)
        bodies = [distinct_jpeg(index) for index in range(12)]
        answers = await gatherResults([within_deadline(self.upload(body)) for body in bodies])
        self.assertEqual([answer.code for answer in answers], [200] * 12)
        self.assertEqual(self.server.uploads.pending, 24)

    async def test_stopping_cuts_a_check_in_flight_short(self) -> None:
        """A check waiting on a silent bucket does not hold the server's stop, nor outlive it (trial
        fails a test that leaves a timer behind)."""
        silent = SilentBucket(self)
        await self.start_s3_server(endpoint=silent.endpoint, s3_timeout=30)
        await self.wait_for(lambda: silent.connections, "the first check to connect")
        await within_deadline(self.server.stopService())
        self.assertEqual(self.server.remote.state, "unchecked")

    async def test_a_reachable_bucket_is_reported(self) -> None:
        await self.start_s3_server()
        await self.wait_for(lambda: self.server.remote.state != "unchecked", "the first check")
        ready = await request("GET", f"{self.admin_url}/probe/ready")
        self.assertEqual((ready.code, ready.json()), (200, READY))


class SilentBucketClientTests(unittest.TestCase):
    """The S3 client's own bounds, each request against a bucket that goes silent."""

    def client(self, silent: SilentBucket) -> S3Client:
        pool = HTTPConnectionPool(reactor, persistent=False)
        return S3Client(
            HTTPClient(Agent(reactor, pool=pool)),
            Bucket("images", "us-east-1", silent.endpoint),
            StaticCredentials("key", "secret"),
            reactor,
            timeout=1,
        )

    def spool(self) -> Spool:
        directory = self.mktemp()
        os.makedirs(directory)
        spool = Spool(directory, 2**20)
        self.addCleanup(spool.close)
        return spool

    def file(self, size: int) -> str:
        path = self.mktemp()
        with open(path, "wb") as data:
            data.truncate(size)
        return path

    async def assert_times_out(self, work: Any, why: str) -> None:
        error = await self.assertFailure(within_deadline(work), S3Error)
        self.assertEqual(error.code, "Timeout")
        self.assertTrue(str(error).endswith(f"timed out: {why}"), str(error))

    async def test_every_request_is_bounded(self) -> None:
        client = self.client(SilentBucket(self))
        small = self.file(1000)
        await gatherResults(
            [
                ensureDeferred(self.assert_times_out(work, "nothing for 1 s"))
                for work in (
                    client.check(),
                    client.exists("k"),
                    client.delete("k"),
                    client.list_keys(""),
                    client.get_into("k", self.spool()),
                    client.put_file("k", small, "image/jpeg", "no-cache"),
                )
            ]
        )

    async def test_a_body_the_bucket_stops_reading(self) -> None:
        """Sending stalls once the buffers are full: cut off after a second without progress,
        long before the whole request's bound (1 s + 64 MB at the minimum rate)."""
        silent = SilentBucket(self)
        silent.reads = False
        large = self.file(64 * 2**20)
        work = self.client(silent).put_file("k", large, "image/jpeg", "no-cache")
        await self.assert_times_out(work, "nothing for 1 s")

    async def test_an_answer_that_stops_half_way(self) -> None:
        silent = SilentBucket(self)
        silent.prefix = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10
        spool = self.spool()
        await self.assert_times_out(self.client(silent).get_into("k", spool), "nothing for 1 s")
        self.assertEqual(spool.size, 10)

    async def test_a_trickle_is_cut_off_by_the_whole_bound(self) -> None:
        """A byte now and then is progress, but not enough: the whole request is bounded."""
        silent = SilentBucket(self)
        silent.prefix = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
        silent.trickle = True
        work = self.client(silent).get_into("k", self.spool())
        await self.assert_times_out(work, "not done in 2 s")
