"""Flags, environment fallbacks, validation and the subcommand split."""

from __future__ import annotations

import os
import shutil
import subprocess

from twisted.python.usage import UsageError
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from imageserver.cli import CHECKOUT, split_command, version_text
from imageserver.info import ImageDetails
from imageserver.options import CONFIG_FIELDS, Config, ServerOptions


def parse(args: list[str], environ: dict[str, str] | None = None) -> Config:
    options = ServerOptions(environ or {})
    options.parseOptions(args)
    return options.config


class OptionTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        config = parse([])
        self.assertEqual((config.port, config.listen, config.admin_port), (7000, "127.0.0.1", 7002))
        self.assertEqual(
            config.extensions, ("jpg", "jpeg", "png", "gif", "webp", "avif", "heic", "auto")
        )
        self.assertEqual((config.maximum_width, config.default_quality), (1000, 75))
        self.assertEqual(config.effective_uploader, "noop")

    def test_both_spellings(self) -> None:
        config = parse(["--local-base-path", "a", "--max_upload_bytes=5", "--admin_port", "9"])
        self.assertEqual((config.local_base_path, config.max_upload_bytes), ("a", 5))
        self.assertEqual(config.admin_port, 9)

    def test_go_style_booleans(self) -> None:
        self.assertTrue(parse(["--enable_statsd"]).enable_statsd)
        self.assertFalse(parse(["--enable_statsd=false"]).enable_statsd)
        self.assertFalse(
            parse(["--enable_statsd=false"], {"IMAGE_SERVER_ENABLE_STATSD": "true"}).enable_statsd
        )

    def test_environment_fallback(self) -> None:
        environ = {"IMAGE_SERVER_PORT": "7100", "IMAGE_SERVER_EXTENSIONS": "jpg,png"}
        config = parse([], environ)
        self.assertEqual((config.port, config.extensions), (7100, ("jpg", "png")))
        self.assertEqual(parse(["--port", "7200"], environ).port, 7200)
        self.assertEqual(parse(["--extensions="], environ).extensions, ())

    def test_bad_values_name_the_flag(self) -> None:
        cases = {
            ("--port", "abc"): "--port: expected a whole number, got 'abc'",
            ("--port", "70000"): "--port: must be between 0 and 65535, got '70000'",
            ("--default_quality", "0"): "--default_quality: must be between 1 and 100",
            ("--enable_statsd=maybe",): "--enable_statsd: expected true or false",
            ("--processor_concurrency", "0"): "--processor_concurrency: must be at least 1",
        }
        for args, message in cases.items():
            error = self.assertRaises(UsageError, parse, list(args))
            self.assertTrue(str(error).startswith(message), str(error))
        error = self.assertRaises(UsageError, parse, [], {"IMAGE_SERVER_PORT": "x"})
        self.assertIn("--port", str(error))

    def test_an_unknown_flag_is_answered_with_the_nearest(self) -> None:
        for args, message in [
            (["--prot", "7430"], "option --prot not recognized; did you mean --port?"),
            (["--max-qeue=5"], "option --max_qeue not recognized; did you mean --max-queue?"),
            (["--local_base_pth", "x"], "did you mean --local_base_path?"),
            (["--enabel-statsd"], "did you mean --enable_statsd?"),
            (["--frobnicate", "1"], "option --frobnicate not recognized"),
        ]:
            error = self.assertRaises(UsageError, parse, args)
            self.assertTrue(str(error).endswith(message), str(error))

    def test_help_shows_defaults(self) -> None:
        text = str(ServerOptions({}))
        for line in [
            "Port of the main site. [default: 7000]",
            "Directory of the local store. [default: public]",
            "[default: jpg,jpeg,png,gif,webp,avif,heic,auto]",
        ]:
            self.assertIn(line, " ".join(text.split()))
        self.assertNotIn("[default: ]", text)

    def test_default_outputs_are_checked_at_start(self) -> None:
        error = self.assertRaises(UsageError, parse, ["--outputs", "w100.jpg,w0.jpg"])
        self.assertEqual(str(error), "--outputs: w0.jpg: sizes start at 1 pixel")
        self.assertEqual(
            parse(["--outputs", "w100.jpg,x50.webp"]).outputs, ("w100.jpg", "x50.webp")
        )

    def test_every_go_flag_is_accepted(self) -> None:
        """The Go server's flags, Manta aside."""
        go_flags = [
            "port",
            "listen",
            "local_base_path",
            "extensions",
            "remote_base_url",
            "remote_base_path",
            "uploader",
            "max_file_age",
            "aws_access_key_id",
            "aws_secret_key",
            "aws_bucket",
            "aws_region",
            "maximum_width",
            "default_quality",
            "outputs",
            "namespace",
            "uploader_concurrency",
            "processor_concurrency",
            "http_timeout",
            "gomaxprocs",
            "enable_statsd",
            "statsd_host",
            "statsd_port",
            "statsd_prefix",
            "profile",
            "require-signature",
            "require-signature-for-reads",
            "signing-secrets-file",
            "signature-max-ttl",
            "webhook-url",
            "webhook-secret",
            "webhook-timeout",
            "webhook-events",
        ]
        for flag in go_flags:
            self.assertIn(flag.replace("-", "_"), CONFIG_FIELDS)
            self.assertEqual(Config.flag_name(flag.replace("-", "_")), flag)

    def test_uploader_choice(self) -> None:
        self.assertEqual(Config(uploader="AWS", aws_bucket="b").effective_uploader, "s3")
        self.assertEqual(Config(aws_bucket="b").effective_uploader, "s3")
        self.assertEqual(Config(aws_access_key_id="k").effective_uploader, "noop")
        self.assertEqual(Config(uploader="noop", aws_bucket="b").effective_uploader, "noop")

    def test_s3_settings_are_checked(self) -> None:
        for args, message in [
            (["--uploader", "s3"], "--aws_bucket: the S3 uploader needs a bucket"),
            (["--aws_bucket", "b", "--aws_access_key_id", "k"], "--aws_access_key_id: give it"),
        ]:
            error = self.assertRaises(UsageError, parse, args)
            self.assertTrue(str(error).startswith(message), str(error))

    def test_aws_environment_variables(self) -> None:
        config = parse(
            ["--aws_bucket", "b"],
            {"AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9000", "AWS_REGION": "eu-west-1"},
        )
        self.assertEqual(
            (config.s3_endpoint, config.aws_region), ("http://127.0.0.1:9000", "eu-west-1")
        )
        both = {"IMAGE_SERVER_S3_ENDPOINT": "http://a", "AWS_ENDPOINT_URL_S3": "http://b"}
        self.assertEqual(parse([], both).s3_endpoint, "http://a")

    def test_s3_timeout(self) -> None:
        """Seconds, a few by default; both spellings and the environment; never 0 (no bound)."""
        self.assertEqual(parse([]).s3_timeout, 5)
        self.assertEqual(Config.flag_name("s3_timeout"), "s3-timeout")
        self.assertEqual(parse(["--s3_timeout", "2"]).s3_timeout, 2)
        self.assertEqual(parse([], {"IMAGE_SERVER_S3_TIMEOUT": "30"}).s3_timeout, 30)
        error = self.assertRaises(UsageError, parse, ["--s3-timeout", "0"])
        self.assertEqual(str(error), "--s3-timeout: must be at least 1, got '0'")

    def test_signatures_need_a_secret(self) -> None:
        """A server asked for signatures must not run without a secret to check them with."""
        empty = self.mktemp()
        with open(empty, "w") as f:
            f.write("# nothing yet\n\n")
        for args, message in [
            (["--require-signature"], "--signing-secrets-file: needed with --require-signature"),
            (["--require-signature-for-reads=true"], "--signing-secrets-file: needed"),
            (
                ["--require-signature", "--signing-secrets-file", empty],
                "--signing-secrets-file: no secret in",
            ),
            (
                ["--require-signature", "--signing-secrets-file", "/nonexistent"],
                "--signing-secrets-file: No such file",
            ),
        ]:
            error = self.assertRaises(UsageError, parse, args)
            self.assertTrue(str(error).startswith(message), str(error))
        self.assertTrue(Config(require_signature_for_reads=True).signatures_required)

    def test_a_secret_that_is_not_utf8_is_accepted_as_the_server_reads_it(self) -> None:
        secrets = self.mktemp()
        with open(secrets, "wb") as f:
            f.write(b"caf\xe9-secret\n")
        config = parse(["--require-signature", "--signing-secrets-file", secrets])
        self.assertEqual(config.signing_secrets_file, secrets)


class CommandLineTests(SynchronousTestCase):
    def test_flags_on_either_side(self) -> None:
        self.assertEqual(
            split_command(["--port=7000", "--outputs", "", "server", "--listen", "0.0.0.0"]),
            ("server", ["--port=7000", "--outputs", "", "--listen", "0.0.0.0"]),
        )
        self.assertEqual(
            split_command(["--namespace", "server", "version"]),
            ("version", ["--namespace", "server"]),
        )
        self.assertEqual(
            split_command(["--enable_statsd", "server"]), ("server", ["--enable_statsd"])
        )
        self.assertEqual(split_command([]), (None, []))

    def test_main_without_a_server(self) -> None:
        """What ``image-server`` prints and returns for everything but a running server."""
        import contextlib
        import io

        from imageserver.cli import main

        for argv, code, stream, text in [
            (["version"], 0, "out", "images version [0.1.0]"),
            (["--version"], 0, "out", "images version [0.1.0]"),
            (["server", "--version"], 0, "out", "images version [0.1.0]"),
            (["serve"], 1, "err", "unknown command or flag: serve; did you mean server?"),
            ([], 0, "out", "Usage: image-server COMMAND"),
            (["--help"], 0, "out", "Usage: image-server COMMAND"),
            (["nonsense"], 1, "err", "unknown command or flag: nonsense"),
            (["server", "--port", "x"], 1, "err", "--port: expected a whole number"),
        ]:
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                self.assertEqual(main(argv), code, argv)
            self.assertIn(text, (out if stream == "out" else err).getvalue(), argv)

    def test_version_outside_a_checkout(self) -> None:
        """The Go server's placeholders when there is no history to read."""
        self.assertEqual(
            version_text(self.mktemp()),
            "images version [0.1.0]\ngit hash [GitHash is not defined]\n"
            "build timestamp [BuildTimestamp is not defined]\n",
        )

    def test_version_of_a_checkout(self) -> None:
        if not os.path.exists(os.path.join(CHECKOUT, ".git")) or shutil.which("git") is None:
            raise SkipTest("not run from a git checkout")
        head = subprocess.run(
            ["git", "-C", CHECKOUT, "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        lines = version_text().splitlines()
        self.assertEqual(lines[1], f"git hash [{head}]")
        self.assertRegex(lines[2], r"^build timestamp \[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\]$")


class InfoTests(SynchronousTestCase):
    def test_go_vector(self) -> None:
        details = ImageDetails("THISISAHASH", 10, 20, "image/jpeg")
        self.assertEqual(
            details.to_info_json(),
            b'{"hash":"THISISAHASH","height":10,"width":20,"content_type":"image/jpeg"}',
        )
        self.assertEqual(ImageDetails.from_info_json(details.to_info_json()), details)
