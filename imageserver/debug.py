"""The debug site (``--profile``): CPU profiles, thread stacks and the heap, on 127.0.0.1 only.

The Go server serves pprof on ``localhost:6060``; this is its counterpart for a Python operator:

- ``GET /debug/profile?seconds=N`` samples the reactor's thread for N seconds while it keeps
  serving, and answers in the collapsed-stack format that flame-graph tools read;
- ``GET /debug/stacks`` is the current stack of every thread of the main process and of each worker;
- ``GET /debug/heap?limit=N`` is the lines of code holding the most memory (tracemalloc, which
  traces only while the site runs, as it slows every allocation).

Nothing here is meant for the outside world, so the site listens on the loopback interface whatever
``--listen`` says: reach it through an SSH tunnel.  docs/profiling.md walks from "it is slow" to a
flame graph.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import time
import tracemalloc
from collections import Counter
from types import CodeType, FrameType
from typing import Any

from klein import Klein
from twisted.application import internet, service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from werkzeug.exceptions import HTTPException

from imageserver.errors import ImageServerError, InvalidParameter
from imageserver.processing.pool import WorkerPool
from imageserver.processing.worker import thread_stacks
from imageserver.responses import error_body
from imageserver.site import LoggingSite

# Whatever --listen says: profiles and stacks show paths, and a profile costs CPU.
INTERFACE = "127.0.0.1"
# Go's pprof defaults to 30 seconds; a minute bounds how long the reactor carries the sampling.
DEFAULT_PROFILE_SECONDS = 30
MAX_PROFILE_SECONDS = 60
# A sample every 10 ms of CPU time, as pprof takes them.
SAMPLE_INTERVAL = 0.01
DEFAULT_HEAP_LINES = 30
MAX_HEAP_LINES = 1000
# A worker reads the question only between jobs: past this, it is reported busy.
WORKER_ANSWER_SECONDS = 2.0
TEXT_TYPE = b"text/plain; charset=utf-8"


class ProfileInProgress(ImageServerError):
    """A second profile while one is taken: they would share one timer and one signal."""

    status = 409
    code = "profile_in_progress"


class Debugger(service.MultiService):
    """The debug site on ``INTERFACE``:``port``, and tracemalloc while it runs."""

    def __init__(self, pool: WorkerPool, reactor: Any, port: int) -> None:
        super().__init__()
        self._traces = False
        self.app = DebugApp(pool, reactor)
        site = LoggingSite(self.app.resource(), reactor=reactor)
        self.port = internet.TCPServer(port, site, interface=INTERFACE)
        self.port.setServiceParent(self)

    def startService(self) -> None:
        # Not when something else (python -X tracemalloc) traces already: it keeps its settings.
        if not tracemalloc.is_tracing():
            tracemalloc.start()
            self._traces = True
        super().startService()

    def stopService(self) -> Deferred[None]:
        stopped: Deferred[None] = super().stopService()
        if self.app.profile is not None:
            self.app.profile.finish()  # it answers with what it has
        if self._traces:
            tracemalloc.stop()
            self._traces = False
        return stopped


class DebugApp:
    """The routes; ``profile`` is the CPU profile being taken, if any."""

    app = Klein()

    def __init__(self, pool: WorkerPool, reactor: Any) -> None:
        self.pool = pool
        self.reactor = reactor
        self.profile: CpuProfile | None = None

    def resource(self) -> Any:
        return self.app.resource()

    @app.route("/debug/profile", methods=["GET"])
    def take_profile(self, request: IRequest) -> Deferred[bytes]:
        seconds = _whole_number(request, "seconds", DEFAULT_PROFILE_SECONDS, 1, MAX_PROFILE_SECONDS)
        profile = CpuProfile(self.reactor)
        taken = profile.take(seconds)  # cancelled by Klein when the client leaves
        self.profile = profile

        def done(result: object) -> object:
            self.profile = None
            return result

        taken.addBoth(done)
        return taken.addCallback(lambda text: _text(request, text))

    @app.route("/debug/stacks", methods=["GET"])
    async def stacks(self, request: IRequest) -> bytes:
        sections = [f"main process {os.getpid()}\n\n{thread_stacks()}"]
        workers = await self.pool.stacks(self.reactor, WORKER_ANSWER_SECONDS)
        sections += [f"worker {pid}\n\n{text}" for pid, text in workers.items()]
        return _text(request, "\n".join(sections))

    @app.route("/debug/heap", methods=["GET"])
    def heap(self, request: IRequest) -> Deferred[bytes]:
        limit = _whole_number(request, "limit", DEFAULT_HEAP_LINES, 1, MAX_HEAP_LINES)
        # In a thread: the statistics are Python code, which lets the reactor in as it goes.
        report: Deferred[str] = deferToThread(heap_report, limit)
        return report.addCallback(lambda text: _text(request, text))

    @app.handle_errors(ImageServerError)
    def invalid(self, request: IRequest, failure: Failure) -> bytes:
        error: ImageServerError = failure.value
        return error_body(request, error.status, error.message, error.code)

    @app.handle_errors(HTTPException)
    def no_route(self, request: IRequest, failure: Failure) -> bytes:
        return error_body(request, 404, "404 page not found", "not_found")


class CpuProfile:
    """A CPU profile of the reactor's thread, taken as pprof takes Go's: the kernel sends SIGPROF
    after every `SAMPLE_INTERVAL` of the process's CPU time, and the handler, which Python runs in
    the main thread at its next instruction, records the stack it interrupted.

    So busy code is caught where it runs, however short its bursts, and an idle reactor is never
    sampled.  A sampling thread could not do that: it sees the reactor's stack only when the
    reactor lets go of the GIL, mostly once it is back waiting in ``epoll``.  Each sample weighs
    the CPU time the thread used since the previous one, so CPU that other threads used (which
    also counts towards the timer) weighs next to nothing.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self.weights: Counter[str] = Counter()
        self._used = 0
        self._ending: IDelayedCall | None = None
        self._answer: Deferred[str] = Deferred(lambda _: self._stop())

    def take(self, seconds: int) -> Deferred[str]:
        """Start sampling; the collapsed stacks come after ``seconds``, or at `finish`."""
        if signal.getsignal(signal.SIGPROF) not in (signal.SIG_DFL, signal.SIG_IGN):
            raise ProfileInProgress("a profile is being taken; ask again once it is done")
        self._used = time.thread_time_ns()
        signal.signal(signal.SIGPROF, self._sample)
        signal.setitimer(signal.ITIMER_PROF, SAMPLE_INTERVAL, SAMPLE_INTERVAL)
        self._ending = self.clock.callLater(seconds, self.finish)
        return self._answer

    def finish(self) -> None:
        """Stop now, and answer with what there is."""
        self._stop()
        if not self._answer.called:
            self._answer.callback(collapsed(self.weights))

    def _stop(self) -> None:
        if self._ending is None:
            return
        if self._ending.active():
            self._ending.cancel()
        self._ending = None
        signal.setitimer(signal.ITIMER_PROF, 0)
        # Ignored rather than back to the default, which ends the process: one last SIGPROF may
        # still be on its way.
        signal.signal(signal.SIGPROF, signal.SIG_IGN)

    def _sample(self, signum: int, frame: FrameType | None) -> None:
        used = time.thread_time_ns()
        if frame is not None:
            self.weights[_fold(frame)] += used - self._used
        self._used = used


def collapsed(weights: Counter[str]) -> str:
    """Brendan Gregg's collapsed stacks, ``root;...;leaf count``, counts in microseconds of CPU."""
    lines = []
    for stack, nanoseconds in sorted(weights.items()):
        microseconds = nanoseconds // 1000
        if microseconds:
            lines.append(f"{stack} {microseconds}\n")
    return "".join(lines)


def _fold(frame: FrameType) -> str:
    """One sample as a collapsed stack, from the outermost frame."""
    labels = []
    current: FrameType | None = frame
    while current is not None:
        labels.append(_label(current.f_code))
        current = current.f_back
    return ";".join(reversed(labels))


@functools.lru_cache(maxsize=8192)
def _label(code: CodeType) -> str:
    """``path/module.py:Class.function``: one box per function in a flame graph, wherever in it
    the sample fell, with the path below its ``sys.path`` entry so it reads like an import."""
    filename = code.co_filename
    roots = [root for root in sys.path if root and filename.startswith(root.rstrip("/") + "/")]
    if roots:
        filename = filename[len(max(roots, key=len).rstrip("/")) + 1 :]
    return f"{filename}:{code.co_qualname}".replace(";", ",")


def heap_report(limit: int) -> str:
    """The ``limit`` lines of code that allocated the most memory still held, with totals."""
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [
            tracemalloc.Filter(False, tracemalloc.__file__),
            tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
            tracemalloc.Filter(False, "<unknown>"),
        ]
    )
    statistics = snapshot.statistics("lineno")
    current, peak = tracemalloc.get_traced_memory()
    header = (
        f"traced now {_mib(current)}, peak {_mib(peak)} (tracemalloc itself:"
        f" {_mib(tracemalloc.get_tracemalloc_memory())}); the top {min(limit, len(statistics))}"
        f" of {len(statistics)} lines by size\n\n"
    )
    return header + "".join(f"{statistic}\n" for statistic in statistics[:limit])


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MiB"


def _whole_number(request: IRequest, name: str, default: int, low: int, high: int) -> int:
    """A query parameter between ``low`` and ``high``, else a 400 naming it."""
    values = request.args.get(name.encode())
    if not values:
        return default
    raw = values[0].decode("utf-8", "replace")
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise InvalidParameter(f"{name}: a whole number from {low} to {high}, got {raw!r}")
    return value


def _text(request: IRequest, text: str) -> bytes:
    data = text.encode()
    request.setHeader(b"Content-Type", TEXT_TYPE)
    request.setHeader(b"Content-Length", b"%d" % len(data))
    return data
