"""The worker pool: ampoule behind a small wrapper that bounds the queue and maps failures.

ampoule runs the processes; this wrapper adds what the server needs around it: a bounded queue
(``--max-queue``; beyond it `Overloaded`, a 503), a per-job timeout that kills the worker, recycling
after ``--worker-max-jobs`` jobs, a readiness signal, and counts for the metrics.  A worker that
dies fails only its own job.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ampoule import main as ampoule_main
from ampoule import pool as ampoule_pool
from ampoule.main import ProcessStarter
from twisted.application.service import Service
from twisted.internet import error as net_error
from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

import imageserver
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


class _Pool(ampoule_pool.ProcessPool):
    """ampoule's pool, with each worker on a CPU of its own and jobs written out at once.

    Placement: see `imageserver.processing.placement`.  A new worker is pinned as soon as it is
    spawned, before its interpreter has started a thread, so every thread it makes inherits it.

    Prompt writes: a Twisted transport writes on the reactor's next turn.  When a worker finishes,
    ampoule hands it the next queued job and then runs the finished job's callbacks, which answer
    the HTTP request, and the reactor serves whatever else is ready: the worker would wait all
    that out before its job reaches it.  Measured on 1080p misses (benchmarks/README.md): 0.22 of
    2 cores idle without this, 0.18 with it, and 7 % more requests per second.
    """

    def __init__(self, placement: Placement, **options: Any) -> None:
        super().__init__(**options)
        self.placement = placement

    def _addProcess(self, child: Any, finished: Deferred[Any]) -> None:
        pid = _process(child).pid
        cpu = self.placement.choose(child)
        if cpu is not None:
            try:
                os.sched_setaffinity(pid, {cpu})
            except OSError as error:  # gone already, or the CPU was taken away: run unpinned
                log.warn("worker {pid} runs unpinned: {error}", pid=pid, error=error)
        super()._addProcess(child, finished)

    def _pruneProcess(self, child: Any) -> None:
        self.placement.release(child)  # its transport may be gone by now
        super()._pruneProcess(child)

    def _cb_doWork(self, command: type[amp.Command], **arguments: Any) -> Deferred[Any]:
        idle = set(self.ready)
        job: Deferred[Any] = super()._cb_doWork(command, **arguments)
        for child in idle - self.ready:
            pipe = _process(child).pipes.get(ampoule_main.TO_CHILD)
            if pipe is not None:
                pipe.doWrite()  # a failure is left for the reactor to see on its next turn
        return job


def _process(child: Any) -> Any:
    """The Twisted process behind one of ampoule's children (its AMP protocol)."""
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
    ) -> None:
        self.size = size
        self.placement = Placement(usable_cpus() if pin else (), size)
        self.max_queue = max_queue
        self.timeout = timeout
        self.max_jobs = max_jobs
        self.environment = worker_environment(environment)
        self.in_flight = 0
        self.crashes = 0
        self.ready = False
        self._pool: Any = None

    @property
    def queued(self) -> int:
        return max(0, self.in_flight - self.size)

    def startService(self) -> Deferred[None]:
        super().startService()
        starter = ProcessStarter(env=self.environment, packages=("twisted", "imageserver"))
        self._pool = _Pool(
            self.placement,
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
            log.info("{size} image workers ready", size=self.size)

        return DeferredList(warming, consumeErrors=True).addCallback(_ready)

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
