# -*- test-case-name: tests.test_workers_channel,tests.test_workers -*-
"""
Worker 0's side: L{WorkerPool} starts, watches, restarts and stops the
other workers, relays their logs and sends them commands
(L{wsrelay.workers.commands}) over AMP.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, TimeoutError, fail, succeed
from twisted.internet.error import ConnectionDone, ProcessDone
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IListeningPort,
    IProcessTransport,
    IReactorTime,
    ITransport,
)
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger, eventFromJSON, globalLogPublisher
from twisted.protocols.amp import BinaryBoxProtocol, BoxDispatcher, CommandLocator
from twisted.python.failure import Failure
from zope.interface import implementer

from wsrelay.workers.commands import Act, Metrics, Reload, Status
from wsrelay.workers.spec import WorkerSpec

if TYPE_CHECKING:
    from wsrelay.config import RelayConfig

_T = TypeVar("_T")

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

#: The longest log line read from a worker.
MAX_LINE = 64 * 1024 * 1024


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


class Supervised(Protocol):
    """
    What L{WorkerPool} uses of the relay it belongs to (worker 0's).
    """

    @property
    def clock(self) -> IReactorTime:
        """
        The relay's clock.
        """

    @property
    def config(self) -> RelayConfig:
        """
        The configuration in force: C{workers}, C{path} and
        C{drainTimeout} are read.
        """

    def whenListening(self) -> Deferred[list[IListeningPort]]:
        """
        @return: A L{Deferred} firing with the relay's listening ports.
        """


@implementer(ITransport)
class CommandPipe:
    """
    The transport of worker 0's AMP connection to another worker: boxes
    are written to the worker's standard input (and answers are read from
    its file descriptor 3 by L{WorkerProcess}).  AMP gives up on a
    connection whose peer wrote what it cannot parse: then the worker is
    stopped, as one that wrote garbage.
    """

    def __init__(self, worker: WorkerProcess, process: IProcessTransport) -> None:
        self._worker = worker
        self._process = process

    def write(self, data: bytes) -> None:
        self._process.writeToChild(0, data)

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self._process.writeToChild(0, b"".join(data))

    def loseConnection(self) -> None:
        self._worker.wroteGarbage(3, "AMP gave up on its answers")

    def getPeer(self) -> IAddress:
        return self._process.getPeer()

    def getHost(self) -> IAddress:
        return self._process.getHost()


class WorkerProcess(ProcessProtocol):
    """
    Worker 0's end of one other worker's pipes: its log lines (standard
    output) and an AMP connection (commands to its standard input, answers
    from its file descriptor 3).

    @ivar pid: The worker's process id while it runs.
    """

    def __init__(self, pool: WorkerPool, index: int) -> None:
        self._pool = pool
        self.index = index
        self.pid: int | None = None
        self.ended: Deferred[None] = Deferred()
        self._logs = bytearray()
        self._commands = BoxDispatcher(CommandLocator())
        self._answers = BinaryBoxProtocol(self._commands)
        self._killed = False

    def connectionMade(self) -> None:
        process: IProcessTransport = self.transport  # type: ignore[assignment]
        self.pid = process.pid
        self._answers.makeConnection(CommandPipe(self, process))

    def status(self) -> Deferred[dict[str, Any]]:
        """
        @return: A L{Deferred} firing with the worker's whole status, or
            failing as L{call} does.
        """
        return self.call(Status).addCallback(lambda answer: answer["status"])

    def metrics(self) -> Deferred[str]:
        """
        @return: A L{Deferred} firing with the worker's metrics page, or
            failing as L{call} does.
        """
        return self.call(Metrics).addCallback(lambda answer: answer["text"])

    def reload(self) -> Deferred[None]:
        """
        Tell the worker to reload its configuration file.

        @return: A L{Deferred} firing once it did, or failing as L{call}
            does.
        """
        return self.call(Reload).addCallback(lambda _: None)

    def act(self, route: str, backend: str, action: str) -> Deferred[None]:
        """
        Tell the worker to drain, enable or disable a backend.

        @return: A L{Deferred} firing once it did, or failing as L{call}
            does.
        """
        d = self.call(Act, route=route, backend=backend, action=action)
        return d.addCallback(lambda _: None)

    def call(self, command: type[Any], **arguments: Any) -> Deferred[dict[str, Any]]:
        """
        Send a command.

        @return: A L{Deferred} firing with the worker's answer, or failing
            with L{WorkerGone} (the worker is not running, ended or did not
            answer within L{ANSWER_TIMEOUT} seconds) or with the error of
            C{command} it answered.
        """
        if self.pid is None or self.transport is None:
            return fail(WorkerGone(f"worker {self.index} is not running"))
        asked: Deferred[dict[str, Any]] = self._commands.callRemote(
            command, **arguments
        )
        asked.addTimeout(ANSWER_TIMEOUT, self._pool.clock)
        # AMP logs, and drops the connection, when the Deferred it fires
        # ends in a failure: hand the outcome over to another one.
        answered: Deferred[dict[str, Any]] = Deferred()
        asked.addCallbacks(answered.callback, self._failed, errbackArgs=(answered,))
        return answered

    def _failed(self, reason: Failure, answered: Deferred[Any]) -> None:
        if reason.check(TimeoutError, ConnectionDone):
            reason = Failure(WorkerGone(f"worker {self.index} did not answer"))
        answered.errback(reason)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if self._killed:
            return
        try:
            if childFD == 1:
                for line in _lines(self._logs, data):
                    self._pool.workerLogged(self.index, line)
            elif childFD == 3:
                self._answers.dataReceived(data)
        except Exception as e:
            self.wroteGarbage(childFD, str(e))

    def wroteGarbage(self, childFD: int, error: str) -> None:
        """
        Log that the worker wrote what cannot be read on C{childFD}, and
        kill it.
        """
        if self._killed:
            return
        self._pool.log.error(
            "worker {worker} wrote garbage on fd {fd}: {error}; stopping it",
            worker=self.index,
            fd=childFD,
            error=error,
        )
        self._killed = True
        self.transport.signalProcess("KILL")  # type: ignore[union-attr]

    def processEnded(self, reason: Failure) -> None:
        self.pid = None
        self._answers.connectionLost(Failure(ConnectionDone()))
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
        self, relay: Supervised, reactor: Any, spawn: Callable[..., Any] | None = None
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

    def status(self) -> Deferred[list[tuple[int, dict[str, Any] | Failure]]]:
        """
        Ask every other worker for its whole status.

        @return: A L{Deferred} firing as L{each}'s.
        """
        return self.each(lambda worker: worker.status())

    def metrics(self) -> Deferred[list[tuple[int, str | Failure]]]:
        """
        Ask every other worker for its metrics page.

        @return: A L{Deferred} firing as L{each}'s.
        """
        return self.each(lambda worker: worker.metrics())

    def reload(self) -> Deferred[None]:
        """
        Tell every other worker to reload; log the ones that failed.
        """
        return self._tell("reload", lambda worker: worker.reload())

    def act(self, route: str, backend: str, action: str) -> Deferred[None]:
        """
        Tell every other worker to drain, enable or disable a backend; log
        the ones that failed.
        """
        return self._tell("act", lambda worker: worker.act(route, backend, action))

    def each(
        self, call: Callable[[WorkerProcess], Deferred[_T]]
    ) -> Deferred[list[tuple[int, _T | Failure]]]:
        """
        Send a command to every other worker.

        @param call: Sends the command to one worker.
        @return: A L{Deferred} firing with C{(index, answer)} for workers
            1 to N-1, in order; the answer is a L{Failure} for a worker
            that is not running, did not answer, or reported an error.
        """
        indices = range(1, self.count)
        waits: list[Deferred[_T]] = []
        for index in indices:
            worker = self.workers.get(index)
            if worker is None:
                waits.append(fail(WorkerGone(f"worker {index} is not running")))
            else:
                waits.append(call(worker))
        d = DeferredList(waits, consumeErrors=True)
        return d.addCallback(
            lambda results: [
                (index, answer)
                for index, (_, answer) in zip(indices, results, strict=True)
            ]
        )

    def _tell(
        self, op: str, call: Callable[[WorkerProcess], Deferred[None]]
    ) -> Deferred[None]:
        """
        Send a command to every other worker and log the ones that failed.
        """

        def check(answers: list[tuple[int, None | Failure]]) -> None:
            for index, answer in answers:
                if isinstance(answer, Failure):
                    self.log.error(
                        "worker {worker}: {op} failed: {error}",
                        worker=index,
                        op=op,
                        error=answer.getErrorMessage(),
                    )

        return self.each(call).addCallback(check)

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
