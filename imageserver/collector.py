"""The garbage collector of the local cache (docs/scaling.md).

With a remote store, local files are a cache: a file older than ``--max_file_age`` is deleted once
the bucket is known to hold it (one listing per image directory, at deletion time) and no upload of
it is pending.  An old file the bucket lacks is queued for upload instead.  Empty directories go
too.  With no remote store there is no collector at all: the local store is the only copy.

The file work stays off the reactor's back: the store is walked, and the files to upload are read
for their type, in a thread.  Deleting stays on the reactor, where asking the upload journal and
deleting are one step that no new version of the file (and its marker) can come between, but in
slices of `SLICE` files, with the reactor free to answer requests between them.
"""

from __future__ import annotations

import contextlib
import os
from collections import defaultdict
from collections.abc import Sequence

from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall, deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from imageserver import mime, paths
from imageserver.remote import RemoteStore
from imageserver.s3 import S3Error
from imageserver.store import LocalStore, remove_quietly
from imageserver.uploader import Uploads

log = Logger()

# The Go server's tick.
INTERVAL = 120.0
# Files deleted in one turn of the reactor.
SLICE = 100


class GarbageCollector(Service):
    """Every ``interval`` seconds, deletes local files that are old and safely in the bucket."""

    def __init__(
        self,
        store: LocalStore,
        remote: RemoteStore,
        uploads: Uploads,
        max_age_minutes: int,
        reactor: IReactorTime,
        interval: float = INTERVAL,
    ) -> None:
        self.store = store
        self.remote = remote
        self.uploads = uploads
        self.max_age = max(1, max_age_minutes) * 60.0  # Go: <= 0 means one minute
        self.reactor = reactor
        self.interval = interval
        self._loop = LoopingCall(lambda: ensureDeferred(self._collect_quietly()))
        self._loop.clock = reactor

    def startService(self) -> None:
        super().startService()
        self._loop.start(self.interval, now=False)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        return None

    async def _collect_quietly(self) -> None:
        """One pass of the loop; a failure is logged, never the end of the loop."""
        try:
            await self.collect()
        except Exception:
            log.failure("garbage collection failed")

    async def collect(self) -> int:
        """One pass; returns how many files it deleted."""
        cutoff = self.reactor.seconds() - self.max_age
        old, directories = await deferToThread(_scan, self.store.base, cutoff)
        deleted = 0
        for directory, names in old.items():
            try:
                in_bucket = await self.remote.names(directory)
            except S3Error as error:
                log.warn("not collecting {path}: {error}", path=directory, error=error)
                continue
            missing = [name for name in names if name not in in_bucket]
            stored = [name for name in names if name in in_bucket]
            for start in range(0, len(stored), SLICE):
                if start:
                    await deferLater(self.reactor, 0, lambda: None)
                deleted += self._delete(directory, stored[start : start + SLICE])
            if missing:
                found = await deferToThread(_content_types, self.store.base, directory, missing)
                for name, content_type in found:
                    relative = f"{directory}/{name}"
                    if not self.uploads.is_pending(relative):
                        self.uploads.store_later(relative, content_type)
        await deferToThread(_remove_empty, self.store.base, directories)
        if deleted:
            log.info("collected {deleted} cached files", deleted=deleted)
        return deleted

    def _delete(self, directory: str, names: Sequence[str]) -> int:
        """Delete those of ``names`` (files the bucket holds) with no upload pending; how many."""
        deleted = 0
        for name in names:
            relative = f"{directory}/{name}"
            if not self.uploads.is_pending(relative):
                remove_quietly(self.store.path(relative))
                deleted += 1
        return deleted


def _scan(base: str, cutoff: float) -> tuple[dict[str, list[str]], list[str]]:
    """Files last changed before ``cutoff`` by directory, and directories unchanged since then,
    parents first (in a thread).

    ``tmp/`` and hidden directories (the upload journal) are not the cache and are skipped.
    """
    old: dict[str, list[str]] = defaultdict(list)
    quiet: list[str] = []
    for directory, subdirectories, files in os.walk(base):
        relative = os.path.relpath(directory, base)
        if relative == ".":
            subdirectories[:] = [
                d for d in subdirectories if d != paths.TMP_DIRECTORY and not d.startswith(".")
            ]
            continue
        with contextlib.suppress(FileNotFoundError):
            if os.stat(directory).st_mtime < cutoff:
                quiet.append(relative)
        for name in files:
            try:
                if os.stat(os.path.join(directory, name)).st_mtime < cutoff:
                    old[relative].append(name)
            except FileNotFoundError:
                pass
    return old, quiet


def _content_types(base: str, directory: str, names: list[str]) -> list[tuple[str, str]]:
    """Each of ``names`` in ``directory`` with its content type (in a thread: an original's is
    sniffed from its first bytes); files gone since the walk are left out."""
    found = []
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            found.append((name, mime.content_type_of(name, os.path.join(base, directory, name))))
    return found


def _remove_empty(base: str, directories: list[str]) -> None:
    """Remove those of ``directories`` that are empty now, children before parents.

    Only directories nobody wrote to for ``max_file_age`` are candidates, so one that a request is
    filling right now is left alone (and ``rmdir`` never removes a directory with anything in it).
    """
    for directory in reversed(directories):
        with contextlib.suppress(OSError):
            os.rmdir(os.path.join(base, directory))
