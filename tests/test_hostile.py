"""A corpus of hostile image files, each uploaded through a real server with real workers.

Every file is generated here, deterministically, from code (struct and zlib for hand-written
headers, pyvips for real encodings to cut short, seeded random bytes); nothing binary is committed.
Each case asserts the exact answer (status and JSON body), that nothing was stored (no image
directory, an empty ``tmp/``), and that the server goes on serving: the same workers are alive (or
the pool is back to full strength when one was meant to die) and a good upload still works.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import struct
import time
import zlib
from typing import Any

import pyvips
from PIL import Image

from imageserver.info import ImageDetails
from tests.support import (
    WINE_DIR,
    WINE_HASH,
    Response,
    ServerTestCase,
    SourceServer,
    fixture,
    request,
    sleep,
)

HOSTILE = "h"  # the namespace hostile files are uploaded to; it must never come to exist
UNREADABLE = "ImageMagick failed to identify properties: "
WORKER_STOPPED = "the image worker stopped during the job (crash or timeout)"
# A worker that read only headers, or refused a file early, stays far below this.
WORKER_MEMORY_BOUND = 256 * 1024 * 1024


# --- The corpus ------------------------------------------------------------------------------


def png_chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def huge_png(width: int, height: int) -> bytes:
    """A grey PNG declaring width x height whose pixel data is four zero rows (a few hundred
    bytes once compressed): a decompression bomb's header without the bomb."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(bytes(width + 1) * 4, 9)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", rows)
        + png_chunk(b"IEND", b"")
    )


def wine() -> pyvips.Image:
    return pyvips.Image.new_from_buffer(fixture("wine.jpg"), "")


def small_jpeg() -> bytes:
    """A real 80x60 baseline JPEG (SOF0)."""
    return bytes(wine().resize(0.1).jpegsave_buffer(Q=80, keep="none", interlace=False))


def with_sof0_size(jpeg: bytes, width: int, height: int) -> bytes:
    """`jpeg` with the frame size in its SOF0 segment replaced, found by walking the markers."""
    position = 2  # after SOI
    while position + 4 <= len(jpeg):
        marker, length = (
            jpeg[position + 1],
            struct.unpack(">H", jpeg[position + 2 : position + 4])[0],
        )
        if jpeg[position] != 0xFF:
            break
        if marker == 0xC0:
            size = struct.pack(">HH", height, width)  # Y then X, after the precision byte
            return jpeg[: position + 5] + size + jpeg[position + 9 :]
        position += 2 + length
    raise AssertionError("no SOF0 segment")


def real_encodings() -> dict[str, bytes]:
    """Whole, valid files of every format, to be cut short."""
    image = wine().resize(0.5)
    return {
        "jpeg": fixture("wine.jpg"),
        "png": bytes(image.pngsave_buffer()),
        "webp": bytes(image.webpsave_buffer(Q=75)),
        "gif": bytes(image.gifsave_buffer()),
        "heic": fixture("wine.heic"),
    }


# The magic numbers libvips sniffs formats by.
MAGICS = {
    "jpeg": b"\xff\xd8\xff",
    "png": b"\x89PNG\r\n\x1a\n",
    "gif": b"GIF89a",
    "webp": b"RIFF\x00\x10\x00\x00WEBP",
    "heic": b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic",
    "tiff": b"II*\x00",
    "tiff-big-endian": b"MM\x00*",
}


def many_frame_gif(frames: int, width: int, height: int) -> bytes:
    """An animated GIF of `frames` frames on a width x height screen, by hand.

    Each frame is one 1x1 pixel, LZW-coded in two bytes (clear, index, end with 3-bit codes), so
    5000 frames are about 115 KB.  Frame i colours pixel i (mod the screen) with a colour that
    changes on every pass over the screen, so no two consecutive frames are alike.
    """
    palette = bytes([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255])
    out = b"GIF89a" + struct.pack("<HHBBB", width, height, 0xF1, 0, 0) + palette
    out += b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"  # loop forever
    for frame in range(frames):
        out += b"\x21\xf9\x04\x00" + struct.pack("<H", 2) + b"\x00\x00"  # 20 ms
        pixel = frame % (width * height)
        out += b"\x2c" + struct.pack("<HHHHB", pixel % width, pixel // width, 1, 1, 0)
        colour = frame // (width * height) % 3 + 1
        codes = 4 | colour << 3 | 5 << 6  # clear code 4, the index, end code 5
        out += b"\x02\x02" + struct.pack("<H", codes) + b"\x00"
    return out + b"\x3b"


def tiled_tiff(
    width: int,
    height: int,
    tile_width: int,
    tile_height: int,
    tile: bytes,
    byte_count: int | None = None,
) -> bytes:
    """A little-endian, 8-bit grey, uncompressed TIFF with one tile, its IFD first.

    `byte_count` (the tile's declared size) defaults to the tile's length; the file ends with the
    tile, so a shorter `tile` is a file cut short inside its pixel data.
    """
    short, long = 3, 4
    tags = [
        (256, long, width),
        (257, long, height),
        (258, short, 8),  # bits per sample
        (259, short, 1),  # no compression
        (262, short, 1),  # min-is-black
        (277, short, 1),  # samples per pixel
        (284, short, 1),  # chunky
        (322, long, tile_width),
        (323, long, tile_height),
        (324, long, 8 + 2 + 12 * 11 + 4),  # the tile's offset: right after this IFD
        (325, long, len(tile) if byte_count is None else byte_count),
    ]
    ifd = struct.pack("<H", len(tags))
    for tag, kind, value in tags:
        packed = struct.pack("<HH", value, 0) if kind == short else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, 1) + packed
    ifd += struct.pack("<I", 0)  # no next IFD
    return b"II*\x00" + struct.pack("<I", 8) + ifd + tile


SVG = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b'<svg xmlns="http://www.w3.org/2000/svg" width="100" height="100">'
    b'<rect width="100" height="100" fill="red"/></svg>\n'
)


# --- The tests -------------------------------------------------------------------------------


class HostileTestCase(ServerTestCase):
    # Workers are never recycled, so an unchanged set of pids means no worker died.
    config_overrides = {"worker_max_jobs": 0}

    async def start(self, **overrides: Any) -> None:
        await self.start_server(**overrides)
        self.workers = sorted(self.server.pool.worker_pids())

    async def post(self, body: bytes, query: str = "") -> tuple[Response, float]:
        started = time.monotonic()
        response = await self.upload(body, namespace=HOSTILE, query=query)
        return response, time.monotonic() - started

    async def refused(
        self, body: bytes, status: int, code: str, message: str, exact: bool = False
    ) -> Response:
        """Upload `body`: a JSON error `{"error", "code"}` whose message is `message` (or starts
        with it), and nothing stored."""
        response, _ = await self.post(body)
        self.assert_refusal(response, status, code, message, exact)
        return response

    def assert_refusal(
        self,
        response: Response,
        status: int,
        code: str,
        message: str,
        exact: bool = False,
        case: str = "",
    ) -> None:
        """`{"error": message..., "code": code}` with `status`; `case` names the file."""
        self.assertEqual(response.code, status, (case, response.body))
        self.assertEqual(response.header("Content-Type"), "application/json; charset=UTF-8", case)
        body = response.json()
        self.assertEqual(sorted(body), ["code", "error"], (case, body))
        self.assertEqual(body["code"], code, (case, body))
        if exact:
            self.assertEqual(body["error"], message, case)
        else:
            self.assertTrue(body["error"].startswith(message), (case, body, message))
        self.assert_nothing_stored()

    def assert_nothing_stored(self) -> None:
        self.assertFalse(os.path.exists(self.local(HOSTILE)), os.listdir(self.base_path))
        self.assert_no_partial_files()

    def assert_same_workers(self) -> None:
        """No worker died or was replaced, and none was counted as crashed."""
        self.assertEqual(sorted(self.server.pool.worker_pids()), self.workers)
        self.assertEqual(self.server.pool.crashes, 0)
        self.assertEqual(self.server.pool.in_flight, 0)

    def assert_worker_memory_bounded(self) -> None:
        """Each worker's peak resident memory (VmHWM, over its whole life) stayed small."""
        for pid in self.server.pool.worker_pids():
            with open(f"/proc/{pid}/status") as status:
                fields = dict(line.split(":", 1) for line in status)
            peak = int(fields["VmHWM"].split()[0]) * 1024
            self.assertLess(peak, WORKER_MEMORY_BOUND, f"worker {pid} peaked at {peak} bytes")

    async def assert_serving(self) -> None:
        """The pool is at full strength and a good upload works."""
        for _ in range(200):
            if len(self.server.pool.worker_pids()) == self.server.config.processor_concurrency:
                break
            await sleep(0.05)
        self.assertEqual(
            len(self.server.pool.worker_pids()), self.server.config.processor_concurrency
        )
        response = await self.upload(fixture("wine.jpg"))
        self.assertEqual(response.code, 200, response.body)
        self.assertEqual(response.json()["hash"], WINE_HASH)


class PixelLimitTests(HostileTestCase):
    async def test_huge_png_refused_from_its_header(self) -> None:
        """A 30000x30000 PNG of a few hundred bytes: refused by --max-source-pixels before a pixel
        is decoded, quickly and in little memory."""
        await self.start()
        body = huge_png(30000, 30000)
        self.assertLess(len(body), 4096)
        response, seconds = await self.post(body)
        self.assert_refusal(
            response,
            413,
            "image_too_large",
            "image is 30000x30000 = 900000000 pixels, over the limit of 100000000",
            exact=True,
        )
        self.assertLess(seconds, 5)
        self.assert_worker_memory_bounded()
        self.assert_same_workers()
        await self.assert_serving()

    async def test_huge_png_without_a_limit_is_still_refused(self) -> None:
        """With the limit off the header passes, and the missing rows make it unreadable."""
        await self.start(max_source_pixels=0)
        await self.refused(
            huge_png(30000, 30000), 404, "unreadable_image", UNREADABLE + "vipspng: libpng read"
        )
        self.assert_worker_memory_bounded()
        self.assert_same_workers()
        await self.assert_serving()

    async def test_jpeg_claiming_65500_square(self) -> None:
        """A real 2 KB JPEG whose SOF0 says 65500x65500."""
        await self.start()
        body = with_sof0_size(small_jpeg(), 65500, 65500)
        self.assertEqual(pyvips.Image.new_from_buffer(body, "").width, 65500)
        response, seconds = await self.post(body)
        self.assert_refusal(
            response,
            413,
            "image_too_large",
            "image is 65500x65500 = 4290250000 pixels, over the limit of 100000000",
            exact=True,
        )
        self.assertLess(seconds, 5)
        self.assert_worker_memory_bounded()
        self.assert_same_workers()
        await self.assert_serving()


class TruncationTests(HostileTestCase):
    async def test_truncated_files_of_every_format(self) -> None:
        """Cut inside the header and twice inside the pixel data: never stored, never a 500."""
        await self.start()
        for name, whole in real_encodings().items():
            self.assertEqual((await self.upload(whole, namespace="whole")).code, 200, name)
            for cut in (24, len(whole) // 2, len(whole) - len(whole) // 10):
                response, _ = await self.post(whole[:cut])
                case = f"{name} cut at {cut} of {len(whole)}"
                self.assert_refusal(response, 404, "unreadable_image", UNREADABLE, case=case)
        self.assert_same_workers()
        await self.assert_serving()

    async def test_tiff_cut_inside_its_tile(self) -> None:
        """libvips zero-fills a TIFF tile it cannot read unless told to fail on warnings: the
        cut file must be refused like every other truncated upload, not stored as a black image."""
        await self.start()
        tile = bytes(range(256)) * 16  # one 64x64 tile
        whole = tiled_tiff(64, 64, 64, 64, tile)
        response = await self.upload(whole, namespace="whole")
        self.assertEqual(response.code, 200, response.body)
        self.assertEqual(
            (response.json()["width"], response.json()["content_type"]), (64, "image/tiff")
        )
        for cut in (len(tile) // 2, len(tile) - 1):
            cut_short = tiled_tiff(64, 64, 64, 64, tile[:cut], byte_count=len(tile))
            await self.refused(
                cut_short, 404, "unreadable_image", UNREADABLE + "tiff2vips: Read error"
            )
        self.assert_same_workers()
        await self.assert_serving()

    async def test_stored_tiff_cut_inside_its_tile_is_not_rendered_black(self) -> None:
        """Such a file stored before uploads were checked this way: its variants are an error,
        never a zero-filled image, and no variant file is left."""
        await self.start()
        tile = bytes(range(256)) * 16
        cut_short = tiled_tiff(64, 64, 64, 64, tile[:2048], byte_count=len(tile))
        image_hash = hashlib.md5(cut_short).hexdigest()
        directory = os.path.join("old", image_hash[:3], image_hash[3:6], image_hash[6:9])
        directory = os.path.join(directory, image_hash[9:])
        os.makedirs(self.local(directory))
        with open(self.local(directory, "original"), "wb") as original:
            original.write(cut_short)
        with open(self.local(directory, "info.json"), "wb") as info:
            info.write(ImageDetails(image_hash, 64, 64, "image/tiff").to_info_json())
        response = await request("GET", f"{self.url}/{directory}/w32.jpg")
        self.assert_error(response, 404, "ImageMagick failed to process the image: tiff2vips: ")
        self.assertEqual(response.json()["code"], "processing_failed")
        self.assertEqual(sorted(os.listdir(self.local(directory))), ["info.json", "original"])
        self.assert_no_partial_files()
        self.assert_same_workers()
        await self.assert_serving()


class ForgedFileTests(HostileTestCase):
    async def test_random_bytes_behind_every_magic_number(self) -> None:
        await self.start()
        for seed in range(3):
            noise = random.Random(seed).randbytes(4096)
            for name, magic in MAGICS.items():
                response, _ = await self.post(magic + noise)
                case = f"{name} magic, seed {seed}"
                self.assert_refusal(response, 404, "unreadable_image", UNREADABLE, case=case)
        self.assert_same_workers()
        await self.assert_serving()

    async def test_svg_is_refused(self) -> None:
        """No option enables SVG (options.py has none): it is refused, with or without an XML
        prolog, by the blocked loaders, never reaching librsvg."""
        await self.start()
        message = UNREADABLE + "VipsForeignLoad: source is not in a known format"
        for body in (SVG, SVG.split(b"\n", 1)[1]):
            await self.refused(body, 404, "unreadable_image", message, exact=True)
        self.assert_same_workers()
        await self.assert_serving()

    async def test_tiff_with_an_enormous_tile(self) -> None:
        """A 200-byte TIFF whose one tile is declared 65536x65536 (4 GiB of grey): refused from
        the header by libvips, whatever the image's size, the worker's memory untouched.  A huge
        image with ordinary tiles meets the pixel limit instead."""
        await self.start()
        self.assertLess(len(tiled_tiff(16, 16, 65536, 65536, bytes(64))), 256)
        for width in (16, 1000, 65536):
            await self.refused(
                tiled_tiff(width, width, 65536, 65536, bytes(64)),
                404,
                "unreadable_image",
                UNREADABLE + "tiff2vips: tile size out of range",
                exact=True,
            )
        await self.refused(
            tiled_tiff(65536, 65536, 256, 256, bytes(64)),
            413,
            "image_too_large",
            "image is 65536x65536 = 4294967296 pixels, over the limit of 100000000",
            exact=True,
        )
        self.assert_worker_memory_bounded()
        self.assert_same_workers()
        await self.assert_serving()


class ManyFramesTests(HostileTestCase):
    async def test_frames_count_towards_the_pixel_limit(self) -> None:
        """5000 frames: the 1000 a variant would read count (MAX_FRAMES), so under a limit of
        480000 pixels (wine.jpg's 800x600) 20x25 frames are over and 20x24 ones exactly at it."""
        await self.start(max_source_pixels=480_000)
        await self.refused(
            many_frame_gif(5000, 20, 25),
            413,
            "image_too_large",
            "image is 20x25x1000 frames = 500000 pixels, over the limit of 480000",
            exact=True,
        )
        response = await self.upload(many_frame_gif(5000, 20, 24), namespace="anim")
        self.assertEqual(response.code, 200, response.body)
        body = response.json()
        self.assertEqual(
            (body["width"], body["height"], body["content_type"]), (20, 24, "image/gif")
        )
        self.assert_same_workers()
        await self.assert_serving()

    async def test_variant_of_a_5000_frame_gif_finishes_in_time(self) -> None:
        """An allowed 100x100 GIF of 5000 frames: its animated variant keeps 1000 frames and is
        made well within the processing timeout; a still variant takes the first frame."""
        await self.start(processing_timeout=20)
        response = await self.upload(many_frame_gif(5000, 100, 100), namespace="anim")
        self.assertEqual(response.code, 200, response.body)
        directory = self.image_directory("anim", response.json()["hash"])
        started = time.monotonic()
        animated = await request("GET", f"{self.url}/{directory}/w50.gif")
        seconds = time.monotonic() - started
        self.assertEqual(animated.code, 200, animated.body)
        self.assertLess(seconds, 20)
        with Image.open(io.BytesIO(animated.body)) as image:
            frames = getattr(image, "n_frames", 1)
            self.assertEqual((image.format, image.size, frames), ("GIF", (50, 50), 1000))
        still = await request("GET", f"{self.url}/{directory}/w50.png")
        self.assertEqual(still.code, 200, still.body)
        with Image.open(io.BytesIO(still.body)) as image:
            self.assertEqual(
                (image.format, image.size, getattr(image, "n_frames", 1)), ("PNG", (50, 50), 1)
            )
        self.assert_no_partial_files()
        self.assert_same_workers()
        await self.assert_serving()

    async def test_variant_over_the_processing_timeout(self) -> None:
        """A full-size GIF of 1000 316x316 frames (just under 100 MP) takes several seconds: with a
        2 s timeout the worker is killed, the request answered with the pool's error, no file is
        left, and a new worker takes its place."""
        await self.start(processing_timeout=2)
        response = await self.upload(many_frame_gif(5000, 316, 316), namespace="anim")
        self.assertEqual(response.code, 200, response.body)
        directory = self.image_directory("anim", response.json()["hash"])
        started = time.monotonic()
        slow = await request("GET", f"{self.url}/{directory}/full_size.gif")
        seconds = time.monotonic() - started
        self.assertEqual(
            (slow.code, slow.json()), (500, {"error": WORKER_STOPPED, "code": "internal_error"})
        )
        self.assertLess(seconds, 6)
        self.assertEqual(self.server.pool.crashes, 1)
        self.assertFalse(os.path.exists(self.local(directory, "full_size.gif")))
        self.assert_no_partial_files()
        await self.assert_serving()
        self.assertNotEqual(sorted(self.server.pool.worker_pids()), self.workers)

    def image_directory(self, namespace: str, image_hash: str) -> str:
        return f"{namespace}/{image_hash[:3]}/{image_hash[3:6]}/{image_hash[6:9]}/{image_hash[9:]}"


class SourceUrlTests(HostileTestCase):
    async def test_hostile_sources_get_the_same_refusals(self) -> None:
        """The same files fetched by ?source= from a local HTTP server."""
        await self.start()
        source = SourceServer(self)
        cases = [
            (
                "/huge.png",
                huge_png(30000, 30000),
                413,
                "image_too_large",
                "image is 30000x30000 = 900000000 pixels, over the limit of 100000000",
            ),
            ("/cut.jpg", fixture("wine.jpg")[:40000], 404, "unreadable_image", UNREADABLE),
            (
                "/tile.tif",
                tiled_tiff(16, 16, 65536, 65536, bytes(64)),
                404,
                "unreadable_image",
                UNREADABLE + "tiff2vips: tile size out of range",
            ),
            ("/image.svg", SVG, 404, "unreadable_image", UNREADABLE),
        ]
        for path, body, status, code, message in cases:
            url = source.serve(path, body)
            response, _ = await self.post(b"{}", query=f"?source={url}&outputs=w100.jpg")
            self.assert_refusal(response, status, code, message, case=path)
        self.assertEqual(len(source.requests), len(cases))
        self.assert_same_workers()
        await self.assert_serving()
        self.assertTrue(os.path.isfile(self.local("p", WINE_DIR, "original")))
