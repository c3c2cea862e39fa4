"""The local store: ``local_base_path`` laid out as docs/api.md#storage says, written by renames.

Temporary files (upload spools, downloads, worker output) all live in ``tmp/`` under the base, on
the same filesystem as the images, so moving a finished file into place is one ``rename`` and a
reader never sees half a file.  ``tmp/`` is emptied at start-up: anything there was left by a crash
and never answered to a client.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile

from imageserver import paths

DIRECTORY_MODE = 0o700


class LocalStore:
    """Paths, existence checks and atomic writes under one base directory."""

    def __init__(self, base_path: str) -> None:
        self.base = os.path.abspath(base_path)
        self.tmp = os.path.join(self.base, paths.TMP_DIRECTORY)

    def prepare(self, empty_tmp: bool = True) -> None:
        """Create the base and ``tmp/``, emptied unless another process of the server is using
        it (a secondary main process: the primary has emptied it before starting it)."""
        if empty_tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
        os.makedirs(self.tmp, mode=DIRECTORY_MODE, exist_ok=True)

    def path(self, relative: str) -> str:
        """The absolute path of a relative store path (which callers build with `paths`)."""
        return os.path.join(self.base, relative)

    def exists(self, relative: str) -> bool:
        return os.path.isfile(self.path(relative))

    def files(self, directory: str) -> set[str]:
        """The names of the files in a relative directory (none if it does not exist)."""
        try:
            entries = os.scandir(self.path(directory))
        except FileNotFoundError:
            return set()
        with entries:
            return {entry.name for entry in entries if entry.is_file()}

    def temporary_path(self, suffix: str = "") -> str:
        """A fresh name in ``tmp/`` for a file about to be written and renamed into place."""
        fd, path = tempfile.mkstemp(dir=self.tmp, prefix="part-", suffix=suffix)
        os.close(fd)
        return path

    def temporary_name(self, suffix: str = "") -> str:
        """A fresh name in ``tmp/`` for a worker to create (no file yet: one syscall less per
        variant in the main process, and the worker creates its output anyway)."""
        return os.path.join(self.tmp, f"part-{secrets.token_hex(12)}{suffix}")

    def commit(self, temporary: str, relative: str) -> str:
        """Rename a finished temporary file to its place; return the path.

        The temporary file is gone afterwards either way: renamed, or removed on failure.
        """
        destination = self.path(relative)
        try:
            move_into_place(temporary, destination)
        except BaseException:
            remove_quietly(temporary)
            raise
        return destination

    def write(self, relative: str, data: bytes, mode: int = 0o644) -> str:
        """Write a small file (``info.json``, an attachment) atomically."""
        temporary = self.temporary_path()
        try:
            with open(temporary, "wb") as out:
                out.write(data)
            os.chmod(temporary, mode)
        except BaseException:
            remove_quietly(temporary)
            raise
        return self.commit(temporary, relative)


def move_into_place(temporary: str, destination: str) -> None:
    """Rename a finished file to its final path (same filesystem), creating its directories.

    The directory usually exists (an image's variants sit beside its original), so it is made
    only when the rename says it is missing, and tried again if the garbage collector removes
    it, empty, between the two steps.
    """
    for attempt in (1, 2, 3):
        try:
            os.replace(temporary, destination)
            return
        except FileNotFoundError:
            if attempt == 3 or not os.path.exists(temporary):
                raise
            os.makedirs(os.path.dirname(destination), mode=DIRECTORY_MODE, exist_ok=True)


def remove_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)
