"""Which format an ``.auto`` name is served in: the request's ``Accept`` against what we write.

Pure.  Only formats a client names are taken as accepted: browsers that decode AVIF or WebP say so
(``image/avif,image/webp,*/*``), while ``*/*`` from curl or an old client promises nothing, so it
gets JPEG, or PNG when the image has transparency to keep.
"""

from __future__ import annotations

from collections.abc import Collection

# Tried in this order: the smallest files first.
PREFERRED = (("avif", "image/avif"), ("webp", "image/webp"))


def accepted_types(accept: str) -> set[str]:
    """The media types an ``Accept`` header names with a quality above zero, in lower case."""
    accepted = set()
    for item in accept.split(","):
        media, *parameters = (part.strip() for part in item.split(";"))
        quality = 1.0
        for parameter in parameters:
            key, _, value = parameter.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if media and quality > 0:
            accepted.add(media.lower())
    return accepted


def preferred_extension(accept: str, allowed: Collection[str]) -> str | None:
    """AVIF, else WebP, when the client names it and ``allowed`` (empty: all) has it."""
    accepted = accepted_types(accept)
    for extension, media in PREFERRED:
        if media in accepted and (not allowed or extension in allowed):
            return extension
    return None


def fallback_extension(alpha: bool, allowed: Collection[str]) -> str | None:
    """What every client decodes: PNG for an image with alpha, else JPEG (the other when
    ``allowed`` leaves out the first)."""
    for extension in ("png", "jpg") if alpha else ("jpg", "png"):
        if not allowed or extension in allowed:
            return extension
    return None
