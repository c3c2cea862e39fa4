"""Names that belong to the server, made-up names, and the ceiling on stored variants."""

from __future__ import annotations

import os

from imageserver.paths import image_directory
from tests.support import WINE_DIR, ServerTestCase, fixture, image_size, request

WINE = fixture("wine.jpg")


class ReservedNameTests(ServerTestCase):
    async def test_an_attachment_cannot_take_a_variant_name(self) -> None:
        await self.start_server()
        await self.upload_wine()
        before = self.store_files()
        for name in ("x200.jpg", "w120.webp", "300x200-q50.avif", "full_size.png", "w0.jpg"):
            response = await request("POST", f"{self.url}/p/{WINE_DIR}/{name}", data=b"fake")
            self.assert_error(response, 400, f"an attachment cannot be named {name!r}")
            self.assertEqual(response.json()["code"], "invalid_parameter")
        self.assertEqual(self.store_files(), before)
        self.assert_no_partial_files()
        made = await request("GET", f"{self.url}/p/{WINE_DIR}/x200.jpg")
        self.assertEqual(image_size(made.body), (200, 200, "JPEG"))

    async def test_a_posted_name_does_not_pre_empt_the_batch(self) -> None:
        await self.start_server()
        await self.upload_wine()
        fake = await request("POST", f"{self.url}/p/{WINE_DIR}/w120.webp", data=b"fake bytes")
        self.assertEqual(fake.code, 400)
        batch = await request("POST", f"{self.url}/p/{WINE_DIR}/process?outputs=w120.webp")
        self.assertEqual(batch.code, 200, batch.body)
        made = await request("GET", f"{self.url}/p/{WINE_DIR}/w120.webp")
        self.assertEqual(image_size(made.body), (120, 90, "WEBP"))

    async def test_ordinary_attachments_still_work(self) -> None:
        await self.start_server()
        await self.upload_wine()
        for name in ("receipt.pdf", "photo.png", "x200", "w120.notes.txt"):
            url = f"{self.url}/p/{WINE_DIR}/{name}"
            self.assertEqual((await request("POST", url, data=b"mine")).code, 200, name)
            self.assertEqual((await request("GET", url)).body, b"mine", name)


class MadeUpNameTests(ServerTestCase):
    async def test_made_up_names_share_one_full_size_file(self) -> None:
        await self.start_server()
        await self.upload_wine()
        for index in range(5):
            response = await request("GET", f"{self.url}/p/{WINE_DIR}/made-up-{index}.png")
            self.assertEqual(response.code, 200, response.body)
            self.assertEqual(image_size(response.body), (800, 600, "PNG"))
            self.assertEqual(response.header("Content-Type"), "image/png")
            # The name could still become an attachment: caches must ask again.
            self.assertEqual(response.header("Cache-Control"), "public, no-cache")
        jpeg = await request("GET", f"{self.url}/p/{WINE_DIR}/another.jpeg")
        self.assertEqual(image_size(jpeg.body)[2], "JPEG")
        directory = self.local("p", *WINE_DIR.split("/"))
        self.assertEqual(
            sorted(os.listdir(directory)),
            ["full_size.jpg", "full_size.png", "info.json", "original"],
        )

    async def test_an_attachment_wins_over_the_alias(self) -> None:
        await self.start_server()
        await self.upload_wine()
        url = f"{self.url}/p/{WINE_DIR}/cover.png"
        self.assertEqual((await request("POST", url, data=b"my cover")).code, 200)
        self.assertEqual((await request("GET", url)).body, b"my cover")


class VariantCeilingTests(ServerTestCase):
    async def test_past_the_ceiling_new_variants_are_refused(self) -> None:
        await self.start_server(max_variants_per_image=3)
        await self.upload_wine()
        for width in (10, 11, 12):
            response = await request("GET", f"{self.url}/p/{WINE_DIR}/w{width}.png")
            self.assertEqual(response.code, 200, response.body)
        before = self.store_files()
        refused = await request("GET", f"{self.url}/p/{WINE_DIR}/w13.png")
        self.assert_error(refused, 403, "p/" + WINE_DIR + " has 3 stored variants")
        self.assertEqual(refused.json()["code"], "variant_limit")
        batch = await request("POST", f"{self.url}/p/{WINE_DIR}/process?outputs=x50.jpg")
        self.assert_error(batch, 403, "p/" + WINE_DIR + " has 3 stored variants")
        self.assertEqual(self.store_files(), before)
        self.assert_no_partial_files()
        again = await request("GET", f"{self.url}/p/{WINE_DIR}/w11.png")  # stored: still served
        self.assertEqual(image_size(again.body), (11, 8, "PNG"))
        other = await self.upload(fixture("test-hevc-alpha.heic"))  # other images have their own
        path = image_directory("p", other.json()["hash"])
        self.assertEqual((await request("GET", f"{self.url}/{path}/w10.png")).code, 200)

    async def test_the_count_survives_a_restart(self) -> None:
        await self.start_server(max_variants_per_image=2)
        await self.upload_wine()
        for name in ("w10.jpg", "x10.jpg"):
            self.assertEqual((await request("GET", f"{self.url}/p/{WINE_DIR}/{name}")).code, 200)
        base = self.base_path
        await self.server.stopService()
        await self.start_server(max_variants_per_image=2, local_base_path=base)
        refused = await request("GET", f"{self.url}/p/{WINE_DIR}/w12.jpg")
        self.assertEqual(refused.code, 403, refused.body)

    async def test_zero_is_no_ceiling(self) -> None:
        await self.start_server(max_variants_per_image=0)
        await self.upload_wine()
        for width in range(10, 15):
            response = await request("GET", f"{self.url}/p/{WINE_DIR}/w{width}.webp")
            self.assertEqual(response.code, 200, response.body)
