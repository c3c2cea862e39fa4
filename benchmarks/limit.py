"""The physical limit: the workers' own operation, called directly in as many processes, no server.

Each process calls `imageserver.processing.operations.render` -- the function the worker's
``Render`` responder calls -- with the arguments the server would pass for the same variant name
(`imageserver.names.parse_name` with the server's default quality and maximum width).  The
processes run with the worker's environment (`worker_environment`: ``VIPS_CONCURRENCY=1``,
untrusted loaders blocked), so the only difference from a miss through the server is the server:
HTTP, the AMP round trip, the file moves.

Run as a subprocess (``python -m benchmarks.limit SPEC RESULT``) so libvips is first loaded with
that environment; the processes are forked before pyvips is imported.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

from imageserver.processing.placement import Placement, usable_cpus


def _work(
    index: int,
    cpu: int | None,
    spec: dict[str, Any],
    barrier: Barrier,
    results: Any,
    scratch: str,
) -> None:
    """One process: warm up on its first job, wait for the others, render until time is up.

    It runs on `cpu` when the workers would be pinned (`Placement`), before libvips starts a
    thread, so the limit runs its processes the way the pool runs its workers.
    """
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    from imageserver.names import parse_name
    from imageserver.processing import operations

    jobs: list[list[str]] = spec["jobs"][index :: spec["processes"]]
    quality, maximum = spec["default_quality"], spec["maximum_width"]

    def render(source: str, name: str) -> None:
        variant = parse_name(name, quality, maximum)
        destination = os.path.join(scratch, f"{index}-{name}")
        operations.render(source, destination, variant, spec["max_pixels"], maximum)
        os.remove(destination)

    render(*jobs[0])  # codecs loaded, caches warm: as in a worker that has run a job
    barrier.wait()
    started, cpu_started = time.perf_counter(), time.process_time()
    deadline = started + spec["seconds"]
    done = 0
    todo = jobs[1:]  # the bound on the count: each (copy, name) is made once
    for source, name in todo:
        render(source, name)
        done += 1
        if time.perf_counter() >= deadline:
            break
    elapsed = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu_started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    exhausted = done == len(todo) and time.perf_counter() < deadline
    results.put(
        {
            "done": done,
            "seconds": elapsed,
            "cpu": cpu_seconds,
            "peak_mb": peak_mb,
            "exhausted": exhausted,
        }
    )


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Run `spec` (processes, pin, seconds, jobs [[source, name]...]); sum the processes' work."""
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(spec["processes"])
    results = context.Queue()
    placement = Placement(usable_cpus() if spec["pin"] else (), spec["processes"])
    with tempfile.TemporaryDirectory(prefix="limit-", dir=spec.get("scratch")) as scratch:
        processes = [
            context.Process(
                target=_work,
                args=(index, placement.choose(index), spec, barrier, results, scratch),
            )
            for index in range(spec["processes"])
        ]
        for process in processes:
            process.start()
        timeout = spec["seconds"] + 120
        outcomes = [results.get(timeout=timeout) for _ in processes]
        for process in processes:
            process.join(timeout=30)
    done = sum(outcome["done"] for outcome in outcomes)
    seconds = max(outcome["seconds"] for outcome in outcomes)
    cpu = sum(outcome["cpu"] for outcome in outcomes)
    return {
        "images": done,
        "seconds": round(seconds, 3),
        "images_per_s": round(done / seconds, 2) if seconds else 0.0,
        "cpu_ms_per_image": round(1000 * cpu / done, 2) if done else None,
        "process_peak_mb": [round(outcome["peak_mb"], 1) for outcome in outcomes],
        "exhausted": any(outcome["exhausted"] for outcome in outcomes),
    }


def main(argv: list[str]) -> None:
    spec = json.loads(Path(argv[1]).read_text())
    Path(argv[2]).write_text(json.dumps(measure(spec)))


if __name__ == "__main__":
    main(sys.argv)
