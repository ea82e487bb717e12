# -*- test-case-name: tests.test_admin -*-
"""
C{GET /metrics}: the relay's counters in Prometheus' text format, read
when scraped, and the merge of several workers' pages into one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString
from twisted.python.failure import Failure

from wsrelay import __version__

if TYPE_CHECKING:
    from wsrelay.admin.relay import RelayView
    from wsrelay.stats import Histogram

#: What a key of L{wsrelay.interfaces.ISourceStatus.status} must be to
#: become a metric.
SNAKE = re.compile("[a-z][a-z0-9_]*")

#: The values of L{wsrelay.routing.Backend.state}.
STATES = ("up", "down", "draining", "disabled")


def metricsText(relay: RelayView) -> str:
    """
    @return: The relay's metrics page (Prometheus' text format).
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RelayCollector(relay))
    return generate_latest(registry).decode("utf-8")


class _Families:
    """
    A collector of metric families read elsewhere.
    """

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def mergeMetrics(pages: Sequence[tuple[int, str | Failure]]) -> bytes:
    """
    Merge the metrics pages of several workers into one, each sample
    labelled with its C{worker}, and C{wsrelay_worker_up} saying which
    workers answered.

    @param pages: Each worker's number and page, or why it has none.
    """
    up = GaugeMetricFamily(
        "wsrelay_worker_up",
        "Whether the worker process answered this scrape.",
        labels=["worker"],
    )
    families: dict[str, Metric] = {}
    for index, page in pages:
        up.add_metric([str(index)], 0 if isinstance(page, Failure) else 1)
        if isinstance(page, Failure):
            continue
        for family in text_string_to_metric_families(page):
            merged = families.get(family.name)
            if merged is None:
                merged = Metric(family.name, family.documentation, family.type)
                families[family.name] = merged
            merged.samples.extend(
                s._replace(labels={**s.labels, "worker": str(index)})
                for s in family.samples
            )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families([up, *families.values()]))
    return generate_latest(registry)


class RelayCollector:
    """
    A C{prometheus_client} collector that reads the relay's counters when
    scraped.
    """

    def __init__(self, relay: RelayView) -> None:
        self._relay = relay

    def collect(self) -> Iterator[Metric]:
        """
        @return: The metric families of the relay, its backends, its
            fan-out channels and its handshake latency.
        """
        relay = self._relay
        yield InfoMetricFamily(
            "wsrelay_build", "The relay's version.", {"version": __version__}
        )
        yield GaugeMetricFamily(
            "wsrelay_uptime_seconds",
            "Seconds since the relay started.",
            relay.now() - relay.startedAt(),
        )
        yield GaugeMetricFamily(
            "wsrelay_client_connections",
            "Client connections open now.",
            relay.clients(),
        )
        yield from self._backends()
        yield from self._queues()
        yield from self._channels()
        yield from self._sources()
        yield self._latency()

    def _backends(self) -> Iterator[Metric]:
        """
        @return: The families of the backends, labelled by route and
            backend.
        """
        labels = ["route", "backend"]
        directed = [*labels, "direction"]
        gauge, counter = GaugeMetricFamily, CounterMetricFamily
        open_ = gauge(
            "wsrelay_backend_open_connections",
            "Connections open to the backend now.",
            labels=labels,
        )
        total = counter(
            "wsrelay_backend_connections",
            "Connections opened to the backend.",
            labels=labels,
        )
        messages = counter(
            "wsrelay_backend_messages",
            "Messages relayed, by direction (to_backend, from_backend).",
            labels=directed,
        )
        size = counter(
            "wsrelay_backend_bytes",
            "Payload bytes relayed, by direction (to_backend, from_backend).",
            labels=directed,
        )
        failures = counter(
            "wsrelay_backend_failures",
            "Failed connects, 5xx answers and failed health checks.",
            labels=labels,
        )
        up = gauge(
            "wsrelay_backend_up",
            "1 when the backend is up (healthy and enabled), else 0.",
            labels=labels,
        )
        state = gauge(
            "wsrelay_backend_state",
            "1 for the backend's state (up, down, draining, disabled), else 0.",
            labels=[*labels, "state"],
        )
        check = gauge(
            "wsrelay_backend_check_success",
            "1 when the last active health check passed, else 0.",
            labels=labels,
        )
        limit = gauge(
            "wsrelay_backend_max_connections",
            "The backend's maxconn= (only backends that have one).",
            labels=labels,
        )
        connecting = gauge(
            "wsrelay_backend_connecting",
            "Connections to the backend being opened now.",
            labels=labels,
        )
        for route in self._relay.routes():
            for b in route.backends:
                names = [route.name, b.name]
                sent, sentBytes, received, receivedBytes = self._relay.traffic(route, b)
                open_.add_metric(names, b.connections)
                connecting.add_metric(names, b.connecting)
                if b.maxconn is not None:
                    limit.add_metric(names, b.maxconn)
                total.add_metric(names, b.totalConnections)
                messages.add_metric([*names, "to_backend"], sent)
                messages.add_metric([*names, "from_backend"], received)
                size.add_metric([*names, "to_backend"], sentBytes)
                size.add_metric([*names, "from_backend"], receivedBytes)
                failures.add_metric(names, b.failures)
                current = b.state
                up.add_metric(names, 1 if current == "up" else 0)
                for s in STATES:
                    state.add_metric([*names, s], 1 if current == s else 0)
                if b.lastCheck is not None:
                    check.add_metric(names, 1 if b.lastCheck[1] else 0)
        yield from (open_, total, messages, size, failures, up, state, check)
        yield from (limit, connecting)

    def _queues(self) -> Iterator[Metric]:
        """
        @return: The families of the routes' queues (handshakes waiting for
            a backend below its C{maxconn=}), labelled by route: HAProxy's
            C{qcur}, C{qmax} and C{qtime}.
        """
        labels = ["route"]
        gauge, counter = GaugeMetricFamily, CounterMetricFamily
        current = gauge(
            "wsrelay_route_queue_current",
            "Handshakes waiting in the route's queue now.",
            labels=labels,
        )
        peak = gauge(
            "wsrelay_route_queue_max",
            "The most handshakes that waited in the route's queue at once.",
            labels=labels,
        )
        queued = counter(
            "wsrelay_route_queued",
            "Handshakes that waited in the route's queue.",
            labels=labels,
        )
        timeouts = counter(
            "wsrelay_route_queue_timeouts",
            "Handshakes refused after waiting queue_timeout in the queue.",
            labels=labels,
        )
        abandoned = counter(
            "wsrelay_route_queue_abandoned",
            "Handshakes whose client left while queued.",
            labels=labels,
        )
        waits = HistogramMetricFamily(
            "wsrelay_route_queue_wait_seconds",
            "Time each handshake spent in the route's queue, however it left.",
            labels=labels,
        )
        for route in self._relay.routes():
            queue, names = route.queue, [route.name]
            current.add_metric(names, len(queue))
            peak.add_metric(names, queue.peak)
            queued.add_metric(names, queue.total)
            timeouts.add_metric(names, queue.timeouts)
            abandoned.add_metric(names, queue.abandoned)
            waits.add_metric(names, _cumulative(queue.waits), queue.waits.sum)
        yield from (current, peak, queued, timeouts, abandoned, waits)

    def _channels(self) -> Iterator[Metric]:
        """
        @return: The families of the fan-out channels, labelled by route
            and channel key (empty for a route-wide channel).
        """
        labels = ["route", "channel"]
        gauge, counter = GaugeMetricFamily, CounterMetricFamily
        clients = gauge(
            "wsrelay_channel_clients", "Clients of the channel now.", labels=labels
        )
        up = gauge(
            "wsrelay_channel_up",
            "1 when the channel's upstream is open, else 0.",
            labels=labels,
        )
        messages = counter(
            "wsrelay_channel_messages",
            "Messages received from the channel's source.",
            labels=labels,
        )
        deliveries = counter(
            "wsrelay_channel_deliveries",
            "Messages written or queued to the channel's clients.",
            labels=labels,
        )
        drops = counter(
            "wsrelay_channel_slow_drops",
            "Messages skipped for clients too slow to take them.",
            labels=labels,
        )
        closes = counter(
            "wsrelay_channel_slow_closes",
            "Clients closed for being too slow.",
            labels=labels,
        )
        for (name, key), c in self._relay.channels():
            names = [name, key]
            clients.add_metric(names, len(c.members))
            up.add_metric(names, 1 if c.state == "up" else 0)
            messages.add_metric(names, c.messagesIn)
            deliveries.add_metric(names, c.deliveries)
            drops.add_metric(names, c.slowDrops)
            closes.add_metric(names, c.slowCloses)
        yield from (clients, up, messages, deliveries, drops, closes)

    def _sources(self) -> Iterator[Metric]:
        """
        @return: The families of the fan-out sources' own numbers
            (L{wsrelay.interfaces.ISourceStatus}): C{wsrelay_source_KEY}
            labelled by route and channel key, a counter when C{KEY} ends
            in C{_total}, else a gauge; strings, L{None} and keys that are
            not snake_case are left out.
        """
        labels = ["route", "channel"]
        families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}
        for (name, key), c in self._relay.channels():
            values = self._relay.sourceStatus(c)
            if values is None:
                continue
            for k, value in values.items():
                if isinstance(value, str) or value is None:
                    continue
                if not SNAKE.fullmatch(k):
                    continue
                family = families.get(k)
                if family is None:
                    metric = "wsrelay_source_" + k
                    doc = f"The source's {k} (see its documentation)."
                    if k.endswith("_total"):
                        family = CounterMetricFamily(metric, doc, labels=labels)
                    else:
                        family = GaugeMetricFamily(metric, doc, labels=labels)
                    families[k] = family
                family.add_metric([name, key], float(value))
        yield from families.values()

    def _latency(self) -> Metric:
        """
        @return: The handshake latency histogram, its buckets made
            cumulative as the exposition format wants them.
        """
        h = self._relay.handshakeLatency()
        return HistogramMetricFamily(
            "wsrelay_handshake_latency_seconds",
            "Time from a client's request to its 101 (backend connect and"
            " handshake included).",
            buckets=_cumulative(h),
            sum_value=h.sum,
        )


def _cumulative(h: Histogram) -> list[tuple[str, float]]:
    """
    @return: The buckets of C{h} made cumulative, as the exposition format
        wants them, +Inf last.
    """
    buckets: list[tuple[str, float]] = []
    seen = 0
    for bound, n in zip(h.buckets, h.counts, strict=False):
        seen += n
        buckets.append((floatToGoString(bound), seen))
    buckets.append(("+Inf", seen + h.counts[-1]))
    return buckets
