"""Webhooks (docs/api.md#webhooks): signed JSON POSTs of image events, delivered in the
background with retries, from a bounded queue.

A delivery never delays or fails the request that caused it: `emit` only queues.  A full queue
drops the event (counted and logged), as does a receiver that failed three times; the attempts are
about 1 s and 4 s apart, jittered (`imageserver.backoff`).  A receiver that cannot be reached,
fails, or times out is expected and logged in a line; any other failure is a bug of ours, logged
with its traceback once per delivery, and counts as a failed attempt.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    DeferredSemaphore,
    ensureDeferred,
)
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from imageserver import events
from imageserver.backoff import NETWORK_ERRORS, Backoff
from imageserver.metrics import Metrics
from imageserver.signature import webhook_signature

log = Logger()

# --webhook-events tokens and the event names on the wire.
WIRE_NAMES = {
    "uploaded": "image.uploaded",
    "processed": "image.processed",
    "failed": "image.processing_failed",
    "batch_complete": "image.batch_complete",
}
USER_AGENT = b"image-server-webhook/1.0"
# The second and the third attempt, about 1 s and 4 s after the one before.
RETRIES = Backoff(retries=2)
MAX_QUEUE = 1000
CONCURRENCY = 4


def enabled_events(tokens: str) -> frozenset[str]:
    """The wire names ``--webhook-events`` asks for; empty, ``all`` or only unknown tokens: all."""
    chosen = set()
    for token in (part.strip() for part in tokens.split(",")):
        if token in WIRE_NAMES:
            chosen.add(WIRE_NAMES[token])
        elif token and token != "all":
            log.warn("ignoring unknown webhook event {token!r}", token=token)
    return frozenset(chosen or WIRE_NAMES.values())


def timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC with the fraction trimmed, as Go prints it (``…T15:30:00.123Z``)."""
    moment = moment.astimezone(UTC)
    fraction = f"{moment.microsecond:06d}".rstrip("0")
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + (f".{fraction}" if fraction else "") + "Z"


# Event types webhooks send -> their --webhook-events token.  Each dataclass's fields are the
# ``data`` fields of each event, in the Go server's order (docs/api.md#webhooks).
_TOKENS: dict[type, str] = {
    events.Uploaded: "uploaded",
    events.VariantMade: "processed",
    events.VariantFailed: "failed",
    events.BatchComplete: "batch_complete",
}
# Fields left out when empty (as the Go server's omitempty).
_OPTIONAL = ("error", "source_url")


def payload(event: events.Event, moment: datetime) -> tuple[str, bytes] | None:
    """The wire name and compact JSON body of an event, or None for events webhooks don't send."""
    token = _TOKENS.get(type(event))
    if token is None:
        return None
    data = dataclasses.asdict(event)
    for field in _OPTIONAL:
        if field in data and not data[field]:
            del data[field]
    body = {"event": WIRE_NAMES[token], "timestamp": timestamp(moment), "data": data}
    return WIRE_NAMES[token], json.dumps(body, separators=(",", ":")).encode()


class WebhookSender(Service):
    """Posts events to one URL, ``CONCURRENCY`` at a time, at most ``max_queue`` waiting."""

    def __init__(
        self,
        http: Any,
        url: str,
        secret: str,
        timeout: float,
        wanted: frozenset[str],
        metrics: Metrics,
        reactor: IReactorTime,
        clock: Callable[[], float] = time.time,
        max_queue: int = MAX_QUEUE,
        retries: Backoff = RETRIES,
    ) -> None:
        self.http = http
        self.url = url.encode()
        self.secret = secret
        self.timeout = timeout or 10.0
        self.wanted = wanted
        self.metrics = metrics
        self.reactor = reactor
        self.clock = clock
        self.max_queue = max_queue
        self.retries = retries
        self._slots = DeferredSemaphore(CONCURRENCY)
        self._deliveries: set[Deferred[None]] = set()

    def emit(self, event: events.Event) -> None:
        built = payload(event, datetime.fromtimestamp(self.clock(), UTC))
        if built is None or built[0] not in self.wanted or not self.running:
            return
        name, body = built
        if len(self._deliveries) >= self.max_queue:
            self.metrics.webhook_deliveries.labels(name, "dropped").inc()
            log.warn("webhook queue full: dropped a {event} event", event=name)
            return
        delivery = ensureDeferred(self._deliver(name, body))
        self._deliveries.add(delivery)
        delivery.addBoth(lambda _: self._deliveries.discard(delivery))

    def stopService(self) -> Deferred[None]:
        """Stop now: deliveries still waiting are abandoned (webhooks are not persisted)."""
        super().stopService()
        running = list(self._deliveries)
        for delivery in running:
            delivery.cancel()
        return DeferredList(running, consumeErrors=True).addCallback(lambda _: None)

    async def _deliver(self, name: str, body: bytes) -> None:
        reported = False
        for attempt, delay in enumerate((0.0, *self.retries.delays()), start=1):
            if delay:
                await deferLater(self.reactor, delay, lambda: None)
            if not self.running:
                return  # stopping: abandon (webhooks are not persisted)
            try:
                outcome = await self._slots.run(self._attempt, body)
            except CancelledError:
                raise  # stopping
            except NETWORK_ERRORS as error:
                outcome = f"{type(error).__name__}: {error}"
            except Exception as error:
                if not reported:
                    reported = True
                    log.failure("webhook {event} failed on a bug", event=name)
                outcome = f"{type(error).__name__}: {error}"
            if not self.running:
                return  # the attempt was cut short by the stop, not by the receiver
            if outcome is None:
                self.metrics.webhook_deliveries.labels(name, "delivered").inc()
                return
            log.info(
                "webhook {event} attempt {attempt} failed: {outcome}",
                event=name,
                attempt=attempt,
                outcome=outcome,
            )
        self.metrics.webhook_deliveries.labels(name, "failed").inc()
        log.warn("webhook {event} failed after every attempt", event=name)

    async def _attempt(self, body: bytes) -> str | None:
        """One attempt, headers and body within ``--webhook-timeout``: None on a 2xx, else the
        status; a receiver that stalls half-way through its answer times out too."""
        attempt = ensureDeferred(self._post(body))
        attempt.addTimeout(self.timeout, self.reactor)
        return await attempt

    async def _post(self, body: bytes) -> str | None:
        headers = {b"Content-Type": [b"application/json"], b"User-Agent": [USER_AGENT]}
        if self.secret:
            stamp = str(int(self.clock()))
            headers[b"X-Webhook-Timestamp"] = [stamp.encode()]
            signature = webhook_signature(self.secret, stamp, body)
            headers[b"X-Webhook-Signature"] = [signature.encode()]
        response = await self.http.post(self.url, data=body, headers=headers)
        drain = _Drain()
        response.deliverBody(drain)
        await drain.done
        return None if 200 <= response.code < 300 else f"status {response.code}"


class _Drain(Protocol):
    """Reads and drops a receiver's answer; cancelling it closes the connection, so a receiver
    that stalls half-way through its answer holds nothing once the attempt has timed out."""

    def __init__(self) -> None:
        self.done: Deferred[None] = Deferred(canceller=self._abort)

    def _abort(self, _: Deferred[None]) -> None:
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.done.called:
            self.done.callback(None)
