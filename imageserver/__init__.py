"""A self-hosted image server: uploads by content hash, variants on demand, Twisted and libvips."""

__version__ = "0.1.0"

# Filled in by release builds; the Go server prints these defaults when they are not.
GIT_HASH = "GitHash is not defined"
BUILD_TIMESTAMP = "BuildTimestamp is not defined"
