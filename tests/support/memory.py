"""
Proxy mode in memory: an Autobahn client, the relay and an Autobahn
backend paired with L{twisted.test.iosim}, every timer on one L{Clock},
no sockets.

The relay is built with a L{MemoryReactor}: its connections to backends
are recorded in C{reactor.tcpClients} by the endpoints the relay makes
itself, and each test decides when (and whether) such a connection
completes, fails or is abandoned (L{Network}).
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
from twisted.internet.interfaces import IProtocolFactory
from twisted.internet.protocol import ClientFactory, Protocol, connectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport, IOPump, connect
from twisted.trial.unittest import SynchronousTestCase
from txaio.testutil import replace_loop

from wsrelay.config import parseConfig
from wsrelay.proxy.session import ProxySession
from wsrelay.service import RelayService
from wsrelay.ws.frontend import FrontendProtocol

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
        serverTransport: type[FakeTransport] = FakeTransport,
    ) -> IOPump:
        """
        Connect two protocols, without moving any data yet.

        @param serverTransport: The class of the server's transport.
        @return: The connection: C{clientIO} is the client's transport,
            C{serverIO} the server's.
        """
        pump: IOPump = connect(
            server,
            serverTransport(server, True, serverAddress, clientAddress),
            client,
            FakeTransport(client, False, clientAddress, serverAddress),
            greet=False,
            clock=self.clock,
        )
        self.pumps.append(pump)
        return pump

    def flush(self) -> None:
        """
        Move bytes on every connection until none moves, ending each round
        with the reactor's turn (the calls C{callLater(0, ...)} made: a
        fan-out channel's writes).
        """
        for _ in range(100):
            self.clock.advance(0)
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

    def connectClient(
        self, path: str = "/chat", transport: type[FakeTransport] = FakeTransport
    ) -> RecordingClient:
        """
        Connect an Autobahn client to the relay; its request is sent on
        the next L{flush}.

        @param transport: The class of the relay's transport to it.
        """
        factory = WebSocketClientFactory(
            url=f"ws://relay.example{path}", reactor=self.reactor
        )
        factory.protocol = RecordingClient
        client = factory.buildProtocol(RELAY_ADDRESS)
        assert isinstance(client, RecordingClient)
        self.pair(self.frontend(), client, serverTransport=transport)
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
