"""Log observers for ``twistd --logger`` (``image-server server`` picks with ``--log-format``),
the line that says the server is ready, and the workers' logs relayed into the server's.

``twistd -n --logger imageserver.logs.json_stdout imageserver …`` writes one JSON object a line
to stdout, for log shippers; without ``--logger``, twistd writes plain lines (to stdout with
``-n``, or to ``--logfile``, which it reopens on SIGUSR1 for logrotate).
"""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Callable

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    LogEvent,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    eventAsJSON,
    eventFromJSON,
    formatEventAsClassicLogText,
    formatTime,
    globalLogBeginner,
    globalLogPublisher,
    jsonFileLogObserver,
)

from imageserver.options import Config


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


# The namespace of the ready line: the server's own, whichever part of it says so.
_server_log = Logger(namespace="imageserver")


def log_ready(config: Config, port: int, admin_port: int, processes: int = 1) -> None:
    """The line that says the server serves, once its workers are up, with where and what:
    ``listening on http://127.0.0.1:7000 (admin http://127.0.0.1:7002), 2 workers, store
    ./public``, the main processes when there are several (``16 workers in 2 processes``), and
    the bucket when there is one.

    ``port`` and ``admin_port`` are the ports bound, which differ from the flags' for ``0``.
    """
    bucket = ""
    if config.effective_uploader == "s3":
        bucket = f"s3://{config.aws_bucket}/{config.remote_base_path.lstrip('/')}"
        if config.s3_endpoint:
            bucket += f" at {config.s3_endpoint}"
    workers = config.processor_concurrency
    store = config.local_base_path
    if not os.path.isabs(store) and not store.startswith("."):
        store = os.path.join(".", store)  # "store public" would not read as a path
    _server_log.info(
        "listening on {url} (admin {admin_url}), {workers} {worker_word}{processes_words},"
        " store {store}{bucket_words}",
        url=_url(config.listen, port),
        admin_url=_url(config.listen, admin_port),
        workers=workers,
        worker_word="worker" if workers == 1 else "workers",
        processes=processes,
        processes_words=f" in {processes} processes" if processes > 1 else "",
        store=store,
        bucket=bucket,
        bucket_words=f", bucket {bucket}" if bucket else "",
    )


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def begin_worker_logging() -> None:
    """In a worker: write warnings and worse to stderr as JSON, for `WorkerRelay` in the server.

    ampoule's workers log everything from info up as text, and the server can only relay such
    lines at one level, so a clean start (each worker's "connection established") read as a
    list of errors.  As events, they keep their level, namespace and traceback; the info lines
    of a healthy worker are of no use to an operator and stay in the worker.
    """
    stderr = sys.stderr  # before Twisted puts a logging file in its place

    def as_json(event: LogEvent) -> str:
        return "\x1e" + eventAsJSON(_portable(event)) + "\n"  # jsonFileLogObserver's records

    warnings_up = LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)
    observer = FilteringLogObserver(FileLogObserver(stderr, as_json), [warnings_up])
    globalLogBeginner.beginLoggingTo([observer])


def _portable(event: LogEvent) -> LogEvent:
    """The event with its failure's exception as text: JSON keeps a failure's type and frames but
    not the exception itself, which would reach the server as ``{'unpersistable': True}``."""
    failure = event.get("log_failure")
    if failure is None:
        return event
    portable = copy.copy(failure)
    portable.value = failure.getErrorMessage()
    return {**event, "log_failure": portable}


class WorkerRelay:
    """A worker's stderr, published in the server's log.

    Events the worker wrote (`begin_worker_logging`) are published as they were, at their own
    level, with the worker's process id (``worker_pid``).  Anything else on the pipe, such as a
    fatal error of the interpreter or a C library writing to stderr, is published at error level:
    a healthy worker writes nothing else.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._log = Logger(namespace="imageserver.worker")
        self._partial = b""

    def feed(self, data: bytes) -> None:
        """Publish the whole lines of ``data``; keep a line's beginning for the next write."""
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            self._publish(line)

    def flush(self) -> None:
        """Publish what is left of a worker that has ended without finishing its line."""
        partial, self._partial = self._partial, b""
        self._publish(partial)

    def _publish(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace")
        if text.startswith("\x1e"):  # the record separator of `jsonFileLogObserver`
            try:
                event = eventFromJSON(text[1:])
            except ValueError:
                pass  # a record cut short: published as it is, below
            else:
                level = event.get("log_level")
                name = getattr(level, "name", "-")
                event["worker_pid"] = self.pid
                event["log_system"] = f"{event.get('log_namespace', '-')}#{name} worker {self.pid}"
                globalLogPublisher(event)
                return
        text = text.strip()
        if text:
            self._log.error("worker {worker_pid}: {line}", worker_pid=self.pid, line=text)
