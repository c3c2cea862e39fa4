"""The retry policy and what is retried how: uploads, webhooks and the S3 client's failures, on a
`task.Clock`, so schedules are exact and nothing sleeps."""

from __future__ import annotations

import itertools
import os
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred, fail, succeed
from twisted.internet.error import ConnectionLost, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web.client import ResponseDone, ResponseFailed
from twisted.web.iweb import UNKNOWN_LENGTH

from imageserver import events
from imageserver.backoff import Backoff
from imageserver.metrics import Metrics
from imageserver.outbox import Outbox
from imageserver.s3 import Bucket, S3Client, S3Error, StaticCredentials
from imageserver.store import LocalStore
from imageserver.uploader import Uploader
from imageserver.webhooks import WIRE_NAMES, WebhookSender


def exact(policy: Backoff) -> Backoff:
    """``policy`` without its jitter: each delay is its step."""
    return Backoff(policy.first, policy.factor, policy.longest, policy.retries, lambda: 0.5)


class BackoffTests(unittest.SynchronousTestCase):
    def test_steps_grow_fourfold_up_to_the_ceiling(self) -> None:
        delays = exact(Backoff(longest=300.0)).delays()
        self.assertEqual(list(itertools.islice(delays, 8)), [1, 4, 16, 64, 256, 300, 300, 300])

    def test_a_limited_policy_ends(self) -> None:
        self.assertEqual(list(exact(Backoff(retries=2)).delays()), [1, 4])
        self.assertEqual(list(Backoff(retries=0).delays()), [])

    def test_jitter_stays_within_a_quarter_either_side(self) -> None:
        low = Backoff(draw=lambda: 0.0).delays()
        self.assertEqual(list(itertools.islice(low, 3)), [0.75, 3.0, 12.0])
        high = Backoff(draw=lambda: 0.999999).delays()
        for delay, step in zip(high, (1.0, 4.0, 16.0), strict=False):
            self.assertAlmostEqual(delay, step * 1.25, places=4)
        drawn = list(itertools.islice(Backoff(factor=1.0).delays(), 50))
        self.assertTrue(all(0.75 <= delay <= 1.25 for delay in drawn), drawn)
        self.assertGreater(len(set(drawn)), 1, "every delay the same: no jitter")


class FakeRemote:
    """A bucket that raises ``error`` (when set) at each upload, and records when it was asked."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.error: Exception | None = None
        self.puts: list[float] = []

    async def put(self, relative: str, content_type: str) -> None:
        self.puts.append(self.clock.seconds())
        if self.error is not None:
            raise self.error


class UploaderTests(unittest.TestCase):
    RELATIVE = "p/abc/original"

    def setUp(self) -> None:
        self.clock = Clock()
        self.remote = FakeRemote(self.clock)
        self.store = LocalStore(self.mktemp())
        self.store.prepare()
        self.store.write(self.RELATIVE, b"\xff\xd8\xff an original")
        self.metrics = Metrics()
        self.uploader = self.start_uploader()

    def start_uploader(self) -> Uploader:
        uploader = Uploader(
            self.remote,  # type: ignore[arg-type]
            self.store,
            self.metrics,
            self.clock,
            concurrency=2,
            timeout=5.0,
            quick_retries=exact(Backoff(longest=4.0, retries=2)),
            background_retries=exact(Backoff(longest=300.0)),
        )
        uploader.startService()
        self.addCleanup(uploader.stopService)
        return uploader

    def failures(self, code: str) -> float:
        found = self.metrics.registry.get_sample_value(
            "image_server_s3_upload_failures_total", {"code": code}
        )
        return found or 0.0

    def test_retries_back_off_quickly_then_in_the_background(self) -> None:
        self.remote.error = S3Error(500, "InternalError", "injected")
        self.uploader.store_now([(self.RELATIVE, "image/jpeg")])
        self.clock.pump([1.0] * 700)
        # Quick: at once, 1 s, 4 s; then in the background 1 s, 4 s, 16 s... up to 300 s apart.
        self.assertEqual(self.remote.puts, [0, 1, 5, 6, 10, 26, 90, 346, 646])
        self.assertEqual(self.failures("InternalError"), 9)
        self.assertEqual(self.flushLoggedErrors(), [])  # expected: warnings, no traceback

    def test_a_bug_shows_its_traceback_once_and_is_still_retried(self) -> None:
        self.remote.error = ZeroDivisionError("a bug")
        self.uploader.store_now([(self.RELATIVE, "image/jpeg")])
        self.clock.pump([1.0] * 100)
        self.assertEqual(len(self.remote.puts), 7)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(self.failures("ZeroDivisionError"), 7)
        self.assertTrue(self.uploader.is_pending(self.RELATIVE))
        self.remote.error = None  # fixed
        self.clock.pump([1.0] * 300)
        self.assertFalse(self.uploader.is_pending(self.RELATIVE))
        self.assertEqual(self.uploader.pending, 0)

    def test_a_scrape_counts_the_journal_without_listing_it(self) -> None:
        self.remote.error = S3Error(503, "SlowDown", "injected")
        self.uploader.store_now([(self.RELATIVE, "image/jpeg")])
        self.store.write("p/abc/w10.jpg", b"a variant")
        self.uploader.store_later("p/abc/w10.jpg", "image/jpeg")
        # A restart reads the journal back once.
        self.uploader.stopService()
        self.uploader = self.start_uploader()
        self.metrics.watch_uploads(self.uploader)

        def refuse(*args: Any) -> Any:
            raise AssertionError("the journal was listed")

        self.patch(os, "listdir", refuse)
        self.patch(os, "scandir", refuse)
        gauge = "image_server_s3_uploads_pending"
        self.assertEqual(self.metrics.registry.get_sample_value(gauge), 2)
        self.assertTrue(self.uploader.is_pending("p/abc/w10.jpg"))
        self.remote.error = None
        self.clock.pump([1.0] * 10)
        self.assertEqual(self.metrics.registry.get_sample_value(gauge), 0)
        self.assertFalse(self.uploader.is_pending("p/abc/w10.jpg"))


class FakeResponse:
    def __init__(self, code: int) -> None:
        self.code = code
        self.length = UNKNOWN_LENGTH
        self.phrase = b"Whatever"

    def deliverBody(self, protocol: Any) -> None:
        protocol.connectionLost(Failure(ResponseDone()))


class FakeHTTP:
    """A receiver that answers ``code``, or fails with ``error``, recording when it was asked."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.code = 200
        self.error: Exception | None = None
        self.posts: list[float] = []

    def post(self, url: bytes, data: bytes, headers: Any) -> Deferred[FakeResponse]:
        self.posts.append(self.clock.seconds())
        if self.error is not None:
            return fail(self.error)
        return succeed(FakeResponse(self.code))


class WebhookRetryTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.http = FakeHTTP(self.clock)
        self.metrics = Metrics()
        self.sender = WebhookSender(
            self.http,
            "http://hooks.example/",
            "",
            10.0,
            frozenset(WIRE_NAMES.values()),
            self.metrics,
            self.clock,
            Outbox(self.mktemp()),
            clock=lambda: 0.0,
            retries=exact(Backoff(retries=2)),
        )
        self.sender.startService()
        self.addCleanup(self.sender.stopService)

    def deliver(self) -> None:
        self.sender.emit(events.Uploaded("p", "abc", 1, 1, "image/jpeg", ""))
        self.clock.pump([1.0] * 10)

    def outcome(self, outcome: str) -> float:
        labels = {"event": "image.uploaded", "outcome": outcome}
        found = self.metrics.registry.get_sample_value(
            "image_server_webhook_deliveries_total", labels
        )
        return found or 0.0

    def test_an_unreachable_receiver_is_tried_three_times_quietly(self) -> None:
        self.http.error = ConnectionRefusedError()
        self.deliver()
        self.assertEqual(self.http.posts, [0, 1, 5])
        self.assertEqual(self.outcome("failed"), 1)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_an_error_status_is_retried(self) -> None:
        self.http.code = 500
        self.deliver()
        self.assertEqual(self.http.posts, [0, 1, 5])
        self.assertEqual(self.outcome("failed"), 1)

    def test_a_bug_shows_its_traceback_once(self) -> None:
        self.http.error = TypeError("a bug")
        self.deliver()
        self.assertEqual(self.http.posts, [0, 1, 5])
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)
        self.assertEqual(self.outcome("failed"), 1)

    def test_success(self) -> None:
        self.deliver()
        self.assertEqual(self.http.posts, [0])
        self.assertEqual(self.outcome("delivered"), 1)


class ScriptedHTTP:
    """An HTTP client whose requests fail with ``error``, or are answered by ``response``."""

    def __init__(self, error: Exception | None = None, response: Any = None) -> None:
        self.error = error
        self.response = response

    def request(self, method: str, url: bytes, **kwargs: Any) -> Deferred[Any]:
        if self.error is not None:
            return fail(self.error)
        return succeed(self.response)


class BodyThatBreaks(FakeResponse):
    """A 200 whose body ends with ``reason``, after one piece."""

    def __init__(self, reason: Exception) -> None:
        super().__init__(200)
        self.reason = reason

    def deliverBody(self, protocol: Any) -> None:
        protocol.dataReceived(b"x")
        protocol.connectionLost(Failure(self.reason))


class BrokenSink:
    size = 0

    def write(self, data: bytes) -> None:
        raise ZeroDivisionError("a bug in the sink")


class Sink:
    size = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)


class S3FailureTests(unittest.SynchronousTestCase):
    """Only the network's failures become ``Unreachable``; a bug keeps its own exception."""

    def setUp(self) -> None:
        self.clock = Clock()

    def client(self, http: ScriptedHTTP) -> S3Client:
        bucket = Bucket("images", "us-east-1", "http://127.0.0.1:9")
        return S3Client(http, bucket, StaticCredentials("key", "secret"), self.clock, timeout=5)

    def failure_of(self, work: Any, *expected: type[Exception]) -> Any:
        found = self.failureResultOf(ensureDeferred(work), *expected).value
        self.assertEqual(self.clock.getDelayedCalls(), [], "the watchdog was left running")
        return found

    def test_network_failures_are_unreachable(self) -> None:
        for error in (
            ConnectionRefusedError(),
            ResponseFailed([Failure(ConnectionLost())]),
        ):
            found = self.failure_of(self.client(ScriptedHTTP(error)).exists("k"), S3Error)
            self.assertEqual(found.code, "Unreachable")

    def test_a_bug_in_a_request_keeps_its_exception(self) -> None:
        self.failure_of(self.client(ScriptedHTTP(TypeError("a bug"))).exists("k"), TypeError)

    def test_an_answer_cut_off_is_unreachable(self) -> None:
        cut = BodyThatBreaks(ResponseFailed([Failure(ConnectionLost())]))
        client = self.client(ScriptedHTTP(response=cut))
        found = self.failure_of(client.get_into("k", Sink()), S3Error)  # type: ignore[arg-type]
        self.assertEqual(found.code, "Unreachable")

    def test_a_bug_while_reading_an_answer_keeps_its_exception(self) -> None:
        whole = BodyThatBreaks(ResponseDone())
        client = self.client(ScriptedHTTP(response=whole))
        work = client.get_into("k", BrokenSink())  # type: ignore[arg-type]
        self.failure_of(work, ZeroDivisionError)
