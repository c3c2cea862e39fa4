"""The operations measured, as our variant names and as the equivalent thumbor URLs.

A miss must really process, so every request of a miss phase asks for a name nobody asked for
before: sizes vary over a narrow range around the nominal one (w200-w400 for "w300") and over the
copies of a source (see fixtures).  The list of (copy, name) pairs is shuffled with a fixed seed and
both the pyvips limit and wrk consume it from the start, so they do the same mix of work.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from itertools import product

# Sizes = the values the name's numbers take.  Each tuple is one variant's numbers.
Sizes = tuple[int, ...]


@dataclass(frozen=True)
class Operation:
    """One kind of variant: how to name it for us and for thumbor, and the sizes it ranges over."""

    key: str  # as in results: "w300.jpg"
    output: str  # the format written: jpeg, webp, avif
    sizes: Callable[[], list[Sizes]]
    ours: Callable[[Sizes], str]  # variant name
    thumbor: Callable[[Sizes], str]  # thumbor path before the image's file name
    accept: str = ""  # the requests' Accept header, for .auto names
    made: Callable[[Sizes], str] | None = None  # what the worker makes, when not `ours`

    def limit_name(self, sizes: Sizes) -> str:
        """The name the limit renders: the concrete file an ``.auto`` name is answered with."""
        return (self.made or self.ours)(sizes)

    @property
    def jpeg_or_webp(self) -> bool:
        return self.output in ("jpeg", "webp")


def _span(low: int, high: int) -> list[int]:
    return list(range(low, high + 1))


OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "w300.jpg",
        "jpeg",
        lambda: [(w,) for w in _span(200, 400)],
        lambda s: f"w{s[0]}.jpg",
        lambda s: f"{s[0]}x0/filters:format(jpeg)",
    ),
    Operation(
        "w300.webp",
        "webp",
        lambda: [(w,) for w in _span(200, 400)],
        lambda s: f"w{s[0]}.webp",
        lambda s: f"{s[0]}x0/filters:format(webp)",
    ),
    Operation(
        "x200.webp",
        "webp",
        lambda: [(w,) for w in _span(100, 300)],
        lambda s: f"x{s[0]}.webp",
        lambda s: f"{s[0]}x{s[0]}/filters:format(webp)",
    ),
    Operation(
        "300x200.jpg",
        "jpeg",
        lambda: list(product(_span(250, 350), _span(180, 220))),
        lambda s: f"{s[0]}x{s[1]}.jpg",
        lambda s: f"{s[0]}x{s[1]}/filters:format(jpeg)",
    ),
    Operation(
        "full_size.avif",
        "avif",
        # full_size-qN.avif: the only way to make many distinct full-size names; N near 75.
        lambda: [(q,) for q in _span(50, 100)],
        lambda s: f"full_size-q{s[0]}.avif",
        lambda s: f"filters:format(avif):quality({s[0]})",
    ),
)

# Beyond the Go grammar, against thumbor's equivalents (its smart crop needs no detector
# configured: without one it falls back to its own feature detection, as ours uses libvips').
BEYOND: tuple[Operation, ...] = (
    Operation(
        "x200-gsmart.webp",
        "webp",
        lambda: [(w,) for w in _span(100, 300)],
        lambda s: f"x{s[0]}-gsmart.webp",
        lambda s: f"{s[0]}x{s[0]}/smart/filters:format(webp)",
    ),
    Operation(
        "300x200-fit.jpg",
        "jpeg",
        lambda: list(product(_span(250, 350), _span(180, 220))),
        lambda s: f"{s[0]}x{s[1]}-fit.jpg",
        lambda s: f"fit-in/{s[0]}x{s[1]}/filters:format(jpeg)",
    ),
    Operation(
        "x200.auto",
        "avif",
        lambda: [(w,) for w in _span(100, 300)],
        lambda s: f"x{s[0]}.auto",
        lambda s: f"{s[0]}x{s[0]}/filters:format(avif)",
        accept="image/avif,image/webp,image/apng,image/*,*/*;q=0.8",  # Chrome's, for images
        made=lambda s: f"x{s[0]}.avif",
    ),
)

BY_KEY = {operation.key: operation for operation in OPERATIONS + BEYOND}


def work_list(source_key: str, operation: Operation, copies: int) -> list[tuple[int, Sizes]]:
    """Every distinct (copy, sizes) of an operation on a source, in a fixed shuffled order."""
    items = [(copy, sizes) for copy in range(copies) for sizes in operation.sizes()]
    random.Random(f"{source_key}/{operation.key}").shuffle(items)
    return items
