"""The worker pool: ampoule behind a small wrapper that bounds the queue and maps failures.

ampoule runs the processes; this wrapper adds what the server needs around it: a bounded queue
(``--max-queue``; beyond it `Overloaded`, a 503), a per-job timeout that kills the worker, recycling
after ``--worker-max-jobs`` jobs, a readiness signal, and counts for the metrics.  A worker that
dies fails only its own job.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from typing import Any

from ampoule import main as ampoule_main
from ampoule import pool as ampoule_pool
from ampoule.main import ProcessStarter
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet import error as net_error
from twisted.internet.defer import Deferred, DeferredList, gatherResults, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

import imageserver
from imageserver import logs
from imageserver.coalesce import shielded
from imageserver.errors import ImageServerError, Overloaded, ProcessingFailed
from imageserver.processing import commands
from imageserver.processing.placement import Placement, usable_cpus
from imageserver.processing.worker import Worker

log = Logger()


# glibc serves a large allocation from its heap once a freed one of that size has raised its
# threshold, and the heap then stays fragmented: one process making four 12 MP AVIFs in a row
# peaked at 530 MB, against 430 MB for the largest of them alone.  A fixed threshold maps every
# buffer over 128 KB afresh and unmaps it when freed: 435 MB for the four, and no measurable cost
# on 1080p thumbnails.  In the benchmark, workers (which also trim after a big job) peaked at
# 500 MB instead of 538 on 12 MP HEIC -> AVIF (benchmarks/README.md).  An operator's own
# GLIBC_TUNABLES replaces it.
FIXED_MMAP_THRESHOLD = "glibc.malloc.mmap_threshold=131072"


def worker_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """What a worker may see: libvips and malloc settings and the import path, never the
    server's secrets."""
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(imageserver.__file__)))
    environment = {
        "VIPS_CONCURRENCY": "1",
        "VIPS_BLOCK_UNTRUSTED": "1",
        "PYTHONPATH": package_parent,
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "GLIBC_TUNABLES": os.environ.get("GLIBC_TUNABLES", FIXED_MMAP_THRESHOLD),
    }
    environment.update({key: value for key, value in os.environ.items() if key.startswith("VIPS_")})
    environment.update(extra or {})
    return environment


# The longest a new worker may take to load libvips and answer its first job.
WARM_UP_SECONDS = 60

# How a worker starts: ampoule's start-up, with the worker's log as `logs.begin_worker_logging`
# says (ampoule's own start-up writes every event from info up as text).  ampoule passes the
# child's reactor and class last.
WORKER_BOOTSTRAP = f"""\
import sys

from twisted.application import reactors

reactors.installReactor(sys.argv[-2])

from imageserver import logs

logs.begin_worker_logging()

from twisted.internet import reactor, stdio
from twisted.python import reflect

child = reflect.namedAny(sys.argv[-1])(*sys.argv[1:-2])
stdio.StandardIO(child, {ampoule_main.TO_CHILD}, {ampoule_main.FROM_CHILD})
reactor.run()
"""


class _WorkerConnector(ampoule_main.AMPConnector):
    """ampoule's end of a worker's pipes, with the worker's log relayed at its own level.

    ampoule's own connector logs a line for every worker started, and relays each line a worker
    writes at error level, whatever it says.
    """

    def connectionMade(self) -> None:
        self.relay = logs.WorkerRelay(self.transport.pid)
        self.amp.makeConnection(self)

    def errReceived(self, data: bytes) -> None:
        self.relay.feed(data)

    def processEnded(self, status: Failure) -> None:
        self.relay.flush()
        super().processEnded(status)


class _PinningStarter(ProcessStarter):
    """ampoule's starter, with each worker on a CPU of its own.

    Placement: see `imageserver.processing.placement`.  A new worker is pinned as soon as it is
    spawned, before its interpreter has started a thread, so every thread it makes inherits it.
    """

    connectorFactory = _WorkerConnector  # the workers' logs at their own level

    def __init__(self, placement: Placement, **options: Any) -> None:
        super().__init__(**options)
        self.placement = placement

    def startPythonProcess(self, prot: Any, *args: Any) -> tuple[Any, Deferred[Any]]:
        child, finished = super().startPythonProcess(prot, *args)
        pid = prot.transport.pid  # the process protocol is connected to its process by now
        cpu = self.placement.choose(child)
        if cpu is not None:
            try:
                os.sched_setaffinity(pid, {cpu})
            except OSError as error:  # gone already, or the CPU was taken away: run unpinned
                log.warn("worker {pid} runs unpinned: {error}", pid=pid, error=error)
        # Ahead of the pool's own callbacks, so the CPU is free before a replacement starts.
        finished.addBoth(self._released, child)
        return child, finished

    def _released(self, result: object, child: Any) -> object:
        self.placement.release(child)
        return result


class _Pool(ampoule_pool.ProcessPool):
    """ampoule's pool, with jobs written out at once.

    A Twisted transport writes on the reactor's next turn.  When a worker finishes, ampoule hands
    it the next queued job and then runs the finished job's callbacks, which answer the HTTP
    request, and the reactor serves whatever else is ready: the worker would wait all that out
    before its job reaches it.  Measured on 1080p misses (benchmarks/README.md): 0.22 of 2 cores
    idle without this, 0.18 with it, and 7 % more requests per second.
    """

    def _cb_doWork(self, command: type[amp.Command], **arguments: Any) -> Deferred[Any]:
        idle = set(self.ready)
        job: Deferred[Any] = super()._cb_doWork(command, **arguments)
        for child in idle - self.ready:
            pipe = _process(child).pipes.get(ampoule_main.TO_CHILD)
            if pipe is not None:
                pipe.doWrite()  # a failure is left for the reactor to see on its next turn
        return job

    def dumpStats(self) -> None:
        """Nothing: ampoule logs its settings and the workers' whole start-up code here, 40
        lines at every start; the server's ready line says what an operator needs."""


def _no_stacks(reason: Failure, timeout: float) -> str:
    """What a worker that gave no stacks is doing, as far as the server can tell."""
    if reason.check(defer.TimeoutError):
        return (
            f"no answer within {timeout:g} s: busy with a job (a worker reads the question only"
            " between jobs), or stopped\n"
        )
    return f"no answer: {reason.getErrorMessage()}\n"


def _process(child: Any) -> Any:
    """The Twisted process behind one of ampoule's children (its AMP protocol).

    This, its ``pipes`` and ampoule's ``_cb_doWork`` are private: tests/test_private_api.py
    checks each against the versions in constraints.txt.
    """
    return child.transport.transport


class WorkerPool(Service):
    """``size`` pyvips workers and a queue of at most ``max_queue`` waiting jobs.

    ``pin``: one worker per CPU when the workers cover every CPU (`Placement`).
    """

    def __init__(
        self,
        size: int,
        max_queue: int,
        timeout: float,
        max_jobs: int,
        environment: Mapping[str, str] | None = None,
        pin: bool = True,
        cpus: Collection[int] | None = None,
    ) -> None:
        """``cpus``: those the workers may be pinned to (default: all this process may use)."""
        self.size = size
        self.placement = Placement((usable_cpus() if cpus is None else cpus) if pin else (), size)
        self.max_queue = max_queue
        self.timeout = timeout
        self.max_jobs = max_jobs
        self.environment = worker_environment(environment)
        self.in_flight = 0
        self.crashes = 0
        self.ready = False
        self._ready_waiters: list[Deferred[None]] = []
        self._pool: Any = None

    @property
    def queued(self) -> int:
        return max(0, self.in_flight - self.size)

    def startService(self) -> Deferred[None]:
        super().startService()
        starter = _PinningStarter(
            self.placement,
            bootstrap=WORKER_BOOTSTRAP,
            env=self.environment,
            packages=("twisted", "imageserver"),
        )
        self._pool = _Pool(
            ampChild=Worker,
            min=self.size,
            max=self.size,
            maxIdle=3600,
            recycleAfter=self.max_jobs,
            starter=starter,
            timeout=self.timeout,
        )
        started: Deferred[Any] = self._pool.start()
        started.addCallback(lambda _: self._warm())
        return started

    def _warm(self) -> Deferred[None]:
        # A first start imports libvips and may compile bytecode: far slower than a job, so the
        # warm-up is not held to a short --processing-timeout (which would leave us never ready).
        timeout = max(self.timeout, WARM_UP_SECONDS)
        warming = [self._pool.doWork(commands.Warm, _timeout=timeout) for _ in range(self.size)]

        def _ready(results: list[tuple[bool, object]]) -> None:
            failures = [result for succeeded, result in results if not succeeded]
            if failures:
                # A worker that cannot even load libvips: stay not-ready, so probes say so.
                log.failure("the image workers failed to start", failures[0])  # type: ignore[arg-type]
                return
            self.ready = True
            waiters, self._ready_waiters = self._ready_waiters, []
            for waiter in waiters:
                waiter.callback(None)

        return DeferredList(warming, consumeErrors=True).addCallback(_ready)

    def when_ready(self) -> Deferred[None]:
        """Fires once every worker has answered (at once if they have); never if they cannot
        start, which the pool logs.  For the server's ready line, and commands that wait."""
        if self.ready:
            return defer.succeed(None)
        waiter: Deferred[None] = Deferred()
        self._ready_waiters.append(waiter)
        return waiter

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        self.ready = False
        if self._pool is None:
            return None
        stopping: Deferred[None] = self._pool.stop()
        return stopping

    def worker_pids(self) -> list[int]:
        """The process ids of the live workers (for operators and tests)."""
        if self._pool is None:
            return []
        return [_process(child).pid for child in self._pool.processes]

    def stacks(self, clock: IReactorTime, timeout: float) -> Deferred[dict[int, str]]:
        """Every live worker's thread stacks (`commands.Stacks`), by process id.

        Each worker is asked directly, not through the queue, so a full queue does not hide it.
        An idle worker answers at once; one in a job reads the question only when the job is
        done (libvips holds its only thread), so after ``timeout`` seconds it is reported busy.
        """
        children = list(self._pool.processes) if self._pool is not None else []
        pids = [_process(child).pid for child in children]
        answers = []
        for child in children:
            # Shielded: the timeout cancels our copy, and the late answer lands harmlessly.
            answer = shielded(maybeDeferred(child.callRemote, commands.Stacks))
            answer.addTimeout(timeout, clock)
            answer.addCallback(lambda result: result["stacks"])
            answer.addErrback(_no_stacks, timeout)
            answers.append(answer)
        gathered: Deferred[list[str]] = gatherResults(answers)
        return gathered.addCallback(lambda texts: dict(zip(pids, texts, strict=True)))

    def identify(self, path: str, max_pixels: int) -> Deferred[dict[str, Any]]:
        return self._submit(commands.Identify, path=path, max_pixels=max_pixels)

    def inspect(self, path: str) -> Deferred[dict[str, Any]]:
        """Whether an image has alpha (`commands.Inspect`)."""
        return self._submit(commands.Inspect, path=path)

    def render(
        self,
        *,
        source: str,
        temporary: str,
        destination: str,
        name: str,
        default_quality: int,
        max_pixels: int,
        max_dimension: int,
    ) -> Deferred[dict[str, Any]]:
        """Make the variant ``name`` (`commands.Render`); fires with its width and height."""
        return self._submit(
            commands.Render,
            source=source,
            temporary=temporary,
            destination=destination,
            name=name,
            default_quality=default_quality,
            max_pixels=max_pixels,
            max_dimension=max_dimension,
        )

    def _submit(self, command: type[amp.Command], **arguments: Any) -> Deferred[dict[str, Any]]:
        """Queue a job, or refuse it when the queue is full.

        The caller gets a Deferred of its own: cancelling it (a client that went away) leaves the
        job to finish in its worker, and the job counts against the queue until it has.
        """
        if self._pool is None or self.in_flight >= self.size + self.max_queue:
            raise Overloaded("the image workers are busy; retry shortly")
        self.in_flight += 1
        job: Deferred[dict[str, Any]] = self._pool.doWork(command, **arguments)

        def _done(result: object) -> object:
            self.in_flight -= 1
            return result

        job.addBoth(_done)
        job.addErrback(self._worker_failure)
        return shielded(job)

    def _worker_failure(self, reason: Failure) -> Failure:
        """Keep our own errors; a dead or killed worker fails this job only, with a 500."""
        if reason.check(ImageServerError):
            return reason
        if reason.check(
            net_error.ProcessTerminated, net_error.ConnectionLost, net_error.ProcessDone
        ):
            self.crashes += 1
            error = ImageServerError("the image worker stopped during the job (crash or timeout)")
            return Failure(error)
        log.failure("unexpected worker failure", reason)
        return Failure(ProcessingFailed(reason.getErrorMessage()))
