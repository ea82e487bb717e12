# -*- test-case-name: tests.test_deadlines -*-
"""
Deadlines that share one timer: L{Deadlines}, a queue per timeout value.

Every connection of the relay starts a timer or two that almost never
fires: the client's handshake timer (L{wsrelay.ws.frontend}), the connect
timer of each upstream attempt (L{wsrelay.ws.connecting}), and as a
passthrough session closes, its C{close_timeout}
(L{wsrelay.proxy.pipe.closeQueue}).  With
C{callLater}, each is a L{DelayedCall} pushed on the reactor's heap, then
cancelled, and the reactor rebuilds its heap from time to time to drop the
cancelled ones (issue 16's storm: some 4 µs a timer).

All deadlines of one kind have the same timeout (the C{handshake_timeout}
in force, the C{connect_timeout}), so deadlines added in order expire in
order: a L{DeadlineQueue} keeps them in an insertion-ordered C{dict} and
needs one L{DelayedCall}, for its oldest entry.  Adding is a C{dict}
store, cancelling a C{dict} delete; when the call fires it runs every
expired entry from the head and schedules itself for the next.  Deadlines
stay exact (to the clock's resolution), and everything runs on the clock
given, so tests keep L{twisted.internet.task.Clock}.

A cancelled head does not move the timer: it fires at the old head's time,
finds the new head not due and schedules itself for it (one spurious run,
at most one per timeout).  When the last entry goes, the timer is
cancelled: an idle queue leaves nothing on the reactor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.logger import Logger

if TYPE_CHECKING:
    from collections.abc import Callable

    from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["DeadlineQueue", "Deadlines"]

#: How many queues a L{Deadlines} keeps before it forgets its empty ones.
KEPT_QUEUES = 16

_log = Logger()


class DeadlineQueue:
    """
    Deadlines of one timeout on one clock, in the order they were added.

    @ivar timeout: Seconds from adding an entry to its deadline.
    @ivar _entries: Each pending call, with its deadline on the clock.
    @ivar _call: The timer, for the head's deadline or earlier, or
        L{None} when the queue is empty or its expired entries are running.
    @ivar _running: Whether the expired entries are running (the timer is
        set after them).
    """

    __slots__ = ("_call", "_clock", "_entries", "_running", "timeout")

    def __init__(self, clock: IReactorTime, timeout: float) -> None:
        """
        @param clock: Whose C{callLater} times the deadlines.
        @param timeout: Seconds from adding an entry to its deadline.
        """
        self._clock = clock
        self.timeout = timeout
        self._entries: dict[Callable[[], object], float] = {}
        self._call: IDelayedCall | None = None
        self._running = False

    def __len__(self) -> int:
        """
        @return: How many entries are pending.
        """
        return len(self._entries)

    def add(self, call: Callable[[], object]) -> None:
        """
        Call C{call} in L{timeout} seconds, unless it is cancelled first.

        @param call: What to call, with no argument; also the entry's key
            for L{cancel} (a bound method compares equal to another of the
            same function and object).  Adding a pending one again moves
            its deadline.
        """
        entries = self._entries
        if call in entries:
            del entries[call]
        clock = self._clock
        entries[call] = clock.seconds() + self.timeout
        if self._call is None and not self._running:
            self._call = clock.callLater(self.timeout, self._expire)

    def cancel(self, call: Callable[[], object]) -> None:
        """
        Forget C{call}'s deadline, if it is pending.

        @param call: What L{add} was given (or an equal object).
        """
        entries = self._entries
        if entries.pop(call, None) is not None and not entries:
            timer, self._call = self._call, None
            if timer is not None:
                timer.cancel()

    def _expire(self) -> None:
        """
        The timer fired: call every entry whose deadline passed, from the
        head (one cancelled meanwhile, even by an earlier one's call, is
        not called), then time the next.
        """
        self._call = None
        entries = self._entries
        now = self._clock.seconds()
        due = []
        for call, deadline in entries.items():
            if deadline > now:
                break
            due.append(call)
        self._running = True
        try:
            for call in due:
                if entries.pop(call, None) is None:
                    continue
                try:
                    call()
                except Exception:
                    _log.failure("deadline call {call!r} failed", call=call)
        finally:
            self._running = False
        if entries:
            # (Entries added while expired ones ran are behind the head.)
            deadline = next(iter(entries.values()))
            self._call = self._clock.callLater(
                max(0.0, deadline - self._clock.seconds()), self._expire
            )


class Deadlines:
    """
    The L{DeadlineQueue}s of one clock, one per timeout value: deadlines
    made under different settings (a reload's new C{handshake_timeout}, a
    connect timeout cut short by what is left of a handshake's) each keep
    their own timeout.

    @ivar clock: Whose C{callLater} times the deadlines.
    """

    def __init__(self, clock: IReactorTime) -> None:
        """
        @param clock: Whose C{callLater} times the deadlines.
        """
        self.clock = clock
        self._queues: dict[float, DeadlineQueue] = {}

    def queue(self, timeout: float) -> DeadlineQueue:
        """
        @param timeout: Seconds from adding an entry to its deadline.
        @return: The queue of C{timeout}'s deadlines.
        """
        queue = self._queues.get(timeout)
        if queue is None:
            queue = self._queues[timeout] = self._newQueue(timeout)
        return queue

    def _newQueue(self, timeout: float) -> DeadlineQueue:
        """
        @return: A new queue for C{timeout}, after forgetting the empty
            queues if there are many (timeouts that vary, such as a connect
            timeout cut short, would otherwise pile up).  A queue forgotten
            works on for whoever holds it.
        """
        queues = self._queues
        if len(queues) >= KEPT_QUEUES:
            for value in [t for t, q in queues.items() if not len(q)]:
                del queues[value]
        return DeadlineQueue(self.clock, timeout)

    def pending(self) -> int:
        """
        @return: How many deadlines are pending, in all queues.
        """
        return sum(len(q) for q in self._queues.values())
