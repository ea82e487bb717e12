# -*- test-case-name: tests.test_takeover_units,tests.test_collaborators -*-
"""
The relay's listeners (L{Listener}: Twisted's service for an endpoint
string, which tells when it listens), and the listening sockets that the
relay holds itself, so that it can hand them on:
to its workers (C{workers = N}) and to a relay that takes over
(C{control_socket}, C{--takeover}).

A listener's endpoint string is parsed by Twisted as always, with a
L{ListeningSockets} in place of the reactor: Twisted's C{tcp:}, C{tcp6:}
and C{ssl:} endpoints (also behind C{haproxy:}) call its C{listenTCP} or
C{listenSSL}, which opens the sockets (or takes the ones handed over) and
serves them as C{reactor.adoptStreamPort} does.

Plain TCP listeners (C{tcp:}, C{tcp6:}, and behind C{haproxy:}) are served
by L{wsrelay.ws.accepting}'s lean port, whether the relay holds their
sockets or Twisted does (L{LeanTCP}); TLS listeners by Twisted's.

Serving an adopted descriptor matters for a handover: Twisted closes a
port it opened itself with C{shutdown()} first, which on Linux stops the
socket listening in every process that holds it and drops the connections
in its accept queue; a port made from an adopted descriptor is only
closed, and the socket listens on in the process it was handed to.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import Service
from twisted.internet import abstract
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    maybeDeferred,
    succeed,
)
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IConnector,
    IListeningPort,
    IOpenSSLContextFactory,
    IProtocolFactory,
    IReactorSSL,
    IReactorTCP,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import ClientFactory, P, ServerFactory
from twisted.logger import Logger
from zope.interface import implementer

from wsrelay.proxyprotocol import listenerEndpoint
from wsrelay.ws import accepting

if TYPE_CHECKING:
    from twisted.internet.interfaces import IAddress
    from twisted.internet.ssl import ClientContextFactory
    from twisted.python.failure import Failure


class Claims(Protocol):
    """
    Listening sockets handed over by another relay
    (L{wsrelay.takeover.Handover}).
    """

    def claim(
        self, description: str, family: int, interface: str, port: int
    ) -> list[socket.socket] | None:
        """
        @return: The sockets the other relay listened on for C{description},
            or on the same address; L{None} when it had none.
        """


def openSockets(
    family: int, interface: str, port: int, backlog: int, count: int
) -> list[socket.socket]:
    """
    Open C{count} listening sockets on one address, non-blocking; with
    C{SO_REUSEPORT} when there are several (the kernel then spreads new
    connections over them), the later ones on the port the first got.

    @raise CannotListenError: As Twisted's C{listenTCP} does.
    """
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if count > 1:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind((interface, port))
            port = s.getsockname()[1]
            s.listen(backlog)
            s.setblocking(False)
    except OSError as e:
        for s in sockets:
            s.close()
        raise CannotListenError(interface, port, e) from None
    return sockets


@implementer(IListeningPort)
class _Ports:
    """
    Several ports of one listener served by one process, as one: when a
    relay with fewer workers took over, worker 0 serves the sockets left.
    """

    def __init__(self, ports: Sequence[IListeningPort]) -> None:
        self._ports = ports

    def startListening(self) -> None:
        for port in self._ports:
            port.startListening()

    def stopListening(self) -> Deferred[None]:
        waits = [maybeDeferred(port.stopListening) for port in self._ports]
        return DeferredList(waits, consumeErrors=True).addCallback(lambda _: None)

    def getHost(self) -> IAddress:
        return self._ports[0].getHost()


@implementer(IReactorTCP, IReactorSSL)
class ListeningSockets:
    """
    What one listener's endpoint listens with: it opens the listener's
    sockets (or claims those another relay handed over), keeps them, and
    serves some of them in this process.

    @ivar sockets: Every listening socket of the listener that this process
        holds, once listening (worker 0 holds those of every worker).
    """

    def __init__(
        self,
        reactor: Any,
        description: str,
        workers: int = 1,
        handover: Claims | None = None,
        inherited: Sequence[socket.socket] = (),
    ) -> None:
        """
        @param reactor: Serves the sockets (C{adoptStreamPort}), connects.
        @param description: The listener's endpoint string, after the role
            of a listener that does not serve clients (C{admin ...}): what
            a relay that takes over matches it by.
        @param workers: How many workers serve the listener: worker 0 opens
            a socket for each (L{forWorker}).
        @param handover: The sockets another relay handed over, if any.
        @param inherited: The sockets worker 0 gave this worker: these are
            served, and no other.
        """
        self._reactor = reactor
        self.description = description
        self._workers = workers
        self._handover = handover
        self._inherited = bool(inherited)
        self.sockets: list[socket.socket] = list(inherited)
        self._factory: IProtocolFactory | None = None
        self._lean = True
        self._covering: dict[int, list[IListeningPort]] = {}

    def _listen(
        self,
        port: int,
        factory: IProtocolFactory,
        backlog: int,
        interface: str,
        lean: bool,
    ) -> IListeningPort:
        if not self.sockets:
            family = socket.AF_INET
            if abstract.isIPv6Address(interface):
                family = socket.AF_INET6
            handover, claimed = self._handover, None
            if handover is not None:
                claimed = handover.claim(self.description, family, interface, port)
            if claimed is None:
                workers = self._workers
                claimed = openSockets(family, interface, port, backlog, workers)
            self.sockets = claimed
        self._factory = factory
        self._lean = lean
        served = self.sockets if self._inherited else self.forWorker(0)
        ports = [self._adopt(s, factory) for s in served]
        return ports[0] if len(ports) == 1 else _Ports(ports)

    def _adopt(self, s: socket.socket, factory: IProtocolFactory) -> IListeningPort:
        """
        @return: A port serving C{s} in this process: a lean one
            (L{accepting.adoptStreamPort}) for plain TCP, Twisted's for TLS.
        """
        if self._lean:
            return accepting.adoptStreamPort(
                self._reactor, s.fileno(), s.family, factory
            )
        port: IListeningPort = self._reactor.adoptStreamPort(
            s.fileno(), s.family, factory
        )
        return port

    def forWorker(self, index: int) -> list[socket.socket]:
        """
        @return: The sockets worker C{index} serves: socket C{index}, and
            for worker 0 also those beyond the last worker (a relay with
            fewer workers took over); with fewer sockets than workers
            (a relay with more took over), several workers serve one.
        """
        sockets, workers = self.sockets, self._workers
        if len(sockets) < workers:
            return [sockets[index % len(sockets)]]
        mine = [sockets[index]]
        if index == 0:
            mine += sockets[workers:]
        return mine

    def cover(self, index: int) -> None:
        """
        Serve worker C{index}'s sockets in this process (worker 0) while
        that worker is not running, so that the connections the kernel
        gives them do not wait for it.
        """
        if self._factory is None or index in self._covering:
            return
        mine = self.forWorker(0)
        factory = self._factory
        self._covering[index] = [
            self._adopt(s, factory) for s in self.forWorker(index) if s not in mine
        ]

    def uncover(self, index: int) -> None:
        """
        Stop serving worker C{index}'s sockets: it runs again.  (Its socket
        listens on; only this process's port on it closes.)
        """
        for port in self._covering.pop(index, []):
            port.stopListening()

    def close(self) -> None:
        """
        Close this process's descriptors of the sockets (once no port serves
        them): a socket handed to another process listens on there.
        """
        for index in list(self._covering):
            self.uncover(index)
        for s in self.sockets:
            s.close()
        self.sockets = []

    def listenTCP(
        self,
        port: int,
        factory: ServerFactory,
        backlog: int = 50,
        interface: str = "",
    ) -> IListeningPort:
        return self._listen(port, factory, backlog, interface, True)

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
        return self._listen(port, wrapped, backlog, interface, False)

    def connectTCP(
        self,
        host: str,
        port: int,
        factory: ClientFactory[P],
        timeout: float = 30.0,
        bindAddress: tuple[str, int] | None = None,
    ) -> IConnector:
        reactor: IReactorTCP = self._reactor
        return reactor.connectTCP(host, port, factory, timeout, bindAddress)

    def connectSSL(
        self,
        host: str,
        port: int,
        factory: ClientFactory[P],
        contextFactory: ClientContextFactory,
        timeout: float,
        bindAddress: tuple[str, int] | None,
    ) -> IConnector:
        reactor: IReactorSSL = self._reactor
        return reactor.connectSSL(
            host, port, factory, contextFactory, timeout, bindAddress
        )


class LeanTCP:
    """
    A reactor whose plain TCP listeners are lean ports
    (L{accepting.listenTCP}): what an endpoint string listens with when
    Twisted holds the listener's sockets.  Everything else (C{listenSSL},
    C{listenUNIX}, C{adoptStreamPort} for systemd's sockets, ...) is the
    reactor's own.
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def listenTCP(
        self,
        port: int,
        factory: IProtocolFactory,
        backlog: int = 50,
        interface: str = "",
    ) -> IListeningPort:
        """
        Listen on a plain TCP port, with a lean port on Twisted's reactors.
        """
        return accepting.listenTCP(self._reactor, port, factory, backlog, interface)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)


@implementer(IStreamServerEndpoint)
class _ReportingEndpoint:
    """
    The endpoint of a L{Listener}: parses its endpoint string when it
    listens, and reports the outcome in one log line; a port that cannot be
    had stops the relay.
    """

    def __init__(self, listener: Listener, reactor: Any, listenOn: Any) -> None:
        self._listener = listener
        self._reactor = reactor
        # What the endpoint listens with: the reactor (its plain TCP
        # listeners lean ports), or the sockets the relay holds
        # (ListeningSockets).
        self._listenOn = LeanTCP(reactor) if listenOn is None else listenOn

    def listen(self, factory: Any) -> Deferred[IListeningPort]:
        """
        Listen on the listener's endpoint string.

        @return: A L{Deferred} that fires with the port, or with L{None}
            when it cannot be had (logged here, in one line, so that
            L{StreamServerEndpointService} has nothing to log).
        """
        listener = self._listener
        endpoint = listenerEndpoint(self._listenOn, listener.description)
        d: Deferred[Any] = endpoint.listen(factory)
        d.addCallbacks(self._listening, self._failed)
        return d

    def _listening(self, port: IListeningPort) -> IListeningPort:
        listener = self._listener
        listener.port = port
        listener.log.info(
            "listening on {description} (port {port})",
            description=listener.description,
            port=getattr(port.getHost(), "port", None),
        )
        listener.listening.callback(port)
        return port

    def _failed(self, f: Failure) -> None:
        listener = self._listener
        if f.check(CancelledError):
            # Stopped before it listened: nothing to report.
            return
        listener.failed = True
        listener.log.critical(
            "cannot listen on {description}: {error}",
            description=listener.description,
            error=f.getErrorMessage(),
        )
        listener.listening.errback(f)
        # twistd starts services before the reactor runs.
        self._reactor.callWhenRunning(self._reactor.stop)


class Listener(StreamServerEndpointService):
    """
    Twisted's service for one server endpoint string, which also tells
    when it listens, and whether it failed to.

    @ivar description: The endpoint string.
    @ivar port: The listening port, once listening.
    @ivar listening: Fires with the port, or fails.
    @ivar failed: Whether the port could not be had.
    @ivar sockets: The listening sockets the relay holds for the listener
        (to hand on to workers or to a relay that takes over), or L{None}
        when Twisted holds them.
    """

    log = Logger()

    def __init__(
        self, reactor: Any, description: str, factory: Any, listenOn: Any = None
    ) -> None:
        """
        @param reactor: Stopped when the port cannot be had.
        @param listenOn: What the endpoint listens with (the relay's
            L{ListeningSockets}); the reactor by default.
        """
        self.description = description
        self.sockets = listenOn
        self.port: IListeningPort | None = None
        self.listening: Deferred[IListeningPort] = Deferred()
        self.failed = False
        super().__init__(_ReportingEndpoint(self, reactor, listenOn), factory)

    def privilegedStartService(self) -> None:
        """
        Nothing yet: the listener listens when it starts (L{startService}),
        after the relay logged its start, as before twistd's privileged
        start existed for it.
        """
        Service.privilegedStartService(self)

    def startService(self) -> None:
        """
        Listen (Twisted's L{StreamServerEndpointService} does).
        """
        Service.startService(self)
        StreamServerEndpointService.privilegedStartService(self)

    def stopService(self) -> Deferred[None]:
        """
        Stop listening (or trying to).
        """
        self.port = None
        if self._waitingForPort is None:
            # Never started.
            self.running = False
            return succeed(None)
        d: Deferred[None] = super().stopService()
        if self.sockets is not None:
            d.addBoth(self._close)
        return d

    def _close(self, result: object) -> object:
        # Once the port is closed: the sockets listen on in a process they
        # were handed to, if any.
        if self.sockets is not None:
            self.sockets.close()
        return result
