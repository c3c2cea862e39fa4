"""``POST /{ns}``: uploads by body and by source URL, their responses, files and errors."""

from __future__ import annotations

import json
import os
from urllib.parse import quote

from imageserver.info import ImageDetails
from tests.support import (
    WINE_DIR,
    WINE_HASH,
    ServerTestCase,
    SourceServer,
    fixture,
    raw_exchange,
    request,
)


class BodyUploadTests(ServerTestCase):
    async def test_ruby_client_upload(self) -> None:
        """Raw bytes sent as application/json give the Go server's hash, size and files."""
        await self.start_server()
        response = await self.upload(fixture("wine.jpg"))
        self.assertEqual(response.code, 200)
        self.assertEqual(response.header("Content-Type"), "application/json; charset=UTF-8")
        self.assertEqual(
            response.body,
            b'{\n  "hash": "6e0072682e66287b662827da75b244a3",\n  "height": 600,\n'
            b'  "width": 800,\n  "content_type": "image/jpeg"\n}\n',
        )
        with open(self.local("p", WINE_DIR, "original"), "rb") as original:
            self.assertEqual(original.read(), fixture("wine.jpg"))
        with open(self.local("p", WINE_DIR, "info.json"), "rb") as info:
            self.assertEqual(
                info.read(),
                b'{"hash":"6e0072682e66287b662827da75b244a3","height":600,"width":800,'
                b'"content_type":"image/jpeg"}',
            )
        self.assert_no_partial_files()

    async def test_go_fixture_vectors(self) -> None:
        """The hashes, sizes and types the Go server gives every upstream image."""
        await self.start_server()
        vectors = {
            "a.jpg": ("31e8b3187a9f63f26d58c88bf09a7bbd", 574, 496, "image/jpeg"),
            "a.png": ("117813b6a51e74c77d0fc7d5de510f42", 574, 496, "image/png"),
            "a.webp": ("2a9d1753531a2c060c002a97b983854c", 574, 496, "image/webp"),
            "webp_without_ext": ("2a9d1753531a2c060c002a97b983854c", 574, 496, "image/webp"),
            "unsupported.jpg": ("94899754878d302636308bfcb956c4c8", 900, 1200, "image/jpeg"),
            "wine.heic": (None, 800, 600, "image/heif"),
        }
        for name, (image_hash, width, height, content_type) in vectors.items():
            response = await self.upload(fixture(name))
            self.assertEqual(response.code, 200, (name, response.body))
            body = response.json()
            if image_hash:
                self.assertEqual(body["hash"], image_hash)
            self.assertEqual(
                (body["width"], body["height"], body["content_type"]),
                (width, height, content_type),
                name,
            )

    async def test_form_content_type_is_not_parsed(self) -> None:
        """curl --data-binary sends a form content type; the body is still the image."""
        await self.start_server()
        response = await request(
            "POST",
            f"{self.url}/p",
            data=fixture("wine.jpg"),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        self.assertEqual(response.json()["hash"], WINE_HASH)

    async def test_uuid_namespace(self) -> None:
        await self.start_server()
        namespace = "3f2b9c1e-0d7a-4c55-9a43-1f0e2d3c4b5a"
        response = await self.upload(fixture("wine.jpg"), namespace)
        self.assertEqual(response.code, 200)
        self.assertTrue(os.path.isfile(self.local(namespace, WINE_DIR, "original")))

    async def test_outputs_made_before_the_answer(self) -> None:
        """outputs= (plain, percent-encoded, with spaces) exist when the upload answers."""
        await self.start_server()
        response = await self.upload(fixture("wine.jpg"), query="?outputs=x300.jpg%2C%20w200.webp")
        self.assertEqual(response.code, 200)
        for name in ("x300.jpg", "w200.webp"):
            self.assertTrue(os.path.isfile(self.local("p", WINE_DIR, name)), name)
        self.assert_no_partial_files()

    async def test_bare_outputs_key_means_none(self) -> None:
        """The Ruby client sends ``?outputs`` with no value when it has no outputs."""
        await self.start_server(outputs=("w100.jpg",))
        response = await self.upload(fixture("wine.jpg"), query="?outputs")
        self.assertEqual(response.code, 200)
        self.assertEqual(sorted(os.listdir(self.local("p", WINE_DIR))), ["info.json", "original"])

    async def test_default_outputs_flag(self) -> None:
        """--outputs applies to uploads that name no outputs."""
        await self.start_server(outputs=("w100.jpg",))
        await self.upload_wine()
        self.assertTrue(os.path.isfile(self.local("p", WINE_DIR, "w100.jpg")))

    async def test_same_bytes_twice(self) -> None:
        await self.start_server()
        first = await self.upload(fixture("wine.jpg"))
        second = await self.upload(fixture("wine.jpg"))
        self.assertEqual(first.body, second.body)
        self.assert_no_partial_files()


class BadUploadTests(ServerTestCase):
    """Every bad upload: a JSON error, nothing stored, and the server still serving."""

    async def test_empty_body(self) -> None:
        await self.start_server()
        await self.assert_refused(b"", 404, "File is empty")

    async def test_text_file(self) -> None:
        await self.start_server()
        await self.assert_refused(b"hello, this is not an image\n" * 3, 404, "ImageMagick failed")

    async def test_truncated_jpeg(self) -> None:
        await self.start_server()
        await self.assert_refused(fixture("wine.jpg")[:2000], 404, "ImageMagick failed")

    async def test_svg_is_refused(self) -> None:
        await self.start_server()
        await self.assert_refused(fixture("svg_without_ext"), 404, "ImageMagick failed")

    async def test_uppercase_namespace(self) -> None:
        await self.start_server()
        await self.assert_refused(fixture("wine.jpg"), 404, "404 page not found", namespace="Bad")

    async def test_reserved_namespace(self) -> None:
        await self.start_server()
        await self.assert_refused(
            fixture("wine.jpg"), 400, "invalid namespace: 'tmp' is reserved", namespace="tmp"
        )

    async def test_body_over_the_limit(self) -> None:
        await self.start_server(max_upload_bytes=50_000)
        await self.assert_refused(fixture("wine.jpg"), 413, "the body is over 50000 bytes")

    async def test_bad_output_name(self) -> None:
        """A bad outputs= name fails the upload with 400; the original itself is kept."""
        await self.start_server()
        response = await self.upload(fixture("wine.jpg"), query="?outputs=x200-q0.jpg")
        self.assert_error(response, 400, "x200-q0.jpg: quality must be between 1 and 100")
        self.assert_no_partial_files()


class SourceUploadTests(ServerTestCase):
    async def test_source_url(self) -> None:
        """The body is ignored; the bytes come from the source, fetched as image-server."""
        await self.start_server()
        source = SourceServer(self)
        url = source.serve("/images/wine.jpg", fixture("wine.jpg"))
        response = await self.upload(b"{}", query=f"?source={url}&outputs=w100.jpg")
        self.assertEqual(response.code, 200, response.body)
        self.assertEqual(response.json()["hash"], WINE_HASH)
        self.assertEqual(source.requests[0].getHeader(b"User-Agent"), b"image-server")
        self.assertTrue(os.path.isfile(self.local("p", WINE_DIR, "w100.jpg")))
        with open(self.local("p", WINE_DIR, "info.json"), "rb") as info:
            stored = ImageDetails.from_info_json(info.read())
        self.assertEqual(stored, ImageDetails(WINE_HASH, 600, 800, "image/jpeg"))
        self.assert_no_partial_files()

    async def test_concurrent_uploads_of_one_url_share_the_download(self) -> None:
        from twisted.internet.defer import ensureDeferred, gatherResults

        await self.start_server()
        source = SourceServer(self)
        url = source.serve("/wine.jpg", fixture("wine.jpg"))
        responses = await gatherResults(
            [ensureDeferred(self.upload(b"{}", query=f"?source={url}")) for _ in range(5)]
        )
        self.assertEqual({r.code for r in responses}, {200})
        self.assertEqual(len(source.requests), 1)

    async def assert_source_refused(self, url: str, status: int, prefix: str) -> None:
        await self.assert_refused(b"{}", status, prefix, query=f"?source={url}")

    async def test_source_answering_404(self) -> None:
        await self.start_server()
        url = SourceServer(self).base + "/missing.jpg"
        await self.assert_source_refused(
            url, 404, f"Unable to download image: {url}, status code: 404"
        )

    def redirect_chain(self, redirects: int) -> SourceServer:
        """A source where /hop0 redirects ``redirects`` times, to wine.jpg at the end."""
        source = SourceServer(self)
        source.serve(f"/hop{redirects}", fixture("wine.jpg"))
        for hop in range(redirects):
            source.redirect(f"/hop{hop}", f"{source.base}/hop{hop + 1}")
        return source

    async def test_redirects_are_followed_five_times(self) -> None:
        await self.start_server()
        source = self.redirect_chain(5)
        response = await self.upload(b"{}", query=f"?source={source.base}/hop0")
        self.assertEqual(response.json()["hash"], WINE_HASH)

    async def test_a_sixth_redirect_is_refused(self) -> None:
        await self.start_server()
        source = self.redirect_chain(6)
        url = f"{source.base}/hop0"
        await self.assert_source_refused(url, 404, f'Get "{url}": ')
        self.assertNotIn(b"/hop6", [request.path for request in source.requests])

    async def test_a_body_trickling_past_the_timeout_is_cut_off(self) -> None:
        """``--http_timeout`` bounds the whole download, not each read: a source sending a byte
        every 50 ms forever is stopped at the deadline, and its half body deleted."""
        from twisted.internet import reactor, task
        from twisted.internet.protocol import Factory, Protocol

        class Trickle(Protocol):
            def connectionMade(self) -> None:
                self.transport.write(  # type: ignore[union-attr]
                    b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n"
                    + fixture("wine.jpg")[:100]
                )
                self.drip = task.LoopingCall(self.transport.write, b"x")  # type: ignore[union-attr]
                self.drip.start(0.05)

            def connectionLost(self, reason: object = None) -> None:
                self.drip.stop()

        await self.start_server(http_timeout=1)
        port = reactor.listenTCP(0, Factory.forProtocol(Trickle), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        url = f"http://127.0.0.1:{port.getHost().port}/wine.jpg"
        await self.assert_source_refused(url, 404, f'Get "{url}": dial tcp')
        self.assertIn(
            "i/o timeout", (await self.upload(b"{}", query=f"?source={url}")).json()["error"]
        )

    async def test_zero_byte_source(self) -> None:
        await self.start_server()
        url = SourceServer(self).serve("/empty.jpg", b"")
        await self.assert_source_refused(url, 404, "File is empty")

    async def test_text_source(self) -> None:
        await self.start_server()
        url = SourceServer(self).serve("/a.jpg", b"<html>not an image</html>")
        await self.assert_source_refused(url, 404, "ImageMagick failed to identify properties")

    async def test_unreachable_source(self) -> None:
        from twisted.internet import reactor
        from twisted.internet.protocol import Factory

        await self.start_server()
        port = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        number = port.getHost().port
        await port.stopListening()
        url = f"http://127.0.0.1:{number}/wine.jpg"
        response = await self.upload(b"{}", query=f"?source={url}")
        self.assert_error(response, 404, f'Get "{url}": dial tcp 127.0.0.1:{number}')
        self.assertIn("connection refused", response.json()["error"])
        self.assert_no_partial_files()

    async def test_source_over_the_size_limit(self) -> None:
        await self.start_server(max_upload_bytes=50_000)
        url = SourceServer(self).serve("/big.jpg", fixture("wine.jpg"))
        await self.assert_source_refused(url, 413, f"Unable to download image: {url}, over 50000")

    async def test_non_http_source(self) -> None:
        await self.start_server()
        await self.assert_source_refused("file:///etc/passwd", 404, "Unable to download image")

    async def test_source_and_json_body_of_the_go_test(self) -> None:
        """The response is JSON in every case, so the Ruby client can parse it."""
        await self.start_server()
        url = SourceServer(self).base + "/nothing"
        response = await self.upload(b"{}", query=f"?source={url}")
        self.assertIn("error", json.loads(response.body))


class HostileUploadTests(ServerTestCase):
    """Inputs found in review: each gets a JSON error, leaves nothing behind, and the server goes
    on serving."""

    async def test_malformed_multipart_body_is_just_bytes(self) -> None:
        """Bodies are never parsed as forms (Twisted would answer a bare 400 to this one)."""
        await self.start_server()
        response = await request(
            "POST",
            f"{self.url}/p",
            data=b"--xyz\r\nnot really multipart" * 10,
            headers={"Content-Type": "multipart/form-data; boundary=xyz"},
        )
        self.assert_error(response, 404, "ImageMagick failed to identify properties")
        await self.assert_still_serving()

    async def test_error_prefix_appears_once(self) -> None:
        await self.start_server()
        response = await self.upload(b"this is text, not an image at all")
        message = response.json()["error"]
        self.assertEqual(message.count("ImageMagick failed"), 1, message)

    async def test_jpeg_truncated_in_its_pixels(self) -> None:
        """A perfect header and half the scan data: refused on upload, not stored."""
        await self.start_server()
        await self.assert_refused(fixture("wine.jpg")[:30000], 404, "ImageMagick failed to")

    async def test_tiny_body(self) -> None:
        await self.start_server()
        await self.assert_refused(b"\xff\xd8\xff", 404, "File is empty")

    async def test_chunked_empty_body(self) -> None:
        await self.start_server()
        answer = await raw_exchange(
            self.url,
            b"POST /p HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        )
        self.assertTrue(answer.startswith(b"HTTP/1.1 404"), answer)
        self.assertIn(b'"error": "File is empty"', answer)
        self.assert_no_partial_files()

    async def test_malformed_source_urls(self) -> None:
        await self.start_server()
        for url in ("http://[::1/x.jpg", "http://127.0.0.1:99999/x.jpg", "http:///x.jpg"):
            response = await self.upload(b"{}", query=f"?source={quote(url)}")
            self.assert_error(response, 404, f"Unable to download image: {url}, ")
            self.assertEqual(self.store_files(), [])
            self.assert_no_partial_files()
        await self.assert_still_serving()

    async def test_long_names(self) -> None:
        await self.start_server()
        await self.assert_refused(
            fixture("wine.jpg"), 400, "namespaces are at most 255", namespace="n" * 300
        )
        response = await request(
            "POST", f"{self.url}/p/6e0/072/682/e66287b662827da75b244a3/{'a' * 300}.pdf", data=b"x"
        )
        self.assert_error(response, 400, "file names are at most 255 bytes")
        self.assert_no_partial_files()

    async def test_post_status_check_is_an_upload(self) -> None:
        """As in the Go router, ``status_check`` is a namespace like any other for POST."""
        await self.start_server()
        response = await self.upload(fixture("wine.jpg"), namespace="status_check")
        self.assertEqual(response.json()["hash"], WINE_HASH)
