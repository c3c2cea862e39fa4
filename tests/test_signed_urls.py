"""A server requiring signatures, end to end (docs/api.md#signed-urls)."""

from __future__ import annotations

import json
import os

from imageserver.signature import Signer
from tests.support import WINE_DIR, WINE_HASH, ServerTestCase, fixture, raw_connection, request


class SignedUrlTests(ServerTestCase):
    async def start_signed(self, secrets: str = "new-secret\nold-secret\n", **overrides: object):  # type: ignore[no-untyped-def]
        self.secrets_file = os.path.abspath(self.mktemp())
        with open(self.secrets_file, "w") as f:
            f.write(secrets)
        await self.start_server(
            require_signature=True, signing_secrets_file=self.secrets_file, **overrides
        )

    def signed(self, method: str, path: str, secret: str = "new-secret", ttl: int = 600) -> str:
        return Signer(secret, self.url).sign_url(method, path, ttl)

    async def test_signed_upload_then_unsigned_read(self) -> None:
        await self.start_signed()
        response = await request("POST", self.signed("POST", "/p"), data=fixture("wine.jpg"))
        self.assertEqual(response.json()["hash"], WINE_HASH)
        read = await request("GET", f"{self.url}/p/{WINE_DIR}/w100.jpg")
        self.assertEqual(read.code, 200)

    async def test_unsigned_upload_is_refused_with_the_go_body(self) -> None:
        await self.start_signed()
        response = await request("POST", f"{self.url}/p", data=fixture("wine.jpg"))
        self.assertEqual(response.code, 401)
        self.assertEqual(response.header("Content-Type"), "application/json")
        self.assertEqual(
            response.body,
            b'{"error":"MissingSignature","message":'
            b'"Request must include X-Signature and X-Expires parameters"}\n',
        )
        self.assertEqual(self.store_files(), [])
        self.assert_no_partial_files()

    async def test_every_refusal_over_http(self) -> None:
        await self.start_signed()
        good = self.signed("POST", "/p")
        cases = {
            f"{self.url}/p": "MissingSignature",
            good.replace("X-Expires=", "X-Expires=x"): "InvalidExpires",
            self.signed("POST", "/p", ttl=-5): "SignatureExpired",
            self.signed("POST", "/p", ttl=7200): "SignatureTTLExceeded",
            self.signed("POST", "/q").replace("/q?", "/p?", 1): "InvalidPath",
            self.signed("POST", "/p", secret="not-a-secret"): "InvalidSignature",
        }
        messages = {
            "MissingSignature": "Request must include X-Signature and X-Expires parameters",
            "InvalidExpires": "Invalid expiration timestamp",
            "SignatureExpired": "The provided signature has expired",
            "SignatureTTLExceeded": "Signature expiration exceeds maximum allowed TTL",
            "InvalidPath": "Request path does not match signed path",
            "InvalidSignature": "The request signature does not match",
        }
        for url, code in cases.items():
            response = await request("POST", url, data=b"x" * 20)
            self.assertEqual(response.code, 401, url)
            expected = json.dumps({"error": code, "message": messages[code]}, separators=(",", ":"))
            self.assertEqual(response.body, expected.encode() + b"\n", url)

    async def test_a_post_signature_does_not_authorise_a_get(self) -> None:
        await self.start_signed(require_signature_for_reads=True)
        await request("POST", self.signed("POST", "/p"), data=fixture("wine.jpg"))
        path = f"/p/{WINE_DIR}/original"
        refused = await request("GET", self.signed("POST", path))
        self.assertEqual(
            (refused.code, json.loads(refused.body)["error"]), (401, "InvalidSignature")
        )
        allowed = await request("GET", self.signed("GET", path))
        self.assertEqual(allowed.body, fixture("wine.jpg"))

    async def test_stored_files_are_not_a_way_around_read_signatures(self) -> None:
        await self.start_signed(require_signature_for_reads=True)
        await request("POST", self.signed("POST", "/p"), data=fixture("wine.jpg"))
        for name in ("original", "info.json"):
            self.assertTrue(os.path.exists(self.local("p", WINE_DIR, name)))
            response = await request("GET", f"{self.url}/p/{WINE_DIR}/{name}")
            self.assertEqual(response.code, 401, name)
            head = await request("HEAD", f"{self.url}/p/{WINE_DIR}/{name}")
            self.assertEqual(head.code, 401, name)

    async def test_a_namespace_signature_covers_its_images(self) -> None:
        await self.start_signed()
        await request("POST", self.signed("POST", "/p"), data=fixture("wine.jpg"))
        signer = Signer("new-secret", self.url)
        url = signer.sign_url("POST", "/p", 600).replace(
            "/p?", f"/p/{WINE_DIR}/process?outputs=w10.jpg&", 1
        )
        self.assertEqual((await request("POST", url)).code, 200)
        other = signer.sign_url("POST", "/p", 600).replace("/p?", "/q?", 1)
        self.assertEqual((await request("POST", other, data=fixture("wine.jpg"))).code, 401)

    async def test_rotation_while_running(self) -> None:
        await self.start_signed()
        self.assertEqual((await self.post_with("old-secret")).code, 200)
        with open(self.secrets_file, "w") as f:
            f.write("# old-secret retired\nnewest-secret\n")
        os.utime(self.secrets_file, (1, 1))  # a new mtime even within one clock tick
        self.assertEqual((await self.post_with("old-secret")).code, 401)
        self.assertEqual((await self.post_with("newest-secret")).code, 200)

    async def post_with(self, secret: str):  # type: ignore[no-untyped-def]
        return await request(
            "POST", self.signed("POST", "/p", secret=secret), data=fixture("wine.jpg")
        )

    async def test_exemptions_are_exactly_the_health_check(self) -> None:
        """``POST /status_check`` is an upload, and ``/probe/…`` a namespace: both checked."""
        await self.start_signed(require_signature_for_reads=True)
        upload = await request("POST", f"{self.url}/status_check", data=fixture("wine.jpg"))
        self.assertEqual(upload.code, 401)
        probe = f"{self.url}/probe/{WINE_DIR}/notes.txt"
        self.assertEqual((await request("POST", probe, data=b"notes")).code, 401)
        self.assertEqual((await request("GET", probe)).code, 401)
        self.assertEqual(self.store_files(), [])

    async def test_duplicated_or_blank_parameters(self) -> None:
        """The first value counts, a blank one too (Go's Query().Get)."""
        await self.start_signed()
        query = self.signed("POST", "/p").split("?", 1)[1]
        response = await request("POST", f"{self.url}/p?X-Signature=&{query}", data=b"x" * 20)
        self.assertEqual(json.loads(response.body)["error"], "MissingSignature")

    async def test_refused_bodies_are_not_written(self) -> None:
        """An unsigned upload is judged from its request line, before its body is stored."""
        await self.start_signed()
        seen: list[str] = []
        judge = self.server.site.refuse_body
        assert judge is not None

        def watching(method: bytes, uri: bytes) -> bool:
            refused = judge(method, uri)
            seen.append(f"{method.decode()} {uri.decode()} refused={refused}")
            return refused

        self.server.site.refuse_body = watching
        response = await request("POST", f"{self.url}/p", data=fixture("wine.jpg"))
        self.assertEqual(response.code, 401)
        self.assertEqual(seen, ["POST /p refused=True"])
        self.assert_no_partial_files()

    async def test_unsigned_upload_expecting_continue_is_refused_before_its_body(self) -> None:
        await self.start_signed()
        client = await raw_connection(self.url)
        client.transport.write(
            b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        answer = await client.done  # no body sent: the answer comes anyway, then the end
        self.assertTrue(answer.startswith(b"HTTP/1.1 401 "), answer)
        self.assertNotIn(b"100 Continue", answer)
        self.assertIn(b"MissingSignature", answer)

    async def test_health_and_admin_need_no_signature(self) -> None:
        await self.start_signed(require_signature_for_reads=True)
        self.assertEqual((await request("GET", f"{self.url}/status_check")).code, 200)
        for path in ("/probe/ready", "/probe/live", "/metrics"):
            self.assertEqual((await request("GET", self.admin_url + path)).code, 200, path)
