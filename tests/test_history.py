"""The console's in-memory history: readings of the server's own registry, rates and quantiles."""

from __future__ import annotations

from prometheus_client import generate_latest
from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.trial import unittest

from imageserver.history import INTERVAL, SPAN, History, quantile
from imageserver.metrics import Metrics

INF = float("inf")


class FakePool:
    size = 2
    in_flight = 3
    queued = 1
    crashes = 0

    def worker_pids(self) -> list[int]:
        return []


class BrokenCollector:
    def collect(self):  # type: ignore[no-untyped-def]
        raise RuntimeError("a collector's bug")


class QuantileTests(unittest.TestCase):
    def test_interpolates_within_the_bucket(self) -> None:
        # 10 observations up to 0.1 s, 10 more up to 0.5 s: as Prometheus' histogram_quantile.
        buckets = [(0.1, 10.0), (0.5, 20.0), (INF, 20.0)]
        self.assertEqual(quantile(0.5, buckets), 0.1)
        self.assertAlmostEqual(quantile(0.75, buckets) or 0, 0.3)
        self.assertAlmostEqual(quantile(0.25, buckets) or 0, 0.05)

    def test_no_observations(self) -> None:
        self.assertIsNone(quantile(0.5, [(0.1, 0.0), (INF, 0.0)]))
        self.assertIsNone(quantile(0.5, []))

    def test_beyond_the_last_bound_is_that_bound(self) -> None:
        self.assertEqual(quantile(0.99, [(0.1, 1.0), (60.0, 1.0), (INF, 5.0)]), 60.0)


class HistoryTests(unittest.TestCase):
    def setUp(self) -> None:
        self.metrics = Metrics()
        self.metrics.watch_pool(FakePool())
        self.clock = Clock()
        self.history = History(self.metrics.registry, self.clock)
        self.history.startService()
        self.addCleanup(self.history.stopService)

    def tick(self) -> None:
        self.clock.advance(INTERVAL)

    def test_rates_by_kind(self) -> None:
        metrics = self.metrics
        for _ in range(10):  # ten GETs of files, four of which made a variant and one failed
            metrics.latency.labels("resize_image").observe(0.001)
        for seconds in (0.02, 0.02, 0.02, 0.4):
            metrics.processing_seconds.labels("jpg").observe(seconds)
        metrics.version_failed.labels("p", "jpg", "75").inc()
        metrics.new_image.inc(2)
        metrics.new_image_failed.inc()
        metrics.webhook_deliveries.labels("image.uploaded", "failed").inc()
        metrics.webhook_deliveries.labels("image.uploaded", "delivered").inc(5)
        self.tick()
        series = self.history.series()
        self.assertEqual(series["time"], [INTERVAL])
        per_second = 1 / INTERVAL
        self.assertEqual(series["hits"], [5 * per_second])
        self.assertEqual(series["misses"], [4 * per_second])
        self.assertEqual(series["uploads"], [2 * per_second])
        self.assertEqual(series["errors"], [2 * per_second])
        self.assertEqual(series["webhook_failures"], [60 * per_second])
        self.assertEqual(series["p50_ms"], [20.0])  # 2 of 3 in the 0.01-0.025 s bucket
        self.assertEqual(series["p99_ms"], [490.0])
        self.assertEqual((series["queue"], series["busy"], series["workers"]), ([1], [2], [2]))
        self.assertEqual(series["pending_uploads"], [None])
        self.tick()
        series = self.history.series()
        self.assertEqual(series["hits"][1:], [0])
        self.assertEqual(series["misses"][1:], [0])
        # Quantiles cover the last minute, not only the last interval.
        self.assertEqual(series["p50_ms"], [20.0, 20.0])

    def test_keeps_fifteen_minutes(self) -> None:
        for _ in range(int(SPAN / INTERVAL) + 20):
            self.tick()
        series = self.history.series()
        self.assertEqual(len(series["time"]), int(SPAN / INTERVAL))
        times = series["time"]
        assert isinstance(times, list)
        self.assertEqual(times[-1] - times[0], SPAN - INTERVAL)

    def test_a_failing_collector_does_not_stop_the_readings(self) -> None:
        self.metrics.registry.register(BrokenCollector())  # type: ignore[arg-type]
        self.tick()
        errors = self.flushLoggedErrors(RuntimeError)
        self.assertEqual(len(errors), 1)
        self.assertTrue(self.history._loop.running)


class SeveralProcessesTests(unittest.TestCase):
    def test_the_other_processes_pages_count_too(self) -> None:
        """With several main processes, a reading adds the others' pages to this registry."""
        own, other = Metrics(), Metrics()
        clock = Clock()
        pages = {1: generate_latest(other.registry)}
        history = History(own.registry, clock, others=lambda: succeed(dict(pages)))
        history.startService()
        self.addCleanup(history.stopService)
        own.new_image.inc(2)
        other.new_image.inc(4)
        for seconds in (0.02, 0.4):
            other.processing_seconds.labels("jpg").observe(seconds)
        pages[1] = generate_latest(other.registry)
        clock.advance(INTERVAL)
        series = history.series()
        self.assertEqual(series["uploads"], [6 / INTERVAL])
        self.assertEqual(series["misses"], [2 / INTERVAL])
