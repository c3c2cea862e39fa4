"""Puts stored files into the remote store, and never drops one (docs/scaling.md).

Every file to upload is first written down in ``.pending/`` beside the store (a small JSON
marker per file), and crossed off only once the bucket has it.  A failed upload is retried with
jittered exponential backoff (`imageserver.backoff`), in the background, for as long as the server
runs, and again after a restart: the markers are read back at start-up.  The garbage collector keeps
any file that still has a marker.  The markers are counted in memory, so ``/metrics`` never lists
the journal; the collector asks the journal itself about a file it would delete, since another main
process of the server (docs/scaling.md#several-main-processes) may have written its marker.

A client waits for its files' upload only while the bucket is working: once a request to it goes
silent for ``--s3-timeout`` seconds, the client is answered and the file left to the background.

The bucket's refusals, a network that fails and a local file that cannot be read are expected: a
one-line warning, then the next try.  Anything else is a bug: its traceback is logged the first time
it stops a file's upload, and the upload is still retried like any other, since the file is safe in
the journal and a fixed server (or a passing cause) will deliver it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from enum import Enum
from typing import Protocol

from twisted.application.service import Service
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    DeferredLock,
    DeferredSemaphore,
    TimeoutError,
    ensureDeferred,
)
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from imageserver.backoff import Backoff
from imageserver.coalesce import shielded
from imageserver.metrics import Metrics
from imageserver.remote import RemoteStore
from imageserver.s3 import S3Error
from imageserver.store import DIRECTORY_MODE, LocalStore, remove_quietly

log = Logger()

PENDING_DIRECTORY = ".pending"
# The tries of one upload: two quick retries while a client waits (about 1 s and 4 s later), then
# in the background 1 s, 4 s, 16 s... up to five minutes apart, for ever.
QUICK_RETRIES = Backoff(longest=4.0, retries=2)
BACKGROUND_RETRIES = Backoff(longest=300.0)


class _Outcome(Enum):
    STORED = "stored"  # this version of the file is in the bucket, or there is nothing to upload
    FAILED = "failed"  # the bucket said no, or refused the connection: worth a quick retry
    SILENT = "silent"  # the bucket went silent, or no upload slot came free: a retry waits as long


class Uploads(Protocol):
    """What the rest of the server asks of an uploader (`Uploader`, or `NoUploads` without S3)."""

    def store_now(self, files: Sequence[tuple[str, str]]) -> Deferred[None]: ...

    def store_later(self, relative: str, content_type: str) -> None: ...

    def is_pending(self, relative: str) -> bool: ...


class NoUploads(Service):
    """No remote store: the local store is the only one, and nothing is uploaded."""

    def store_now(self, files: Sequence[tuple[str, str]]) -> Deferred[None]:
        return Deferred.fromCoroutine(_nothing())

    def store_later(self, relative: str, content_type: str) -> None:
        pass

    def resume(self) -> None:
        pass

    def is_pending(self, relative: str) -> bool:
        return False

    @property
    def pending(self) -> int:
        return 0


async def _nothing() -> None:
    return None


class Uploader(Service):
    """Uploads with a journal, retries and a bound on how many run at once."""

    def __init__(
        self,
        remote: RemoteStore,
        store: LocalStore,
        metrics: Metrics,
        reactor: IReactorTime,
        concurrency: int,
        timeout: float,
        quick_retries: Backoff = QUICK_RETRIES,
        background_retries: Backoff = BACKGROUND_RETRIES,
        resume: bool = True,
    ) -> None:
        """``quick_retries`` must end (a client is waiting); ``background_retries`` must not.
        ``resume``: retry what the journal holds at start (the one process that does).
        """
        self.resume_at_start = resume
        self.remote = remote
        self.store = store
        self.metrics = metrics
        self.reactor = reactor
        self.timeout = timeout
        self.quick_retries = quick_retries
        self.background_retries = background_retries
        self.journal = os.path.join(store.base, PENDING_DIRECTORY)
        # What the journal holds, kept beside it: asked on every scrape and by the collector.
        self._pending: set[str] = set()
        # Files whose upload a bug has stopped and whose traceback has been logged.
        self._reported: set[str] = set()
        # Uploads a client waits for never queue behind the background's backlog.
        self._now_slots = DeferredSemaphore(concurrency)
        self._background_slots = DeferredSemaphore(concurrency)
        self._background: dict[str, Deferred[None]] = {}
        # One upload of a key at a time, so an older version never lands after a newer one.
        self._keys: dict[str, DeferredLock] = {}

    def startService(self) -> None:
        super().startService()
        os.makedirs(self.journal, mode=DIRECTORY_MODE, exist_ok=True)
        if self.resume_at_start:
            self.resume()

    def resume(self) -> None:
        """Retry, in the background, every file of the journal not already being uploaded here:
        at start, and when another main process has ended with files still in it."""
        for relative, content_type in self._journal_entries():
            self._pending.add(relative)
            self._retry_in_background(relative, content_type)

    def stopService(self) -> Deferred[None]:
        """Stop retrying; what is still pending stays in the journal for the next start."""
        super().stopService()
        running = list(self._background.values())
        for upload in running:
            upload.cancel()
        return DeferredList(running, consumeErrors=True).addCallback(lambda _: None)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def is_pending(self, relative: str) -> bool:
        """Whether the journal holds the file: this process's count, else the journal itself."""
        return relative in self._pending or os.path.exists(self._marker(relative))

    def store_now(self, files: Sequence[tuple[str, str]]) -> Deferred[None]:
        """Upload ``(relative, content_type)`` files while a client waits.

        A few quick tries each, ended at once by a bucket gone silent; a file that still fails
        stays in the journal and goes on being retried in the background, so the caller is never
        failed, nor held for long, by the bucket: its files are safe on local disk until they are
        uploaded.
        """
        for relative, content_type in files:
            self._write_marker(relative, content_type)
        uploads = [ensureDeferred(self._upload_now(*file)) for file in files]
        done = DeferredList(uploads, consumeErrors=True).addCallback(lambda _: None)
        return shielded(done)  # a client that goes away does not stop its uploads

    def store_later(self, relative: str, content_type: str) -> None:
        """Upload in the background (a variant made by a GET)."""
        self._write_marker(relative, content_type)
        self._retry_in_background(relative, content_type, first_delay=0.0)

    async def _upload_now(self, relative: str, content_type: str) -> None:
        delays = (0.0, *self.quick_retries.delays())
        for attempt, delay in enumerate(delays, start=1):
            if delay:
                await deferLater(self.reactor, delay, lambda: None)
            last = attempt == len(delays)
            outcome = await self._try(relative, content_type, self._now_slots, last, self.timeout)
            if outcome is _Outcome.STORED:
                return
            if outcome is _Outcome.SILENT:
                break
        self._retry_in_background(relative, content_type)

    def _retry_in_background(
        self, relative: str, content_type: str, first_delay: float | None = None
    ) -> None:
        if relative in self._background or not self.running:
            return
        upload = ensureDeferred(self._keep_trying(relative, content_type, first_delay))
        self._background[relative] = upload

        def forget(_: object) -> None:
            del self._background[relative]

        upload.addBoth(forget)

    async def _keep_trying(
        self, relative: str, content_type: str, first_delay: float | None
    ) -> None:
        delays = self.background_retries.delays()
        delay = next(delays) if first_delay is None else first_delay
        while self.running:
            await deferLater(self.reactor, delay, lambda: None)
            outcome = await self._try(relative, content_type, self._background_slots, True, None)
            if outcome is _Outcome.STORED:
                return
            delay = next(delays)

    async def _try(
        self,
        relative: str,
        content_type: str,
        slots: DeferredSemaphore,
        last: bool,
        patience: float | None,
    ) -> _Outcome:
        """One upload, waiting ``patience`` seconds at most for a slot (None: as long as it
        takes); ``last`` logs an expected failure."""
        key_lock = self._keys.setdefault(relative, DeferredLock())
        await key_lock.acquire()
        try:
            return await self._put(relative, content_type, slots, patience)
        except CancelledError:
            raise  # the server is stopping; the file stays in the journal
        except (S3Error, OSError) as error:
            code = error.code if isinstance(error, S3Error) else type(error).__name__
            self.metrics.upload_failures.labels(code).inc()
            if last or code == "Timeout":
                log.warn("upload of {path} failed, will retry: {error}", path=relative, error=error)
            return _Outcome.SILENT if code == "Timeout" else _Outcome.FAILED
        except Exception as error:
            self.metrics.upload_failures.labels(type(error).__name__).inc()
            if relative not in self._reported:
                self._reported.add(relative)
                log.failure("upload of {path} failed on a bug, will retry", path=relative)
            return _Outcome.FAILED
        finally:
            key_lock.release()
            if not key_lock.locked and not key_lock.waiting:
                self._keys.pop(relative, None)

    async def _put(
        self,
        relative: str,
        content_type: str,
        slots: DeferredSemaphore,
        patience: float | None,
    ) -> _Outcome:
        before = _fingerprint(self.store.path(relative))
        if before is None:
            self._cross_off(relative)  # deleted or never written: nothing to keep
            return _Outcome.STORED
        # Slots held by requests to a silent bucket free up only as those time out, one batch
        # after another: a client would wait for all of them.
        acquiring = slots.acquire()
        if patience is not None:
            acquiring.addTimeout(patience, self.reactor)
        try:
            await acquiring
        except TimeoutError:
            return _Outcome.SILENT
        try:
            with self.metrics.upload_seconds.time():
                await self.remote.put(relative, content_type)
        finally:
            slots.release()
        if _fingerprint(self.store.path(relative)) != before:
            return _Outcome.FAILED  # replaced while it was uploading: upload the new version too
        self._cross_off(relative)
        return _Outcome.STORED

    def _marker(self, relative: str) -> str:
        return os.path.join(self.journal, hashlib.md5(relative.encode()).hexdigest() + ".json")

    def _write_marker(self, relative: str, content_type: str) -> None:
        temporary = self.store.temporary_path()
        with open(temporary, "w") as marker:
            json.dump({"relative": relative, "content_type": content_type}, marker)
        os.replace(temporary, self._marker(relative))
        self._pending.add(relative)

    def _cross_off(self, relative: str) -> None:
        remove_quietly(self._marker(relative))
        self._pending.discard(relative)
        self._reported.discard(relative)

    def _journal_entries(self) -> Iterable[tuple[str, str]]:
        for name in sorted(os.listdir(self.journal)):
            path = os.path.join(self.journal, name)
            try:
                with open(path) as marker:
                    entry = json.load(marker)
                yield str(entry["relative"]), str(entry["content_type"])
            except (OSError, ValueError, KeyError):
                log.warn("dropping an unreadable upload marker {path}", path=path)
                remove_quietly(path)


def _fingerprint(path: str) -> tuple[int, int] | None:
    """Size and modification time: what tells one version of a file from the next."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return stat.st_size, stat.st_mtime_ns
