# -*- test-case-name: tests.test_admin -*-
"""
The admin listener: the relay's state as JSON, Prometheus metrics, a
dashboard, and the operator's actions on backends and on the
configuration.

Everything here runs when a page is asked for, never on the per-message
path: the relay keeps plain integer counters, and this module reads them.
The reads are open to whoever can reach the admin listener; the actions
(C{POST}) need the bearer token of C{admin_token_file}.  Every request
must name the listener in C{Host} by an IP address, C{localhost} or a name
of C{admin_hosts}: a web page whose own name was made to resolve to the
listener's address (DNS rebinding) sends its own name, and is refused.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from wsrelay import __version__
from wsrelay.config import ConfigError, redactURL
from wsrelay.plugins import PluginError

if TYPE_CHECKING:
    from wsrelay.fanout import Channel
    from wsrelay.operations import RelayStatus
    from wsrelay.routing import Backend, Route

#: The values of L{wsrelay.routing.Backend.state}.
STATES = ("up", "down", "draining", "disabled")

#: The actions on a backend, the last segment of their path.
ACTIONS = ("drain", "enable", "disable")

_READ = (b"GET", b"HEAD")
_ACT = (b"POST",)


# GET /status


def _check(check: tuple[float, bool, str] | None) -> dict[str, Any] | None:
    if check is None:
        return None
    time, ok, reason = check
    return {"time": time, "ok": ok, "reason": reason}


def backendStatus(relay: RelayStatus, route: Route, backend: Backend) -> Any:
    """
    @return: The state and counters of one backend of C{route}, as JSON
        values.
    """
    sent, sentBytes, received, receivedBytes = relay.traffic(route, backend)
    return {
        "name": backend.name,
        "url": redactURL(backend.url),
        "state": backend.state,
        "healthy": backend.healthy,
        "admin": backend.admin,
        "connections": backend.connections,
        "totalConnections": backend.totalConnections,
        "toBackend": {"messages": sent, "bytes": sentBytes},
        "fromBackend": {"messages": received, "bytes": receivedBytes},
        "failures": backend.failures,
        "lastCheck": _check(backend.lastCheck),
        "checks": [_check(c) for c in backend.checks],
    }


def channelStatus(channel: Channel) -> Any:
    """
    @return: The state and counters of one fan-out channel, as JSON values.
    """
    return {
        "key": channel.key,
        "state": channel.state,
        "backend": None if channel.backend is None else channel.backend.name,
        "clients": len(channel.members),
        "replay": len(channel.replay),
        "messagesIn": channel.messagesIn,
        "deliveries": channel.deliveries,
        "slowDrops": channel.slowDrops,
        "slowCloses": channel.slowCloses,
        "clientDrops": channel.clientDrops,
        "connects": channel.connects,
    }


def _routes(relay: RelayStatus) -> list[tuple[Route, bool, list[Channel]]]:
    """
    @return: The routes in force, then those a reload removed whose
        channels still serve clients; each with whether it was removed and
        with its channels, by key.
    """
    channels: dict[str, list[Channel]] = {}
    removed: dict[str, Route] = {}
    current = {route.name for route in relay.routes.routes}
    for (name, _), channel in sorted(relay.channels.items(), key=lambda i: i[0]):
        channels.setdefault(name, []).append(channel)
        if name not in current:
            removed.setdefault(name, channel.route)
    return [
        *((r, False, channels.get(r.name, [])) for r in relay.routes.routes),
        *((r, True, channels[r.name]) for r in removed.values()),
    ]


def status(relay: RelayStatus) -> Any:
    """
    @return: What C{GET /status} answers, as JSON values: the relay's
        version, clock (C{time}) and uptime, its listeners, and the state
        and counters of every route, backend and fan-out channel.
    """
    now = relay.clock.seconds()
    latency = relay.handshakeLatency
    return {
        "version": __version__,
        "worker": relay.worker,
        "pid": os.getpid(),
        "time": now,
        "uptime": now - relay.startedAt,
        "listeners": [
            {
                "description": listener.description,
                "port": None
                if listener.port is None
                else getattr(listener.port.getHost(), "port", None),
            }
            for listener in relay.listeners
        ],
        "clients": len(relay.sessions),
        "handshakes": {"count": latency.count, "sum": latency.sum},
        "routes": [
            {
                "name": route.name,
                "removed": removed,
                "mode": route.config.mode,
                "path": route.config.path,
                "host": route.config.host,
                "balancer": route.config.balancer,
                "health": route.config.health,
                "backends": [backendStatus(relay, route, b) for b in route.backends],
                "channels": [channelStatus(c) for c in channels],
            }
            for route, removed, channels in _routes(relay)
        ],
    }


# GET /metrics


def metricsText(relay: RelayStatus) -> str:
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

    def __init__(self, relay: RelayStatus) -> None:
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
            relay.clock.seconds() - relay.startedAt,
        )
        yield GaugeMetricFamily(
            "wsrelay_client_connections",
            "Client connections open now.",
            len(relay.sessions),
        )
        yield from self._backends()
        yield from self._channels()
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
        for route in self._relay.routes.routes:
            for b in route.backends:
                names = [route.name, b.name]
                sent, sentBytes, received, receivedBytes = self._relay.traffic(route, b)
                open_.add_metric(names, b.connections)
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
        for (name, key), c in sorted(self._relay.channels.items(), key=lambda i: i[0]):
            names = [name, key]
            clients.add_metric(names, len(c.members))
            up.add_metric(names, 1 if c.state == "up" else 0)
            messages.add_metric(names, c.messagesIn)
            deliveries.add_metric(names, c.deliveries)
            drops.add_metric(names, c.slowDrops)
            closes.add_metric(names, c.slowCloses)
        yield from (clients, up, messages, deliveries, drops, closes)

    def _latency(self) -> Metric:
        """
        @return: The handshake latency histogram, its buckets made
            cumulative as the exposition format wants them.
        """
        h = self._relay.handshakeLatency
        buckets: list[tuple[str, float]] = []
        seen = 0
        for bound, n in zip(h.buckets, h.counts, strict=False):
            seen += n
            buckets.append((floatToGoString(bound), seen))
        buckets.append(("+Inf", seen + h.counts[-1]))
        return HistogramMetricFamily(
            "wsrelay_handshake_latency_seconds",
            "Time from a client's request to its 101 (backend connect and"
            " handshake included).",
            buckets=buckets,
            sum_value=h.sum,
        )


# The HTTP side.


def hostAllowed(host: bytes | None, allowed: Sequence[str]) -> bool:
    """
    Whether the admin listener answers a request for C{host}.

    @param host: The request's C{Host} field, or L{None} without one (not
        a browser's request, so not a rebinding page's).
    @param allowed: The names of C{admin_hosts}, lower case.
    @return: Whether C{host} is exactly C{name[:port]} or
        C{[IPv6]:[port]} (no spaces, no user information), C{name} being
        an IP address, C{localhost} or one of C{allowed}, in any case.
    """
    if host is None:
        return True
    try:
        text = host.decode("ascii").lower()
    except UnicodeDecodeError:
        return False
    match = _HOST.fullmatch(text)
    if match is None:
        return False
    literal = match.group("literal")
    if literal is not None:
        try:
            ipaddress.IPv6Address(literal)
        except ValueError:
            return False
        return True
    name = match.group("name").removesuffix(".")
    if name == "localhost" or name in allowed:
        return True
    try:
        ipaddress.IPv4Address(name)
    except ValueError:
        return False
    return True


#: A C{Host} field as L{hostAllowed} accepts it: a name or IPv4 address,
#: or an IPv6 address in brackets, then an optional port.
_HOST = re.compile(
    r"(?:\[(?P<literal>[0-9a-f:.]+)\]|(?P<name>[a-z0-9._-]+))(?::[0-9]+)?"
)


def _json(request: Request, code: int, body: Any) -> bytes:
    """
    Answer C{request} with C{code} and C{body} as JSON.
    """
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(body).encode("utf-8") + b"\n"


def _error(request: Request, code: int, message: str) -> bytes:
    """
    Answer C{request} with C{code} and C{{"error": message}}.
    """
    return _json(request, code, {"error": message})


def _later(request: Request, answer: Deferred[Any]) -> int:
    """
    Answer C{request} when C{answer} fires: with C{(code, body)} as JSON,
    or with bytes as they are.  Nothing is written to a client that went
    away.
    """
    gone: list[Failure] = []
    request.notifyFinish().addErrback(gone.append)

    def write(result: tuple[int, Any] | bytes) -> None:
        if gone:
            return
        request.write(result if isinstance(result, bytes) else _json(request, *result))
        request.finish()

    def failed(f: Failure) -> None:
        AdminResource.log.failure("admin: {path} failed", f, path=request.path)
        write((500, {"error": "failed; see the log"}))

    answer.addCallback(write).addErrback(failed)
    return NOT_DONE_YET


class AdminResource(Resource):
    """
    Every page of the admin listener, dispatched on the request path.

    C{GET /}, C{/status} and C{/metrics} are open; C{POST /reload} and
    C{POST /routes/ROUTE/backends/BACKEND/ACTION} need C{Authorization:
    Bearer TOKEN}.  Without a token file they answer 403; without the
    header, or with another token, 401.
    """

    isLeaf = True
    log = Logger()

    def __init__(self, relay: RelayStatus) -> None:
        super().__init__()
        self._relay = relay

    def render(self, request: Request) -> bytes | int:
        """
        Answer a request: find its page, check its method and, for an
        action, its token.
        """
        # Set before this is called; no library versions are advertised.
        request.setHeader(b"server", b"wsrelay")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-content-type-options", b"nosniff")
        if not hostAllowed(request.getHeader(b"host"), self._relay.config.adminHosts):
            return _error(
                request,
                421,
                "unknown host: the admin listener answers for IP addresses,"
                " localhost and admin_hosts",
            )
        page = self._page(request.postpath or [])
        if page is None:
            return _error(request, 404, "no such page")
        methods, handler = page
        if request.method not in methods:
            request.setHeader(b"allow", b", ".join(methods))
            return _error(request, 405, "method not allowed")
        if methods == _ACT:
            refusal = self._authorize(request)
            if refusal is not None:
                return refusal
        return handler(request)

    def _page(
        self, postpath: list[bytes]
    ) -> tuple[tuple[bytes, ...], Callable[[Request], bytes | int]] | None:
        """
        @return: The methods a path allows and its handler, or L{None} for
            an unknown path.
        """
        try:
            segments = [unquote(s.decode("ascii"), errors="strict") for s in postpath]
        except UnicodeDecodeError:
            return None
        match segments:
            case [""]:
                return _READ, self._dashboard
            case ["status"]:
                return _READ, self._status
            case ["metrics"]:
                return _READ, self._metrics
            case ["reload"]:
                return _ACT, self._reload
            case ["routes", route, "backends", backend, action] if action in ACTIONS:
                return _ACT, lambda request: self._act(request, route, backend, action)
        return None

    def _authorize(self, request: Request) -> bytes | None:
        """
        Check an action's bearer token.

        @return: L{None} when it is right, else the body of the refusal.
        """
        token = self._relay.operations.adminToken()
        if token is None:
            return _error(request, 403, "admin actions are off: no admin_token_file")
        scheme, _, given = (request.getHeader(b"authorization") or b"").partition(b" ")
        if scheme.lower() != b"bearer" or not given.strip():
            request.setHeader(b"www-authenticate", b'Bearer realm="wsrelay"')
            return _error(request, 401, "a bearer token is required")
        if not hmac.compare_digest(given.strip(), token.encode("utf-8")):
            request.setHeader(
                b"www-authenticate", b'Bearer realm="wsrelay", error="invalid_token"'
            )
            return _error(request, 401, "wrong token")
        return None

    def _dashboard(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(
            b"content-security-policy",
            b"default-src 'none'; script-src 'unsafe-inline';"
            b" style-src 'unsafe-inline'; connect-src 'self'",
        )
        return DASHBOARD

    def _status(self, request: Request) -> bytes | int:
        """
        This worker's status; with several workers, also a row for each
        (C{workers}), or with C{?worker=N} worker N's whole status.
        """
        relay = self._relay
        own = status(relay)
        pool = relay.workerPool
        if pool is None:
            return _json(request, 200, own)
        asked = request.args.get(b"worker")
        if asked is None:
            d = pool.ask("status").addCallback(
                lambda answers: (
                    200,
                    {**own, "workers": pool.rows(own, answers)},
                )
            )
            return _later(request, d)
        try:
            index = int(asked[0])
        except ValueError:
            return _error(request, 400, "worker must be a number")
        if index == 0:
            return _json(request, 200, own)
        if not 0 < index < pool.count:
            return _error(request, 404, f"no worker {index}")
        worker = pool.workers.get(index)
        if worker is None:
            return _error(request, 503, f"worker {index} is not running")
        d = worker.ask("status").addCallbacks(
            lambda answer: (200, answer),
            lambda f: (503, {"error": f.getErrorMessage()}),
        )
        return _later(request, d)

    def _metrics(self, request: Request) -> bytes | int:
        """
        The metrics page; with several workers, every worker's samples,
        labelled with C{worker}.
        """
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        relay = self._relay
        own = metricsText(relay)
        pool = relay.workerPool
        if pool is None:
            return own.encode("utf-8")
        d = pool.ask("metrics").addCallback(
            lambda answers: mergeMetrics([(0, own), *answers])
        )
        return _later(request, d)

    def _act(self, request: Request, route: str, backend: str, action: str) -> bytes:
        """
        Drain, enable or disable a backend.
        """
        relay = self._relay
        try:
            b = relay.operations.setBackendState(route, backend, action)
        except KeyError as e:
            return _error(request, 404, str(e.args[0]) if e.args else "not found")
        r = relay.routes.byName(route)
        assert r is not None
        return _json(
            request,
            200,
            {"route": route, "action": action, "backend": backendStatus(relay, r, b)},
        )

    def _reload(self, request: Request) -> int:
        """
        Reload the configuration file, as SIGHUP does; answer when done.
        """
        relay = self._relay

        def reloaded(_: object) -> tuple[int, Any]:
            return 200, {
                "reloaded": relay.config.path,
                "routes": [r.name for r in relay.routes.routes],
            }

        def failed(f: Failure) -> tuple[int, Any]:
            if f.check(ConfigError, PluginError):
                return 400, {"error": str(f.value)}
            self.log.failure("admin: reload failed", f)
            return 500, {"error": "reload failed; see the log"}

        return _later(
            request,
            maybeDeferred(relay.operations.reload).addCallbacks(reloaded, failed),
        )


class AdminSite(Site):
    """
    The admin listener's site: no tracebacks in answers, and a structured
    log event for each action (a request other than C{GET} or C{HEAD},
    whatever its answer) and each failure (5xx), instead of an access-log
    line per request: a dashboard asks every second, a scraper every few,
    and a browser asks for C{/favicon.ico}.
    """

    logger = Logger()
    noisy = False
    displayTracebacks = False

    def log(self, request: http.Request) -> None:
        """
        Log C{request} when it was an action or failed.
        """
        if request.method in _READ and request.code < 500:
            return
        self.logger.info(
            "admin {method} {path}: {code} from {peer}",
            method=request.method.decode("ascii", "replace"),
            path=request.uri.decode("ascii", "replace"),
            code=request.code,
            peer=getattr(request.getClientAddress(), "host", "?"),
        )


def adminSite(relay: RelayStatus) -> Site:
    """
    @return: The admin listener's site for C{relay}.
    """
    return AdminSite(AdminResource(relay))


#: The dashboard: one page, no external assets, refreshing from /status.
#: Stable hooks: C{#version}, C{#uptime}, C{#clients}, C{#updated} (with
#: C{data-refreshes}), C{#error}; one C{section.route[data-route]} per
#: route, holding C{tr.backend[data-backend]} and C{tr.channel[data-channel]}
#: rows whose cells have the class of their column.
DASHBOARD = b"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>wsrelay</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
header { display: flex; flex-wrap: wrap; gap: 1.5em; align-items: baseline; }
h1 { font-size: 1.4em; margin: 0; }
h2 { font-size: 1.1em; margin: 1.5em 0 .3em; }
h2 small { font-weight: normal; color: #666; }
table { border-collapse: collapse; margin: .3em 0; }
th, td { border: 1px solid #ccc; padding: .2em .6em; text-align: right; }
th { background: #eee; }
:is(th, td):is(.name, .state, .check, .key, .backend) { text-align: left; }
.state-up { background: #d4f0d4; }
.state-down { background: #f6cccc; }
.state-draining { background: #fff0bb; }
.state-disabled { background: #ddd; }
#error { color: #b00; }
#updated { color: #666; }
</style>
</head>
<body>
<header>
<h1>wsrelay</h1>
<span>version <b id="version">?</b></span>
<span>uptime <b id="uptime">?</b></span>
<span>clients <b id="clients">?</b></span>
<span id="updated" data-refreshes="0">loading</span>
<span id="error" hidden></span>
</header>
<section id="workers" hidden></section>
<main id="routes"></main>
<script>
"use strict";
const BACKEND = [
  ["name", "backend"], ["state", "state"], ["connections", "open"],
  ["total", "total"], ["messages-to", "msgs to"], ["bytes-to", "bytes to"],
  ["messages-from", "msgs from"], ["bytes-from", "bytes from"],
  ["failures", "failures"], ["check", "last check"]];
const CHANNEL = [
  ["key", "channel"], ["state", "upstream"], ["backend", "backend"],
  ["clients", "clients"], ["replay", "replay"], ["messages-in", "msgs in"],
  ["deliveries", "deliveries"], ["slow-drops", "slow drops"],
  ["slow-closes", "slow closes"], ["client-drops", "client drops"]];
const WORKER = [
  ["worker", "worker"], ["pid", "pid"], ["clients", "clients"],
  ["handshakes", "handshakes"], ["uptime", "uptime"], ["restarts", "restarts"]];
let refreshes = 0;

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = String(text);
  return e;
}

function table(cls, columns, rows) {
  const t = el("table", {class: cls});
  const head = el("tr");
  for (const [c, title] of columns) head.append(el("th", {class: c}, title));
  t.append(el("thead"), el("tbody"));
  t.tHead.append(head);
  for (const [attrs, values] of rows) {
    const tr = el("tr", attrs);
    columns.forEach(([c], i) => tr.append(el("td", {class: c}, values[i])));
    t.tBodies[0].append(tr);
  }
  return t;
}

function duration(s) {
  s = Math.floor(s);
  const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600);
  const m = Math.floor(s % 3600 / 60);
  return (d ? d + "d " : "") + (d || h ? h + "h " : "") + m + "m " + s % 60 + "s";
}

function check(now, c) {
  if (!c) return "none";
  const ago = " (" + duration(now - c.time) + " ago)";
  return (c.ok ? "ok" : "failed: " + c.reason) + ago;
}

function render(s) {
  document.getElementById("version").textContent = s.version;
  document.getElementById("uptime").textContent = duration(s.uptime);
  const workers = document.getElementById("workers");
  workers.hidden = !s.workers;
  if (s.workers) {
    workers.replaceChildren(el("h2", {}, "workers"), table("workers", WORKER,
      s.workers.map(w => [{class: "worker", "data-worker": w.worker},
        [w.worker, w.pid, w.error || w.clients, w.handshakes,
         w.error ? "" : duration(w.uptime), w.restarts || 0]])));
  }
  document.getElementById("clients").textContent = s.workers
    ? s.workers.reduce((n, w) => n + (w.clients || 0), 0) + " (all workers)"
    : s.clients;
  const sections = s.routes.map(r => {
    const sec = el("section",
      {class: "route", id: "route-" + r.name, "data-route": r.name});
    const h = el("h2", {}, r.name + " ");
    h.append(el("small", {class: "route-info"},
      [r.mode, (r.host || "") + r.path, "balancer " + r.balancer, "health " + r.health]
        .concat(r.removed ? ["removed"] : []).join(" \\u00b7 ")));
    sec.append(h, table("backends", BACKEND, r.backends.map(b => [
      {class: "backend state-" + b.state, "data-route": r.name, "data-backend": b.name},
      [b.name, b.state, b.connections, b.totalConnections, b.toBackend.messages,
       b.toBackend.bytes, b.fromBackend.messages, b.fromBackend.bytes, b.failures,
       check(s.time, b.lastCheck)]])));
    if (r.channels.length) {
      sec.append(table("channels", CHANNEL, r.channels.map(c => [
        {class: "channel", "data-route": r.name, "data-channel": c.key},
        [c.key || "(route)", c.state, c.backend || "", c.clients, c.replay,
         c.messagesIn, c.deliveries, c.slowDrops, c.slowCloses, c.clientDrops]])));
    }
    return sec;
  });
  document.getElementById("routes").replaceChildren(...sections);
}

async function refresh() {
  const error = document.getElementById("error");
  try {
    const response = await fetch("status", {cache: "no-store"});
    if (!response.ok) throw new Error("status answered " + response.status);
    render(await response.json());
    refreshes += 1;
    const updated = document.getElementById("updated");
    updated.dataset.refreshes = refreshes;
    updated.textContent = "updated " + new Date().toLocaleTimeString();
    error.hidden = true;
  } catch (e) {
    error.textContent = String(e);
    error.hidden = false;
  }
  setTimeout(refresh, 1000);
}
refresh();
</script>
</body>
</html>
"""
