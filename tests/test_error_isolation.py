"""One job's error never carries another job's words, nor a path on the server.

libvips keeps one error buffer per process and pyvips reads all of it into each `Error`; a worker
runs many clients' jobs in turn, so whatever one job leaves there (a warning on a file that still
decodes, the lines of an error that another library then reported) would open the next job's
answer, with the store's absolute paths.  The files here are the kinds that leave something behind:
a JPEG with corrupt scan data that still decodes, and HEICs whose header libvips reads while
probing past the end of the file and whose HEVC data pi-heif then refuses.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
from pathlib import Path

import pyvips
from twisted.trial.unittest import SynchronousTestCase

from imageserver import errors
from imageserver.info import ImageDetails
from imageserver.processing import operations
from tests.support import ServerTestCase, fixture, request, sized
from tests.test_hostile import HOSTILE, UNREADABLE, tiled_tiff

PROCESSING_FAILED = "ImageMagick failed to process the image: "
TILE_OUT_OF_RANGE = UNREADABLE + "tiff2vips: tile size out of range"
GIF_CUT_SHORT = UNREADABLE + "gifload_source: Unexpected end of GIF source data"
# A path-like token: a "/" that starts a word.
PATH_LIKE = re.compile(r"(?<![\w.])/\w")


def corrupt_jpeg() -> bytes:
    """wine.jpg with 50 bytes of its scan data scrambled: libjpeg warns "Corrupt JPEG data" and
    decodes it anyway, so it is a good upload that leaves a warning in libvips' buffer."""
    whole = fixture("wine.jpg")
    scrambled = bytes(byte ^ 0x55 for byte in whole[40000:40050])
    return whole[:40000] + scrambled + whole[40050:]


def heic_without_hevc_data() -> bytes:
    """wine.heic with the start of its HEVC data zeroed: libvips reads the header (writing "bad
    seek" lines that name the file into its buffer on the way), then pi-heif refuses the pixels."""
    whole = fixture("wine.heic")
    position = 0
    while position + 8 <= len(whole):  # the top-level boxes: size, then type
        size = struct.unpack(">I", whole[position : position + 4])[0]
        if whole[position + 4 : position + 8] == b"mdat":
            start = position + 8
            return whole[:start] + bytes(64) + whole[start + 64 :]
        position += size
    raise AssertionError("no mdat box")


def cut_gif() -> bytes:
    """A real GIF cut in half."""
    whole = bytes(
        pyvips.Image.new_from_buffer(fixture("wine.jpg"), "").resize(0.25).gifsave_buffer()
    )
    return whole[: len(whole) // 2]


def vips_error_buffer() -> bytes:
    return bytes(pyvips.ffi.string(pyvips.vips_lib.vips_error_buffer()))


def enormous_tile_tiff() -> bytes:
    """A TIFF whose one tile is declared 65536x65536: refused from its header."""
    return tiled_tiff(16, 16, 65536, 65536, bytes(64))


class WithoutPathsTests(SynchronousTestCase):
    def test_the_jobs_paths_become_words(self) -> None:
        words = operations.path_words("/srv/my store/tmp/spool-1", "/srv/my store/tmp/part-2.jpg")
        self.assertEqual(
            operations.without_paths(
                "/srv/my store/tmp/spool-1: bad seek; unable to write /srv/my store/tmp/part-2.jpg",
                words,
            ),
            "image: bad seek; unable to write output",
        )

    def test_a_longer_path_is_replaced_whole(self) -> None:
        words = operations.path_words("/store/x", "/store/x.jpg")
        self.assertEqual(operations.without_paths("/store/x.jpg", words), "output")

    def test_other_absolute_paths_become_file(self) -> None:
        for text, expected in [
            ("/tmp/spool-gccehgrf: bad seek to 93860", "file: bad seek to 93860"),
            ("No such file or directory: '/srv/store/c'", "No such file or directory: 'file'"),
            ("cannot open /var/lib/x.heic.", "cannot open file."),
            ("(/x/y) and [/z]", "(file) and [file]"),
        ]:
            self.assertEqual(operations.without_paths(text, {}), expected)

    def test_what_is_not_a_path_stays(self) -> None:
        for text in (
            "image/jpeg is 3/4 of 1 / 2",
            "heif: Invalid input (2.100)",
            "tiff2vips: tile size out of range",
            "http://example.com/a",
        ):
            self.assertEqual(operations.without_paths(text, {}), text)


class JobTests(SynchronousTestCase):
    """`operations.job`, which the worker runs each identify and render in."""

    def setUp(self) -> None:
        self.dir = Path(self.mktemp()).resolve()
        self.dir.mkdir(parents=True)

    def write(self, name: str, data: bytes) -> str:
        path = self.dir / name
        path.write_bytes(data)
        return str(path)

    def identify_error(self, path: str) -> str:
        """What identifying `path` in a job raises."""
        with (
            self.assertRaises(errors.UnreadableImage) as raised,
            operations.job(operations.path_words(path)),
        ):
            operations.identify(path)
        return raised.exception.message

    def assert_names_no_path(self, message: str) -> None:
        self.assertNotIn(str(self.dir), message)
        self.assertIsNone(PATH_LIKE.search(message), message)

    def test_a_job_leaves_libvips_error_buffer_empty(self) -> None:
        """Whether it succeeds with a warning or fails after libvips wrote lines of its own."""
        jpeg = self.write("corrupt.jpg", corrupt_jpeg())
        with operations.job(operations.path_words(jpeg)):
            operations.identify(jpeg)
        self.assertEqual(vips_error_buffer(), b"")
        heic = self.write("no-hevc.heic", heic_without_hevc_data())
        self.assert_names_no_path(self.identify_error(heic))
        self.assertEqual(vips_error_buffer(), b"")

    def test_a_job_starts_with_libvips_error_buffer_empty(self) -> None:
        """What another piece of code in the process left behind is not in a job's error."""
        operations.identify(self.write("corrupt.jpg", corrupt_jpeg()))
        self.assertIn(b"Corrupt JPEG data", vips_error_buffer())
        message = self.identify_error(self.write("tile.tif", enormous_tile_tiff()))
        self.assertEqual(message, TILE_OUT_OF_RANGE)

    def test_the_next_job_does_not_read_a_failed_heics_paths(self) -> None:
        heic = self.write("no-hevc.heic", heic_without_hevc_data())
        self.assertTrue(self.identify_error(heic).startswith(UNREADABLE + "HEIF decoding failed"))
        message = self.identify_error(self.write("tile.tif", enormous_tile_tiff()))
        self.assertEqual(message, TILE_OUT_OF_RANGE)

    def test_a_render_names_neither_its_source_nor_its_output(self) -> None:
        source = self.write("original", fixture("wine.jpg"))
        destination = str(self.dir / "gone" / "part-1.jpg")  # a directory that is not there
        with (
            self.assertRaises(errors.ProcessingFailed) as raised,
            operations.job(operations.path_words(source, destination)),
        ):
            operations.render(source, destination, sized(100, 0, 75))
        self.assertEqual(
            raised.exception.message,
            PROCESSING_FAILED + "output: unable to open for write; output: write error",
        )

    def test_other_libraries_errors_are_scrubbed_too(self) -> None:
        """pi-heif quotes the path it could not open; the error keeps its class and prefix."""
        source = str(self.dir / "original")
        with (
            self.assertRaises(errors.ProcessingFailed) as raised,
            operations.job(operations.path_words(source)),
        ):
            raise errors.ProcessingFailed(
                f"HEIF decoding failed: [Errno 2] No such file or directory: '{source}' (/srv/x)"
            )
        self.assertEqual(
            raised.exception.message,
            PROCESSING_FAILED + "HEIF decoding failed: [Errno 2] No such file or directory: "
            "'image' (file)",
        )


class ServerTests(ServerTestCase):
    """Through the server with its one worker, never recycled: every job runs in the same
    process, one after the other, as all jobs do with ``--processor-concurrency 1``."""

    config_overrides = {"worker_max_jobs": 0}

    async def upload_error(self, body: bytes) -> str:
        """Upload a file that must be refused, and return the message it was refused with."""
        response = await self.upload(body, namespace=HOSTILE)
        self.assertEqual(response.code, 404, response.body)
        self.assertEqual(response.json()["code"], "unreadable_image")
        message: str = response.json()["error"]
        self.assert_names_no_path(message)
        return message

    def assert_names_no_path(self, message: str) -> None:
        """No path of this server's: not the store's, nor a temporary file's, nor any other."""
        for word in (os.path.abspath(self.base_path), "/tmp", "spool-", "part-"):
            self.assertNotIn(word, message)
        self.assertIsNone(PATH_LIKE.search(message), message)

    async def test_a_heic_refused_by_pi_heif_is_not_in_the_next_answer(self) -> None:
        await self.start_server()
        message = await self.upload_error(heic_without_hevc_data())
        self.assertTrue(message.startswith(UNREADABLE + "HEIF decoding failed: "), message)
        self.assertEqual(await self.upload_error(enormous_tile_tiff()), TILE_OUT_OF_RANGE)

    async def test_a_jpeg_warning_is_not_in_the_next_answer(self) -> None:
        await self.start_server()
        response = await self.upload(corrupt_jpeg())
        self.assertEqual(response.code, 200, response.body)
        self.assertEqual(await self.upload_error(cut_gif()), GIF_CUT_SHORT)

    async def test_a_refused_upload_names_no_temporary_file(self) -> None:
        """libvips names the file it could not read: the answer says "image" instead."""
        await self.start_server()
        message = await self.upload_error(fixture("wine.heic")[:24])
        self.assertTrue(message.startswith(UNREADABLE + "image: bad seek"), message)

    async def test_a_variant_error_names_no_stored_original(self) -> None:
        """Originals stored before uploads were checked this way: one's variant fails after
        libvips wrote "bad seek" lines naming its place in the store, and those lines are not in
        the next variant's error."""
        await self.start_server()
        heic = self.store_original(heic_without_hevc_data(), 800, 600, "image/heif")
        gif = self.store_original(cut_gif(), 200, 150, "image/gif")
        heic_error = await self.variant_error(heic)
        self.assertTrue(heic_error.startswith(PROCESSING_FAILED + "HEIF decoding failed: "))
        self.assertEqual(
            await self.variant_error(gif),
            PROCESSING_FAILED + "gifload_source: Unexpected end of GIF source data",
        )

    def store_original(self, body: bytes, width: int, height: int, content_type: str) -> str:
        """Put `body` in the store as an original with its info.json; return its directory."""
        image_hash = hashlib.md5(body).hexdigest()
        directory = os.path.join("old", image_hash[:3], image_hash[3:6], image_hash[6:9])
        directory = os.path.join(directory, image_hash[9:])
        os.makedirs(self.local(directory))
        Path(self.local(directory, "original")).write_bytes(body)
        info = ImageDetails(image_hash, height, width, content_type)
        Path(self.local(directory, "info.json")).write_bytes(info.to_info_json())
        return directory

    async def variant_error(self, directory: str) -> str:
        response = await request("GET", f"{self.url}/{directory}/w32.jpg")
        self.assertEqual(response.code, 404, response.body)
        self.assertEqual(response.json()["code"], "processing_failed")
        message: str = response.json()["error"]
        self.assert_names_no_path(message)
        return message
