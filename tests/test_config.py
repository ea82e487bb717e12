"""
Tests for L{wsrelay.config}.
"""

from __future__ import annotations

import ast
import dataclasses
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.testing import MemoryReactorClock
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

import wsrelay
from wsrelay.config import (
    DEFAULT_BALANCERS,
    FANOUT_KEYS,
    KEYS,
    PROXY_KEYS,
    REQUIRED,
    SCHEMAS,
    SECTION_KEYS,
    BackendConfig,
    BaseRouteConfig,
    ConfigError,
    DemoConfig,
    FanoutRouteConfig,
    ProxyRouteConfig,
    RelayConfig,
    RouteConfig,
    _endpointArguments,
    loadConfig,
    parseConfig,
)
from wsrelay.config.endpoints import _listensOn
from wsrelay.plugins import balancerFactories, healthCheckerFactories
from wsrelay.service import RelayService

FILENAME = "relay.ini"

DOCS = FilePath(__file__).parent().parent().child("docs").child("configuration.md")

SHIPPED = FilePath(__file__).parent().parent().child("conf").child("relay.ini")

MINIMAL = """\
[relay]
listen = tcp:8080

[route:echo]
path = /echo
backends = ws://127.0.0.1:9001/
"""

FUZZ = settings(max_examples=200, deadline=None, database=None, derandomize=True)

Sections = Mapping[str, Mapping[str, str]]


def ini(sections: Sections) -> str:
    """
    @param sections: Section names mapped to their keys and values.
    @return: The INI text of C{sections}.
    """
    lines = []
    for section, items in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {value}" for key, value in items.items())
        lines.append("")
    return "\n".join(lines)


def withKey(kind: str, key: str, value: str) -> dict[str, dict[str, str]]:
    """
    @return: The sections of L{MINIMAL} plus a C{[demo]} section, with
        C{key = value} set in the section of the given kind (C{"relay"},
        C{"route"} or C{"demo"}).
    """
    sections = {
        "relay": {"listen": "tcp:8080"},
        "route:echo": {"path": "/echo", "backends": "ws://127.0.0.1:9001/"},
        "demo": {},
    }
    sections["route:echo" if kind == "route" else kind][key] = value
    if kind == "route" and key in FANOUT_KEYS:
        sections["route:echo"]["mode"] = "fanout"
    return sections


def parse(
    text: str, balancers: Mapping[str, Sequence[str]] | None = None
) -> RelayConfig:
    """
    Parse C{text} as the file L{FILENAME}.
    """
    return parseConfig(text, FILENAME, balancers)


def iniDefault(default: Any) -> str:
    """
    @return: How C{docs/configuration.md} writes a key's default.
    """
    if default is REQUIRED:
        return "required"
    if default is None or default == ():
        return "none"
    if isinstance(default, bool):
        return "`on`" if default else "`off`"
    if isinstance(default, float):
        return f"`{default:g}`"
    return f"`{default}`"


def docTables() -> dict[str, dict[str, dict[str, str]]]:
    """
    Read the key tables of C{docs/configuration.md}: the first table under
    the heading of each kind of section in L{SCHEMAS} (C{## [relay]},
    C{## [route:NAME]} and C{## [demo]}).

    @return: For each kind of section, each documented key (without
        backticks) mapped to its row, by column name.
    """
    headings = {f"## {schema.header}": kind for kind, schema in SCHEMAS.items()}
    tables: dict[str, dict[str, dict[str, str]]] = {k: {} for k in headings.values()}
    kind = None
    header: list[str] | None = None
    for line in DOCS.getContent().decode("utf-8").splitlines():
        if line.startswith("#"):
            kind = headings.get(line.strip())
            header = None
            continue
        if kind is None or not line.startswith("|"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
            continue
        if set("".join(cells)) <= set("-: "):
            continue
        key = cells[0].strip("`")
        if key in tables[kind]:
            raise AssertionError(f"{key} documented twice in [{kind}]")
        tables[kind][key] = dict(zip(header, cells, strict=True))
    return tables


class ConfigErrorTests(SynchronousTestCase):
    """
    Tests for L{ConfigError}.
    """

    def test_fileSectionKey(self) -> None:
        """
        The message names the file, the section in brackets and the key.
        """
        e = ConfigError("a.ini", "expected x, got 'y'", "relay", "listen")
        self.assertEqual(str(e), "a.ini: [relay] listen: expected x, got 'y'")
        self.assertEqual(e.message, str(e))
        self.assertEqual(
            (e.filename, e.section, e.key, e.problem),
            ("a.ini", "relay", "listen", "expected x, got 'y'"),
        )

    def test_withoutKeyOrSection(self) -> None:
        """
        A problem about a section leaves out the key; one about the file
        leaves out the section too.
        """
        self.assertEqual(str(ConfigError("a.ini", "bad", "demo")), "a.ini: [demo] bad")
        self.assertEqual(str(ConfigError("a.ini", "bad")), "a.ini: bad")

    def test_oneLine(self) -> None:
        """
        Line breaks anywhere in the parts become spaces.
        """
        e = ConfigError("a.ini", "one\ntwo\r\nthree", "x\x0by", "k\u2028")
        self.assertEqual(str(e).splitlines(), [str(e)])

    def test_pickle(self) -> None:
        """
        A L{ConfigError} survives pickling with all its attributes.
        """
        e = pickle.loads(pickle.dumps(ConfigError("a.ini", "bad", "relay", "k")))
        self.assertEqual(
            (e.filename, e.problem, e.section, e.key, e.message),
            ("a.ini", "bad", "relay", "k", "a.ini: [relay] k: bad"),
        )


class GoodConfigTests(SynchronousTestCase):
    """
    Files that are right parse to the values they say.
    """

    def test_minimalDefaults(self) -> None:
        """
        A file with only the required keys gets every other key's default.
        """
        config = parse(MINIMAL)
        self.assertEqual(
            config,
            RelayConfig(
                path=os.path.abspath(FILENAME),
                listen=("tcp:8080",),
                routes=(
                    ProxyRouteConfig(
                        name="echo",
                        path="/echo",
                        backends=(BackendConfig.fromURL("ws://127.0.0.1:9001/"),),
                    ),
                ),
            ),
        )
        self.assertEqual(config.maxMessageSize, 16777216)
        self.assertEqual(config.maxFrameSize, 0)
        self.assertEqual(config.maxHeaderSize, 16384)
        self.assertEqual(config.handshakeTimeout, 10.0)
        self.assertEqual(config.connectTimeout, 5.0)
        self.assertEqual(config.idleTimeout, 0.0)
        self.assertEqual(config.pingInterval, 30.0)
        self.assertEqual(config.pingTimeout, 10.0)
        self.assertEqual(config.closeTimeout, 5.0)
        self.assertEqual(config.trustedProxies, ())
        self.assertEqual(config.pluginPath, ())
        self.assertEqual(config.demo, DemoConfig())
        self.assertEqual((config.demo.echo, config.demo.ticker), (None, None))
        self.assertEqual(config.demo.tickerInterval, 0.25)
        [route] = config.routes
        self.assertEqual(route.host, None)
        self.assertEqual(route.mode, "proxy")
        self.assertEqual(route.balancer, "round_robin")
        self.assertEqual(route.failover, "close")
        self.assertEqual(route.failoverBuffer, 1048576)
        self.assertEqual(dict(route.options), {})
        self.assertEqual(route.section, "route:echo")

    def test_everyKey(self) -> None:
        """
        Every key of every section sets its field.
        """
        directory = tempDirectory(self)
        os.mkdir(os.path.join(directory, "plugins"))
        with open(os.path.join(directory, "token"), "w") as f:
            f.write("secret\n")
        text = """\
[relay]
LISTEN = tcp:8080:interface=127.0.0.1
    tcp6:8080:interface=\\:\\:1   ; comment
max_message_size = 1048576
max_frame_size = 65536
max_header_size = 1024
handshake_timeout = 2.5
connect_timeout = .5
idle_timeout = 300
ping_interval = 0
ping_timeout = 7
close_timeout = 1.
trusted_proxies = 10.1.2.3/8, 127.0.0.1
    ::1
plugin_path = plugins
admin = tcp:9090:interface=127.0.0.1
admin_token_file = token
drain_timeout = 12
close_spread = 3
max_handshakes_per_second = 250.5

[route:chat.v2-x]
path = /chat/
host = Chat.Example.COM
mode = proxy
backends = ws://a:1/x name=a weight=3
  wss://b/y?z=1
balancer = first
failover = reconnect
failover_buffer = 0
slowstart = 20
health = http
health_interval = 5
health_timeout = 1.5
rise = 4
fall = 1
health_path = /up

[route:feed]
path = /feed
mode = fanout
backends = ws://f:1/
channel = path
replay = 3
client_messages = forward
max_client_buffer = 4096
slow_client = close
write_delay = 2.5
connect = lazy
linger = 0
subscribe = {"op": "sub"}
    hello
backoff_base = 0.1
backoff_cap = 2

[demo]
echo = tcp:9001
ticker = unix:ticker.sock
ticker_interval = 1
"""
        path = os.path.join(directory, "relay.ini")
        config = parseConfig(text, path)
        self.assertEqual(config.path, path)
        self.assertEqual(
            config.listen,
            ("tcp:8080:interface=127.0.0.1", "tcp6:8080:interface=\\:\\:1"),
        )
        self.assertEqual(
            (config.maxMessageSize, config.maxFrameSize, config.maxHeaderSize),
            (1048576, 65536, 1024),
        )
        self.assertEqual(
            (
                config.handshakeTimeout,
                config.connectTimeout,
                config.idleTimeout,
                config.pingInterval,
                config.pingTimeout,
                config.closeTimeout,
            ),
            (2.5, 0.5, 300.0, 0.0, 7.0, 1.0),
        )
        self.assertEqual(
            config.trustedProxies, ("10.0.0.0/8", "127.0.0.1/32", "::1/128")
        )
        self.assertEqual(config.pluginPath, (os.path.join(directory, "plugins"),))
        self.assertEqual(
            (
                config.admin,
                config.adminTokenFile,
                config.drainTimeout,
                config.closeSpread,
                config.maxHandshakesPerSecond,
            ),
            (
                "tcp:9090:interface=127.0.0.1",
                os.path.join(directory, "token"),
                12.0,
                3.0,
                250.5,
            ),
        )
        route, feed = config.routes
        self.assertIsInstance(route, ProxyRouteConfig)
        self.assertIsInstance(feed, FanoutRouteConfig)
        self.assertEqual(route.name, "chat.v2-x")
        self.assertEqual(route.path, "/chat")
        self.assertEqual(route.host, "chat.example.com")
        self.assertEqual(route.mode, "proxy")
        self.assertEqual(
            (
                route.health,
                route.healthInterval,
                route.healthTimeout,
                route.rise,
                route.fall,
                dict(route.healthOptions),
            ),
            ("http", 5.0, 1.5, 4, 1, {"health_path": "/up"}),
        )
        self.assertEqual(route.slowstart, 20.0)
        self.assertEqual(
            (
                feed.mode,
                feed.channel,
                feed.replay,
                feed.clientMessages,
                feed.maxClientBuffer,
                feed.slowClient,
                feed.writeDelay,
                feed.connect,
                feed.linger,
                feed.subscribe,
                feed.backoffBase,
                feed.backoffCap,
            ),
            (
                "fanout",
                "path",
                3,
                "forward",
                4096,
                "close",
                2.5,
                "lazy",
                0.0,
                ('{"op": "sub"}', "hello"),
                0.1,
                2.0,
            ),
        )
        self.assertEqual(
            route.backends,
            (
                BackendConfig.fromURL("ws://a:1/x", "a", 3),
                BackendConfig.fromURL("wss://b/y?z=1"),
            ),
        )
        self.assertEqual(route.balancer, "first")
        self.assertEqual(route.failover, "reconnect")
        self.assertEqual(route.failoverBuffer, 0)
        self.assertEqual(
            config.demo,
            DemoConfig(echo="tcp:9001", ticker="unix:ticker.sock", tickerInterval=1.0),
        )

    def test_routesInOrder(self) -> None:
        """
        Routes keep the order of the file.
        """
        text = MINIMAL + ini(
            {
                "route:b": {"path": "/b", "backends": "ws://b/"},
                "route:a": {"path": "/a", "backends": "ws://a/"},
            }
        )
        self.assertEqual([r.name for r in parse(text).routes], ["echo", "b", "a"])

    def test_hashable(self) -> None:
        """
        Configurations are frozen and hashable, balancer options included.
        """
        text = MINIMAL.replace(
            "path = /echo", "path = /echo\nbalancer = consistent_hash\nhash_on = ip"
        )
        config = parse(text)
        self.assertEqual(hash(config), hash(parse(text)))
        self.assertRaises(
            dataclasses.FrozenInstanceError, setattr, config, "listen", ()
        )
        options = config.routes[0].options

        def mutate() -> None:
            options["hash_on"] = "x"  # type: ignore[index]

        self.assertRaises(TypeError, mutate)

    def test_byteOrderMark(self) -> None:
        """
        A UTF-8 byte-order mark at the start of the file is ignored.
        """
        path = os.path.join(tempDirectory(self), "bom.ini")
        with open(path, "wb") as f:
            f.write(b"\xef\xbb\xbf" + MINIMAL.encode("utf-8"))
        self.assertEqual(loadConfig(path).listen, ("tcp:8080",))

    def test_shippedConfig(self) -> None:
        """
        The configuration in C{conf/} that C{make run} uses is valid.
        """
        config = loadConfig(SHIPPED.path)
        self.assertTrue(config.routes)


class BadValueTests(SynchronousTestCase):
    """
    A bad value gives one line naming the file, the section and the key.
    """

    bad: Mapping[tuple[str, str], Sequence[str]] = {
        ("relay", "listen"): ["", "tcp:abc", "nosuch:1", "tcp", "tcp:1 tcp:1"],
        ("relay", "max_message_size"): ["0", "-1", "1.5", "abc", "1e6", "16M", "١"],
        ("relay", "max_frame_size"): ["-1", "x", " 1_0"],
        ("relay", "max_header_size"): ["1023", "", "9" * 30],
        ("relay", "handshake_timeout"): ["0", "-1", "nan", "inf", "1e3", "", "0.0"],
        ("relay", "connect_timeout"): ["0", "x", "+1", "9" * 400],
        ("relay", "idle_timeout"): ["-1", "nan", "x"],
        ("relay", "ping_interval"): ["-0.5", "Infinity"],
        ("relay", "ping_timeout"): ["0", ".", "1,5"],
        ("relay", "close_timeout"): ["0.", "1 2"],
        ("relay", "trusted_proxies"): ["10.0.0.1/33", "example.com", "1.2.3.4 x"],
        ("relay", "plugin_path"): ["does-not-exist", "relay.ini"],
        ("route", "path"): ["chat", "", "/a?b", "/a#b", "/ü", "/a b"],
        ("route", "host"): [
            "example.com:8080",
            "exa mple.com",
            "-bad.com",
            "a..b",
            "1.2.3.999",
            "[::1]:80",
            "",
            "ü.example",
        ],
        ("route", "mode"): ["Proxy", "broadcast", ""],
        ("route", "backends"): [
            "",
            "http://a/",
            "ws://",
            "ws:///x",
            "ws://a/#f",
            "ws://u@a/",
            "ws://a:0/",
            "ws://a:99999/",
            "ws://a:x/",
            "ws://[zz]/",
            "ws://[1.2.3.4]/",
            "ws://::1/",
            "ws://a_b!/",
            "weight=2 ws://a/",
            "ws://a/ weight=0",
            "ws://a/ weight=1001",
            "ws://a/ weight=x",
            "ws://a/ weight=",
            "ws://a/ maxconn=0",
            "ws://a/ maxconn=-1",
            "ws://a/ maxconn=x",
            "ws://a/ maxconn=",
            "ws://a/ maxconn=1000001",
            "ws://a/ colour=red",
            "ws://a/ name=x name=y",
            "ws://a/ ws://a:80/",
            "ws://a/ name=a/b",
            "ws://a/ name=",
            "ws://a/ b",
        ],
        ("route", "balancer"): ["foo", "RoundRobin", ""],
        ("route", "failover"): ["retry", "Close"],
        ("route", "failover_buffer"): ["-1", "x", "1.0"],
        ("route", "data_path"): ["raw", "Message", ""],
        ("route", "source"): ["kafka", "WebSocket", ""],
        ("route", "channel"): ["Route", "host", ""],
        ("route", "replay"): ["-1", "x", "1.5"],
        ("route", "client_messages"): ["echo", ""],
        ("route", "max_client_buffer"): ["-1", "1k"],
        ("route", "slow_client"): ["wait", ""],
        ("route", "connect"): ["now", ""],
        ("route", "linger"): ["-1", "x"],
        ("route", "write_delay"): ["-1", "x", "1e3", "nan", ""],
        ("route", "subscribe"): [],
        ("route", "backoff_base"): ["0", "x"],
        ("route", "backoff_cap"): ["0", "-1"],
        ("route", "resume"): ["json:", "json", "on", "", "Envelope"],
        ("route", "resume_param"): ["", "a b", "a&b", "a=b"],
        ("route", "resume_miss"): ["drop", ""],
        ("route", "resume_window"): ["0", "x", "-1"],
        ("route", "slowstart"): ["-1", "x"],
        ("route", "allowed_origins"): ["", "example.com", "ftp://a", "https://a/x"],
        ("route", "ca_file"): ["/nonexistent/ca.pem", ""],
        ("route", "verify"): ["yes", "On", ""],
        ("route", "compression"): ["deflate", "ON", ""],
        ("relay", "workers"): ["0", "-1", "two", "Auto", ""],
        ("route", "health"): ["ping", "None", ""],
        ("route", "health_interval"): ["0", "-1", "x"],
        ("route", "health_timeout"): ["0", "1s"],
        ("route", "auth"): ["nope", "JWT"],
        ("route", "auth_timeout"): ["0", "1s", "-1"],
        ("route", "queue_timeout"): ["-1", "x", "inf", ""],
        ("route", "rise"): ["0", "-1", "1.5"],
        ("route", "fall"): ["0", "x"],
        ("relay", "admin"): ["tcp:abc", ""],
        ("relay", "admin_hosts"): ["a:80", "a/b", "[::1]", "-a"],
        ("relay", "admin_token_file"): ["/nonexistent/token", ""],
        ("relay", "control_socket"): ["/nonexistent/ctl", "", "/" + "c" * 120],
        ("relay", "drain_timeout"): ["0", "x"],
        ("relay", "close_spread"): ["-1", "x"],
        ("relay", "max_handshakes_per_second"): ["-1", "x", "1e3"],
        ("relay", "max_connections"): ["-1", "x"],
        ("relay", "max_connections_per_ip"): ["-1", "1.5"],
        ("relay", "handshake_rate_per_ip"): ["-1", "x"],
        ("relay", "max_messages_per_second"): ["-1", "x"],
        ("relay", "message_rate_action"): ["kill", ""],
        ("relay", "access_log"): ["yes", "On", ""],
        ("demo", "echo"): ["tcp:abc", "tcp:1 tcp:2", ""],
        ("demo", "ticker"): ["nosuch:", "ssl:443:privateKey=/nonexistent"],
        ("demo", "ticker_interval"): ["0", "-0.1", "x"],
    }

    def test_everyKeyCovered(self) -> None:
        """
        Every key the parser knows has bad values in L{bad}.
        """
        self.assertEqual(
            {(kind, s.key) for kind, specs in KEYS.items() for s in specs},
            set(self.bad),
        )

    def test_badValues(self) -> None:
        """
        Each bad value of each key is refused with a one-line L{ConfigError}
        naming the file, the section and the key.
        """
        sectionOf = {"relay": "relay", "route": "route:echo", "demo": "demo"}
        for (kind, key), values in self.bad.items():
            for value in values:
                text = ini(withKey(kind, key, value))
                try:
                    parse(text)
                except ConfigError as e:
                    where = f"{key} = {value!r}"
                    self.assertEqual(e.filename, FILENAME, where)
                    self.assertEqual(e.section, sectionOf[kind], where)
                    self.assertEqual(e.key, key, where)
                    self.assertEqual(str(e).splitlines(), [str(e)], where)
                    self.assertTrue(
                        str(e).startswith(f"{FILENAME}: [{sectionOf[kind]}] {key}: "),
                        str(e),
                    )
                else:
                    self.fail(f"{kind} {key} = {value!r} was accepted")

    def assertProblem(self, kind: str, key: str, value: str, problem: str) -> None:
        """
        Assert that C{key = value} in the section of C{kind} is refused with
        exactly C{problem}.
        """
        e = self.assertRaises(ConfigError, parse, ini(withKey(kind, key, value)))
        self.assertEqual(e.problem, problem)

    def test_wholeNumberMessage(self) -> None:
        """
        A byte count that is not a whole number says what is expected.
        """
        e = self.assertRaises(
            ConfigError, parse, ini(withKey("relay", "max_message_size", "abc"))
        )
        self.assertEqual(
            str(e),
            "relay.ini: [relay] max_message_size: "
            "expected a whole number of bytes >= 1, got 'abc'",
        )
        self.assertProblem(
            "relay",
            "max_header_size",
            "100",
            "expected a whole number of bytes >= 1024, got '100'",
        )

    def test_secondsMessage(self) -> None:
        """
        A duration says whether zero is allowed and what it means.
        """
        self.assertProblem(
            "relay",
            "ping_timeout",
            "0",
            "expected a number of seconds > 0, got '0'",
        )
        self.assertProblem(
            "relay",
            "idle_timeout",
            "-1",
            "expected a number of seconds >= 0 (0 = never), got '-1'",
        )

    def test_endpointMessage(self) -> None:
        """
        An endpoint string Twisted refuses is reported with Twisted's reason.
        """
        self.assertProblem(
            "relay",
            "listen",
            "tcp:8080 nosuch:1",
            "not a valid Twisted server endpoint string: 'nosuch:1' "
            "(Unknown endpoint type: 'nosuch')",
        )

    def test_choiceMessage(self) -> None:
        """
        A word that is not one of the choices lists them.
        """
        self.assertProblem(
            "route",
            "failover",
            "retry",
            "expected one of 'close', 'reconnect', got 'retry'",
        )

    def test_unknownBalancerMessage(self) -> None:
        """
        An unknown balancer is reported with the installed ones, sorted.
        """
        balancers = {
            "round_robin": (),
            "random_two": (),
            "first": (),
            "least_connections": (),
        }
        text = ini(withKey("route", "balancer", "foo")).replace(
            "route:echo", "route:chat"
        )
        e = self.assertRaises(ConfigError, parse, text, balancers)
        self.assertEqual(
            str(e),
            "relay.ini: [route:chat] balancer: unknown balancer 'foo'; "
            "installed: first, least_connections, random_two, round_robin",
        )

    def test_defaultBalancerMissing(self) -> None:
        """
        A route without C{balancer} needs C{round_robin} to be installed.
        """
        e = self.assertRaises(ConfigError, parse, MINIMAL, {"first": ()})
        self.assertEqual(
            str(e),
            "relay.ini: [route:echo] balancer: the default balancer "
            "'round_robin' is not installed; installed: first",
        )


class SectionTests(SynchronousTestCase):
    """
    Sections: which are allowed, required and how syntax errors read.
    """

    def assertFileError(
        self, text: str, message: str, section: str | None = None
    ) -> None:
        """
        Assert that C{text} is refused with exactly C{message}.
        """
        e = self.assertRaises(ConfigError, parse, text)
        self.assertEqual(str(e), message)
        self.assertEqual(e.section, section)

    def test_unknownSection(self) -> None:
        """
        A section that is not C{[relay]}, C{[route:NAME]} or C{[demo]} is
        refused, listing the allowed forms.
        """
        self.assertFileError(
            MINIMAL + "[Relay]\n",
            "relay.ini: [Relay] unknown section; "
            "the sections are [relay], [route:NAME] and [demo]",
            "Relay",
        )

    def test_defaultSection(self) -> None:
        """
        A C{[DEFAULT]} section is not a source of defaults for the other
        sections but an unknown section, with or without keys.
        """
        for text in [
            "[DEFAULT]\n" + MINIMAL,
            "[DEFAULT]\nidle_timeout = 1\n" + MINIMAL,
        ]:
            e = self.assertRaises(ConfigError, parse, text)
            self.assertEqual(e.section, "DEFAULT")
            self.assertIn("unknown section", str(e))

    def test_badRouteName(self) -> None:
        """
        A route's name is made of letters, digits, C{_}, C{.} and C{-}.
        """
        for name in ["", "a b", "a/b", "ü"]:
            text = MINIMAL + ini(
                {f"route:{name}": {"path": "/x", "backends": "ws://a/"}}
            )
            e = self.assertRaises(ConfigError, parse, text)
            self.assertEqual((e.section, e.key), (f"route:{name}", None))

    def test_missingRelay(self) -> None:
        """
        The C{[relay]} section is required.
        """
        self.assertFileError(
            MINIMAL.replace("[relay]\nlisten = tcp:8080\n", ""),
            "relay.ini: missing [relay] section",
        )

    def test_noRoute(self) -> None:
        """
        At least one route is required.
        """
        self.assertFileError(
            "[relay]\nlisten = tcp:8080\n[demo]\n",
            "relay.ini: no [route:NAME] section; at least one is required",
        )

    def test_requiredKeys(self) -> None:
        """
        A missing required key is named with its section.
        """
        for kind, key, section in [
            ("relay", "listen", "relay"),
            ("route", "path", "route:echo"),
            ("route", "backends", "route:echo"),
        ]:
            sections = withKey(kind, key, "")
            del sections[section][key]
            e = self.assertRaises(ConfigError, parse, ini(sections))
            self.assertEqual(
                str(e), f"relay.ini: [{section}] {key}: required key missing"
            )

    def test_duplicateSection(self) -> None:
        """
        A section given twice is an error.
        """
        self.assertFileError(
            MINIMAL + "[relay]\n",
            "relay.ini: [relay] section given twice (line 7)",
            "relay",
        )

    def test_duplicateKey(self) -> None:
        """
        A key given twice in a section is an error naming the key, even when
        written in another case.
        """
        e = self.assertRaises(
            ConfigError, parse, MINIMAL.replace("[relay]", "[relay]\nListen = tcp:1")
        )
        self.assertEqual(str(e), "relay.ini: [relay] listen: key given twice (line 3)")

    def test_noSectionHeader(self) -> None:
        """
        A key before any section header is an error naming the line.
        """
        self.assertFileError(
            "listen = tcp:8080\n" + MINIMAL,
            "relay.ini: line 1: expected a section header such as [relay], "
            "got 'listen = tcp:8080'",
        )

    def test_syntaxError(self) -> None:
        """
        A line that is neither a key, a header nor a comment is an error
        naming the line.
        """
        self.assertFileError(
            MINIMAL + "what is this\n",
            "relay.ini: line 7: expected 'key = value', a [section] or a comment, "
            "got 'what is this'",
        )

    def test_unknownKeys(self) -> None:
        """
        An unknown key is refused with the known keys of its section.
        """
        for kind, section in [("relay", "relay"), ("route", "route:echo")]:
            e = self.assertRaises(
                ConfigError, parse, ini(withKey(kind, "colour", "red"))
            )
            known = ", ".join(sorted(SECTION_KEYS[kind]))
            self.assertEqual(
                str(e),
                f"relay.ini: [{section}] colour: unknown key; known keys: {known}",
            )
        e = self.assertRaises(ConfigError, parse, ini(withKey("demo", "port", "1")))
        self.assertEqual(
            str(e),
            "relay.ini: [demo] port: unknown key; "
            "known keys: echo, ticker, ticker_interval",
        )


class RouteTests(SynchronousTestCase):
    """
    Route paths, hosts and duplicates.
    """

    def route(self, **keys: str) -> RouteConfig:
        """
        @return: The route parsed from L{MINIMAL} with C{keys} set.
        """
        sections = withKey("route", "path", "/echo")
        sections["route:echo"].update(keys)
        return parse(ini(sections)).routes[0]

    def test_path(self) -> None:
        """
        Trailing slashes are dropped, except for the root path.
        """
        self.assertEqual(self.route(path="/chat//").path, "/chat")
        self.assertEqual(self.route(path="/a/b").path, "/a/b")
        self.assertEqual(self.route(path="/").path, "/")
        self.assertEqual(self.route(path="///").path, "/")
        self.assertEqual(self.route(path="/%7Euser").path, "/%7Euser")

    def test_host(self) -> None:
        """
        Hosts are lower-cased; IPv6 addresses lose their brackets and take
        their canonical form.
        """
        self.assertEqual(self.route(host="Chat.Example.COM").host, "chat.example.com")
        self.assertEqual(self.route(host="127.0.0.1").host, "127.0.0.1")
        self.assertEqual(self.route(host="[::1]").host, "::1")
        self.assertEqual(self.route(host="0:0::1").host, "::1")
        self.assertEqual(self.route(host="my_service").host, "my_service")

    def test_duplicatePath(self) -> None:
        """
        Two routes with the same path and host are an error naming both
        sections.
        """
        text = MINIMAL + ini({"route:two": {"path": "/echo/", "backends": "ws://b/"}})
        e = self.assertRaises(ConfigError, parse, text)
        self.assertEqual(
            str(e),
            "relay.ini: [route:two] path: duplicate route: "
            "path '/echo' is also routed by [route:echo]",
        )
        sections = {
            "relay": {"listen": "tcp:1"},
            "route:a": {"path": "/", "host": "a.example", "backends": "ws://a/"},
            "route:b": {"path": "/", "host": "A.example", "backends": "ws://a/"},
        }
        e = self.assertRaises(ConfigError, parse, ini(sections))
        self.assertEqual(
            str(e),
            "relay.ini: [route:b] path: duplicate route: "
            "path '/' on host 'a.example' is also routed by [route:a]",
        )

    def test_samePathOtherHost(self) -> None:
        """
        The same path may be routed again for another host, or for a host
        and for any host.
        """
        sections = {
            "relay": {"listen": "tcp:1"},
            "route:any": {"path": "/", "backends": "ws://a/"},
            "route:a": {"path": "/", "host": "a.example", "backends": "ws://a/"},
            "route:b": {"path": "/", "host": "b.example", "backends": "ws://a/"},
        }
        routes = parse(ini(sections)).routes
        self.assertEqual([r.host for r in routes], [None, "a.example", "b.example"])


class BackendTests(SynchronousTestCase):
    """
    The C{backends} key and L{BackendConfig.fromURL}.
    """

    def backends(self, value: str) -> tuple[BackendConfig, ...]:
        """
        @return: The backends parsed from C{backends = value}.
        """
        return parse(ini(withKey("route", "backends", value))).routes[0].backends

    def test_derivedFields(self) -> None:
        """
        Secure, host, port, path and query come from the URL.
        """
        [b] = self.backends("ws://Backend.Example:9001/chat/room?x=1&y=2")
        self.assertEqual(
            b,
            BackendConfig(
                url="ws://Backend.Example:9001/chat/room?x=1&y=2",
                name="backend.example:9001",
                weight=1,
                secure=False,
                host="backend.example",
                port=9001,
                path="/chat/room",
                query="x=1&y=2",
            ),
        )

    def test_defaultPorts(self) -> None:
        """
        C{ws://} defaults to port 80 and C{wss://} to port 443; the path
        defaults to C{/}.
        """
        ws, wss = self.backends("ws://a wss://b")
        self.assertEqual(
            (ws.secure, ws.port, ws.path, ws.name), (False, 80, "/", "a:80")
        )
        self.assertEqual(
            (wss.secure, wss.port, wss.path, wss.name), (True, 443, "/", "b:443")
        )

    def test_ipv6(self) -> None:
        """
        An IPv6 host is written in brackets in the URL and the default name,
        and without them in C{host}.
        """
        [b] = self.backends("ws://[::1]:9001/")
        self.assertEqual((b.host, b.port, b.name), ("::1", 9001, "[::1]:9001"))

    def test_options(self) -> None:
        """
        C{name=} and C{weight=} follow their URL, on the same line or the
        next ones.
        """
        backends = self.backends(
            "ws://a:1/ weight=5 name=first\n  ws://b:1/\n  NAME=b weight=1000\n"
            "  ws://c:1/ weight=007"
        )
        self.assertEqual(
            [(b.name, b.weight) for b in backends],
            [("first", 5), ("b", 1000), ("c:1", 7)],
        )

    def test_queryWithEquals(self) -> None:
        """
        A URL whose query holds C{=} is a URL, not an option.
        """
        [b] = self.backends("ws://a/?token=x name=a")
        self.assertEqual((b.query, b.name), ("token=x", "a"))

    def test_duplicateName(self) -> None:
        """
        Two backends with the same name are refused, naming it.
        """
        e = self.assertRaises(
            ConfigError, parse, ini(withKey("route", "backends", "ws://a/ ws://a:80/"))
        )
        self.assertEqual(
            e.problem, "two backends are named 'a:80'; give one a name= option"
        )
        self.backends("ws://a/ ws://a:80/ name=other")

    def test_unknownOption(self) -> None:
        """
        An unknown option is refused, naming it and the known ones.
        """
        e = self.assertRaises(
            ConfigError, parse, ini(withKey("route", "backends", "ws://a/ colour=red"))
        )
        self.assertEqual(
            e.problem,
            "unknown backend option 'colour' after ws://a/; known options: "
            "name, weight, maxconn",
        )

    def test_weightMessage(self) -> None:
        """
        A weight out of range says which range and which backend.
        """
        e = self.assertRaises(
            ConfigError, parse, ini(withKey("route", "backends", "ws://a/ weight=0"))
        )
        self.assertEqual(
            e.problem,
            "expected a whole number between 1 and 1000 as weight of ws://a/, got '0'",
        )

    def test_secretsNotShown(self) -> None:
        """
        A configuration error about a backend shows its URL without user
        information, query or fragment, which may hold a secret: the
        message reaches logs and the answer to the admin API's
        C{POST /reload}.  It still says which URL it is about.
        """
        for value in [
            "http://u:SECRET@a/?k=SECRET",
            "ws://u:SECRET@a/",
            "ws://a/?k=SECRET#f",
            "ws://a/#SECRET",
            "ws://a:0/?k=SECRET",
            "ws://a:x/?k=SECRET",
            "ws://a_b!/?k=SECRET",
            "ws://[::1/?k=SECRET",
            "ws://a/?k=SECRET\u00fc",
            "ws:u:SECRET@a/",
            "ws://a/?k=SECRET colour=red",
            "ws://a/?k=SECRET name=a name=b",
            "ws://a/?k=SECRET weight=0",
            "ws://a/?k=SECRET name=a!",
            "k=SECRET ws://a/",
        ]:
            e = self.assertRaises(
                ConfigError, parse, ini(withKey("route", "backends", value))
            )
            self.assertNotIn("SECRET", str(e), value)
        e = self.assertRaises(
            ConfigError,
            parse,
            ini(withKey("route", "backends", "ws://u:SECRET@a:1/x?k=SECRET")),
        )
        self.assertEqual(
            e.problem,
            "expected a ws:// or wss:// URL with a host and no user information,"
            " got 'ws://REDACTED@a:1/x?REDACTED'",
        )

    def test_fromURL(self) -> None:
        """
        L{BackendConfig.fromURL} builds a backend from its parts and raises
        L{ValueError} for a bad one.
        """
        b = BackendConfig.fromURL("wss://[2001:DB8::1]/", "x", 2)
        self.assertEqual(
            (b.secure, b.host, b.port, b.name, b.weight),
            (True, "2001:db8::1", 443, "x", 2),
        )
        self.assertRaises(ValueError, BackendConfig.fromURL, "http://a/")
        self.assertRaises(ValueError, BackendConfig.fromURL, "ws://a/", "a b")
        self.assertRaises(ValueError, BackendConfig.fromURL, "ws://a/", None, 0)


class EndpointArgumentsTests(SynchronousTestCase):
    """
    L{_endpointArguments} splits an endpoint string as Twisted does.
    """

    def test_likeTwisted(self) -> None:
        """
        Positional and keyword arguments, escaped C{:} and C{=}, and a
        value holding C{=} come out as Twisted's own parser gives them (a
        private function: if Twisted renames it, this test says so).
        """
        from twisted.internet.endpoints import _parse

        for description in [
            "tcp:9090",
            "tcp:9090:interface=127.0.0.1:backlog=5",
            "tcp6:9090:interface=\\:\\:1",
            "ssl:0:privateKey=/a/interface=/k.pem:certKey=c=d",
            "autobahn:tcp\\:9190:url=ws\\://h/?interface=x",
            "haproxy:tcp:9090:",
            "unix:/tmp/a\\=b.sock:mode=600",
        ]:
            self.assertEqual(
                _endpointArguments(description), _parse(description), description
            )
        self.assertRaises(ValueError, _endpointArguments, "tcp:1\\")


class ProductionImportsTests(SynchronousTestCase):
    """
    Test helpers stay out of the relay's own modules.
    """

    def test_noTestingImports(self) -> None:
        """
        No module under C{wsrelay/} imports C{twisted.internet.testing} or
        C{twisted.test}, at the top or inside a function: they are test
        helpers, not API a running relay should load.  The exception is
        C{wsrelay/testing.py}, itself the test helpers wsrelay offers plugin
        authors (as C{twisted.internet.testing} is Twisted's): the relay
        never imports it, which L{test_testingNotLoaded} shows.
        """
        package = FilePath(wsrelay.__file__).parent()
        forbidden = ("twisted.internet.testing", "twisted.test")
        offenders = []
        modules = 0
        for path in package.walk():
            if not path.basename().endswith(".py") or path == package.child(
                "testing.py"
            ):
                continue
            modules += 1
            tree = ast.parse(path.getContent(), path.path)
            for node in ast.walk(tree):
                names: list[str] = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                    names += [f"{node.module}.{a.name}" for a in node.names]
                for name in names:
                    if any(name == f or name.startswith(f + ".") for f in forbidden):
                        offenders.append(f"{path.path}:{node.lineno}: {name}")
        self.assertGreater(modules, 10)
        self.assertEqual(offenders, [])

    def test_testingNotLoaded(self) -> None:
        """
        Building a relay service from a config with proxy and fan-out routes
        loads neither C{wsrelay.testing} nor C{twisted.internet.testing}.
        """
        code = (
            "import sys\n"
            "from wsrelay.config import parseConfig\n"
            "from wsrelay.service import RelayService\n"
            "config = parseConfig('''\n"
            "[relay]\nlisten = tcp:0:interface=127.0.0.1\n"
            "[route:a]\npath = /a\nbackends = ws://127.0.0.1:1/\n"
            "[route:b]\npath = /b\nmode = fanout\nbackends = ws://127.0.0.1:1/\n"
            "''', 'relay.ini')\n"
            "RelayService(config)\n"
            "print(sorted(m for m in sys.modules if m.endswith('.testing')))\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(done.stdout.strip(), "[]")

    def test_listensOn(self) -> None:
        """
        L{_listensOn} tells which interface a TCP or TLS endpoint string
        would listen on, without listening, and L{None} for other kinds.
        """
        self.assertEqual(_listensOn("tcp:0:interface=127.0.0.1"), "127.0.0.1")
        self.assertEqual(_listensOn("tcp:0"), "")
        self.assertEqual(_listensOn("tcp6:0"), "::")
        self.assertEqual(_listensOn("haproxy:tcp6:0:interface=\\:\\:1"), "::1")
        self.assertIsNone(_listensOn("unix:/nonexistent/relay.sock"))


class PluginKeyTests(SynchronousTestCase):
    """
    Keys declared by the route's balancer plugin.
    """

    balancers = {"round_robin": (), "sticky": ("Cookie_Name", "ttl"), "hash": ("ttl",)}

    def test_declaredKeys(self) -> None:
        """
        The keys the route's balancer declares are kept, as written, in
        L{RouteConfig.options}.
        """
        sections = withKey("route", "balancer", "sticky")
        sections["route:echo"]["cookie_name"] = "SESSION"
        sections["route:echo"]["ttl"] = " 30 "
        route = parse(ini(sections), self.balancers).routes[0]
        self.assertEqual(dict(route.options), {"cookie_name": "SESSION", "ttl": "30"})

    def test_otherBalancersKeys(self) -> None:
        """
        A key declared by another balancer than the route's is unknown, and
        the message says which balancers declare it.
        """
        e = self.assertRaises(
            ConfigError, parse, ini(withKey("route", "ttl", "30")), self.balancers
        )
        self.assertEqual(e.key, "ttl")
        self.assertTrue(
            e.problem.endswith("; ttl is an option of balancer hash, sticky"), e.problem
        )

    def test_knownKeysIncludeDeclared(self) -> None:
        """
        The list of known keys of a route includes its balancer's keys.
        """
        sections = withKey("route", "balancer", "hash")
        sections["route:echo"]["colour"] = "red"
        e = self.assertRaises(ConfigError, parse, ini(sections), self.balancers)
        self.assertIn(", ttl", e.problem)

    def test_builtinKeysWin(self) -> None:
        """
        A balancer cannot take over a built-in route key: choosing one that
        declares it is an error naming the balancer and the key.
        """
        sections = withKey("route", "balancer", "odd")
        sections["route:echo"]["path"] = "relative"
        e = self.assertRaises(
            ConfigError, parse, ini(sections), {"odd": ("path",), "round_robin": ()}
        )
        self.assertEqual(e.key, "balancer")
        self.assertEqual(e.problem, "odd: its option 'path' is a built-in route key")

    def test_routeClasses(self) -> None:
        """
        A route is a L{ProxyRouteConfig} or a L{FanoutRouteConfig}, as its
        C{mode} says: both have the shared fields of L{BaseRouteConfig},
        and neither has the other mode's fields.
        """
        sections = withKey("route", "failover", "reconnect")
        sections["route:feed"] = {
            "path": "/feed",
            "backends": "ws://127.0.0.1:9002/",
            "mode": "fanout",
            "replay": "2",
        }
        proxy, fanout = parse(ini(sections)).routes
        self.assertEqual(type(proxy), ProxyRouteConfig)
        self.assertEqual(type(fanout), FanoutRouteConfig)
        self.assertEqual((proxy.mode, fanout.mode), ("proxy", "fanout"))
        self.assertEqual((proxy.failover, fanout.replay), ("reconnect", 2))
        for route in (proxy, fanout):
            self.assertIsInstance(route, BaseRouteConfig)
        self.assertEqual(
            PROXY_KEYS, {"failover", "failover_buffer", "data_path", "compression"}
        )
        specs = SCHEMAS["route"].byKey
        for keys, other in [(FANOUT_KEYS, proxy), (PROXY_KEYS, fanout)]:
            for key in keys:
                self.assertFalse(hasattr(other, specs[key].attribute), key)
        self.assertEqual(RouteConfig, ProxyRouteConfig | FanoutRouteConfig)

    def test_modeKeys(self) -> None:
        """
        Fan-out keys in a proxy route, and proxy keys in a fan-out route,
        are errors naming the key and the mode it belongs to.
        """
        sections = withKey("route", "failover", "close")
        sections["route:echo"]["mode"] = "fanout"
        e = self.assertRaises(ConfigError, parse, ini(sections))
        self.assertEqual(e.key, "failover")
        sections["route:echo"]["mode"] = "proxy"
        sections["route:echo"]["replay"] = "1"
        e = self.assertRaises(ConfigError, parse, ini(sections))
        self.assertEqual(e.key, "replay")
        self.assertIn("only used with mode = fanout", str(e))

    def test_dataPathDefault(self) -> None:
        """
        A proxy route's data path is C{passthrough} unless it has
        C{failover = reconnect}, which needs C{message}.
        """
        sections = withKey("route", "failover", "close")
        self.assertEqual(parse(ini(sections)).routes[0].dataPath, "passthrough")
        sections["route:echo"]["failover"] = "reconnect"
        self.assertEqual(parse(ini(sections)).routes[0].dataPath, "message")

    def test_passthroughReconnect(self) -> None:
        """
        C{data_path = passthrough} cannot go with C{failover = reconnect}.
        """
        sections = withKey("route", "data_path", "passthrough")
        sections["route:echo"]["failover"] = "reconnect"
        e = self.assertRaises(ConfigError, parse, ini(sections))
        self.assertEqual(e.key, "data_path")

    def test_workersShareableListeners(self) -> None:
        """
        C{workers} above 1 needs listeners that processes can share
        (C{tcp:}, C{tcp6:}, C{ssl:}, also behind C{haproxy:}); C{auto} is
        one per CPU.
        """
        sections = withKey("relay", "workers", "2")
        sections["relay"]["listen"] = "tcp:8080 unix:/tmp/relay.sock"
        e = self.assertRaises(ConfigError, parse, ini(sections))
        self.assertEqual((e.section, e.key), ("relay", "workers"))
        self.assertIn("'unix:/tmp/relay.sock' cannot be shared", str(e))
        sections["relay"]["listen"] = "tcp:8080 haproxy:tcp6:8081"
        self.assertEqual(parse(ini(sections)).workers, 2)
        sections["relay"]["workers"] = "auto"
        self.assertEqual(parse(ini(sections)).workers, os.cpu_count())

    def test_backoffOrder(self) -> None:
        """
        C{backoff_cap} is not less than C{backoff_base}.
        """
        sections = withKey("route", "backoff_base", "5")
        sections["route:echo"]["backoff_cap"] = "1"
        e = self.assertRaises(ConfigError, parse, ini(sections))
        self.assertEqual(e.key, "backoff_cap")

    def test_defaultBalancers(self) -> None:
        """
        Without a list of installed balancers, the built-in ones are
        assumed, with C{consistent_hash} declaring C{hash_on}.
        """
        self.assertEqual(
            set(DEFAULT_BALANCERS),
            {
                "round_robin",
                "least_connections",
                "random_two",
                "first",
                "consistent_hash",
            },
        )
        sections = withKey("route", "balancer", "consistent_hash")
        sections["route:echo"]["hash_on"] = "ip"
        self.assertEqual(
            dict(parse(ini(sections)).routes[0].options), {"hash_on": "ip"}
        )


class LoadConfigTests(SynchronousTestCase):
    """
    Tests for L{loadConfig}: reading the file.
    """

    def test_load(self) -> None:
        """
        L{loadConfig} reads the file; the configuration records its absolute
        path and errors name it as given.
        """
        directory = tempDirectory(self)
        path = os.path.join(directory, "relay.ini")
        with open(path, "w", encoding="utf-8") as f:
            f.write(MINIMAL)
        self.assertEqual(loadConfig(path).path, path)
        relative = os.path.relpath(path)
        self.assertEqual(loadConfig(relative).path, path)
        with open(path, "a", encoding="utf-8") as f:
            f.write("bogus = 1\n")
        e = self.assertRaises(ConfigError, loadConfig, relative)
        self.assertEqual(e.filename, relative)
        self.assertTrue(str(e).startswith(relative + ": [route:echo] bogus: "))

    def test_pluginPathRelativeToFile(self) -> None:
        """
        Relative C{plugin_path} entries are relative to the file's directory,
        not the current one.
        """
        directory = tempDirectory(self)
        os.mkdir(os.path.join(directory, "plugins"))
        os.mkdir(os.path.join(directory, "conf"))
        path = os.path.join(directory, "conf", "relay.ini")
        with open(path, "w", encoding="utf-8") as f:
            f.write(MINIMAL.replace("[relay]", "[relay]\nplugin_path = ../plugins"))
        self.assertEqual(
            loadConfig(path).pluginPath, (os.path.join(directory, "plugins"),)
        )

    def test_pluginPathHome(self) -> None:
        """
        C{~} in C{plugin_path} is the home directory.
        """
        home = tempDirectory(self)
        os.mkdir(os.path.join(home, "plugins"))
        text = MINIMAL.replace("[relay]", "[relay]\nplugin_path = ~/plugins")
        with mock.patch.dict(os.environ, {"HOME": home}):
            config = parseConfig(text, "/etc/relay.ini")
        self.assertEqual(config.pluginPath, (os.path.join(home, "plugins"),))

    def test_missing(self) -> None:
        """
        A missing file is a L{ConfigError} naming it.
        """
        path = os.path.join(tempDirectory(self), "nope.ini")
        e = self.assertRaises(ConfigError, loadConfig, path)
        self.assertEqual(
            str(e), f"{path}: cannot read the file: No such file or directory"
        )

    def test_directory(self) -> None:
        """
        A directory is not a configuration file.
        """
        directory = tempDirectory(self)
        e = self.assertRaises(ConfigError, loadConfig, directory)
        self.assertEqual(e.filename, directory)
        self.assertIsNone(e.section)

    def test_badPath(self) -> None:
        """
        A path the operating system refuses is a L{ConfigError}.
        """
        e = self.assertRaises(ConfigError, loadConfig, "a\x00b")
        self.assertEqual(str(e).splitlines(), [str(e)])

    def test_notUTF8(self) -> None:
        """
        A file that is not UTF-8 is a L{ConfigError} saying where.
        """
        path = os.path.join(tempDirectory(self), "latin1.ini")
        with open(path, "wb") as f:
            f.write(b"[relay]\nlisten = tcp:8080 ; caf\xe9\n")
        e = self.assertRaises(ConfigError, loadConfig, path)
        self.assertEqual(str(e), f"{path}: not UTF-8 text: byte 0xe9 on line 2")


class KeyTableTests(SynchronousTestCase):
    """
    The table of keys agrees with the value classes and the documentation.
    """

    def test_fieldsAndKeys(self) -> None:
        """
        Each key sets a field of its section's value class (for a route, of
        the class of every mode that takes it), with that field's default;
        each field is set by a key, except those the parser fills itself.
        """
        classes = {
            "relay": {None: RelayConfig},
            "route": {"proxy": ProxyRouteConfig, "fanout": FanoutRouteConfig},
            "demo": {None: DemoConfig},
        }
        derived = {
            "relay": {"path", "routes", "demo"},
            "route": {"name", "options", "healthOptions", "authOptions"},
            "demo": set(),
        }
        self.assertEqual(list(SCHEMAS), ["relay", "route", "demo"])
        for kind, schema in SCHEMAS.items():
            self.assertEqual(dict(schema.classes), classes[kind])
            for mode, valueClass in schema.classes.items():
                fields = {f.name: f for f in dataclasses.fields(valueClass)}
                taken = [s for s in schema.keys if s.mode in (None, mode)]
                # The chosen source's options, as a balancer's.
                fanout = {"sourceOptions"} if mode == "fanout" else set()
                self.assertEqual(
                    {s.attribute for s in taken} | derived[kind] | fanout,
                    set(fields),
                    (kind, mode),
                )
                for spec in taken:
                    default = fields[spec.attribute].default
                    if default is dataclasses.MISSING:
                        default = REQUIRED
                    if spec.key == "mode":
                        # Each class has its own; the key's default is the
                        # default mode's.
                        self.assertEqual(default, mode)
                        continue
                    self.assertEqual(spec.default, default, spec.key)
                    self.assertEqual(spec.required, default is REQUIRED, spec.key)
            self.assertEqual(KEYS[kind], schema.keys)
            self.assertEqual(SECTION_KEYS[kind], {s.key for s in schema.keys})
        self.assertEqual(SCHEMAS["route"].byKey["mode"].default, "proxy")

    def test_documentedKeys(self) -> None:
        """
        C{docs/configuration.md} documents exactly the keys the parser
        knows, each in the table of its section, in the parser's order, with
        their type and default; a key only one route mode takes says which.
        """
        tables = docTables()
        labels = {"proxy": "Proxy only", "fanout": "Fan-out only"}
        for kind, schema in SCHEMAS.items():
            rows = tables[kind]
            self.assertEqual(list(rows), [s.key for s in schema.keys], kind)
            for spec in schema.keys:
                row = rows[spec.key]
                self.assertEqual(
                    list(row), ["key", "type", "default", "meaning", "example"]
                )
                self.assertEqual(row["key"], f"`{spec.key}`")
                self.assertEqual(row["type"], spec.kind, spec.key)
                self.assertEqual(row["default"], iniDefault(spec.default), spec.key)
                self.assertTrue(row["meaning"], spec.key)
                label = labels.get(spec.mode or "")
                if label is None:
                    self.assertFalse(
                        row["meaning"].startswith(tuple(labels.values())), spec.key
                    )
                else:
                    self.assertTrue(row["meaning"].startswith(label), spec.key)

    def test_documentedPluginOptions(self) -> None:
        """
        Every key that a built-in balancer or health checker declares is in
        the table of plugin options, with the plugins that read it.
        """
        text = DOCS.getContent().decode("utf-8")
        table = text.split("### Plugin options", 1)[1].split("\n###", 1)[0]
        rows = {
            cells[0].strip("` "): cells[1]
            for line in table.splitlines()
            if line.startswith("| `")
            for cells in [line.strip("|").split("|")]
        }
        declared: dict[str, set[str]] = {}
        plugins = [*balancerFactories().values(), *healthCheckerFactories().values()]
        for factory in plugins:
            if factory.__module__.startswith("wsrelay."):
                for key in factory.options:
                    declared.setdefault(key, set()).add(factory.name)
        self.assertEqual(set(rows), set(declared))
        for key, names in declared.items():
            for name in names:
                self.assertIn(f"`{name}`", rows[key], key)

    def test_documentedTypes(self) -> None:
        """
        Every type in the key tables is explained in the table of value
        types.
        """
        text = DOCS.getContent().decode("utf-8")
        for specs in KEYS.values():
            for spec in specs:
                self.assertIn(f"\n| {spec.kind} | ", text, spec.key)

    def test_documentedExamples(self) -> None:
        """
        Every example in the key tables is a valid value of its key.
        """
        directory = tempDirectory(self)
        os.mkdir(os.path.join(directory, "plugins"))
        for name in ("token", "backend-ca.pem"):
            with open(os.path.join(directory, name), "w") as f:
                f.write("secret\n")
        path = os.path.join(directory, "relay.ini")
        for kind, rows in docTables().items():
            for key, row in rows.items():
                example = row["example"]
                self.assertTrue(
                    example.startswith("`") and example.endswith("`"), example
                )
                parseConfig(ini(withKey(kind, key, example[1:-1])), path)

    def test_documentedFullExample(self) -> None:
        """
        The full example in C{docs/configuration.md} is a valid file, down
        to the options its plugins check when the relay builds them.
        """
        text = DOCS.getContent().decode("utf-8")
        example = text.split("```ini\n", 1)[1].split("```", 1)[0]
        config = parseConfig(example, "example.ini")
        self.assertEqual([r.name for r in config.routes], ["chat", "prices", "sticky"])
        relay = RelayService(config, MemoryReactorClock())
        sticky = relay.routes.byName("sticky")
        assert sticky is not None
        self.assertEqual(sticky.config.options["hash_on"], "cookie:session")

    def test_badPluginOption(self) -> None:
        """
        An option value a plugin rejects when the relay builds it is a
        L{ConfigError} naming the file, the route and the plugin's key.
        """
        config = parseConfig(
            "[relay]\nlisten = tcp:0\n[route:r]\npath = /\n"
            "backends = ws://h:1/\nbalancer = consistent_hash\nhash_on = cookie\n",
            "r.ini",
        )
        e = self.assertRaises(ConfigError, RelayService, config, MemoryReactorClock())
        self.assertEqual((e.section, e.key), ("route:r", "balancer"))
        self.assertIn("consistent_hash: expected ip, path", str(e))


class FuzzTests(SynchronousTestCase):
    """
    Whatever the text, the parser raises nothing but L{ConfigError}.
    """

    def assertOnlyConfigError(self, text: str) -> RelayConfig | None:
        """
        Parse C{text}; a L{ConfigError} is fine if its message is one line
        naming the file.

        @return: The configuration, or L{None} after a L{ConfigError}.
        """
        try:
            return parseConfig(text, "fuzz.ini")
        except ConfigError as e:
            self.assertEqual(str(e).splitlines(), [str(e)])
            self.assertTrue(str(e).startswith("fuzz.ini: "), str(e))
            return None

    @FUZZ
    @given(st.text())
    def test_anyText(self, text: str) -> None:
        """
        Arbitrary text is parsed or refused with a L{ConfigError}.
        """
        self.assertOnlyConfigError(text)

    @FUZZ
    @given(
        st.lists(
            st.tuples(
                st.sampled_from(["relay", "route:echo", "demo", "route:x", "DEFAULT"]),
                st.sampled_from(
                    sorted({k for keys in SECTION_KEYS.values() for k in keys})
                    + ["hash_on", "bogus"]
                ),
                st.one_of(
                    st.text(max_size=30),
                    st.text(alphabet="0123456789.-:/[]=wst ", max_size=20),
                    st.from_regex(r"\Aws://[a-z:\[\]0-9]{0,8}/[ a-z=]{0,8}\Z"),
                ),
            ),
            max_size=6,
        )
    )
    def test_anyValues(self, changes: list[tuple[str, str, str]]) -> None:
        """
        Arbitrary values for known keys of a valid file are parsed or
        refused with a L{ConfigError}.
        """
        sections: dict[str, dict[str, str]] = withKey("route", "path", "/echo")
        for section, key, value in changes:
            sections.setdefault(section, {})[key] = value
        self.assertOnlyConfigError(ini(sections))

    @FUZZ
    @given(
        st.integers(min_value=1, max_value=2**63 - 1),
        st.floats(min_value=0.001, max_value=1e9),
        st.integers(min_value=1, max_value=1000),
    )
    def test_goodNumbers(self, size: int, seconds: float, weight: int) -> None:
        """
        Good numbers are read back as written.
        """
        sections = withKey("relay", "max_message_size", str(size))
        sections["relay"]["ping_timeout"] = f"{seconds:f}"
        sections["route:echo"]["backends"] = f"ws://a/ weight={weight}"
        config = parseConfig(ini(sections), "fuzz.ini")
        self.assertEqual(config.maxMessageSize, size)
        self.assertEqual(config.pingTimeout, float(f"{seconds:f}"))
        self.assertEqual(config.routes[0].backends[0].weight, weight)


def tempDirectory(case: SynchronousTestCase) -> str:
    """
    Make a temporary directory removed when C{case} ends.

    @return: Its absolute path, without symbolic links.
    """
    directory = os.path.realpath(tempfile.mkdtemp(prefix="wsrelay-config-"))
    case.addCleanup(shutil.rmtree, directory)
    return directory
