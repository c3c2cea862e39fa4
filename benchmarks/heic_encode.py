"""Encode raw RGB pixels to HEIC with pillow-heif: run by ``benchmarks/.tools-venv``'s Python.

A separate script because pillow-heif (GPL wheels with x265) is not in the project's virtualenv:
the project only decodes HEVC, through pi-heif.  Usage: heic_encode.py RAW OUT WIDTH HEIGHT.
"""

from __future__ import annotations

import sys

import pillow_heif

QUALITY = 80  # about what a phone writes


def main(argv: list[str]) -> None:
    raw, destination, width, height = argv[1], argv[2], int(argv[3]), int(argv[4])
    with open(raw, "rb") as file:
        pixels = file.read()
    heif = pillow_heif.from_bytes(mode="RGB", size=(width, height), data=pixels)
    heif.save(destination, quality=QUALITY)


if __name__ == "__main__":
    main(sys.argv)
