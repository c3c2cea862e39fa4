"""Servers run as real processes: the installed ``image-server`` and ``twistd`` commands."""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections import Counter
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, protocol, reactor
from twisted.trial import unittest

from tests.support import request, sleep

BIN = os.path.dirname(sys.executable)
IMAGE_SERVER = os.path.join(BIN, "image-server")
TWISTD = os.path.join(BIN, "twistd")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (the image workers of a server)."""
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as listing:
            found.extend(int(child) for child in listing.read().split())
    return found


def metric(page: bytes, name: str) -> dict[str, float]:
    """A counter's value per process on a merged page."""
    found: Counter[str] = Counter()
    for family in text_string_to_metric_families(page.decode()):
        for sample in family.samples:
            if sample.name == name:
                found[sample.labels["process"]] += sample.value
    return dict(found)


def process_tree(pid: int) -> tuple[list[int], list[int]]:
    """The secondaries among ``pid``'s children, and its workers."""
    secondaries, workers = [], []
    for child in children(pid):
        with open(f"/proc/{child}/cmdline", "rb") as cmdline:
            words = cmdline.read().split(b"\0")
        (secondaries if b"imageserver.secondary" in words else workers).append(child)
    return secondaries, workers


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


class ServerProcess(protocol.ProcessProtocol):
    """A server in a child process; ``ended`` fires with its exit code (or signal name)."""

    def __init__(self) -> None:
        self.ended: defer.Deferred[int | str] = defer.Deferred()
        self.output = b""

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason) -> None:  # type: ignore[no-untyped-def]
        if reason.value.exitCode is None:
            self.ended.callback(signal.Signals(reason.value.signal).name)
        else:
            self.ended.callback(reason.value.exitCode)

    @property
    def pid(self) -> int:
        pid: int = self.transport.pid  # type: ignore[union-attr]
        return pid


@dataclass
class Running:
    process: ServerProcess
    url: str
    admin_url: str
    store: str


async def start_process(
    testcase: unittest.TestCase,
    argv: list[str],
    flags: list[str] = (),  # type: ignore[assignment]
) -> Running:
    """Start a server process on free ports with a fresh store; wait for /status_check's 200.

    It is killed at the end of the test if it is still running.
    """
    port, admin = free_port(), free_port()
    store = os.path.abspath(testcase.mktemp())
    os.makedirs(store)
    own = ["--port", str(port), "--admin-port", str(admin), "--local_base_path", store]
    process = ServerProcess()
    transport = reactor.spawnProcess(
        process, argv[0], [*argv, *own, *flags], env=os.environ, path=store
    )

    async def kill() -> None:
        if not process.ended.called:
            transport.signalProcess("KILL")
            await process.ended

    testcase.addCleanup(kill)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if (await request("GET", url + "/status_check")).code == 200:
                return Running(process, url, f"http://127.0.0.1:{admin}", store)
        except Exception:  # not listening yet
            pass
        await sleep(0.1)
    testcase.fail(f"the server did not start: {process.output.decode()}")
