"""Which codec a HEIF file's images are coded with, read from its boxes, not its brand.

The ``ftyp`` brand says little: ``mif1`` is the generic brand of every HEIF file, AVIF and HEIC
alike, and libvips reports ``heif-compression=hevc`` for an AVIF whose major brand is ``mif1``.
What decides it is the codec configuration box among the item properties (``meta`` > ``iprp`` >
``ipco``): ``hvcC`` for HEVC, ``av1C`` for AV1.  Pure: bytes in, a name out.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

# Enough of a file's start for its ``meta`` box, which writers put before the pixel data.
HEAD_BYTES = 256 * 1024

_CODECS = {b"hvcC": "hevc", b"av1C": "av1"}
# Boxes holding boxes, and how many bytes of version and flags come before their children.
_CONTAINERS = {b"meta": 4, b"iprp": 0, b"ipco": 0}


def heif_codec(head: bytes) -> str | None:
    """``"hevc"``, ``"av1"``, or None when the boxes name neither (or do not parse).

    HEVC wins when a file has both (an AV1 thumbnail of an HEVC image): it is the codec that
    needs pi-heif.
    """
    found = {_CODECS[kind] for kind in _property_boxes(head) if kind in _CODECS}
    if "hevc" in found:
        return "hevc"
    return "av1" if "av1" in found else None


def _property_boxes(data: bytes) -> Iterator[bytes]:
    """The types of the boxes inside ``meta`` > ``iprp`` > ``ipco``."""
    for kind, body in _boxes(data):
        if kind == b"meta":
            for inner_kind, inner in _boxes(body[_CONTAINERS[b"meta"] :]):
                if inner_kind == b"iprp":
                    for properties_kind, properties in _boxes(inner):
                        if properties_kind == b"ipco":
                            yield from (box_kind for box_kind, _ in _boxes(properties))


def _boxes(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(type, body) of each box in ``data``, stopping at the first that does not fit."""
    offset = 0
    while offset + 8 <= len(data):
        size, kind = struct.unpack_from(">I4s", data, offset)
        header = 8
        if size == 1 and offset + 16 <= len(data):  # a 64-bit size follows
            size = struct.unpack_from(">Q", data, offset + 8)[0]
            header = 16
        elif size == 0:  # to the end of the file
            size = len(data) - offset
        if size < header:
            return
        yield kind, data[offset + header : offset + size]
        offset += size
