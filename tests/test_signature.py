"""Signed URLs and webhook signatures: the Go vectors, every refusal, and properties."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from imageserver import signature
from imageserver.signature import (
    SecretsFile,
    SignatureError,
    Signer,
    Validator,
    parse_duration,
    path_covers,
    should_validate,
    sign,
)

NOW = 1_702_156_000
EXPIRES = 1_702_156_800


def validator(*secrets: str, max_ttl: int = 60) -> Validator:
    return Validator(lambda: secrets, max_ttl, clock=lambda: NOW)


def query(path: str, method: str = "POST", secret: str = "test-secret", expires: int = EXPIRES,
          signed_path: str | None = None) -> dict[str, str]:  # fmt: skip
    signed = signed_path or path
    return {
        "X-Expires": str(expires),
        "X-Path": signed,
        "X-Signature": sign(secret, method, signed, expires),
    }


class VectorTests(SynchronousTestCase):
    def test_known_answers(self) -> None:
        self.assertEqual(
            sign("test-secret", "POST", "/photos", 1702156800),
            "rpVGAdSnV7rtH5CxMLzYxd0TYRYHOqyergYCSFg37VA",
        )
        self.assertEqual(
            sign("your-secret", "POST", "/products", 1702156800),
            "7SgSrSJHL_5rerOFV2LrQ9VuNV0SO-jg8gTCAocsjgg",
        )

    def test_webhook_vector(self) -> None:
        expected = "sha256=01a2e610e0c4be860a39533db845e58fb38c467b48c101df4c6e6db46c792e19"
        body = b'{"event":"image.uploaded"}'
        self.assertEqual(signature.webhook_signature("test-secret", "1702135800", body), expected)
        self.assertTrue(signature.verify_webhook("test-secret", "1702135800", body, expected))
        self.assertFalse(signature.verify_webhook("test-secret", "1702135801", body, expected))
        self.assertFalse(signature.verify_webhook("other", "1702135800", body, expected))

    def test_path_prefix_table(self) -> None:
        table = [
            ("/photos", "/photos", True),
            ("/photos", "/photos/", True),
            ("/photos/", "/photos", True),
            ("/photos", "/photos/abc", True),
            ("/photos", "/photos/abc/def/ghi", True),
            ("/photos", "/photosxyz", False),
            ("/photos", "/other", False),
            ("/photos/abc", "/photos", False),
            ("/photos/abc/def/ghi/jkl", "/photos/abc/def/ghi/jkl/image.jpg", True),
        ]
        for signed, requested, covered in table:
            self.assertEqual(path_covers(signed, requested), covered, (signed, requested))

    def test_which_requests_are_checked(self) -> None:
        table = [
            (("POST", "/p", False), True),
            (("HEAD", "/p/x", False), True),
            (("DELETE", "/p", False), True),
            (("GET", "/p/x", False), False),
            (("GET", "/p/x", True), True),
            (("GET", "/status_check", True), False),
            (("HEAD", "/status_check", True), False),
            # An upload to the namespace "status_check", and a namespace called "probe".
            (("POST", "/status_check", False), True),
            (("GET", "/probe/6e0/072/682/e66287b662827da75b244a3/x.txt", True), True),
        ]
        for arguments, expected in table:
            self.assertEqual(should_validate(*arguments), expected, arguments)

    def test_durations(self) -> None:
        good = {"90s": 90, "15m": 900, "1h": 3600, "1h30m": 5400, "1.5h": 5400, "0": 0, "-5m": -300}
        for text, seconds in good.items():
            self.assertEqual(parse_duration(text), seconds)
        for bad in ("", "15", "abc", "1d", "h", "1..5h", "\u0661\u0665m", " 5m"):
            error = self.assertRaises(ValueError, parse_duration, bad)
            self.assertTrue(str(error).startswith("invalid TTL duration"), str(error))

    def test_generated_secrets(self) -> None:
        secrets = {signature.generate_secret() for _ in range(20)}
        self.assertEqual(len(secrets), 20)
        self.assertEqual({len(secret) for secret in secrets}, {43})
        self.assertEqual(len(signature.generate_secret(64)), 86)


class ValidatorTests(SynchronousTestCase):
    def assert_refused(self, check: Validator, method: str, path: str, params: dict[str, str],
                       code: str) -> None:  # fmt: skip
        error = self.assertRaises(SignatureError, check.validate, method, path, params)
        self.assertEqual(error.code, code)

    def test_valid(self) -> None:
        validator("test-secret").validate("POST", "/photos", query("/photos"))

    def test_every_refusal_in_order(self) -> None:
        check = validator("test-secret")
        good = query("/photos")
        self.assert_refused(check, "POST", "/photos", {}, "MissingSignature")
        self.assert_refused(check, "POST", "/photos", {**good, "X-Expires": ""}, "MissingSignature")
        self.assert_refused(
            check, "POST", "/photos", {**good, "X-Signature": ""}, "MissingSignature"
        )
        self.assert_refused(
            check, "POST", "/photos", {**good, "X-Expires": "soon"}, "InvalidExpires"
        )
        self.assert_refused(
            check, "POST", "/photos", query("/photos", expires=NOW - 1), "SignatureExpired"
        )
        self.assert_refused(
            check,
            "POST",
            "/photos",
            query("/photos", expires=NOW + 2 * 3600),
            "SignatureTTLExceeded",
        )
        self.assert_refused(check, "POST", "/other", good, "InvalidPath")
        self.assert_refused(
            check, "POST", "/photos", query("/photos", secret="wrong"), "InvalidSignature"
        )
        self.assert_refused(check, "GET", "/photos", good, "InvalidSignature")
        # Expired is checked before the signature: a wrong, expired one says "expired".
        expired_and_wrong = query("/photos", secret="wrong", expires=NOW - 1)
        self.assert_refused(check, "POST", "/photos", expired_and_wrong, "SignatureExpired")
        # X-Expires is a plain base-10 int64, as Go's ParseInt takes it.
        for odd in ("1_702_156_800", " 1702156800", "\u0661\u0667", str(2**63)):
            self.assert_refused(
                check, "POST", "/photos", {**good, "X-Expires": odd}, "InvalidExpires"
            )
        # A signature with characters outside base64 is just wrong, never a crash.
        self.assert_refused(
            check, "POST", "/photos", {**good, "X-Signature": "é"}, "InvalidSignature"
        )

    def test_expiry_edge_and_ttl_settings(self) -> None:
        validator("test-secret").validate("POST", "/photos", query("/photos", expires=NOW))
        far = query("/photos", expires=NOW + 2 * 3600)
        validator("test-secret", max_ttl=-1).validate("POST", "/photos", far)
        validator("test-secret", max_ttl=180).validate("POST", "/photos", far)
        self.assertRaises(
            SignatureError, validator("test-secret", max_ttl=0).validate, "POST", "/photos", far
        )

    def test_prefix_signature_covers_a_namespace(self) -> None:
        params = query("/p/6e0/072/682/abc", signed_path="/p")
        validator("test-secret").validate("POST", "/p/6e0/072/682/abc", params)
        self.assert_refused(validator("test-secret"), "POST", "/px", params, "InvalidPath")

    def test_path_defaults_to_the_request_path(self) -> None:
        params = query("/photos")
        del params["X-Path"]
        validator("test-secret").validate("POST", "/photos", params)

    def test_rotation(self) -> None:
        check = validator("new-secret", "old-secret")
        check.validate("POST", "/photos", query("/photos", secret="old-secret"))
        check.validate("POST", "/photos", query("/photos", secret="new-secret"))

    def test_secrets_file(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("# rotated 2026-11\n\nnew-secret  \n  old-secret\n")
        secrets = SecretsFile(path)
        self.assertEqual(secrets(), ("new-secret", "old-secret"))
        with open(path, "w") as f:
            f.write("newest\n")
        self.assertEqual(secrets(), ("newest",))
        with open(path, "w") as f:
            f.write("# emptied by mistake\n")
        self.assertEqual(secrets(), ("newest",))
        with open(path, "wb") as f:
            f.write(b"\xff\xfe latin-1 bytes \xe9\n")
        [raw] = secrets()
        self.assertEqual(signature.key(raw), b"\xff\xfe latin-1 bytes \xe9")


class SignerPropertyTests(SynchronousTestCase):
    paths = st.lists(st.text("abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=8),
                     min_size=1, max_size=4).map(lambda parts: "/" + "/".join(parts))  # fmt: skip
    methods = st.sampled_from(["GET", "POST", "HEAD", "PUT", "DELETE"])

    @given(st.text(min_size=1, max_size=40), methods, paths, st.integers(1, 3600))
    def test_signed_urls_validate_until_they_expire(
        self, secret: str, method: str, path: str, ttl: int
    ) -> None:
        url = Signer(secret, "https://images.example.com", clock=lambda: NOW).sign_url(
            method, path, ttl
        )
        parts = urlsplit(url)
        self.assertEqual(parts.path, path)
        params = {name: values[0] for name, values in parse_qs(parts.query).items()}
        check = Validator(lambda: (secret,), 60, clock=lambda: NOW)
        check.validate(method, path, params)
        check.validate(method, path + "/below", params)
        late = Validator(lambda: (secret,), 60, clock=lambda: NOW + ttl + 1)
        self.assertRaises(SignatureError, late.validate, method, path, params)
        other_method = "GET" if method != "GET" else "POST"
        self.assertRaises(SignatureError, check.validate, other_method, path, params)
        self.assertRaises(SignatureError, check.validate, method, path + "x", params)
        other = Validator(lambda: (secret + "x",), 60, clock=lambda: NOW)
        self.assertRaises(SignatureError, other.validate, method, path, params)
