"""Webhooks (docs/webhooks.md): signed JSON POSTs of image events, delivered at least once.

`emit` writes the event to the outbox on disk (`imageserver.outbox`) and returns: a delivery never
delays or fails the request that caused it.  Each event is then tried in the background, a few at
a time, with the uploader's jittered exponential backoff (`imageserver.backoff`), until a 2xx
crosses it off or ``--webhook-retry-for`` has passed since it was made, when it becomes a dead
letter.  A restart resumes what the outbox holds, so a crash costs at most a second delivery of an
event whose 2xx had not yet been recorded: receivers de-duplicate by the event's id.

A full outbox drops its oldest event (counted and logged), so a receiver gone for a week cannot
fill the disk.  A receiver that cannot be reached, fails, or times out is expected and logged in a
line; any other failure is a bug of ours, logged with its traceback once per event, and counts as
a failed attempt.
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
from twisted.web.client import RequestGenerationFailed, RequestTransmissionFailed, ResponseFailed

from imageserver import events
from imageserver.backoff import NETWORK_ERRORS, Backoff
from imageserver.metrics import Metrics
from imageserver.outbox import Letter, Outbox, new_id
from imageserver.signature import webhook_signature

log = Logger()

# The errors of Twisted's HTTP client that wrap the failures under them (``reasons``).
_WRAPPED = (RequestGenerationFailed, RequestTransmissionFailed, ResponseFailed)

# --webhook-events tokens and the event names on the wire.
WIRE_NAMES = {
    "uploaded": "image.uploaded",
    "processed": "image.processed",
    "failed": "image.processing_failed",
    "batch_complete": "image.batch_complete",
}
USER_AGENT = b"image-server-webhook/1.0"
# The uploader's background policy: 1 s, 4 s, 16 s, 64 s, 256 s, then every 300 s.
RETRIES = Backoff(longest=300.0)
RETRY_FOR = 24 * 3600.0
OUTBOX_MAX = 10_000
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


def payload(event: events.Event, moment: datetime, event_id: str) -> tuple[str, bytes] | None:
    """The wire name and compact JSON body of an event, or None for events webhooks don't send.

    The id comes first in the body and is also sent as ``X-Webhook-Id``; receivers written for
    the Go server, which sent no id, ignore the extra field.
    """
    token = _TOKENS.get(type(event))
    if token is None:
        return None
    data = dataclasses.asdict(event)
    for field in _OPTIONAL:
        if field in data and not data[field]:
            del data[field]
    body = {
        "id": event_id,
        "event": WIRE_NAMES[token],
        "timestamp": timestamp(moment),
        "data": data,
    }
    return WIRE_NAMES[token], json.dumps(body, separators=(",", ":")).encode()


class WebhookSender(Service):
    """Posts the outbox's events to one URL, ``CONCURRENCY`` at a time, each until a 2xx or for
    ``retry_for`` seconds; at most ``outbox_max`` events wait."""

    def __init__(
        self,
        http: Any,
        url: str,
        secret: str,
        timeout: float,
        wanted: frozenset[str],
        metrics: Metrics,
        reactor: IReactorTime,
        outbox: Outbox,
        clock: Callable[[], float] = time.time,
        retries: Backoff = RETRIES,
        retry_for: float = RETRY_FOR,
        outbox_max: int = OUTBOX_MAX,
        resume: bool = True,
    ) -> None:
        """``clock`` is wall-clock time: events' ages and deadlines outlive the process.
        ``resume``: send what the outbox holds at start (the one process that does)."""
        self.resume_at_start = resume
        self.http = http
        self.url = url.encode()
        self.secret = secret
        self.timeout = timeout or 10.0
        self.wanted = wanted
        self.metrics = metrics
        self.reactor = reactor
        self.outbox = outbox
        self.clock = clock
        self.retries = retries
        self.retry_for = retry_for
        self.outbox_max = outbox_max
        self._slots = DeferredSemaphore(CONCURRENCY)
        self._deliveries: dict[str, Deferred[None]] = {}

    def startService(self) -> None:
        """Resume every event a previous run left in the outbox (or only create its folders)."""
        super().startService()
        self.outbox.prepare()
        if self.resume_at_start:
            self.resume()

    def resume(self) -> None:
        """Send every event of the outbox not already on its way from here: at start, and when
        another main process has ended with events still in it."""
        resumed = [letter for letter in self.outbox.load() if letter.id not in self._deliveries]
        if resumed:
            log.info("webhooks: resuming {count} events from the outbox", count=len(resumed))
        for letter in resumed:
            self._start(letter)

    def stopService(self) -> Deferred[None]:
        """Stop now: events not yet delivered stay in the outbox for the next start."""
        super().stopService()
        running = list(self._deliveries.values())
        for delivery in running:
            delivery.cancel()
        return DeferredList(running, consumeErrors=True).addCallback(lambda _: None)

    @property
    def depth(self) -> int:
        return len(self.outbox)

    @property
    def oldest_age(self) -> float:
        """Seconds since the oldest waiting event was made; 0 when none waits."""
        oldest = self.outbox.oldest()
        return 0.0 if oldest is None else max(0.0, self.clock() - oldest.created)

    def emit(self, event: events.Event) -> None:
        now = self.clock()
        letter_id = new_id()
        built = payload(event, datetime.fromtimestamp(now, UTC), letter_id)
        if built is None or built[0] not in self.wanted or not self.running:
            return
        name, body = built
        while len(self.outbox) >= self.outbox_max:
            self._drop_oldest()
        letter = Letter(letter_id, name, now, body)
        try:
            self.outbox.add(letter)
        except OSError as error:  # a full or read-only disk: the request must not fail
            self.metrics.webhook_deliveries.labels(name, "dropped").inc()
            log.warn(
                "webhook {event} dropped: cannot write the outbox: {error}", event=name, error=error
            )
            return
        self._start(letter)

    def _drop_oldest(self) -> None:
        oldest = self.outbox.oldest()
        assert oldest is not None
        delivery = self._deliveries.pop(oldest.id, None)
        if delivery is not None:
            delivery.cancel()
        self.outbox.cross_off(oldest.id)
        self.metrics.webhook_deliveries.labels(oldest.event, "dropped").inc()
        log.warn(
            "webhook outbox full ({limit} events): dropped the oldest, {event} {id}",
            limit=self.outbox_max,
            event=oldest.event,
            id=oldest.id,
        )

    def _start(self, letter: Letter) -> None:
        delivery = ensureDeferred(self._deliver(letter))
        self._deliveries[letter.id] = delivery

        def forget(result: object) -> object:
            if self._deliveries.get(letter.id) is delivery:
                del self._deliveries[letter.id]
            return None if isinstance(result, Failure) and result.check(CancelledError) else result

        delivery.addBoth(forget)

    async def _deliver(self, letter: Letter) -> None:
        """Try until a 2xx, or until the deadline, then bury; the last try falls on the deadline."""
        delays = self.retries.delays()
        deadline = letter.created + self.retry_for
        reported = False
        while True:
            try:
                outcome = await self._slots.run(self._attempt, letter)
            except CancelledError:
                raise  # stopping, or dropped: the outbox decides what becomes of it
            except NETWORK_ERRORS as error:
                outcome = f"{type(error).__name__}: {error}"
            except Exception as error:
                if not reported:
                    reported = True
                    log.failure(
                        "webhook {event} {id} failed on a bug", event=letter.event, id=letter.id
                    )
                outcome = f"{type(error).__name__}: {error}"
            letter.attempts += 1
            if outcome is None:
                self.outbox.cross_off(letter.id)
                self.metrics.webhook_deliveries.labels(letter.event, "delivered").inc()
                return
            letter.last_error = outcome
            log.info(
                "webhook {event} {id} attempt {attempt} failed: {outcome}",
                event=letter.event,
                id=letter.id,
                attempt=letter.attempts,
                outcome=outcome,
            )
            left = deadline - self.clock()
            delay = next(delays, None)
            if left <= 0 or delay is None:
                self._bury(letter)
                return
            await deferLater(self.reactor, min(delay, left), lambda: None)

    def _bury(self, letter: Letter) -> None:
        try:
            self.outbox.bury(letter)
        except OSError as error:
            log.warn("webhook {id} stays in the outbox: {error}", id=letter.id, error=error)
            return
        self.metrics.webhook_deliveries.labels(letter.event, "failed").inc()
        log.warn(
            "webhook {event} {id} moved to the dead letters after {attempts} attempts: {outcome}",
            event=letter.event,
            id=letter.id,
            attempts=letter.attempts,
            outcome=letter.last_error,
        )
        while self.outbox.dead > self.outbox_max:
            oldest = self.outbox.oldest_dead()
            assert oldest is not None
            self.outbox.forget_dead(oldest)
            log.warn("webhook dead letters full: deleted the oldest, {id}", id=oldest)

    async def _attempt(self, letter: Letter) -> str | None:
        return await post(
            self.http, self.url, self.secret, letter, self.timeout, self.reactor, self.clock
        )


async def post(
    http: Any,
    url: bytes,
    secret: str,
    letter: Letter,
    timeout: float,
    reactor: IReactorTime,
    clock: Callable[[], float] = time.time,
) -> str | None:
    """One attempt, headers and body within ``timeout``: None on a 2xx, else the status; a
    receiver that stalls half-way through its answer times out too.  The ``webhooks redeliver``
    command sends dead letters with it."""
    attempt = ensureDeferred(_post(http, url, secret, letter, clock))
    attempt.addTimeout(timeout, reactor)
    return await attempt


async def _post(
    http: Any, url: bytes, secret: str, letter: Letter, clock: Callable[[], float]
) -> str | None:
    headers = {
        b"Content-Type": [b"application/json"],
        b"User-Agent": [USER_AGENT],
        b"X-Webhook-Id": [letter.id.encode()],
    }
    if secret:
        stamp = str(int(clock()))
        headers[b"X-Webhook-Timestamp"] = [stamp.encode()]
        signature = webhook_signature(secret, stamp, letter.body)
        headers[b"X-Webhook-Signature"] = [signature.encode()]
    try:
        response = await http.post(url, data=letter.body, headers=headers)
    except _WRAPPED as error:
        if all(reason.check(CancelledError) for reason in error.reasons):
            # Cancelled while the request was being sent: Twisted's client wraps the cancel,
            # which must stay one (the sender stopping, or `addTimeout` turning it into a timeout).
            raise CancelledError() from error
        raise
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
