"""The plain-text log lines: the same as Twisted's, with timestamps formatted once a second."""

from __future__ import annotations

import io
import sys

from twisted.logger import LogLevel, formatEventAsClassicLogText, formatTime
from twisted.trial import unittest

from imageserver import logs


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
