"""
The client's handshake on a passthrough route, answered by the relay
itself when the request is plain (L{wsrelay.ws.accept}), and by Autobahn
otherwise, with the same answers either way (issue 16).
"""

from __future__ import annotations

import sys
from typing import Any
from unittest import skipUnless

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.test.iosim import FakeTransport
from twisted.trial.unittest import SynchronousTestCase
from txaio.testutil import replace_loop

from tests.support.memory import BACKEND_A, Network, RawClient, request
from tests.support.objects import PROBES_DICT, dictMade
from wsrelay.ws import connecting, frontend
from wsrelay.ws._autobahn import FIRED, classDefaults, setPeer, sharedTrafficStats
from wsrelay.ws.accept import acceptResponse, plainRequest
from wsrelay.ws.frontend import FrontendProtocol
from wsrelay.ws.handshake import parseHead
from wsrelay.ws.legclosing import CLOSED
from wsrelay.ws.legs import RelayLeg
from wsrelay.ws.plainleg import PlainUpstream

#: A plain request's head (the key is RFC 6455's example).
_PLAIN = (
    "GET /chat?x=1 HTTP/1.1\r\nHost: relay.example:8080\r\nUpgrade: websocket\r\n"
    "Connection: keep-alive, Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    "Sec-WebSocket-Protocol: chat, superchat\r\n"
    "Origin: http://relay.example\r\n"
    "Sec-WebSocket-Extensions: permessage-deflate"
)


def _passthrough(route: str = "data_path = passthrough\n") -> str:
    """
    @return: A configuration with the route C{/chat} to backend A.
    """
    return (
        "[relay]\nlisten = tcp:0\nping_interval = 0\n"
        f"[route:chat]\npath = /chat\n{route}"
        f"backends = ws://{BACKEND_A[0]}:{BACKEND_A[1]}/base\n"
    )


class PlainRequestTests(SynchronousTestCase):
    """
    L{plainRequest} takes only what Autobahn accepts as it stands.
    """

    def plain(self, text: str, origins: bool = True) -> Any:
        return plainRequest(parseHead(text.encode("iso-8859-1")), lambda o: origins)

    def test_plain(self) -> None:
        """
        A plain request gives its key and its subprotocols in order.
        """
        self.assertEqual(
            self.plain(_PLAIN),
            ("dGhlIHNhbXBsZSBub25jZQ==", ["chat", "superchat"]),
        )
        self.assertEqual(
            self.plain(_PLAIN.replace("Sec-WebSocket-Protocol: chat, superchat", "")),
            ("dGhlIHNhbXBsZSBub25jZQ==", []),
        )

    def test_others(self) -> None:
        """
        Whatever Autobahn checks further, or refuses, is left to it.
        """
        for old, new in [
            ("GET /chat", "POST /chat"),
            ("HTTP/1.1", "HTTP/1.0"),
            ("/chat?x=1", "/ch\tat"),
            ("/chat?x=1", "//chat"),
            ("/chat?x=1", "/ch\xe9t"),
            ("Host: relay.example:8080", "X: y"),
            ("Host: relay.example:8080", "Host: a\r\nHost: b"),
            ("relay.example:8080", "relay.example:http"),
            ("relay.example:8080", "relay.example:"),
            ("keep-alive, Upgrade", "keep-alive"),
            ("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8"),
            ("Sec-WebSocket-Version: 13", "X: y"),
            ("chat, superchat", "chat, chat"),
            ("Origin: http://relay.example", "Origin: a\r\nOrigin: b"),
            ("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZQ"),
            ("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZQ=A"),
            ("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZ*=="),
            (
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            ),
            ("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "X: y"),
            ("permessage-deflate", "a\r\nSec-WebSocket-Extensions: b"),
        ]:
            self.assertIn(old, _PLAIN)
            self.assertIsNone(self.plain(_PLAIN.replace(old, new)), new)
        self.assertIsNone(self.plain(_PLAIN, origins=False))


class AcceptResponseTests(SynchronousTestCase):
    """
    L{acceptResponse} is Autobahn's 101.
    """

    def test_autobahns(self) -> None:
        """
        For the same request and the same answer from C{onConnect}, it is
        what Autobahn's server writes, byte for byte.
        """
        answer = (
            "superchat",
            {"Set-Cookie": ["a=1", "b=2"], "X-One": "1"},
        )

        class Server(WebSocketServerProtocol):
            def onConnect(self, request: object) -> object:
                return answer

        loop = replace_loop(Clock())
        loop.__enter__()
        self.addCleanup(loop.__exit__, None, None, None)
        factory = WebSocketServerFactory(server="wsrelay")
        factory.setProtocolOptions(openHandshakeTimeout=0)
        factory.protocol = Server
        server = factory.buildProtocol(None)
        transport = StringTransport()
        server.makeConnection(transport)
        server.dataReceived(_PLAIN.encode() + b"\r\n\r\n")
        self.assertEqual(
            transport.value(),
            acceptResponse(
                "dGhlIHNhbXBsZSBub25jZQ==",
                answer[0],
                list(answer[1].items()),
                "wsrelay",
            ),
        )


class _CountingProtocol:
    """
    Stands for Autobahn's server protocol in L{wsrelay.ws.frontend}: counts
    the requests handed to Autobahn, and hands them on.
    """

    def __init__(self) -> None:
        self.calls = 0

    def processHandshake(self, protocol: object) -> object:
        self.calls += 1
        return WebSocketServerProtocol.processHandshake(protocol)

    def __getattr__(self, name: str) -> object:
        return getattr(WebSocketServerProtocol, name)


class PlainOpenTests(SynchronousTestCase):
    """
    L{FrontendProtocol} answers a plain request on a passthrough route
    itself, and leaves the rest to Autobahn.
    """

    def setUp(self) -> None:
        self.counting = _CountingProtocol()
        self.patch(frontend, "WebSocketServerProtocol", self.counting)

    def exchange(
        self, config: str, head: bytes = request(), answer: bool = True
    ) -> tuple[bytes, Network]:
        """
        Send C{head} to a relay with C{config}; when C{answer}, the backend
        takes the upstream and answers.

        @return: What the client got, and the network.
        """
        network = Network(self, config)
        client = RawClient()
        network.pair(network.frontend(), client).clientIO.write(head)
        network.flush()
        if answer:
            network.acceptUpstream()
            network.flush()
        return client.received, network

    def test_plain(self) -> None:
        """
        A plain request opens without Autobahn's C{processHandshake}, the
        pipe carries the connection, and the client's 101 is the one
        Autobahn gives.
        """
        plain, network = self.exchange(_passthrough())
        self.assertEqual(self.counting.calls, 0)
        (session,) = network.relay.sessions
        self.assertIsNotNone(session.pipe)
        self.assertTrue(session.frontend.is_open.called)
        self.patch(FrontendProtocol, "answerPlain", lambda self, screened: False)
        autobahn, _ = self.exchange(_passthrough())
        self.assertEqual(self.counting.calls, 1)
        self.assertTrue(plain.startswith(b"HTTP/1.1 101 "), plain)
        self.assertEqual(plain, autobahn)

    def test_defaultsNotStored(self) -> None:
        """
        What a client's leg would store at its class default as it is
        routed and answered is not stored: no remainder or query when the
        request has none, and no handshake clock once it stopped; they read
        as their defaults.  A request with a remainder and a query keeps
        them.
        """
        for path, stored in [
            ("/chat", {}),
            ("/chat/room?x=1", {"remainder": "/room", "query": "x=1"}),
        ]:
            plain, network = self.exchange(_passthrough(), request(path))
            self.assertTrue(plain.startswith(b"HTTP/1.1 101 "), plain)
            (session,) = network.relay.sessions
            f = session.frontend
            self.assertEqual(
                {n: v for n, v in vars(f).items() if n in ("remainder", "query")},
                stored,
            )
            self.assertEqual(f.path, path.split("?")[0])
            self.assertNotIn("_handshakeCall", vars(f))
            self.assertIsNone(f._handshakeCall)

    def test_firstRead(self) -> None:
        """
        The request goes from the leg's C{dataReceived} to its
        C{processHandshake}, not through Autobahn's parser (C{parse}, its
        C{_dataReceived}) and C{consumeData}; so does a request in pieces,
        answered once its head is complete.
        """
        through: list[bytes] = []
        self.patch(FrontendProtocol, "parse", lambda leg, data: through.append(data))
        self.patch(FrontendProtocol, "consumeData", lambda leg: through.append(b""))
        network = Network(self, _passthrough())
        client = RawClient()
        io = network.pair(network.frontend(), client).clientIO
        head = request()
        io.write(head[:20])
        network.flush()
        self.assertEqual(network.pendingConnects(), [])
        io.write(head[20:])
        network.flush()
        self.assertEqual(len(network.pendingConnects()), 1)
        network.acceptUpstream()
        network.flush()
        self.assertTrue(client.received.startswith(b"HTTP/1.1 101 "), client.received)
        self.assertEqual(through, [])
        self.assertEqual(self.counting.calls, 0)

    def test_frameWithHead(self) -> None:
        """
        A frame sent in the same read as a plain request's head reaches the
        backend once the relay opened: the head ends where the screening
        found it (L{wsrelay.ws.screening.Screened.headLength}).
        """
        frame = b"\x81\x82\x00\x00\x00\x00hi"
        network = Network(self, _passthrough())
        client = RawClient()
        network.pair(network.frontend(), client).clientIO.write(request() + frame)
        network.flush()
        backend, _ = network.acceptUpstream()
        network.flush()
        self.assertTrue(client.received.startswith(b"HTTP/1.1 101 "), client.received)
        self.assertEqual(self.counting.calls, 0)
        self.assertEqual(backend.messages, [(b"hi", False)])

    def test_origin(self) -> None:
        """
        A plain request with an C{Origin} that Autobahn allows opens without
        Autobahn too.
        """
        head = request().replace(
            b"\r\n\r\n", b"\r\nOrigin: https://app.example:8443\r\n\r\n"
        )
        received, _ = self.exchange(_passthrough(), head)
        self.assertEqual(self.counting.calls, 0)
        self.assertTrue(received.startswith(b"HTTP/1.1 101 "), received)

    def test_messagePath(self) -> None:
        """
        A request on a route of the message path goes to Autobahn.
        """
        received, _ = self.exchange(_passthrough("data_path = message\n"))
        self.assertEqual(self.counting.calls, 1)
        self.assertTrue(received.startswith(b"HTTP/1.1 101 "), received)

    def test_otherToAutobahn(self) -> None:
        """
        A request that is not plain (here with C{Origin: null}, which
        Autobahn refuses) goes to Autobahn, which answers it.
        """
        head = request().replace(b"\r\n\r\n", b"\r\nOrigin: null\r\n\r\n")
        received, _ = self.exchange(_passthrough(), head, answer=False)
        self.assertEqual(self.counting.calls, 1)
        self.assertTrue(received.startswith(b"HTTP/1.1 400 "), received)

    def test_refusal(self) -> None:
        """
        A refusal (here the backend's connection fails: 502) is the answer
        Autobahn's path gives.
        """
        answers = []
        for plain in (True, False):
            if not plain:
                self.patch(
                    FrontendProtocol, "answerPlain", lambda self, screened: False
                )
            network = Network(self, _passthrough())
            client = RawClient()
            network.pair(network.frontend(), client).clientIO.write(request())
            network.flush()
            network.failUpstream()
            network.flush()
            answers.append(client.received)
            self.assertTrue(client.lost)
        self.assertEqual(self.counting.calls, 1)
        self.assertIn(b" 502 ", answers[0])
        self.assertEqual(answers[0], answers[1])


#: Whether L{dictMade} can look (CPython 3.11's layout of an object whose
#: class keeps its instances' attributes without a dictionary).
class HeldLegTests(SynchronousTestCase):
    """
    What an open passthrough connection's legs no longer hold of their
    own (L{wsrelay.ws._autobahn}).
    """

    def test_openedLetGo(self) -> None:
        """
        Once paired, the client's leg no longer holds its own C{is_open},
        nor the upstream its C{opened}: they read as the fired L{FIRED};
        the client's leg counts its traffic in Autobahn's one shared
        C{TrafficStats}.  The upstream is a plain leg, with no Autobahn
        state at all (L{PlainUpstream}).
        """
        network = Network(self, _passthrough())
        _, _, _, session = network.openSession()
        f, up = session.frontend, session.upstream
        self.assertNotIn("is_open", vars(f))
        self.assertIs(f.is_open, FIRED)
        self.assertIsInstance(up, PlainUpstream)
        self.assertNotIn("opened", vars(up))
        self.assertIs(up.opened, FIRED)
        self.assertIs(f.trafficStats, sharedTrafficStats())

    def test_openMadeWhenWaitedOn(self) -> None:
        """
        A client's leg makes no C{is_open} of its own unless something
        reads it before the 101: one read then is fired as the relay writes
        the 101 itself (C{acceptPlain}), and let go as the leg is paired.
        """
        seen: list[Any] = []
        onConnect = FrontendProtocol.onConnect

        def reading(leg: FrontendProtocol, *a: Any) -> Any:
            seen.append((leg.is_open, leg.is_open.called))
            return onConnect(leg, *a)

        network = Network(self, _passthrough())
        self.patch(FrontendProtocol, "onConnect", reading)
        _, _, _, session = network.openSession()
        ((opened, called),) = seen
        self.assertFalse(called)
        self.assertIsNot(opened, FIRED)
        self.assertIsNone(self.successResultOf(opened))
        self.assertNotIn("is_open", vars(session.frontend))
        self.assertIs(session.frontend.is_open, FIRED)

    @skipUnless(PROBES_DICT, "probes CPython 3.11's object layout")
    def test_dictionaryNotMade(self) -> None:
        """
        Opening a plain client's leg, to its pipe, never asks for the
        leg's C{__dict__} (CPython 3.11 keeps an instance's attributes
        without one until then, and every later attribute access of the
        leg is slower once it is made); asking for it makes it, as the
        probe sees.  A leg whose C{is_open} and transport details were
        read before its 101 still lets both go, with their flags.
        """
        network = Network(self, _passthrough())
        _, _, _, session = network.openSession()
        f = session.frontend
        self.assertIsNotNone(session.pipe)
        self.assertFalse(dictMade(f))
        vars(f)
        self.assertTrue(dictMade(f))

        onConnect = FrontendProtocol.onConnect

        def reading(leg: FrontendProtocol, *a: Any) -> Any:
            leg.is_open  # noqa: B018 - made when read
            leg._transport_details  # noqa: B018
            return onConnect(leg, *a)

        self.patch(FrontendProtocol, "onConnect", reading)
        _, _, _, session = Network(self, _passthrough()).openSession()
        f = session.frontend
        self.assertIsNotNone(session.pipe)
        for name in ("is_open", "openMade", "_transport_details", "detailsMade"):
            self.assertNotIn(name, vars(f))
        self.assertIs(f.is_open, FIRED)

    @skipUnless(PROBES_DICT, "probes CPython 3.11's object layout")
    def test_peerWithoutDictionary(self) -> None:
        """
        A leg's C{peer}, read and then set to a PROXY protocol header's
        source (as a C{haproxy:} listener does, L{setPeer}), is made and
        kept without asking for the leg's C{__dict__}; with its transport
        details made first, both take the header's source.
        """
        network = Network(self, _passthrough())
        for details in (False, True):
            leg = network.frontend()
            leg.makeConnection(StringTransport())
            if details:
                leg._transport_details  # noqa: B018 - made when read
            self.assertTrue(leg.peer.startswith("tcp"))
            setPeer(leg, "tcp4:192.0.2.7:4000")
            self.assertEqual(leg.peer, "tcp4:192.0.2.7:4000")
            if details:
                self.assertEqual(leg._transport_details.peer, "tcp4:192.0.2.7:4000")
            else:
                self.assertFalse(dictMade(leg))

    def test_plainLegNotRebuilt(self) -> None:
        """
        A client's leg that the relay answered itself keeps the dictionary
        whose keys its class shares (smaller than the 464 bytes of a new
        one: L{compactLegs} leaves it), without the pipe's emptied C{data}
        and with nothing else at its class default; one that Autobahn
        answered, whose dictionary grew through its handshake, is given a
        new one, without its attributes at their class defaults.  Neither
        keeps the handshake's fields (L{RelayLeg.forgetHandshake}).
        """
        for plain in (True, False):
            if not plain:
                self.patch(FrontendProtocol, "answerPlain", lambda self, s: False)
            network = Network(self, _passthrough())
            _, _, _, session = network.openSession()
            self.assertIsNotNone(session.pipe)
            f = session.frontend
            defaults = classDefaults(type(f))
            self.assertEqual(
                {n for n, v in vars(f).items() if defaults.get(n, self) is v},
                set(),
            )
            self.assertNotIn("data", vars(f))
            # Nor the handshake's fields, Autobahn's or the relay's.
            self.assertEqual(set(RelayLeg._HANDSHAKE_ONLY) & set(vars(f)), set())
            size = sys.getsizeof(vars(f))
            if plain:
                self.assertLess(size, 464)
            else:
                self.assertLessEqual(size, 464)

    def test_openAfterClose(self) -> None:
        """
        A leg that opened reads its C{is_open} as fired after its
        connection closed too, on both data paths and on both legs of the
        message path, whether or not anything read it while it was open.
        """
        for route in ("data_path = passthrough\n", "data_path = message\n"):
            network = Network(self, _passthrough(route))
            client, _, _, session = network.openSession()
            legs = [session.frontend]
            if route.endswith("message\n"):
                legs.append(session.upstream)
            client.sendClose(1000)
            network.flush()
            for leg in legs:
                self.assertEqual(leg.state, leg.STATE_CLOSED)
                self.assertIsNone(self.successResultOf(leg.is_open))

    @skipUnless(PROBES_DICT, "probes CPython 3.11's object layout")
    def test_plainUpstreamRightSized(self) -> None:
        """
        A plain upstream leg, once the pipe carries its connection, holds
        nothing at its class default (its unparsed bytes and subprotocol
        are not stored), nor the handshake's fields, and its C{__dict__}
        was never made: its attributes are set and deleted one at a time
        (L{wsrelay.ws.connecting._Attempt.buildProtocol},
        L{PlainUpstream.forgetHandshake}), and L{compactLegs} leaves it
        alone.  (Through a subclass of its own: the names an instance can
        keep without a dictionary are the ones its class's first instances
        set, some 30 at most, and other tests set other names on legs of
        L{PlainUpstream}.)
        """

        class Fresh(PlainUpstream):
            pass

        self.patch(connecting, "PlainUpstream", Fresh)
        network = Network(self, _passthrough())
        _, _, _, session = network.openSession()
        self.assertIsNotNone(session.pipe)
        up = session.upstream
        self.assertIsInstance(up, Fresh)
        self.assertFalse(dictMade(up))
        defaults = classDefaults(type(up))
        attributes = vars(up)
        self.assertTrue(dictMade(up))
        self.assertEqual(
            {n for n, v in attributes.items() if defaults.get(n, self) is v}, set()
        )
        for name in (
            "data",
            "websocket_protocol_in_use",
            "requestKey",
            "resource",
            "requestHeaders",
            "opened",
        ):
            self.assertNotIn(name, attributes)

    def test_smallDictionaries(self) -> None:
        """
        Once the pipe carries the connection, each leg's dictionary holds
        at most 21 entries, sized for them (464 bytes, against 832 for the
        22 to 42 entries a leg had as it was paired): what the pipe dropped
        (the request's head, Autobahn's ping timers) and what is shared or
        at its class default (the write queue, the traffic counters, the
        unparsed bytes, the upstream's handshake fields) are not in it;
        messages still pass both ways.
        """
        network = Network(self, _passthrough())
        client, backend, _, session = network.openSession()
        self.assertIsNotNone(session.pipe)
        for leg in (session.frontend, session.upstream):
            self.assertLessEqual(len(vars(leg)), 21, sorted(vars(leg)))
            self.assertLessEqual(sys.getsizeof(vars(leg)), 464)
            for name in ("head", "data", "send_queue", "trafficStats"):
                self.assertNotIn(name, vars(leg))
        client.sendMessage(b"up")
        backend.sendMessage(b"down")
        network.flush()
        self.assertEqual(backend.messages, [(b"up", False)])
        self.assertEqual(client.messages, [(b"down", False)])

    def test_rateOnlyWithLimit(self) -> None:
        """
        Without C{max_messages_per_second} the client's leg holds no rate
        window (the clock is not read for it); with one, the window starts
        when the client connects.
        """
        network = Network(self, _passthrough())
        _, _, _, session = network.openSession()
        for name in ("rateLimit", "rateWindow"):
            self.assertNotIn(name, vars(session.frontend))
        limited = Network(
            self,
            _passthrough().replace(
                "[relay]\n", "[relay]\nmax_messages_per_second = 5\n"
            ),
        )
        limited.clock.advance(7)
        f = limited.frontend()
        limited.pair(f, RawClient())
        self.assertEqual((f.rateLimit, f.rateWindow), (5, 7.0))

    def test_peerOnce(self) -> None:
        """
        A handshake asks the client's transport for its peer once (the
        admission, the session, the balancer's view and the forwarding
        fields all read it: L{wsrelay.admission.peerHost}); Autobahn's
        transport details and C{peer} are never made; none of the three is
        held once the pipe carries the connection.
        """
        asked: list[object] = []
        getPeer = FakeTransport.getPeer

        def counting(transport: FakeTransport) -> Any:
            asked.append(transport)
            return getPeer(transport)

        self.patch(FakeTransport, "getPeer", counting)
        network = Network(self, _passthrough())
        _, _, _, session = network.openSession()
        f = session.frontend
        self.assertEqual(asked.count(f.transport), 1)
        self.assertEqual(session.peer, getPeer(f.transport).host)
        for name in ("peerAddress", "_transport_details", "peer"):
            self.assertNotIn(name, vars(f))


class PipedLegLostTests(SynchronousTestCase):
    """
    A client's leg that a passthrough pipe carried ends without Autobahn's
    C{connectionLost} (L{wsrelay.ws.legs.RelayLeg.pipeLost}), doing
    what of it matters.
    """

    def test_clientCloses(self) -> None:
        """
        When the client closes, its leg is closed, resolves C{is_closed}
        with itself, is no longer counted by the factory, tells the session
        (which ends, both legs gone) and lets go of the session and the
        pipe.
        """
        network = Network(self, _passthrough())
        client, backend, _, session = network.openSession()
        f = session.frontend
        self.assertIsNotNone(f.dataPath)
        closed: list[object] = []
        f.is_closed.addCallback(closed.append)
        counted = f.factory.countConnections
        client.sendClose(1000, "bye")
        network.flush()
        self.assertEqual(backend.closeFrames, [(1000, b"bye")])
        self.assertEqual(client.closeFrames, [(1000, None)])
        self.assertEqual(closed, [f])
        self.assertEqual(f.state, CLOSED)
        self.assertEqual(f.factory.countConnections, counted - 1)
        self.assertEqual(network.relay.sessions, set())
        self.assertTrue(session.done.called)
        for name in ("session", "dataPath", "listener"):
            self.assertNotIn(name, vars(f))
        self.assertIsNone(f.is_closed)

    def test_closedUnread(self) -> None:
        """
        A client's leg whose C{is_closed} nothing read holds none while
        open (L{wsrelay.ws._autobahn.LazyClosed}), makes none as it closes,
        and reads it as L{None} once closed, not as a new L{Deferred}.
        """
        network = Network(self, _passthrough())
        client, _, _, session = network.openSession()
        f = session.frontend
        self.assertNotIn("is_closed", vars(f))
        client.sendClose(1000, "bye")
        network.flush()
        self.assertTrue(session.done.called)
        self.assertEqual(f.state, CLOSED)
        self.assertIsNone(f.is_closed)

    def test_backendVanishes(self) -> None:
        """
        When the backend's connection goes without a close, the client gets
        1014 and, once its connection is gone too, the session ends.
        """
        network = Network(self, _passthrough())
        client, _, pump, session = network.openSession()
        counted = session.frontend.factory.countConnections
        network.vanish(pump)
        network.flush()
        network.advance(10)
        self.assertEqual(client.closeFrames, [(1014, b"backend connection lost")])
        self.assertIsNotNone(client.closed)
        self.assertEqual(network.relay.sessions, set())
        self.assertTrue(session.done.called)
        self.assertEqual(session.frontend.factory.countConnections, counted - 1)


class LegProducerTests(SynchronousTestCase):
    """
    Paired legs are each other's producers (L{wsrelay.ws.legs.LegProducer}):
    no object of its own per leg for flow control.
    """

    def test_paired(self) -> None:
        """
        Once a passthrough session opened, each leg is the producer
        registered with the other leg's transport, streaming.
        """
        network = Network(self, _passthrough())
        _, _, _, session = network.openSession()
        f, up = session.frontend, session.upstream
        self.assertIs(f.transport.producer, up)
        self.assertIs(up.transport.producer, f)
        self.assertTrue(f.transport.streamingProducer)
        self.assertTrue(up.transport.streamingProducer)

    def test_pausesOwnTransport(self) -> None:
        """
        A leg paused by the other leg's transport pauses and resumes its
        own transport; C{stopProducing} (the other's connection lost) leaves
        it reading; without a transport, each does nothing.
        """
        for leg in (PlainUpstream(), FrontendProtocol()):
            transport = StringTransport()
            leg.transport = transport
            leg.pauseProducing()
            self.assertEqual(transport.producerState, "paused")
            leg.resumeProducing()
            self.assertEqual(transport.producerState, "producing")
            leg.stopProducing()
            self.assertEqual(transport.producerState, "producing")
            leg.transport = None
            leg.pauseProducing()
            leg.resumeProducing()
