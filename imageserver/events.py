"""What happened to images, told to whoever listens: webhooks and statsd (docs/metrics.md).

`Images` reports each event once to an `Events` sink; the sinks decide what to send.  Nothing a
sink does may delay or fail the request that caused the event, so every method returns at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from twisted.logger import Logger

log = Logger()


@dataclass(frozen=True)
class Uploaded:
    namespace: str
    hash: str
    width: int
    height: int
    content_type: str
    remote_url: str


@dataclass(frozen=True)
class VariantMade:
    """A variant this server made (not one found or read back): its actual size."""

    namespace: str
    hash: str
    filename: str
    format: str
    width: int
    height: int
    quality: int
    remote_url: str


@dataclass(frozen=True)
class VariantFailed:
    namespace: str
    hash: str
    filename: str
    format: str
    error: str


@dataclass(frozen=True)
class BatchComplete:
    """Every requested output exists (after an upload, or a batch)."""

    namespace: str
    hash: str
    source_url: str = ""


@dataclass(frozen=True)
class SourceFetched:
    """A ``?source=`` download ended: downloaded, or unavailable."""

    available: bool


@dataclass(frozen=True)
class RequestTimed:
    """A handler finished (for statsd timings; Prometheus has its own histogram)."""

    handler: str
    seconds: float


Event = Uploaded | VariantMade | VariantFailed | BatchComplete | SourceFetched | RequestTimed


class Events(Protocol):
    def emit(self, event: Event) -> None: ...


class NoEvents:
    def emit(self, event: Event) -> None:
        pass


class Fanout:
    """Every event to every sink."""

    def __init__(self, sinks: Sequence[Events]) -> None:
        self.sinks = list(sinks)

    def emit(self, event: Event) -> None:
        for sink in self.sinks:
            try:
                sink.emit(event)
            except Exception:  # a sink never fails the request that caused the event
                log.failure("{sink} could not take an event", sink=type(sink).__name__)
