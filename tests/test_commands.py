"""The installed commands, run as real processes: ``image-server`` and ``twistd imageserver``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from urllib.parse import parse_qs, urlsplit

from twisted.internet.utils import getProcessOutputAndValue

from imageserver.cli import CHECKOUT
from imageserver.paths import partition
from imageserver.signature import Validator
from tests.processes import (
    IMAGE_SERVER,
    TWISTD,
    ServerProcess,
    children,
    free_port,
    start_process,
)
from tests.support import ServerTestCase, fixture, raw_connection, request


class CommandTests(ServerTestCase):
    """The commands as processes (`ServerTestCase` for its `wait_for`; no server of its own)."""

    timeout = 120

    async def run_command(
        self, *args: str, env: Mapping[str, str] = os.environ
    ) -> tuple[str, str, int]:
        out, err, code = await getProcessOutputAndValue(
            args[0], args[1:], env=env, path=self.mktemp_dir()
        )
        return out.decode(), err.decode(), code

    def mktemp_dir(self) -> str:
        path = self.mktemp()
        os.makedirs(path)
        return path

    async def start(self, argv: list[str]) -> tuple[ServerProcess, str]:
        running = await start_process(self, argv)
        return running.process, running.url

    async def test_version(self) -> None:
        """The Go server's three lines, also for ``--version``; the hash is the checkout's, and
        the Go server's placeholder where git cannot tell (here: no git on the PATH)."""
        if not os.path.exists(os.path.join(CHECKOUT, ".git")) or shutil.which("git") is None:
            self.skipTest("not run from a git checkout")
        head = subprocess.run(
            ["git", "-C", CHECKOUT, "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        for flag in ("version", "--version"):
            out, _, code = await self.run_command(IMAGE_SERVER, flag)
            self.assertEqual(code, 0)
            lines = out.splitlines()
            self.assertEqual(lines[:2], ["images version [0.1.0]", f"git hash [{head}]"])
            self.assertRegex(lines[2], r"^build timestamp \[\d{4}-\d\d-\d\dT[\d:]{8}Z\]$")
        out, _, code = await self.run_command(IMAGE_SERVER, "version", env={"PATH": ""})
        self.assertEqual(
            (code, out.splitlines()[1:]),
            (
                0,
                [
                    "git hash [GitHash is not defined]",
                    "build timestamp [BuildTimestamp is not defined]",
                ],
            ),
        )

    async def test_generate_secret(self) -> None:
        out, _, code = await self.run_command(
            IMAGE_SERVER, "generate-secret", "--length", "32", "--count", "3"
        )
        self.assertEqual(code, 0)
        secrets = out.splitlines()
        self.assertEqual(len(secrets), 3)
        for secret in secrets:
            self.assertRegex(secret, r"^[A-Za-z0-9_-]{43}$")
        longer, _, _ = await self.run_command(IMAGE_SERVER, "generate-secret", "--length", "64")
        self.assertEqual(len(longer.strip()), 86)

    async def test_sign_url(self) -> None:
        out, _, code = await self.run_command(
            IMAGE_SERVER, "sign-url", "--secret", "your-secret", "--base-url",
            "https://images.example.com", "--method", "POST", "--path", "/products", "--ttl", "15m",
        )  # fmt: skip
        self.assertEqual(code, 0)
        url = urlsplit(out.strip())
        self.assertEqual(
            url.scheme + "://" + url.netloc + url.path, "https://images.example.com/products"
        )
        params = {name: values[0] for name, values in parse_qs(url.query).items()}
        self.assertEqual(params["X-Path"], "/products")
        self.assertIn("X-Path=%2Fproducts&", url.query)
        Validator(lambda: ("your-secret",), 60).validate("POST", "/products/abc", params)
        self.assertLess(abs(int(params["X-Expires"]) - (time.time() + 900)), 60)
        for args, message in [
            (["--path", "/x"], "image-server: --secret is required"),
            (["--secret", "s"], "image-server: --path is required"),
            (
                ["--secret", "s", "--path", "/x", "--ttl", "3d"],
                "image-server: --ttl: invalid TTL duration: '3d': a number and a unit,",
            ),
            (
                ["--secret", "s", "--path", "/x", "--ttl", "15"],
                "image-server: --ttl: invalid TTL duration: '15': a number and a unit, as in 90s,",
            ),
            (["--secret", "s", "--pth", "/x"], "image-server: option --pth not recognized; did"),
        ]:
            _, err, code = await self.run_command(IMAGE_SERVER, "sign-url", *args)
            self.assertEqual(code, 1)
            self.assertTrue(err.startswith(message), err)

    async def test_cli_imports_a_directory(self) -> None:
        """Good images (a HEIC among them) are stored with their outputs; a text file is skipped
        with a warning; a truncated JPEG fails the command with its reason."""
        work = os.path.abspath(self.mktemp_dir())
        images = os.path.join(work, "in")
        os.makedirs(os.path.join(images, "sub"))
        for name, data in {
            "wine.jpg": fixture("wine.jpg"),
            "a.png": fixture("a.png"),
            "notes.txt": b"shopping list\n",
            "sub/wine.heic": fixture("wine.heic"),
            "sub/broken.jpg": fixture("wine.jpg")[:30000],
        }.items():
            with open(os.path.join(images, name), "wb") as f:
                f.write(data)
        store = os.path.join(work, "store")
        out, err, code = await self.run_command(
            IMAGE_SERVER, "cli", images, "--outputs", "x100.jpg,w50.webp", "--namespace", "p",
            "--local_base_path", store, "--processor_concurrency", "2",
        )  # fmt: skip
        self.assertEqual(code, 1, err)
        lines = [line.split("\t") for line in out.splitlines()]
        self.assertEqual(
            [(line[1], line[2], line[3]) for line in lines],
            [
                (os.path.join(images, "a.png"), "574", "496"),
                (os.path.join(images, "wine.jpg"), "800", "600"),
                (os.path.join(images, "sub/wine.heic"), "800", "600"),
            ],
        )
        self.assertEqual(lines[1][0], "6e0072682e66287b662827da75b244a3")
        for line in lines:
            directory = os.path.join(store, "p", partition(line[0]))
            self.assertEqual(
                sorted(os.listdir(directory)), ["info.json", "original", "w50.webp", "x100.jpg"]
            )
        self.assertIn(f"warning: skipped {os.path.join(images, 'notes.txt')}: not an image", err)
        self.assertIn(f"failed: {os.path.join(images, 'sub/broken.jpg')}: ImageMagick failed", err)
        self.assertEqual(os.listdir(os.path.join(store, "tmp")), [])

    async def test_cli_needs_a_path_and_outputs(self) -> None:
        _, err, code = await self.run_command(IMAGE_SERVER, "cli", "--outputs", "w1.jpg")
        self.assertEqual((code, err), (1, "image-server: CLI requires the path\n"))
        _, err, code = await self.run_command(IMAGE_SERVER, "cli", "somewhere")
        self.assertEqual((code, err), (1, 'image-server: required flag(s) "outputs" not set\n'))
        here = os.path.abspath(self.mktemp_dir())
        _, err, code = await self.run_command(IMAGE_SERVER, "cli", here, "--outputs", "bogus")
        self.assertEqual(code, 1)
        self.assertTrue(err.startswith("image-server: --outputs: bogus"), err)

    async def test_bad_flag_is_one_line(self) -> None:
        _, err, code = await self.run_command(IMAGE_SERVER, "server", "--port", "abc")
        self.assertEqual(code, 1)
        self.assertEqual(err, "image-server: --port: expected a whole number, got 'abc'\n")

    async def test_twistd_bad_flag_names_it(self) -> None:
        out, err, code = await self.run_command(TWISTD, "-n", "imageserver", "--maximum_width=-1")
        self.assertNotEqual(code, 0)
        self.assertIn("--maximum_width: must be at least 0", out + err)
        self.assertNotIn("Traceback", out + err)

    async def test_start_up_failures_name_their_flag(self) -> None:
        """One line on stderr, naming the flag to change; nothing logged before it."""
        a_file = os.path.abspath(os.path.join(self.mktemp_dir(), "a-file"))
        with open(a_file, "w") as f:
            f.write("not a directory")
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        self.addCleanup(taken.close)
        port = taken.getsockname()[1]
        for flags, line in [
            (
                ["--local_base_path", a_file],
                f"--local_base_path: cannot use {a_file}: Not a directory",
            ),
            (["--listen", "999.1.1.1"], "--listen 999.1.1.1: cannot listen on 999.1.1.1:"),
            (["--port", str(port)], f"--port {port}: cannot listen on 127.0.0.1:{port}: Address"),
            (
                ["--admin-port", str(port)],
                f"--admin-port {port}: cannot listen on 127.0.0.1:{port}: Address",
            ),
        ]:
            ports = ["--port", str(free_port()), "--admin-port", str(free_port())]
            out, err, code = await self.run_command(IMAGE_SERVER, "server", *ports, *flags)
            self.assertEqual((code, out), (1, ""), err)
            self.assertEqual(len(err.splitlines()), 1, err)
            self.assertTrue(err.startswith(f"image-server: {line}"), err)
        images = os.path.abspath(self.mktemp_dir())
        with open(os.path.join(images, "wine.jpg"), "wb") as f:
            f.write(fixture("wine.jpg"))
        _, err, code = await self.run_command(
            IMAGE_SERVER, "cli", images, "--outputs", "w10.jpg", "--local_base_path", a_file
        )
        self.assertEqual(
            (code, err),
            (1, f"image-server: --local_base_path: cannot use {a_file}: Not a directory\n"),
        )

    async def test_an_unknown_flag_or_command_is_answered_with_the_nearest(self) -> None:
        _, err, code = await self.run_command(IMAGE_SERVER, "server", "--prot", "7430")
        self.assertEqual(
            (code, err), (1, "image-server: option --prot not recognized; did you mean --port?\n")
        )
        out, err, code = await self.run_command(TWISTD, "-n", "imageserver", "--prot", "7430")
        self.assertNotEqual(code, 0)
        self.assertIn("option --prot not recognized; did you mean --port?", out + err)
        _, err, code = await self.run_command(IMAGE_SERVER, "serve")
        self.assertEqual(code, 1)
        self.assertEqual(
            err.splitlines()[0],
            "image-server: unknown command or flag: serve; did you mean server?",
        )

    async def test_help_names_the_command_and_shows_defaults(self) -> None:
        out, _, code = await self.run_command(IMAGE_SERVER, "server", "--help")
        self.assertEqual(code, 0)
        self.assertTrue(out.startswith("Usage: image-server server [options]\n"), out[:200])
        self.assertIn("Port of the main site. [default: 7000]", " ".join(out.split()))
        out, _, code = await self.run_command(IMAGE_SERVER, "sign-url", "--help")
        self.assertEqual(code, 0)
        self.assertIn("[default: 15m]", out)

    async def test_one_ready_line_and_no_errors_on_a_clean_start(self) -> None:
        """Once the workers are up: where the sites listen, how many workers, which store.
        Neither ampoule's settings nor the workers' start-up lines (once at error level)."""
        running = await start_process(
            self, [IMAGE_SERVER, "server"], ["--processor_concurrency", "2"]
        )
        await self.wait_for(lambda: b"listening on" in running.process.output, "the ready line")
        await request("GET", running.url + "/status_check")
        os.kill(running.process.pid, signal.SIGTERM)
        self.assertEqual(await running.process.ended, 0)
        output = running.process.output.decode()
        [ready] = [line for line in output.splitlines() if "listening on" in line]
        self.assertTrue(
            ready.endswith(
                f"[imageserver#info] listening on {running.url} (admin {running.admin_url}),"
                f" 2 workers, store {running.store}"
            ),
            ready,
        )
        for noise in ("#error]", "#critical]", "ProcessPool stats", "Subprocess", "FROM "):
            self.assertNotIn(noise, output)

    async def test_process_answers_an_empty_body_without_a_type(self) -> None:
        """``POST …/process``: 200 and nothing, as the Go server answers (no text/html)."""
        running = await start_process(self, [IMAGE_SERVER, "server"])
        response = await request("POST", running.url + "/p", data=fixture("wine.jpg"))
        directory = partition(response.json()["hash"])
        answer = await request("POST", f"{running.url}/p/{directory}/process?outputs=x10.jpg")
        self.assertEqual((answer.code, answer.body), (200, b""))
        self.assertIsNone(answer.header("Content-Type"))

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
        workers = children(process.pid)
        self.assertTrue(workers)
        os.kill(process.pid, signal.SIGTERM)
        self.assertEqual(await process.ended, 0)
        await self.wait_for(
            lambda: not any(os.path.exists(f"/proc/{pid}") for pid in workers),
            f"workers {workers} to end with the server",
        )

    async def test_json_logs(self) -> None:
        """--log-format json: one JSON object a line, the access line with its fields."""
        running = await start_process(self, [IMAGE_SERVER, "server", "--log-format", "json"])
        await request("GET", running.url + "/status_check?probe=1")
        os.kill(running.process.pid, signal.SIGTERM)
        await running.process.ended
        events = [json.loads(line) for line in running.process.output.decode().splitlines() if line]
        access = [e for e in events if e.get("log_namespace") == "imageserver.access"]
        self.assertIn(
            ("GET", "/status_check", 200),
            [(e["method"], e["path"], e["status"]) for e in access],
        )

    async def test_twistd_json_logs_and_no_pid_file(self) -> None:
        running = await start_process(
            self,
            [
                TWISTD,
                "--nodaemon",
                "--pidfile=",
                "--logger",
                "imageserver.logs.json_stdout",
                "imageserver",
            ],
        )
        await request("GET", running.url + "/status_check")
        os.kill(running.process.pid, signal.SIGTERM)
        await running.process.ended
        events = [json.loads(line) for line in running.process.output.decode().splitlines() if line]
        self.assertIn("imageserver.access", {e.get("log_namespace") for e in events})
        self.assertNotIn("twistd.pid", os.listdir(running.store))

    async def test_twistd_log_file_reopens_on_sigusr1(self) -> None:
        """For logrotate: SIGUSR1 moves the log aside and starts a new one."""
        log_file = os.path.abspath(os.path.join(self.mktemp_dir(), "image-server.log"))
        running = await start_process(
            self, [TWISTD, "--nodaemon", "--pidfile=", "--logfile", log_file, "imageserver"]
        )
        os.kill(running.process.pid, signal.SIGUSR1)
        await self.wait_for(lambda: os.path.exists(log_file + ".1"), "the log to be moved aside")
        await request("GET", running.url + "/status_check?after")

        def logged_after() -> bool:
            with open(log_file) as fresh:
                return "GET /status_check 200" in fresh.read()

        await self.wait_for(logged_after, "the request in the new log")
        os.kill(running.process.pid, signal.SIGTERM)
        await running.process.ended

    async def test_twistd_plugin(self) -> None:
        """``twistd -n imageserver``: serves, writes no pid file unless asked, stops on SIGINT."""
        running = await start_process(self, [TWISTD, "--nodaemon", "imageserver"])
        process, url = running.process, running.url
        self.assertNotIn("twistd.pid", os.listdir(running.store))
        response = await request("GET", url + "/status_check")
        self.assertEqual(response.json(), {"message": "OK"})
        await self.wait_for(lambda: b"] listening on " in process.output, "the ready line")
        os.kill(process.pid, signal.SIGINT)
        # twistd stops cleanly, then ends itself with the signal it was sent.
        self.assertEqual(await process.ended, "SIGINT")

    async def test_in_flight_upload_finishes_during_shutdown(self) -> None:
        """SIGTERM while a client is half-way through an upload: it still gets its 200."""
        running = await start_process(self, [IMAGE_SERVER, "server"])
        process, url = running.process, running.url
        body = fixture("wine.jpg")
        client = await raw_connection(url)
        client.transport.write(
            b"POST /p HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body[:1000]
        )
        spools = os.path.join(running.store, "tmp")
        await self.wait_for(lambda: os.listdir(spools), "the upload's spool file")
        os.kill(process.pid, signal.SIGTERM)
        port = int(url.rsplit(":", 1)[1])

        def refusing() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except ConnectionRefusedError:
                return True
            return False

        await self.wait_for(refusing, "the server to stop listening")
        self.assertFalse(process.ended.called)
        client.transport.write(body[1000:])
        answer = await client.done
        self.assertTrue(answer.startswith(b"HTTP/1.1 200"), answer[:200])
        self.assertIn(b"6e0072682e66287b662827da75b244a3", answer)
        self.assertEqual(await process.ended, 0)
