"""The errors that reach a client, each with the HTTP status it is answered with.

Every failure a user can cause is one of these, so the web layer maps them to a JSON body (DECISIONS
D2) in one place and never shows a traceback.  Messages keep the Go server's prefixes where clients
match on them (the Ruby gem classifies 404 bodies by prefix, SPEC §16).
"""

from __future__ import annotations


class ImageServerError(Exception):
    """A failure that is answered with ``status`` and ``{"error": message}``."""

    status = 500
    code = "internal_error"

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.code


class NotFound(ImageServerError):
    """An image, file or route that does not exist."""

    status = 404
    code = "not_found"


class SourceUnavailable(ImageServerError):
    """A source URL or remote original that could not be downloaded."""

    status = 404
    code = "source_unavailable"


class EmptyFile(ImageServerError):
    """A body or download of fewer than 10 bytes (the Go server's threshold)."""

    status = 404
    code = "empty_file"

    def __init__(self, message: str = "File is empty") -> None:
        super().__init__(message)


class UnreadableImage(ImageServerError):
    """Bytes that no allowed loader can decode.

    The message keeps Go's ``ImageMagick failed to identify properties``: clients map that prefix to
    "invalid source", whatever library did the decoding.
    """

    status = 404
    code = "unreadable_image"

    def __init__(self, detail: str = "") -> None:
        message = "ImageMagick failed to identify properties"
        super().__init__(f"{message}: {detail}" if detail else message)


class ImageTooLarge(ImageServerError):
    """A source whose header declares more pixels than ``--max-source-pixels``."""

    status = 413
    code = "image_too_large"


class ProcessingFailed(ImageServerError):
    """The image decoded but the variant could not be made."""

    status = 404
    code = "processing_failed"


class InvalidParameter(ImageServerError):
    """A malformed variant name or a value outside its allowed range."""

    status = 400
    code = "invalid_parameter"


class UnsupportedFormat(InvalidParameter):
    """An output format this installation cannot write (HEIC without the ``heic`` extra)."""

    code = "unsupported_format"


class BodyTooLarge(ImageServerError):
    """An upload over ``--max-upload-bytes``."""

    status = 413
    code = "body_too_large"


class Overloaded(ImageServerError):
    """The processing queue is full; the client should retry later."""

    status = 503
    code = "overloaded"
