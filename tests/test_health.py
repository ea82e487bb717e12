"""
Health checking: rise and fall on an injected clock, the built-in checkers
against real servers, passive marking, and what clients see when backends
go down and come back.
"""

from __future__ import annotations

import errno
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.error import ConnectBindError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.plugins.wsrelay_health import http, tcp, websocket
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests.support import TIMEOUT, client, inThread, startBackend, startRelay
from tests.support.clients import closedPort, rawExchange, rawRequest
from tests.support.waiting import pollUntil, waitFor
from wsrelay.config import BackendConfig, ConfigError, parseConfig
from wsrelay.health.checkers import parseStatuses
from wsrelay.health.monitor import HealthMonitor
from wsrelay.interfaces import IHealthChecker, IHealthCheckerFactory
from wsrelay.plugins import healthCheckerFactories
from wsrelay.routing import DOWN, UP, Backend


@implementer(IHealthChecker)
class ScriptedChecker:
    """
    A checker whose answers the test gives: each check returns the next
    of C{results}, or a Deferred that never fires for L{None}.
    """

    def __init__(self, results: list[bool | None]) -> None:
        self.results = results
        self.pending: list[Deferred[tuple[bool, str]]] = []

    def check(self, backend: Any) -> Deferred[tuple[bool, str]]:
        healthy = self.results.pop(0)
        if healthy is None:
            d: Deferred[tuple[bool, str]] = Deferred()
            self.pending.append(d)
            return d
        return succeed((healthy, "scripted"))


def monitored(
    results: list[bool | None] | None, rise: int = 2, fall: int = 3
) -> tuple[HealthMonitor, Backend, Clock]:
    """
    A monitor of one backend with a L{ScriptedChecker} (or none) on a
    L{Clock}, checking every 2 seconds with a 1 second timeout.
    """
    clock = Clock()
    backend = Backend(BackendConfig.fromURL("ws://127.0.0.1:1/"))
    checker = None if results is None else ScriptedChecker(results)
    monitor = HealthMonitor("r", (backend,), checker, clock, 2, 1, rise, fall)
    return monitor, backend, clock


class MonitorTests(SynchronousTestCase):
    """
    L{HealthMonitor} turns results into states as HAProxy does.
    """

    def test_fallAndRise(self) -> None:
        """
        A backend goes down after C{fall} failed checks in a row (a success
        in between starts the count again), and up after C{rise} successes
        in a row; a check runs every C{health_interval} seconds.
        """
        monitor, backend, clock = monitored(
            [False, False, True, False, False, False, True, False, True, True],
            rise=2,
            fall=3,
        )
        monitor.start()
        states = [backend.state]
        for _ in range(9):
            clock.advance(2)
            states.append(backend.state)
        monitor.stop()
        self.assertEqual(
            states,
            [UP, UP, UP, UP, UP, DOWN, DOWN, DOWN, DOWN, UP],
        )
        assert backend.lastCheck is not None
        self.assertEqual(backend.lastCheck, (18.0, True, "scripted"))
        self.assertEqual(backend.failures, 6)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_timeout(self) -> None:
        """
        A check with no answer within C{health_timeout} is a failure, and
        the checker's Deferred is cancelled.
        """
        monitor, backend, clock = monitored([None], fall=1)
        monitor.start()
        checker = monitor.checker
        assert isinstance(checker, ScriptedChecker)
        clock.advance(0.9)
        self.assertTrue(backend.healthy)
        clock.advance(0.1)
        self.assertFalse(backend.healthy)
        assert backend.lastCheck is not None
        self.assertEqual(backend.lastCheck[1:], (False, "no answer within 1s"))
        self.assertTrue(checker.pending[0].called)
        monitor.stop()

    def test_connectTimeout(self) -> None:
        """
        A built-in check still connecting when C{health_timeout} passes is
        reported as a timeout (Twisted fails a cancelled connect with
        C{ConnectingCancelledError}, not C{CancelledError}).
        """
        for factory in (tcp, websocket):
            reactor = MemoryReactorClock()
            backend = Backend(BackendConfig.fromURL("ws://10.0.0.1:9/"))
            monitor = HealthMonitor(
                "r", (backend,), factory.build({}, reactor), reactor, 2, 1, 2, 1
            )
            monitor.start()
            reactor.advance(1)
            self.assertEqual(backend.lastCheck, (1.0, False, "no answer within 1s"))
            monitor.stop()

    def test_stopCancels(self) -> None:
        """
        Stopping the monitor cancels the check in flight and the next.
        """
        monitor, backend, clock = monitored([None])
        monitor.start()
        checker = monitor.checker
        assert isinstance(checker, ScriptedChecker)
        monitor.stop()
        self.assertTrue(checker.pending[0].called)
        self.assertEqual((backend.healthy, backend.failures), (True, 0))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_passive(self) -> None:
        """
        Failed connections count towards C{fall}; an opened one ends the
        run of failures.
        """
        monitor, backend, clock = monitored([], fall=3)
        monitor.failed(backend, "refused")
        monitor.failed(backend, "refused")
        monitor.succeeded(backend)
        monitor.failed(backend, "refused")
        monitor.failed(backend, "refused")
        self.assertTrue(backend.healthy)
        monitor.failed(backend, "refused")
        self.assertEqual(backend.state, DOWN)

    def test_passiveWithoutChecks(self) -> None:
        """
        With C{health = none}, a backend taken down by failed connections
        is tried again after C{health_interval}, and one more failure
        takes it out again.
        """
        monitor, backend, clock = monitored(None, fall=2)
        monitor.failed(backend, "refused")
        monitor.failed(backend, "refused")
        self.assertFalse(backend.healthy)
        clock.advance(1.9)
        self.assertFalse(backend.healthy)
        clock.advance(0.1)
        self.assertTrue(backend.healthy)
        monitor.failed(backend, "refused")
        self.assertFalse(backend.healthy)
        monitor.stop()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_raisingChecker(self) -> None:
        """
        A checker that raises instead of returning a Deferred counts as a
        failed check and does not stop the checks.
        """

        @implementer(IHealthChecker)
        class Raising:
            def check(self, backend: Any) -> Deferred[tuple[bool, str]]:
                raise RuntimeError("oops")

        clock = Clock()
        backend = Backend(BackendConfig.fromURL("ws://127.0.0.1:1/"))
        monitor = HealthMonitor("r", (backend,), Raising(), clock, 2, 1, 1, 2)
        monitor.start()
        clock.advance(2)
        self.assertFalse(backend.healthy)
        self.assertEqual(backend.failures, 2)
        monitor.stop()


class PluginTests(SynchronousTestCase):
    """
    The built-in checkers are plugins like any other.
    """

    def test_discovered(self) -> None:
        """
        C{tcp}, C{websocket} and C{http} are found by name and provide
        their interfaces.
        """
        found = healthCheckerFactories()
        for factory in (tcp, websocket, http):
            self.assertIs(found[factory.name], factory)
            verifyObject(IHealthCheckerFactory, factory)
            verifyObject(IHealthChecker, factory.build({}, reactor))

    def test_badOptions(self) -> None:
        """
        Bad checker options raise L{ValueError} saying what is expected.
        """
        e = self.assertRaises(ValueError, http.build, {"health_status": "ok"}, None)
        self.assertIn("'200-399'", str(e))
        e = self.assertRaises(ValueError, websocket.build, {"health_path": "x"}, None)
        self.assertIn("health_path", str(e))

    def test_statuses(self) -> None:
        """
        C{health_status} takes statuses and ranges.
        """
        self.assertEqual(parseStatuses("200"), ((200, 200),))
        self.assertEqual(
            parseStatuses("200, 204 301-302"), ((200, 200), (204, 204), (301, 302))
        )
        for bad in ("", "20", "302-301", "600", "2xx"):
            self.assertRaises(ValueError, parseStatuses, bad)


ROUTE = "[relay]\nlisten = tcp:0\n[route:r]\npath = /\nbackends = ws://h:1/\n"


class ConfigTests(SynchronousTestCase):
    """
    The health keys of a route section.
    """

    def test_defaults(self) -> None:
        """
        Without health keys, active checks are off and HAProxy's rise and
        fall apply to passive checks.
        """
        route = parseConfig(ROUTE, "r.ini").routes[0]
        self.assertEqual(
            (route.health, route.healthInterval, route.rise, route.fall),
            ("none", 2.0, 2, 3),
        )

    def test_checkerOptions(self) -> None:
        """
        A checker's own keys are accepted only in a route that selects it,
        and reach it.
        """
        config = parseConfig(
            ROUTE + "health = http\nhealth_path = /ok\nhealth_status = 204\n", "r.ini"
        )
        self.assertEqual(
            dict(config.routes[0].healthOptions),
            {"health_path": "/ok", "health_status": "204"},
        )
        e = self.assertRaises(
            ConfigError, parseConfig, ROUTE + "health = tcp\nhealth_path = /\n", "r.ini"
        )
        self.assertIn("health_path is an option of health checker", str(e))

    def test_unknownChecker(self) -> None:
        """
        An unknown checker is an error listing the installed ones.
        """
        e = self.assertRaises(
            ConfigError, parseConfig, ROUTE + "health = ping\n", "r.ini"
        )
        self.assertEqual(e.key, "health")
        self.assertIn("installed: http, tcp, websocket", str(e))

    def test_badCount(self) -> None:
        """
        C{rise} and C{fall} are at least 1.
        """
        e = self.assertRaises(ConfigError, parseConfig, ROUTE + "fall = 0\n", "r.ini")
        self.assertEqual(e.key, "fall")


class Status(Resource):
    """
    Answers C{GET /health} with C{code}.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.code = 200
        self.paths: list[bytes] = []

    def render_GET(self, request: Any) -> bytes:
        self.paths.append(request.uri)
        request.setResponseCode(self.code)
        return b"ok"


class CheckerTests(TestCase):
    """
    The built-in checkers against real servers on loopback.
    """

    async def test_tcp(self) -> None:
        """
        C{tcp} is healthy when the port accepts, and says why not when it
        does not.
        """
        b = startBackend(self)
        checker = tcp.build({}, reactor)
        up = Backend(BackendConfig.fromURL(b.url))
        down = Backend(BackendConfig.fromURL(f"ws://127.0.0.1:{closedPort()}/"))
        self.assertEqual(await checker.check(up), (True, "connected"))
        healthy, reason = await checker.check(down)
        self.assertFalse(healthy)
        self.assertIn("refused", reason.lower())

    async def test_websocket(self) -> None:
        """
        C{websocket} is healthy after a handshake and a clean close; a
        refused handshake is unhealthy, with the status in the reason.
        """
        b = startBackend(self)
        checker = websocket.build({"health_path": "/probe"}, reactor)
        backend = Backend(BackendConfig.fromURL(b.url))
        self.assertEqual(await checker.check(backend), (True, "handshake completed"))
        await waitFor(lambda: b.closes == [(1000, "")])
        b.refuse = (503, [], b"busy")
        healthy, reason = await checker.check(backend)
        self.assertFalse(healthy)
        self.assertIn("503", reason)

    async def test_http(self) -> None:
        """
        C{http} asks for C{health_path} and compares the status with
        C{health_status}.
        """
        status = Status()
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Site(status)
        )
        self.addCleanup(port.stopListening)
        url = f"ws://127.0.0.1:{port.getHost().port}/ws?x=1"
        backend = Backend(BackendConfig.fromURL(url))
        checker = http.build({"health_path": "/health"}, reactor)
        self.assertEqual(await checker.check(backend), (True, "HTTP 200"))
        status.code = 503
        self.assertEqual(await checker.check(backend), (False, "HTTP 503"))
        status.code = 204
        ranged = http.build({"health_status": "200-299"}, reactor)
        self.assertEqual(await ranged.check(backend), (True, "HTTP 204"))
        self.assertEqual(status.paths, [b"/health", b"/health", b"/ws?x=1"])

    async def test_httpThroughBackendEndpoint(self) -> None:
        """
        C{http} reaches the backend through the backend's own endpoint, as
        the relay and the other checkers do (its TLS settings included),
        and makes the connection's factory quiet through the public
        C{noisy} attribute, not by replacing a private factory class of
        Twisted's connection pool.
        """
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Site(Status())
        )
        self.addCleanup(port.stopListening)
        backend = Backend(BackendConfig.fromURL("ws://backend.invalid:1/"))
        factories: list[Any] = []

        class Recording:
            def connect(self, factory: Any) -> Deferred[Any]:
                factories.append(factory)
                return TCP4ClientEndpoint(
                    reactor, "127.0.0.1", port.getHost().port
                ).connect(factory)

        backend.endpoint = Recording()
        checker = http.build({"health_path": "/health"}, reactor)
        self.assertEqual(await checker.check(backend), (True, "HTTP 200"))
        self.assertEqual([f.noisy for f in factories], [False])

    def test_localErrorPassedOn(self) -> None:
        """
        A check that fails for want of descriptors fails with that very
        failure (returned by the errback, not raised again).
        """
        error = Failure(ConnectBindError(errno.EMFILE, "Too many open files"))
        backend = Backend(BackendConfig.fromURL("ws://127.0.0.1:1/"))

        class Failing:
            def connect(self, factory: Any) -> Deferred[Any]:
                return fail(error)

        backend.endpoint = Failing()
        for checker in [tcp.build({}, reactor), http.build({}, reactor)]:
            d = checker.check(backend)
            self.assertIs(self.failureResultOf(d), error)

    async def test_quiet(self) -> None:
        """
        A check logs nothing when it passes or fails: no C{Starting
        factory} / C{Stopping factory} pair for every probe of every
        checker (the shipped config would log one a second).
        """
        b = startBackend(self)
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Site(Status())
        )
        self.addCleanup(port.stopListening)
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        webURL = f"ws://127.0.0.1:{port.getHost().port}/"
        down = Backend(BackendConfig.fromURL(f"ws://127.0.0.1:{closedPort()}/"))
        for checker, url in [
            (tcp.build({}, reactor), b.url),
            (websocket.build({}, reactor), b.url),
            (http.build({}, reactor), webURL),
        ]:
            self.assertTrue(
                (await checker.check(Backend(BackendConfig.fromURL(url))))[0]
            )
            self.assertFalse((await checker.check(down))[0])
        # The websocket probe's close finishes after the check's answer.
        await waitFor(lambda: len(b.closes) == 1)
        logged = [formatEvent(e) for e in events]
        self.assertEqual([line for line in logged if "factory" in line.lower()], [])


class RoutingTests(TestCase):
    """
    What clients see as backends go down and come back.
    """

    async def test_downAndBackUp(self) -> None:
        """
        A backend that fails its checks gets no new clients; when it passes
        them again it gets its share again.
        """
        a = startBackend(self)
        b = startBackend(self)
        relay, port = await startRelay(
            self,
            "[relay]\n[route:r]\npath = /\nhealth = websocket\n"
            "health_interval = 0.05\nrise = 2\nfall = 2\n"
            f"backends = {a.url} name=a\n    {b.url} name=b\n",
        )
        ra, rb = relay.routes.routes[0].backends

        def connectMany(n: int) -> None:
            for _ in range(n):
                with client(port) as c:
                    c.send("x")
                    c.recv(TIMEOUT)

        await inThread(connectMany, 4)
        self.assertEqual((ra.totalConnections, rb.totalConnections), (2, 2))
        b.refuse = (503, [], b"")
        await waitFor(lambda: rb.state == DOWN)
        before = (ra.totalConnections, rb.totalConnections)
        await inThread(connectMany, 4)
        self.assertEqual(
            (ra.totalConnections, rb.totalConnections), (before[0] + 4, before[1])
        )
        b.refuse = None
        await waitFor(lambda: rb.state == UP)
        await inThread(connectMany, 4)
        self.assertEqual(rb.totalConnections, before[1] + 2)

    async def test_passiveMarking(self) -> None:
        """
        A backend whose connects fail is taken out at once (with C{fall =
        1}) although its next check is a minute away: later clients are
        not sent to it.
        """
        b = startBackend(self)
        dead = closedPort()
        relay, port = await startRelay(
            self,
            "[relay]\n[route:r]\npath = /\nhealth = tcp\nhealth_interval = 60\n"
            "fall = 1\nbalancer = first\n"
            f"backends = ws://127.0.0.1:{dead}/ name=dead\n    {b.url} name=b\n",
        )
        rdead, rb = relay.routes.routes[0].backends
        # The check at start-up already found it dead; make it look up.
        await waitFor(lambda: rdead.lastCheck is not None)
        rdead.healthy = True
        failures = rdead.failures

        def connectMany(n: int) -> None:
            for _ in range(n):
                with client(port) as c:
                    c.send("x")
                    c.recv(TIMEOUT)

        await inThread(connectMany, 3)
        self.assertEqual(rdead.failures, failures + 1)
        self.assertEqual(rdead.state, DOWN)
        self.assertEqual(rb.totalConnections, 3)

    async def test_allDown503(self) -> None:
        """
        With every backend down, a client gets 503 at once: no connect is
        attempted.
        """
        relay, port = await startRelay(
            self,
            "[relay]\nhandshake_timeout = 30\n[route:r]\npath = /\nhealth = tcp\n"
            "health_interval = 0.05\nfall = 1\n"
            f"backends = ws://127.0.0.1:{closedPort()}/"
            f" ws://127.0.0.1:{closedPort()}/\n",
        )
        backends = relay.routes.routes[0].backends
        await waitFor(lambda: all(not x.healthy for x in backends))
        failures = [x.failures for x in backends]
        relay.routes.routes[0].monitor.stop()
        raw = await inThread(rawExchange, port, rawRequest(port, "/"))
        self.assertTrue(raw.startswith(b"HTTP/1.1 503 "), raw[:40])
        self.assertEqual([x.failures for x in backends], failures)

    async def test_reconnectToHealthy(self) -> None:
        """
        With C{failover = reconnect}, the new upstream goes to a healthy
        backend chosen by the balancer, never to one that is down.
        """
        a = startBackend(self)
        b = startBackend(self)
        sick = startBackend(self, refuse=(503, [], b""))
        relay, port = await startRelay(
            self,
            "[relay]\n[route:r]\npath = /\nhealth = websocket\n"
            "health_interval = 0.05\nfall = 1\nfailover = reconnect\n"
            f"backends = {a.url} name=a\n    {sick.url} name=sick\n"
            f"    {b.url} name=b\n",
        )
        ra, rsick, rb = relay.routes.routes[0].backends
        await waitFor(lambda: rsick.state == DOWN)

        def run() -> list[str]:
            with client(port) as c:
                c.send("one")
                got = [str(c.recv(TIMEOUT))]
                c.send("vanish")
                # Messages sent before the relay notices go to the dying
                # backend; wait for the new upstream.
                pollUntil(
                    lambda: any(s.backend is rb for s in list(relay.sessions)),
                    "no reconnect",
                )
                c.send("two")
                got.append(str(c.recv(TIMEOUT)))
                return got

        self.assertEqual(await inThread(run), ["one", "two"])
        self.assertEqual((ra.totalConnections, rb.totalConnections), (1, 1))
        self.assertEqual(rsick.totalConnections, 0)
