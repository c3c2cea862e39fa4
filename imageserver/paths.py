"""Where an image's files live: hash partition, local paths, remote keys (docs/api.md#storage).

Pure string work, shared by the web app, the store and the uploader so that every one of them
agrees with the Go server's layout byte for byte.
"""

from __future__ import annotations

import posixpath
import re
from urllib.parse import urlsplit, urlunsplit

from imageserver.errors import InvalidParameter, NotFound

NAMESPACE = re.compile(r"[a-z0-9_-]+")
HASH = re.compile(r"[a-f0-9]{32}")
PARTITION = re.compile(r"([a-f0-9]{3})/([a-f0-9]{3})/([a-f0-9]{3})/([a-f0-9]{23})")
# The URL path of one of an image's files: ``/{namespace}/{partition}/{name}``.
FILE_PATH = re.compile(
    rf"/(?P<namespace>{NAMESPACE.pattern})/(?P<partition>{PARTITION.pattern})/(?P<name>[^/]+)"
)

# The local store keeps its temporary files here, so no namespace may be called that.
TMP_DIRECTORY = "tmp"
# A namespace is one directory name.
MAX_NAMESPACE_LENGTH = 255


def check_namespace(namespace: str) -> None:
    """Refuse a namespace outside the route grammar (as the Go router does, with "no such route"),
    or one that would collide with the store's ``tmp/``."""
    if not NAMESPACE.fullmatch(namespace):
        raise NotFound("404 page not found")
    if len(namespace) > MAX_NAMESPACE_LENGTH:
        raise InvalidParameter(f"namespaces are at most {MAX_NAMESPACE_LENGTH} characters")
    if namespace == TMP_DIRECTORY:
        raise InvalidParameter(f"invalid namespace: {namespace!r} is reserved")


def partition(image_hash: str) -> str:
    """``6e0072682e66287b662827da75b244a3`` → ``6e0/072/682/e66287b662827da75b244a3``."""
    if not HASH.fullmatch(image_hash):
        raise InvalidParameter(f"invalid image hash: {image_hash!r}")
    return "/".join((image_hash[0:3], image_hash[3:6], image_hash[6:9], image_hash[9:]))


def image_directory(namespace: str, image_hash: str) -> str:
    """The relative directory holding every file of one image."""
    return f"{namespace}/{partition(image_hash)}"


def relative_path(namespace: str, image_hash: str, name: str) -> str:
    return f"{image_directory(namespace, image_hash)}/{name}"


def remote_key(remote_base_path: str, relative: str) -> str:
    """The object key: base and relative path joined and cleaned like Go's ``filepath.Join``."""
    joined = posixpath.join(remote_base_path, relative) if remote_base_path else relative
    return posixpath.normpath(joined)


def remote_url(remote_base_url: str, key: str) -> str:
    """Where a client reads an object: the base URL with its path joined to the key.

    The base's query string is kept and slashes collapse; no base means no URL ("").
    """
    if not remote_base_url:
        return ""
    parts = urlsplit(remote_base_url)
    path = posixpath.normpath(posixpath.join(parts.path or "/", key.lstrip("/")))
    # normpath keeps exactly two leading slashes (POSIX leaves their meaning open): collapse them.
    path = "/" + path.lstrip("/")
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))
