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


class CliOptionTests(unittest.SynchronousTestCase):
    """What ``cli`` refuses before it starts any worker."""

    def test_refusals(self) -> None:
        from twisted.python.usage import UsageError

        here = os.path.dirname(os.path.abspath(__file__))
        for args, message in [
            (["/nonexistent/images", "--outputs", "w1.jpg"], "/nonexistent/images: no such file"),
            ([here, "--outputs", "w1.jpg", "--namespace", "Bad"], "--namespace: lowercase"),
            (
                [here, "--outputs", "w1.jpg", "--namespace", "tmp"],
                "--namespace: invalid namespace: 'tmp'",
            ),
            ([here, "--outputs", "bogus!"], "--outputs: bogus!: not an image format"),
            ([here, "--outputs", "w1.bmp"], "--outputs: w1.bmp: cannot write 'bmp'"),
        ]:
            error = self.assertRaises(UsageError, CliOptions({}).parseOptions, args)
            self.assertTrue(str(error).startswith(message), (args, str(error)))


class OddFileTests(unittest.TestCase):
    async def test_fifo_and_empty_directory(self) -> None:
        root = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(root, "in"))
        os.mkfifo(os.path.join(root, "in", "pipe.jpg"))
        options = CliOptions({})
        options.parseOptions([os.path.join(root, "in"), "--outputs", "w10.jpg",
                              "--local_base_path", os.path.join(root, "store")])  # fmt: skip
        out, err = io.StringIO(), io.StringIO()
        self.assertEqual(await _import(reactor, options, out, err), 0)
        self.assertIn("pipe.jpg: not a regular file", err.getvalue())
        os.makedirs(os.path.join(root, "empty"))
        options.parseOptions([os.path.join(root, "empty"), "--outputs", "w10.jpg"])
        self.assertEqual(await _import(reactor, options, out, err), 0)
        self.assertIn("nothing to import", err.getvalue())
