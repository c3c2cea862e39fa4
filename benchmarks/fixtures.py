"""Source images for the benchmark, made from fixed seeds: every machine decodes the same pixels.

Why generated rather than shipped or downloaded: a 12 MP photo is megabytes the repository should
not carry, and nothing may be fetched at run time.  Why photo-like: codecs do very different
amounts of work on a flat image and on a photo, so the content has what photos have -- smooth
gradients, mid-frequency texture, hard edges and sensor noise -- and compresses like one (a 12 MP
JPEG at quality 90 is about 3 MB).

Each source comes in several *copies* that differ in two pixels: uploaded, they are different
images (different hashes), which multiplies the distinct variant names a miss phase can ask for
without changing the work one variant costs.  HEIC is encoded by pillow-heif's x265 in a separate
virtualenv (``benchmarks/.tools-venv``), because the project's pi-heif and libvips can only decode
HEVC.
"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyvips

# Bump when the generator changes, so stale images are made again.  6: HEIC laid out as a phone
# writes it (grid of 512-pixel tiles, a filtered 320-pixel thumbnail).
GENERATOR_VERSION = 6

BENCHMARKS = Path(__file__).resolve().parent
TOOLS_VENV = BENCHMARKS / ".tools-venv"


@dataclass(frozen=True)
class Source:
    """One kind of source image: its key in results, its size, format and the copies made."""

    key: str
    width: int
    height: int
    extension: str
    description: str
    copies: int
    alpha: bool = False


SOURCES: tuple[Source, ...] = (
    Source("jpeg-1080", 1920, 1080, "jpg", "1920x1080 JPEG q90", 12),
    Source("jpeg-12mp", 4032, 3024, "jpg", "4032x3024 JPEG q90", 8),
    Source("png-alpha", 1000, 1000, "png", "1000x1000 PNG with alpha", 12, alpha=True),
    Source("webp-1080", 1920, 1080, "webp", "1920x1080 WebP q85", 12),
    Source(
        "heic-12mp",
        4032,
        3024,
        "heic",
        "4032x3024 HEIC (x265 q80, 8x6 grid of 512-px tiles, 320x240 thumbnail)",
        3,
    ),
)

# Upload bodies: photo JPEGs whose size is about 1 MB and 20 MB (fine noise makes the big one big).
UPLOADS: dict[str, tuple[int, int, int, float]] = {
    # key: (width, height, quality, fine-noise sigma)
    "1mb": (2000, 1500, 92, 6.0),
    "20mb": (6400, 4800, 97, 14.0),
}


def photo(width: int, height: int, seed: int, fine_noise: float = 5.0) -> pyvips.Image:
    """A photo-like sRGB image: gradients, blurred texture, a few hard-edged shapes and noise."""
    xyz = pyvips.Image.xyz(width, height)
    x, y = xyz[0], xyz[1]
    side = max(width, height)

    def wave(pixels: pyvips.Image, period: float) -> pyvips.Image:
        return (pixels * (360 / (period * side))).sin()  # pyvips' sin takes degrees

    # Slow waves over the frame, like sky, walls and shading.
    red = wave(x, 0.7) * 50 + wave(y + side / 4, 0.9) * 40 + 120
    green = wave(x + y, 1.1) * 55 + 110
    blue = wave(x - y, 0.8) * 45 + wave(y, 0.15) * 15 + 115
    base = red.bandjoin([green, blue])
    texture = pyvips.Image.gaussnoise(width // 8 + 1, height // 8 + 1, mean=0, sigma=40, seed=seed)
    texture = texture.gaussblur(1.5).resize(8, kernel="cubic").crop(0, 0, width, height)
    fine = pyvips.Image.gaussnoise(width, height, mean=0, sigma=fine_noise, seed=seed + 1)
    image = base + texture.bandjoin([texture, texture]) * [1.0, 0.8, 0.6] + fine
    image = image.cast("uchar").copy(interpretation="srgb")
    rng = random.Random(seed)
    for _ in range(24):  # edges: discs and boxes in flat colours
        ink = [rng.randrange(256) for _ in range(3)]
        cx, cy = rng.randrange(width), rng.randrange(height)
        size = rng.randrange(max(width, height) // 40, max(width, height) // 8)
        if rng.random() < 0.5:
            image = image.draw_circle(ink, cx, cy, size // 2, fill=True)
        else:
            image = image.draw_rect(ink, cx, cy, size, size // 2, fill=True)
    return image


def _with_alpha(image: pyvips.Image) -> pyvips.Image:
    """Add a radial alpha: opaque in the middle, transparent at the corners (real cut-outs vary)."""
    xyz = pyvips.Image.xyz(image.width, image.height)
    cx, cy = image.width / 2, image.height / 2
    distance = ((xyz[0] - cx) ** 2 + (xyz[1] - cy) ** 2) ** 0.5
    alpha = (255 - (distance - min(cx, cy) * 0.6) * 1.2).cast("uchar")  # cast clamps
    return image.bandjoin(alpha).copy(interpretation="srgb")


def _mark(image: pyvips.Image, copy: int) -> pyvips.Image:
    """Make copy `copy` differ from the others in two pixels, so its bytes and hash differ."""
    ink = [copy * 7 % 256, copy * 13 % 256, copy * 29 % 256] + ([255] if image.bands == 4 else [])
    return image.draw_rect(ink, 0, 0, 2, 1, fill=True)


def _save(image: pyvips.Image, path: Path, source: Source) -> None:
    if source.extension == "jpg":
        image.jpegsave(str(path), Q=90, keep="none")
    elif source.extension == "png":
        image.pngsave(str(path), compression=6, keep="none")
    elif source.extension == "webp":
        image.webpsave(str(path), Q=85, keep="none")
    elif source.extension == "heic":
        raw = path.with_suffix(".rgb")
        raw.write_bytes(image.write_to_memory())
        try:
            encode_heic(raw, path, image.width, image.height)
        finally:
            raw.unlink(missing_ok=True)
    else:  # pragma: no cover - the table above is fixed
        raise ValueError(source.extension)


def ensure_tools_venv() -> Path:
    """The virtualenv with pillow-heif (x265) and py-spy, created on first use."""
    python = TOOLS_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(TOOLS_VENV)], check=True)
    probe = subprocess.run([str(python), "-c", "import pillow_heif"], capture_output=True)
    if probe.returncode != 0:
        pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        subprocess.run([*pip, "pillow-heif", "py-spy"], check=True)
    return python


def encode_heic(raw: Path, destination: Path, width: int, height: int) -> None:
    """Encode packed 8-bit RGB pixels to HEIC with pillow-heif (see heic_encode.py)."""
    python = ensure_tools_venv()
    script = BENCHMARKS / "heic_encode.py"
    subprocess.run(
        [str(python), str(script), str(raw), str(destination), str(width), str(height)],
        check=True,
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def ensure(directory: Path, log: bool = True) -> dict[str, Any]:
    """Generate the sources and upload bodies under `directory` unless already there.

    Returns the manifest: for each source its copies' file names and sha256, and the upload
    bodies' sizes.  The manifest records the generator version and the libvips version, since
    another libvips may encode the same pixels to other bytes.
    """
    directory.mkdir(parents=True, exist_ok=True)
    manifest_path = directory / "manifest.json"
    if manifest_path.exists():
        manifest: dict[str, Any] = json.loads(manifest_path.read_text())
        files = [directory / name for name in _files_of(manifest)]
        if manifest.get("version") == GENERATOR_VERSION and all(f.exists() for f in files):
            return manifest
    sources: dict[str, object] = {}
    for seed, source in enumerate(SOURCES, start=1):
        if log:
            print(f"  generating {source.description} x{source.copies}", flush=True)
        image = photo(source.width, source.height, seed * 100)
        if source.alpha:
            image = _with_alpha(image)
        image = image.copy_memory()  # made once, marked per copy
        copies = []
        for copy in range(source.copies):
            path = directory / f"{source.key}-{copy}.{source.extension}"
            _save(_mark(image, copy), path, source)
            copies.append(
                {"file": path.name, "bytes": path.stat().st_size, "sha256": _sha256(path)}
            )
        sources[source.key] = {
            "description": source.description,
            "width": source.width,
            "height": source.height,
            "copies": copies,
        }
    uploads: dict[str, object] = {}
    for key, (width, height, quality, sigma) in UPLOADS.items():
        if log:
            print(f"  generating the {key} upload body", flush=True)
        path = directory / f"upload-{key}.jpg"
        photo(width, height, 7000 + width, fine_noise=sigma).jpegsave(str(path), Q=quality)
        uploads[key] = {
            "file": path.name,
            "bytes": path.stat().st_size,
            "width": width,
            "height": height,
        }
    manifest = {
        "version": GENERATOR_VERSION,
        "libvips": f"{pyvips.version(0)}.{pyvips.version(1)}.{pyvips.version(2)}",
        "sources": sources,
        "uploads": uploads,
    }
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _files_of(manifest: dict[str, Any]) -> list[str]:
    names: list[str] = []
    for source in manifest.get("sources", {}).values():
        names.extend(copy["file"] for copy in source["copies"])
    for upload in manifest.get("uploads", {}).values():
        names.append(upload["file"])
    return names
