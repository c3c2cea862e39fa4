"""What the HEIC shortcuts cost in pixels and save in CPU, beside the benchmark's speed.

An HEVC HEIC's variant may be decoded from the file's embedded thumbnail or from only the grid
tiles its crop needs, rather than whole (docs/scaling.md).  For the benchmark's operations on its
HEIC source, over a spread of their sizes, this renders each variant both ways through the
worker's own `operations.render` and reports:

- which source the shortcut used (thumbnail, tiles, or whole when neither applies);
- the PSNR (dB) between the two, compared before encoding: both are rendered to PNG, losslessly,
  at the variant's size and crop ("inf" when identical);
- the CPU per render (user + system, median of `repeat`) of each, in the variant's own format.

Run it pinned to one CPU as the workers are: ``taskset -c 1 .venv/bin/python -m
benchmarks.quality [--repeat 3] [HEIC...]`` (default: the benchmark's generated HEIC).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import pyvips

from benchmarks import fixtures
from benchmarks.operations import BY_KEY
from imageserver.names import Variant, parse_name
from imageserver.processing import operations

SOURCES = fixtures.BENCHMARKS / ".data" / "sources"
# The benchmark's operations on HEIC, and the sizes measured: each one's ends, the largest its
# embedded thumbnail serves on a 4:3 photo with a 320x240 thumbnail, and the next one up.
SPREAD: dict[str, list[tuple[int, ...]]] = {
    "w300.jpg": [(200,), (260,), (320,), (321,), (360,), (400,)],
    "x200.webp": [(100,), (170,), (240,), (241,), (270,), (300,)],
    "300x200.jpg": [(250, 180), (300, 200), (320, 220), (321, 200), (335, 210), (350, 220)],
}


def measure(sources: list[Path], repeat: int = 3) -> list[dict[str, Any]]:
    """One row per source, operation and size: the source used, PSNR and CPU ms both ways."""
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="heic-quality-") as scratch:
        for source in sources:
            for key, spread in SPREAD.items():
                operation = BY_KEY[key]
                for sizes in spread:
                    name = operation.limit_name(sizes)
                    rows.append(_row(str(source), name, Path(scratch), repeat))
    return rows


def _row(source: str, name: str, scratch: Path, repeat: int) -> dict[str, Any]:
    variant = parse_name(name, maximum_width=0)
    lossless = parse_name(f"{variant.stem}.png", maximum_width=0)
    shortcut = _rendered(source, scratch / "shortcut.png", lossless, True)
    whole = _rendered(source, scratch / "whole.png", lossless, False)
    output = scratch / f"out.{variant.extension}"
    return {
        "source": Path(source).name,
        "name": name,
        "decoded_from": operations.hevc_source(source, variant),
        "psnr_db": _psnr(shortcut, whole),
        "cpu_ms_shortcut": _cpu_ms(source, output, variant, True, repeat),
        "cpu_ms_whole": _cpu_ms(source, output, variant, False, repeat),
    }


def _rendered(source: str, path: Path, variant: Variant, shortcuts: bool) -> pyvips.Image:
    operations.render(source, str(path), variant, heic_shortcuts=shortcuts)
    return pyvips.Image.new_from_file(str(path), access="sequential").copy_memory()


def _psnr(one: pyvips.Image, other: pyvips.Image) -> float:
    if (one.width, one.height, one.bands) != (other.width, other.height, other.bands):
        raise ValueError("the two renders differ in size")
    mse = float(((one.cast("float") - other.cast("float")) ** 2).avg())
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def _cpu_ms(source: str, output: Path, variant: Variant, shortcuts: bool, repeat: int) -> float:
    """Median CPU (this process, all its threads) of `repeat` renders, after one to warm up."""
    times = []
    for attempt in range(repeat + 1):
        before = _cpu_seconds()
        operations.render(source, str(output), variant, heic_shortcuts=shortcuts)
        if attempt:
            times.append((_cpu_seconds() - before) * 1000)
    return statistics.median(times)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as a small fixed-width table."""
    lines = [
        f"{'source':<18} {'variant':<14} {'from':<9} {'PSNR dB':>8} "
        f"{'CPU ms':>8} {'whole ms':>9} {'saved':>6}"
    ]
    for row in rows:
        saved = 1 - row["cpu_ms_shortcut"] / row["cpu_ms_whole"]
        lines.append(
            f"{row['source']:<18} {row['name']:<14} {row['decoded_from']:<9} "
            f"{row['psnr_db']:>8.1f} {row['cpu_ms_shortcut']:>8.0f} "
            f"{row['cpu_ms_whole']:>9.0f} {saved:>6.0%}"
        )
    return "\n".join(lines)


def main_with_files(spec: Path, result: Path) -> None:
    """The harness's entry (``python -m benchmarks.quality SPEC.json RESULT.json``): the sources
    and repetitions in SPEC, the rows written to RESULT."""
    settings = json.loads(spec.read_text())
    rows = measure([Path(source) for source in settings["sources"]], settings["repeat"])
    result.write_text(json.dumps({"rows": rows}, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("sources", nargs="*", type=Path, help="HEIC files (default: generated)")
    parser.add_argument("--repeat", type=int, default=3, help="renders timed per path (3)")
    if len(sys.argv) == 3 and sys.argv[1].endswith(".json"):
        main_with_files(Path(sys.argv[1]), Path(sys.argv[2]))
        return
    arguments = parser.parse_args()
    pyvips.concurrency_set(1)  # as the workers run (VIPS_CONCURRENCY=1)
    sources = arguments.sources
    if not sources:
        manifest = fixtures.ensure(SOURCES)
        sources = [SOURCES / manifest["sources"]["heic-12mp"]["copies"][0]["file"]]
    print(table(measure(sources, arguments.repeat)))


if __name__ == "__main__":
    main()
