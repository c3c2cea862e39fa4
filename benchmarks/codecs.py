"""The ``codecs`` phase: what each AVIF encoder effort costs against WebP, at equal quality.

The question (AVIF misses should cost at most twice WebP's at thumbnail sizes): which libaom
effort to encode AVIF with, and at which quality, so that AVIF matches what we serve as WebP
(``webpsave(Q=75, effort=2)``) in quality for the fewest bytes at an affordable CPU cost.

For each source and size the source is decoded and scaled once, the way a worker does it for a
JPEG (`operations.geometry`, the scaled JPEG decode of `operations.jpeg_shrink`, libvips'
resize, the crop), and kept in memory.  Then:

- WebP at quality 75, effort 2 (ours) and 4 (the encoder's default): CPU per encode, bytes and
  SSIM against the scaled image.  Ours sets the quality target;
- AVIF at each effort: the smallest quality whose SSIM reaches WebP's (a search seeded with the
  previous effort's answer), with its CPU per encode and bytes; an effort is skipped at a size
  once a lower one took over ``slow_seconds`` of CPU for one encode there (effort 9 on an
  800-pixel image takes ten seconds);
- the decode and scale alone, and `operations.render` itself for WebP and for AVIF as the server
  makes them today (`operations.AVIF_EFFORT`, quality 50), so that encodes can be set against a
  whole render.

SSIM is computed on luma (Rec. 601 weights) with libvips arithmetic: Gaussian-weighted means,
variances and covariance (sigma 1.5, the usual 11-pixel window), the constants of Wang et al.
(2004), averaged over the image.  The encoders are called with the same options as the server's
savers (`operations._save_webp`, `_save_avif`), into memory rather than a file.

Run as a subprocess (``python -m benchmarks.codecs SPEC RESULT``) with the workers' environment
(``VIPS_CONCURRENCY=1``), so libvips is first loaded as in a worker; CPU is the process's own
(all its threads), from `time.process_time`.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyvips

from imageserver.names import parse_name
from imageserver.processing import operations

# What the server writes WebP with, and the other effort measured for comparison.
WEBP_QUALITY = 75
WEBP_EFFORT = 2
# What the server writes AVIF with today.
AVIF_EFFORT = operations.AVIF_EFFORT
AVIF_QUALITY = 50

# SSIM: a Gaussian window of sigma 1.5 (the usual 11x11), constants for 8-bit samples.
_SIGMA = 1.5
_C1 = (0.01 * 255) ** 2
_C2 = (0.03 * 255) ** 2
_LUMA = [[0.299, 0.587, 0.114]]

Result = dict[str, Any]


@dataclass
class Encoded:
    """One encoder setting on one image: its quality, size, SSIM, and the CPU of its first encode
    (the search's; `timed` measures the figures compared)."""

    quality: int
    bytes: int
    ssim: float
    first_cpu_ms: float

    def summary(self) -> Result:
        return {"quality": self.quality, "bytes": self.bytes, "ssim": round(self.ssim, 5)}


def _cpu_ms(action: Callable[[], object]) -> tuple[float, object]:
    """CPU milliseconds of the whole process (every thread libvips or the encoder starts)."""
    started = time.process_time()
    outcome = action()
    return 1000 * (time.process_time() - started), outcome


def timed(actions: dict[str, Callable[[], object]], budget_ms: float, at_most: int) -> Result:
    """Median CPU ms of each action, run in turn, round after round.

    Interleaved, because this machine's speed drifts within minutes: figures that are divided
    by one another are taken in the same rounds.  At least two rounds, then until `budget_ms` is
    spent or `at_most` rounds; a single round when one round is over the budget (an encode at
    a high effort takes seconds).
    """
    times: dict[str, list[float]] = {name: [] for name in actions}
    spent, rounds = 0.0, 0
    while rounds < at_most and (rounds < 2 or spent < budget_ms):
        for name, action in actions.items():
            cpu, _ = _cpu_ms(action)
            times[name].append(cpu)
            spent += cpu
        rounds += 1
        if rounds == 1 and spent > budget_ms:
            break
    medians: Result = {name: round(statistics.median(values), 2) for name, values in times.items()}
    medians["rounds"] = rounds
    return medians


def scaled_image(path: str, size: str) -> Callable[[], pyvips.Image]:
    """The decode and scale a worker runs for variant `size` of a JPEG, as a function that
    computes it into memory (the `operations._thumbnail` path for JPEG, then the crop)."""
    header = pyvips.Image.new_from_file(path)
    width, height = header.width, header.height
    shape = operations.geometry(width, height, parse_name(f"{size}.webp", WEBP_QUALITY, 5000))
    shrink = operations.jpeg_shrink(width, height, *shape.scaled)

    def decode() -> pyvips.Image:
        loaded = pyvips.Image.jpegload(path, shrink=shrink, access="sequential")
        image = loaded.thumbnail_image(shape.scaled[0], height=shape.scaled[1], size="force")
        if shape.crop is not None and (image.width, image.height) != shape.output:
            image = image.crop(*shape.crop, *shape.output)
        return image.copy_memory()

    return decode


def luma(image: pyvips.Image) -> pyvips.Image:
    """The image's luma as a float band, in memory (it is compared many times)."""
    return image.recomb(_LUMA).copy_memory()


def ssim(reference: pyvips.Image, image: pyvips.Image) -> float:
    """Mean SSIM of `image`'s luma against `reference` (a `luma`), both the same size."""
    x, y = reference, image.recomb(_LUMA)

    def blur(channel: pyvips.Image) -> pyvips.Image:
        return channel.gaussblur(_SIGMA, precision="float", min_ampl=0.01)

    mean_x, mean_y = blur(x), blur(y)
    variance_x = blur(x * x) - mean_x * mean_x
    variance_y = blur(y * y) - mean_y * mean_y
    covariance = blur(x * y) - mean_x * mean_y
    numerator = (mean_x * mean_y * 2 + _C1) * (covariance * 2 + _C2)
    denominator = (mean_x * mean_x + mean_y * mean_y + _C1) * (variance_x + variance_y + _C2)
    return float((numerator / denominator).avg())


def encode(image: pyvips.Image, codec: str, effort: int, quality: int) -> bytes:
    """The server's saver options (`operations._save_webp`, `_save_avif`), into memory."""
    if codec == "webp":
        data: bytes = image.webpsave_buffer(Q=quality, effort=effort, keep="none")
    else:
        data = image.heifsave_buffer(compression="av1", Q=quality, effort=effort, keep="none")
    return data


class Encoder:
    """One codec and effort on one scaled image, each quality encoded once and remembered."""

    def __init__(
        self, image: pyvips.Image, reference: pyvips.Image, codec: str, effort: int
    ) -> None:
        self.image, self.reference, self.codec, self.effort = image, reference, codec, effort
        self.done: dict[int, Encoded] = {}

    def action(self, quality: int) -> Callable[[], bytes]:
        """One encode at `quality`, to time."""
        return lambda: encode(self.image, self.codec, self.effort, quality)

    def reaches(self, target: float) -> Callable[[int], bool]:
        """Whether the encode at a quality has at least the `target` SSIM."""
        return lambda quality: self.at(quality).ssim >= target

    def at(self, quality: int) -> Encoded:
        if quality not in self.done:
            cpu, data = _cpu_ms(self.action(quality))
            assert isinstance(data, bytes)
            decoded = pyvips.Image.new_from_buffer(data, "")
            score = ssim(self.reference, decoded)
            self.done[quality] = Encoded(quality, len(data), score, cpu)
        return self.done[quality]


def smallest_quality(good: Callable[[int], bool], guess: int) -> int | None:
    """The smallest quality in 1..100 for which `good` holds (taken as monotonic), or None.

    A galloping search from `guess` then a bisection: with a guess one or two steps off (the
    previous effort's answer), three or four encodes instead of seven, which matters when one
    encode takes seconds.
    """
    guess = min(max(guess, 1), 100)
    # The answer lies in (bad, fine]: bad = 0 and fine = 101 stand for "beyond the range".
    if good(guess):
        fine, step = guess, 1
        while fine - step >= 1 and good(fine - step):
            fine, step = fine - step, 2 * step
        bad = max(0, fine - step)
    else:
        bad, step = guess, 1
        while bad + step <= 100 and not good(bad + step):
            bad, step = bad + step, 2 * step
        fine = min(101, bad + step)
    while fine - bad > 1:
        middle = (fine + bad) // 2
        if good(middle):
            fine = middle
        else:
            bad = middle
    return fine if fine <= 100 else None


def measure_size(path: str, size: str, spec: Result, scratch: str) -> Result:
    """Every measurement of one source at one size.

    Each AVIF effort is timed in rounds with the decode and our WebP encode, so that the ratios
    between them come from the same minutes.
    """
    budget, at_most = spec["budget_ms"], spec["repetitions"]
    decode = scaled_image(path, size)
    image = decode()
    reference = luma(image)
    row: Result = {"size": size, "width": image.width, "height": image.height}
    webp = {effort: Encoder(image, reference, "webp", effort) for effort in spec["webp_efforts"]}
    ours = webp[WEBP_EFFORT].action(WEBP_QUALITY)
    renders = {output: _render(path, f"{size}.{output}", scratch) for output in ("webp", "avif")}
    baseline = timed(
        {"decode": decode}
        | {f"webp {effort}": encoder.action(WEBP_QUALITY) for effort, encoder in webp.items()}
        | {f"render {output}": render for output, render in renders.items()},
        budget,
        at_most,
    )
    row["decode_scale_ms"] = baseline["decode"]
    row["render_ms"] = {output: baseline[f"render {output}"] for output in renders}
    row["webp"] = {
        str(effort): encoder.at(WEBP_QUALITY).summary() | {"cpu_ms": baseline[f"webp {effort}"]}
        for effort, encoder in webp.items()
    }
    row["baseline_rounds"] = baseline["rounds"]
    target = webp[WEBP_EFFORT].at(WEBP_QUALITY).ssim
    row["target_ssim"] = round(target, 5)
    avif: list[Result] = []
    guess, slow = AVIF_QUALITY, None
    for effort in spec["efforts"]:
        if slow is not None:
            avif.append({"effort": effort, "skipped": slow})
            continue
        encoder = Encoder(image, reference, "avif", effort)
        quality = smallest_quality(encoder.reaches(target), guess)
        if quality is None:
            avif.append({"effort": effort, "unreachable": True})
            continue
        times = timed(
            {"decode": decode, "webp": ours, "avif": encoder.action(quality)}, budget, at_most
        )
        entry = encoder.at(quality).summary() | {
            "effort": effort,
            "cpu_ms": times["avif"],
            "decode_scale_ms": times["decode"],
            "webp_cpu_ms": times["webp"],
            "rounds": times["rounds"],
            "encodes_searched": len(encoder.done),
        }
        if effort == AVIF_EFFORT:  # what the server writes today, for the mapping
            entry["at_default_quality"] = encoder.at(AVIF_QUALITY).summary()
        avif.append(entry)
        guess = quality
        one_encode = min(found.first_cpu_ms for found in encoder.done.values())
        if one_encode > 1000 * spec["slow_seconds"]:
            slow = f"effort {effort} took {one_encode / 1000:.1f} s per encode"
    row["avif"] = avif
    return row


def _render(path: str, name: str, scratch: str) -> Callable[[], None]:
    """`operations.render` as the worker calls it (the server's savers), into `scratch`; called
    once here, as the first call loads the codec."""
    variant = parse_name(name, WEBP_QUALITY, 5000)
    destination = os.path.join(scratch, name)

    def render() -> None:
        operations.render(path, destination, variant, 100_000_000, 5000)
        os.remove(destination)

    render()
    return render


def measure(spec: Result) -> Result:
    """Every source and size of `spec` (sources [{key, path}], sizes, efforts, webp_efforts)."""
    rows: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="codecs-", dir=spec.get("scratch")) as scratch:
        for source in spec["sources"]:
            for size in spec["sizes"]:
                started = time.monotonic()
                row = measure_size(source["path"], size, spec, scratch)
                row["source"] = source["key"]
                row["seconds"] = round(time.monotonic() - started, 1)
                print(f"  {source['key']} {size}: {row['seconds']} s", flush=True)
                rows.append(row)
    return {"rows": rows, "server_avif_effort": AVIF_EFFORT}


def main(argv: list[str]) -> None:
    spec = json.loads(Path(argv[1]).read_text())
    Path(argv[2]).write_text(json.dumps(measure(spec)))


if __name__ == "__main__":
    main(sys.argv)
