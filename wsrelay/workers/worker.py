# -*- test-case-name: tests.test_workers -*-
"""
A worker's side (workers 1 to N-1): L{ControlService} answers worker 0's
commands and stops the relay when worker 0 goes away.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet.defer import maybeDeferred
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from wsrelay.workers.supervisor import _lines

if TYPE_CHECKING:
    from wsrelay.service import RelayService


class WorkerControl(Protocol):
    """
    A worker's end of the command pipes: reads JSON commands on its
    standard input, answers on file descriptor 3, and stops the relay when
    worker 0 goes away (its standard input closes).
    """

    log = Logger()

    def __init__(self, relay: RelayService, reactor: Any) -> None:
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
            return relay.reload().addCallback(lambda _: "reloaded")
        if op == "act":
            relay.setBackendState(
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

    def __init__(self, relay: RelayService, reactor: Any) -> None:
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
