"""The debug site (``--profile``), through real requests to a server with real workers."""

from __future__ import annotations

import os
import re
import signal
import socket
import time
import tracemalloc

from twisted.internet.defer import ensureDeferred
from twisted.internet.error import ConnectionRefusedError

from tests.support import Response, ServerTestCase, distinct_jpeg, request

# One line of a collapsed stack: frames joined by ";", a space, a count.
COLLAPSED_LINE = re.compile(r"^[^;\n]+(;[^;\n]+)* [1-9][0-9]*$")
# One line of tracemalloc's statistics, as `str(Statistic)` writes it.
HEAP_LINE = re.compile(r"^.+:\d+: size=.+, count=\d+, average=.+$")


def free_port() -> int:
    """A port nothing listens on (the kernel's choice, released again)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class ProfileTests(ServerTestCase):
    async def get(self, path: str) -> Response:
        debugger = self.server.debugger
        assert debugger is not None, "the server has no debug site"
        port = debugger.port._port.getHost().port
        return await request("GET", f"http://127.0.0.1:{port}{path}")

    async def test_profile_is_collapsed_stacks_taken_while_serving(self) -> None:
        await self.start_server(profile=True, profile_port=0)
        started = time.monotonic()
        profiling = ensureDeferred(self.get("/debug/profile?seconds=2"))
        debugger = self.server.debugger
        assert debugger is not None
        # The two requests come on connections of their own: the second must follow the first.
        await self.wait_for(lambda: debugger.app.profile is not None, "the first profile")
        second = await self.get("/debug/profile?seconds=1")
        self.assert_error(second, 409, "a profile is being taken")
        served = 0
        while not profiling.called:
            response = await self.upload(distinct_jpeg(served))
            self.assertEqual(response.code, 200, response.body)
            served += 1
        profile = await profiling
        self.assertGreaterEqual(time.monotonic() - started, 2.0)
        self.assertGreater(served, 5)  # the reactor went on serving while it was sampled
        self.assertEqual(signal.getitimer(signal.ITIMER_PROF), (0.0, 0.0))
        self.assertEqual(profile.code, 200, profile.body)
        self.assertEqual(profile.header("Content-Type"), "text/plain; charset=utf-8")
        lines = profile.body.decode().splitlines()
        for line in lines:
            self.assertRegex(line, COLLAPSED_LINE)
        # The server's own code, below the reactor's loop, as the flame graph will show it.
        ours = [line for line in lines if "imageserver/site.py:" in line]
        self.assertTrue(ours, profile.body)
        self.assertIn("twisted/internet/base.py:ReactorBase.mainLoop;", ours[0])

    async def test_bad_requests_are_json_errors(self) -> None:
        await self.start_server(profile=True, profile_port=0)
        for query in ("seconds=0", "seconds=61", "seconds=ten"):
            response = await self.get(f"/debug/profile?{query}")
            self.assert_error(response, 400, "seconds: a whole number from 1 to 60")
            self.assertEqual(response.json()["code"], "invalid_parameter")
        self.assert_error(await self.get("/debug/heap?limit=0"), 400, "limit: a whole number")
        self.assert_error(await self.get("/debug/nothing"), 404, "404 page not found")

    async def test_stacks_of_every_thread_and_every_worker(self) -> None:
        await self.start_server(profile=True, profile_port=0, processor_concurrency=2)
        await self.upload_wine()
        response = await self.get("/debug/stacks")
        self.assertEqual(response.code, 200, response.body)
        text = response.body.decode()
        self.assertTrue(text.startswith(f"main process {os.getpid()}\n\nthread "), text)
        main = text.partition("\nworker ")[0]
        self.assertIn("thread MainThread", main)
        self.assertIn("in DebugApp.stacks", main)  # the reactor thread, answering this request
        workers = self.workers(text)
        pids = self.server.pool.worker_pids()
        self.assertEqual(sorted(workers), sorted(pids))
        for stacks in workers.values():
            self.assertTrue(stacks.startswith("thread MainThread"), stacks)
            self.assertIn("in Worker.stacks", stacks)

        # A worker that cannot answer (here: stopped) is reported, and does not hold the rest.
        frozen, answering = pids
        os.kill(frozen, signal.SIGSTOP)
        self.addCleanup(os.kill, frozen, signal.SIGCONT)
        workers = self.workers((await self.get("/debug/stacks")).body.decode())
        self.assertTrue(workers[frozen].startswith("no answer within 2 s: busy"), workers[frozen])
        self.assertIn("imageserver/processing/worker.py", workers[answering])

    def workers(self, text: str) -> dict[int, str]:
        """Each worker's section of a ``/debug/stacks`` answer, by process id."""
        found = re.findall(r"^worker (\d+)\n\n(.*?)(?=^worker \d+\n\n|\Z)", text, re.M | re.S)
        return {int(pid): stacks for pid, stacks in found}

    async def test_heap_lists_the_top_allocations(self) -> None:
        await self.start_server(profile=True, profile_port=0)
        self.assertTrue(tracemalloc.is_tracing())
        await self.upload_wine()
        response = await self.get("/debug/heap?limit=5")
        self.assertEqual(response.code, 200, response.body)
        header, _, table = response.body.decode().partition("\n\n")
        self.assertTrue(header.startswith("traced now "), header)
        lines = table.splitlines()
        self.assertEqual(len(lines), 5, table)
        for line in lines:
            self.assertRegex(line, HEAP_LINE)
        await self.server.stopService()
        self.assertFalse(tracemalloc.is_tracing())

    async def test_only_the_flag_opens_the_port_and_only_on_loopback(self) -> None:
        port = free_port()
        await self.start_server(profile=True, profile_port=port, listen="0.0.0.0")
        debugger = self.server.debugger
        assert debugger is not None
        self.assertEqual(debugger.port._port.getHost().host, "127.0.0.1")
        self.assertEqual((await self.get("/debug/stacks")).code, 200)
        await self.server.stopService()

        await self.start_server(profile_port=port)
        self.assertIsNone(self.server.debugger)
        self.assertFalse(tracemalloc.is_tracing())
        url = f"http://127.0.0.1:{port}/debug/stacks"
        await self.assertFailure(ensureDeferred(request("GET", url)), ConnectionRefusedError)
