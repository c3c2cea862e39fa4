"""The variant file-name grammar (docs/names.md): a file name in, a `Variant` out.

Pure: no I/O, so every rule here is property-tested.  The Go server never rejects a name; we reject
the ones that cannot mean anything (zero sizes, qualities outside 1-100, sizes over the maximum)
with a 400 instead of quietly producing a full-size image.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase

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

DEFAULT_EXTENSIONS = ("jpg", "jpeg", "png", "gif", "webp", "avif", "heic", "auto")

# Names that are never variants: served when present, never generated.
ORIGINAL = "original"
INFO_JSON = "info.json"
RESERVED_NAMES = frozenset({ORIGINAL, INFO_JSON})

# Every name that could be a variant: a size, then "-"-separated modifiers, then an extension.
_CANDIDATE = re.compile(
    r"(?P<base>[0-9]+x[0-9]+|x[0-9]+|w[0-9]+|h[0-9]+|full_size)(?P<modifiers>(?:-[^-]*)*)"
    r"\.(?P<extension>\w{3,5})",
    re.ASCII | re.DOTALL,
)
_CUSTOM = re.compile(r".+\.(\w{3,5})", re.ASCII | re.DOTALL)
_UNSAFE = re.compile(r"[/\\\x00]")

# The extension that lets the request's ``Accept`` choose the format.
AUTO = "auto"
# Modifiers, in the one order a name may give them.
MODIFIERS = ("fit", "pad", "g", "fp", "dpr", "bg", "blur", "q")
GRAVITIES = ("n", "s", "e", "w", "ne", "nw", "se", "sw", "smart")
_FOCUS = re.compile(r"fp([0-9]+)x([0-9]+)", re.ASCII)
_NUMBER = re.compile(r"[a-z]+([0-9]+)", re.ASCII)
_COLOUR = re.compile(r"bg([0-9a-fA-F]{6})", re.ASCII)


@dataclass(frozen=True)
class Variant:
    """What a name asks for.

    ``width`` and ``height`` are the name's, before ``dpr``.  Both set: cover the box and crop
    (at ``gravity`` or ``focus``, else the centre), or with ``fit`` ``"fit"`` fit inside it, or
    with ``"pad"`` fit and pad to it.  One set: that side, the other in proportion.  Neither: the
    source's size.  ``quality`` 0 means the encoder's default (custom names).  ``extension`` is
    the name's extension as written, '' when it has none.  ``background`` is ``rrggbb`` or ''.
    """

    name: str
    width: int
    height: int
    quality: int
    extension: str
    custom: bool = False
    fit: str = ""
    gravity: str = ""
    focus: tuple[int, int] | None = None
    dpr: int = 1
    background: str = ""
    blur: int = 0

    @property
    def output_format(self) -> str | None:
        """The format the worker writes, or None when we cannot write this extension."""
        return OUTPUT_FORMATS.get(self.extension.lower())

    @property
    def box(self) -> tuple[int, int]:
        """The width and height asked for, in pixels (``dpr`` applied; 0 where unset)."""
        return self.width * self.dpr, self.height * self.dpr

    @property
    def crops(self) -> bool:
        return bool(self.width and self.height and not self.fit)

    @property
    def stem(self) -> str:
        """The name without its extension (what ``--allowed-variants`` patterns match)."""
        return self.name.rpartition(".")[0] if self.extension else self.name

    def in_format(self, extension: str) -> Variant:
        """The same variant with another extension (what ``.auto`` becomes)."""
        return replace(self, name=f"{self.stem}.{extension}", extension=extension)


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

    A name of the grammar (a size, modifiers, an extension) is a variant; anything else is a
    custom name (an attachment, or a full-size conversion when it has a writable extension).
    Every name the Go server knew (``wN``, ``xN``, ``WxH``, ``full_size``, with ``-qN``) means
    what it meant there.
    """
    check_file_name(name)
    found = _candidate(name)
    if found is None:
        match = _CUSTOM.fullmatch(name)
        return Variant(name, 0, 0, 0, match[1] if match else "", custom=True)
    base, tokens, extension = found
    width, height = _base_size(base, name)
    given = {kind: token for kind, token in tokens}
    if len(given) < len(tokens):
        twice = next(kind for kind, _ in tokens if [k for k, _ in tokens].count(kind) > 1)
        raise InvalidParameter(f"{name}: -{twice} may appear only once")
    variant = Variant(
        name,
        width,
        height,
        _quality(given.get("q"), default_quality, name),
        extension,
        fit="fit" if "fit" in given else "pad" if "pad" in given else "",
        gravity=_gravity(given.get("g"), name),
        focus=_focus(given.get("fp"), name),
        dpr=_bounded(given.get("dpr"), "dpr", 2, 3, name, default=1),
        background=_background(given.get("bg"), name),
        blur=_bounded(given.get("blur"), "blur", 1, 100, name, default=0),
    )
    _check_combination(variant, base, given, name)
    canonical = _canonical(variant, base, given.get("q"))
    if canonical != name:
        raise InvalidParameter(
            f"{name}: write it {canonical} (modifiers go in the order"
            f" {', '.join('-' + kind for kind in MODIFIERS)}, each once)"
        )
    longest = max(variant.box)
    if maximum_width and longest > maximum_width:
        raise InvalidParameter(f"{name}: {longest} pixels is over the maximum of {maximum_width}")
    return variant


def _candidate(name: str) -> tuple[str, list[tuple[str, str]], str] | None:
    """(base, [(kind, token)...], extension) of a name of the grammar's shape, else None.

    A modifier is known by its first letters (``g…`` is a gravity, ``blur…`` a blur): a known
    kind with a wrong value is the client's mistake (400), while a name with an unknown modifier
    (``x200-notes.txt``) is not a variant at all.
    """
    match = _CANDIDATE.fullmatch(name)
    if match is None:
        return None
    modifiers = match["modifiers"]
    tokens = []
    for token in modifiers.split("-")[1:] if modifiers else []:
        kind = _kind(token)
        if kind is None:
            return None
        tokens.append((kind, token))
    return match["base"], tokens, match["extension"]


def _kind(token: str) -> str | None:
    if token in ("fit", "pad"):
        return token
    for kind in ("fp", "dpr", "bg", "blur", "g", "q"):
        if token.startswith(kind):
            return kind
    return None


def _base_size(base: str, name: str) -> tuple[int, int]:
    if base == "full_size":
        return 0, 0
    if base[0] == "w":
        return _size(base[1:], name), 0
    if base[0] == "h":
        return 0, _size(base[1:], name)
    if base[0] == "x":
        side = _size(base[1:], name)
        return side, side
    width, _, height = base.partition("x")
    return _size(width, name), _size(height, name)


def _check_combination(variant: Variant, base: str, given: dict[str, str], name: str) -> None:
    """Modifiers that mean nothing with this base or with each other are refused."""
    if "fit" in given and "pad" in given:
        raise InvalidParameter(f"{name}: -fit and -pad exclude each other")
    if variant.fit and not base[0].isdigit():
        raise InvalidParameter(f"{name}: -{variant.fit} needs a WxH box")
    positioned = "-g" if variant.gravity else "-fp" if variant.focus else ""
    if positioned and not variant.crops:
        raise InvalidParameter(f"{name}: {positioned} applies to crops (xN or WxH)")
    if variant.gravity and variant.focus:
        raise InvalidParameter(f"{name}: -g and -fp exclude each other")
    if variant.dpr > 1 and base == "full_size":
        raise InvalidParameter(f"{name}: -dpr needs a size")


def _canonical(variant: Variant, base: str, quality: str | None) -> str:
    """The one spelling of a variant: modifiers in `MODIFIERS` order, numbers without leading
    zeros, colours in lower case.  The size and ``-qN`` stay as written (the Go server's names
    kept them, ``w0200.jpg`` and ``x200-q075.jpg`` included)."""
    parts = [base, variant.fit]
    parts.append(f"g{variant.gravity}" if variant.gravity else "")
    parts.append("fp{}x{}".format(*variant.focus) if variant.focus else "")
    parts.append(f"dpr{variant.dpr}" if variant.dpr > 1 else "")
    parts.append(f"bg{variant.background}" if variant.background else "")
    parts.append(f"blur{variant.blur}" if variant.blur else "")
    parts.append(quality or "")
    return "-".join(part for part in parts if part) + "." + variant.extension


def _gravity(token: str | None, name: str) -> str:
    if token is None:
        return ""
    if token[1:] not in GRAVITIES:
        choices = ", ".join("g" + gravity for gravity in GRAVITIES)
        raise InvalidParameter(f"{name}: -{token} is no gravity; one of {choices}")
    return token[1:]


def _focus(token: str | None, name: str) -> tuple[int, int] | None:
    if token is None:
        return None
    match = _FOCUS.fullmatch(token)
    if match is None or not all(0 <= int(value) <= 100 for value in match.groups()):
        raise InvalidParameter(
            f"{name}: -{token} is no focal point; -fpXxY with X and Y in percent (0-100)"
        )
    return int(match[1]), int(match[2])


def _bounded(token: str | None, kind: str, low: int, high: int, name: str, default: int) -> int:
    if token is None:
        return default
    match = _NUMBER.fullmatch(token)
    if match is None or token[: -len(match[1])] != kind or not low <= int(match[1]) <= high:
        raise InvalidParameter(f"{name}: -{token}: -{kind} takes {low} to {high}")
    return int(match[1])


def _background(token: str | None, name: str) -> str:
    if token is None:
        return ""
    match = _COLOUR.fullmatch(token)
    if match is None:
        raise InvalidParameter(f"{name}: -{token} is no colour; -bgRRGGBB in hexadecimal")
    return match[1].lower()


def is_variant_name(name: str) -> bool:
    """Whether ``name`` has the shape of the variant grammar, valid values or not (``w0.jpg``,
    ``x200-g.jpg`` too): such names are the server's, never a client's attachment."""
    return _candidate(name) is not None


def variant_allowed(variant: Variant, patterns: Sequence[str]) -> bool:
    """Whether ``--allowed-variants`` (shell patterns over the name without its extension;
    none: every variant) lets ``variant`` be made."""
    return not patterns or any(fnmatchcase(variant.stem, pattern) for pattern in patterns)


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
    if not variant.custom and variant.output_format is None and variant.extension != AUTO:
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


def _quality(token: str | None, default: int, name: str) -> int:
    if token is None:
        return default
    if not token[1:].isdigit() or not token[1:].isascii():
        raise InvalidParameter(f"{name}: -{token} is no quality; -qN with N from 1 to 100")
    value = int(token[1:])
    if not 1 <= value <= 100:
        raise InvalidParameter(f"{name}: quality must be between 1 and 100, not {value}")
    return value
