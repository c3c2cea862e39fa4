"""CPU per whole decode of a HEIC by one libheif build: ``python heic_decode.py MODULE FILE N``.

Run by each virtualenv whose build is compared (the quality phase): the project's with pi-heif,
the default, and ``benchmarks/.tools-venv`` with pillow-heif, the ``heic`` extra's decoder.  One
decoding thread, as in a worker pinned to its CPU; prints the median CPU ms of N decodes after one
to warm up.
"""

from __future__ import annotations

import importlib
import resource
import statistics
import sys


def _cpu_ms() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return (usage.ru_utime + usage.ru_stime) * 1000


def main(argv: list[str]) -> None:
    module, path, repeat = importlib.import_module(argv[1]), argv[2], int(argv[3])
    module.options.DECODE_THREADS = 1
    times = []
    for attempt in range(repeat + 1):
        before = _cpu_ms()
        module.open_heif(path, convert_hdr_to_8bit=True).data  # noqa: B018 - decodes
        if attempt:
            times.append(_cpu_ms() - before)
    print(round(statistics.median(times), 1))


if __name__ == "__main__":
    main(sys.argv)
