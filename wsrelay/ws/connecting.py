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
from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectingCancelledError, getConnectError
from twisted.internet.error import TimeoutError as ConnectTimeoutError
from twisted.internet.interfaces import IStreamClientEndpoint
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
        IConnector,
        IProtocol,
        IProtocolFactory,
        IReactorTCP,
        ITCPTransport,
    )

    from wsrelay.deadlines import Deadlines


@implementer(IStreamClientEndpoint)
class PlainTCPEndpoint:
    """
    A backend reached over plain TCP.

    @ivar reactor: Connects.
    @ivar host: The backend's host name or address.
    @ivar port: Its port.
    @ivar timeout: Seconds an ordinary L{connect} waits for the TCP
        connection (L{connectDirect} leaves the timing to its caller).
    """

    def __init__(
        self, reactor: IReactorTCP, host: str, port: int, timeout: float
    ) -> None:
        self.reactor = reactor
        self.host = host
        self.port = port
        self.timeout = timeout
        self._endpoint = TCP4ClientEndpoint(reactor, host, port, timeout)

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
        L{_IPConnector}.

        @return: The connector, whose failure reaches C{factory}'s
            C{clientConnectionFailed}.
        """
        reactor = self.reactor
        if isinstance(reactor, PosixReactorBase):
            # What connectTCP does, with the connector below.
            connector = _IPConnector(
                self.host,
                self.port,
                factory,
                None,  # type: ignore[arg-type]
                None,
                reactor,
            )
            connector.connect()
            return connector
        return reactor.connectTCP(
            self.host,
            self.port,
            factory,
            timeout=None,  # type: ignore[arg-type]
        )

    def __repr__(self) -> str:
        return f"<PlainTCPEndpoint {self.host}:{self.port}>"


class _IPClient(LeanClose, tcp.Client):
    """
    Twisted's TCP client transport, with fewer system calls and reactor
    changes per connection (issue 16's storm: Twisted's transport made
    about 14 per upstream connection before its first byte).

      - It connects to an IP address (the host needs no name lookup)
        without the fired L{Deferred} that Twisted's C{resolveAddress}
        calls back through (some 6 µs a connect on the benchmark's
        machine).
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

    def _finishInit(
        self,
        whenDone: Callable[[], None] | None,
        skt: socket.socket,
        error: Exception | None,
        reactor: Any,
    ) -> None:
        """
        What Twisted's C{_finishInit} does, except that the socket is not
        set non-blocking again (L{createInternetSocket} made it so).
        """
        if whenDone is None:
            reactor.callLater(0, self.failIfNotConnected, error)
            return
        FileDescriptor.__init__(self, reactor=reactor)
        self.socket = skt
        self.fileno = skt.fileno
        self.protocol = None  # type: ignore[assignment]
        reactor.callLater(0, whenDone)

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

    def resolveAddress(self) -> None:
        """
        Connect now to an IP address, as Twisted's callback would; look a
        name up as Twisted does.
        """
        if getattr(self, "_requiresResolution", True):
            super().resolveAddress()
            return
        try:
            self._setRealAddress(self.addr)
        except BaseException:
            # (Twisted's errback.)
            self.failIfNotConnected(Failure())

    def doConnect(self) -> None:
        """
        Start the connect: at once connected, or failed, or waiting for the
        socket to be writable (L{_connectWritable}).  Failures are reported
        as Twisted's C{doConnect} reports them: C{failIfNotConnected} with
        the error C{getConnectError} makes of the connect's C{errno}.
        """
        if not hasattr(self, "connector"):
            # (Twisted: the attempt failed before this call.)
            return
        try:
            err = self.socket.connect_ex(self.realAddress)
        except OSError as e:
            err = e.args[0]
        if err in _IN_PROGRESS:
            self.doWrite = self.doRead = self._connectWritable  # type: ignore[method-assign]
            self.startWriting()
            return
        if err and err != EISCONN:
            self.failIfNotConnected(getConnectError((err, strerror(err))))
            return
        _waitToRead(self)
        self._connectDone()

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
        The reactor found the connection gone.  Before it connected, that
        is a failure of the connect (registered for writing only, the
        socket's C{EPOLLERR} comes without C{EPOLLIN}, which Twisted's
        transport, registered for both, hears as a read): report it with
        the socket's error, as Twisted's C{doConnect} would.
        """
        if (
            not self.connected
            and hasattr(self, "connector")
            and hasattr(self, "socket")
        ):
            try:
                err = self.socket.getsockopt(SOL_SOCKET, SO_ERROR)
            except OSError:
                err = 0
            if err:
                self.failIfNotConnected(getConnectError((err, strerror(err))))
                return
        super().connectionLost(reason)


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


class _IPConnector(tcp.Connector):
    """
    Twisted's TCP connector, whose transports are L{_IPClient}s.
    """

    def _makeTransport(self) -> tcp.Client:
        return _IPClient(self.host, self.port, self.bindAddress, self, self.reactor)


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
    deadlines: Deadlines,
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

    @param deadlines: Times the attempt (L{Deadlines.queue} of C{timeout}).
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

    # One deadline, cancelled once the attempt is settled: what
    # Deferred.addTimeout does, without its closures and its three
    # callbacks per attempt, and without a DelayedCall of its own.
    expired: list[bool] = []

    def expire() -> None:
        expired.append(True)
        opened.cancel()

    queue = deadlines.queue(timeout)
    queue.add(expire)

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
        else:
            queue.cancel(expire)
        return result

    opened.addBoth(settled)
    return opened


def _dropResult(protocol: object) -> None:
    """
    The endpoint's L{Deferred} fired with the protocol, which its factory
    keeps as long as the connection: let it go (the leg is handed over
    through its C{opened} L{Deferred}).
    """
