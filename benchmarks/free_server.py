"""Our server with free image work: ``python -m benchmarks.free_server server --listen ...``.

The same entry point and command line as ``image-server`` (servers.OurServer starts both), with
two monkeypatches of `imageserver.processing.pool` made before the server is built, and no change
to production code:

- ``pool.Worker`` -> `benchmarks.free_worker.FreeWorker`: `WorkerPool.startService` passes the
  module's ``Worker`` to ampoule as ``ampChild``, and ampoule's bootstrap imports it in each child
  by its qualified name (``benchmarks.free_worker.FreeWorker``);
- ``pool.worker_environment`` -> the same environment with this repository first on
  ``PYTHONPATH``, so that the child can import ``benchmarks`` whether or not ``imageserver`` is
  installed from this checkout (the real environment has only ``imageserver``'s parent);
- ``processes.SECONDARY_ARGUMENTS`` -> this module with ``--secondary``, so that other main
  processes (``--processes``) are patched alike before they run `imageserver.secondary`.

Run with the repository as the working directory (servers.Managed does), so that the parent too
imports this module as ``benchmarks.free_server`` and ampoule's check that the class survives a
round trip through its name passes.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from benchmarks.free_worker import FreeWorker
from imageserver import cli, processes, secondary
from imageserver.processing import pool

REPOSITORY = Path(__file__).resolve().parent.parent
_real_environment = pool.worker_environment


def _environment_with_benchmarks(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The workers' real environment, with the repository (which holds ``benchmarks``) first
    on the import path."""
    environment = _real_environment(extra)
    environment["PYTHONPATH"] = os.pathsep.join(
        part for part in (str(REPOSITORY), environment.get("PYTHONPATH", "")) if part
    )
    return environment


def main() -> int:
    """Patch the pool, then run the ``image-server`` command line as given, or a secondary main
    process (``--secondary INDEX``)."""
    pool.Worker = FreeWorker  # type: ignore[misc]
    pool.worker_environment = _environment_with_benchmarks
    processes.SECONDARY_ARGUMENTS = ("-m", "benchmarks.free_server", "--secondary")
    if sys.argv[1:2] == ["--secondary"]:
        return secondary.main(sys.argv[1:])
    return cli.main()


if __name__ == "__main__":
    sys.exit(main())
