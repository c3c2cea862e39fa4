"""Several main processes on one port and one store (docs/scaling.md#several-main-processes): the
pure shares, the merged metrics page, and two real processes in front of moto."""

from __future__ import annotations

import os
import signal

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.trial import unittest

from imageserver.metrics import merged_exposition
from imageserver.options import Config
from imageserver.paths import partition
from imageserver.processes import (
    config_from_line,
    cpus_of,
    process_count,
    secondary_config,
    share,
)
from tests.processes import IMAGE_SERVER, alive, metric, process_tree, start_process
from tests.s3support import SilentBucket, moto
from tests.support import distinct_jpeg, image_size, request, sleep


class ShareTests(unittest.TestCase):
    def test_process_count(self) -> None:
        self.assertEqual(process_count(0, 2, 2), 1)
        self.assertEqual(process_count(0, 8, 8), 1)
        self.assertEqual(process_count(0, 9, 9), 2)
        self.assertEqual(process_count(0, 64, 64), 8)
        self.assertEqual(process_count(3, 16, 4), 3)  # asked for: whatever the CPUs
        self.assertEqual(process_count(4, 2, 16), 2)  # never more than the workers
        self.assertEqual(process_count(0, 1, 64), 1)

    def test_workers_and_cpus_are_shared_out_whole(self) -> None:
        for total, count in [(16, 2), (7, 3), (2, 2), (5, 5)]:
            shares = [share(total, count, index) for index in range(count)]
            self.assertEqual(sum(shares), total)
            self.assertLessEqual(max(shares) - min(shares), 1)
        cpus = [3, 0, 1, 2, 7, 6, 5, 4]
        parts = [cpus_of(cpus, 3, index) for index in range(3)]
        self.assertEqual(parts, [[0, 1, 2], [3, 4, 5], [6, 7]])
        self.assertEqual(cpus_of([0, 1], 4, 3), [0, 1])  # fewer CPUs than processes: all share

    def test_configuration_reaches_a_secondary_whole(self) -> None:
        config = Config(
            port=0,
            extensions=("jpg", "webp"),
            outputs=("x100.jpg",),
            allowed_variants=("w*",),
            max_file_age=5,
            pin_workers=False,
        )
        received = config_from_line(secondary_config(config, 7123))
        self.assertEqual(received, Config(**{**config.__dict__, "port": 7123}))


class MergedMetricsTests(unittest.TestCase):
    def registry(self, uploads: int, seconds: float) -> CollectorRegistry:
        registry = CollectorRegistry()
        Counter("uploads", "Uploads.", registry=registry).inc(uploads)
        Histogram("took", "Time.", buckets=(1, 2), registry=registry).observe(seconds)
        return registry

    def test_every_sample_labelled_with_its_process_one_family_per_name(self) -> None:
        from prometheus_client import generate_latest

        other = generate_latest(self.registry(5, 1.5))
        page = merged_exposition(self.registry(2, 0.5), {1: other}).decode()
        self.assertEqual(page.count("# TYPE uploads_total counter"), 1)
        self.assertEqual(page.count("# TYPE took histogram"), 1)
        values = {
            (sample.name, sample.labels["process"], sample.labels.get("le")): sample.value
            for family in text_string_to_metric_families(page)
            for sample in family.samples
        }
        self.assertEqual(values[("uploads_total", "0", None)], 2)
        self.assertEqual(values[("uploads_total", "1", None)], 5)
        self.assertEqual(values[("took_bucket", "0", "1.0")], 1)
        self.assertEqual(values[("took_bucket", "1", "1.0")], 0)
        self.assertEqual(values[("took_count", "1", None)], 1)


class TwoProcessesTests(unittest.TestCase):
    timeout = 240

    async def start(self, *flags: str):  # type: ignore[no-untyped-def]
        self.s3 = moto()
        self.bucket = self.s3.new_bucket()
        self.flags = [
            "--aws_bucket", self.bucket,
            "--aws_region", "us-east-1",
            "--aws_access_key_id", self.s3.access_key,
            "--aws_secret_key", self.s3.secret_key,
            "--s3-endpoint", self.s3.endpoint,  # a later one in `flags` wins
            "--processes", "2",
            "--processor_concurrency", "2",
            *flags,
        ]  # fmt: skip
        server = await start_process(self, [IMAGE_SERVER, "server"], self.flags)
        self.output = lambda: server.process.output.decode()[-3000:]
        await self.wait_for_secondary(server)
        return server

    async def wait_for_secondary(self, server) -> int:  # type: ignore[no-untyped-def]
        """The secondary's pid, once its metrics reach the primary's page."""
        for _ in range(300):  # at most 30 s
            secondaries, _ = process_tree(server.process.pid)
            page = (await request("GET", server.admin_url + "/metrics")).body
            if secondaries and "1" in metric(page, "image_server_build_info"):
                return secondaries[0]
            await sleep(0.1)
        self.fail(f"no second process: {server.process.output.decode()}")

    async def wait_for_objects(self, keys: set[str], seconds: float) -> dict:  # type: ignore[type-arg]
        for _ in range(int(seconds * 10)):
            stored = self.s3.objects(self.bucket)
            if keys <= set(stored):
                return stored
            await sleep(0.1)
        missing = sorted(keys - set(self.s3.objects(self.bucket)))
        self.fail(f"missing in the bucket: {missing[:3]}, output: {self.output()}")

    async def test_both_serve_one_store_and_one_bucket(self) -> None:
        server = await self.start()
        secondaries, workers = process_tree(server.process.pid)
        self.assertEqual((len(secondaries), len(workers)), (1, 1), "a worker each")
        self.assertEqual(len(process_tree(secondaries[0])[1]), 1)

        # Uploads and variants, each on a connection of its own: the kernel spreads them.
        bodies = [distinct_jpeg(index) for index in range(24)]
        answers = await gatherResults(
            [ensureDeferred(request("POST", f"{server.url}/p", data=body)) for body in bodies]
        )
        self.assertEqual({answer.code for answer in answers}, {200})
        directories = [f"p/{partition(answer.json()['hash'])}" for answer in answers]
        variants = await gatherResults(
            [ensureDeferred(request("GET", f"{server.url}/{d}/w20.jpg")) for d in directories]
        )
        self.assertEqual({image_size(v.body)[:2] for v in variants}, {(20, 15)})
        page = (await request("GET", server.admin_url + "/metrics")).body
        served = metric(page, "image_server_new_image_request_total")
        self.assertEqual(sum(served.values()), 24)
        self.assertGreater(served.get("1", 0), 0, "the second process took connections")
        self.assertGreater(served.get("0", 0), 0, "the first process took connections")

        keys = {f"{d}/{name}" for d in directories for name in ("original", "info.json")}
        stored = await self.wait_for_objects(keys | {f"{d}/w20.jpg" for d in directories}, 30)
        for body, directory in zip(bodies, directories, strict=True):
            self.assertEqual(stored[f"{directory}/original"]["body"], body)
        await self.wait_for_empty(os.path.join(server.store, ".pending"))
        self.assert_nothing_in(os.path.join(server.store, "tmp"))

        # The same new variant asked for at once on 16 connections: every answer whole and the
        # same, one file in the store, made once by one process (the others wait on its claim).
        directory = directories[0]
        answers = await gatherResults(
            [
                ensureDeferred(request("GET", f"{server.url}/{directory}/x33.webp"))
                for _ in range(16)
            ]
        )
        self.assertEqual({answer.code for answer in answers}, {200})
        self.assertEqual(len({answer.body for answer in answers}), 1)
        self.assertEqual(image_size(answers[0].body), (33, 33, "WEBP"))
        made = os.listdir(os.path.join(server.store, directory))
        self.assertEqual(sorted(made), ["info.json", "original", "w20.jpg", "x33.webp"])
        page = (await request("GET", server.admin_url + "/metrics")).body
        renders = metric(page, "image_server_processing_version_ok_total")
        self.assertEqual(sum(renders.values()), 24 + 1)
        stored = await self.wait_for_objects({f"{directory}/x33.webp"}, 30)
        self.assertEqual(stored[f"{directory}/x33.webp"]["body"], answers[0].body)
        await self.wait_for_empty(os.path.join(server.store, ".pending"))
        self.assert_nothing_in(os.path.join(server.store, "tmp"))

        # SIGTERM to the primary stops them all.
        secondary = secondaries[0]
        os.kill(server.process.pid, signal.SIGTERM)
        self.assertEqual(await server.process.ended, 0)
        await self.wait_until(lambda: not alive(secondary), "the secondary to stop")

    def assert_nothing_in(self, directory: str) -> None:
        """No file left there (claims leave their empty directory)."""
        self.assertEqual([name for _, _, files in os.walk(directory) for name in files], [])

    async def wait_for_empty(self, directory: str) -> None:
        await self.wait_until(lambda: not os.listdir(directory), f"{directory} to empty")

    async def wait_until(self, condition, what: str) -> None:  # type: ignore[no-untyped-def]
        for _ in range(300):  # at most 30 s
            if condition():
                return
            await sleep(0.1)
        self.fail(f"timed out waiting for {what}")

    async def test_what_a_killed_secondary_left_in_the_journal_is_delivered(self) -> None:
        """Uploads a secondary answered from the journal, the bucket silent, reach the bucket
        after it is killed, the primary still running: the primary takes its journal over."""
        silent = SilentBucket(self)
        server = await self.start("--s3-timeout", "1", "--s3-endpoint", silent.endpoint)
        secondary = (process_tree(server.process.pid))[0][0]
        bodies = [distinct_jpeg(500 + index) for index in range(12)]
        answers = await gatherResults(
            [
                ensureDeferred(request("POST", f"{server.url}/p", data=body)).addTimeout(
                    30, reactor
                )
                for body in bodies
            ]
        )
        self.assertEqual({answer.code for answer in answers}, {200})
        page = (await request("GET", server.admin_url + "/metrics")).body
        self.assertGreater(metric(page, "image_server_new_image_request_total").get("1", 0), 0)
        os.kill(secondary, signal.SIGKILL)
        await self.wait_until(lambda: not alive(secondary), "the secondary to die")
        replacement = await self.wait_for_secondary(server)
        self.assertNotEqual(replacement, secondary, "a new secondary was started")
        silent.forward_to(self.s3.endpoint)
        directories = [f"p/{partition(answer.json()['hash'])}" for answer in answers]
        keys = {f"{d}/{name}" for d in directories for name in ("original", "info.json")}
        stored = await self.wait_for_objects(keys, 90)
        for body, directory in zip(bodies, directories, strict=True):
            self.assertEqual(stored[f"{directory}/original"]["body"], body)

    async def test_secondaries_stop_with_a_killed_primary(self) -> None:
        server = await self.start()
        [secondary], _ = process_tree(server.process.pid)
        os.kill(server.process.pid, signal.SIGKILL)
        await server.process.ended
        await self.wait_until(lambda: not alive(secondary), "the orphaned secondary to stop")
