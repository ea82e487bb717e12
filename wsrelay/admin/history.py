# -*- test-case-name: tests.test_dashboard -*-
"""
C{GET /history}: the last minutes of each route's counters, one sample a
second, for the dashboard's charts.

The relay keeps plain cumulative counters (L{wsrelay.admin.relay.RelayView}
reads them); L{History} reads them once a second while the admin listener
listens, and keeps the rates between two readings, and the gauges, in a
ring of L{SAMPLES} samples.  Keeping the history here rather than in the
page means that a page opened now shows the last minutes at once, that
every open page shares one reading a second, and that the page only draws.

Refused handshakes are counted by the listeners' factory, by route
(L{wsrelay.ws.frontend.FrontendFactory.refused}), and the handshakes'
latency by route too (L{wsrelay.stats.Histogram.byRoute}), with or without
the access log.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet.task import LoopingCall
from twisted.logger import Logger

if TYPE_CHECKING:
    from wsrelay.admin.relay import RelayView
    from wsrelay.routing import Route
    from wsrelay.stats import Histogram

#: Seconds between two samples.
INTERVAL = 1.0

#: How many samples are kept: five minutes'.
SAMPLES = 300

#: How many samples the handshake latency's percentiles are taken over.
LATENCY_WINDOW = 10

#: The handshake latency's percentiles, by their name in the samples.
PERCENTILES = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))

#: The name under which refusals of requests no route matched are counted.
UNROUTED = ""


def quantile(q: float, bounds: Sequence[float], counts: Sequence[int]) -> float | None:
    """
    Estimate a quantile from a histogram's buckets, as Prometheus'
    C{histogram_quantile} does: linearly within the bucket that holds it.

    @param q: The quantile, from 0 to 1.
    @param bounds: The buckets' upper bounds, ascending, without +Inf.
    @param counts: Observations per bucket, not cumulative, the last one
        being the +Inf bucket.
    @return: The estimate (the last finite bound when it falls in the +Inf
        bucket), or L{None} without observations.
    """
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    below = 0
    for i, count in enumerate(counts):
        if count > 0 and below + count >= rank:
            if i >= len(bounds):
                return bounds[-1]
            low = bounds[i - 1] if i else 0.0
            return low + (bounds[i] - low) * (rank - below) / count
        below += count
    return bounds[-1]


def _routeCounters(
    relay: RelayView, route: Route, channels: Sequence[Any]
) -> Iterator[tuple[object, tuple[int, ...]]]:
    """
    @return: Each counting thing of C{route} (its backends and channels)
        with its cumulative counters: for a backend, messages to it, from
        it and connections opened; for a channel, deliveries, slow drops
        and slow closes (zeros where the other kind counts).
    """
    for b in route.backends:
        sent, _, received, _ = relay.traffic(route, b)
        yield b, (sent, received, b.totalConnections, 0, 0, 0)
    for c in channels:
        yield c, (0, 0, 0, c.deliveries, c.slowDrops, c.slowCloses)


#: The names of the rates of a route's sample, in the order of
#: L{_routeCounters}' tuples.
RATES = ("toBackend", "fromBackend", "opened", "deliveries", "drops", "closes")

#: The fields of a route's sample, in the order it keeps them: its open
#: connections, L{RATES}, its refusals per second, then its handshakes'
#: latency percentiles (L{PERCENTILES}, in seconds).
ROUTE_FIELDS = ("connections", *RATES, "refused", *(p for p, _ in PERCENTILES))

#: The rate of a counter that did not move, shared by every sample.
ZERO = 0.0


class History:
    """
    The last minutes of the relay's counters, by route.

    @ivar samples: The samples, oldest first, as L{sample} makes them:
        each route's values as a tuple in L{ROUTE_FIELDS}' order
        (L{since} names them).
    """

    log = Logger()

    def __init__(
        self,
        relay: RelayView,
        interval: float = INTERVAL,
        size: int = SAMPLES,
    ) -> None:
        """
        @param relay: What is read; its clock times the samples.
        """
        self._relay = relay
        self.interval = interval
        self.samples: deque[dict[str, Any]] = deque(maxlen=size)
        self._loop: LoopingCall | None = None
        self._failed = False
        # The last reading: when, each counting thing's counters (by id,
        # with the thing so that its id is not reused meanwhile), the
        # refusals and the handshakes.
        self._then: float | None = None
        self._last: dict[int, tuple[object, tuple[int, ...]]] = {}
        self._refused: dict[str, int] = {}
        self._handshakes = 0
        # The latency histograms' last readings, the relay's (under
        # L{UNROUTED}) and each route's.
        self._latency: dict[str, deque[tuple[int, ...]]] = {}

    def start(self) -> None:
        """
        Sample now and every L{interval} seconds until L{stop}.
        """
        if self._loop is not None:
            return
        self._loop = LoopingCall(self._sampleLogged)
        self._loop.clock = self._relay.clock()
        self._loop.start(self.interval, now=True)

    def stop(self) -> None:
        """
        Stop sampling; the samples stay.
        """
        if self._loop is None:
            return
        self._loop.stop()
        self._loop = None

    def _sampleLogged(self) -> None:
        """
        L{sample}, logging its first failure rather than stopping (the
        dashboard is never worth an error of the admin listener, nor a log
        line a second).
        """
        try:
            self.sample()
        except Exception:
            if not self._failed:
                self._failed = True
                self.log.failure("admin: sampling for /history failed")

    def sample(self) -> None:
        """
        Read the counters, and keep the rates since the last reading and
        the gauges as a new sample (the first reading only sets the rates'
        origin; a reading at the time of the last one, or before, does
        nothing).
        """
        relay = self._relay
        now = relay.now()
        if self._then is not None and now <= self._then:
            # No time passed (a stepped clock, or a second caller): no rate.
            return
        channels: dict[str, list[Any]] = {}
        for (name, _), channel in relay.channels():
            channels.setdefault(name, []).append(channel)
        reading: dict[int, tuple[object, tuple[int, ...]]] = {}
        routes: dict[str, tuple[float | None, ...]] = {}
        elapsed = None if self._then is None else now - self._then
        refusals = dict(relay.refused())
        histogram = relay.handshakeLatency()
        for route in relay.routes():
            own = channels.get(route.name, [])
            rises = [0] * len(RATES)
            for thing, counters in _routeCounters(relay, route, own):
                reading[id(thing)] = (thing, counters)
                last = self._last.get(id(thing))
                if last is None or last[0] is not thing:
                    continue
                for i, (new, old) in enumerate(zip(counters, last[1], strict=True)):
                    # A counter that went down was started again (a
                    # reload): what it counted since is unknown.
                    rises[i] += max(0, new - old)
            refused = refusals.get(route.name, 0)
            rises.append(refused - self._refused.get(route.name, 0))
            connections = (
                sum(len(c.members) for c in own)
                if route.config.mode == "fanout"
                else sum(b.connections for b in route.backends)
            )
            # A tuple in ROUTE_FIELDS' order: a sample of each route is
            # kept for five minutes, and a dict is several times the size.
            latency = self._percentiles(route.name, histogram.byRoute(route.name))
            routes[route.name] = (
                connections,
                *self._rates(rises, elapsed),
                *latency.values(),
            )
        refusedAll = sum(refusals.values())
        sample = {
            "time": now,
            "clients": relay.clients(),
            **dict(
                zip(
                    ("handshakes", "refused"),
                    self._rates(
                        [
                            histogram.count - self._handshakes,
                            refusedAll - sum(self._refused.values()),
                        ],
                        elapsed,
                    ),
                    strict=True,
                )
            ),
            "latency": self._percentiles(UNROUTED, histogram),
            "routes": routes,
        }
        self._then = now
        self._last = reading
        self._refused = refusals
        self._handshakes = histogram.count
        if elapsed is not None:
            self.samples.append(sample)

    @staticmethod
    def _rates(rises: Sequence[int], elapsed: float | None) -> list[float]:
        """
        @return: Each rise per second of C{elapsed}, rounded (no rise, or
            no time, gives the one L{ZERO}).
        """
        if not elapsed or elapsed <= 0:
            return [ZERO] * len(rises)
        return [round(rise / elapsed, 3) if rise > 0 else ZERO for rise in rises]

    def _percentiles(self, key: str, histogram: Histogram) -> dict[str, float | None]:
        """
        Keep C{histogram}'s reading as C{key}'s newest.

        @return: Its L{PERCENTILES} over the last L{LATENCY_WINDOW} samples,
            in seconds (L{None} without handshakes in that time).
        """
        readings = self._latency.get(key)
        if readings is None:
            readings = self._latency[key] = deque(maxlen=LATENCY_WINDOW + 1)
        readings.append(tuple(histogram.counts))
        bounds = histogram.buckets
        first, last = readings[0], readings[-1]
        window = [max(0, b - a) for a, b in zip(first, last, strict=True)]
        result: dict[str, float | None] = {}
        for name, q in PERCENTILES:
            value = quantile(q, bounds, window)
            result[name] = None if value is None else round(value, 6)
        return result

    def since(self, after: float | None) -> dict[str, Any]:
        """
        @param after: Only the samples taken after this time, or L{None}
            for all.
        @return: What C{GET /history} answers: the sampling interval, the
            most samples kept, and the samples, oldest first.
        """
        samples = [
            {
                **s,
                "routes": {
                    name: dict(zip(ROUTE_FIELDS, values, strict=True))
                    for name, values in s["routes"].items()
                },
            }
            for s in self.samples
            if after is None or s["time"] > after
        ]
        return {
            "interval": self.interval,
            "size": self.samples.maxlen,
            "samples": samples,
        }
