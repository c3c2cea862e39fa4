"""The remote store: the S3 client seen through the storage layout (docs/api.md#storage).

Keys are ``remote_base_path`` joined to the same relative paths as the local store, so a bucket
written by the Go server reads here and the other way round.  Reading back is coalesced: many
requests for one missing file make one GET.
"""

from __future__ import annotations

import posixpath

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from imageserver import paths
from imageserver.coalesce import Coalescer
from imageserver.names import ORIGINAL, cache_control
from imageserver.s3 import S3Client, S3Error
from imageserver.spool import Spool
from imageserver.store import LocalStore

log = Logger()

# Read-backs are not size-limited by the upload limit: what is in the bucket was accepted once.
READ_BACK_LIMIT = 2**40
# Seconds between checks that the bucket answers (for /probe/ready's body and /metrics).
CHECK_INTERVAL = 10.0
REACHABLE = "reachable"


class RemoteStore:
    """Files of the local layout, kept in a bucket."""

    def __init__(self, client: S3Client, base_path: str, store: LocalStore) -> None:
        self.client = client
        self.base_path = base_path
        self.store = store
        # "reachable", "unreachable: <why>", or "unchecked" until the first check is done.
        self.state = "unchecked"
        self._reads: Coalescer[bool] = Coalescer()
        self._checker = LoopingCall(self._check_now)
        self._checking: Deferred[None] | None = None

    @property
    def reachable(self) -> bool:
        return self.state == REACHABLE

    def key(self, relative: str) -> str:
        return paths.remote_key(self.base_path, relative)

    def start_checking(self, interval: float = CHECK_INTERVAL) -> None:
        self._checker.start(interval, now=True)

    def stop_checking(self) -> None:
        """Stop checking, and cut a check in flight short (a silent bucket would hold it)."""
        if self._checker.running:
            self._checker.stop()
        if self._checking is not None:
            self._checking.cancel()

    def _check_now(self) -> Deferred[None]:
        self._checking = ensureDeferred(self.check())
        return self._checking

    async def check(self) -> None:
        """Note whether the bucket answers; log when that changes."""
        try:
            await self.client.check()
        except CancelledError:
            return  # stopping: the bucket's state is unknown, not changed
        except Exception as error:  # S3Error, or anything else: never stop checking
            if not self.state.startswith("unreachable"):
                log.error("the bucket cannot be reached: {error}", error=error)
            self.state = f"unreachable: {error}"
        else:
            if not self.reachable:
                log.info("the bucket {bucket} answers", bucket=self.client.bucket.name)
            self.state = REACHABLE

    def fetch(self, relative: str) -> Deferred[bool]:
        """Copy a file from the bucket into the local store; False when the bucket lacks it."""
        shared, _ = self._reads.run(relative, lambda: ensureDeferred(self._fetch(relative)))
        return shared

    async def _fetch(self, relative: str) -> bool:
        spool = Spool(self.store.tmp, READ_BACK_LIMIT)
        try:
            if not await self.client.get_into(self.key(relative), spool):
                return False
            directory, _, name = relative.rpartition("/")
            if name == ORIGINAL and spool.hexdigest != directory.split("/", 1)[1].replace("/", ""):
                raise S3Error(0, "Corrupt", f"{relative} does not match its hash")
            if self.store.exists(relative):
                return True  # written here while we read (a new attachment): keep the newer file
            self.store.commit(spool.claim(), relative)
            return True
        finally:
            spool.close()

    async def put(self, relative: str, content_type: str) -> None:
        cache = cache_control(posixpath.basename(relative))
        await self.client.put_file(
            self.key(relative), self.store.path(relative), content_type, cache
        )

    async def names(self, directory: str) -> set[str]:
        """The file names the bucket holds in one image directory."""
        keys = await self.client.list_keys(self.key(directory) + "/", delimiter="/")
        return {posixpath.basename(key) for key in keys}
