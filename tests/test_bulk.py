"""``image-server cli`` in-process: the import of a directory through an engine."""

from __future__ import annotations

import io
import os

from twisted.internet import reactor
from twisted.trial import unittest

from imageserver.cli import CliOptions, _import
from imageserver.paths import partition
from tests.support import fixture


class BulkImportTests(unittest.TestCase):
    async def test_directory_with_good_and_bad_files(self) -> None:
        root = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(root, "in", ".hidden"))
        files = {
            "in/wine.jpg": fixture("wine.jpg"),
            "in/tiny.gif": b"GIF89a\x01",
            "in/notes.md": b"# not an image\n",
            "in/.hidden/a.png": fixture("a.png"),
        }
        for name, data in files.items():
            with open(os.path.join(root, name), "wb") as f:
                f.write(data)
        options = CliOptions({})
        options.parseOptions(
            [os.path.join(root, "in"), "--outputs", "w10.jpg", "--local_base_path",
             os.path.join(root, "store"), "--processor_concurrency", "1"]
        )  # fmt: skip
        out, err = io.StringIO(), io.StringIO()
        code = await _import(reactor, options, out, err)
        self.assertEqual(code, 1)
        self.assertEqual(
            out.getvalue(),
            f"6e0072682e66287b662827da75b244a3\t{root}/in/wine.jpg\t800\t600\n",
        )
        self.assertIn(f"warning: skipped {root}/in/notes.md: not an image", err.getvalue())
        self.assertIn(f"failed: {root}/in/tiny.gif: File is empty", err.getvalue())
        stored = os.path.join(
            root, "store", "images", partition("6e0072682e66287b662827da75b244a3")
        )
        self.assertEqual(sorted(os.listdir(stored)), ["info.json", "original", "w10.jpg"])
