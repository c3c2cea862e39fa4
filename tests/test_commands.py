"""The installed commands, run as real processes: ``image-server`` and ``twistd imageserver``."""

from __future__ import annotations

import os
import signal
import socket
import sys

from twisted.internet import defer, protocol, reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest

from tests.support import fixture, request, sleep

BIN = os.path.dirname(sys.executable)
IMAGE_SERVER = os.path.join(BIN, "image-server")
TWISTD = os.path.join(BIN, "twistd")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (the image workers of a server)."""
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as listing:
            found.extend(int(child) for child in listing.read().split())
    return found


class ServerProcess(protocol.ProcessProtocol):
    """A server in a child process; ``ended`` fires with its exit code."""

    def __init__(self) -> None:
        self.ended: defer.Deferred[int | str] = defer.Deferred()
        self.output = b""

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason) -> None:  # type: ignore[no-untyped-def]
        """Fire with the exit code, or the signal's name when it ended by one."""
        if reason.value.exitCode is None:
            self.ended.callback(signal.Signals(reason.value.signal).name)
        else:
            self.ended.callback(reason.value.exitCode)


class CommandTests(unittest.TestCase):
    timeout = 120

    async def run_command(self, *args: str) -> tuple[str, str, int]:
        out, err, code = await getProcessOutputAndValue(
            args[0], args[1:], env=os.environ, path=self.mktemp_dir()
        )
        return out.decode(), err.decode(), code

    def mktemp_dir(self) -> str:
        path = self.mktemp()
        os.makedirs(path)
        return path

    async def start(self, argv: list[str]) -> tuple[ServerProcess, str]:
        """Start a server and wait until /status_check answers 200."""
        port, admin = free_port(), free_port()
        store = self.mktemp_dir()
        flags = ["--port", str(port), "--admin-port", str(admin), "--local_base_path", store]
        process = ServerProcess()
        transport = reactor.spawnProcess(
            process, argv[0], [*argv, *flags], env=os.environ, path=store
        )
        self.addCleanup(self._kill, transport, process)
        url = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                if (await request("GET", url + "/status_check")).code == 200:
                    return process, url
            except Exception:  # not listening yet
                pass
            await sleep(0.1)
        self.fail(f"the server did not start: {process.output.decode()}")

    async def _kill(self, transport, process: ServerProcess) -> None:  # type: ignore[no-untyped-def]
        if not process.ended.called:
            transport.signalProcess("KILL")
            await process.ended

    async def test_version(self) -> None:
        out, _, code = await self.run_command(IMAGE_SERVER, "version")
        self.assertEqual(code, 0)
        self.assertEqual(out.splitlines()[0], "images version [0.1.0]")
        self.assertEqual(len(out.splitlines()), 3)

    async def test_bad_flag_is_one_line(self) -> None:
        _, err, code = await self.run_command(IMAGE_SERVER, "server", "--port", "abc")
        self.assertEqual(code, 1)
        self.assertEqual(err, "image-server: --port: expected a whole number, got 'abc'\n")

    async def test_twistd_bad_flag_names_it(self) -> None:
        out, err, code = await self.run_command(TWISTD, "-n", "imageserver", "--maximum_width=-1")
        self.assertNotEqual(code, 0)
        self.assertIn("--maximum_width: must be at least 0", out + err)
        self.assertNotIn("Traceback", out + err)

    async def test_no_command_prints_usage(self) -> None:
        out, _, code = await self.run_command(IMAGE_SERVER)
        self.assertEqual(code, 0)
        self.assertIn("server", out)
        _, err, code = await self.run_command(IMAGE_SERVER, "frobnicate")
        self.assertEqual(code, 1)
        self.assertIn("frobnicate", err)

    async def test_image_server_with_flags_before_the_command(self) -> None:
        """The Ruby spawner's command line: flags, then ``server``; SIGTERM stops it cleanly."""
        process, url = await self.start([IMAGE_SERVER, "--outputs=", "server"])
        response = await request("POST", url + "/p", data=fixture("wine.jpg"))
        self.assertEqual(response.json()["hash"], "6e0072682e66287b662827da75b244a3")
        workers = children(self._pid(process))
        self.assertTrue(workers)
        os.kill(self._pid(process), signal.SIGTERM)
        self.assertEqual(await process.ended, 0)
        for _ in range(50):
            if not any(os.path.exists(f"/proc/{pid}") for pid in workers):
                break
            await sleep(0.1)
        else:
            self.fail(f"workers {workers} outlived the server")

    async def test_twistd_plugin(self) -> None:
        process, url = await self.start([TWISTD, "--nodaemon", "--pidfile=", "imageserver"])
        response = await request("GET", url + "/status_check")
        self.assertEqual(response.json(), {"message": "OK"})
        os.kill(self._pid(process), signal.SIGINT)
        # twistd stops cleanly, then ends itself with the signal it was sent.
        self.assertEqual(await process.ended, "SIGINT")

    async def test_in_flight_upload_finishes_during_shutdown(self) -> None:
        """SIGTERM while a client is half-way through an upload: it still gets its 200."""
        process, url = await self.start([IMAGE_SERVER, "server"])
        port = int(url.rsplit(":", 1)[1])
        body = fixture("wine.jpg")
        client = await protocol.ClientCreator(reactor, RawClient).connectTCP("127.0.0.1", port)
        client.transport.write(
            b"POST /p HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body[:1000]
        )
        await sleep(0.3)
        os.kill(self._pid(process), signal.SIGTERM)
        await sleep(0.5)
        self.assertFalse(process.ended.called)
        client.transport.write(body[1000:])
        answer = await client.done
        self.assertTrue(answer.startswith(b"HTTP/1.1 200"), answer[:200])
        self.assertIn(b"6e0072682e66287b662827da75b244a3", answer)
        self.assertEqual(await process.ended, 0)

    def _pid(self, process: ServerProcess) -> int:
        pid: int = process.transport.pid  # type: ignore[union-attr]
        return pid


class RawClient(protocol.Protocol):
    """Writes by hand, collects everything until the server closes."""

    def __init__(self) -> None:
        self.received = b""
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason) -> None:  # type: ignore[no-untyped-def]
        self.done.callback(self.received)
