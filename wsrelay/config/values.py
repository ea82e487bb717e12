# -*- test-case-name: tests.test_config -*-
"""
The frozen value classes a configuration file is read into.

kw_only: derived fields without defaults follow fields with defaults, and a
keyword call reads better for values this wide.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, TypeAlias
from urllib.parse import urlsplit, urlunsplit

from wsrelay.auth import NO_AUTH
from wsrelay.config.errors import _BadValue, _expected

NO_HEALTH = "none"
"""
The value of C{health} that turns active checks off.
"""


_BACKEND_NAME = re.compile(r"[A-Za-z0-9_.:\[\]-]+\Z")
_HOST_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\Z")
_IPV4_LIKE = re.compile(r"[0-9.]+\Z")
_PRINTABLE_ASCII = re.compile(r"[\x21-\x7e]+\Z")
_MAX_WEIGHT = 1000

#: The largest C{maxconn=} a backend may have.
_MAX_MAXCONN = 1_000_000
_DEFAULT_BALANCER = "round_robin"

DEFAULT_SOURCE = "websocket"
"""
The source of a fan-out route without C{source}: its C{backends}, the only
source that always needs them.
"""


def _normaliseHost(host: str) -> str | None:
    """
    Check a host name or IP address (without brackets or port).

    @param host: Lower-case host text.
    @return: The host (an IP address in its canonical form), or L{None} when
        C{host} is neither a host name nor an IP address.
    """
    try:
        if ":" in host:
            return str(ipaddress.IPv6Address(host))
        if _IPV4_LIKE.match(host):
            return str(ipaddress.IPv4Address(host))
    except ValueError:
        return None
    if len(host) > 253:
        return None
    if all(_HOST_LABEL.match(label) for label in host.split(".")):
        return host
    return None


def redactURL(url: str) -> str:
    """
    A URL as it may be shown: in the admin API, metrics and logs.

    A backend URL's query (and user information, though the configuration
    refuses it) often holds a secret, such as C{?apikey=...}: each is
    replaced by C{REDACTED}, so that the reader still sees that there was
    one.  So is a fragment, and, in a URL without C{//} (a typo such as
    C{ws:user:pass@host}), whatever comes before an C{@}.  Configuration
    errors show bad URLs this way too, since they reach logs and the
    admin API's answers.

    @return: C{url} without its user information, query and fragment.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "REDACTED"
    netloc = parts.netloc
    path = parts.path
    if "@" in netloc:
        netloc = "REDACTED@" + netloc.rpartition("@")[2]
    elif not netloc and "@" in path:
        path = "REDACTED@" + path.rpartition("@")[2]
    shown = urlunsplit((parts.scheme, netloc, path, "", ""))
    if parts.query:
        shown += "?REDACTED"
    if parts.fragment:
        shown += "#REDACTED"
    return shown


def _weightProblem(url: str, weight: str) -> str:
    return _expected(
        f"a whole number between 1 and {_MAX_WEIGHT} as weight of {redactURL(url)}",
        weight,
    )


def _maxconnProblem(url: str, maxconn: str) -> str:
    return _expected(
        f"a whole number between 1 and {_MAX_MAXCONN} as maxconn of"
        f" {redactURL(url)} (leave it out for no limit)",
        maxconn,
    )


@dataclass(frozen=True, kw_only=True)
class BackendConfig:
    """
    One backend of a route: a C{ws://} or C{wss://} URL and its options.

    Build one with L{BackendConfig.fromURL}, which fills the derived fields.

    @ivar url: The URL as written.
    @ivar name: The C{name=} option; by default C{host:port}, with an IPv6
        host in brackets (C{"[::1]:9001"}).
    @ivar weight: The C{weight=} option, 1 to 1000.
    @ivar maxconn: The C{maxconn=} option: how many connections the relay
        opens to it at most (being opened or open, proxied clients and
        fan-out sources alike), or L{None} for no limit.
    @ivar secure: Whether the URL is C{wss://}.
    @ivar host: The host name or IP address, without brackets; IP
        addresses in canonical form.
    @ivar port: The port; 80 for C{ws://} and 443 for C{wss://} by default.
    @ivar path: The URL's path, C{"/"} when it has none.
    @ivar query: The URL's query without C{?}, C{""} when it has none.
    """

    url: str
    name: str
    weight: int = 1
    maxconn: int | None = None
    secure: bool
    host: str
    port: int
    path: str
    query: str

    @classmethod
    def fromURL(
        cls,
        url: str,
        name: str | None = None,
        weight: int = 1,
        maxconn: int | None = None,
    ) -> BackendConfig:
        """
        Check a backend URL and its options, and derive the other fields.

        @param url: A C{ws://} or C{wss://} URL with a host, and without
            user information or fragment.
        @param name: The backend's name, or L{None} for C{host:port}.
        @param weight: The backend's weight, 1 to 1000.
        @param maxconn: Its connection limit, 1 to 1000000, or L{None}.

        @raise ValueError: When C{url}, C{name} or C{weight} is not
            acceptable; the message says why, in one line.
        """
        what = "a ws:// or wss:// URL with a host"
        shown = redactURL(url)
        if not _PRINTABLE_ASCII.match(url):
            raise _BadValue(_expected(what + " (printable ASCII only)", shown))
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as e:
            raise _BadValue(_expected(what, shown) + f" ({e})") from None
        if parts.scheme not in ("ws", "wss"):
            raise _BadValue(_expected(what, shown))
        if "@" in parts.netloc:
            raise _BadValue(_expected(what + " and no user information", shown))
        if "#" in url:
            raise _BadValue(_expected(what + " and no fragment", shown))
        host = _normaliseHost(parts.hostname or "")
        if host is None or (":" in host) != parts.netloc.startswith("["):
            raise _BadValue(_expected(what + " name or IP address", shown))
        secure = parts.scheme == "wss"
        if port is None:
            port = 443 if secure else 80
        elif port == 0:
            raise _BadValue(_expected(what + " and a port from 1 to 65535", shown))
        if name is None:
            name = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        elif not _BACKEND_NAME.match(name):
            raise _BadValue(
                _expected(
                    f"a name of letters, digits and '_.:[]-' for {shown}",
                    name,
                )
            )
        if not 1 <= weight <= _MAX_WEIGHT:
            raise _BadValue(_weightProblem(url, str(weight)))
        if maxconn is not None and not 1 <= maxconn <= _MAX_MAXCONN:
            raise _BadValue(_maxconnProblem(url, str(maxconn)))
        return cls(
            url=url,
            name=name,
            weight=weight,
            maxconn=maxconn,
            secure=secure,
            host=host,
            port=port,
            path=parts.path or "/",
            query=parts.query,
        )


@dataclass(frozen=True, kw_only=True)
class BaseRouteConfig:
    """
    What every C{[route:NAME]} section has, whatever its mode: which
    requests it takes, its backends and how they are picked and checked.
    A route is a L{ProxyRouteConfig} or a L{FanoutRouteConfig} (see
    L{RouteConfig}), never a bare L{BaseRouteConfig}.

    @ivar name: The part of the section name after C{route:}.
    @ivar path: The path prefix it matches, starting with C{/}, without a
        trailing C{/} (except for C{"/"} itself).
    @ivar host: The host it matches (lower case, no port, IPv6 without
        brackets), or L{None} for any host.
    @ivar backends: The backends, in the order of the file; names unique.
    @ivar balancer: The name of the balancer plugin.
    @ivar options: The values of the keys the balancer plugin declares, as
        written (read only; not part of the hash).
    @ivar slowstart: Seconds over which a backend that came up gets its
        share of new connections back; 0: at once.
    @ivar allowedOrigins: The C{Origin}s whose handshakes are accepted
        (lower case; C{*.} matches subdomains); empty: any.
    @ivar caFile: Certificates trusted for C{wss://} backends, or L{None}
        for the system's.
    @ivar verify: Whether C{wss://} backends' certificates are verified.
    @ivar health: The name of the health-checker plugin, or L{NO_HEALTH}.
    @ivar healthInterval: Seconds between two checks of a backend.
    @ivar healthTimeout: Seconds before a check counts as failed.
    @ivar rise: Successes in a row that bring a down backend up.
    @ivar fall: Failures in a row (checks or connections) that take an up
        backend down.
    @ivar healthOptions: The values of the keys the checker declares.
    @ivar auth: The name of the authorizer plugin asked about each request
        before any backend is contacted, or L{NO_AUTH}.
    @ivar authTimeout: Seconds the authorizer has to answer (then 503).
    @ivar authOptions: The values of the keys the authorizer declares.
    @ivar queueTimeout: Seconds a handshake waits in the route's queue when
        every backend that may take it is at its C{maxconn}; 0: it is
        refused at once.
    """

    name: str
    path: str
    host: str | None = None
    backends: tuple[BackendConfig, ...]
    balancer: str = _DEFAULT_BALANCER
    options: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType({}), hash=False
    )
    slowstart: float = 0.0
    allowedOrigins: tuple[str, ...] = ()
    caFile: str | None = None
    verify: bool = True
    health: str = NO_HEALTH
    healthInterval: float = 2.0
    healthTimeout: float = 2.0
    rise: int = 2
    fall: int = 3
    healthOptions: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType({}), hash=False
    )
    auth: str = NO_AUTH
    authTimeout: float = 5.0
    authOptions: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType({}), hash=False
    )
    queueTimeout: float = 0.0

    @property
    def section(self) -> str:
        """
        The name of the section this route came from, for messages.
        """
        return "route:" + self.name


@dataclass(frozen=True, kw_only=True)
class ProxyRouteConfig(BaseRouteConfig):
    """
    A C{[route:NAME]} section with C{mode = proxy} (the default): each
    client gets a backend connection of its own.

    @ivar mode: C{"proxy"}, always: tells the two kinds of route apart
        (C{route.mode == "proxy"} narrows a L{RouteConfig} for mypy).
    @ivar failover: C{"close"} or C{"reconnect"}.
    @ivar failoverBuffer: Bytes of client messages buffered while
        reconnecting to another backend.
    @ivar dataPath: C{"passthrough"} or C{"message"}; when not set,
        C{"message"} with C{failover = reconnect}, else C{"passthrough"}.
    @ivar compression: Message path: whether the relay negotiates
        permessage-deflate on each leg when the client offers it.
    """

    mode: Literal["proxy"] = field(default="proxy", init=False)
    failover: str = "close"
    failoverBuffer: int = 1048576
    dataPath: str = "passthrough"
    compression: bool = True


@dataclass(frozen=True, kw_only=True)
class FanoutRouteConfig(BaseRouteConfig):
    """
    A C{[route:NAME]} section with C{mode = fanout}: one upstream per
    channel, whose messages go to every client of the channel.

    @ivar mode: C{"fanout"}, always (see L{ProxyRouteConfig.mode}).
    @ivar channel: C{"route"} (one upstream for the route) or C{"path"}
        (one per client path and query under the prefix).
    @ivar replay: Messages sent to a client when it joins.
    @ivar clientMessages: C{"drop"} or C{"forward"} upstream.
    @ivar maxClientBuffer: Bytes queued for one client before
        L{slowClient} applies.
    @ivar slowClient: C{"drop"} (skip messages) or C{"close"}.
    @ivar writeDelay: Milliseconds a channel gathers the messages of its
        source before writing them to its clients, in one write each; 0:
        once per reactor turn.
    @ivar connect: C{"eager"} (at start) or C{"lazy"} (at the first
        client).
    @ivar linger: Seconds a lazy channel's upstream stays open after its
        last client left.
    @ivar subscribe: Text messages sent upstream on every connect, in
        order.
    @ivar backoffBase: The first delay before reconnecting.
    @ivar backoffCap: The longest delay before reconnecting.
    @ivar source: The name of the source plugin (C{"websocket"}: the
        route's backends).
    @ivar sourceOptions: The values of the keys the source plugin
        declares, as written (read only; not part of the hash).
    @ivar resume: L{None} (clients cannot resume), C{"json:FIELD"} (a
        message's id is its top-level JSON field C{FIELD}) or
        C{"envelope"} (each message goes out as C{{"id": ..., "data":
        ...}}); see L{wsrelay.fanout.resume}.
    @ivar resumeParam: The query parameter naming the id a client resumes
        after.
    @ivar resumeMiss: C{"replay"} (a client whose id is gone gets the
        replay) or C{"close"} (it is closed with 4410).
    @ivar resumeWindow: Messages kept for resuming clients, when the source
        keeps no history of its own.
    """

    mode: Literal["fanout"] = field(default="fanout", init=False)
    channel: str = "route"
    replay: int = 0
    clientMessages: str = "drop"
    maxClientBuffer: int = 1048576
    slowClient: str = "drop"
    writeDelay: float = 0.0
    connect: str = "eager"
    linger: float = 30.0
    subscribe: tuple[str, ...] = ()
    backoffBase: float = 0.5
    backoffCap: float = 30.0
    source: str = DEFAULT_SOURCE
    sourceOptions: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType({}), hash=False
    )
    resume: str | None = None
    resumeParam: str = "since"
    resumeMiss: str = "replay"
    resumeWindow: int = 1000


RouteConfig: TypeAlias = ProxyRouteConfig | FanoutRouteConfig
"""
One C{[route:NAME]} section: a proxy route or a fan-out route, told apart
by C{mode}.
"""

ROUTE_CLASSES: Mapping[str, type[RouteConfig]] = MappingProxyType(
    {"proxy": ProxyRouteConfig, "fanout": FanoutRouteConfig}
)
"""
The class of a route, by its C{mode}; the first is the default mode.
"""


@dataclass(frozen=True, kw_only=True)
class DemoConfig:
    """
    The optional C{[demo]} section: demo backends run inside the relay.

    @ivar echo: Server endpoint string of the echo backend, or L{None}.
    @ivar ticker: Server endpoint string of the ticker, or L{None}.
    @ivar tickerInterval: Seconds between two ticks.
    """

    echo: str | None = None
    ticker: str | None = None
    tickerInterval: float = 0.25


@dataclass(frozen=True, kw_only=True)
class RelayConfig:
    """
    The whole configuration file.

    @ivar path: The absolute path of the file.
    @ivar listen: Server endpoint strings to listen on.
    @ivar maxMessageSize: Largest message, in bytes.
    @ivar maxFrameSize: Largest frame, in bytes; 0 for L{maxMessageSize}.
    @ivar maxHeaderSize: Largest HTTP request head, in bytes.
    @ivar handshakeTimeout: Seconds a client has to finish its handshake.
    @ivar connectTimeout: Seconds to connect to a backend.
    @ivar idleTimeout: Seconds without a message before closing; 0: never.
    @ivar pingInterval: Seconds between pings; 0: no pings.
    @ivar pingTimeout: Seconds to wait for a pong.
    @ivar closeTimeout: Seconds to wait for the peer's close reply.
    @ivar trustedProxies: Networks whose C{X-Forwarded-For} is believed,
        normalised (C{"10.0.0.1/32"}).
    @ivar pluginPath: Absolute directories searched for plugins.
    @ivar admin: Server endpoint string of the admin listener, or L{None};
        a C{tcp:}, C{tcp6:} or C{ssl:} one given without an interface is
        made to listen on loopback, and other types (but C{unix:} and
        C{systemd:}) must name theirs.
    @ivar adminHosts: Host names (lower case) the admin listener answers
        for, besides IP literals and C{localhost}.
    @ivar adminTokenFile: Absolute path of the file holding the bearer
        token for the admin API's actions, or L{None} (actions refused).
    @ivar controlSocket: Absolute path of the Unix socket on which a new
        relay (C{--takeover}) takes the listening sockets over, or L{None}.
    @ivar drainTimeout: Seconds a stopping relay waits for close
        handshakes.
    @ivar closeSpread: Seconds over which closes for a drained, disabled
        or stopping relay's clients are spread; 0: all at once.
    @ivar maxHandshakesPerSecond: Relay-wide rate of new client handshakes
        (a token bucket); 0: no limit.
    @ivar maxConnections: Client connections open at once; 0: no limit.
    @ivar maxConnectionsPerIp: The same per client address.
    @ivar handshakeRatePerIp: Handshakes per second per client address (a
        token bucket each); 0: no limit.
    @ivar maxMessagesPerSecond: Messages per second one client may send;
        0: no limit.
    @ivar messageRateAction: C{"close"} (1008) or C{"drop"} beyond it.
    @ivar workers: Relay processes sharing the listening ports.
    @ivar accessLog: Whether each client connection is logged as it ends.
    @ivar routes: The routes, in the order of the file.
    @ivar demo: The C{[demo]} section (all unset when absent).
    """

    path: str
    listen: tuple[str, ...]
    maxMessageSize: int = 16777216
    maxFrameSize: int = 0
    maxHeaderSize: int = 16384
    handshakeTimeout: float = 10.0
    connectTimeout: float = 5.0
    idleTimeout: float = 0.0
    pingInterval: float = 30.0
    pingTimeout: float = 10.0
    closeTimeout: float = 5.0
    trustedProxies: tuple[str, ...] = ()
    pluginPath: tuple[str, ...] = ()
    admin: str | None = None
    adminHosts: tuple[str, ...] = ()
    adminTokenFile: str | None = None
    controlSocket: str | None = None
    drainTimeout: float = 30.0
    closeSpread: float = 0.0
    maxHandshakesPerSecond: float = 0.0
    maxConnections: int = 0
    maxConnectionsPerIp: int = 0
    handshakeRatePerIp: float = 0.0
    maxMessagesPerSecond: int = 0
    messageRateAction: str = "close"
    workers: int = 1
    accessLog: bool = True
    routes: tuple[RouteConfig, ...]
    demo: DemoConfig = field(default_factory=DemoConfig)
