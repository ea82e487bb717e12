# -*- test-case-name: tests.test_operations -*-
"""
Small counting tools: a latency histogram kept as plain integers (exposed
by the admin listener at scrape time), and the token bucket that limits
the rate of new handshakes.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

#: Upper bounds, in seconds, of the handshake latency histogram's buckets.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class Histogram:
    """
    Counts observations per bucket.

    @ivar buckets: The buckets' upper bounds, ascending (no +Inf).
    @ivar counts: Observations per bucket, not cumulative; the last one is
        the +Inf bucket.
    @ivar sum: The sum of all observations.
    @ivar count: How many observations.
    @ivar routes: The histograms of L{byRoute}, by route name.
    """

    def __init__(
        self, buckets: Sequence[float], parent: Histogram | None = None
    ) -> None:
        """
        @param parent: A histogram that counts every observation of this
            one too.
        """
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.sum = 0.0
        self.count = 0
        self.routes: dict[str, Histogram] = {}
        self._parent = parent

    def observe(self, value: float) -> None:
        """
        Count one observation (and in the parent's, if any: in the same
        bucket when it has the same bounds, as L{byRoute}'s do, with no
        second search and no call).
        """
        buckets = self.buckets
        index = bisect_left(buckets, value)
        h = self
        while True:
            h.counts[index] += 1
            h.sum += value
            h.count += 1
            parent = h._parent
            if parent is None:
                return
            if parent.buckets is not buckets:
                parent.observe(value)
                return
            h = parent

    def byRoute(self, name: str) -> Histogram:
        """
        @return: The histogram of route C{name}'s observations, made on
            first use: what it observes, this one counts too.  It outlives
            a reload, as the route's name does.
        """
        child = self.routes.get(name)
        if child is None:
            child = self.routes[name] = Histogram(self.buckets, self)
        return child


class TokenBucket:
    """
    Allows C{rate} events per second on average, and bursts of up to one
    second's worth.  A rate of 0 allows everything.
    """

    def __init__(self, clock: IReactorTime, rate: float) -> None:
        self._clock = clock
        self.rate = rate
        self._tokens = rate
        self._last = clock.seconds()

    def full(self) -> bool:
        """
        @return: Whether the bucket has refilled (its owner is idle).
        """
        elapsed = self._clock.seconds() - self._last
        return self._tokens + elapsed * self.rate >= self.rate

    def take(self) -> bool:
        """
        @return: Whether one more event is allowed now.
        """
        if self.rate <= 0:
            return True
        now = self._clock.seconds()
        self._tokens = min(self.rate, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True
