"""The image operations a worker subprocess runs: read a header, render a variant.

Pure functions of files: a path in, a path out, no Twisted.  libvips does the work with
shrink-on-load (JPEG's scaled decode, else `thumbnail_source`'s), EXIF auto-orientation,
conversion to sRGB and no metadata in the output.  HEVC-coded HEIC/HEIF is decoded with pi-heif,
because the libvips in pyvips-binary can read a HEIF header but has no HEVC decoder; from its
embedded thumbnail or only the grid tiles a crop needs when that is enough (`hevc_source`).

Hostile input is kept out three ways: the pixel count is checked from the header before anything is
decoded; every libvips loader except the whitelisted ones is blocked for the whole process; and the
loader that read a header is checked again against the whitelist.  Only `imageserver.errors`
exceptions leave this module, and the worker runs each call in a `job`, so that no job's error
carries another's words or a server path.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import ModuleType

import pi_heif
import pyvips

from imageserver import errors
from imageserver.heif import HEAD_BYTES, heif_codec
from imageserver.names import Variant
from imageserver.processing import libheif

# Frames read from an animated source; later ones are dropped.  The frames read count towards the
# pixel limit.
MAX_FRAMES = 1000

# The loader that read a header (nickname, without its _file/_source suffix) -> content type.
# uhdrload is libvips 8.18's reader for UltraHDR JPEGs (JPEG plus gain map): a plain JPEG to us.
_CONTENT_TYPES: dict[str, str] = {
    "jpegload": "image/jpeg",
    "uhdrload": "image/jpeg",
    "pngload": "image/png",
    "gifload": "image/gif",
    "webpload": "image/webp",
    "tiffload": "image/tiff",
    "heifload": "image/heif",
}
# Their libvips classes: blocking a class blocks its file, buffer and source loaders together.
_ALLOWED_LOADER_CLASSES = (
    "VipsForeignLoadJpeg",
    "VipsForeignLoadUhdr",
    "VipsForeignLoadPng",
    "VipsForeignLoadNsgif",
    "VipsForeignLoadWebp",
    "VipsForeignLoadTiff",
    "VipsForeignLoadHeif",
)
_ANIMATED_LOADERS = frozenset({"gifload", "webpload"})
_ANIMATED_OUTPUTS = frozenset({"gif", "webp"})
# Formats that keep transparency; the others are flattened on the variant's background.
_ALPHA_OUTPUTS = frozenset({"png", "webp", "gif", "avif", "heic"})
# How strictly each loader's pixels must decode.  libvips counts a TIFF tile or strip that cannot
# be read (a file cut short) as a mere warning and fills it with zeros, so TIFF fails on warnings.
# The others fail on errors only: their warnings include harmless quirks of real files (a JPEG's
# extraneous bytes before a marker), and their truncations are errors.
_FAIL_ON = {"tiffload": "warning"}

# Quality 0 means the encoder's default (the Go server's for JPEG and WebP), libheif's
# own default for AVIF and HEIC.
_DEFAULT_QUALITY = {"jpeg": 92, "webp": 75, "avif": 50, "heic": 50}

# pi-heif modes we accept (8 bits, because we ask for HDR to be converted) -> bands.  A lower-case
# "a" is premultiplied alpha.
_HEIF_BANDS = {"L": 1, "LA": 2, "La": 2, "RGB": 3, "RGBA": 4, "RGBa": 4}
# What pi-heif and pillow-heif raise for bad data or a failed encode.
_HEIF_ERRORS = (ValueError, EOFError, SyntaxError, RuntimeError, OSError)

_HEIC_EXTRA = "install the 'heic' extra (pip install 'imageserver[heic]') to write HEIC"

# What clients read in place of a path: the job's source, its output, or any other absolute path.
SOURCE_WORD = "image"
OUTPUT_WORD = "output"
_OTHER_PATH_WORD = "file"
# An absolute path: a "/" that does not continue a word, a number or another path, up to the
# quote, bracket or punctuation a library puts after a file name (a final full stop is not part
# of it).
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~:/-])/[^\s'\"()<>\[\]:;,]*[^\s'\"()<>\[\]:;,.]")


def _lock_down_libvips() -> None:
    """Process-wide libvips settings for untrusted input.

    No operation cache (a worker renders each source once, and the cache would hold decoded
    images).  `block_untrusted_set` covers the loaders libvips itself flags as unsafe (SVG, PDF,
    ImageMagick...); blocking every loader and re-allowing the whitelist also shuts out the
    "trusted" ones we never want to sniff an upload (matrix, CSV, raw, vips...).
    """
    pyvips.cache_set_max(0)
    pyvips.block_untrusted_set(True)
    pyvips.operation_block_set("VipsForeignLoad", True)
    for name in _ALLOWED_LOADER_CLASSES:
        if pyvips.type_from_name(name):  # uhdrload only exists in newer builds
            pyvips.operation_block_set(name, False)


_lock_down_libvips()


@dataclass(frozen=True)
class _Header:
    """What a source's header says, sizes upright (after EXIF orientation)."""

    content_type: str
    width: int
    height: int  # of one frame
    frames: int  # frames we would read for an animated output, at most MAX_FRAMES
    has_icc: bool  # an embedded profile, so converting to sRGB needs a colour transform
    hevc: bool  # HEIF coded with HEVC: libvips cannot decode the pixels, pi-heif can
    fail_on: str  # libvips' fail_on for this loader's pixels: "error" or "warning"
    loader: str  # the libvips loader's nickname, e.g. "jpegload"
    alpha: bool  # it has an alpha channel


def identify(path: str, max_pixels: int = 100_000_000) -> tuple[int, int, str]:
    """(width, height, content_type) of an image whose pixels all decode.

    The size is upright: swapped for EXIF orientations 5-8, the way every variant is drawn.  Raises
    `UnreadableImage` for anything that is not a whitelisted format or does not decode to the end
    (a truncated upload), and `ImageTooLarge` when width x height x frames is over `max_pixels`
    (0: no limit) -- checked from the header, before any pixel is decoded.
    """
    header = _read_header(path)
    _check_pixels(header.width, header.height, header.frames, max_pixels)
    _check_decodes(path, header)
    return header.width, header.height, header.content_type


def has_alpha(path: str) -> bool:
    """Whether an image has an alpha channel, from its header alone."""
    return _read_header(path).alpha


def render(
    source: str,
    destination: str,
    variant: Variant,
    max_pixels: int = 100_000_000,
    max_dimension: int = 0,
    heic_shortcuts: bool = True,
) -> tuple[int, int]:
    """Write `variant` of `source` to exactly `destination` and return its (frame) size.

    In a fixed order: decode, shrinking on load, and orient; crop, fit or pad; blur; flatten on
    the background when the format has no alpha; encode.  Sizes may enlarge except with
    ``-fit`` and ``-pad``.  Animated GIF/WebP stay animated when written as GIF or WebP, every
    frame cut and padded alike.  The source and the output are both held to `max_pixels`, and the
    output's sides to `max_dimension` (0: no limit), so a derived side cannot run away.
    On any failure `destination` does not exist afterwards.  `heic_shortcuts` False decodes an
    HEVC HEIC whole whatever the variant, to measure what the shortcuts save and change
    (benchmarks/quality.py).
    """
    output_format = variant.output_format or ""
    save = _saver(output_format)  # refuse an unwritable format before decoding anything
    header = _read_header(source)
    frames = header.frames if output_format in _ANIMATED_OUTPUTS else 1
    _check_pixels(header.width, header.height, frames, max_pixels)
    shape = geometry(header.width, header.height, variant)
    out_width, out_height = shape.output
    if max_dimension and max(out_width, out_height) > max_dimension:
        raise errors.InvalidParameter(
            f"the variant would be {out_width}x{out_height}, over the maximum of {max_dimension}"
        )
    _check_pixels(*shape.scaled, frames, max_pixels)
    _check_pixels(out_width, out_height, frames, max_pixels)
    try:
        with _vips_errors_as(errors.ProcessingFailed, path_words(source, destination)):
            if header.hevc:
                image = _decode_hevc_for(source, shape, heic_shortcuts)
            else:
                image = _thumbnail(source, *shape.scaled, frames, header)
            if variant.crops:
                image = _position(image, shape, frames)
            if variant.fit == "pad":
                image = _pad(image, shape.output, variant.background, output_format, frames)
            if variant.blur:
                sigma = variant.blur / 10
                image = _each_frame(image, frames, lambda frame: frame.gaussblur(sigma))
            if output_format not in _ALPHA_OUTPUTS and image.hasalpha():
                image = image.flatten(background=_rgb(variant.background or "ffffff"))
            save(image, destination, variant.quality or _DEFAULT_QUALITY.get(output_format, 0))
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(destination)
        raise
    return image.width, image.height // frames


@dataclass(frozen=True)
class Geometry:
    """Where a variant's pixels come from: the source decoded to `scaled`; for a crop, `output`
    cut from it at `crop` (left, top), or where a smart crop chooses when that is None."""

    scaled: tuple[int, int]
    output: tuple[int, int]
    crop: tuple[int, int] | None


def geometry(source_width: int, source_height: int, variant: Variant) -> Geometry:
    """The sizes and the crop of `variant` of a source of that (upright) size."""
    width, height = variant.box
    if width and height and variant.fit:  # inside the box, never enlarged
        if width * source_height <= height * source_width:
            fitted_width = min(width, source_width)
            fitted = (
                fitted_width,
                max(1, _round_ratio(source_height * fitted_width, source_width)),
            )
        else:
            fitted_height = min(height, source_height)
            fitted = (
                max(1, _round_ratio(source_width * fitted_height, source_height)),
                fitted_height,
            )
        return Geometry(fitted, (width, height) if variant.fit == "pad" else fitted, None)
    if width and height:
        scaled = _cover_size(source_width, source_height, width, height)
        return Geometry(scaled, (width, height), _crop_at(scaled, (width, height), variant))
    if width:
        output = (width, max(1, _round_ratio(source_height * width, source_width)))
    elif height:
        output = (max(1, _round_ratio(source_width * height, source_height)), height)
    else:
        output = (source_width, source_height)
    return Geometry(output, output, None)


def _crop_at(
    scaled: tuple[int, int], output: tuple[int, int], variant: Variant
) -> tuple[int, int] | None:
    """The left and top of a crop: at the focal point moved inside the image, at the edge or
    corner a gravity names, or in the centre; None for a smart crop (libvips' to choose)."""
    if variant.gravity == "smart":
        return None
    spare_x, spare_y = scaled[0] - output[0], scaled[1] - output[1]
    if variant.focus is not None:
        centre_x = _round_ratio(scaled[0] * variant.focus[0], 100)
        centre_y = _round_ratio(scaled[1] * variant.focus[1], 100)
        left = min(max(centre_x - output[0] // 2, 0), spare_x)
        top = min(max(centre_y - output[1] // 2, 0), spare_y)
        return left, top
    gravity = variant.gravity
    left = 0 if "w" in gravity else spare_x if "e" in gravity else spare_x // 2
    top = 0 if "n" in gravity else spare_y if "s" in gravity else spare_y // 2
    return left, top


def _read_header(path: str) -> _Header:
    """Open `path` with the loader libvips sniffs (whitelisted ones only) and read its header."""
    with _vips_errors_as(errors.UnreadableImage, path_words(path)):
        image = pyvips.Image.new_from_source(pyvips.Source.new_from_file(path), "")
        loader = image.get("vips-loader").removesuffix("_source")
        content_type = _CONTENT_TYPES.get(loader)
        if content_type is None:
            raise errors.UnreadableImage(f"{loader} is not an allowed image loader")
        hevc = False
        if loader == "heifload":
            compression = _heif_compression(path) or image.get("heif-compression")
            content_type = "image/avif" if compression == "av1" else content_type
            hevc = compression == "hevc"
        frames = 1
        if loader in _ANIMATED_LOADERS and image.get_typeof("n-pages"):
            frames = max(1, min(image.get("n-pages"), MAX_FRAMES))
        width, height = image.width, image.height
        if image.get_typeof("orientation") and image.get("orientation") in (5, 6, 7, 8):
            width, height = height, width
        return _Header(
            content_type=content_type,
            width=width,
            height=height,
            frames=frames,
            has_icc=bool(image.get_typeof("icc-profile-data")),
            hevc=hevc,
            fail_on=_FAIL_ON.get(loader, "error"),
            loader=loader,
            alpha=bool(image.hasalpha()),
        )


def _heif_compression(path: str) -> str | None:
    """The codec a HEIF file's boxes name (libvips goes by the brand, and takes an AVIF branded
    ``mif1`` for HEVC, which only pi-heif could decode, and cannot: it has no AV1 decoder)."""
    with open(path, "rb") as stored:
        return heif_codec(stored.read(HEAD_BYTES))


def _check_decodes(path: str, header: _Header) -> None:
    """Decode the whole file at the smallest scale its codec allows, to refuse truncated data.

    A JPEG cut short in its scan data has a perfect header; without this it would be stored and
    every variant of it would fail.  Shrink-on-load keeps the check cheap for JPEG and WebP.
    An HEVC HEIC is decoded whole and strictly: leniently (as pi-heif does), a grid cut short
    decodes with its missing tiles blank.
    """
    if header.hevc:
        with _heif_errors_as(errors.UnreadableImage), libheif.open_file(path) as heif:
            heif.decode(heif.primary(), strict=True)
        return
    with _vips_errors_as(errors.UnreadableImage, path_words(path)):
        pyvips.Image.thumbnail_source(
            pyvips.Source.new_from_file(path), 8, option_string=f"fail_on={header.fail_on}"
        ).avg()


def _check_pixels(width: int, height: int, frames: int, max_pixels: int) -> None:
    if max_pixels and width * height * frames > max_pixels:
        shape = f"{width}x{height}" + (f"x{frames} frames" if frames > 1 else "")
        raise errors.ImageTooLarge(
            f"image is {shape} = {width * height * frames} pixels, over the limit of {max_pixels}"
        )


def _output_size(source_width: int, source_height: int, width: int, height: int) -> tuple[int, int]:
    """The variant's size: the box, `width` with the height in proportion, or the source's size."""
    if width > 0 and height > 0:
        return width, height
    if width > 0:
        return width, max(1, _round_ratio(source_height * width, source_width))
    return source_width, source_height


def _cover_size(source_width: int, source_height: int, width: int, height: int) -> tuple[int, int]:
    """The smallest scaled source size that covers width x height: by the larger of the two
    ratios, as the Go server scaled."""
    if width * source_height >= height * source_width:
        return width, max(height, _round_ratio(source_height * width, source_width))
    return max(width, _round_ratio(source_width * height, source_height)), height


def _round_ratio(numerator: int, denominator: int) -> int:
    """numerator / denominator rounded half up, in integers so 600*200/800 is exactly 150."""
    return (2 * numerator + denominator) // (2 * denominator)


def _thumbnail(path: str, width: int, height: int, frames: int, header: _Header) -> pyvips.Image:
    """Decode `path` straight to width x height per frame, shrinking on load where the codec can.

    A JPEG is decoded at the smallest of 1/2, 1/4 or 1/8 scale that still covers the box
    (`jpeg_shrink`), then resized.  libvips' `thumbnail` keeps at least a factor of two for its
    resize instead: a 1920x1080 source to 300 wide decodes at 960x540, not 480x270.  Ours costs
    11-19 % less CPU on the benchmark's thumbnails, and stays within 46-48 dB PSNR of a
    full-size decode, below what re-encoding at quality 92 changes (benchmarks/README.md).
    Other formats go through `thumbnail_source`, which shrinks WebP on load and picks a TIFF
    pyramid's level or a HEIF's embedded thumbnail by itself.

    Loader options go in `option_string`: libvips 8.18's `thumbnail_source` silently ignores its
    own `fail_on` argument (and `thumbnail` ignores a `[...]` suffix on a file name, which would
    also misparse paths ending in `]`).  `fail_on` (the header's: error, or warning for TIFF) makes
    a truncated file fail instead of rendering grey; `n` reads the frames of an animation.  Access
    is sequential.
    sRGB: libvips converts CMYK by itself; an embedded profile (Display P3...) needs
    `export_profile`, which we skip otherwise because it costs a colour transform per pixel.
    """
    options = {"export_profile": "srgb"} if header.has_icc else {}
    source = pyvips.Source.new_from_file(path)
    shrink = jpeg_shrink(header.width, header.height, width, height)
    if header.loader == "jpegload" and shrink > 1:
        # Rotation, colour and the resize are the same code as `thumbnail_source`'s.
        loaded = pyvips.Image.jpegload_source(
            source, shrink=shrink, access="sequential", fail_on=header.fail_on
        )
        return loaded.thumbnail_image(width, height=height, size="force", **options)
    return pyvips.Image.thumbnail_source(
        source,
        width,
        height=height,
        size="force",
        no_rotate=False,
        option_string=f"fail_on={header.fail_on}" + (f",n={frames}" if frames > 1 else ""),
        **options,
    )


def jpeg_shrink(source_width: int, source_height: int, width: int, height: int) -> int:
    """The largest JPEG decode scale divisor (8, 4, 2, else 1) whose image still covers
    width x height: libjpeg's scaled decode rounds up, to ceil(side / divisor)."""
    for divisor in (8, 4, 2):
        if -(-source_width // divisor) >= width and -(-source_height // divisor) >= height:
            return divisor
    return 1


def _decode_hevc(path: str, width: int, height: int) -> pyvips.Image:
    """Decode an HEVC HEIC whole with `hevc_decoder()` and scale it to width x height.

    libheif has already applied the container's rotation and mirroring (irot/imir), so nothing is
    rotated again; the memory image carries no EXIF.  No shrink-on-load is possible here.

    pi-heif's `data` is a memoryview that does not keep its buffer alive (its `obj` is None): the
    scaled image is computed into memory while `heif` is still referenced, or libvips would read
    freed memory once this function returned (a segfault, seen with pi-heif 1.4).
    """
    try:
        heif = hevc_decoder().open_heif(path, convert_hdr_to_8bit=True)
        mode, (source_width, source_height) = heif.mode, heif.size
        pixels, stride = heif.data, heif.stride
        icc = heif.info.get("icc_profile")
    except _HEIF_ERRORS as error:
        raise errors.ProcessingFailed(f"HEIF decoding failed: {error}") from error
    bands = _HEIF_BANDS.get(mode)
    if bands is None:
        raise errors.ProcessingFailed(f"HEIF pixel mode {mode} is not supported")
    row = source_width * bands
    if stride != row:  # libheif pads rows; libvips wants them packed
        pixels = b"".join(pixels[y * stride : y * stride + row] for y in range(source_height))
    image = pyvips.Image.new_from_memory(pixels, source_width, source_height, bands, "uchar")
    image = _tagged(image, premultiplied=mode.endswith("a"))
    # Computed now, while `heif` (the owner of `pixels`) is alive: see the docstring.
    return _scaled(image, icc, width, height).copy_memory()


def _tagged(image: pyvips.Image, premultiplied: bool) -> pyvips.Image:
    """A bare memory image of decoded HEIF pixels tagged as what it is, its alpha not premultiplied.

    A bare memory image is "multiband", whose last band libvips does not take for alpha, so a
    transparent HEIC would be written to JPEG unflattened.
    """
    image = image.copy(interpretation="srgb" if image.bands >= 3 else "b-w")
    if premultiplied:
        image = image.unpremultiply().cast("uchar")
    return image


def _scaled(image: pyvips.Image, icc: bytes | None, width: int, height: int) -> pyvips.Image:
    """`image` resized to width x height, converted to sRGB from its ICC profile if it has one."""
    options: dict[str, str] = {}
    if icc:
        image = image.copy()
        image.set_type(pyvips.GValue.blob_type, "icc-profile-data", icc)
        options["export_profile"] = "srgb"
    return image.thumbnail_image(width, height=height, size="force", **options)


# What a variant of an HEVC HEIC is decoded from (`hevc_source`).
THUMBNAIL = "thumbnail"
TILES = "tiles"
WHOLE = "whole"


@dataclass(frozen=True)
class _HevcPlan:
    """The cheapest correct source of a variant of an HEVC HEIC: `source` is THUMBNAIL (decode
    `thumbnail`), TILES (decode the grid tiles of `columns` x `rows`) or WHOLE."""

    source: str
    thumbnail: libheif.Image | None = None
    columns: range = range(0)
    rows: range = range(0)


def hevc_source(path: str, variant: Variant) -> str:
    """What `render` decodes `variant` of the HEVC HEIC at `path` from: THUMBNAIL, TILES or WHOLE.

    The outputs hardly show it (a thumbnail is the file's own smaller copy, tiles give the whole
    decode's pixels), so this says which it was, for tests and measurements.
    """
    header = _read_header(path)
    shape = geometry(header.width, header.height, variant)
    with _heif_errors_as(errors.ProcessingFailed), libheif.open_file(path) as heif:
        return _hevc_plan(heif, heif.primary(), shape).source


def _decode_hevc_for(path: str, shape: Geometry, shortcuts: bool = True) -> pyvips.Image:
    """The scaled source of a variant of an HEVC HEIC, from the cheapest source that is correct.

    As libvips' own `thumbnail` does for HEIF, from the embedded thumbnail when it is at least the
    scaled size: a phone's 320x240 serves every variant up to that size for under 2 % of the
    whole decode's CPU.  Else, for a crop at a known place, from only the grid tiles that the
    resize reads for the crop (a phone's 12 MP photo is 48 tiles of 512x512): the tiles are placed
    in a mosaic of the image's size whose other tiles are black and never read, so the resize and
    the crop are exactly those of the whole image.  Else whole (`_decode_hevc`).  The shortcuts'
    speed and their difference from whole decodes are in benchmarks/README.md.
    """
    if shortcuts:
        with _heif_errors_as(errors.ProcessingFailed), libheif.open_file(path) as heif:
            primary = heif.primary()
            plan = _hevc_plan(heif, primary, shape)
            if plan.thumbnail is not None:
                image = _vips_image(heif.decode(plan.thumbnail))
                return _scaled(image, heif.icc_profile(plan.thumbnail), *shape.scaled)
            if plan.source == TILES and shape.crop is not None:
                mosaic = _mosaic(heif, primary, plan)
                left, top = shape.crop
                scaled = _scaled(mosaic, heif.icc_profile(primary), *shape.scaled)
                return scaled.crop(left, top, *shape.output)
    return _decode_hevc(path, *shape.scaled)


@contextlib.contextmanager
def _heif_errors_as(kind: Callable[[str], errors.ImageServerError]) -> Iterator[None]:
    """Turn libheif's refusal of a file into `kind`, worded as pi-heif's are."""
    try:
        yield
    except libheif.HeifError as error:
        raise kind(f"HEIF decoding failed: {error}") from error


def _hevc_plan(heif: libheif.File, primary: libheif.Image, shape: Geometry) -> _HevcPlan:
    """Where the variant of `shape` comes from in `heif` (see `_decode_hevc_for`).

    A thumbnail counts only when it is a scaled copy of the image: both sides at least the scaled
    size, the same aspect ratio within a pixel's rounding, and alpha when the image has alpha; the
    smallest such one.  Tiles only for a crop at a known place (not a smart crop, which looks at
    the whole image), in a file that neither rotates, mirrors nor crops the image for display
    (its tiles would not be where the displayed pixels are), of an image without alpha (libheif
    1.23 decodes a tile's alpha from the alpha grid's tile at the same place only by chance, a
    TODO in its image_item.cc), and when fewer than all are needed.
    """
    width, height = shape.scaled
    thumbnails = [
        thumbnail
        for thumbnail in heif.thumbnails(primary)
        if thumbnail.width >= width
        and thumbnail.height >= height
        and thumbnail.alpha == primary.alpha
        and abs(thumbnail.width * primary.height - thumbnail.height * primary.width)
        <= max(primary.width, primary.height)
    ]
    if thumbnails:
        return _HevcPlan(THUMBNAIL, min(thumbnails, key=lambda image: image.width * image.height))
    if (
        shape.crop is None
        or shape.output == shape.scaled
        or primary.alpha
        or heif.transformed(primary)
    ):
        return _HevcPlan(WHOLE)
    tiling = heif.tiling(primary)
    left, top = shape.crop
    columns = _tiles_read(left, shape.output[0], width, primary.width, tiling.tile_width)
    rows = _tiles_read(top, shape.output[1], height, primary.height, tiling.tile_height)
    if len(columns) * len(rows) == tiling.columns * tiling.rows:
        return _HevcPlan(WHOLE)
    return _HevcPlan(TILES, columns=columns, rows=rows)


def _tiles_read(start: int, length: int, scaled: int, source: int, tile: int) -> range:
    """The tiles along one side that resizing `source` pixels to `scaled` reads to make the
    scaled pixels [start, start + length).

    libvips' resize shrinks by a whole factor (a box of at most 1 / scale pixels), then reduces
    with a Lanczos-3 kernel (3 scaled pixels either side): 4 scaled pixels of margin, and 2 source
    pixels for rounding, cover both.
    """
    scale = scaled / source
    margin = 4 / scale + 2
    first = max(0, math.floor(start / scale - margin))
    last = min(source - 1, math.ceil((start + length) / scale + margin))
    return range(first // tile, last // tile + 1)


def _mosaic(heif: libheif.File, primary: libheif.Image, plan: _HevcPlan) -> pyvips.Image:
    """The primary image with only the tiles of `plan` decoded, the others black (never read)."""
    tiling = heif.tiling(primary)
    pieces = []
    for row in range(tiling.rows):
        for column in range(tiling.columns):
            if column in plan.columns and row in plan.rows:
                pixels = heif.decode_tile(primary, column, row)
                if (pixels.width, pixels.height) != (tiling.tile_width, tiling.tile_height):
                    raise libheif.HeifError("a grid tile is not of the grid's tile size")
                pieces.append(_bare(pixels))
            else:
                blank = pyvips.Image.black(tiling.tile_width, tiling.tile_height, bands=3)
                pieces.append(blank.cast("uchar"))
    joined = pyvips.Image.arrayjoin(pieces, across=tiling.columns)
    # The last column and row of tiles may reach past the image.
    return _tagged(joined.crop(0, 0, primary.width, primary.height), premultiplied=False)


def _bare(pixels: libheif.Pixels) -> pyvips.Image:
    """Pixels copied out of libheif as a libvips memory image, which keeps them alive."""
    return pyvips.Image.new_from_memory(
        pixels.data, pixels.width, pixels.height, pixels.bands, "uchar"
    )


def _vips_image(pixels: libheif.Pixels) -> pyvips.Image:
    """Pixels copied out of libheif as a tagged libvips image (see `_tagged`)."""
    return _tagged(_bare(pixels), pixels.premultiplied)


def _position(image: pyvips.Image, shape: Geometry, frames: int) -> pyvips.Image:
    """Cut the output from every frame of the scaled image, where `shape` says.

    A smart crop is found on the first frame by libvips' attention measure (the most salient
    part: edges, skin tones, saturated colour) and cut at the same place from every frame.  Done
    here rather than with `thumbnail(crop=...)`, which handles only the first frame.
    """
    width, height = shape.output
    page_height = image.height // frames
    if (image.width, page_height) == (width, height):
        return image
    if shape.crop is None:
        # The attention measure reads the image more than once: from memory, not the decoder
        # (the scaled image is small).
        image = image.copy_memory()
        first = image if frames == 1 else image.crop(0, 0, image.width, page_height)
        chosen = first.smartcrop(width, height, interesting="attention")
        left, top = -chosen.xoffset, -chosen.yoffset
    else:
        left, top = shape.crop
    return _each_frame(image, frames, lambda frame: frame.crop(left, top, width, height))


def _each_frame(
    image: pyvips.Image, frames: int, change: Callable[[pyvips.Image], pyvips.Image]
) -> pyvips.Image:
    """`change` applied to every frame of a vertical strip of `frames` (or to a still image)."""
    if frames == 1:
        return change(image)
    page_height = image.height // frames
    pages = [
        change(image.crop(0, page * page_height, image.width, page_height))
        for page in range(frames)
    ]
    joined = pyvips.Image.arrayjoin(pages, across=1).copy()
    joined.set_type(pyvips.GValue.gint_type, "page-height", pages[0].height)
    return joined


def _pad(
    image: pyvips.Image, box: tuple[int, int], background: str, output_format: str, frames: int
) -> pyvips.Image:
    """Centre every frame on a `box` of the background: `background` (``rrggbb``) when given,
    else transparent where the format has alpha and white where it has not."""
    if image.bands < 3:
        image = image.colourspace("srgb")
    if background or output_format not in _ALPHA_OUTPUTS:
        fill = _rgb(background or "ffffff") + ([255] if image.hasalpha() else [])
    else:
        if not image.hasalpha():
            image = image.bandjoin(255)
        fill = [0, 0, 0, 0]
    width, height = box
    return _each_frame(
        image,
        frames,
        lambda frame: frame.gravity("centre", width, height, extend="background", background=fill),
    )


def _rgb(colour: str) -> list[int]:
    """``rrggbb`` as [r, g, b]."""
    return [int(colour[index : index + 2], 16) for index in (0, 2, 4)]


# Encoder settings favour speed over the last few percent of size (we are benchmarked against
# thumbor and every variant is made on a request's critical path):
# - JPEG: baseline with optimised Huffman tables (a few % smaller for little time); no progressive
#   or trellis quantisation (2-10x slower).  Chroma 4:2:0 below quality 90, as ImageMagick does.
# - PNG: zlib level 3 with adaptive filtering: almost level 6's size, clearly faster.
# - WebP: effort 2 of 0-6, about twice as fast as the default 4 for ~5% more bytes.
# - AVIF: effort 1 of 0-9 (aom speed 8), chosen by `benchmarks/run --phases codecs`: at the
#   luma SSIM of WebP q75 it writes ~0.75x WebP's bytes for at most ~1.7x WebP's CPU per thumbnail;
#   effort 2 saved ~5% more bytes for 2.3-2.7x WebP's CPU, and the default 4 is 6-9x slower than
#   2 for 10-12% fewer bytes (benchmarks/README.md, "AVIF encoder effort").
# - GIF: quantisation effort 1 of 1-10, several times faster than the default 7.
# keep="none" drops EXIF, XMP, IPTC and ICC (pixels are already sRGB).
_Saver = Callable[[pyvips.Image, str, int], None]
AVIF_EFFORT = 1


def _save_jpeg(image: pyvips.Image, path: str, quality: int) -> None:
    image.jpegsave(path, Q=quality, optimize_coding=True, keep="none")


def _save_png(image: pyvips.Image, path: str, quality: int) -> None:
    image.pngsave(path, compression=3, filter="all", keep="none")


def _save_webp(image: pyvips.Image, path: str, quality: int) -> None:
    image.webpsave(path, Q=quality, effort=2, keep="none")


def _save_gif(image: pyvips.Image, path: str, quality: int) -> None:
    image.gifsave(path, effort=1, keep="none")


def _save_avif(image: pyvips.Image, path: str, quality: int) -> None:
    image.heifsave(path, compression="av1", Q=quality, effort=AVIF_EFFORT, keep="none")


def _save_heic(image: pyvips.Image, path: str, quality: int) -> None:
    """HEVC through pillow-heif (the optional extra): pyvips-binary has no HEVC encoder."""
    if image.bands < 3:
        image = image.colourspace("srgb")
    pixels = image.write_to_memory()
    try:
        heif = _pillow_heif().from_bytes(
            mode="RGBA" if image.bands == 4 else "RGB",
            size=(image.width, image.height),
            data=pixels,
        )
        heif.save(path, quality=quality)
    except _HEIF_ERRORS as error:
        raise errors.ProcessingFailed(f"HEIC encoding failed: {error}") from error


_SAVERS: dict[str, _Saver] = {
    "jpeg": _save_jpeg,
    "png": _save_png,
    "webp": _save_webp,
    "gif": _save_gif,
    "avif": _save_avif,
    "heic": _save_heic,
}


def _saver(output_format: str) -> _Saver:
    save = _SAVERS.get(output_format)
    if save is None:
        raise errors.UnsupportedFormat(f"cannot write {output_format!r} images")
    if output_format == "heic":
        _pillow_heif()
    return save


def hevc_decoder() -> ModuleType:
    """What decodes HEVC: pillow-heif when the ``heic`` extra is installed, else pi-heif.

    Both wrap libheif with the same API; pillow-heif's build decodes the benchmark's 12 MP HEIC
    in about a fifth less CPU (median 1.20 s against 1.54 s), as its libde265 runs its SSE4
    kernels and pi-heif 1.4.0's does not (benchmarks/README.md).
    """
    return _installed_pillow_heif() or pi_heif


def _pillow_heif() -> ModuleType:
    """pillow-heif, which writes HEIC; `UnsupportedFormat` without the ``heic`` extra."""
    module = _installed_pillow_heif()
    if module is None:
        raise errors.UnsupportedFormat(f"this server cannot write HEIC: {_HEIC_EXTRA}")
    return module


def _installed_pillow_heif() -> ModuleType | None:
    try:
        return importlib.import_module("pillow_heif")
    except ImportError:
        return None


@contextlib.contextmanager
def job(words: Mapping[str, str]) -> Iterator[None]:
    """Run one job of a worker: libvips' error buffer is empty when it starts and when it ends,
    and an `ImageServerError` it raises names no server path (`words`: see `without_paths`).

    libvips keeps one error buffer per process and only appends to it; pyvips empties it when it
    raises an `Error`, and only then.  What a job leaves there without failing in libvips (a JPEG's
    "Corrupt JPEG data" warning on a file that still decodes, the "bad seek" lines of libheif
    probing past the end of a HEIC whose HEVC data pi-heif then refuses) would otherwise open the
    next `Error`'s text, which may be another client's answer, with the store's absolute paths.
    The messages libvips writes are caught by `_vips_errors_as`; this also covers the other
    libraries' (pi-heif quotes a path it could not open).
    """
    pyvips.vips_lib.vips_error_clear()
    try:
        yield
    except errors.ImageServerError as error:
        message = without_paths(error.message, words)
        if message == error.message:
            raise
        raise type(error)(message) from error
    finally:
        pyvips.vips_lib.vips_error_clear()


def path_words(source: str, *outputs: str) -> dict[str, str]:
    """The word clients read for each path a job was given: its source, and what it writes."""
    return {source: SOURCE_WORD} | dict.fromkeys(outputs, OUTPUT_WORD)


def without_paths(text: str, words: Mapping[str, str]) -> str:
    """`text` with each path of `words` replaced by its word, and any other absolute path too.

    The store's directory and the names of its temporary files are no business of a client's.
    The job's own paths are replaced whole first (the store may be configured under a directory
    whose name has spaces), the longest first so that no path is cut inside a longer one.
    """
    for path in sorted(words, key=len, reverse=True):
        text = text.replace(path, words[path])
    return _ABSOLUTE_PATH.sub(_OTHER_PATH_WORD, text)


@contextlib.contextmanager
def _vips_errors_as(
    kind: Callable[[str], errors.ImageServerError], words: Mapping[str, str]
) -> Iterator[None]:
    """Turn a libvips error into `kind`, with libvips's own words as the detail."""
    try:
        yield
    except pyvips.Error as error:
        raise kind(_describe(error, words)) from error


def _describe(error: pyvips.Error, words: Mapping[str, str]) -> str:
    """A short, client-safe summary of a libvips error.

    libvips repeats lines (one per failed scanline or seek) and names files by their full path;
    clients get each line once, at most the first and the last (the cause and the outcome), and
    words in place of paths (`without_paths`).
    """
    text = without_paths(error.detail or "", words)
    # An indented line continues the message above it.
    messages = (" ".join(message.split()) for message in re.split(r"\n(?=\S)", text))
    lines = list(dict.fromkeys(message for message in messages if message))
    return "; ".join(lines[:1] + lines[-1:] if len(lines) > 2 else lines) or str(error.message)
