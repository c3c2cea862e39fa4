"""The AMP commands between the server and its workers.

Only paths and small numbers cross the pipe; image bytes never do (AMP values are capped at 64 KiB,
and copying pixels through a pipe would cost more than the work).  Each `ImageServerError` a worker
raises arrives in the server as the same class with the same message.
"""

from __future__ import annotations

from twisted.protocols import amp

from imageserver import errors

# Errors a worker may raise on purpose; anything else arrives as a generic AMP error.
ERRORS: dict[type[Exception], bytes] = {
    errors.UnreadableImage: b"UNREADABLE_IMAGE",
    errors.ImageTooLarge: b"IMAGE_TOO_LARGE",
    errors.ProcessingFailed: b"PROCESSING_FAILED",
    errors.UnsupportedFormat: b"UNSUPPORTED_FORMAT",
    errors.InvalidParameter: b"INVALID_PARAMETER",
}


class Identify(amp.Command):
    """Read an image's upright size and content type from its header."""

    arguments = [(b"path", amp.Unicode()), (b"max_pixels", amp.Integer())]
    response = [
        (b"width", amp.Integer()),
        (b"height", amp.Integer()),
        (b"content_type", amp.Unicode()),
    ]
    errors = ERRORS


class Render(amp.Command):
    """Make a variant of ``source`` in ``temporary``, then rename that to ``destination``."""

    arguments = [
        (b"source", amp.Unicode()),
        (b"temporary", amp.Unicode()),
        (b"destination", amp.Unicode()),
        # The variant's canonical name, read back with `names.parse_name` in the worker.
        (b"name", amp.Unicode()),
        (b"default_quality", amp.Integer()),
        (b"max_pixels", amp.Integer()),
        (b"max_dimension", amp.Integer()),
    ]
    response = [(b"width", amp.Integer()), (b"height", amp.Integer())]
    errors = ERRORS


class Inspect(amp.Command):
    """Read from an image's header whether it has an alpha channel."""

    arguments = [(b"path", amp.Unicode())]
    response = [(b"alpha", amp.Boolean())]
    errors = ERRORS


class Warm(amp.Command):
    """Load libvips in a fresh worker, so the first real job does not pay for it."""


class Stacks(amp.Command):
    """Every thread's current stack in the worker, as `worker.thread_stacks` writes it, for the
    debug site (``--profile``)."""

    response = [(b"stacks", amp.Unicode())]
