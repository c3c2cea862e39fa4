"""Starting, serving or stopping: what the probes and ``/status_check`` say."""

from __future__ import annotations

from collections.abc import Callable


class Lifecycle:
    """Ready once ``is_ready()`` holds (the worker pool is up), until shutdown begins."""

    def __init__(self, is_ready: Callable[[], bool]) -> None:
        self._is_ready = is_ready
        self.shutting_down = False

    def health(self) -> tuple[int, str]:
        """Status and message for a health check (SPEC §4.6, with 503 as DECISIONS D17 says)."""
        if self.shutting_down:
            return 503, "Shutting down"
        if not self._is_ready():
            return 503, "Not ready: the image workers are starting, or the bucket is out of reach"
        return 200, "OK"
