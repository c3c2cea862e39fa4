"""The benchmark run: every phase of issue 8 in one process tree on 127.0.0.1, then a report.

Phases, in order, each measured against a reference taken in the same run (absolute numbers drift
on a shared machine, ratios much less):

1. limit   -- the workers' pyvips operation called directly in N processes (limit.py);
2. misses  -- wrk on names nobody asked for, through our server; interleaved with 1 (and 6) per
              source and operation, so both see the same machine;
3. hits    -- wrk on stored files, ours against a bare ``twisted.web.static.File``;
4. uploads -- 1 MB and 20 MB bodies, with the main process's peak memory;
5. memory  -- peak RSS of the main process and each worker, reset before every measurement;
6. thumbor -- optional (``--thumbor``): the same sources and operations through thumbor;
7. soak    -- optional (``--soak MINUTES``): misses, hits and uploads in rounds, RSS sampled;
8. ceiling -- optional (``--phases ...,ceiling``): misses and hits through our server with free
              image work (free_server.py), so one main process is the bottleneck, and the model
              of how many cores of workers one main process can keep busy;
9. codecs  -- optional (``--phases ...,codecs``): AVIF encoder efforts against WebP at equal
              SSIM (codecs.py), for choosing the AVIF effort and quality.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from benchmarks import fixtures, load, procs, report, servers
from benchmarks.operations import BEYOND, BY_KEY, OPERATIONS, Operation, work_list
from imageserver.processing.placement import usable_cpus

BENCHMARKS = Path(__file__).resolve().parent
DATA = BENCHMARKS / ".data"
RESULTS = BENCHMARKS / "results"
NAMESPACE = "bench"
UPLOAD_NAMESPACE = "uploads"
PHASES = ("misses", "hits", "uploads", "ceiling", "codecs", "quality")
# The phases that need our (real) server; ceiling starts its own, codecs none.
SERVER_PHASES = frozenset({"misses", "hits", "uploads"})

# ceiling: the connection counts (many, so the main process always has work), the source whose
# copies are asked for (any: the free worker does not read it) and the operations named, whose
# sizes and copies give tens of thousands of distinct names.
CEILING_CONNECTIONS = (16, 64)
CEILING_SOURCE = "jpeg-1080"
CEILING_OPERATIONS = ("w300.jpg", "x200.webp", "300x200.jpg")
# The thumbnails the model prices, from these sources: the 1080p and 12 MP JPEGs.
MODEL_SOURCES = ("jpeg-1080", "jpeg-12mp")
MODEL_OPERATIONS = ("w300.jpg", "x200.webp")

# codecs: the sources (one copy each), the variant sizes (two thumbnails and a larger one) and the
# AVIF efforts tried (libvips' 0-9; aom's speed is 9 - effort).
CODEC_SOURCES = ("jpeg-1080", "jpeg-12mp")
CODEC_SIZES = ("x200", "w300", "w800")
CODEC_EFFORTS = "0,1,2,3,4,6,9"
CODEC_WEBP_EFFORTS = (2, 4)
# An effort is not tried at a size once a lower one took longer than this for one encode there.
CODEC_SLOW_SECONDS = 2.0

Result = dict[str, Any]


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="benchmarks/run", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short phases (3 s), for a try")
    parser.add_argument("--duration", type=float, help="seconds per measurement (default 10)")
    parser.add_argument("--thumbor", action="store_true", help="also measure thumbor")
    parser.add_argument("--soak", type=float, default=0, metavar="MINUTES", help="a soak run")
    parser.add_argument("--workers", type=int, default=len(usable_cpus()), help="pool size")
    parser.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="leave workers and the limit's processes unpinned (--pin-workers=false)",
    )
    parser.add_argument("--sources", help="comma-separated source keys (default: all)")
    parser.add_argument("--operations", help="comma-separated operation keys (default: all)")
    parser.add_argument(
        "--phases",
        default="misses,hits,uploads",
        help=f"which of {','.join(PHASES)} to run (default: misses,hits,uploads)",
    )
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="an extra argument for our server's command line, repeatable; write it with '=' "
        "(--server-arg=--processes=2)",
    )
    parser.add_argument(
        "--codec-efforts",
        default=CODEC_EFFORTS,
        help=f"AVIF efforts the codecs phase tries (default {CODEC_EFFORTS})",
    )
    parser.add_argument(
        "--rounds", type=int, help="alternations of limit/ours/thumbor, median kept (default 3)"
    )
    parser.add_argument("--profile", action="store_true", help="run our server under cProfile")
    parser.add_argument("--output", type=Path, default=RESULTS / "latest.json")
    arguments = parser.parse_args(argv)
    unknown = set(arguments.phases.split(",")) - set(PHASES)
    if unknown:
        parser.error(f"unknown phases: {', '.join(sorted(unknown))}")
    if arguments.duration is None:
        arguments.duration = 3.0 if arguments.quick else 10.0
    if arguments.rounds is None:
        arguments.rounds = 1 if arguments.quick else 3
    return arguments


def _image_path(namespace: str, image_hash: str, name: str) -> str:
    h = image_hash
    return f"/{namespace}/{h[0:3]}/{h[3:6]}/{h[6:9]}/{h[9:]}/{name}"


def wait_idle(pid: int, seconds: float = 120.0) -> None:
    """Wait until a process tree stops using CPU (jobs left over by the last load are done)."""
    deadline = time.monotonic() + seconds
    before = procs.tree_cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = procs.tree_cpu_seconds(pid)
        if now - before < 0.05:
            return
        before = now


class OtherLoad:
    """CPU that processes outside the measured tree used during a measurement, in cores.

    The machine is shared: a figure taken while someone else's tests ran is lower, and says so.
    `stop` takes the CPU of the measured tree and of our own reaped children (wrk, the limit).
    """

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.busy = procs.machine_busy_seconds()
        self.children = procs.own_children_cpu_seconds()

    def stop(self, measured_cpu: float) -> tuple[float, float]:
        """(other processes' cores, our load generator's cores) since the start."""
        seconds = time.monotonic() - self.started
        busy = procs.machine_busy_seconds() - self.busy
        children = procs.own_children_cpu_seconds() - self.children
        others = max(0.0, busy - measured_cpu - children)
        return round(others / seconds, 2), round(children / seconds, 2)


def measure_load(
    root_pid: int,
    base_url: str,
    paths: list[str],
    seconds: float,
    connections: int,
    max_requests: int,
    body: Path | None = None,
    headers: tuple[str, ...] = (),
    main_pids: Callable[[], list[int]] | None = None,
) -> Result:
    """One wrk run with the server tree's CPU time and per-process peak RSS around it.

    CPU per request: the tree's CPU from the start until it is idle again, over the requests
    answered plus the `connections` requests in flight when wrk stopped, which the server still
    completes (ours finishes a job whose client left; so does thumbor).  Split into the main
    processes' own time and the rest (workers, live or reaped).  The main processes are
    `main_pids()` (`OurServer.main_pids`: there may be several), else the root alone; each one's
    cores while wrk ran say whether it was the bottleneck (about 1.0).
    """
    wait_idle(root_pid)
    pids = procs.tree(root_pid)
    procs.reset_peaks(pids)
    mains = main_pids() if main_pids else [root_pid]
    cpu_before = procs.tree_cpu_seconds(root_pid)
    main_before = [procs.own_cpu_seconds(pid) for pid in mains]
    other = OtherLoad()
    result = load.run(base_url, paths, seconds, connections, max_requests, body, headers=headers)
    cpu_during = procs.tree_cpu_seconds(root_pid) - cpu_before
    main_during = [
        procs.own_cpu_seconds(pid) - before for pid, before in zip(mains, main_before, strict=True)
    ]
    other_cores, wrk_cores = other.stop(cpu_during)
    pids = procs.tree(root_pid)
    main_peak = max(procs.peak_rss_mb(pid) for pid in mains)
    children_peaks = [procs.peak_rss_mb(pid) for pid in pids if pid not in mains]
    wait_idle(root_pid)
    cpu = procs.tree_cpu_seconds(root_pid) - cpu_before
    main_cpu = sum(
        procs.own_cpu_seconds(pid) - before for pid, before in zip(mains, main_before, strict=True)
    )
    jobs = result.requests + (0 if result.exhausted else connections)
    measured: Result = result.as_dict()
    measured["cpu_ms_per_request"] = round(1000 * cpu / jobs, 3) if result.requests else None
    measured["main_cpu_ms_per_request"] = (
        round(1000 * main_cpu / jobs, 3) if result.requests else None
    )
    measured["cpu_cores"] = round(cpu_during / result.seconds, 2) if result.seconds else None
    measured["main_cores"] = [
        round(during / result.seconds, 2) if result.seconds else None for during in main_during
    ]
    measured["wrk_cores"] = wrk_cores
    measured["other_cores"] = other_cores
    measured["main_peak_mb"] = round(main_peak, 1)
    measured["children_peak_mb"] = [round(peak, 1) for peak in children_peaks]
    return measured


def run_limit(jobs: list[list[str]], processes: int, seconds: float, pin: bool) -> Result:
    """The pyvips limit for one list of jobs, in a subprocess with the workers' environment
    and their placement on the CPUs."""
    spec = {
        "processes": processes,
        "pin": pin,
        "seconds": seconds,
        "jobs": jobs,
        "default_quality": 75,
        "maximum_width": 5000,
        "max_pixels": 100_000_000,
        "scratch": str(DATA),
    }
    with tempfile.TemporaryDirectory(prefix="limit-", dir=DATA) as directory:
        spec_path, result_path = Path(directory, "spec.json"), Path(directory, "result.json")
        spec_path.write_text(json.dumps(spec))
        other = OtherLoad()
        limit = _in_worker_environment("benchmarks.limit", spec_path, result_path, seconds + 300)
        # The subprocess's start-up and warm-up count as ours here, so this is a lower bound.
        limit["other_cores"] = other.stop(0.0)[0]
        return limit


def _in_worker_environment(module: str, spec: Path, result: Path, timeout: float) -> Result:
    """Run ``python -m module SPEC RESULT`` with the workers' environment; its JSON result.

    A subprocess, so that libvips is first loaded with ``VIPS_CONCURRENCY=1`` as in a worker.
    """
    from imageserver.processing.pool import worker_environment

    environment = worker_environment()
    environment["PYTHONPATH"] = f"{BENCHMARKS.parent}:{environment['PYTHONPATH']}"
    subprocess.run(
        [sys.executable, "-m", module, str(spec), str(result)],
        env=environment,
        check=True,
        timeout=timeout,
        cwd=BENCHMARKS.parent,
    )
    answer: Result = json.loads(result.read_text())
    return answer


def limit_jobs(manifest: dict[str, Any], key: str, operation: Operation) -> list[list[str]]:
    """The limit's [source file, name] jobs for a source and an operation, in the misses' order."""
    files = [copy["file"] for copy in manifest["sources"][key]["copies"]]
    return [
        [str(DATA / "sources" / files[copy]), operation.limit_name(sizes)]
        for copy, sizes in work_list(key, operation, len(files))
    ]


def adapted_duration(seconds: float, limit_rate: float) -> float:
    """Long enough for about 16 images at the limit's rate, at most 4 x `seconds`.

    A 12 MP full-size AVIF takes seconds: 10 s would count two or three of them.
    """
    if limit_rate <= 0:
        return 4 * seconds
    return round(min(4 * seconds, max(seconds, 16 / limit_rate)), 1)


def upload_sources(server: servers.OurServer, manifest: dict[str, Any]) -> dict[str, list[str]]:
    """Upload every copy of every source; the hashes, by source key and copy."""
    hashes: dict[str, list[str]] = {}
    for key, source in manifest["sources"].items():
        hashes[key] = []
        for copy in source["copies"]:
            body = (DATA / "sources" / copy["file"]).read_bytes()
            answer = servers.post(f"{server.url}/{NAMESPACE}", body)
            hashes[key].append(str(answer["hash"]))
    return hashes


def phase_misses(
    arguments: argparse.Namespace,
    server: servers.OurServer,
    thumbor: servers.Thumbor | None,
    manifest: dict[str, Any],
    hashes: dict[str, list[str]],
    sources: list[str],
    operations: list[Operation],
) -> list[Result]:
    """Limit, ours and thumbor for each source and operation, one after the other."""
    rows: list[Result] = []
    connections = 2 * arguments.workers  # a job always waiting for each worker
    trees = [server.pid] + ([thumbor.pid] if thumbor else [])

    def settle() -> None:
        """Both servers finish the jobs a load left behind (thumbor carries on after wrk stops)."""
        for pid in trees:
            wait_idle(pid)

    for key in sources:
        files = [copy["file"] for copy in manifest["sources"][key]["copies"]]
        for operation in operations:
            work = work_list(key, operation, len(files))
            names = [(copy, operation.ours(sizes)) for copy, sizes in work]
            jobs = limit_jobs(manifest, key, operation)
            paths = [_image_path(NAMESPACE, hashes[key][copy], name) for copy, name in names]
            headers = (f"Accept: {operation.accept}",) if operation.accept else ()
            thumbor_paths = [
                f"/unsafe/{operation.thumbor(sizes)}/{files[copy]}" for copy, sizes in work
            ]
            row: Result = {"source": key, "operation": operation.key, "rounds": []}
            print(f"  {key} {operation.key}:", end="", flush=True)
            seconds = arguments.duration
            offset = 0  # names already asked of our server are hits now: never ask them again
            for round_ in range(arguments.rounds):
                measured: Result = {}
                # Every other round ours goes first, so neither side always runs later.
                for side in ("ours", "limit") if round_ % 2 else ("limit", "ours"):
                    settle()
                    if side == "ours":
                        measured["ours"] = measure_load(
                            server.pid,
                            server.url,
                            paths[offset:],
                            seconds,
                            connections,
                            len(paths),
                            headers=headers,
                            main_pids=server.main_pids,
                        )
                        offset += measured["ours"]["requests"] + connections
                        continue
                    measured["limit"] = run_limit(jobs, arguments.workers, seconds, arguments.pin)
                    if round_ == 0:
                        longer = adapted_duration(seconds, measured["limit"]["images_per_s"])
                        if longer > seconds:
                            seconds = longer
                            measured["limit"] = run_limit(
                                jobs, arguments.workers, seconds, arguments.pin
                            )
                line = f" limit {measured['limit']['images_per_s']}/s"
                line += f", ours {measured['ours']['rps']}/s"
                if thumbor is not None:
                    settle()
                    measured["thumbor"] = measure_load(
                        thumbor.pid,
                        thumbor.url,
                        thumbor_paths,
                        seconds,
                        connections,
                        len(thumbor_paths),
                    )
                    line += f", thumbor {measured['thumbor']['rps']}/s"
                print(line + ";", end="", flush=True)
                row["rounds"].append(measured)
            report.pick_rounds(row)
            row["seconds"] = seconds
            print(flush=True)
            rows.append(row)
    return rows


def phase_hits(
    arguments: argparse.Namespace,
    server: servers.OurServer,
    static: servers.StaticServer,
    hashes: dict[str, list[str]],
) -> list[Result]:
    """Stored files through our server and through bare static.File: a small variant, a big file."""
    files = [("w300.jpg of jpeg-1080", "jpeg-1080", "w300.jpg")]
    if "jpeg-12mp" in hashes:
        files.append(("original of jpeg-12mp", "jpeg-12mp", "original"))
    rows: list[Result] = []
    for label, key, name in files:
        path = _image_path(NAMESPACE, hashes[key][0], name)
        status, headers, body = servers.get(server.url + path, timeout=60)
        if status != 200:
            raise RuntimeError(f"GET {path} answered {status}")
        row: Result = {
            "file": label,
            "bytes": len(body),
            "etag": headers.get("ETag"),
            "cache_control": headers.get("Cache-Control"),
        }
        print(f"  {label}: ", end="", flush=True)
        for round_ in range(arguments.rounds):  # alternated, the best of each kept
            for side, pid, url, mains in (
                ("ours", server.pid, server.url, server.main_pids),
                ("static", static.pid, static.url, None),
            ):
                measured = measure_load(
                    pid, url, [path], arguments.duration, 8, 10_000_000, main_pids=mains
                )
                if side not in row or measured["rps"] > row[side]["rps"]:
                    row[side] = measured
                print(f"{side} {measured['rps']}/s ", end="", flush=True)
            del round_
        print(flush=True)
        rows.append(row)
    return rows


def phase_uploads(
    arguments: argparse.Namespace, server: servers.OurServer, manifest: dict[str, Any]
) -> list[Result]:
    """The same body posted again and again: spooling, hashing, identify, the atomic rename."""
    rows: list[Result] = []
    for key, upload in manifest["uploads"].items():
        body = DATA / "sources" / upload["file"]
        measured = measure_load(
            server.pid,
            server.url,
            [f"/{UPLOAD_NAMESPACE}"],
            arguments.duration,
            arguments.workers,
            1_000_000,
            body=body,
            main_pids=server.main_pids,
        )
        measured["body_bytes"] = upload["bytes"]
        measured["megabytes_per_s"] = round(measured["rps"] * upload["bytes"] / 1e6, 1)
        print(f"  {key}: {measured['rps']}/s, main peak {measured['main_peak_mb']} MB", flush=True)
        rows.append({"upload": key, "ours": measured})
    return rows


def ceiling_paths(hashes: list[str]) -> list[str]:
    """Every distinct miss path of the ceiling's operations over the copies, shuffled."""
    paths = [
        _image_path(NAMESPACE, image_hash, BY_KEY[key].ours(sizes))
        for key in CEILING_OPERATIONS
        for image_hash in hashes
        for sizes in BY_KEY[key].sizes()
    ]
    random.Random("ceiling").shuffle(paths)
    return paths


def phase_ceiling(
    arguments: argparse.Namespace, manifest: dict[str, Any], misses: list[Result]
) -> Result:
    """What one main process can answer when the image work is free, and what that is worth.

    Our server with `free_worker.FreeWorker` (free_server.py): each worker renders its first
    variant of a format for real, then writes copies of it, so a miss costs the main process
    everything it costs in production (HTTP, the store's checks, the AMP round trip, the rename,
    serving the file) and the workers next to nothing.  Misses on distinct names and hits on one
    stored variant, with many connections so that the main process never waits for work: its
    rate is then the ceiling when it used a whole core.  The limit's CPU per image for the
    model's thumbnails comes from this run's misses phase, or is measured here.
    """
    store = DATA / "free-store"
    shutil.rmtree(store, ignore_errors=True)
    free = servers.FreeServer(
        store,
        arguments.workers,
        DATA / "logs" / "free-server.log",
        pin=arguments.pin,
        extra_arguments=arguments.server_arg,
    )
    result: Result = {"source": CEILING_SOURCE, "operations": list(CEILING_OPERATIONS)}
    try:
        hashes = []
        for copy in manifest["sources"][CEILING_SOURCE]["copies"]:
            body = (DATA / "sources" / copy["file"]).read_bytes()
            hashes.append(str(servers.post(f"{free.url}/{NAMESPACE}", body)["hash"]))
        # Each worker renders its first variant of each format for real: before measuring, on
        # 4 names of each format per worker.
        everything = ceiling_paths(hashes)
        warm = [
            path
            for extension in (".jpg", ".webp")
            for path in [p for p in everything if p.endswith(extension)][: 4 * arguments.workers]
        ]
        load.run(free.url, warm, 30, 2 * arguments.workers, len(warm))
        warmed = set(warm)
        paths = [path for path in everything if path not in warmed]
        offset = 0
        result["misses"] = []
        for connections in CEILING_CONNECTIONS:
            measured = measure_load(
                free.pid,
                free.url,
                paths[offset:],
                arguments.duration,
                connections,
                len(paths) - offset,
                main_pids=free.main_pids,
            )
            measured["connections"] = connections
            offset += measured["requests"] + connections
            result["misses"].append(measured)
            print(f"  misses, {connections} connections: {_ceiling_line(measured)}", flush=True)
        hit = warm[0]  # made during the warm-up: a real thumbnail, or a copy of one
        result["hit_bytes"] = len(servers.get(free.url + hit)[2])
        result["hits"] = []
        for connections in CEILING_CONNECTIONS:
            measured = measure_load(
                free.pid,
                free.url,
                [hit],
                arguments.duration,
                connections,
                10_000_000,
                main_pids=free.main_pids,
            )
            measured["connections"] = connections
            result["hits"].append(measured)
            print(f"  hits, {connections} connections: {_ceiling_line(measured)}", flush=True)
    finally:
        free.stop()
    result["limits"] = _model_limits(arguments, manifest, misses)
    return result


def _ceiling_line(measured: Result) -> str:
    return (
        f"{measured['rps']}/s, main {measured['main_cpu_ms_per_request']} ms CPU each, "
        f"main cores {measured['main_cores']}"
    )


def _model_limits(
    arguments: argparse.Namespace, manifest: dict[str, Any], misses: list[Result]
) -> list[Result]:
    """The limit's CPU per image of each of the model's thumbnails, and our main process's CPU
    per miss on it: from this run's misses phase when it measured them, else the limit now."""
    limits: list[Result] = []
    for key in MODEL_SOURCES:
        if key not in manifest["sources"]:
            continue
        for operation_key in MODEL_OPERATIONS:
            row = next(
                (r for r in misses if r["source"] == key and r["operation"] == operation_key),
                None,
            )
            entry: Result = {"source": key, "operation": operation_key}
            if row is not None:
                entry["limit_cpu_ms_per_image"] = row["limit"]["cpu_ms_per_image"]
                entry["limit_from"] = "misses"
                entry["real_main_cpu_ms_per_miss"] = row["ours"]["main_cpu_ms_per_request"]
            else:
                jobs = limit_jobs(manifest, key, BY_KEY[operation_key])
                limit = run_limit(jobs, arguments.workers, arguments.duration, arguments.pin)
                entry["limit_cpu_ms_per_image"] = limit["cpu_ms_per_image"]
                entry["limit_from"] = "ceiling"
                entry["real_main_cpu_ms_per_miss"] = None
            print(
                f"  limit {key} {operation_key}: {entry['limit_cpu_ms_per_image']} ms CPU per "
                f"image (from {entry['limit_from']})",
                flush=True,
            )
            limits.append(entry)
    return limits


def phase_codecs(arguments: argparse.Namespace, manifest: dict[str, Any]) -> Result:
    """AVIF efforts against WebP at equal SSIM on one copy of each JPEG source (codecs.py)."""
    efforts = sorted({int(effort) for effort in arguments.codec_efforts.split(",")})
    spec: Result = {
        "sources": [
            {
                "key": key,
                "path": str(DATA / "sources" / manifest["sources"][key]["copies"][0]["file"]),
            }
            for key in CODEC_SOURCES
            if key in manifest["sources"]
        ],
        "sizes": list(CODEC_SIZES),
        "efforts": efforts,
        "webp_efforts": list(CODEC_WEBP_EFFORTS),
        # CPU spent timing each setting: a tenth of a measurement's duration, at most 7 encodes.
        "budget_ms": 100 * arguments.duration,
        "repetitions": 7,
        "slow_seconds": CODEC_SLOW_SECONDS,
        "scratch": str(DATA),
    }
    with tempfile.TemporaryDirectory(prefix="codecs-", dir=DATA) as directory:
        spec_path, result_path = Path(directory, "spec.json"), Path(directory, "result.json")
        spec_path.write_text(json.dumps(spec))
        result = _in_worker_environment("benchmarks.codecs", spec_path, result_path, 3600)
    result["settings"] = {key: value for key, value in spec.items() if key != "scratch"}
    return result


def phase_quality(manifest: dict[str, Any]) -> Result:
    """The HEIC shortcuts (embedded thumbnail, grid tiles) against whole decodes, for the HEIC
    operations' sizes: source used, PSNR, CPU per render both ways (quality.py)."""
    copies = manifest["sources"]["heic-12mp"]["copies"]
    spec = {"sources": [str(DATA / "sources" / copies[0]["file"])], "repeat": 3}
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as scratch:
        spec_path, result_path = Path(scratch) / "spec.json", Path(scratch) / "result.json"
        spec_path.write_text(json.dumps(spec))
        result = _in_worker_environment("benchmarks.quality", spec_path, result_path, 3600)
    result["decoders"] = heic_decoders(spec["sources"][0])
    return result


# The HEVC decoder builds within reach of a pip install: the default's and the ``heic`` extra's.
HEIC_DECODERS = (("pi-heif", "pi_heif", False), ("pillow-heif (heic extra)", "pillow_heif", True))


def heic_decoders(path: str, repeat: int = 5) -> list[Result]:
    """CPU ms of a whole decode of `path` by each build (heic_decode.py): the best of three
    medians of `repeat` decodes, the builds alternated (the machine's speed drifts)."""
    pythons = {False: sys.executable, True: str(fixtures.ensure_tools_venv())}
    samples: dict[str, list[float]] = {name: [] for name, _, _ in HEIC_DECODERS}
    for _ in range(3):
        for name, module, tools in HEIC_DECODERS:
            command = [
                pythons[tools],
                str(BENCHMARKS / "heic_decode.py"),
                module,
                path,
                str(repeat),
            ]
            done = subprocess.run(command, check=True, capture_output=True, text=True, timeout=600)
            samples[name].append(float(done.stdout))
    return [{"decoder": name, "cpu_ms": min(times)} for name, times in samples.items()]


def soak_work(manifest: dict[str, Any], hashes: dict[str, list[str]]) -> list[str]:
    """A large shuffled list of distinct miss paths over the fast sources (no HEIC)."""
    paths: list[str] = []
    for key in ("jpeg-1080", "webp-1080", "png-alpha", "jpeg-12mp"):
        if key not in hashes:
            continue
        for image_hash in hashes[key]:
            for width in range(401, 1000):
                for name in (f"w{width}.jpg", f"w{width}.webp", f"x{width}.webp"):
                    paths.append(_image_path(NAMESPACE, image_hash, name))
    random.Random("soak").shuffle(paths)
    return paths


def phase_soak(
    arguments: argparse.Namespace,
    server: servers.OurServer,
    manifest: dict[str, Any],
    hashes: dict[str, list[str]],
) -> Result:
    """Rounds of misses, hits and 1 MB uploads for `--soak` minutes, RSS sampled after each."""
    paths = soak_work(manifest, hashes)
    hit = _image_path(NAMESPACE, next(iter(hashes.values()))[0], "w300.jpg")
    body = DATA / "sources" / manifest["uploads"]["1mb"]["file"]
    deadline = time.monotonic() + 60 * arguments.soak
    started = time.monotonic()
    samples: list[Result] = []
    offset = 0
    while time.monotonic() < deadline and offset < len(paths):
        chunk = paths[offset:]
        misses = load.run(server.url, chunk, 20, 2 * arguments.workers, len(chunk))
        offset += misses.requests + 2 * arguments.workers
        load.run(server.url, [hit], 5, 8, 10_000_000)
        load.run(server.url, [f"/{UPLOAD_NAMESPACE}"], 5, 2, 1_000_000, body=body)
        workers = [procs.rss_mb(pid) for pid in server.worker_pids()]
        samples.append(
            {
                "minute": round((time.monotonic() - started) / 60, 2),
                "main_rss_mb": round(procs.rss_mb(server.pid), 1),
                "main_peak_mb": round(procs.peak_rss_mb(server.pid), 1),
                "worker_rss_mb": [round(value, 1) for value in workers],
                "miss_rps": misses.rps,
                "miss_errors": misses.errors,
            }
        )
        print(
            f"  {samples[-1]['minute']} min: main {samples[-1]['main_rss_mb']} MB, "
            f"workers {samples[-1]['worker_rss_mb']} MB, misses {misses.rps}/s",
            flush=True,
        )
    first = next((s for s in samples if s["minute"] >= 1), samples[0] if samples else None)
    last = samples[-1] if samples else None
    growth = None
    if first and last and first["main_rss_mb"]:
        growth = round(last["main_rss_mb"] / first["main_rss_mb"] - 1, 3)
    return {"minutes": arguments.soak, "samples": samples, "main_rss_growth": growth}


def machine() -> Result:
    """What the numbers were measured on, and what else was running."""
    load_average = os.getloadavg()
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(
        ["git", "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        cwd=BENCHMARKS.parent,
        check=False,
    ).stdout.strip()
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average_at_start": [round(value, 2) for value in load_average],
        "hevc_decoder": _hevc_decoder(),
        "commit": commit,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }


def _hevc_decoder() -> str:
    """What the server decodes HEIC with, by the workers' own choice, and its version."""
    from imageserver.processing.operations import hevc_decoder

    module = hevc_decoder()
    return f"{module.__name__.replace('_', '-')} {module.__version__}"


@contextlib.contextmanager
def _terminate_cleanly() -> Iterator[None]:
    """Turn SIGTERM into SystemExit, so the servers are stopped by the `with` blocks."""

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous: Callable[..., Any] | int | None = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(arguments: argparse.Namespace) -> Result:
    """All phases; the servers are stopped whatever happens."""
    sources = arguments.sources.split(",") if arguments.sources else None
    operations = (
        [BY_KEY[key] for key in arguments.operations.split(",")]
        if arguments.operations
        else list(OPERATIONS + BEYOND)
    )
    phases = set(arguments.phases.split(","))
    print("Preparing the source images", flush=True)
    manifest = fixtures.ensure(DATA / "sources")
    source_keys = sources or list(manifest["sources"])
    results: Result = {
        "machine": machine(),
        "settings": {
            "seconds_per_measurement": arguments.duration,
            "workers": arguments.workers,
            "pinned": arguments.pin,
            "miss_connections": 2 * arguments.workers,
            "hit_connections": 8,
            "upload_connections": arguments.workers,
            "ceiling_connections": list(CEILING_CONNECTIONS),
            "server_arguments": arguments.server_arg,
            "rounds": arguments.rounds,
            "quick": arguments.quick,
        },
        "sources": manifest,
    }
    with _terminate_cleanly(), contextlib.ExitStack() as stack:
        if phases & SERVER_PHASES or arguments.soak:
            server_phases(arguments, phases, manifest, source_keys, operations, results, stack)
        if "ceiling" in phases:
            print(f"Ceiling: image-server with free workers ({arguments.workers})", flush=True)
            results["ceiling"] = phase_ceiling(arguments, manifest, results.get("misses", []))
        if "codecs" in phases:
            print("Codecs: AVIF efforts against WebP at equal SSIM", flush=True)
            results["codecs"] = phase_codecs(arguments, manifest)
        if "quality" in phases:
            print("Quality: HEIC variants from the shortcuts against whole decodes", flush=True)
            results["quality"] = phase_quality(manifest)
    results["targets"] = report.targets(results)
    return results


def server_phases(
    arguments: argparse.Namespace,
    phases: set[str],
    manifest: dict[str, Any],
    source_keys: list[str],
    operations: list[Operation],
    results: Result,
    stack: contextlib.ExitStack,
) -> None:
    """The phases through our real server (and thumbor's), which `stack` stops."""
    store = DATA / "store"
    shutil.rmtree(store, ignore_errors=True)
    logs = DATA / "logs"
    profile = RESULTS / "server.prof" if arguments.profile else None
    print(f"Starting image-server with {arguments.workers} workers", flush=True)
    ours = servers.OurServer(
        store,
        arguments.workers,
        logs / "image-server.log",
        profile,
        pin=arguments.pin,
        extra_arguments=arguments.server_arg,
    )
    stack.callback(ours.stop)
    thumbor: servers.Thumbor | None = None
    if arguments.thumbor:
        installed, message = servers.ensure_thumbor()
        results["thumbor"] = {"installed": installed, "version": message}
        if installed:
            print(f"Starting {message} with {arguments.workers} processes", flush=True)
            thumbor = servers.Thumbor(
                DATA / "sources", arguments.workers, DATA / "thumbor.conf", logs / "thumbor.log"
            )
            stack.callback(thumbor.stop)
        else:
            print(message, flush=True)
    print("Uploading the sources", flush=True)
    hashes = upload_sources(ours, manifest)
    if "misses" in phases:
        print("Limit, misses" + (" and thumbor" if thumbor else ""), flush=True)
        results["misses"] = phase_misses(
            arguments, ours, thumbor, manifest, hashes, source_keys, operations
        )
    if "hits" in phases:
        static = servers.StaticServer(store, logs / "static.log")
        stack.callback(static.stop)
        print("Hits", flush=True)
        results["hits"] = phase_hits(arguments, ours, static, hashes)
    if "uploads" in phases:
        print("Uploads", flush=True)
        results["uploads"] = phase_uploads(arguments, ours, manifest)
    if arguments.soak:
        print(f"Soak, {arguments.soak} minutes", flush=True)
        results["soak"] = phase_soak(arguments, ours, manifest, hashes)


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    DATA.mkdir(exist_ok=True)
    RESULTS.mkdir(exist_ok=True)
    results = run(arguments)
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(json.dumps(results, indent=2) + "\n")
    print()
    print(report.render(results))
    print(f"\nJSON: {arguments.output}")
    if arguments.profile:
        print(report.profile_summary(RESULTS / "server.prof", RESULTS / "server-profile.txt"))
    return 0
