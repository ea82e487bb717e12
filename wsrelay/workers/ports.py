# -*- test-case-name: tests.test_workers -*-
"""
Listening ports that several worker processes share (C{SO_REUSEPORT}).

L{SharedPorts} is what the listeners' endpoints are made with (it is
passed to C{serverFromString}, whose C{tcp:}, C{tcp6:} and C{ssl:}
endpoints listen by calling C{listenTCP} or C{listenSSL}), so that the
same endpoint strings as with one process listen on a port each worker
shares.  It provides those two interfaces only: timers, C{stop} and the
rest are the real reactor's, which the listener is given as well.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from twisted.internet import tcp
from twisted.internet.interfaces import (
    IConnector,
    IListeningPort,
    IOpenSSLContextFactory,
    IProtocolFactory,
    IReactorSSL,
    IReactorTCP,
)
from twisted.internet.protocol import ClientFactory, P, ServerFactory
from zope.interface import implementer

if TYPE_CHECKING:
    from twisted.internet.ssl import ClientContextFactory


class _ReusePort(tcp.Port):
    """
    A TCP port that other processes may also listen on.
    """

    def createInternetSocket(self) -> socket.socket:
        s: socket.socket = super().createInternetSocket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        return s


@implementer(IReactorTCP, IReactorSSL)
class SharedPorts:
    """
    Listens with C{SO_REUSEPORT}, on C{port} when it is given (the port
    worker 0 got, for a listener whose endpoint string says port 0);
    connects as C{reactor} does.
    """

    def __init__(self, reactor: IReactorTCP, port: int | None = None) -> None:
        self._reactor = reactor
        self._port = port

    def listenTCP(
        self,
        port: int,
        factory: ServerFactory,
        backlog: int = 50,
        interface: str = "",
    ) -> IListeningPort:
        return self._listen(port, factory, backlog, interface)

    def _listen(
        self, port: int, factory: IProtocolFactory, backlog: int, interface: str
    ) -> IListeningPort:
        if self._port is not None:
            port = self._port
        p = _ReusePort(port, factory, backlog, interface, self._reactor)
        p.startListening()
        return p

    def listenSSL(
        self,
        port: int,
        factory: ServerFactory[P],
        contextFactory: IOpenSSLContextFactory,
        backlog: int = 50,
        interface: str = "",
    ) -> IListeningPort:
        from twisted.protocols.tls import TLSMemoryBIOFactory

        wrapped = TLSMemoryBIOFactory(contextFactory, False, factory)
        return self._listen(port, wrapped, backlog, interface)

    def connectTCP(
        self,
        host: str,
        port: int,
        factory: ClientFactory[P],
        timeout: float = 30.0,
        bindAddress: tuple[str, int] | None = None,
    ) -> IConnector:
        return self._reactor.connectTCP(host, port, factory, timeout, bindAddress)

    def connectSSL(
        self,
        host: str,
        port: int,
        factory: ClientFactory[P],
        contextFactory: ClientContextFactory,
        timeout: float,
        bindAddress: tuple[str, int] | None,
    ) -> IConnector:
        reactor: IReactorSSL = self._reactor  # type: ignore[assignment]
        return reactor.connectSSL(
            host, port, factory, contextFactory, timeout, bindAddress
        )
