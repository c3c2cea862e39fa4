"""What the console lists from the local store: namespaces, a namespace's images, an image's files.

Blocking directory walks: the admin site runs them in a thread.  A store can hold millions of
images, so a walk visits at most `SCAN_LIMIT` image directories and says when it stopped short;
a page of images reads the ``info.json`` of that page's images only.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

from imageserver import mime, paths
from imageserver.names import INFO_JSON, ORIGINAL, is_variant_name

# Image directories one listing visits at most.
SCAN_LIMIT = 100_000
_PART = re.compile(r"[a-f0-9]{3}")
_REST = re.compile(r"[a-f0-9]{23}")


@dataclass
class Budget:
    """How many more image directories a listing may visit."""

    left: int = SCAN_LIMIT

    def take(self) -> bool:
        self.left -= 1
        return self.left >= 0


def _subdirectories(path: str, pattern: re.Pattern[str]) -> list[str]:
    try:
        with os.scandir(path) as entries:
            names = [entry.name for entry in entries if entry.is_dir(follow_symlinks=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(name for name in names if pattern.fullmatch(name))


def _image_directories(base: str, namespace: str, budget: Budget) -> Iterator[tuple[str, str]]:
    """(hash, absolute directory) of each image of a namespace, until the budget runs out."""
    root = os.path.join(base, namespace)
    for first in _subdirectories(root, _PART):
        for second in _subdirectories(os.path.join(root, first), _PART):
            for third in _subdirectories(os.path.join(root, first, second), _PART):
                directory = os.path.join(root, first, second, third)
                for rest in _subdirectories(directory, _REST):
                    if not budget.take():
                        return
                    yield first + second + third + rest, os.path.join(directory, rest)


def namespaces(base: str) -> dict[str, object]:
    """The namespaces of the store and how many images each holds.  Counting shares one budget:
    the namespace where it runs out has a count that is a lower bound (``complete`` false), and
    those after it none."""
    budget = Budget()
    found = []
    for name in _subdirectories(base, paths.NAMESPACE):
        if name == paths.TMP_DIRECTORY:
            continue
        count = None
        if budget.left > 0:
            count = sum(1 for _ in _image_directories(base, name, budget))
        complete = count is not None and budget.left >= 0
        found.append({"name": name, "images": count, "complete": complete})
    return {"namespaces": found}


def images(base: str, namespace: str, page: int, per_page: int) -> dict[str, object]:
    """One page of a namespace's images, newest upload first (by ``info.json``'s time; a
    directory without one, its cache collected, by the directory's)."""
    budget = Budget()
    dated = [
        (_modified(directory), image_hash, directory)
        for image_hash, directory in _image_directories(base, namespace, budget)
    ]
    dated.sort(reverse=True)
    chosen = dated[(page - 1) * per_page : page * per_page]
    return {
        "namespace": namespace,
        "page": page,
        "per_page": per_page,
        "total": len(dated),
        "complete": budget.left >= 0,
        "images": [
            {"hash": image_hash, "modified": modified, "info": _info(directory)}
            for modified, image_hash, directory in chosen
        ],
    }


def _modified(directory: str) -> float:
    try:
        return os.stat(os.path.join(directory, INFO_JSON)).st_mtime
    except OSError:
        return os.stat(directory).st_mtime


def _info(directory: str) -> dict[str, object] | None:
    """An image's ``info.json``, or None when it is missing or not the JSON object it should be."""
    try:
        with open(os.path.join(directory, INFO_JSON), "rb") as stored:
            info = json.loads(stored.read())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def image(base: str, namespace: str, image_hash: str) -> dict[str, object] | None:
    """Everything stored here for one image: its ``info.json`` (as stored, and parsed), the
    original's type and bytes, and every file, variant or attachment, with its bytes.  None when
    the image has no directory here."""
    directory = os.path.join(base, paths.image_directory(namespace, image_hash))
    try:
        with os.scandir(directory) as entries:
            stats = [(entry.name, entry.stat()) for entry in entries if entry.is_file()]
    except (FileNotFoundError, NotADirectoryError):
        return None
    info_text = None
    with contextlib.suppress(OSError), open(os.path.join(directory, INFO_JSON), "rb") as stored:
        info_text = stored.read().decode("utf-8", "replace")
    info = _info(directory)
    files = sorted(
        (
            {"name": name, "kind": _kind(name), "bytes": stat.st_size, "modified": stat.st_mtime}
            for name, stat in stats
        ),
        key=lambda file: (_ORDER[str(file["kind"])], str(file["name"])),
    )
    original = None
    for file in files:
        if file["name"] == ORIGINAL:
            recorded = info.get("content_type") if info else None
            content_type = recorded or mime.content_type_of(
                ORIGINAL, os.path.join(directory, ORIGINAL)
            )
            original = {"content_type": content_type, "bytes": file["bytes"]}
    return {
        "namespace": namespace,
        "hash": image_hash,
        "info": info,
        "info_json": info_text,
        "original": original,
        "files": files,
    }


_ORDER = {"original": 0, "info": 1, "variant": 2, "attachment": 3}


def _kind(name: str) -> str:
    if name == ORIGINAL:
        return "original"
    if name == INFO_JSON:
        return "info"
    return "variant" if is_variant_name(name) else "attachment"
