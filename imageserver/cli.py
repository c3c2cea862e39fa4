"""The ``image-server`` command: ``server`` and ``version`` (DECISIONS D18).

Flags may stand before or after the subcommand, as with the Go binary (the Ruby client's spawner
runs ``image-server --port=7000 --outputs='' server``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from twisted.python import usage

import imageserver
from imageserver.options import CONFIG_FIELDS, ServerOptions

COMMANDS = ("server", "version")
USAGE = f"""Usage: image-server COMMAND [flags]

Commands:
  server    run the image server (flags: image-server server --help)
  version   print the version

Version {imageserver.__version__}.
"""


def version_text() -> str:
    return (
        f"images version [{imageserver.__version__}]\n"
        f"git hash [{imageserver.GIT_HASH}]\n"
        f"build timestamp [{imageserver.BUILD_TIMESTAMP}]\n"
    )


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
    if command is None:
        if rest and rest[0] not in ("-h", "--help"):
            print(f"image-server: unknown command or flag: {rest[0]}", file=sys.stderr)
            print(USAGE, file=sys.stderr)
            return 1
        print(USAGE)
        return 0
    if command == "version":
        print(version_text(), end="")
        return 0
    options = ServerOptions()
    try:
        options.parseOptions(rest)
    except usage.UsageError as error:
        print(f"image-server: {error}", file=sys.stderr)
        return 1
    return run_server(options)


def run_server(options: ServerOptions) -> int:
    """Start the server on the global reactor, log to stdout, stop cleanly on SIGINT/SIGTERM."""
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from imageserver.service import ImageServer

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    server = ImageServer(options.config, reactor)
    try:
        server.startService()
    except Exception as error:
        print(f"image-server: cannot start: {error}", file=sys.stderr)
        return 1
    reactor.addSystemEventTrigger("before", "shutdown", server.stopService)
    reactor.run()
    return 0
