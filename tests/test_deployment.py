"""Deployment files: the container entrypoint, the systemd unit, the generated reference."""

from __future__ import annotations

import os
import shutil
import subprocess

from twisted.trial import unittest

from imageserver import reference
from tests.processes import BIN

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class EntrypointTests(unittest.SynchronousTestCase):
    """No container runtime here: the entrypoint runs with a command that prints its arguments."""

    def run_entrypoint(self, **environment: str) -> list[str]:
        env = {"PATH": os.environ["PATH"], "IMAGE_SERVER_BIN": "printf %s\\n", **environment}
        output = subprocess.run(
            [os.path.join(ROOT, "bin", "docker-entrypoint"), "--port", "7100"],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        return output.splitlines()

    def test_defaults_of_the_go_image(self) -> None:
        self.assertEqual(
            self.run_entrypoint(),
            [
                "server",
                "--local_base_path", "public",
                "--uploader", "aws",
                "--aws_bucket", "image-server",
                "--aws_region", "us-east-1",
                "--listen", "0.0.0.0",
                "--remote_base_url", "https://s3-us-east-1.amazonaws.com/image-server",
                "--extensions", "",
                "--port", "7100",
            ],
        )  # fmt: skip

    def test_variables(self) -> None:
        arguments = self.run_entrypoint(
            LOCAL_BASE_PATH="/data",
            UPLOADER="noop",
            AWS_S3_BUCKET="b",
            AWS_REGION="eu-west-1",
            SERVER_LISTEN="127.0.0.1",
            ALLOWED_EXTENSIONS="jpg,webp",
            CUSTOM_FLAGS="--maximum_width 2000 --default_quality 80",
        )
        self.assertEqual(arguments[arguments.index("--local_base_path") + 1], "/data")
        self.assertEqual(arguments[arguments.index("--remote_base_url") + 1], "")
        self.assertEqual(arguments[arguments.index("--extensions") + 1], "jpg,webp")
        self.assertEqual(
            arguments[-6:], ["--maximum_width", "2000", "--default_quality", "80", "--port", "7100"]
        )

    def test_the_produced_command_line_parses(self) -> None:
        from imageserver.options import ServerOptions

        arguments = self.run_entrypoint(UPLOADER="noop")
        options = ServerOptions({})
        options.parseOptions(arguments[1:])
        self.assertEqual((options.config.listen, options.config.extensions), ("0.0.0.0", ()))


class SystemdTests(unittest.SynchronousTestCase):
    def test_unit_verifies(self) -> None:
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            self.skipTest("systemd-analyze is not installed here")  # pragma: no cover
        with open(os.path.join(ROOT, "contrib", "systemd", "image-server.service")) as unit:
            text = unit.read()
        for needed in (
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "PrivateTmp=yes",
            "ReadWritePaths=/var/lib/image-server",
            "Restart=on-failure",
            "EnvironmentFile=",
            "User=image-server",
            "--nodaemon",
        ):
            self.assertIn(needed, text)
        # Verify a copy whose command is this checkout's twistd (the unit's path is an install's).
        copy = os.path.join(os.path.abspath(self.mktemp()), "image-server.service")
        os.makedirs(os.path.dirname(copy))
        with open(copy, "w") as unit:
            unit.write(
                text.replace("/opt/image-server/venv/bin/twistd", os.path.join(BIN, "twistd"))
            )
        result = subprocess.run([analyze, "verify", copy], capture_output=True, text=True)
        problems = [
            line for line in result.stderr.splitlines()
            if "image-server.service" in line and "User" not in line and "Group" not in line
        ]  # fmt: skip
        self.assertEqual(problems, [], result.stderr)
        self.assertEqual(result.returncode, 0, result.stderr)


class ReferenceTests(unittest.SynchronousTestCase):
    def test_configuration_reference_is_up_to_date(self) -> None:
        with open(os.path.join(ROOT, "docs", "configuration.md")) as page:
            self.assertEqual(
                page.read(),
                reference.render(),
                "run: python -m imageserver.reference > docs/configuration.md",
            )
