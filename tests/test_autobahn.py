"""
The adjustments wsrelay makes to Autobahn, and its shims over Autobahn's
private attributes (L{wsrelay.ws._autobahn}).
"""

from __future__ import annotations

import pprint
import struct

import autobahn
import autobahn.twisted.websocket
import autobahn.websocket.protocol
from autobahn import util
from autobahn.twisted.util import peer2str
from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from autobahn.websocket.compress import PerMessageDeflate, PerMessageDeflateOfferAccept
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from txaio.testutil import replace_loop
from zope.interface import implementer

import wsrelay.ws.legs  # noqa: F401 (installs the adjustment)
from wsrelay.config import parseConfig
from wsrelay.ws import _autobahn
from wsrelay.ws._autobahn import (
    FIRED,
    PRIVATE_ATTRIBUTES,
    PRIVATE_METHODS,
    LazyCall,
    LazyFormat,
    LegShims,
    isTLS,
    letGo,
    setPeer,
)
from wsrelay.ws.frontend import FrontendProtocol
from wsrelay.ws.legs import RelayLeg, withOptions
from wsrelay.ws.upstream import UpstreamFactory, UpstreamProtocol


class LazyFormatTests(SynchronousTestCase):
    """
    Autobahn's debug formatting happens only when a line is rendered.
    """

    def test_installed(self) -> None:
        """
        Importing the relay's legs makes Autobahn's C{pformat}, C{hltype}
        and C{hlval} lazy, and they render as the originals do.
        """
        self.assertIs(autobahn.websocket.protocol.pformat, LazyFormat)
        method = self.test_installed
        for module in (autobahn.websocket.protocol, autobahn.twisted.websocket):
            hltype = module.hltype(method)  # type: ignore[attr-defined]
            hlval = module.hlval(42, color="green")  # type: ignore[attr-defined]
            self.assertIsInstance(hltype, LazyCall)
            self.assertEqual(str(hltype), util.hltype(method))
            self.assertEqual(f"{hlval}", util.hlval(42, color="green"))

    def test_rendersLikePformat(self) -> None:
        """
        As a string, in a format string or as a repr, it is what
        C{pformat} gives; it is a C{str}, so it may stand for one.
        """
        value = [("openHandshakeTimeout", 5, "Factory")] * 4
        lazy = LazyFormat(value)
        expected = pprint.pformat(value)
        self.assertEqual(
            (str(lazy), f"{lazy}", "{a}".format_map({"a": lazy}), repr(lazy)),
            (expected,) * 4,
        )
        self.assertIsInstance(lazy, str)

    def test_lazy(self) -> None:
        """
        Nothing is formatted until asked for.
        """

        class Loud:
            def __repr__(self) -> str:
                raise AssertionError("formatted")

        LazyFormat([Loud()])


#: Autobahn's attributes (public names, internal state) that the relay's
#: legs read or set, besides the private ones of L{_autobahn}: those of
#: an open connection that received a message (C{RelayLeg}'s annotations,
#: passthrough's C{_stopAutobahnPings}, the handshake screening's C{data}).
LEG_STATE = (
    "state",
    "failedByMe",
    "frame_data",
    "current_frame",
    "utf8validateIncomingCurrentMessage",
    "message_data_total_length",
    "closeHandshakeTimeoutCall",
    "send_queue",
    "logOctets",
    "data",
    "autoPingPendingCall",
    "autoPingTimeoutCall",
    "autoPingInterval",
    "autoPingTimeout",
    "wasClean",
    "remoteCloseCode",
    "localCloseCode",
    "is_closed",
)

#: The same, of a client connection only (the upstream leg).
CLIENT_STATE = ("serverConnectionDropTimeout", "serverConnectionDropTimeoutCall")


class ShimLeg(LegShims, WebSocketServerProtocol):  # type: ignore[misc]
    """
    An Autobahn server protocol with the relay's shims: records the
    failures Autobahn reports through them.
    """

    def __init__(self) -> None:
        super().__init__()
        self.failures: list[tuple[int, str]] = []

    def onFailure(self, code: int, reason: str) -> None:
        """
        Record the failure, then fail as the shim does by default.
        """
        self.failures.append((code, reason))
        super().onFailure(code, reason)


def openLeg(
    testCase: SynchronousTestCase, extensions: bytes = b""
) -> tuple[ShimLeg, StringTransport]:
    """
    A L{ShimLeg} that completed a client's opening handshake, in memory,
    Autobahn's timers on a clock.

    @param extensions: The client's C{Sec-WebSocket-Extensions}, if any.
    @return: The leg and its transport, cleared of the 101.
    """
    loop = replace_loop(Clock())
    loop.__enter__()
    testCase.addCleanup(loop.__exit__, None, None, None)
    factory = WebSocketServerFactory()
    factory.protocol = ShimLeg
    factory.setProtocolOptions(
        failByDrop=False,
        openHandshakeTimeout=0,
        perMessageCompressionAccept=lambda offers: (
            PerMessageDeflateOfferAccept(offers[0]) if offers else None
        ),
    )
    leg = factory.buildProtocol(None)
    transport = StringTransport()
    leg.makeConnection(transport)
    head = (
        b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n"
    )
    if extensions:
        head += b"Sec-WebSocket-Extensions: " + extensions + b"\r\n"
    leg.dataReceived(head + b"\r\n")
    testCase.assertTrue(transport.value().startswith(b"HTTP/1.1 101"))
    transport.clear()
    return leg, transport


def closeCode(data: bytes) -> int:
    """
    @return: The code of the unmasked close frame C{data} (a server's).
    """
    assert data[0] == 0x88, data
    code: int = struct.unpack_from("!H", data, 2)[0]
    return code


class PrivateNamesTests(SynchronousTestCase):
    """
    The Autobahn internals the relay relies on are where it expects them:
    an upgrade of Autobahn that renames one fails here, by name, rather
    than somewhere in the relay's behaviour.
    """

    def test_privateMethods(self) -> None:
        """
        Autobahn's protocols have every private method L{_autobahn} names.
        """
        missing = [
            f"{cls.__name__}.{name}"
            for cls in (WebSocketServerProtocol, WebSocketClientProtocol)
            for name in PRIVATE_METHODS
            if not callable(getattr(cls, name, None))
        ]
        if missing:
            self.fail(
                f"Autobahn {autobahn.__version__} lacks {', '.join(missing)}:"
                " update wsrelay/ws/_autobahn.py"
            )

    def test_attributes(self) -> None:
        """
        An open Autobahn protocol has every private attribute L{_autobahn}
        names and the internal state the legs use.
        """
        leg, _ = openLeg(self)
        key = b"\x00\x00\x00\x00"
        leg.onMessage = lambda payload, isBinary: None
        leg.dataReceived(b"\x81\x82" + key + b"hi")
        factory = WebSocketClientFactory(url="ws://example.com/")
        factory.protocol = WebSocketClientProtocol
        factory.setProtocolOptions(serverConnectionDropTimeout=1)
        client = factory.buildProtocol(None)
        client.makeConnection(StringTransport())
        missing = [
            name for name in PRIVATE_ATTRIBUTES + LEG_STATE if not hasattr(leg, name)
        ] + [name for name in CLIENT_STATE if not hasattr(client, name)]
        if missing:
            self.fail(
                f"Autobahn {autobahn.__version__} lacks {', '.join(missing)}:"
                " update wsrelay/ws/_autobahn.py or wsrelay/ws/legs.py"
            )

    def test_parseIsAutobahns(self) -> None:
        """
        L{LegShims.parse} is the parser both legs would reach through
        Autobahn's C{dataReceived}: nothing between overrides it.
        """
        for leg in (FrontendProtocol, UpstreamProtocol):
            self.assertIs(leg.parse, LegShims.parse)
            self.assertIs(
                leg._dataReceived,  # type: ignore[attr-defined]
                LegShims.parse,
            )


class ShimTests(SynchronousTestCase):
    """
    L{LegShims} maps Autobahn's private hooks to public names with
    Autobahn's behaviour.
    """

    def test_compressor(self) -> None:
        """
        Once open, C{compressor} is the permessage-deflate compressor
        Autobahn negotiated, or L{None} without compression.
        """
        leg, _ = openLeg(self, b"permessage-deflate")
        self.assertIsInstance(leg.compressor, PerMessageDeflate)
        self.assertIs(leg.compressor, leg._perMessageCompress)
        plain, _ = openLeg(self)
        self.assertIsNone(plain.compressor)

    def test_parse(self) -> None:
        """
        L{LegShims.parse} parses what the transport received, as
        Autobahn's C{dataReceived} does.
        """
        leg, transport = openLeg(self)
        got: list[bytes] = []
        leg.onMessage = lambda payload, isBinary: got.append(payload)
        key = b"\x01\x02\x03\x04"
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(b"hi"))
        leg.parse(b"\x81\x82" + key + payload)
        self.assertEqual(got, [b"hi"])

    def test_protocolViolation(self) -> None:
        """
        L{LegShims.protocolViolation} fails the connection with 1002
        through L{LegShims.onFailure}, whose default sends the close frame.
        """
        leg, transport = openLeg(self)
        self.assertFalse(leg.protocolViolation("bad"))
        self.assertEqual(leg.failures, [(1002, "bad")])
        self.assertEqual(closeCode(transport.value()), 1002)

    def test_invalidPayload(self) -> None:
        """
        L{LegShims.invalidPayload} fails the connection with 1007.
        """
        leg, transport = openLeg(self)
        self.assertFalse(leg.invalidPayload("not UTF-8"))
        self.assertEqual(leg.failures, [(1007, "not UTF-8")])
        self.assertEqual(closeCode(transport.value()), 1007)

    def test_autobahnsOwnFailure(self) -> None:
        """
        A failure Autobahn finds itself (an unmasked frame from a client)
        reaches L{LegShims.onFailure}.
        """
        leg, transport = openLeg(self)
        leg.dataReceived(b"\x81\x02hi")
        self.assertEqual([code for code, _ in leg.failures], [1002])
        self.assertEqual(closeCode(transport.value()), 1002)

    def test_failNow(self) -> None:
        """
        L{LegShims.failNow} fails as Autobahn does, whatever
        L{LegShims.onFailure} would decide: the close frame goes at once.
        """
        leg, transport = openLeg(self)
        leg.failNow(1009, "too big")
        self.assertEqual(leg.failures, [])
        self.assertEqual(closeCode(transport.value()), 1009)
        self.assertTrue(leg.failedByMe)

    def test_setPeer(self) -> None:
        """
        L{setPeer} gives the protocol its C{peer} in its transport details
        too.
        """
        leg, _ = openLeg(self)
        setPeer(leg, "tcp4:192.0.2.7:4000")
        self.assertEqual(leg.peer, "tcp4:192.0.2.7:4000")
        self.assertEqual(leg._transport_details.peer, "tcp4:192.0.2.7:4000")

    def test_lazyDetails(self) -> None:
        """
        A leg's transport details and C{peer} are not made as it connects,
        but when first read, as Autobahn makes them, and then kept; the
        details made after C{setPeer} carry its peer; Autobahn's reads
        them as it answers a request.
        """

        def connected() -> tuple[ShimLeg, StringTransport]:
            factory = WebSocketServerFactory()
            factory.setProtocolOptions(openHandshakeTimeout=0)
            # (Options on the class, as the relay's legs have them.)
            factory.protocol = withOptions(ShimLeg, factory)
            leg = factory.buildProtocol(None)
            transport = StringTransport()
            leg.makeConnection(transport)
            return leg, transport

        leg, transport = connected()
        self.assertNotIn("_transport_details", vars(leg))
        self.assertNotIn("peer", vars(leg))
        self.assertEqual(leg.peer, peer2str(transport))
        self.assertIs(leg.peer, vars(leg)["peer"])
        details = leg._transport_details
        self.assertIs(vars(leg)["_transport_details"], details)
        self.assertEqual(details.peer, peer2str(transport))
        self.assertFalse(details.is_secure)
        self.assertTrue(details.is_server)
        other, _ = connected()
        setPeer(other, "tcp4:192.0.2.7:4000")
        self.assertNotIn("_transport_details", vars(other))
        self.assertEqual(other._transport_details.peer, "tcp4:192.0.2.7:4000")
        opened, _ = openLeg(self)
        self.assertIn("peer", vars(opened))


class ConnectionMadeTests(SynchronousTestCase):
    """
    L{LegShims.connectionMade} sets a leg up as Autobahn's own
    C{connectionMade} does, setting only what differs from the class
    defaults.
    """

    def assertSetUpAsAutobahn(self, factory: object) -> None:
        """
        A leg of C{factory} made by the shim reads, for every attribute
        that Autobahn's own set-up sets, the value Autobahn sets; and the
        shim leaves fewer attributes in the leg's dictionary.
        """
        loop = replace_loop(Clock())
        loop.__enter__()
        self.addCleanup(loop.__exit__, None, None, None)
        ours = factory.buildProtocol(None)  # type: ignore[attr-defined]
        theirs = factory.buildProtocol(None)  # type: ignore[attr-defined]
        self.assertEqual(type(ours).CONFIG_ATTRS, ())
        ours.makeConnection(StringTransport())
        theirs.transport = StringTransport()
        autobahn.twisted.websocket.WebSocketAdapterProtocol.connectionMade(theirs)
        # Autobahn's path went through the shim's _connectionMade: do it
        # again with Autobahn's own.
        base = (
            WebSocketServerProtocol
            if isinstance(theirs, WebSocketServerProtocol)
            else WebSocketClientProtocol
        )
        theirs.transport = StringTransport()
        base._connectionMade(theirs)
        skipped = {"transport", "send_queue", "http_request_data"}
        different = {
            name: (getattr(ours, name), value)
            for name, value in vars(theirs).items()
            if name not in skipped
            and name not in RelayLeg._HANDSHAKE_ONLY
            and not _same(getattr(ours, name), value)
        }
        self.assertEqual(different, {})
        self.assertLess(len(vars(ours)), len(vars(theirs)) - 20)

    def test_server(self) -> None:
        """
        A client's leg (an Autobahn server protocol), which takes the short
        way (L{LegShims.connectsLean}) with the relay's options.
        """
        factory = WebSocketServerFactory()
        factory.setProtocolOptions(openHandshakeTimeout=0)
        factory.protocol = withOptions(ShimLeg, factory)
        self.assertTrue(factory.protocol.connectsLean)
        self.assertSetUpAsAutobahn(factory)
        self.assertEqual(factory.countConnections, 3)

    def test_serverNotLean(self) -> None:
        """
        A client's leg whose options ask for more as it connects (timings
        tracked, Autobahn's opening-handshake timer, no C{TCP_NODELAY})
        does not take the short way, and is set up as Autobahn does.
        """
        for options in (
            {"trackTimings": True},
            {"openHandshakeTimeout": 5},
            {"tcpNoDelay": False},
        ):
            factory = WebSocketServerFactory()
            factory.setProtocolOptions(openHandshakeTimeout=0)
            for name, value in options.items():
                setattr(factory, name, value)
            factory.protocol = withOptions(ShimLeg, factory)
            self.assertFalse(factory.protocol.connectsLean, options)
            self.assertSetUpAsAutobahn(factory)
            self.assertEqual(factory.countConnections, 3)

    def test_leanNoDelay(self) -> None:
        """
        A leg that takes the short way still asks its transport for
        C{TCP_NODELAY}.
        """
        factory = WebSocketServerFactory()
        factory.setProtocolOptions(openHandshakeTimeout=0)
        factory.protocol = withOptions(ShimLeg, factory)
        asked: list[bool] = []
        transport = StringTransport()
        transport.setTcpNoDelay = asked.append  # type: ignore[attr-defined]
        factory.buildProtocol(None).makeConnection(transport)
        self.assertEqual(asked, [True])

    def test_client(self) -> None:
        """
        An upstream leg (an Autobahn client protocol), which sends its
        request.
        """
        config = parseConfig(
            "[relay]\nlisten = tcp:0\n[route:r]\npath = /\n"
            "backends = ws://127.0.0.1:1/\n",
            "r.ini",
        )
        factory = UpstreamFactory("ws://127.0.0.1:1/", config, None)
        self.assertSetUpAsAutobahn(factory)


def _same(ours: object, theirs: object) -> bool:
    """
    @return: Whether two legs' values of an attribute are the same: equal
        plain values, or objects of the same type (each connection's own:
        its L{Deferred}s, its UTF-8 validator).
    """
    if theirs is None or isinstance(theirs, (bool, int, float, str, bytes, tuple)):
        return ours == theirs
    return type(ours) is type(theirs)


class _Tolerant(StringTransport):
    """
    A transport that lets Autobahn unregister a producer it never
    registered (as it does when it drops a connection).
    """

    def unregisterProducer(self) -> None:
        """
        Nothing to unregister.
        """


class LegInitTests(SynchronousTestCase):
    """
    L{LegShims.__init__} makes only what each connection needs of its own;
    the rest reads as Autobahn's would, from the class or made when read.
    """

    def test_own(self) -> None:
        """
        A new leg holds nothing of Autobahn's own; its C{is_open} and
        C{is_closed} are made, unfired, when first read; its events are the
        shared tuple,
        its transport details and UTF-8 validator are not made.  After
        C{makeConnection}, still no details, validator or events of its
        own, and C{send_state} reads as Autobahn sets it.
        """
        factory = WebSocketServerFactory()
        factory.setProtocolOptions(openHandshakeTimeout=0)
        factory.protocol = withOptions(ShimLeg, factory)
        leg = factory.buildProtocol(None)
        self.assertEqual(sorted(vars(leg)), ["factory", "failures"])
        self.assertIsNone(leg._transport_details.peer)
        self.assertNotIn("_transport_details", vars(leg))
        self.assertIsNot(leg.is_open, leg.is_closed)
        self.assertFalse(leg.is_open.called)
        self.assertFalse(leg.is_closed.called)
        self.assertEqual(leg._valid_events, ("message",))
        leg.makeConnection(StringTransport())
        for name in ("_transport_details", "utf8validator", "_valid_events"):
            self.assertNotIn(name, vars(leg))
        self.assertEqual(leg.send_state, WebSocketServerProtocol.SEND_STATE_GROUND)

    def leanLeg(self) -> tuple[ShimLeg, StringTransport]:
        """
        @return: A leg with its options on its class, as the relay's legs
            have them, open, and its transport cleared of the 101.
        """
        leg, transport = self.connectedLeg()
        self.openLeg(leg, transport)
        return leg, transport

    def test_openWhenRead(self) -> None:
        """
        A leg's C{is_open} read before it opened is made then and resolved
        by Autobahn as it opens the leg; a leg where nothing read it makes
        none, and reads L{FIRED} once open (Autobahn's resolving of it is
        harmless); a leg that closed before it opened reads an unfired
        one.
        """
        read, opened, closed = (
            self.connectedLeg(),
            self.connectedLeg(),
            self.connectedLeg(),
        )
        waiting = read[0].is_open
        self.assertFalse(waiting.called)
        for leg, transport in (read, opened):
            self.openLeg(leg, transport)
        self.assertIsNone(self.successResultOf(waiting))
        self.assertIs(vars(read[0])["is_open"], waiting)
        self.assertNotIn("is_open", vars(opened[0]))
        self.assertIs(opened[0].is_open, FIRED)
        closed[0].dropConnection(abort=True)
        self.assertNoResult(closed[0].is_open)

    def test_firedShared(self) -> None:
        """
        What a callback on one open leg's C{is_open} (L{FIRED}, shared by
        every leg) returns, raises or waits on reaches no other leg's: each
        reader sees it fired with L{None}.
        """
        (leg, _), (other, _) = self.leanLeg(), self.leanLeg()
        self.assertIs(leg.is_open, other.is_open)
        self.assertEqual(
            self.successResultOf(leg.is_open.addCallback(lambda _: "x")), "x"
        )
        self.failureResultOf(leg.is_open.addBoth(lambda _: 1 / 0), ZeroDivisionError)
        waiting: Deferred[None] = Deferred()
        leg.is_open.addCallback(lambda _: waiting)
        self.assertIsNone(self.successResultOf(other.is_open))
        leg.is_open.callback("again")
        self.assertIsNone(self.successResultOf(FIRED))

    def connectedLeg(self) -> tuple[ShimLeg, StringTransport]:
        """
        @return: A leg with its options on its class, as the relay's legs
            have them, connected, before its opening handshake.
        """
        loop = replace_loop(Clock())
        loop.__enter__()
        self.addCleanup(loop.__exit__, None, None, None)
        factory = WebSocketServerFactory()
        factory.setProtocolOptions(failByDrop=False, openHandshakeTimeout=0)
        factory.protocol = withOptions(ShimLeg, factory)
        leg = factory.buildProtocol(None)
        transport = _Tolerant()
        leg.makeConnection(transport)
        return leg, transport

    def openLeg(self, leg: ShimLeg, transport: StringTransport) -> None:
        """
        Open C{leg} with Autobahn's handshake, and clear its transport.
        """
        leg.dataReceived(
            b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 101"))
        transport.clear()

    def test_validatorWhenRead(self) -> None:
        """
        A leg's UTF-8 validator is made when first read, one per leg, and
        kept; it validates as Autobahn's.
        """
        leg, _ = self.leanLeg()
        other, _ = self.leanLeg()
        self.assertNotIn("utf8validator", vars(leg))
        validator = leg.utf8validator
        self.assertIs(vars(leg)["utf8validator"], validator)
        self.assertIsNot(other.utf8validator, validator)
        validator.reset()
        self.assertTrue(validator.validate("é".encode())[0])
        self.assertFalse(validator.validate(b"\xff")[0])

    def test_invalidText(self) -> None:
        """
        A text message that is not UTF-8 still fails the connection with
        1007 (the validator, made when the message begins, checks it).
        """
        leg, transport = self.leanLeg()
        payload = b"\xff\xfe"
        mask = b"\x01\x02\x03\x04"
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        leg.dataReceived(bytes([0x81, 0x80 | len(payload)]) + mask + masked)
        self.assertEqual({code for code, _ in leg.failures}, {1007})
        self.assertEqual(closeCode(transport.value()), 1007)


class IsTLSTests(SynchronousTestCase):
    """
    L{isTLS} says whether a transport provides C{ISSLTransport}, asking
    zope once per transport class.
    """

    def test_byClass(self) -> None:
        """
        A TLS transport is, a plain one is not; each class is asked of
        once.
        """

        @implementer(ISSLTransport)
        class TLSTransport(StringTransport):
            pass

        class PlainTransport(StringTransport):
            pass

        asked: list[object] = []
        providedBy = ISSLTransport.providedBy

        class Counting:
            def providedBy(self, transport: object) -> bool:
                asked.append(type(transport))
                return bool(providedBy(transport))

        self.patch(_autobahn, "ISSLTransport", Counting())
        for _ in range(3):
            self.assertTrue(isTLS(TLSTransport()))
            self.assertFalse(isTLS(PlainTransport()))
        self.assertEqual(asked, [TLSTransport, PlainTransport])


class LetGoTests(SynchronousTestCase):
    """
    L{letGo} drops a leg's cycles, and looks for a client connector only
    on a leg that connected out.
    """

    def test_acceptedLeg(self) -> None:
        """
        An accepted connection's leg (C{client=False}): its cycles are
        dropped and its transport is not looked at.
        """

        class Watched:
            looked: list[str] = []

            def __getattr__(self, name: str) -> object:
                self.looked.append(name)
                raise AttributeError(name)

        class Leg:
            pass

        leg = Leg()
        leg.transport = Watched()  # type: ignore[attr-defined]
        leg.session = object()  # type: ignore[attr-defined]
        letGo(leg, ("session", "target"), client=False)
        self.assertEqual(vars(leg), {"transport": leg.transport})  # type: ignore[attr-defined]
        self.assertEqual(Watched.looked, [])
        letGo(leg, ("session",))
        self.assertEqual(Watched.looked, ["connector", "transport"])

    def test_connectedLeg(self) -> None:
        """
        A leg that connected out: its connector no longer refers to its
        transport.
        """

        class Connector:
            pass

        class Transport:
            pass

        class Leg:
            pass

        connector, transport, leg = Connector(), Transport(), Leg()
        transport.connector = connector  # type: ignore[attr-defined]
        connector.transport = transport  # type: ignore[attr-defined]
        leg.transport = transport  # type: ignore[attr-defined]
        letGo(leg, ())
        self.assertIsNone(connector.transport)  # type: ignore[attr-defined]
