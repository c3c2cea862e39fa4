"""Content types by name and by magic bytes."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from imageserver import mime
from tests.support import fixture


class MimeTests(SynchronousTestCase):
    def test_sniff_the_fixtures(self) -> None:
        for name, expected in {
            "wine.jpg": "image/jpeg",
            "a.png": "image/png",
            "a.webp": "image/webp",
            "wine.heic": "image/heif",
            "svg_without_ext": "application/octet-stream",
        }.items():
            self.assertEqual(mime.sniff(fixture(name)[: mime.SNIFF_BYTES]), expected, name)

    def test_sniff_magic_numbers(self) -> None:
        self.assertEqual(mime.sniff(b"GIF89a" + b"\0" * 10), "image/gif")
        self.assertEqual(mime.sniff(b"II*\x00" + b"\0" * 12), "image/tiff")
        self.assertEqual(mime.sniff(b"\0\0\0\x1cftypavif" + b"\0" * 4), "image/avif")
        self.assertEqual(mime.sniff(b""), "application/octet-stream")

    def test_for_name(self) -> None:
        for name, expected in {
            "w1.jpg": "image/jpeg",
            "x.JPEG": "image/jpeg",
            "a.avif": "image/avif",
            "info.json": "application/json",
            "receipt.pdf": "application/pdf",
            "notes.txt": "text/plain",
            "page.html": "text/html",
            "original": "application/octet-stream",
            "blob.unknownext": "application/octet-stream",
        }.items():
            self.assertEqual(mime.for_name(name), expected, name)
