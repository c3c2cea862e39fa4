"""Workers on CPUs of their own: the choice, and real workers pinned by the pool."""

from __future__ import annotations

import os
from typing import Any

from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from imageserver.processing import pool as pool_module
from imageserver.processing.placement import Placement, usable_cpus
from imageserver.processing.pool import WorkerPool
from tests.support import FIXTURES, ServerTestCase

IMAGE = os.path.join(FIXTURES, "a.png")


class PlacementTests(unittest.TestCase):
    def test_one_worker_per_cpu_lowest_first(self) -> None:
        placement = Placement({3, 1}, workers=2)
        self.assertEqual([placement.choose(101), placement.choose(102)], [1, 3])

    def test_more_workers_than_cpus_are_spread_evenly(self) -> None:
        placement = Placement({0, 1}, workers=5)
        chosen = [placement.choose(pid) for pid in range(5)]
        self.assertEqual(chosen, [0, 1, 0, 1, 0])

    def test_a_replacement_takes_the_cpu_its_predecessor_left(self) -> None:
        placement = Placement({0, 1, 2}, workers=3)
        for pid in (10, 11, 12):
            placement.choose(pid)
        placement.release(11)
        self.assertEqual(placement.choose(13), 1)

    def test_no_pinning_with_fewer_workers_than_cpus_or_a_single_cpu(self) -> None:
        self.assertIsNone(Placement({0, 1, 2, 3}, workers=2).choose(1))
        self.assertIsNone(Placement({0}, workers=4).choose(1))
        self.assertIsNone(Placement((), workers=4).choose(1))


class PinnedPoolTests(ServerTestCase):
    def setUp(self) -> None:
        cpus = sorted(usable_cpus())
        if len(cpus) < 2:
            self.skipTest("pinning needs two CPUs; this machine lets the server use one")
        self.cpus = set(cpus[:2])
        # The pool sees two CPUs whatever the machine has, so two workers cover them all.
        self.patch(pool_module, "usable_cpus", lambda: self.cpus)

    async def started(self, **options: Any) -> WorkerPool:
        pool = WorkerPool(**{"size": 2, "max_queue": 4, "timeout": 30, "max_jobs": 0, **options})
        await pool.startService()
        self.addCleanup(pool.stopService)
        return pool

    def affinities(self, pids: list[int]) -> list[set[int]]:
        """Every thread's CPUs, for each worker (threads started after the pinning included)."""
        found = []
        for pid in pids:
            threads = os.listdir(f"/proc/{pid}/task")
            per_thread = {frozenset(os.sched_getaffinity(int(thread))) for thread in threads}
            self.assertEqual(len(per_thread), 1, f"worker {pid}'s threads disagree")
            found.append(set(next(iter(per_thread))))
        return found

    async def test_each_worker_and_its_threads_run_on_a_cpu_of_their_own(self) -> None:
        pool = await self.started()
        await pool.identify(IMAGE, 0)
        first, second = self.affinities(pool.worker_pids())
        self.assertEqual(len(first), 1)
        self.assertEqual(first | second, self.cpus)

    async def test_a_recycled_worker_takes_the_cpu_it_freed(self) -> None:
        pool = await self.started(max_jobs=1)
        before = set(pool.worker_pids())
        await pool.identify(IMAGE, 0)

        def replaced() -> bool:
            pids = set(pool.worker_pids())
            return len(pids) == 2 and pids != before

        await self.wait_for(replaced, "a worker to be recycled")
        after = self.affinities(pool.worker_pids())
        self.assertEqual(sorted(len(cpus) for cpus in after), [1, 1])
        self.assertEqual(set().union(*after), self.cpus)

    async def test_pin_workers_false_leaves_them_free(self) -> None:
        await self.start_server(processor_concurrency=2, pin_workers=False)
        for cpus in self.affinities(self.server.pool.worker_pids()):
            self.assertEqual(cpus, os.sched_getaffinity(0))


class UnusableCpuTests(ServerTestCase):
    async def test_a_worker_whose_cpu_cannot_be_used_runs_unpinned(self) -> None:
        """A CPU taken away between the server's start and a worker's (a cpuset shrunk, a CPU
        offlined): that worker runs wherever the scheduler puts it, and still takes jobs."""
        own = min(usable_cpus())
        gone = 4000  # no such CPU: the kernel refuses it as it would a removed one
        self.patch(pool_module, "usable_cpus", lambda: {own, gone})
        logged: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        pool = WorkerPool(size=2, max_queue=4, timeout=30, max_jobs=0)
        await pool.startService()
        self.addCleanup(pool.stopService)
        affinities = sorted((os.sched_getaffinity(pid) for pid in pool.worker_pids()), key=len)
        self.assertEqual(affinities, [{own}, os.sched_getaffinity(0)])
        answers = [await pool.identify(IMAGE, 0) for _ in range(4)]
        self.assertEqual({answer["content_type"] for answer in answers}, {"image/png"})
        warnings = [formatEvent(event) for event in logged if "unpinned" in event["log_format"]]
        self.assertEqual(len(warnings), 1, warnings)
        self.assertIn("Invalid argument", warnings[0])
