"""The servers under test, each a child of the benchmark, listening on 127.0.0.1 only.

- ours: ``image-server server`` from the project's virtualenv (optionally under cProfile), with
  any extra arguments the run was given (``--server-arg``);
- ours with free image work (free_server.py): the same command line, workers that answer at once;
- the reference for hits: a bare `twisted.web.static.File` (static_server.py) on the same store;
- the peer: thumbor, in its own virtualenv, with ``--processes``.

Every process is stopped by its own pid (and thumbor's forked children by theirs), so nothing the
benchmark did not start is ever signalled.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from benchmarks import procs
from imageserver.usage import read_usage

BENCHMARKS = Path(__file__).resolve().parent
REPOSITORY = BENCHMARKS.parent
VENV = REPOSITORY / ".venv"
THUMBOR_VENV = BENCHMARKS / ".thumbor-venv"
HOST = "127.0.0.1"


def free_port() -> int:
    """A port nothing listens on now (the kernel's pick; a small race we accept)."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def get(url: str, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """A GET to 127.0.0.1: (status, headers, body); HTTP errors are returned, not raised."""
    if not url.startswith(f"http://{HOST}:"):
        raise ValueError("the benchmark only talks to 127.0.0.1")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def post(url: str, body: bytes, timeout: float = 60.0) -> dict[str, object]:
    """A POST of raw bytes to 127.0.0.1, answered with JSON."""
    if not url.startswith(f"http://{HOST}:"):
        raise ValueError("the benchmark only talks to 127.0.0.1")
    request = urllib.request.Request(url, data=body, method="POST")
    request.add_header("Content-Type", "application/octet-stream")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        answer: dict[str, object] = json.loads(response.read())
        return answer


class Managed:
    """A child process with its output in a log file, stopped by pid."""

    def __init__(self, name: str, argv: list[str], log: Path, env: dict[str, str] | None = None):
        self.name = name
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = log.open("ab")
        self.process = subprocess.Popen(
            argv,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=REPOSITORY,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def descendants(self) -> list[int]:
        return procs.tree(self.pid)[1:]

    def wait_until(self, url: str, seconds: float) -> None:
        """Poll `url` until it answers 200; fail if the process dies or time runs out."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited; see {self.log}")
            with contextlib.suppress(OSError):
                if get(url, timeout=2)[0] == 200:
                    return
            time.sleep(0.25)
        raise RuntimeError(f"{self.name} was not ready in {seconds:.0f} s; see {self.log}")

    def stop(self, grace: float = 30.0) -> None:
        """SIGTERM the process, then its leftover descendants; SIGKILL what outlives `grace`."""
        if self.process.poll() is None:
            descendants = self.descendants()
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
            for pid in descendants:  # thumbor's forks, or workers of a killed server
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            for pid in descendants:
                while _alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.1)
                with contextlib.suppress(ProcessLookupError):
                    if _alive(pid):
                        os.kill(pid, signal.SIGKILL)
        self._log_file.close()


def _alive(pid: int) -> bool:
    """Whether `pid` still runs (a zombie counts as gone)."""
    usage = read_usage(pid)
    return usage is not None and usage.state != "Z"


class OurServer(Managed):
    """``image-server server`` on a fresh store, ready once its workers are.

    `extra_arguments` go at the end of its command line (``--server-arg``: a flag being tried,
    such as several main processes sharing the port).
    """

    name = "image-server"

    def __init__(
        self,
        store: Path,
        workers: int,
        log: Path,
        profile: Path | None = None,
        maximum_width: int = 5000,
        pin: bool = True,
        extra_arguments: Sequence[str] = (),
    ) -> None:
        self.port, self.admin_port = free_port(), free_port()
        self.store = store
        self.workers = workers
        command = [
            "server",
            "--listen",
            HOST,
            "--port",
            str(self.port),
            "--admin-port",
            str(self.admin_port),
            "--local_base_path",
            str(store),
            "--processor_concurrency",
            str(workers),
            "--maximum_width",
            str(maximum_width),
            f"--pin-workers={str(pin).lower()}",
            # A miss phase asks each copy of a source for hundreds of variants.
            "--max-variants-per-image=0",
            *extra_arguments,
        ]
        super().__init__(self.name, self.launcher(profile) + command, log)
        self.wait_until(f"{self.admin_url}/probe/ready", 120)

    def launcher(self, profile: Path | None) -> list[str]:
        """The program and its own arguments, before the server's command line."""
        script = str(VENV / "bin" / "image-server")
        python = str(VENV / "bin" / "python")
        return [python, "-m", "cProfile", "-o", str(profile), script] if profile else [script]

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://{HOST}:{self.admin_port}"

    def worker_pids(self) -> list[int]:
        """The live image workers, under whichever main process started them."""
        return [pid for pid in self.descendants() if is_worker(pid)]

    def main_pids(self) -> list[int]:
        """Every main process: the one started here, and any descendant that is not a worker.

        One today; several once the server runs more main processes sharing the port, which
        the CPU accounting then counts together (each one's own time, not its workers').
        """
        return [self.pid] + [pid for pid in self.descendants() if not is_worker(pid)]


class FreeServer(OurServer):
    """Our server with `benchmarks.free_worker.FreeWorker` as its workers (free_server.py): the
    same command line, image work that costs nothing, so the main process is the bottleneck."""

    name = "image-server (free workers)"

    def launcher(self, profile: Path | None) -> list[str]:
        python = str(VENV / "bin" / "python")
        module = ["-m", "benchmarks.free_server"]
        return (
            [python, "-m", "cProfile", "-o", str(profile), *module]
            if profile
            else [python, *module]
        )


# The AMP child classes our pools start: ampoule runs each worker as ``python -c BOOTSTRAP
# REACTOR CLASS``, and no main process has such a command line (a forked one keeps its parent's).
WORKER_CLASSES = frozenset(
    {b"imageserver.processing.worker.Worker", b"benchmarks.free_worker.FreeWorker"}
)


def is_worker(pid: int) -> bool:
    """Whether `pid` is an image worker, by its command line."""
    try:
        arguments = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    except OSError:
        return False
    return len(arguments) > 2 and arguments[1] == b"-c" and arguments[-1] in WORKER_CLASSES


class StaticServer(Managed):
    """`twisted.web.static.File` on a directory: what serving a stored file costs Twisted alone."""

    def __init__(self, root: Path, log: Path) -> None:
        self.port = free_port()
        script = str(BENCHMARKS / "static_server.py")
        argv = [str(VENV / "bin" / "python"), script, str(root), str(self.port)]
        super().__init__("static.File", argv, log)
        self.wait_until(f"{self.url}/", 30)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"


THUMBOR_CONF = """\
# Written by benchmarks/: a file loader, no storage, no result storage, our quality.
LOADER = 'thumbor.loaders.file_loader'
FILE_LOADER_ROOT_PATH = {root!r}
STORAGE = 'thumbor.storages.no_storage'
RESULT_STORAGE = None
ENGINE = 'thumbor.engines.pil'
QUALITY = 75
WEBP_QUALITY = None
AUTO_WEBP = False
RESPECT_ORIENTATION = True
PRESERVE_EXIF_INFO = False
MAX_WIDTH = 0
MAX_HEIGHT = 0
ALLOW_UNSAFE_URL = True
"""


def ensure_thumbor() -> tuple[bool, str]:
    """Install thumbor (and pillow-heif, for HEIC sources) into its own virtualenv.

    Returns (installed, message); a failure is reported, never raised, so the run goes on.
    """
    thumbor = THUMBOR_VENV / "bin" / "thumbor"
    python = THUMBOR_VENV / "bin" / "python"
    if not thumbor.exists():
        try:
            subprocess.run(
                [sys.executable, "-m", "venv", str(THUMBOR_VENV)],
                check=True,
                capture_output=True,
            )
            subprocess.run(
                [
                    str(python),
                    "-m",
                    "pip",
                    "install",
                    "-q",
                    "--disable-pip-version-check",
                    "thumbor",
                    "pillow-heif",
                ],
                check=True,
                capture_output=True,
                timeout=900,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
            detail = getattr(error, "stderr", b"") or b""
            return False, f"thumbor did not install: {detail.decode(errors='replace')[-500:]}"
    version = subprocess.run(
        [str(thumbor), "--version"], capture_output=True, text=True, check=False
    )
    return True, (version.stdout or version.stderr).strip()


class Thumbor(Managed):
    """thumbor with ``--processes`` forks, serving the source files through its file loader."""

    def __init__(self, root: Path, processes: int, conf: Path, log: Path) -> None:
        self.port = free_port()
        conf.write_text(THUMBOR_CONF.format(root=str(root)))
        argv = [
            str(THUMBOR_VENV / "bin" / "thumbor"),
            "--ip",
            HOST,
            "--port",
            str(self.port),
            "--conf",
            str(conf),
            "--processes",
            str(processes),
            "--log-level",
            "error",
        ]
        super().__init__("thumbor", argv, log)
        self.wait_until(f"{self.url}/healthcheck", 60)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"
