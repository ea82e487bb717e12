# -*- test-case-name: tests.test_connectlean,tests.test_connecting -*-
"""
The TCP client transport and connector of a plain upstream leg's direct
connect (L{wsrelay.ws.connecting.PlainTCPEndpoint.connectDirect}): an
L{_IPClient}, Twisted's TCP client transport with fewer system calls and
less Python per connection, driven by a L{DirectConnector}, which keeps
what the transport and its caller use of Twisted's C{tcp.Connector}.
"""

from __future__ import annotations

import socket
from errno import EALREADY, EINPROGRESS, EISCONN, EWOULDBLOCK
from operator import methodcaller
from os import strerror
from socket import IPPROTO_TCP, SO_ERROR, SOL_SOCKET, TCP_NODELAY
from typing import TYPE_CHECKING, Any, Protocol, cast

from twisted.internet import tcp
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import (
    ConnectBindError,
    ConnectError,
    NotConnectingError,
    UserError,
    getConnectError,
)
from twisted.internet.interfaces import IConnector
from twisted.internet.posixbase import _PollLikeMixin
from twisted.internet.protocol import Protocol as PlaceHolder
from twisted.python.failure import Failure
from zope.interface import implementer

from wsrelay.ws.accepting import LeanClose, LeanSocket
from wsrelay.ws.watching import (
    EPOLL_REACTOR,
    EPOLLIN,
    EPOLLOUT,
    TurnBatch,
    startWatching,
)

if TYPE_CHECKING:
    from twisted.internet.interfaces import IAddress, IProtocol
    from twisted.internet.protocol import ClientFactory

__all__ = [
    "IPV4",
    "IPV6",
    "NAME",
    "Destination",
    "DirectConnector",
    "hostKind",
    "startWatching",
]

#: How a backend's host is reached (L{hostKind}): an IPv4 address, an IPv6
#: address (with its scope looked up per connect, as Twisted does), or a
#: name looked up per connect through the reactor's resolver.
IPV4, IPV6, NAME = "IPv4", "IPv6", "name"


def hostKind(host: str) -> str:
    """
    @return: What C{host} is: L{IPV4}, L{IPV6} or L{NAME} (what Twisted's
        connector and transport each tell per connect).
    """
    return IPV4 if isIPAddress(host) else IPV6 if isIPv6Address(host) else NAME


class Destination(Protocol):
    """
    Where a L{DirectConnector} connects, told once (a
    L{wsrelay.ws.connecting.PlainTCPEndpoint}).
    """

    #: The host's name or address.
    host: str
    #: The port.
    port: int
    #: L{hostKind}'s answer for C{host}.
    kind: str
    #: The address that the connector's C{getDestination} answers, and
    #: (an IPv4 host) the protocol's factory is given.
    destination: IPv4Address | IPv6Address


@implementer(IConnector)
class DirectConnector:
    """
    The connector of L{PlainTCPEndpoint.connectDirect
    <wsrelay.ws.connecting.PlainTCPEndpoint.connectDirect>}: what the transport
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
        self, endpoint: Destination, factory: ClientFactory, reactor: Any
    ) -> None:
        self.endpoint = endpoint
        self.factory = factory
        self.reactor = reactor
        # (What connect does, from the state it checks.)
        self.state = "connecting"
        self.transport: _IPClient | None = _IPClient(self, reactor)

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
        return self.endpoint.destination

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
        return f"<DirectConnector {self.state} {self.endpoint!r}>"


class _IPClient(LeanClose, tcp.Client):
    """
    Twisted's TCP client transport, with fewer system calls and reactor
    changes per connection (issue 16's storm: Twisted's transport made
    about 14 per upstream connection before its first byte), and less
    Python.

      - It connects from the reactor's next round of timed calls, as
        Twisted's transport does, but in one timed call with every other
        connect asked for in the same turn (L{_connecting}, which says
        why), to an IP address with no name lookup nor the fired
        L{Deferred} that Twisted's C{resolveAddress} calls back through;
        what it learns at once of a failure it reports from there.
      - Its socket is made non-blocking when created (C{SOCK_NONBLOCK}),
        not by two C{ioctl}s after (Twisted's C{createInternetSocket} and
        C{Connection.__init__} each call C{setblocking}).
      - L{_connectNow} asks for the socket's error only once the connect
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

    #: Whether C{TCP_NODELAY} is on: the socket is made with it (one
    #: C{setsockopt} as it is made, rather than the same one in Twisted's
    #: C{setTcpNoDelay} once connected); an instance's own after a
    #: L{setTcpNoDelay} that changed it.
    _noDelay = True
    #: Whether the host is a name to look up (Twisted's), told per
    #: connection only when it is.
    _requiresResolution = False

    def __init__(self, connector: DirectConnector, reactor: Any) -> None:
        """
        What Twisted's C{_BaseTCPClient.__init__} and C{_finishInit} do
        (with no address to bind), with what the endpoint knows of its
        host, and connect.
        """
        endpoint = connector.endpoint
        host, port, kind = endpoint.host, endpoint.port, endpoint.kind
        self.connector = connector
        self.addr = addr = (host, port)
        if kind is NAME:
            self._requiresResolution = True
        elif kind is IPV6:
            self.addr = tcp._resolveIPv6(host, port)
            self.addressFamily = socket.AF_INET6
            self._addressType = IPv6Address  # type: ignore[assignment]
        try:
            if _NONBLOCKING:
                # (createInternetSocket, inline: a stream, as socketType.)
                skt: Any = LeanSocket(self.addressFamily, _STREAM_NONBLOCKING)
            else:
                skt = self.createInternetSocket()
        except OSError as se:
            reactor.callLater(
                0, self.failIfNotConnected, ConnectBindError(se.args[0], se.args[1])
            )
            return
        try:
            # (Twisted's setTcpNoDelay, as the socket is made: see _noDelay.)
            skt.setsockopt(IPPROTO_TCP, TCP_NODELAY, 1)
        except OSError:  # pragma: no cover - not with TCP
            self._noDelay = False
        # (FileDescriptor.__init__, inline.)
        self.reactor = reactor
        self._tempDataBuffer: list[bytes] = []
        self.socket = skt
        self.fileno = skt.fileno
        self.protocol = None  # type: ignore[assignment]
        if kind is IPV4:
            # (doConnect, with the address known: no resolution.)
            self.realAddress = addr
            _connecting.add(reactor, self)
        elif kind is IPV6:
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
            system call after C{socket} (a L{LeanSocket}).
        """
        if _NONBLOCKING:
            made = LeanSocket(self.addressFamily, self.socketType | _NONBLOCKING)
            return cast("socket.socket", made)
        # (No SOCK_NONBLOCK: Twisted's way.)
        s = cast("socket.socket", LeanSocket(self.addressFamily, self.socketType))
        s.setblocking(False)
        return s

    def doConnect(self) -> None:
        """
        Start the connect with the others of this reactor turn, from the
        reactor's next round of timed calls (L{_connecting}); Twisted's
        transport calls this once an IPv6 address or a name is resolved.
        """
        if not hasattr(self, "connector"):
            # (Twisted: the attempt failed before this call.)
            return
        _connecting.add(self.reactor, self)

    def _connectNow(self) -> None:
        """
        Start the connect (L{_connecting}), unless the attempt was
        stopped or failed meanwhile: at once connected, or failed, or
        waiting for the socket to be writable (L{_connectWritable}; also
        when connected at once, so that the protocol never connects inside
        the call that started the connect).  A failure is reported as
        Twisted's C{doConnect} reports it, from a timed call (this one):
        C{failIfNotConnected} with the error C{getConnectError} makes of
        the connect's C{errno}.
        """
        if not hasattr(self, "connector") or not hasattr(self, "socket"):
            return
        try:
            err = self.socket.connect_ex(self.realAddress)
        except OSError as e:
            err = e.args[0]
        if err and err != EISCONN and err not in _IN_PROGRESS:
            self.failIfNotConnected(getConnectError((err, strerror(err))))
            return
        self.doWrite = self.doRead = self._connectWritable  # type: ignore[method-assign]
        if not startWatching(self, self.reactor, EPOLLOUT):
            self.startWriting()

    def _connectWritable(self) -> None:
        """
        The socket of a connect in progress is writable: connected, or
        failed with the error it holds.  (On Twisted's poll-like reactors,
        epoll's and poll's, a failed connect is never only writable: its
        C{EPOLLERR} makes the reactor call L{connectionLost} instead, which
        asks the socket for its error; asking here too would be a system
        call for nothing.)

        Connected, it waits to read, and does what
        Twisted's C{_connectDone} does, with the endpoint's address of an
        IPv4 host (made once, where Twisted makes one per connection), with
        the connector's C{buildProtocol} inline, and with the log prefix
        made only when asked for
        (L{logstr}): no Python call of its own between the reactor's event
        and the factory's C{buildProtocol}.
        """
        try:
            connector = self.connector
        except AttributeError:
            return
        reactor: Any = self.reactor
        if not isinstance(reactor, _PollLikeMixin):
            err = self.socket.getsockopt(SOL_SOCKET, SO_ERROR)
            if err:
                self.failIfNotConnected(getConnectError((err, strerror(err))))
                return
        del self.doWrite, self.doRead
        _waitToRead(self)
        endpoint = connector.endpoint
        peer = endpoint.destination if endpoint.kind is IPV4 else self.getPeer()
        # (DirectConnector.buildProtocol.)
        connector.state = "connected"
        protocol = connector.factory.buildProtocol(peer)
        self.connected = 1
        if protocol is None:
            # (Twisted's way with a factory that builds none.)
            self.protocol = PlaceHolder()
            self.loseConnection()
            return
        self.protocol = protocol
        # (Reading already.)
        protocol.makeConnection(self)

    def setTcpNoDelay(self, enabled: bool) -> None:
        """
        Set C{TCP_NODELAY}, as Twisted's transport does, but with no system
        call (nor Twisted's Python) to turn it on: the socket was made with
        it (L{_noDelay}), since every leg of the relay turns it on as it
        connects.
        """
        if enabled and self._noDelay:
            return
        super().setTcpNoDelay(enabled)
        self._noDelay = bool(enabled)

    @property
    def logstr(self) -> str:
        """
        The prefix of log messages about the connection, as Twisted's
        C{Client} makes it once connected: the protocol's prefix, then
        C{",client"} (after the connection, the protocol's class name's).
        """
        attributes = self.__dict__
        logstr: str | None = attributes.get("_logstr")
        if logstr is None:
            protocol = attributes.get("protocol")
            if protocol is not None:
                prefix = self._getLogPrefix(protocol)
            else:
                prefix = attributes.get("_protocolName", "Uninitialized")
            logstr = f"{prefix},client"
        return logstr

    @logstr.setter
    def logstr(self, value: str) -> None:
        self.__dict__["_logstr"] = value

    def connectionLost(self, reason: Failure) -> None:
        """
        The reactor found the connection gone, or the transport closed it.

        Before it connected, that is a failure of the connect (registered
        for writing only, the socket's C{EPOLLERR} comes without
        C{EPOLLIN}, which Twisted's transport, registered for both, hears
        as a read): report it with the socket's error, as Twisted's
        C{doConnect} would.

        After: what Twisted's C{Client.connectionLost} does, in one call
        and without its C{Failure.check} (L{LeanClose._loseLean}): the
        protocol, then the connector, hear of it, and the transport lets
        the connector go.
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
        protocol = self._loseLean(reason)
        if protocol is None:
            return
        # (Set as an attribute, not through the __dict__, which asking for
        # would make.)
        self._protocolName = protocol.__class__.__name__
        protocol.connectionLost(reason)
        # (Neither refers to the other once gone: a factory that keeps its
        # protocol, which keeps this transport, is no cycle.)
        connector = self.connector
        del self.connector
        connector.connectionLost(reason)


#: The connects that L{_IPClient}s ask for, started together in their
#: reactor's next round of timed calls (L{_IPClient._connectNow}), in the
#: order asked for: one C{callLater(0)} a turn for all of them.
#:
#: A connect completes a loopback (or same-host) backend's TCP handshake
#: inside the call, which wakes the backend's process, and waking a
#: process that sleeps costs the waker far more than one that is awake
#: already: made as each client's head was read, between the rest of each
#: head's work, nearly every connect of a connection storm woke the
#: backend anew; made back to back at the end of the turn, the first wakes
#: it and the rest find it awake.  In the benchmark's storm that took some
#: 10 µs off the relay's CPU per handshake (of 77) and 8 off the
#: backend's (BENCHMARKS.md, the thirteenth session).  A connect waits for
#: no more than the rest of the turn's ready events.  One asked for
#: meanwhile (a failover's, after a failure there) waits for the next
#: round.
_connecting: TurnBatch[_IPClient] = TurnBatch(
    methodcaller("_connectNow"), "Unhandled error starting a connect"
)


#: The socket type flags that make a socket non-blocking as it is created
#: (Linux); elsewhere none.
_NONBLOCKING = (
    socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
    if hasattr(socket, "SOCK_NONBLOCK")
    else 0
)

#: The type of a connect's socket, made non-blocking (L{_NONBLOCKING}).
_STREAM_NONBLOCKING = socket.SOCK_STREAM | _NONBLOCKING

#: A non-blocking connect's results that say it goes on.
_IN_PROGRESS = frozenset([EINPROGRESS, EWOULDBLOCK, EALREADY])


def _waitToRead(transport: tcp.Client) -> None:
    """
    A connected transport that waited to write now waits to read, with
    one change of its registration on Twisted's epoll reactor (one
    C{epoll_ctl}); on another reactor by stopping writing and starting to
    read, as Twisted's C{_connectDone} does.  (The epoll reactor's private
    C{_poller}, C{_reads} and C{_writes}, as its C{_add} and C{_remove}
    keep them: a Twisted that renames them fails every connect, loudly, in
    tests.test_connectlean.)

    @param transport: Registered for writing only.
    """
    reactor: Any = transport.reactor
    fd = transport.fileno()
    if isinstance(reactor, EPOLL_REACTOR) and fd in reactor._writes:
        if fd not in reactor._reads:
            reactor._poller.modify(fd, EPOLLIN)
            reactor._writes.discard(fd)
            reactor._reads.add(fd)
            return
    transport.stopWriting()
    transport.startReading()
