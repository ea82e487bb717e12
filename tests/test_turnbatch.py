"""
Tests for L{wsrelay.ws.watching.TurnBatch}: what the relay's transports do
once a reactor turn for all of its connections (their closes, their
upstream connects), on a L{Clock}.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from wsrelay.ws.watching import TurnBatch


class TurnBatchTests(SynchronousTestCase):
    """
    L{TurnBatch} hands what was added in a turn to its function, in order,
    from one timed call.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.ran: list[str] = []
        self.batch: TurnBatch[str] = TurnBatch(self.ran.append, "failed")

    def test_oneTimedCallForTheTurn(self) -> None:
        """
        Items added in one turn wait for the next round of timed calls,
        one C{callLater(0)} for all of them, and are handed over in the
        order added.
        """
        for item in ("a", "b", "c"):
            self.batch.add(self.clock, item)
        self.assertEqual(self.ran, [])
        [call] = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime(), 0)
        self.clock.advance(0)
        self.assertEqual(self.ran, ["a", "b", "c"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_addedMeanwhileWaits(self) -> None:
        """
        An item added while the round runs (by the function) is not handed
        over in that round: it gets a timed call of its own, for the next
        one (which a L{Clock}'s C{advance} runs at once; a reactor, in its
        next turn).
        """
        scheduled: list[int] = []

        def run(item: str) -> None:
            self.ran.append(item)
            if item == "first":
                batch.add(self.clock, "later")
                scheduled.append(len(self.clock.getDelayedCalls()))

        batch: TurnBatch[str] = TurnBatch(run, "failed")
        batch.add(self.clock, "first")
        batch.add(self.clock, "second")
        self.clock.advance(0)
        self.assertEqual(scheduled, [1])
        self.assertEqual(self.ran, ["first", "second", "later"])

    def test_failureLogged(self) -> None:
        """
        A call that raises is logged with the batch's message, and the
        items after it are still handed over.
        """

        def run(item: str) -> None:
            if item == "bad":
                raise ValueError(item)
            self.ran.append(item)

        batch: TurnBatch[str] = TurnBatch(run, "could not run it")
        for item in ("a", "bad", "b"):
            batch.add(self.clock, item)
        self.clock.advance(0)
        self.assertEqual(self.ran, ["a", "b"])
        [failure] = self.flushLoggedErrors(ValueError)
        self.assertEqual(failure.value.args, ("bad",))

    def test_cancelledRoundMadeAgain(self) -> None:
        """
        A round whose timed call was cancelled (as trial's clean-up
        cancels the timed calls a test leaves) is made from a new timed
        call when something is next added, with what it held first.
        """
        self.batch.add(self.clock, "held")
        [call] = self.clock.getDelayedCalls()
        call.cancel()
        self.clock.advance(0)
        self.assertEqual(self.ran, [])
        self.batch.add(self.clock, "next")
        [again] = self.clock.getDelayedCalls()
        self.clock.advance(0)
        self.assertEqual(self.ran, ["held", "next"])
        self.batch.add(self.clock, "after")
        self.clock.advance(0)
        self.assertEqual(self.ran, ["held", "next", "after"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_reactorsApart(self) -> None:
        """
        Each reactor's items are handed over in its own rounds.
        """
        other = Clock()
        self.batch.add(self.clock, "here")
        self.batch.add(other, "there")
        other.advance(0)
        self.assertEqual(self.ran, ["there"])
        self.clock.advance(0)
        self.assertEqual(self.ran, ["there", "here"])
