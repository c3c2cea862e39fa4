"""The installed commands, run as real processes: ``image-server`` and ``twistd imageserver``."""

from __future__ import annotations

import json
import os
import signal
import time
from urllib.parse import parse_qs, urlsplit

from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest

from imageserver.paths import partition
from imageserver.signature import Validator
from tests.processes import IMAGE_SERVER, TWISTD, ServerProcess, children, start_process
from tests.support import fixture, raw_connection, request, sleep


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
        running = await start_process(self, argv)
        return running.process, running.url

    async def test_version(self) -> None:
        out, _, code = await self.run_command(IMAGE_SERVER, "version")
        self.assertEqual(code, 0)
        self.assertEqual(out.splitlines()[0], "images version [0.1.0]")
        self.assertEqual(len(out.splitlines()), 3)

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
                "image-server: invalid TTL duration",
            ),
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
        workers = children(process.pid)
        self.assertTrue(workers)
        os.kill(process.pid, signal.SIGTERM)
        self.assertEqual(await process.ended, 0)
        for _ in range(50):
            if not any(os.path.exists(f"/proc/{pid}") for pid in workers):
                break
            await sleep(0.1)
        else:
            self.fail(f"workers {workers} outlived the server")

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
        for _ in range(50):
            if os.path.exists(log_file + ".1"):
                break
            await sleep(0.1)
        await request("GET", running.url + "/status_check?after")
        await sleep(0.3)
        os.kill(running.process.pid, signal.SIGTERM)
        await running.process.ended
        self.assertTrue(os.path.exists(log_file + ".1"))
        with open(log_file) as fresh:
            self.assertIn("GET /status_check 200", fresh.read())

    async def test_twistd_plugin(self) -> None:
        """``twistd -n imageserver``: serves, writes no pid file unless asked, stops on SIGINT."""
        running = await start_process(self, [TWISTD, "--nodaemon", "imageserver"])
        process, url = running.process, running.url
        self.assertNotIn("twistd.pid", os.listdir(running.store))
        response = await request("GET", url + "/status_check")
        self.assertEqual(response.json(), {"message": "OK"})
        os.kill(process.pid, signal.SIGINT)
        # twistd stops cleanly, then ends itself with the signal it was sent.
        self.assertEqual(await process.ended, "SIGINT")

    async def test_in_flight_upload_finishes_during_shutdown(self) -> None:
        """SIGTERM while a client is half-way through an upload: it still gets its 200."""
        process, url = await self.start([IMAGE_SERVER, "server"])
        body = fixture("wine.jpg")
        client = await raw_connection(url)
        client.transport.write(
            b"POST /p HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body[:1000]
        )
        await sleep(0.3)
        os.kill(process.pid, signal.SIGTERM)
        await sleep(0.5)
        self.assertFalse(process.ended.called)
        client.transport.write(body[1000:])
        answer = await client.done
        self.assertTrue(answer.startswith(b"HTTP/1.1 200"), answer[:200])
        self.assertIn(b"6e0072682e66287b662827da75b244a3", answer)
        self.assertEqual(await process.ended, 0)
