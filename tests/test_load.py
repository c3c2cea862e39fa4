"""Overload: a mixed load at many times the pool's capacity, judged request by request.

A few seconds in the suite; ``IMAGE_SERVER_LOAD_SECONDS=60 .venv/bin/trial tests.test_load`` for
the minute-long run of issue 6.  The report (requests by kind and status, memory) is printed.
"""

from __future__ import annotations

import os
import re

from twisted.trial import unittest

from tests.load import Load, check_afterwards
from tests.processes import IMAGE_SERVER, start_process
from tests.support import request

SECONDS = float(os.environ.get("IMAGE_SERVER_LOAD_SECONDS", "6"))
WORKERS = 2
CLIENTS = 24  # twelve times the pool, three times pool and queue together
# The main process holds no image: its memory must not follow the load.
RSS_LIMIT_KB = 200 * 1024


class LoadTests(unittest.TestCase):
    timeout = int(SECONDS) + 240

    async def test_mixed_load_over_capacity(self) -> None:
        server = await start_process(
            self,
            [IMAGE_SERVER, "server"],
            [
                f"--processor_concurrency={WORKERS}",
                "--max-queue=4",
                "--max-upload-bytes=1000000",
                # Misses of one image by the hundred: the ceiling has tests of its own.
                "--max-variants-per-image=0",
            ],
        )
        report = await Load(server.url, server.process.pid, SECONDS, CLIENTS).run()
        print(f"\n{report.table()}")

        self.assertEqual(report.unexpected, [])
        self.assertEqual(await check_afterwards(server.url, report), [])
        statuses = report.statuses
        self.assertGreater(statuses["upload"][200], 0)
        self.assertGreater(statuses["miss"][200], 0)
        self.assertGreater(statuses["hit"][200], 0)
        # Overload was reached, and answered the intended way.
        self.assertGreater(statuses["upload"][503] + statuses["miss"][503], 0)
        self.assertLess(report.rss_peak_kb, RSS_LIMIT_KB)
        # The pool is at full strength afterwards.
        metrics = (await request("GET", f"{server.admin_url}/metrics")).body.decode()
        workers = re.search(r"^image_server_workers (\S+)$", metrics, re.MULTILINE)
        assert workers is not None
        self.assertEqual(float(workers.group(1)), WORKERS)
