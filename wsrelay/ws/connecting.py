# -*- test-case-name: tests.test_connecting,tests.test_proxy -*-
"""
Connecting an upstream leg: L{connectUpstream} opens a connection to a
backend and completes the opening handshake, within a timeout, with
cancellation, mapping a failed connect to the connector's errors.

A plain-TCP backend's endpoint is a L{PlainTCPEndpoint}, which
L{connectUpstream} bypasses.  Twisted's C{TCP4ClientEndpoint} wraps every
connection: a factory and a protocol of its own around the leg's (every
read from the backend goes through its C{_WrappingProtocol}), and a
L{Deferred} that fires with the connection.  A L{PlainTCPEndpoint} is still
an ordinary endpoint for whoever connects through it (the health checkers,
a fan-out source), and also says how to reach the backend with
C{IReactorTCP.connectTCP} itself: the leg is then the transport's
protocol, and the connect's failure comes to its factory.
"""

from __future__ import annotations

import select
import socket
from errno import EALREADY, EINPROGRESS, EISCONN, EWOULDBLOCK
from os import strerror
from socket import SO_ERROR, SOL_SOCKET
from typing import TYPE_CHECKING, Any, cast

from twisted.internet import tcp
from twisted.internet.abstract import FileDescriptor, isIPAddress, isIPv6Address
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import (
    ConnectBindError,
    ConnectError,
    ConnectingCancelledError,
    ConnectionAborted,
    NotConnectingError,
    UserError,
    getConnectError,
)
from twisted.internet.error import TimeoutError as ConnectTimeoutError
from twisted.internet.interfaces import IConnector, IStreamClientEndpoint
from twisted.internet.posixbase import PosixReactorBase
from twisted.internet.protocol import ClientFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from wsrelay.descriptors import isLocalError, isShortageError
from wsrelay.ws.accepting import LeanClose
from wsrelay.ws.plainleg import PlainUpstream
from wsrelay.ws.upstream import (
    NO_EXTENSIONS,
    UpstreamError,
    UpstreamFactory,
    UpstreamLocalError,
    UpstreamProtocol,
    UpstreamShortageError,
    UpstreamTimeout,
)

try:
    from twisted.internet.epollreactor import EPollReactor
except ImportError:  # pragma: no cover - no epoll (not Linux)
    EPollReactor = None  # type: ignore[assignment,misc]

if TYPE_CHECKING:
    from collections.abc import Callable

    from twisted.internet.interfaces import (
        IAddress,
        IProtocol,
        IProtocolFactory,
        IReactorTCP,
        IReactorTime,
        ITCPTransport,
    )


#: How a L{PlainTCPEndpoint}'s host is reached: an IPv4 address, an IPv6
#: address (with its scope looked up per connect, as Twisted does), or a
#: name looked up per connect through the reactor's resolver.
_IPV4, _IPV6, _NAME = "IPv4", "IPv6", "name"


@implementer(IStreamClientEndpoint)
class PlainTCPEndpoint:
    """
    A backend reached over plain TCP.

    @ivar reactor: Connects.
    @ivar host: The backend's host name or address.
    @ivar port: Its port.
    @ivar timeout: Seconds an ordinary L{connect} waits for the TCP
        connection (L{connectDirect} leaves the timing to its caller).
    @ivar _kind: What C{host} is, told once (Twisted's connector tells it
        twice per connect): L{_IPV4}, L{_IPV6} or L{_NAME}.
    @ivar _destination: The backend's address, as L{IConnector.getDestination}
        and (an IPv4 host) the protocol's factory see it, made once.
    """

    def __init__(
        self, reactor: IReactorTCP, host: str, port: int, timeout: float
    ) -> None:
        self.reactor = reactor
        self.host = host
        self.port = port
        self.timeout = timeout
        self._endpoint = TCP4ClientEndpoint(reactor, host, port, timeout)
        self._kind = (
            _IPV4 if isIPAddress(host) else _IPV6 if isIPv6Address(host) else _NAME
        )
        self._destination: IPv4Address | IPv6Address = (
            IPv6Address("TCP", host, port)
            if self._kind is _IPV6
            else IPv4Address("TCP", host, port)
        )

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        """
        Connect as C{TCP4ClientEndpoint} does.
        """
        return self._endpoint.connect(protocolFactory)

    def connectDirect(self, factory: ClientFactory) -> IConnector:
        """
        Connect C{factory}'s protocol straight to the transport, with no
        timeout of Twisted's: the caller times the attempt, and stops it
        with the connector's C{stopConnecting} or the protocol's
        transport's C{abortConnection}.  On Twisted's own reactors, through
        a L{_DirectConnector}.

        @return: The connector, whose failure reaches C{factory}'s
            C{clientConnectionFailed}, and the end of its connection
            C{clientConnectionLost} (on Twisted's own reactors, C{factory}'s
            C{doStart} and C{doStop} are not called: the relay's factories
            have nothing to start).
        """
        reactor = self.reactor
        if isinstance(reactor, PosixReactorBase):
            return _DirectConnector(self, factory, reactor)
        return reactor.connectTCP(
            self.host,
            self.port,
            factory,
            timeout=None,  # type: ignore[arg-type]
        )

    def __repr__(self) -> str:
        return f"<PlainTCPEndpoint {self.host}:{self.port}>"


@implementer(IConnector)
class _DirectConnector:
    """
    The connector of L{PlainTCPEndpoint.connectDirect}: what the transport
    (an L{_IPClient}) and the caller need of Twisted's C{tcp.Connector},
    without its state machine's timer, its factory's start and stop, and
    the address checks it repeats per connect (the endpoint made them).

    It lets go of its transport when the attempt failed or the connection
    is gone: the two then refer to each other no longer, and are freed by
    reference counting (Twisted's connector keeps its transport, a cycle
    left to the collector per connection).

    @ivar endpoint: Where it connects.
    @ivar factory: Builds the protocol and hears of the attempt's end.
    @ivar state: Twisted's connector's: C{"connecting"}, C{"connected"}
        or C{"disconnected"}.
    @ivar transport: The attempt's transport, until its end.
    """

    def __init__(
        self, endpoint: PlainTCPEndpoint, factory: ClientFactory, reactor: Any
    ) -> None:
        self.endpoint = endpoint
        self.factory = factory
        self.reactor = reactor
        self.state = "disconnected"
        self.transport: _IPClient | None = None
        self.connect()

    def connect(self) -> None:
        """
        Start the connect (its failures are reported later, never from
        this call).

        @raise RuntimeError: When connecting or connected already.
        """
        if self.state != "disconnected":
            raise RuntimeError("can't connect in this state")
        self.state = "connecting"
        self.transport = _IPClient(self, self.reactor)

    def stopConnecting(self) -> None:
        """
        Stop the attempt: it fails with Twisted's C{UserError}.

        @raise NotConnectingError: When not connecting.
        """
        if self.state != "connecting":
            raise NotConnectingError("we're not trying to connect")
        transport = self.transport
        assert transport is not None
        self.state = "disconnected"
        transport.failIfNotConnected(UserError())

    def disconnect(self) -> None:
        """
        Stop connecting, or close the connection.
        """
        if self.state == "connecting":
            self.stopConnecting()
        elif self.state == "connected" and self.transport is not None:
            self.transport.loseConnection()

    def getDestination(self) -> IAddress:
        """
        @return: The backend's address.
        """
        return self.endpoint._destination

    def buildProtocol(self, addr: IAddress) -> IProtocol | None:
        """
        Connected: the factory's protocol for it.
        """
        self.state = "connected"
        return self.factory.buildProtocol(addr)

    def connectionFailed(self, reason: Failure) -> None:
        """
        The attempt failed (or was stopped).
        """
        self.transport = None
        self.state = "disconnected"
        self.factory.clientConnectionFailed(self, reason)

    def connectionLost(self, reason: Failure) -> None:
        """
        The connection is gone.
        """
        self.transport = None
        self.state = "disconnected"
        self.factory.clientConnectionLost(self, reason)

    def __repr__(self) -> str:
        return f"<_DirectConnector {self.state} {self.endpoint!r}>"


class _IPClient(LeanClose, tcp.Client):
    """
    Twisted's TCP client transport, with fewer system calls and reactor
    changes per connection (issue 16's storm: Twisted's transport made
    about 14 per upstream connection before its first byte), and less
    Python.

      - It connects at once when made (Twisted's transport waits for a
        timed call), to an IP address with no name lookup nor the fired
        L{Deferred} that Twisted's C{resolveAddress} calls back through;
        what it learns at once of a failure it reports from a timed call,
        as Twisted does.
      - Its socket is made non-blocking when created (C{SOCK_NONBLOCK}),
        not by two C{ioctl}s after (Twisted's C{createInternetSocket} and
        C{Connection.__init__} each call C{setblocking}).
      - L{doConnect} asks for the socket's error only once the connect
        could complete (Twisted asks before the first C{connect} too, and
        calls C{connect} again after), waits for it writable only (the
        reactor tells a failure's C{EPOLLERR} too, see L{connectionLost}),
        and once connected goes from waiting to write to waiting to read
        with no other change (Twisted removes it from the reactor and adds
        it back).
      - It closes a connection with nothing to send without waiting to
        write, as the client leg's transport does (L{LeanClose}): one
        C{epoll_ctl} where Twisted's transport makes three and a C{send}
        of nothing, and no turn of the reactor's in between.
    """

    def __init__(self, connector: _DirectConnector, reactor: Any) -> None:
        """
        What Twisted's C{_BaseTCPClient.__init__} and C{_finishInit} do
        (with no address to bind), with what the endpoint knows of its
        host, and connect.
        """
        endpoint = connector.endpoint
        host, port, kind = endpoint.host, endpoint.port, endpoint._kind
        self.connector = connector
        self.addr = (host, port)
        self._requiresResolution = kind is _NAME
        if kind is _IPV6:
            self.addr = tcp._resolveIPv6(host, port)
            self.addressFamily = socket.AF_INET6
            self._addressType = IPv6Address  # type: ignore[assignment]
        try:
            skt = self.createInternetSocket()
        except OSError as se:
            reactor.callLater(
                0, self.failIfNotConnected, ConnectBindError(se.args[0], se.args[1])
            )
            return
        FileDescriptor.__init__(self, reactor=reactor)
        self.socket = skt
        self.fileno = skt.fileno
        self.protocol = None  # type: ignore[assignment]
        if kind is _IPV4:
            self.realAddress = self.addr
            self.doConnect()
        elif kind is _IPV6:
            try:
                self._setRealAddress(self.addr)
            except BaseException:
                reactor.callLater(0, self.failIfNotConnected, Failure())
        else:
            # Twisted's way: through the reactor's resolver, a turn later.
            reactor.callLater(0, self.resolveAddress)

    def createInternetSocket(self) -> socket.socket:
        """
        @return: A socket created non-blocking and close-on-exec, with no
            system call after C{socket}.
        """
        if _NONBLOCKING:
            return socket.socket(self.addressFamily, self.socketType | _NONBLOCKING)
        # (No SOCK_NONBLOCK: Twisted's way.)
        s = socket.socket(self.addressFamily, self.socketType)
        s.setblocking(False)
        return s

    def doConnect(self) -> None:
        """
        Start the connect: at once connected, or failed, or waiting for the
        socket to be writable (L{_connectWritable}; also when connected at
        once, so that the protocol never connects inside the call that
        made the transport).  Failures are reported as Twisted's
        C{doConnect} reports them, from a timed call: C{failIfNotConnected}
        with the error C{getConnectError} makes of the connect's C{errno}.
        """
        if not hasattr(self, "connector"):
            # (Twisted: the attempt failed before this call.)
            return
        try:
            err = self.socket.connect_ex(self.realAddress)
        except OSError as e:
            err = e.args[0]
        if err and err != EISCONN and err not in _IN_PROGRESS:
            reactor: Any = self.reactor
            reactor.callLater(
                0, self.failIfNotConnected, getConnectError((err, strerror(err)))
            )
            return
        self.doWrite = self.doRead = self._connectWritable  # type: ignore[method-assign]
        self.startWriting()

    def _connectWritable(self) -> None:
        """
        The socket of a connect in progress is writable: connected, or
        failed with the error it holds.
        """
        if not hasattr(self, "connector"):
            return
        err = self.socket.getsockopt(SOL_SOCKET, SO_ERROR)
        if err:
            self.failIfNotConnected(getConnectError((err, strerror(err))))
            return
        del self.doWrite, self.doRead
        _waitToRead(self)
        self._connectDone()

    def connectionLost(self, reason: Failure) -> None:
        """
        The reactor found the connection gone, or the transport closed it.

        Before it connected, that is a failure of the connect (registered
        for writing only, the socket's C{EPOLLERR} comes without
        C{EPOLLIN}, which Twisted's transport, registered for both, hears
        as a read): report it with the socket's error, as Twisted's
        C{doConnect} would.

        After: what Twisted's C{Client.connectionLost} does, in one call
        and without its C{Failure.check} (some microseconds, a qualified
        name made per class it compares): the protocol, then the
        connector, hear of it, and the transport lets the connector go.
        """
        if not self.connected:
            if hasattr(self, "connector") and hasattr(self, "socket"):
                try:
                    err = self.socket.getsockopt(SOL_SOCKET, SO_ERROR)
                except OSError:
                    err = 0
                if err:
                    self.failIfNotConnected(getConnectError((err, strerror(err))))
                    return
            self.failIfNotConnected(ConnectError(string=reason))
            return
        if not hasattr(self, "socket"):
            # (Twisted's guard against a second call.)
            return
        # FileDescriptor.connectionLost:
        self.disconnected = 1
        self.connected = 0
        producer = self.producer
        if producer is not None:
            producer.stopProducing()
            self.producer = None
        self.stopReading()
        self.stopWriting()
        # Connection.connectionLost:
        self._closeSocket(not issubclass(reason.type, ConnectionAborted))  # type: ignore[arg-type]
        protocol = self.protocol
        del self.protocol, self.socket, self.fileno
        protocol.connectionLost(reason)
        # (Neither refers to the other once gone: a factory that keeps its
        # protocol, which keeps this transport, is no cycle.)
        connector = self.connector
        del self.connector
        connector.connectionLost(reason)


#: The socket type flags that make a socket non-blocking as it is created
#: (Linux); elsewhere none.
_NONBLOCKING = (
    socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
    if hasattr(socket, "SOCK_NONBLOCK")
    else 0
)

#: A non-blocking connect's results that say it goes on.
_IN_PROGRESS = frozenset([EINPROGRESS, EWOULDBLOCK, EALREADY])


def _waitToRead(transport: tcp.Client) -> None:
    """
    A connected transport that waited to write now waits to read, with
    one change of its registration on Twisted's epoll reactor (one
    C{epoll_ctl}); on another reactor by stopping writing (Twisted's
    C{_connectDone} then starts reading).  (The epoll reactor's private
    C{_poller}, C{_reads} and C{_writes}, as its C{_add} and C{_remove}
    keep them: a Twisted that renames them fails every connect, loudly, in
    tests.test_connectlean.)

    @param transport: Registered for writing only.
    """
    reactor: Any = transport.reactor
    fd = transport.fileno()
    if (
        EPollReactor is not None
        and isinstance(reactor, EPollReactor)
        and fd in reactor._writes
    ):
        if fd not in reactor._reads:
            reactor._poller.modify(fd, select.EPOLLIN)
            reactor._writes.discard(fd)
            reactor._reads.add(fd)
            return
    transport.stopWriting()


class _Attempt(ClientFactory):
    """
    Builds the one protocol of one connection attempt, and hears of the
    attempt's failure when it connects without an endpoint
    (L{PlainTCPEndpoint.connectDirect}).

    @ivar failed: Called with the failure of a direct connect.
    @ivar _plain: Whether the protocol is a L{PlainUpstream} (else the
        factory's Autobahn leg).
    """

    noisy = False

    def __init__(
        self, factory: UpstreamFactory, setup: dict[str, Any], plain: bool
    ) -> None:
        self._factory = factory
        self._setup = setup
        self._plain = plain
        self.protocol: UpstreamProtocol | None = None  # type: ignore[assignment]
        self.failed: Callable[[Failure], None] = _ignore

    def buildProtocol(self, addr: IAddress | None) -> UpstreamProtocol:
        """
        Make the protocol and give it the request.
        """
        if self._plain:
            # Passthrough: a plain leg, which has what that data path reads
            # of an upstream leg (wsrelay.ws.plainleg).
            p = cast("UpstreamProtocol", PlainUpstream())
        else:
            p = cast("UpstreamProtocol", self._factory.buildProtocol(addr))
        p.__dict__.update(self._setup)
        # The connector keeps this factory as long as the connection.
        self._setup = {}
        self.protocol = p
        return p

    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:
        """
        The direct connect failed (or was stopped).
        """
        failed, self.failed = self.failed, _ignore
        failed(reason)


def _ignore(reason: Failure) -> None:
    """
    Nothing to tell: the attempt is settled.
    """


def connectError(f: Failure) -> UpstreamError:
    """
    @param f: Why a connect failed.
    @return: What the connector makes of it: L{UpstreamTimeout} for
        Twisted's own timeout (504, not 502), L{UpstreamLocalError} and
        L{UpstreamShortageError} for the relay's want of resources
        (L{isLocalError}, L{isShortageError}), else L{UpstreamError}.
    """
    kind = UpstreamTimeout if f.check(ConnectTimeoutError) else UpstreamError
    if isLocalError(f.value):
        kind = UpstreamLocalError
    elif isShortageError(f.value):
        kind = UpstreamShortageError
    return kind(f"connect failed: {f.getErrorMessage()}")


def connectUpstream(
    clock: IReactorTime,
    endpoint: IStreamClientEndpoint,
    factory: UpstreamFactory,
    resource: str,
    hostHeader: str,
    headers: list[tuple[str, str]],
    offered: tuple[str, ...],
    timeout: float,
) -> Deferred[UpstreamProtocol]:
    """
    Connect to a backend and complete the opening handshake.

    @param headers: The request's header fields; a L{RequestHeaders} also
        says how the leg treats extensions (a plain list: L{NO_EXTENSIONS}).
    @return: A L{Deferred} that fires with the open L{UpstreamProtocol},
        or fails with L{UpstreamError} (including a timeout after
        C{timeout} seconds, and L{UpstreamLocalError} when the relay is
        out of descriptors or ports) or L{UpstreamRefused}.  Cancelling it
        closes whatever was opened.
    """

    def cancel(d: Deferred[UpstreamProtocol]) -> None:
        p = attempt.protocol
        if p is not None and p.transport is not None:
            cast("ITCPTransport", p.transport).abortConnection()
        elif direct is not None:
            # Not connected yet: stopping fails the attempt, which is
            # being cancelled and fails by itself.
            attempt.failed = _ignore
            direct.stopConnecting()
        else:
            connecting.cancel()

    opened: Deferred[UpstreamProtocol] = Deferred(cancel)
    attempt = _Attempt(
        factory,
        {
            "resource": resource,
            "hostHeader": hostHeader,
            "requestHeaders": headers,
            "offered": offered,
            "opened": opened,
            "extensions": getattr(headers, "extensions", NO_EXTENSIONS),
        },
        getattr(headers, "plain", False),
    )

    def connectFailed(f: Failure) -> None:
        if not opened.called:
            # Twisted's endpoints fail a cancelled attempt with
            # ConnectingCancelledError: C{opened} is being cancelled then,
            # and fails by itself (a timeout, or the client went away).
            if f.check(CancelledError, ConnectingCancelledError):
                return
            opened.errback(connectError(f))

    direct: IConnector | None = None
    if isinstance(endpoint, PlainTCPEndpoint):
        # The leg is the transport's protocol, with no endpoint between.
        attempt.failed = connectFailed
        direct = endpoint.connectDirect(attempt)
    else:
        connecting = endpoint.connect(attempt)
        connecting.addCallbacks(_dropResult, connectFailed)

    # One timer, cancelled once the attempt is settled: what
    # Deferred.addTimeout does, without its closures and its three
    # callbacks per attempt.
    expired: list[bool] = []

    def expire() -> None:
        expired.append(True)
        opened.cancel()

    timer = clock.callLater(timeout, expire)

    def settled(result: object) -> object:
        # Twisted's connector and the endpoint's factory form a cycle
        # that lives as long as the connection: neither may hold the
        # protocol through this attempt once it is no longer needed for
        # cancelling, or a closed leg would wait for the cyclic collector.
        attempt.protocol = None
        attempt.failed = _ignore
        if expired:
            if isinstance(result, Failure) and result.check(CancelledError):
                return Failure(
                    UpstreamTimeout(f"backend did not answer within {timeout:g}s")
                )
        elif timer.active():
            timer.cancel()
        return result

    opened.addBoth(settled)
    return opened


def _dropResult(protocol: object) -> None:
    """
    The endpoint's L{Deferred} fired with the protocol, which its factory
    keeps as long as the connection: let it go (the leg is handed over
    through its C{opened} L{Deferred}).
    """
