"""Every server flag in one table: name, default, environment variable, validation.

`Config` is the table.  `ServerOptions` (for ``twistd imageserver`` and ``image-server server``) is
generated from it, so a flag cannot exist in one and not the other, and the configuration reference
can be generated from the same fields.  Flags take the Go spelling (``--local_base_path``,
``--require-signature``); dashes and underscores are interchangeable, and each flag falls back to
``IMAGE_SERVER_<NAME>`` in the environment.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import urlsplit

from twisted.python import usage

from imageserver.errors import ImageServerError
from imageserver.names import DEFAULT_EXTENSIONS, parse_name, split_outputs
from imageserver.processing.placement import usable_cpus
from imageserver.signature import read_secrets

ENV_PREFIX = "IMAGE_SERVER_"


def _flag(
    default: Any,
    help: str,
    *,
    check: Callable[[Any], str | None] | None = None,
    env: tuple[str, ...] = (),
) -> Any:
    """A flag: its default, help, validation, and environment variables besides our own."""
    return field(default=default, metadata={"help": help, "check": check, "env": env})


def _at_least(minimum: int) -> Callable[[int], str | None]:
    return lambda value: None if value >= minimum else f"must be at least {minimum}"


def _between(low: int, high: int) -> Callable[[int], str | None]:
    return lambda value: None if low <= value <= high else f"must be between {low} and {high}"


def _one_of(*choices: str) -> Callable[[str], str | None]:
    return lambda value: (
        None if value.lower() in choices else f"must be one of {', '.join(choices)}"
    )


@dataclass(frozen=True)
class Config:
    """The server's configuration; field names are the flags' names with dashes as underscores."""

    port: int = _flag(7000, "Port of the main site.", check=_between(0, 65535))
    listen: str = _flag("127.0.0.1", "Address both sites listen on.")
    admin_port: int = _flag(
        7002, "Port of the admin site (probes, metrics, console).", check=_between(0, 65535)
    )
    admin_token: str = _flag(
        "",
        "Token that lets the admin site's console upload and sign URLs (a bearer token, or its"
        " login form); empty: the console only reads.",
    )
    local_base_path: str = _flag("public", "Directory of the local store.")
    extensions: tuple[str, ...] = _flag(
        DEFAULT_EXTENSIONS, "Extensions served on GET, comma separated; empty allows all."
    )
    remote_base_url: str = _flag(
        "", "Public base URL of the stored files (webhooks' remote_url); reads use the S3 API."
    )
    remote_base_path: str = _flag("", "Key prefix in the remote store.")
    uploader: str = _flag(
        "", "Remote store: s3, noop, or empty for S3 exactly when a bucket is given."
    )
    uploader_concurrency: int = _flag(10, "Uploads run at once.", check=_at_least(1))
    max_file_age: int = _flag(30, "Minutes a cached local file is kept (remote store only).")
    aws_access_key_id: str = _flag("", "AWS access key id (else the standard AWS chain).")
    aws_secret_key: str = _flag("", "AWS secret key (with --aws_access_key_id).")
    aws_bucket: str = _flag("", "S3 bucket.", env=("AWS_BUCKET",))
    aws_region: str = _flag("", "S3 region.", env=("AWS_REGION", "AWS_DEFAULT_REGION"))
    s3_endpoint: str = _flag(
        "",
        "S3-compatible endpoint URL (MinIO, R2...); empty for AWS.",
        env=("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
    )
    s3_acl: str = _flag("", "Canned ACL for uploaded objects (e.g. public-read); empty for none.")
    # S3 answers metadata requests in milliseconds and a PUT within a second of its body: seconds
    # of silence mean the bucket is out of reach, and an upload is better answered from the journal.
    s3_timeout: int = _flag(
        5,
        "Seconds an S3 request may go without progress (connecting, sending, waiting for or reading"
        " the answer); a client's upload is then answered from the upload journal.",
        check=_at_least(1),
    )
    maximum_width: int = _flag(
        1000, "Largest width or height of a variant; 0 for no limit.", check=_at_least(0)
    )
    default_quality: int = _flag(
        75, "Quality of variants whose name has no -qN.", check=_between(1, 100)
    )
    max_variants_per_image: int = _flag(
        100,
        "Variants stored for one image before new ones are refused (403); 0 for no limit.",
        check=_at_least(0),
    )
    outputs: tuple[str, ...] = _flag((), "Variants made on upload when the request names none.")
    allowed_variants: tuple[str, ...] = _flag(
        (),
        "Shell patterns over variant names without extension (w200,x100*,300x200-fit): the only"
        " variants unsigned requests may ask for (403 otherwise); empty for all.",
    )
    namespace: str = _flag("", "Namespace (for the cli command).")
    processor_concurrency: int = _flag(
        len(usable_cpus()),
        "Worker processes (default: the number of CPUs the server may use).",
        check=_at_least(1),
    )
    processes: int = _flag(
        0,
        "Main processes sharing --port (SO_REUSEPORT) and the store, the workers split among them"
        " (docs/scaling.md#several-main-processes); 0: one per 8 CPUs.",
        check=_at_least(0),
    )
    pin_workers: bool = _flag(
        True, "Give each worker a CPU of its own when there are as many workers as CPUs, or more."
    )
    max_queue: int = _flag(
        100, "Jobs that may wait for a worker before new ones get 503.", check=_at_least(0)
    )
    processing_timeout: int = _flag(
        60, "Seconds a job may run before its worker is killed.", check=_at_least(1)
    )
    worker_max_jobs: int = _flag(
        5000, "Jobs a worker runs before it is replaced; 0 for never.", check=_at_least(0)
    )
    allow_private_sources: bool = _flag(
        False, "Let ?source= URLs reach loopback, private and other internal addresses."
    )
    http_timeout: int = _flag(5, "Seconds a whole source download may take.", check=_at_least(1))
    max_upload_bytes: int = _flag(
        100 * 1024 * 1024, "Largest upload body or source download.", check=_at_least(1)
    )
    read_timeout: int = _flag(
        60,
        "Seconds a client may stay silent, mid-request or between requests, before it is dropped.",
        check=_at_least(1),
    )
    max_source_pixels: int = _flag(
        100_000_000,
        "Largest source image, in pixels (all frames); 0 for no limit.",
        check=_at_least(0),
    )
    log_format: str = _flag(
        "text", "Log lines as text or json (for log shippers).", check=_one_of("text", "json")
    )
    gomaxprocs: int = _flag(0, "Accepted for compatibility with the Go server; no effect.")
    profile: bool = _flag(
        False,
        "Serve CPU profiles, thread stacks and the heap's top allocations on"
        " 127.0.0.1:--profile-port (docs/profiling.md); traces allocations, which slows the"
        " server.",
    )
    profile_port: int = _flag(
        6060, "Port of the debug site (with --profile), on 127.0.0.1.", check=_between(0, 65535)
    )
    enable_statsd: bool = _flag(False, "Send statsd metrics.")
    statsd_host: str = _flag("127.0.0.1", "statsd host.")
    statsd_port: int = _flag(8125, "statsd port.", check=_between(1, 65535))
    statsd_prefix: str = _flag("image_server.", "Prefix of every statsd name.")
    require_signature: bool = _flag(False, "Require signed URLs for uploads.")
    require_signature_for_reads: bool = _flag(False, "Require signed URLs for reads too.")
    signing_secrets_file: str = _flag("", "File of signing secrets, one a line.")
    signature_max_ttl: int = _flag(60, "Longest signature lifetime, in minutes.")
    webhook_url: str = _flag("", "Webhook endpoint (enables webhooks).")
    webhook_secret: str = _flag("", "Webhook HMAC secret.")
    webhook_timeout: int = _flag(10, "Seconds per webhook attempt.", check=_at_least(0))
    webhook_events: str = _flag("all", "Webhook events to send, comma separated.")
    webhook_retry_for: int = _flag(
        86400,
        "Seconds a webhook event is retried, from when it was made, before it becomes a dead"
        " letter (docs/webhooks.md).",
        check=_at_least(0),
    )
    webhook_retry_max_delay: int = _flag(
        300,
        "Longest wait, in seconds, between two attempts of a webhook event (the waits grow"
        " fourfold from 1 s up to it).",
        check=_at_least(1),
    )
    webhook_outbox_max: int = _flag(
        10000,
        "Webhook events the outbox keeps (and as many dead letters); beyond, the oldest is"
        " dropped.",
        check=_at_least(1),
    )

    # Flags whose Go spelling uses dashes; every other flag is spelled with underscores.
    DASHED: ClassVar[frozenset[str]] = frozenset(
        {
            "admin_port", "allow_private_sources", "log_format", "s3_endpoint", "s3_acl",
            "s3_timeout", "max_queue", "processing_timeout", "worker_max_jobs", "pin_workers",
            "max_upload_bytes", "max_source_pixels", "max_variants_per_image", "require_signature",
            "allowed_variants", "profile_port", "admin_token",
            "require_signature_for_reads", "signing_secrets_file", "signature_max_ttl",
            "webhook_url", "webhook_secret", "webhook_timeout", "webhook_events",
            "webhook_retry_for", "webhook_retry_max_delay", "webhook_outbox_max",
        }
    )  # fmt: skip

    @classmethod
    def flag_name(cls, name: str) -> str:
        return name.replace("_", "-") if name in cls.DASHED else name

    @classmethod
    def env_name(cls, name: str) -> str:
        return ENV_PREFIX + name.upper()

    @property
    def signatures_required(self) -> bool:
        """Asking for signed reads implies signed writes (the Go server would check nothing)."""
        return self.require_signature or self.require_signature_for_reads

    @property
    def effective_uploader(self) -> str:
        """``s3`` or ``noop``: an explicit choice, else S3 exactly when a bucket is given."""
        chosen = self.uploader.lower()
        if chosen in ("s3", "aws"):
            return "s3"
        if chosen == "" and self.aws_bucket:
            return "s3"
        return "noop"


CONFIG_FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def _convert(config_field: dataclasses.Field[Any], raw: str) -> Any:
    """Turn a flag's text into the field's type, or raise `UsageError` naming the flag."""
    flag = "--" + Config.flag_name(config_field.name)
    default = config_field.default
    try:
        value: Any
        if isinstance(default, bool):
            lowered = raw.strip().lower()
            if lowered not in ("1", "true", "yes", "on", "0", "false", "no", "off", ""):
                raise ValueError(raw)
            value = lowered in ("1", "true", "yes", "on", "")
        elif isinstance(default, int):
            value = int(raw)
        elif isinstance(default, tuple):
            value = tuple(split_outputs(raw))
        else:
            value = raw
    except ValueError:
        kind = "true or false" if isinstance(default, bool) else "a whole number"
        raise usage.UsageError(f"{flag}: expected {kind}, got {raw!r}") from None
    check = config_field.metadata["check"]
    problem = check(value) if check else None
    if problem:
        raise usage.UsageError(f"{flag}: {problem}, got {raw!r}")
    return value


def _usage_help(config_field: dataclasses.Field[Any]) -> str:
    """A flag's help for ``--help``, with its default: usage shows none itself, as every option
    defaults to None there (so that the environment can stand in for a flag not given)."""
    default = config_field.default
    if isinstance(default, bool):
        shown = "true" if default else ""
    elif isinstance(default, tuple):
        shown = ",".join(default)
    else:
        shown = str(default)
    help_text: str = config_field.metadata["help"]
    return f"{help_text} [default: {shown}]" if shown else help_text


_UNKNOWN_FLAG = re.compile(r"option --(\S+) not recognized")


class FlagOptions(usage.Options):
    """`usage.Options` that answers a flag it does not know with the nearest one it does."""

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        try:
            super().parseOptions(options)
        except usage.UsageError as error:
            unknown = _UNKNOWN_FLAG.fullmatch(str(error))
            if unknown is None:
                raise
            known = {flag.replace("-", "_"): flag for flag in self.flag_names()}
            nearest = difflib.get_close_matches(unknown[1].replace("-", "_"), known, n=1)
            if not nearest:
                raise
            raise usage.UsageError(f"{error}; did you mean --{known[nearest[0]]}?") from None

    def flag_names(self) -> list[str]:
        """Every long flag, as the user should spell it."""
        return [option.rstrip("=") for option in self.longOpt]


class ServerOptions(FlagOptions):
    """The server's flags, as `twisted.python.usage` options built from `Config`."""

    optParameters: ClassVar[list[list[Any]]] = [
        [name, None, None, _usage_help(f)]
        for name, f in CONFIG_FIELDS.items()
        if not isinstance(f.default, bool)
    ]
    optFlags: ClassVar[list[list[Any]]] = [
        [name, None, _usage_help(f)]
        for name, f in CONFIG_FIELDS.items()
        if isinstance(f.default, bool)
    ]

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.environ = os.environ if environ is None else environ
        self.given: dict[str, str] = {}
        self.config = Config()

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        """Accept ``--a-b``/``--a_b`` and Go-style ``--flag=false`` before handing over to usage."""
        args = list(sys.argv[1:] if options is None else options)
        super().parseOptions(self._normalise(args))

    def flag_names(self) -> list[str]:
        return [Config.flag_name(name) for name in super().flag_names()]

    def _normalise(self, args: list[str]) -> list[str]:
        """Flags with underscores, booleans set aside, and positional arguments last (so that
        ``cli PATH --outputs …`` parses as GNU tools and cobra do)."""
        flags: list[str] = []
        positional: list[str] = []
        expects_value = False
        for arg in args:
            if expects_value or (arg.startswith("-") and not arg.startswith("--")):
                flags.append(arg)
                expects_value = False
                continue
            if not arg.startswith("--") or arg == "--":
                positional.append(arg)
                continue
            name, equals, value = arg[2:].partition("=")
            name = name.replace("-", "_")
            config_field = CONFIG_FIELDS.get(name)
            if config_field is not None and isinstance(config_field.default, bool):
                # Booleans: record the text and let postOptions convert it.
                self.given[name] = value if equals else "true"
                continue
            flags.append(f"--{name}{equals}{value}")
            expects_value = not equals and name not in ("help", "version")
        return flags + positional

    def postOptions(self) -> None:
        values: dict[str, Any] = {}
        for name, config_field in CONFIG_FIELDS.items():
            raw = self.given.get(name)
            if raw is None and not isinstance(config_field.default, bool):
                raw = self.opts.get(name)
            for variable in (Config.env_name(name), *config_field.metadata["env"]):
                if raw is None:
                    raw = self.environ.get(variable)
            if raw is not None:
                values[name] = _convert(config_field, raw)
        self.config = Config(**values)
        _check_outputs(self.config)
        _check_s3(self.config)
        _check_signatures(self.config)
        _check_webhook(self.config)


def _check_outputs(config: Config) -> None:
    """Default outputs must be valid names, or every upload would fail."""
    for name in config.outputs:
        try:
            parse_name(name, config.default_quality, config.maximum_width)
        except ImageServerError as error:
            raise usage.UsageError(f"--outputs: {error.message}") from None


def _check_signatures(config: Config) -> None:
    """A server asked to require signatures must have a secret to check them with."""
    if not config.signatures_required:
        return
    path = config.signing_secrets_file
    if not path:
        raise usage.UsageError("--signing-secrets-file: needed with --require-signature")
    try:
        found = read_secrets(path)
    except OSError as error:
        raise usage.UsageError(f"--signing-secrets-file: {error.strerror}: {path}") from None
    if not found:
        raise usage.UsageError(f"--signing-secrets-file: no secret in {path}")


def _check_webhook(config: Config) -> None:
    if config.webhook_url and urlsplit(config.webhook_url).scheme not in ("http", "https"):
        raise usage.UsageError("--webhook-url: an http:// or https:// URL")


def _check_s3(config: Config) -> None:
    if config.effective_uploader != "s3":
        return
    if not config.aws_bucket:
        raise usage.UsageError("--aws_bucket: the S3 uploader needs a bucket")
    if bool(config.aws_access_key_id) != bool(config.aws_secret_key):
        raise usage.UsageError(
            "--aws_access_key_id: give it with --aws_secret_key, or neither (the AWS chain)"
        )
