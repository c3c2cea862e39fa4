"""Signed URLs (SPEC §13.1, DECISIONS D14) and webhook signatures (SPEC §13.2): the pure parts.

A URL is signed like an S3 pre-signed URL: ``X-Expires`` (Unix seconds), optionally ``X-Path`` (a
path prefix the signature covers), and ``X-Signature`` = unpadded URL-safe base64 of
HMAC-SHA256(secret, ``METHOD\\nPATH\\nEXPIRES``).  Byte for byte the Go server's algorithm, so its
signers and ours are interchangeable.

Backends sign with `Signer`; webhook receivers check deliveries with `verify_webhook`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import quote, urlencode

DEFAULT_MAX_TTL_MINUTES = 60


class SignatureError(Exception):
    """A refused signature: ``code`` and ``message`` are the Go server's, answered with a 401."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


MISSING = SignatureError(
    "MissingSignature", "Request must include X-Signature and X-Expires parameters"
)
BAD_EXPIRES = SignatureError("InvalidExpires", "Invalid expiration timestamp")
EXPIRED = SignatureError("SignatureExpired", "The provided signature has expired")
TOO_LONG = SignatureError(
    "SignatureTTLExceeded", "Signature expiration exceeds maximum allowed TTL"
)
WRONG_PATH = SignatureError("InvalidPath", "Request path does not match signed path")
WRONG_SIGNATURE = SignatureError("InvalidSignature", "The request signature does not match")


def string_to_sign(method: str, path: str, expires: int) -> bytes:
    return f"{method}\n{path}\n{expires}".encode()


def sign(secret: str, method: str, path: str, expires: int) -> str:
    """The ``X-Signature`` value."""
    digest = hmac.new(secret.encode(), string_to_sign(method, path, expires), hashlib.sha256)
    return base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()


def path_covers(signed: str, requested: str) -> bool:
    """Whether a signature for path ``signed`` covers a request for ``requested``.

    One trailing slash is ignored on both; then the paths must be equal, or ``requested`` must
    continue ``signed`` past a ``/`` (``/photos`` covers ``/photos/abc``, not ``/photosxyz``).
    """
    signed = signed.removesuffix("/")
    requested = requested.removesuffix("/")
    return requested == signed or requested.startswith(signed + "/")


def should_validate(method: str, path: str, require: bool, require_for_reads: bool) -> bool:
    """Which requests need a signature: never health checks; GET only when reads are signed."""
    if not require or path == "/status_check" or path.startswith("/probe/"):
        return False
    return require_for_reads or method != "GET"


@dataclass(frozen=True)
class Validator:
    """Checks a request's signature parameters, in the Go server's order, against every secret.

    ``secrets`` is called for each check, so a rotated secrets file takes effect at once.
    """

    secrets: Callable[[], Sequence[str]]
    max_ttl_minutes: int = DEFAULT_MAX_TTL_MINUTES
    clock: Callable[[], float] = time.time

    def validate(self, method: str, path: str, query: Mapping[str, str]) -> None:
        """Return when the request is signed; raise `SignatureError` otherwise."""
        signature = query.get("X-Signature", "")
        raw_expires = query.get("X-Expires", "")
        if not signature or not raw_expires:
            raise MISSING
        try:
            expires = int(raw_expires, 10)
        except ValueError:
            raise BAD_EXPIRES from None
        now = int(self.clock())
        if now > expires:
            raise EXPIRED
        max_ttl = self.max_ttl_minutes or DEFAULT_MAX_TTL_MINUTES
        if max_ttl > 0 and expires > now + max_ttl * 60:
            raise TOO_LONG
        signed_path = query.get("X-Path") or path
        if not path_covers(signed_path, path):
            raise WRONG_PATH
        # Every secret is tried, and compared in constant time, whatever matches first.
        matches = [
            hmac.compare_digest(sign(secret, method, signed_path, expires), signature)
            for secret in self.secrets()
        ]
        if not any(matches):
            raise WRONG_SIGNATURE


@dataclass(frozen=True)
class Signer:
    """Signs URLs for a backend: ``Signer(secret, "https://images.example.com")``.

    ``sign_url("POST", "/products", 900)`` gives
    ``https://images.example.com/products?X-Expires=…&X-Path=%2Fproducts&X-Signature=…``.
    """

    secret: str
    base_url: str = ""
    clock: Callable[[], float] = time.time

    def sign_url(self, method: str, path: str, ttl_seconds: int) -> str:
        expires = int(self.clock()) + int(ttl_seconds)
        query = urlencode(
            [
                ("X-Expires", str(expires)),
                ("X-Path", path),
                ("X-Signature", sign(self.secret, method, path, expires)),
            ],
            quote_via=quote,
            safe="",
        )
        return f"{self.base_url}{path}?{query}"


class SecretsFile:
    """Secrets, one a line (blank lines and ``#`` comments ignored), re-read when it changes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._seen: tuple[int, int, int] | None = None
        self._secrets: tuple[str, ...] = ()

    def __call__(self) -> tuple[str, ...]:
        """The current secrets; the last ones read if the file is briefly missing or empty (a
        rotation half done must not lock everyone out)."""
        try:
            stat = os.stat(self.path)
            seen = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
            if seen != self._seen:
                with open(self.path, encoding="utf-8") as lines:
                    secrets = parse_secrets(lines.read())
                self._seen = seen
                self._secrets = secrets or self._secrets
        except OSError:
            pass
        return self._secrets


def parse_secrets(text: str) -> tuple[str, ...]:
    lines = (line.strip() for line in text.splitlines())
    return tuple(line for line in lines if line and not line.startswith("#"))


def generate_secret(length: int = 32) -> str:
    """``length`` random bytes as unpadded URL-safe base64 (32 bytes: 43 characters)."""
    return base64.urlsafe_b64encode(os.urandom(length)).rstrip(b"=").decode()


def webhook_signature(secret: str, timestamp: str, body: bytes) -> str:
    """``X-Webhook-Signature``: ``sha256=`` and the hex HMAC of ``timestamp.body``."""
    message = timestamp.encode() + b"." + body
    return "sha256=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def verify_webhook(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    """Check a webhook delivery's signature in constant time."""
    return hmac.compare_digest(webhook_signature(secret, timestamp, body), signature)


def parse_duration(text: str) -> int:
    """A Go duration (``90s``, ``15m``, ``1h30m``, ``1.5h``) in whole seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    total, rest = 0.0, text.strip()
    if not rest:
        raise ValueError(f"invalid TTL duration: {text!r}")
    while rest:
        index = 0
        while index < len(rest) and (rest[index].isdigit() or rest[index] == "."):
            index += 1
        number, rest = rest[:index], rest[index:]
        unit = "ms" if rest.startswith("ms") else rest[:1]
        if not number or unit not in units:
            raise ValueError(f"invalid TTL duration: {text!r}")
        total += float(number) * units[unit]
        rest = rest[len(unit) :]
    return int(total)
