"""Signed URLs and webhook signatures (docs/api.md#signed-urls, #webhooks): the pure parts.

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
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlencode

from twisted.logger import Logger

log = Logger()

DEFAULT_MAX_TTL_MINUTES = 60


class SignatureError(Exception):
    """A refused signature: ``code`` and ``message`` are the Go server's, answered with a 401."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# The Go server's refusals, by code.
MESSAGES = {
    "MissingSignature": "Request must include X-Signature and X-Expires parameters",
    "InvalidExpires": "Invalid expiration timestamp",
    "SignatureExpired": "The provided signature has expired",
    "SignatureTTLExceeded": "Signature expiration exceeds maximum allowed TTL",
    "InvalidPath": "Request path does not match signed path",
    "InvalidSignature": "The request signature does not match",
}
_EXPIRES = re.compile(r"[+-]?[0-9]+", re.ASCII)
_INT64 = range(-(2**63), 2**63)


def refusal(code: str) -> SignatureError:
    return SignatureError(code, MESSAGES[code])


def key(secret: str) -> bytes:
    """A secret's bytes: as read from the file, whatever the encoding (see `SecretsFile`)."""
    return secret.encode("utf-8", "surrogateescape")


def string_to_sign(method: str, path: str, expires: int) -> bytes:
    # A path's bytes that are not UTF-8 arrive surrogate-escaped (see `SignatureGuard`): they are
    # signed as the bytes they were, as the Go server signs its raw path.
    return f"{method}\n{path}\n{expires}".encode("utf-8", "surrogateescape")


def sign(secret: str, method: str, path: str, expires: int) -> str:
    """The ``X-Signature`` value."""
    digest = hmac.new(key(secret), string_to_sign(method, path, expires), hashlib.sha256)
    return base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()


def path_covers(signed: str, requested: str) -> bool:
    """Whether a signature for path ``signed`` covers a request for ``requested``.

    One trailing slash is ignored on both; then the paths must be equal, or ``requested`` must
    continue ``signed`` past a ``/`` (``/photos`` covers ``/photos/abc``, not ``/photosxyz``).
    """
    signed = signed.removesuffix("/")
    requested = requested.removesuffix("/")
    return requested == signed or requested.startswith(signed + "/")


def should_validate(method: str, path: str, for_reads: bool) -> bool:
    """Which requests to the main site need a signature, once signatures are required.

    Never the health check (``POST /status_check`` is an upload to the namespace ``status_check``,
    and is checked); ``GET`` only when reads are signed; every other method always (``HEAD``
    too, as in the Go server).  The probes live on the admin site, which is never checked.
    """
    if path == "/status_check" and method != "POST":
        return False
    return for_reads or method != "GET"


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
            raise refusal("MissingSignature")
        expires = _parse_int64(raw_expires)
        if expires is None:
            raise refusal("InvalidExpires")
        now = int(self.clock())
        if now > expires:
            raise refusal("SignatureExpired")
        max_ttl = self.max_ttl_minutes or DEFAULT_MAX_TTL_MINUTES
        if max_ttl > 0 and expires > now + max_ttl * 60:
            raise refusal("SignatureTTLExceeded")
        signed_path = query.get("X-Path") or path
        if not path_covers(signed_path, path):
            raise refusal("InvalidPath")
        # Every secret is tried, and compared in constant time, whatever matches first.
        given = signature.encode("utf-8", "surrogateescape")
        matches = [
            hmac.compare_digest(sign(secret, method, signed_path, expires).encode(), given)
            for secret in self.secrets()
        ]
        if not any(matches):
            raise refusal("InvalidSignature")


def _parse_int64(text: str) -> int | None:
    """A signed decimal as Go's ``ParseInt(text, 10, 64)`` takes it (leading zeros too), or None;
    never converting thousands of digits, which Python refuses past 4300."""
    if not _EXPIRES.fullmatch(text):
        return None
    significant = text.lstrip("+-").lstrip("0") or "0"
    if len(significant) > 19:
        return None
    value = -int(significant) if text.startswith("-") else int(significant)
    return value if value in _INT64 else None


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
        query = urlencode(  # form-style escaping, as Go's url.QueryEscape
            [
                ("X-Expires", str(expires)),
                ("X-Path", path),
                ("X-Signature", sign(self.secret, method, path, expires)),
            ]
        )
        return f"{self.base_url}{path}?{query}"


class SecretsFile:
    """Secrets, one a line (blank lines and ``#`` comments ignored), re-read when it changes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._seen: tuple[int, int, int] | None = None
        self._secrets: tuple[str, ...] = ()

    def __call__(self) -> tuple[str, ...]:
        """The current secrets.

        When the file turns missing, unreadable or empty (a rotation half done), the last secrets
        read stay in force, with a warning each time it changes, rather than locking everyone out.
        """
        try:
            stat = os.stat(self.path)
            seen = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
            if seen != self._seen:
                self._seen = seen
                secrets = read_secrets(self.path)
                if secrets:
                    self._secrets = secrets
                else:
                    log.warn("{path} has no secret: keeping the previous ones", path=self.path)
        except OSError as error:
            if self._seen is not None:
                log.warn(
                    "cannot read {path}: {error}; keeping the secrets", path=self.path, error=error
                )
            self._seen = None
        return self._secrets


def read_secrets(path: str) -> tuple[str, ...]:
    """The secrets in a file; bytes that are not UTF-8 are kept as they are (as in Go)."""
    with open(path, encoding="utf-8", errors="surrogateescape") as lines:
        return parse_secrets(lines.read())


def parse_secrets(text: str) -> tuple[str, ...]:
    lines = (line.strip() for line in text.splitlines())
    return tuple(line for line in lines if line and not line.startswith("#"))


def generate_secret(length: int = 32) -> str:
    """``length`` random bytes as unpadded URL-safe base64 (32 bytes: 43 characters)."""
    return base64.urlsafe_b64encode(os.urandom(length)).rstrip(b"=").decode()


def webhook_signature(secret: str, timestamp: str, body: bytes) -> str:
    """``X-Webhook-Signature``: ``sha256=`` and the hex HMAC of ``timestamp.body``."""
    message = timestamp.encode() + b"." + body
    return "sha256=" + hmac.new(key(secret), message, hashlib.sha256).hexdigest()


def verify_webhook(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    """Check a webhook delivery's signature in constant time."""
    expected = webhook_signature(secret, timestamp, body).encode()
    return hmac.compare_digest(expected, signature.encode("utf-8", "surrogateescape"))


# Microseconds as Go spells them: "us", the micro sign (U+00B5) or the Greek mu (U+03BC).
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h)", re.ASCII)
_MAX_DURATION_SECONDS = 2**63 / 1e9
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_duration(text: str) -> int:
    """A Go duration (``90s``, ``15m``, ``1h30m``, ``1.5h``, ``0``, ``-5m``) in whole seconds."""
    sign, body = (-1, text[1:]) if text[:1] == "-" else (1, text.removeprefix("+"))
    if body == "0":
        return 0
    parts = _DURATION_PART.findall(body)
    if not body or "".join(number + unit for number, unit in parts) != body:
        raise ValueError(f"invalid TTL duration: {text!r}")
    seconds = sum(float(number) * _DURATION_UNITS[unit] for number, unit in parts)
    if not seconds < _MAX_DURATION_SECONDS:  # Go's durations are int64 nanoseconds; inf too
        raise ValueError(f"invalid TTL duration: {text!r}")
    return sign * int(seconds)
