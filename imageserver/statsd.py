"""statsd (docs/metrics.md): counters and timings over UDP, from the reactor.

The names are the README's (``image_request``, ``image_request.{format}``,
``image_request_fail``, ``original_downloaded``, ``original_unavailable``), each after
``--statsd_prefix``; handler timings are ``{handler}.request_latency`` in milliseconds (the Go
server sent whole seconds, so almost always 0).
"""

from __future__ import annotations

import contextlib

from twisted.internet.protocol import DatagramProtocol

from imageserver import events


class StatsdClient(DatagramProtocol):
    """Fire-and-forget UDP datagrams to one statsd server (an IP address and port)."""

    def __init__(self, host: str, port: int, prefix: str) -> None:
        self.address = (host, port)
        self.prefix = prefix

    def emit(self, event: events.Event) -> None:
        if isinstance(event, events.VariantMade):
            self.count("image_request")
            self.count(f"image_request.{event.format}")
        elif isinstance(event, events.VariantFailed):
            self.count("image_request_fail")
        elif isinstance(event, events.SourceFetched):
            self.count("original_downloaded" if event.available else "original_unavailable")
        elif isinstance(event, events.RequestTimed):
            self.send(f"{event.handler}.request_latency:{round(event.seconds * 1000)}|ms")

    def count(self, name: str) -> None:
        self.send(f"{name}:1|c")

    def send(self, line: str) -> None:
        if self.transport is None:
            return
        # Best effort: a full socket buffer or no route drops the datagram.
        with contextlib.suppress(OSError):
            self.transport.write(f"{self.prefix}{line}".encode(), self.address)
