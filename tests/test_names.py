"""The variant name grammar (SPEC §5.1 vectors, DECISIONS D3) and the outputs list."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from imageserver.errors import InvalidParameter, NotFound, UnsupportedFormat
from imageserver.names import (
    DEFAULT_EXTENSIONS,
    Variant,
    check_servable,
    parse_name,
    split_outputs,
)

ALLOWED = frozenset(DEFAULT_EXTENSIONS)


class GrammarVectorTests(SynchronousTestCase):
    def test_go_vectors(self) -> None:
        vectors = {
            "300x400.jpg": (300, 400, 75, "jpg"),
            "x300.jpg": (300, 300, 75, "jpg"),
            "w300.jpg": (300, 0, 75, "jpg"),
            "full_size.jpg": (0, 0, 75, "jpg"),
            "random.jpg": (0, 0, 0, "jpg"),
            "300x400-q10.jpg": (300, 400, 10, "jpg"),
            "x300-q10.jpg": (300, 300, 10, "jpg"),
            "w300-q10.jpg": (300, 0, 10, "jpg"),
            "full_size-q10.jpg": (0, 0, 10, "jpg"),
        }
        for name, expected in vectors.items():
            variant = parse_name(name)
            self.assertEqual(
                (variant.width, variant.height, variant.quality, variant.extension),
                expected,
                name,
            )

    def test_custom_names(self) -> None:
        self.assertEqual(parse_name("random.jpg"), Variant("random.jpg", 0, 0, 0, "jpg", True))
        self.assertEqual(parse_name("original").extension, "")
        self.assertEqual(parse_name("notes.toolong").extension, "")
        self.assertEqual(parse_name("a.b").extension, "")

    def test_leading_zeros(self) -> None:
        self.assertEqual(parse_name("w0200.jpg").width, 200)

    def test_default_quality_is_configurable(self) -> None:
        self.assertEqual(parse_name("w10.webp", default_quality=60).quality, 60)

    def test_refused(self) -> None:
        for name in [
            "w0.jpg",
            "x0.jpg",
            "0x10.jpg",
            "10x0.jpg",
            "x200-q0.jpg",
            "x200-q101.jpg",
            "w1001.jpg",
            "1001x10.jpg",
            "..",
            ".",
            "",
            "a/b.jpg",
            "a\\b.jpg",
            "a\x00.jpg",
            ".hidden",
        ]:
            self.assertRaises(InvalidParameter, parse_name, name)

    def test_maximum_off(self) -> None:
        self.assertEqual(parse_name("w5000.jpg", maximum_width=0).width, 5000)

    def test_servable(self) -> None:
        check_servable(parse_name("w10.jpg"), ALLOWED)
        check_servable(parse_name("original"), frozenset({"gif"}))
        check_servable(parse_name("info.json"), frozenset({"gif"}))
        check_servable(parse_name("notes.txt"), frozenset())
        self.assertRaises(NotFound, check_servable, parse_name("w10.png"), frozenset({"jpg"}))
        self.assertRaises(NotFound, check_servable, parse_name("w10.JPG"), ALLOWED)
        self.assertRaises(UnsupportedFormat, check_servable, parse_name("w10.bmp"), frozenset())

    def test_split_outputs(self) -> None:
        self.assertEqual(split_outputs(""), [])
        self.assertEqual(split_outputs("x300.jpg, x300.webp,,x300.jpg"), ["x300.jpg", "x300.webp"])


class GrammarPropertyTests(SynchronousTestCase):
    @given(
        st.integers(1, 1000),
        st.integers(1, 1000),
        st.one_of(st.none(), st.integers(1, 100)),
        st.sampled_from(sorted(ALLOWED)),
    )
    def test_rectangles_round_trip(
        self, width: int, height: int, quality: int | None, ext: str
    ) -> None:
        suffix = "" if quality is None else f"-q{quality}"
        variant = parse_name(f"{width}x{height}{suffix}.{ext}")
        self.assertEqual(
            (variant.width, variant.height, variant.quality, variant.extension, variant.custom),
            (width, height, quality or 75, ext, False),
        )

    @given(st.text(max_size=40))
    def test_any_name_parses_or_is_refused_cleanly(self, name: str) -> None:
        """No name crashes the parser; an accepted name is a single safe path segment."""
        try:
            variant = parse_name(name)
        except InvalidParameter:
            return
        self.assertEqual(variant.name, name)
        self.assertNotIn("/", name)
        self.assertNotIn(name, ("", ".", ".."))
        self.assertLessEqual(max(variant.width, variant.height), 1000)
        self.assertTrue(variant.custom or 1 <= variant.quality <= 100)
