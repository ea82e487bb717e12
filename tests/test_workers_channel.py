# -*- test-case-name: tests.test_workers_channel -*-
"""
The control channel between worker 0 and the other workers (AMP over the
worker's pipes), in memory: L{WorkerPool}'s L{WorkerProcess} on one side,
a worker's L{WorkerControl} on the other, joined by a fake process
transport and pumped by hand, with a L{Clock} for the answer timeout.
"""

from __future__ import annotations

import ast
import os
import signal
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ProcessTerminated
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.protocols.amp import MAX_VALUE_LENGTH, AmpBox
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from wsrelay.admin import WorkersView, workerRows
from wsrelay.config import ConfigError
from wsrelay.workers import (
    ANSWER_TIMEOUT,
    WorkerControl,
    WorkerGone,
    WorkerPool,
    WorkerProcess,
)
from wsrelay.workers.commands import (
    Boxes,
    CommandFailed,
    ConfigRejected,
    NoSuchBackend,
)

WORKERS = Path(__file__).resolve().parent.parent / "wsrelay" / "workers"


class FakeAnswers:
    """
    The L{wsrelay.workers.Answers} of a worker, recording what it is told.

    @ivar statusPage: What C{status} returns, or an exception it raises.
    @ivar reloaded: What C{reload} returns.
    @ivar acts: Each C{act}'s arguments.
    """

    def __init__(self) -> None:
        self.statusPage: dict[str, Any] | Exception = {
            "clients": 3,
            "handshakes": {"count": 7},
            "uptime": 12.5,
        }
        self.metricsPage = "wsrelay_up 1.0\n"
        self.reloaded: Deferred[None] = succeed(None)
        self.reloads = 0
        self.acts: list[tuple[str, str, str]] = []

    def status(self) -> dict[str, Any]:
        if isinstance(self.statusPage, Exception):
            raise self.statusPage
        return self.statusPage

    def metrics(self) -> str:
        return self.metricsPage

    def reload(self) -> Deferred[None]:
        self.reloads += 1
        return self.reloaded

    def act(self, route: str, backend: str, action: str) -> None:
        if backend == "nobody":
            raise NoSuchBackend(f"route {route} has no backend {backend}")
        self.acts.append((route, backend, action))


class FakeProcess:
    """
    A worker process's transport as worker 0 sees it: what is written to
    the child's standard input is kept for L{Channel.pump}.
    """

    pid = 4242

    def __init__(self) -> None:
        self.stdin = b""
        self.signals: list[str | int] = []

    def writeToChild(self, childFD: int, data: bytes) -> None:
        assert childFD == 0, childFD
        self.stdin += data

    def signalProcess(self, signal: str | int) -> None:
        self.signals.append(signal)

    def getPeer(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 1)

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 2)


class FakeReactor:
    """
    The reactor of a worker, as L{WorkerControl} sees it.
    """

    running = True
    stopped = 0

    def stop(self) -> None:
        self.running = False
        self.stopped += 1


class Channel:
    """
    A L{WorkerPool} of C{count} workers whose worker 1 runs in memory: its
    L{WorkerControl} answers from a L{FakeAnswers}.
    """

    def __init__(self, count: int = 2) -> None:
        self.clock = Clock()
        self.relay = SimpleNamespace(
            clock=self.clock,
            config=SimpleNamespace(workers=count, path="relay.ini", drainTimeout=1),
            whenListening=lambda: Deferred(),
            workerDescriptors=lambda index: [1234],
            coverWorker=lambda index, cover: self.covered.append((index, cover)),
        )
        self.covered: list[tuple[int, bool]] = []
        self.pool = WorkerPool(self.relay, None, spawn=self._spawn)  # type: ignore[arg-type]
        self.pool.running = True
        self.answers = FakeAnswers()
        self.reactor = FakeReactor()
        self.control = WorkerControl(self.answers, self.reactor)  # type: ignore[arg-type]
        self.controlTransport = StringTransport()
        self.control.makeConnection(self.controlTransport)
        self.process = FakeProcess()
        self.pool._start(1)
        self.worker = self.pool.workers[1]

    def _spawn(self, worker: WorkerProcess, *args: Any, **kwargs: Any) -> None:
        worker.makeConnection(self.process)  # type: ignore[arg-type]

    def pump(self) -> None:
        """
        Carry bytes both ways until none are left.
        """
        while self.process.stdin or self.controlTransport.value():
            toWorker, self.process.stdin = self.process.stdin, b""
            if toWorker:
                self.control.dataReceived(toWorker)
            toPool = self.controlTransport.value()
            self.controlTransport.clear()
            if toPool:
                self.worker.childDataReceived(3, toPool)


class ChannelTests(SynchronousTestCase):
    """
    Worker 0's commands reach a worker and its answers come back, typed,
    whatever their size; failures come back as errors with their message.
    """

    def setUp(self) -> None:
        self.channel = Channel()

    def answer(self, d: Deferred[Any]) -> Any:
        """
        @return: What C{d} fires with once the channel is pumped.
        """
        self.assertNoResult(d)
        self.channel.pump()
        return self.successResultOf(d)

    def test_status(self) -> None:
        """
        L{WorkerPool.status} gives each other worker's status, as the worker
        made it.
        """
        answers = self.answer(self.channel.pool.status())
        self.assertEqual(answers, [(1, self.channel.answers.statusPage)])

    def test_largeAnswers(self) -> None:
        """
        A status or metrics page beyond AMP's 64 KiB value limit comes back
        whole (it did as one JSON line too).
        """
        big = {"clients": 1, "routes": ["r\u00e9" * 50_000, "x" * 100_000]}
        self.channel.answers.statusPage = big
        self.channel.answers.metricsPage = "m\u00e9tric 1.0\n" * 20_000
        self.assertEqual(self.answer(self.channel.worker.status()), big)
        self.assertEqual(
            self.answer(self.channel.pool.metrics()),
            [(1, self.channel.answers.metricsPage)],
        )

    def test_act(self) -> None:
        """
        L{WorkerPool.act} passes the route, backend and action to the
        worker; an unknown backend fails L{WorkerProcess.act} with
        L{NoSuchBackend} and its message, and L{WorkerPool.act} logs it.
        """
        self.assertIsNone(self.answer(self.channel.pool.act("a", "one", "drain")))
        self.assertEqual(self.channel.answers.acts, [("a", "one", "drain")])
        d = self.channel.worker.act("a", "nobody", "drain")
        self.channel.pump()
        f = self.failureResultOf(d, NoSuchBackend)
        self.assertEqual(f.getErrorMessage(), "route a has no backend nobody")
        with capturedLogs() as events:
            self.answer(self.channel.pool.act("a", "nobody", "drain"))
        self.assertEqual(
            [(e["worker"], e["op"], e["error"]) for e in events],
            [(1, "act", "route a has no backend nobody")],
        )

    def test_reload(self) -> None:
        """
        L{WorkerPool.reload} answers once the worker reloaded; a rejected
        configuration fails L{WorkerProcess.reload} with L{ConfigRejected}
        and the worker's message.
        """
        self.assertIsNone(self.answer(self.channel.pool.reload()))
        self.assertEqual(self.channel.answers.reloads, 1)
        self.channel.answers.reloaded = fail(ConfigRejected("relay.ini: bad"))
        d = self.channel.worker.reload()
        self.channel.pump()
        f = self.failureResultOf(d, ConfigRejected)
        self.assertEqual(f.getErrorMessage(), "relay.ini: bad")

    def test_unexpectedError(self) -> None:
        """
        Any other error of the worker's comes back as L{CommandFailed} with
        its message, and the channel stays open for the next command.
        """
        self.channel.answers.statusPage = RuntimeError("no status today")
        d = self.channel.worker.status()
        self.channel.pump()
        f = self.failureResultOf(d, CommandFailed)
        self.assertEqual(f.getErrorMessage(), "no status today")
        self.channel.answers.statusPage = {"clients": 0}
        self.assertEqual(self.answer(self.channel.worker.status()), {"clients": 0})
        self.assertEqual(self.channel.process.signals, [])
        self.assertEqual(self.channel.reactor.stopped, 0)

    def test_noAnswer(self) -> None:
        """
        A worker that does not answer within L{ANSWER_TIMEOUT} seconds is
        reported as gone; its late answer is dropped quietly, and the
        channel still works.
        """
        d = self.channel.pool.status()
        self.channel.clock.advance(ANSWER_TIMEOUT)
        [(index, answer)] = self.successResultOf(d)
        self.assertEqual(index, 1)
        self.assertIsInstance(answer, Failure)
        answer.trap(WorkerGone)
        self.assertEqual(answer.getErrorMessage(), "worker 1 did not answer")
        with capturedLogs() as events:
            self.channel.pump()
        self.assertEqual(events, [])
        self.assertEqual(self.channel.process.signals, [])
        self.assertEqual(self.answer(self.channel.worker.metrics()), "wsrelay_up 1.0\n")

    def test_workerEnded(self) -> None:
        """
        A command waiting when its worker ends fails with L{WorkerGone};
        one sent afterwards fails at once.  Worker 0 serves the worker's
        listening sockets from then on.
        """
        d = self.channel.worker.status()
        self.channel.worker.processEnded(Failure(ProcessTerminated(signal=9)))
        f = self.failureResultOf(d, WorkerGone)
        self.assertEqual(f.getErrorMessage(), "worker 1 did not answer")
        self.assertNotIn(1, self.channel.pool.workers)
        # Worker 0 serves worker 1's sockets until it runs again.
        self.assertEqual(self.channel.covered, [(1, False), (1, True)])
        f = self.failureResultOf(self.channel.worker.status(), WorkerGone)
        self.assertEqual(f.getErrorMessage(), "worker 1 is not running")

    def test_notRunning(self) -> None:
        """
        A worker that is not running answers with L{WorkerGone} in
        L{WorkerPool.status}.
        """
        channel = Channel(count=3)
        d = channel.pool.status()
        channel.pump()
        [(one, status), (two, gone)] = self.successResultOf(d)
        self.assertEqual((one, status), (1, channel.answers.statusPage))
        self.assertEqual(two, 2)
        gone.trap(WorkerGone)
        self.assertEqual(gone.getErrorMessage(), "worker 2 is not running")

    def test_stopSignals(self) -> None:
        """
        Worker 0 stops the others with SIGTERM, or with SIGUSR2 (finish the
        handshakes under way first) when another relay took over.
        """
        self.channel.pool.stopService()
        self.assertEqual(self.channel.process.signals, ["TERM"])
        channel = Channel()
        channel.pool.handingOff = True
        channel.pool.stopService()
        self.assertEqual(channel.process.signals, [signal.SIGUSR2])

    def test_garbage(self) -> None:
        """
        A worker that writes what AMP cannot read on its answer pipe is
        logged and killed.
        """
        with capturedLogs() as events:
            self.channel.worker.childDataReceived(3, b"\x01\x00" + b"k" * 256)
        self.assertEqual(self.channel.process.signals, ["KILL"])
        self.assertEqual([(e["worker"], e["fd"]) for e in events], [(1, 3)])

    def test_boxesInPieces(self) -> None:
        """
        The channel's box parser (L{Boxes}) reads boxes that arrive a byte
        at a time, several in one read, and one ending exactly on a
        chunk's boundary (a value of L{MAX_VALUE_LENGTH} bytes, then the
        next chunk), as AMP's own parser does.
        """
        boxes: list[dict[bytes, bytes]] = []
        parser = Boxes(SimpleNamespace(ampBoxReceived=boxes.append))
        sent = [
            AmpBox({b"_command": b"Status", b"_ask": b"1"}),
            AmpBox(),
            AmpBox({b"a": b"x" * MAX_VALUE_LENGTH, b"b": b""}),
        ]
        wire = b"".join(box.serialize() for box in sent)
        for i in range(len(wire)):
            parser.dataReceived(wire[i : i + 1])
        parser.dataReceived(wire + wire[:5])
        parser.dataReceived(wire[5:])
        self.assertEqual(boxes, sent * 3)
        page = {"big": "y" * (2 * MAX_VALUE_LENGTH)}
        self.channel.answers.statusPage = page
        self.assertEqual(self.answer(self.channel.worker.status()), page)
        page = {"edge": "z" * (MAX_VALUE_LENGTH - len('{"edge": ""}'))}
        self.channel.answers.statusPage = page
        self.assertEqual(self.answer(self.channel.worker.status()), page)

    def test_largeBoxParsedOnce(self) -> None:
        """
        L{Boxes} keeps the parsed keys and values of a box that arrives in
        many reads, and only the incomplete key or value as bytes: a large
        answer is not parsed again on each read.
        """
        boxes: list[dict[bytes, bytes]] = []
        parser = Boxes(SimpleNamespace(ampBoxReceived=boxes.append))
        sent = AmpBox({b"k%d" % i: b"v" * MAX_VALUE_LENGTH for i in range(64)})
        wire = sent.serialize()
        kept = 0
        for i in range(0, len(wire), 8192):
            parser.dataReceived(wire[i : i + 8192])
            kept = max(kept, len(parser._unparsed))
        self.assertEqual(boxes, [sent])
        self.assertLess(kept, MAX_VALUE_LENGTH + 8192)

    def test_nothingAfterTooLongKey(self) -> None:
        """
        After a key over AMP's limit, L{Boxes} closes the connection (as
        AMP does) and parses nothing more, in that read or later ones.
        """
        boxes: list[dict[bytes, bytes]] = []
        parser = Boxes(SimpleNamespace(ampBoxReceived=boxes.append))
        transport = StringTransport()
        parser.transport = transport
        box = AmpBox({b"a": b"1"}).serialize()
        parser.dataReceived(b"\x01\x00" + b"k" * 256 + box)
        parser.dataReceived(box)
        self.assertEqual(boxes, [])
        self.assertTrue(transport.disconnecting)

    def test_roundTripCalls(self) -> None:
        """
        Carrying a status command and its answer through both ends makes
        at most 90 Python calls (counted with C{sys.setprofile}, so that a
        noisy machine does not matter): 82 with the channel's own box
        parser and synchronous responders, 118 with AMP's parser and a
        L{Deferred} per responder (C{bench/workerchannel.py --memory}
        times the whole round trip).
        """

        calls = []

        def count(frame: object, event: str, arg: object) -> None:
            if event == "call":
                calls.append(event)

        self.answer(self.channel.worker.status())
        d = self.channel.worker.status()
        sys.setprofile(count)
        try:
            self.channel.pump()
        finally:
            sys.setprofile(None)
        self.successResultOf(d)
        self.assertLessEqual(len(calls), 90)

    def test_workerZeroGone(self) -> None:
        """
        A worker stops its relay when worker 0 goes away (its command pipe
        closes).
        """
        self.channel.control.connectionLost(Failure(ConnectionError()))
        self.assertEqual(self.channel.reactor.stopped, 1)


class RelayAnswersTests(SynchronousTestCase):
    """
    L{wsrelay.workers.RelayAnswers} maps the relay's errors to the
    commands' errors.
    """

    def test_rejectedReload(self) -> None:
        """
        A reload the relay rejects with a L{ConfigError} fails with
        L{ConfigRejected} and the same message.
        """
        from wsrelay.workers import RelayAnswers

        error = ConfigError("relay.ini", "bad value", "relay", "workers")
        relay = SimpleNamespace(operations=SimpleNamespace(reload=lambda: fail(error)))
        answers = RelayAnswers(relay, dict, str)  # type: ignore[arg-type]
        f = self.failureResultOf(answers.reload(), ConfigRejected)
        self.assertEqual(f.getErrorMessage(), str(error))

    def test_unknownBackend(self) -> None:
        """
        An action on an unknown backend raises L{NoSuchBackend} with the
        relay's message.
        """
        from wsrelay.workers import RelayAnswers

        def setBackendState(route: str, backend: str, action: str) -> None:
            raise KeyError(f"no backend {backend}")

        relay = SimpleNamespace(
            operations=SimpleNamespace(setBackendState=setBackendState)
        )
        answers = RelayAnswers(relay, dict, str)  # type: ignore[arg-type]
        e = self.assertRaises(NoSuchBackend, answers.act, "a", "b", "drain")
        self.assertEqual(str(e), str(KeyError("no backend b")))


class RowsTests(SynchronousTestCase):
    """
    The C{workers} rows of C{/status}, from the pool and the answers.
    """

    def test_rows(self) -> None:
        """
        Worker 0's row from its own status, then one per other worker: its
        status, or the error of one that did not answer; each with its
        restarts.
        """
        channel = Channel(count=3)
        channel.pool.restarted[1] = 2
        own = {"clients": 5, "handshakes": {"count": 9}, "uptime": 1.0}
        rows = workerRows(
            WorkersView(channel.pool),
            own,
            [
                (1, {"clients": 3, "handshakes": {"count": 7}, "uptime": 2.0}),
                (2, Failure(WorkerGone("worker 2 is not running"))),
            ],
        )
        self.assertEqual(
            rows,
            [
                {
                    "worker": 0,
                    "pid": os.getpid(),
                    "clients": 5,
                    "handshakes": 9,
                    "uptime": 1.0,
                },
                {
                    "worker": 1,
                    "pid": FakeProcess.pid,
                    "clients": 3,
                    "handshakes": 7,
                    "uptime": 2.0,
                    "restarts": 2,
                },
                {
                    "worker": 2,
                    "pid": None,
                    "error": "worker 2 is not running",
                    "restarts": 0,
                },
            ],
        )


class ImportTests(SynchronousTestCase):
    """
    The workers package does not import the admin API, which imports it
    (for the rows): no import cycle, not even inside a function.
    """

    def test_noAdminImport(self) -> None:
        """
        No module of L{wsrelay.workers} imports L{wsrelay.admin}.
        """
        imported = []
        paths = sorted(WORKERS.glob("*.py")) or [WORKERS.with_suffix(".py")]
        for path in paths:
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module is not None:
                    names = [node.module] + [
                        f"{node.module}.{a.name}" for a in node.names
                    ]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                else:
                    continue
                imported += [(path.name, n) for n in names if "wsrelay.admin" in n]
        self.assertEqual(imported, [])
