"""HEVC or AV1 is read from a HEIF file's boxes, whatever its brand says."""

from __future__ import annotations

import os

import pyvips
from twisted.trial.unittest import SynchronousTestCase

from imageserver.heif import heif_codec
from imageserver.paths import image_directory
from tests.support import ServerTestCase, fixture, image_size, request


def avif(brand: bytes = b"avif") -> bytes:
    """A small AVIF (AV1) whose ftyp major brand is ``brand``."""
    image = pyvips.Image.new_from_buffer(fixture("wine.jpg"), "").thumbnail_image(64)
    data = bytearray(image.heifsave_buffer(compression="av1", effort=0))
    assert data[4:12] == b"ftypavif"
    data[8:12] = brand
    return bytes(data)


def rebranded_heic(brand: bytes) -> bytes:
    data = bytearray(fixture("wine.heic"))
    assert data[4:12] == b"ftypheic"
    data[8:12] = brand
    return bytes(data)


class CodecTests(SynchronousTestCase):
    def test_the_boxes_decide(self) -> None:
        self.assertEqual(heif_codec(fixture("wine.heic")), "hevc")
        self.assertEqual(heif_codec(rebranded_heic(b"mif1")), "hevc")
        self.assertEqual(heif_codec(avif()), "av1")
        self.assertEqual(heif_codec(avif(b"mif1")), "av1")

    def test_what_does_not_parse_names_nothing(self) -> None:
        for data in (
            b"",
            b"\x00\x00\x00\x01ftyp",
            os.urandom(300),
            avif()[:40],
            fixture("wine.jpg"),
        ):
            self.assertIsNone(heif_codec(data))


class BrandTests(ServerTestCase):
    async def test_an_avif_branded_mif1_is_an_avif(self) -> None:
        """libvips calls it HEVC by its brand, which sent it to pi-heif and had it refused."""
        await self.start_server()
        for body in (avif(b"mif1"), avif()):
            response = await self.upload(body)
            self.assertEqual(response.code, 200, response.body)
            self.assertEqual(response.json()["content_type"], "image/avif")
            directory = image_directory("p", response.json()["hash"])
            made = await request("GET", f"{self.url}/{directory}/w32.png")
            self.assertEqual(image_size(made.body), (32, 24, "PNG"))

    async def test_a_heic_branded_mif1_is_a_heic(self) -> None:
        await self.start_server()
        response = await self.upload(rebranded_heic(b"mif1"))
        self.assertEqual(response.code, 200, response.body)
        self.assertEqual(response.json()["content_type"], "image/heif")
        directory = image_directory("p", response.json()["hash"])
        made = await request("GET", f"{self.url}/{directory}/w80.jpg")
        self.assertEqual(image_size(made.body)[::2], (80, "JPEG"))
