"""Signed URLs and webhook signatures: the Go vectors, every refusal, and properties."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from urllib.parse import parse_qs, urlsplit

from hypothesis import given
from hypothesis import strategies as st
from twisted.logger import capturedLogs
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
            # Only one trailing slash is dropped, nothing else at the end.
            ("/photos", "/photosXX/XX", False),
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

    def test_generated_secrets_are_unpadded_urlsafe_base64(self) -> None:
        """The random bytes, encoded: URL-safe alphabet, no padding, nothing else stripped."""
        self.patch(os, "urandom", lambda length: bytes([0xFB, 0xFF, 0x17][:length]))
        self.assertEqual(signature.generate_secret(3), "-_8X")
        self.assertEqual(signature.generate_secret(2), "-_8")
        self.assertEqual(signature.generate_secret(1), "-w")

    def test_paths_outside_utf8_are_signed_as_their_bytes(self) -> None:
        """A path's bytes that are not UTF-8 arrive surrogate-escaped: signed as the raw bytes,
        as the Go server signs its raw path."""
        message = b"GET\n/p/caf\xe9\n1702156800"
        expected = hmac.new(b"test-secret", message, hashlib.sha256).digest()
        self.assertEqual(
            sign("test-secret", "GET", "/p/caf\udce9", 1702156800),
            base64.urlsafe_b64encode(expected).rstrip(b"=").decode(),
        )

    def test_webhook_signature_outside_utf8_is_just_wrong(self) -> None:
        body = b"{}"
        self.assertFalse(signature.verify_webhook("s", "1", body, "sha256=\udcff"))
        self.assertTrue(
            signature.verify_webhook("s", "1", body, signature.webhook_signature("s", "1", body))
        )

    def test_refusals_carry_the_go_messages(self) -> None:
        """Each code with the Go server's message, word for word: clients match on them."""
        expected = {
            "MissingSignature": "Request must include X-Signature and X-Expires parameters",
            "InvalidExpires": "Invalid expiration timestamp",
            "SignatureExpired": "The provided signature has expired",
            "SignatureTTLExceeded": "Signature expiration exceeds maximum allowed TTL",
            "InvalidPath": "Request path does not match signed path",
            "InvalidSignature": "The request signature does not match",
        }
        self.assertEqual(signature.MESSAGES, expected)
        for code, message in expected.items():
            error = signature.refusal(code)
            self.assertEqual((error.code, error.message, str(error)), (code, message, message))

    def test_duration_units(self) -> None:
        """Every unit Go's ``time.ParseDuration`` knows, fractions and signs; whole seconds out
        (truncated towards zero)."""
        table = {
            "3000000000ns": 3,
            "2500000us": 2,
            "2500000\u00b5s": 2,  # the micro sign, as Go writes it
            "2500000\u03bcs": 2,  # and the Greek mu, which Go takes too
            "1500ms": 1,
            "90s": 90,
            "1.5s": 1,
            ".5m": 30,
            "2m": 120,
            "1h": 3600,
            "1h1m1s": 3661,
            "+5m": 300,
            "-1.5s": -1,
            "-0": 0,
            "+0": 0,
            "1h0m": 3600,
        }
        for text, seconds in table.items():
            self.assertEqual(parse_duration(text), seconds, text)
            self.assertIsInstance(parse_duration(text), int)
        for bad in ("-", "+", "5m+", "--5m", "5mm", "1.5", "-h"):
            self.assertRaises(ValueError, parse_duration, bad)

    def test_duration_overflow(self) -> None:
        """Go's durations are int64 nanoseconds: up to 2^63 - 1 ns (about 292 years)."""
        self.assertEqual(parse_duration("2562047h"), 2562047 * 3600)
        self.assertEqual(parse_duration("9223372036s"), 9223372036)
        self.assertEqual(parse_duration("-9223372036s"), -9223372036)
        for over in (
            "2562048h",
            "9223372037s",
            "9223372036.854775808s",  # 2^63 ns exactly: one past the largest
            "1" + "0" * 400 + "s",  # a float overflow (inf)
        ):
            error = self.assertRaises(ValueError, parse_duration, over)
            self.assertTrue(str(error).startswith("invalid TTL duration"), str(error))


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

    def test_ttl_limit_boundary(self) -> None:
        """An expiry of exactly now + the maximum TTL passes; one second more is refused.  0
        means the default, 60 minutes; a negative maximum means none."""
        for max_ttl, limit in ((60, 3600), (0, 3600), (1, 60), (180, 3 * 3600)):
            check = validator("test-secret", max_ttl=max_ttl)
            check.validate("POST", "/photos", query("/photos", expires=NOW + limit))
            self.assert_refused(
                check,
                "POST",
                "/photos",
                query("/photos", expires=NOW + limit + 1),
                "SignatureTTLExceeded",
            )
        for max_ttl in (-1, -60):
            validator("test-secret", max_ttl=max_ttl).validate(
                "POST", "/photos", query("/photos", expires=NOW + 10 * 365 * 86400)
            )
        default = Validator(lambda: ("test-secret",), clock=lambda: NOW)
        self.assertEqual(default.max_ttl_minutes, 60)
        default.validate("POST", "/photos", query("/photos", expires=NOW + 3600))
        self.assert_refused(
            default, "POST", "/photos", query("/photos", expires=NOW + 3601), "SignatureTTLExceeded"
        )

    def test_clock_fractions_are_dropped(self) -> None:
        """Now is whole seconds: at NOW + 0.9, an expiry of NOW has not passed."""
        check = Validator(lambda: ("test-secret",), 60, clock=lambda: NOW + 0.9)
        check.validate("POST", "/photos", query("/photos", expires=NOW))

    def test_missing_keys(self) -> None:
        """A parameter left out entirely is refused like an empty one, not taken as a value."""
        check = validator("test-secret")
        good = query("/photos")
        for missing in ("X-Signature", "X-Expires"):
            params = {name: value for name, value in good.items() if name != missing}
            self.assert_refused(check, "POST", "/photos", params, "MissingSignature")

    def test_negative_expires_is_in_the_past(self) -> None:
        """A negative ``X-Expires`` is a valid int64 long gone: expired, not malformed."""
        check = validator("test-secret")
        for expires in (-1, -EXPIRES, -(2**63)):
            params = query("/photos", expires=expires)
            self.assertEqual(params["X-Expires"], str(expires))
            self.assert_refused(check, "POST", "/photos", params, "SignatureExpired")

    def test_signature_outside_utf8_is_just_wrong(self) -> None:
        """Query values arrive surrogate-escaped: a signature of stray bytes is refused as wrong,
        never a crash."""
        params = {**query("/photos"), "X-Signature": "abc\udcff"}
        self.assert_refused(validator("test-secret"), "POST", "/photos", params, "InvalidSignature")

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


class ExpiresTests(SynchronousTestCase):
    """``X-Expires`` is read as Go's ``strconv.ParseInt(text, 10, 64)`` reads it."""

    def test_accepted(self) -> None:
        table = {
            "0": 0,
            "-0": 0,
            "+0": 0,
            "000": 0,
            "7": 7,
            "+7": 7,
            "-7": -7,
            "007": 7,
            "-007": -7,
            "1702156800": 1702156800,
            str(2**63 - 1): 2**63 - 1,
            str(-(2**63)): -(2**63),
            "0" * 30 + "9223372036854775807": 2**63 - 1,
        }
        for text, value in table.items():
            self.assertEqual(signature._parse_int64(text), value, text)

    def test_refused(self) -> None:
        for text in (
            "",
            "+",
            "-",
            "+-7",
            "7-",
            "0x10",
            "1e3",
            "1.0",
            str(2**63),
            str(-(2**63) - 1),
            "9" * 20,
            "9" * 5000,  # never converted: Python refuses past 4300 digits
        ):
            self.assertIsNone(signature._parse_int64(text), text[:30])

    def test_the_largest_expiry_validates(self) -> None:
        """Go's largest int64 is a valid expiry when no TTL limit applies."""
        expires = 2**63 - 1
        params = query("/photos", expires=expires)
        validator("test-secret", max_ttl=-1).validate("POST", "/photos", params)


class SecretsFileTests(SynchronousTestCase):
    """`SecretsFile`: a half-done rotation keeps the last secrets, with one warning each time the
    file's state changes (not one per request)."""

    def write(self, path: str, text: str) -> None:
        with open(path, "w") as f:
            f.write(text)

    def call(self, secrets: SecretsFile) -> tuple[tuple[str, ...], list[str]]:
        """The secrets, and the warnings logged while reading them."""
        with capturedLogs() as events:
            current = secrets()
        return current, [event["log_format"] for event in events]

    def test_emptied_file_warns_once(self) -> None:
        path = self.mktemp()
        self.write(path, "one\n")
        secrets = SecretsFile(path)
        self.assertEqual(self.call(secrets), (("one",), []))
        self.write(path, "# nothing here any more\n\n")
        current, warnings = self.call(secrets)
        self.assertEqual(current, ("one",))
        self.assertEqual(len(warnings), 1)
        self.assertIn("has no secret", warnings[0])
        self.assertEqual(self.call(secrets), (("one",), []))
        self.write(path, "two\n")
        self.assertEqual(self.call(secrets), (("two",), []))

    def test_missing_file_warns_once(self) -> None:
        path = self.mktemp()
        self.write(path, "one\n")
        secrets = SecretsFile(path)
        self.assertEqual(self.call(secrets), (("one",), []))
        os.remove(path)
        current, warnings = self.call(secrets)
        self.assertEqual(current, ("one",))
        self.assertEqual(len(warnings), 1)
        self.assertIn("cannot read", warnings[0])
        self.assertEqual(self.call(secrets), (("one",), []))
        self.write(path, "two\n")
        self.assertEqual(self.call(secrets), (("two",), []))

    def test_never_there_is_no_secret_and_no_warning(self) -> None:
        """A file missing from the start: no secrets (every signature refused), and nothing to
        warn about keeping."""
        secrets = SecretsFile(self.mktemp())
        self.assertEqual(self.call(secrets), ((), []))
        self.assertEqual(self.call(secrets), ((), []))

    def test_unchanged_file_is_not_read_again(self) -> None:
        path = self.mktemp()
        self.write(path, "one\n")
        secrets = SecretsFile(path)
        reads: list[str] = []
        real = signature.read_secrets
        self.patch(signature, "read_secrets", lambda p: reads.append(p) or real(p))
        for _ in range(3):
            self.assertEqual(secrets(), ("one",))
        self.assertEqual(reads, [path])


class SignerTests(SynchronousTestCase):
    def test_url_without_a_base(self) -> None:
        url = Signer("s", clock=lambda: NOW).sign_url("POST", "/products", 900)
        expected = sign("s", "POST", "/products", NOW + 900)
        self.assertEqual(
            url, f"/products?X-Expires={NOW + 900}&X-Path=%2Fproducts&X-Signature={expected}"
        )


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
