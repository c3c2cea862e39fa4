"""Log observers for ``twistd --logger`` (``image-server server`` picks with ``--log-format``).

``twistd -n --logger imageserver.logs.json_stdout imageserver …`` writes one JSON object a line
to stdout, for log shippers; without ``--logger``, twistd writes plain lines (to stdout with
``-n``, or to ``--logfile``, which it reopens on SIGUSR1 for logrotate).
"""

from __future__ import annotations

import sys

from twisted.logger import FileLogObserver, jsonFileLogObserver, textFileLogObserver


def json_stdout() -> FileLogObserver:
    return jsonFileLogObserver(sys.stdout)


def text_stdout() -> FileLogObserver:
    return textFileLogObserver(sys.stdout)
