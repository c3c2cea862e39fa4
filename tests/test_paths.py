"""Partition, local and remote paths (docs/api.md#storage)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from imageserver import paths
from imageserver.errors import InvalidParameter, NotFound


class PathTests(SynchronousTestCase):
    def test_partition(self) -> None:
        self.assertEqual(
            paths.partition("6e0072682e66287b662827da75b244a3"),
            "6e0/072/682/e66287b662827da75b244a3",
        )
        self.assertEqual(
            paths.relative_path("p", "6e0072682e66287b662827da75b244a3", "w200.jpg"),
            "p/6e0/072/682/e66287b662827da75b244a3/w200.jpg",
        )

    def test_bad_hashes(self) -> None:
        for bad in ("", "6E0072682E66287B662827DA75B244A3", "6e00726", "z" * 32, "../" * 11):
            self.assertRaises(InvalidParameter, paths.partition, bad)

    def test_namespaces(self) -> None:
        for good in ("p", "avatars", "a_b-c", "3f2b9c1e-0d7a-4c55-9a43-1f0e2d3c4b5a"):
            paths.check_namespace(good)
        for bad in ("P", "", "a/b", "..", "3F2B9C1E-0D7A-4C55-9A43-1F0E2D3C4B5A", "a b"):
            self.assertRaises(NotFound, paths.check_namespace, bad)
        self.assertRaises(InvalidParameter, paths.check_namespace, "tmp")

    def test_namespace_length_boundary(self) -> None:
        """A namespace is one directory name: 255 characters pass, 256 are a 400 (not a 404)."""
        paths.check_namespace("a" * paths.MAX_NAMESPACE_LENGTH)
        self.assertEqual(paths.MAX_NAMESPACE_LENGTH, 255)
        error = self.assertRaises(InvalidParameter, paths.check_namespace, "a" * 256)
        self.assertIn("at most 255", error.message)

    def test_refusals_say_why(self) -> None:
        """Outside the grammar is the Go router's own 404 text; ``tmp`` alone is reserved."""
        error = self.assertRaises(NotFound, paths.check_namespace, "A")
        self.assertEqual(error.message, "404 page not found")
        for near in ("tm", "tmpx", "xtmp", "tmp_"):
            paths.check_namespace(near)

    def test_remote_keys(self) -> None:
        relative = "p/6e0/072/682/e66287b662827da75b244a3/original"
        self.assertEqual(paths.remote_key("", relative), relative)
        self.assertEqual(paths.remote_key("images/", relative), "images/" + relative)
        self.assertEqual(paths.remote_key("/images", relative), "/images/" + relative)

    @given(st.text(alphabet="0123456789abcdef", min_size=32, max_size=32))
    def test_partition_keeps_every_character(self, image_hash: str) -> None:
        parts = paths.partition(image_hash).split("/")
        self.assertEqual([len(part) for part in parts], [3, 3, 3, 23])
        self.assertEqual("".join(parts), image_hash)

    def test_file_path_pattern(self) -> None:
        """The URL path of one of an image's files, as the router reads it."""
        match = paths.FILE_PATH.fullmatch("/p_1/6e0/072/682/e66287b662827da75b244a3/w200.jpg")
        assert match is not None
        self.assertEqual(
            (match["namespace"], match["partition"], match["name"]),
            ("p_1", "6e0/072/682/e66287b662827da75b244a3", "w200.jpg"),
        )
        for other in (
            "/p/6e0/072/682/e66287b662827da75b244a3/",  # no name
            "/p/6e0/072/682/e66287b662827da75b244a/w200.jpg",  # a hash too short
            "/p/6e0/072/682e66287b662827da75b244a3/w200.jpg",  # partitioned wrongly
            "/P/6e0/072/682/e66287b662827da75b244a3/w200.jpg",
            "/p/6e0/072/682/e66287b662827da75b244a3/a/b.jpg",
        ):
            self.assertIsNone(paths.FILE_PATH.fullmatch(other), other)
        self.assertIsNotNone(paths.PARTITION.fullmatch("6e0/072/682/e66287b662827da75b244a3"))

    def test_image_directory(self) -> None:
        self.assertEqual(
            paths.image_directory("p", "6e0072682e66287b662827da75b244a3"),
            "p/6e0/072/682/e66287b662827da75b244a3",
        )


class RemoteURLTests(SynchronousTestCase):
    """``remote_url``: the public address of an object, given to webhooks (``remote_url``)."""

    KEY = "p/6e0/072/682/e66287b662827da75b244a3/w200.jpg"

    def test_no_base_means_no_url(self) -> None:
        self.assertEqual(paths.remote_url("", self.KEY), "")

    def test_table(self) -> None:
        table = [
            # A bare host: the key becomes the path.
            ("https://cdn.test", self.KEY, f"https://cdn.test/{self.KEY}"),
            ("https://cdn.test/", self.KEY, f"https://cdn.test/{self.KEY}"),
            # The base's path is kept, with or without a trailing slash.
            ("https://cdn.test/images", self.KEY, f"https://cdn.test/images/{self.KEY}"),
            ("https://cdn.test/images/", self.KEY, f"https://cdn.test/images/{self.KEY}"),
            # A key with a leading slash (a remote base path of "/images") is joined, not rooted.
            ("https://cdn.test/b", "/images/x.jpg", "https://cdn.test/b/images/x.jpg"),
            # Keys are kept as they are apart from leading slashes, whatever they start with.
            ("https://cdn.test", "XL/x.jpg", "https://cdn.test/XL/x.jpg"),
            # Slashes collapse, two leading ones too; the query string stays.
            ("https://cdn.test//a//", "k//x.jpg", "https://cdn.test/a/k/x.jpg"),
            ("https://cdn.test///a", "k.jpg", "https://cdn.test/a/k.jpg"),
            ("https://cdn.test/a?v=1", "k.jpg", "https://cdn.test/a/k.jpg?v=1"),
            ("http://127.0.0.1:9000/bucket", "k.jpg", "http://127.0.0.1:9000/bucket/k.jpg"),
        ]  # fmt: skip
        for base, key, expected in table:
            self.assertEqual(paths.remote_url(base, key), expected, (base, key))

    def test_with_remote_key(self) -> None:
        """As the service composes them: a base path prefix, then the public base URL."""
        relative = paths.relative_path("p", "6e0072682e66287b662827da75b244a3", "original")
        key = paths.remote_key("/images/", relative)
        self.assertEqual(
            paths.remote_url("https://cdn.test/pub", key),
            f"https://cdn.test/pub/images/{relative}",
        )
