"""One job for a new variant across the server's main processes
(docs/scaling.md#several-main-processes).

Within a process the `Coalescer` gives concurrent requests for one variant one job.  Several main
processes each have their own, so the first to want a variant also claims it on disk: a claim is a
file named by the variant in the store's ``tmp/claims/``, created exclusively and holding its
process's id.  Another process that finds the claim waits for the variant's file to appear, and
makes the variant itself only if the claim goes away without it (the job failed) or its process
has ended (a claim left by a crash), or if it has waited longer than a job may take.

Only a server of several main processes has claims: with one, the `Coalescer` is enough and no
file is written.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Awaitable, Callable
from typing import TypeVar

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

from imageserver.store import DIRECTORY_MODE, remove_quietly

T = TypeVar("T")

CLAIMS_DIRECTORY = "claims"
# How often a waiting process looks for the variant: a tenth of a small thumbnail's time.
POLL_SECONDS = 0.02


class Claims:
    """Claims in ``directory``, waited on for at most ``patience`` seconds."""

    def __init__(
        self, directory: str, clock: IReactorTime, patience: float, pid: int | None = None
    ) -> None:
        """``pid``: this process's id (another for a test standing for another process)."""
        self.directory = directory
        self.clock = clock
        self.patience = patience
        self.pid = os.getpid() if pid is None else pid

    async def run(
        self, key: str, exists: Callable[[], bool], make: Callable[[], Awaitable[T]]
    ) -> T | None:
        """``make()`` under the claim of ``key``, unless another process makes it: then None,
        once ``exists()``.  ``exists()`` is asked again once the claim is held, since another
        process may have finished between the look and the claim."""
        while True:
            if self._take(key):
                try:
                    return None if exists() else await make()
                finally:
                    self._release(key)
            if await self._made_elsewhere(key, exists):
                return None

    async def _made_elsewhere(self, key: str, exists: Callable[[], bool]) -> bool:
        """Wait while another process holds the claim: True once the variant exists, False when
        the claim is free again (gone, left by an ended process, or held too long)."""
        deadline = self.clock.seconds() + self.patience
        while self.clock.seconds() < deadline:
            await deferLater(self.clock, POLL_SECONDS, lambda: None)
            if exists():
                return True
            holder = self._holder(key)
            if holder is None:
                return False
            if not _alive(holder):
                remove_quietly(self._path(key))
                return False
        remove_quietly(self._path(key))  # a job stuck longer than a job may run
        return False

    def _take(self, key: str) -> bool:
        """Create the claim, if no one holds it."""
        path, flags = self._path(key), os.O_WRONLY | os.O_CREAT | os.O_EXCL
        try:
            try:
                claim = os.open(path, flags, 0o600)
            except FileNotFoundError:  # the first claim since tmp/ was emptied
                os.makedirs(self.directory, mode=DIRECTORY_MODE, exist_ok=True)
                claim = os.open(path, flags, 0o600)
        except FileExistsError:
            return False
        with os.fdopen(claim, "w") as written:
            written.write(str(self.pid))
        return True

    def _release(self, key: str) -> None:
        """Remove the claim if it is still this process's: one taken over from it (held too
        long) is the other process's now."""
        if self._holder(key) == self.pid:
            remove_quietly(self._path(key))

    def _holder(self, key: str) -> int | None:
        """The process id in the claim; None when there is no claim.  A claim being written (no
        id yet) counts as held by a live process."""
        try:
            with open(self._path(key)) as claim:
                text = claim.read()
        except FileNotFoundError:
            return None
        return int(text) if text.isdigit() else os.getpid()  # alive: waited on

    def _path(self, key: str) -> str:
        return os.path.join(self.directory, hashlib.md5(key.encode()).hexdigest())


def _alive(pid: int) -> bool:
    """Whether a process with that id runs (or has ended and is not yet reaped, for a moment)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
