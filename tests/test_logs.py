"""The plain-text log lines (the same as Twisted's, with timestamps formatted once a second), the
ready line, and the workers' logs relayed into the server's."""

from __future__ import annotations

import io
import os
import sys

from ampoule.child import AMPChild
from ampoule.commands import Shutdown
from ampoule.main import ProcessStarter
from twisted.logger import (
    LogEvent,
    Logger,
    LogLevel,
    capturedLogs,
    formatEventAsClassicLogText,
    formatTime,
    globalLogPublisher,
)
from twisted.protocols import amp
from twisted.trial import unittest

from imageserver import logs
from imageserver.options import Config
from imageserver.processing import pool
from tests.support import ServerTestCase


class TextLinesTests(unittest.TestCase):
    def test_lines_carry_the_time_of_their_own_second(self) -> None:
        written = io.StringIO()
        self.patch(sys, "stdout", written)
        observer = logs.text_stdout()
        moments = [1_700_000_000.1, 1_700_000_000.9, 1_700_000_001.2, 1_700_000_061.0]
        for index, moment in enumerate(moments):
            observer(
                {
                    "log_format": "line {index}",
                    "index": index,
                    "log_time": moment,
                    "log_level": LogLevel.info,
                    "log_namespace": "imageserver.access",
                }
            )
        lines = written.getvalue().splitlines()
        self.assertEqual(
            [line.split(" [")[0] for line in lines], [formatTime(moment) for moment in moments]
        )
        self.assertEqual(lines[3].split("] ")[1], "line 3")

    def test_access_lines_are_twisteds_lines(self) -> None:
        written = io.StringIO()
        self.patch(sys, "stdout", written)
        observer = logs.text_stdout()
        access = {
            "log_format": "{method} {path} {status} {bytes} {seconds:.3f}",
            "method": "GET",
            "path": "/p/6e0/072/682/e66287b662827da75b244a3/w300.jpg",
            "status": 200,
            "bytes": 7775,
            "seconds": 0.0456,
            "log_time": 1_700_000_000.5,
            "log_level": LogLevel.info,
            "log_namespace": logs.ACCESS_NAMESPACE,
        }
        odd = {**access, "log_format": "{missing} field", "log_time": 1_700_000_001.5}
        observer(access)
        observer(odd)  # another line in the namespace: formatted by Twisted, not dropped
        self.assertEqual(
            written.getvalue().splitlines(),
            [
                formatEventAsClassicLogText(access).rstrip("\n"),
                formatEventAsClassicLogText(odd).rstrip("\n"),
            ],
        )
        self.assertIn(" [imageserver.access#info] GET /p/", written.getvalue())


class ReadyLineTests(unittest.SynchronousTestCase):
    def ready_line(self, config: Config) -> LogEvent:
        with capturedLogs() as events:
            logs.log_ready(config, 7100, 7102)
        self.assertEqual(len(events), 1)
        self.assertEqual(events[0]["log_level"], LogLevel.info)
        return events[0]

    def test_the_line(self) -> None:
        event = self.ready_line(Config(processor_concurrency=2))
        self.assertEqual(
            formatEventAsClassicLogText(event).split("] ", 1)[1],
            "listening on http://127.0.0.1:7100 (admin http://127.0.0.1:7102), 2 workers,"
            " store ./public\n",
        )
        self.assertEqual((event["url"], event["bucket"]), ("http://127.0.0.1:7100", ""))

    def test_with_several_processes(self) -> None:
        with capturedLogs() as events:
            logs.log_ready(Config(processor_concurrency=16), 7100, 7102, processes=2)
        self.assertEqual(
            formatEventAsClassicLogText(events[0]).split("] ", 1)[1],
            "listening on http://127.0.0.1:7100 (admin http://127.0.0.1:7102), 16 workers in 2"
            " processes, store ./public\n",
        )

    def test_with_a_bucket(self) -> None:
        config = Config(
            listen="::1",
            processor_concurrency=1,
            local_base_path="/srv/images",
            aws_bucket="pictures",
            remote_base_path="images/",
            s3_endpoint="http://127.0.0.1:9000",
        )
        self.assertEqual(
            formatEventAsClassicLogText(self.ready_line(config)).split("] ", 1)[1],
            "listening on http://[::1]:7100 (admin http://[::1]:7102), 1 worker,"
            " store /srv/images, bucket s3://pictures/images/ at http://127.0.0.1:9000\n",
        )


class Shout(amp.Command):
    """Log at every level, fail with a traceback, and write to stderr as a C library would."""


class Shouting(AMPChild):
    log = Logger()

    @Shout.responder
    def shout(self) -> dict[str, object]:
        self.log.info("an info line")
        self.log.warn("a warning from {who}", who="the worker")
        try:
            raise ValueError("no such thing")
        except ValueError:
            self.log.failure("a job went wrong")
        os.write(2, b"raw words from C\n")
        return {}


class WorkerRelayTests(ServerTestCase):
    """A real worker, started as the pool starts them, and its log in this process's."""

    timeout = 60

    async def test_events_keep_their_level_and_traceback(self) -> None:
        starter = ProcessStarter(
            bootstrap=pool.WORKER_BOOTSTRAP,
            env=pool.worker_environment(),
            packages=("twisted", "imageserver"),
        )
        starter.connectorFactory = pool._WorkerConnector
        events: list[LogEvent] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        child, finished = starter.startAMPProcess(Shouting)
        pid = child.transport.transport.pid
        await child.callRemote(Shout)
        await self.wait_for(
            lambda: any("raw words" in formatEventAsClassicLogText(e) for e in events),
            "the worker's stderr",
        )
        await child.callRemote(Shutdown)
        child.transport.loseConnection()
        await finished
        self.flushLoggedErrors()  # the worker's failure, which trial would count as this test's
        relayed = {
            (e["log_level"], formatEventAsClassicLogText(e).split("] ", 1)[1])
            for e in events
            if e.get("worker_pid") == pid
        }
        texts = [text for _, text in relayed]
        self.assertIn((LogLevel.warn, "a warning from the worker\n"), relayed)
        [failure] = [text for level, text in relayed if level == LogLevel.critical]
        self.assertTrue(failure.startswith("a job went wrong\n"), failure)
        self.assertIn("Traceback", failure)
        self.assertIn("ValueError: no such thing", failure)
        self.assertIn((LogLevel.error, f"worker {pid}: raw words from C\n"), relayed)
        self.assertFalse([text for text in texts if "info line" in text or "established" in text])
        warning = next(e for e in events if e.get("worker_pid") == pid)
        self.assertEqual(warning["log_namespace"], "tests.test_logs.Shouting")
        self.assertIn(f"#warn worker {pid}] a warning", formatEventAsClassicLogText(warning))
