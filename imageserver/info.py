"""Image details: what an upload answers and what ``info.json`` stores (docs/api.md#storage).

The two encodings differ on purpose: ``info.json`` is compact with no trailing newline, byte for
byte what the Go server writes, so buckets are interchangeable; the upload response is
pretty-printed like every other JSON body.
"""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class ImageDetails:
    """The four fields, in the order both encodings use."""

    hash: str
    height: int
    width: int
    content_type: str

    def as_dict(self) -> dict[str, object]:
        return {
            "hash": self.hash,
            "height": self.height,
            "width": self.width,
            "content_type": self.content_type,
        }

    def to_info_json(self) -> bytes:
        """The compact form stored as ``info.json``."""
        return json.dumps(self.as_dict(), separators=(",", ":")).encode()

    @classmethod
    def from_info_json(cls, data: bytes) -> ImageDetails:
        fields = json.loads(data)
        return cls(
            hash=str(fields["hash"]),
            height=int(fields["height"]),
            width=int(fields["width"]),
            content_type=str(fields["content_type"]),
        )
