"""What /proc says about a process tree: CPU time spent and peak memory, per process.

CPU: the server's work is split between the main process and its workers, and workers are
replaced after ``--worker-max-jobs`` jobs, so the tree's CPU is each live process's own time plus
``cutime``/``cstime`` -- the time of the children it has already reaped -- summed over the tree.

Peak memory: ``VmHWM`` is the high-water mark of a process's RSS; writing ``5`` to its
``clear_refs`` resets it to the current RSS, so each phase measures its own peak.
"""

from __future__ import annotations

import contextlib
import resource
from pathlib import Path

from imageserver.usage import TICKS_PER_SECOND, read_usage


def children(pid: int) -> list[int]:
    """The live children of `pid` (all its threads' children)."""
    found: list[int] = []
    with contextlib.suppress(FileNotFoundError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError):
                found.extend(int(p) for p in (task / "children").read_text().split())
    return found


def tree(pid: int) -> list[int]:
    """`pid` and all its live descendants, parents first."""
    pids, index = [pid], 0
    while index < len(pids):
        pids.extend(children(pids[index]))
        index += 1
    return pids


def cpu_seconds(pid: int) -> float:
    """User + system time of `pid` and of its reaped children."""
    usage = read_usage(pid)
    return usage.cpu_seconds + usage.children_cpu_seconds if usage else 0.0


def own_cpu_seconds(pid: int) -> float:
    """User + system time of `pid` alone (the server's main process, without its workers)."""
    usage = read_usage(pid)
    return usage.cpu_seconds if usage else 0.0


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a whole process tree, the reaped processes included."""
    return sum(cpu_seconds(p) for p in tree(pid))


def _status_kb(pid: int, field: str) -> int:
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def rss_mb(pid: int) -> float:
    """The resident set size now, in MiB."""
    return _status_kb(pid, "VmRSS") / 1024


def peak_rss_mb(pid: int) -> float:
    """The peak resident set size since start or since `reset_peaks`, in MiB."""
    return _status_kb(pid, "VmHWM") / 1024


def reset_peaks(pids: list[int]) -> None:
    """Reset VmHWM to the current RSS (needs the same user, or root)."""
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError, PermissionError):
            Path(f"/proc/{pid}/clear_refs").write_text("5")


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all CPUs, all processes) since boot."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / TICKS_PER_SECOND


def own_children_cpu_seconds() -> float:
    """CPU seconds of this process's finished, reaped descendants (wrk, the limit's processes)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
