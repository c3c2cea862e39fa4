"""A bounded mixed load against a server process, and what it must leave behind.

Clients loop over four kinds of request: uploads of images of their own, hits on files that
exist, misses on variant names nobody asked for yet, and requests that must be refused.  There are
many more clients than workers, so the queue fills and misses and uploads get 503s: that is the
intended answer to overload.  Everything else is judged:

- an upload answers 200 (its image is then checked byte for byte) or 503;
- a miss answers 200 or 503; a hit always 200, however full the queue;
- a bad request answers 4xx (or 503 when it needed a worker to be judged), never 2xx or 500.

`tests.test_load` runs it for a few seconds in the suite; ``IMAGE_SERVER_LOAD_SECONDS=60
.venv/bin/trial tests.test_load`` runs the minute-long version and prints the same report.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import itertools
import random
import time

from twisted.internet.defer import DeferredList, ensureDeferred

from tests.support import Response, distinct_jpeg, fixture, request, sleep

# What each kind of request may answer; anything else is a failure of the server.
ALLOWED = {
    "upload": {200, 503},
    "miss": {200, 503},
    "hit": {200},
    "bad": {400, 401, 403, 404, 405, 413, 415, 422, 503},
}
WEIGHTS = {"upload": 3, "miss": 3, "hit": 4, "bad": 2}


@dataclasses.dataclass
class Report:
    seconds: float = 0.0
    statuses: dict[str, collections.Counter[int]] = dataclasses.field(
        default_factory=lambda: collections.defaultdict(collections.Counter)
    )
    unexpected: list[str] = dataclasses.field(default_factory=list)
    uploaded: dict[str, bytes] = dataclasses.field(default_factory=dict)
    made: list[str] = dataclasses.field(default_factory=list)
    rss_start_kb: int = 0
    rss_peak_kb: int = 0

    @property
    def total(self) -> int:
        return sum(sum(counts.values()) for counts in self.statuses.values())

    def table(self) -> str:
        codes = sorted({code for counts in self.statuses.values() for code in counts})
        lines = ["kind    " + "".join(f"{code:>7}" for code in codes)]
        for kind in ALLOWED:
            counts = self.statuses.get(kind, collections.Counter())
            lines.append(f"{kind:<8}" + "".join(f"{counts[code]:>7}" for code in codes))
        lines.append(
            f"{self.total} requests in {self.seconds:.1f} s ({self.total / self.seconds:.0f}/s); "
            f"main process RSS {self.rss_start_kb // 1024} MB at the start, "
            f"{self.rss_peak_kb // 1024} MB at the peak"
        )
        return "\n".join(lines)


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Load:
    """One run: ``clients`` loops for at most ``seconds`` and ``max_requests`` requests in all."""

    def __init__(self, url: str, server_pid: int, seconds: float, clients: int) -> None:
        self.url = url
        self.pid = server_pid
        self.seconds = seconds
        self.clients = clients
        self.max_requests = int(seconds * 400)  # a bound far above what 2 cores answer
        self.report = Report()
        self.random = random.Random(7)
        self.names = itertools.count()
        self.uploads = itertools.count(1000)
        self.hits: list[str] = []
        self.source = ""

    async def run(self) -> Report:
        await self._prepare()
        self.report.rss_start_kb = self.report.rss_peak_kb = rss_kb(self.pid)
        started = time.monotonic()
        deadline = started + self.seconds
        loops = [ensureDeferred(self._client(deadline)) for _ in range(self.clients)]
        loops.append(ensureDeferred(self._watch_memory(deadline)))
        await DeferredList(loops, fireOnOneErrback=True, consumeErrors=True)
        self.report.seconds = time.monotonic() - started
        return self.report

    async def _prepare(self) -> None:
        """The source of every miss, and the files every hit asks for."""
        response = await request("POST", f"{self.url}/load?outputs=w100.jpg", data=WINE)
        assert response.code == 200, response.body
        image_hash = response.json()["hash"]
        self.source = f"{self.url}/load/{_directory(image_hash)}"
        self.hits = [f"{self.source}/original", f"{self.source}/w100.jpg"]

    async def _watch_memory(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            self.report.rss_peak_kb = max(self.report.rss_peak_kb, rss_kb(self.pid))
            await sleep(0.2)

    async def _client(self, deadline: float) -> None:
        kinds = list(WEIGHTS)
        weights = list(WEIGHTS.values())
        while time.monotonic() < deadline and self.report.total < self.max_requests:
            kind = self.random.choices(kinds, weights)[0]
            method, url, body, note = self._request(kind)
            try:
                response = await request(method, url, data=body)
            except Exception as error:  # a dropped connection is a failure too
                self.report.unexpected.append(f"{kind} {method} {url}: {error!r}")
                continue
            self._judge(kind, method, url, response, note)

    def _request(self, kind: str) -> tuple[str, str, bytes | None, bytes]:
        if kind == "upload":
            body = distinct_jpeg(next(self.uploads))
            return "POST", f"{self.url}/load", body, body
        if kind == "hit":
            return "GET", self.random.choice(self.hits), None, b""
        if kind == "miss":
            index = next(self.names)
            extension = ("jpg", "webp", "png")[index % 3]
            width = 20 + (index // 3) % 700
            quality = 50 + (index // 2100) % 50
            return "GET", f"{self.source}/w{width}-q{quality}.{extension}", None, b""
        return self.random.choice(self._bad_requests())

    def _bad_requests(self) -> list[tuple[str, str, bytes | None, bytes]]:
        return [
            ("POST", f"{self.url}/Load", WINE, b""),
            ("POST", f"{self.url}/load", b"definitely not an image", b""),
            ("POST", f"{self.url}/load", WINE[: len(WINE) // 2], b""),
            ("POST", f"{self.url}/load", b"", b""),
            ("GET", f"{self.source}/w0.jpg", None, b""),
            ("GET", f"{self.source}/w100-q0.jpg", None, b""),
            ("GET", f"{self.source}/w100.svg", None, b""),
            ("GET", f"{self.url}/load/000/000/000/00000000000000000000000/original", None, b""),
            ("GET", f"{self.url}/load/../../etc/passwd", None, b""),
        ]

    def _judge(self, kind: str, method: str, url: str, response: Response, note: bytes) -> None:
        self.report.statuses[kind][response.code] += 1
        if response.code not in ALLOWED[kind]:
            self.report.unexpected.append(
                f"{kind} {method} {url}: {response.code} {response.body[:200]!r}"
            )
        elif response.code == 200 and kind == "upload":
            self.report.uploaded[response.json()["hash"]] = note
        elif response.code == 200 and kind == "miss":
            self.report.made.append(url)
        elif response.code == 503 and response.headers.getRawHeaders("Retry-After") is None:
            self.report.unexpected.append(f"{kind} {method} {url}: 503 without Retry-After")


async def check_afterwards(url: str, report: Report) -> list[str]:
    """Every answered upload is there byte for byte; every variant made is served again."""
    problems = []
    for image_hash, body in report.uploaded.items():
        if hashlib.md5(body).hexdigest() != image_hash:
            problems.append(f"upload answered with hash {image_hash} for other bytes")
        original = await request("GET", f"{url}/load/{_directory(image_hash)}/original")
        if original.body != body:
            problems.append(f"{image_hash}: original differs from the upload ({original.code})")
    for variant in report.made[:200]:
        response = await request("GET", variant)
        if response.code != 200 or not _decodes(response.body):
            problems.append(f"{variant}: {response.code} after it was made")
    return problems


def _directory(image_hash: str) -> str:
    return f"{image_hash[:3]}/{image_hash[3:6]}/{image_hash[6:9]}/{image_hash[9:]}"


def _decodes(body: bytes) -> bool:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(body)) as image:
            image.load()
    except Exception:
        return False
    return True


WINE = fixture("wine.jpg")
