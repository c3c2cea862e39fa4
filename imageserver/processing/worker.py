"""The worker subprocess: answers `commands` by running `operations` (ampoule's AMP child).

It sees only the environment the pool gives it (``VIPS_CONCURRENCY=1``, untrusted loaders blocked),
and is killed and replaced by the pool when a job runs past its timeout.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
import threading
import traceback

from ampoule.child import AMPChild
from twisted.protocols import amp

from imageserver.names import parse_name
from imageserver.processing import commands, operations
from imageserver.store import move_into_place, remove_quietly

# Workers yield the CPU to the main process: it answers hits and hands out jobs, and a job that
# waits for the reactor to be scheduled wastes a worker's turn (benchmarks/README.md).
NICENESS = 5


# A worker holding more than this after a job gives the excess back: a thumbnail of a photo
# stays under it, a 12 MP AVIF (over 400 MB at its peak) does not.  Trimming after every job would
# cost its successor the page faults of growing the heap again: 10 % of a 1080p thumbnail.
TRIM_ABOVE_BYTES = 128 * 1024 * 1024
_LIBC = ctypes.CDLL(None)  # the C library the process already has
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def _release_memory() -> None:
    """Give the heap a big job freed back to the system (glibc keeps it otherwise, and a worker
    that once made a 12 MP AVIF would hold hundreds of MB for the rest of its life)."""
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is not None and _resident_bytes() > TRIM_ABOVE_BYTES:
        trim(0)


def _resident_bytes() -> int:
    # One pread of a file kept open: opening /proc/self/statm as a Python file after every job
    # cost 1 % of a 1080p thumbnail (py-spy).
    return int(os.pread(_statm(), 128, 0).split()[1]) * _PAGE_BYTES


@functools.cache
def _statm() -> int:
    return os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)


def thread_stacks() -> str:
    """Every thread of this process with its current stack, innermost call last (a worker's answer
    to `commands.Stacks`, and the main process's part of the debug site's ``/debug/stacks``).

    Frames are file, line and function, without the source line: reading sources would fill
    `linecache` with every file on the stacks, and the heap report would show it.
    """
    threads = {thread.ident: thread for thread in threading.enumerate()}
    parts = []
    for ident, frame in sys._current_frames().items():
        thread = threads.get(ident)
        if thread is None:
            parts.append(f"thread (not started by threading; ident {ident}):\n")
        else:
            parts.append(f"thread {thread.name} (native id {thread.native_id}):\n")
        calls = [
            f'  File "{call.f_code.co_filename}", line {line}, in {call.f_code.co_qualname}\n'
            for call, line in traceback.walk_stack(frame)
        ]
        parts.extend(reversed(calls))
        parts.append("\n")
    return "".join(parts)


def _fits_amp(text: str) -> str:
    """``text``, or its end when it is over AMP's 64 KiB a value (the innermost calls matter)."""
    data = text.encode()
    if len(data) <= amp.MAX_VALUE_LENGTH:
        return text
    marker = "(the start is cut off: over AMP's 64 KiB)\n"
    room = amp.MAX_VALUE_LENGTH - len(marker.encode())
    return marker + data[-room:].decode("utf-8", "ignore")


class Worker(AMPChild):
    """One pyvips worker; each job is independent: libvips' operation cache is off, and each job
    runs in an `operations.job`, so its error names neither another job's troubles nor a path."""

    def __init__(self) -> None:
        super().__init__()
        os.nice(NICENESS)

    @commands.Identify.responder
    def identify(self, path: str, max_pixels: int) -> dict[str, object]:
        with operations.job(operations.path_words(path)):
            width, height, content_type = operations.identify(path, max_pixels)
        return {"width": width, "height": height, "content_type": content_type}

    @commands.Inspect.responder
    def inspect(self, path: str) -> dict[str, object]:
        with operations.job(operations.path_words(path)):
            return {"alpha": operations.has_alpha(path)}

    @commands.Render.responder
    def render(
        self,
        source: str,
        temporary: str,
        destination: str,
        name: str,
        default_quality: int,
        max_pixels: int,
        max_dimension: int,
    ) -> dict[str, object]:
        try:
            with operations.job(operations.path_words(source, temporary, destination)):
                variant = parse_name(name, default_quality, max_dimension)
                out_width, out_height = operations.render(
                    source, temporary, variant, max_pixels, max_dimension
                )
                move_into_place(temporary, destination)
        except BaseException:
            remove_quietly(temporary)
            raise
        finally:
            _release_memory()
        return {"width": out_width, "height": out_height}

    @commands.Warm.responder
    def warm(self) -> dict[str, object]:
        return {}

    @commands.Stacks.responder
    def stacks(self) -> dict[str, object]:
        return {"stacks": _fits_amp(thread_stacks())}
