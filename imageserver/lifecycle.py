"""Starting, serving or stopping: what the probes and ``/status_check`` say."""

from __future__ import annotations

from collections.abc import Callable


class Lifecycle:
    """Ready once ``is_ready()`` holds (the worker pool is up), until shutdown begins.

    Readiness is the instance's own state only.  The bucket is shared: were it part of readiness,
    every instance on it would leave the load balancer at the same moment when it is out of reach,
    though each can still serve its cached files and take uploads into its journal.  Its state,
    ``bucket()``, is reported beside readiness instead.
    """

    def __init__(
        self, is_ready: Callable[[], bool], bucket: Callable[[], str] | None = None
    ) -> None:
        self._is_ready = is_ready
        self._bucket = bucket
        self.shutting_down = False

    def health(self) -> tuple[int, str]:
        """Status and message for a health check (docs/api.md#health)."""
        if self.shutting_down:
            return 503, "Shutting down"
        if not self._is_ready():
            return 503, "Not ready: the image workers are starting"
        return 200, "OK"

    def readiness(self) -> tuple[int, dict[str, str]]:
        """Status and body of the readiness probe: `health`, and the bucket's state if there is
        one (``reachable``, ``unreachable: <why>``, or ``unchecked`` before the first check)."""
        status, message = self.health()
        body: dict[str, str] = {"message": message}
        if self._bucket is not None:
            body["bucket"] = self._bucket()
        return status, body
