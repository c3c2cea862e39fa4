"""What the server does with images, apart from HTTP: ingest originals, find and make variants.

The web app (and later the command line) calls this; it calls the local store, the remote store
(read-back), the uploader, the worker pool and the downloader.  Concurrent requests for the same
variant, the same remote file or the same source URL share one job.
"""

from __future__ import annotations

import contextlib
import enum
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from imageserver import mime, negotiate, paths
from imageserver.claims import Claims
from imageserver.coalesce import Coalescer
from imageserver.errors import (
    BodyTooLarge,
    EmptyFile,
    ImageServerError,
    InvalidParameter,
    NotFound,
    Overloaded,
    StorageUnavailable,
    VariantNotAllowed,
)
from imageserver.events import (
    BatchComplete,
    Events,
    NoEvents,
    SourceFetched,
    Uploaded,
    VariantFailed,
    VariantMade,
)
from imageserver.fetch import SourceDownloader
from imageserver.info import ImageDetails
from imageserver.metrics import Metrics
from imageserver.names import (
    AUTO,
    INFO_JSON,
    ORIGINAL,
    RESERVED_NAMES,
    Variant,
    check_file_name,
    check_servable,
    full_size_alias,
    is_generated,
    is_variant_name,
    parse_name,
    variant_allowed,
)
from imageserver.processing.pool import WorkerPool
from imageserver.quota import REMEMBERED_IMAGES, VariantQuota
from imageserver.recent import Recent
from imageserver.remote import RemoteStore
from imageserver.s3 import S3Error
from imageserver.spool import MINIMUM_IMAGE_BYTES, Spool
from imageserver.store import LocalStore, remove_quietly
from imageserver.uploader import Uploads

log = Logger()


class Looked(enum.Flag):
    """Where a caller has just looked for a file and not found it."""

    NOWHERE = 0
    HERE = enum.auto()
    BUCKET = enum.auto()
    EVERYWHERE = HERE | BUCKET


@dataclass(frozen=True)
class ImageLimits:
    default_quality: int
    maximum_width: int
    max_source_pixels: int
    max_variants_per_image: int = 0
    allowed_variants: tuple[str, ...] = ()


class Images:
    """Originals in, variants out; the local store in front of an optional bucket."""

    def __init__(
        self,
        store: LocalStore,
        pool: WorkerPool,
        downloader: SourceDownloader,
        metrics: Metrics,
        limits: ImageLimits,
        uploads: Uploads,
        remote: RemoteStore | None = None,
        events: Events | None = None,
        public_url: Callable[[str], str] = lambda relative: "",
        claims: Claims | None = None,
    ) -> None:
        """``claims``: with several main processes, who makes a new variant (`Claims`)."""
        self.claims = claims
        self.store = store
        self.pool = pool
        self.downloader = downloader
        self.metrics = metrics
        self.limits = limits
        self.uploads = uploads
        self.remote = remote
        self.events: Events = events or NoEvents()
        self.public_url = public_url
        self._variants: Coalescer[str] = Coalescer()
        self._sources: Coalescer[ImageDetails] = Coalescer()
        self.quota = VariantQuota(limits.max_variants_per_image, self._present)
        self._alpha: Recent[tuple[str, str], bool] = Recent(REMEMBERED_IMAGES)
        self._original_types: Recent[tuple[str, str], str] = Recent(REMEMBERED_IMAGES)

    def parse(self, name: str) -> Variant:
        return parse_name(name, self.limits.default_quality, self.limits.maximum_width)

    # Originals and attachments

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
            started = time.perf_counter()
            try:
                spool = await self.downloader.download(url)
            except ImageServerError:
                self.metrics.original_unavailable.inc()
                self.events.emit(SourceFetched(available=False))
                raise
            seconds = time.perf_counter() - started
            self.metrics.source_downloaded.inc()
            self.metrics.source_seconds.observe(seconds)
            self.metrics.source_bytes.inc(spool.size)
            self.events.emit(SourceFetched(available=True))
            return await self._ingest(namespace, spool)

        shared, _ = self._sources.run(
            (namespace, url), lambda: ensureDeferred(download_and_ingest())
        )
        return shared

    async def _ingest(self, namespace: str, spool: Spool) -> ImageDetails:
        """Identify, store locally, then store in the bucket before the client is answered."""
        path = spool.claim()
        try:
            found = await self.pool.identify(path, self.limits.max_source_pixels)
        except BaseException:
            remove_quietly(path)
            raise
        details = ImageDetails(
            spool.hexdigest, found["height"], found["width"], found["content_type"]
        )
        original = paths.relative_path(namespace, details.hash, ORIGINAL)
        info = paths.relative_path(namespace, details.hash, INFO_JSON)
        self.store.commit(path, original)
        self.store.write(info, details.to_info_json())
        await self.uploads.store_now([(original, details.content_type), (info, mime.JSON)])
        self.events.emit(
            Uploaded(
                namespace,
                details.hash,
                details.width,
                details.height,
                details.content_type,
                self.public_url(original),
            )
        )
        return details

    async def store_attachment(
        self, namespace: str, image_hash: str, name: str, spool: Spool | None
    ) -> None:
        """Keep a client's file beside the image, never over our own (docs/api.md#attachments)."""
        paths.check_namespace(namespace)
        check_file_name(name)
        if is_generated(name):
            raise InvalidParameter(
                f"an attachment cannot be named {name!r}: original, info.json and the names of"
                " variants (wN, hN, xN, WxH, full_size, with their modifiers) are the server's"
            )
        relative = paths.relative_path(namespace, image_hash, name)
        if spool is None:
            self.store.write(relative, b"")
        else:
            _check_size(spool)
            self.store.commit(spool.claim(), relative)
        await self.uploads.store_now([(relative, mime.for_name(name))])

    async def resolve(
        self,
        namespace: str,
        image_hash: str,
        name: str,
        allowed_extensions: frozenset[str],
        any_variant: bool = False,
    ) -> str:
        """The file that answers a GET for ``name``: stored here, else read back, else made.

        A stored file is served before its name is judged (as the Go server's static handler
        did), so files another version wrote, say ``x200-q0.jpg``, stay reachable; only
        ``--allowed-variants`` applies to it.  ``any_variant``: the request is signed, and may
        ask for variants the allow-list leaves out.
        """
        local = self.local_file(namespace, image_hash, name)
        if local is not None:
            self.check_stored_allowed(name, any_variant)
            return local
        return await self.obtain(namespace, image_hash, name, allowed_extensions, any_variant)

    async def obtain(
        self,
        namespace: str,
        image_hash: str,
        name: str,
        allowed_extensions: frozenset[str],
        any_variant: bool = False,
    ) -> str:
        """`resolve` for a file just found missing here: read back from the bucket, else made."""
        check_file_name(name)
        try:
            variant: Variant | None = self.parse(name)
        except InvalidParameter as error:
            variant, refusal = None, error
        if variant is not None and not variant.custom:
            check_servable(variant, allowed_extensions)
            self._check_allowed(variant, any_variant)
            return await self.variant(namespace, image_hash, variant, looked=Looked.HERE)
        # The original, info.json, an attachment, or a file made elsewhere: the bucket may have it.
        relative = paths.relative_path(namespace, image_hash, name)
        path = await self._from_bucket(relative)
        if path is not None:
            return path
        if variant is None:
            raise refusal
        check_servable(variant, allowed_extensions)
        generated = self._generated(variant)
        self._check_allowed(generated, any_variant)
        return await self.variant(namespace, image_hash, generated)

    def check_stored_allowed(self, name: str, any_variant: bool) -> None:
        """`_check_allowed` for a file found stored: only names of the variant grammar are
        variants (the original, ``info.json`` and attachments are not)."""
        if self.limits.allowed_variants and not any_variant and is_variant_name(name):
            with contextlib.suppress(InvalidParameter):  # a file of another version's grammar
                self._check_allowed(self.parse(name), any_variant)

    def _check_allowed(self, variant: Variant, any_variant: bool) -> None:
        """Refuse a variant ``--allowed-variants`` leaves out, unless the request is signed."""
        patterns = self.limits.allowed_variants
        if not any_variant and not variant.custom and not variant_allowed(variant, patterns):
            raise VariantNotAllowed(
                f"{variant.name}: this server makes only the variants of"
                f" --allowed-variants ({','.join(patterns)})"
            )

    async def negotiate(
        self,
        namespace: str,
        image_hash: str,
        name: str,
        accept: str,
        allowed_extensions: frozenset[str],
    ) -> str:
        """The concrete name an ``.auto`` name stands for in a request with this ``Accept``:
        AVIF, else WebP, else JPEG, or PNG when the original has alpha."""
        variant = self.parse(name)
        check_servable(variant, allowed_extensions)
        extension = negotiate.preferred_extension(accept, allowed_extensions)
        if extension is None:
            alpha = await self._has_alpha(namespace, image_hash)
            extension = negotiate.fallback_extension(alpha, allowed_extensions)
        if extension is None:
            raise NotFound("image not available: --extensions allows no format for .auto")
        return variant.in_format(extension).name

    async def _has_alpha(self, namespace: str, image_hash: str) -> bool:
        """Whether an original has alpha; asked of a worker once, then remembered."""
        key = (namespace, image_hash)
        alpha = self._alpha.get(key)
        if alpha is None:
            await self._ensure_original(namespace, image_hash)
            original = self.store.path(paths.relative_path(namespace, image_hash, ORIGINAL))
            alpha = bool((await self.pool.inspect(original))["alpha"])
            self._alpha[key] = alpha
        return alpha

    def _generated(self, variant: Variant) -> Variant:
        """The variant that is made and stored for ``variant``: for a made-up name of a format
        we write (``photo.png``), that format's ``full_size``, served under any such name."""
        alias = full_size_alias(variant)
        return variant if alias is None else self.parse(alias)

    def known_type(self, namespace: str, image_hash: str, name: str) -> str | None:
        """A stored file's content type when it is known without reading the file: an original's,
        as its ``info.json`` records it, read once and then remembered (an original never changes:
        its name is its hash).  None for anything else, and for an original without a readable
        ``info.json``, whose first bytes tell."""
        if name != ORIGINAL:
            return None
        key = (namespace, image_hash)
        known = self._original_types.get(key)
        if known is None:
            info = self.store.path(paths.relative_path(namespace, image_hash, INFO_JSON))
            try:
                with open(info, "rb") as stored:
                    known = ImageDetails.from_info_json(stored.read()).content_type
            except (OSError, ValueError, KeyError, TypeError):
                return None
            self._original_types[key] = known
        return known

    def local_file(self, namespace: str, image_hash: str, name: str) -> str | None:
        """The path of a file stored here; None when it is not, or ``name`` is no file name."""
        try:
            check_file_name(name)
        except InvalidParameter:
            return None
        relative = paths.relative_path(namespace, image_hash, name)
        return self.store.path(relative) if self.store.exists(relative) else None

    async def _from_bucket(self, relative: str) -> str | None:
        """Read a file missing here back from the bucket; its local path, or None."""
        if self.remote is None:
            return None
        try:
            found = await self.remote.fetch(relative)
        except S3Error as error:
            raise StorageUnavailable(f"{relative} is not here and {error}") from error
        if found and relative.endswith("/" + ORIGINAL):
            self.metrics.original_downloaded.inc()
        return self.store.path(relative) if found else None

    # Variants

    def variant(
        self,
        namespace: str,
        image_hash: str,
        variant: Variant,
        looked: Looked = Looked.NOWHERE,
        upload_later: bool = True,
    ) -> Deferred[str]:
        """The path of a variant: local, else from the bucket, else made from the original.

        ``looked`` says where the caller has just found it missing, so it is not asked again.
        A variant made for a GET is uploaded in the background (``upload_later``); a batch
        uploads what it made itself, before it answers.
        """
        relative = paths.relative_path(namespace, image_hash, variant.name)
        labels = (namespace, variant.extension, str(variant.quality))
        if Looked.HERE not in looked and self.store.exists(relative):
            self.metrics.version_noop.labels(*labels).inc()
            return succeed(self.store.path(relative))
        output_format = variant.output_format
        if variant.name in RESERVED_NAMES or output_format is None:
            raise NotFound(f"{relative} does not exist")

        async def obtain() -> str:
            if Looked.BUCKET not in looked and await self._read_back(relative):
                self.metrics.version_noop.labels(*labels).inc()
                return self.store.path(relative)
            await self._ensure_original(namespace, image_hash)
            directory = paths.image_directory(namespace, image_hash)
            await self.quota.admit(directory, variant.name)
            render = partial(self._render, namespace, image_hash, variant, output_format, labels)
            try:
                if self.claims is None:
                    path: str | None = await render()
                else:  # None when another main process has made it meanwhile
                    path = await self.claims.run(
                        relative, partial(self.store.exists, relative), render
                    )
            except BaseException:
                self.quota.give_back(directory)
                raise
            if path is None:  # another main process made it, and uploads it
                self.metrics.version_noop.labels(*labels).inc()
                return self.store.path(relative)
            if upload_later:
                self.uploads.store_later(relative, mime.for_name(variant.name))
            return path

        shared, started = self._variants.run(relative, lambda: ensureDeferred(obtain()))
        if not started:
            self.metrics.version_noop.labels(*labels).inc()
        return shared

    async def _read_back(self, relative: str) -> bool:
        """Whether a variant could be read back; with the bucket out of reach, make it here."""
        try:
            return await self._from_bucket(relative) is not None
        except StorageUnavailable as error:
            log.warn(
                "making {relative} without looking in the bucket: {error}",
                relative=relative,
                error=error.message,
            )
            return False

    async def _ensure_original(self, namespace: str, image_hash: str) -> None:
        """Have the original here, and mark it used so the collector leaves it for a while."""
        relative = paths.relative_path(namespace, image_hash, ORIGINAL)
        if self.store.exists(relative):
            self.metrics.original_download_skipped.inc()
            path: str | None = self.store.path(relative)
        else:
            path = await self._from_bucket(relative)
        if path is None:
            self.metrics.original_unavailable.inc()
            raise NotFound(f"image {namespace}/{image_hash} does not exist")
        if self.remote is not None:
            os.utime(path)

    async def _render(
        self,
        namespace: str,
        image_hash: str,
        variant: Variant,
        output_format: str,
        labels: tuple[str, str, str],
    ) -> str:
        relative = paths.relative_path(namespace, image_hash, variant.name)
        source = paths.relative_path(namespace, image_hash, ORIGINAL)
        temporary = self.store.temporary_name(suffix="." + variant.extension)
        started = time.perf_counter()
        try:
            made = await self.pool.render(
                source=self.store.path(source),
                temporary=temporary,
                destination=self.store.path(relative),
                name=variant.name,
                default_quality=self.limits.default_quality,
                max_pixels=self.limits.max_source_pixels,
                max_dimension=self.limits.maximum_width,
            )
        except Overloaded:
            remove_quietly(temporary)  # not a failure of this image: the client may retry
            raise
        except BaseException as error:
            remove_quietly(temporary)
            self.metrics.version_failed.labels(*labels).inc()
            message = error.message if isinstance(error, ImageServerError) else repr(error)
            self.events.emit(
                VariantFailed(namespace, image_hash, variant.name, variant.extension, message)
            )
            raise
        self.metrics.processing_seconds.labels(variant.extension).observe(
            time.perf_counter() - started
        )
        self.metrics.version_ok.labels(*labels).inc()
        self.events.emit(
            VariantMade(
                namespace,
                image_hash,
                variant.name,
                variant.extension,
                made["width"],
                made["height"],
                variant.quality,
                self.public_url(relative),
            )
        )
        return self.store.path(relative)

    async def make_outputs(
        self,
        namespace: str,
        image_hash: str,
        names: Sequence[str],
        source_url: str = "",
        any_variant: bool = False,
    ) -> None:
        """Make every named variant the store lacks, in parallel, then store them in the bucket.

        "Lacks" is judged by the bucket's listing when there is one (a file only local is
        uploaded), else by the local store.  The first error is raised once all jobs are done;
        a batch that succeeds ends with a ``batch_complete`` event.
        """
        await self._make_outputs(namespace, image_hash, names, any_variant)
        self.events.emit(BatchComplete(namespace, image_hash, source_url))

    async def _make_outputs(
        self, namespace: str, image_hash: str, names: Sequence[str], any_variant: bool
    ) -> None:
        await self._ensure_original(namespace, image_hash)
        if not names:
            self.metrics.versions_noop.labels(namespace).inc()
            return
        generated = (self._generated(self.parse(name)) for name in names)
        variants = list({variant.name: variant for variant in generated}.values())  # aliases once
        for variant in variants:
            if variant.extension == AUTO:
                raise InvalidParameter(
                    f"{variant.name}: .auto is chosen per request; name a format"
                    f" ({variant.stem}.avif, {variant.stem}.webp, {variant.stem}.jpg)"
                )
            check_servable(variant, allowed_extensions=frozenset())
            self._check_allowed(variant, any_variant)
        present = await self._present(paths.image_directory(namespace, image_hash))
        missing = [variant for variant in variants if variant.name not in present]
        if not missing:
            self.metrics.versions_noop.labels(namespace).inc()
            return
        jobs: list[Deferred[Any]] = []
        for variant in missing:
            try:
                job = self.variant(
                    namespace, image_hash, variant, looked=Looked.BUCKET, upload_later=False
                )
                jobs.append(job)
            except Exception:
                jobs.append(fail(Failure()))
        results = await DeferredList(jobs, consumeErrors=True)
        directory = paths.image_directory(namespace, image_hash)
        made = [
            (f"{directory}/{variant.name}", mime.for_name(variant.name))
            for variant, (succeeded, _) in zip(missing, results, strict=True)
            if succeeded
        ]
        failures = [result for succeeded, result in results if not succeeded]
        if failures:
            # The client hears of the failure now; what was made still reaches the bucket.
            for relative, content_type in made:
                self.uploads.store_later(relative, content_type)
            failures[0].raiseException()
        await self.uploads.store_now(made)

    async def _present(self, directory: str) -> set[str]:
        """The names of an image's files in the bucket, or locally when there is no bucket."""
        if self.remote is None:
            return self.store.files(directory)
        try:
            return await self.remote.names(directory)
        except S3Error as error:
            # Make what is asked for; the uploads wait in the journal until the bucket is back.
            log.warn("cannot list {directory}: {error}", directory=directory, error=error)
            return set()


def _check_size(spool: Spool) -> None:
    if spool.too_large:
        raise BodyTooLarge.over(spool.limit)
