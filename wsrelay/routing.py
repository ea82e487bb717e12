# -*- test-case-name: tests.test_units,tests.test_edge,tests.test_heads -*-
"""
Routes and backends as the relay holds them at run time.

A L{Route} is an immutable value built from a route's configuration and
swapped whole on reload; open sessions keep the route they started with.
A L{Backend} carries the mutable state of one backend (open connections,
state, counters); a reload hands the same object to the new route when the
backend's URL did not change, so counters and health survive it.
"""

from __future__ import annotations

import math
import re
import string
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from zope.interface import implementer

from wsrelay.interfaces import ConnectionInfo as ConnectionInfo  # re-exported
from wsrelay.interfaces import IBackend, ILoadListener
from wsrelay.proxy.queue import RouteQueue

if TYPE_CHECKING:
    from collections.abc import Iterable

    from twisted.internet.defer import Deferred
    from twisted.internet.interfaces import IReactorTime

    from wsrelay.config import BackendConfig, RouteConfig
    from wsrelay.interfaces import IAuthorizer, IBalancer, ISourceFactory


#: How many recent health checks a backend remembers.
CHECKS_KEPT = 10

UP = "up"
DOWN = "down"
ENABLED = "enabled"
DRAINING = "draining"
DISABLED = "disabled"


def endpointDescription(host: str, port: int, secure: bool, timeout: float) -> str:
    """
    @return: The Twisted client endpoint string that reaches a backend.
    """
    escaped = host.replace("\\", "\\\\").replace(":", "\\:")
    seconds = max(1, math.ceil(timeout))
    if secure:
        return f"tls:{escaped}:{port}:timeout={seconds}"
    return f"tcp:host={escaped}:port={port}:timeout={seconds}"


def hostHeader(config: BackendConfig) -> str:
    """
    @return: The C{Host} header for requests to the backend C{config}
        describes.
    """
    host = f"[{config.host}]" if ":" in config.host else config.host
    default = 443 if config.secure else 80
    return host if config.port == default else f"{host}:{config.port}"


@implementer(IBackend)
class Backend:
    """
    One backend of one route, with its run-time state.

    Three things decide whether it takes new connections: its health
    (L{healthy}, kept by L{wsrelay.health.monitor.HealthMonitor}), the
    operator's choice (L{admin}) and its C{maxconn=} (L{full}).

    @ivar healthy: Whether checks (active or passive) say it works.
    @ivar admin: L{ENABLED}, L{DRAINING} or L{DISABLED}.
    @ivar connections: Connections open through the relay now.
    @ivar connecting: Connections being opened now (each holds one of
        the C{maxconn=} slots until it opens or fails).
    @ivar failures: Failed connects, handshakes and checks, ever.
    @ivar lastCheck: The last active check: its time, result and reason,
        or L{None} before the first.
    @ivar checks: The last few active checks, oldest first.
    @ivar sentMessages: Messages sent to it by connections now closed
        (L{wsrelay.registry.Registry.traffic} adds the open ones).
    @ivar sentBytes: Payload bytes of those.
    @ivar receivedMessages: Messages received from it, likewise.
    @ivar receivedBytes: Payload bytes of those.
    """

    def __init__(self, config: BackendConfig) -> None:
        self.config = config
        self.name = config.name
        self.url = config.url
        self.host = config.host
        self.port = config.port
        self.healthy = True
        self.checks: deque[tuple[float, bool, str]] = deque(maxlen=CHECKS_KEPT)
        self.sentMessages = 0
        self.sentBytes = 0
        self.receivedMessages = 0
        self.receivedBytes = 0
        self._ramp: tuple[IReactorTime, float, float] | None = None
        # Set by the relay for each configuration.
        self.endpoint: Any = None
        self.factory: Any = None
        self.admin = ENABLED
        self.connections = 0
        self.connecting = 0
        self.totalConnections = 0
        self.failures = 0
        self.lastCheck: tuple[float, bool, str] | None = None
        self.successesInRow = 0
        self.failuresInRow = 0
        # Made once: a reload keeps this object only for the same URL.
        self._hostHeader = hostHeader(config)

    @property
    def weight(self) -> float:
        """
        The configured weight, or during slow start a part of it that grows
        from a tenth to all of it.
        """
        ramp = self._ramp
        if ramp is None:
            return self.config.weight
        clock, start, duration = ramp
        elapsed = clock.seconds() - start
        if elapsed >= duration:
            self._ramp = None
            return self.config.weight
        return self.config.weight * max(0.1, elapsed / duration)

    def slowStart(self, clock: IReactorTime, duration: float) -> None:
        """
        Ramp this backend's weight up over C{duration} seconds from now.
        """
        self._ramp = (clock, clock.seconds(), duration) if duration > 0 else None

    def count(self, leg: Any) -> None:
        """
        Add the traffic of a closed upstream leg to this backend's totals.
        """
        self.sentMessages += leg.messagesOut
        self.sentBytes += leg.bytesOut
        self.receivedMessages += leg.messagesIn
        self.receivedBytes += leg.bytesIn

    @property
    def state(self) -> str:
        """
        L{DISABLED} or L{DRAINING} when the operator said so, else L{UP} or
        L{DOWN}.
        """
        if self.admin != ENABLED:
            return self.admin
        return UP if self.healthy else DOWN

    @property
    def maxconn(self) -> int | None:
        """
        The configured C{maxconn=}, or L{None} for no limit.
        """
        return self.config.maxconn

    @property
    def full(self) -> bool:
        """
        Whether the connections being opened and open take all of its
        C{maxconn=} slots.
        """
        limit = self.config.maxconn
        return limit is not None and self.connections + self.connecting >= limit

    @property
    def available(self) -> bool:
        """
        Whether new connections may go to this backend.
        """
        return self.healthy and self.admin == ENABLED

    def hostHeader(self) -> str:
        """
        @return: The C{Host} header for requests to this backend.
        """
        return self._hostHeader

    def __repr__(self) -> str:
        return f"<Backend {self.name} {self.state}>"


def joinPath(base: str, rest: str) -> str:
    """
    Append a route remainder to a backend URL path.
    """
    if not rest:
        return base or "/"
    return base.rstrip("/") + rest


def _hasLoadHooks(balancer: object) -> bool:
    """
    @return: Whether C{balancer} has both of L{ILoadListener}'s methods,
        without declaring it.
    """
    return all(
        callable(getattr(balancer, name, None))
        for name in ("connectionOpened", "connectionClosed")
    )


class Monitor(Protocol):
    """
    What a route's health monitor (L{wsrelay.health.monitor.HealthMonitor}) does
    for the relay: run the active checks, and hear what real connections
    show (passive health).
    """

    def start(self) -> None:
        """
        Start the active checks.
        """

    def stop(self) -> None:
        """
        Stop them.
        """

    def failed(self, backend: Backend, reason: str) -> None:
        """
        A connection to C{backend} failed.
        """

    def succeeded(self, backend: Backend) -> None:
        """
        A connection to C{backend} opened, while it had a run of failures
        (C{failuresInRow}): the connector tells only then, not on every
        connection.
        """


@dataclass(frozen=True)
class Route:
    """
    One route: its configuration, its backends, its balancer and the
    monitor of its backends' health.

    @ivar source: A fan-out route's source plugin (C{source = NAME}), or
        L{None} (a proxy route; or the built-in C{websocket} source).
    @ivar loadListener: The balancer's optional load hooks, or L{None}:
        looked up once, not at each connection.
    @ivar authorizer: The route's authorizer (C{auth = NAME}), or L{None}.
    @ivar queue: The handshakes waiting for a backend below its
        C{maxconn=}; the route of the same name before a reload had the
        same one.
    """

    config: RouteConfig
    backends: tuple[Backend, ...]
    balancer: IBalancer
    monitor: Monitor
    source: ISourceFactory | None = None
    authorizer: IAuthorizer | None = None
    queue: RouteQueue = field(default_factory=RouteQueue, compare=False)
    loadListener: ILoadListener | None = field(init=False)
    #: The route's name (its configuration's): read on every session, an
    #: attribute rather than a property.
    name: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", self.config.name)
        listener = ILoadListener(self.balancer, None)
        if listener is None and _hasLoadHooks(self.balancer):
            # A balancer written before ILoadListener existed, when IBalancer
            # itself had the hooks: still told, as it expects.
            listener = self.balancer
        object.__setattr__(self, "loadListener", listener)

    def stop(self) -> Deferred[None] | None:
        """
        The route is replaced (a reload) or the relay stops: its health
        checks stop, and its authorizer lets go of what it holds, when it
        has a C{close()} (the C{http} authorizer's idle connections).

        @return: What C{close()} returned: a L{Deferred} that fires once
            the authorizer closed, or L{None}.
        """
        self.monitor.stop()
        close = getattr(self.authorizer, "close", None)
        if close is None:
            return None
        closed: Deferred[None] | None = close()
        return closed

    def candidates(self) -> list[Backend]:
        """
        @return: The backends that may take a new connection now: available
            and below their C{maxconn=}.  Balancers see only these.
        """
        # (Backend.available and Backend.full, read without their
        # property calls: this runs for every connect attempt.)
        return [
            b
            for b in self.backends
            if b.healthy
            and b.admin == ENABLED
            and (
                (limit := b.config.maxconn) is None
                or b.connections + b.connecting < limit
            )
        ]

    def hasRoom(self) -> bool:
        """
        @return: Whether a backend may take a new connection now.
        """
        return any(b.available and not b.full for b in self.backends)


class BadPath(ValueError):
    """
    A request path the relay refuses to route.
    """


class PathAboveRoot(BadPath):
    """
    A request path whose C{..} segments climb above C{/}.
    """


#: Percent-encodings a path may not hold: an encoded C{/} or C{\\} is a
#: separator to some backends (WHATWG URL parsers resolve C{..%2f}), and
#: an encoded NUL ends a string in others.
_FORBIDDEN = re.compile(r"%(?:2f|5c|00)", re.IGNORECASE)

#: A percent-encoded octet.
_ENCODED = re.compile(r"%([0-9A-Fa-f]{2})")

#: The unreserved characters (RFC 3986, 2.3), which mean the same
#: percent-encoded or not.
_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")


def _decodeUnreserved(match: re.Match[str]) -> str:
    """
    @return: The character a percent-encoding stands for when it is
        unreserved, else the percent-encoding as it was.
    """
    c = chr(int(match.group(1), 16))
    return c if c in _UNRESERVED else match.group(0)


def normalizePath(path: str) -> str:
    """
    Normalize a request path as nginx does before it picks a location:
    decode percent-encoded unreserved characters (RFC 3986, 6.2.2.2: so
    C{%2e} is a dot and C{/%61pi} is C{/api}), remove dot segments
    (RFC 3986, 5.2.4) and merge runs of C{/} (nginx's C{merge_slashes}).
    Every other percent-encoding stays as it was sent.

    @param path: The path of a request target, without its query.
    @return: The path, starting with C{/}, with no empty, C{.} or C{..}
        segment but the last, which is empty when the path ends with C{/}
        or with a dot segment (C{/a/b/..} is C{/a/}).
    @raise PathAboveRoot: When a C{..} would climb above C{/}.
    @raise BadPath: When the path does not start with C{/}, or holds a
        C{\\}, an encoded C{/} or C{\\} (C{%2F}, C{%5C}) or an encoded NUL
        (C{%00}), in any case.
    """
    if not path.startswith("/"):
        raise BadPath(f"path does not start with /: {path[:40]!r}")
    if "/." not in path and "//" not in path and "%" not in path and "\\" not in path:
        # Nothing to decode, remove or merge (most paths).
        return path
    return normalizeSegments(path)


def normalizeSegments(path: str) -> str:
    """
    Normalize a path that starts with C{/} segment by segment, as
    L{normalizePath} says.

    @raise PathAboveRoot: When a C{..} would climb above C{/}.
    @raise BadPath: When it holds a forbidden character or encoding.
    """
    if "\\" in path or _FORBIDDEN.search(path):
        raise BadPath(f"encoded / or \\, \\ or NUL in path {path[:40]!r}")
    if "%" in path:
        path = _ENCODED.sub(_decodeUnreserved, path)
    segments = path.split("/")
    # The empty part before the first "/".
    del segments[0]
    last = len(segments) - 1
    out: list[str] = []
    for i, segment in enumerate(segments):
        if segment == ".":
            if i == last:
                out.append("")
            continue
        if segment == "..":
            if not out:
                raise PathAboveRoot(path)
            out.pop()
            if i == last:
                out.append("")
            continue
        if not segment and i != last:
            continue
        out.append(segment)
    return "/" + "/".join(out)


def matchPrefix(prefix: str, path: str) -> str | None:
    """
    Match C{path} against a route prefix at a segment boundary.

    @return: The remainder of C{path} after C{prefix} (empty or starting
        with C{/}), or L{None} when it does not match.
    """
    if prefix == "/":
        return path
    if path == prefix:
        return ""
    if path.startswith(prefix) and path[len(prefix)] == "/":
        return path[len(prefix) :]
    return None


def byRank(routes: Iterable[Route]) -> list[tuple[str | None, str, Route]]:
    """
    @return: The host, prefix and route of each of C{routes}, in the order
        that makes the first match the best (L{RouteTable.match}): the
        routes for a host before those for any, longer prefixes first, and
        among equals, the order given.
    """
    ranked = [(r.config.host, r.config.path, r) for r in routes]
    ranked.sort(key=lambda e: (e[0] is not None, len(e[1])), reverse=True)
    return ranked


@dataclass
class RouteTable:
    """
    All routes, looked up by host and path.  One table lives as long as
    the relay; a reload puts the new routes in it (L{install}), so that
    everything holding the table sees them.
    """

    routes: tuple[Route, ...]
    #: L{routes}, and their host, prefix and themselves in the order
    #: L{match} tries them (L{byRank}), made again when L{routes} changes.
    _ranked: tuple[tuple[Route, ...], list[tuple[str | None, str, Route]]] | None = (
        field(default=None, init=False, repr=False, compare=False)
    )
    #: The heads screened against these routes that clients send again
    #: but for their key (L{wsrelay.ws.screening.HeadShape}, by the head
    #: without its key), emptied when the routes change (L{install}).
    shapes: dict[bytes, Any] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    #: Heads in a row that L{shapes} did not hold, and how many heads are
    #: still to be screened without looking there (the screening's, see
    #: L{wsrelay.ws.screening.screenRequest}).
    shapeMisses: int = field(default=0, init=False, repr=False, compare=False)
    shapesSkipped: int = field(default=0, init=False, repr=False, compare=False)

    def install(self, routes: tuple[Route, ...]) -> None:
        """
        Make C{routes} the routes in force, ranked at once: the routes they
        replace (their monitors, authorizers, queues and backends) are let
        go now, not at the next request.  Routes are replaced, never
        changed in place, so that their rank holds.
        """
        self.routes = routes
        self._ranked = (routes, byRank(routes))
        self.shapes = {}

    def match(self, host: str | None, path: str) -> tuple[Route, str] | None:
        """
        Find the route for a request: the longest matching prefix among the
        routes for this host, then among the routes for any host.

        @param host: The request's host, lower case, without port.
        @return: The route and the path remainder, or L{None}.
        """
        routes = self.routes
        ranked = self._ranked
        if ranked is None or ranked[0] is not routes:
            # (Once per table of routes: not per request.)
            ranked = self._ranked = (routes, byRank(routes))
        for rhost, prefix, route in ranked[1]:
            if rhost is not None and rhost != host:
                continue
            rest = matchPrefix(prefix, path)
            if rest is not None:
                return route, rest
        return None

    def byName(self, name: str) -> Route | None:
        """
        @return: The route called C{name}, or L{None}.
        """
        for route in self.routes:
            if route.name == name:
                return route
        return None


def buildBackends(
    config: RouteConfig, previous: Route | None = None
) -> tuple[Backend, ...]:
    """
    Make the backends of a route, reusing those of C{previous} whose name
    and URL did not change.
    """
    old = {b.name: b for b in previous.backends} if previous else {}
    result = []
    for bc in config.backends:
        b = old.get(bc.name)
        if b is not None and b.url == bc.url:
            b.config = bc
        else:
            b = Backend(bc)
        result.append(b)
    return tuple(result)
