"""
Tests for the lean accepted transport of L{wsrelay.ws.accepting}
(L{LeanPort}, L{LeanServer}): an accepted socket non-blocking and
close-on-exec, the addresses and log prefix Twisted's transport gives, IPv6,
Twisted's handling of C{accept}'s errors, a close with nothing queued that
sends the FIN without waiting to write and loses the connection later, a
close with data queued that still delivers it, and the relay's plain
listeners served by it, on loopback sockets.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import socket
from typing import Any

from twisted.internet import main, reactor
from twisted.internet.abstract import FileDescriptor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.tcp import Port
from twisted.internet.testing import MemoryReactor
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from tests.support.leanclose import LeanCloseTests as LeanClosing
from tests.support.nodelay import assertNoDelayKept
from tests.support.relays import startRelay
from tests.support.waiting import waitFor
from wsrelay.listening import LeanTCP, ListeningSockets
from wsrelay.proxyprotocol import listenerEndpoint
from wsrelay.ws.accepting import (
    LeanPort,
    LeanServer,
    LeanSocket,
    listenTCP,
)
from wsrelay.ws.watching import startWatching


class _Peer(Protocol):
    """
    Either end of a test connection: keeps what it receives and why its
    connection was lost.

    @ivar onMade: Called with the protocol once connected.
    """

    def __init__(self) -> None:
        self.received = b""
        self.lost: Deferred[list[Failure]] = Deferred()
        self.address: Any = None
        self.onMade: Any = None

    def connectionMade(self) -> None:
        if self.onMade is not None:
            self.onMade(self)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self.lost.callback([reason])


class _Producer:
    """
    A producer that notes what it was asked.
    """

    def __init__(self) -> None:
        self.calls: list[str] = []

    def resumeProducing(self) -> None:
        self.calls.append("resumeProducing")

    def pauseProducing(self) -> None:
        self.calls.append("pauseProducing")

    def stopProducing(self) -> None:
        self.calls.append("stopProducing")


class _Loopback(TestCase):
    """
    A L{LeanPort} on loopback whose connections' protocols are L{_Peer}s,
    and clients of it.
    """

    interface = "127.0.0.1"

    def setUp(self) -> None:
        self.accepted: list[_Peer] = []

        def build(addr: Any) -> _Peer:
            p = _Peer()
            p.address = addr
            self.accepted.append(p)
            return p

        factory = Factory()
        factory.buildProtocol = build  # type: ignore[method-assign,assignment]
        self.port: Any = listenTCP(reactor, 0, factory, 50, self.interface)
        self.addCleanup(self.port.stopListening)

    async def connect(self) -> tuple[_Peer, _Peer]:
        """
        @return: A connected client and the protocol the port accepted it
            with; both aborted at the end of the test if still open.
        """
        number = self.port.getHost().port
        if ":" in self.interface:
            endpoint: Any = TCP6ClientEndpoint(reactor, self.interface, number)
        else:
            endpoint = TCP4ClientEndpoint(reactor, self.interface, number)
        before = len(self.accepted)
        client = await endpoint.connect(Factory.forProtocol(_Peer))
        await waitFor(lambda: len(self.accepted) > before)
        server = self.accepted[before]
        for p in (client, server):
            self.addCleanup(_abort, p)
        return client, server


def _abort(p: Protocol) -> None:
    transport: Any = p.transport
    if transport is not None and transport.connected:
        transport.abortConnection()


class LeanAcceptTests(_Loopback):
    """
    What L{LeanPort} accepts with.
    """

    async def test_nonBlockingCloseOnExec(self) -> None:
        """
        The accepted socket is a L{LeanServer}'s, a L{LeanSocket},
        non-blocking (for the kernel and for Python) and close-on-exec, and
        it reads.
        """
        self.assertIsInstance(self.port, LeanPort)
        client, server = await self.connect()
        transport: Any = server.transport
        self.assertIsInstance(transport, LeanServer)
        fd = transport.fileno()
        self.assertTrue(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK)
        self.assertTrue(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC)
        self.assertEqual(transport.socket.gettimeout(), 0.0)
        self.assertIs(type(transport.socket), LeanSocket)
        self.assertIn(transport, reactor.getReaders())  # type: ignore[attr-defined]
        client.transport.write(b"hello")  # type: ignore[union-attr]
        await waitFor(lambda: server.received == b"hello")

    async def test_watchedDirectly(self) -> None:
        """
        The accepted transport is watched for reading, and not writing, as
        the reactor's C{addReader} would have it, without a call to
        C{addReader} (L{startWatching}).
        """
        added: list[Any] = []
        addReader = reactor.addReader  # type: ignore[attr-defined]

        def recording(reader: Any) -> None:
            added.append(reader)
            addReader(reader)

        self.patch(reactor, "addReader", recording)
        client, server = await self.connect()
        transport: Any = server.transport
        self.assertIn(transport, reactor.getReaders())  # type: ignore[attr-defined]
        self.assertNotIn(transport, reactor.getWriters())  # type: ignore[attr-defined]
        self.assertNotIn(transport, added)
        client.transport.write(b"read")  # type: ignore[union-attr]
        await waitFor(lambda: server.received == b"read")

    async def test_fileDescriptorState(self) -> None:
        """
        The transport has every attribute Twisted's C{FileDescriptor.__init__}
        sets (which L{LeanServer.__init__} does inline), as it sets them,
        before anything was written.
        """
        _, server = await self.connect()
        transport: Any = server.transport
        made = FileDescriptor(reactor=reactor)
        self.assertTrue(vars(made))
        for name, value in vars(made).items():
            self.assertEqual(getattr(transport, name), value, name)

    async def test_noDelayInherited(self) -> None:
        """
        The listening socket has C{TCP_NODELAY}, so an accepted socket is
        born with it: the transport turns it on with no system call, and
        still turns it off and on again with one each.
        """
        calls: list[bool] = []
        setNoDelay = Port.transport.setTcpNoDelay

        def recording(transport: Any, enabled: bool) -> None:
            calls.append(enabled)
            setNoDelay(transport, enabled)

        self.patch(Port.transport, "setTcpNoDelay", recording)
        listening = self.port.socket
        self.assertTrue(listening.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        client, server = await self.connect()
        assertNoDelayKept(self, server.transport, calls)

    async def test_addresses(self) -> None:
        """
        The factory is given the client's address, and the transport's
        C{getPeer} and C{getHost} are the two ends as the client sees them
        the other way round; its log prefix and C{repr} are Twisted's.
        """
        client, server = await self.connect()
        transport: Any = server.transport
        mine = client.transport.getHost()  # type: ignore[union-attr]
        self.assertEqual(server.address, mine)
        self.assertEqual(transport.getPeer(), mine)
        self.assertEqual(
            transport.getHost(),
            client.transport.getPeer(),  # type: ignore[union-attr]
        )
        self.assertIsInstance(transport.getPeer(), IPv4Address)
        number = self.port.getHost().port
        self.assertEqual(transport.logPrefix(), "_Peer,0,127.0.0.1")
        self.assertEqual(repr(transport), f"<_Peer #0 on {number}>")
        transport.loseConnection()
        await server.lost
        self.assertEqual(transport.logPrefix(), "_Peer,0,127.0.0.1")
        self.assertEqual(repr(transport), f"<_Peer #0 on {number}>")

    async def test_peerAsTwistedMakesIt(self) -> None:
        """
        The address the factory is given for an IPv4 client, made without
        L{IPv4Address}'s C{__init__}, is what that C{__init__} makes: the
        same class, the same attributes in the same order, the same hash
        and C{repr}.
        """
        client, server = await self.connect()
        mine: Any = client.transport.getHost()  # type: ignore[union-attr]
        made = IPv4Address("TCP", mine.host, mine.port)
        self.assertIs(type(server.address), IPv4Address)
        self.assertEqual(list(vars(server.address).items()), list(vars(made).items()))
        self.assertEqual(hash(server.address), hash(made))
        self.assertEqual(repr(server.address), repr(made))

    async def test_hostnameWhenAsked(self) -> None:
        """
        The transport's C{hostname} (Twisted's C{Server}'s, in its log
        prefix) is the client's host, read when asked rather than kept;
        one set in its place is kept and used.
        """
        client, server = await self.connect()
        transport: Any = server.transport
        self.assertNotIn("hostname", vars(transport))
        self.assertNotIn("_tempDataLen", vars(transport))
        self.assertEqual(transport.hostname, "127.0.0.1")
        transport.hostname = "elsewhere"
        self.assertEqual(transport.hostname, "elsewhere")
        self.assertEqual(transport.logPrefix(), "_Peer,0,elsewhere")

    async def test_registerProducer(self) -> None:
        """
        The transport registers a streaming producer as Twisted's does (in
        one call): it is the producer, streaming; a second one is refused
        with Twisted's C{RuntimeError}; a pull producer is resumed at
        once (Twisted's way); one registered once the connection is gone
        is stopped.
        """
        _, server = await self.connect()
        transport: Any = server.transport
        streaming, pull = _Producer(), _Producer()
        transport.registerProducer(streaming, True)
        self.assertEqual(
            (transport.producer, transport.streamingProducer), (streaming, True)
        )
        self.assertRaises(RuntimeError, transport.registerProducer, pull, False)
        transport.unregisterProducer()
        transport.registerProducer(pull, False)
        self.assertEqual(
            (transport.producer, transport.streamingProducer, pull.calls),
            (pull, False, ["resumeProducing"]),
        )
        transport.unregisterProducer()
        transport.loseConnection()
        await server.lost
        late = _Producer()
        transport.registerProducer(late, True)
        self.assertEqual((transport.producer, late.calls), (None, ["stopProducing"]))

    async def test_erroredAccept(self) -> None:
        """
        When C{accept} fails with an error other than "nothing waiting",
        Twisted's handling takes over: a netfilter's C{EPERM} is skipped
        and the next connection accepted (non-blocking too); an aborted
        connection (C{ECONNABORTED}) is logged and ends the round.
        """
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.port.socket = _FailingOnce(self.port.socket, errno.EPERM)
        client, server = await self.connect()
        transport: Any = server.transport
        self.assertIsInstance(transport, LeanServer)
        self.assertTrue(fcntl.fcntl(transport.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK)
        client.transport.write(b"hi")  # type: ignore[union-attr]
        await waitFor(lambda: server.received == b"hi")
        self.port.socket = _FailingOnce(self.port.socket._real, errno.ECONNABORTED)
        self.port.doRead()
        self.assertIn(
            "Could not accept new connection (ECONNABORTED)",
            [e.get("log_format", "").format(**e) for e in events],
        )


class StartWatchingTests(SynchronousTestCase):
    """
    L{startWatching} does only what the epoll reactor's C{addReader} or
    C{addWriter} would, for a descriptor it does not know.
    """

    def epoll(self) -> Any:
        """
        @return: An epoll reactor of the test's own, closed at its end.
        """
        r: Any = EPollReactor()

        def cleanUp() -> None:
            for reader in r._internalReaders:
                r.removeReader(reader)
                reader.connectionLost(None)
            r._poller.close()

        self.addCleanup(cleanUp)
        return r

    def test_known(self) -> None:
        """
        A descriptor the reactor watches already is left to the caller
        (Twisted's way changes its registration): nothing changes.
        """
        mine, peer = socket.socketpair()
        self.addCleanup(peer.close)
        self.addCleanup(mine.close)
        r = self.epoll()
        watched = FileDescriptor(reactor=r)
        watched.fileno = mine.fileno  # type: ignore[method-assign]
        r.addWriter(watched)
        self.assertFalse(startWatching(watched, r, select.EPOLLIN))
        self.assertEqual(
            (watched in r.getReaders(), watched in r.getWriters()), (False, True)
        )

    def test_watches(self) -> None:
        """
        A new descriptor is watched for what it is asked: reading or
        writing, and not the other.
        """
        mine, peer = socket.socketpair()
        self.addCleanup(peer.close)
        self.addCleanup(mine.close)
        r = self.epoll()
        for events, reading in [(select.EPOLLIN, True), (select.EPOLLOUT, False)]:
            watched = FileDescriptor(reactor=r)
            watched.fileno = mine.fileno  # type: ignore[method-assign]
            self.assertTrue(startWatching(watched, r, events))
            self.assertEqual(
                (watched in r.getReaders(), watched in r.getWriters()),
                (reading, not reading),
            )
            (r.removeReader if reading else r.removeWriter)(watched)

    def test_otherReactor(self) -> None:
        """
        On a reactor other than epoll's it does nothing: the caller starts
        reading or writing.
        """
        r = MemoryReactor()
        watched = FileDescriptor(reactor=r)
        self.assertFalse(startWatching(watched, r, select.EPOLLIN))


class LeanLossTests(SynchronousTestCase):
    """
    A lost lean transport leaves the epoll reactor as Twisted's
    C{stopReading} and C{stopWriting} would leave it.
    """

    def transport(self) -> tuple[Any, LeanServer, socket.socket]:
        """
        @return: An epoll reactor of the test's own, a L{LeanServer} (made
            without its port) watched by it for reading, and the other end
            of its socket.
        """
        r: Any = StartWatchingTests.epoll(self)  # type: ignore[arg-type]
        mine, peer = socket.socketpair()
        self.addCleanup(peer.close)
        self.addCleanup(mine.close)
        mine.setblocking(False)
        transport = LeanServer(mine, _Reading(), ("127.0.0.1", 1), None, 0, r)  # type: ignore[arg-type]
        return r, transport, peer

    def assertForgotten(self, r: Any, transport: LeanServer, fd: int) -> None:
        """
        The reactor watches the transport no more, in none of its tables.
        """
        self.assertNotIn(transport, r.getReaders())
        self.assertNotIn(transport, r.getWriters())
        self.assertNotIn(fd, r._reads)
        self.assertNotIn(fd, r._writes)
        self.assertNotIn(fd, r._selectables)

    def test_watchedBothWays(self) -> None:
        """
        A transport watched for reading and writing is forgotten, and its
        socket closed, when its connection is lost.
        """
        r, transport, peer = self.transport()
        fd = transport.fileno()
        transport.startWriting()
        self.assertIn(transport, r.getWriters())
        transport.connectionLost(Failure(main.CONNECTION_DONE))
        self.assertForgotten(r, transport, fd)
        self.assertEqual(peer.recv(10), b"")

    def test_readingOnly(self) -> None:
        """
        A transport watched for reading only, as every accepted connection
        is, is forgotten, and its socket closed, when its connection is
        lost.
        """
        r, transport, peer = self.transport()
        fd = transport.fileno()
        transport.connectionLost(Failure(main.CONNECTION_DONE))
        self.assertForgotten(r, transport, fd)
        self.assertEqual(peer.recv(10), b"")

    def test_descriptorClosedBehindItsBack(self) -> None:
        """
        A transport watched for reading whose descriptor was closed with
        C{os.close} (its socket still answers the number) fails to
        unregister it as Twisted's C{_remove} fails, having forgotten the
        transport first: the reactor holds on to no lost connection.
        """
        r, transport, peer = self.transport()
        fd = transport.fileno()
        os.close(fd)
        try:
            error = self.assertRaises(
                OSError, transport.connectionLost, Failure(main.CONNECTION_DONE)
            )
            self.assertEqual(error.errno, errno.EBADF)
            self.assertNotIn(fd, r._selectables)
        finally:
            transport.socket.detach()

    def test_socketClosedAlready(self) -> None:
        """
        A transport whose socket was closed behind its back (its descriptor
        reads as -1) falls back to Twisted's way, C{stopReading}: the
        reactor forgets it from its selectables, and fails to unregister
        the closed descriptor (Twisted's failure, as before the lean
        removal; its descriptor stays among the reactor's reads, as
        Twisted leaves it).
        """
        r, transport, peer = self.transport()
        fd = transport.fileno()
        transport.socket.close()
        error = self.assertRaises(
            OSError, transport.connectionLost, Failure(main.CONNECTION_DONE)
        )
        self.assertEqual(error.errno, errno.EBADF)
        self.assertNotIn(fd, r._selectables)


class _Reading(Protocol):
    """
    Keeps what it receives.
    """

    def __init__(self) -> None:
        self.received: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)


class _Resetting:
    """
    A socket whose C{recv} fails as a reset connection's does.
    """

    def recv(self, size: int) -> bytes:
        raise ConnectionResetError(errno.ECONNRESET, os.strerror(errno.ECONNRESET))


class LeanReadTests(SynchronousTestCase):
    """
    L{LeanServer.doRead} (L{LeanClose}'s, both legs') answers as Twisted's
    C{Connection.doRead} does.
    """

    def reading(self, sock: Any) -> tuple[LeanServer, _Reading]:
        """
        @return: A transport (made without its port) reading C{sock}, and
            its protocol.
        """
        transport = LeanServer.__new__(LeanServer)
        protocol = _Reading()
        transport.socket = sock
        transport.protocol = protocol
        return transport, protocol

    def test_reads(self) -> None:
        """
        What is there reaches the protocol, and nothing is returned; with
        nothing there, nothing is read; at the stream's end the connection
        is done; when C{recv} fails, it is lost.
        """
        mine, peer = socket.socketpair()
        self.addCleanup(peer.close)
        self.addCleanup(mine.close)
        mine.setblocking(False)
        transport, protocol = self.reading(mine)
        peer.send(b"head")
        self.assertIsNone(transport.doRead())
        self.assertEqual(protocol.received, [b"head"])
        self.assertIsNone(transport.doRead())
        self.assertEqual(protocol.received, [b"head"])
        peer.close()
        self.assertIs(transport.doRead(), main.CONNECTION_DONE)
        transport, protocol = self.reading(_Resetting())
        self.assertIs(transport.doRead(), main.CONNECTION_LOST)
        self.assertEqual(protocol.received, [])


class _FailingOnce:
    """
    A listening socket whose next C{_accept} fails with an error.
    """

    def __init__(self, real: socket.socket, error: int) -> None:
        self._real = real
        self._error: int | None = error

    def _accept(self) -> tuple[int, Any]:
        error, self._error = self._error, None
        if error is not None:
            raise OSError(error, os.strerror(error))
        return self._real._accept()  # type: ignore[attr-defined,no-any-return]

    def accept(self) -> tuple[socket.socket, Any]:
        return self._real.accept()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class LeanIPv6Tests(_Loopback):
    """
    L{LeanPort} on an IPv6 loopback address.
    """

    interface = "::1"

    def setUp(self) -> None:
        try:
            with socket.socket(socket.AF_INET6) as s:
                s.bind(("::1", 0))
        except OSError:
            raise SkipTest("no IPv6 loopback") from None
        super().setUp()

    async def test_addresses(self) -> None:
        """
        An IPv6 client's address is an L{IPv6Address}, for the factory and
        from C{getPeer}, and the host is the listening address.
        """
        client, server = await self.connect()
        transport: Any = server.transport
        mine = client.transport.getHost()  # type: ignore[union-attr]
        peer = transport.getPeer()
        self.assertIsInstance(peer, IPv6Address)
        self.assertEqual((peer.host, peer.port), ("::1", mine.port))
        self.assertEqual((server.address.host, server.address.port), ("::1", mine.port))
        self.assertEqual(transport.getHost().host, "::1")
        self.assertEqual(transport.logPrefix(), "_Peer,0,::1")


class LeanCloseTests(LeanClosing, _Loopback):
    """
    L{LeanServer.loseConnection} (L{wsrelay.ws.accepting.LeanClose}'s),
    its protocol closing the connection to a client.
    """

    async def ends(self) -> tuple[_Peer, _Peer]:
        client, server = await self.connect()
        return server, client


class ListenersTests(TestCase):
    """
    The relay's listeners are served by L{LeanPort} for plain TCP, by
    Twisted's port for TLS.
    """

    async def test_plainRelay(self) -> None:
        """
        A relay whose sockets Twisted holds serves its plain listener with
        a L{LeanPort}.
        """
        relay, _ = await startRelay(
            self, "[relay]\n[route:chat]\npath = /\nbackends = ws://127.0.0.1:1/\n"
        )
        [port] = await relay.whenListening()
        self.assertIsInstance(port, LeanPort)

    async def test_heldSockets(self) -> None:
        """
        The sockets the relay holds (workers, takeover) are served by a
        L{LeanPort} for C{tcp:} and behind C{haproxy:}, and also while
        covering for a worker.
        """
        for description in (
            "tcp:0:interface=127.0.0.1",
            "haproxy:tcp:0:interface=127.0.0.1",
        ):
            sockets = ListeningSockets(reactor, description, workers=2)
            self.addCleanup(sockets.close)
            endpoint = listenerEndpoint(sockets, description)
            port: Any = await endpoint.listen(Factory.forProtocol(Protocol))
            self.addCleanup(port.stopListening)
            self.assertIsInstance(port, LeanPort)
            sockets.cover(1)
            self.addCleanup(sockets.uncover, 1)
            [covering] = sockets._covering[1]
            self.assertIsInstance(covering, LeanPort)

    async def test_tls(self) -> None:
        """
        A TLS listener keeps Twisted's own port, held or not.
        """
        from tests.support.tls import makeCertificates

        directory = self.mktemp()
        os.makedirs(directory)
        paths = makeCertificates(directory, ["127.0.0.1"])
        description = (
            f"ssl:0:interface=127.0.0.1:privateKey={paths['key']}"
            f":certKey={paths['cert']}"
        )
        for listenOn in (LeanTCP(reactor), ListeningSockets(reactor, description)):
            endpoint = listenerEndpoint(listenOn, description)
            port: Any = await endpoint.listen(Factory.forProtocol(Protocol))
            self.addCleanup(port.stopListening)
            self.assertIs(type(port), Port)
            if isinstance(listenOn, ListeningSockets):
                self.addCleanup(listenOn.close)
