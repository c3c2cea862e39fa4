"""The worker's image operations: `identify` and `render` on real files (docs/api.md#processing).

Extra inputs (rotated, animated, transparent, hostile files) are generated with pyvips in a fresh
directory per test; outputs are decoded again and checked by size, bands and sampled pixels.
"""

from __future__ import annotations

import os
import struct
import sys
import types
import zlib
from pathlib import Path
from typing import Any
from unittest import mock

import pi_heif
import pyvips
from twisted.trial.unittest import SynchronousTestCase

from imageserver import errors
from imageserver.processing import operations
from tests.support import sized

FIXTURES = Path(__file__).parent / "fixtures"
WINE = str(FIXTURES / "wine.jpg")
RED, BLUE = [255, 0, 0], [0, 0, 255]


def fixture(name: str) -> str:
    return str(FIXTURES / name)


def decode(path: str, **options: Any) -> pyvips.Image:
    """The written file, in memory (so pixels can be sampled many times)."""
    return pyvips.Image.new_from_file(path, **options).copy_memory()


def solid(width: int, height: int, colour: list[int]) -> pyvips.Image:
    return pyvips.Image.black(width, height).new_from_image(colour).copy(interpretation="srgb")


def near(actual: list[float], expected: list[int], tolerance: int = 12) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


def png_chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


class OperationsTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir(parents=True)

    def path(self, name: str) -> str:
        return str(self.dir / name)

    def write_bytes(self, name: str, data: bytes) -> str:
        path = self.path(name)
        Path(path).write_bytes(data)
        return path

    def rotated_jpeg(self) -> str:
        """Stored 400x200 with a red square top-left, EXIF orientation 6 (display: turn 90° CW)."""
        image = solid(400, 200, BLUE).draw_rect(RED, 0, 0, 60, 60, fill=True).copy()
        image.set_type(pyvips.GValue.gint_type, "orientation", 6)
        path = self.path("rotated.jpg")
        image.jpegsave(path, Q=95)
        return path

    def animation(self, name: str = "anim.gif", frames: int = 4) -> str:
        """100x80 frames, frame i coloured (60i, 255-60i, 0)."""
        pages = [solid(100, 80, [60 * i, 255 - 60 * i, 0]) for i in range(frames)]
        image = pyvips.Image.arrayjoin(pages, across=1).copy()
        image.set_type(pyvips.GValue.gint_type, "page-height", 80)
        image.set_type(pyvips.GValue.array_int_type, "delay", [100] * frames)
        path = self.path(name)
        image.write_to_file(path)
        return path

    def transparent_png(self) -> str:
        """100x100: left half fully transparent black, right half opaque red."""
        colour = solid(100, 100, RED)
        alpha = pyvips.Image.black(100, 100).draw_rect([255], 50, 0, 50, 100, fill=True)
        image = colour.bandjoin(alpha).copy(interpretation="srgb")
        path = self.path("alpha.png")
        image.pngsave(path)
        return path

    def patch_module(self, name: str, module: types.ModuleType | None) -> None:
        patcher = mock.patch.dict(sys.modules, {name: module})
        patcher.start()
        self.addCleanup(patcher.stop)

    def render(
        self, source: str, width: int, height: int, quality: int, fmt: str = "jpeg"
    ) -> tuple[str, tuple[int, int]]:
        """Render into a fresh file; return its path and what `render` answered."""
        destination = self.path(f"out-{len(os.listdir(self.dir))}")
        result = operations.render(source, destination, sized(width, height, quality, fmt))
        return destination, result

    def assertRefused(self, source: str, kind: type[errors.ImageServerError]) -> None:
        destination = self.path("refused")
        self.assertRaises(kind, operations.render, source, destination, sized(100, 0, 75))
        self.assertFalse(os.path.exists(destination))


class IdentifyTests(OperationsTestCase):
    def test_fixture_vectors(self) -> None:
        vectors = {
            "wine.jpg": (800, 600, "image/jpeg"),
            "a.jpg": (574, 496, "image/jpeg"),
            "a.png": (574, 496, "image/png"),
            "a.webp": (574, 496, "image/webp"),
            "webp_without_ext": (574, 496, "image/webp"),
            "unsupported.jpg": (900, 1200, "image/jpeg"),
            "wine.heic": (800, 600, "image/heif"),
            "test-hevc-alpha.heic": (300, 200, "image/heif"),
            "test-hevc-10bit.heic": (300, 200, "image/heif"),
        }
        for name, expected in vectors.items():
            self.assertEqual(operations.identify(fixture(name)), expected, name)

    def test_generated_formats(self) -> None:
        image = solid(64, 32, RED)
        for suffix, content_type in (("avif", "image/avif"), ("tif", "image/tiff")):
            path = self.path(f"image.{suffix}")
            image.write_to_file(path)
            self.assertEqual(operations.identify(path), (64, 32, content_type))
        self.assertEqual(operations.identify(self.animation()), (100, 80, "image/gif"))

    def test_ultra_hdr_jpeg_is_a_jpeg(self) -> None:
        """libvips 8.18 reads JPEGs with a gain map with `uhdrload`, which must be allowed."""
        path = self.path("uhdr.jpg")
        hdr = pyvips.Image.black(64, 32).new_from_image([0.5, 0.8, 2.0]).cast("float")
        hdr.copy(interpretation="scrgb").uhdrsave(path)
        self.assertEqual(pyvips.Image.new_from_file(path).get("vips-loader"), "uhdrload")
        self.assertEqual(operations.identify(path), (64, 32, "image/jpeg"))
        destination, size = self.render(path, 32, 0, 75)
        self.assertEqual(size, (32, 16))
        self.assertNotIn("gainmap-data", decode(destination).get_fields())

    def test_size_is_upright(self) -> None:
        self.assertEqual(operations.identify(self.rotated_jpeg()), (200, 400, "image/jpeg"))

    def test_unreadable(self) -> None:
        svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>'
        pyvips.Image.black(8, 8).write_to_file(self.path("image.v"))
        sources = [
            fixture("empty.jpg"),
            fixture("svg_without_ext"),
            self.write_bytes("small.svg", svg),
            self.write_bytes("text.txt", b"hello, this is not an image\n"),
            self.write_bytes("random", os.urandom(4096)),
            self.write_bytes("truncated.jpg", Path(WINE).read_bytes()[:1000]),
            self.write_bytes("matrix.mat", b"2 2\n1 2\n3 4\n"),  # a libvips format, not allowed
            self.path("image.v"),
        ]
        for source in sources:
            error = self.assertRaises(errors.UnreadableImage, operations.identify, source)
            self.assertTrue(error.message.startswith("ImageMagick failed to identify properties"))
            self.assertNotIn(str(self.dir), error.message)

    def test_other_loaders_blocked_in_the_process(self) -> None:
        """Not only refused by `identify`: libvips itself no longer sniffs with them."""
        path = self.write_bytes("matrix.mat", b"2 2\n1 2\n3 4\n")  # libvips trusts matrixload
        self.assertRaises(pyvips.Error, pyvips.Image.new_from_file, path)
        self.assertEqual(decode(WINE).width, 800)  # the whitelisted ones still work

    def test_pixel_limit(self) -> None:
        self.assertRaises(errors.ImageTooLarge, operations.identify, WINE, max_pixels=1000)
        self.assertEqual(operations.identify(WINE, max_pixels=480_000)[:2], (800, 600))
        self.assertEqual(operations.identify(WINE, max_pixels=0)[:2], (800, 600))

    def test_pixel_limit_counts_frames(self) -> None:
        animation = self.animation()  # 4 frames of 8000 pixels
        self.assertRaises(errors.ImageTooLarge, operations.identify, animation, max_pixels=31_999)
        self.assertEqual(operations.identify(animation, max_pixels=32_000)[:2], (100, 80))

    def test_huge_header_refused_before_decoding(self) -> None:
        """A PNG claiming 20000x20000 whose pixel data is missing: only the header is read."""
        header = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
        rows = png_chunk(b"IDAT", zlib.compress(bytes(1000)))  # a few rows of 20000
        data = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + rows + png_chunk(b"IEND", b"")
        path = self.write_bytes("huge.png", data)
        error = self.assertRaises(errors.ImageTooLarge, operations.identify, path)
        self.assertIn("20000x20000", error.message)
        self.assertRefused(path, errors.ImageTooLarge)


class GeometryTests(OperationsTestCase):
    def test_wine_vectors(self) -> None:
        for size, expected in (
            ((200, 0), (200, 150)),
            ((200, 200), (200, 200)),
            ((300, 200), (300, 200)),
            ((1600, 0), (1600, 1200)),
            ((0, 0), (800, 600)),
        ):
            destination, result = self.render(WINE, *size, 75)
            image = decode(destination)
            self.assertEqual(result, expected, size)
            self.assertEqual((image.width, image.height), expected, size)
            self.assertEqual(image.get("vips-loader"), "jpegload")

    def test_proportional_height_rounds_half_up(self) -> None:
        """574x496 at width 200 is 172.8 pixels high: 173, not 172."""
        destination, result = self.render(fixture("a.jpg"), 200, 0, 75)
        self.assertEqual(result, (200, 173))
        self.assertEqual(decode(destination).height, 173)

    def test_full_size_webp(self) -> None:
        destination, result = self.render(WINE, 0, 0, 0, fmt="webp")
        image = decode(destination)
        self.assertEqual((result, image.get("vips-loader")), ((800, 600), "webpload"))

    def test_cover_crops_the_centre(self) -> None:
        """Left third red, middle blue, right third red: a square crop keeps only the blue."""
        image = solid(300, 100, RED).draw_rect(BLUE, 100, 0, 100, 100, fill=True)
        source = self.path("stripes.png")
        image.pngsave(source)
        destination, result = self.render(source, 50, 50, 90, fmt="png")
        output = decode(destination)
        self.assertEqual(result, (50, 50))
        for x in (1, 25, 48):
            self.assertTrue(near(output(x, 25), BLUE), output(x, 25))

    def test_exif_orientation_is_applied(self) -> None:
        source = self.rotated_jpeg()
        for size, expected in (((0, 0), (200, 400)), ((100, 0), (100, 200))):
            destination, result = self.render(source, *size, 90)
            image = decode(destination)
            self.assertEqual(result, expected)
            width = image.width
            self.assertTrue(near(image(width - 3, 3), RED), image(width - 3, 3))
            self.assertTrue(near(image(3, 3), BLUE), image(3, 3))
            self.assertNotIn("orientation", image.get_fields())


class ShrinkOnLoadTests(OperationsTestCase):
    def test_jpeg_decode_scale_covers_the_box(self) -> None:
        for source, box, divisor in (
            ((1920, 1080), (300, 169), 4),  # libvips' thumbnail would decode at 1/2
            ((1920, 1080), (240, 135), 8),
            ((1920, 1080), (241, 135), 4),
            ((1920, 1080), (1000, 563), 1),
            ((4032, 3024), (300, 225), 8),
            ((4032, 3024), (1000, 750), 4),
            ((1001, 9), (126, 2), 8),  # 1001/8 rounds up to 126
            ((1001, 9), (127, 2), 4),
            ((10, 10), (10, 10), 1),
        ):
            self.assertEqual(operations.jpeg_shrink(*source, *box), divisor, (source, box))

    def jpeg_decodes(self) -> list[dict[str, Any]]:
        """Record the options of every `jpegload_source` call during the test."""
        calls: list[dict[str, Any]] = []
        real = pyvips.Image.jpegload_source

        def recording(source: pyvips.Source, **options: Any) -> pyvips.Image:
            calls.append(options)
            return real(source, **options)

        patcher = mock.patch.object(pyvips.Image, "jpegload_source", recording)
        patcher.start()
        self.addCleanup(patcher.stop)
        return calls

    def test_thumbnail_decodes_at_a_reduced_scale_close_to_a_full_decode(self) -> None:
        """A detailed 1600x1200 JPEG drawn 200 wide is decoded at 1/8 scale, and differs from
        a full-size decode resized the same way by under one level on average (the same image
        one pixel off differs by three)."""
        x, y = pyvips.Image.xyz(1600, 1200).bandsplit()
        waves = (x * 0.05).sin() * 40 + (y * 0.013).cos() * 30 + ((x + y) * 0.9).sin() * 40
        detail = (waves + 128).cast("uchar")
        image = detail.bandjoin([detail.flip("horizontal"), detail.flip("vertical")])
        source = self.path("detail.jpg")
        image.copy(interpretation="srgb").jpegsave(source, Q=95)
        calls = self.jpeg_decodes()
        destination, result = self.render(source, 200, 0, 0, fmt="png")
        self.assertEqual(result, (200, 150))
        self.assertEqual([call.get("shrink") for call in calls], [8])
        reference = pyvips.Image.new_from_file(source).thumbnail_image(200, height=150)
        difference = (decode(destination).cast("float") - reference.cast("float")).abs()
        self.assertLess(difference.avg(), 1.0)

    def test_only_jpeg_is_decoded_that_way(self) -> None:
        calls = self.jpeg_decodes()
        png = self.path("big.png")
        solid(800, 600, BLUE).pngsave(png)
        _, result = self.render(png, 100, 0, 0, fmt="png")
        self.assertEqual((result, calls), ((100, 75), []))


class EncodingTests(OperationsTestCase):
    def test_lower_quality_is_smaller(self) -> None:
        for fmt in ("jpeg", "webp", "avif"):
            low, _ = self.render(WINE, 300, 200, 20, fmt=fmt)
            high, _ = self.render(WINE, 300, 200, 90, fmt=fmt)
            self.assertLess(os.path.getsize(low), os.path.getsize(high), fmt)

    def test_metadata_is_stripped(self) -> None:
        for source in (WINE, fixture("a.png")):
            for fmt in ("jpeg", "png", "webp", "avif", "gif"):
                destination, _ = self.render(source, 100, 0, 75, fmt=fmt)
                fields = decode(destination).get_fields()
                for name in ("exif-data", "xmp-data", "icc-profile-data", "orientation"):
                    self.assertNotIn(name, fields, (source, fmt))

    def test_alpha_kept_or_flattened_on_white(self) -> None:
        source = self.transparent_png()
        for fmt in ("png", "webp", "avif", "gif"):
            destination, _ = self.render(source, 0, 0, 90, fmt=fmt)
            image = decode(destination)
            self.assertEqual(image.bands, 4, fmt)
            self.assertLess(image(10, 50)[3], 10, fmt)
            self.assertTrue(near(image(90, 50), [*RED, 255]), (fmt, image(90, 50)))
        destination, _ = self.render(source, 0, 0, 90)
        image = decode(destination)
        self.assertEqual(image.bands, 3)
        self.assertTrue(near(image(10, 50), [255, 255, 255]), image(10, 50))
        self.assertTrue(near(image(90, 50), RED), image(90, 50))

    def test_cmyk_becomes_srgb(self) -> None:
        destination, result = self.render(fixture("unsupported.jpg"), 150, 0, 75)
        image = decode(destination)
        self.assertEqual(result, (150, 200))
        self.assertEqual((image.bands, image.interpretation), (3, "srgb"))

    def test_embedded_profile_is_converted_to_srgb(self) -> None:
        """Pure sRGB red stored as Display P3 (about 234,51,35) must come back as red."""
        source = self.path("p3.jpg")
        solid(64, 64, RED).icc_transform("p3", input_profile="srgb").jpegsave(source, Q=98)
        destination, _ = self.render(source, 0, 0, 0, fmt="png")
        self.assertTrue(near(decode(destination)(32, 32), RED, 6), decode(destination)(32, 32))

    def test_avif_output_decodes(self) -> None:
        destination, result = self.render(WINE, 200, 0, 60, fmt="avif")
        image = decode(destination)
        self.assertEqual(result, (200, 150))
        self.assertEqual((image.width, image.height), (200, 150))
        self.assertEqual(image.get("heif-compression"), "av1")

    def test_unknown_output_format(self) -> None:
        self.assertRaises(errors.UnsupportedFormat, self.render, WINE, 100, 0, 75, fmt="bmp")


class AnimationTests(OperationsTestCase):
    def assertFrames(self, destination: str, count: int, size: tuple[int, int]) -> None:
        image = decode(destination, n=-1)
        self.assertEqual(image.get("n-pages"), count)
        self.assertEqual((image.width, image.get_page_height()), size)
        for frame in range(count):
            centre = image(size[0] // 2, frame * size[1] + size[1] // 2)
            self.assertTrue(near(centre[:3], [60 * frame, 255 - 60 * frame, 0], 20), centre)

    def test_stays_animated_in_gif_and_webp(self) -> None:
        for name in ("anim.gif", "anim.webp"):
            source = self.animation(name)
            for fmt in ("gif", "webp"):
                destination, result = self.render(source, 50, 50, 75, fmt=fmt)
                self.assertEqual(result, (50, 50))
                self.assertFrames(destination, 4, (50, 50))
                destination, result = self.render(source, 40, 0, 75, fmt=fmt)
                self.assertEqual(result, (40, 32))
                self.assertFrames(destination, 4, (40, 32))

    def test_other_formats_take_the_first_frame(self) -> None:
        source = self.animation()
        for fmt in ("jpeg", "png"):
            destination, result = self.render(source, 50, 50, 90, fmt=fmt)
            self.assertEqual(result, (50, 50))
            image = decode(destination)
            self.assertEqual((image.width, image.height), (50, 50))
            self.assertTrue(near(image(25, 25)[:3], [0, 255, 0]), image(25, 25))

    def test_frame_limit(self) -> None:
        self.patch(operations, "MAX_FRAMES", 2)
        destination, _ = self.render(self.animation(), 50, 50, 75, fmt="gif")
        self.assertFrames(destination, 2, (50, 50))

    def test_pixel_limit_counts_only_frames_read(self) -> None:
        source = self.animation()  # 4 x 8000 pixels
        self.assertRaises(
            errors.ImageTooLarge,
            operations.render,
            source,
            self.path("out.gif"),
            sized(50, 50, 75, "gif"),
            max_pixels=20_000,
        )
        destination = self.path("out.jpg")
        operations.render(source, destination, sized(50, 50, 75, "jpeg"), max_pixels=20_000)
        self.assertTrue(os.path.exists(destination))


class HeifTests(OperationsTestCase):
    def test_heic_to_jpeg_and_webp(self) -> None:
        for fmt, loader in (("jpeg", "jpegload"), ("webp", "webpload")):
            destination, result = self.render(fixture("wine.heic"), 200, 0, 75, fmt=fmt)
            image = decode(destination)
            self.assertEqual(result, (200, 150))
            self.assertEqual(
                (image.get("vips-loader"), image.width, image.height), (loader, 200, 150)
            )
            self.assertGreater(image.avg(), 20)  # a photo, not a black frame

    def test_ten_bit_heic(self) -> None:
        destination, result = self.render(fixture("test-hevc-10bit.heic"), 100, 100, 75)
        image = decode(destination)
        self.assertEqual((result, image.format, image.bands), ((100, 100), "uchar", 3))
        self.assertGreater(image.avg(), 20)

    def test_heic_alpha_is_kept(self) -> None:
        source = fixture("test-hevc-alpha.heic")
        for size in ((0, 0), (150, 0)):
            destination, _ = self.render(source, *size, 75, fmt="png")
            image = decode(destination)
            self.assertEqual(image.bands, 4)
            self.assertLess(image[3].min(), 255)

    def test_heic_output_needs_the_extra(self) -> None:
        self.patch_module("pillow_heif", None)  # what `import` sees when it is not installed
        destination = self.path("out.heic")
        # Checked before anything is decoded: even an empty source gets the format error.
        for source in (WINE, fixture("empty.jpg")):
            error = self.assertRaises(
                errors.UnsupportedFormat,
                operations.render,
                source,
                destination,
                sized(100, 0, 75, "heic"),
            )
            self.assertIn("imageserver[heic]", error.message)
            self.assertFalse(os.path.exists(destination))

    def test_heic_output_goes_through_pillow_heif(self) -> None:
        calls: list[tuple[Any, ...]] = []

        class FakeHeifFile:
            def __init__(self, mode: str, size: tuple[int, int], data: bytes) -> None:
                calls.append((mode, size, len(data)))

            def save(self, path: str, quality: int) -> None:
                calls.append((path, quality))
                Path(path).write_bytes(b"heic")

        fake = types.ModuleType("pillow_heif")
        fake.from_bytes = FakeHeifFile  # type: ignore[attr-defined]
        self.patch_module("pillow_heif", fake)
        destination = self.path("out.heic")
        result = operations.render(self.transparent_png(), destination, sized(40, 30, 0, "heic"))
        self.assertEqual(result, (40, 30))
        self.assertEqual(calls, [("RGBA", (40, 30), 40 * 30 * 4), (destination, 50)])
        grey = self.path("grey.png")
        pyvips.Image.black(20, 10).pngsave(grey)
        operations.render(grey, destination, sized(0, 0, 60, "heic"))
        self.assertEqual(calls[2:], [("RGB", (20, 10), 20 * 10 * 3), (destination, 60)])

    def test_heic_encoder_failure_leaves_no_file(self) -> None:
        class FailingHeifFile:
            def __init__(self, **kwargs: object) -> None:
                pass

            def save(self, path: str, quality: int) -> None:
                Path(path).write_bytes(b"partial")
                raise RuntimeError("x265 gave up")

        fake = types.ModuleType("pillow_heif")
        fake.from_bytes = FailingHeifFile  # type: ignore[attr-defined]
        self.patch_module("pillow_heif", fake)
        destination = self.path("out.heic")
        error = self.assertRaises(
            errors.ProcessingFailed, operations.render, WINE, destination, sized(40, 0, 75, "heic")
        )
        self.assertIn("x265 gave up", error.message)
        self.assertFalse(os.path.exists(destination))

    def fake_heif(self, mode: str, stride: int, data: bytes, icc: bytes | None = None) -> None:
        """Make pi-heif "decode" any HEIC to these 2x2 pixels."""
        heif = types.SimpleNamespace(
            mode=mode,
            size=(2, 2),
            stride=stride,
            data=memoryview(data),
            info={"icc_profile": icc} if icc else {},
        )
        self.patch(operations.pi_heif, "open_heif", lambda *args, **kwargs: heif)
        self.patch_module("pillow_heif", None)  # pi-heif decodes, even with the heic extra here

    def test_hevc_is_decoded_by_pillow_heif_when_the_extra_is_installed(self) -> None:
        opened: list[str] = []

        def open_heif(path: str, **options: Any) -> Any:
            opened.append(path)
            return pi_heif.open_heif(path, **options)  # the same libheif API, decoding for real

        fake = types.ModuleType("pillow_heif")
        fake.open_heif = open_heif  # type: ignore[attr-defined]
        self.patch_module("pillow_heif", fake)
        source = fixture("wine.heic")
        destination, size = self.render(source, 40, 0, 75)
        self.assertEqual(opened, [source])
        self.assertEqual(size, (40, 30))
        self.assertEqual((decode(destination).width, decode(destination).height), (40, 30))
        self.patch_module("pillow_heif", None)  # without the extra: pi-heif
        self.render(source, 40, 0, 75)
        self.assertEqual(opened, [source])

    def test_heif_rows_padding_and_premultiplied_alpha(self) -> None:
        """Rows of 8 bytes padded to 12; premultiplied half-transparent red (128, 0, 0, 128)."""
        row = bytes([128, 0, 0, 128] * 2) + bytes(4)
        self.fake_heif("RGBa", 12, row * 2)
        destination, _ = self.render(fixture("wine.heic"), 40, 30, 0, fmt="png")
        image = decode(destination)
        self.assertEqual((image.width, image.height, image.bands), (40, 30, 4))
        self.assertTrue(near(image(20, 15), [255, 0, 0, 128], 3), image(20, 15))

    def test_heif_colour_profile_is_converted_to_srgb(self) -> None:
        p3 = solid(2, 2, RED).icc_transform("p3", input_profile="srgb")
        self.fake_heif("RGB", 6, p3.write_to_memory(), p3.get("icc-profile-data"))
        destination, _ = self.render(fixture("wine.heic"), 40, 30, 0, fmt="png")
        self.assertTrue(near(decode(destination)(20, 15), RED, 6), decode(destination)(20, 15))

    def test_unsupported_heif_mode(self) -> None:
        self.fake_heif("I;16", 4, bytes(8))
        self.assertRaises(errors.ProcessingFailed, self.render, fixture("wine.heic"), 40, 30, 0)

    def test_pi_heif_failure(self) -> None:
        def broken(*args: object, **kwargs: object) -> None:
            raise ValueError("corrupt HEVC stream")

        self.patch(operations.pi_heif, "open_heif", broken)
        self.patch_module("pillow_heif", None)  # pi-heif decodes, even with the heic extra here
        destination = self.path("out.jpg")
        error = self.assertRaises(
            errors.ProcessingFailed,
            operations.render,
            fixture("wine.heic"),
            destination,
            sized(100, 0, 75, "jpeg"),
        )
        self.assertIn("corrupt HEVC stream", error.message)
        self.assertFalse(os.path.exists(destination))


class FailureTests(OperationsTestCase):
    def test_unreadable_sources(self) -> None:
        for source in (
            fixture("empty.jpg"),
            fixture("svg_without_ext"),
            self.write_bytes("random", os.urandom(4096)),
            self.write_bytes("text.txt", b"hello, this is not an image\n"),
            self.write_bytes("truncated.jpg", Path(WINE).read_bytes()[:1000]),
        ):
            self.assertRefused(source, errors.UnreadableImage)

    def test_corrupt_pixels_fail_without_output(self) -> None:
        """The header is intact, the data is cut: refused on upload, and an error (never a
        half-grey image) if such a file is rendered anyway."""
        wine = Path(WINE).read_bytes()
        truncated_jpeg = self.write_bytes("truncated.jpg", wine[:30000])
        gif = self.path("wine.gif")
        pyvips.Image.new_from_file(WINE).gifsave(gif)
        gif_bytes = Path(gif).read_bytes()
        truncated_gif = self.write_bytes("truncated.gif", gif_bytes[: len(gif_bytes) // 2])
        for source in (truncated_jpeg, truncated_gif):
            self.assertRaises(errors.UnreadableImage, operations.identify, source)
            self.assertRefused(source, errors.ProcessingFailed)

    def test_pixel_limit_before_decoding(self) -> None:
        """Over the limit, a file whose pixels would fail to decode reports the limit."""
        source = self.write_bytes("truncated.jpg", Path(WINE).read_bytes()[:30000])
        destination = self.path("out.jpg")
        self.assertRaises(
            errors.ImageTooLarge,
            operations.render,
            source,
            destination,
            sized(100, 0, 75, "jpeg"),
            max_pixels=1000,
        )
        self.assertFalse(os.path.exists(destination))
