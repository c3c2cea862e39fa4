"""What the server does with images, apart from HTTP: ingest originals, make and find variants.

The web app and the command line both call this; it calls the store, the worker pool and the
downloader.  Concurrent requests for the same variant, or the same source URL, share one job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, fail, succeed
from twisted.python.failure import Failure

from imageserver import paths
from imageserver.coalesce import Coalescer
from imageserver.errors import BodyTooLarge, EmptyFile, InvalidParameter, NotFound
from imageserver.fetch import SourceDownloader
from imageserver.info import ImageDetails
from imageserver.metrics import Metrics
from imageserver.names import (
    INFO_JSON,
    ORIGINAL,
    RESERVED_NAMES,
    Variant,
    check_file_name,
    check_servable,
    parse_name,
)
from imageserver.processing.pool import WorkerPool
from imageserver.spool import MINIMUM_IMAGE_BYTES, Spool
from imageserver.store import LocalStore, remove_quietly


@dataclass(frozen=True)
class ImageLimits:
    default_quality: int
    maximum_width: int
    max_source_pixels: int


class Images:
    """Originals in, variants out, all through the local store."""

    def __init__(
        self,
        store: LocalStore,
        pool: WorkerPool,
        downloader: SourceDownloader,
        metrics: Metrics,
        limits: ImageLimits,
    ) -> None:
        self.store = store
        self.pool = pool
        self.downloader = downloader
        self.metrics = metrics
        self.limits = limits
        self._variants: Coalescer[str] = Coalescer()
        self._sources: Coalescer[ImageDetails] = Coalescer()

    def parse(self, name: str) -> Variant:
        return parse_name(name, self.limits.default_quality, self.limits.maximum_width)

    # Originals

    async def ingest_body(self, namespace: str, spool: Spool | None) -> ImageDetails:
        """Store an uploaded body (None when it was empty) as an original."""
        paths.check_namespace(namespace)
        if spool is None:
            raise EmptyFile()
        _check_size(spool)
        if spool.size < MINIMUM_IMAGE_BYTES:
            raise EmptyFile()
        return await self._ingest(namespace, spool)

    def ingest_url(self, namespace: str, url: str) -> Deferred[ImageDetails]:
        """Download ``url`` and store it; concurrent uploads of one URL share the download."""
        paths.check_namespace(namespace)

        async def download_and_ingest() -> ImageDetails:
            spool = await self.downloader.download(url)
            return await self._ingest(namespace, spool)

        shared, _ = self._sources.run(
            (namespace, url), lambda: ensureDeferred(download_and_ingest())
        )
        return shared

    async def _ingest(self, namespace: str, spool: Spool) -> ImageDetails:
        path = spool.claim()
        try:
            found = await self.pool.identify(path, self.limits.max_source_pixels)
            details = ImageDetails(
                spool.hexdigest, found["height"], found["width"], found["content_type"]
            )
            self.store.commit(path, paths.relative_path(namespace, details.hash, ORIGINAL))
        except BaseException:
            remove_quietly(path)
            raise
        info = paths.relative_path(namespace, details.hash, INFO_JSON)
        self.store.write(info, details.to_info_json())
        return details

    def store_attachment(
        self, namespace: str, image_hash: str, name: str, spool: Spool | None
    ) -> None:
        """Keep a client's file beside the image (SPEC §4.4), never over our own files."""
        paths.check_namespace(namespace)
        check_file_name(name)
        if name in RESERVED_NAMES:
            raise InvalidParameter(f"an attachment cannot be named {name!r}")
        relative = paths.relative_path(namespace, image_hash, name)
        if spool is None:
            self.store.write(relative, b"")
            return
        _check_size(spool)
        claimed = spool.claim()
        try:
            self.store.commit(claimed, relative)
        except BaseException:
            remove_quietly(claimed)
            raise

    # Variants

    def local_file(self, namespace: str, image_hash: str, name: str) -> str | None:
        """The path of a stored file, if it is here."""
        relative = paths.relative_path(namespace, image_hash, name)
        return self.store.path(relative) if self.store.exists(relative) else None

    def variant(self, namespace: str, image_hash: str, variant: Variant) -> Deferred[str]:
        """The path of a variant, made from the original if it does not exist yet."""
        relative = paths.relative_path(namespace, image_hash, variant.name)
        labels = (namespace, variant.extension, str(variant.quality))
        if self.store.exists(relative):
            self.metrics.version_noop.labels(*labels).inc()
            return succeed(self.store.path(relative))
        output_format = variant.output_format
        if variant.name in RESERVED_NAMES or output_format is None:
            raise NotFound(f"{relative} does not exist")
        source = paths.relative_path(namespace, image_hash, ORIGINAL)
        if not self.store.exists(source):
            raise NotFound(f"image {namespace}/{image_hash} does not exist")

        def render() -> Deferred[str]:
            return ensureDeferred(self._render(source, relative, variant, output_format, labels))

        shared, started = self._variants.run(relative, render)
        if not started:
            self.metrics.version_noop.labels(*labels).inc()
        return shared

    async def _render(
        self,
        source: str,
        relative: str,
        variant: Variant,
        output_format: str,
        labels: tuple[str, str, str],
    ) -> str:
        temporary = self.store.temporary_path(suffix="." + variant.extension)
        try:
            await self.pool.render(
                source=self.store.path(source),
                temporary=temporary,
                destination=self.store.path(relative),
                width=variant.width,
                height=variant.height,
                quality=variant.quality,
                output_format=output_format,
                max_pixels=self.limits.max_source_pixels,
                max_dimension=self.limits.maximum_width,
            )
        except BaseException:
            remove_quietly(temporary)
            self.metrics.version_failed.labels(*labels).inc()
            raise
        self.metrics.version_ok.labels(*labels).inc()
        return self.store.path(relative)

    async def make_outputs(self, namespace: str, image_hash: str, names: list[str]) -> None:
        """Make every named variant, in parallel; fail with the first error once all are done."""
        if not self.store.exists(paths.relative_path(namespace, image_hash, ORIGINAL)):
            raise NotFound(f"image {namespace}/{image_hash} does not exist")
        variants = [self.parse(name) for name in names]
        for variant in variants:
            check_servable(variant, allowed_extensions=frozenset())
        missing = [
            variant
            for variant in variants
            if not self.store.exists(paths.relative_path(namespace, image_hash, variant.name))
        ]
        if not missing:
            self.metrics.versions_noop.labels(namespace).inc()
            return
        jobs: list[Deferred[Any]] = []
        for variant in missing:
            try:
                jobs.append(self.variant(namespace, image_hash, variant))
            except Exception:
                jobs.append(fail(Failure()))
        results = await DeferredList(jobs, consumeErrors=True)
        for succeeded, result in results:
            if not succeeded:
                result.raiseException()


def _check_size(spool: Spool) -> None:
    if spool.too_large:
        raise BodyTooLarge(f"the body is over {spool.limit} bytes")
