"""Log observers for ``twistd --logger`` (``image-server server`` picks with ``--log-format``).

``twistd -n --logger imageserver.logs.json_stdout imageserver …`` writes one JSON object a line
to stdout, for log shippers; without ``--logger``, twistd writes plain lines (to stdout with
``-n``, or to ``--logfile``, which it reopens on SIGUSR1 for logrotate).
"""

from __future__ import annotations

import sys

from twisted.logger import (
    FileLogObserver,
    LogEvent,
    formatEventAsClassicLogText,
    formatTime,
    jsonFileLogObserver,
)


def json_stdout() -> FileLogObserver:
    return jsonFileLogObserver(sys.stdout)


def text_stdout() -> FileLogObserver:
    """Twisted's plain lines, each second's timestamp formatted once rather than once a line."""
    format_time = _SecondStamps()

    def format_event(event: LogEvent) -> str | None:
        return formatEventAsClassicLogText(event, formatTime=format_time)

    return FileLogObserver(sys.stdout, format_event)


class _SecondStamps:
    """`formatTime` remembered for the current second: under load, most lines share it, and
    formatting a time with its zone costs more than the rest of an access-log line."""

    def __init__(self) -> None:
        self._second: int | None = None
        self._stamp = ""

    def __call__(self, when: float | None) -> str:
        if when is None:
            return formatTime(when)
        second = int(when)
        if second != self._second:
            self._second, self._stamp = second, formatTime(second)
        return self._stamp
