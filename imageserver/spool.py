"""Bodies streamed to disk with their MD5 computed on the way, never held whole in memory.

A `Spool` is both the ``content`` of an upload request (Twisted writes each chunk into it as it
arrives) and the sink of a source download.  The file lives in the store's ``tmp/`` directory, on
the same filesystem as the store, so the finished original is renamed into place, never copied.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from typing import IO

from imageserver.store import remove_quietly

# The Go server refuses originals shorter than this as "File is empty".
MINIMUM_IMAGE_BYTES = 10


class Spool:
    """A temporary file that hashes what is written to it and stops storing past ``limit`` bytes."""

    def __init__(self, directory: str, limit: int) -> None:
        fd, self.path = tempfile.mkstemp(dir=directory, prefix="spool-")
        self._file: IO[bytes] = os.fdopen(fd, "w+b")
        self._md5 = hashlib.md5()
        self.limit = limit
        self.size = 0
        self._claimed = False

    @property
    def too_large(self) -> bool:
        return self.size > self.limit

    @property
    def hexdigest(self) -> str:
        return self._md5.hexdigest()

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.too_large:
            return  # keep counting, stop storing: the request is refused once it ends
        self._md5.update(data)
        self._file.write(data)

    # Twisted's Request reads these on the finished body.
    def tell(self) -> int:
        return self.size

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._file.seek(offset, whence)

    def read(self, size: int = -1) -> bytes:
        return self._file.read(size)

    def claim(self) -> str:
        """Close the file and hand its path over: from now on the caller deletes or renames it."""
        self._file.close()
        self._claimed = True
        return self.path

    def close(self) -> None:
        """Delete the file unless it was claimed; safe to call more than once.

        Twisted closes a request's content when the request ends or its connection is lost, so an
        unclaimed upload body never outlives its request.
        """
        self._file.close()
        if not self._claimed:
            self._claimed = True
            remove_quietly(self.path)
