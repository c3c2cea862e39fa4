"""``GET /{ns}/{partition}/{name}``: variants made on demand, stored files served with caching."""

from __future__ import annotations

import io
import os

from twisted.internet.defer import ensureDeferred, gatherResults

from imageserver.paths import partition
from tests.support import WINE_DIR, WINE_HASH, ServerTestCase, fixture, image_size, request


class VariantTests(ServerTestCase):
    async def get(self, name: str, namespace: str = "p", **kwargs: object):  # type: ignore[no-untyped-def]
        return await request("GET", f"{self.url}/{namespace}/{WINE_DIR}/{name}", **kwargs)

    async def test_sizes_of_the_readme(self) -> None:
        await self.start_server()
        await self.upload_wine()
        expected = {
            "w200.jpg": (200, 150, "JPEG"),
            "x200.jpg": (200, 200, "JPEG"),
            "300x200.jpg": (300, 200, "JPEG"),
            "x200.webp": (200, 200, "WEBP"),
            "full_size.png": (800, 600, "PNG"),
            "w120.gif": (120, 90, "GIF"),
            "w1000.jpg": (1000, 750, "JPEG"),
        }
        for name, (width, height, kind) in expected.items():
            response = await self.get(name)
            self.assertEqual(response.code, 200, (name, response.body[:200]))
            self.assertEqual(image_size(response.body), (width, height, kind), name)
            self.assertTrue(os.path.isfile(self.local("p", WINE_DIR, name)))
        self.assert_no_partial_files()

    async def test_content_types(self) -> None:
        await self.start_server()
        await self.upload_wine()
        for name, content_type in [
            ("w50.jpg", "image/jpeg"),
            ("w50.jpeg", "image/jpeg"),
            ("w50.webp", "image/webp"),
            ("w50.avif", "image/avif"),
            ("original", "image/jpeg"),
            ("info.json", "application/json"),
        ]:
            response = await self.get(name)
            self.assertEqual(response.code, 200, name)
            self.assertEqual(response.header("Content-Type"), content_type, name)

    async def test_quality(self) -> None:
        await self.start_server()
        await self.upload_wine()
        low = await self.get("x200-q30.jpg")
        normal = await self.get("x200.jpg")
        self.assertLess(len(low.body), len(normal.body))

    async def test_original_and_info(self) -> None:
        await self.start_server()
        await self.upload_wine()
        self.assertEqual((await self.get("original")).body, fixture("wine.jpg"))
        info = await self.get("info.json")
        self.assertEqual(info.json()["hash"], WINE_HASH)

    async def test_heic_upload_gives_jpeg_and_webp(self) -> None:
        await self.start_server()
        response = await self.upload(fixture("wine.heic"))
        directory = partition(response.json()["hash"])
        for name, kind in (("w200.jpg", "JPEG"), ("x100.webp", "WEBP")):
            got = await request("GET", f"{self.url}/p/{directory}/{name}")
            self.assertEqual(got.code, 200)
            self.assertEqual(image_size(got.body)[2], kind)

    async def test_outputs_are_clean_upright_and_keep_alpha(self) -> None:
        """Decoded outputs: no EXIF, the right mode for alpha, upright pixels from an EXIF-rotated
        source."""
        from PIL import Image

        await self.start_server()
        await self.upload_wine()
        jpeg = Image.open(io.BytesIO((await self.get("w200.jpg")).body))
        self.assertEqual(len(jpeg.getexif()), 0)
        self.assertNotIn("icc_profile", jpeg.info)
        self.assertEqual(jpeg.mode, "RGB")

        alpha = await self.upload(fixture("test-hevc-alpha.heic"))
        directory = partition(alpha.json()["hash"])
        png = await request("GET", f"{self.url}/p/{directory}/x100.png")
        self.assertEqual(Image.open(io.BytesIO(png.body)).mode, "RGBA")
        flat = await request("GET", f"{self.url}/p/{directory}/x100.jpg")
        self.assertEqual(Image.open(io.BytesIO(flat.body)).mode, "RGB")

        # A 40x20 image stored sideways: EXIF orientation 6 means "rotate 90° clockwise".
        sideways = io.BytesIO()
        exif = Image.Exif()
        exif[0x0112] = 6
        Image.new("RGB", (40, 20), "red").save(sideways, "JPEG", exif=exif)
        rotated = await self.upload(sideways.getvalue())
        self.assertEqual((rotated.json()["width"], rotated.json()["height"]), (20, 40))
        upright = await request(
            "GET", f"{self.url}/p/{partition(rotated.json()['hash'])}/full_size.png"
        )
        self.assertEqual(image_size(upright.body)[:2], (20, 40))

    async def test_concurrent_requests_share_one_job(self) -> None:
        """Twenty identical requests: one render, twenty identical answers."""
        await self.start_server()
        await self.upload_wine()
        responses = await gatherResults([ensureDeferred(self.get("w321.webp")) for _ in range(20)])
        self.assertEqual({r.code for r in responses}, {200})
        self.assertEqual(len({r.body for r in responses}), 1)
        metrics = (await request("GET", f"{self.admin_url}/metrics")).body.decode()
        self.assertIn(
            'image_server_processing_version_ok_total{format="webp",namespace="p",quality="75"}'
            " 1.0",
            metrics,
        )

    async def test_unknown_query_strings_are_ignored(self) -> None:
        await self.start_server()
        await self.upload_wine()
        response = await request("GET", f"{self.url}/p/{WINE_DIR}/w100.jpg?processing")
        self.assertEqual(response.code, 200)


class CachingTests(ServerTestCase):
    """docs/api.md#caching: validators, a long Cache-Control, 304, HEAD and Range."""

    async def asyncSetUp(self) -> str:
        await self.start_server()
        await self.upload_wine()
        url = f"{self.url}/p/{WINE_DIR}/w100.jpg"
        first = await request("GET", url)
        self.assertEqual(first.code, 200)
        self.first = first
        return url

    async def test_headers(self) -> None:
        await self.asyncSetUp()
        self.assertEqual(self.first.header("Cache-Control"), "public, max-age=31536000, immutable")
        self.assertTrue(self.first.header("ETag").startswith('"'))
        self.assertIsNotNone(self.first.header("Last-Modified"))
        self.assertEqual(self.first.header("Accept-Ranges"), "bytes")

    async def test_if_none_match(self) -> None:
        url = await self.asyncSetUp()
        etag = self.first.header("ETag")
        again = await request("GET", url, headers={"If-None-Match": f'"other", {etag}'})
        self.assertEqual(again.code, 304)
        self.assertEqual(again.body, b"")
        changed = await request("GET", url, headers={"If-None-Match": '"other"'})
        self.assertEqual(changed.code, 200)

    async def test_if_modified_since(self) -> None:
        url = await self.asyncSetUp()
        since = self.first.header("Last-Modified")
        again = await request("GET", url, headers={"If-Modified-Since": since})
        self.assertEqual(again.code, 304)

    async def test_head(self) -> None:
        url = await self.asyncSetUp()
        head = await request("HEAD", url)
        self.assertEqual(head.code, 200)
        self.assertEqual(head.body, b"")
        self.assertEqual(int(head.header("Content-Length")), len(self.first.body))

    async def test_if_none_match_wins_over_if_modified_since(self) -> None:
        url = await self.asyncSetUp()
        since = self.first.header("Last-Modified")
        both = await request(
            "GET", url, headers={"If-None-Match": '"other"', "If-Modified-Since": since}
        )
        self.assertEqual(both.code, 200)
        self.assertEqual(both.body, self.first.body)

    async def test_range(self) -> None:
        url = await self.asyncSetUp()
        part = await request("GET", url, headers={"Range": "bytes=10-19"})
        self.assertEqual(part.code, 206)
        self.assertEqual(part.body, self.first.body[10:20])


class BadVariantTests(ServerTestCase):
    """Bad names: a clear JSON error, no file left behind, the server still serving."""

    async def assert_refused(self, name: str, status: int, prefix: str) -> None:
        before = self.store_files()
        response = await request("GET", f"{self.url}/p/{WINE_DIR}/{name}")
        self.assert_error(response, status, prefix)
        self.assertEqual(self.store_files(), before)
        self.assert_no_partial_files()
        self.assertEqual((await request("GET", f"{self.url}/p/{WINE_DIR}/w10.jpg")).code, 200)

    async def test_bad_names(self) -> None:
        await self.start_server()
        await self.upload_wine()
        cases = [
            ("w0.jpg", 400, "w0.jpg: sizes start at 1 pixel"),
            ("x200-q0.jpg", 400, "x200-q0.jpg: quality must be between 1 and 100"),
            ("x200-q101.jpg", 400, "x200-q101.jpg: quality must be between 1 and 100"),
            ("w5000.jpg", 400, "w5000.jpg: 5000 pixels is over the maximum of 1000"),
            ("w200.bmp", 404, "image not available"),
            ("w200.JPG", 404, "image not available"),
            ("..", 400, "invalid file name"),
            ("a%2Fb.jpg", 404, "404 page not found"),
            ("a%5Cb.jpg", 400, "invalid file name"),
            ("missing", 404, "p/6e0/072/682/e66287b662827da75b244a3/missing does not exist"),
            ("missing.txt", 404, "image not available: extension 'txt' is not allowed"),
            ("process", 404, "p/6e0"),
        ]
        for name, status, prefix in cases:
            await self.assert_refused(name, status, prefix)

    async def test_unknown_extension_with_all_extensions_allowed(self) -> None:
        await self.start_server(extensions=())
        await self.upload_wine()
        await self.assert_refused("w200.bmp", 400, "w200.bmp: cannot write 'bmp'")

    async def test_maximum_width_can_be_lifted(self) -> None:
        await self.start_server(maximum_width=0)
        await self.upload_wine()
        response = await request("GET", f"{self.url}/p/{WINE_DIR}/w1600.jpg")
        self.assertEqual(image_size(response.body)[:2], (1600, 1200))

    async def test_unknown_hash(self) -> None:
        await self.start_server()
        response = await request("GET", f"{self.url}/p/000/000/000/00000000000000000000000/w1.jpg")
        self.assert_error(response, 404, "image p/00000000000000000000000000000000 does not exist")

    async def test_heic_output_without_the_extra(self) -> None:
        try:
            import pillow_heif  # noqa: F401
        except ImportError:
            pass
        else:
            self.skipTest("the heic extra is installed here")  # pragma: no cover
        await self.start_server()
        await self.upload_wine()
        await self.assert_refused("w100.heic", 400, "")

    async def test_malformed_partitions(self) -> None:
        await self.start_server()
        for path in ("/p/6E0/072/682/e66287b662827da75b244a3/w1.jpg", "/p/6e0/072/682/e6/w1.jpg"):
            response = await request("GET", self.url + path)
            self.assert_error(response, 404, "404 page not found")


class StoredFileTests(ServerTestCase):
    """Files in the store are served as they are, safely."""

    async def test_files_written_by_the_go_server_stay_reachable(self) -> None:
        """Names our grammar refuses (q0, over the maximum) are still served when present."""
        await self.start_server()
        await self.upload_wine()
        for name in ("x200-q0.jpg", "w1600.jpg"):
            with open(self.local("p", WINE_DIR, name), "wb") as stored:
                stored.write(fixture("wine.jpg"))
            response = await request("GET", f"{self.url}/p/{WINE_DIR}/{name}")
            self.assertEqual((response.code, response.body), (200, fixture("wine.jpg")), name)

    async def test_attachments_are_served_whatever_the_extension_list(self) -> None:
        await self.start_server()
        url = f"{self.url}/p/{WINE_DIR}/receipt.pdf"
        await request("POST", url, data=b"%PDF-1.4 not really")
        response = await request("GET", url)
        self.assertEqual((response.code, response.header("Content-Type")), (200, "application/pdf"))
        self.assertEqual(response.header("Cache-Control"), "public, no-cache")

    async def test_active_content_is_a_download(self) -> None:
        """An HTML or SVG attachment must not run in the image origin's context."""
        await self.start_server(extensions=())
        for name in ("page.html", "drawing.svg"):
            url = f"{self.url}/p/{WINE_DIR}/{name}"
            await request("POST", url, data=b"<script>alert(1)</script>")
            response = await request("GET", url)
            self.assertEqual(response.header("Content-Type"), "application/octet-stream", name)
            self.assertEqual(response.header("Content-Disposition"), "attachment")
            self.assertEqual(response.header("X-Content-Type-Options"), "nosniff")

    async def test_derived_height_is_held_to_the_maximum(self) -> None:
        """A 4x4000 source at w1000 would be 1000x1000000: refused, nothing written."""
        from PIL import Image

        await self.start_server()
        tall = io.BytesIO()
        Image.new("RGB", (4, 4000), "blue").save(tall, "PNG")
        uploaded = await self.upload(tall.getvalue())
        directory = partition(uploaded.json()["hash"])
        response = await request("GET", f"{self.url}/p/{directory}/w1000.png")
        self.assert_error(response, 400, "the variant would be 1000x1000000, over the maximum")
        self.assertFalse(os.path.exists(self.local("p", directory, "w1000.png")))
        self.assert_no_partial_files()

    async def test_batch_refuses_unwritable_formats_like_get(self) -> None:
        await self.start_server()
        await self.upload_wine()
        response = await request("POST", f"{self.url}/p/{WINE_DIR}/process?outputs=w100.bmp")
        self.assert_error(response, 400, "w100.bmp: cannot write 'bmp'")
