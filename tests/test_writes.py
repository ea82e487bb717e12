"""
L{wsrelay.ws.writes.directWrite}: sending at once on a TCP connection with
nothing queued, and leaving everything else to Twisted's C{write}.
"""

from __future__ import annotations

import socket
import struct

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.tcp import Connection
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.support import TIMEOUT, inThread
from tests.support.waiting import waitFor
from wsrelay.proxyprotocol import ProxyProtocolWrapper
from wsrelay.ws import writes
from wsrelay.ws.writes import DirectWriter, directWrite, sendNow, sendWithTurn

#: The attributes of Twisted's TCP connection that L{directWrite},
#: L{sendWithTurn} and L{wsrelay.fanout.pending.Pending.flush} read.
TCP_ATTRIBUTES = (
    "_tempDataBuffer",
    "_tempDataLen",
    "_aborting",
    "dataBuffer",
    "connected",
    "disconnecting",
    "reactor",
    "socket",
    "write",
)


def readUpTo(peer: socket.socket, size: int) -> bytes:
    """
    Read from C{peer}, blocking, until C{size} bytes came or the stream
    ended.
    """
    got = bytearray()
    while len(got) < size:
        chunk = peer.recv(1 << 16)
        if not chunk:
            break
        got += chunk
    return bytes(got)


class Server(Protocol):
    """
    The relay's end of a loopback connection: tells when it is made and
    lost.
    """

    def __init__(self, made: Deferred[Server]) -> None:
        self.made = made
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        """
        Hand the protocol, and so its transport, to the test.
        """
        self.made.callback(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        Tell the test.
        """
        self.lost.callback(None)


class NotTCPTests(SynchronousTestCase):
    """
    Transports other than Twisted's TCP connection get their own C{write}.
    """

    def test_otherTransport(self) -> None:
        """
        A transport that is not a TCP connection (TLS, a test's) is written
        with its C{write}.
        """
        transport = StringTransport()
        self.assertEqual(directWrite(transport), transport.write)

    def test_proxyProtocolWrapper(self) -> None:
        """
        A PROXY protocol wrapper is looked through: the transport under it
        is written.
        """
        transport = StringTransport()
        wrapper = ProxyProtocolWrapper.__new__(ProxyProtocolWrapper)
        wrapper.transport = transport
        write = directWrite(wrapper)
        self.assertEqual(write, transport.write)
        write(b"past the header")
        self.assertEqual(transport.value(), b"past the header")

    def test_sendNowWrapperOverOther(self) -> None:
        """
        L{sendNow} writes to a PROXY protocol wrapper over a transport that
        is not a TCP connection with the wrapper's C{write}, which passes
        the bytes on.
        """
        transport = StringTransport()
        wrapper = ProxyProtocolWrapper.__new__(ProxyProtocolWrapper)
        wrapper.transport = transport
        sendNow(wrapper, b"head")
        self.assertEqual(transport.value(), b"head")

    def test_sendWithTurnOtherTransport(self) -> None:
        """
        L{sendWithTurn} writes to a transport that is not a TCP connection
        (TLS, a test's), or a PROXY protocol wrapper over one, with its
        C{write}, at once.
        """
        transport = StringTransport()
        wrapper = ProxyProtocolWrapper.__new__(ProxyProtocolWrapper)
        wrapper.transport = transport
        sendWithTurn(transport, b"head,")
        sendWithTurn(wrapper, b"again")
        self.assertEqual(transport.value(), b"head,again")

    def test_sendNowOtherTransport(self) -> None:
        """
        L{sendNow} writes to a transport that is not a TCP connection with
        its C{write}.
        """
        transport = StringTransport()
        sendNow(transport, b"head")
        self.assertEqual(transport.value(), b"head")


class TCPTests(TestCase):
    """
    On a real loopback connection, what L{directWrite} sends, queues and
    leaves to Twisted.
    """

    async def connect(self, sendBuffer: int = 0) -> tuple[Server, socket.socket]:
        """
        Listen on loopback and connect a raw client.

        @param sendBuffer: C{SO_SNDBUF} of the relay's end, if not 0.
        @return: The relay's end and the raw client.
        """
        made: Deferred[Server] = Deferred()
        factory = Factory.forProtocol(lambda: Server(made))
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            factory
        )
        self.addCleanup(port.stopListening)
        peer = socket.socket()
        self.addCleanup(peer.close)
        peer.settimeout(TIMEOUT)
        await inThread(peer.connect, ("127.0.0.1", port.getHost().port))
        server = await made
        assert server.transport is not None
        transport = server.transport
        self.addCleanup(transport.loseConnection)
        if sendBuffer:
            transport.socket.setsockopt(  # type: ignore[attr-defined]
                socket.SOL_SOCKET, socket.SO_SNDBUF, sendBuffer
            )
        return server, peer

    async def test_attributes(self) -> None:
        """
        Twisted's TCP connection has every attribute L{directWrite} reads
        (an upgrade of Twisted that renames one fails here, by name).
        """
        server, _ = await self.connect()
        self.assertIsInstance(server.transport, Connection)
        missing = [a for a in TCP_ATTRIBUTES if not hasattr(server.transport, a)]
        self.assertEqual(missing, [], "Twisted's tcp.Connection lacks these")

    async def test_sentAtOnce(self) -> None:
        """
        With nothing queued, the bytes are sent before the call returns:
        Twisted's buffers stay empty and the peer can read them at once.
        """
        server, peer = await self.connect()
        transport = server.transport
        write = directWrite(transport)
        write(b"now")
        self.assertEqual(
            (transport._tempDataBuffer, transport.dataBuffer),  # type: ignore[union-attr]
            ([], b""),
        )
        self.assertEqual(peer.recv(16), b"now")

    async def test_sharedMethod(self) -> None:
        """
        The writer for a TCP connection is a L{DirectWriter}'s C{write}:
        the method its class shares, on an object of two slots, not a
        function made for the connection.
        """
        server, peer = await self.connect()
        transport = server.transport
        write = directWrite(transport)
        self.assertIs(write.__func__, DirectWriter.write)  # type: ignore[attr-defined]
        writer = write.__self__  # type: ignore[attr-defined]
        self.assertEqual((writer.tcp, writer.other), (transport, None))
        self.assertFalse(hasattr(writer, "__dict__"))
        write(b"shared")
        self.assertEqual(await inThread(peer.recv, 64), b"shared")

    async def test_sendNow(self) -> None:
        """
        L{sendNow} sends at once with nothing queued, and behind what is
        queued otherwise, in order.
        """
        server, peer = await self.connect()
        transport = server.transport
        assert transport is not None
        sendNow(transport, b"now,")
        self.assertEqual(transport._tempDataBuffer, [])  # type: ignore[attr-defined]
        transport.write(b"first,")
        sendNow(transport, b"second")
        got = b""
        while len(got) < 16:
            got += await inThread(peer.recv, 64)
        self.assertEqual(got, b"now,first,second")

    async def test_sendWithTurn(self) -> None:
        """
        L{sendWithTurn} sends at the end of the reactor's turn, not before
        the call returns, and without registering the connection for
        writing meanwhile (which would cost an C{epoll_ctl} each way); the
        peer then gets the bytes, and Twisted's buffers are empty again.
        """
        server, peer = await self.connect()
        transport = server.transport
        assert isinstance(transport, Connection)
        sendWithTurn(transport, b"at the turn's end")
        self.assertEqual(transport._tempDataBuffer, [b"at the turn's end"])
        self.assertNotIn(transport, reactor.getWriters())
        self.assertEqual(await inThread(peer.recv, 64), b"at the turn's end")
        self.assertEqual((transport._tempDataBuffer, transport.dataBuffer), ([], b""))
        self.assertNotIn(transport, reactor.getWriters())

    async def test_sendWithTurnGoesFirst(self) -> None:
        """
        What is written to the connection after L{sendWithTurn} in the same
        turn, by any of the relay's writers or Twisted's C{write}, reaches
        the peer after it: a backend's first message, read with its 101,
        never overtakes the client's 101.
        """
        server, peer = await self.connect()
        transport = server.transport
        assert isinstance(transport, Connection)
        sendWithTurn(transport, b"101,")
        directWrite(transport)(b"first,")
        sendNow(transport, b"second,")
        DirectWriter(transport).write(b"third,")
        transport.write(b"fourth")
        expected = b"101,first,second,third,fourth"
        got = b""
        while len(got) < len(expected):
            got += await inThread(peer.recv, 64)
        self.assertEqual(got, expected)
        await waitFor(lambda: transport not in reactor.getWriters())
        self.assertEqual((transport._tempDataBuffer, transport.dataBuffer), ([], b""))

    async def test_sendWithTurnThenClose(self) -> None:
        """
        A connection closed in the same turn (C{loseConnection}) sends
        what L{sendWithTurn} was given, then ends.
        """
        server, peer = await self.connect()
        transport = server.transport
        assert transport is not None
        sendWithTurn(transport, b"last words")
        transport.loseConnection()

        # (Up to the end of the stream.)
        self.assertEqual(await inThread(readUpTo, peer, 1 << 20), b"last words")
        await server.lost

    async def test_sendWithTurnAborted(self) -> None:
        """
        A connection aborted in the same turn is sent nothing of what
        L{sendWithTurn} was given: an abort drops what is queued.
        """
        server, peer = await self.connect()
        transport = server.transport
        assert isinstance(transport, Connection)
        sendWithTurn(transport, b"dropped")
        transport.abortConnection()
        await server.lost

        def readAll() -> bytes:
            got = b""
            try:
                while chunk := peer.recv(64):
                    got += chunk
            except ConnectionResetError:
                pass
            return got

        self.assertEqual(await inThread(readAll), b"")

    async def test_sendWithTurnPartial(self) -> None:
        """
        What the socket does not take at the turn's end is queued with
        Twisted's C{write}, and the peer gets everything in order.
        """
        server, peer = await self.connect(sendBuffer=4096)
        transport = server.transport
        assert transport is not None
        data = b"".join(struct.pack("!I", i) for i in range(1 << 18))
        sendWithTurn(transport, data)

        self.assertEqual(await inThread(readUpTo, peer, len(data)), data)

    async def test_sendWithTurnLost(self) -> None:
        """
        A connection lost before the turn's end is sent nothing, and its
        write logs no error; one lost already is given nothing to queue.
        """
        server, peer = await self.connect()
        transport = server.transport
        assert isinstance(transport, Connection)
        sendWithTurn(transport, b"never sent")
        # As the reactor loses a connection whose peer is gone.
        transport.connectionLost(Failure(ConnectionDone()))
        await server.lost
        await waitFor(lambda: not writes._turnWrites._pending)
        self.assertEqual(await inThread(peer.recv, 64), b"")
        sendWithTurn(transport, b"too late")
        self.assertEqual(transport._tempDataBuffer, [b"never sent"])
        self.assertEqual(self.flushLoggedErrors(), [])

    async def test_sendNowUnderProxyHeader(self) -> None:
        """
        L{sendNow} looks through a PROXY protocol wrapper: the TCP
        connection under it is sent to at once, with nothing queued.
        """
        server, peer = await self.connect()
        transport = server.transport
        assert transport is not None
        wrapper = ProxyProtocolWrapper.__new__(ProxyProtocolWrapper)
        wrapper.transport = transport
        sendNow(wrapper, b"past the header")
        self.assertEqual(transport._tempDataBuffer, [])  # type: ignore[attr-defined]
        self.assertEqual(await inThread(peer.recv, 64), b"past the header")

    async def test_writerUnderProxyHeader(self) -> None:
        """
        A L{DirectWriter} given a PROXY protocol wrapper writes to the TCP
        connection under it, as one given the connection does.
        """
        server, _ = await self.connect()
        transport = server.transport
        wrapper = ProxyProtocolWrapper.__new__(ProxyProtocolWrapper)
        wrapper.transport = transport
        for given in (wrapper, transport):
            writer = DirectWriter(given)
            self.assertEqual((writer.tcp, writer.other), (transport, None))

    async def test_queuedStaysInOrder(self) -> None:
        """
        While Twisted holds bytes for the connection, later ones are queued
        behind them through C{transport.write}, and the peer gets all of
        them in order.
        """
        server, peer = await self.connect()
        transport = server.transport
        assert transport is not None
        write = directWrite(transport)
        transport.write(b"first,")
        write(b"second")
        self.assertEqual(
            transport._tempDataBuffer,  # type: ignore[attr-defined]
            [b"first,", b"second"],
        )
        got = b""
        while len(got) < 12:
            got += await inThread(peer.recv, 64)
        self.assertEqual(got, b"first,second")

    async def test_partialSend(self) -> None:
        """
        When the socket takes only part of the bytes, the rest is queued
        with C{transport.write} (Twisted's flow control applies to it) and
        the peer gets everything in order.
        """
        server, peer = await self.connect(sendBuffer=4096)
        transport = server.transport
        assert transport is not None
        write = directWrite(transport)
        data = b"".join(struct.pack("!I", i) for i in range(1 << 20))
        write(data)
        queued = len(b"".join(transport._tempDataBuffer))  # type: ignore[attr-defined]
        self.assertGreater(queued, 0)
        self.assertLess(queued, len(data))

        self.assertEqual(await inThread(readUpTo, peer, len(data)), data)

    async def test_sendError(self) -> None:
        """
        A send that fails (the peer reset the connection) raises nothing:
        the bytes go to Twisted's C{write}, which meets the error on its
        own and loses the connection.
        """
        server, peer = await self.connect()
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()
        transport = server.transport
        assert transport is not None
        write = directWrite(transport)
        write(b"after the reset")
        self.assertEqual(
            transport._tempDataBuffer,  # type: ignore[attr-defined]
            [b"after the reset"],
        )
        await server.lost

    async def test_disconnecting(self) -> None:
        """
        A connection that is closing (C{loseConnection}, nothing queued) is
        still sent what it is given, before its end, as Twisted's C{write}
        would send it.
        """
        server, peer = await self.connect()
        transport = server.transport
        assert transport is not None
        write = directWrite(transport)
        transport.loseConnection()
        write(b"last words")

        # (Up to the end of the stream.)
        self.assertEqual(await inThread(readUpTo, peer, 1 << 20), b"last words")
        await server.lost

    async def test_lost(self) -> None:
        """
        Once the connection is lost its socket is closed: a write, or
        L{sendNow}, raises nothing, sends nothing and queues nothing.
        """
        server, peer = await self.connect()
        transport = server.transport
        assert transport is not None
        write = directWrite(transport)
        transport.loseConnection()
        await server.lost
        write(b"too late")
        sendNow(transport, b"too late too")
        self.assertEqual(
            (transport._tempDataBuffer, transport.dataBuffer),  # type: ignore[attr-defined]
            ([], b""),
        )
        self.assertEqual(await inThread(peer.recv, 64), b"")
