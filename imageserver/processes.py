"""Several main processes on one port and one store (docs/scaling.md#several-main-processes).

One main process hands out and answers about 950-1 200 misses a second at most
(benchmarks/README.md, "Issue 21"): enough for the workers of 8-17 cores making 1080p
thumbnails.  On a bigger machine ``--processes`` starts more: the first process (the *primary*)
binds the main port with ``SO_REUSEPORT``, starts the others (the *secondaries*) as its children,
and the kernel spreads new connections across every process's socket.  Each process has its own
share of the workers and of the CPUs they are pinned to; the store, the upload journal, the
webhook outbox and the claims on new variants (`imageserver.claims`) are shared on disk.

Only the primary runs the admin site (its ``/metrics`` includes every process's series, labelled
``process``), the cache collector, the console's history and the profiler, and replays the upload
journal and the webhook outbox at start-up and again whenever a secondary ends: what a secondary
left unfinished is never lost.  A secondary that ends is started again; one whose primary has gone
(its stdin closes) stops.

The pure parts (how many processes, each one's share) come first; then the primary's services.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

from treq.client import HTTPClient
from twisted.application import internet
from twisted.application.service import Service
from twisted.internet import error as internet_error
from twisted.internet import tcp
from twisted.internet.defer import Deferred, DeferredList, gatherResults
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from imageserver.options import Config

log = Logger()

# Cores of 1080p thumbnail work that keep one main process busy, the low end of the measured 8-17
# (benchmarks/README.md, "Issue 21"); ``--processes 0`` starts one main process per this many CPUs.
CORES_PER_PROCESS = 8
# A secondary that ends is started again after this many seconds, doubled for each end in a row
# that came sooner than `STEADY_SECONDS` after its start, up to `LONGEST_RESTART_DELAY`.
FIRST_RESTART_DELAY = 1.0
LONGEST_RESTART_DELAY = 60.0
STEADY_SECONDS = 60.0
# How long a stopping primary waits for its secondaries to drain before killing them.
STOP_SECONDS = 40.0
# How long the primary's /metrics waits for a secondary's page.
SCRAPE_SECONDS = 2.0
# How a secondary is started, after the interpreter and before its index.
SECONDARY_ARGUMENTS: tuple[str, ...] = ("-m", "imageserver.secondary")
# The secondary's file descriptor for the line that tells the primary its metrics port.
CONTROL_FD = 3


def process_count(requested: int, workers: int, cpus: int) -> int:
    """How many main processes to run: ``requested``, or one per `CORES_PER_PROCESS` CPUs when it
    is 0; never more than the workers, since every process needs one of its own."""
    wanted = requested or -(-cpus // CORES_PER_PROCESS)
    return max(1, min(wanted, workers))


def share(total: int, count: int, index: int) -> int:
    """Process ``index``'s share of ``total`` workers: as even as can be, the first ones first."""
    return total // count + (1 if index < total % count else 0)


def cpus_of(cpus: Sequence[int], count: int, index: int) -> list[int]:
    """Process ``index``'s CPUs, to pin its workers to: contiguous and as even as can be, so no two
    processes' workers crowd one CPU.  With fewer CPUs than processes, they all share them."""
    ordered = sorted(cpus)
    if len(ordered) < count:
        return ordered
    start = sum(share(len(ordered), count, before) for before in range(index))
    return ordered[start : start + share(len(ordered), count, index)]


class _SharedPort(tcp.Port):
    """A TCP port bound with ``SO_REUSEPORT``: every main process binds its own socket to the same
    address, and the kernel balances new connections across them (no thundering herd on accept)."""

    def createInternetSocket(self) -> socket.socket:
        listening = super().createInternetSocket()
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        return listening


class SharedTCPServer(internet.TCPServer):
    """`internet.TCPServer` on a `_SharedPort`."""

    def _getPort(self) -> tcp.Port:
        from twisted.internet import reactor as default_reactor

        port, factory = self.args
        listening = _SharedPort(
            port,
            factory,
            interface=self.kwargs.get("interface", ""),
            backlog=self.kwargs.get("backlog", 50),
            reactor=self.reactor or default_reactor,
        )
        listening.startListening()
        return listening


def bound_port(server: internet.TCPServer) -> int:
    """The port a started `TCPServer` is bound to (the flag's may be 0)."""
    port = server._port
    assert port is not None  # bound in privilegedStartService, before anything is served
    return int(port.getHost().port)


def scrape_metrics(client: HTTPClient, ports: dict[int, int]) -> Deferred[dict[int, bytes]]:
    """Each secondary's metrics page, by process index, all asked at once; one that does not
    answer within `SCRAPE_SECONDS` is left out (the scrape shows what the others say)."""

    async def scrape(index: int, port: int) -> tuple[int, bytes | None]:
        try:
            response = await client.get(f"http://127.0.0.1:{port}/", timeout=SCRAPE_SECONDS)
            return index, await response.content()
        except Exception as error:  # a secondary restarting, or stuck: not the scrape's end
            log.warn("metrics of main process {index} not read: {error}", index=index, error=error)
            return index, None

    asked = [Deferred.fromCoroutine(scrape(index, port)) for index, port in ports.items()]
    return gatherResults(asked).addCallback(
        lambda pages: {index: page for index, page in pages if page is not None}
    )


def secondary_config(config: Config, port: int) -> str:
    """The line a secondary reads on its stdin: the primary's configuration, with the port the
    primary bound (the flag's may be 0)."""
    fields = asdict(config) | {"port": port}
    return json.dumps(fields) + "\n"


def config_from_line(line: str) -> Config:
    """The `Config` of `secondary_config`'s line (JSON lists back to the tuples they were)."""
    fields: dict[str, Any] = json.loads(line)
    restored: dict[str, Any] = {
        k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()
    }
    return Config(**restored)


class _Secondary(ProcessProtocol):
    """The primary's end of one secondary: its stdin stays open for as long as the primary lives."""

    def __init__(self, index: int, ended: Callable[[_Secondary, Failure], None]) -> None:
        self.index = index
        self.ended = ended
        self.exited: Deferred[None] = Deferred()
        self.metrics_port: int | None = None
        self._partial = b""

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        """The secondary says which port its metrics are on, in one line on `CONTROL_FD`."""
        if childFD != CONTROL_FD:
            return
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            if line.startswith(b"metrics-port "):
                self.metrics_port = int(line.split()[1])

    def processEnded(self, reason: Failure) -> None:
        self.exited.callback(None)
        self.ended(self, reason)


class Secondaries(Service):
    """The primary's secondaries: started once the main port is bound, started again when they
    end, stopped (drained: SIGTERM, then SIGKILL after `STOP_SECONDS`) with the primary."""

    def __init__(
        self,
        config: Config,
        count: int,
        bound_port: Callable[[], int],
        reactor: Any,
        on_end: Callable[[], None],
    ) -> None:
        self.config = config
        self.count = count
        self.bound_port = bound_port
        self.reactor = reactor
        self.on_end = on_end
        self.running_ones: dict[int, tuple[_Secondary, Any]] = {}
        self._started_at: dict[int, float] = {}
        self._delays: dict[int, float] = {}

    def startService(self) -> None:
        super().startService()
        for index in range(1, self.count):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        if not self.running:
            return
        protocol = _Secondary(index, self._ended)
        transport = self.reactor.spawnProcess(
            protocol,
            sys.executable,
            [sys.executable, *SECONDARY_ARGUMENTS, str(index)],
            env=os.environ.copy(),
            # Logs go where the primary's go; the control line comes back on its own pipe.
            childFDs={0: "w", 1: 1, 2: 2, CONTROL_FD: "r"},
        )
        transport.write(secondary_config(self.config, self.bound_port()).encode())
        self.running_ones[index] = (protocol, transport)
        self._started_at[index] = self.reactor.seconds()

    def _ended(self, protocol: _Secondary, reason: Failure) -> None:
        index = protocol.index
        self.running_ones.pop(index, None)
        self.on_end()  # adopt what it left in the journal and the outbox
        if not self.running:
            return
        lived = self.reactor.seconds() - self._started_at.get(index, 0.0)
        delay = FIRST_RESTART_DELAY
        if lived < STEADY_SECONDS:
            delay = min(2 * self._delays.get(index, FIRST_RESTART_DELAY / 2), LONGEST_RESTART_DELAY)
        self._delays[index] = delay
        log.warn(
            "main process {index} ended ({reason}); starting it again in {delay:.0f} s",
            index=index,
            reason=reason.getErrorMessage(),
            delay=delay,
        )
        self.reactor.callLater(delay, self._spawn, index)

    def metrics_ports(self) -> dict[int, int]:
        """Each running secondary's metrics port, by process index."""
        return {
            index: protocol.metrics_port
            for index, (protocol, _) in self.running_ones.items()
            if protocol.metrics_port is not None
        }

    def stopService(self) -> Deferred[None]:
        super().stopService()
        waits = []
        for protocol, transport in list(self.running_ones.values()):
            waits.append(protocol.exited)
            _signal(transport, "TERM")
            killer = self.reactor.callLater(STOP_SECONDS, _signal, transport, "KILL")
            protocol.exited.addBoth(_cancelling, killer)
        return DeferredList(waits).addCallback(lambda _: None)


def _cancelling(result: object, call: Any) -> object:
    if call.active():
        call.cancel()
    return result


def _signal(transport: Any, name: str) -> None:
    with contextlib.suppress(internet_error.ProcessExitedAlready):
        transport.signalProcess(name)
