"""Partition, local and remote paths (SPEC §1)."""

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
