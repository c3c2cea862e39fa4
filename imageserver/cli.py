"""The ``image-server`` command: ``server``, ``cli``, ``webhooks``, ``generate-secret``,
``sign-url`` and ``version``.

Server flags may stand before or after the subcommand, as with the Go binary (the Ruby client's
spawner runs ``image-server --port=7000 --outputs='' server``).
"""

from __future__ import annotations

import dataclasses
import difflib
import errno
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from twisted.internet.error import CannotListenError
from twisted.python import usage

import imageserver
from imageserver import paths
from imageserver.errors import ImageServerError, InvalidParameter
from imageserver.names import check_servable, parse_name
from imageserver.options import CONFIG_FIELDS, Config, FlagOptions, ServerOptions
from imageserver.outbox import OUTBOX_DIRECTORY, Letter, dead_letters, remove_dead_letter
from imageserver.signature import Signer, generate_secret, parse_duration

# The namespace ``cli`` stores into when --namespace is not given.
DEFAULT_NAMESPACE = "images"
# How long ``cli`` waits for its workers to start.
POOL_START_SECONDS = 60.0

COMMANDS = ("server", "cli", "webhooks", "generate-secret", "sign-url", "version")
USAGE = f"""Usage: image-server COMMAND [flags]

Commands:
  server            run the image server (flags: image-server server --help)
  cli PATH          store an image or a directory of images and make --outputs
  webhooks list     list the webhook dead letters of --local_base_path
  webhooks redeliver [ID...|--all]
                    send dead letters again, now, to --webhook-url
  generate-secret   print new signing secrets (--length, --count)
  sign-url          print a signed URL (--secret, --path, --method, --ttl, --base-url)
  version           print the version

Version {imageserver.__version__}.
"""


# The checkout the package runs from, when it runs from one (an editable install, bin/serve).
CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(imageserver.__file__)))


def version_text(checkout: str = CHECKOUT) -> str:
    """The Go server's three lines: version, git hash and build time."""
    git_hash, timestamp = build_details(checkout)
    return (
        f"images version [{imageserver.__version__}]\n"
        f"git hash [{git_hash}]\n"
        f"build timestamp [{timestamp}]\n"
    )


def build_details(checkout: str) -> tuple[str, str]:
    """The commit the code is at and that commit's time (UTC), read from the checkout when the
    package runs from one; else the Go server's placeholders (a wheel or the Docker image carries
    no history, and git may be absent).

    Only a checkout whose root holds the package counts: a virtualenv inside some other project's
    repository must not report that project's commit.
    """
    unknown = imageserver.GIT_HASH, imageserver.BUILD_TIMESTAMP
    if not os.path.exists(os.path.join(checkout, ".git")):
        return unknown
    try:
        found = subprocess.run(
            ["git", "-C", checkout, "log", "-1", "--format=%H %ct"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        commit, seconds = found.stdout.split()
        when = datetime.fromtimestamp(int(seconds), UTC)
    except (OSError, subprocess.SubprocessError, ValueError):
        return unknown
    return commit, when.strftime("%Y-%m-%dT%H:%M:%SZ")


class GenerateSecretOptions(FlagOptions):
    synopsis = "Usage: image-server generate-secret [options]"
    optParameters = [
        ["length", None, "32", "Random bytes in each secret (at least 16)."],
        ["count", None, "1", "How many secrets."],
    ]

    def postOptions(self) -> None:
        for flag, minimum in (("length", 16), ("count", 1)):
            try:
                self[flag] = int(self[flag])
            except ValueError:
                raise usage.UsageError(f"--{flag}: expected a whole number") from None
            if self[flag] < minimum:
                raise usage.UsageError(f"--{flag}: at least {minimum}")


class SignUrlOptions(FlagOptions):
    synopsis = "Usage: image-server sign-url --secret SECRET --path PATH [options]"
    optParameters = [
        ["secret", None, "", "The signing secret."],
        ["path", None, "", "The path (or path prefix) to sign."],
        ["method", None, "POST", "The HTTP method the URL is for."],
        ["ttl", None, "15m", "How long the URL is valid, as a Go duration (90s, 15m, 1h30m)."],
        ["base-url", None, "", "Put before the path, e.g. https://images.example.com."],
    ]

    def postOptions(self) -> None:
        if not self["secret"]:
            raise usage.UsageError("--secret is required")
        if not self["path"]:
            raise usage.UsageError("--path is required")
        try:
            self["ttl_seconds"] = parse_duration(self["ttl"])
        except ValueError as error:
            raise usage.UsageError(
                f"--ttl: {error}: a number and a unit, as in 90s, 15m or 1h30m"
            ) from None


class ServerCommandOptions(ServerOptions):
    """The server's flags, as ``image-server server`` takes them."""

    synopsis = "Usage: image-server server [options]"


class CliOptions(ServerOptions):
    """The server's flags (store, workers, bucket, outputs) and the path to import."""

    synopsis = "Usage: image-server cli PATH --outputs NAMES [options]"

    def parseArgs(self, path: str | None = None) -> None:
        if path is None:
            raise usage.UsageError("CLI requires the path")
        self["path"] = path

    def postOptions(self) -> None:
        super().postOptions()
        if not self.config.outputs:
            raise usage.UsageError('required flag(s) "outputs" not set')
        if not os.path.exists(self["path"]):
            raise usage.UsageError(f"{self['path']}: no such file or directory")
        if not paths.NAMESPACE.fullmatch(self.namespace):
            raise usage.UsageError("--namespace: lowercase letters, digits, '_' and '-' only")
        try:
            paths.check_namespace(self.namespace)
        except ImageServerError as error:
            raise usage.UsageError(f"--namespace: {error.message}") from None
        try:
            for name in self.config.outputs:
                variant = parse_name(name, self.config.default_quality, self.config.maximum_width)
                check_servable(variant, allowed_extensions=frozenset())
                if variant.output_format is None:
                    raise InvalidParameter(f"{name}: not an image format this server writes")
        except ImageServerError as error:
            raise usage.UsageError(f"--outputs: {error.message}") from None

    @property
    def namespace(self) -> str:
        return self.config.namespace or DEFAULT_NAMESPACE


class WebhooksOptions(ServerOptions):
    """The server's flags (the store, the webhook's URL, secret and timeout), an action and ids."""

    synopsis = "Usage: image-server webhooks list | redeliver [ID...|--all] [options]"

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        """``--all`` is taken out first: the server's flags would read it as taking a value."""
        args = list(sys.argv[1:] if options is None else options)
        self["all"] = "--all" in args
        super().parseOptions([arg for arg in args if arg != "--all"])

    def parseArgs(self, action: str | None = None, *ids: str) -> None:
        if action not in ("list", "redeliver"):
            raise usage.UsageError("webhooks: list, or redeliver [ID...|--all]")
        self["action"], self["ids"] = action, list(ids)

    def postOptions(self) -> None:
        super().postOptions()
        if self["action"] == "list":
            if self["ids"] or self["all"]:
                raise usage.UsageError("webhooks list: takes no ids")
            return
        if bool(self["ids"]) == self["all"]:
            raise usage.UsageError("webhooks redeliver: ids, or --all")
        if not self.config.webhook_url:
            raise usage.UsageError("--webhook-url: needed to redeliver")


def split_command(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """Find the subcommand among the flags; return it and the flags without it."""
    rest: list[str] = []
    command = None
    takes_value = False
    for arg in argv:
        if takes_value:
            takes_value = False
        elif command is None and arg in COMMANDS:
            command = arg
            continue
        elif arg.startswith("--") and "=" not in arg:
            flag = CONFIG_FIELDS.get(arg[2:].replace("-", "_"))
            takes_value = flag is not None and not isinstance(flag.default, bool)
        rest.append(arg)
    return command, rest


def main(argv: Sequence[str] | None = None) -> int:
    command, rest = split_command(sys.argv[1:] if argv is None else argv)
    if "--version" in rest:  # ours, not the Twisted version that `usage.Options` would print
        command = "version"
    if command is None:
        if rest and rest[0] not in ("-h", "--help"):
            nearest = difflib.get_close_matches(rest[0], COMMANDS, n=1)
            hint = f"; did you mean {nearest[0]}?" if nearest else ""
            print(f"image-server: unknown command or flag: {rest[0]}{hint}", file=sys.stderr)
            print(USAGE, file=sys.stderr)
            return 1
        print(USAGE)
        return 0
    if command == "version":
        print(version_text(), end="")
        return 0
    options = {
        "server": ServerCommandOptions,
        "cli": CliOptions,
        "webhooks": WebhooksOptions,
        "generate-secret": GenerateSecretOptions,
        "sign-url": SignUrlOptions,
    }[command]()
    try:
        options.parseOptions(rest)
    except usage.UsageError as error:
        print(f"image-server: {error}", file=sys.stderr)
        return 1
    if isinstance(options, GenerateSecretOptions):
        for _ in range(options["count"]):
            print(generate_secret(options["length"]))
        return 0
    if isinstance(options, SignUrlOptions):
        signer = Signer(options["secret"], options["base-url"])
        print(signer.sign_url(options["method"], options["path"], options["ttl_seconds"]))
        return 0
    if isinstance(options, CliOptions):
        return run_cli(options)
    if isinstance(options, WebhooksOptions):
        return run_webhooks(options)
    assert isinstance(options, ServerOptions)
    return run_server(options)


def run_server(options: ServerOptions) -> int:
    """Start the server on the global reactor, log to stdout, stop cleanly on SIGINT/SIGTERM.

    Logging begins once the start has succeeded (Twisted keeps what was logged until then): a
    start that fails says why in one line, without first saying that the sites are starting.
    """
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner

    from imageserver import logs
    from imageserver.service import ImageServer

    server = ImageServer(options.config, reactor)
    try:
        server.startService()
    except usage.UsageError as error:  # a flag's value that only starting could try
        print(f"image-server: {error}", file=sys.stderr)
        return 1
    except CannotListenError as error:
        print(f"image-server: {_listen_problem(error, options.config)}", file=sys.stderr)
        return 1
    except Exception as error:  # one line, not a traceback, for a failed start
        print(f"image-server: cannot start: {error}", file=sys.stderr)
        return 1
    json_lines = options.config.log_format == "json"
    globalLogBeginner.beginLoggingTo([logs.json_stdout() if json_lines else logs.text_stdout()])
    reactor.addSystemEventTrigger("before", "shutdown", server.stopService)
    reactor.run()
    return 0


def _listen_problem(error: CannotListenError, config: Config) -> str:
    """A site that could not listen, in one line naming the flag to change: the port's when it
    is taken or privileged, else ``--listen`` (not an address, or not one of this machine's)."""
    reason = getattr(error.socketError, "strerror", None) or str(error.socketError)
    where = f"{error.interface or '*'}:{error.port}"
    if getattr(error.socketError, "errno", None) in (errno.EADDRINUSE, errno.EACCES):
        # With both flags the same, the main site binds first and the admin site fails.
        main = error.port == config.port and config.port != config.admin_port
        flag = "--port" if main else "--admin-port"
        return f"{flag} {error.port}: cannot listen on {where}: {reason}"
    return f"--listen {config.listen}: cannot listen on {where}: {reason}"


def run_cli(options: CliOptions) -> int:
    """Import the path through an engine (store, workers, bucket); print a line per image."""
    return _react(lambda reactor: _import(reactor, options, sys.stdout, sys.stderr))


def _react(main: Callable[[Any], Awaitable[int]]) -> int:
    """Run ``main(reactor)`` under a reactor of its own; its result is the exit status (1 when
    it failed, or the reactor stopped first)."""
    from twisted.internet import task
    from twisted.internet.defer import ensureDeferred

    exit_code: list[int] = []

    async def run(reactor: Any) -> None:
        exit_code.append(await main(reactor))

    try:
        task.react(lambda reactor: ensureDeferred(run(reactor)))
    except SystemExit as done:
        if done.code:
            return int(done.code)
    return exit_code[0] if exit_code else 1


async def _import(reactor: Any, options: CliOptions, out: TextIO, err: TextIO) -> int:
    from twisted.internet.defer import TimeoutError

    from imageserver import bulk
    from imageserver.service import Engine

    # Every output of every file may wait for a worker: a command has no one to answer 503 to.
    config = dataclasses.replace(options.config, max_queue=2**31)
    files = bulk.find_files(options["path"])
    if not files:
        err.write(f"warning: nothing to import in {options['path']}\n")
        return 0
    engine = Engine(config, reactor)
    try:
        engine.startService()
    except usage.UsageError as error:
        err.write(f"image-server: {error}\n")
        return 1
    try:
        try:
            await engine.pool.when_ready().addTimeout(POOL_START_SECONDS, reactor)
        except TimeoutError:
            err.write("image-server: the image workers did not start\n")
            return 1
        done = 0
        show = err.isatty()

        def progress(outcome: bulk.Outcome) -> None:
            nonlocal done
            done += 1
            if show:
                err.write(f"\r{done}/{len(files)} {outcome.path}\x1b[K")
                err.flush()

        outcomes = await bulk.store_all(
            engine.images,
            files,
            options.namespace,
            config.outputs,
            config.processor_concurrency,
            progress,
        )
        pending = engine.uploads.pending
    finally:
        await engine.stopService()
    if show:
        err.write("\n")
    for outcome in outcomes:
        if outcome.details is not None:
            out.write(outcome.line() + "\n")
        elif outcome.skipped:
            err.write(f"warning: skipped {outcome.path}: {outcome.error}\n")
    failures = [outcome for outcome in outcomes if outcome.error and not outcome.skipped]
    for failure in failures:
        err.write(f"failed: {failure.path}: {failure.error}\n")
    if pending:
        err.write(
            f"failed: {pending} files are not in the bucket yet; they wait in the upload journal"
            " and are retried by the next server or cli run on this store\n"
        )
    return 1 if failures or pending else 0


def run_webhooks(options: WebhooksOptions) -> int:
    """List the dead letters, or send some again: each once, now, from this process.

    Sending from here rather than handing them back to a running server works whether a server
    runs or not, and answers at once which were accepted.  A dead letter is removed once its
    receiver answers a 2xx; one that fails again stays, and the exit status is 1.
    """
    directory = os.path.join(os.path.abspath(options.config.local_base_path), OUTBOX_DIRECTORY)
    letters = dead_letters(directory)
    if options["action"] == "list":
        for letter in letters:
            sys.stdout.write(_dead_letter_line(letter) + "\n")
        return 0
    chosen = letters
    unknown: list[str] = []
    if not options["all"]:
        by_id = {letter.id: letter for letter in letters}
        chosen = [by_id[i] for i in dict.fromkeys(options["ids"]) if i in by_id]
        unknown = [i for i in options["ids"] if i not in by_id]
    for letter_id in unknown:
        sys.stderr.write(f"{letter_id}\tno such dead letter\n")

    async def redeliver(reactor: Any) -> int:
        failed = await _redeliver(reactor, options.config, directory, chosen, sys.stdout)
        return 1 if failed or unknown else 0

    return _react(redeliver)


def _dead_letter_line(letter: Letter) -> str:
    """``id, event, made at, attempts, last error``, tab-separated."""
    made = datetime.fromtimestamp(letter.created, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{letter.id}\t{letter.event}\t{made}\t{letter.attempts}\t{letter.last_error}"


async def _redeliver(
    reactor: Any, config: Config, directory: str, letters: Sequence[Letter], out: TextIO
) -> int:
    """Send each letter once, one after the other; print its outcome; how many failed."""
    from treq.client import HTTPClient
    from twisted.web.client import Agent, HTTPConnectionPool

    from imageserver.backoff import NETWORK_ERRORS
    from imageserver.webhooks import post

    pool = HTTPConnectionPool(reactor, persistent=False)
    http = HTTPClient(Agent(reactor, pool=pool))
    url = config.webhook_url.encode()
    failed = 0
    for letter in letters:
        try:
            outcome = await post(
                http, url, config.webhook_secret, letter, config.webhook_timeout or 10.0, reactor
            )
        except NETWORK_ERRORS as error:
            outcome = f"{type(error).__name__}: {error}"
        if outcome is None:
            remove_dead_letter(directory, letter.id)
            out.write(f"{letter.id}\tdelivered\n")
        else:
            failed += 1
            out.write(f"{letter.id}\tfailed: {outcome}\n")
    return failed
