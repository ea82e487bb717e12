"""
Tests for the lean TCP client transport of L{wsrelay.ws.connecting}
(C{_IPClient}): a socket created non-blocking, a connect that asks for the
socket's error only once it could complete and ends waiting to read only,
failures reported as Twisted's transport reports them, a plain leg's
request sent at once, and a close with nothing to send without the write
turn (L{wsrelay.ws.accepting.LeanClose}), on loopback sockets.
"""

from __future__ import annotations

import errno
import fcntl
import gc
import os
import weakref
from functools import partial
from typing import Any

from twisted.internet import reactor
from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred
from twisted.internet.error import (
    ConnectionDone,
    ConnectionRefusedError,
    NoRouteError,
)
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.tcp import Connection
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from tests.support.backends import listenRecording, plainEndpoint
from tests.support.leanclose import LeanCloseTests as LeanClosing
from tests.support.nodelay import assertNoDelayKept
from tests.support.waiting import waitFor
from wsrelay.ws.accepting import LeanSocket
from wsrelay.ws.connecting import PlainTCPEndpoint
from wsrelay.ws.plainleg import PlainUpstream
from wsrelay.ws.tcpclient import DirectConnector


class _Backend(Protocol):
    """
    A backend that keeps what it receives.
    """

    def __init__(self) -> None:
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data


class _Client(Protocol):
    """
    A client protocol that records what its transport was registered for
    when it connected.
    """

    reading: bool | None = None
    writing: bool | None = None

    def connectionMade(self) -> None:
        r: Any = reactor
        self.reading = self.transport in r.getReaders()
        self.writing = self.transport in r.getWriters()


class _Factory(ClientFactory):
    """
    Builds one protocol and hears of a failed connect.
    """

    def __init__(self, protocol: Protocol) -> None:
        self.built = protocol
        self.failed: Deferred[list[Failure]] = Deferred()

    def buildProtocol(self, addr: object) -> Protocol:
        return self.built

    def clientConnectionFailed(self, connector: object, reason: Failure) -> None:
        self.failed.callback([reason])

    def clientConnectionLost(self, connector: object, reason: Failure) -> None:
        self.lost: Failure = reason


class _Loopback(TestCase):
    """
    A backend on loopback, and direct connects to it.
    """

    backend = _Backend

    def setUp(self) -> Deferred[None]:
        self.accepted: list[_Backend] = []
        d = listenRecording(self.backend, self.accepted)

        def listening(port: Any) -> None:
            self.listening = port
            self.addCleanup(port.stopListening)

        return d.addCallback(listening)

    def endpoint(self) -> PlainTCPEndpoint:
        """
        @return: The backend's endpoint.
        """
        return plainEndpoint(self.listening)

    def connect(
        self, protocol: Protocol, endpoint: PlainTCPEndpoint | None = None
    ) -> _Factory:
        """
        Connect C{protocol} directly to the backend (or C{endpoint}); abort
        it at the end.
        """
        factory = _Factory(protocol)
        (endpoint or self.endpoint()).connectDirect(factory)

        def abort() -> None:
            transport: Any = protocol.transport
            if transport is not None and transport.connected:
                transport.abortConnection()

        self.addCleanup(abort)
        return factory


class LeanConnectTests(_Loopback):
    """
    C{PlainTCPEndpoint.connectDirect}'s transport on loopback.
    """

    async def test_readingOnlyOnceConnected(self) -> None:
        """
        Once connected the transport waits to read and not to write: the
        connect's wait for the socket to be writable has ended.
        """
        client = _Client()
        self.connect(client)
        await waitFor(lambda: client.reading is not None)
        self.assertEqual((client.reading, client.writing), (True, False))
        await waitFor(lambda: self.accepted)

    async def test_watchedDirectly(self) -> None:
        """
        Until its connect starts (the turn's batch) the transport is not
        watched; while it connects it is watched for writing only, and
        once connected for reading only, without a call to the reactor's
        C{addWriter} or C{addReader} (L{startWatching}, then one change of
        its registration).
        """
        added: list[Any] = []
        for name in ("addReader", "addWriter"):
            real = getattr(reactor, name)

            def recording(selectable: Any, real: Any = real, name: str = name) -> None:
                added.append((name, selectable))
                real(selectable)

            self.patch(reactor, name, recording)
        client = _Client()
        factory = _Factory(client)
        connector: Any = self.endpoint().connectDirect(factory)
        self.addCleanup(connector.disconnect)
        transport: Any = connector.transport
        r: Any = reactor
        self.assertEqual(
            (transport in r.getReaders(), transport in r.getWriters()), (False, False)
        )
        watched: list[tuple[bool, bool]] = []
        started = transport._connectNow

        def connectNow() -> None:
            started()
            watched.append((transport in r.getReaders(), transport in r.getWriters()))

        transport._connectNow = connectNow
        await waitFor(lambda: client.reading is not None)
        self.assertEqual(watched, [(False, True)])
        self.assertEqual((client.reading, client.writing), (True, False))
        self.assertEqual([a for a in added if a[1] is transport], [])
        await waitFor(lambda: self.accepted)

    async def test_fileDescriptorState(self) -> None:
        """
        The transport has every attribute Twisted's C{FileDescriptor.__init__}
        sets (which C{_IPClient.__init__} does inline), as it sets them,
        before anything was written.
        """
        client = _Client()
        self.connect(client)
        await waitFor(lambda: client.reading is not None)
        transport: Any = client.transport
        made = FileDescriptor(reactor=reactor)
        self.assertTrue(vars(made))
        for name, value in vars(made).items():
            self.assertEqual(getattr(transport, name), value, name)
        await waitFor(lambda: self.accepted)

    async def test_noDelayFromTheStart(self) -> None:
        """
        The socket is made with C{TCP_NODELAY} on, before it connects:
        once connected, the leg's C{setTcpNoDelay(True)} makes no system
        call (Twisted's C{setTcpNoDelay} is not called), and turning it off
        and on again still makes one call each.
        """
        calls: list[bool] = []
        twisteds = Connection.setTcpNoDelay

        def recording(transport: Any, enabled: bool) -> None:
            calls.append(enabled)
            twisteds(transport, enabled)

        self.patch(Connection, "setTcpNoDelay", recording)
        client = _Client()
        connector: Any = self.endpoint().connectDirect(_Factory(client))
        self.addCleanup(connector.disconnect)
        transport: Any = connector.transport
        self.assertTrue(transport.getTcpNoDelay())
        await waitFor(lambda: client.reading is not None)
        assertNoDelayKept(self, transport, calls)
        await waitFor(lambda: self.accepted)

    async def test_nothingUnread(self) -> None:
        """
        A connected transport to an IPv4 host keeps none of its own of
        what Twisted's transport sets per connection and the lean path
        never reads (the queued length, whether the host is a name, a
        second copy of the socket's C{TCP_NODELAY}): each is its class's.
        """
        client = _Client()
        self.connect(client)
        await waitFor(lambda: client.reading is not None)
        transport: Any = client.transport
        own = vars(transport)
        for name in ("_tempDataLen", "_requiresResolution", "_noDelay"):
            self.assertNotIn(name, own)
        self.assertEqual(
            (transport._tempDataLen, transport._requiresResolution), (0, False)
        )
        await waitFor(lambda: self.accepted)

    async def test_nonBlocking(self) -> None:
        """
        The connected socket (a L{LeanSocket}) is non-blocking, without
        Twisted's C{setblocking} after it was made (it was created so).
        """
        client = _Client()
        self.connect(client)
        await waitFor(lambda: client.reading is not None)
        transport: Any = client.transport
        flags = fcntl.fcntl(transport.fileno(), fcntl.F_GETFL)
        self.assertTrue(flags & os.O_NONBLOCK)
        self.assertEqual(transport.socket.gettimeout(), 0.0)
        self.assertTrue(fcntl.fcntl(transport.fileno(), fcntl.F_GETFD) & 1)
        self.assertIs(type(transport.socket), LeanSocket)

    async def test_refused(self) -> None:
        """
        A connect to a port nobody listens on fails as through Twisted's
        own transport: C{clientConnectionFailed} with
        L{ConnectionRefusedError} (not the bare C{ConnectError} of a
        connection lost), and the transport leaves the reactor.
        """
        endpoint = self.endpoint()
        await self.listening.stopListening()
        client = _Client()
        factory = self.connect(client, endpoint)
        [reason] = await factory.failed
        self.assertIs(type(reason.value), ConnectionRefusedError)
        self.assertIsNone(client.transport)
        r: Any = reactor
        clients = [
            s
            for s in r.getReaders() + r.getWriters()
            if type(s).__name__ == "_IPClient"
        ]
        self.assertEqual(clients, [])

    async def test_stopConnecting(self) -> None:
        """
        An attempt stopped before it completes fails with Twisted's
        C{UserError}, and never connects.
        """
        client = _Client()
        factory = _Factory(client)
        connector: Any = self.endpoint().connectDirect(factory)
        transport = connector.transport
        started: list[bool] = []
        connectNow = transport._connectNow

        def recording() -> None:
            started.append(hasattr(transport, "socket"))
            connectNow()

        transport._connectNow = recording
        connector.stopConnecting()
        [reason] = await factory.failed
        self.assertEqual(type(reason.value).__name__, "UserError")
        # The turn's batch of connects comes to it, and skips it: its
        # socket is closed already.
        await waitFor(lambda: started)
        self.assertEqual(started, [False])
        self.assertIsNone(client.reading)
        self.assertEqual(self.accepted, [])

    async def test_requestSentAtOnce(self) -> None:
        """
        A plain leg sends the request from C{connectionMade} itself: it
        reaches the backend, and nothing waits in Twisted's buffer nor for
        the socket to be writable.
        """
        leg = PlainUpstream()
        leg.resource = "/chat"
        leg.hostHeader = "backend"
        leg.requestHeaders = []
        seen: list[tuple[bool, int]] = []
        made = leg.connectionMade

        def connectionMade() -> None:
            made()
            transport: Any = leg.transport
            r: Any = reactor
            seen.append((transport in r.getWriters(), len(transport.dataBuffer)))

        leg.connectionMade = connectionMade  # type: ignore[method-assign]
        self.connect(leg)
        await waitFor(
            lambda: self.accepted and b"\r\n\r\n" in self.accepted[0].received
        )
        self.assertEqual(seen, [(False, 0)])
        self.assertTrue(self.accepted[0].received.startswith(b"GET /chat HTTP/1.1\r\n"))


class _AskRecording:
    """
    A socket that records what it is asked with C{getsockopt}.
    """

    def __init__(self, wrapped: Any, asked: list[tuple[Any, ...]]) -> None:
        self._wrapped = wrapped
        self._asked = asked

    def getsockopt(self, *args: Any) -> Any:
        self._asked.append(args)
        return self._wrapped.getsockopt(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._wrapped, name)


class DirectConnectorTests(_Loopback):
    """
    The connector of C{PlainTCPEndpoint.connectDirect} (C{_DirectConnector})
    on loopback: it connects with the turn's other connects, reports a
    failure later, and lets go of a closed connection's transport.
    """

    async def test_connectsWithTheTurn(self) -> None:
        """
        The connects asked for in one reactor turn start together, in the
        order asked, from one timed call (Twisted's transport takes one
        each): when C{connectDirect} returns, the transport has no
        connection yet (nor is it watched), and once the call ran the
        backend accepts the connections in that order.
        """
        r: Any = reactor
        before = set(r.getDelayedCalls())
        clients = [_Client() for _ in range(3)]
        connectors: list[Any] = [
            self.endpoint().connectDirect(_Factory(c)) for c in clients
        ]
        for connector in connectors:
            self.addCleanup(connector.disconnect)
            assert isinstance(connector, DirectConnector)
            self.assertEqual(connector.state, "connecting")
            transport = connector.transport
            self.assertNotIn(transport, r.getWriters())
            with self.assertRaises(OSError) as raised:
                transport.socket.getpeername()
            self.assertEqual(raised.exception.errno, errno.ENOTCONN)
        self.assertEqual(len(set(r.getDelayedCalls()) - before), 1)
        await waitFor(lambda: len(self.accepted) == 3)
        await waitFor(lambda: all(c.reading is not None for c in clients))
        ours = [c.transport.getHost().port for c in clients]  # type: ignore[union-attr]
        theirs = [b.transport.getPeer().port for b in self.accepted]  # type: ignore[attr-defined]
        self.assertEqual(theirs, ours)

    async def test_failureLater(self) -> None:
        """
        A connect that fails at once (no route to a broadcast address) is
        reported from a later call, never from C{connectDirect}, with the
        error Twisted's transport reports, and its socket is closed.
        """
        endpoint = PlainTCPEndpoint(reactor, "255.255.255.255", 80, 5)  # type: ignore[arg-type]
        client = _Client()
        factory = self.connect(client, endpoint)
        self.assertNoResult(factory.failed)
        [reason] = await factory.failed
        self.assertIs(type(reason.value), NoRouteError)
        self.assertIsNone(client.transport)

    async def test_connectedErrorNotAsked(self) -> None:
        """
        On an epoll reactor, a connect whose socket became writable is not
        asked for the socket's error (a failed one comes to the transport's
        C{connectionLost}, L{LeanConnectTests.test_refused}): the connection
        is made with no C{getsockopt}.
        """
        client = _Closing()
        connector: Any = self.endpoint().connectDirect(_Factory(client))
        transport = connector.transport
        asked: list[tuple[Any, ...]] = []
        transport.socket = _AskRecording(transport.socket, asked)
        self.addCleanup(transport.abortConnection)
        await client.made
        self.assertEqual(asked, [])
        self.assertTrue(transport.connected)

    async def test_freedWithoutCollector(self) -> None:
        """
        A closed connection's transport and connector are freed by
        reference counting (Twisted's connector keeps its transport, which
        refers back to it: a cycle per connection left to the collector),
        even with a factory that keeps its protocol, which keeps its
        transport.
        """
        if gc.isenabled():
            gc.disable()
            self.addCleanup(gc.enable)
        client = _Closing()
        factory = _Factory(client)
        connector = self.endpoint().connectDirect(factory)
        await client.made
        transport: Any = client.transport
        transport.loseConnection()
        await client.lost
        await waitFor(partial(hasattr, factory, "lost"))
        self.assertEqual(connector.state, "disconnected")
        refs = [weakref.ref(transport), weakref.ref(connector)]
        # The test's own references: to the protocol (which keeps its
        # transport), the factory (which keeps the protocol), and both.
        del client, factory, connector, transport
        self.assertEqual([ref() for ref in refs], [None, None])


class _Ending(_Backend):
    """
    A backend that also hears why its connection was lost.
    """

    def __init__(self) -> None:
        super().__init__()
        self.lost: Deferred[list[Failure]] = Deferred()

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self.lost.callback([reason])


class _Closing(Protocol):
    """
    A client protocol that hears when it connected and why its connection
    was lost.
    """

    def __init__(self) -> None:
        self.made: Deferred[None] = Deferred()
        self.lost: Deferred[list[Failure]] = Deferred()

    def connectionMade(self) -> None:
        self.made.callback(None)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self.lost.callback([reason])


class _Named(_Closing):
    """
    A client protocol with a log prefix of its own.
    """

    def logPrefix(self) -> str:
        return "named"


class LogPrefixTests(_Loopback):
    """
    The transport's C{logstr}, made when read, reads as Twisted's
    C{Client} makes it at each connect.
    """

    async def test_connected(self) -> None:
        """
        Connected: the protocol's log prefix, then C{",client"}; after the
        connection, the protocol's class name's.
        """
        client = _Named()
        self.connect(client)
        await client.made
        transport: Any = client.transport
        self.assertEqual(
            (transport.logstr, transport.logPrefix()), ("named,client",) * 2
        )
        transport.loseConnection()
        await client.lost
        self.assertEqual(transport.logstr, "_Named,client")

    async def test_set(self) -> None:
        """
        A prefix set in its place is kept.
        """
        client = _Closing()
        self.connect(client)
        await client.made
        transport: Any = client.transport
        transport.logstr = "other"
        self.assertEqual(transport.logPrefix(), "other")


class _Pull:
    """
    A pull producer with nothing to give.
    """

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class LeanCloseTests(LeanClosing, _Loopback):
    """
    The upstream transport's C{loseConnection}
    (L{wsrelay.ws.accepting.LeanClose}'s), its
    protocol closing the connection to a backend.
    """

    backend = _Ending

    async def connected(self) -> tuple[_Closing, _Ending, _Factory]:
        """
        @return: A client connected directly to the backend, the backend's
            protocol, and the client's factory.
        """
        client = _Closing()
        factory = self.connect(client)
        await client.made
        await waitFor(lambda: self.accepted)
        return client, self.accepted[0], factory  # type: ignore[return-value]

    async def ends(self) -> tuple[_Closing, _Ending]:
        client, backend, factory = await self.connected()
        return client, backend

    async def test_factoryHears(self) -> None:
        """
        The connection closed with nothing to send is lost for the
        connector too: the factory hears it, with Twisted's reason.
        """
        client, backend, factory = await self.connected()
        client.transport.loseConnection()  # type: ignore[union-attr]
        await backend.lost
        await waitFor(lambda: hasattr(factory, "lost"))
        self.assertIs(type(factory.lost.value), ConnectionDone)

    async def test_halfClosed(self) -> None:
        """
        After C{loseWriteConnection}, C{loseConnection} is Twisted's: the
        transport still waits to write (to send its FIN), and the
        connection is lost in order at both ends.
        """
        client, backend, factory = await self.connected()
        transport: Any = client.transport
        r: Any = reactor
        transport.loseWriteConnection()
        transport.loseConnection()
        self.assertIn(transport, r.getWriters())
        [reason] = await client.lost
        self.assertIs(type(reason.value), ConnectionDone)
        [reason] = await backend.lost
        self.assertIs(type(reason.value), ConnectionDone)

    async def test_pullProducer(self) -> None:
        """
        With a pull producer registered, C{loseConnection} is Twisted's:
        the transport waits to write (Twisted asks the producer for more
        there) before it closes.
        """
        client, backend, factory = await self.connected()
        transport: Any = client.transport
        r: Any = reactor
        producer = _Pull()
        transport.registerProducer(producer, False)
        transport.loseConnection()
        self.assertIn(transport, r.getWriters())
        transport.unregisterProducer()
        [reason] = await client.lost
        self.assertIs(type(reason.value), ConnectionDone)
