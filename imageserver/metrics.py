"""Prometheus series (docs/metrics.md), in a registry per server.

A registry of our own, not the global one, so several servers can live in one process (the tests run
many) and ``/metrics`` shows exactly this server.  Label values are bounded: namespaces, formats and
qualities, never hashes or URLs.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable, Mapping
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

import imageserver
from imageserver.usage import read_usage

# The Go client's default buckets, which the Go server's dashboards expect.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
VARIANT_LABELS = ("namespace", "format", "quality")
# Variants: a few ms for a thumbnail of a small JPEG, seconds for AVIF from a 12 MP photo.
# With several main processes, the label that tells their series apart on the primary's page.
PROCESS_LABEL = "process"
PROCESSING_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)
# Uploads: a few ms for info.json on a LAN, up to minutes for a large original far away.
UPLOAD_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 240)


class Metrics:
    """Every series the server updates."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        build = Gauge(
            "image_server_build_info",
            "Build information (go_version holds the Python version).",
            ("go_version", "version", "git_hash", "build_timestamp"),
            registry=registry,
        )
        build.labels(
            platform.python_version(),
            imageserver.__version__,
            imageserver.GIT_HASH,
            imageserver.BUILD_TIMESTAMP,
        ).set(1)
        self.new_image = Counter(
            "image_server_new_image_request", "Uploads received.", registry=registry
        )
        self.new_image_failed = Counter(
            "image_server_new_image_request_failed", "Uploads that failed.", registry=registry
        )
        self.version_ok = Counter(
            "image_server_processing_version_ok",
            "Variants made.",
            VARIANT_LABELS,
            registry=registry,
        )
        self.version_noop = Counter(
            "image_server_processing_version_noop",
            "Variant requests that found the file made or being made.",
            VARIANT_LABELS,
            registry=registry,
        )
        self.version_failed = Counter(
            "image_server_processing_version_failed",
            "Variants that could not be made.",
            VARIANT_LABELS,
            registry=registry,
        )
        self.versions_noop = Counter(
            "image_server_processing_versions_noop",
            "Batches with nothing left to make.",
            ("namespace",),
            registry=registry,
        )
        self.upload_seconds = Histogram(
            "image_server_s3_upload_seconds",
            "Time to upload one file to the bucket.",
            buckets=UPLOAD_BUCKETS,
            registry=registry,
        )
        self.upload_failures = Counter(
            "image_server_s3_upload_failures",
            "Uploads to the bucket that failed (and will be retried), by S3 error code.",
            ("code",),
            registry=registry,
        )
        self.source_downloaded = Counter(
            "image_server_fetch_source_downloaded", "Source URLs downloaded.", registry=registry
        )
        self.original_downloaded = Counter(
            "image_server_fetch_original_downloaded",
            "Originals read back from the bucket.",
            registry=registry,
        )
        self.original_unavailable = Counter(
            "image_server_fetch_original_unavailable",
            "Originals asked for and found nowhere, or sources that could not be downloaded.",
            registry=registry,
        )
        self.original_download_skipped = Counter(
            "image_server_fetch_original_download_skipped",
            "Originals needed for a variant and already here.",
            registry=registry,
        )
        self.processing_seconds = Histogram(
            "image_server_processing_seconds",
            "Time to make one variant, queue included, by output format.",
            ("format",),
            buckets=PROCESSING_BUCKETS,
            registry=registry,
        )
        self.source_seconds = Histogram(
            "image_server_source_download_seconds",
            "Time to download a source URL.",
            buckets=UPLOAD_BUCKETS,
            registry=registry,
        )
        self.source_bytes = Counter(
            "image_server_source_download_bytes", "Bytes of source downloads.", registry=registry
        )
        self.webhook_deliveries = Counter(
            "image_server_webhook_deliveries",
            "Webhook events: delivered, failed (moved to the dead letters after"
            " --webhook-retry-for) or dropped (the oldest, from a full outbox).",
            ("event", "outcome"),
            registry=registry,
        )
        self.latency = Histogram(
            "image_server_request_latency_seconds",
            "Time spent in each handler.",
            ("handler",),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

    def watch_uploads(self, uploads: UploadState) -> None:
        """Export how many uploads are waiting to be retried."""
        self.registry.register(_UploadCollector(uploads))

    def watch_webhooks(self, webhooks: WebhookState) -> None:
        """Export the webhook outbox's depth and its oldest event's age: a receiver that is down
        shows there long before its events become dead letters."""
        self.registry.register(_WebhookCollector(webhooks))

    def watch_bucket(self, bucket: BucketState) -> None:
        """Export whether the bucket answered its last check: readiness leaves the bucket out, so
        this is where an outage shows (and can be alerted on)."""
        self.registry.register(_BucketCollector(bucket))

    def watch_pool(self, pool: PoolState) -> None:
        """Export the worker pool's live state, and the CPU and memory of its processes."""
        self.registry.register(_PoolCollector(pool))
        self.registry.register(_UsageCollector(pool))


class PoolState(Protocol):
    """What `_PoolCollector` reads from the worker pool."""

    @property
    def size(self) -> int: ...

    @property
    def in_flight(self) -> int: ...

    @property
    def queued(self) -> int: ...

    @property
    def crashes(self) -> int: ...

    def worker_pids(self) -> list[int]: ...


class UploadState(Protocol):
    @property
    def pending(self) -> int: ...


class WebhookState(Protocol):
    @property
    def depth(self) -> int: ...

    @property
    def oldest_age(self) -> float: ...


class _WebhookCollector(Collector):
    def __init__(self, webhooks: WebhookState) -> None:
        self.webhooks = webhooks

    def collect(self):  # type: ignore[no-untyped-def]
        yield GaugeMetricFamily(
            "image_server_webhook_outbox_events",
            "Webhook events in the outbox, waiting for their delivery.",
            value=self.webhooks.depth,
        )
        yield GaugeMetricFamily(
            "image_server_webhook_outbox_oldest_seconds",
            "Age of the oldest webhook event in the outbox; 0 when it is empty.",
            value=self.webhooks.oldest_age,
        )


class BucketState(Protocol):
    @property
    def reachable(self) -> bool: ...


class _BucketCollector(Collector):
    def __init__(self, bucket: BucketState) -> None:
        self.bucket = bucket

    def collect(self):  # type: ignore[no-untyped-def]
        yield GaugeMetricFamily(
            "image_server_s3_bucket_reachable",
            "1 when the bucket answered its last check, else 0 (before the first check too).",
            value=int(self.bucket.reachable),
        )


class _UploadCollector(Collector):
    def __init__(self, uploads: UploadState) -> None:
        self.uploads = uploads

    def collect(self):  # type: ignore[no-untyped-def]
        yield GaugeMetricFamily(
            "image_server_s3_uploads_pending",
            "Files written down for upload and not yet in the bucket.",
            value=self.uploads.pending,
        )


class _PoolCollector(Collector):
    def __init__(self, pool: PoolState) -> None:
        self.pool = pool

    def collect(self):  # type: ignore[no-untyped-def]
        yield GaugeMetricFamily(
            "image_server_workers", "Worker processes in the pool.", value=self.pool.size
        )
        yield GaugeMetricFamily(
            "image_server_jobs_in_flight",
            "Jobs running or waiting for a worker.",
            value=self.pool.in_flight,
        )
        yield GaugeMetricFamily(
            "image_server_queue_depth", "Jobs waiting for a worker.", value=self.pool.queued
        )
        yield GaugeMetricFamily(
            "image_server_workers_busy",
            "Workers running a job.",
            value=min(self.pool.in_flight, self.pool.size),
        )
        yield CounterMetricFamily(
            "image_server_worker_crashes",
            "Workers that died or were killed (timeout) during a job; each is replaced.",
            value=self.pool.crashes,
        )


class _UsageCollector(Collector):
    """CPU time and resident memory of the main process and of the workers, read at each scrape.

    The workers' CPU counts the live workers' own time and the time of those already replaced
    (the main process's reaped children), so a recycled worker's work is not lost.  A live
    worker's time and what its reaping adds to the main process's are rounded separately, so the
    sum could dip by a tick across a replacement: the total is kept from stepping back, as a
    counter must.
    """

    def __init__(self, pool: PoolState) -> None:
        self.pool = pool
        self._workers_cpu = 0.0

    def collect(self):  # type: ignore[no-untyped-def]
        main = read_usage()
        if main is None:  # no /proc: nothing to say
            return
        workers = [usage for usage in map(read_usage, self.pool.worker_pids()) if usage]
        workers_cpu = main.children_cpu_seconds + sum(usage.cpu_seconds for usage in workers)
        self._workers_cpu = max(self._workers_cpu, workers_cpu)
        cpu = CounterMetricFamily(
            "image_server_cpu_seconds",
            "CPU time, user and system, of the main process and of the image workers (replaced"
            " ones included).",
            labels=["process"],
        )
        cpu.add_metric(["main"], main.cpu_seconds)
        cpu.add_metric(["workers"], self._workers_cpu)
        yield cpu
        resident = [usage.resident_bytes for usage in workers]
        memory = GaugeMetricFamily(
            "image_server_resident_memory_bytes",
            "Resident memory of the main process, and of all live image workers together.",
            labels=["process"],
        )
        memory.add_metric(["main"], main.resident_bytes)
        memory.add_metric(["workers"], sum(resident))
        yield memory
        yield GaugeMetricFamily(
            "image_server_worker_resident_memory_bytes_max",
            "Resident memory of the largest live image worker.",
            value=max(resident, default=0),
        )


def merged_exposition(own: CollectorRegistry, others: Mapping[int, bytes]) -> bytes:
    """The text exposition of several main processes' series as one page: every sample labelled
    with its ``process`` (0 for ``own``, the primary's), one family per name.

    Prometheus sums them with ``sum without (process) (...)``; a gauge such as the queue depth is
    each process's own, as a counter is.
    """
    families: dict[str, Metric] = {}

    def add(index: int, collected: Iterable[Metric]) -> None:
        for family in collected:
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
            label = {PROCESS_LABEL: str(index)}
            merged.samples.extend(
                sample._replace(labels=sample.labels | label) for sample in family.samples
            )

    add(0, own.collect())
    for index, page in sorted(others.items()):
        add(index, text_string_to_metric_families(page.decode("utf-8", "replace")))
    return generate_latest(_Families(list(families.values())))


class _Families:
    """A registry-like holder of ready families, for `generate_latest`."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families
