# -*- test-case-name: tests.test_queue -*-
"""
A route's queue: the handshakes that wait, first come first served, for
a backend below its C{maxconn} (HAProxy's backend queue, whose length and
waits it reports as C{qcur} and C{qtime}).

The queue knows nothing of backends: each waiter brings a predicate that
says whether a backend it may use has room now, and whoever frees a slot
(a connection that closed, a connect attempt that failed, a backend that
came up, a reload) calls L{RouteQueue.slotFreed}.  A waiter is woken
synchronously, so it takes the slot before anything else can.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred

from wsrelay.stats import Histogram

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IReactorTime

#: Upper bounds, in seconds, of the queue wait histogram's buckets.
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def retryAfter(timeout: float) -> str:
    """
    @param timeout: The route's C{queue_timeout}.
    @return: The C{Retry-After} of a client refused for want of a slot:
        as many whole seconds as the queue would have let it wait, and at
        least one.
    """
    return str(max(1, math.ceil(timeout)))


class QueueTimeout(Exception):
    """
    A handshake waited C{queue_timeout} seconds in the queue and got no
    slot.
    """


@dataclass(eq=False)
class _Waiter:
    """
    One handshake in the queue.

    @ivar deferred: Fires with the seconds waited once a slot is free.
    @ivar since: When it came, on C{clock}.
    @ivar group: Stands for the backends it may use (its route): all the
        waiters of a group have room, or none has.
    @ivar hasRoom: Whether a backend of its group has room now.
    @ivar number: Its place in the order of arrival.
    @ivar expiry: Its C{queue_timeout}.
    """

    deferred: Deferred[float]
    since: float
    group: object
    hasRoom: Callable[[], bool]
    clock: IReactorTime
    number: int
    expiry: IDelayedCall | None = None


class RouteQueue:
    """
    The handshakes of one route waiting for a backend slot, oldest first.

    One queue lives as long as its route's name: a reload hands it to the
    new route, with its waiters and counters.

    @ivar peak: The most handshakes waiting at once, ever.
    @ivar total: Handshakes that had to wait, ever.
    @ivar timeouts: Those that waited C{queue_timeout} for nothing.
    @ivar abandoned: Those whose client (or fan-out channel) gave up.
    @ivar waits: How long each waited, however its wait ended.
    """

    def __init__(self) -> None:
        self._waiters: deque[_Waiter] = deque()
        #: How many waiters each group has, by the group's id.
        self._groups: dict[int, int] = {}
        self._arrivals = 0
        self.peak = 0
        self.total = 0
        self.timeouts = 0
        self.abandoned = 0
        self.waits = Histogram(WAIT_BUCKETS)

    def __len__(self) -> int:
        """
        @return: How many handshakes wait now.
        """
        return len(self._waiters)

    def wait(
        self,
        clock: IReactorTime,
        timeout: float,
        group: object,
        hasRoom: Callable[[], bool],
        again: bool = False,
    ) -> Deferred[float]:
        """
        Wait at the end of the queue for a slot, at most C{timeout}
        seconds.

        @param group: Stands for the backends the waiter may use: its
            route.  Waiters that came before a reload use the old route's
            backends, those after it the new one's.
        @param hasRoom: Says whether a backend of C{group} has room.
        @param again: Whether this handshake waited before (woken, it found
            no backend it could try): it is not counted in L{total} twice.
        @return: A L{Deferred} that fires with the seconds waited when the
            waiter's turn comes and C{hasRoom} holds, or fails with
            L{QueueTimeout}.  Cancelling it leaves the queue.
        """

        def cancel(d: Deferred[float]) -> None:
            if self._remove(waiter):
                self.abandoned += 1

        self._arrivals += 1
        waiter = _Waiter(
            Deferred(cancel), clock.seconds(), group, hasRoom, clock, self._arrivals
        )
        waiter.expiry = clock.callLater(timeout, self._expire, waiter)
        self._waiters.append(waiter)
        key = id(group)
        self._groups[key] = self._groups.get(key, 0) + 1
        if not again:
            self.total += 1
        self.peak = max(self.peak, len(self._waiters))
        return waiter.deferred

    def slotFreed(self) -> None:
        """
        Something may have made room: wake the oldest waiters that can use
        it, one after the other, each taking its slot before the next is
        asked.  A group without room (the old route's waiters, after a
        reload) lets the next group's waiters have it.  Waiters that come
        back meanwhile (woken, they found nothing to try) wait for the next
        slot.
        """
        if not self._waiters:
            return
        last = self._arrivals
        full: set[int] = set()
        while len(full) < len(self._groups):
            waiter = next(
                (
                    w
                    for w in self._waiters
                    if w.number <= last and id(w.group) not in full
                ),
                None,
            )
            if waiter is None:
                return
            if not waiter.hasRoom():
                full.add(id(waiter.group))
                continue
            self._remove(waiter)
            waiter.deferred.callback(waiter.clock.seconds() - waiter.since)

    def _remove(self, waiter: _Waiter) -> bool:
        """
        Take C{waiter} out of the queue, count its wait and stop its timer.

        @return: Whether it was still in the queue.
        """
        try:
            self._waiters.remove(waiter)
        except ValueError:
            return False
        key = id(waiter.group)
        left = self._groups[key] - 1
        if left:
            self._groups[key] = left
        else:
            del self._groups[key]
        expiry, waiter.expiry = waiter.expiry, None
        if expiry is not None and expiry.active():
            expiry.cancel()
        self.waits.observe(waiter.clock.seconds() - waiter.since)
        return True

    def _expire(self, waiter: _Waiter) -> None:
        """
        C{waiter} waited its C{queue_timeout}.
        """
        waiter.expiry = None
        if self._remove(waiter):
            self.timeouts += 1
            waiter.deferred.errback(QueueTimeout())
