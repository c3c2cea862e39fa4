"""A small ctypes binding to the libheif that pi-heif bundles, for what pi-heif's API cannot do.

pi-heif 1.4.0 decodes a HEIF's primary image whole and nothing less.  Its libheif (1.23.0, in
``pi_heif.libs/``) can also decode an embedded thumbnail, or one tile of a grid image at a time:
the cheap sources a thumbnail server wants (docs/scaling.md).  This module binds the public C API
(``libheif/api/libheif/heif_*.h`` of libheif v1.23.0) for those, and for the upload check's
strict whole decode (pi-heif decodes leniently: a grid cut short comes out with blank tiles).

A variant that needs the whole image is still decoded by `operations.hevc_decoder()`: through
this binding it costs the same CPU as through pi-heif (the same library), and pillow-heif's
build, used when the ``heic`` extra is installed, decodes it about a tenth faster
(benchmarks/README.md).

Everything here copies pixels out of libheif before releasing the image that owns them: libvips
must never see a pointer into memory libheif may free (the crash seen with pi-heif's unowned
buffers, see `operations._decode_hevc`).
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache

import pi_heif

# The version whose headers these declarations were written from; tests/test_private_api.py pins it.
VERSION = "1.23.0"

# libheif decodes a grid's tiles on up to this many threads of its own (its default is 4; 0 is
# none).  Workers run pinned, one per CPU, where more threads only cost CPU: on one CPU a 12 MP
# grid took 900 ms with 0, 913 with 1 and 964 with 4 (benchmarks/README.md).
DECODING_THREADS = 0

# From heif_image.h.
_COLORSPACE_RGB = 1
_CHROMA_INTERLEAVED_RGB = 10
_CHROMA_INTERLEAVED_RGBA = 11
_CHANNEL_INTERLEAVED = 10
# From heif_color.h: the raw colour profiles pi-heif also reports as ``icc_profile``.
_ICC_PROFILE_TYPES = (
    int.from_bytes(b"rICC", "big"),
    int.from_bytes(b"prof", "big"),
)


class HeifError(Exception):
    """libheif refused the file or failed to decode it; the message is libheif's."""


class _Error(ctypes.Structure):
    """``struct heif_error``, returned by value."""

    _fields_ = [
        ("code", ctypes.c_int),
        ("subcode", ctypes.c_int),
        ("message", ctypes.c_char_p),
    ]


class _Tiling(ctypes.Structure):
    """``struct heif_image_tiling`` (heif_tiling.h), version 1."""

    _fields_ = [
        ("version", ctypes.c_int),
        ("num_columns", ctypes.c_uint32),
        ("num_rows", ctypes.c_uint32),
        ("tile_width", ctypes.c_uint32),
        ("tile_height", ctypes.c_uint32),
        ("image_width", ctypes.c_uint32),
        ("image_height", ctypes.c_uint32),
        ("top_offset", ctypes.c_uint32),
        ("left_offset", ctypes.c_uint32),
        ("number_of_extra_dimensions", ctypes.c_uint8),
        ("extra_dimension_size", ctypes.c_uint32 * 8),
    ]


class _DecodingOptions(ctypes.Structure):
    """The start of ``struct heif_decoding_options`` (heif_decoding.h), up to the fields we set.
    Always allocated by libheif, which fills in its version and defaults."""

    _fields_ = [
        ("version", ctypes.c_uint8),
        ("ignore_transformations", ctypes.c_uint8),
        ("start_progress", ctypes.c_void_p),
        ("on_progress", ctypes.c_void_p),
        ("end_progress", ctypes.c_void_p),
        ("progress_user_data", ctypes.c_void_p),
        ("convert_hdr_to_8bit", ctypes.c_uint8),
        ("strict_decoding", ctypes.c_uint8),
    ]


_P = ctypes.c_void_p


def library_path() -> str:
    """The libheif shared library bundled in the installed pi-heif wheel."""
    directory = os.path.join(os.path.dirname(os.path.dirname(pi_heif.__file__)), "pi_heif.libs")
    found = sorted(glob.glob(os.path.join(directory, "libheif-*.so*")))
    if not found:
        raise ImportError(
            f"no libheif in {directory}: imageserver decodes HEIC with the libheif that the "
            "pi-heif wheel bundles (pip install pi-heif from PyPI, not a build without its libs)"
        )
    return found[0]


@cache
def _lib() -> ctypes.CDLL:
    """The library, its functions declared.  The same file pi-heif's extension has loaded, so
    the process holds one libheif, initialised once more here (`heif_init` counts its callers)."""
    lib = ctypes.CDLL(library_path())
    declarations: dict[str, tuple[object, list[object]]] = {
        "heif_get_version": (ctypes.c_char_p, []),
        "heif_init": (_Error, [_P]),
        "heif_context_alloc": (_P, []),
        "heif_context_free": (None, [_P]),
        "heif_context_read_from_file": (_Error, [_P, ctypes.c_char_p, _P]),
        "heif_context_set_max_decoding_threads": (None, [_P, ctypes.c_int]),
        "heif_context_get_primary_image_handle": (_Error, [_P, ctypes.POINTER(_P)]),
        "heif_image_handle_release": (None, [_P]),
        "heif_image_handle_get_item_id": (ctypes.c_uint32, [_P]),
        "heif_image_handle_get_width": (ctypes.c_int, [_P]),
        "heif_image_handle_get_height": (ctypes.c_int, [_P]),
        "heif_image_handle_has_alpha_channel": (ctypes.c_int, [_P]),
        "heif_image_handle_get_number_of_thumbnails": (ctypes.c_int, [_P]),
        "heif_image_handle_get_list_of_thumbnail_IDs": (
            ctypes.c_int,
            [_P, ctypes.POINTER(ctypes.c_uint32), ctypes.c_int],
        ),
        "heif_image_handle_get_thumbnail": (_Error, [_P, ctypes.c_uint32, ctypes.POINTER(_P)]),
        "heif_image_handle_get_image_tiling": (_Error, [_P, ctypes.c_int, ctypes.POINTER(_Tiling)]),
        "heif_item_get_transformation_properties": (
            ctypes.c_int,
            [_P, ctypes.c_uint32, _P, ctypes.c_int],
        ),
        "heif_image_handle_get_color_profile_type": (ctypes.c_uint32, [_P]),
        "heif_image_handle_get_raw_color_profile_size": (ctypes.c_size_t, [_P]),
        "heif_image_handle_get_raw_color_profile": (_Error, [_P, ctypes.c_char_p]),
        "heif_decoding_options_alloc": (ctypes.POINTER(_DecodingOptions), []),
        "heif_decoding_options_free": (None, [ctypes.POINTER(_DecodingOptions)]),
        "heif_decode_image": (
            _Error,
            [_P, ctypes.POINTER(_P), ctypes.c_int, ctypes.c_int, ctypes.POINTER(_DecodingOptions)],
        ),
        "heif_image_handle_decode_image_tile": (
            _Error,
            [
                _P,
                ctypes.POINTER(_P),
                ctypes.c_int,
                ctypes.c_int,
                ctypes.POINTER(_DecodingOptions),
                ctypes.c_uint32,
                ctypes.c_uint32,
            ],
        ),
        "heif_image_get_width": (ctypes.c_int, [_P, ctypes.c_int]),
        "heif_image_get_height": (ctypes.c_int, [_P, ctypes.c_int]),
        "heif_image_is_premultiplied_alpha": (ctypes.c_int, [_P]),
        "heif_image_get_plane_readonly2": (
            ctypes.POINTER(ctypes.c_uint8),
            [_P, ctypes.c_int, ctypes.POINTER(ctypes.c_size_t)],
        ),
        "heif_image_release": (None, [_P]),
    }
    for name, (result, arguments) in declarations.items():
        function = getattr(lib, name)
        function.restype = result
        function.argtypes = arguments
    _check(lib.heif_init(None))
    return lib


def version() -> str:
    """The bound library's version, e.g. ``1.23.0``."""
    return str(_lib().heif_get_version().decode())


def _check(error: _Error) -> None:
    if error.code:
        message = error.message.decode(errors="replace") if error.message else ""
        raise HeifError(message.strip() or "unknown error")


@dataclass(frozen=True)
class Pixels:
    """A decoded image copied out of libheif: 8-bit interleaved RGB or RGBA rows, packed."""

    data: bytes
    width: int
    height: int
    bands: int  # 3 or 4
    premultiplied: bool  # the alpha, when there is one, is premultiplied


@dataclass(frozen=True)
class Tiling:
    """How an image is stored: a grid of `columns` x `rows` tiles of `tile_width` x
    `tile_height` (one tile for an image that is not a grid)."""

    columns: int
    rows: int
    tile_width: int
    tile_height: int


@dataclass(frozen=True)
class Image:
    """An image item of an open file: the primary image or a thumbnail (sizes as displayed,
    after the file's rotation, mirroring and clean aperture)."""

    handle: int
    width: int
    height: int
    alpha: bool


class File:
    """An open HEIF file; `open_file` gives one and releases everything it handed out."""

    def __init__(self, context: int) -> None:
        self._context = context
        self._handles: list[int] = []

    def _image(self, handle: int) -> Image:
        self._handles.append(handle)
        lib = _lib()
        return Image(
            handle,
            lib.heif_image_handle_get_width(handle),
            lib.heif_image_handle_get_height(handle),
            bool(lib.heif_image_handle_has_alpha_channel(handle)),
        )

    def primary(self) -> Image:
        handle = _P()
        _check(_lib().heif_context_get_primary_image_handle(self._context, ctypes.byref(handle)))
        return self._image(handle.value or 0)

    def thumbnails(self, image: Image) -> list[Image]:
        """The thumbnails embedded for `image`, usually none or one."""
        lib = _lib()
        count = lib.heif_image_handle_get_number_of_thumbnails(image.handle)
        ids = (ctypes.c_uint32 * max(count, 1))()
        count = lib.heif_image_handle_get_list_of_thumbnail_IDs(image.handle, ids, count)
        found = []
        for item in ids[:count]:
            handle = _P()
            _check(lib.heif_image_handle_get_thumbnail(image.handle, item, ctypes.byref(handle)))
            found.append(self._image(handle.value or 0))
        return found

    def transformed(self, image: Image) -> bool:
        """Whether the file rotates, mirrors or crops (clean aperture) `image` for display: then
        its tiles are not where the displayed image's pixels are."""
        lib = _lib()
        item = lib.heif_image_handle_get_item_id(image.handle)
        return lib.heif_item_get_transformation_properties(self._context, item, None, 0) > 0

    def tiling(self, image: Image) -> Tiling:
        tiling = _Tiling()
        _check(_lib().heif_image_handle_get_image_tiling(image.handle, 0, ctypes.byref(tiling)))
        return Tiling(
            tiling.num_columns or 1,
            tiling.num_rows or 1,
            tiling.tile_width or image.width,
            tiling.tile_height or image.height,
        )

    def icc_profile(self, image: Image) -> bytes | None:
        """The embedded ICC profile (Display P3 on a phone), if any."""
        lib = _lib()
        if lib.heif_image_handle_get_color_profile_type(image.handle) not in _ICC_PROFILE_TYPES:
            return None
        size = lib.heif_image_handle_get_raw_color_profile_size(image.handle)
        profile = ctypes.create_string_buffer(size)
        _check(lib.heif_image_handle_get_raw_color_profile(image.handle, profile))
        return profile.raw

    def decode(self, image: Image, strict: bool = False) -> Pixels:
        """The whole image, transformed for display, HDR converted to 8 bits.

        libheif decodes leniently by default: a grid whose tiles are cut off or undecodable comes
        out with those tiles blank, and only a warning says so.  `strict` makes that an error.
        """
        return self._decoded(image, lambda *arguments: _lib().heif_decode_image(*arguments), strict)

    def decode_tile(self, image: Image, column: int, row: int) -> Pixels:
        """One grid tile, as stored: call only for an image that is not `transformed`.  The
        tiles of the last column and row may reach past the image's edge."""

        def decode(*arguments: object) -> _Error:
            return _lib().heif_image_handle_decode_image_tile(*arguments, column, row)

        return self._decoded(image, decode, strict=False)

    def _decoded(self, image: Image, decode: Callable[..., _Error], strict: bool) -> Pixels:
        lib = _lib()
        bands = 4 if image.alpha else 3
        chroma = _CHROMA_INTERLEAVED_RGBA if image.alpha else _CHROMA_INTERLEAVED_RGB
        options = lib.heif_decoding_options_alloc()
        options.contents.convert_hdr_to_8bit = 1
        options.contents.strict_decoding = int(strict)
        decoded = _P()
        try:
            _check(decode(image.handle, ctypes.byref(decoded), _COLORSPACE_RGB, chroma, options))
        finally:
            lib.heif_decoding_options_free(options)
        try:
            return _copied(decoded.value or 0, bands)
        finally:
            lib.heif_image_release(decoded)

    def close(self) -> None:
        lib = _lib()
        for handle in self._handles:
            lib.heif_image_handle_release(handle)
        self._handles.clear()
        lib.heif_context_free(self._context)


def _copied(decoded: int, bands: int) -> Pixels:
    """The interleaved plane of a decoded image, copied into packed rows."""
    lib = _lib()
    width = lib.heif_image_get_width(decoded, _CHANNEL_INTERLEAVED)
    height = lib.heif_image_get_height(decoded, _CHANNEL_INTERLEAVED)
    stride = ctypes.c_size_t()  # the "2" variant's: an int stride times a height can overflow
    plane = lib.heif_image_get_plane_readonly2(decoded, _CHANNEL_INTERLEAVED, ctypes.byref(stride))
    if not plane or width <= 0 or height <= 0:
        raise HeifError("the decoded image has no pixels")
    row = width * bands
    if stride.value == row:
        data = ctypes.string_at(plane, row * height)
    else:  # libheif pads rows; libvips wants them packed
        base = ctypes.addressof(plane.contents)
        data = b"".join(ctypes.string_at(base + y * stride.value, row) for y in range(height))
    premultiplied = bands == 4 and bool(lib.heif_image_is_premultiplied_alpha(decoded))
    return Pixels(data, width, height, bands, premultiplied)


@contextlib.contextmanager
def open_file(path: str) -> Iterator[File]:
    """Open a HEIF file, to be decoded on `DECODING_THREADS` threads; raises `HeifError`."""
    lib = _lib()
    context = lib.heif_context_alloc()
    if not context:
        raise MemoryError("libheif could not allocate a context")
    heif = File(context)
    try:
        _check(lib.heif_context_read_from_file(context, os.fsencode(path), None))
        lib.heif_context_set_max_decoding_threads(context, DECODING_THREADS)
        yield heif
    finally:
        heif.close()
