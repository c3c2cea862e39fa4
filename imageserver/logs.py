"""Log observers for ``twistd --logger`` (``image-server server`` picks with ``--log-format``).

``twistd -n --logger imageserver.logs.json_stdout imageserver …`` writes one JSON object a line
to stdout, for log shippers; without ``--logger``, twistd writes plain lines (to stdout with
``-n``, or to ``--logfile``, which it reopens on SIGUSR1 for logrotate).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from twisted.logger import (
    FileLogObserver,
    LogEvent,
    formatEventAsClassicLogText,
    formatTime,
    jsonFileLogObserver,
)


def json_stdout() -> FileLogObserver:
    return jsonFileLogObserver(sys.stdout)


# The access log's namespace: one line per request, the most frequent line by far.
ACCESS_NAMESPACE = "imageserver.access"


def text_stdout() -> FileLogObserver:
    """Twisted's plain lines, each second's timestamp formatted once rather than once a line.

    Access lines, whose format is ours, are formatted with `str.format_map`: Twisted's general
    formatter (which may call methods named in the format) was a tenth of the main process's
    time per miss (cProfile).  The line is the same.
    """
    format_time = _SecondStamps()

    def format_event(event: LogEvent) -> str | None:
        if event.get("log_namespace") == ACCESS_NAMESPACE and "log_failure" not in event:
            try:
                return _access_line(event, format_time)
            except (KeyError, ValueError, TypeError, AttributeError):
                pass  # not the site's line after all: Twisted's formatter copes with anything
        return formatEventAsClassicLogText(event, formatTime=format_time)

    return FileLogObserver(sys.stdout, format_event)


def _access_line(event: LogEvent, format_time: Callable[[float | None], str]) -> str:
    system = event.get("log_system") or f"{ACCESS_NAMESPACE}#{event['log_level'].name}"
    text = event["log_format"].format_map(event).replace("\n", "\n\t")
    return f"{format_time(event.get('log_time'))} [{system}] {text}\n"


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
