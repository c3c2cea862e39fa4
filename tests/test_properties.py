"""Property tests: arbitrary input never makes the parsers raise a foreign exception, nor the server
answer a 5xx, and every 4xx of the main site is the JSON error ``{"error": str, "code": str}``.

Two layers:

* the pure parsers (names, paths, signatures) called directly with many examples;
* a real server (real workers, 127.0.0.1), fed raw bytes over a socket.  Hypothesis runs in a
  thread (``deferToThread``) while the reactor serves the requests, so it shrinks a failure against
  the live server and prints the raw request that caused it (``Falsifying example: ...``).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import posixpath
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qs, quote, quote_from_bytes, unquote, urlsplit

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from twisted.internet.threads import deferToThread
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from imageserver import paths
from imageserver.errors import InvalidParameter, NotFound, UnsupportedFormat
from imageserver.guard import SignatureGuard
from imageserver.names import (
    CACHE_IMMUTABLE,
    CACHE_REVALIDATE,
    DEFAULT_EXTENSIONS,
    OUTPUT_FORMATS,
    RESERVED_NAMES,
    cache_control,
    check_file_name,
    check_servable,
    is_generated,
    parse_name,
    split_outputs,
)
from imageserver.signature import (
    MESSAGES,
    SignatureError,
    Validator,
    parse_duration,
    parse_secrets,
    path_covers,
    sign,
)
from tests.support import WINE_DIR, WINE_HASH, ServerTestCase, SourceServer, fixture, image_size

# The suite draws the same examples on every run, so a failure in CI is one anybody can replay;
# IMAGE_SERVER_EXPLORE=1 draws new ones each run, to look for more.
DERANDOMIZE = not os.environ.get("IMAGE_SERVER_EXPLORE")
# Pure functions are fast: many examples.  The server is real: fewer, and no deadline.
PURE = settings(max_examples=300, deadline=None, database=None, derandomize=DERANDOMIZE)
SERVER_EXAMPLES = 150
SERVER = settings(
    max_examples=SERVER_EXAMPLES,
    deadline=None,
    database=None,
    derandomize=DERANDOMIZE,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
    ],
)

# The server under test makes variants of at most this size, so processing stays quick.
MAXIMUM_WIDTH = 40
WINE = fixture("wine.jpg")
WINE_WIDTH, WINE_HEIGHT = 800, 600

# Text with lone surrogates too (Hypothesis leaves them out by default).
ANY_CHARACTER = st.one_of(
    st.characters(), st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
)
ANY_TEXT = st.text(ANY_CHARACTER, max_size=40)
DIGITS = "0123456789"

EXTENSIONS = [
    *OUTPUT_FORMATS,
    "JPG",
    "Png",
    "tif",
    "pdf",
    "txt",
    "json",
    "svg",
    "html",
    "toolong",
    "ab",
]


def numbers(small: int) -> st.SearchStrategy[str]:
    """Digit strings: mostly small sizes, with zeros, leading zeros and huge values."""
    return st.one_of(
        st.integers(0, small).map(str),
        st.integers(0, small).map(lambda n: f"00{n}"),
        st.integers(0, 10**40).map(str),
        st.text(DIGITS, min_size=1, max_size=300),
    )


def variant_names(small: int = 2 * MAXIMUM_WIDTH) -> st.SearchStrategy[str]:
    """Names shaped like the grammar (``w20.jpg``, ``x0-q101.webp``, ``3x4.avif``), or not."""
    number = numbers(small)
    size = st.one_of(
        number.map(lambda n: "w" + n),
        number.map(lambda n: "x" + n),
        st.tuples(number, number).map(lambda pair: f"{pair[0]}x{pair[1]}"),
        st.just("full_size"),
        st.sampled_from(sorted(RESERVED_NAMES)),
        st.text(max_size=12),
    )
    quality = st.one_of(
        st.just(""),
        st.integers(-5, 150).map(lambda q: f"-q{q}"),
        st.text(DIGITS, max_size=6).map(lambda d: "-q" + d),
    )
    extension = st.one_of(
        st.sampled_from(EXTENSIONS).map(lambda e: "." + e),
        st.just(""),
        st.text(max_size=6).map(lambda e: "." + e),
    )
    return st.builds(lambda s, q, e: s + q + e, size, quality, extension)


ALL_NAMES = st.one_of(variant_names(), ANY_TEXT, st.text(min_size=200, max_size=300))


class NameProperties(SynchronousTestCase):
    """names.py: every name is a `Variant` or an `InvalidParameter`, never another exception."""

    @PURE
    @given(ALL_NAMES, st.integers(1, 100), st.integers(0, 2000))
    def test_parse_name_answers_or_refuses(
        self, name: str, default_quality: int, maximum_width: int
    ) -> None:
        try:
            variant = parse_name(name, default_quality, maximum_width)
        except InvalidParameter:
            return
        self.assertEqual(variant.name, name)
        check_file_name(name)  # a parsed name is always a safe file name
        self.assertIn(cache_control(name), (CACHE_IMMUTABLE, CACHE_REVALIDATE))
        if variant.custom:
            self.assertEqual((variant.width, variant.height, variant.quality), (0, 0, 0))
            return
        self.assertTrue(is_generated(name), name)
        self.assertTrue(1 <= variant.quality <= 100, variant)
        self.assertGreaterEqual(min(variant.width, variant.height), 0)
        if maximum_width:
            self.assertLessEqual(max(variant.width, variant.height), maximum_width)
        if variant.height:
            self.assertGreaterEqual(variant.width, 1)

    @PURE
    @given(ALL_NAMES)
    def test_file_names_that_pass_stay_in_their_directory(self, name: str) -> None:
        try:
            check_file_name(name)
        except InvalidParameter:
            return
        relative = paths.relative_path("p", WINE_HASH, name)
        self.assertEqual(posixpath.normpath(relative), relative)
        self.assertEqual(posixpath.dirname(relative), f"p/{WINE_DIR}")
        self.assertLessEqual(len(name.encode()), 255)

    @PURE
    @given(
        variant_names(),
        st.frozensets(st.sampled_from([*DEFAULT_EXTENSIONS, "pdf", "tif", "heif"]), max_size=4),
    )
    def test_check_servable_refuses_with_our_errors(
        self, name: str, allowed: frozenset[str]
    ) -> None:
        try:
            variant = parse_name(name, 75, 0)
        except InvalidParameter:
            return
        try:
            check_servable(variant, allowed)
        except (NotFound, UnsupportedFormat):
            self.assertTrue(variant.extension, variant)
            return
        if allowed and variant.extension and variant.name not in RESERVED_NAMES:
            self.assertIn(variant.extension, allowed)

    @PURE
    @given(st.one_of(ANY_TEXT, st.lists(variant_names(), max_size=6).map(",".join)))
    def test_split_outputs(self, raw: str) -> None:
        outputs = split_outputs(raw)
        self.assertEqual(len(outputs), len(set(outputs)))
        for name in outputs:
            self.assertTrue(name)
            self.assertNotIn(",", name)
            self.assertEqual(name, name.strip())
            self.assertIn(name, raw)

    def test_lone_surrogates_are_refused_not_a_crash(self) -> None:
        """Regression: ``len(name.encode())`` raised `UnicodeEncodeError` on a lone surrogate."""
        for name in ("\ud800", "\udcff.jpg", "w10\udfff.jpg"):
            self.assertRaises(InvalidParameter, check_file_name, name)
            self.assertRaises(InvalidParameter, parse_name, name)


class PathProperties(SynchronousTestCase):
    """paths.py: namespaces and hashes are checked with our errors only."""

    @PURE
    @given(
        st.one_of(
            ANY_TEXT,
            st.text("abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=300),
            st.sampled_from(["tmp", "TMP", "p", "..", ".", "", "a/b", "a\x00", "\u0131"]),
        )
    )
    def test_check_namespace(self, namespace: str) -> None:
        try:
            paths.check_namespace(namespace)
        except (NotFound, InvalidParameter):
            return
        self.assertRegex(namespace, r"\A[a-z0-9_-]{1,255}\Z")
        self.assertNotEqual(namespace, "tmp")

    @PURE
    @given(st.one_of(ANY_TEXT, st.text("0123456789abcdefABCDEF\n", min_size=31, max_size=33)))
    def test_partition(self, image_hash: str) -> None:
        try:
            partition = paths.partition(image_hash)
        except InvalidParameter:
            return
        self.assertRegex(image_hash, r"\A[0-9a-f]{32}\Z")
        self.assertEqual(partition.replace("/", ""), image_hash)
        self.assertRegex(partition, paths.PARTITION)


def path_text(raw: bytes) -> str:
    """A path as the signature guard sees it: bytes, then surrogate-escaped text."""
    return raw.decode("utf-8", "surrogateescape")


SIGNATURE_VALUES = st.one_of(
    ANY_TEXT.filter(lambda s: not re.search(r"[\ud800-\udfff]", s)),
    st.integers(-(2**70), 2**70).map(str),
    st.integers(4290, 5000).map(lambda n: "9" * n),
    st.integers(4290, 5000).map(lambda n: "0" * n + "1"),
    st.text("+-0123456789 ", max_size=25),
)


class SignatureProperties(SynchronousTestCase):
    """signature.py and the guard: a refusal is a `SignatureError`, never another exception."""

    now = 1_700_000_000

    def validator(self) -> Validator:
        return Validator(lambda: ("secret", "other"), max_ttl_minutes=60, clock=lambda: self.now)

    @PURE
    @given(
        st.sampled_from(["GET", "POST", "HEAD", "PUT", "get", "\u00e9"]),
        st.one_of(st.binary(max_size=30).map(lambda b: path_text(b"/" + b)), st.text()),
        st.dictionaries(
            st.sampled_from(["X-Signature", "X-Expires", "X-Path", "x-expires", "other"]),
            SIGNATURE_VALUES,
        ),
    )
    def test_validate_refuses_with_signature_errors(
        self, method: str, path: str, query: dict[str, str]
    ) -> None:
        try:
            self.validator().validate(method, path, query)
        except SignatureError as error:
            self.assertEqual(error.message, MESSAGES[error.code])

    @PURE
    @given(
        st.sampled_from(["GET", "POST", "HEAD", "DELETE"]),
        st.binary(max_size=30).map(lambda b: path_text(b"/" + b)),
        st.integers(0, 3600),
        st.sampled_from(["secret", "other"]),
    )
    def test_signed_requests_pass(self, method: str, path: str, ttl: int, secret: str) -> None:
        expires = self.now + ttl
        query = {"X-Expires": str(expires), "X-Signature": sign(secret, method, path, expires)}
        self.validator().validate(method, path, query)
        # A signed prefix covers the path below it.
        prefix = path.rpartition("/")[0] or "/"
        query = {**query, "X-Path": prefix}
        query["X-Signature"] = sign(secret, method, prefix, expires)
        self.validator().validate(method, path, query)

    @PURE
    @given(
        st.one_of(st.sampled_from([b"GET", b"POST", b"HEAD"]), st.binary(max_size=8)),
        st.binary(max_size=200),
        st.booleans(),
    )
    def test_guard_check_over_arbitrary_bytes(
        self, method: bytes, uri: bytes, for_reads: bool
    ) -> None:
        guard = SignatureGuard(None, self.validator(), for_reads)  # type: ignore[arg-type]
        try:
            guard.check(method, uri)
        except SignatureError as error:
            self.assertIn(error.code, MESSAGES)

    @PURE
    @given(
        st.one_of(
            st.text(),
            st.text("0123456789.+-hmsunµ", max_size=30),
            st.text(DIGITS, min_size=300, max_size=400).map(lambda d: d + "h"),
        )
    )
    def test_parse_duration(self, text: str) -> None:
        try:
            seconds = parse_duration(text)
        except ValueError as error:
            self.assertTrue(str(error).startswith("invalid TTL duration"), str(error))
            return
        self.assertIsInstance(seconds, int)

    @PURE
    @given(st.text())
    def test_parse_secrets(self, text: str) -> None:
        for secret in parse_secrets(text):
            self.assertTrue(secret)
            self.assertEqual(secret, secret.strip())
            self.assertFalse(secret.startswith("#"))

    @PURE
    @given(st.text(), st.text())
    def test_path_covers(self, signed: str, rest: str) -> None:
        self.assertTrue(path_covers(signed, signed))
        self.assertTrue(path_covers(signed, signed.removesuffix("/") + "/" + rest))

    def test_regressions(self) -> None:
        """A 5000-digit ``X-Expires`` raised `ValueError` (Python's int-string limit); a path with
        non-UTF-8 bytes raised `UnicodeEncodeError` in the signing; a huge duration raised
        `OverflowError`.  Over HTTP the first two were a 500, or a dropped connection with a
        body."""
        soon = str(self.now + 30)
        refused = self.assertRaises(
            SignatureError,
            self.validator().validate,
            "GET",
            "/p",
            {"X-Signature": "a", "X-Expires": "9" * 5000},
        )
        self.assertEqual(refused.code, "InvalidExpires")
        # Leading zeros are still a number, as for Go's ParseInt.
        query = {"X-Signature": sign("secret", "GET", "/p", self.now), "X-Expires": "0" * 5000}
        query["X-Expires"] += str(self.now)
        self.validator().validate("GET", "/p", query)
        path = path_text(b"/p/\xff")
        refused = self.assertRaises(
            SignatureError,
            self.validator().validate,
            "GET",
            path,
            {"X-Signature": "a", "X-Expires": soon},
        )
        self.assertEqual(refused.code, "InvalidSignature")
        # The signature of raw bytes is over those bytes, as the Go server signs them.
        expires = self.now + 30
        self.assertEqual(
            sign("k", "GET", path, expires), sign_bytes("k", b"GET\n/p/\xff\n%d" % expires)
        )
        self.assertRaises(ValueError, parse_duration, "9" * 400 + "s")


def sign_bytes(secret: str, message: bytes) -> str:
    import base64
    import hmac
    from hashlib import sha256

    digest = hmac.new(secret.encode(), message, sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


# ---------------------------------------------------------------------------------------------
# Raw HTTP against a real server.

TCHAR = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# Twisted's request-target check (twisted.web.http._parseRequestLine): bytes 33 to 176.
TARGET_BYTES = bytes(range(33, 177))
# The limit Twisted puts on the request line plus headers.
HEADERS_LIMIT = 16384
# Headers the request builder writes itself.
FRAMING = {b"host", b"connection", b"content-length", b"transfer-encoding"}


@dataclass(frozen=True)
class RawRequest:
    """One HTTP/1.1 request as bytes; its repr is the bytes, so a failure shows what was sent."""

    method: bytes
    target: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()
    body: bytes | None = None
    chunked: bool = False

    def head(self) -> bytes:
        lines = [self.method + b" " + self.target + b" HTTP/1.1", b"Host: 127.0.0.1"]
        lines += [name + b": " + value for name, value in self.headers]
        lines.append(b"Connection: close")
        if self.body is not None:
            if self.chunked:
                lines.append(b"Transfer-Encoding: chunked")
            else:
                lines.append(b"Content-Length: %d" % len(self.body))
        return b"\r\n".join(lines) + b"\r\n\r\n"

    def encode(self) -> bytes:
        if self.body is None:
            return self.head()
        if not self.chunked:
            return self.head() + self.body
        chunks = [self.body[i : i + 7] for i in range(0, len(self.body), 7)]
        framed = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks)
        return self.head() + framed + b"0\r\n\r\n"

    def well_formed(self) -> bool:
        """Whether Twisted's parser takes it; it answers anything else with a bare 400."""
        return (
            bool(self.method)
            and all(byte in TCHAR for byte in self.method)
            and bool(self.target)
            and all(byte in TARGET_BYTES for byte in self.target)
            and all(
                name and all(byte in TCHAR for byte in name) and not re.search(b"[\0\r\n]", value)
                for name, value in self.headers
            )
            and len(self.head()) < HEADERS_LIMIT
        )

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """How Hypothesis shows a failing example: the bytes, not the call that built them."""
        printer.text(repr(self))

    def __repr__(self) -> str:
        body = b"" if self.body is None else self.body
        shown = body if len(body) <= 200 else body[:200] + b"...(%d bytes)" % len(body)
        framing = "chunked" if self.chunked else "Content-Length"
        return f"RawRequest({self.head()!r} + body {shown!r} [{framing}])"


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def exchange(port: int, request: RawRequest) -> RawResponse | None:
    """Send the raw bytes, read one response; None when the server closed without answering."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        with contextlib.suppress(OSError):  # refused early: the answer is still there to read
            sock.sendall(request.encode())
        response = http.client.HTTPResponse(sock, method=request.method.decode("latin-1"))
        try:
            response.begin()
        except (http.client.RemoteDisconnected, ConnectionResetError):
            return None
        headers = {name.lower(): value for name, value in response.getheaders()}
        return RawResponse(response.status, headers, response.read())


def percent(data: bytes) -> bytes:
    return quote_from_bytes(data, safe="").encode()


def utf8(text: str) -> bytes:
    """Text as UTF-8, lone surrogates as their (invalid) three bytes."""
    return text.encode("utf-8", "surrogatepass")


def mostly(usual: st.SearchStrategy[Any], rare: st.SearchStrategy[Any]) -> Any:
    """``usual``, and ``rare`` one time in eight (``one_of`` would draw each half the time)."""
    return st.integers(1, 8).flatmap(lambda n: rare if n == 8 else usual)


SPECIAL_SEGMENTS = [
    b"",
    b".",
    b"..",
    b"%2e%2e",
    b"%2E.",
    b"%2F",
    b"..%2F..%2Fetc",
    b"%5C..",
    b"%00",
    b"tmp",
    b"original",
    b"info.json",
    b"process",
    b"status_check",
    b"w10.jpg",
    b"x8-q50.webp",
    b"%C3%A9",
    b"%ED%A0%80",
    b"%FF",
    b"\x80",
    b"\xb0",
    b"\xc3\xa9",
    b"a" * 300,
    b"%61" * 300,
    b"9" * 4000,
]
segments = st.one_of(
    st.sampled_from(SPECIAL_SEGMENTS),
    ANY_TEXT.map(lambda t: percent(utf8(t))),  # percent-encoded, invalid UTF-8 included
    st.binary(max_size=24).map(percent),
    # Raw bytes: 0x80-0xB0 pass Twisted's parser and reach the app; anything else may not.
    st.binary(max_size=12).map(lambda b: bytes(33 + byte % (177 - 33) for byte in b)),
    st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=16).map(str.encode),
    variant_names().map(lambda n: quote(n, safe="").encode()),
    st.integers(256, 3000).map(lambda n: b"n" * n),
)
# Now and then any bytes at all, which Twisted's parser mostly refuses before the app.
segments = mostly(segments, st.binary(max_size=12))
namespaces = st.one_of(
    st.sampled_from([b"p", b"status_check", b"tmp", b"P", b"a-b_c", b"-", b"x" * 255, b"x" * 256]),
    segments,
)
partitions = st.one_of(
    st.just(WINE_DIR.encode()),
    st.text("0123456789abcdef", min_size=32, max_size=32).map(
        lambda h: paths.partition(h).encode()
    ),
    st.lists(segments, min_size=4, max_size=4).map(b"/".join),
)


def targets(names: st.SearchStrategy[bytes] = segments) -> st.SearchStrategy[bytes]:
    """Request paths: arbitrary segments, or shaped like an image's or a namespace's URL."""
    shaped = st.one_of(
        st.tuples(namespaces, partitions, names).map(lambda t: b"/" + b"/".join(t)),
        st.tuples(namespaces, partitions).map(lambda t: b"/" + b"/".join(t) + b"/process"),
        namespaces.map(lambda n: b"/" + n),
        st.lists(segments, max_size=7).map(lambda s: b"/" + b"/".join(s)),
        st.lists(segments, max_size=4).map(lambda s: b"//" + b"//".join(s)),
    )
    image = b"/p/" + WINE_DIR.encode()
    valid = st.sampled_from(
        [b"/status_check", b"/p", image + b"/original", image + b"/info.json", image + b"/w10.jpg"]
    )
    return st.one_of(valid, shaped, shaped.map(lambda path: b"http://127.0.0.1" + path))


def query_values(names: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        ANY_TEXT.filter(lambda s: not re.search(r"[\ud800-\udfff]", s)),
        st.lists(names, max_size=4).map(",".join),
        st.text(DIGITS, max_size=30),
        st.integers(4290, 5000).map(lambda n: "9" * n),
    )


def local_sources(source_base: str) -> st.SearchStrategy[str]:
    """``source=`` values that reach nothing but 127.0.0.1 (the filter in `stays_local` agrees)."""
    fixed = [
        f"{source_base}/wine.jpg",
        f"{source_base}/junk",
        f"{source_base}/tiny",
        f"{source_base}/missing",
        source_base.replace("http:", "https:") + "/wine.jpg",
        "http://127.0.0.1:1/x",
        "http://127.0.0.1:99999/",
        "http://127.0.0.1:0/",
        "http://[::1",
        "http://[::1]:1/",
        "http://",
        "http:///x",
        "ftp://127.0.0.1/x",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "",
    ]
    return st.one_of(
        st.sampled_from(fixed),
        st.text(max_size=30).map(lambda t: f"{source_base}/{t}"),
        ANY_TEXT.filter(lambda s: not re.search(r"[\ud800-\udfff]", s)),
    )


def stays_local(target: bytes) -> bool:
    """Whether every ``source=`` in the target leaves the machine alone: no host, or 127.0.0.1."""
    _, _, query = target.decode("utf-8", "replace").partition("?")
    for value in parse_qs(query, keep_blank_values=True).get("source", []):
        try:
            parts = urlsplit(value)
        except ValueError:
            continue  # the server refuses it before connecting
        local = re.fullmatch(r"(127\.0\.0\.1|\[::1\])(:[0-9a-zA-Z]*)?", parts.netloc)
        if parts.scheme in ("http", "https") and parts.netloc and not local:
            return False
    return True


def queries(values: st.SearchStrategy[str], sources: st.SearchStrategy[str]) -> Any:
    """``?a=b&c`` with the project's parameters, percent-encoded or raw."""
    pair = st.one_of(
        st.tuples(st.just("source"), sources),
        st.tuples(
            st.sampled_from(["outputs", "X-Signature", "X-Expires", "X-Path", "", "a"]), values
        ),
        st.tuples(st.text(max_size=8), values),
    )

    def encode(item: tuple[tuple[str, str], bool, bool]) -> bytes:
        (name, value), raw, bare = item
        if raw:  # as typed: '&', '=', '#', non-ASCII bytes and all
            key, val = name.encode(), value.encode()
        else:
            key, val = quote(name, safe="").encode(), quote(value, safe=",").encode()
        return key if bare and not value else key + b"=" + val

    raw = st.sampled_from([False, False, False, True])  # raw text is mostly refused by Twisted
    encoded = st.tuples(pair, raw, st.booleans()).map(encode)
    return st.lists(encoded, max_size=4).map(
        lambda items: b"?" + b"&".join(items) if items else b""
    )


KNOWN_METHODS = st.sampled_from(
    [b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"TRACE", b"get"]
)
METHODS = mostly(KNOWN_METHODS, st.binary(min_size=1, max_size=8))
HEADER_NAMES = st.one_of(
    st.sampled_from(
        [
            b"Content-Type",
            b"If-None-Match",
            b"If-Modified-Since",
            b"Range",
            b"If-Range",
            b"Accept",
            b"Accept-Encoding",
            b"Expect",
            b"Origin",
            b"Cookie",
        ]
    ),
    st.text(st.sampled_from(TCHAR.decode()), min_size=1, max_size=12).map(str.encode),
).filter(lambda name: name.lower() not in FRAMING)
# Any byte but the ones that end a header line (NUL too: Twisted refuses it, which is allowed).
HEADER_VALUES = st.one_of(
    st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
    ANY_TEXT.map(utf8).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
    st.sampled_from(
        [
            b"*",
            b"application/json",
            b"multipart/form-data; boundary=x",
            b"application/x-www-form-urlencoded",
            b"100-continue",
            b"bytes=0-10",
            b"bytes=",
            b"bytes=\xff-",
            b"Sun, 06 Nov 1994 08:49:37 GMT",
        ]
    ),
)
HEADERS = st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=4).map(tuple)
BODIES = st.one_of(st.none(), st.binary(max_size=64), st.just(b""), st.just(WINE))


@implementer(ILogObserver)
class FailureLog:
    """Tracebacks the server logs, so each is charged to the request that caused it."""

    def __init__(self) -> None:
        self.failures: list[LogEvent] = []

    def __call__(self, event: LogEvent) -> None:
        if event.get("log_failure") is not None:
            self.failures.append(event)

    def since(self, count: int) -> list[str]:
        return [event["log_failure"].getTraceback() for event in self.failures[count:]]


class RawHTTPTestCase(ServerTestCase):
    """Starts a server whose variants are small, uploads wine.jpg, and sends raw requests."""

    async def start(self, **overrides: Any) -> None:
        self.source = SourceServer(self)
        self.source.serve("/wine.jpg", WINE)
        self.source.serve("/junk", b"not an image at all, not at all")
        self.source.serve("/tiny", b"abc")
        # A download that hangs (https to a plain HTTP server) gives up after a second.
        await self.start_server(maximum_width=MAXIMUM_WIDTH, http_timeout=1, **overrides)
        self.port = int(self.url.rpartition(":")[2])
        self.logged = FailureLog()
        globalLogPublisher.addObserver(self.logged)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged)

    def send(self, request: RawRequest) -> RawResponse | None:
        """Send from the test's thread; fail when the server logged a traceback meanwhile."""
        seen = len(self.logged.failures)
        response = exchange(self.port, request)
        logged = self.logged.since(seen)
        self.assertEqual(logged, [], f"the server logged a traceback for {request!r}")
        return response

    async def check_all(self, strategy: Any, check: Callable[[Any], None]) -> None:
        """Run ``check`` on examples of ``strategy`` in a thread, the reactor serving meanwhile."""

        @SERVER
        @given(strategy)
        def run(example: Any) -> None:
            check(example)

        try:
            await deferToThread(run)
        except BaseException:
            # The failure names the request and its traceback; the copies logged on every
            # shrinking step would only bury it.
            self.flushLoggedErrors()
            raise

    def describe(self, request: RawRequest, response: RawResponse | None) -> str:
        if response is None:
            return f"{request!r}\n-> no response"
        return f"{request!r}\n-> {response.status} {response.headers} {response.body[:300]!r}"

    def assert_answered(self, request: RawRequest, response: RawResponse | None) -> RawResponse:
        """Not a 5xx; a 4xx of the main site is a JSON error (a bare 400 for bad HTTP)."""
        message = self.describe(request, response)
        if not request.well_formed():
            # Twisted's parser refuses it before any resource: a bare 400, or a closed
            # connection for an over-long head.
            if response is not None:
                self.assertEqual(response.status, 400, message)
            return response  # type: ignore[return-value]
        self.assertIsNotNone(response, message)
        assert response is not None
        self.assertLess(response.status, 500, message)
        if response.status == 416:
            # A range past the end of a stored file: Twisted's answer, with the file's size.
            self.assertRegex(response.headers.get("content-range", ""), r"^bytes \*/\d+$", message)
        elif 400 <= response.status < 500:
            self.assert_json_error(request, response, message)
        return response

    def assert_json_error(self, request: RawRequest, response: RawResponse, message: str) -> None:
        content_type = response.headers.get("content-type", "")
        self.assertTrue(content_type.startswith("application/json"), message)
        if request.method == b"HEAD":
            self.assertEqual(response.body, b"", message)
            return
        body = response.json()
        self.assertEqual(sorted(body), ["code", "error"], message)
        self.assertIsInstance(body["error"], str, message)
        self.assertIsInstance(body["code"], str, message)


class ServerProperties(RawHTTPTestCase):
    """Arbitrary methods, paths, queries, headers and bodies at the main site."""

    async def test_arbitrary_requests(self) -> None:
        await self.start()
        await self.upload_wine()
        requests = st.builds(
            RawRequest,
            METHODS,
            st.tuples(
                targets(), queries(query_values(variant_names()), local_sources(self.source.base))
            ).map(b"".join),
            HEADERS,
            BODIES,
            st.booleans(),
        )

        def check(request: RawRequest) -> None:
            assume(stays_local(request.target))
            self.assert_answered(request, self.send(request))

        await self.check_all(requests, check)

    async def test_uploads(self) -> None:
        """``POST /{ns}`` with any Content-Type, body and query: the image's hash or a 4xx."""
        await self.start()
        requests = st.builds(
            RawRequest,
            st.just(b"POST"),
            st.tuples(
                namespaces.map(lambda n: b"/" + n),
                queries(query_values(variant_names()), local_sources(self.source.base)),
            ).map(b"".join),
            HEADERS,
            st.one_of(st.just(WINE), BODIES),
            st.booleans(),
        )

        def check(request: RawRequest) -> None:
            assume(stays_local(request.target))
            response = self.assert_answered(request, self.send(request))
            if response is not None and response.status == 200 and request.body == WINE:
                self.assertEqual(
                    response.json()["hash"], WINE_HASH, self.describe(request, response)
                )

        await self.check_all(requests, check)


class StoredImageProperties(RawHTTPTestCase):
    """Arbitrary names and conditional headers under wine.jpg's real directory."""

    def image_url(self, name: bytes) -> bytes:
        return b"/p/" + WINE_DIR.encode() + b"/" + name

    async def test_variant_names(self) -> None:
        """Valid names are made within the maximum width; the rest are a 4xx."""
        await self.start()
        await self.upload_wine()
        names = st.one_of(
            variant_names().map(lambda n: quote(n, safe="").encode()),
            variant_names().map(str.encode),  # raw: '?', '#', '%' and non-ASCII as typed
            segments,
        )
        requests = st.builds(
            RawRequest, st.sampled_from([b"GET", b"HEAD"]), names.map(self.image_url)
        )

        def check(request: RawRequest) -> None:
            response = self.assert_answered(request, self.send(request))
            if response is None or response.status != 200 or request.method != b"GET":
                return
            path = request.target.partition(b"?")[0]
            name = unquote(path.rpartition(b"/")[2].decode(), errors="strict")
            self.assert_variant(name, response, self.describe(request, response))

        await self.check_all(requests, check)

    def assert_variant(self, name: str, response: RawResponse, message: str) -> None:
        """A 200 for a name of the grammar is that size, in that format, and cacheable forever."""
        if name in RESERVED_NAMES:
            return
        variant = parse_name(name, 75, MAXIMUM_WIDTH)
        self.assertFalse(variant.custom, message)  # full-size conversions are over the maximum
        self.assertEqual(response.headers.get("cache-control"), CACHE_IMMUTABLE, message)
        if variant.output_format not in ("jpeg", "png", "webp", "gif"):
            return  # Pillow may not read it; the size is checked on the others
        width, height, image_format = image_size(response.body)
        self.assertEqual(image_format.lower(), variant.output_format, message)
        self.assertEqual(width, variant.width, message)
        expected = variant.height or variant.width * WINE_HEIGHT / WINE_WIDTH
        self.assertLessEqual(abs(height - expected), 1, message)

    async def test_conditional_headers_on_the_original(self) -> None:
        """``If-None-Match``, ``If-Modified-Since``, ``Range``, ``If-Range``: 200, 206, 304 or
        416, each consistent with the file."""
        await self.start()
        await self.upload_wine()
        plain = await deferToThread(self.send, RawRequest(b"GET", self.image_url(b"original")))
        assert plain is not None
        etag, modified = plain.headers["etag"], plain.headers["last-modified"]
        size = len(WINE)
        positions = st.one_of(
            st.integers(0, size + 10).map(str),
            st.sampled_from(["", " ", "-1", "0x10", "1_0", "\u0661", "9" * 30, "9" * 5000]),
        )
        ordered = st.tuples(st.integers(0, size + 10), st.integers(0, size + 10)).map(sorted)
        ranges = st.one_of(
            st.lists(ordered, min_size=1, max_size=3).map(
                lambda rs: "bytes=" + ",".join(f"{a}-{b}" for a, b in rs)
            ),
            st.integers(0, size + 10).map(lambda n: f"bytes=-{n}"),
            st.lists(st.tuples(positions, positions), min_size=1, max_size=3).map(
                lambda rs: "bytes=" + ",".join(f"{a}-{b}" for a, b in rs)
            ),
            st.text(max_size=20).map(lambda t: "bytes=" + t),
            st.text(max_size=20),
        ).map(utf8)
        tags = st.one_of(
            st.sampled_from([etag, "W/" + etag, "*", '"other"', etag.strip('"'), ""]),
            st.text(max_size=20),
        )
        dates = st.one_of(
            st.datetimes().map(lambda d: format_datetime(d.replace(tzinfo=UTC), usegmt=True)),
            st.sampled_from(
                [
                    modified,
                    "Sun, 06 Nov 1994 08:49:37 GMT",
                    "Sunday, 06-Nov-94 08:49:37 GMT",
                    "Sun Nov  6 08:49:37 1994",
                    "Sun, 06 Nov 99999 08:49:37 GMT",
                    "Sun, 32 Nov 1994 25:61:61 GMT",
                    "1",
                ]
            ),
            st.text(max_size=30),
        ).map(utf8)
        optional = {
            b"If-None-Match": st.one_of(
                st.lists(tags, min_size=1, max_size=3).map(", ".join).map(utf8),
                HEADER_VALUES,
            ),
            b"If-Modified-Since": st.one_of(dates, HEADER_VALUES),
            b"Range": st.one_of(ranges, HEADER_VALUES),
            b"If-Range": st.one_of(dates, tags.map(utf8), HEADER_VALUES),
        }
        headers = st.fixed_dictionaries(
            {},
            optional={
                name: value.map(lambda v: v.replace(b"\r", b"").replace(b"\n", b""))
                for name, value in optional.items()
            },
        ).map(lambda found: tuple(found.items()))
        requests = st.builds(
            RawRequest,
            st.sampled_from([b"GET", b"HEAD"]),
            st.just(self.image_url(b"original")),
            headers,
        )

        def check(request: RawRequest) -> None:
            response = self.assert_answered(request, self.send(request))
            if response is None or not request.well_formed():
                return
            message = self.describe(request, response)
            self.assertIn(response.status, (200, 206, 304, 416), message)
            self.assertEqual(response.headers.get("etag"), etag, message)
            if_none_match = dict(request.headers).get(b"If-None-Match")
            if if_none_match is not None and if_none_match.strip():
                tags = [tag.strip() for tag in if_none_match.split(b",")]
                matches = any(t == b"*" or t.removeprefix(b"W/") == etag.encode() for t in tags)
                self.assertEqual(response.status == 304, matches, message)
            if response.status == 304 or request.method == b"HEAD":
                self.assertEqual(response.body, b"", message)
            elif response.status == 200:
                self.assertEqual(response.body, WINE, message)
            elif response.status == 206:
                self.assert_partial(response, message)

        await self.check_all(requests, check)

    def assert_partial(self, response: RawResponse, message: str) -> None:
        content_range = response.headers.get("content-range")
        if content_range is None:  # several ranges: each part names its own
            self.assertTrue(
                response.headers["content-type"].startswith("multipart/byteranges"), message
            )
            parts = re.findall(rb"(?i)Content-range: bytes (\d+)-(\d+)/(\d+)", response.body)
            self.assertTrue(parts, message)
            return
        found = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", content_range)
        assert found is not None, message
        first, last, total = map(int, found.groups())
        self.assertEqual(total, len(WINE), message)
        self.assertEqual(response.body, WINE[first : last + 1], message)

    async def test_attachments_round_trip(self) -> None:
        """``POST`` any name beside the image: stored and read back byte for byte, or a 4xx."""
        await self.start()
        await self.upload_wine()
        names = st.one_of(variant_names().map(lambda n: quote(n, safe="").encode()), segments)
        requests = st.builds(
            RawRequest,
            st.just(b"POST"),
            names.map(self.image_url),
            HEADERS,
            st.one_of(st.binary(max_size=64), st.just(b"")),
            st.booleans(),
        )

        def check(request: RawRequest) -> None:
            response = self.assert_answered(request, self.send(request))
            if response is None or response.status != 200:
                return
            if request.target.partition(b"?")[0].endswith(b"/process"):
                self.assertEqual(response.body, b"", self.describe(request, response))
                return  # the route that makes variants, with none asked for
            self.assertEqual(response.json(), {}, self.describe(request, response))
            read = RawRequest(b"GET", request.target)
            again = self.send(read)
            self.assertIsNotNone(again, repr(read))
            assert again is not None
            self.assertEqual(
                (again.status, again.body), (200, request.body), self.describe(read, again)
            )

        await self.check_all(requests, check)

    async def test_process_outputs(self) -> None:
        """``POST .../process?outputs=...``: 200 once every output exists, or a 4xx."""
        await self.start()
        await self.upload_wine()
        outputs = st.lists(variant_names(), max_size=4).map(",".join)
        requests = st.builds(
            RawRequest,
            st.just(b"POST"),
            st.one_of(
                outputs.map(lambda o: b"outputs=" + quote(o, safe=",").encode()),
                queries(query_values(variant_names()), st.just("")),
            ).map(lambda q: self.image_url(b"process") + b"?" + q.removeprefix(b"?")),
        )

        def check(request: RawRequest) -> None:
            response = self.assert_answered(request, self.send(request))
            if response is None or response.status != 200:
                return
            _, _, query = request.target.decode().partition("?")
            values = parse_qs(query, keep_blank_values=True).get("outputs", [""])
            for name in split_outputs(values[0]):
                read = RawRequest(b"HEAD", self.image_url(quote(name, safe="").encode()))
                made = self.send(read)
                self.assertEqual(made and made.status, 200, self.describe(read, made))
                path = self.local("p", WINE_DIR, name)
                self.assertTrue(os.path.isfile(path), f"{request!r}: {name!r} was not made")

        await self.check_all(requests, check)


class ServerBugs(RawHTTPTestCase):
    """The smallest requests the properties above found answered wrongly, one test each.

    They fail until the server is fixed (in web.py/site.py, responses.py and fetch.py).  The
    properties above find them too, but each stops at the first bug it meets.
    """

    async def answer(self, request: RawRequest) -> RawResponse:
        response = await deferToThread(self.send, request)
        self.assertIsNotNone(response, repr(request))
        assert response is not None
        return response

    async def test_a_path_that_is_not_utf8_is_a_json_error(self) -> None:
        """Klein answers ``400 text/html "Non-UTF-8 encoding in URL."`` and logs a traceback."""
        await self.start()
        for target in (b"/p/%FF", b"/%ED%A0%80", b"/p/" + WINE_DIR.encode() + b"/%80"):
            for method in (b"GET", b"POST"):
                request = RawRequest(method, target)
                response = await self.answer(request)
                self.assertIn(response.status, (400, 404), self.describe(request, response))
                self.assert_json_error(request, response, self.describe(request, response))

    async def test_an_empty_or_undecodable_range_is_ignored(self) -> None:
        """``Range: bytes=`` and ``Range: bytes=\\xff-`` on a stored file were a 500: Twisted's
        ``static.File`` fails on an empty range list and on logging non-UTF-8 ranges."""
        await self.start()
        await self.upload_wine()
        for value in (b"bytes=", b"bytes=,", b"bytes=\xff-", b"bytes=0-1\xe9"):
            request = RawRequest(
                b"GET", b"/p/" + WINE_DIR.encode() + b"/original", ((b"Range", value),)
            )
            response = await self.answer(request)
            message = self.describe(request, response)
            self.assertIn(response.status, (200, 416), message)
            if response.status == 200:
                self.assertEqual(response.body, WINE, message)

    async def test_an_unreadable_if_modified_since_is_ignored(self) -> None:
        """``If-Modified-Since: \\x0b`` was a 500: Twisted's date parser fails with IndexError."""
        await self.start()
        await self.upload_wine()
        for value in (b"\x0b", b"garbage", b"Mon, 32 Foo 2020"):
            request = RawRequest(
                b"GET", b"/p/" + WINE_DIR.encode() + b"/original", ((b"If-Modified-Since", value),)
            )
            response = await self.answer(request)
            message = self.describe(request, response)
            self.assertEqual(response.status, 200, message)
            self.assertEqual(response.body, WINE, message)

    async def test_a_lowercase_method_on_a_stored_file(self) -> None:
        """The router takes ``get`` for ``GET``, then Twisted's ``static.File`` has no
        ``render_get``: ``501 text/html "Huh?"``.  Methods are case-sensitive (RFC 9110 §9.1)."""
        await self.start()
        await self.upload_wine()
        for method in (b"get", b"head", b"Get"):
            request = RawRequest(method, b"/p/" + WINE_DIR.encode() + b"/original")
            response = await self.answer(request)
            message = self.describe(request, response)
            self.assertLess(response.status, 500, message)
            if response.status >= 400:
                self.assert_json_error(request, response, message)

    async def test_a_source_download_that_times_out(self) -> None:
        """A download still waiting at ``--http_timeout`` (a TLS handshake with a server that
        never answers) logged ``AlreadyCalledError`` from fetch.py and lost its ``i/o timeout``."""
        from twisted.internet import reactor
        from twisted.internet.protocol import Factory, Protocol

        await self.start()
        silent = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        self.addCleanup(silent.stopListening)
        url = f"https://127.0.0.1:{silent.getHost().port}/wine.jpg"
        request = RawRequest(b"POST", b"/p?source=" + quote(url, safe="").encode())
        response = await self.answer(request)
        message = self.describe(request, response)
        self.assertEqual(response.status, 404, message)
        self.assertEqual(response.json()["code"], "source_unavailable", message)
        self.assertTrue(response.json()["error"].endswith(": i/o timeout"), message)


SIGNING_SECRET = "property-secret"


class SignedServerProperties(RawHTTPTestCase):
    """A server requiring signatures for everything: a 401 in the Go server's shape, never a 5xx,
    and a correct signature always gets through the guard."""

    async def test_arbitrary_signature_parameters(self) -> None:
        secrets = os.path.abspath(self.mktemp())
        with open(secrets, "w") as f:
            f.write(SIGNING_SECRET + "\n")
        await self.start(
            require_signature=True,
            require_signature_for_reads=True,
            signing_secrets_file=secrets,
        )
        now = int(time.time())
        expires = st.one_of(
            st.integers(now - 100, now + 7200).map(str),
            st.integers(4290, 5000).map(lambda n: "9" * n),
            st.sampled_from(["", "+1", "-1", "0x10", " 1", "1e9", str(2**63), str(-(2**63) - 1)]),
            st.text(max_size=12),
        )
        signed_paths = st.one_of(st.just(None), targets().map(lambda t: t.decode("latin-1")))
        requests = st.builds(
            lambda method, target, expiry, x_path, signature, headers, body, chunked, good: (
                RawRequest(
                    method,
                    sign_target(method, target, expiry, x_path, signature, good),
                    headers,
                    body,
                    chunked,
                ),
                good,
            ),
            st.sampled_from([b"GET", b"HEAD", b"POST", b"PUT", b"DELETE"]),
            targets().filter(lambda t: b"?" not in t and b"#" not in t),
            expires,
            signed_paths,
            st.text(max_size=50),
            HEADERS,
            st.one_of(st.none(), st.binary(max_size=40)),
            st.booleans(),
            st.booleans(),
        )

        def check(example: tuple[RawRequest, bool]) -> None:
            request, good = example
            response = self.send(request)
            message = self.describe(request, response)
            if response is None or response.status != 401 or not request.well_formed():
                self.assert_answered(request, response)
                return
            self.assertFalse(good, message)
            self.assertEqual(response.headers.get("content-type"), "application/json", message)
            if request.method != b"HEAD":
                body = response.json()
                self.assertEqual(sorted(body), ["error", "message"], message)
                self.assertEqual(body["message"], MESSAGES[body["error"]], message)

        await self.check_all(requests, check)


def guard_path(target: bytes) -> str:
    """The path as the guard reads it from the request line."""
    raw_path = target.decode("utf-8", "surrogateescape").partition("?")[0]
    return unquote(raw_path, errors="surrogateescape")


def sign_target(
    method: bytes, target: bytes, expires: str, x_path: str | None, signature: str, good: bool
) -> bytes:
    """The target with ``X-Expires``, maybe ``X-Path``, and a signature: correct when ``good``."""
    query = [("X-Expires", expires)]
    if good:
        expires = str(int(time.time()) + 600)
        query = [("X-Expires", expires)]
        signed = guard_path(target)
        signature = sign(SIGNING_SECRET, method.decode(), signed, int(expires))
    elif x_path is not None:
        query.append(("X-Path", x_path))
    query.append(("X-Signature", signature))
    encoded = "&".join(f"{quote(k)}={quote(v, safe='')}" for k, v in query)
    return target + b"?" + encoded.encode()
