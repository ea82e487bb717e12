# -*- test-case-name: tests.test_acceptlean,tests.test_takeover_units -*-
"""
The client leg's accepted transport: L{LeanPort}, Twisted's TCP port,
whose connections are L{LeanServer}s, with less Python and fewer system
calls per connection (issue 16's storm), as L{wsrelay.ws.tcpclient}'s
C{_IPClient} has for the upstream leg.  The relay's plain TCP listeners
(and those behind C{haproxy:}) are such ports (L{wsrelay.listening}); TLS
listeners keep Twisted's own.

Per accepted connection Twisted's port makes a system call for each of
C{accept4}, C{getsockname} and C{ioctl} (non-blocking), and its
C{socket.accept} converts the family and type to enumerations.
L{LeanPort} accepts with C{socket._accept} (the same C{accept4}) and
wraps the descriptor itself, about half the Python.  The other two calls
stay: C{getsockname} is CPython's own check, in the C{socket}
constructor whatever its arguments, that a descriptor it wraps is a
socket (wsrelay asks for no host address per connection), and only
C{accept4} with C{SOCK_NONBLOCK} would spare the C{ioctl}, which CPython
never passes (C{accept4} through C{ctypes}: 9.2 against 6.0 µs).

L{LeanServer} formats Twisted's log prefix and C{repr} only when
something reads them (with wsrelay's reactor, only a legacy log call made
while handling the connection does), and closes a connection with
nothing to send in the same reactor turn as Twisted's C{abortConnection}
does, but orderly: it stops reading (one C{epoll_ctl}), and its
C{connectionLost} comes in a later call from the reactor (never re-entrant
into the caller of C{loseConnection}), which sends the FIN with
C{shutdown} and closes.  Twisted's transport registers for writing
instead (two C{epoll_ctl}), waits a turn, sends zero bytes and
unregisters (a third).  The C{shutdown} stays: with bytes from the peer
left unread, C{close} alone resets the connection, where C{shutdown}
first sends the FIN after what was written, and the peer reads all of it
and the end of the stream before the reset
(C{tests.test_acceptlean.LeanCloseTests.test_unreadDataStillFIN}).
That close is L{LeanClose}'s, which the upstream leg's transport
(C{_IPClient}) shares.
"""

from __future__ import annotations

import _socket
import socket
import sys
from errno import EWOULDBLOCK
from operator import methodcaller
from typing import TYPE_CHECKING, Any

from twisted.internet import main, tcp
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import (
    ConnectionAborted,
    ConnectionDone,
    UnsupportedAddressFamily,
)
from twisted.internet.posixbase import PosixReactorBase
from twisted.python import log
from twisted.python.failure import Failure

from wsrelay.ws.watching import EPOLLIN, TurnBatch, startWatching, stopWatching

if TYPE_CHECKING:
    from twisted.internet.interfaces import (
        IListeningPort,
        IProtocol,
        IProtocolFactory,
    )

__all__ = [
    "LeanClose",
    "LeanPort",
    "LeanServer",
    "LeanSocket",
    "adoptStreamPort",
    "listenTCP",
]

#: Why a connection closed by L{LeanClose.loseConnection} is lost: one
#: failure for all, as Twisted's reactor shares its own.
_DONE = Failure(ConnectionDone())

#: The flags of C{getnameinfo} that Twisted's port reads an IPv6 peer's
#: address with (its scope, if any, by number).
_NUMERIC = socket.NI_NUMERICHOST | socket.NI_NUMERICSERV


#: Makes an instance without calling its C{__init__}.
_newObject = object.__new__


#: Whether accepted TCP sockets inherit C{TCP_NODELAY} from their listening
#: socket, as Linux's do (its accept clones the listening socket's state).
_INHERITS_NODELAY = sys.platform.startswith("linux")


class LeanSocket(_socket.socket):
    """
    A connection's socket (both legs': L{LeanPort}'s accepted ones and
    L{wsrelay.ws.tcpclient}'s C{_IPClient}'s): CPython's C socket object,
    made without the Python C{__init__} of C{socket.socket}, which only
    adds the two attributes of C{makefile}'s reference count (some half a
    microsecond a socket, and 24 of its 88 bytes).  Twisted's transports
    use only the C object's methods (C{recv}, C{send}, C{shutdown},
    C{close}, C{setsockopt}, C{getsockname}...), which are the same; its
    C{family} and C{type} read as numbers, not enumerations.  What only
    C{socket.socket} has is missing: C{dup}, C{makefile}, C{sendfile},
    C{set_inheritable}, C{accept}, the context manager and weak
    references; a transport's C{getHandle()} is typed as a
    C{socket.socket} by Twisted, so mypy will not catch their use.
    """

    __slots__ = ()


class LeanClose(tcp.Connection):
    """
    A TCP transport that closes a connection with nothing to send without
    Twisted's write turn (see the module's docstring): both legs' lean
    transports, L{LeanServer} and L{wsrelay.ws.tcpclient}'s C{_IPClient},
    put it before Twisted's C{Server} or C{Client}.
    """

    #: The length of what Twisted's C{write} queued: none, until it
    #: queues (a store and a dictionary entry less per connection than
    #: C{FileDescriptor.__init__}'s, which the lean transports skip).
    _tempDataLen = 0

    def doRead(self) -> Any:
        """
        Read what is there and give it to the protocol: Twisted's
        C{Connection.doRead} with its C{_dataReceived} inline (a Python
        call less per read).

        @return: L{None}, or why the connection is lost: the end of the
            stream, or the error C{recv} failed with.
        """
        try:
            data = self.socket.recv(self.bufferSize)
        except OSError as se:
            if se.args[0] == EWOULDBLOCK:
                return None
            return main.CONNECTION_LOST
        if not data:
            return main.CONNECTION_DONE
        self.protocol.dataReceived(data)
        return None

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        """
        Register a producer, as Twisted's transport does: a streaming one
        on a plain connection with none yet, in one call (Twisted's makes
        two, C{ConnectionMixin}'s then C{FileDescriptor}'s); any other case
        Twisted's way.
        """
        if not streaming or self.TLS or self.producer is not None or self.disconnected:
            super().registerProducer(producer, streaming)
            return
        self.producer = producer
        self.streamingProducer = streaming

    def loseConnection(self) -> None:
        """
        Close the connection once what was written to it went out, as
        Twisted's transport does; with nothing left to send (and no
        producer that Twisted would wait for), without waiting to write:
        stop reading, and lose the connection from the reactor's next
        round of timed calls (L{_closeNow}), in one timed call with the
        others closed in the same round (L{_closing}).
        """
        if (
            self.dataBuffer
            or self._tempDataBuffer
            or not self.connected
            or self.disconnecting
            or self.TLS
            or self._writeDisconnected
            or self._writeDisconnecting
            or (
                self.producer is not None
                and (not self.streamingProducer or self.producerPaused)
            )
        ):
            super().loseConnection()
            return
        self.disconnecting = 1
        stopWatching(self, self.socket)
        _closing.add(self.reactor, self)

    def _closeNow(self) -> None:
        """
        Lose the connection that L{loseConnection} closes: with the reason
        Twisted's transport gives, after a C{shutdown}, unless it was
        aborted meanwhile (the abort's reason stands) or written to (then
        Twisted's way: the write registered it for writing, and it closes
        once that is sent).
        """
        if self._aborting or self.disconnected or not hasattr(self, "socket"):
            return
        if self.dataBuffer or self._tempDataBuffer:
            return
        self.connectionLost(_DONE)

    def _loseLean(self, reason: Failure) -> Any:
        """
        What Twisted's C{FileDescriptor.connectionLost} and
        C{Connection.connectionLost} do, in one call and without the
        latter's C{Failure.check} (about a microsecond: it makes a
        qualified name for each class it compares; C{issubclass} on the
        failure's type does the same): stop reading and writing, close the
        socket (with a reset after an abort) and let the protocol go.  The
        caller tells the protocol, which is returned, or L{None} when the
        connection was lost already (Twisted's guard against a second
        call).

        @param reason: Why the connection was lost.
        @return: The protocol, or L{None}.
        """
        try:
            skt = self.socket
        except AttributeError:
            return None
        self.disconnected = 1
        self.connected = 0
        producer = self.producer
        if producer is not None:
            producer.stopProducing()
            self.producer = None
        stopWatching(self, skt)
        self._closeSocket(not issubclass(reason.type, ConnectionAborted))  # type: ignore[arg-type]
        protocol = self.protocol
        del self.protocol, self.socket, self.fileno
        return protocol


#: The connections that L{LeanClose.loseConnection} closes, lost in their
#: reactor's next round of timed calls (L{LeanClose._closeNow}), in the
#: order they were closed: one timed call for all of them, rather than one
#: each.
_closing: TurnBatch[LeanClose] = TurnBatch(
    methodcaller("_closeNow"), "Unhandled error losing a connection"
)


class LeanServer(LeanClose, tcp.Server):
    """
    Twisted's accepted TCP transport, with less work per connection (see
    the module's docstring).  Its socket comes from L{LeanPort},
    non-blocking already.

    @ivar _prefix: The protocol's log prefix, once something asked for it
        or the connection was lost (the protocol then goes).
    """

    _prefix: str | None = None
    #: The log prefix set in place of Twisted's (L{logstr}), if any.
    _logstr: str | None = None
    #: Whether C{TCP_NODELAY} is known to be on: L{None} until set here,
    #: when it is what the socket inherited from its port
    #: (L{LeanPort.noDelay}).
    _noDelay: bool | None = None

    def __init__(
        self,
        sock: socket.socket,
        protocol: IProtocol,
        client: tuple[Any, ...],
        server: tcp.Port,
        sessionno: int,
        reactor: Any,
    ) -> None:
        """
        What Twisted's C{Server.__init__} does, without setting the socket
        non-blocking again and without formatting its log prefix and
        C{repr}; C{FileDescriptor.__init__}'s part inline (the port always
        gives a reactor).
        """
        self.reactor = reactor
        self._tempDataBuffer: list[bytes] = []
        self.socket = sock
        self.fileno = sock.fileno
        self.protocol = protocol
        if len(client) != 2:
            self._addressType = IPv6Address
        self.server = server
        self.client = client
        self.sessionno = sessionno
        if not startWatching(self, reactor, EPOLLIN):
            self.startReading()
        self.connected = 1

    def setTcpNoDelay(self, enabled: bool) -> None:
        """
        Set C{TCP_NODELAY}, as Twisted's transport does, but with no system
        call to turn it on for a socket that has it from its listening
        socket (L{LeanPort.noDelay}): Linux's accepted sockets inherit it,
        and every leg of the relay turns it on as it connects.
        """
        if enabled and self._noDelay is None and getattr(self.server, "noDelay", False):
            # (Not noted: None says as much, in no room of the instance's.)
            return
        super().setTcpNoDelay(enabled)
        self._noDelay = bool(enabled)

    @property
    def hostname(self) -> Any:
        """
        The client's host, as Twisted's C{Server} keeps it for its log
        prefix (or what was set in its place): read from C{client} when
        asked, rather than kept per connection.
        """
        hostname: Any = self.__dict__.get("_hostname")
        if hostname is None:
            hostname = self.client[0]
        return hostname

    @hostname.setter
    def hostname(self, value: Any) -> None:
        self.__dict__["_hostname"] = value

    def _protocolPrefix(self) -> str:
        """
        @return: The protocol's log prefix (kept once asked, since the
            protocol goes when the connection is lost).
        """
        prefix = self._prefix
        if prefix is None:
            prefix = self._prefix = self._getLogPrefix(self.protocol)
        return prefix

    @property
    def logstr(self) -> str:
        """
        The prefix of log messages about the connection, as Twisted's
        C{Server} makes it: the protocol's prefix, the session number and
        the client's host (or what was set in its place).
        """
        logstr = self._logstr
        if logstr is None:
            logstr = f"{self._protocolPrefix()},{self.sessionno},{self.hostname}"
        return logstr

    @logstr.setter
    def logstr(self, value: str) -> None:
        self._logstr = value

    def __repr__(self) -> str:
        """
        @return: What Twisted's C{Server} answers: the protocol's class,
            the session number and the port's (or what was set in its
            place, as C{_fromConnectedSocket} does).
        """
        attributes = self.__dict__
        repstr: str | None = attributes.get("repstr")
        if repstr is not None:
            return repstr
        protocol = attributes.get("protocol")
        name = attributes.get("_protocolName")
        if protocol is not None:
            name = protocol.__class__.__name__
        port = getattr(self.server, "_realPortNumber", None)
        return f"<{name} #{self.sessionno} on {port}>"

    def connectionLost(self, reason: Failure) -> None:
        """
        Twisted's C{connectionLost} (L{LeanClose._loseLean}), keeping the
        protocol's log prefix and name for messages about the connection
        after it.
        """
        if self._logstr is None:
            # (Read and set as attributes, not through the __dict__, which
            # asking for would make.)
            try:
                protocol = self.protocol
            except AttributeError:
                # Lost already.
                protocol = None
            if protocol is not None:
                self._protocolPrefix()
                self._protocolName = protocol.__class__.__name__
        protocol = self._loseLean(reason)
        if protocol is not None:
            protocol.connectionLost(reason)


class LeanPort(tcp.Port):
    """
    Twisted's TCP port, accepting with less Python per connection (see the
    module's docstring); its connections are L{LeanServer}s.
    """

    transport = LeanServer
    #: Whether the listening socket has C{TCP_NODELAY}, which the sockets
    #: it accepts inherit (on Linux: L{LeanServer.setTcpNoDelay}).
    noDelay = False

    def startListening(self) -> None:
        """
        Listen as Twisted's port does, with C{TCP_NODELAY} on the listening
        socket (a handed-over one too), so that accepted sockets are born
        with it: one system call per port instead of one per connection.
        """
        super().startListening()
        if not _INHERITS_NODELAY:
            return
        try:
            self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            return
        self.noDelay = True

    def doRead(self) -> None:
        """
        Accept what is waiting, at most C{numberAccepts} connections, as
        Twisted's port does: its handling of C{accept}'s errors (running
        out of descriptors, a connection aborted before it was accepted)
        is Twisted's own (L{_acceptAsTwisted}).
        """
        try:
            listening: Any = self.socket
            accept = listening._accept
            family = self.addressFamily
            wanted = self.numberAccepts
            factory: Any = self.factory
            addressType = self._addressType
            transport = self.transport
            reactor = self.reactor
            accepted = 0
            while accepted < wanted:
                try:
                    fd, addr = accept()
                except BlockingIOError:
                    break
                except OSError as e:
                    accepted += self._acceptAsTwisted(e, wanted - accepted)
                    break
                accepted += 1
                skt: Any = LeanSocket(family, socket.SOCK_STREAM, 0, fd)
                skt.setblocking(False)
                if len(addr) != 2:
                    self._serve(skt, addr)
                    continue
                # (_serve for an IPv4 peer, inline.)
                if addressType is IPv4Address:
                    # IPv4Address("TCP", *addr), without its generated
                    # __init__'s call of the validator of "TCP" (a third of
                    # its cost): the same attributes, set in its order.
                    peer: Any = _newObject(IPv4Address)
                    peer.type = "TCP"
                    peer.host, peer.port = addr
                else:
                    peer = addressType("TCP", *addr)
                protocol = factory.buildProtocol(peer)
                if protocol is None:
                    skt.close()
                    continue
                s = self.sessionno
                self.sessionno = s + 1
                protocol.makeConnection(
                    transport(skt, protocol, addr, self, s, reactor)
                )
            # Twisted's scaling of the accepts per readiness.
            if accepted == wanted:
                self.numberAccepts = wanted + 20
            else:
                self.numberAccepts = max(1, accepted)
        except BaseException:
            log.deferr()

    def _serve(self, skt: socket.socket, addr: tuple[Any, ...]) -> None:
        """
        Make the accepted connection's protocol and transport, as Twisted's
        port does.
        """
        if len(addr) == 4:
            # IPv6: the scope by number, as Twisted's port reads it.
            host = socket.getnameinfo(addr, _NUMERIC)[0]
            addr = (host, *addr[1:])
        assert self.factory is not None
        protocol = self.factory.buildProtocol(self._addressType("TCP", *addr))
        if protocol is None:
            skt.close()
            return
        s = self.sessionno
        self.sessionno = s + 1
        transport = self.transport(skt, protocol, addr, self, s, self.reactor)
        protocol.makeConnection(transport)

    def _acceptAsTwisted(self, error: OSError, count: int) -> int:
        """
        Go on accepting as Twisted's port does after C{accept} failed with
        C{error}: Twisted's loop meets the error first (a netfilter's
        C{EPERM} is skipped; C{EMFILE} closes what can be accepted with
        Twisted's reserved descriptor freed; C{ENFILE}, C{ENOBUFS},
        C{ENOMEM} and C{ECONNABORTED} are logged and end the round; any
        other is raised), its log messages are kept until it is done.

        @param count: How many more accepts the round may try.
        @return: How many connections it served.
        """
        served = 0
        with tcp._BuffersLogs(self._logger.namespace, self._logger.observer) as logger:
            clients = tcp._accept(
                logger, range(count), _Failing(error, self.socket), tcp._reservedFD
            )
            for skt, addr in clients:
                served += 1
                skt.setblocking(False)
                self._serve(skt, addr)
        return served


class _Failing:
    """
    A listening socket whose next C{accept} fails with a given error, and
    then accepts as Python's does.
    """

    def __init__(self, error: OSError, listening: socket.socket) -> None:
        self._error: OSError | None = error
        self._listening = listening

    def accept(self) -> tuple[socket.socket, Any]:
        error, self._error = self._error, None
        if error is not None:
            raise error
        return self._listening.accept()


def listenTCP(
    reactor: Any,
    port: int,
    factory: IProtocolFactory,
    backlog: int = 50,
    interface: str = "",
) -> IListeningPort:
    """
    Listen as C{reactor.listenTCP} does; on Twisted's own reactors with a
    L{LeanPort}.
    """
    if not isinstance(reactor, PosixReactorBase):
        listening: IListeningPort = reactor.listenTCP(port, factory, backlog, interface)
        return listening
    p = LeanPort(port, factory, backlog, interface, reactor)
    p.startListening()
    return p


def adoptStreamPort(
    reactor: Any, fd: int, family: int, factory: IProtocolFactory
) -> IListeningPort:
    """
    Serve a listening TCP socket's descriptor (which stays open) as
    C{reactor.adoptStreamPort} does; on Twisted's own reactors with a
    L{LeanPort}.

    @raise UnsupportedAddressFamily: For a family other than IPv4 and
        IPv6.
    """
    if not isinstance(reactor, PosixReactorBase):
        listening: IListeningPort = reactor.adoptStreamPort(fd, family, factory)
        return listening
    if family not in (socket.AF_INET, socket.AF_INET6):
        raise UnsupportedAddressFamily(family)
    p: LeanPort = LeanPort._fromListeningDescriptor(reactor, fd, family, factory)
    p.startListening()
    return p
