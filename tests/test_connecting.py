"""
Tests for L{wsrelay.ws.connecting}: an upstream to a plain-TCP backend is
connected with C{connectTCP} itself, the leg being the transport's
protocol, with the connect's failures, its timeout and its cancellation
as through an endpoint.
"""

from __future__ import annotations

import errno
from typing import Any, cast

from twisted.internet import reactor, tcp
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import (
    ConnectBindError,
    ConnectionRefusedError,
    DNSLookupError,
    UserError,
)
from twisted.internet.error import TimeoutError as ConnectTimeoutError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.main import CONNECTION_DONE
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from tests.support.backends import listenRecording, plainEndpoint
from wsrelay.config import parseConfig
from wsrelay.deadlines import Deadlines
from wsrelay.ws.connecting import PlainTCPEndpoint, connectError, connectUpstream
from wsrelay.ws.upstream import (
    UpstreamError,
    UpstreamFactory,
    UpstreamLocalError,
    UpstreamProtocol,
    UpstreamShortageError,
    UpstreamTimeout,
)

CONFIG = parseConfig(
    "[relay]\nlisten = tcp:0\n[route:r]\npath = /\nbackends = ws://127.0.0.1:1/\n",
    "r.ini",
)


def _connect(
    clock: Any, endpoint: Any, reactor: Any, timeout: float = 5.0
) -> Deferred[UpstreamProtocol]:
    """
    @return: L{connectUpstream} to C{endpoint}, with a factory on
        C{reactor}.
    """
    factory = UpstreamFactory("ws://127.0.0.1:1/", CONFIG, reactor)
    return connectUpstream(
        Deadlines(clock), endpoint, factory, "/", "backend", [], (), timeout
    )


class DirectConnectTests(SynchronousTestCase):
    """
    L{connectUpstream} with a L{PlainTCPEndpoint}, in memory.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.endpoint = PlainTCPEndpoint(self.reactor, "10.0.0.1", 8080, 3)
        self.opened = _connect(self.reactor, self.endpoint, self.reactor)
        self.host, self.port, self.factory, self.timeout, _ = self.reactor.tcpClients[0]
        self.connector = self.reactor.connectors[0]

    def test_connectTCP(self) -> None:
        """
        The attempt is the reactor's C{connectTCP} to the backend's address,
        with no timer of Twisted's (the attempt's own times it), and its
        protocol is the leg itself.
        """
        self.assertEqual((self.host, self.port, self.timeout), ("10.0.0.1", 8080, None))
        protocol = self.factory.buildProtocol(None)
        self.assertIsInstance(protocol, UpstreamProtocol)
        protocol.makeConnection(StringTransport())
        self.assertIn(b"GET / HTTP/1.1\r\n", cast(Any, protocol.transport).value())
        self.assertNoResult(self.opened)

    def test_refused(self) -> None:
        """
        A refused connect fails the attempt with L{UpstreamError}.
        """
        self.factory.clientConnectionFailed(
            self.connector, Failure(ConnectionRefusedError())
        )
        f = self.failureResultOf(self.opened, UpstreamError)
        self.assertNotIsInstance(f.value, UpstreamTimeout)
        self.assertIn("connect failed", str(f.value))

    def test_local(self) -> None:
        """
        A connect that fails for want of descriptors is the relay's
        problem: L{UpstreamLocalError}.
        """
        self.factory.clientConnectionFailed(
            self.connector, Failure(ConnectBindError(errno.EMFILE, "files"))
        )
        self.failureResultOf(self.opened, UpstreamLocalError)

    def test_timeout(self) -> None:
        """
        No answer within the timeout: the attempt stops connecting and
        fails with L{UpstreamTimeout}; the connector's failure that the
        stop causes is not reported again.
        """
        stopped: list[bool] = []

        def stopConnecting() -> None:
            stopped.append(True)
            self.factory.clientConnectionFailed(self.connector, Failure(UserError()))

        self.connector.stopConnecting = stopConnecting  # type: ignore[method-assign]
        self.reactor.advance(5)
        self.failureResultOf(self.opened, UpstreamTimeout)
        self.assertEqual(stopped, [True])

    def test_cancelConnected(self) -> None:
        """
        Cancelled once connected, the attempt aborts the connection.
        """
        protocol = self.factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.opened.cancel()
        self.failureResultOf(self.opened, CancelledError)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_attemptSettles(self) -> None:
        """
        The attempt's canceller is a method of the attempt (the factory),
        not a closure made per attempt; once it failed, the attempt holds
        neither the L{Deferred} nor a protocol, its deadline is gone, and a
        later failure of the connector is not reported again.
        """
        canceller = cast(Any, self.opened)._canceller
        self.assertIs(canceller.__self__, self.factory)
        self.factory.buildProtocol(None)
        self.factory.clientConnectionFailed(
            self.connector, Failure(ConnectionRefusedError())
        )
        self.failureResultOf(self.opened, UpstreamError)
        self.assertIsNone(self.factory.opened)
        self.assertIsNone(self.factory.protocol)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.factory.clientConnectionFailed(self.connector, Failure(UserError()))


class ThenTests(SynchronousTestCase):
    """
    The caller's first callback given to L{connectUpstream}.
    """

    def test_calledByTheAttempts(self) -> None:
        """
        It is held by the attempt and called by the attempt's own callback
        on the L{Deferred}, after the attempt's bookkeeping (a timeout is an
        L{UpstreamTimeout} by then); its result is the L{Deferred}'s; the
        attempt lets it and its arguments go.
        """
        reactor = MemoryReactorClock()
        endpoint = PlainTCPEndpoint(reactor, "10.0.0.1", 8080, 3)
        seen: list[tuple[Any, ...]] = []

        def then(result: Any, *args: Any) -> str:
            seen.append((result, *args))
            return "then"

        factory = UpstreamFactory("ws://127.0.0.1:1/", CONFIG, reactor)
        opened = connectUpstream(
            Deadlines(reactor),
            endpoint,
            factory,
            "/",
            "backend",
            [],
            (),
            5.0,
            then,
            (1, 2),
        )
        self.assertIs(reactor.tcpClients[0][2]._then, then)
        reactor.advance(5)
        self.assertEqual(self.successResultOf(opened), "then")
        [(f, *args)] = seen
        self.assertTrue(f.check(UpstreamTimeout))
        self.assertEqual(args, [1, 2])
        attempt = reactor.tcpClients[0][2]
        self.assertIsNone(attempt._then)
        self.assertEqual(attempt._thenArgs, ())


class ConnectErrorTests(SynchronousTestCase):
    """
    L{connectError} maps a connect's failure as the connector expects.
    """

    def test_kinds(self) -> None:
        """
        Twisted's timeout, the relay's want of descriptors, of local ports
        or of a name lookup, and anything else.
        """
        for error, kind in [
            (ConnectTimeoutError(), UpstreamTimeout),
            (ConnectBindError(errno.EMFILE, "files"), UpstreamLocalError),
            (ConnectBindError(errno.EADDRNOTAVAIL, "ports"), UpstreamShortageError),
            (DNSLookupError("nowhere"), UpstreamShortageError),
            (ConnectionRefusedError(), UpstreamError),
        ]:
            self.assertIs(type(connectError(Failure(error))), kind)


class _Silent(Protocol):
    """
    A backend that accepts and never answers.

    @ivar lost: Fires when its connection is gone.
    """

    def __init__(self) -> None:
        self.lost: Deferred[None] = Deferred()

    def connectionLost(self, reason: Failure = CONNECTION_DONE) -> None:
        self.lost.callback(None)


class RealSocketTests(TestCase):
    """
    L{PlainTCPEndpoint} and L{connectUpstream} on loopback.
    """

    def setUp(self) -> Deferred[None]:
        self.accepted: list[Protocol] = []
        d = listenRecording(_Silent, self.accepted)

        def listening(port: Any) -> None:
            self.listening = port
            self.addCleanup(port.stopListening)
            self.addCleanup(lambda: Deferred.fromCoroutine(self.hangUp()))

        return d.addCallback(listening)

    async def hangUp(self) -> None:
        """
        Close what the backend accepted, and wait until it is gone.
        """
        for p in self.accepted:
            if p.transport is not None:
                cast(Any, p.transport).abortConnection()
            await p.lost

    def endpoint(self) -> PlainTCPEndpoint:
        """
        @return: The backend's endpoint.
        """
        return plainEndpoint(self.listening)

    async def test_endpoint(self) -> None:
        """
        It is an ordinary endpoint too (the health checkers and fan-out
        sources connect through it).
        """
        endpoint = self.endpoint()
        self.assertTrue(verifyObject(IStreamClientEndpoint, endpoint))
        protocol = await endpoint.connect(Factory.forProtocol(Protocol))
        self.assertIsNotNone(protocol.transport)
        cast(Any, protocol.transport).abortConnection()

    async def test_legIsTheProtocol(self) -> None:
        """
        Connected directly, the leg is its TCP transport's own protocol, and
        a timeout (on the injected clock) aborts it.
        """
        clock = Clock()
        opened = _connect(clock, self.endpoint(), reactor)
        deadline = reactor.seconds() + 5  # type: ignore[attr-defined]
        while not self.accepted and reactor.seconds() < deadline:  # type: ignore[attr-defined]
            await _turn()
        self.assertEqual(len(self.accepted), 1)
        legs = [
            p
            for p in (getattr(c, "protocol", None) for c in _clients())
            if isinstance(p, UpstreamProtocol)
        ]
        self.assertEqual(len(legs), 1)
        clock.advance(5)
        with self.assertRaises(UpstreamTimeout):
            await opened

    async def test_addressNotResolved(self) -> None:
        """
        To an IP address the transport connects without Twisted's
        C{resolveAddress} (and the L{Deferred} it calls back through); a
        host name is looked up through it, as Twisted does.
        """
        resolving: list[object] = []
        resolve = tcp.Client.resolveAddress

        def recording(client: tcp.Client) -> None:
            resolving.append(client.addr[0])
            resolve(client)

        self.patch(tcp.Client, "resolveAddress", recording)
        port = self.listening.getHost().port
        clock: Any = reactor
        for n, host in enumerate(("127.0.0.1", "localhost"), 1):
            opened = _connect(Clock(), PlainTCPEndpoint(clock, host, port, 5), clock)
            deadline = clock.seconds() + 5
            while len(self.accepted) < n and clock.seconds() < deadline:
                await _turn()
            opened.cancel()
            opened.addErrback(lambda f: None)
        self.assertEqual(len(self.accepted), 2)
        self.assertEqual(resolving, ["localhost"])

    async def test_refused(self) -> None:
        """
        A port nobody listens on: L{UpstreamError}, at once.
        """
        endpoint = self.endpoint()
        await self.listening.stopListening()
        with self.assertRaises(UpstreamError):
            await _connect(Clock(), endpoint, reactor)


def _clients() -> list[Any]:
    """
    @return: The reactor's client TCP connections.
    """
    return [
        r
        for r in reactor.getReaders()  # type: ignore[attr-defined]
        if isinstance(r, tcp.Client)
    ]


def _turn() -> Deferred[None]:
    """
    @return: A L{Deferred} that fires on the reactor's next turn.
    """
    d: Deferred[None] = Deferred()
    reactor.callLater(0, d.callback, None)  # type: ignore[attr-defined]
    return d
