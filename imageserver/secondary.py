"""A secondary main process: ``python -m imageserver.secondary INDEX``, started by the primary
(`imageserver.processes.Secondaries`), its configuration one JSON line on stdin.

It serves the main port beside the primary and logs where the primary logs.  When its stdin
closes, the primary has gone, and it stops: a secondary never outlives its primary.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.internet import error as internet_error
from twisted.internet.interfaces import IReadDescriptor
from twisted.python.failure import Failure
from zope.interface import implementer


@implementer(IReadDescriptor)
class _ParentPipe:
    """The reading end of the primary's pipe on stdin, as an `IReadDescriptor`: its end of file
    stops the reactor."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor

    def fileno(self) -> int:
        return 0

    def doRead(self) -> Failure | None:
        if os.read(0, 4096):
            return None
        return Failure(internet_error.ConnectionDone())

    def connectionLost(self, reason: Failure) -> None:
        self.reactor.removeReader(self)
        if self.reactor.running:
            self.reactor.stop()

    def logPrefix(self) -> str:
        return "primary"


def main(argv: list[str]) -> int:
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner

    from imageserver import logs
    from imageserver.processes import CONTROL_FD, config_from_line
    from imageserver.service import ImageServer

    index = int(argv[1])
    config = config_from_line(sys.stdin.buffer.readline().decode())
    server = ImageServer(config, reactor, process_index=index)
    server.startService()
    json_lines = config.log_format == "json"
    globalLogBeginner.beginLoggingTo([logs.json_stdout() if json_lines else logs.text_stdout()])
    with os.fdopen(CONTROL_FD, "w") as control:
        control.write(f"metrics-port {server.metrics_port()}\n")
    reactor.addReader(_ParentPipe(reactor))
    reactor.addSystemEventTrigger("before", "shutdown", server.stopService)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
