"""The last 15 minutes of the server's own counters, kept in memory for the admin console's charts.

The console charts the server with no Prometheus to scrape it: every `INTERVAL` seconds the
server reads its own registry (the series ``/metrics`` shows, nothing counted twice), and the
other main processes' pages when there are several, and keeps the readings of the last `SPAN`
seconds.  Rates and latency quantiles are worked out only when
the console asks, from two readings, as Prometheus' ``rate`` and ``histogram_quantile`` would.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger()

# Seconds between readings: live enough for a chart, and a reading costs a scrape of /proc.
INTERVAL = 2.0
# What the console shows.
SPAN = 15 * 60.0
# Latency quantiles are taken over the last minute: a few seconds hold too few misses.
LATENCY_WINDOW = 60.0

# Counters, summed over every label set that matches: (sample name, labels it must have).
COUNTERS: dict[str, tuple[str, Mapping[str, str]]] = {
    "gets": ("image_server_request_latency_seconds_count", {"handler": "resize_image"}),
    "uploads": ("image_server_new_image_request_total", {}),
    "upload_failures": ("image_server_new_image_request_failed_total", {}),
    "made": ("image_server_processing_seconds_count", {}),
    "failed": ("image_server_processing_version_failed_total", {}),
    "webhooks_failed": ("image_server_webhook_deliveries_total", {"outcome": "failed"}),
    "webhooks_dropped": ("image_server_webhook_deliveries_total", {"outcome": "dropped"}),
}
# Gauges; absent ones (no bucket, no pending uploads) read as None.
GAUGES = {
    "queue": "image_server_queue_depth",
    "busy": "image_server_workers_busy",
    "workers": "image_server_workers",
    "pending_uploads": "image_server_s3_uploads_pending",
}
# The histogram of the time to make a variant, waiting for a worker included: a miss's cost.
MISS_BUCKETS = "image_server_processing_seconds_bucket"


@dataclass(frozen=True)
class Reading:
    """The registry at one moment: counter totals, gauges, and the miss histogram's cumulative
    counts by upper bound (all formats together)."""

    time: float
    counts: Mapping[str, float]
    gauges: Mapping[str, float | None]
    buckets: Sequence[tuple[float, float]]


def read(families: Iterable[Metric], now: float) -> Reading:
    """A reading of metric families: one registry's, or several processes' together (every
    counter, gauge and bucket summed over them)."""
    counts = dict.fromkeys(COUNTERS, 0.0)
    gauges: dict[str, float | None] = dict.fromkeys(GAUGES)
    gauge_keys = {name: key for key, name in GAUGES.items()}
    buckets: dict[float, float] = {}
    for family in families:
        for sample in family.samples:
            for key, (name, labels) in COUNTERS.items():
                if sample.name == name and labels.items() <= sample.labels.items():
                    counts[key] += sample.value
            if sample.name in gauge_keys:
                key = gauge_keys[sample.name]
                gauges[key] = (gauges[key] or 0.0) + sample.value
            elif sample.name == MISS_BUCKETS:
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
    return Reading(now, counts, gauges, sorted(buckets.items()))


def quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """Prometheus' ``histogram_quantile``: the ``q`` quantile of cumulative ``(bound, count)``
    buckets, interpolated linearly within its bucket; None without observations.  A quantile in
    the last, infinite bucket is the largest finite bound, as nothing better is known."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


def _difference(
    newer: Sequence[tuple[float, float]], older: Sequence[tuple[float, float]]
) -> list[tuple[float, float]]:
    before = dict(older)
    return [(bound, count - before.get(bound, 0.0)) for bound, count in newer]


class History(Service):
    """Readings of a registry every ``interval`` seconds, the last `SPAN` seconds of them.

    ``others``: the other main processes' metrics pages, added to each reading.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        clock: IReactorTime,
        interval: float = INTERVAL,
        others: Callable[[], Deferred[dict[int, bytes]]] | None = None,
    ) -> None:
        self.registry = registry
        self.others = others
        self.clock = clock
        self.interval = interval
        self.readings: deque[Reading] = deque(maxlen=int(SPAN / interval) + 1)
        self._loop = LoopingCall(self.sample)
        self._loop.clock = clock

    def startService(self) -> None:
        super().startService()
        self._loop.start(self.interval, now=True)

    def stopService(self) -> None:
        if self._loop.running:
            self._loop.stop()
        super().stopService()

    def sample(self) -> Deferred[None] | None:
        """Take a reading.  A collector that fails is logged, and the next reading tried: the
        charts must not stop for good over one bad scrape."""
        now = self.clock.seconds()
        if self.others is None:
            self._keep([], now)
            return None
        return self.others().addCallback(lambda pages: self._keep(list(pages.values()), now))

    def _keep(self, pages: list[bytes], now: float) -> None:
        """Read this registry and the other processes' `pages` as one."""
        try:
            parsed = [
                text_string_to_metric_families(page.decode("utf-8", "replace")) for page in pages
            ]
            self.readings.append(read(itertools.chain(self.registry.collect(), *parsed), now))
        except Exception:
            log.failure("could not read the metrics for the console's history")

    def series(self) -> dict[str, object]:
        """Every chart's points, one per reading after the first: ``time`` (Unix seconds) and a
        list per series, None where there is nothing to say."""
        readings = list(self.readings)
        points: dict[str, list[float | None]] = {key: [] for key in SERIES}
        for index in range(1, len(readings)):
            for key, value in _point(readings, index).items():
                points[key].append(value)
        return {"interval": self.interval, "span": SPAN, **points}


SERIES = (
    "time",
    "hits",
    "misses",
    "uploads",
    "errors",
    "p50_ms",
    "p99_ms",
    "queue",
    "busy",
    "workers",
    "pending_uploads",
    "webhook_failures",
)


def _point(readings: Sequence[Reading], index: int) -> dict[str, float | None]:
    """The values at ``readings[index]``: rates over the interval before it, quantiles over the
    `LATENCY_WINDOW` before it, gauges as read."""
    now, before = readings[index], readings[index - 1]
    seconds = now.time - before.time or 1.0

    def grown(*keys: str) -> float:
        return sum(max(0.0, now.counts[key] - before.counts[key]) for key in keys)

    # A GET of a file is a hit unless a variant had to be made (or failed to be) for it.  Variants
    # made for uploads and batches are counted as misses too, so hits are a lower bound.
    made = grown("made", "failed")
    start = index - 1
    while start > 0 and now.time - readings[start - 1].time <= LATENCY_WINDOW:
        start -= 1
    window = _difference(now.buckets, readings[start].buckets)
    p50, p99 = quantile(0.5, window), quantile(0.99, window)
    return {
        "time": now.time,
        "hits": _rounded(max(0.0, grown("gets") - made) / seconds),
        "misses": _rounded(grown("made") / seconds),
        "uploads": _rounded(grown("uploads") / seconds),
        "errors": _rounded(grown("upload_failures", "failed") / seconds),
        "p50_ms": None if p50 is None else _rounded(p50 * 1000),
        "p99_ms": None if p99 is None else _rounded(p99 * 1000),
        "queue": now.gauges["queue"],
        "busy": now.gauges["busy"],
        "workers": now.gauges["workers"],
        "pending_uploads": now.gauges["pending_uploads"],
        "webhook_failures": _rounded(grown("webhooks_failed", "webhooks_dropped") / seconds * 60),
    }


def _rounded(value: float) -> float:
    """Three decimals: the console polls the whole span every few seconds."""
    return round(value, 3)
