"""The errors that reach a client, each with the HTTP status it is answered with.

Every failure a user can cause is one of these, so the web layer maps them to a JSON body
(docs/api.md#errors) in one place and never shows a traceback.  Messages keep the Go server's
prefixes where clients match on them (the Ruby gem classifies 404 bodies by prefix:
docs/api.md#message-prefixes).
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


class _PrefixedError(ImageServerError):
    """An error whose message always starts with ``prefix``, once.

    The prefixes are the Go server's, which clients match on (the Ruby gem maps "ImageMagick
    failed" to "invalid source") whatever library did the decoding.  A message that already has
    the prefix (one rebuilt from its text after crossing the worker pipe) keeps it as it is.
    """

    prefix = ""

    def __init__(self, detail: str = "") -> None:
        if detail.startswith(self.prefix):
            super().__init__(detail)
        else:
            super().__init__(f"{self.prefix}: {detail}" if detail else self.prefix)


class UnreadableImage(_PrefixedError):
    """Bytes that no allowed loader can decode."""

    status = 404
    code = "unreadable_image"
    prefix = "ImageMagick failed to identify properties"


class ImageTooLarge(ImageServerError):
    """A source whose header declares more pixels than ``--max-source-pixels``."""

    status = 413
    code = "image_too_large"


class ProcessingFailed(_PrefixedError):
    """The image's header was read but the variant could not be made."""

    status = 404
    code = "processing_failed"
    prefix = "ImageMagick failed to process the image"


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

    @classmethod
    def over(cls, limit: int) -> BodyTooLarge:
        return cls(f"the body is over {limit} bytes")


class StorageUnavailable(ImageServerError):
    """A file is not here and the bucket that has it cannot be reached."""

    status = 503
    code = "storage_unavailable"


class Overloaded(ImageServerError):
    """The processing queue is full; the client should retry later."""

    status = 503
    code = "overloaded"


class VariantLimit(ImageServerError):
    """An image already has as many stored variants as ``--max-variants-per-image`` allows."""

    status = 403
    code = "variant_limit"


class VariantNotAllowed(ImageServerError):
    """A variant that ``--allowed-variants`` leaves out, asked for without a signature."""

    status = 403
    code = "variant_not_allowed"
