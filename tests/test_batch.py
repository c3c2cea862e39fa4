"""``POST …/process`` (batch variants) and ``POST …/{name}`` (attachments)."""

from __future__ import annotations

import os

from tests.support import WINE_DIR, ServerTestCase, request


class BatchTests(ServerTestCase):
    async def test_process_makes_every_output(self) -> None:
        await self.start_server(processor_concurrency=2)
        await self.upload_wine()
        url = f"{self.url}/p/{WINE_DIR}/process?outputs=x100.jpg,x200.jpg,x300.webp"
        response = await request("POST", url)
        self.assertEqual((response.code, response.body), (200, b""))
        for name in ("x100.jpg", "x200.jpg", "x300.webp"):
            self.assertTrue(os.path.isfile(self.local("p", WINE_DIR, name)))
        again = await request("POST", url)
        self.assertEqual(again.code, 200)
        # Nothing to make: the upload without outputs, then the second batch (Go counts both).
        metrics = (await request("GET", f"{self.admin_url}/metrics")).body.decode()
        self.assertIn('image_server_processing_versions_noop_total{namespace="p"} 2.0', metrics)

    async def test_nothing_to_do(self) -> None:
        await self.start_server()
        await self.upload_wine()
        for query in ("", "?outputs", "?outputs="):
            response = await request("POST", f"{self.url}/p/{WINE_DIR}/process{query}")
            self.assertEqual((response.code, response.body), (200, b""), query)

    async def test_unknown_image(self) -> None:
        await self.start_server()
        response = await request("POST", f"{self.url}/p/{WINE_DIR}/process?outputs=w10.jpg")
        self.assert_error(response, 404, "image p/6e0072682e66287b662827da75b244a3 does not")
        self.assert_no_partial_files()

    async def test_bad_name_in_batch(self) -> None:
        await self.start_server()
        await self.upload_wine()
        response = await request("POST", f"{self.url}/p/{WINE_DIR}/process?outputs=w10.jpg,w0.jpg")
        self.assert_error(response, 400, "w0.jpg: sizes start at 1 pixel")


class AttachmentTests(ServerTestCase):
    async def test_attachment_is_stored_and_served(self) -> None:
        """The Go test: a body posted to …/test.txt is kept verbatim and answered with {}."""
        await self.start_server(extensions=())
        url = f"{self.url}/test_namespace/31e/8b3/187/a9f63f26d58c88bf09a7bbd/test.txt"
        response = await request(
            "POST", url, data=b"some notes", headers={"Content-Type": "application/json"}
        )
        self.assertEqual((response.code, response.body), (200, b"{}\n"))
        with open(
            self.local("test_namespace/31e/8b3/187/a9f63f26d58c88bf09a7bbd/test.txt"), "rb"
        ) as f:
            self.assertEqual(f.read(), b"some notes")
        served = await request("GET", url)
        self.assertEqual(
            (served.body, served.header("Content-Type")), (b"some notes", "text/plain")
        )
        self.assert_no_partial_files()

    async def test_attachments_cannot_replace_the_original(self) -> None:
        await self.start_server()
        await self.upload_wine()
        for name in ("original", "info.json"):
            response = await request("POST", f"{self.url}/p/{WINE_DIR}/{name}", data=b"evil")
            self.assert_error(response, 400, "an attachment cannot be named")
        self.assertEqual((await request("GET", f"{self.url}/p/{WINE_DIR}/w10.jpg")).code, 200)
        self.assert_no_partial_files()

    async def test_attachment_over_the_limit(self) -> None:
        await self.start_server(max_upload_bytes=10)
        response = await request("POST", f"{self.url}/p/{WINE_DIR}/big.pdf", data=b"x" * 100)
        self.assert_error(response, 413, "the body is over 10 bytes")
        self.assertEqual(self.store_files(), [])
        self.assert_no_partial_files()
