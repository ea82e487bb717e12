"""
The admin listener over loopback: C{/status}, C{/metrics}, the dashboard
in headless Chromium, and the actions that need the bearer token; with
C{websockets} clients and backends on both sides of the relay.
"""

from __future__ import annotations

import ast
import configparser
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Any, cast

from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import succeed
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from websockets.sync.client import ClientConnection

from tests.support import TIMEOUT, inThread, startBackend, startRelay
from tests.support.admin import (
    TOKEN,
    Admin,
    Answer,
    _opener,
    connect,
    fetch,
    labels,
    samples,
    startAdmin,
)
from tests.support.clients import closedPort
from tests.support.dashboard import CHROMIUM, Dashboard, dumpDOM
from tests.support.packaging import buildWheel
from tests.support.relays import relayFor
from tests.support.tls import makeCertificates
from tests.support.waiting import waitFor
from wsrelay import __version__
from wsrelay.admin import (
    DASHBOARD,
    DASHBOARD_PATH,
    AdminSite,
    RelayCollector,
    RelayView,
    hostAllowed,
)
from wsrelay.admin.rows import channelStatus
from wsrelay.config import ConfigError, parseConfig
from wsrelay.routing import Backend, Route
from wsrelay.service import RelayService
from wsrelay.stats import Histogram


async def joined(testCase: TestCase, a: Admin, path: str = "/feed") -> ClientConnection:
    """
    Connect a client to the fan-out route C{feed} and wait until its
    channel's upstream is open (what a client sends before is dropped).
    """
    c = await connect(testCase, a.port, path)

    def up() -> bool:
        channel = a.relay.channels.get(("feed", ""))
        return channel is not None and channel.state == "up"

    await waitFor(up)
    return c


def echo(c: ClientConnection, messages: list[str | bytes]) -> list[str | bytes]:
    """
    Send each message and wait for its echo (blocking).
    """
    got = []
    for m in messages:
        c.send(m)
        got.append(c.recv(TIMEOUT))
    return got


def backendOf(status: Any, route: str, backend: str) -> Any:
    """
    @return: The entry of C{backend} of C{route} in a C{/status} answer.
    """
    (r,) = [r for r in status["routes"] if r["name"] == route]
    (b,) = [b for b in r["backends"] if b["name"] == backend]
    return b


MESSAGES: list[str | bytes] = ["hello", b"\x00\x01\x02", "x" * 300]
PAYLOAD = 5 + 3 + 300

PROXY = "[route:chat]\npath = /chat\nbackends = {url} name=one\n"
FANOUT = (
    "[route:feed]\npath = /feed\nmode = fanout\nclient_messages = forward\n"
    "replay = 5\nbackends = {url} name=source\n"
)


class StatusTests(TestCase):
    """
    C{GET /status} describes the relay, its routes, backends and channels
    with the relay's own counters.
    """

    async def test_proxyRoute(self) -> None:
        """
        The version, uptime and listeners are given; a route's settings;
        a backend's state, open and total connections, and the messages
        and payload bytes each way, which stay counted after the
        connection closes.
        """
        b = startBackend(self)
        a = await startAdmin(self, PROXY.format(url=b.url))
        c = await connect(self, a.port, "/chat")
        self.assertEqual(await inThread(echo, c, MESSAGES), MESSAGES)

        s = await a.status()
        self.assertEqual(s["version"], __version__)
        self.assertGreaterEqual(s["uptime"], 0)
        self.assertLess(s["uptime"], 60)
        self.assertEqual(
            s["listeners"],
            [{"description": "tcp:0:interface=127.0.0.1", "port": a.port}],
        )
        self.assertEqual(s["clients"], 1)
        self.assertEqual(s["handshakes"]["count"], 1)
        (route,) = s["routes"]
        self.assertEqual(
            {k: route[k] for k in ("name", "mode", "path", "host", "balancer")},
            {
                "name": "chat",
                "mode": "proxy",
                "path": "/chat",
                "host": None,
                "balancer": "round_robin",
            },
        )
        self.assertEqual(route["health"], "none")
        self.assertEqual(route["channels"], [])
        one = backendOf(s, "chat", "one")
        self.assertEqual(one["url"], b.url)
        self.assertEqual(one["state"], "up")
        self.assertEqual(one["connections"], 1)
        self.assertEqual(one["totalConnections"], 1)
        self.assertEqual(one["toBackend"], {"messages": 3, "bytes": PAYLOAD})
        self.assertEqual(one["fromBackend"], {"messages": 3, "bytes": PAYLOAD})
        self.assertEqual(one["failures"], 0)
        self.assertIsNone(one["lastCheck"])
        self.assertEqual(one["checks"], [])

        await inThread(c.close)
        await waitFor(lambda: a.relay.routes.routes[0].backends[0].connections == 0)
        one = backendOf(await a.status(), "chat", "one")
        self.assertEqual(one["connections"], 0)
        self.assertEqual(one["totalConnections"], 1)
        self.assertEqual(one["toBackend"], {"messages": 3, "bytes": PAYLOAD})
        self.assertEqual(one["fromBackend"], {"messages": 3, "bytes": PAYLOAD})

    async def test_fanoutChannel(self) -> None:
        """
        A fan-out channel shows its key, source (the built-in one reports
        no status of its own), upstream state and backend, its clients,
        replay size and counters.
        """
        b = startBackend(self)
        a = await startAdmin(self, FANOUT.format(url=b.url))
        c = await joined(self, a)
        # Forwarded to the source, which echoes it to the channel.
        self.assertEqual(await inThread(echo, c, ["tick"]), ["tick"])

        (route,) = (await a.status())["routes"]
        self.assertEqual(route["mode"], "fanout")
        (channel,) = route["channels"]
        self.assertEqual(
            channel,
            {
                "key": "",
                "source": "websocket",
                "sourceStatus": None,
                "state": "up",
                "backend": "source",
                "clients": 1,
                "replay": 1,
                "messagesIn": 1,
                "deliveries": 1,
                "slowDrops": 0,
                "slowCloses": 0,
                "clientDrops": 0,
                "connects": 1,
            },
        )

    async def test_healthHistory(self) -> None:
        """
        Active health checks are listed, oldest first, with their time
        (on the relay's clock), result and reason; the last is
        C{lastCheck}.
        """
        b = startBackend(self)
        a = await startAdmin(
            self,
            PROXY.format(url=b.url) + "health = tcp\nhealth_interval = 0.05\n",
        )
        await waitFor(lambda: len(a.relay.routes.routes[0].backends[0].checks) >= 2)
        s = await a.status()
        one = backendOf(s, "chat", "one")
        self.assertEqual(s["routes"][0]["health"], "tcp")
        self.assertGreaterEqual(len(one["checks"]), 2)
        self.assertTrue(all(check["ok"] for check in one["checks"]))
        times = [check["time"] for check in one["checks"]]
        self.assertEqual(times, sorted(times))
        self.assertEqual(one["lastCheck"], one["checks"][-1])
        self.assertLessEqual(one["lastCheck"]["time"], s["time"])
        self.assertIsInstance(one["lastCheck"]["reason"], str)

    async def test_adminListener(self) -> None:
        """
        The relay's own C{admin} listener serves the site.
        """
        b = startBackend(self)
        relay, _ = await startRelay(
            self,
            "[relay]\nadmin = tcp:0:interface=127.0.0.1\n" + PROXY.format(url=b.url),
        )
        port = await relay.adminListener.listening
        answer = await inThread(fetch, port.getHost().port, "/status")  # type: ignore[attr-defined]
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.json()["routes"][0]["name"], "chat")

    async def test_headers(self) -> None:
        """
        Answers name wsrelay as the server, without versions; JSON is
        labelled as such and not cached; C{HEAD} answers without a body;
        the dashboard allows no content from elsewhere, and is served as a
        static file (with C{Last-Modified} and C{Accept-Ranges}).
        """
        b = startBackend(self)
        a = await startAdmin(self, PROXY.format(url=b.url))
        answer = await a.get("/status")
        self.assertEqual(answer.headers["Server"], "wsrelay")
        self.assertEqual(answer.headers["Content-Type"], "application/json")
        self.assertEqual(answer.headers["Cache-Control"], "no-store")
        head = await inThread(fetch, a.admin, "/status", "HEAD")
        self.assertEqual((head.status, head.body), (200, b""))
        page = await a.get("/")
        self.assertEqual(page.headers["Content-Type"], "text/html; charset=utf-8")
        self.assertIn("default-src 'none'", page.headers["Content-Security-Policy"])
        self.assertEqual(page.body, DASHBOARD)
        self.assertEqual(page.headers["Accept-Ranges"], "bytes")
        self.assertIsNotNone(page.headers["Last-Modified"])


class ExposureTests(TestCase):
    """
    What the admin listener shows, and to whom: loopback unless told
    otherwise, backend URLs without their secrets, and no answer to a page
    that reaches it through DNS rebinding.
    """

    async def test_loopbackByDefault(self) -> None:
        """
        C{admin = tcp:PORT} without C{interface=} listens on loopback, not
        on every interface; an explicit C{interface=} is kept.
        """
        b = startBackend(self)
        relay, _ = await startRelay(
            self, "[relay]\nadmin = tcp:0\n" + PROXY.format(url=b.url)
        )
        port = await relay.adminListener.listening
        self.assertEqual(port.getHost().host, "127.0.0.1")  # type: ignore[attr-defined]
        self.assertEqual(relay.config.admin, "tcp:0:interface=127.0.0.1")
        route = "[route:a]\npath = /\nbackends = ws://127.0.0.1:1/\n"
        for given, used in [
            ("tcp6:9190", "tcp6:9190:interface=\\:\\:1"),
            ("tcp:9190:backlog=5", "tcp:9190:backlog=5:interface=127.0.0.1"),
            ("tcp:9190:interface=0.0.0.0", "tcp:9190:interface=0.0.0.0"),
            ("unix:/tmp/admin.sock", "unix:/tmp/admin.sock"),
        ]:
            config = parseConfig(
                f"[relay]\nlisten = tcp:0\nadmin = {given}\n" + route, "r.ini"
            )
            self.assertEqual(config.admin, used)

    def test_loopbackFailsClosed(self) -> None:
        """
        Whether C{admin} names an interface is read from its arguments, as
        Twisted parses them, not from the text: C{interface=} inside
        another argument's value names none, and a listener type whose
        interface the relay cannot tell is refused with one line unless it
        names one.  C{haproxy:} in front of C{tcp:} changes nothing, and an
        interface given as a positional argument is kept.
        """
        directory = os.path.join(self.mktemp(), "interface=")
        os.makedirs(directory)
        certs = makeCertificates(directory, ["localhost"])
        ssl = f"ssl:9190:privateKey={certs['key']}:certKey={certs['cert']}"
        route = "[route:a]\npath = /\nbackends = ws://127.0.0.1:1/\n"

        def admin(given: str) -> str | None:
            text = f"[relay]\nlisten = tcp:0\nadmin = {given}\n" + route
            return parseConfig(text, "r.ini").admin

        for given, used in [
            (ssl, ssl + ":interface=127.0.0.1"),
            ("haproxy:tcp:9190", "haproxy:tcp:9190:interface=127.0.0.1"),
            ("HAPROXY:TCP6:9190", "HAPROXY:TCP6:9190:interface=\\:\\:1"),
            ("haproxy:unix:/tmp/admin.sock", "haproxy:unix:/tmp/admin.sock"),
            ("tcp:9190:192.0.2.1", "tcp:9190:192.0.2.1"),
            ("tcp6:9190:50:\\:\\:1", "tcp6:9190:50:\\:\\:1"),
        ]:
            self.assertEqual(admin(given), used)
        for given in [
            "autobahn:tcp\\:9190:url=ws\\://h/?interface=x",
            "stdio:",
        ]:
            e = self.assertRaises(ConfigError, admin, given)
            self.assertEqual((e.section, e.key), ("relay", "admin"), given)
            self.assertIn("add interface=127.0.0.1", e.problem)
            self.assertEqual(str(e).splitlines(), [str(e)])

    async def test_redacted(self) -> None:
        """
        A backend URL's query (an API key, say) shows in neither
        C{/status}, the dashboard, C{/metrics} nor the log, even when the
        backend fails.
        """
        b = startBackend(self)
        events: list[LogEvent] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        gone = closedPort()
        a = await startAdmin(
            self,
            f"[route:chat]\npath = /chat\nbalancer = first\nbackends ="
            f" ws://127.0.0.1:{gone}/x?apikey=SECRET1 name=gone"
            f" {b.url}?apikey=SECRET2 name=one\n",
        )
        c = await connect(self, a.port, "/chat")
        self.assertEqual(await inThread(echo, c, ["hi"]), ["hi"])
        status = await a.get("/status")
        urls = [b["url"] for b in status.json()["routes"][0]["backends"]]
        self.assertEqual(
            urls,
            [f"ws://127.0.0.1:{gone}/x?REDACTED", f"{b.url}?REDACTED"],
        )
        metrics = await a.get("/metrics")
        page = await a.get("/")
        logged = "\n".join(formatEvent(e) or "" for e in events)
        self.assertIn("gone failed", logged)
        for text in [status.body, metrics.body, page.body, logged.encode()]:
            self.assertNotIn(b"SECRET", text)

    async def test_hosts(self) -> None:
        """
        Reads and actions are answered for a C{Host} that is an IP address
        (with or without port), C{localhost} or a name of C{admin_hosts};
        any other name gets 421, as a page that rebound its own name to
        the listener's address would.
        """
        b = startBackend(self)
        relay, _ = await startRelay(
            self,
            "[relay]\nadmin = tcp:0\nadmin_hosts = Admin.Example.com\n"
            + PROXY.format(url=b.url),
        )
        port = (await relay.adminListener.listening).getHost().port  # type: ignore[attr-defined]
        for host in [
            None,
            f"127.0.0.1:{port}",
            "127.0.0.1",
            f"localhost:{port}",
            "LOCALHOST",
            "[::1]:9",
            "admin.example.com:80",
            "ADMIN.example.com",
        ]:
            answer = await inThread(fetch, port, "/status", host=host)
            self.assertEqual(answer.status, 200, host)
        for host in ["evil.example", f"evil.example:{port}", "127.0.0.1.nip.io", ""]:
            for path, method in [
                ("/status", "GET"),
                ("/metrics", "GET"),
                ("/", "GET"),
                ("/reload", "POST"),
            ]:
                answer = await inThread(fetch, port, path, method, TOKEN, host)
                self.assertEqual(answer.status, 421, (host, path))
                self.assertEqual(answer.reason, "Misdirected Request")
                self.assertNotIn(b"chat", answer.body)

    def test_hostAllowed(self) -> None:
        """
        L{hostAllowed} takes IP literals, C{localhost} and the listed names,
        each with or without a port, and nothing else: no user information,
        spaces, path or second port around them.
        """
        allowed = ("admin.example.com",)
        for host in [
            b"10.1.2.3",
            b"10.1.2.3:80",
            b"[fe80::1]:9090",
            b"[::1]",
            b"localhost.",
            b"Admin.Example.Com:1",
        ]:
            self.assertTrue(hostAllowed(host, allowed), host)
        for host in [
            b"example.com",
            b"admin.example.com.evil",
            b"[::1",
            b"::1",
            b"\xff",
            b"localhost.evil",
            b"10.1.2.3.evil",
            b"localhost:80@evil.com",
            b"127.0.0.1:80@evil.com",
            b"user@localhost",
            b" 127.0.0.1 ",
            b"localhost ",
            b"127.0.0.1\n",
            b"localhost:",
            b"localhost:80:80",
            b"localhost:8o",
            b"[::1]x",
            b"[::1]:80/evil",
            b"[1.2.3.4]",
            b"[admin.example.com]",
            b"localhost/evil",
            b"",
        ]:
            self.assertFalse(hostAllowed(host, allowed), host)


class MetricsTests(TestCase):
    """
    C{GET /metrics} is the Prometheus text format, made by
    C{prometheus_client} from the relay's counters.
    """

    async def test_labelledSamples(self) -> None:
        """
        Backend families are labelled by route and backend (and direction,
        or state); channel families by route and channel; the handshake
        latency is a histogram whose count is the handshakes done.
        """
        b = startBackend(self)
        source = startBackend(self)
        a = await startAdmin(
            self, PROXY.format(url=b.url) + FANOUT.format(url=source.url)
        )
        c = await connect(self, a.port, "/chat")
        await inThread(echo, c, MESSAGES)
        f = await joined(self, a)
        await inThread(echo, f, ["tick"])

        answer = await a.get("/metrics")
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.headers["Content-Type"], CONTENT_TYPE_LATEST)
        got = samples(answer.body.decode("utf-8"))
        one = labels(route="chat", backend="one")
        src = labels(route="feed", backend="source")

        def to(d: str, **kw: str) -> frozenset[tuple[str, str]]:
            return labels(direction=d, **kw)

        expected = {
            ("wsrelay_build_info", labels(version=__version__)): 1,
            ("wsrelay_client_connections", labels()): 2,
            ("wsrelay_backend_open_connections", one): 1,
            ("wsrelay_backend_connections_total", one): 1,
            ("wsrelay_backend_open_connections", src): 1,
            ("wsrelay_backend_messages_total", to("to_backend", **dict(one))): 3,
            ("wsrelay_backend_messages_total", to("from_backend", **dict(one))): 3,
            ("wsrelay_backend_bytes_total", to("to_backend", **dict(one))): PAYLOAD,
            ("wsrelay_backend_bytes_total", to("from_backend", **dict(one))): PAYLOAD,
            ("wsrelay_backend_failures_total", one): 0,
            ("wsrelay_backend_up", one): 1,
            ("wsrelay_backend_state", labels(state="up", **dict(one))): 1,
            ("wsrelay_backend_state", labels(state="down", **dict(one))): 0,
            ("wsrelay_backend_state", labels(state="draining", **dict(one))): 0,
            ("wsrelay_backend_state", labels(state="disabled", **dict(one))): 0,
            ("wsrelay_channel_clients", labels(route="feed", channel="")): 1,
            ("wsrelay_channel_up", labels(route="feed", channel="")): 1,
            ("wsrelay_channel_messages_total", labels(route="feed", channel="")): 1,
            ("wsrelay_channel_deliveries_total", labels(route="feed", channel="")): 1,
            ("wsrelay_channel_slow_drops_total", labels(route="feed", channel="")): 0,
            ("wsrelay_handshake_latency_seconds_count", labels()): 2,
            ("wsrelay_handshake_latency_seconds_bucket", labels(le="+Inf")): 2,
        }
        self.assertEqual({k: got.get(k) for k in expected}, expected)
        self.assertGreater(got[("wsrelay_uptime_seconds", labels())], 0)
        self.assertGreater(got[("wsrelay_handshake_latency_seconds_sum", labels())], 0)


class HistogramTests(SynchronousTestCase):
    """
    The relay's handshake latency histogram (per-bucket counts) becomes a
    Prometheus histogram (cumulative buckets).
    """

    def test_cumulative(self) -> None:
        """
        Each bucket counts the observations up to its bound; C{+Inf} and
        C{_count} all of them; C{_sum} is the relay's sum.
        """
        config = parseConfig(
            "[relay]\nlisten = tcp:0\n[route:chat]\npath = /chat\n"
            "backends = ws://127.0.0.1:1/\n",
            "t.ini",
        )
        relay = RelayService(config, MemoryReactorClock(), Clock())
        h = relay.handshakeLatency
        h.buckets = (0.01, 0.1, 1.0)
        h.counts = [2, 0, 3, 1]
        h.sum = 4.5
        h.count = 6
        (family,) = [
            m
            for m in RelayCollector(RelayView(relay)).collect()
            if m.name == "wsrelay_handshake_latency_seconds"
        ]
        self.assertEqual(family.type, "histogram")
        self.assertEqual(
            [(s.name, s.labels, s.value) for s in family.samples],
            [
                ("wsrelay_handshake_latency_seconds_bucket", {"le": "0.01"}, 2),
                ("wsrelay_handshake_latency_seconds_bucket", {"le": "0.1"}, 2),
                ("wsrelay_handshake_latency_seconds_bucket", {"le": "1.0"}, 5),
                ("wsrelay_handshake_latency_seconds_bucket", {"le": "+Inf"}, 6),
                ("wsrelay_handshake_latency_seconds_count", {}, 6),
                ("wsrelay_handshake_latency_seconds_sum", {}, 4.5),
            ],
        )


class ActionTests(TestCase):
    """
    The C{POST} actions need the bearer token, call through to the relay
    and answer with the new state.
    """

    async def test_noTokenFile(self) -> None:
        """
        Without C{admin_token_file} every action answers 403, whatever
        token is sent, and changes nothing.
        """
        b = startBackend(self)
        a = await startAdmin(self, PROXY.format(url=b.url), token=False)
        for path in ("/routes/chat/backends/one/drain", "/reload"):
            for token in (None, TOKEN, ""):
                answer = await a.post(path, token)
                self.assertEqual(answer.status, 403, (path, token))
                self.assertIn("admin_token_file", answer.json()["error"])
        self.assertEqual(backendOf(await a.status(), "chat", "one")["state"], "up")

    async def test_missingToken(self) -> None:
        """
        Without C{Authorization}, or with another scheme, an action
        answers 401 with C{WWW-Authenticate: Bearer} and changes nothing.
        """
        b = startBackend(self)
        a = await startAdmin(self, PROXY.format(url=b.url))
        answer = await a.post("/routes/chat/backends/one/disable", None)
        self.assertEqual(answer.status, 401)
        self.assertEqual(answer.headers["WWW-Authenticate"], 'Bearer realm="wsrelay"')

        def basic() -> Answer:
            request = urllib.request.Request(
                f"http://127.0.0.1:{a.admin}/reload",
                method="POST",
                data=b"",
                headers={"Authorization": f"Basic {TOKEN}"},
            )
            try:
                _opener.open(request, timeout=TIMEOUT)
            except urllib.error.HTTPError as e:
                with e:
                    return Answer(e.code, e.headers, e.read(), e.reason)
            raise AssertionError("accepted")

        self.assertEqual((await inThread(basic)).status, 401)
        self.assertEqual(backendOf(await a.status(), "chat", "one")["state"], "up")

    async def test_wrongToken(self) -> None:
        """
        A wrong token, or the right one with more after it, answers 401
        with C{error="invalid_token"} and changes nothing.
        """
        b = startBackend(self)
        a = await startAdmin(self, PROXY.format(url=b.url))
        for token in ("nope", TOKEN + "x", TOKEN[:-1], "the first line only"):
            answer = await a.post("/routes/chat/backends/one/disable", token)
            self.assertEqual(answer.status, 401, token)
            self.assertIn('error="invalid_token"', answer.headers["WWW-Authenticate"])
            self.assertEqual(answer.json(), {"error": "wrong token"})
        self.assertEqual(backendOf(await a.status(), "chat", "one")["state"], "up")

    async def test_tokenChanged(self) -> None:
        """
        The token file is read when an action arrives: once it changes,
        the new token works and the old one no longer does.
        """
        b = startBackend(self)
        a = await startAdmin(self, PROXY.format(url=b.url))
        path = a.relay.config.adminTokenFile
        assert path is not None
        with open(path, "w") as f:
            f.write("n3w-t0ken\n")
        action = "/routes/chat/backends/one/drain"
        self.assertEqual((await a.post(action, TOKEN)).status, 401)
        self.assertEqual((await a.post(action, "n3w-t0ken")).status, 200)

    async def test_drainDisableEnable(self) -> None:
        """
        With the right token (the token file's first line, stripped) the
        actions answer 200 with the backend's new state, which C{/status}
        and C{/metrics} then show.
        """
        b = startBackend(self)
        a = await startAdmin(self, PROXY.format(url=b.url))
        for action, state in [
            ("drain", "draining"),
            ("disable", "disabled"),
            ("enable", "up"),
        ]:
            answer = await a.post(f"/routes/chat/backends/one/{action}")
            self.assertEqual(answer.status, 200, action)
            body = answer.json()
            self.assertEqual((body["route"], body["action"]), ("chat", action))
            self.assertEqual(body["backend"]["name"], "one")
            self.assertEqual(body["backend"]["state"], state)
            self.assertEqual(backendOf(await a.status(), "chat", "one")["state"], state)
            metrics = samples((await a.get("/metrics")).body.decode("utf-8"))
            key = labels(route="chat", backend="one", state=state)
            self.assertEqual(metrics[("wsrelay_backend_state", key)], 1)

    async def test_unknown(self) -> None:
        """
        An unknown route or backend answers 404 with a JSON error naming
        it; so does an unknown action or page.
        """
        b = startBackend(self)
        a = await startAdmin(self, PROXY.format(url=b.url))
        answer = await a.post("/routes/nope/backends/one/drain")
        self.assertEqual(answer.status, 404)
        self.assertIn("'nope'", answer.json()["error"])
        answer = await a.post("/routes/chat/backends/two/drain")
        self.assertEqual(answer.status, 404)
        self.assertIn("'two'", answer.json()["error"])
        for path in ("/routes/chat/backends/one/reboot", "/nope", "/status/"):
            answer = await a.post(path)
            self.assertEqual(answer.status, 404, path)
            self.assertEqual(answer.json(), {"error": "no such page"})
            self.assertEqual((await a.get(path)).status, 404, path)

    async def test_wrongMethod(self) -> None:
        """
        C{GET} on an action, or C{POST} on a page, answers 405 with the
        methods it allows.
        """
        b = startBackend(self)
        a = await startAdmin(self, PROXY.format(url=b.url))
        for path in ("/routes/chat/backends/one/drain", "/reload"):
            answer = await a.get(path)
            self.assertEqual(answer.status, 405, path)
            self.assertEqual(answer.headers["Allow"], "POST")
        for path in ("/", "/status", "/metrics"):
            answer = await a.post(path)
            self.assertEqual(answer.status, 405, path)
            self.assertEqual(answer.headers["Allow"], "GET, HEAD")
        self.assertEqual(backendOf(await a.status(), "chat", "one")["state"], "up")

    async def test_paths(self) -> None:
        """
        A page is found by its whole path, each segment's percent-escapes
        decoded once more than HTTP does: a node of the tree that is no
        page, a page with one more segment (even empty) and a segment
        that is not ASCII answer 404 with a JSON error; an escaped name
        finds its page.
        """
        b = startBackend(self)
        a = await startAdmin(self, PROXY.format(url=b.url))
        for path in (
            "/routes",
            "/routes/",
            "/routes/chat",
            "/routes/chat/backends",
            "/routes/chat/backends/one",
            "/routes/chat/backends/one/drain/",
            "/routes/chat/backends/one/drain/x",
            "//",
            "/metrics/x",
            "/reload/",
            "/%FF",
            "/st%25FFtus",
        ):
            for answer in (await a.get(path), await a.post(path)):
                self.assertEqual(answer.status, 404, path)
                self.assertEqual(answer.json(), {"error": "no such page"}, path)
                self.assertEqual(answer.headers["Server"], "wsrelay", path)
        for path in ("/st%61tus", "/st%2561tus"):
            answer = await a.get(path)
            self.assertEqual(answer.status, 200, path)
            self.assertEqual(answer.json()["routes"][0]["name"], "chat")
        answer = await a.post("/routes/ch%2561t/backends/%6fne/drain")
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.json()["backend"]["state"], "draining")

    async def test_reloadRejected(self) -> None:
        """
        A configuration file that no longer parses makes C{POST /reload}
        answer 400 with its one-line error; the running configuration
        stays.
        """
        b = startBackend(self)
        a = await startAdmin(self, PROXY.format(url=b.url))
        config = a.relay.config
        with open(a.path, "a") as f:
            f.write("bogus = 1\n")
        answer = await a.post("/reload")
        self.assertEqual(answer.status, 400)
        error = answer.json()["error"]
        self.assertIn("bogus", error)
        self.assertNotIn("\n", error)
        self.assertIs(a.relay.config, config)
        self.assertEqual([r["name"] for r in (await a.status())["routes"]], ["chat"])

    async def test_reloadRejectedRedacted(self) -> None:
        """
        The 400 answer to C{POST /reload} names a bad backend URL without
        its user information or query, which may hold a secret.
        """
        b = startBackend(self)
        a = await startAdmin(self, PROXY.format(url=b.url))
        with open(a.path, "a") as f:
            f.write(
                "[route:more]\npath = /more\n"
                "backends = ws://u:SECRET@h/?apikey=SECRET colour=red\n"
            )
        answer = await a.post("/reload")
        self.assertEqual(answer.status, 400)
        self.assertIn(
            "'colour' after ws://REDACTED@h/?REDACTED", answer.json()["error"]
        )
        self.assertNotIn(b"SECRET", answer.body)

    async def test_reload(self) -> None:
        """
        C{POST /reload} applies the file again and answers with the routes
        now in force, which C{/status} then lists.
        """
        b = startBackend(self)
        a = await startAdmin(self, PROXY.format(url=b.url))
        with open(a.path, "a") as f:
            f.write("[route:more]\npath = /more\nbackends = " + b.url + "\n")
        answer = await a.post("/reload")
        self.assertEqual(answer.status, 200)
        self.assertEqual(
            answer.json(), {"reloaded": a.path, "routes": ["chat", "more"]}
        )
        names = [r["name"] for r in (await a.status())["routes"]]
        self.assertEqual(names, ["chat", "more"])


class LogTests(TestCase):
    """
    The admin site logs actions as structured events, and not every read
    (a dashboard asks each second).
    """

    async def test_events(self) -> None:
        """
        Each request other than C{GET} and C{HEAD} gives one event with the
        method, path, status and peer, whatever its answer, in the
        namespace docs/admin.md names; a read gives none, even a 404.
        """
        events: list[LogEvent] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        b = startBackend(self)
        a = await startAdmin(self, PROXY.format(url=b.url))
        path = "/routes/chat/backends/one/drain"
        await a.get("/status")
        await a.get("/metrics")
        self.assertEqual((await a.post(path, None)).status, 401)
        self.assertEqual((await a.post(path)).status, 200)
        self.assertEqual((await a.get("/nope")).status, 404)
        self.assertEqual((await a.post("/nope")).status, 404)

        def admin() -> list[tuple[str, str, int, str]]:
            return [
                (e["method"], e["path"], e["code"], e["peer"])
                for e in events
                if e.get("log_namespace", "").startswith("wsrelay.admin")
            ]

        await waitFor(lambda: len(admin()) >= 3)
        self.assertEqual(
            admin(),
            [
                ("POST", path, 401, "127.0.0.1"),
                ("POST", path, 200, "127.0.0.1"),
                ("POST", "/nope", 404, "127.0.0.1"),
            ],
        )
        self.assertEqual(
            {
                e["log_namespace"]
                for e in events
                if e.get("log_namespace", "").startswith("wsrelay.admin")
            },
            {"wsrelay.admin.AdminSite"},
        )


class DashboardTests(TestCase):
    """
    C{GET /} is a page that renders the relay's routes, backends and
    channels from C{/status}, by itself.
    """

    def test_selfContained(self) -> None:
        """
        The page loads nothing from elsewhere: no external scripts, styles,
        images or links.
        """
        self.assertNotRegex(DASHBOARD, rb"(?i)\b(src|href)\s*=|https?://|@import")

    async def test_rendered(self) -> None:
        """
        In headless Chromium, once the page's own requests ran, it shows
        the relay's version, each route, backend and channel, and the
        counters C{/status} gives.
        """
        if CHROMIUM is None:
            self.skipTest(
                "chromium is not installed (Debian package chromium): the"
                " dashboard cannot be rendered"
            )
        b = startBackend(self)
        source = startBackend(self)
        a = await startAdmin(
            self, PROXY.format(url=b.url) + FANOUT.format(url=source.url)
        )
        c = await connect(self, a.port, "/chat")
        await inThread(echo, c, MESSAGES)
        f = await joined(self, a)
        await inThread(echo, f, ["tick"])
        await inThread(echo, f, ["tock"])
        s = await a.status()

        page = Dashboard(await inThread(dumpDOM, f"http://127.0.0.1:{a.admin}/"))
        self.assertEqual(page.ids["version"], __version__)
        self.assertEqual(page.ids["clients"], "2")
        self.assertGreaterEqual(
            int(page.attributes["updated"]["data-refreshes"] or 0), 1
        )
        self.assertTrue(page.attributes["error"].get("hidden") is not None)
        self.assertIn("route-chat", page.ids)
        self.assertIn("route-feed", page.ids)

        one = backendOf(s, "chat", "one")
        self.assertEqual(
            page.rows[("backend", "chat", "one")],
            {
                "name": "one",
                "state": "up",
                "connections": "1",
                "total": "1",
                "messages-to": "3",
                "bytes-to": str(PAYLOAD),
                "messages-from": "3",
                "bytes-from": str(PAYLOAD),
                "failures": "0",
                "check": "none",
                "actions": "draindisableenable",
            },
        )
        self.assertEqual(one["toBackend"]["bytes"], PAYLOAD)
        row = page.rows[("channel", "feed", "")]
        (channel,) = s["routes"][1]["channels"]
        self.assertEqual(row["clients"], str(channel["clients"]))
        self.assertEqual(row["deliveries"], str(channel["deliveries"]))
        self.assertEqual(row["messages-in"], "2")
        self.assertEqual(row["state"], "up")
        self.assertEqual(row["backend"], "source")
        self.assertEqual(row["source"], "websocket")
        self.assertIn(("backend", "feed", "source"), page.rows)


#: Run by L{DashboardFileTests.test_installed} with an installed wsrelay
#: first on C{sys.path}: serves the admin site of a relay that is not
#: started on a loopback port, asks it for C{/} and prints where wsrelay
#: was imported from, then the answer's status, content type and body.
_SERVE = """
import json, sys, urllib.request
from twisted.internet import reactor, threads
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
import wsrelay
from wsrelay.admin import adminSite
from wsrelay.config import parseConfig
from wsrelay.service import RelayService

config = parseConfig(
    "[relay]\\nlisten = tcp:0\\n[route:chat]\\npath = /chat\\n"
    "backends = ws://127.0.0.1:1/\\n",
    "t.ini",
)
site = adminSite(RelayService(config, MemoryReactorClock(), Clock()))
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
result = {}

def get(port):
    url = "http://127.0.0.1:%d/" % port.getHost().port
    with opener.open(url, timeout=30) as r:
        return r.status, r.headers["Content-Type"], r.read().decode("utf-8")

def done(answer):
    result["answer"] = answer
    reactor.stop()

def failed(f):
    result["error"] = f.getTraceback()
    reactor.stop()

d = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
d.addCallback(lambda port: threads.deferToThread(get, port))
d.addCallbacks(done, failed)
reactor.callLater(60, reactor.stop)
reactor.run()
print(json.dumps({"module": wsrelay.__file__, **result}))
"""


class DashboardFileTests(SynchronousTestCase):
    """
    The dashboard is the package-data file C{wsrelay/admin/dashboard.html},
    served as it is both from the work tree (the editable install the
    other tests use) and from a built wheel.
    """

    def test_packageData(self) -> None:
        """
        The dashboard's file is in the C{wsrelay.admin} package and is the
        page the admin site serves; C{setup.cfg} ships it as package data.
        """
        here = Path(__file__).resolve().parent.parent
        self.assertEqual(
            Path(DASHBOARD_PATH.path), here / "wsrelay" / "admin" / "dashboard.html"
        )
        self.assertEqual(DASHBOARD, DASHBOARD_PATH.getContent())
        self.assertIn(b"<title>wsrelay</title>", DASHBOARD)
        config = configparser.ConfigParser()
        config.read(here / "setup.cfg")
        self.assertEqual(
            config["options.package_data"]["wsrelay.admin"].split(),
            ["dashboard.html"],
        )

    def test_installed(self) -> None:
        """
        The wheel holds C{wsrelay/admin/dashboard.html}; with the wheel's
        files first on C{sys.path}, the admin site serves that file for
        C{GET /}, labelled as UTF-8 HTML.
        """
        tmp = Path(tempfile.mkdtemp(prefix="wsrelay-admin-"))
        self.addCleanup(shutil.rmtree, tmp, True)
        build, wheels = buildWheel(tmp)
        self.assertEqual(build.returncode, 0, build.stdout + build.stderr)
        (wheel,) = wheels
        installed = tmp / "installed"
        with zipfile.ZipFile(wheel) as archive:
            self.assertIn("wsrelay/admin/dashboard.html", archive.namelist())
            archive.extractall(installed)
        served = subprocess.run(
            [sys.executable, "-c", _SERVE],
            cwd=tmp,
            env={**os.environ, "PYTHONPATH": str(installed)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        self.assertEqual(served.returncode, 0, served.stderr)
        result = json.loads(served.stdout.splitlines()[-1])
        self.assertNotIn("error", result)
        self.assertTrue(
            Path(result["module"]).is_relative_to(installed), result["module"]
        )
        status, contentType, body = result["answer"]
        self.assertEqual((status, contentType), (200, "text/html; charset=utf-8"))
        self.assertEqual(
            body.encode("utf-8"),
            (installed / "wsrelay" / "admin" / "dashboard.html").read_bytes(),
        )
        self.assertEqual(body.encode("utf-8"), DASHBOARD)


class StandInView(RelayView):
    """
    A L{RelayView} of no relay: constant answers, and a record of what the
    admin listener asked.

    @ivar asked: The actions asked, in order.
    """

    def __init__(self) -> None:
        self.asked: list[tuple[str, ...]] = []
        self.latency = Histogram((0.5,))
        self.latency.observe(0.25)

    def now(self) -> float:
        """
        The stand-in for L{RelayView.now}.
        """
        return 1000.0

    def startedAt(self) -> float:
        """
        The stand-in for L{RelayView.startedAt}.
        """
        return 958.0

    def clock(self) -> Clock:
        """
        The stand-in for L{RelayView.clock}: one that does not move.
        """
        return Clock()

    def worker(self) -> int:
        """
        The stand-in for L{RelayView.worker}.
        """
        return 3

    def listeners(self) -> list[tuple[str, int | None]]:
        """
        The stand-in for L{RelayView.listeners}.
        """
        return [("tcp:8080", 8080)]

    def clients(self) -> int:
        """
        The stand-in for L{RelayView.clients}.
        """
        return 7

    def handshakeLatency(self) -> Histogram:
        """
        The stand-in for L{RelayView.handshakeLatency}.
        """
        return self.latency

    def refused(self) -> dict[str, int]:
        """
        The stand-in for L{RelayView.refused}.
        """
        return {}

    def routes(self) -> list[Route]:
        """
        The stand-in for L{RelayView.routes}.
        """
        return []

    def route(self, name: str) -> Route | None:
        """
        The stand-in for L{RelayView.route}.
        """
        return None

    def channels(self) -> list[Any]:
        """
        The stand-in for L{RelayView.channels}.
        """
        return []

    def workers(self) -> None:
        """
        The stand-in for L{RelayView.workers}.
        """
        return None

    def adminHosts(self) -> tuple[str, ...]:
        """
        The stand-in for L{RelayView.adminHosts}.
        """
        return ("stand.in",)

    def adminToken(self) -> str | None:
        """
        The stand-in for L{RelayView.adminToken}.
        """
        return TOKEN

    def configPath(self) -> str:
        """
        The stand-in for L{RelayView.configPath}.
        """
        return "/stand/in.ini"

    def setBackendState(self, route: str, backend: str, action: str) -> Backend:
        """
        The stand-in for L{RelayView.setBackendState}.
        """
        self.asked.append((action, route, backend))
        raise KeyError(f"no route {route!r}")

    def reload(self) -> Any:
        """
        The stand-in for L{RelayView.reload}.
        """
        self.asked.append(("reload",))
        return succeed(None)


class RelayViewTests(TestCase):
    """
    The admin listener reads the relay and asks it to act only through a
    L{RelayView}: another view is all it takes to point it elsewhere.
    """

    async def test_standIn(self) -> None:
        """
        An admin site over a stand-in view, with no relay service, answers
        C{/status}, C{/metrics}, the C{Host} check, C{/reload} and an
        action from the view's answers, and asks the view to act.
        """
        view = StandInView()
        endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        listening = await endpoint.listen(AdminSite(view))
        self.addCleanup(listening.stopListening)
        port = listening.getHost().port

        answer = await inThread(fetch, port, "/status", host="Stand.In:80")
        self.assertEqual(answer.status, 200)
        status = answer.json()
        self.assertEqual(
            {k: status[k] for k in ("worker", "time", "uptime", "clients")},
            {"worker": 3, "time": 1000.0, "uptime": 42.0, "clients": 7},
        )
        self.assertEqual(
            status["listeners"], [{"description": "tcp:8080", "port": 8080}]
        )
        self.assertEqual(status["handshakes"], {"count": 1, "sum": 0.25})
        self.assertEqual(status["routes"], [])
        answer = await inThread(fetch, port, "/status", host="other.example")
        self.assertEqual(answer.status, 421)

        answer = await inThread(fetch, port, "/metrics")
        samples = {
            s.name: s.value
            for f in text_string_to_metric_families(answer.body.decode())
            for s in f.samples
            if not s.labels
        }
        self.assertEqual(samples["wsrelay_client_connections"], 7)
        self.assertEqual(samples["wsrelay_uptime_seconds"], 42)

        answer = await inThread(fetch, port, "/reload", "POST", "nope")
        self.assertEqual(answer.status, 401)
        self.assertEqual(view.asked, [])
        answer = await inThread(fetch, port, "/reload", "POST", TOKEN)
        self.assertEqual(
            (answer.status, answer.json()),
            (200, {"reloaded": "/stand/in.ini", "routes": []}),
        )
        path = "/routes/r/backends/b/drain"
        answer = await inThread(fetch, port, path, "POST", TOKEN)
        self.assertEqual(
            (answer.status, answer.json()), (404, {"error": "no route 'r'"})
        )
        self.assertEqual(view.asked, [("reload",), ("drain", "r", "b")])


#: The modules of the admin package may import, at run time, only these
#: modules of wsrelay (besides their own package): not the relay service,
#: not the workers (whose control channel imports the admin package); the
#: plugin interfaces (which import nothing of wsrelay) for the optional
#: ones a plugin's object may provide (a source's ISourceStatus).
_ADMIN_MAY_IMPORT = {
    "wsrelay",
    "wsrelay.config",
    "wsrelay.interfaces",
    "wsrelay.plugins",
}


def _runTimeImports(tree: ast.Module) -> set[str]:
    """
    @return: The modules a module imports when it runs, in functions too,
        leaving out the blocks under C{if TYPE_CHECKING:}.
    """
    found: set[str] = set()
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            found.add(node.module)
        stack.extend(ast.iter_child_nodes(node))
    return found


class StructureTests(SynchronousTestCase):
    """
    The admin package's place among the relay's modules.
    """

    def test_imports(self) -> None:
        """
        No module of the admin package imports the relay service or the
        workers when it runs (so no import cycle goes through it), and
        only L{wsrelay.admin.relay} touches the relay service at all;
        importing the package in a fresh interpreter loads neither.
        """
        package = Path(DASHBOARD_PATH.path).parent
        modules = sorted(package.glob("*.py"))
        self.assertIn(package / "relay.py", modules)
        for module in modules:
            tree = ast.parse(module.read_text(), str(module))
            imports = {
                name
                for name in _runTimeImports(tree)
                if name.startswith("wsrelay") and not name.startswith("wsrelay.admin")
            }
            self.assertLessEqual(imports, _ADMIN_MAY_IMPORT, module.name)
            if module.name not in ("relay.py", "__init__.py", "site.py"):
                self.assertNotIn("RelayService", module.read_text(), module.name)
        loaded = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys, wsrelay.admin; print(sorted(sys.modules))",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(loaded.returncode, 0, loaded.stderr)
        self.assertNotIn("'wsrelay.workers'", loaded.stdout)
        self.assertNotIn("'wsrelay.service'", loaded.stdout)


class ChannelRowTests(SynchronousTestCase):
    """
    L{wsrelay.admin.rows.channelStatus}, in memory.
    """

    def test_replayWithResume(self) -> None:
        """
        With C{resume}, the channel keeps a window larger than the replay:
        the row's C{replay} is what a new client gets, not the window.
        """
        relay, _ = relayFor("replay = 1\nresume = envelope\nresume_window = 3\n")
        channel = relay.sessionFactory.channel(relay.routes.routes[0], "")
        channel.deliver([(1, b"m", None)] * 3)
        self.assertEqual(len(channel.replay), 3)
        self.assertEqual(channelStatus(RelayView(relay), channel)["replay"], 1)
