"""CPU time and memory of a process, read from ``/proc/<pid>/stat`` (Linux).

The server is a main process and its image workers; prometheus_client's own ``process_*`` series
see only the first, and a worker making a full-size AVIF of a 12 MP photo holds hundreds of MB
(docs/scaling.md).  `metrics` reads these at each scrape, for the main process and every worker.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")

# Positions in the fields after the command name (proc(5) numbers them from 1, the pid; the
# name is the 2nd, the state the 3rd).
_STATE, _UTIME, _STIME, _CUTIME, _CSTIME, _RSS = (number - 3 for number in (3, 14, 15, 16, 17, 24))


@dataclass(frozen=True)
class Usage:
    state: str  # proc(5)'s letter: "R" running, "S" sleeping, "Z" ended and not yet reaped...
    cpu_seconds: float  # user and system time of the process itself
    children_cpu_seconds: float  # of the children it has waited for (workers that ended)
    resident_bytes: int


def parse_stat(text: str) -> Usage:
    """A ``/proc/<pid>/stat`` line.  The command name is in parentheses and may itself hold
    spaces and parentheses, so the fields are counted from the last ``)``."""
    fields = text[text.rindex(")") + 2 :].split()
    ticks = [int(fields[index]) for index in (_UTIME, _STIME, _CUTIME, _CSTIME)]
    return Usage(
        state=fields[_STATE],
        cpu_seconds=(ticks[0] + ticks[1]) / TICKS_PER_SECOND,
        children_cpu_seconds=(ticks[2] + ticks[3]) / TICKS_PER_SECOND,
        resident_bytes=int(fields[_RSS]) * PAGE_BYTES,
    )


def read_usage(pid: int | str = "self") -> Usage | None:
    """The usage of `pid`; None when it has gone (a worker replaced meanwhile) or there is no
    ``/proc``."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as stat:
            return parse_stat(stat.read())
    except OSError:
        return None
