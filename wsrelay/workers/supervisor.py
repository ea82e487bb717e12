# -*- test-case-name: tests.test_workers_channel,tests.test_workers -*-
"""
Worker 0's side: L{WorkerPool} starts, watches, restarts and stops the
other workers, and sends them commands (L{wsrelay.workers.commands}), each
through its L{WorkerProcess}.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from twisted.application.reactors import IReactorInstaller
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.error import ProcessDone
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IReactorTime
from twisted.logger import Logger, eventFromJSON, globalLogPublisher
from twisted.plugin import getPlugins
from twisted.python.failure import Failure

from wsrelay.workers.process import WorkerGone, WorkerProcess
from wsrelay.workers.spec import WorkerSpec

if TYPE_CHECKING:
    from wsrelay.config import RelayConfig

_T = TypeVar("_T")

#: Seconds before a worker that died is started again; doubled for each
#: death soon after a start, up to L{RESTART_CAP}.
RESTART_DELAY = 1.0
RESTART_CAP = 30.0

#: A worker that ran this long before dying is restarted after
#: L{RESTART_DELAY} again.
STABLE_AFTER = 30.0

#: A worker's first listening socket's descriptor: 0 to 3 are its pipes.
FIRST_FD = 4

#: Seconds a new relay's workers have to start when it takes over.
START_TIMEOUT = 60.0

#: Seconds between asking the workers whether they run.
START_POLL = 0.1

#: Seconds beyond C{drain_timeout} a stopping worker is given before it
#: is killed.
STOP_GRACE = 5.0


def reactorArguments(reactor: object) -> list[str]:
    """
    @return: The arguments that make a worker's C{twistd} run on the kind
        of reactor C{reactor} is (C{-r NAME}, the reactor plugin whose
        module defines its class), so that C{twistd -r NAME wsrelay} runs
        every worker on it; none for a reactor no plugin names.
    """
    module = type(reactor).__module__
    for installer in getPlugins(IReactorInstaller):
        if getattr(installer, "moduleName", None) == module:
            return ["-r", installer.shortName]
    return []


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

    def workerDescriptors(self, index: int) -> list[int]:
        """
        @return: The descriptors of the listening sockets worker C{index}
            serves, one per listener.
        """

    def coverWorker(self, index: int, cover: bool) -> None:
        """
        Serve worker C{index}'s listening sockets in worker 0 (while it is
        not running), or stop.
        """


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
        self._startedAt: dict[int, float] = {}
        self._delays: dict[int, float] = {}
        self._restarts: dict[int, IDelayedCall] = {}
        self.restarted: dict[int, int] = {}
        #: Whether the relay stops because another took over: the workers
        #: are then told with SIGUSR2 to finish their handshakes first.
        self.handingOff = False

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
            for index in range(1, self.count):
                self._start(index)

        self._relay.whenListening().addCallbacks(listening, lambda f: None)

    def _start(self, index: int) -> None:
        self._restarts.pop(index, None)
        self._relay.coverWorker(index, False)
        # The worker's listening sockets from descriptor 4 on.
        fds = self._relay.workerDescriptors(index)
        spec = WorkerSpec(index, tuple(range(FIRST_FD, FIRST_FD + len(fds))))
        childFDs: dict[int, int | str] = {0: "w", 1: "r", 2: 2, 3: "r"}
        childFDs.update(enumerate(fds, FIRST_FD))
        args = [
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "--pidfile=",
            "--nodaemon",
            "--logger=wsrelay.logs.jsonStdout",
            *reactorArguments(self._reactor),
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
            childFDs=childFDs,
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
        # Until it runs again, worker 0 accepts on its sockets.
        self._relay.coverWorker(index, True)
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

    def whenRunning(self) -> Deferred[None]:
        """
        @return: A L{Deferred} that fires once every other worker answers a
            command (it then serves its listeners), or fails with
            L{WorkerGone} after L{START_TIMEOUT} seconds.
        """
        return Deferred.fromCoroutine(self._waitRunning())

    async def _waitRunning(self) -> None:
        from twisted.internet.task import deferLater

        deadline = self.clock.seconds() + START_TIMEOUT
        while True:
            answers = await self.status()
            if not any(isinstance(answer, Failure) for _, answer in answers):
                return
            if self.clock.seconds() > deadline:
                raise WorkerGone("the workers did not start")
            await deferLater(self.clock, START_POLL, lambda: None)

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
        # Twisted names only a few signals ("TERM"): others by number.
        how: str | int = signal.SIGUSR2 if self.handingOff else "TERM"
        for worker in workers:
            worker.transport.signalProcess(how)  # type: ignore[union-attr]

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
