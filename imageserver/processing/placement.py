"""Which CPU each worker runs on.

Left to the scheduler, two busy workers on a 2-CPU machine left 0.17-0.22 of the cores idle
during 1080p misses (now and then both waiting for one CPU while the other idled); one worker per
CPU left 0.02-0.03 idle and answered 12-14 % more requests per second (benchmarks/README.md).

Pinning is only safe when the workers cover every CPU the server may use: then each CPU gets the
same number of workers, whatever else runs on the machine.  With fewer workers than CPUs they are
left free to move, or several servers on one host would all crowd the first CPUs.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Collection, Hashable


class Placement:
    """Hands out CPUs to workers, evenly, and takes them back when a worker goes."""

    def __init__(self, cpus: Collection[int], workers: int) -> None:
        self.cpus = sorted(cpus) if workers >= len(cpus) > 1 else []
        self._placed: dict[Hashable, int] = {}  # worker -> its CPU

    def choose(self, worker: Hashable) -> int | None:
        """The CPU for a new `worker`: the least used, lowest first; None when not pinning."""
        if not self.cpus:
            return None
        used = Counter(self._placed.values())
        cpu = min(self.cpus, key=lambda candidate: (used[candidate], candidate))
        self._placed[worker] = cpu
        return cpu

    def release(self, worker: Hashable) -> None:
        self._placed.pop(worker, None)


def usable_cpus() -> set[int]:
    """The CPUs this process may run on (a cpuset or `taskset` narrows them)."""
    return os.sched_getaffinity(0)
