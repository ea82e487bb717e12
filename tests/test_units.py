"""
In-memory tests of the relay's pure logic: heads, routes, balancers,
close codes.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.plugins.wsrelay_balancers import first, roundRobin
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from tests.support.routes import proxyRoute
from wsrelay.config import BackendConfig, ProxyRouteConfig
from wsrelay.health.monitor import HealthMonitor
from wsrelay.interfaces import IBalancer, IBalancerFactory
from wsrelay.plugins import balancerFactories
from wsrelay.routing import (
    DISABLED,
    DRAINING,
    ENABLED,
    Backend,
    ConnectionInfo,
    Route,
    RouteTable,
    buildBackends,
    joinPath,
    matchPrefix,
)
from wsrelay.ws.handshake import BadHead, buildResponse, endToEnd, parseHead
from wsrelay.ws.legclosing import sendableCloseCode

INFO = ConnectionInfo("127.0.0.1", "/", "", ())


def backends(*weights: int) -> list[Backend]:
    """
    Backends named a, b, c... with these weights.
    """
    return [
        Backend(BackendConfig.fromURL(f"ws://127.0.0.1:{9000 + i}/", chr(97 + i), w))
        for i, w in enumerate(weights)
    ]


class HeadTests(SynchronousTestCase):
    """
    Parsing heads and choosing what to forward.
    """

    def test_repeatedKept(self) -> None:
        """
        Repeated fields stay separate and in order.
        """
        head = parseHead(b"HTTP/1.1 401 No\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2")
        self.assertEqual(endToEnd(head), [("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")])

    def test_hopByHopDropped(self) -> None:
        """
        Hop-by-hop fields, and those named in C{Connection}, are dropped.
        """
        head = parseHead(
            b"GET / HTTP/1.1\r\nConnection: Upgrade, X-Hop\r\nX-Hop: 1\r\n"
            b"Keep-Alive: 5\r\nUpgrade: websocket\r\nOrigin: o"
        )
        self.assertEqual(endToEnd(head), [("Origin", "o")])

    def test_fieldsByName(self) -> None:
        """
        L{Head.fields} holds each field's values by lower-case name, in the
        order received, made once; L{Head.get} joins them, whatever the case
        of the name asked for, and gives L{None} for a field not there.
        """
        head = parseHead(
            b"GET / HTTP/1.1\r\nX-A: 1\r\nHost: h\r\nx-a: 2\r\nX-Ab: 3\r\nX-A:  4 "
        )
        self.assertEqual(
            head.fields, {"x-a": ["1", "2", "4"], "host": ["h"], "x-ab": ["3"]}
        )
        self.assertIs(head.fields, head.fields)
        self.assertEqual(head.get("X-a"), "1, 2, 4")
        self.assertEqual(head.get("x-AB"), "3")
        self.assertIsNone(head.get("x"))
        self.assertEqual(head.tokens("x-a"), {"1", "2", "4"})

    def test_malformed(self) -> None:
        """
        A line without a colon, or folded, is refused.
        """
        self.assertRaises(BadHead, parseHead, b"GET / HTTP/1.1\r\nnocolon")
        self.assertRaises(BadHead, parseHead, b"GET / HTTP/1.1\r\nA: b\r\n c")

    def test_values(self) -> None:
        """
        A field's value is read without the spaces and tabs around it, and
        keeps those inside; an empty value is empty; an empty line (which
        the one-pass reading does not take) is skipped; a head of a start
        line alone has no field.
        """
        head = parseHead(
            b"GET / HTTP/1.1\r\nA:\t x \t y\t \r\nB:\r\nC:  \r\nD:z\r\n\r\nE: e"
        )
        self.assertEqual(
            head.headers,
            (("A", "x \t y"), ("B", ""), ("C", ""), ("D", "z"), ("E", "e")),
        )
        self.assertEqual(head.startLine, "GET / HTTP/1.1")
        self.assertEqual(parseHead(b"HTTP/1.1 101 Up").headers, ())
        self.assertEqual(parseHead(b"HTTP/1.1 101 Up").startLine, "HTTP/1.1 101 Up")

    def test_controls(self) -> None:
        """
        A control character (but tab) in a value, a bare CR or LF among
        them, or in the start line, is refused with the line it is in, as
        is a name that is not a token.
        """
        for raw, message in [
            (b"GET / HTTP/1.1\r\nA: 1\r\nB: x\ry", "control character in header 'B'"),
            (b"GET / HTTP/1.1\r\nB: x\ny\r\nA: 1", "control character in header 'B'"),
            (b"GET / HTTP/1.1\r\nB: \x00", "control character in header 'B'"),
            (b"GET / HTTP/1.1\r\nB: \x7f\r\nA: 1", "control character in header 'B'"),
            (b"GET /\x01 HTTP/1.1\r\nA: 1", "control character in start line"),
            (b"GET / HTTP/1.1\r\nA B: 1", "malformed header line 'A B: 1'"),
            (b"GET / HTTP/1.1\r\n: 1", "malformed header line ': 1'"),
        ]:
            with self.assertRaises(BadHead) as e:
                parseHead(raw)
            self.assertIn(message, str(e.exception))

    def test_response(self) -> None:
        """
        The relay's own responses have a length and close the connection.
        """
        raw = buildResponse(503, body=b"none")
        self.assertTrue(raw.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"))
        self.assertIn(b"Content-Length: 4\r\n", raw)
        self.assertIn(b"Connection: close\r\n", raw)
        self.assertTrue(raw.endswith(b"\r\n\r\nnone"))


class RoutingTests(SynchronousTestCase):
    """
    Prefixes match at segment boundaries; the longest wins.
    """

    def test_prefix(self) -> None:
        """
        C{/chat} matches C{/chat} and C{/chat/x}, not C{/chatty}.
        """
        self.assertEqual(matchPrefix("/chat", "/chat"), "")
        self.assertEqual(matchPrefix("/chat", "/chat/x"), "/x")
        self.assertIsNone(matchPrefix("/chat", "/chatty"))
        self.assertEqual(matchPrefix("/", "/any"), "/any")

    def test_longestAndHost(self) -> None:
        """
        The longest prefix wins, and a host-specific route before others.
        """

        table = RouteTable(
            (
                proxyRoute("root", "/"),
                proxyRoute("a", "/a"),
                proxyRoute("ab", "/a/b"),
                proxyRoute("h", "/", "x"),
            )
        )
        found = table.match(None, "/a/b/c")
        assert found is not None
        self.assertEqual((found[0].name, found[1]), ("ab", "/c"))
        found = table.match("x", "/a")
        assert found is not None
        self.assertEqual(found[0].name, "h")

    def test_joinPath(self) -> None:
        """
        The remainder is appended to the backend's path.
        """
        self.assertEqual(joinPath("/", "/x"), "/x")
        self.assertEqual(joinPath("/feed", ""), "/feed")
        self.assertEqual(joinPath("/feed/", "/AAPL"), "/feed/AAPL")

    def test_hostHeader(self) -> None:
        """
        A backend's C{Host} is its host, with the port unless the scheme's
        default, an IPv6 address in brackets.
        """
        for url, host in (
            ("ws://backend/", "backend"),
            ("ws://backend:80/", "backend"),
            ("ws://backend:8080/", "backend:8080"),
            ("wss://backend/", "backend"),
            ("wss://backend:80/", "backend:80"),
            ("ws://[::1]:9001/", "[::1]:9001"),
            ("wss://[::1]/", "[::1]"),
        ):
            backend = Backend(BackendConfig.fromURL(url))
            self.assertEqual(backend.hostHeader(), host, url)

    def test_hostHeaderReload(self) -> None:
        """
        A reload keeps a backend whose URL did not change, and its
        C{Host}; a backend whose URL changed is a new one with the new
        C{Host}.
        """

        def route(*urls: str) -> tuple[ProxyRouteConfig, Route]:
            config = ProxyRouteConfig(
                name="r",
                path="/",
                backends=tuple(
                    BackendConfig.fromURL(url, name)
                    for name, url in zip("ab", urls, strict=True)
                ),
            )
            monitor = HealthMonitor("r", (), None, Clock(), 2, 2, 2, 3)
            made = buildBackends(config)
            return config, Route(config, made, roundRobin.build((), {}), monitor)

        _, old = route("ws://one:9001/", "ws://two:9002/")
        config, _ = route("ws://one:9001/", "ws://three:9003/")
        new = buildBackends(config, old)
        self.assertIs(new[0], old.backends[0])
        self.assertEqual(new[0].hostHeader(), "one:9001")
        self.assertIsNot(new[1], old.backends[1])
        self.assertEqual(new[1].hostHeader(), "three:9003")

    def test_candidatesAsProperties(self) -> None:
        """
        L{Route.candidates}, which reads a backend's state without its
        properties, takes exactly the backends that are
        L{Backend.available} and not L{Backend.full}, in order: over every
        health, operator's state, C{maxconn=} and count of connections.
        """
        made = []
        for healthy in (True, False):
            for admin in (ENABLED, DRAINING, DISABLED):
                for maxconn in (None, 1, 2):
                    for connections, connecting in ((0, 0), (1, 0), (0, 1), (1, 1)):
                        name = f"b{len(made)}"
                        backend = Backend(
                            BackendConfig.fromURL(
                                f"ws://127.0.0.1:{9000 + len(made)}/",
                                name,
                                maxconn=maxconn,
                            )
                        )
                        backend.healthy, backend.admin = healthy, admin
                        backend.connections = connections
                        backend.connecting = connecting
                        made.append(backend)
        config = ProxyRouteConfig(
            name="r", path="/", backends=tuple(b.config for b in made)
        )
        monitor = HealthMonitor("r", (), None, Clock(), 2, 2, 2, 3)
        route = Route(config, tuple(made), roundRobin.build((), {}), monitor)
        expected = [b for b in made if b.available and not b.full]
        self.assertEqual(route.candidates(), expected)
        self.assertEqual(len(expected), 8)


class BalancerTests(SynchronousTestCase):
    """
    The built-in balancers, found as plugins.
    """

    def test_discoverable(self) -> None:
        """
        The built-in balancers are found as plugins and provide the
        interfaces.
        """
        found = balancerFactories()
        self.assertIn("round_robin", found)
        self.assertIn("first", found)
        for factory in found.values():
            verifyObject(IBalancerFactory, factory)
            verifyObject(IBalancer, factory.build(backends(1), {}))

    def test_smoothWeighted(self) -> None:
        """
        Weights 5, 1, 1 give nginx's smooth order.
        """
        pool = backends(5, 1, 1)
        balancer = roundRobin.build(pool, {})
        order = "".join(balancer.pick(pool, INFO).name for _ in range(7))
        self.assertEqual(order, "aabacaa")

    def test_first(self) -> None:
        """
        C{first} always picks the first candidate.
        """
        pool = backends(1, 1)
        balancer = first.build(pool, {})
        self.assertEqual({balancer.pick(pool, INFO).name for _ in range(5)}, {"a"})
        self.assertEqual(balancer.pick(pool[1:], INFO).name, "b")


class CloseCodeTests(SynchronousTestCase):
    """
    Which codes a close frame may carry.
    """

    def test_sendable(self) -> None:
        """
        1000-1003, 1007-1014 and 3000-4999 may be sent; the reserved ones
        may not.
        """
        for code in [1000, 1001, 1002, 1003, 1007, 1011, 1012, 1013, 1014, 3000, 4999]:
            self.assertTrue(sendableCloseCode(code), code)
        for code in [999, 1004, 1005, 1006, 1015, 1016, 2999, 5000]:
            self.assertFalse(sendableCloseCode(code), code)
