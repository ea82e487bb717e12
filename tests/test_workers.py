"""
C{workers = N}: several relay processes on one port, as users run them
(C{twistd wsrelay}, a config file, signals, the admin API).
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import threading
import urllib.request
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect
from websockets.sync.server import ServerConnection

from tests.support import TIMEOUT, client, startBackend
from tests.support.dashboard import CHROMIUM, Dashboard, dumpDOM
from tests.support.processes import JSONRelay, alive
from tests.support.tls import makeCertificates, websocketsContext
from tests.support.waiting import pollUntil
from wsrelay.workers.supervisor import WorkerPool, reactorArguments

TOKEN = "sesame"


def logged(event: dict[str, Any], start: str) -> bool:
    """
    @return: Whether C{event}'s format starts with C{start}.
    """
    return str(event.get("log_format", "")).startswith(start)


class RelayProcess(JSONRelay):
    """
    C{twistd wsrelay} with JSON logs, started from a config text whose
    C{[relay]} section gets a loopback listener and admin listener on
    ports the OS chooses, and an admin token.
    """

    def __init__(
        self,
        testCase: TestCase,
        text: str,
        listen: str = "tcp:0:interface=127.0.0.1",
    ) -> None:
        self.directory = tempfile.mkdtemp()
        self.config = os.path.join(self.directory, "relay.ini")
        token = os.path.join(self.directory, "token")
        with open(token, "w") as f:
            f.write(TOKEN + "\n")
        self.head = (
            f"[relay]\nlisten = {listen}\n"
            "admin = tcp:0:interface=127.0.0.1\n"
            f"admin_token_file = {token}\n"
        )
        self.write(text)
        logPath = os.path.join(self.directory, "twistd.log")
        super().__init__(testCase, self.config, logPath)
        self.testCase = testCase
        listening = self.waitFor(
            lambda e: "listening on" in e.get("log_format", "") and "worker" not in e,
            2,
        )
        self.port, self.adminPort = (e["port"] for e in listening)

    def write(self, text: str) -> None:
        """
        Write the config file: C{text} after the test's C{[relay]} lines
        (so C{text} starts with the rest of that section).
        """
        with open(self.config, "w") as f:
            f.write(self.head + text)

    def admin(self, path: str, method: str = "GET") -> Any:
        """
        @return: The admin API's answer to C{path}, decoded when JSON.
        """
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.adminPort}{path}",
            method=method,
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:
            body = answer.read()
            if answer.headers["content-type"] == "application/json":
                return json.loads(body)
            return body.decode("utf-8")

    def workers(self) -> list[dict[str, Any]]:
        """
        @return: The rows of C{/status}'s C{workers}, or none when the
            admin API does not answer.
        """
        try:
            return self.admin("/status").get("workers", [])  # type: ignore[no-any-return]
        except OSError:
            return []

    def until(self, check: Callable[[], Any], what: str) -> Any:
        """
        Poll C{check} until it returns something true.
        """
        results: list[Any] = []

        def checked() -> bool:
            results[:] = [check()]
            return bool(results[0])

        try:
            pollUntil(checked, f"never: {what}", TIMEOUT * 3)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.tail()}") from None
        return results[0]

    def ready(self, count: int = 2) -> list[dict[str, Any]]:
        """
        Wait until C{count} workers answer.
        """
        return self.until(  # type: ignore[no-any-return]
            lambda: (
                (rows := self.workers())
                and len(rows) == count
                and all("error" not in r for r in rows)
                and rows
            ),
            f"{count} workers answering",
        )


def connectMany(port: int, path: str, count: int) -> list[ClientConnection]:
    """
    Open C{count} clients, each echoing once.
    """
    clients = []
    for i in range(count):
        c = client(port, path)
        c.send(f"hello {i}")
        assert c.recv(TIMEOUT) == f"hello {i}"
        clients.append(c)
    return clients


class WorkerTests(TestCase):
    """
    Workers share the listening port, report through worker 0's admin
    API, are restarted when they die, reload and stop with worker 0.
    """

    def setUp(self) -> None:
        self.backend = startBackend(self)

    def relay(self, extra: str = "") -> RelayProcess:
        return RelayProcess(
            self,
            f"workers = 2\n{extra}"
            f"[route:a]\npath = /a\nbackends = {self.backend.url} name=one\n",
        )

    def closeAll(self, clients: list[ClientConnection]) -> None:
        for c in clients:
            c.close()

    def test_spreadAndReported(self) -> None:
        """
        Connections go to both workers; C{/status} has a row per worker
        with its own process and clients, and C{?worker=1} its whole
        status; C{/metrics} labels every sample with its worker.
        """
        relay = self.relay()
        rows = relay.ready()
        self.assertEqual([r["worker"] for r in rows], [0, 1])
        self.assertEqual(rows[0]["pid"], relay.process.pid)
        self.assertNotEqual(rows[1]["pid"], relay.process.pid)
        self.assertTrue(alive(rows[1]["pid"]))
        clients = connectMany(relay.port, "/a", 24)
        self.addCleanup(self.closeAll, clients)
        rows = relay.workers()
        self.assertEqual(sum(r["clients"] for r in rows), 24)
        # Each of 24 connections lands on either worker: all on one would
        # happen with probability 2**-23.
        self.assertTrue(all(r["clients"] > 0 for r in rows), rows)
        whole = relay.admin("/status?worker=1")
        self.assertEqual(whole["worker"], 1)
        self.assertEqual(whole["clients"], rows[1]["clients"])
        self.assertEqual(
            whole["routes"][0]["backends"][0]["connections"], whole["clients"]
        )
        if CHROMIUM is not None:
            page = Dashboard(dumpDOM(f"http://127.0.0.1:{relay.adminPort}/"))
            self.assertEqual(page.ids["clients"], "24 (all workers)")
            for row in rows:
                shown = page.rows[("worker", "", str(row["worker"]))]
                self.assertEqual(shown["pid"], str(row["pid"]))
                self.assertEqual(shown["clients"], str(row["clients"]))
        metrics = relay.admin("/metrics")
        self.assertIn('wsrelay_worker_up{worker="1"} 1.0', metrics)
        for row in rows:
            self.assertIn(
                f'wsrelay_client_connections{{worker="{row["worker"]}"}}'
                f" {float(row['clients'])}",
                metrics,
            )

    def test_workerRestarted(self) -> None:
        """
        A worker that dies is logged and started again, the others keep
        their clients, and new clients are served throughout.
        """
        relay = self.relay()
        first = relay.ready()[1]["pid"]
        clients = connectMany(relay.port, "/a", 12)
        self.addCleanup(self.closeAll, clients)
        os.kill(first, signal.SIGKILL)
        relay.waitFor(
            lambda e: e.get("log_format", "").startswith("worker {worker} ended")
        )
        # Worker 0's clients are still served while worker 1 is away.
        kept = 0
        for c in clients:
            try:
                c.send("still")
                self.assertEqual(c.recv(TIMEOUT), "still")
                kept += 1
            except ConnectionClosed:
                pass
        self.assertGreater(kept, 0)
        self.closeAll(connectMany(relay.port, "/a", 8))
        rows = relay.ready()
        self.assertNotEqual(rows[1]["pid"], first)
        self.assertEqual(rows[1]["restarts"], 1)
        self.assertFalse(alive(first))

    def test_reloadAndActions(self) -> None:
        """
        SIGHUP reloads every worker (a new route is served by all), and
        an admin action reaches every worker.
        """
        relay = self.relay()
        relay.ready()
        relay.write(
            "workers = 2\n"
            f"[route:a]\npath = /a\nbackends = {self.backend.url} name=one\n"
            f"[route:b]\npath = /b\nbackends = {self.backend.url} name=one\n"
        )
        relay.process.send_signal(signal.SIGHUP)
        reloads = relay.waitFor(
            lambda e: e.get("log_format", "").startswith("reloaded"), 2
        )
        self.assertEqual(sorted(e.get("worker", 0) for e in reloads), [0, 1])
        self.closeAll(connectMany(relay.port, "/b", 16))
        answer = relay.admin("/routes/a/backends/one/drain", "POST")
        self.assertEqual(answer["backend"]["admin"], "draining")
        relay.until(
            lambda: (
                relay.admin("/status?worker=1")["routes"][0]["backends"][0]["admin"]
                == "draining"
            ),
            "worker 1 drains the backend",
        )

    def test_stop(self) -> None:
        """
        SIGTERM to worker 0 closes every client of every worker with 1001
        and ends every process, worker 0 with status 0.
        """
        relay = self.relay()
        other = relay.ready()[1]["pid"]
        clients = connectMany(relay.port, "/a", 16)
        relay.process.send_signal(signal.SIGTERM)
        codes = []
        for c in clients:
            try:
                c.recv(TIMEOUT)
            except ConnectionClosed as e:
                codes.append(None if e.rcvd is None else e.rcvd.code)
        self.assertEqual(codes, [1001] * 16)
        self.assertEqual(relay.process.wait(TIMEOUT * 3), 0)
        relay.until(lambda: not alive(other), "worker 1 ended")

    def test_workerZeroKilled(self) -> None:
        """
        The other workers stop when worker 0 is killed: nothing is left
        holding the port.
        """
        relay = self.relay()
        other = relay.ready()[1]["pid"]
        relay.process.kill()
        relay.process.wait(TIMEOUT)
        relay.until(lambda: not alive(other), "worker 1 stopped by itself")


class TLSWorkerTests(TestCase):
    """
    Workers share an C{ssl:} listener too.
    """

    def test_sharedTLS(self) -> None:
        """
        Clients reach both workers over TLS on the one port.
        """
        backend = startBackend(self)
        certs = makeCertificates(tempfile.mkdtemp(), ["localhost"])
        relay = RelayProcess(
            self,
            f"workers = 2\n[route:a]\npath = /\nbackends = {backend.url}\n",
            f"ssl:0:interface=127.0.0.1:privateKey={certs['key']}"
            f":certKey={certs['cert']}",
        )
        relay.ready()
        context = websocketsContext(certs["ca"])
        clients = []
        for i in range(16):
            c = connect(
                f"wss://localhost:{relay.port}/",
                ssl=context,
                open_timeout=TIMEOUT,
                compression=None,
                legacy=True,
            )
            clients.append(c)
            c.send(f"hello {i}")
            self.assertEqual(c.recv(TIMEOUT), f"hello {i}")
        self.addCleanup(lambda: [c.close() for c in clients])
        rows = relay.workers()
        self.assertEqual(sum(r["clients"] for r in rows), 16)
        self.assertTrue(all(r["clients"] > 0 for r in rows), rows)


class FanoutWorkerTests(TestCase):
    """
    Each worker holds its own upstream to a fan-out source.
    """

    def test_upstreamPerWorker(self) -> None:
        """
        The source sees one connection per worker, and every client, on
        either worker, receives what it sends.
        """
        connections: list[ServerConnection] = []
        lock = threading.Lock()

        def source(connection: ServerConnection) -> None:
            with lock:
                connections.append(connection)
            for _ in connection:
                pass

        backend = startBackend(self, handler=source)
        relay = RelayProcess(
            self,
            "workers = 2\n"
            f"[route:feed]\npath = /feed\nmode = fanout\nbackends = {backend.url}\n",
        )
        relay.ready()
        relay.until(lambda: len(connections) == 2, "two upstreams")
        clients = [client(relay.port, "/feed") for _ in range(16)]
        self.addCleanup(lambda: [c.close() for c in clients])
        rows = relay.until(
            lambda: (
                (rows := relay.workers())
                and sum(r.get("clients", 0) for r in rows) == 16
                and rows
            ),
            "16 clients joined",
        )
        self.assertTrue(all(r["clients"] > 0 for r in rows), rows)
        for connection in connections:
            connection.send("tick")
        for c in clients:
            self.assertEqual(c.recv(TIMEOUT), "tick")
        self.assertEqual(len(connections), 2)


def _reactorOf(module: str) -> object:
    """
    @return: An object whose class is defined, as far as anyone asks, in
        C{module}.
    """
    return type("Reactor", (), {"__module__": module})()


class ReactorArgumentsTests(SynchronousTestCase):
    """
    Workers run on the kind of reactor worker 0 runs on: C{twistd -r NAME
    wsrelay} chooses it for all of them.
    """

    def test_named(self) -> None:
        """
        A reactor whose class's module a reactor plugin installs is named
        with that plugin's short name; any other reactor with nothing.
        """
        self.assertEqual(
            reactorArguments(_reactorOf("twisted.internet.pollreactor")), ["-r", "poll"]
        )
        self.assertEqual(
            reactorArguments(_reactorOf("wsrelay.reactor")), ["-r", "wsrelay"]
        )
        self.assertEqual(reactorArguments(object()), [])

    def test_workerCommand(self) -> None:
        """
        A worker's C{twistd} gets C{-r NAME} before the C{wsrelay}
        subcommand.
        """
        spawned: list[list[str]] = []
        relay = SimpleNamespace(
            clock=Clock(),
            config=SimpleNamespace(workers=2, path="relay.ini", drainTimeout=1),
            workerDescriptors=lambda index: [1234],
            coverWorker=lambda index, cover: None,
        )

        def spawn(worker: Any, executable: str, args: list[str], **kw: Any) -> None:
            spawned.append(args)

        pool = WorkerPool(
            relay,  # type: ignore[arg-type]
            _reactorOf("twisted.internet.selectreactor"),
            spawn=spawn,
        )
        pool._start(1)
        [args] = spawned
        self.assertEqual(args[args.index("wsrelay") - 2 :][:2], ["-r", "select"])
