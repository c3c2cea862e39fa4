"""Webhooks, statsd, the access log and the metrics, against real receivers on 127.0.0.1."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import globalLogPublisher
from twisted.trial import unittest
from twisted.web import resource, server

from imageserver.backoff import Backoff
from imageserver.outbox import dead_letters
from imageserver.webhooks import timestamp
from tests.support import WINE_DIR, WINE_HASH, ServerTestCase, SourceServer, fixture, request

SECRET = "webhook-secret"


def verify_webhook(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    """The README's verification code, as a receiver would paste it."""
    expected = (
        "sha256="
        + hmac.new(
            secret.encode(), f"{timestamp}.{body.decode()}".encode(), hashlib.sha256
        ).hexdigest()
    )
    return hmac.compare_digest(expected, signature)


class Receiver(resource.Resource):
    """A real webhook endpoint: records deliveries, answers with scripted statuses."""

    isLeaf = True

    def __init__(self, testcase: unittest.TestCase) -> None:
        super().__init__()
        self.deliveries: list[dict[str, Any]] = []
        self.statuses: list[int] = []  # answered in order; then 200
        self.hang = False
        self.stall = False
        self.hanging: list[server.Request] = []
        port = reactor.listenTCP(0, server.Site(self), interface="127.0.0.1")
        testcase.addCleanup(self._close, port)
        self.url = f"http://127.0.0.1:{port.getHost().port}/hooks"

    async def _close(self, port: Any) -> None:
        for waiting in self.hanging:
            waiting.setResponseCode(200)
            waiting.finish()
        await port.stopListening()

    def render_POST(self, request: server.Request) -> bytes | int:
        body = request.content.read()
        self.deliveries.append(
            {
                "body": body,
                "json": json.loads(body),
                "timestamp": (request.getHeader(b"X-Webhook-Timestamp") or b"").decode(),
                "signature": (request.getHeader(b"X-Webhook-Signature") or b"").decode(),
                "id": (request.getHeader(b"X-Webhook-Id") or b"").decode(),
                "user_agent": request.getHeader(b"User-Agent"),
                "content_type": request.getHeader(b"Content-Type"),
            }
        )
        if self.stall:
            request.setHeader(b"Content-Length", b"100")
            request.write(b"x")
        if self.hang or self.stall:
            self.hanging.append(request)
            request.notifyFinish().addErrback(lambda _: self.hanging.remove(request))
            return server.NOT_DONE_YET
        request.setResponseCode(self.statuses.pop(0) if self.statuses else 200)
        return b"ok"

    def events(self) -> list[str]:
        return [delivery["json"]["event"] for delivery in self.deliveries]


class WebhookTests(ServerTestCase):
    async def start_with_webhooks(self, **overrides: Any) -> Receiver:
        receiver = Receiver(self)
        await self.start_server(webhook_url=receiver.url, webhook_secret=SECRET, **overrides)
        assert self.server.engine.webhooks is not None
        self.server.engine.webhooks.retries = Backoff(first=0.05, factor=1.0, retries=2)
        return receiver

    def outcomes(self, outcome: str) -> float:
        """How many ``image.uploaded`` deliveries ended with ``outcome`` (0 before the first)."""
        labels = {"event": "image.uploaded", "outcome": outcome}
        found = self.server.metrics.registry.get_sample_value(
            "image_server_webhook_deliveries_total", labels
        )
        return found or 0.0

    async def wait_for_deliveries(self) -> None:
        """Until every event emitted so far has been delivered, or given up on."""
        webhooks = self.server.engine.webhooks
        await self.wait_for(lambda: not webhooks._deliveries, "the deliveries to end")

    async def test_upload_with_outputs(self) -> None:
        receiver = await self.start_with_webhooks(remote_base_url="https://cdn.example.com/")
        await self.upload(fixture("wine.jpg"), query="?outputs=w200.jpg")
        await self.wait_for(lambda: len(receiver.deliveries) == 3, "three events")
        self.assertEqual(
            sorted(receiver.events()),
            ["image.batch_complete", "image.processed", "image.uploaded"],
        )
        by_name = {d["json"]["event"]: d for d in receiver.deliveries}
        self.assertEqual(
            by_name["image.uploaded"]["json"]["data"],
            {
                "namespace": "p",
                "hash": WINE_HASH,
                "width": 800,
                "height": 600,
                "content_type": "image/jpeg",
                "remote_url": f"https://cdn.example.com/p/{WINE_DIR}/original",
            },
        )
        processed = by_name["image.processed"]["json"]["data"]
        self.assertEqual(
            processed,
            {
                "namespace": "p",
                "hash": WINE_HASH,
                "filename": "w200.jpg",
                "format": "jpg",
                "width": 200,
                "height": 150,
                "quality": 75,
                "remote_url": f"https://cdn.example.com/p/{WINE_DIR}/w200.jpg",
            },
        )
        self.assertEqual(
            by_name["image.batch_complete"]["json"]["data"], {"namespace": "p", "hash": WINE_HASH}
        )
        for delivery in receiver.deliveries:
            self.assertTrue(
                verify_webhook(
                    SECRET, delivery["timestamp"], delivery["body"], delivery["signature"]
                )
            )
            self.assertEqual(delivery["id"], delivery["json"]["id"])
            self.assertEqual(delivery["user_agent"], b"image-server-webhook/1.0")
            self.assertEqual(delivery["content_type"], b"application/json")
            self.assertRegex(
                delivery["json"]["timestamp"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$"
            )

    async def test_processing_failure_reports_the_error(self) -> None:
        receiver = await self.start_with_webhooks()
        await self.upload_wine()
        with open(self.local("p", WINE_DIR, "original"), "r+b") as original:
            original.truncate(30000)  # damaged on disk after the upload
        response = await request("GET", f"{self.url}/p/{WINE_DIR}/w10.jpg")
        self.assertEqual(response.code, 404)
        await self.wait_for(lambda: "image.processing_failed" in receiver.events(), "the event")
        [failed] = [
            d for d in receiver.deliveries if d["json"]["event"] == "image.processing_failed"
        ]
        data = failed["json"]["data"]
        self.assertEqual((data["filename"], data["format"]), ("w10.jpg", "jpg"))
        self.assertTrue(data["error"].startswith("ImageMagick failed to process the image"))

    async def test_two_failures_then_success_is_three_attempts(self) -> None:
        receiver = await self.start_with_webhooks(webhook_events="uploaded")
        receiver.statuses = [500, 500, 200]
        await self.upload_wine()
        await self.wait_for(lambda: self.outcomes("delivered") == 1, "the delivery")
        self.assertEqual(len(receiver.deliveries), 3)
        self.assertEqual(len({d["body"] for d in receiver.deliveries}), 1)
        self.assertEqual(len({d["id"] for d in receiver.deliveries}), 1)
        metrics = await self.metrics()
        self.assertEqual(
            metrics[("image_server_webhook_deliveries_total", ("image.uploaded", "delivered"))], 1
        )

    async def test_the_last_failure_makes_a_dead_letter(self) -> None:
        """With this test's three-attempt policy: the third failure moves the event, its id and
        last error to the dead letters."""
        receiver = await self.start_with_webhooks(webhook_events="uploaded")
        receiver.statuses = [500, 503, 502, 200]
        await self.upload_wine()
        await self.wait_for(lambda: self.outcomes("failed") == 1, "the delivery to give up")
        self.assertEqual(len(receiver.deliveries), 3)
        [dead] = dead_letters(self.local(".webhooks"))
        self.assertEqual((dead.id, dead.attempts), (receiver.deliveries[0]["id"], 3))
        self.assertEqual(dead.last_error, "status 502")
        self.assertEqual(os.listdir(self.local(".webhooks", "outbox")), [])
        metrics = await self.metrics()
        self.assertEqual(
            metrics[("image_server_webhook_deliveries_total", ("image.uploaded", "failed"))], 1
        )

    async def test_a_receiver_that_never_answers_slows_nothing(self) -> None:
        receiver = await self.start_with_webhooks()
        receiver.hang = True
        await self.upload_wine()
        response = await self.upload(fixture("a.jpg"), query="?outputs=w10.jpg")
        self.assertEqual(response.code, 200)
        self.assertTrue(receiver.hanging, "deliveries are still waiting for the receiver")

    async def test_a_full_queue_drops_and_counts(self) -> None:
        receiver = await self.start_with_webhooks(webhook_events="uploaded")
        receiver.hang = True
        self.server.engine.webhooks.outbox_max = 1
        await self.upload_wine()
        await self.upload(fixture("a.jpg"))
        metrics = await self.metrics()
        self.assertEqual(
            metrics[("image_server_webhook_deliveries_total", ("image.uploaded", "dropped"))], 1
        )

    async def test_a_receiver_stalling_half_way_frees_its_slot(self) -> None:
        """Headers, one byte, then nothing: the attempt times out like any other."""
        receiver = await self.start_with_webhooks(webhook_events="uploaded", webhook_timeout=1)
        receiver.stall = True
        await self.upload_wine()
        await self.wait_for(lambda: len(receiver.deliveries) >= 2, "a second attempt", tries=100)
        self.assertGreaterEqual(len(receiver.deliveries), 2)

    async def test_overload_is_not_a_processing_failure(self) -> None:
        import signal as signals

        receiver = await self.start_with_webhooks(webhook_events="failed", max_queue=0)
        await self.upload_wine()
        [pid] = self.server.pool.worker_pids()
        os.kill(pid, signals.SIGSTOP)
        waiting = ensureDeferred(request("GET", f"{self.url}/p/{WINE_DIR}/w11.jpg"))
        await self.wait_for(lambda: self.server.pool.in_flight == 1, "the job in its worker")
        refused = await request("GET", f"{self.url}/p/{WINE_DIR}/w12.jpg")
        self.assertEqual(refused.code, 503)
        os.kill(pid, signals.SIGCONT)
        await waiting
        await self.wait_for_deliveries()
        self.assertEqual(receiver.events(), [])

    async def test_batch_events_carry_the_source_and_failed_batches_send_none(self) -> None:
        receiver = await self.start_with_webhooks(webhook_events="batch_complete")
        source = SourceServer(self)
        url = source.serve("/w.jpg", fixture("wine.jpg"))
        await self.upload(b"{}", query=f"?source={url}")
        with open(self.local("p", WINE_DIR, "original"), "r+b") as original:
            original.truncate(30000)
        failed = await request("POST", f"{self.url}/p/{WINE_DIR}/process?outputs=w40.jpg")
        self.assertEqual(failed.code, 404)
        await self.wait_for_deliveries()
        self.assertEqual(
            [d["json"]["data"] for d in receiver.deliveries],
            [{"namespace": "p", "hash": WINE_HASH, "source_url": url}],
        )
        # Key order and integer types, as on the wire.
        uploaded = json.loads(receiver.deliveries[0]["body"])
        self.assertEqual(list(uploaded), ["id", "event", "timestamp", "data"])

    async def test_event_filter(self) -> None:
        receiver = await self.start_with_webhooks(webhook_events="batch_complete,nonsense")
        await self.upload(fixture("wine.jpg"), query="?outputs=w20.jpg")
        await request("POST", f"{self.url}/p/{WINE_DIR}/process?outputs=w20.jpg,w30.jpg")
        await self.wait_for_deliveries()
        self.assertEqual(receiver.events(), ["image.batch_complete"] * 2)

    async def test_no_secret_no_signature(self) -> None:
        receiver = Receiver(self)
        await self.start_server(webhook_url=receiver.url, webhook_events="uploaded")
        await self.upload_wine()
        await self.wait_for(lambda: receiver.deliveries, "the event")
        self.assertEqual(
            (receiver.deliveries[0]["signature"], receiver.deliveries[0]["timestamp"]), ("", "")
        )

    async def metrics(self) -> dict[tuple[str, tuple[str, ...]], float]:
        page = (await request("GET", f"{self.admin_url}/metrics")).body.decode()
        return {
            (sample.name, tuple(sample.labels.values())): sample.value
            for family in text_string_to_metric_families(page)
            for sample in family.samples
        }


class TimestampTests(unittest.SynchronousTestCase):
    def test_go_format(self) -> None:
        from datetime import UTC, datetime

        self.assertEqual(
            timestamp(datetime(2025, 12, 9, 15, 30, 0, tzinfo=UTC)), "2025-12-09T15:30:00Z"
        )
        self.assertEqual(
            timestamp(datetime(2025, 12, 9, 15, 30, 0, 123400, tzinfo=UTC)),
            "2025-12-09T15:30:00.1234Z",
        )


class Listener(DatagramProtocol):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def datagramReceived(self, datagram: bytes, address: Any) -> None:
        self.lines.extend(datagram.decode().splitlines())


class StatsdTests(ServerTestCase):
    async def test_lines(self) -> None:
        listener = Listener()
        port = reactor.listenUDP(0, listener, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        await self.start_server(
            enable_statsd=True, statsd_host="127.0.0.1", statsd_port=port.getHost().port
        )
        source = SourceServer(self)
        await self.upload(b"{}", query=f"?source={source.serve('/w.jpg', fixture('wine.jpg'))}")
        await self.upload(b"{}", query=f"?source={source.base}/missing.jpg")
        await request("GET", f"{self.url}/p/{WINE_DIR}/w10.webp")
        webp = "image_server.image_request.webp"
        await self.wait_for(
            lambda: any(line.startswith(webp) for line in listener.lines), "the webp counter"
        )
        counters = [line for line in listener.lines if line.endswith("|c")]
        self.assertEqual(
            sorted(counters),
            sorted(
                [
                    "image_server.original_downloaded:1|c",
                    "image_server.original_unavailable:1|c",
                    "image_server.image_request:1|c",
                    "image_server.image_request.webp:1|c",
                ]
            ),
        )
        timings = [line for line in listener.lines if line.endswith("|ms")]
        self.assertTrue(
            any(line.startswith("image_server.new_image.request_latency:") for line in timings)
        )
        self.assertTrue(
            any(line.startswith("image_server.resize_image.request_latency:") for line in timings)
        )


class MetricsAndLogTests(ServerTestCase):
    async def test_scripted_run(self) -> None:
        """After a known run, every counter says what was done."""
        await self.start_server()
        source = SourceServer(self)
        await self.upload(b"{}", query=f"?source={source.serve('/w.jpg', fixture('wine.jpg'))}")
        await self.upload(b"{}", query=f"?source={source.base}/missing.jpg")
        await request("GET", f"{self.url}/p/{WINE_DIR}/w10.webp")
        await request("GET", f"{self.url}/p/{WINE_DIR}/w10.webp")
        await request("POST", f"{self.url}/p/{WINE_DIR}/process?outputs=w10.webp,x20.jpg")
        page = (await request("GET", f"{self.admin_url}/metrics")).body.decode()
        samples = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(page)
            for sample in family.samples
        }

        def value(name: str, **labels: str) -> float:
            return samples[(name, tuple(sorted(labels.items())))]

        self.assertEqual(value("image_server_new_image_request_total"), 2)
        self.assertEqual(value("image_server_new_image_request_failed_total"), 1)
        self.assertEqual(value("image_server_fetch_source_downloaded_total"), 1)
        self.assertEqual(value("image_server_fetch_original_unavailable_total"), 1)
        self.assertEqual(
            value("image_server_source_download_bytes_total"), len(fixture("wine.jpg"))
        )
        self.assertEqual(value("image_server_source_download_seconds_count"), 1)
        self.assertEqual(
            value(
                "image_server_processing_version_ok_total",
                namespace="p",
                format="webp",
                quality="75",
            ),
            1,
        )
        self.assertEqual(
            value(
                "image_server_processing_version_ok_total",
                namespace="p",
                format="jpg",
                quality="75",
            ),
            1,
        )
        self.assertEqual(value("image_server_processing_seconds_count", format="webp"), 1)
        self.assertEqual(
            value("image_server_request_latency_seconds_count", handler="resize_image"), 2
        )
        self.assertEqual(
            value("image_server_request_latency_seconds_count", handler="resize_many"), 1
        )
        self.assertEqual(value("image_server_worker_crashes_total"), 0)
        self.assertEqual(value("image_server_workers_busy"), 0)
        for name in samples:
            for _, label_value in name[1]:
                self.assertNotIn(WINE_HASH, label_value)
                self.assertNotIn("http", label_value)

    async def test_one_access_line_per_request(self) -> None:
        seen: list[dict[str, Any]] = []

        def observe(event: dict[str, Any]) -> None:
            if event.get("log_namespace") == "imageserver.access":
                seen.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        await self.start_server()
        await self.upload_wine()
        await request("GET", f"{self.url}/p/{WINE_DIR}/original")
        await request("GET", f"{self.url}/nowhere")
        lines = [(e["method"], e["path"], e["status"]) for e in seen]
        self.assertEqual(
            lines,
            [
                ("POST", "/p", 200),
                ("GET", f"/p/{WINE_DIR}/original", 200),
                ("GET", "/nowhere", 404),
            ],
        )
        self.assertEqual(seen[1]["bytes"], len(fixture("wine.jpg")))
        self.assertTrue(all(e["seconds"] >= 0 for e in seen))
