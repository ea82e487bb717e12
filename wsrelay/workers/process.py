# -*- test-case-name: tests.test_workers_channel,tests.test_workers -*-
"""
Worker 0's end of one other worker's pipes (L{WorkerProcess}): the
worker's log lines on its standard output, and the AMP connection that
carries commands to its standard input and answers back from its file
descriptor 3.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IProcessTransport,
    IReactorTime,
    ITransport,
)
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.protocols.amp import BoxDispatcher, CommandLocator
from twisted.python.failure import Failure
from zope.interface import implementer

from wsrelay.workers.commands import Act, Boxes, Metrics, Reload, Status

#: Seconds a worker has to answer a command.
ANSWER_TIMEOUT = 5.0

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


class Watcher(Protocol):
    """
    What a L{WorkerProcess} tells of its worker (L{WorkerPool}).
    """

    @property
    def clock(self) -> IReactorTime:
        """
        The clock of answer timeouts.
        """

    @property
    def log(self) -> Logger:
        """
        Where a worker that writes garbage is logged.
        """

    def workerLogged(self, index: int, line: bytes) -> None:
        """
        Worker C{index} logged the JSON event C{line}.
        """

    def workerEnded(self, worker: WorkerProcess, reason: Failure) -> None:
        """
        C{worker}'s process ended.
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

    def __init__(self, pool: Watcher, index: int) -> None:
        self._pool = pool
        self.index = index
        self.pid: int | None = None
        self.ended: Deferred[None] = Deferred()
        self._logs = bytearray()
        self._commands = BoxDispatcher(CommandLocator())
        self._answers = Boxes(self._commands)
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
        return self.call(Status, "status")

    def metrics(self) -> Deferred[str]:
        """
        @return: A L{Deferred} firing with the worker's metrics page, or
            failing as L{call} does.
        """
        return self.call(Metrics, "text")

    def reload(self) -> Deferred[None]:
        """
        Tell the worker to reload its configuration file.

        @return: A L{Deferred} firing once it did, or failing as L{call}
            does.
        """
        return self.call(Reload)

    def act(self, route: str, backend: str, action: str) -> Deferred[None]:
        """
        Tell the worker to drain, enable or disable a backend.

        @return: A L{Deferred} firing once it did, or failing as L{call}
            does.
        """
        return self.call(Act, route=route, backend=backend, action=action)

    def call(
        self, command: type[Any], answer: str | None = None, **arguments: Any
    ) -> Deferred[Any]:
        """
        Send a command.

        @param answer: The name of the answer's value to fire with, or
            L{None} to fire with L{None}.
        @return: A L{Deferred} firing with the worker's answer, or failing
            with L{WorkerGone} (the worker is not running, ended or did not
            answer within L{ANSWER_TIMEOUT} seconds) or with the error of
            C{command} it answered.
        """
        if self.pid is None or self.transport is None:
            return fail(WorkerGone(f"worker {self.index} is not running"))
        asked = self._commands.callRemote(command, **arguments)
        # AMP logs, and drops the connection, when the Deferred it fires
        # ends in a failure: hand the outcome over to another one.
        answered: Deferred[Any] = Deferred()
        timer = self._pool.clock.callLater(ANSWER_TIMEOUT, asked.cancel)
        asked.addCallbacks(
            self._answered,
            self._failed,
            (answered, timer, answer),
            None,
            (answered, timer),
        )
        return answered

    @staticmethod
    def _answered(
        box: dict[str, Any],
        answered: Deferred[Any],
        timer: IDelayedCall,
        answer: str | None,
    ) -> None:
        timer.cancel()
        answered.callback(None if answer is None else box[answer])

    def _failed(
        self, reason: Failure, answered: Deferred[Any], timer: IDelayedCall
    ) -> None:
        if timer.active():
            timer.cancel()
        if reason.check(CancelledError, ConnectionDone):
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
