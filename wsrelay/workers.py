# -*- test-case-name: tests.test_workers -*-
"""
C{workers = N}: N relay processes on the same listening ports.

The process C{twistd} started is worker 0.  It listens with
C{SO_REUSEPORT}, so that the kernel spreads new connections over every
process listening on the port, and then starts workers 1 to N-1 with
L{WorkerPool}: each is C{twistd wsrelay --worker I:PORTS} on the same
configuration file, listening on the ports worker 0 got (which matters
when the file says port 0).  Each worker is a whole relay with its own
connections, health checks and fan-out upstreams; worker 0 alone serves
the admin listener and the demo backends.

Worker 0 talks to each of the others over pipes.  A worker's log events
come as JSON lines on its standard output and are logged again by worker
0 with C{worker} set; commands (C{status}, C{metrics}, C{reload}, C{act})
go to its standard input as JSON lines, and the answers come back on its
file descriptor 3 (L{WorkerControl}).  When worker 0 goes away, its pipes
close and the others stop; when another worker dies, worker 0 logs it and
starts it again.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet import tcp
from twisted.internet.defer import (
    Deferred,
    DeferredList,
    fail,
    maybeDeferred,
    succeed,
)
from twisted.internet.error import ProcessDone
from twisted.internet.interfaces import IDelayedCall, IListeningPort
from twisted.internet.protocol import ProcessProtocol, Protocol, connectionDone
from twisted.logger import Logger, eventFromJSON, globalLogPublisher
from twisted.python.failure import Failure

if TYPE_CHECKING:
    from wsrelay.operations import RelayStatus

#: Seconds a worker has to answer a command.
ANSWER_TIMEOUT = 5.0

#: Seconds before a worker that died is started again; doubled for each
#: death soon after a start, up to L{RESTART_CAP}.
RESTART_DELAY = 1.0
RESTART_CAP = 30.0

#: A worker that ran this long before dying is restarted after
#: L{RESTART_DELAY} again.
STABLE_AFTER = 30.0

#: Seconds beyond C{drain_timeout} a stopping worker is given before it
#: is killed.
STOP_GRACE = 5.0

#: The longest line read from a worker (a metrics page).
MAX_LINE = 64 * 1024 * 1024


@dataclass(frozen=True)
class WorkerSpec:
    """
    What a worker other than worker 0 is told on its command line.

    @ivar index: Its number, from 1.
    @ivar ports: The port number of each listener, in the order of
        C{listen}.
    """

    index: int
    ports: tuple[int, ...]

    @classmethod
    def parse(cls, text: str) -> WorkerSpec:
        """
        Read C{"INDEX:PORT,PORT..."}.

        @raise ValueError: When C{text} is not that.
        """
        index, _, ports = text.partition(":")
        spec = cls(int(index), tuple(int(p) for p in ports.split(",") if p))
        if spec.index < 1 or not spec.ports:
            raise ValueError(f"not INDEX:PORT,...: {text!r}")
        return spec

    def __str__(self) -> str:
        return f"{self.index}:{','.join(map(str, self.ports))}"


class _ReusePort(tcp.Port):
    """
    A TCP port that other processes may also listen on.
    """

    def createInternetSocket(self) -> socket.socket:
        s: socket.socket = super().createInternetSocket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        return s


class SharedPorts:
    """
    A reactor, to C{serverFromString}, whose TCP listeners (and so its
    C{tcp:}, C{tcp6:} and C{ssl:} endpoints) listen with C{SO_REUSEPORT},
    on C{port} when it is given.  Everything else is the real reactor's.
    """

    def __init__(self, reactor: Any, port: int | None = None) -> None:
        self._reactor = reactor
        self._port = port

    def listenTCP(
        self, port: int, factory: Any, backlog: int = 50, interface: str = ""
    ) -> IListeningPort:
        if self._port is not None:
            port = self._port
        p = _ReusePort(port, factory, backlog, interface, self._reactor)
        p.startListening()
        return p

    def listenSSL(
        self,
        port: int,
        factory: Any,
        contextFactory: Any,
        backlog: int = 50,
        interface: str = "",
    ) -> IListeningPort:
        from twisted.protocols.tls import TLSMemoryBIOFactory

        wrapped = TLSMemoryBIOFactory(contextFactory, False, factory)
        return self.listenTCP(port, wrapped, backlog, interface)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)


def _lines(buffer: bytearray, data: bytes) -> list[bytes]:
    """
    Add C{data} to C{buffer} and take the complete lines out of it.
    """
    buffer += data
    *lines, rest = bytes(buffer).split(b"\n")
    buffer[:] = rest
    if len(buffer) > MAX_LINE:
        raise ValueError("line too long")
    return lines


class WorkerGone(Exception):
    """
    The worker ended, or did not answer in time.
    """


class WorkerProcess(ProcessProtocol):
    """
    Worker 0's end of one other worker's pipes.

    @ivar pid: The worker's process id while it runs.
    """

    def __init__(self, pool: WorkerPool, index: int) -> None:
        self._pool = pool
        self.index = index
        self.pid: int | None = None
        self.ended: Deferred[None] = Deferred()
        self._logs = bytearray()
        self._answers = bytearray()
        self._waiting: dict[int, tuple[Deferred[Any], IDelayedCall]] = {}
        self._next = 0
        self._killed = False

    def connectionMade(self) -> None:
        self.pid = self.transport.pid  # type: ignore[union-attr]

    def ask(self, op: str, **arguments: Any) -> Deferred[Any]:
        """
        Send a command.

        @return: A L{Deferred} firing with the worker's answer, or failing
            with L{WorkerGone} or with the L{RuntimeError} it reported.
        """
        if self.pid is None or self.transport is None:
            return fail(WorkerGone(f"worker {self.index} is not running"))
        self._next += 1
        ident = self._next
        d: Deferred[Any] = Deferred()
        timer = self._pool.clock.callLater(
            ANSWER_TIMEOUT, self._answered, ident, None, "did not answer"
        )
        self._waiting[ident] = (d, timer)
        line = json.dumps({"id": ident, "op": op, **arguments}) + "\n"
        self.transport.write(line.encode("utf-8"))
        return d

    def _answered(self, ident: int, result: Any, error: str | None) -> None:
        waiting = self._waiting.pop(ident, None)
        if waiting is None:
            return
        d, timer = waiting
        if timer.active():
            timer.cancel()
        if error is None:
            d.callback(result)
        elif error == "did not answer":
            d.errback(WorkerGone(f"worker {self.index} {error}"))
        else:
            d.errback(RuntimeError(error))

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if self._killed:
            return
        try:
            if childFD == 1:
                for line in _lines(self._logs, data):
                    self._pool.workerLogged(self.index, line)
            elif childFD == 3:
                for line in _lines(self._answers, data):
                    answer = json.loads(line)
                    self._answered(
                        answer["id"], answer.get("result"), answer.get("error")
                    )
        except (ValueError, KeyError, TypeError) as e:
            self._pool.log.error(
                "worker {worker} wrote garbage on fd {fd}: {error}; stopping it",
                worker=self.index,
                fd=childFD,
                error=e,
            )
            self._killed = True
            self.transport.signalProcess("KILL")  # type: ignore[union-attr]

    def processEnded(self, reason: Failure) -> None:
        self.pid = None
        for ident in list(self._waiting):
            self._answered(ident, None, "did not answer")
        self._pool.workerEnded(self, reason)
        self.ended.callback(None)


class WorkerPool(Service):
    """
    Worker 0's service that starts, watches, restarts and stops the other
    workers, and passes commands to them.

    @ivar workers: The other workers, by index, while running.
    """

    log = Logger()

    def __init__(
        self, relay: RelayStatus, reactor: Any, spawn: Callable[..., Any] | None = None
    ) -> None:
        self._relay = relay
        self._reactor = reactor
        self.clock = relay.clock
        self._spawn = reactor.spawnProcess if spawn is None else spawn
        self.workers: dict[int, WorkerProcess] = {}
        self._ports: tuple[int, ...] = ()
        self._startedAt: dict[int, float] = {}
        self._delays: dict[int, float] = {}
        self._restarts: dict[int, IDelayedCall] = {}
        self.restarted: dict[int, int] = {}

    @property
    def count(self) -> int:
        """
        The number of workers, worker 0 included.
        """
        return self._relay.config.workers

    def startService(self) -> None:
        """
        Start the other workers once worker 0 listens.
        """
        super().startService()

        def listening(ports: list[IListeningPort]) -> None:
            if not self.running:
                return
            self._ports = tuple(p.getHost().port for p in ports)  # type: ignore[attr-defined]
            for index in range(1, self.count):
                self._start(index)

        self._relay.whenListening().addCallbacks(listening, lambda f: None)

    def _start(self, index: int) -> None:
        self._restarts.pop(index, None)
        spec = WorkerSpec(index, self._ports)
        args = [
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "--pidfile=",
            "--nodaemon",
            "--logger=wsrelay.logs.jsonStdout",
            "wsrelay",
            "--config",
            self._relay.config.path,
            "--worker",
            str(spec),
        ]
        worker = WorkerProcess(self, index)
        self.workers[index] = worker
        self._startedAt[index] = self.clock.seconds()
        self._spawn(
            worker,
            sys.executable,
            args,
            env=dict(os.environ),
            childFDs={0: "w", 1: "r", 2: 2, 3: "r"},
        )
        self.log.info(
            "worker {worker} started (pid {pid})", worker=index, pid=worker.pid
        )

    def workerLogged(self, index: int, line: bytes) -> None:
        """
        Log again what a worker logged, marked with its number.
        """
        # jsonFileLogObserver starts each record with a record separator.
        event = eventFromJSON(line.lstrip(b"\x1e").decode("utf-8", "replace"))
        event["worker"] = index
        system = event.get("log_system")
        if system is None:
            level = event.get("log_level")
            system = f"{event.get('log_namespace', '-')}#{getattr(level, 'name', '-')}"
        event["log_system"] = f"worker {index} {system}"
        globalLogPublisher(event)

    def workerEnded(self, worker: WorkerProcess, reason: Failure) -> None:
        """
        Start a worker that ended again, unless the relay is stopping.
        """
        index = worker.index
        if self.workers.get(index) is worker:
            del self.workers[index]
        if not self.running:
            return
        ran = self.clock.seconds() - self._startedAt.get(index, 0.0)
        previous = self._delays.get(index)
        if previous is None or ran >= STABLE_AFTER:
            delay = RESTART_DELAY
        else:
            delay = min(previous * 2, RESTART_CAP)
        self._delays[index] = delay
        how = (
            "exited with status 0"
            if reason.check(ProcessDone)
            else str(reason.getErrorMessage())
        )
        self.log.warn(
            "worker {worker} ended ({how}); starting it again in {delay} s",
            worker=index,
            how=how,
            delay=delay,
        )
        self.restarted[index] = self.restarted.get(index, 0) + 1
        self._restarts[index] = self.clock.callLater(delay, self._start, index)

    def rows(
        self, own: dict[str, Any], answers: Sequence[tuple[int, Any]]
    ) -> list[dict[str, Any]]:
        """
        @return: The rows of C{/status} for every worker (L{workerRows}).
        """
        return workerRows(self, own, answers)

    def ask(self, op: str, **arguments: Any) -> Deferred[list[tuple[int, Any]]]:
        """
        Send a command to every other worker.

        @return: A L{Deferred} firing with C{(index, answer)} for workers
            1 to N-1, in order; the answer is a L{Failure} for a worker
            that is not running, did not answer, or reported an error.
        """
        indices = range(1, self.count)
        waits = []
        for index in indices:
            worker = self.workers.get(index)
            if worker is None:
                waits.append(fail(WorkerGone(f"worker {index} is not running")))
            else:
                waits.append(worker.ask(op, **arguments))
        d = DeferredList(waits, consumeErrors=True)
        return d.addCallback(
            lambda results: [
                (index, answer)
                for index, (_, answer) in zip(indices, results, strict=True)
            ]
        )

    def tell(self, op: str, **arguments: Any) -> Deferred[None]:
        """
        Send a command to every other worker and log the ones that failed.
        """

        def check(answers: list[tuple[int, Any]]) -> None:
            for index, answer in answers:
                if isinstance(answer, Failure):
                    self.log.error(
                        "worker {worker}: {op} failed: {error}",
                        worker=index,
                        op=op,
                        error=answer.getErrorMessage(),
                    )

        return self.ask(op, **arguments).addCallback(check)

    def stopService(self) -> Deferred[None]:
        """
        Stop the other workers as SIGTERM stops a relay; kill those still
        running C{drain_timeout} plus L{STOP_GRACE} seconds later.
        """
        super().stopService()
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts.clear()
        workers = list(self.workers.values())
        if not workers:
            return succeed(None)
        for worker in workers:
            worker.transport.signalProcess("TERM")  # type: ignore[union-attr]

        def kill() -> None:
            for worker in workers:
                if worker.pid is not None:
                    self.log.warn(
                        "worker {worker} did not stop: killing it", worker=worker.index
                    )
                    worker.transport.signalProcess("KILL")  # type: ignore[union-attr]

        killer = self.clock.callLater(
            self._relay.config.drainTimeout + STOP_GRACE, kill
        )

        def done(_: object) -> None:
            if killer.active():
                killer.cancel()

        return DeferredList([w.ended for w in workers]).addCallback(done)


class WorkerControl(Protocol):
    """
    A worker's end of the command pipes: reads JSON commands on its
    standard input, answers on file descriptor 3, and stops the relay when
    worker 0 goes away (its standard input closes).
    """

    log = Logger()

    def __init__(self, relay: RelayStatus, reactor: Any) -> None:
        self._relay = relay
        self._reactor = reactor
        self._buffer = bytearray()

    def dataReceived(self, data: bytes) -> None:
        try:
            lines = _lines(self._buffer, data)
        except ValueError:
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        for line in lines:
            command = json.loads(line)
            maybeDeferred(self._run, command).addBoth(self._answer, command["id"])

    def _run(self, command: dict[str, Any]) -> Any:
        from wsrelay import admin

        op = command["op"]
        relay = self._relay
        if op == "status":
            return admin.status(relay)
        if op == "metrics":
            return admin.metricsText(relay)
        if op == "reload":
            return relay.operations.reload().addCallback(lambda _: "reloaded")
        if op == "act":
            relay.operations.setBackendState(
                command["route"], command["backend"], command["action"]
            )
            return "done"
        raise ValueError(f"unknown command {op!r}")

    def _answer(self, result: Any, ident: int) -> None:
        if isinstance(result, Failure):
            answer = {"id": ident, "error": str(result.value)}
        else:
            answer = {"id": ident, "result": result}
        if self.transport is not None:
            line = json.dumps(answer) + "\n"
            self.transport.write(line.encode("utf-8"))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._reactor.running:
            self.log.info("worker 0 went away: stopping")
            self._reactor.stop()


class ControlService(Service):
    """
    Listens for commands from worker 0 while a worker runs.
    """

    def __init__(self, relay: RelayStatus, reactor: Any) -> None:
        self._relay = relay
        self._reactor = reactor

    def startService(self) -> None:
        from twisted.internet._posixstdio import StandardIO

        super().startService()
        StandardIO(
            WorkerControl(self._relay, self._reactor),
            stdin=0,
            stdout=3,
            reactor=self._reactor,
        )


def workerRows(
    pool: WorkerPool, own: dict[str, Any], answers: Sequence[tuple[int, Any]]
) -> list[dict[str, Any]]:
    """
    @return: One row per worker for C{/status}: its number, process id,
        client connections and handshakes, or why it did not answer.
    """
    rows = [_row(0, os.getpid(), own)]
    for index, answer in answers:
        worker = pool.workers.get(index)
        pid = None if worker is None else worker.pid
        if isinstance(answer, Failure):
            rows.append(
                {"worker": index, "pid": pid, "error": answer.getErrorMessage()}
            )
        else:
            rows.append(_row(index, pid, answer))
        rows[-1]["restarts"] = pool.restarted.get(index, 0)
    return rows


def _row(index: int, pid: int | None, status: dict[str, Any]) -> dict[str, Any]:
    return {
        "worker": index,
        "pid": pid,
        "clients": status["clients"],
        "handshakes": status["handshakes"]["count"],
        "uptime": status["uptime"],
    }
