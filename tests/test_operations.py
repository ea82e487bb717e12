"""
Operating the relay over real sockets: reload, drain, disable and enable,
spread closes, admission control, slow start and access events.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from websockets.exceptions import InvalidStatus

from tests.support import TIMEOUT, client, inThread, startBackend, startRelay
from tests.support.clients import closeOf, rawExchange, rawRequest
from tests.support.waiting import Watched, waitFor
from wsrelay.config import BackendConfig, ConfigError
from wsrelay.routing import DISABLED, DRAINING, UP, Backend
from wsrelay.stats import Histogram, TokenBucket


def rewrite(relay: Any, text: str) -> None:
    """
    Replace the relay's configuration file with C{text} (its C{listen}
    added as L{startRelay} does).
    """
    with open(relay.config.path, "w") as f:
        f.write(
            text.replace("[relay]", "[relay]\nlisten = tcp:0:interface=127.0.0.1", 1)
        )


def hold(port: int, path: str = "/") -> Any:
    """
    Open a client and prove it works; the caller closes it.
    """
    c = client(port, path, legacy=True)
    c.send("ping")
    assert c.recv(TIMEOUT) == "ping"
    return c


def accessEvents(testCase: Any) -> Watched[dict[str, Any]]:
    """
    @return: A list that gets every access event logged until the end of
        C{testCase}.
    """
    events: Watched[dict[str, Any]] = Watched()

    def observe(event: dict[str, Any]) -> None:
        if event.get("event") == "access":
            events.append(event)

    globalLogPublisher.addObserver(observe)
    testCase.addCleanup(globalLogPublisher.removeObserver, observe)
    return events


class ReloadTests(TestCase):
    """
    Reloading the configuration closes nothing.
    """

    async def test_reloadKeepsClients(self) -> None:
        """
        A client stays connected across a reload that removes its
        backend's neighbour and adds a route; the new route serves, the
        removed backend drains, and the kept backend keeps its counters.
        """
        a = startBackend(self)
        b = startBackend(self)
        c2 = startBackend(self)
        text = (
            "[relay]\n[route:r]\npath = /r\nbalancer = first\n"
            f"backends = {a.url} name=a\n    {b.url} name=b\n"
        )
        relay, port = await startRelay(self, text)
        held = await inThread(hold, port, "/r")
        self.addCleanup(inThread, held.close)
        ra, rb = relay.routes.routes[0].backends
        rewrite(
            relay,
            f"[relay]\n[route:r]\npath = /r\nbackends = {a.url} name=a\n"
            f"[route:new]\npath = /new\nbackends = {c2.url}\n",
        )
        await relay.reload()
        self.assertEqual([r.name for r in relay.routes.routes], ["r", "new"])
        self.assertIs(relay.routes.routes[0].backends[0], ra)
        self.assertEqual(ra.totalConnections, 1)
        self.assertEqual(rb.state, DRAINING)

        def useBoth() -> str:
            held.send("still here")
            answer = str(held.recv(TIMEOUT))
            with client(port, "/new") as other:
                other.send("path")
                return answer + " " + str(other.recv(TIMEOUT))

        self.assertEqual(await inThread(useBoth), "still here /")

    async def test_badReload(self) -> None:
        """
        A file that fails to parse is rejected as a whole with its one-line
        error, and the running configuration stays.
        """
        a = startBackend(self)
        relay, port = await startRelay(
            self, f"[relay]\n[route:r]\npath = /r\nbackends = {a.url}\n"
        )
        config, routes = relay.config, relay.routes
        rewrite(relay, f"[relay]\n[route:r]\npath = /r\nbackends = {a.url}\nbad = 1\n")
        error = await relay.reload().addErrback(lambda f: f.value)
        self.assertIsInstance(error, ConfigError)
        self.assertIn("[route:r] bad: unknown key", str(error))
        self.assertIs(relay.config, config)
        self.assertIs(relay.routes, routes)
        c = await inThread(hold, port, "/r")
        await inThread(c.close)

    async def test_pluginRejectsReload(self) -> None:
        """
        A reload whose plugin options are rejected when built changes
        nothing either.
        """
        a = startBackend(self)
        relay, _ = await startRelay(
            self, f"[relay]\n[route:r]\npath = /r\nbackends = {a.url}\n"
        )
        routes = relay.routes
        rewrite(
            relay,
            f"[relay]\n[route:r]\npath = /r\nbackends = {a.url}\n"
            "balancer = consistent_hash\nhash_on = nothing\n",
        )
        error = await relay.reload().addErrback(lambda f: f.value)
        self.assertIsInstance(error, ConfigError)
        self.assertIs(relay.routes, routes)
        self.assertEqual(relay.config.routes[0].balancer, "round_robin")

    async def test_rejectedReloadTouchesNothing(self) -> None:
        """
        When a later route of the new file is rejected, the backends of
        the routes before it keep their settings too.
        """
        a = startBackend(self)
        relay, _ = await startRelay(
            self, f"[relay]\n[route:r]\npath = /r\nbackends = {a.url} name=a\n"
        )
        [backend] = relay.routes.routes[0].backends
        rewrite(
            relay,
            f"[relay]\n[route:r]\npath = /r\nbackends = {a.url} name=a weight=9\n"
            f"[route:s]\npath = /s\nbackends = {a.url}\n"
            "balancer = consistent_hash\nhash_on = nothing\n",
        )
        error = await relay.reload().addErrback(lambda f: f.value)
        self.assertIsInstance(error, ConfigError)
        self.assertEqual((backend.weight, backend.config.weight), (1, 1))


class BackendStateTests(TestCase):
    """
    Draining, disabling and enabling a backend.
    """

    async def test_disableEnable(self) -> None:
        """
        Disabling a backend closes its clients with 1012 and sends new
        ones elsewhere; enabling it puts it back in rotation.
        """
        a = startBackend(self)
        b = startBackend(self)
        relay, port = await startRelay(
            self,
            "[relay]\n[route:r]\npath = /\nbalancer = first\n"
            f"backends = {a.url} name=a\n    {b.url} name=b\n",
        )
        ra, rb = relay.routes.routes[0].backends
        held = await inThread(hold, port)
        relay.setBackendState("r", "a", "disable")
        self.assertEqual(ra.state, DISABLED)
        self.assertEqual((await inThread(closeOf, held))[0], 1012)
        other = await inThread(hold, port)
        await inThread(other.close)
        self.assertEqual((ra.totalConnections, rb.totalConnections), (1, 1))
        relay.setBackendState("r", "a", "enable")
        self.assertEqual(ra.state, UP)
        again = await inThread(hold, port)
        await inThread(again.close)
        self.assertEqual(ra.totalConnections, 2)
        self.assertRaises(KeyError, relay.setBackendState, "r", "zz", "drain")
        self.assertRaises(KeyError, relay.setBackendState, "zz", "a", "drain")

    async def test_drain(self) -> None:
        """
        A draining backend gets no new clients and keeps its open ones
        until C{drain_timeout}, when they are closed with 1012.
        """
        a = startBackend(self)
        b = startBackend(self)
        clock = Clock()
        relay, port = await startRelay(
            self,
            "[relay]\ndrain_timeout = 60\n[route:r]\npath = /\nbalancer = first\n"
            f"backends = {a.url} name=a\n    {b.url} name=b\n",
            clock=clock,
        )
        ra, rb = relay.routes.routes[0].backends
        held = await inThread(hold, port)
        relay.setBackendState("r", "a", "drain")
        other = await inThread(hold, port)
        await inThread(other.close)
        self.assertEqual((ra.totalConnections, rb.totalConnections), (1, 1))
        clock.advance(59)
        held.send("still")
        self.assertEqual(await inThread(held.recv, TIMEOUT), "still")
        clock.advance(1)
        self.assertEqual((await inThread(closeOf, held))[0], 1012)

    async def test_spread(self) -> None:
        """
        With C{close_spread}, the closes of a disabled backend's clients
        happen at different moments within the spread, none at once.
        """
        a = startBackend(self)
        clock = Clock()
        relay, port = await startRelay(
            self,
            "[relay]\nclose_spread = 10\nping_interval = 0\n"
            f"[route:r]\npath = /\nbackends = {a.url}\n",
            clock=clock,
        )
        clients = [await inThread(hold, port) for _ in range(8)]
        relay.setBackendState("r", a.url[5:-1], "disable")
        times = sorted(call.getTime() for call in clock.getDelayedCalls())
        self.assertEqual(len(times), 8)
        self.assertEqual(len(set(times)), 8)
        self.assertTrue(0 < times[0] and times[-1] <= 10, times)
        self.assertEqual(len(relay.sessions), 8)
        clock.advance(10)
        codes = [(await inThread(closeOf, c))[0] for c in clients]
        self.assertEqual(codes, [1012] * 8)

    async def test_stopSpread(self) -> None:
        """
        A stopping relay with C{close_spread} spreads its 1001s too.
        """
        a = startBackend(self)
        clock = Clock()
        relay, port = await startRelay(
            self,
            "[relay]\nclose_spread = 4\nping_interval = 0\n"
            f"[route:r]\npath = /\nbackends = {a.url}\n",
            clock=clock,
        )
        clients = [await inThread(hold, port) for _ in range(3)]
        stopped = relay.stopService()
        self.assertEqual(len(clock.getDelayedCalls()), 3 + 1)  # and the drain
        clock.advance(4)
        codes = [(await inThread(closeOf, c))[0] for c in clients]
        self.assertEqual(codes, [1001] * 3)
        await stopped


class AdmissionTests(TestCase):
    """
    C{max_handshakes_per_second} turns a reconnect storm away early.
    """

    async def test_bucket(self) -> None:
        """
        Handshakes beyond the rate get 503 with C{Retry-After}; a second
        later there is room again.
        """
        a = startBackend(self)
        clock = Clock()
        _, port = await startRelay(
            self,
            "[relay]\nmax_handshakes_per_second = 2\n[route:r]\npath = /\n"
            f"backends = {a.url}\n",
            clock=clock,
        )

        def three() -> list[int]:
            statuses = []
            for _ in range(3):
                try:
                    with client(port):
                        statuses.append(101)
                except InvalidStatus as e:
                    statuses.append(e.response.status_code)
                    retry = e.response.headers["Retry-After"]
                    assert retry == "1", retry
            return statuses

        self.assertEqual(await inThread(three), [101, 101, 503])
        raw = await inThread(rawExchange, port, rawRequest(port, "/"))
        self.assertTrue(raw.startswith(b"HTTP/1.1 503 "), raw[:40])
        clock.advance(1)
        self.assertEqual((await inThread(three))[:2], [101, 101])

    def test_tokenBucket(self) -> None:
        """
        The bucket holds one second's worth and refills at the rate; a
        rate of 0 lets everything through.
        """
        clock = Clock()
        bucket = TokenBucket(clock, 4)
        self.assertEqual([bucket.take() for _ in range(5)], [True] * 4 + [False])
        clock.advance(0.5)
        self.assertEqual([bucket.take() for _ in range(3)], [True, True, False])
        self.assertTrue(all(TokenBucket(clock, 0).take() for _ in range(100)))


class SlowStartTests(SynchronousTestCase):
    """
    A backend that comes back is ramped up.
    """

    def test_ramp(self) -> None:
        """
        After C{slowStart}, the weight grows from a tenth to the whole
        over the duration, then stays whole.
        """
        clock = Clock()
        backend = Backend(BackendConfig.fromURL("ws://h:1/", weight=10))
        self.assertEqual(backend.weight, 10)
        backend.slowStart(clock, 20)
        self.assertEqual(backend.weight, 1)
        clock.advance(10)
        self.assertEqual(backend.weight, 5)
        clock.advance(10)
        self.assertEqual(backend.weight, 10)
        clock.advance(100)
        self.assertEqual(backend.weight, 10)

    def test_monitorRamps(self) -> None:
        """
        The health monitor starts the ramp when a backend comes back up, so
        the round-robin share of a returning backend grows.
        """
        from twisted.plugins.wsrelay_balancers import roundRobin

        from wsrelay.health.monitor import HealthMonitor
        from wsrelay.routing import ConnectionInfo

        clock = Clock()
        a = Backend(BackendConfig.fromURL("ws://a:1/"))
        b = Backend(BackendConfig.fromURL("ws://b:1/"))
        monitor = HealthMonitor("r", (a, b), None, clock, 100, 1, 1, 1, 50)
        monitor.failed(b, "refused")
        clock.advance(100)  # tried again: up, and ramping
        balancer = roundRobin.build((a, b), {})
        info = ConnectionInfo("127.0.0.1", "/", "", ())

        def share() -> int:
            picks = [balancer.pick([a, b], info) for _ in range(100)]
            return sum(1 for p in picks if p is b)

        early = share()
        clock.advance(50)
        late = share()
        self.assertLess(early, 20)
        self.assertEqual(late, 50)
        monitor.stop()


class HistogramTests(SynchronousTestCase):
    """
    L{Histogram} counts per bucket.
    """

    def test_buckets(self) -> None:
        """
        An observation lands in the first bucket whose bound is not below
        it; beyond the last, in +Inf.
        """
        h = Histogram((0.1, 1))
        for value in (0.05, 0.1, 0.5, 2):
            h.observe(value)
        self.assertEqual(h.counts, [2, 1, 1])
        self.assertEqual((h.count, h.sum), (4, 2.65))

    def test_byRoute(self) -> None:
        """
        What a route's histogram observes, it counts, and so does the
        relay's, each in its own bucket; the route's histogram is made once
        per name, and the relay's own observations are not the route's.
        """
        h = Histogram((0.1, 1))
        chat = h.byRoute("chat")
        self.assertIs(h.byRoute("chat"), chat)
        for value in (0.0625, 0.5, 2):
            chat.observe(value)
        h.byRoute("feed").observe(0.5)
        h.observe(0.0625)
        self.assertEqual(chat.counts, [1, 1, 1])
        self.assertEqual((chat.count, chat.sum), (3, 2.5625))
        self.assertEqual(h.counts, [2, 2, 1])
        self.assertEqual((h.count, h.sum), (5, 3.125))
        self.assertEqual(sorted(h.routes), ["chat", "feed"])

    def test_parents(self) -> None:
        """
        A parent with other bounds counts an observation in its own bucket,
        and a parent's parent counts it too.
        """
        top = Histogram((0.1, 1))
        middle = Histogram((0.01,), top)
        child = Histogram((0.01,), middle)
        child.observe(0.05)
        self.assertEqual(
            [child.counts, middle.counts, top.counts], [[0, 1], [0, 1], [1, 0, 0]]
        )
        self.assertEqual([child.count, middle.count, top.count], [1, 1, 1])
        self.assertEqual([child.sum, middle.sum, top.sum], [0.05, 0.05, 0.05])


class AccessLogTests(TestCase):
    """
    One structured event per connection when it ends.
    """

    async def test_accessEvent(self) -> None:
        """
        The event names the client, route, backend, duration, traffic each
        way, the close code and who closed.
        """
        a = startBackend(self)
        relay, port = await startRelay(
            self, f"[relay]\n[route:r]\npath = /\nbackends = {a.url} name=a\n"
        )
        events = accessEvents(self)

        def talk() -> None:
            with client(port) as c:
                c.send("one")
                c.recv(TIMEOUT)
                c.send("two")
                c.recv(TIMEOUT)
                c.close(4000, "done")

        await inThread(talk)
        await events.whenLength(1)
        [event] = events
        self.assertEqual(
            {k: event[k] for k in ("client", "route", "backend", "closedBy")},
            {"client": "127.0.0.1", "route": "r", "backend": "a", "closedBy": "client"},
        )
        self.assertEqual(event["closeCode"], 4000)
        self.assertEqual(
            (event["messagesIn"], event["bytesIn"], event["messagesOut"]), (2, 6, 2)
        )
        self.assertGreaterEqual(event["duration"], 0)
        route = relay.routes.routes[0]
        self.assertEqual(relay.traffic(route, route.backends[0]), (2, 6, 2, 6))

    async def test_fanoutAccessEvent(self) -> None:
        """
        A fan-out client's event names the address a trusted proxy gave
        (taken as it joined: a held client no longer keeps its request's
        head), its route and its close code.
        """
        source = startBackend(self)
        relay, port = await startRelay(
            self,
            "[relay]\ntrusted_proxies = 127.0.0.1\n[route:feed]\npath = /feed\n"
            f"mode = fanout\nbackends = {source.url}\n",
        )
        events = accessEvents(self)
        headers = {"X-Forwarded-For": "203.0.113.9"}
        c = await inThread(client, port, "/feed", additional_headers=headers)
        await waitFor(lambda: len(relay.sessions) == 1)
        [session] = relay.sessions
        await waitFor(lambda: session.frontend.head is None)
        await inThread(c.close, 4000, "done")
        await events.whenLength(1)
        [event] = events
        self.assertEqual(
            {k: event[k] for k in ("client", "route", "closeCode")},
            {"client": "203.0.113.9", "route": "feed", "closeCode": 4000},
        )

    async def test_accessLogOff(self) -> None:
        """
        With C{access_log = off}, neither a finished connection nor a
        refused handshake is logged.
        """
        a = startBackend(self)
        relay, port = await startRelay(
            self,
            f"[relay]\naccess_log = off\n[route:r]\npath = /r\nbackends = {a.url}\n",
        )
        events = accessEvents(self)

        def talk() -> None:
            with client(port, "/r") as c:
                c.send("one")
                c.recv(TIMEOUT)

        await inThread(talk)
        raw = await inThread(rawExchange, port, rawRequest(port, "/nowhere"))
        self.assertTrue(raw.startswith(b"HTTP/1.1 404 "), raw[:40])
        await waitFor(
            lambda: not relay.sessions and relay.admission.clientConnections == 0
        )
        route = relay.routes.routes[0]
        self.assertEqual(relay.traffic(route, route.backends[0])[0], 1)
        self.assertEqual(events, [])


class RefusalLogTests(TestCase):
    """
    Connections that never got their 101 are logged too.
    """

    async def test_refusedLogged(self) -> None:
        """
        A handshake the relay refuses (here 404) gives one access event with
        the status, the path and who closed.
        """
        a = startBackend(self)
        _, port = await startRelay(
            self, f"[relay]\n[route:r]\npath = /r\nbackends = {a.url}\n"
        )
        events = accessEvents(self)
        raw = await inThread(rawExchange, port, rawRequest(port, "/nowhere"))
        self.assertTrue(raw.startswith(b"HTTP/1.1 404 "), raw[:40])
        await events.whenLength(1)
        [event] = events
        self.assertEqual(
            (event["status"], event["path"], event["closedBy"], event["client"]),
            (404, "/nowhere", "relay", "127.0.0.1"),
        )
