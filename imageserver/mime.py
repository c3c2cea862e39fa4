"""Content types: by extension for variants and attachments, by magic bytes for ``original``."""

from __future__ import annotations

import mimetypes
from typing import BinaryIO

JSON = "application/json"

_BY_EXTENSION = {
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "png": "image/png",
    "gif": "image/gif",
    "webp": "image/webp",
    "avif": "image/avif",
    "heic": "image/heic",
    "heif": "image/heif",
    "tif": "image/tiff",
    "tiff": "image/tiff",
    "json": "application/json",
    "pdf": "application/pdf",
    "svg": "image/svg+xml",
    "txt": "text/plain",
}

_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"}
_AVIF_BRANDS = {b"avif", b"avis"}

# What a browser may show inline from the image origin; anything else (HTML, SVG, scripts a client
# stored as an "attachment") is served as a download, so it cannot run in the origin's context.
INLINE_TYPES = frozenset(
    {
        "image/jpeg",
        "image/png",
        "image/gif",
        "image/webp",
        "image/avif",
        "image/heic",
        "image/heif",
        "image/tiff",
        "application/json",
        "application/pdf",
        "text/plain",
    }
)

# How many leading bytes `sniff` needs.
SNIFF_BYTES = 16


def for_name(name: str) -> str:
    """A stored file's content type, from its extension (docs/api.md#storage)."""
    _, dot, extension = name.rpartition(".")
    if not dot:
        return "application/octet-stream"
    known = _BY_EXTENSION.get(extension.lower())
    return known or mimetypes.guess_type(name)[0] or "application/octet-stream"


def sniff(prefix: bytes) -> str:
    """The content type of an image from its first `SNIFF_BYTES` bytes."""
    if prefix.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if prefix.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if prefix[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if prefix[:4] == b"RIFF" and prefix[8:12] == b"WEBP":
        return "image/webp"
    if prefix[:4] in (b"II*\x00", b"MM\x00*"):
        return "image/tiff"
    if prefix[4:8] == b"ftyp":
        brand = prefix[8:12]
        if brand in _AVIF_BRANDS:
            return "image/avif"
        if brand in _HEIF_BRANDS:
            return "image/heif"
    return "application/octet-stream"


def content_type_of(name: str, path: str) -> str:
    """The content type of a stored file: sniffed for ``original``, else by its name."""
    with open(path, "rb") as stored:
        return content_type_of_open(name, stored)


def content_type_of_open(name: str, stored: BinaryIO) -> str:
    """`content_type_of` a file already open, left at its start."""
    if name == "original":
        prefix = stored.read(SNIFF_BYTES)
        stored.seek(0)
        return sniff(prefix)
    if name == "info.json":
        return JSON
    return for_name(name)
