"""
Proxy mode in memory: an Autobahn client, the relay and an Autobahn backend
paired with L{twisted.test.iosim}, every timer on one L{Clock}, no sockets.

The relay is built with a L{MemoryReactor}: its connections to backends
are recorded in C{reactor.tcpClients} by the endpoints the relay makes
itself, and each test decides when (and whether) such a connection
completes, fails or is abandoned.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import TimeoutError as ConnectTimeoutError
from twisted.trial.unittest import SynchronousTestCase

from tests.support.memory import (
    AUTOBAHN_REFUSES,
    BACKEND_A,
    BACKEND_B,
    Network,
    relayConfig,
    request,
)
from wsrelay.proxy.session import ProxySession
from wsrelay.ws.legclosing import CLOSED, OPEN


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

    def test_handshakeTimeoutChanged(self) -> None:
        """
        A client that connected before C{handshake_timeout} was shortened
        keeps the timeout it started with; one that connected after gets
        the new one, and is dropped first.
        """
        network = Network(self, relayConfig("handshake_timeout = 3\n"))
        half = b"GET /chat HTTP/1.1\r\nHost: relay.example\r\n"
        before, transport = network.connectRaw()
        transport.write(half)
        factory = network.relay.frontendFactory
        factory.configure(replace(factory.config, handshakeTimeout=1))
        network.advance(0.5)
        after, transport = network.connectRaw()
        transport.write(half)
        network.flush()
        network.advance(0.75)
        self.assertFalse(after.lost)
        network.advance(0.25)
        self.assertEqual((before.lost, after.lost), (False, True))
        network.advance(1.25)
        self.assertFalse(before.lost)
        network.advance(0.25)
        self.assertTrue(before.lost)
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
        network = self.firstThenB()
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
        network = self.firstThenB()
        client, transport = network.connectRaw()
        transport.write(request())
        network.flush()
        (connector,) = network.reactor.connectors
        (session,) = network.relay.sessions
        self.leaveWhileConnecting(network, client, transport, connector, [0, 0])
        self.assertIsNone(session.upstream)

    def firstThenB(self) -> Network:
        """
        @return: A relay whose route tries its backends in order (the
            first, then C{BACKEND_B}).
        """
        return Network(
            self,
            relayConfig(
                route="balancer = first\n",
                backends=f"ws://{BACKEND_B[0]}:{BACKEND_B[1]}/",
            ),
        )

    def leaveWhileConnecting(
        self,
        network: Network,
        client: Any,
        transport: Any,
        connector: Any,
        failures: list[int],
    ) -> None:
        """
        The client disconnects while C{connector} connects to a backend:
        the attempt is stopped, no other is made, the backends' failures
        are C{failures}, the client got nothing, and its session ends with
        no timer left.
        """
        (session,) = network.relay.sessions
        transport.loseConnection()
        network.flush()
        self.assertTrue(connector.stoppedConnecting)
        self.assertEqual(network.pendingConnects(), [])
        self.assertEqual(
            [b.failures for b in network.relay.routes.routes[0].backends], failures
        )
        self.assertEqual(client.received, b"")
        self.assertIsNone(self.successResultOf(session.done))
        self.assertEqual(network.relay.sessions, set())
        self.assertNoTimers(network)

    def test_clientLeavesWhileConnectingToNext(self) -> None:
        """
        A client that disconnects while the next backend is tried (the
        first refused) cancels that attempt too: no upstream, no timer is
        left, and only the first backend is blamed.
        """
        network = self.firstThenB()
        client, transport = network.connectRaw()
        transport.write(request())
        network.flush()
        network.failUpstream()
        self.assertEqual(network.pendingConnects(), [BACKEND_B])
        connector = network.reactor.connectors[-1]
        self.leaveWhileConnecting(network, client, transport, connector, [1, 0])

    def test_clientLeavesDuringBackendHandshake(self) -> None:
        """
        A client that disconnects while the backend has not answered the
        upstream handshake yet gets that connection closed too, and no
        other backend is tried.
        """
        network = self.firstThenB()
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
