"""
Tests for the open path of a client whose handshake is valid: the session
opener (L{wsrelay.registry.Sessions}) gives the client's leg its refusal
before failing (L{wsrelay.ws.frontend.FrontendProtocol.keepRefusal}), so
that the leg hangs no callback of its own on every handshake's
L{Deferred}; a proxy session's C{done} is made only when read.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase

from tests.support.memory import (
    BACKEND_A,
    BACKEND_B,
    Network,
    RawClient,
    relayConfig,
    request,
)
from wsrelay.config import parseConfig
from wsrelay.service import RelayService
from wsrelay.ws.frontend import FrontendProtocol
from wsrelay.ws.handshake import parseHead
from wsrelay.ws.screening import Refused

PASSTHROUGH = (
    "[relay]\nlisten = tcp:0\nping_interval = 0\n"
    "[route:chat]\npath = /chat\ndata_path = passthrough\n"
    f"backends = ws://{BACKEND_A[0]}:{BACKEND_A[1]}/base\n"
)
KEY = "dGhlIHNhbXBsZSBub25jZQ=="

CONFIG = (
    "[relay]\nlisten = tcp:0\n"
    "[route:feed]\npath = /feed\nmode = fanout\nconnect = lazy\n"
    "backends = ws://10.0.0.1:9001/feed\n"
)


class KeepingFrontend:
    """
    What the session opener reads of a client's leg on a fan-out route,
    and the refusals it was given.
    """

    state = 0
    remainder = ""
    query = ""

    def __init__(self) -> None:
        self.head = parseHead(b"GET /feed HTTP/1.1\r\nHost: relay")
        self.kept: list[Refused] = []

    def keepRefusal(self, refusal: Refused) -> None:
        self.kept.append(refusal)


class Opener:
    """
    A session opener that answers with a L{Deferred} of its own.
    """

    def __init__(self) -> None:
        self.opened: list[Deferred[Any]] = []

    def openSession(
        self, frontend: object, route: object, key: str | None = None
    ) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.opened.append(d)
        return d


class OpenChainTests(SynchronousTestCase):
    """
    The client's leg takes its refusal from the session opener, not from
    a callback on the opener's L{Deferred}.
    """

    def relay(self) -> RelayService:
        return RelayService(
            parseConfig(CONFIG, "t.ini"), reactor=MemoryReactor(), clock=Clock()
        )

    def test_channelUnavailableKept(self) -> None:
        """
        A fan-out channel that cannot be made refuses the client with 503:
        the client's leg was given that refusal (its body among it) before
        the L{Deferred} failed.
        """
        relay = self.relay()
        sessions = relay.frontendFactory.sessions

        def noChannel(route: object, key: str) -> None:
            raise ValueError("no such channel")

        sessions.channel = noChannel  # type: ignore[method-assign]
        (route,) = relay.routes.routes
        frontend = KeepingFrontend()
        d = sessions.openSession(frontend, route)  # type: ignore[arg-type]
        refusal = self.failureResultOf(d, Refused).value
        self.assertEqual(refusal.code, 503)
        self.assertEqual(frontend.kept, [refusal])
        self.assertEqual(refusal.body, b"channel unavailable\n")

    def test_onConnectHandsOverTheOpenersDeferred(self) -> None:
        """
        L{FrontendProtocol.onConnect} stops the handshake clock and answers
        with the opener's own L{Deferred}; a failure that reaches it
        without L{FrontendProtocol.keepRefusal} leaves nothing kept (the
        leg no longer inspects the failures going by).
        """
        relay = self.relay()
        factory = relay.frontendFactory
        opener = Opener()
        factory.sessions = opener
        leg = factory.buildProtocol(None)
        assert isinstance(leg, FrontendProtocol)
        (leg.route,) = relay.routes.routes
        d = leg.onConnect(None)
        self.assertEqual(opener.opened, [d])
        d.errback(Refused(502, "Bad Gateway"))
        self.failureResultOf(d, Refused)
        self.assertIsNone(leg._refusal)
        refusal = Refused(503, "Service Unavailable", body=b"x")
        leg.keepRefusal(refusal)
        self.assertIs(leg._refusal, refusal)


class DoneTests(SynchronousTestCase):
    """
    L{ProxySession.done <wsrelay.proxy.session.ProxySession.done>} is made
    when first read, and fires when both legs are closed either way.
    """

    def test_readWhileOpen(self) -> None:
        """
        Read while the session is open, it is one L{Deferred}, which fires
        once the legs are closed; nothing was made before the read.
        """
        network = Network(self, relayConfig())
        client, _, _, session = network.openSession()
        self.assertIsNone(session._done)
        done = session.done
        self.assertIs(session.done, done)
        self.assertNoResult(done)
        client.sendClose(4001, "bye")
        network.flush()
        self.assertIsNone(self.successResultOf(done))
        self.assertEqual(network.relay.sessions, set())

    def test_readAfterEnd(self) -> None:
        """
        A session that ended with nobody waiting never made one; read
        afterwards, it has fired.
        """
        network = Network(self, relayConfig())
        client, _, _, session = network.openSession()
        client.sendClose(4001, "bye")
        network.flush()
        self.assertEqual(network.relay.sessions, set())
        self.assertIsNone(session._done)
        self.assertIsNone(self.successResultOf(session.done))


class DirectAnswerTests(SynchronousTestCase):
    """
    On a passthrough route with no authorizer, the session answers the
    client's plain request through the leg's C{acceptPlain} or
    C{denyPlain} itself: C{onConnect} gives no L{Deferred}.
    """

    def exchange(
        self, config: str = PASSTHROUGH
    ) -> tuple[Network, RawClient, list[Any], list[str]]:
        """
        Send a plain request to a passthrough route.

        @return: The network, the client, what C{onConnect} was given and
            gave (the key, the result), and which of the leg's answers
            were called.
        """
        network = Network(self, config)
        leg = network.frontend()
        given: list[Any] = []
        called: list[str] = []
        onConnect, accept, deny = leg.onConnect, leg.acceptPlain, leg.denyPlain

        def recordingConnect(request: Any, key: str | None = None) -> Any:
            d = onConnect(request, key)
            given.append((key, d))
            return d

        def recordingAccept(res: Any, key: str) -> None:
            called.append("accept")
            accept(res, key)

        def recordingDeny(f: Any) -> None:
            called.append("deny")
            deny(f)

        leg.onConnect = recordingConnect  # type: ignore[method-assign]
        leg.acceptPlain = recordingAccept  # type: ignore[method-assign]
        leg.denyPlain = recordingDeny  # type: ignore[method-assign]
        client = RawClient()
        network.pair(leg, client).clientIO.write(request())
        network.flush()
        self.assertEqual(given, [(KEY, None)])
        self.assertEqual(called, [])
        return network, client, given, called

    def test_accepted(self) -> None:
        """
        The backend's 101 reaches the leg's C{acceptPlain} from the
        session: the client gets its 101 and the pipe carries the
        connection.
        """
        network, client, _, called = self.exchange()
        network.acceptUpstream()
        network.flush()
        self.assertEqual(called, ["accept"])
        self.assertTrue(client.received.startswith(b"HTTP/1.1 101 "))
        (session,) = network.relay.sessions
        self.assertIsNotNone(session.pipe)

    def test_nextBackend(self) -> None:
        """
        When the first backend is refused, the next one's 101 reaches the
        leg's C{acceptPlain} (from the connector's coroutine), once.
        """
        network, client, _, called = self.exchange(
            PASSTHROUGH.replace(
                "/base\n", f"/base ws://{BACKEND_B[0]}:{BACKEND_B[1]}/base\n"
            )
        )
        network.failUpstream()
        network.flush()
        self.assertEqual(called, [])
        network.acceptUpstream()
        network.flush()
        self.assertEqual(called, ["accept"])
        self.assertTrue(client.received.startswith(b"HTTP/1.1 101 "))

    def test_refused(self) -> None:
        """
        A refused backend: the leg's C{denyPlain} answers 502 with the
        connector's body.
        """
        network, client, _, called = self.exchange()
        network.failUpstream()
        network.flush()
        self.assertEqual(called, ["deny"])
        self.assertTrue(client.received.startswith(b"HTTP/1.1 502 "))
        self.assertIn(b"no backend reachable", client.received)

    def test_timeout(self) -> None:
        """
        A backend that never answers: 504 once the connect timeout passed.
        """
        network, client, _, called = self.exchange()
        network.advance(20)
        self.assertEqual(called, ["deny"])
        self.assertTrue(client.received.startswith(b"HTTP/1.1 504 "))

    def test_clientLeft(self) -> None:
        """
        A client that leaves while the upstream is opening: the attempt is
        stopped, and the leg is answered neither way.
        """
        network, client, _, called = self.exchange()
        self.assertEqual(len(network.pendingConnects()), 1)
        assert client.transport is not None
        client.transport.loseConnection()
        network.flush()
        self.assertEqual(network.pendingConnects(), [])
        self.assertEqual(called, [])
        self.assertEqual(network.relay.sessions, set())
