# -*- test-case-name: tests.test_config -*-
"""
Reading and validating wsrelay's INI configuration file.

The file has one C{[relay]} section, one or more C{[route:NAME]} sections
and an optional C{[demo]} section; C{docs/configuration.md} describes every
key.  Every key a section knows is one L{KeySpec} row in L{KEYS}: the row
names the key, the field of the frozen value class it fills, a short type
for the documentation, the function that parses it and one line saying what
it means.  The field's default on the value class is the key's default; a
field without a default is a required key.

L{loadConfig} and L{parseConfig} raise nothing but L{ConfigError}, whose
message is one line naming the file, and where known the section and key::

    relay.ini: [route:chat] balancer: unknown balancer 'foo'; installed: ...
"""

from __future__ import annotations

import configparser
import dataclasses
import ipaddress
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactor

DEFAULT_BALANCERS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "round_robin": (),
        "least_connections": (),
        "random_two": (),
        "first": (),
        "consistent_hash": ("hash_on",),
    }
)
"""
The balancer names (and the route keys each declares) assumed when
L{loadConfig} is not told which balancer plugins are installed.
"""

DEFAULT_CHECKERS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "tcp": (),
        "websocket": ("health_path",),
        "http": ("health_path", "health_status"),
    }
)
"""
The health-checker names (and the route keys each declares) assumed when
L{loadConfig} is not told which checker plugins are installed.
"""

NO_HEALTH = "none"
"""
The value of C{health} that turns active checks off.
"""


class ConfigError(Exception):
    """
    The configuration file cannot be used.

    C{str(error)} is L{message}, one line:
    C{"<file>: [<section>] <key>: <problem>"}, without the key or the
    section when the problem is not about one.

    @ivar filename: The path of the file, as the caller gave it.
    @ivar section: The section's name (C{"route:chat"}), or L{None}.
    @ivar key: The key, or L{None}.
    @ivar problem: What is wrong, e.g. C{"expected ..., got '...'"}.
    @ivar message: The whole one-line message.
    """

    def __init__(
        self,
        filename: str,
        problem: str,
        section: str | None = None,
        key: str | None = None,
    ) -> None:
        """
        @param filename: See L{filename}.
        @param problem: See L{problem}.
        @param section: See L{section}.
        @param key: See L{key}; only used with a section.
        """
        self.filename = filename
        self.problem = problem
        self.section = section
        self.key = key
        if section is None:
            message = f"{filename}: {problem}"
        elif key is None:
            message = f"{filename}: [{section}] {problem}"
        else:
            message = f"{filename}: [{section}] {key}: {problem}"
        self.message = _oneLine(message)
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.filename, self.problem, self.section, self.key))


class _BadValue(ValueError):
    """
    A value is not acceptable; the message is the problem, without file,
    section or key (the section parser adds those).
    """


def _oneLine(text: str) -> str:
    """
    @return: C{text} with every line break replaced by a space.
    """
    return " ".join(text.splitlines())


def _expected(what: str, value: str) -> str:
    """
    @return: The usual problem text: C{"expected <what>, got <repr>"}.
    """
    return f"expected {what}, got {value!r}"


# Value classes.  kw_only: derived fields without defaults follow fields
# with defaults, and a keyword call reads better for values this wide.

_BACKEND_NAME = re.compile(r"[A-Za-z0-9_.:\[\]-]+\Z")
_HOST_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\Z")
_IPV4_LIKE = re.compile(r"[0-9.]+\Z")
_PRINTABLE_ASCII = re.compile(r"[\x21-\x7e]+\Z")
_MAX_WEIGHT = 1000
_DEFAULT_BALANCER = "round_robin"


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


@dataclass(frozen=True, kw_only=True)
class BackendConfig:
    """
    One backend of a route: a C{ws://} or C{wss://} URL and its options.

    Build one with L{BackendConfig.fromURL}, which fills the derived fields.

    @ivar url: The URL as written.
    @ivar name: The C{name=} option; by default C{host:port}, with an IPv6
        host in brackets (C{"[::1]:9001"}).
    @ivar weight: The C{weight=} option, 1 to 1000.
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
    secure: bool
    host: str
    port: int
    path: str
    query: str

    @classmethod
    def fromURL(
        cls, url: str, name: str | None = None, weight: int = 1
    ) -> BackendConfig:
        """
        Check a backend URL and its options, and derive the other fields.

        @param url: A C{ws://} or C{wss://} URL with a host, and without
            user information or fragment.
        @param name: The backend's name, or L{None} for C{host:port}.
        @param weight: The backend's weight, 1 to 1000.

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
        return cls(
            url=url,
            name=name,
            weight=weight,
            secure=secure,
            host=host,
            port=port,
            path=parts.path or "/",
            query=parts.query,
        )


@dataclass(frozen=True, kw_only=True)
class RouteConfig:
    """
    One C{[route:NAME]} section: which requests it takes and where they go.

    @ivar name: The part of the section name after C{route:}.
    @ivar path: The path prefix it matches, starting with C{/}, without a
        trailing C{/} (except for C{"/"} itself).
    @ivar host: The host it matches (lower case, no port, IPv6 without
        brackets), or L{None} for any host.
    @ivar mode: C{"proxy"} or C{"fanout"}.
    @ivar backends: The backends, in the order of the file; names unique.
    @ivar balancer: The name of the balancer plugin.
    @ivar failover: C{"close"} or C{"reconnect"}.
    @ivar failoverBuffer: Bytes of client messages buffered while
        reconnecting to another backend.
    @ivar dataPath: C{"passthrough"} or C{"message"} (proxy mode); when
        not set, C{"message"} with C{failover = reconnect}, else
        C{"passthrough"}.
    @ivar compression: Message path: whether the relay negotiates
        permessage-deflate on each leg when the client offers it.
    @ivar options: The values of the keys the balancer plugin declares, as
        written (read only; not part of the hash).
    @ivar channel: Fan-out: C{"route"} (one upstream for the route) or
        C{"path"} (one per client path and query under the prefix).
    @ivar replay: Fan-out: messages sent to a client when it joins.
    @ivar clientMessages: Fan-out: C{"drop"} or C{"forward"} upstream.
    @ivar maxClientBuffer: Fan-out: bytes queued for one client before
        L{slowClient} applies.
    @ivar slowClient: Fan-out: C{"drop"} (skip messages) or C{"close"}.
    @ivar connect: Fan-out: C{"eager"} (at start) or C{"lazy"} (at the
        first client).
    @ivar linger: Fan-out: seconds a lazy channel's upstream stays open
        after its last client left.
    @ivar subscribe: Fan-out: text messages sent upstream on every
        connect, in order.
    @ivar backoffBase: Fan-out: the first delay before reconnecting.
    @ivar backoffCap: Fan-out: the longest delay before reconnecting.
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
    """

    name: str
    path: str
    host: str | None = None
    mode: str = "proxy"
    backends: tuple[BackendConfig, ...]
    balancer: str = _DEFAULT_BALANCER
    failover: str = "close"
    failoverBuffer: int = 1048576
    dataPath: str = "passthrough"
    compression: bool = True
    options: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType({}), hash=False
    )
    channel: str = "route"
    replay: int = 0
    clientMessages: str = "drop"
    maxClientBuffer: int = 1048576
    slowClient: str = "drop"
    connect: str = "eager"
    linger: float = 30.0
    subscribe: tuple[str, ...] = ()
    backoffBase: float = 0.5
    backoffCap: float = 30.0
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

    @property
    def section(self) -> str:
        """
        The name of the section this route came from, for messages.
        """
        return "route:" + self.name


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


# Value parsers: each takes the value as written and the context, and
# returns the field's value or raises _BadValue.


@dataclass(frozen=True)
class _Context:
    """
    What value parsers may need besides the value.

    @ivar directory: The directory of the configuration file.
    @ivar balancers: Installed balancer names and the keys they declare.
    @ivar checkers: Installed health-checker names and their keys.
    """

    directory: str
    balancers: Mapping[str, tuple[str, ...]]
    checkers: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: DEFAULT_CHECKERS
    )


_Parser = Callable[[str, _Context], Any]
_DIGITS = re.compile(r"[0-9]+\Z")
_DECIMAL = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)\Z")
_MAX_INT = 2**63 - 1


def _wholeNumber(minimum: int, unit: str = "bytes") -> _Parser:
    """
    @return: A parser of whole numbers of C{unit} of at least C{minimum}.
    """
    what = f"a whole number of {unit} >= {minimum}"

    def parse(value: str, context: _Context) -> int:
        if not _DIGITS.match(value):
            raise _BadValue(_expected(what, value))
        number = int(value) if len(value.lstrip("0")) < 20 else _MAX_INT + 1
        if number > _MAX_INT:
            raise _BadValue(_expected(f"{what} and <= {_MAX_INT}", value))
        if number < minimum:
            raise _BadValue(_expected(what, value))
        return number

    return parse


def _seconds(zeroAllowed: bool, meaning: str = "") -> _Parser:
    """
    @return: A parser of durations in seconds (C{"0.5"}, C{"10"}): positive,
        or also zero when C{zeroAllowed}; C{meaning} explains zero.
    """
    what = "a number of seconds " + (">= 0" if zeroAllowed else "> 0") + meaning

    def parse(value: str, context: _Context) -> float:
        if not _DECIMAL.match(value):
            raise _BadValue(_expected(what, value))
        number = float(value)
        if not math.isfinite(number) or (number == 0 and not zeroAllowed):
            raise _BadValue(_expected(what, value))
        return number

    return parse


def _rate(value: str, context: _Context) -> float:
    if not _DECIMAL.match(value):
        raise _BadValue(_expected("a number >= 0 (0 = no limit)", value))
    return float(value)


def _choice(*words: str) -> _Parser:
    """
    @return: A parser accepting one of C{words}.
    """
    what = "one of " + ", ".join(repr(w) for w in words)

    def parse(value: str, context: _Context) -> str:
        if value not in words:
            raise _BadValue(_expected(what, value))
        return value

    return parse


def _checkServerEndpoint(description: str) -> str:
    """
    Check a server endpoint string the way C{strports} will parse it.

    @return: C{description}.
    """
    try:
        serverFromString(MemoryReactor(), description)
    except Exception as e:
        reason = str(e) or type(e).__name__
        raise _BadValue(
            f"not a valid Twisted server endpoint string: {description!r} ({reason})"
        ) from None
    return description


#: Where C{tcp:}, C{tcp6:} and C{ssl:} take their interface as a positional
#: argument, counting the type as argument 0 (C{tcp:PORT:INTERFACE}, and
#: see C{twisted.internet.endpoints}' parsers for the others).
_INTERFACE_POSITION = {"tcp": 2, "tcp6": 3, "ssl": 5}

#: The loopback interface, quoted for an endpoint string, per listener type.
_LOOPBACK = {"tcp": "127.0.0.1", "ssl": "127.0.0.1", "tcp6": "\\:\\:1"}

#: Listener types that never listen on a network interface of their own.
_NOT_NETWORK = ("unix", "systemd")


def _endpointArguments(description: str) -> tuple[list[str], dict[str, str]]:
    """
    Split a server endpoint string into its arguments with the quoting
    rules of Twisted's C{serverFromString}: C{:} separates arguments, the
    first C{=} of one separates its name from its value, and a backslash
    takes the next character as it is.

    @return: The positional arguments, the type first, and the keyword
        arguments.
    @raise ValueError: When C{description} ends with a lone backslash.
    """
    args: list[str] = []
    kwargs: dict[str, str] = {}
    name: str | None = None
    current: list[str] = []
    characters = iter(description)
    for character in characters:
        if character == "\\":
            escaped = next(characters, None)
            if escaped is None:
                raise ValueError("ends with a lone backslash")
            current.append(escaped)
        elif character == "=" and name is None:
            name = "".join(current)
            current = []
        elif character == ":":
            if name is None:
                args.append("".join(current))
            else:
                kwargs[name] = "".join(current)
            name = None
            current = []
        else:
            current.append(character)
    if name is None:
        args.append("".join(current))
    else:
        kwargs[name] = "".join(current)
    return args, kwargs


def _parseAdminEndpoint(value: str, context: _Context) -> str:
    """
    Parse C{admin}: a server endpoint string that, without an interface,
    listens on loopback rather than on every interface (C{/status} needs
    no token).

    A C{tcp:}, C{tcp6:} or C{ssl:} listener (also behind C{haproxy:})
    without an interface gets C{interface=} loopback; C{unix:} and
    C{systemd:} ones are kept as written, and any other type must name
    its interface: the relay cannot tell where it would listen.
    """
    description = _parseEndpoint(value, context)
    args, kwargs = _endpointArguments(description)
    offset = 1 if args[0].lower() == "haproxy" and len(args) > 1 else 0
    kind = args[offset].lower()
    if kind in _NOT_NETWORK:
        return description
    if "interface" in kwargs:
        return description
    if kind not in _INTERFACE_POSITION:
        raise _BadValue(
            f"cannot tell which interface {description!r} listens on; add"
            " interface=127.0.0.1 (or the address to serve the admin API on),"
            " or use a tcp:, tcp6:, ssl: or unix: endpoint"
        )
    if len(args) > offset + _INTERFACE_POSITION[kind]:
        return description
    safe = f"{description}:interface={_LOOPBACK[kind]}"
    try:
        interface = _listensOn(safe)
    except Exception as e:
        interface = str(e) or type(e).__name__
    if interface not in ("127.0.0.1", "::1"):
        raise _BadValue(
            f"{description!r} cannot be made to listen on loopback"
            f" ({interface}); add interface=127.0.0.1 (or the address to"
            " serve the admin API on)"
        )
    return safe


def _listensOn(description: str) -> str | None:
    """
    @return: The interface a TCP or TLS server endpoint string listens on
        (C{""} or C{"::"} for every one), or L{None} for another kind of
        listener.
    @raise Exception: Whatever Twisted raises when it cannot make the
        listener.
    """
    reactor = MemoryReactor()
    serverFromString(reactor, description).listen(Factory())
    for server in reactor.tcpServers:
        return str(server[3])
    for server in reactor.sslServers:
        return str(server[4])
    return None


def _parseAdminHosts(value: str, context: _Context) -> tuple[str, ...]:
    hosts = []
    for item in re.split(r"[\s,]+", value.lower()):
        if not item:
            continue
        host = _normaliseHost(item)
        if host is None:
            raise _BadValue(_expected("host names without port", item))
        hosts.append(host)
    return tuple(hosts)


def _parseListen(value: str, context: _Context) -> tuple[str, ...]:
    items = value.split()
    if not items:
        raise _BadValue(_expected("one or more server endpoint strings", value))
    for i, item in enumerate(items):
        _checkServerEndpoint(item)
        if item in items[:i]:
            raise _BadValue(f"endpoint {item!r} is listed twice")
    return tuple(items)


def _parseWorkers(value: str, context: _Context) -> int:
    if value == "auto":
        return os.cpu_count() or 1
    number: int = _wholeNumber(1, "processes")(value, context)
    return number


#: The listener types several worker processes can share (SO_REUSEPORT).
_SHAREABLE = ("tcp", "tcp6", "ssl")


def _shareable(description: str) -> bool:
    """
    @return: Whether worker processes can share a listener described so.
    """
    kind = description.removeprefix("haproxy:").split(":", 1)[0]
    return kind in _SHAREABLE


def _parseEndpoint(value: str, context: _Context) -> str:
    if len(value.split()) != 1:
        raise _BadValue(_expected("one server endpoint string", value))
    return _checkServerEndpoint(value)


def _parseTrustedProxies(value: str, context: _Context) -> tuple[str, ...]:
    networks = []
    for item in re.split(r"[\s,]+", value):
        if not item:
            continue
        try:
            network = ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise _BadValue(_expected("IP addresses or CIDR networks", item)) from None
        networks.append(str(network))
    return tuple(networks)


def _parsePluginPath(value: str, context: _Context) -> tuple[str, ...]:
    directories = []
    for item in value.split():
        directory = os.path.join(context.directory, os.path.expanduser(item))
        directory = os.path.abspath(directory)
        if not os.path.isdir(directory):
            raise _BadValue(
                _expected("an existing directory", item) + f" ({directory!r})"
            )
        directories.append(directory)
    return tuple(directories)


def _parseFile(value: str, context: _Context) -> str:
    path = os.path.abspath(os.path.join(context.directory, os.path.expanduser(value)))
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        raise _BadValue(_expected("a readable file", value) + f" ({path!r})")
    return path


def _parseOrigins(value: str, context: _Context) -> tuple[str, ...]:
    origins = []
    for item in re.split(r"[\s,]+", value):
        if not item:
            continue
        parts = urlsplit(item)
        if (
            parts.scheme not in ("http", "https")
            or not parts.netloc
            or parts.path not in ("", "/")
            or parts.query
            or parts.fragment
        ):
            raise _BadValue(_expected("origins such as https://app.example.com", item))
        origins.append(f"{parts.scheme}://{parts.netloc}".lower())
    if not origins:
        raise _BadValue(_expected("one or more origins", value))
    return tuple(origins)


def _onOff(value: str, context: _Context) -> bool:
    if value not in ("on", "off"):
        raise _BadValue(_expected("on or off", value))
    return value == "on"


def _parseRoutePath(value: str, context: _Context) -> str:
    if (
        not value.startswith("/")
        or not _PRINTABLE_ASCII.match(value)
        or "?" in value
        or "#" in value
    ):
        raise _BadValue(
            _expected("a path starting with '/' (no query, no fragment)", value)
        )
    return value.rstrip("/") or "/"


def _parseRouteHost(value: str, context: _Context) -> str:
    host = value.lower()
    if host.startswith("[") and host.endswith("]") and ":" in host:
        host = host[1:-1]
    normalised = _normaliseHost(host)
    if normalised is None:
        raise _BadValue(_expected("a host name or IP address without port", value))
    return normalised


_OPTION_TOKEN = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)\Z", re.DOTALL)
_BACKEND_OPTIONS = ("name", "weight")


def _parseBackends(value: str, context: _Context) -> tuple[BackendConfig, ...]:
    items: list[tuple[str, dict[str, str]]] = []
    for token in value.split():
        option = _OPTION_TOKEN.match(token)
        if option is None:
            items.append((token, {}))
            continue
        name = option.group(1).lower()
        if not items:
            raise _BadValue(f"option {name!r} comes before any backend URL")
        url, options = items[-1]
        if name not in _BACKEND_OPTIONS:
            raise _BadValue(
                f"unknown backend option {name!r} after {redactURL(url)};"
                " known options: " + ", ".join(_BACKEND_OPTIONS)
            )
        if name in options:
            raise _BadValue(f"option {name!r} given twice for {redactURL(url)}")
        options[name] = option.group(2)
    if not items:
        raise _BadValue(_expected("one or more ws:// or wss:// URLs", value))
    backends: list[BackendConfig] = []
    for url, options in items:
        weight = options.get("weight", "1")
        if not _DIGITS.match(weight) or len(weight.lstrip("0")) > 4:
            raise _BadValue(_weightProblem(url, weight))
        backend = BackendConfig.fromURL(url, options.get("name"), int(weight))
        if any(b.name == backend.name for b in backends):
            raise _BadValue(
                f"two backends are named {backend.name!r}; give one a name= option"
            )
        backends.append(backend)
    return tuple(backends)


def _installed(names: Iterable[str]) -> str:
    """
    @return: C{"; installed: "} and the installed plugins' names.
    """
    return "; installed: " + (", ".join(sorted(names)) or "none")


def _parseBalancer(value: str, context: _Context) -> str:
    if value not in context.balancers:
        raise _BadValue(f"unknown balancer {value!r}" + _installed(context.balancers))
    return value


def _parseLines(value: str, context: _Context) -> tuple[str, ...]:
    return tuple(line.strip() for line in value.splitlines() if line.strip())


def _parseHealth(value: str, context: _Context) -> str:
    if value != NO_HEALTH and value not in context.checkers:
        raise _BadValue(
            f"unknown health checker {value!r}; {NO_HEALTH!r} turns checks off"
            + _installed(context.checkers)
        )
    return value


# The table of keys.


class _Required:
    """
    The type of L{REQUIRED}.
    """

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()
"""
The L{KeySpec.default} of a key that must be given.
"""


@dataclass(frozen=True)
class KeySpec:
    """
    One key of a section.

    @ivar key: The key as written in the file.
    @ivar attribute: The field of the section's value class it fills.
    @ivar kind: A short type for the documentation (C{"bytes"}).
    @ivar parse: Parses the value as written, given a private context.
    @ivar doc: One line saying what the key means.
    @ivar default: The default (the field's default), or L{REQUIRED}.
    """

    key: str
    attribute: str
    kind: str
    parse: _Parser
    doc: str
    default: Any = REQUIRED

    @property
    def required(self) -> bool:
        """
        Whether the key must be given.
        """
        return self.default is REQUIRED


def _keys(
    valueClass: type[Any], rows: Sequence[tuple[str, str, _Parser, str]]
) -> tuple[KeySpec, ...]:
    """
    Make the L{KeySpec}s of a section from rows of key, kind, parser and
    meaning.  The key C{max_message_size} sets the field C{maxMessageSize}
    of C{valueClass}, whose default is the key's default.
    """
    defaults = {
        f.name: REQUIRED if f.default is dataclasses.MISSING else f.default
        for f in dataclasses.fields(valueClass)
    }
    specs = []
    for key, kind, parse, doc in rows:
        attribute = re.sub(r"_([a-z])", lambda m: m.group(1).upper(), key)
        default = defaults[attribute]
        specs.append(KeySpec(key, attribute, kind, parse, doc, default))
    return tuple(specs)


# fmt: off
RELAY_KEYS = _keys(RelayConfig, [
    # key                 kind           parser
    ("listen",            "endpoints",   _parseListen,
     "Server endpoint strings to accept clients on, separated by whitespace."),
    ("max_message_size",  "bytes",       _wholeNumber(1),
     "Largest message relayed, in bytes; a larger one closes with 1009."),
    ("max_frame_size",    "bytes",       _wholeNumber(0),
     "Largest frame, in bytes; 0 means the same as max_message_size."),
    ("max_header_size",   "bytes",       _wholeNumber(1024),
     "Largest HTTP request head (request line and headers), in bytes."),
    ("handshake_timeout", "seconds",     _seconds(False),
     "Time a client has to complete its opening handshake."),
    ("connect_timeout",   "seconds",     _seconds(False),
     "Time to connect to a backend and finish its handshake."),
    ("idle_timeout",      "seconds",     _seconds(True, " (0 = never)"),
     "Close a connection after this long without a message; 0: never."),
    ("ping_interval",     "seconds",     _seconds(True, " (0 = off)"),
     "Time between pings to an idle client; 0: no pings."),
    ("ping_timeout",      "seconds",     _seconds(False),
     "Close the connection when no pong comes within this time."),
    ("close_timeout",     "seconds",     _seconds(False),
     "Time to wait for the peer's close reply before dropping."),
    ("trusted_proxies",   "networks",    _parseTrustedProxies,
     "Addresses or CIDR networks whose X-Forwarded-For is believed."),
    ("plugin_path",       "directories", _parsePluginPath,
     "Existing directories searched for plugins, relative to this file."),
    ("admin",             "endpoint",    _parseAdminEndpoint,
     "Server endpoint string of the admin HTTP listener; loopback by default."),
    ("admin_hosts",       "hosts",       _parseAdminHosts,
     "Host names the admin listener answers for, besides IPs and localhost."),
    ("admin_token_file",  "file",        _parseFile,
     "File holding the bearer token that admin actions require."),
    ("drain_timeout",     "seconds",     _seconds(False),
     "Time a stopping relay waits for its connections to close."),
    ("close_spread",      "seconds",     _seconds(True, " (0 = at once)"),
     "Spread closes of drained or stopped connections over this time."),
    ("max_handshakes_per_second", "rate", _rate,
     "Relay-wide limit of new client handshakes per second; 0: none."),
    ("max_connections",   "number",      _wholeNumber(0, "connections"),
     "Client connections open at once, relay-wide; 0: no limit."),
    ("max_connections_per_ip", "number", _wholeNumber(0, "connections"),
     "Client connections open at once from one address; 0: no limit."),
    ("handshake_rate_per_ip", "rate",    _rate,
     "New handshakes per second from one address; 0: no limit."),
    ("max_messages_per_second", "number", _wholeNumber(0, "messages"),
     "Messages per second one client may send; 0: no limit."),
    ("message_rate_action", "choice",    _choice("close", "drop"),
     "Beyond max_messages_per_second: close with 1008, or drop."),
    ("workers",           "number",      _parseWorkers,
     "Relay processes sharing the listening ports; auto: one per CPU."),
    ("access_log",        "choice",      _onOff,
     "Log each client connection as it ends (on), or not (off)."),
])

ROUTE_KEYS = _keys(RouteConfig, [
    ("path",              "path",        _parseRoutePath,
     "Path prefix matched at a segment boundary; the rest is passed on."),
    ("host",              "host",        _parseRouteHost,
     "Match only requests for this host (Host header without port)."),
    ("mode",              "choice",      _choice("proxy", "fanout"),
     "proxy: a backend connection per client; fanout: one shared."),
    ("backends",          "backends",    _parseBackends,
     "ws:// or wss:// URLs, each followed by name= and weight= options."),
    ("balancer",          "name",        _parseBalancer,
     "Balancer plugin picking a backend for each new connection."),
    ("failover",          "choice",      _choice("close", "reconnect"),
     "When the backend goes away: close the client, or reconnect."),
    ("failover_buffer",   "bytes",       _wholeNumber(0),
     "Client message bytes buffered while reconnecting."),
    ("data_path",         "choice",      _choice("passthrough", "message"),
     "passthrough: bytes forwarded; message: frames parsed and re-framed."),
    ("compression",       "choice",      _onOff,
     "Message path: accept a client's permessage-deflate offer (on/off)."),
    ("channel",           "choice",      _choice("route", "path"),
     "Fan-out: one upstream for the route, or one per client path."),
    ("replay",            "number",      _wholeNumber(0, "messages"),
     "Fan-out: the last messages sent to a client as it joins."),
    ("client_messages",   "choice",      _choice("drop", "forward"),
     "Fan-out: drop client messages, or forward them to the source."),
    ("max_client_buffer", "bytes",       _wholeNumber(0),
     "Fan-out: bytes queued for one slow client before slow_client applies."),
    ("slow_client",       "choice",      _choice("drop", "close"),
     "Fan-out: skip messages for a slow client, or close it with 1013."),
    ("connect",           "choice",      _choice("eager", "lazy"),
     "Fan-out: connect to the source at start, or at the first client."),
    ("linger",            "seconds",     _seconds(True),
     "Fan-out: time a lazy upstream stays open after its last client."),
    ("subscribe",         "lines",       _parseLines,
     "Fan-out: text messages sent to the source on every connect."),
    ("backoff_base",      "seconds",     _seconds(False),
     "Fan-out: first delay before reconnecting to the source."),
    ("backoff_cap",       "seconds",     _seconds(False),
     "Fan-out: longest delay before reconnecting to the source."),
    ("slowstart",         "seconds",     _seconds(True, " (0 = off)"),
     "Ramp a backend that came up to its full share over this time."),
    ("allowed_origins",   "origins",     _parseOrigins,
     "Origins whose handshakes are accepted; others get 403."),
    ("ca_file",           "file",        _parseFile,
     "PEM certificates trusted for wss:// backends (else the system's)."),
    ("verify",            "choice",      _onOff,
     "Verify wss:// backends' certificates: on, or off (tests only)."),
    ("health",            "name",        _parseHealth,
     "Health-checker plugin (tcp, websocket, http) or none: no checks."),
    ("health_interval",   "seconds",     _seconds(False),
     "Time between two active checks of each backend."),
    ("health_timeout",    "seconds",     _seconds(False),
     "Time after which a check counts as failed."),
    ("rise",              "count",       _wholeNumber(1, "checks"),
     "Successful checks in a row that bring a down backend up."),
    ("fall",              "count",       _wholeNumber(1, "failures"),
     "Failed checks or connects in a row that take a backend down."),
])

_ROUTE_KEY_NAMES = frozenset(k.key for k in ROUTE_KEYS)

FANOUT_KEYS = frozenset(
    k.key for k in ROUTE_KEYS if k.doc.startswith("Fan-out:")
)
"""
The route keys that only a fan-out route takes.
"""

PROXY_KEYS = frozenset(("failover", "failover_buffer", "data_path", "compression"))
"""
The route keys that only a proxy route takes.
"""

DEMO_KEYS = _keys(DemoConfig, [
    ("echo",              "endpoint",    _parseEndpoint,
     "Server endpoint string of a demo echo backend."),
    ("ticker",            "endpoint",    _parseEndpoint,
     "Server endpoint string of a demo ticker source."),
    ("ticker_interval",   "seconds",     _seconds(False),
     "Time between two ticks of the demo ticker."),
])
# fmt: on

KEYS: Mapping[str, tuple[KeySpec, ...]] = MappingProxyType(
    {"relay": RELAY_KEYS, "route": ROUTE_KEYS, "demo": DEMO_KEYS}
)
"""
Every key the parser knows, per kind of section (C{"relay"}, C{"route"},
C{"demo"}), in documentation order.
"""

SECTION_KEYS: Mapping[str, frozenset[str]] = MappingProxyType(
    {kind: frozenset(s.key for s in specs) for kind, specs in KEYS.items()}
)
"""
The names of the keys in L{KEYS}, per kind of section.
"""


# Reading the file.

_ROUTE_NAME = re.compile(r"[A-Za-z0-9_.-]+\Z")
_SECTIONS = "[relay], [route:NAME] and [demo]"
# Never the name of a section: a header is one line.  So [DEFAULT] is an
# ordinary (and unknown) section instead of defaults for all the others.
_NO_DEFAULT_SECTION = "\n"


def _readINI(text: str, filename: str) -> configparser.ConfigParser:
    """
    Parse INI syntax.

    @raise ConfigError: On a syntax error, a duplicate section or key.
    """
    parser = configparser.ConfigParser(
        interpolation=None,
        inline_comment_prefixes=(";", "#"),
        strict=True,
        empty_lines_in_values=False,
        default_section=_NO_DEFAULT_SECTION,
    )
    try:
        parser.read_string(text, source=filename)
    except configparser.MissingSectionHeaderError as e:
        raise ConfigError(
            filename,
            f"line {e.lineno}: expected a section header such as [relay], "
            f"got {e.line.strip()!r}",
        ) from None
    except configparser.ParsingError as e:
        lineno = e.errors[0][0]
        line = text.split("\n")[lineno - 1].strip()
        raise ConfigError(
            filename,
            f"line {lineno}: expected 'key = value', a [section] or a comment, "
            f"got {line!r}",
        ) from None
    except configparser.DuplicateSectionError as e:
        raise ConfigError(
            filename, f"section given twice (line {e.lineno})", e.section
        ) from None
    except configparser.DuplicateOptionError as e:
        raise ConfigError(
            filename, f"key given twice (line {e.lineno})", e.section, e.option
        ) from None
    except configparser.Error as e:
        raise ConfigError(filename, e.message) from None
    return parser


def _parseSection(
    filename: str,
    section: str,
    specs: tuple[KeySpec, ...],
    items: list[tuple[str, str]],
    context: _Context,
    extraKeys: Sequence[str] = (),
    hint: Callable[[str], str] = lambda key: "",
) -> tuple[dict[str, Any], dict[str, str]]:
    """
    Parse the keys of one section.

    @param specs: The keys the section knows.
    @param items: The section's keys and values, in the order of the file.
    @param extraKeys: Further keys accepted and returned as written.
    @param hint: Makes a remark on an unknown key (C{"; ..."} or C{""}).

    @return: The field values by attribute, and the extra keys' values.
    @raise ConfigError: On an unknown key, a bad value or a missing key.
    """
    byKey = {s.key: s for s in specs}
    values: dict[str, Any] = {}
    extra: dict[str, str] = {}
    for key, value in items:
        spec = byKey.get(key)
        if spec is None:
            if key in extraKeys:
                extra[key] = value
                continue
            known = ", ".join(sorted({*byKey, *extraKeys}))
            raise ConfigError(
                filename, f"unknown key; known keys: {known}{hint(key)}", section, key
            )
        try:
            values[spec.attribute] = spec.parse(value, context)
        except _BadValue as e:
            raise ConfigError(filename, str(e), section, key) from None
    for spec in specs:
        if spec.required and spec.attribute not in values:
            raise ConfigError(filename, "required key missing", section, spec.key)
    return values, extra


def _parseRoute(
    filename: str, section: str, items: list[tuple[str, str]], context: _Context
) -> RouteConfig:
    """
    Parse one C{[route:NAME]} section.
    """
    name = section[len("route:") :]
    if not _ROUTE_NAME.match(name):
        raise ConfigError(
            filename,
            f"unknown section; a route is [route:NAME] with a NAME of letters, "
            f"digits, '_', '.' and '-', got {name!r}",
            section,
        )
    given = dict(items).get("balancer")
    chosen = _DEFAULT_BALANCER if given is None else given
    if chosen not in context.balancers:
        if given is None:
            problem = f"the default balancer {chosen!r} is not installed"
        else:
            problem = f"unknown balancer {chosen!r}"
        raise ConfigError(
            filename, problem + _installed(context.balancers), section, "balancer"
        )
    balancerKeys = context.balancers[chosen]
    health = dict(items).get("health", NO_HEALTH)
    checkerKeys = context.checkers.get(health, ())
    for kind, plugin, keys in (
        ("balancer", chosen, balancerKeys),
        ("health", health, checkerKeys),
    ):
        for key in keys:
            if key in _ROUTE_KEY_NAMES:
                problem = f"{plugin}: its option {key!r} is a built-in route key"
                raise ConfigError(filename, problem, section, kind)

    def hint(key: str) -> str:
        for kind, plugins in (
            ("balancer", context.balancers),
            ("health checker", context.checkers),
        ):
            owners = sorted(n for n, keys in plugins.items() if key in keys)
            if owners:
                return f"; {key} is an option of {kind} {', '.join(owners)}"
        return ""

    values, extra = _parseSection(
        filename,
        section,
        ROUTE_KEYS,
        items,
        context,
        (*balancerKeys, *checkerKeys),
        hint,
    )
    fanout = values.get("mode") == "fanout"
    for key, _ in items:
        if key in (PROXY_KEYS if fanout else FANOUT_KEYS):
            mode = "proxy" if fanout else "fanout"
            raise ConfigError(filename, f"only used with mode = {mode}", section, key)
    if values.get("failover") == "reconnect":
        # A passthrough stream cannot be moved to another backend.
        values.setdefault("dataPath", "message")
    if (
        values.get("dataPath") == "passthrough"
        and values.get("failover") == "reconnect"
    ):
        raise ConfigError(
            filename,
            "failover = reconnect needs data_path = message (a passthrough"
            " stream cannot be moved to another backend)",
            section,
            "data_path",
        )
    if values.get("backoffCap", 30.0) < values.get("backoffBase", 0.5):
        raise ConfigError(
            filename,
            "backoff_cap must not be less than backoff_base",
            section,
            "backoff_cap",
        )
    return RouteConfig(
        name=name,
        options=MappingProxyType({k: extra[k] for k in balancerKeys if k in extra}),
        healthOptions=MappingProxyType(
            {k: extra[k] for k in checkerKeys if k in extra}
        ),
        **values,
    )


def _installedPlugins(
    plugins: Mapping[str, Sequence[str]] | None,
    default: Mapping[str, tuple[str, ...]],
) -> Mapping[str, tuple[str, ...]]:
    """
    @return: C{plugins} with each key list as a tuple of lower-case keys
        (as configparser reads them), or C{default}.
    """
    if plugins is None:
        return default
    result = {}
    for name, keys in plugins.items():
        if isinstance(keys, str):
            keys = (keys,)
        result[name] = tuple(k.lower() for k in keys)
    return result


def parseConfig(
    text: str,
    path: str,
    balancers: Mapping[str, Sequence[str]] | None = None,
    checkers: Mapping[str, Sequence[str]] | None = None,
) -> RelayConfig:
    """
    Parse and check a configuration file's text.

    @param text: The text of the file.
    @param path: The file's path, as the user gave it: errors name it, and
        relative C{plugin_path} entries are relative to its directory.
    @param balancers: The installed balancer names and the route keys each
        declares, or L{None} for L{DEFAULT_BALANCERS}.
    @param checkers: The same for health checkers, or L{None} for
        L{DEFAULT_CHECKERS}.

    @return: The configuration.
    @raise ConfigError: When anything is wrong; nothing else is raised.
    """
    absolute = os.path.abspath(path)
    context = _Context(
        os.path.dirname(absolute),
        _installedPlugins(balancers, DEFAULT_BALANCERS),
        _installedPlugins(checkers, DEFAULT_CHECKERS),
    )
    parser = _readINI(text, path)
    relay: dict[str, Any] | None = None
    demo: DemoConfig | None = None
    routes: list[RouteConfig] = []
    for section in parser.sections():
        items = parser.items(section, raw=True)
        if section == "relay":
            relay = _parseSection(path, section, RELAY_KEYS, items, context)[0]
        elif section == "demo":
            values = _parseSection(path, section, DEMO_KEYS, items, context)[0]
            demo = DemoConfig(**values)
        elif section.startswith("route:"):
            route = _parseRoute(path, section, items, context)
            for other in routes:
                if (other.host, other.path) == (route.host, route.path):
                    where = "" if route.host is None else f" on host {route.host!r}"
                    raise ConfigError(
                        path,
                        f"duplicate route: path {route.path!r}{where} is also "
                        f"routed by [{other.section}]",
                        section,
                        "path",
                    )
            routes.append(route)
        else:
            raise ConfigError(
                path, f"unknown section; the sections are {_SECTIONS}", section
            )
    if relay is None:
        raise ConfigError(path, "missing [relay] section")
    if relay.get("workers", 1) > 1:
        for description in relay["listen"]:
            if not _shareable(description):
                raise ConfigError(
                    path,
                    f"workers > 1 needs tcp:, tcp6: or ssl: listeners;"
                    f" {description!r} cannot be shared by processes",
                    "relay",
                    "workers",
                )
    if not routes:
        raise ConfigError(path, "no [route:NAME] section; at least one is required")
    return RelayConfig(
        path=absolute,
        routes=tuple(routes),
        demo=DemoConfig() if demo is None else demo,
        **relay,
    )


def loadConfig(
    path: str,
    balancers: Mapping[str, Sequence[str]] | None = None,
    checkers: Mapping[str, Sequence[str]] | None = None,
) -> RelayConfig:
    """
    Read, parse and check a configuration file.

    @param path: The file's path, as the user gave it (errors name it this
        way; L{RelayConfig.path} is made absolute).
    @param balancers: See L{parseConfig}.
    @param checkers: See L{parseConfig}.

    @return: The configuration.
    @raise ConfigError: When the file cannot be read (missing, unreadable,
        not UTF-8) or anything in it is wrong; nothing else is raised.
    """
    try:
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        line = e.object[: e.start].count(b"\n") + 1
        raise ConfigError(
            path, f"not UTF-8 text: byte {e.object[e.start]:#04x} on line {line}"
        ) from None
    except OSError as e:
        raise ConfigError(path, f"cannot read the file: {e.strerror or e}") from None
    except ValueError as e:
        raise ConfigError(path, f"cannot read the file: {e}") from None
    return parseConfig(text, path, balancers, checkers)
