"""One job for many identical concurrent requests (docs/api.md#processing)."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python.failure import Failure

T = TypeVar("T")


def shielded(work: Deferred[T]) -> Deferred[T]:
    """A Deferred of the caller's own for ``work``: cancelling it (a client that went away) leaves
    the work running to its end."""
    mine: Deferred[T] = Deferred()
    work.chainDeferred(mine)
    return mine


class Coalescer(Generic[T]):
    """Runs ``start()`` once per key while a job for that key is in flight.

    Every caller gets its own Deferred with the shared result (or failure), so one caller's
    callbacks or cancellation never touch another's.  The key is forgotten when the job ends, so a
    failed job can be retried by the next request.
    """

    def __init__(self) -> None:
        self._waiting: dict[Hashable, list[Deferred[T]]] = {}

    def run(self, key: Hashable, start: Callable[[], Deferred[T]]) -> tuple[Deferred[T], bool]:
        """Return a Deferred for the key's result, and whether this call started the job."""
        mine: Deferred[T] = Deferred()
        if key in self._waiting:
            self._waiting[key].append(mine)
            return mine, False
        self._waiting[key] = [mine]
        job = maybeDeferred(start)  # a start() that raises still releases the key
        job.addBoth(self._finished, key)
        return mine, True

    def _finished(self, result: T | Failure, key: Hashable) -> None:
        for waiter in self._waiting.pop(key):
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)
