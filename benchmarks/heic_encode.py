"""Encode raw RGB pixels to HEIC with pillow-heif: run by ``benchmarks/.tools-venv``'s Python.

A separate script because pillow-heif (GPL wheels with x265) is not in the project's virtualenv:
the project only decodes HEVC, through pi-heif.  Usage: heic_encode.py RAW OUT WIDTH HEIGHT.

The file is laid out as an iPhone writes its photos, since that layout decides what a server can
skip: a grid of 512x512 HEVC tiles (a 12 MP photo is 8x6 of them) and a 320-pixel embedded
thumbnail (320x240 for 4:3).

The thumbnail is downscaled with a Lanczos filter, as a phone's is.  libheif (behind
pillow-heif's ``thumbnails=``) scales with nearest neighbour, whose aliasing a phone's thumbnail
does not have; so pillow-heif's grid writer (version 1.8, as the tools venv installs it) is given
the filtered thumbnail with every pixel doubled, which libheif's halving by nearest neighbour
gives back exactly.  (Made one pixel larger and trimmed by libheif instead, it came out 28 dB
from a whole decode scaled by libvips, against 35 dB for the same thumbnail made exactly.)
"""

from __future__ import annotations

import sys
from typing import Any

import pillow_heif
from PIL import Image
from pillow_heif import misc

QUALITY = 80  # about what a phone writes
TILE_SIZE = 512  # an iPhone's grid tiles
THUMBNAIL = 320  # the longer side of an iPhone's embedded thumbnail


def _filtered_thumbnail(size: tuple[int, int], mode: str, data: bytes) -> tuple[int, int, bytes]:
    """The image scaled with Lanczos into the `THUMBNAIL` box, every pixel doubled; its size."""
    scale = THUMBNAIL / max(size)
    small = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
    image = Image.frombytes(mode, size, data).resize(small, Image.Resampling.LANCZOS)
    doubled = image.resize((2 * small[0], 2 * small[1]), Image.Resampling.NEAREST)
    return doubled.width, doubled.height, doubled.tobytes()


def _add_grid_with_filtered_thumbnail(
    self: Any, size: tuple[int, int], mode: str, data: bytes, tile_size: int, **kwargs: Any
) -> None:
    """pillow-heif's grid writer without its thumbnail, then the filtered one."""
    kwargs.pop("thumbnails", None)
    _add_image_grid(self, size, mode, data, tile_size, **kwargs)
    grid = self._grid_images[-1]
    width, height, pixels = _filtered_thumbnail(size, mode, data)
    image = self.ctx_write.create_image(
        (width, height), misc.MODE_INFO[mode][2], misc.MODE_INFO[mode][3], 0
    )
    misc._add_planes(image, (width, height), mode, pixels, 0, misc._output_bit_depth(mode))
    grid.encode_thumbnail(self.ctx_write, THUMBNAIL, 1, image)


_add_image_grid = misc.CtxEncode._add_image_grid


def main(argv: list[str]) -> None:
    raw, destination, width, height = argv[1], argv[2], int(argv[3]), int(argv[4])
    with open(raw, "rb") as file:
        pixels = file.read()
    misc.CtxEncode._add_image_grid = _add_grid_with_filtered_thumbnail
    heif = pillow_heif.from_bytes(mode="RGB", size=(width, height), data=pixels)
    heif.save(destination, quality=QUALITY, tile_size=TILE_SIZE)


if __name__ == "__main__":
    main(sys.argv)
