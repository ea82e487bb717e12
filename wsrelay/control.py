# -*- test-case-name: tests.test_takeover_units,tests.test_takeover -*-
"""
The control socket (C{control_socket} in C{[relay]}): a Unix socket, mode
0600, on which a new relay started with C{--takeover} asks the running one
for its listening sockets and then tells it to stop (L{wsrelay.takeover}
is the new relay's side).

The exchange is lines of text.  C{takeover}: the answer is one line of
JSON, C{{"pid": PID, "listeners": [[DESCRIPTION, COUNT], ...]}}, whose
first bytes carry the listening sockets' descriptors (C{SCM_RIGHTS}), COUNT
for each listener in that order (several with C{workers = N}).  C{stop}:
the answer is C{stopping}, and the relay stops as SIGTERM stops it
(stops accepting, closes its clients with 1001 within C{drain_timeout})
and exits; its listening sockets listen on in the new relay.
"""

from __future__ import annotations

import json
import os
import socket
import stat
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet import tcp, unix
from twisted.internet.interfaces import IUNIXTransport
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver

#: A listener's endpoint string and the listening sockets this process
#: holds for it.
Held = tuple[str, Sequence[socket.socket]]


def relayAnswers(path: str, timeout: float = 2.0) -> bool:
    """
    @return: Whether a process accepts connections on the Unix socket at
        C{path}: L{False} when there is no such file, or it is a socket
        left by a relay that died.

    @raise OSError: When C{path} cannot be tried for another reason.
    """
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
    except (FileNotFoundError, ConnectionRefusedError):
        return False
    finally:
        s.close()
    return True


class _ControlPort(unix.Port):
    """
    A Unix listening port that is created with mode 0600 (not made
    readable by others and then changed), and that removes its file when it
    stops only if the file is still its own: a relay that took over has put
    its own socket there.
    """

    _inode: int | None = None

    def startListening(self) -> None:
        path = self._bindPath
        try:
            if stat.S_ISSOCK(os.stat(path).st_mode):
                # Left by a relay that died: one that answers was refused
                # at start (checkControlSocket).
                os.unlink(path)
        except FileNotFoundError:
            pass
        old = os.umask(0o177)
        try:
            super().startListening()
        finally:
            os.umask(old)
        self._inode = os.stat(path).st_ino

    def connectionLost(self, reason: Any) -> None:
        # Instead of unix.Port's, which removes the file whoever's it is.
        path = self._bindPath
        try:
            if os.stat(path).st_ino == self._inode:
                os.unlink(path)
        except OSError:
            pass
        tcp.Port.connectionLost(self, reason)


class _ControlProtocol(LineOnlyReceiver):
    """
    One connection to the control socket.
    """

    delimiter = b"\n"
    MAX_LENGTH = 1024
    factory: ControlFactory

    def lineReceived(self, line: bytes) -> None:
        command = line.strip()
        if command == b"takeover":
            self.factory.handOver(self)
        elif command == b"stop":
            self.sendLine(b"stopping")
            self.factory.stopRelay()
        else:
            self.sendLine(b"error unknown command")


class ControlFactory(Factory):
    """
    Answers the control socket's commands.
    """

    protocol = _ControlProtocol  # type: ignore[assignment]
    log = Logger()

    def __init__(
        self, held: Callable[[], Sequence[Held]], stop: Callable[[], None]
    ) -> None:
        """
        @param held: The listeners and their sockets, now.
        @param stop: Stops the relay as SIGTERM does.
        """
        self._held = held
        self._stop = stop
        self.stopping = False

    def handOver(self, protocol: _ControlProtocol) -> None:
        """
        Send the listening sockets and their listeners' endpoint strings.
        """
        transport: IUNIXTransport = protocol.transport  # type: ignore[assignment]
        listeners = []
        count = 0
        for description, sockets in self._held():
            listeners.append([description, len(sockets)])
            for s in sockets:
                transport.sendFileDescriptor(s.fileno())
                count += 1
        line = json.dumps({"pid": os.getpid(), "listeners": listeners}).encode()
        # Each descriptor goes with a byte of the stream.
        protocol.sendLine(line.rjust(count))
        self.log.info(
            "control socket: {count} listening sockets handed over", count=count
        )

    def stopRelay(self) -> None:
        """
        A relay that took over tells this one to stop.
        """
        if self.stopping:
            return
        self.stopping = True
        self.log.info(
            "control socket: another relay took over; closing connections and stopping"
        )
        self._stop()


class ControlSocketService(Service):
    """
    Listens on the control socket while the relay runs.

    @ivar path: The control socket's path.
    """

    def __init__(self, reactor: Any, path: str, factory: ControlFactory) -> None:
        self._reactor = reactor
        self.path = path
        self.factory = factory
        self._port: unix.Port | None = None

    def startService(self) -> None:
        """
        Listen on the control socket, replacing a file left by a relay that
        died.
        """
        super().startService()
        port = _ControlPort(
            os.fsencode(self.path), self.factory, reactor=self._reactor, mode=0o600
        )
        port.startListening()
        self._port = port

    def stopService(self) -> Any:
        """
        Stop listening; remove the file unless another relay put its own
        there.
        """
        super().stopService()
        port, self._port = self._port, None
        if port is not None:
            return port.stopListening()
        return None


def checkControlSocket(path: str) -> str | None:
    """
    @return: Why a relay cannot start with C{control_socket = path} (one
        line), or L{None}.
    """
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return f"control socket {path} exists and is not a socket"
        if relayAnswers(path):
            return (
                f"a relay is running on control socket {path}: stop it, or"
                " start this one with --takeover"
            )
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"cannot use control socket {path}: {e.strerror}"
    return None
