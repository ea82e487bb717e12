"""
Tests for the lean TCP client transport of L{wsrelay.ws.connecting}
(C{_IPClient}): a socket created non-blocking, a connect that asks for the
socket's error only once it could complete and ends waiting to read only,
failures reported as Twisted's transport reports them, and a plain leg's
request sent at once, on loopback sockets.
"""

from __future__ import annotations

import fcntl
import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from tests.support.backends import listenRecording, plainEndpoint
from tests.support.waiting import waitFor
from wsrelay.ws.connecting import PlainTCPEndpoint
from wsrelay.ws.plainleg import PlainUpstream


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

    async def test_nonBlocking(self) -> None:
        """
        The connected socket is non-blocking, without Twisted's
        C{setblocking} after it was made (it was created so).
        """
        client = _Client()
        self.connect(client)
        await waitFor(lambda: client.reading is not None)
        transport: Any = client.transport
        flags = fcntl.fcntl(transport.fileno(), fcntl.F_GETFL)
        self.assertTrue(flags & os.O_NONBLOCK)
        self.assertEqual(transport.socket.gettimeout(), 0.0)
        self.assertTrue(fcntl.fcntl(transport.fileno(), fcntl.F_GETFD) & 1)

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
        connector = self.endpoint().connectDirect(factory)
        connector.stopConnecting()
        [reason] = await factory.failed
        self.assertEqual(type(reason.value).__name__, "UserError")
        self.assertIsNone(client.reading)

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
