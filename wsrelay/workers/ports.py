# -*- test-case-name: tests.test_workers -*-
"""
Listening ports that several worker processes share (C{SO_REUSEPORT}).
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import tcp
from twisted.internet.interfaces import IListeningPort


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
