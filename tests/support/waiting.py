"""
Waiting for what a test cannot see happen at once.

Where the thing waited for can say that it changed, a test waits on a
L{Deferred}: L{Changes} fires a condition's Deferred when whoever changes
the state says so (from the reactor thread, or from another thread through
L{Changes.changedInThread}), and L{Watched} is a list that says so on each
append.  Where it cannot (the relay's internal state, another process),
L{waitFor} (on the reactor) and L{pollUntil} (blocking, for a thread or a
synchronous test) poll with back-off up to a deadline: a few quick looks
first, then further apart.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet import reactor, task
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorThreads, IReactorTime

#: Seconds a test waits for anything: a connection, a reply, a condition.
TIMEOUT = 10

#: Seconds a test waits for a connection to end: a relay may hold one
#: side's close until the other side answered its own or its
#: C{close_timeout} (5 s by default) ran out, and then wait that long
#: again for the TCP connection to end; several times that, so that a
#: loaded machine does not fail a test that a timer of the relay's would
#: have passed.
CLOSING = TIMEOUT * 3

#: The first interval between two polls, in seconds.
FIRST_POLL = 0.001

#: The longest interval between two polls, in seconds.
LAST_POLL = 0.05

T = TypeVar("T")


def _intervals() -> Any:
    """
    @return: An iterator of poll intervals: L{FIRST_POLL} doubled each time
        up to L{LAST_POLL}.
    """
    delay = FIRST_POLL
    while True:
        yield delay
        delay = min(delay * 2, LAST_POLL)


async def waitFor(predicate: Callable[[], object], timeout: float = TIMEOUT) -> None:
    """
    Poll C{predicate} on the reactor, with back-off, until it holds.

    @raise AssertionError: If it does not hold within C{timeout} seconds.
    """
    deadline = time.monotonic() + timeout
    intervals = _intervals()
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await task.deferLater(reactor, next(intervals), lambda: None)


def pollUntil(
    predicate: Callable[[], object], what: str, timeout: float = TIMEOUT
) -> None:
    """
    Poll C{predicate}, blocking, with back-off, until it holds: for the
    state of another process, read from a synchronous test or a thread
    (never from the reactor thread).

    @param what: What is waited for, named in the failure.
    @raise AssertionError: If it does not hold within C{timeout} seconds.
    """
    deadline = time.monotonic() + timeout
    intervals = _intervals()
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g}s")
        time.sleep(next(intervals))


class Changes:
    """
    Conditions waited for on the reactor, checked again each time the
    state they read is said to have changed.
    """

    def __init__(self, clock: IReactorTime | None = None) -> None:
        """
        @param clock: The clock of the timeouts, the global reactor by
            default.
        """
        self._clock: IReactorTime = clock if clock is not None else reactor
        self._waiting: list[tuple[Callable[[], object], Deferred[None]]] = []

    def until(
        self, predicate: Callable[[], object], timeout: float = TIMEOUT
    ) -> Deferred[None]:
        """
        @return: A L{Deferred} that fires when C{predicate} holds (at once if
            it holds now), or fails with
            L{twisted.internet.defer.TimeoutError} after C{timeout} seconds.
        """
        if predicate():
            return succeed(None)
        d: Deferred[None] = Deferred()
        entry = (predicate, d)
        self._waiting.append(entry)

        def forget(result: T) -> T:
            if entry in self._waiting:
                self._waiting.remove(entry)
            return result

        d.addTimeout(timeout, self._clock)
        d.addBoth(forget)
        return d

    def changed(self) -> None:
        """
        The state changed: fire the Deferred of every condition that now
        holds.  Call it in the reactor thread.
        """
        for entry in list(self._waiting):
            predicate, d = entry
            if predicate():
                self._waiting.remove(entry)
                d.callback(None)

    def changedInThread(self) -> None:
        """
        The state changed, said from a thread other than the reactor's.
        """
        threads: IReactorThreads = reactor  # type: ignore[assignment]
        threads.callFromThread(self.changed)


class Watched(list[T]):
    """
    A list whose length can be waited for: appends (in the reactor thread)
    fire the waiting L{Deferred}s.
    """

    def __init__(self) -> None:
        super().__init__()
        self._changes = Changes()

    def append(self, item: T) -> None:
        """
        Append C{item}, and fire the Deferreds of the lengths now reached.
        """
        super().append(item)
        self._changes.changed()

    def whenLength(self, length: int, timeout: float = TIMEOUT) -> Deferred[None]:
        """
        @return: A L{Deferred} that fires once the list holds at least
            C{length} items (see L{Changes.until}).
        """
        return self._changes.until(lambda: len(self) >= length, timeout)
