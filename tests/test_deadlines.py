"""
Tests for L{wsrelay.deadlines}: deadlines of one timeout share one timer,
on a L{Clock}.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from wsrelay.deadlines import KEPT_QUEUES, DeadlineQueue, Deadlines


class Calls:
    """
    Records which entries were called, and when.

    @ivar called: C{(name, time)} for each call, in order.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.called: list[tuple[str, float]] = []

    def entry(self, name: str) -> Entry:
        """
        @return: An entry that records its call under C{name}.
        """
        return Entry(self, name)


class Entry:
    """
    A deadline's call, recording itself in L{Calls}.
    """

    def __init__(self, calls: Calls, name: str) -> None:
        self.calls = calls
        self.name = name

    def __call__(self) -> None:
        self.calls.called.append((self.name, self.calls.clock.seconds()))


class DeadlineQueueTests(SynchronousTestCase):
    """
    L{DeadlineQueue} calls each entry at its deadline, exactly, with one
    timer on the clock.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.queue = DeadlineQueue(self.clock, 10.0)
        self.calls = Calls(self.clock)

    def test_order(self) -> None:
        """
        Entries are called in the order they were added, each at its own
        deadline, with one timer pending at a time.
        """
        a, b, c = (self.calls.entry(n) for n in "abc")
        self.queue.add(a)
        self.clock.advance(1)
        self.queue.add(b)
        self.queue.add(c)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(9)
        self.assertEqual(self.calls.called, [("a", 10.0)])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(0.5)
        self.assertEqual(self.calls.called, [("a", 10.0)])
        self.clock.advance(0.5)
        self.assertEqual(self.calls.called, [("a", 10.0), ("b", 11.0), ("c", 11.0)])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.queue), 0)

    def test_cancelHead(self) -> None:
        """
        Cancelling the head leaves the next entry's deadline as it was:
        the timer fires at the old head's time, calls nothing, and waits
        for the next.
        """
        a, b = self.calls.entry("a"), self.calls.entry("b")
        self.queue.add(a)
        self.clock.advance(2)
        self.queue.add(b)
        self.queue.cancel(a)
        self.clock.advance(8)
        self.assertEqual(self.calls.called, [])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(2)
        self.assertEqual(self.calls.called, [("b", 12.0)])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancelMiddle(self) -> None:
        """
        A cancelled entry between others is never called; the others are.
        """
        a, b, c = (self.calls.entry(n) for n in "abc")
        for entry in (a, b, c):
            self.queue.add(entry)
            self.clock.advance(1)
        self.queue.cancel(b)
        self.clock.advance(7)
        self.clock.advance(2)
        self.assertEqual(self.calls.called, [("a", 10.0), ("c", 12.0)])

    def test_cancelUnknown(self) -> None:
        """
        Cancelling what is not pending (never added, or called already)
        changes nothing.
        """
        a, b = self.calls.entry("a"), self.calls.entry("b")
        self.queue.add(a)
        self.queue.cancel(b)
        self.clock.advance(10)
        self.queue.cancel(a)
        self.assertEqual(self.calls.called, [("a", 10.0)])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_boundMethod(self) -> None:
        """
        A bound method is cancelled by another of the same function and
        object, as a protocol does with C{self.timedOut}.
        """

        class Owner:
            fired = False

            def timedOut(self) -> None:
                self.fired = True

        owner = Owner()
        self.queue.add(owner.timedOut)
        self.queue.cancel(owner.timedOut)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(10)
        self.assertFalse(owner.fired)

    def test_addAgain(self) -> None:
        """
        Adding a pending entry again moves its deadline to the end.
        """
        a, b = self.calls.entry("a"), self.calls.entry("b")
        self.queue.add(a)
        self.queue.add(b)
        self.clock.advance(3)
        self.queue.add(a)
        self.clock.advance(7)
        self.assertEqual(self.calls.called, [("b", 10.0)])
        self.clock.advance(3)
        self.assertEqual(self.calls.called, [("b", 10.0), ("a", 13.0)])

    def test_emptyNothingScheduled(self) -> None:
        """
        Once the last entry is cancelled, the timer is too: an idle queue
        leaves nothing on the clock; a new entry starts a new timer.
        """
        a, b = self.calls.entry("a"), self.calls.entry("b")
        self.queue.add(a)
        self.queue.add(b)
        self.queue.cancel(b)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.queue.cancel(a)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(5)
        self.queue.add(a)
        [call] = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime(), 15.0)
        self.clock.advance(10)
        self.assertEqual(self.calls.called, [("a", 15.0)])

    def test_addedWhileExpiring(self) -> None:
        """
        An entry added by an expiring entry's call gets its full timeout,
        behind the entries already pending, whose deadlines stand.
        """
        b, c = self.calls.entry("b"), self.calls.entry("c")

        def a() -> None:
            self.calls.called.append(("a", self.clock.seconds()))
            self.queue.add(c)

        self.queue.add(a)
        self.clock.advance(1)
        self.queue.add(b)
        self.clock.advance(9)
        self.assertEqual(self.calls.called, [("a", 10.0)])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(1)
        self.assertEqual(self.calls.called, [("a", 10.0), ("b", 11.0)])
        self.clock.advance(9)
        self.assertEqual(self.calls.called, [("a", 10.0), ("b", 11.0), ("c", 20.0)])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancelWhileExpiring(self) -> None:
        """
        An expiring entry's call may cancel another entry that expired at
        the same time: that one is not called.  Cancelling the last one
        leaves nothing scheduled.
        """
        b = self.calls.entry("b")

        def a() -> None:
            self.calls.called.append(("a", self.clock.seconds()))
            self.queue.cancel(b)

        self.queue.add(a)
        self.queue.add(b)
        self.clock.advance(10)
        self.assertEqual(self.calls.called, [("a", 10.0)])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_failingCall(self) -> None:
        """
        A call that raises is logged, and the entries after it are still
        called.
        """
        b = self.calls.entry("b")

        def a() -> None:
            raise ZeroDivisionError()

        self.queue.add(a)
        self.queue.add(b)
        self.clock.advance(10)
        self.assertEqual(self.calls.called, [("b", 10.0)])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_many(self) -> None:
        """
        Many entries, most cancelled, added over time: each left is called
        at its deadline, in order, and one timer at most is ever pending.
        """
        entries = [self.calls.entry(str(i)) for i in range(1000)]
        for i, entry in enumerate(entries):
            self.queue.add(entry)
            if i % 7:
                self.queue.cancel(entries[i - 1])
            self.assertLessEqual(len(self.clock.getDelayedCalls()), 1)
            self.clock.advance(0.25)
        while self.clock.getDelayedCalls():
            self.clock.advance(0.25)
        expected = [
            (str(i), i * 0.25 + 10) for i in range(1000) if i == 999 or not (i + 1) % 7
        ]
        self.assertEqual(self.calls.called, expected)


class DeadlinesTests(SynchronousTestCase):
    """
    L{Deadlines} keeps a queue per timeout value.
    """

    def test_manyTimeouts(self) -> None:
        """
        Deadlines of different timeouts each keep their own, whichever
        order they were added in; each queue has its own timer.
        """
        clock = Clock()
        deadlines = Deadlines(clock)
        calls = Calls(clock)
        deadlines.queue(10.0).add(calls.entry("long"))
        deadlines.queue(2.0).add(calls.entry("short"))
        self.assertIs(deadlines.queue(10.0), deadlines.queue(10.0))
        self.assertEqual(len(clock.getDelayedCalls()), 2)
        self.assertEqual(deadlines.pending(), 2)
        clock.advance(2)
        self.assertEqual(calls.called, [("short", 2.0)])
        clock.advance(8)
        self.assertEqual(calls.called, [("short", 2.0), ("long", 10.0)])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_emptyForgotten(self) -> None:
        """
        Past L{KEPT_QUEUES} timeout values, the empty queues are forgotten;
        those with pending entries are kept, and a forgotten queue still
        works for whoever holds it.
        """
        clock = Clock()
        deadlines = Deadlines(clock)
        calls = Calls(clock)
        pending = deadlines.queue(1.0)
        pending.add(calls.entry("kept"))
        held = deadlines.queue(2.0)
        for i in range(KEPT_QUEUES * 3):
            deadlines.queue(100.0 + i)
        self.assertLessEqual(len(deadlines._queues), KEPT_QUEUES)
        self.assertIs(deadlines.queue(1.0), pending)
        held.add(calls.entry("held"))
        clock.advance(1)
        clock.advance(1)
        self.assertEqual(calls.called, [("kept", 1.0), ("held", 2.0)])
