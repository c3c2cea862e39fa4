"""An HEVC HEIC's variants come from its embedded thumbnail, or only the grid tiles a crop needs,
when that gives the whole decode's pixels (docs/scaling.md); the whole image otherwise.

Through the worker's own `operations.render`, on small HEICs made by
tests/fixtures/make_heic_fixtures.py: boards of coloured blocks with a patch of one-pixel black
and white columns, which the files' thumbnails show black (libheif made them by taking every
eighth pixel) and any filtered downscale grey.  So a render says by its pixels whether it came
from the thumbnail.
"""

from __future__ import annotations

import math
import os

import pyvips
from twisted.trial.unittest import SynchronousTestCase

from imageserver import errors
from imageserver.names import parse_name
from imageserver.paths import image_directory
from imageserver.processing import libheif, operations
from tests.support import FIXTURES, ServerTestCase, fixture, image_size, request

GRID = os.path.join(FIXTURES, "grid.heic")  # 1280x960, 5 x 4 tiles of 256, 160x120 thumbnail
ROTATED = os.path.join(FIXTURES, "grid-rotated.heic")  # the same, turned a quarter (irot)
MIRRORED = os.path.join(FIXTURES, "grid-mirrored.heic")  # the same, mirrored (imir)
SINGLE = os.path.join(FIXTURES, "single.heic")  # 640x480, one HEVC image
ALPHA = os.path.join(FIXTURES, "alpha.heic")  # 640x480 with alpha, one HEVC image

GRAVITIES = ("", "-gn", "-gs", "-ge", "-gw", "-gne", "-gnw", "-gse", "-gsw")
FOCAL_POINTS = ("-fp0x0", "-fp10x90", "-fp50x50", "-fp73x31", "-fp100x100")
# Boxes whose crops leave out some tiles of GRID in one direction or both.
CROPS = ("x200", "x300", "200x100", "1000x300", "1280x200", "x950")


def psnr(one: pyvips.Image, other: pyvips.Image) -> float:
    """Peak signal-to-noise ratio in dB over all bands (inf when identical)."""
    assert (one.width, one.height, one.bands) == (other.width, other.height, other.bands)
    mse = float(((one.cast("float") - other.cast("float")) ** 2).avg())
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def grey_level(image: pyvips.Image) -> float:
    """The mean of the striped patch, in the middle of every render of the boards."""
    side = max(2, image.width // 40)
    middle = image.crop(image.width // 2 - side, image.height // 2 - side // 2, 2 * side, side)
    return float(middle.extract_band(0, n=3).avg())


class Renders(SynchronousTestCase):
    def render(self, source: str, name: str, shortcuts: bool = True) -> pyvips.Image:
        """`name` of `source` (a PNG name: lossless, so the pixels are the render's)."""
        destination = os.path.join(self.mktemp() + "." + name.rpartition(".")[2])
        os.makedirs(os.path.dirname(destination), exist_ok=True)
        operations.render(
            source, destination, parse_name(name, maximum_width=0), heic_shortcuts=shortcuts
        )
        return pyvips.Image.new_from_file(destination).copy_memory()

    def assert_grey(self, image: pyvips.Image, name: str) -> None:
        """The striped patch is grey: `image` was scaled from the image, not the thumbnail."""
        self.assertLess(abs(grey_level(image) - 128), 12, name)

    def source(self, path: str, name: str) -> str:
        return operations.hevc_source(path, parse_name(name, maximum_width=0))

    def assert_as_whole(self, path: str, name: str, minimum_db: float = 50) -> pyvips.Image:
        """The render of `name` with the shortcuts is the whole decode's, within `minimum_db`."""
        made, whole = self.render(path, name), self.render(path, name, shortcuts=False)
        self.assertGreaterEqual(psnr(made, whole), minimum_db, f"{path} {name}")
        return made


class ThumbnailTests(Renders):
    def test_the_thumbnail_serves_variants_up_to_its_size(self) -> None:
        for name in ("w160.png", "x120.png", "w40.png", "160x100.png"):
            self.assertEqual(self.source(GRID, name), operations.THUMBNAIL, name)
            self.assertLess(grey_level(self.render(GRID, name)), 40, name)  # the black stripes
        self.assertEqual(self.source(GRID, "x100-fp10x90.png"), operations.THUMBNAIL)
        for name in ("w161.png", "x121.png", "w600.png", "161x90.png"):
            self.assertNotEqual(self.source(GRID, name), operations.THUMBNAIL, name)
            self.assert_grey(self.render(GRID, name), name)

    def test_the_thumbnail_gives_the_images_pixels_away_from_the_stripes(self) -> None:
        """A 160x120 thumbnail of flat blocks: the same blocks, edges aside."""
        made, whole = self.render(GRID, "w160.png"), self.render(GRID, "w160.png", False)
        top = (0, 0, 160, 40)  # the patch is rows 55-65
        self.assertGreaterEqual(psnr(made.crop(*top), whole.crop(*top)), 25)

    def test_without_shortcuts_the_whole_image_is_decoded(self) -> None:
        self.assert_grey(self.render(GRID, "w100.png", False), "w100.png")

    def test_a_file_that_is_no_grid_uses_its_thumbnail_too(self) -> None:
        self.assertEqual(self.source(SINGLE, "w100.png"), operations.THUMBNAIL)
        self.assertLess(grey_level(self.render(SINGLE, "w100.png")), 40)
        self.assertEqual(self.source(SINGLE, "x300-ge.png"), operations.WHOLE)  # one tile
        self.assert_as_whole(SINGLE, "x300-ge.png")

    def test_alpha_is_kept(self) -> None:
        for name in ("w100.png", "w400.png", "x300-gw.png"):
            image = self.render(ALPHA, name)
            self.assertEqual(image.bands, 4, name)
            self.assertTrue(image.hasalpha(), name)
        # The alpha is a gradient from the top (0) to the bottom (255).
        image = self.render(ALPHA, "w100.png")
        self.assertLess(image(30, 1)[3], 20)
        self.assertGreater(image(30, 73)[3], 235)
        self.assertEqual(self.render(ALPHA, "w100.jpg").bands, 3)  # flattened for JPEG


class TileTests(Renders):
    def test_a_crop_decodes_only_the_tiles_it_needs(self) -> None:
        self.assertEqual(self.source(GRID, "x200-ge.png"), operations.TILES)
        self.assertEqual(self.source(GRID, "200x100-gn.png"), operations.TILES)
        # Every tile: the whole decode.
        self.assertEqual(self.source(GRID, "x300.png"), operations.WHOLE)
        # A smart crop looks at the whole image; a fit crops nothing.
        self.assertEqual(self.source(GRID, "x200-gsmart.png"), operations.WHOLE)
        self.assertEqual(self.source(GRID, "300x200-fit.png"), operations.WHOLE)

    def test_tile_crops_are_the_whole_decodes_crops_at_every_gravity(self) -> None:
        used = set()
        for box in CROPS:
            for place in GRAVITIES + FOCAL_POINTS:
                name = f"{box}{place}.png"
                used.add(self.source(GRID, name))
                self.assert_as_whole(GRID, name)
        self.assertIn(operations.TILES, used)

    def test_the_crop_is_where_the_gravity_says(self) -> None:
        """East: the right-hand blocks; a block is 160 pixels, 40 in a 320x240 scale."""
        east, west = self.render(GRID, "x240-ge.png"), self.render(GRID, "x240-gw.png")
        whole = self.render(GRID, "w320.png", False)
        self.assertGreaterEqual(psnr(east, whole.crop(80, 0, 240, 240)), 50)
        self.assertGreaterEqual(psnr(west, whole.crop(0, 0, 240, 240)), 50)


class TransformedTests(Renders):
    """Rotated or mirrored files: their tiles are not where the displayed pixels are."""

    def test_rotated_and_mirrored_crops_are_decoded_whole(self) -> None:
        for path in (ROTATED, MIRRORED):
            for name in ("x200-ge.png", "x300-gnw.png", "200x100-gs.png"):
                self.assertEqual(self.source(path, name), operations.WHOLE, name)

    def test_a_rotated_file_is_shown_turned(self) -> None:
        pairs = [
            ("w100.png", "w133.png"),  # both from their thumbnails
            ("w300.png", "w400.png"),
            ("x200-ge.png", "x200-gn.png"),  # east of the turned file is north of the stored one
        ]
        for turned, stored in pairs:
            self.assertGreaterEqual(
                psnr(self.render(ROTATED, turned), self.render(GRID, stored).rot90()), 40, turned
            )

    def test_a_mirrored_file_is_shown_mirrored(self) -> None:
        for mirrored, stored in (("w100.png", "w100.png"), ("x200-ge.png", "x200-gw.png")):
            self.assertGreaterEqual(
                psnr(self.render(MIRRORED, mirrored), self.render(GRID, stored).fliphor()),
                40,
                mirrored,
            )


class BrokenFileTests(SynchronousTestCase):
    def cut_grid(self) -> str:
        """GRID cut in half: its header is whole, half its tiles and its thumbnail are not."""
        path = self.mktemp()
        with open(GRID, "rb") as whole, open(path, "wb") as cut:
            data = whole.read()
            cut.write(data[: len(data) // 2])
        return path

    def test_a_cut_grid_is_refused(self) -> None:
        """Decoded leniently, the missing tiles would be blank: the check decodes strictly."""
        error = self.assertRaises(errors.UnreadableImage, operations.identify, self.cut_grid())
        self.assertIn("HEIF decoding failed: ", error.message)

    def test_a_cut_grids_variants_fail_clearly(self) -> None:
        source = self.cut_grid()
        for name in ("w100.jpg", "x200-ge.jpg"):  # thumbnail, tiles
            destination = self.mktemp() + ".jpg"
            error = self.assertRaises(
                errors.ProcessingFailed,
                operations.render,
                source,
                destination,
                parse_name(name),
            )
            self.assertIn("HEIF decoding failed: ", error.message)
            self.assertFalse(os.path.exists(destination))

    def test_a_file_libheif_cannot_open(self) -> None:
        path = self.mktemp()
        with open(path, "wb") as file:
            file.write(b"\x00\x00\x00\x18ftypheic" + bytes(12))
        self.assertRaises(libheif.HeifError, libheif.open_file(path).__enter__)


class ServerTests(ServerTestCase):
    async def test_grid_variants_through_the_workers(self) -> None:
        await self.start_server()
        response = await self.upload(fixture("grid.heic"))
        self.assertEqual(response.code, 200, response.body)
        self.assertEqual(response.json()["content_type"], "image/heif")
        directory = image_directory("p", response.json()["hash"])
        for name, size in (("w100.jpg", (100, 75)), ("x200-ge.jpg", (200, 200))):
            made = await request("GET", f"{self.url}/{directory}/{name}")
            self.assertEqual(made.code, 200, made.body)
            self.assertEqual(image_size(made.body), (*size, "JPEG"))
