# -*- test-case-name: tests.test_workers_channel,tests.test_workers -*-
"""
A worker's side (workers 1 to N-1): L{ControlService} answers worker 0's
commands (L{wsrelay.workers.commands}) over AMP, and stops the relay when
worker 0 goes away.

What the answers come from is an L{Answers}: L{RelayAnswers} is the one
place that reaches into the relay service; the status and metrics pages
are made by functions it is given (the admin API's), so that this package
does not import L{wsrelay.admin}, which imports it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorCore
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.amp import BoxDispatcher, CommandLocator
from twisted.python.failure import Failure

from wsrelay.config import ConfigError
from wsrelay.workers.commands import (
    Act,
    Boxes,
    CommandFailed,
    ConfigRejected,
    Metrics,
    NoSuchBackend,
    Reload,
    Status,
)

if TYPE_CHECKING:
    from wsrelay.operations import RelayStatus


class Answers(Protocol):
    """
    What a worker answers worker 0's commands from.
    """

    def status(self) -> dict[str, Any]:
        """
        @return: The worker's whole status (the admin API's C{/status}).
        """

    def metrics(self) -> str:
        """
        @return: The worker's metrics page.
        """

    def reload(self) -> Deferred[None]:
        """
        Reload the configuration file.

        @return: A L{Deferred} that fires once applied, or fails with
            L{ConfigRejected}.
        """

    def act(self, route: str, backend: str, action: str) -> None:
        """
        Drain, enable or disable a backend.

        @raise NoSuchBackend: When there is no such route or backend.
        """


@dataclass(frozen=True)
class RelayAnswers:
    """
    L{Answers} from a worker's relay service.

    @ivar relay: The worker's relay.
    @ivar statusOf: Makes a relay's status page.
    @ivar metricsOf: Makes a relay's metrics page.
    """

    relay: RelayStatus
    statusOf: Callable[[RelayStatus], dict[str, Any]]
    metricsOf: Callable[[RelayStatus], str]

    def status(self) -> dict[str, Any]:
        return self.statusOf(self.relay)

    def metrics(self) -> str:
        return self.metricsOf(self.relay)

    def reload(self) -> Deferred[None]:
        def rejected(f: Failure) -> Failure:
            if f.check(ConfigError):
                return Failure(ConfigRejected(str(f.value)))
            return f

        return self.relay.operations.reload().addErrback(rejected)

    def act(self, route: str, backend: str, action: str) -> None:
        try:
            self.relay.operations.setBackendState(route, backend, action)
        except KeyError as e:
            raise NoSuchBackend(str(e)) from e


def _reported(f: Failure) -> Failure:
    """
    Let a command's declared error through, and make any other one
    L{CommandFailed} with its message (rather than AMP's unknown error,
    which would also close the connection).
    """
    if f.check(CommandFailed, ConfigRejected, NoSuchBackend):
        return f
    return Failure(CommandFailed(str(f.value)))


def _answer(name: str, make: Callable[[], object]) -> dict[str, object]:
    """
    @return: C{make()}'s result as the answer's value C{name}.
    @raise CommandFailed: With the message of any error C{make} raises
        (answered at once, without a L{Deferred}: AMP's own dispatch
        makes enough of them).
    """
    try:
        return {name: make()}
    except Exception as e:
        raise CommandFailed(str(e)) from None


class WorkerCommands(CommandLocator):
    """
    The responders to worker 0's commands.
    """

    def __init__(self, answers: Answers) -> None:
        self._answers = answers

    @Status.responder
    def status(self) -> dict[str, object]:
        return _answer("status", self._answers.status)

    @Metrics.responder
    def metrics(self) -> dict[str, object]:
        return _answer("text", self._answers.metrics)

    @Reload.responder
    def reload(self) -> Deferred[dict[str, Any]]:
        d = maybeDeferred(self._answers.reload)
        return d.addCallbacks(lambda _: {}, _reported)

    @Act.responder
    def act(self, route: str, backend: str, action: str) -> Deferred[dict[str, Any]]:
        d = maybeDeferred(self._answers.act, route, backend, action)
        return d.addCallbacks(lambda _: {}, _reported)


class WorkerControl(Boxes):
    """
    A worker's end of the AMP connection to worker 0: commands come on its
    standard input, answers go to its file descriptor 3.  When worker 0
    goes away (its standard input closes), the relay stops.
    """

    log = Logger()

    def __init__(self, answers: Answers, reactor: IReactorCore) -> None:
        super().__init__(BoxDispatcher(WorkerCommands(answers)))
        self._reactor = reactor

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        if self._reactor.running:
            self.log.info("worker 0 went away: stopping")
            self._reactor.stop()


class ControlService(Service):
    """
    Listens for commands from worker 0 while a worker runs.
    """

    def __init__(self, answers: Answers, reactor: Any) -> None:
        self._answers = answers
        self._reactor = reactor

    def startService(self) -> None:
        from twisted.internet._posixstdio import StandardIO

        super().startService()
        StandardIO(
            WorkerControl(self._answers, self._reactor),
            stdin=0,
            stdout=3,
            reactor=self._reactor,
        )
