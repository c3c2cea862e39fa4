"""When to try again, for work that talks to another server (uploads to the bucket, webhooks), and
which failures are the network's rather than ours.

The delays grow fourfold from one second, up to a ceiling: 1 s, 4 s, 16 s, 64 s, 256 s, then the
ceiling (300 s for the uploader's background tries) for ever, or for as many retries as the user
allows.  Each delay is then scaled by a random factor between 0.75 and 1.25, so that the files that
failed together when the bucket went away, or the instances behind one load balancer, do not all
come back at the same moment and meet the bucket with a burst.

Twisted's ``backoffPolicy`` adds up to a whole second of jitter whatever the delay, which would
swamp the short delays tests use; this one scales with the delay.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from twisted.internet.defer import TimeoutError
from twisted.internet.error import ConnectError, ConnectionClosed, DNSLookupError
from twisted.web.client import RequestNotSent, RequestTransmissionFailed, ResponseFailed

# How far a delay may stray either side of its step.
JITTER = 0.25

# Failures that say the other server could not be reached, went away or stopped answering mid-way:
# expected, and retried quietly.  Anything else is a bug of ours, whose traceback must be seen.
NETWORK_ERRORS: tuple[type[Exception], ...] = (
    ConnectError,  # refused, no route, TCP timeout...
    DNSLookupError,
    ConnectionClosed,  # lost or closed under us
    ResponseFailed,  # the answer cut off or garbled (ResponseNeverReceived too)
    RequestTransmissionFailed,
    RequestNotSent,
    TimeoutError,  # `Deferred.addTimeout`
)


@dataclass(frozen=True)
class Backoff:
    """Delays before each retry: ``first``, then ``factor`` times the one before, at most
    ``longest``; ``retries`` of them, or without end when None.

    ``draw`` returns a number in [0, 1) that places each delay within its jitter; tests pass a
    constant to make the schedule exact (0.5 gives the steps themselves).
    """

    first: float = 1.0
    factor: float = 4.0
    longest: float = 300.0
    retries: int | None = None
    draw: Callable[[], float] = field(default=random.random, compare=False)

    def delays(self) -> Iterator[float]:
        step = min(self.first, self.longest)
        given = 0
        while self.retries is None or given < self.retries:
            yield step * (1 - JITTER + 2 * JITTER * self.draw())
            step = min(step * self.factor, self.longest)
            given += 1
