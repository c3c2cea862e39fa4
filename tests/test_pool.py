"""The worker pool under failure and overload, with real worker processes."""

from __future__ import annotations

import os
import signal

from ampoule.main import TO_CHILD
from twisted.internet.defer import CancelledError, ensureDeferred
from twisted.trial import unittest
from twisted.web.client import ResponseNeverReceived

from imageserver.processing.pool import FIXED_MMAP_THRESHOLD, WorkerPool
from imageserver.processing.worker import NICENESS
from tests.support import FIXTURES, WINE_DIR, ServerTestCase, request


class PoolTests(ServerTestCase):
    async def stopped_worker(self) -> int:
        """Freeze the only worker, so the next job waits in it."""
        [pid] = self.server.pool.worker_pids()
        os.kill(pid, signal.SIGSTOP)
        return pid

    def variant(self, name: str):  # type: ignore[no-untyped-def]
        return ensureDeferred(request("GET", f"{self.url}/p/{WINE_DIR}/{name}"))

    async def wait_for_workers(self, count: int, not_pid: int) -> None:
        def replaced() -> bool:
            pids = self.server.pool.worker_pids()
            return len(pids) == count and not_pid not in pids

        await self.wait_for(replaced, f"{count} workers without {not_pid}")

    async def wait_for_job(self) -> None:
        """Until a job is in the only worker (handed to it as soon as it is counted)."""
        await self.wait_for(lambda: self.server.pool.in_flight == 1, "a job in the worker")

    async def test_crash_fails_only_its_own_job(self) -> None:
        await self.start_server(max_queue=5)
        await self.upload_wine()
        await request("GET", f"{self.url}/p/{WINE_DIR}/w10.jpg")
        pid = await self.stopped_worker()
        doomed = self.variant("w20.jpg")
        await self.wait_for_job()
        os.kill(pid, signal.SIGKILL)
        response = await doomed
        self.assert_error(response, 500, "the image worker stopped during the job")
        self.assert_no_partial_files()
        await self.wait_for_workers(1, pid)
        after = await self.variant("w20.jpg")
        self.assertEqual(after.code, 200)
        self.assertEqual(self.server.pool.in_flight, 0)

    async def test_full_queue_answers_503_and_files_are_still_served(self) -> None:
        await self.start_server(max_queue=0)
        await self.upload_wine()
        ready = await self.variant("w10.jpg")
        self.assertEqual(ready.code, 200)
        pid = await self.stopped_worker()
        waiting = self.variant("w30.jpg")
        await self.wait_for_job()
        refused = await self.variant("w40.jpg")
        self.assert_error(refused, 503, "the image workers are busy")
        self.assertEqual(refused.header("Retry-After"), "1")
        served = await self.variant("w10.jpg")
        self.assertEqual(served.body, ready.body)
        os.kill(pid, signal.SIGCONT)
        self.assertEqual((await waiting).code, 200)

    async def test_job_over_the_timeout_kills_its_worker(self) -> None:
        await self.start_server(processing_timeout=1)
        await self.upload_wine()
        pid = await self.stopped_worker()
        response = await self.variant("w50.jpg")
        self.assert_error(response, 500, "the image worker stopped during the job")
        await self.wait_for_workers(1, pid)
        self.assertEqual((await self.variant("w50.jpg")).code, 200)
        self.assert_no_partial_files()

    async def test_workers_are_recycled(self) -> None:
        await self.start_server(worker_max_jobs=2)
        await self.upload_wine()
        [first] = self.server.pool.worker_pids()
        for width in (11, 12, 13):
            self.assertEqual((await self.variant(f"w{width}.jpg")).code, 200)
        await self.wait_for_workers(1, first)

    async def test_client_that_gives_up_still_counts_until_its_job_ends(self) -> None:
        """A disconnect cannot sneak jobs past --max-queue: the job runs on and counts."""
        await self.start_server(max_queue=0)
        await self.upload_wine()
        pid = await self.stopped_worker()
        impatient = self.variant("w60.jpg")
        await self.wait_for_job()
        impatient.cancel()  # the client closes its connection
        self.failureResultOf(impatient, ResponseNeverReceived, CancelledError)
        site = self.server.site
        await self.wait_for(lambda: site.in_flight == 0, "the server to see the client leave")
        self.assertEqual(self.server.pool.in_flight, 1)
        refused = await self.variant("w70.jpg")
        self.assertEqual(refused.code, 503)
        os.kill(pid, signal.SIGCONT)
        await self.wait_for(lambda: self.server.pool.in_flight == 0, "the job to end")
        self.assertTrue(os.path.isfile(self.local("p", WINE_DIR, "w60.jpg")))


class WarmUpTests(unittest.TestCase):
    async def test_slow_first_start_is_not_held_to_the_job_timeout(self) -> None:
        """A job timeout far shorter than a worker's start (importing libvips) still gets ready."""
        pool = WorkerPool(size=1, max_queue=0, timeout=0.01, max_jobs=0)
        await pool.startService()
        self.addCleanup(pool.stopService)
        self.assertTrue(pool.ready)
        self.assertEqual(len(pool.worker_pids()), 1)


class PromptDispatchTests(unittest.TestCase):
    async def test_a_queued_job_is_written_before_the_finished_jobs_callbacks_run(self) -> None:
        """The worker gets its next job without waiting for the last one's HTTP answer.

        Read from the pipe's write buffer (Twisted's `FileDescriptor` internals): without the
        prompt write, the second job's box would still sit there when the first job's callbacks
        (which answer its request) run.
        """
        pool = WorkerPool(size=1, max_queue=1, timeout=30, max_jobs=0)
        await pool.startService()
        self.addCleanup(pool.stopService)
        [child] = pool._pool.processes
        pipe = child.transport.transport.pipes[TO_CHILD]
        unwritten: list[int] = []
        first = pool.identify(os.path.join(FIXTURES, "a.png"), max_pixels=0)
        second = pool.identify(os.path.join(FIXTURES, "a.png"), max_pixels=0)
        first.addCallback(lambda _: unwritten.append(len(pipe.dataBuffer) + pipe._tempDataLen))
        await first
        self.assertEqual(unwritten, [0])
        self.assertEqual((await second)["content_type"], "image/png")


class EnvironmentTests(unittest.TestCase):
    async def worker_environment(self, **server_environment: str) -> dict[str, str]:
        """The environment a worker of a pool started under `server_environment` runs with."""
        inherited = {key: value for key, value in os.environ.items() if key != "GLIBC_TUNABLES"}
        self.patch(os, "environ", {**inherited, **server_environment})
        pool = WorkerPool(size=1, max_queue=0, timeout=5, max_jobs=0)
        await pool.startService()
        self.addCleanup(pool.stopService)
        [pid] = pool.worker_pids()
        with open(f"/proc/{pid}/environ", "rb") as environ:
            pairs = environ.read().decode().split("\0")
        return dict(pair.split("=", 1) for pair in pairs if pair)

    async def test_workers_get_libvips_and_malloc_settings_but_no_secrets(self) -> None:
        seen = await self.worker_environment(IMAGE_SERVER_SECRET="hush", VIPS_DISC_THRESHOLD="9m")
        self.assertEqual(seen["VIPS_CONCURRENCY"], "1")
        self.assertEqual(seen["VIPS_BLOCK_UNTRUSTED"], "1")
        self.assertEqual(seen["VIPS_DISC_THRESHOLD"], "9m")
        self.assertEqual(seen["GLIBC_TUNABLES"], FIXED_MMAP_THRESHOLD)
        self.assertNotIn("IMAGE_SERVER_SECRET", seen)

    async def test_an_operators_glibc_tunables_win(self) -> None:
        seen = await self.worker_environment(GLIBC_TUNABLES="glibc.malloc.arena_max=1")
        self.assertEqual(seen["GLIBC_TUNABLES"], "glibc.malloc.arena_max=1")


class PriorityTests(ServerTestCase):
    async def test_workers_yield_the_cpu_to_the_main_process(self) -> None:
        await self.start_server()
        [pid] = self.server.pool.worker_pids()
        worker_nice = os.getpriority(os.PRIO_PROCESS, pid)
        self.assertEqual(worker_nice, os.nice(0) + NICENESS)
        await self.upload_wine()  # and it still works
