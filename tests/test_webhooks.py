"""The webhook outbox: on a `task.Clock` for exact schedules, and through real ``image-server``
processes for what must survive a receiver's outage, a ``kill -9`` and a full outbox, and for the
``webhooks`` command's dead letters."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, gatherResults, succeed
from twisted.internet.task import Clock
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web import server
from twisted.web.client import RequestGenerationFailed

from imageserver import events
from imageserver.backoff import Backoff
from imageserver.metrics import Metrics
from imageserver.outbox import OUTBOX_DIRECTORY, Outbox, dead_letters
from imageserver.webhooks import WIRE_NAMES, WebhookSender
from tests.processes import IMAGE_SERVER, Running, alive, metric, process_tree, start_process
from tests.support import ServerTestCase, distinct_jpeg, request, sleep
from tests.test_events import SECRET, Receiver, verify_webhook
from tests.test_retries import FakeResponse


def exact(policy: Backoff) -> Backoff:
    """``policy`` without its jitter."""
    return Backoff(policy.first, policy.factor, policy.longest, policy.retries, lambda: 0.5)


class ScriptedReceiver:
    """Answers ``code`` to every POST, recording when, the id header and the body."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.code = 503
        self.posts: list[tuple[float, str, bytes]] = []

    def post(self, url: bytes, data: bytes, headers: Any) -> Deferred[FakeResponse]:
        [letter_id] = headers[b"X-Webhook-Id"]
        self.posts.append((self.clock.seconds(), letter_id.decode(), data))
        return succeed(FakeResponse(self.code))


def uploaded(index: int) -> events.Uploaded:
    return events.Uploaded("p", f"{index:032x}", 1, 1, "image/jpeg", "")


class ScheduleTests(unittest.TestCase):
    """The sender on a clock: the schedule, the deadline, the bound, and a restart."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.receiver = ScriptedReceiver(self.clock)
        self.metrics = Metrics()
        self.directory = self.mktemp()

    def sender(self, **overrides: Any) -> WebhookSender:
        values: dict[str, Any] = {
            "clock": self.clock.seconds,
            "retries": exact(Backoff()),
            "retry_for": 100.0,
        }
        values.update(overrides)
        sender = WebhookSender(
            self.receiver,
            "http://hooks.example/",
            "",
            10.0,
            frozenset(WIRE_NAMES.values()),
            self.metrics,
            self.clock,
            Outbox(self.directory),
            **values,
        )
        sender.startService()
        self.addCleanup(sender.stopService)
        return sender

    def count(self, outcome: str) -> float:
        labels = {"event": "image.uploaded", "outcome": outcome}
        found = self.metrics.registry.get_sample_value(
            "image_server_webhook_deliveries_total", labels
        )
        return found or 0.0

    def test_stopping_mid_request_is_no_failure(self) -> None:
        """Cancelled while its request is being sent (Twisted's client wraps the cancel in a
        `RequestGenerationFailed`), an attempt is a stop: nothing logged as a bug, the event kept
        in the outbox and not counted as failed."""

        def hanging_post(url: bytes, data: bytes, headers: Any) -> Deferred[FakeResponse]:
            def cancel(sending: Deferred[FakeResponse]) -> None:
                sending.errback(RequestGenerationFailed([Failure(CancelledError())]))

            return Deferred(cancel)

        self.receiver.post = hanging_post  # type: ignore[method-assign]
        sender = self.sender()
        sender.emit(uploaded(1))
        sender.stopService()
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(len(Outbox(self.directory).load()), 1)
        self.assertEqual(self.count("failed"), 0)

    def test_retried_until_the_deadline_then_a_dead_letter(self) -> None:
        sender = self.sender()
        sender.emit(uploaded(1))
        self.clock.pump([1.0] * 200)
        # 1, 4, 16, 64 s apart, then the rest of the 100 s: the last try falls on the deadline.
        self.assertEqual([when for when, _, _ in self.receiver.posts], [0, 1, 5, 21, 85, 100])
        self.assertEqual(len({(i, body) for _, i, body in self.receiver.posts}), 1)
        [dead] = dead_letters(self.directory)
        self.assertEqual((dead.attempts, dead.last_error), (6, "status 503"))
        self.assertEqual((len(sender.outbox), self.count("failed")), (0, 1))

    def test_delivered_once_and_crossed_off(self) -> None:
        sender = self.sender()
        sender.emit(uploaded(1))
        self.clock.advance(3)
        self.receiver.code = 200
        self.clock.advance(5)
        self.assertEqual(len(self.receiver.posts), 3)
        self.assertEqual((sender.depth, self.count("delivered")), (0, 1))
        self.assertEqual(os.listdir(os.path.join(self.directory, "outbox")), [])

    def test_the_depth_and_the_oldest_age(self) -> None:
        sender = self.sender()
        self.assertEqual((sender.depth, sender.oldest_age), (0, 0.0))
        sender.emit(uploaded(1))
        self.clock.advance(30)
        sender.emit(uploaded(2))
        self.assertEqual((sender.depth, sender.oldest_age), (2, 30.0))

    def test_a_full_outbox_drops_the_oldest(self) -> None:
        sender = self.sender(outbox_max=2)
        for index in range(3):
            sender.emit(uploaded(index))
        first, second, third = (letter_id for _, letter_id, _ in self.receiver.posts)
        self.assertEqual(sender.depth, 2)
        self.assertEqual(self.count("dropped"), 1)
        on_disk = sorted(name[:-5] for name in os.listdir(os.path.join(self.directory, "outbox")))
        self.assertEqual(on_disk, sorted([second, third]))
        self.receiver.code = 200
        self.clock.pump([1.0] * 5)
        later = [letter_id for _, letter_id, _ in self.receiver.posts[3:]]
        self.assertEqual(sorted(later), sorted([second, third]))
        self.assertNotIn(first, later)

    def test_a_restart_resumes_with_the_same_ids(self) -> None:
        sender = self.sender()
        sender.emit(uploaded(1))
        sender.emit(uploaded(2))
        sent = {letter_id: body for _, letter_id, body in self.receiver.posts}
        sender.stopService()
        self.receiver.code = 200
        self.receiver.posts.clear()
        again = self.sender()
        self.assertEqual({i: body for _, i, body in self.receiver.posts}, sent)
        self.assertEqual(again.depth, 0)

    def test_the_deadline_counts_from_the_event_not_the_restart(self) -> None:
        sender = self.sender()
        sender.emit(uploaded(1))
        sender.stopService()
        self.clock.advance(500)
        self.receiver.posts.clear()
        self.sender()
        self.assertEqual(len(self.receiver.posts), 1)
        self.assertEqual(len(dead_letters(self.directory)), 1)


def webhook_flags(receiver_url: str, *more: str) -> list[str]:
    return [
        "--webhook-url", receiver_url,
        "--webhook-secret", SECRET,
        "--webhook-retry-max-delay", "1",
        "--processor_concurrency", "1",
        *more,
    ]  # fmt: skip


class Outage(Receiver):
    """A receiver that answers 503 while ``down``, and 200 once up."""

    def __init__(self, testcase: unittest.TestCase) -> None:
        super().__init__(testcase)
        self.down = True

    def render_POST(self, request: server.Request) -> bytes | int:
        accepted = not self.down
        if self.down:
            self.statuses.append(503)
        answer = super().render_POST(request)
        self.deliveries[-1]["accepted"] = accepted
        return answer

    def attempts(self) -> Counter[str]:
        return Counter(delivery["id"] for delivery in self.deliveries)

    def accepted(self) -> list[str]:
        """The ids answered with a 200, in order."""
        return [d["id"] for d in self.deliveries if d["accepted"]]


class ProcessTests(ServerTestCase):
    """Real servers, real receivers; every wait is a bounded poll."""

    timeout = 180

    async def metrics(self, running: Running) -> dict[tuple[str, tuple[str, ...]], float]:
        page = (await request("GET", f"{running.admin_url}/metrics")).body.decode()
        return {
            (sample.name, tuple(sample.labels.values())): sample.value
            for family in text_string_to_metric_families(page)
            for sample in family.samples
        }

    async def upload(self, running: Running, index: int) -> None:  # type: ignore[override]
        response = await request("POST", f"{running.url}/p", data=distinct_jpeg(index))
        self.assertEqual(response.code, 200, response.body)

    def outbox_ids(self, store: str) -> set[str]:
        folder = os.path.join(store, OUTBOX_DIRECTORY, "outbox")
        return {name[:-5] for name in os.listdir(folder) if name.endswith(".json")}

    def assert_signed(self, receiver: Receiver) -> None:
        for delivery in receiver.deliveries:
            self.assertEqual(delivery["id"], delivery["json"]["id"])
            self.assertTrue(
                verify_webhook(
                    SECRET, delivery["timestamp"], delivery["body"], delivery["signature"]
                )
            )

    async def test_a_receiver_down_longer_than_three_attempts(self) -> None:
        """Down past the old window (three attempts in about 5 s), then up: every event arrives,
        accepted once per id, each id's body the same on every attempt."""
        receiver = Outage(self)
        running = await start_process(self, [IMAGE_SERVER, "server"], webhook_flags(receiver.url))
        for index in range(3):
            await self.upload(running, index)
        # Two events per upload (no outputs): uploaded and batch_complete.
        await self.wait_for(lambda: len(receiver.attempts()) == 6, "six events", tries=200)
        await self.wait_for(
            lambda: min(receiver.attempts().values()) >= 5, "five attempts of each", tries=400
        )
        await sleep(1.0)  # and a little longer, so that some attempts straddle the change
        receiver.down = False
        await self.wait_for(lambda: len(receiver.accepted()) == 6, "every delivery", tries=400)
        await self.wait_for(lambda: not self.outbox_ids(running.store), "the outbox to empty")
        accepted = receiver.accepted()
        self.assertEqual(sorted(accepted), sorted(set(receiver.attempts())))
        self.assertEqual(len(set(accepted)), 6, "each id accepted once")
        bodies: dict[str, set[bytes]] = {}
        for delivery in receiver.deliveries:
            bodies.setdefault(delivery["id"], set()).add(delivery["body"])
        self.assertEqual({len(found) for found in bodies.values()}, {1})
        self.assert_signed(receiver)
        metrics = await self.metrics(running)
        self.assertEqual(metrics[("image_server_webhook_outbox_events", ())], 0)
        self.assertEqual(metrics[("image_server_webhook_outbox_oldest_seconds", ())], 0)
        delivered = [
            value
            for (name, labels), value in metrics.items()
            if name == "image_server_webhook_deliveries_total" and labels[1] == "delivered"
        ]
        self.assertEqual(sum(delivered), 6)

    async def test_events_queued_at_a_kill_9_arrive_after_a_restart(self) -> None:
        receiver = Outage(self)
        flags = webhook_flags(receiver.url, "--webhook-events", "uploaded")
        first = await start_process(self, [IMAGE_SERVER, "server"], flags)
        for index in range(4):
            await self.upload(first, index)
        await self.wait_for(lambda: len(self.outbox_ids(first.store)) == 4, "four events")
        queued = self.outbox_ids(first.store)
        metrics = await self.metrics(first)
        self.assertEqual(metrics[("image_server_webhook_outbox_events", ())], 4)
        os.kill(first.process.pid, 9)
        await first.process.ended
        receiver.down = False
        second = await start_process(
            self, [IMAGE_SERVER, "server"], [*flags, "--local_base_path", first.store]
        )
        await self.wait_for(lambda: len(receiver.accepted()) == 4, "the queued events")
        self.assertEqual(sorted(receiver.accepted()), sorted(queued))
        await self.wait_for(lambda: not self.outbox_ids(first.store), "the outbox to empty")
        self.assert_signed(receiver)
        self.assertIn(b"resuming 4 events", second.process.output)

    async def test_events_of_a_killed_secondary_arrive_without_a_restart(self) -> None:
        """With two main processes, the events a killed secondary left in the outbox are sent by
        the primary, still running, once the receiver is back."""
        receiver = Outage(self)
        flags = webhook_flags(receiver.url, "--webhook-events", "uploaded")
        flags += ["--processes", "2", "--processor_concurrency", "2"]
        running = await start_process(self, [IMAGE_SERVER, "server"], flags)
        for _ in range(300):  # at most 30 s for the secondary to serve
            page = (await request("GET", f"{running.admin_url}/metrics")).body
            if "1" in metric(page, "image_server_build_info"):
                break
            await sleep(0.1)
        [secondary] = process_tree(running.process.pid)[0]
        uploads = [ensureDeferred(self.upload(running, index)) for index in range(10)]
        await gatherResults(uploads)
        await self.wait_for(lambda: len(self.outbox_ids(running.store)) == 10, "ten events")
        queued = self.outbox_ids(running.store)
        page = (await request("GET", f"{running.admin_url}/metrics")).body
        self.assertGreater(metric(page, "image_server_new_image_request_total").get("1", 0), 0)
        os.kill(secondary, 9)
        await self.wait_for(lambda: not alive(secondary), "the secondary to die")
        receiver.down = False
        await self.wait_for(lambda: set(receiver.accepted()) == queued, "every event", 600)
        await self.wait_for(lambda: not self.outbox_ids(running.store), "the outbox to empty")
        self.assert_signed(receiver)

    async def test_a_crash_before_the_cross_off_repeats_the_same_id(self) -> None:
        """The one duplicate the outbox allows: sent, killed before the answer, sent again."""
        receiver = Outage(self)
        receiver.down, receiver.hang = False, True
        flags = webhook_flags(receiver.url, "--webhook-events", "uploaded")
        first = await start_process(self, [IMAGE_SERVER, "server"], flags)
        await self.upload(first, 1)
        await self.wait_for(lambda: receiver.deliveries, "the first attempt")
        os.kill(first.process.pid, 9)
        await first.process.ended
        receiver.hang = False
        await start_process(
            self, [IMAGE_SERVER, "server"], [*flags, "--local_base_path", first.store]
        )
        await self.wait_for(lambda: len(receiver.deliveries) == 2, "the second delivery")
        await self.wait_for(lambda: not self.outbox_ids(first.store), "the outbox to empty")
        self.assertEqual(len(receiver.attempts()), 1)
        self.assertEqual(len({d["body"] for d in receiver.deliveries}), 1)

    async def test_a_full_outbox_drops_the_oldest_and_counts_it(self) -> None:
        receiver = Outage(self)
        flags = webhook_flags(
            receiver.url, "--webhook-events", "uploaded", "--webhook-outbox-max", "2"
        )
        running = await start_process(self, [IMAGE_SERVER, "server"], flags)
        for index in range(3):
            await self.upload(running, index)
            await self.wait_for(
                lambda seen=index + 1: len(receiver.attempts()) == seen, "its first attempt"
            )
        first_id = receiver.deliveries[0]["id"]
        self.assertEqual(len(self.outbox_ids(running.store)), 2)
        self.assertNotIn(first_id, self.outbox_ids(running.store))
        metrics = await self.metrics(running)
        self.assertEqual(
            metrics[("image_server_webhook_deliveries_total", ("image.uploaded", "dropped"))], 1
        )
        self.assertEqual(metrics[("image_server_webhook_outbox_events", ())], 2)
        self.assertIn(b"webhook outbox full", running.process.output)
        receiver.down = False
        await self.wait_for(lambda: len(receiver.accepted()) == 2, "the two kept")
        self.assertNotIn(first_id, receiver.accepted())

    async def test_a_dead_letter_is_listed_and_redelivered(self) -> None:
        receiver = Outage(self)
        flags = webhook_flags(
            receiver.url, "--webhook-events", "uploaded", "--webhook-retry-for", "2"
        )
        running = await start_process(self, [IMAGE_SERVER, "server"], flags)
        await self.upload(running, 1)
        await self.upload(running, 2)
        directory = os.path.join(running.store, OUTBOX_DIRECTORY)
        await self.wait_for(lambda: len(dead_letters(directory)) == 2, "two dead letters", 200)
        metrics = await self.metrics(running)
        self.assertEqual(
            metrics[("image_server_webhook_deliveries_total", ("image.uploaded", "failed"))], 2
        )
        store = ["--local_base_path", running.store]
        out, err, code = await self.command("webhooks", "list", *store)
        self.assertEqual(code, 0, err)
        listed = [line.split("\t") for line in out.splitlines()]
        ids = [fields[0] for fields in listed]
        self.assertEqual(sorted(ids), sorted(receiver.attempts()))
        self.assertEqual({fields[1] for fields in listed}, {"image.uploaded"})
        self.assertEqual({fields[4] for fields in listed}, {"status 503"})

        # Still down: it stays a dead letter, and the command says so.
        hook = ["--webhook-url", receiver.url, "--webhook-secret", SECRET]
        out, _, code = await self.command("webhooks", "redeliver", ids[0], *store, *hook)
        self.assertEqual((code, out), (1, f"{ids[0]}\tfailed: status 503\n"))

        receiver.down = False
        out, err, code = await self.command("webhooks", "redeliver", ids[0], *store, *hook)
        self.assertEqual((code, out), (0, f"{ids[0]}\tdelivered\n"), err)
        self.assertEqual(receiver.accepted(), [ids[0]])
        self.assert_signed(receiver)
        out, _, _ = await self.command("webhooks", "list", *store)
        self.assertEqual([line.split("\t")[0] for line in out.splitlines()], ids[1:])

        out, _, code = await self.command("webhooks", "redeliver", "--all", *store, *hook)
        self.assertEqual((code, out), (0, f"{ids[1]}\tdelivered\n"))
        self.assertEqual(receiver.accepted(), ids)
        out, err, code = await self.command("webhooks", "redeliver", ids[0], *store, *hook)
        self.assertEqual((code, err), (1, f"{ids[0]}\tno such dead letter\n"))

    async def test_the_command_explains_its_arguments(self) -> None:
        for args, message in [
            (["webhooks"], "webhooks: list, or redeliver"),
            (["webhooks", "redeliver"], "webhooks redeliver: ids, or --all"),
            (["webhooks", "redeliver", "--all"], "--webhook-url: needed to redeliver"),
            (["webhooks", "list", "abc"], "webhooks list: takes no ids"),
        ]:
            _, err, code = await self.command(*args, "--local_base_path", self.mktemp())
            self.assertEqual(code, 1)
            self.assertIn(message, err)

    async def command(self, *args: str) -> tuple[str, str, int]:
        out, err, code = await getProcessOutputAndValue(IMAGE_SERVER, args, env=os.environ)
        return out.decode(), err.decode(), code


class DocumentationTests(unittest.SynchronousTestCase):
    def test_every_webhook_series_is_documented(self) -> None:
        """The general check starts a server without webhooks, which has none of these."""
        metrics = Metrics()
        metrics.watch_webhooks(_Idle())
        names = {family.name for family in metrics.registry.collect()}
        webhook_names = {name for name in names if "webhook" in name}
        self.assertEqual(len(webhook_names), 3)
        documented = Path(__file__).parent.parent.joinpath("docs", "metrics.md").read_text()
        self.assertEqual(sorted(n for n in webhook_names if f"`{n}" not in documented), [])

    def test_the_guide_keeps_its_promises(self) -> None:
        guide = Path(__file__).parent.parent.joinpath("docs", "webhooks.md").read_text()
        for needed in ("X-Webhook-Id", "X-Webhook-Signature", "--webhook-retry-for", "redeliver"):
            self.assertIn(needed, guide)


class _Idle:
    depth = 0
    oldest_age = 0.0
