"""
Proxy mode in memory: an Autobahn client, the relay and an Autobahn backend
paired with L{twisted.test.iosim}, every timer on one L{Clock}, no sockets.

The relay is built with a L{MemoryReactor}: its connections to backends
are recorded in C{reactor.tcpClients} by the endpoints the relay makes
itself, and each test decides when (and whether) such a connection
completes, fails or is abandoned.
"""

from __future__ import annotations

from typing import Any

from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost, ConnectionRefusedError
from twisted.internet.error import TimeoutError as ConnectTimeoutError
from twisted.internet.interfaces import IProtocolFactory
from twisted.internet.protocol import ClientFactory, Protocol, connectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport, IOPump, connect
from twisted.trial.unittest import SynchronousTestCase
from txaio.testutil import replace_loop

from wsrelay.config import parseConfig
from wsrelay.frontend import FrontendProtocol
from wsrelay.legs import CLOSED, OPEN
from wsrelay.service import RelayService
from wsrelay.session import ProxySession

CLIENT_ADDRESS = IPv4Address("TCP", "203.0.113.7", 40000)
RELAY_ADDRESS = IPv4Address("TCP", "192.0.2.1", 8080)

#: The addresses of the backends the configurations below name.
BACKEND_A = ("10.0.0.1", 9001)
BACKEND_B = ("10.0.0.2", 9002)

#: Close codes below 3000 that RFC 6455 and the IANA registry allow in a
#: close frame.
REGISTERED = (1000, 1001, 1002, 1003, *range(1007, 1015))

#: Those Autobahn refuses to receive (not in its C{CLOSE_STATUS_CODES_ALLOWED}).
AUTOBAHN_REFUSES = frozenset(
    code
    for code in REGISTERED
    if code not in WebSocketProtocol.CLOSE_STATUS_CODES_ALLOWED
)


def relayConfig(relay: str = "", route: str = "", backends: str = "") -> str:
    """
    A configuration text with one route, C{/chat}, to backend A (and the
    given further backends), on the message path (which this in-memory
    layer covers; the passthrough path is tested over real sockets).

    @param relay: Extra lines for the C{[relay]} section.
    @param route: Extra lines for the C{[route:chat]} section.
    @param backends: Further backend URLs.
    """
    return (
        "[relay]\nlisten = tcp:0\nping_interval = 0\n"
        f"{relay}"
        "[route:chat]\npath = /chat\ndata_path = message\n"
        f"backends = ws://{BACKEND_A[0]}:{BACKEND_A[1]}/base {backends}\n"
        f"{route}"
    )


class RecordingClient(WebSocketClientProtocol):
    """
    The client of the relay: records what it receives.

    @ivar raw: Every chunk of bytes received, handshake included.
    @ivar opened: Whether the relay's 101 arrived.
    @ivar messages: The messages received, as C{(payload, isBinary)}.
    @ivar closeFrames: The close frames received, as C{(code, reason)}.
    @ivar closed: The arguments of C{onClose}, once the connection is gone.
    """

    def __init__(self) -> None:
        super().__init__()
        self.raw: list[bytes] = []
        self.opened = False
        self.messages: list[tuple[bytes, bool]] = []
        self.closeFrames: list[tuple[int | None, bytes | None]] = []
        self.closed: tuple[bool, int | None, str | None] | None = None

    def dataReceived(self, data: bytes) -> None:
        """
        Keep the bytes, then let Autobahn parse them.
        """
        self.raw.append(data)
        WebSocketClientProtocol.dataReceived(self, data)

    def onOpen(self) -> None:
        """
        The relay answered with 101.
        """
        self.opened = True

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """
        Keep a message.
        """
        self.messages.append((payload, isBinary))

    def onCloseFrame(self, code: int | None, reasonRaw: bytes | None) -> bool | None:
        """
        Keep the close frame; take a code that the RFC allows but Autobahn
        refuses to receive (1014) like any other instead of failing.
        """
        self.closeFrames.append((code, reasonRaw))
        if code in AUTOBAHN_REFUSES:
            code, refused = 1000, code
        else:
            refused = None
        # Autobahn's annotations leave out None, which it takes.
        result = WebSocketClientProtocol.onCloseFrame(
            self,
            code,  # type: ignore[arg-type]
            reasonRaw,  # type: ignore[arg-type]
        )
        if refused is not None:
            self.remoteCloseCode = refused
        return result

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        """
        The connection is gone.
        """
        self.closed = (wasClean, code, reason)


class RecordingBackend(WebSocketServerProtocol):
    """
    A backend: records what it receives, and answers the handshake when
    its factory's C{gate} fires (at once when there is none).

    @ivar request: The handshake request, once received.
    @ivar messages: The messages received, as C{(payload, isBinary)}.
    @ivar frames: The payloads of the data frames received.
    @ivar closeFrames: The close frames received, as C{(code, reason)}.
    @ivar lost: Whether the connection is gone.
    """

    factory: BackendFactory

    def __init__(self) -> None:
        super().__init__()
        self.request: Any = None
        self.messages: list[tuple[bytes, bool]] = []
        self.frames: list[bytes] = []
        self.closeFrames: list[tuple[int | None, bytes | None]] = []
        self.lost = False

    def onConnect(self, request: Any) -> Any:
        """
        Keep the request; answer when the gate opens.

        @return: The factory's C{gate}: Autobahn answers the handshake when
            it fires (its annotation leaves out Deferreds, which it takes).
        """
        self.request = request
        self.factory.connections.append(self)
        return self.factory.gate

    def onMessageFrameEnd(self) -> None:
        """
        Keep each frame's payload, then let Autobahn assemble the message.
        """
        self.frames.append(b"".join(self.frame_data))
        WebSocketServerProtocol.onMessageFrameEnd(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """
        Keep a message.
        """
        self.messages.append((payload, isBinary))

    def onCloseFrame(self, code: int | None, reasonRaw: bytes | None) -> bool | None:
        """
        Keep the close frame.
        """
        self.closeFrames.append((code, reasonRaw))
        # Autobahn's annotations leave out None, which it takes.
        return WebSocketServerProtocol.onCloseFrame(
            self,
            code,  # type: ignore[arg-type]
            reasonRaw,  # type: ignore[arg-type]
        )

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        Note that the connection is gone.
        """
        self.lost = True
        WebSocketServerProtocol.connectionLost(self, reason)


class BackendFactory(WebSocketServerFactory):
    """
    Makes L{RecordingBackend}s.

    @ivar gate: What L{RecordingBackend.onConnect} returns: L{None} to answer
        at once, or a L{Deferred} that answers when it fires.
    @ivar connections: Every backend connection whose request arrived.
    """

    # Any: Twisted wants a protocol whose factory is a Factory[Self].
    protocol: Any = RecordingBackend

    def __init__(self, reactor: MemoryReactor) -> None:
        super().__init__(reactor=reactor)
        self.gate: Deferred[None] | None = None
        self.connections: list[RecordingBackend] = []


class RawClient(Protocol):
    """
    A client that writes bytes and keeps what it receives.

    @ivar received: The bytes received.
    @ivar lost: Whether the connection is gone.
    """

    def __init__(self) -> None:
        self.received = b""
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        """
        Keep the bytes.
        """
        self.received += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        Note that the connection is gone.
        """
        self.lost = True


def request(path: str = "/chat") -> bytes:
    """
    A complete opening handshake request for C{path}.
    """
    return (
        f"GET {path} HTTP/1.1\r\nHost: relay.example\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


class Network:
    """
    A relay, its clients and its backends, connected in memory.

    @ivar reactor: What the relay listens and connects with; it only
        records connection attempts.
    @ivar clock: Every timer: the relay's, and Autobahn's through txaio.
    @ivar relay: The relay, never started.
    @ivar backends: The backend factories by address.
    @ivar pumps: Every connection made so far.
    """

    def __init__(self, testCase: SynchronousTestCase, text: str) -> None:
        self.reactor = MemoryReactor()
        self.clock = Clock()
        loop = replace_loop(self.clock)
        loop.__enter__()
        testCase.addCleanup(loop.__exit__, None, None, None)
        config = parseConfig(text, "test.ini")
        self.relay = RelayService(config, reactor=self.reactor, clock=self.clock)
        self.backends = {
            address: BackendFactory(self.reactor) for address in (BACKEND_A, BACKEND_B)
        }
        self.pumps: list[IOPump] = []

    def pair(
        self,
        server: Any,
        client: Any,
        serverAddress: IPv4Address = RELAY_ADDRESS,
        clientAddress: IPv4Address = CLIENT_ADDRESS,
    ) -> IOPump:
        """
        Connect two protocols, without moving any data yet.

        @return: The connection: C{clientIO} is the client's transport,
            C{serverIO} the server's.
        """
        pump: IOPump = connect(
            server,
            FakeTransport(server, True, serverAddress, clientAddress),
            client,
            FakeTransport(client, False, clientAddress, serverAddress),
            greet=False,
            clock=self.clock,
        )
        self.pumps.append(pump)
        return pump

    def flush(self) -> None:
        """
        Move bytes on every connection until none moves.
        """
        for _ in range(100):
            moved = [pump.flush() for pump in self.pumps]
            if not any(moved):
                return
        raise AssertionError("the connections never went quiet")

    def advance(self, seconds: float, step: float = 0.25) -> None:
        """
        Let time pass in small steps, moving what the timers wrote after
        each: a single jump would run a repeating timer once, late, and
        reschedule it from the end of the jump.
        """
        while seconds > 0:
            amount = min(step, seconds)
            self.clock.advance(amount)
            self.flush()
            seconds -= amount

    def frontend(self) -> FrontendProtocol:
        """
        A new client connection of the relay.
        """
        protocol = self.relay.frontendFactory.buildProtocol(CLIENT_ADDRESS)
        assert isinstance(protocol, FrontendProtocol)
        return protocol

    def connectClient(self, path: str = "/chat") -> RecordingClient:
        """
        Connect an Autobahn client to the relay; its request is sent on
        the next L{flush}.
        """
        factory = WebSocketClientFactory(
            url=f"ws://relay.example{path}", reactor=self.reactor
        )
        factory.protocol = RecordingClient
        client = factory.buildProtocol(RELAY_ADDRESS)
        assert isinstance(client, RecordingClient)
        self.pair(self.frontend(), client)
        return client

    def connectRaw(self) -> tuple[RawClient, FakeTransport]:
        """
        Connect a L{RawClient} to the relay.

        @return: The client and its transport.
        """
        client = RawClient()
        pump = self.pair(self.frontend(), client)
        return client, pump.clientIO

    def pendingConnects(self) -> list[tuple[str, int]]:
        """
        @return: The addresses of the backend connections the relay started
            and neither abandoned nor saw completed or failed yet.
        """
        return [
            (host, port)
            for (host, port, *_), connector in zip(
                self.reactor.tcpClients, self.reactor.connectors, strict=True
            )
            if not connector.stoppedConnecting
        ]

    def _nextConnect(self) -> tuple[str, int, IProtocolFactory, Any]:
        host, port, factory, _, _ = self.reactor.tcpClients.pop(0)
        connector = self.reactor.connectors.pop(0)
        return host, port, factory, connector

    def acceptUpstream(self) -> tuple[RecordingBackend, IOPump]:
        """
        Complete the oldest pending backend connection, to the backend at
        that address; the relay's request is sent on the next L{flush}.

        @return: The backend's protocol and the connection.
        """
        host, port, factory, _ = self._nextConnect()
        address = IPv4Address("TCP", host, port)
        upstream = factory.buildProtocol(address)
        backend = self.backends[(host, port)].buildProtocol(RELAY_ADDRESS)
        assert isinstance(backend, RecordingBackend)
        return backend, self.pair(backend, upstream, address, RELAY_ADDRESS)

    def vanish(self, pump: IOPump) -> None:
        """
        The backend of C{pump} goes away without a close frame: the relay
        sees its connection lost on the next L{flush}.
        """
        pump.clientIO.disconnectReason = ConnectionLost("backend vanished")
        pump.serverIO.abortConnection()

    def failUpstream(self, reason: Exception | None = None) -> None:
        """
        Fail the oldest pending backend connection, as refused unless
        another C{reason} is given.
        """
        _, _, factory, connector = self._nextConnect()
        assert isinstance(factory, ClientFactory)
        failure = Failure(ConnectionRefusedError() if reason is None else reason)
        factory.clientConnectionFailed(connector, failure)

    def openSession(
        self,
    ) -> tuple[RecordingClient, RecordingBackend, IOPump, ProxySession]:
        """
        Connect a client through the relay to backend A and open it.

        @return: The client, the backend, the backend's connection and the
            session.
        """
        client = self.connectClient()
        self.flush()
        backend, pump = self.acceptUpstream()
        self.flush()
        assert client.opened, client.raw
        (session,) = self.relay.sessions
        return client, backend, pump, session


class MemoryTestCase(SynchronousTestCase):
    """
    Helpers for tests that run a L{Network}.
    """

    def assertNoTimers(self, network: Network) -> None:
        """
        No timer of the relay or of Autobahn is left on the clock.
        """
        self.assertEqual(network.clock.getDelayedCalls(), [])

    def assertFinished(self, network: Network, session: ProxySession) -> None:
        """
        C{session} is over: both legs closed, the relay forgot it, and no
        timer is left.
        """
        self.assertIsNone(self.successResultOf(session.done))
        self.assertEqual(network.relay.sessions, set())
        self.assertEqual(session.frontend.state, CLOSED)
        self.assertIsNone(session.upstream)
        self.assertNoTimers(network)


class HandshakeTests(MemoryTestCase):
    """
    The client's handshake is answered with the backend's.
    """

    def test_clientWaitsForBackend(self) -> None:
        """
        The relay sends the client nothing until the backend answered with
        its 101, and then the client's 101.
        """
        network = Network(self, relayConfig())
        gate: Deferred[None] = Deferred()
        network.backends[BACKEND_A].gate = gate
        client = network.connectClient("/chat/room")
        network.flush()
        self.assertEqual(network.pendingConnects(), [BACKEND_A])
        self.assertEqual(client.raw, [])

        backend, _ = network.acceptUpstream()
        network.flush()
        self.assertIsNotNone(backend.request)
        self.assertEqual(backend.request.path, "/base/room")
        self.assertEqual(backend.request.headers["x-forwarded-for"], "203.0.113.7")
        self.assertEqual(client.raw, [])
        self.assertFalse(client.opened)
        (session,) = network.relay.sessions
        self.assertNoResult(session.done)

        gate.callback(None)
        network.flush()
        self.assertTrue(client.opened)
        self.assertTrue(client.raw[0].startswith(b"HTTP/1.1 101 "), client.raw)
        self.assertEqual(session.frontend.state, OPEN)
        self.assertEqual(backend.state, OPEN)
        # The connect budget's timer went with the handshake.
        self.assertNoTimers(network)

    def test_clientHandshakeTimeout(self) -> None:
        """
        A client that sends half a request is dropped without an answer
        once C{handshake_timeout} passed on the relay's clock, not before.
        """
        network = Network(self, relayConfig("handshake_timeout = 3\n"))
        client, transport = network.connectRaw()
        transport.write(b"GET /chat HTTP/1.1\r\nHost: relay.example\r\n")
        network.flush()
        network.advance(2.75)
        self.assertFalse(client.lost)
        network.advance(0.25)
        self.assertTrue(client.lost)
        self.assertEqual(client.received, b"")
        self.assertEqual(network.pendingConnects(), [])
        self.assertNoTimers(network)

    def test_connectTimeout(self) -> None:
        """
        A backend whose connection never completes gives the client 504
        once C{handshake_timeout} passed, not before, and the attempt is
        abandoned.
        """
        network = Network(
            self, relayConfig("handshake_timeout = 4\nconnect_timeout = 30\n")
        )
        client, transport = network.connectRaw()
        transport.write(request())
        network.flush()
        self.assertEqual(network.pendingConnects(), [BACKEND_A])
        (connector,) = network.reactor.connectors
        network.advance(3.75)
        self.assertEqual(client.received, b"")
        self.assertFalse(connector.stoppedConnecting)
        network.advance(0.25)
        self.assertTrue(
            client.received.startswith(b"HTTP/1.1 504 "), client.received[:100]
        )
        self.assertTrue(client.lost)
        self.assertTrue(connector.stoppedConnecting)
        self.assertEqual(network.pendingConnects(), [])
        self.assertEqual(network.relay.sessions, set())
        self.assertNoTimers(network)

    def test_endpointTimeout(self) -> None:
        """
        A connection attempt that the endpoint itself gives up on (its
        C{timeout=} option, which fires with the same delay as the relay's
        own connect timer) is a timeout too: 504, not 502.
        """
        network = Network(self, relayConfig())
        client, transport = network.connectRaw()
        transport.write(request())
        network.flush()
        network.failUpstream(ConnectTimeoutError())
        network.flush()
        self.assertTrue(
            client.received.startswith(b"HTTP/1.1 504 "), client.received[:100]
        )
        self.assertTrue(client.lost)
        self.assertEqual(network.relay.sessions, set())
        self.assertNoTimers(network)

    def test_connectRefused(self) -> None:
        """
        A backend that refuses the connection gives the client 502 at once,
        and counts as a failure of that backend.
        """
        network = Network(self, relayConfig())
        client, transport = network.connectRaw()
        transport.write(request())
        network.flush()
        network.failUpstream()
        network.flush()
        self.assertTrue(
            client.received.startswith(b"HTTP/1.1 502 "), client.received[:100]
        )
        self.assertTrue(client.lost)
        (backend,) = network.relay.routes.routes[0].backends
        self.assertEqual(backend.failures, 1)
        self.assertEqual(network.relay.sessions, set())
        self.assertNoTimers(network)

    def test_refusedThenNext(self) -> None:
        """
        When the first backend refuses the connection, the next one is
        tried within the same budget and the client opens through it.
        """
        network = Network(
            self,
            relayConfig(
                route="balancer = first\n",
                backends=f"ws://{BACKEND_B[0]}:{BACKEND_B[1]}/",
            ),
        )
        client = network.connectClient()
        network.flush()
        self.assertEqual(network.pendingConnects(), [BACKEND_A])
        network.failUpstream()
        self.assertEqual(network.pendingConnects(), [BACKEND_B])
        network.acceptUpstream()
        network.flush()
        self.assertTrue(client.opened)
        self.assertEqual(len(network.backends[BACKEND_B].connections), 1)

    def test_clientLeavesWhileConnecting(self) -> None:
        """
        A client that disconnects while the backend connection is still
        being made cancels it: no upstream is left, no other backend is
        tried, no timer is left, and the backend is not blamed.
        """
        network = Network(
            self,
            relayConfig(
                route="balancer = first\n",
                backends=f"ws://{BACKEND_B[0]}:{BACKEND_B[1]}/",
            ),
        )
        client, transport = network.connectRaw()
        transport.write(request())
        network.flush()
        (connector,) = network.reactor.connectors
        (session,) = network.relay.sessions
        transport.loseConnection()
        network.flush()
        self.assertTrue(connector.stoppedConnecting)
        self.assertEqual(network.pendingConnects(), [])
        self.assertEqual(
            [b.failures for b in network.relay.routes.routes[0].backends], [0, 0]
        )
        self.assertEqual(client.received, b"")
        self.assertIsNone(self.successResultOf(session.done))
        self.assertEqual(network.relay.sessions, set())
        self.assertIsNone(session.upstream)
        self.assertNoTimers(network)

    def test_clientLeavesDuringBackendHandshake(self) -> None:
        """
        A client that disconnects while the backend has not answered the
        upstream handshake yet gets that connection closed too, and no
        other backend is tried.
        """
        network = Network(
            self,
            relayConfig(
                route="balancer = first\n",
                backends=f"ws://{BACKEND_B[0]}:{BACKEND_B[1]}/",
            ),
        )
        network.backends[BACKEND_A].gate = Deferred()
        client, transport = network.connectRaw()
        transport.write(request())
        network.flush()
        backend, _ = network.acceptUpstream()
        network.flush()
        self.assertIsNotNone(backend.request)
        (session,) = network.relay.sessions
        transport.loseConnection()
        network.flush()
        self.assertTrue(backend.lost)
        self.assertEqual(network.pendingConnects(), [])
        self.assertIsNone(self.successResultOf(session.done))
        self.assertEqual(network.relay.sessions, set())
        self.assertIsNone(session.upstream)
        self.assertEqual(client.received, b"")
        self.assertNoTimers(network)


class MessageTests(MemoryTestCase):
    """
    Data frames pass unchanged and in order.
    """

    def test_bothWays(self) -> None:
        """
        Text and binary messages pass unchanged each way, in the order they
        were sent.
        """
        network = Network(self, relayConfig())
        client, backend, _, _ = network.openSession()
        up = [
            ("h\u00e9llo \u2713".encode(), False),
            (bytes(range(256)), True),
            (b"", False),
            (b"three", False),
            (b"\x00" * 70000, True),
        ]
        for payload, isBinary in up:
            client.sendMessage(payload, isBinary)
        down = [(b"\xff\x00binary", True), ("\u00fcber".encode(), False), (b"x", False)]
        for payload, isBinary in down:
            backend.sendMessage(payload, isBinary)
        network.flush()
        self.assertEqual(backend.messages, up)
        self.assertEqual(client.messages, down)

    def test_fragmentsRelayedAsFrames(self) -> None:
        """
        A message the client sends in several frames reaches the backend
        whole, frame by frame, and before the message sent after it.
        """
        network = Network(self, relayConfig())
        client, backend, _, _ = network.openSession()
        client.beginMessage(isBinary=True)
        client.sendMessageFrame(b"ab")
        network.flush()
        self.assertEqual(backend.frames, [b"ab"])
        self.assertEqual(backend.messages, [])
        client.sendMessageFrame(b"cd")
        client.endMessage()
        client.sendMessage(b"next")
        network.flush()
        self.assertEqual(backend.frames, [b"ab", b"cd", b"", b"next"])
        self.assertEqual(backend.messages, [(b"abcd", True), (b"next", False)])


class CloseTests(MemoryTestCase):
    """
    A close handshake started on one side is relayed to the other, and
    each side gets the other's answer.
    """

    def test_clientCloses(self) -> None:
        """
        The client's close code and reason reach the backend, and the client
        gets the backend's reply (Autobahn answers 1000 without a reason),
        not an echo made up by the relay.
        """
        network = Network(self, relayConfig())
        client, backend, _, session = network.openSession()
        client.sendClose(4001, "bye")
        network.flush()
        self.assertEqual(backend.closeFrames, [(4001, b"bye")])
        self.assertEqual(client.closeFrames, [(1000, None)])
        self.assertEqual(client.closed, (True, 1000, None))
        self.assertTrue(backend.lost)
        self.assertFinished(network, session)

    def test_backendCloses(self) -> None:
        """
        A backend's close code reaches the client verbatim, 1012 included
        (Autobahn's public C{sendClose} refuses it, so the relay must use
        the lower-level close path), and the backend gets the client's
        reply.
        """
        network = Network(self, relayConfig())
        client, backend, _, session = network.openSession()
        self.assertRaisesRegex(
            Exception, "invalid close code 1012", backend.sendClose, 1012, "restart"
        )
        backend.sendCloseFrame(code=1012, reasonUtf8=b"restart", isReply=False)
        network.flush()
        self.assertEqual(client.closeFrames, [(1012, b"restart")])
        self.assertEqual(client.closed, (True, 1012, "restart"))
        self.assertEqual(backend.closeFrames, [(1000, None)])
        self.assertTrue(backend.lost)
        self.assertFinished(network, session)

    def test_backendClosesWithCodesAutobahnRefuses(self) -> None:
        """
        Codes the RFC allows in a close frame but Autobahn refuses to
        receive (1014) are relayed from the backend to the client as well.
        """
        self.assertEqual(AUTOBAHN_REFUSES, {1014})
        for code in sorted(AUTOBAHN_REFUSES):
            network = Network(self, relayConfig())
            client, backend, _, session = network.openSession()
            backend.sendCloseFrame(code=code, reasonUtf8=b"why", isReply=False)
            network.flush()
            self.assertEqual(client.closeFrames, [(code, b"why")])
            self.assertFinished(network, session)

    def test_backendVanishes(self) -> None:
        """
        With C{failover = close}, a backend whose connection is lost
        without a close frame gives the client 1014, and counts as a
        failure of that backend.
        """
        network = Network(self, relayConfig())
        client, backend, pump, session = network.openSession()
        network.vanish(pump)
        network.flush()
        self.assertEqual(client.closeFrames, [(1014, b"backend connection lost")])
        self.assertIsNotNone(client.closed)
        (record,) = network.relay.routes.routes[0].backends
        self.assertEqual(record.failures, 1)
        self.assertFinished(network, session)


class FailoverTests(MemoryTestCase):
    """
    With C{failover = reconnect}, a lost backend is replaced.
    """

    def test_reconnectKeepsOrder(self) -> None:
        """
        When the first backend vanishes, the client stays open, a new
        upstream is opened to the second backend, and what the client sent
        while it was opening reaches the second backend first and in order.
        """
        network = Network(
            self,
            relayConfig(
                route="failover = reconnect\nbalancer = first\n",
                backends=f"ws://{BACKEND_B[0]}:{BACKEND_B[1]}/",
            ),
        )
        client, first, pump, session = network.openSession()
        client.sendMessage(b"before")
        network.flush()
        self.assertEqual(first.messages, [(b"before", False)])

        network.vanish(pump)
        network.flush()
        self.assertEqual(network.pendingConnects(), [BACKEND_B])
        self.assertEqual(client.closeFrames, [])
        meanwhile = [(b"m1", False), (b"\x01\x02", True), (b"m3", False)]
        for payload, isBinary in meanwhile:
            client.sendMessage(payload, isBinary)
        network.flush()

        second, _ = network.acceptUpstream()
        network.flush()
        client.sendMessage(b"after")
        network.flush()
        self.assertEqual(second.messages, [*meanwhile, (b"after", False)])
        self.assertEqual(first.messages, [(b"before", False)])
        self.assertEqual(client.closeFrames, [])
        self.assertIsNone(client.closed)
        assert session.backend is not None
        self.assertEqual((session.backend.host, session.backend.port), BACKEND_B)
        second.sendMessage(b"from the second")
        network.flush()
        self.assertEqual(client.messages, [(b"from the second", False)])


class IdleTests(MemoryTestCase):
    """
    C{idle_timeout} closes both legs of a connection without data.
    """

    def test_idle(self) -> None:
        """
        After C{idle_timeout} without data, both the client and the backend
        get 1001, not before.
        """
        network = Network(self, relayConfig("idle_timeout = 8\n"))
        client, backend, _, session = network.openSession()
        network.advance(7)
        self.assertEqual(client.closeFrames, [])
        self.assertEqual(backend.closeFrames, [])
        network.advance(1)
        self.assertEqual(client.closeFrames, [(1001, b"idle timeout")])
        self.assertEqual(backend.closeFrames, [(1001, b"idle timeout")])
        self.assertFinished(network, session)

    def test_trafficResets(self) -> None:
        """
        Data either way starts the idle time over: the connection closes
        C{idle_timeout} after the last message (rounded up to the next idle
        check, every quarter of it), not after the first.
        """
        network = Network(self, relayConfig("idle_timeout = 8\n"))
        client, backend, _, session = network.openSession()
        network.advance(6)
        client.sendMessage(b"ping")
        network.flush()
        network.advance(7)
        self.assertEqual(client.closeFrames, [])
        backend.sendMessage(b"pong")
        network.flush()
        network.advance(8)
        self.assertEqual(client.closeFrames, [])
        self.assertEqual(backend.messages, [(b"ping", False)])
        self.assertEqual(client.messages, [(b"pong", False)])
        network.advance(1)
        self.assertEqual(client.closeFrames, [(1001, b"idle timeout")])
        self.assertEqual(backend.closeFrames, [(1001, b"idle timeout")])
        self.assertFinished(network, session)
