# -*- test-case-name: tests.test_config -*-
"""
The schema of the file: for each kind of section, a L{SectionSchema} with
one L{KeySpec} row per key it knows.

The schema drives both the reader (L{wsrelay.config.reader}) and the test
that C{docs/configuration.md} documents every key in its section: a key
added here is parsed and must be documented.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from types import MappingProxyType
from typing import Any

from wsrelay.config.endpoints import (
    _parseAdminEndpoint,
    _parseEndpoint,
    _parseListen,
)
from wsrelay.config.parse import (
    _choice,
    _milliseconds,
    _onOff,
    _parseAdminHosts,
    _parseAuth,
    _parseBackends,
    _parseBalancer,
    _parseFile,
    _parseHealth,
    _parseLines,
    _parseOrigins,
    _parseParameter,
    _parsePluginPath,
    _Parser,
    _parseResume,
    _parseRouteHost,
    _parseRoutePath,
    _parseSocketPath,
    _parseSource,
    _parseTrustedProxies,
    _parseWorkers,
    _rate,
    _seconds,
    _wholeNumber,
)
from wsrelay.config.values import ROUTE_CLASSES, DemoConfig, RelayConfig


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
    @ivar mode: The one route mode (C{"proxy"}, C{"fanout"}) whose class
        has the field, or L{None} for a key every section of its kind
        takes.
    """

    key: str
    attribute: str
    kind: str
    parse: _Parser
    doc: str
    default: Any = REQUIRED
    mode: str | None = None

    @property
    def required(self) -> bool:
        """
        Whether the key must be given.
        """
        return self.default is REQUIRED


@dataclass(frozen=True)
class SectionSchema:
    """
    One kind of section: the keys it knows and the value classes they fill.

    @ivar kind: C{"relay"}, C{"route"} or C{"demo"}.
    @ivar header: The section's header as C{docs/configuration.md} titles
        its table of keys (C{"[route:NAME]"}).
    @ivar classes: The value class the section is read into, by mode: a
        route's class depends on its C{mode} key (see
        L{wsrelay.config.values.ROUTE_CLASSES}); other sections have one,
        under L{None}.
    @ivar keys: The keys, in documentation order.
    """

    kind: str
    header: str
    classes: Mapping[str | None, type[Any]]
    keys: tuple[KeySpec, ...]

    @cached_property
    def byKey(self) -> Mapping[str, KeySpec]:
        """
        The keys by name.
        """
        return {spec.key: spec for spec in self.keys}

    @property
    def names(self) -> frozenset[str]:
        """
        The names of the keys.
        """
        return frozenset(spec.key for spec in self.keys)

    def modeKeys(self, mode: str) -> frozenset[str]:
        """
        @return: The names of the keys that only sections of C{mode} take.
        """
        return frozenset(spec.key for spec in self.keys if spec.mode == mode)


def _schema(
    kind: str,
    header: str,
    valueClasses: type[Any] | Mapping[str, type[Any]],
    rows: Sequence[tuple[str, str, _Parser, str]],
) -> SectionSchema:
    """
    Make the schema of a section from rows of key, kind, parser and
    meaning.  The key C{max_message_size} sets the field C{maxMessageSize};
    a key belongs to the modes whose class has that field (to every mode
    when all have it), and its default is the field's default in the first
    of them.

    @param valueClasses: The section's value class, or its classes by mode.
    @raise TypeError: When no class has a key's field.
    """
    classes: dict[str | None, type[Any]] = {}
    if isinstance(valueClasses, type):
        classes[None] = valueClasses
    else:
        for name, valueClass in valueClasses.items():
            classes[name] = valueClass
    fields = {
        m: {f.name: f for f in dataclasses.fields(valueClass)}
        for m, valueClass in classes.items()
    }
    specs = []
    for key, shortType, parse, doc in rows:
        attribute = re.sub(r"_([a-z])", lambda m: m.group(1).upper(), key)
        holders = [m for m in classes if attribute in fields[m]]
        if not holders:
            raise TypeError(f"no field {attribute!r} for the key {key!r}")
        default = fields[holders[0]][attribute].default
        if default is dataclasses.MISSING:
            default = REQUIRED
        only = None if len(holders) == len(classes) else holders[0]
        specs.append(KeySpec(key, attribute, shortType, parse, doc, default, only))
    return SectionSchema(kind, header, classes, tuple(specs))


# fmt: off
RELAY = _schema("relay", "[relay]", RelayConfig, [
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
    ("control_socket",    "path",        _parseSocketPath,
     "Unix socket (mode 0600) a new relay started with --takeover asks."),
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

ROUTE = _schema("route", "[route:NAME]", ROUTE_CLASSES, [
    ("path",              "path",        _parseRoutePath,
     "Path prefix matched at a segment boundary; the rest is passed on."),
    ("host",              "host",        _parseRouteHost,
     "Match only requests for this host (Host header without port)."),
    ("mode",              "choice",      _choice("proxy", "fanout"),
     "proxy: a backend connection per client; fanout: one shared."),
    ("backends",          "backends",    _parseBackends,
     "ws:// or wss:// URLs, each followed by name=, weight=, maxconn=."),
    ("balancer",          "name",        _parseBalancer,
     "Balancer plugin picking a backend for each new connection."),
    ("failover",          "choice",      _choice("close", "reconnect"),
     "Proxy: when the backend goes away, close the client or reconnect."),
    ("failover_buffer",   "bytes",       _wholeNumber(0),
     "Proxy: client message bytes buffered while reconnecting."),
    ("data_path",         "choice",      _choice("passthrough", "message"),
     "Proxy: bytes forwarded (passthrough), or frames re-framed (message)."),
    ("compression",       "choice",      _onOff,
     "Proxy, message path: accept a client's permessage-deflate offer."),
    ("source",            "name",        _parseSource,
     "Fan-out: source plugin the messages come from (websocket, redis)."),
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
    ("write_delay",       "milliseconds", _milliseconds(" (0 = every turn)"),
     "Fan-out: gather messages this long, then one write per client."),
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
    ("resume",            "resume",      _parseResume,
     "Fan-out: message ids clients resume from: json:FIELD or envelope."),
    ("resume_param",      "parameter",   _parseParameter,
     "Fan-out: query parameter naming the id a client resumes after."),
    ("resume_miss",       "choice",      _choice("replay", "close"),
     "Fan-out: a resume id no longer kept: send the replay, or close 4410."),
    ("resume_window",     "number",      _wholeNumber(1, "messages"),
     "Fan-out: messages kept for resuming clients (websocket sources)."),
    ("slowstart",         "seconds",     _seconds(True, " (0 = off)"),
     "Ramp a backend that came up to its full share over this time."),
    ("allowed_origins",   "origins",     _parseOrigins,
     "Origins whose handshakes are accepted; others get 403."),
    ("auth",              "name",        _parseAuth,
     "Authorizer plugin (jwt, http) asked before any backend, or none."),
    ("auth_timeout",      "seconds",     _seconds(False),
     "Time the authorizer has to answer; then the client gets 503."),
    ("queue_timeout",     "seconds",     _seconds(True, " (0 = answer at once)"),
     "Time a handshake waits when every backend is at its maxconn; then 503."),
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

DEMO = _schema("demo", "[demo]", DemoConfig, [
    ("echo",              "endpoint",    _parseEndpoint,
     "Server endpoint string of a demo echo backend."),
    ("ticker",            "endpoint",    _parseEndpoint,
     "Server endpoint string of a demo ticker source."),
    ("ticker_interval",   "seconds",     _seconds(False),
     "Time between two ticks of the demo ticker."),
])
# fmt: on

SCHEMAS: Mapping[str, SectionSchema] = MappingProxyType(
    {schema.kind: schema for schema in (RELAY, ROUTE, DEMO)}
)
"""
The schema of each kind of section, in documentation order.
"""

RELAY_KEYS = RELAY.keys
ROUTE_KEYS = ROUTE.keys
DEMO_KEYS = DEMO.keys

KEYS: Mapping[str, tuple[KeySpec, ...]] = MappingProxyType(
    {kind: schema.keys for kind, schema in SCHEMAS.items()}
)
"""
Every key the parser knows, per kind of section (C{"relay"}, C{"route"},
C{"demo"}), in documentation order.
"""

SECTION_KEYS: Mapping[str, frozenset[str]] = MappingProxyType(
    {kind: schema.names for kind, schema in SCHEMAS.items()}
)
"""
The names of the keys in L{KEYS}, per kind of section.
"""

FANOUT_KEYS = ROUTE.modeKeys("fanout")
"""
The route keys that only a fan-out route takes.
"""

PROXY_KEYS = ROUTE.modeKeys("proxy")
"""
The route keys that only a proxy route takes.
"""
