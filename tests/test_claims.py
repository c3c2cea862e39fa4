"""Claims: one job for a new variant across main processes, on real files and a test clock."""

from __future__ import annotations

import os
import subprocess
import sys

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import Clock
from twisted.trial import unittest

from imageserver.claims import POLL_SECONDS, Claims


class ClaimTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.directory = os.path.join(self.mktemp(), "claims")
        self.made: list[str] = []
        self.variant = os.path.join(self.mktemp() + "-variant")

    def claims(self, pid: int | None = None) -> Claims:
        """A process's claims; two with different (live) ids stand for two processes."""
        return Claims(self.directory, self.clock, patience=5.0, pid=pid)

    def exists(self) -> bool:
        return os.path.exists(self.variant)

    async def make(self, who: str, finish: Deferred[None] | None = None) -> str:
        self.made.append(who)
        if finish is not None:
            await finish
        with open(self.variant, "w") as variant:
            variant.write(who)
        return who

    def ask(self, claims: Claims, who: str, finish: Deferred[None] | None = None) -> Deferred:
        return ensureDeferred(claims.run("p/x200.jpg", self.exists, lambda: self.make(who, finish)))

    def wait(self, seconds: float) -> None:
        for _ in range(int(seconds / POLL_SECONDS) + 1):
            self.clock.advance(POLL_SECONDS)

    def claim_files(self) -> list[str]:
        return os.listdir(self.directory) if os.path.isdir(self.directory) else []

    def test_the_second_process_waits_for_the_first_ones_file(self) -> None:
        finish: Deferred[None] = Deferred()
        first = self.ask(self.claims(), "first", finish)
        second = self.ask(self.claims(), "second")
        self.wait(1.0)
        self.assertNoResult(second)
        finish.callback(None)
        self.assertEqual(self.successResultOf(first), "first")
        self.wait(POLL_SECONDS)
        self.assertIsNone(self.successResultOf(second))
        self.assertEqual(self.made, ["first"])
        self.assertEqual(self.claim_files(), [])

    def test_a_failed_job_leaves_the_variant_to_the_waiter(self) -> None:
        finish: Deferred[None] = Deferred()
        first = self.ask(self.claims(), "first", finish)
        second = self.ask(self.claims(), "second")
        finish.errback(RuntimeError("the worker crashed"))
        self.failureResultOf(first, RuntimeError)
        self.wait(POLL_SECONDS)
        self.assertEqual(self.successResultOf(second), "second")
        self.assertEqual(self.made, ["first", "second"])

    def test_a_claim_left_by_an_ended_process_is_taken_over(self) -> None:
        ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                               capture_output=True, text=True)  # fmt: skip
        os.makedirs(self.directory)
        claims = self.claims()
        with open(claims._path("p/x200.jpg"), "w") as left:
            left.write(ended.stdout.strip())
        waiter = self.ask(claims, "waiter")
        self.wait(POLL_SECONDS)
        self.assertEqual(self.successResultOf(waiter), "waiter")
        self.assertEqual(self.claim_files(), [])

    def test_a_claim_held_too_long_is_taken_over(self) -> None:
        finish: Deferred[None] = Deferred()
        self.ask(self.claims(), "stuck", finish)
        waiter = self.ask(self.claims(), "waiter")
        self.wait(4.0)
        self.assertNoResult(waiter)
        self.wait(1.1)
        self.assertEqual(self.successResultOf(waiter), "waiter")
        finish.callback(None)

    def test_made_between_the_look_and_the_claim(self) -> None:
        with open(self.variant, "w") as variant:
            variant.write("made elsewhere")
        self.assertIsNone(self.successResultOf(self.ask(self.claims(), "late")))
        self.assertEqual(self.made, [])
        self.assertEqual(self.claim_files(), [])

    def test_a_process_that_was_taken_over_leaves_the_new_claim(self) -> None:
        finish: Deferred[None] = Deferred()
        stuck = self.ask(self.claims(), "stuck", finish)
        taking_over: Deferred[None] = Deferred()
        waiter = self.ask(self.claims(pid=os.getppid()), "waiter", taking_over)
        self.wait(5.1)
        self.assertEqual(self.made, ["stuck", "waiter"])
        finish.callback(None)
        self.successResultOf(stuck)
        self.assertEqual(len(self.claim_files()), 1, "the waiter's claim stays")
        taking_over.callback(None)
        self.successResultOf(waiter)
        self.assertEqual(self.claim_files(), [])
