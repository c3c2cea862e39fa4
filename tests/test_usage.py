"""CPU and memory of the main process and the workers: /proc read right, and in /metrics."""

from __future__ import annotations

import os
import subprocess
import sys

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial import unittest

from imageserver.usage import PAGE_BYTES, TICKS_PER_SECOND, parse_stat, read_usage
from tests.support import WINE_DIR, ServerTestCase, request

MB = 1024 * 1024


class ParseTests(unittest.TestCase):
    def test_fields_are_counted_after_the_last_parenthesis_of_the_name(self) -> None:
        # pid (comm) state ppid ... utime(14) stime(15) cutime(16) cstime(17) ... rss(24)
        fields = ["S"] + [str(number) for number in range(4, 53)]
        fields[14 - 3], fields[15 - 3] = "250", "50"
        fields[16 - 3], fields[17 - 3] = "1000", "200"
        fields[24 - 3] = "3000"
        usage = parse_stat("4242 (a) (b c)) " + " ".join(fields) + "\n")
        self.assertEqual(usage.cpu_seconds, 300 / TICKS_PER_SECOND)
        self.assertEqual(usage.children_cpu_seconds, 1200 / TICKS_PER_SECOND)
        self.assertEqual(usage.resident_bytes, 3000 * PAGE_BYTES)
        self.assertEqual(usage.state, "S")

    def test_this_process_as_the_kernel_counts_it(self) -> None:
        usage = read_usage()
        assert usage is not None
        times = os.times()
        self.assertLessEqual(abs(usage.cpu_seconds - (times.user + times.system)), 0.05)
        children = times.children_user + times.children_system
        self.assertLessEqual(abs(usage.children_cpu_seconds - children), 0.05)
        with open("/proc/self/statm") as statm:
            resident = int(statm.read().split()[1]) * PAGE_BYTES
        self.assertLessEqual(abs(usage.resident_bytes - resident), 4 * MB)

    def test_a_process_ended_but_not_yet_reaped_is_a_zombie(self) -> None:
        child = subprocess.Popen([sys.executable, "-c", "pass"])
        self.addCleanup(child.wait)
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # ended, left unreaped
        usage = read_usage(child.pid)
        assert usage is not None
        self.assertEqual(usage.state, "Z")

    def test_a_process_that_has_ended_has_no_usage(self) -> None:
        ended = subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"],
            check=True,
            capture_output=True,
            text=True,
        )
        self.assertIsNone(read_usage(int(ended.stdout)))


class UsageMetricsTests(ServerTestCase):
    async def scrape(self) -> dict[tuple[str, str], float]:
        page = (await request("GET", f"{self.admin_url}/metrics")).body.decode()
        return {
            (sample.name, sample.labels.get("process", "")): sample.value
            for family in text_string_to_metric_families(page)
            for sample in family.samples
            if sample.name.startswith(
                ("image_server_cpu", "image_server_resident", "image_server_worker_resident")
            )
        }

    async def test_main_process_and_workers_replaced_ones_included(self) -> None:
        """The workers' CPU keeps what a replaced worker used; memory is the live workers'."""
        reaped_before = read_usage()
        assert reaped_before is not None
        await self.start_server(worker_max_jobs=2)
        await self.upload_wine()  # the worker's first job
        [first] = self.server.pool.worker_pids()
        first_usage = read_usage(first)
        assert first_usage is not None
        seen = await self.scrape()
        main = read_usage()
        assert main is not None
        reported = seen[("image_server_resident_memory_bytes", "main")]
        self.assertLessEqual(abs(reported - main.resident_bytes), 8 * MB)
        worker_memory = seen[("image_server_resident_memory_bytes", "workers")]
        self.assertGreater(worker_memory, 20 * MB)  # Python and libvips loaded
        self.assertEqual(seen[("image_server_worker_resident_memory_bytes_max", "")], worker_memory)
        self.assertGreaterEqual(
            seen[("image_server_cpu_seconds_total", "workers")], first_usage.cpu_seconds
        )

        response = await request("GET", f"{self.url}/p/{WINE_DIR}/w90.jpg")  # its second job
        self.assertEqual(response.code, 200)

        def replaced() -> bool:
            pids = self.server.pool.worker_pids()
            return len(pids) == 1 and first not in pids

        await self.wait_for(replaced, "the worker to be replaced")
        [second] = self.server.pool.worker_pids()
        second_usage = read_usage(second)  # before the scrape: it may still be starting
        assert second_usage is not None
        after = await self.scrape()
        floor = (
            reaped_before.children_cpu_seconds + first_usage.cpu_seconds + second_usage.cpu_seconds
        )
        self.assertGreaterEqual(after[("image_server_cpu_seconds_total", "workers")], floor)
        self.assertGreater(after[("image_server_cpu_seconds_total", "main")], 0)
