# -*- test-case-name: tests.test_takeover_units,tests.test_takeover -*-
"""
C{twistd wsrelay --takeover}: the new relay's side of an upgrade without a
refused connection (L{wsrelay.control} is the running relay's side).

Before anything starts, L{receive} asks the relay on the control socket
for its listening sockets (a blocking exchange: the reactor does not run
yet).  Each listener of the new configuration takes the sockets of the
old listener with the same endpoint string, or else with the same address
(L{Handover.claim}: a new certificate file changes an C{ssl:} string, not
its address); the others listen anew.  Once the new relay serves on all of
them, and its workers run, L{TakeoverService} tells the old relay to stop:
it stops accepting and drains as SIGTERM makes it.  Both accept from the
same sockets in between, so no connection waits in a queue nobody reads
and none is refused.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, FirstError
from twisted.logger import Logger
from twisted.python.failure import Failure

#: Seconds the new relay waits for the old one's answer.
TAKEOVER_TIMEOUT = 10.0

#: The most descriptors one takeover carries.
MAX_SOCKETS = 1024


class TakeoverError(Exception):
    """
    The relay on the control socket did not hand its sockets over.
    """


def _sameHost(bound: str, interface: str, family: int) -> bool:
    if not interface:
        interface = "::" if family == socket.AF_INET6 else "0.0.0.0"
    return bound == interface


class Handover:
    """
    The listening sockets another relay handed over.

    @ivar pid: The other relay's process id.
    @ivar listeners: Its listeners' sockets, by endpoint string, until
        claimed.
    """

    log = Logger()

    def __init__(
        self,
        pid: int,
        listeners: dict[str, list[socket.socket]],
        connection: socket.socket | None = None,
    ) -> None:
        """
        @param connection: The control connection, on which the other relay
            is told to stop.
        """
        self.pid = pid
        self.listeners = listeners
        self._connection = connection

    def claim(
        self, description: str, family: int, interface: str, port: int
    ) -> list[socket.socket] | None:
        """
        Take the sockets of the other relay's listener with the endpoint
        string C{description}, or else of the one bound to the same
        address (not for port 0).

        @return: The sockets, or L{None}.
        """
        sockets = self.listeners.pop(description, None)
        if sockets is not None or port == 0:
            return sockets
        for other, held in list(self.listeners.items()):
            host, bound = held[0].getsockname()[:2]
            if (
                held[0].family == family
                and bound == port
                and _sameHost(host, interface, family)
            ):
                self.log.info(
                    "{description}: taking over the sockets of {other}",
                    description=description,
                    other=other,
                )
                return self.listeners.pop(other)
        return None

    def abandon(self) -> None:
        """
        Give up: close the control connection (the other relay runs on) and
        the sockets no listener claimed.
        """
        for sockets in self.listeners.values():
            for s in sockets:
                s.close()
        self.listeners = {}
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def stopOld(self) -> None:
        """
        Tell the other relay to stop, and close the sockets of its listeners
        that no listener claimed (they stop listening once it has stopped).
        """
        for description, sockets in self.listeners.items():
            self.log.warn(
                "the new configuration has no listener {description}: its"
                " connections stop with the old relay",
                description=description,
            )
            for s in sockets:
                s.close()
        self.listeners = {}
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            connection.sendall(b"stop\n")
        except OSError as e:
            self.log.error(
                "cannot tell relay {pid} to stop: {error}", pid=self.pid, error=e
            )
        else:
            self.log.info("relay {pid} told to stop", pid=self.pid)
        connection.close()


def _receiveAll(connection: socket.socket) -> tuple[bytes, list[int]]:
    """
    Read the answer to C{takeover}: a line and the descriptors that came
    with it.
    """
    data = b""
    fds: list[int] = []
    while not data.endswith(b"\n"):
        message, received, flags, _ = socket.recv_fds(connection, 65536, MAX_SOCKETS)
        fds += received
        if flags & socket.MSG_CTRUNC:
            raise TakeoverError("too many listening sockets")
        if not message:
            raise TakeoverError("the relay closed the connection")
        data += message
    return data, fds


def receive(path: str, timeout: float = TAKEOVER_TIMEOUT) -> Handover:
    """
    Ask the relay on the control socket C{path} for its listening sockets.

    @raise TakeoverError: With one line saying why that failed.
    """
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connection.settimeout(timeout)
    fds: list[int] = []
    try:
        connection.connect(path)
        connection.sendall(b"takeover\n")
        data, fds = _receiveAll(connection)
        answer = json.loads(data)
        pid = int(answer["pid"])
        listeners: dict[str, list[socket.socket]] = {}
        remaining = list(fds)
        for description, count in answer["listeners"]:
            taken, remaining = remaining[:count], remaining[count:]
            if len(taken) != count:
                raise TakeoverError("fewer sockets than listeners")
            sockets = [socket.socket(fileno=fd) for fd in taken]
            for s in sockets:
                s.setblocking(False)
            listeners[str(description)] = sockets
    except TakeoverError:
        connection.close()
        _closeAll(fds)
        raise
    except OSError as e:
        connection.close()
        _closeAll(fds)
        reason = e.strerror or str(e) or type(e).__name__
        raise TakeoverError(reason) from None
    except (ValueError, KeyError, TypeError) as e:
        connection.close()
        _closeAll(fds)
        raise TakeoverError(f"unexpected answer ({e})") from None
    connection.settimeout(None)
    return Handover(pid, listeners, connection)


def _closeAll(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


class TakeoverService(Service):
    """
    Tells the old relay to stop once this one serves on every listener
    and its workers run.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        handover: Handover,
        ready: Callable[[], Deferred[Any]],
        then: Callable[[], object],
        failed: Callable[[], object],
    ) -> None:
        """
        @param ready: Fires when the relay listens and its workers run;
            fails when it cannot (the old relay then runs on).
        @param then: Called once the old relay was told to stop (to listen
            on the control socket).
        @param failed: Called when the relay could not take over (to stop
            it, with status 1).
        """
        self._reactor = reactor
        self._handover = handover
        self._ready = ready
        self._then = then
        self._failed = failed

    def startService(self) -> None:
        """
        Once the reactor runs, wait for the relay to serve, then tell the
        old relay to stop.
        """
        super().startService()
        self._reactor.callWhenRunning(self._whenRunning)

    def _whenRunning(self) -> None:
        def failed(f: Failure) -> None:
            if isinstance(f.value, FirstError):
                # A listener's, which logged it already.
                f = f.value.subFailure
            self.log.error(
                "takeover abandoned ({error}): relay {pid} runs on",
                error=f.getErrorMessage(),
                pid=self._handover.pid,
            )
            self._handover.abandon()
            self._failed()

        def ready(_: object) -> None:
            if self.running:
                self._handover.stopOld()
                self._then()

        self._ready().addCallbacks(ready, failed)
