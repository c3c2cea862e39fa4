"""``image-server cli PATH``: store an image, or a directory of them, and make their outputs.

Each file goes through the same steps as an upload (identified by a worker, stored in the local
layout, uploaded when a bucket is configured) and its ``--outputs`` are made by the same worker
pool, several files at once.  Files that are not images at all are skipped with a warning; images
that fail are reported, and make the command fail.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from twisted.internet.defer import DeferredSemaphore, gatherResults
from twisted.internet.threads import deferToThread

from imageserver import mime
from imageserver.errors import ImageServerError
from imageserver.images import Images
from imageserver.info import ImageDetails
from imageserver.spool import Spool

# Bytes read at a time when copying a file into the store.
CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Outcome:
    """What became of one file: its details, or why it failed, or that it was not an image."""

    path: str
    details: ImageDetails | None = None
    error: str = ""
    skipped: bool = False

    def line(self) -> str:
        """``hash<TAB>path<TAB>width<TAB>height`` for a stored image."""
        assert self.details is not None
        details = self.details
        return f"{details.hash}\t{self.path}\t{details.width}\t{details.height}"


def find_files(root: str) -> list[str]:
    """``root`` itself, or every file below it (hidden ones aside), in a stable order."""
    if not os.path.isdir(root):
        return [root]
    found: list[str] = []
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = sorted(d for d in subdirectories if not d.startswith("."))
        found.extend(os.path.join(directory, name) for name in sorted(files) if name[0] != ".")
    return found


def looks_like_an_image(path: str) -> bool:
    """Whether a file starts like an image we read (so a failure is an error, not a skip)."""
    with open(path, "rb") as f:
        return mime.sniff(f.read(mime.SNIFF_BYTES)).startswith("image/")


async def store_all(
    images: Images,
    paths: Sequence[str],
    namespace: str,
    outputs: Sequence[str],
    parallel: int,
    progress: Callable[[Outcome], None],
) -> list[Outcome]:
    """Store every file, ``parallel`` at a time; outcomes in the order of ``paths``."""
    slots = DeferredSemaphore(parallel)

    async def one(path: str) -> Outcome:
        outcome = await _store(images, path, namespace, outputs)
        progress(outcome)
        return outcome

    jobs = [slots.run(one, path) for path in paths]
    outcomes: list[Outcome] = await gatherResults(jobs)
    return outcomes


async def _store(images: Images, path: str, namespace: str, outputs: Sequence[str]) -> Outcome:
    try:
        if not os.path.isfile(path):  # a FIFO, a socket, a device: never opened
            return Outcome(path, skipped=True, error="not a regular file")
        if not await deferToThread(looks_like_an_image, path):
            return Outcome(path, skipped=True, error="not an image")
        spool = await deferToThread(_spool, path, images.store.tmp)
        try:
            details = await images.ingest_body(namespace, spool)
        finally:
            spool.close()
        await images.make_outputs(namespace, details.hash, list(outputs))
    except ImageServerError as error:
        return Outcome(path, error=error.message)
    except OSError as error:
        return Outcome(path, error=error.strerror or str(error))
    return Outcome(path, details)


def _spool(path: str, directory: str) -> Spool:
    """Copy a file into a spool in the store's ``tmp/`` (in a thread), hashing it on the way."""
    spool = Spool(directory, limit=os.path.getsize(path))
    try:
        with open(path, "rb") as source:
            while chunk := source.read(CHUNK):
                spool.write(chunk)
    except BaseException:
        spool.close()
        raise
    return spool
