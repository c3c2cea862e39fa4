"""The variant name grammar (the Go server's vectors, docs/names.md) and the outputs list."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from imageserver import names
from imageserver.errors import InvalidParameter, NotFound, UnsupportedFormat
from imageserver.names import (
    DEFAULT_EXTENSIONS,
    Variant,
    cache_control,
    check_file_name,
    check_servable,
    full_size_alias,
    is_generated,
    parse_name,
    split_outputs,
    variant_allowed,
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


class TableTests(SynchronousTestCase):
    """The name-by-name tables: every entry checked, so a changed or lost one is seen."""

    def test_output_formats(self) -> None:
        """Each extension a name may end in and the format the worker writes for it; any case."""
        self.assertEqual(
            names.OUTPUT_FORMATS,
            {
                "jpg": "jpeg",
                "jpeg": "jpeg",
                "png": "png",
                "webp": "webp",
                "gif": "gif",
                "avif": "avif",
                "heic": "heic",
                "heif": "heic",
            },
        )
        for extension, written in names.OUTPUT_FORMATS.items():
            self.assertEqual(parse_name(f"w10.{extension}").output_format, written, extension)
            self.assertEqual(parse_name(f"w10.{extension.upper()}").output_format, written)
        for other in ("auto", "bmp", "tiff", "json"):
            self.assertIsNone(parse_name(f"w10.{other}").output_format, other)
        self.assertIsNone(parse_name("original").output_format)

    def test_default_extensions(self) -> None:
        """What ``--extensions`` allows unless told otherwise: every format we write but heif,
        and ``auto``."""
        self.assertEqual(
            DEFAULT_EXTENSIONS, ("jpg", "jpeg", "png", "gif", "webp", "avif", "heic", "auto")
        )

    def test_is_generated_and_cache_control(self) -> None:
        """The server's own files never change (immutable); a client's attachment can be
        replaced (revalidated) -- name by name."""
        immutable = "public, max-age=31536000, immutable"
        revalidate = "public, no-cache"
        table = {
            "original": True,
            "info.json": True,
            "w200.jpg": True,
            "h200.webp": True,
            "x200.png": True,
            "300x200.avif": True,
            "full_size.gif": True,
            "x200-q50.jpg": True,
            "300x200-pad-bg00ff00-q40.png": True,
            "x200.auto": True,
            "w0.jpg": True,  # invalid values, but the grammar's shape: never an attachment
            "x200-g.jpg": True,
            "receipt.pdf": False,
            "photo.jpg": False,
            "x200-notes.txt": False,
            "originals": False,
            "original.jpg": False,
            "info.json.bak": False,
            "notes": False,
        }
        for name, generated in table.items():
            self.assertIs(is_generated(name), generated, name)
            self.assertEqual(cache_control(name), immutable if generated else revalidate, name)
        self.assertEqual((names.CACHE_IMMUTABLE, names.CACHE_REVALIDATE), (immutable, revalidate))

    def test_full_size_alias(self) -> None:
        """Made-up names of a writable format are served from that format's ``full_size``; one
        spelling per format, so ``.jpeg`` and ``.jpg`` share one file."""
        table = {
            "photo.jpg": "full_size.jpg",
            "photo.jpeg": "full_size.jpg",
            "photo.JPG": "full_size.jpg",
            "photo.png": "full_size.png",
            "photo.webp": "full_size.webp",
            "photo.gif": "full_size.gif",
            "photo.avif": "full_size.avif",
            "photo.heic": "full_size.heic",
            "photo.heif": "full_size.heic",
            "receipt.pdf": None,  # not a format we write
            "notes": None,
            "w200.jpg": None,  # variants are themselves
            "full_size.jpg": None,
        }
        for name, alias in table.items():
            self.assertEqual(full_size_alias(parse_name(name)), alias, name)


class FileNameTests(SynchronousTestCase):
    def test_length_boundary_in_bytes(self) -> None:
        """255 bytes is the longest file name a filesystem takes: counted in UTF-8 bytes."""
        self.assertEqual(names.MAX_NAME_BYTES, 255)
        check_file_name("a" * 251 + ".jpg")
        check_file_name("\u00e9" * 125 + ".jpg")  # 250 + 4 bytes
        check_file_name("\u00e9" * 125 + "a.jpg")  # 255 bytes
        for name in ("a" * 252 + ".jpg", "\u00e9" * 126 + ".jpg"):  # 256, 256 bytes
            error = self.assertRaises(InvalidParameter, check_file_name, name)
            self.assertIn("at most 255 bytes", error.message)

    def test_unsafe_names(self) -> None:
        for name in ("", ".", "..", ".hidden", "..jpg", "a/b", "a\\b", "a\x00b", "\udcff.jpg"):
            self.assertRaises(InvalidParameter, check_file_name, name)
        for name in ("a", "a.", "a..b", "x200.jpg", "caf\u00e9.jpg", "a b.txt", "-.jpg"):
            check_file_name(name)


class VariantTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        """A variant asks for nothing it does not name."""
        variant = parse_name("w200.jpg")
        self.assertEqual(
            (variant.custom, variant.fit, variant.gravity, variant.focus, variant.dpr),
            (False, "", "", None, 1),
        )
        self.assertEqual((variant.background, variant.blur, variant.quality), ("", 0, 75))
        # The fields' own defaults, which custom names rely on.
        bare = Variant("n", 0, 0, 0, "")
        self.assertEqual(
            (bare.custom, bare.fit, bare.dpr, bare.blur, bare.background), (False, "", 1, 0, "")
        )
        self.assertEqual((bare.gravity, bare.focus), ("", None))

    def test_custom_names_carry_nothing(self) -> None:
        variant = parse_name("photo.final.png")
        self.assertEqual(variant, Variant("photo.final.png", 0, 0, 0, "png", custom=True))
        self.assertEqual(parse_name("notes"), Variant("notes", 0, 0, 0, "", custom=True))

    def test_box_crops_and_stem(self) -> None:
        table = {
            # name: (box, crops, stem)
            "w200.jpg": ((200, 0), False, "w200"),
            "h300.jpg": ((0, 300), False, "h300"),
            "x200.jpg": ((200, 200), True, "x200"),
            "300x200.jpg": ((300, 200), True, "300x200"),
            "300x200-fit.jpg": ((300, 200), False, "300x200-fit"),
            "300x200-pad.jpg": ((300, 200), False, "300x200-pad"),
            "300x200-dpr2.jpg": ((600, 400), True, "300x200-dpr2"),
            "h100-dpr3.png": ((0, 300), False, "h100-dpr3"),
            "full_size.jpg": ((0, 0), False, "full_size"),
            "photo.v2.jpg": ((0, 0), False, "photo.v2"),
            "notes": ((0, 0), False, "notes"),
            "notes.v2": ((0, 0), False, "notes.v2"),  # ".v2" is no extension
        }
        for name, (box, crops, stem) in table.items():
            variant = parse_name(name)
            self.assertEqual((variant.box, variant.crops, variant.stem), (box, crops, stem), name)

    def test_in_format(self) -> None:
        """What ``.auto`` becomes: the same variant, another extension."""
        variant = parse_name("x200-gsmart-q60.auto").in_format("webp")
        self.assertEqual((variant.name, variant.extension), ("x200-gsmart-q60.webp", "webp"))
        self.assertEqual((variant.width, variant.gravity, variant.quality), (200, "smart", 60))
        self.assertEqual(variant.output_format, "webp")

    def test_quality_boundaries(self) -> None:
        for name, quality in {"x200-q1.jpg": 1, "x200-q100.jpg": 100, "x200-q075.jpg": 75}.items():
            self.assertEqual(parse_name(name).quality, quality, name)
        for name in (
            "x200-q0.jpg",
            "x200-q101.jpg",
            "x200-q.jpg",
            "x200-qq.jpg",
            "x200-q\u0661.jpg",
        ):
            self.assertRaises(InvalidParameter, parse_name, name)
        self.assertEqual(parse_name("x200.jpg").quality, 75)
        self.assertEqual(parse_name("photo.jpg").quality, 0)

    def test_maximum_boundaries(self) -> None:
        """The maximum bounds the largest side actually made, ``-dpr`` included."""
        self.assertEqual(parse_name("w1000.jpg").width, 1000)
        self.assertEqual(parse_name("1000x1.jpg").box, (1000, 1))
        self.assertEqual(parse_name("1x1000.jpg").box, (1, 1000))
        self.assertEqual(parse_name("w500-dpr2.jpg").box, (1000, 0))
        for name in (
            "w1001.jpg",
            "h1001.jpg",
            "x1001.jpg",
            "1x1001.jpg",
            "w501-dpr2.jpg",
            "h334-dpr3.jpg",
        ):
            error = self.assertRaises(InvalidParameter, parse_name, name)
            self.assertIn("over the maximum of 1000", error.message)
        self.assertEqual(parse_name("w10.jpg", maximum_width=10).width, 10)
        self.assertRaises(InvalidParameter, parse_name, "w11.jpg", maximum_width=10)

    def test_allowed_variants(self) -> None:
        """``--allowed-variants``: shell patterns over the name without its extension."""
        variant = parse_name("x200-q60.webp")
        self.assertTrue(variant_allowed(variant, []))
        self.assertTrue(variant_allowed(variant, ["x200-q60"]))
        self.assertTrue(variant_allowed(variant, ["w*", "x*"]))
        self.assertFalse(variant_allowed(variant, ["x200"]))
        self.assertFalse(variant_allowed(variant, ["x200-q60.webp"]))
        self.assertFalse(variant_allowed(variant, ["X200-Q60"]))  # case counts


class ServableTests(SynchronousTestCase):
    def test_unwritable_formats_are_unsupported(self) -> None:
        """A variant name ending in a format we cannot write is a 415-like refusal naming the
        formats; ``.auto`` and made-up names are not refused here."""
        error = self.assertRaises(
            UnsupportedFormat, check_servable, parse_name("x200.bmp"), frozenset()
        )
        self.assertIn("avif, gif, heic, heif, jpeg, jpg, png, webp", error.message)
        check_servable(parse_name("x200.auto"), frozenset())
        check_servable(parse_name("x200.auto"), frozenset({"auto"}))
        check_servable(parse_name("photo.bmp"), frozenset())
        self.assertRaises(NotFound, check_servable, parse_name("photo.bmp"), frozenset({"jpg"}))
        self.assertRaises(NotFound, check_servable, parse_name("x200.auto"), frozenset({"jpg"}))

    def test_reserved_names_always_pass(self) -> None:
        for name in ("original", "info.json"):
            check_servable(parse_name(name), frozenset({"jpg"}))
        self.assertRaises(NotFound, check_servable, parse_name("info.jpg"), frozenset({"png"}))


class GrammarDetailTests(SynchronousTestCase):
    """The grammar's edges, with the exact refusal: which rule refused a name is what a client
    reads to fix it."""

    def assert_refused(self, name: str, message: str) -> None:
        error = self.assertRaises(InvalidParameter, parse_name, name)
        self.assertIn(message, error.message, name)

    def test_every_gravity(self) -> None:
        for gravity in ("n", "s", "e", "w", "ne", "nw", "se", "sw", "smart"):
            self.assertEqual(parse_name(f"x200-g{gravity}.jpg").gravity, gravity)
        self.assert_refused("x200-gup.jpg", "one of gn, gs, ge, gw, gne, gnw, gse, gsw, gsmart")

    def test_out_of_order_names_every_modifier_in_order(self) -> None:
        self.assert_refused(
            "x200-q60-gsmart.webp",
            "(modifiers go in the order -fit, -pad, -g, -fp, -dpr, -bg, -blur, -q, each once)",
        )

    def test_a_modifier_twice_is_named(self) -> None:
        """The repeated modifier is named, not the first one of the name."""
        for name, kind in {
            "x200-q50-q60.jpg": "-q",
            "x200-gn-q50-q60.jpg": "-q",
            "x200-gn-gs.jpg": "-g",
            "300x200-fit-fit.jpg": "-fit",
            "x200-gn-blur5-blur6.jpg": "-blur",
        }.items():
            self.assert_refused(name, f"{name}: {kind} may appear only once")

    def test_ranges(self) -> None:
        """Each number's first and last value pass; one beyond either is refused by its range
        (not by the canonical-spelling rule that a meaningless value would otherwise meet)."""
        self.assertEqual(parse_name("w200-dpr2.jpg").dpr, 2)
        self.assertEqual(parse_name("w200-dpr3.jpg").dpr, 3)
        self.assert_refused("w200-dpr1.jpg", "-dpr1: -dpr takes 2 to 3")
        self.assert_refused("w200-dpr4.jpg", "-dpr4: -dpr takes 2 to 3")
        self.assertEqual(parse_name("w200-blur1.jpg").blur, 1)
        self.assertEqual(parse_name("w200-blur100.jpg").blur, 100)
        self.assert_refused("w200-blur0.jpg", "-blur0: -blur takes 1 to 100")
        self.assert_refused("w200-blur101.jpg", "-blur101: -blur takes 1 to 100")
        self.assertEqual(parse_name("x200-fp0x100.jpg").focus, (0, 100))
        self.assertEqual(parse_name("x200-fp100x0.jpg").focus, (100, 0))
        for name in ("x200-fp101x0.jpg", "x200-fp0x101.jpg"):
            self.assert_refused(name, "is no focal point")

    def test_positioning_needs_a_crop(self) -> None:
        self.assert_refused("w200-gn.jpg", "w200-gn.jpg: -g applies to crops (xN or WxH)")
        self.assert_refused("w200-fp1x1.jpg", "w200-fp1x1.jpg: -fp applies to crops (xN or WxH)")
        self.assert_refused("300x200-pad-gn.jpg", "-g applies to crops")

    def test_extensions_are_ascii(self) -> None:
        """A variant's or an attachment's extension is ASCII letters and digits: anything else
        makes a name with no extension (never a variant, never a format)."""
        for name in ("x200.jp\u00e9", "photo.jp\u00e9", "x200.\u0661\u0662\u0663"):
            variant = parse_name(name)
            self.assertEqual((variant.custom, variant.extension), (True, ""), name)
            self.assertFalse(is_generated(name), name)

    def test_a_name_may_span_lines(self) -> None:
        """Only ``/``, ``\\`` and NUL are unsafe; a newline is an ordinary character of an
        attachment's name, whose extension is still found."""
        self.assertEqual(parse_name("a\nb.txt").extension, "txt")
        self.assertEqual(parse_name("x200-a\nb.txt").extension, "txt")
