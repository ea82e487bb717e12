"""
The dashboard's history (L{wsrelay.admin.history}, C{GET /history}) in
memory and over loopback, and the dashboard itself in headless Chromium:
its charts under real traffic and its buttons.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import Logger, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from websockets.sync.client import ClientConnection

from tests.support import TIMEOUT, inThread, startBackend
from tests.support.admin import TOKEN, connect, fetch, startAdmin
from tests.support.dashboard import CHROMIUM, Browser
from tests.support.waiting import pollUntil, waitFor
from wsrelay.admin import AdminSite, RelayView
from wsrelay.admin.history import History, quantile
from wsrelay.config import loadConfig, parseConfig
from wsrelay.routing import Backend
from wsrelay.service import RelayService
from wsrelay.stats import LATENCY_BUCKETS
from wsrelay.ws.screening import Refused

#: A proxy route and a fan-out route, to backends that are never reached.
ROUTES = (
    "[relay]\nlisten = tcp:0\n"
    "[route:chat]\npath = /chat\n"
    "backends = ws://127.0.0.1:1/ name=one ws://127.0.0.1:2/ name=two\n"
    "[route:feed]\npath = /feed\nmode = fanout\n"
    "backends = ws://127.0.0.1:3/ name=source\n"
)


class StandInChannel:
    """
    What L{History} (and the traffic of backends) reads of a fan-out
    channel: one with a source that has no upstream.
    """

    def __init__(self) -> None:
        self.source = None
        self.members: dict[object, None] = {}
        self.deliveries = 0
        self.slowDrops = 0
        self.slowCloses = 0


class HistoryTests(SynchronousTestCase):
    """
    L{History} samples a relay's counters on its clock and keeps rates and
    gauges by route, in memory.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.relay = RelayService(
            parseConfig(ROUTES, "t.ini"), MemoryReactorClock(), self.clock
        )
        self.history = History(RelayView(self.relay), size=3)

    def backend(self, route: str, name: str) -> Backend:
        """
        @return: The backend C{name} of C{route}.
        """
        r = self.relay.routes.byName(route)
        assert r is not None
        (b,) = [b for b in r.backends if b.name == name]
        return b

    def later(self, seconds: float = 1) -> dict[str, Any]:
        """
        Advance the clock, sample, and return the new sample.
        """
        self.clock.advance(seconds)
        self.history.sample()
        return self.newest()

    def newest(self) -> dict[str, Any]:
        """
        @return: The newest sample, as C{/history} gives it.
        """
        sample: dict[str, Any] = self.history.since(None)["samples"][-1]
        return sample

    def refuse(self, route: str | None, code: int | None) -> None:
        """
        A client of C{route} (L{None}: no route matched) leaves without
        its 101, as the relay's listeners see it: refused with C{code}, or
        gone before its answer (L{None}).
        """
        factory = self.relay.frontendFactory
        client = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        assert client is not None
        client.makeConnection(StringTransport())
        client.route = None if route is None else self.relay.routes.byName(route)
        if code is not None:
            client._refusal = Refused(code, "no")
        client.connectionLost(Failure(ConnectionDone()))

    def test_rates(self) -> None:
        """
        A sample holds each route's rates since the previous sample, per
        second of the relay's clock, and its gauges; the first reading
        only sets the rates' origin.
        """
        self.history.sample()
        self.assertEqual(list(self.history.samples), [])
        one, two = self.backend("chat", "one"), self.backend("chat", "two")
        one.sentMessages += 10
        two.receivedMessages += 4
        one.totalConnections += 2
        one.connections, two.connections = 2, 1
        channel = StandInChannel()
        channel.members = {object(): None, object(): None}
        self.relay.registry.channels[("feed", "")] = channel  # type: ignore[assignment]
        sample = self.later(2)
        self.assertEqual(sample["time"], self.clock.seconds())
        chat = sample["routes"]["chat"]
        self.assertEqual(
            sorted(chat),
            sorted(
                "connections toBackend fromBackend opened refused"
                " deliveries drops closes p50 p90 p99".split()
            ),
        )
        self.assertEqual(chat["toBackend"], 5.0)
        self.assertEqual(chat["fromBackend"], 2.0)
        self.assertEqual(chat["opened"], 1.0)
        self.assertEqual(chat["connections"], 3)
        self.assertEqual(sample["routes"]["feed"]["connections"], 2)

        channel.deliveries += 30
        channel.slowDrops += 3
        channel.slowCloses += 1
        feed = self.later()["routes"]["feed"]
        self.assertEqual(
            (feed["deliveries"], feed["drops"], feed["closes"]), (30.0, 3.0, 1.0)
        )
        self.assertEqual(self.later()["routes"]["feed"]["deliveries"], 0.0)

    def test_countersStartedAgain(self) -> None:
        """
        A counter that went down (a reload started it again) counts no
        negative rate, and a backend or channel first read now adds nothing
        until its next reading.
        """
        one = self.backend("chat", "one")
        one.sentMessages = 100
        self.history.sample()
        one.sentMessages = 5
        self.assertEqual(self.later()["routes"]["chat"]["toBackend"], 0.0)
        channel = StandInChannel()
        channel.deliveries = 1000
        self.relay.registry.channels[("feed", "")] = channel  # type: ignore[assignment]
        self.assertEqual(self.later()["routes"]["feed"]["deliveries"], 0.0)
        channel.deliveries += 7
        self.assertEqual(self.later()["routes"]["feed"]["deliveries"], 7.0)

    def test_refusals(self) -> None:
        """
        Refused clients are counted by route and for the relay (where
        those no route matched count too), with the access log off as
        on; clients that left before their answer are not refusals.
        """
        quiet = ROUTES.replace("[relay]\n", "[relay]\naccess_log = off\n")
        self.relay.frontendFactory.configure(parseConfig(quiet, "t.ini"))
        self.history.start()
        self.addCleanup(self.history.stop)
        self.refuse("chat", 503)
        self.refuse("chat", 503)
        self.refuse(None, 404)
        self.refuse("feed", None)
        self.clock.advance(1)
        sample = self.newest()
        self.assertEqual(sample["time"], 1)
        self.assertEqual(sample["routes"]["chat"]["refused"], 2.0)
        self.assertEqual(sample["routes"]["feed"]["refused"], 0.0)
        self.assertEqual(sample["refused"], 3.0)
        self.assertEqual(self.later()["refused"], 0.0)

    def test_handshakes(self) -> None:
        """
        The relay's handshakes per second, and the percentiles of their
        latency over the last ten samples.
        """
        self.history.sample()
        latency = self.relay.handshakeLatency
        for _ in range(8):
            latency.observe(0.002)
        latency.observe(0.2)
        latency.observe(0.2)
        sample = self.later(2)
        self.assertEqual(sample["handshakes"], 5.0)
        self.assertEqual(sample["clients"], 0)
        p = sample["latency"]
        self.assertAlmostEqual(p["p50"], 0.001 + 0.0015 * 5 / 8, places=5)
        self.assertGreater(p["p99"], 0.1)
        self.assertLessEqual(p["p99"], 0.25)
        for _ in range(10):
            self.later()
        self.assertEqual(
            self.newest()["latency"], {"p50": None, "p90": None, "p99": None}
        )

    def test_routeLatency(self) -> None:
        """
        Each route's sample has the percentiles of its own handshakes'
        latency; the relay's covers every route.
        """
        self.history.sample()
        chat = self.relay.handshakeLatency.byRoute("chat")
        feed = self.relay.handshakeLatency.byRoute("feed")
        for _ in range(10):
            chat.observe(0.002)
            feed.observe(0.2)
        sample = self.later()
        self.assertLess(sample["routes"]["chat"]["p99"], 0.0025)
        self.assertGreater(sample["routes"]["feed"]["p50"], 0.1)
        self.assertLessEqual(sample["latency"]["p50"], 0.0025)
        self.assertGreater(sample["latency"]["p99"], 0.1)
        self.assertEqual(self.relay.handshakeLatency.count, 20)

    def test_quantile(self) -> None:
        """
        L{quantile} interpolates within the bucket that holds the rank, as
        Prometheus' C{histogram_quantile}; above the last bound it answers
        that bound; without observations, L{None}.
        """
        bounds = (1.0, 2.0, 4.0)
        self.assertEqual(quantile(0.5, bounds, [0, 2, 0, 0]), 1.5)
        self.assertEqual(quantile(0.25, bounds, [2, 0, 2, 0]), 0.5)
        self.assertEqual(quantile(0.99, bounds, [1, 0, 0, 1]), 4.0)
        self.assertIsNone(quantile(0.5, LATENCY_BUCKETS, [0] * 13))

    def test_ring(self) -> None:
        """
        At most C{size} samples are kept, the oldest dropped first;
        L{History.since} gives those after a time.
        """
        self.history.sample()
        times = [self.later()["time"] for _ in range(5)]
        self.assertEqual([s["time"] for s in self.history.samples], times[2:])
        answer = self.history.since(times[3])
        self.assertEqual([s["time"] for s in answer["samples"]], times[4:])
        self.assertEqual((answer["interval"], answer["size"]), (1.0, 3))
        self.assertEqual(len(self.history.since(None)["samples"]), 3)

    def test_failureLogged(self) -> None:
        """
        A reading that fails is logged once, and sampling goes on.
        """
        events: list[Any] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        channel = StandInChannel()
        self.relay.registry.channels[("feed", "")] = channel  # type: ignore[assignment]
        del channel.deliveries
        self.history.start()
        self.addCleanup(self.history.stop)
        self.clock.advance(1)
        self.clock.advance(1)
        failures = [e for e in events if "log_failure" in e]
        self.assertEqual(len(failures), 1)
        self.assertEqual(len(self.flushLoggedErrors(AttributeError)), 1)
        channel.deliveries = 0
        self.clock.advance(1)
        self.clock.advance(1)
        self.assertEqual(len(self.history.samples), 1)

    def test_siteSamples(self) -> None:
        """
        The admin site samples on the relay's clock while it listens
        (L{AdminSite.startFactory}), and stops when it no longer does.
        """
        site = AdminSite(RelayView(self.relay))
        site.doStart()
        self.clock.advance(1)
        self.clock.advance(1)
        self.assertEqual(len(site.history.samples), 2)
        site.doStop()
        self.clock.advance(5)
        self.assertEqual(len(site.history.samples), 2)
        self.assertEqual(self.clock.getDelayedCalls(), [])


def _echoUntil(stop: threading.Event, *clients: ClientConnection) -> int:
    """
    Send a message on each client and read its echo, until C{stop} is set
    (blocking).

    @return: How many rounds were echoed.
    """
    n = 0
    while not stop.is_set():
        for c in clients:
            c.send("tick")
            c.recv(TIMEOUT)
        n += 1
    return n


class HistoryPageTests(TestCase):
    """
    C{GET /history} over loopback.
    """

    async def test_history(self) -> None:
        """
        The admin listener samples from the start: C{/history} soon holds
        samples of each route, C{?after=} gives only later ones, and an
        C{after} that is not a number gets 400.
        """
        b = startBackend(self)
        a = await startAdmin(
            self, f"[route:chat]\npath = /chat\nbackends = {b.url} name=one\n"
        )
        answers: list[Any] = []

        def sampled() -> bool:
            answers.append(fetch(a.admin, "/history").json())
            return bool(answers[-1]["samples"])

        await inThread(pollUntil, sampled, "a sample in /history")
        body = answers[-1]
        self.assertEqual((body["interval"], body["size"]), (1.0, 300))
        (first, *_) = body["samples"]
        self.assertIn("chat", first["routes"])
        later = (await a.get(f"/history?after={first['time']}")).json()
        self.assertTrue(all(s["time"] > first["time"] for s in later["samples"]))
        bad = await inThread(fetch, a.admin, "/history?after=soon")
        self.assertEqual(
            (bad.status, bad.json()), (400, {"error": "after must be a number"})
        )


class BrowserTests(TestCase):
    """
    The dashboard in headless Chromium, against a relay that carries
    traffic.
    """

    async def test_chartsAndDrain(self) -> None:
        """
        Under traffic, the page draws each route's charts and they move
        (the newest message rate is above zero in two readings, and the
        drawn lines differ between them; the fan-out route's deliveries
        are above zero); the drain button asks for the
        token, shows the answer (401 for a wrong token, which changes
        nothing), and with the right token the backend is draining in
        C{/status}.

        The screenshot, C{dashboard.png} (taken last, the backend
        draining), is written to this test's C{mktemp()} folder: under
        pytest C{./tests.test_dashboard/BrowserTests/test_chartsAndDrain/
        */temp/} (git ignores it), under trial the same below
        C{_trial_temp/}; the test's log names the path.
        """
        if CHROMIUM is None:
            self.skipTest(
                "chromium is not installed (Debian package chromium): the"
                " dashboard cannot be rendered"
            )
        b = startBackend(self)
        source = startBackend(self)
        a = await startAdmin(
            self,
            f"[route:chat]\npath = /chat\nbackends = {b.url} name=one\n"
            "[route:feed]\npath = /feed\nmode = fanout\n"
            f"client_messages = forward\nbackends = {source.url} name=source\n",
        )
        c = await connect(self, a.port, "/chat")
        f = await connect(self, a.port, "/feed")

        def up() -> bool:
            channel = a.relay.channels.get(("feed", ""))
            return channel is not None and channel.state == "up"

        await waitFor(up)
        stop = threading.Event()
        traffic = inThread(_echoUntil, stop, c, f)

        async def stopTraffic() -> None:
            stop.set()
            await traffic

        self.addCleanup(stopTraffic)
        browser: Browser = await inThread(Browser, f"http://127.0.0.1:{a.admin}/")
        self.addCleanup(inThread, browser.close)
        chart = '.chart[data-route="chat"][data-chart="messages"]'
        reading = (
            f"(() => {{ const c = document.querySelector('{chart}');"
            " if (!c || c.querySelector('svg').dataset.points < 2) return null;"
            " const last = JSON.parse(c.dataset.last);"
            " if (!(last[0] > 0)) return null;"
            " return {last, line: c.querySelector('polyline').getAttribute('points'),"
            " points: +c.querySelector('svg').dataset.points}; })()"
        )
        first = await inThread(browser.waitFor, reading, 30)
        second = await inThread(
            browser.waitFor,
            f"(() => {{ const r = {reading};"
            f" return r && r.line !== {first['line']!r} ? r : null; }})()",
            30,
        )
        self.assertGreater(second["last"][0], 0)
        self.assertNotEqual(second["line"], first["line"])
        names = await inThread(
            browser.evaluate,
            "[...document.querySelectorAll('.chart')]"
            ".map(c => (c.dataset.route || '') + ':' + c.dataset.chart)",
        )
        self.assertEqual(
            names,
            [
                ":clients",
                ":handshakes",
                ":latency",
                "chat:connections",
                "chat:messages",
                "chat:handshakes",
                "chat:latency",
                "feed:connections",
                "feed:messages",
                "feed:handshakes",
                "feed:latency",
                "feed:fanout",
            ],
        )
        await inThread(
            browser.waitFor,
            "JSON.parse(document.querySelector("
            '\'.chart[data-route="feed"][data-chart="fanout"]\').dataset.last)[0] > 0',
        )
        result = await self.act(browser, "wrong")
        self.assertEqual(result, ["failed", "drain chat/one: 401 wrong token"])
        self.assertEqual(_backend(await a.status())["admin"], "enabled")
        result = await self.act(browser, TOKEN)
        self.assertEqual(result, ["ok", "drain chat/one: now draining"])
        self.assertEqual(_backend(await a.status())["state"], "draining")
        await inThread(
            browser.waitFor,
            "document.querySelector('tr.backend[data-backend=\"one\"] td.state')"
            ".textContent === 'draining'",
        )
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        shot = os.path.join(folder, "dashboard.png")
        await inThread(browser.screenshot, shot)
        with open(shot, "rb") as f:
            self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")
        Logger().info("dashboard screenshot: {path}", path=shot)

    async def act(self, browser: Browser, token: str) -> Any:
        """
        Click backend C{one}'s drain button, give C{token} and confirm.

        @return: The class and text of the answer the page shows.
        """
        opened = await inThread(
            browser.evaluate,
            "document.getElementById('action-result').hidden = true;"
            'document.querySelector(\'button[data-action="drain"]'
            '[data-route="chat"][data-backend="one"]\').click();'
            "document.getElementById('action').open",
        )
        self.assertTrue(opened)
        question = await inThread(
            browser.evaluate, "document.getElementById('action-question').textContent"
        )
        self.assertEqual(question, "drain backend one of route chat?")
        await inThread(
            browser.evaluate,
            f"document.getElementById('token').value = {token!r};"
            "document.getElementById('action-confirm').click()",
        )
        return await inThread(
            browser.waitFor,
            "(() => { const r = document.getElementById('action-result');"
            " return r.hidden ? null : [r.className, r.textContent]; })()",
        )


def _backend(status: Any) -> Any:
    """
    @return: Backend C{one} of route C{chat} in a C{/status} answer.
    """
    (r,) = [r for r in status["routes"] if r["name"] == "chat"]
    (b,) = r["backends"]
    return b


class ShippedTests(SynchronousTestCase):
    """
    The configuration C{make run} serves has the dashboard on loopback, and
    C{make run} and the README's quick start name the address it has.
    """

    def test_dashboardAddress(self) -> None:
        """
        C{conf/relay.ini} turns the admin listener on, on C{127.0.0.1};
        the line C{make run} prints and the README give its URL.
        """
        root = Path(__file__).parent.parent
        admin = loadConfig(str(root / "conf" / "relay.ini")).admin
        assert admin is not None
        match = re.fullmatch(r"tcp:(\d+):interface=127\.0\.0\.1", admin)
        assert match is not None, admin
        url = f"http://127.0.0.1:{match.group(1)}/"
        makefile = (root / "Makefile").read_text()
        (recipe,) = re.findall(r"(?ms)^run:.*?(?=^\S|\Z)", makefile)
        self.assertRegex(recipe, rf"(?m)^\t@echo .*{re.escape(url)}")
        readme = (root / "README.md").read_text()
        quickStart = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
        self.assertIn(f"`{url}`", quickStart)
