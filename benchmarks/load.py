"""wrk as a load generator: one run against 127.0.0.1, bounded in time and in requests.

wrk rather than a Python client because a Python client on this 2-core machine would cost as much
CPU as the server it measures; wrk runs one thread (``-t1``), so it takes at most one core from
the server and the worker pool.  The Lua script (wrk.lua) takes its paths from a file, stops
after a given number of requests, and prints its summary as JSON.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "wrk.lua"


@dataclass
class LoadResult:
    """What one wrk run measured."""

    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    errors: int  # connection errors, non-2xx/3xx statuses and timeouts
    exhausted: bool  # the request bound was reached before the time ran out
    megabytes: float

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def run(
    base_url: str,
    paths: list[str],
    seconds: float,
    connections: int,
    max_requests: int,
    body: Path | None = None,
    timeout: float = 30.0,
    headers: tuple[str, ...] = (),
) -> LoadResult:
    """Run wrk for `seconds` over `paths` (in order, each once unless `max_requests` is larger).

    With `body`, every request is a POST of that file to ``paths[0]``.
    """
    if not base_url.startswith("http://127.0.0.1:"):
        raise ValueError("the benchmark only talks to 127.0.0.1")
    with tempfile.NamedTemporaryFile("w", suffix=".paths", delete=False) as listing:
        listing.write("\n".join(paths) + "\n")
    command = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        f"--timeout={int(timeout)}s",
        *(option for header in headers for option in ("-H", header)),
        "-s",
        str(SCRIPT),
        base_url,
        "--",
        listing.name,
        str(max_requests),
        str(body) if body else "",
    ]
    try:
        completed = subprocess.run(
            command, capture_output=True, text=True, timeout=seconds + timeout + 30
        )
    finally:
        Path(listing.name).unlink(missing_ok=True)
    lines = [line for line in completed.stdout.splitlines() if line.startswith("BENCH ")]
    if completed.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({completed.returncode}): {completed.stderr.strip()}")
    data = json.loads(lines[-1][len("BENCH ") :])
    duration = data["duration_us"] / 1e6
    errors = sum(
        data[key]
        for key in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts")
    )
    return LoadResult(
        requests=data["requests"],
        seconds=round(duration, 3),
        rps=round(data["requests"] / duration, 2) if duration else 0.0,
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        mean_ms=round(data["mean_us"] / 1000, 3),
        errors=errors,
        exhausted=bool(data["exhausted"]),
        megabytes=round(data["bytes"] / 1e6, 2),
    )
