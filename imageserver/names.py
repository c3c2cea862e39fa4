"""The variant file-name grammar (SPEC §5, DECISIONS D3): a file name in, a `Variant` out.

Pure: no I/O, so every rule here is property-tested.  The Go server never rejects a name; we reject
the ones that cannot mean anything (zero sizes, qualities outside 1-100, sizes over the maximum)
with a 400 instead of quietly producing a full-size image.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from imageserver.errors import InvalidParameter, NotFound, UnsupportedFormat

# Extension as written in a name -> the format the worker writes.
OUTPUT_FORMATS: dict[str, str] = {
    "jpg": "jpeg",
    "jpeg": "jpeg",
    "png": "png",
    "webp": "webp",
    "gif": "gif",
    "avif": "avif",
    "heic": "heic",
    "heif": "heic",
}

DEFAULT_EXTENSIONS = ("jpg", "jpeg", "png", "gif", "webp", "avif", "heic")

# Names that are never variants: served when present, never generated.
ORIGINAL = "original"
INFO_JSON = "info.json"
RESERVED_NAMES = frozenset({ORIGINAL, INFO_JSON})

_QUALITY = r"(?:-q([0-9]+))?"
_EXT = r"\.(\w{3,5})"
_RECTANGLE = re.compile(rf"([0-9]+)x([0-9]+){_QUALITY}{_EXT}", re.ASCII)
_SQUARE = re.compile(rf"x([0-9]+){_QUALITY}{_EXT}", re.ASCII)
_WIDTH = re.compile(rf"w([0-9]+){_QUALITY}{_EXT}", re.ASCII)
_FULL_SIZE = re.compile(rf"full_size{_QUALITY}{_EXT}", re.ASCII)
_CUSTOM = re.compile(r".+\.(\w{3,5})", re.ASCII | re.DOTALL)
_UNSAFE = re.compile(r"[/\\\x00]")


@dataclass(frozen=True)
class Variant:
    """What a name asks for.

    ``width`` and ``height`` both set: cover the box and crop the centre.  Only ``width``: that
    width, height in proportion.  Neither: the source's size.  ``quality`` 0 means the encoder's
    default (custom names).  ``extension`` is the name's extension as written, '' when it has none.
    """

    name: str
    width: int
    height: int
    quality: int
    extension: str
    custom: bool = False

    @property
    def output_format(self) -> str | None:
        """The format the worker writes, or None when we cannot write this extension."""
        return OUTPUT_FORMATS.get(self.extension.lower())


# The longest file name common filesystems (and S3 keys' path segments) take.
MAX_NAME_BYTES = 255


def check_file_name(name: str) -> None:
    """Refuse names that could escape the image directory, hide in it, or not fit on disk."""
    if name in ("", ".", "..") or _UNSAFE.search(name) or name.startswith("."):
        raise InvalidParameter(f"invalid file name: {name!r}")
    try:
        size = len(name.encode())
    except UnicodeEncodeError:  # a lone surrogate: no file name on disk or in a bucket
        raise InvalidParameter(f"invalid file name: {name!r}") from None
    if size > MAX_NAME_BYTES:
        raise InvalidParameter(f"file names are at most {MAX_NAME_BYTES} bytes")


def parse_name(name: str, default_quality: int = 75, maximum_width: int = 1000) -> Variant:
    """Parse a variant name, raising `InvalidParameter` for values that cannot be served.

    The forms are tried in the Go server's order; anything else is a custom name (an attachment,
    or a full-size conversion when it has a writable extension).
    """
    check_file_name(name)
    if match := _RECTANGLE.fullmatch(name):
        width, height = _size(match[1], name), _size(match[2], name)
        quality, ext = _quality(match[3], default_quality, name), match[4]
    elif match := _SQUARE.fullmatch(name):
        width = height = _size(match[1], name)
        quality, ext = _quality(match[2], default_quality, name), match[3]
    elif match := _WIDTH.fullmatch(name):
        width, height = _size(match[1], name), 0
        quality, ext = _quality(match[2], default_quality, name), match[3]
    elif match := _FULL_SIZE.fullmatch(name):
        width = height = 0
        quality, ext = _quality(match[1], default_quality, name), match[2]
    else:
        match = _CUSTOM.fullmatch(name)
        return Variant(name, 0, 0, 0, match[1] if match else "", custom=True)
    if maximum_width and max(width, height) > maximum_width:
        raise InvalidParameter(
            f"{name}: {max(width, height)} pixels is over the maximum of {maximum_width}"
        )
    return Variant(name, width, height, quality, ext)


def is_variant_name(name: str) -> bool:
    """Whether ``name`` has a form of the variant grammar, valid values or not (``w0.jpg`` too):
    such names are the server's, never a client's attachment."""
    return any(form.fullmatch(name) for form in (_RECTANGLE, _SQUARE, _WIDTH, _FULL_SIZE))


def is_generated(name: str) -> bool:
    """Whether a stored file of this name is ours and never changes: the original, its details, or
    a variant of the grammar.  Anything else is a client's attachment, which can be replaced."""
    return name in RESERVED_NAMES or is_variant_name(name)


# One extension for each format a made-up name can ask for (``photo.jpeg`` is ``full_size.jpg``).
_CANONICAL_EXTENSIONS = {
    "jpeg": "jpg",
    "png": "png",
    "webp": "webp",
    "gif": "gif",
    "avif": "avif",
    "heic": "heic",
}


def full_size_alias(variant: Variant) -> str | None:
    """The variant a made-up name of a writable format is served from: ``full_size`` in that
    format, so that any number of such names cost one stored file per format.  None for names
    that are variants already, or whose extension we cannot write."""
    output_format = variant.output_format
    if not variant.custom or output_format is None:
        return None
    return f"full_size.{_CANONICAL_EXTENSIONS[output_format]}"


# Generated files never change; attachments can be replaced, so caches must revalidate them.
CACHE_IMMUTABLE = "public, max-age=31536000, immutable"
CACHE_REVALIDATE = "public, no-cache"


def cache_control(name: str) -> str:
    """The ``Cache-Control`` of a stored file, in responses and in the bucket alike."""
    return CACHE_IMMUTABLE if is_generated(name) else CACHE_REVALIDATE


def check_servable(variant: Variant, allowed_extensions: frozenset[str]) -> None:
    """Apply the ``--extensions`` allow-list (empty: allow all) and our writers' limits.

    Names without an extension (``original``, attachments) always pass: they are only ever served.
    """
    if variant.name in RESERVED_NAMES or not variant.extension:
        return
    if allowed_extensions and variant.extension not in allowed_extensions:
        raise NotFound(f"image not available: extension {variant.extension!r} is not allowed")
    if not variant.custom and variant.output_format is None:
        raise UnsupportedFormat(
            f"{variant.name}: cannot write {variant.extension!r}; "
            f"formats: {', '.join(sorted(OUTPUT_FORMATS))}"
        )


def split_outputs(raw: str) -> list[str]:
    """``outputs=a,b`` as a list: blanks dropped, spaces trimmed, order kept, duplicates once."""
    names = (item.strip() for item in raw.split(","))
    return list(dict.fromkeys(name for name in names if name))


def _size(digits: str, name: str) -> int:
    value = int(digits)
    if value == 0:
        raise InvalidParameter(f"{name}: sizes start at 1 pixel")
    return value


def _quality(digits: str | None, default: int, name: str) -> int:
    if digits is None:
        return default
    value = int(digits)
    if not 1 <= value <= 100:
        raise InvalidParameter(f"{name}: quality must be between 1 and 100, not {value}")
    return value
