"""
What opening a leg costs and what an open leg keeps (issue 16): the
upstream leg opens on a plain 101 without Autobahn's second parse; Autobahn's
UTF-8 validator and write queue made only when used, and a leg's
dictionary without the attributes that still hold their class defaults
(L{wsrelay.ws._autobahn}).
"""

from __future__ import annotations

import sys
from collections import deque

import autobahn.websocket.protocol
from autobahn.twisted.websocket import (
    WebSocketAdapterProtocol,
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.utf8validator import Utf8Validator
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase
from txaio.testutil import replace_loop

from tests.support import TIMEOUT, inThread
from tests.support.memory import Network, relayConfig
from tests.support.passthrough import openedPassthrough
from wsrelay.ws import upstream
from wsrelay.ws._autobahn import (
    DEFAULTS,
    NO_QUEUE,
    LazyUtf8Validator,
    LegShims,
    classDefaults,
    compact,
)
from wsrelay.ws.frontend import FrontendProtocol
from wsrelay.ws.legs import RelayLeg
from wsrelay.ws.plainleg import PlainUpstream
from wsrelay.ws.upstream import UpstreamProtocol

#: Valid UTF-8 cut inside a sequence, then invalid UTF-8.
_SAMPLES = [b"h\xc3", b"\xa9llo \xe2\x9c", b"\x93", b"\xff", b"ok"]


class LazyUtf8ValidatorTests(SynchronousTestCase):
    """
    L{LazyUtf8Validator} is Autobahn's validator, made when first used.
    """

    def test_installed(self) -> None:
        """
        Autobahn's protocols make a L{LazyUtf8Validator} for each connection.
        """
        self.assertIs(
            autobahn.websocket.protocol.Utf8Validator,  # type: ignore[attr-defined]
            LazyUtf8Validator,
        )

    def test_unmadeUntilUsed(self) -> None:
        """
        A new one holds no validator; once reset, its methods are the real
        validator's.
        """
        lazy = LazyUtf8Validator()
        self.assertEqual(vars(lazy), {})
        lazy.reset()
        self.assertIsInstance(lazy.validate.__self__, Utf8Validator)
        self.assertIs(lazy.reset.__self__, lazy.validate.__self__)

    def test_validatesAsAutobahn(self) -> None:
        """
        It gives the answers Autobahn's validator gives, over pieces of a
        message, whether its first call is C{reset} or C{validate}.
        """
        for first in ("reset", "validate"):
            lazy, real = LazyUtf8Validator(), Utf8Validator()
            if first == "reset":
                lazy.reset()
                real.reset()
            self.assertEqual(
                [tuple(lazy.validate(s)) for s in _SAMPLES],
                [tuple(real.validate(s)) for s in _SAMPLES],
            )


class DefaultsTests(SynchronousTestCase):
    """
    The class defaults L{compact} relies on are Autobahn's initial values,
    on attributes Autobahn itself has no class attribute for.
    """

    def test_notAutobahns(self) -> None:
        """
        No Autobahn protocol class defines any of L{DEFAULTS}: the class
        defaults on L{LegShims} hide nothing of Autobahn's.
        """
        classes = (
            WebSocketProtocol,
            WebSocketServerProtocol,
            WebSocketClientProtocol,
            WebSocketAdapterProtocol,
        )
        clashes = [
            f"{cls.__name__}.{name}"
            for cls in classes
            for name in DEFAULTS
            if hasattr(cls, name)
        ]
        self.assertEqual(clashes, [])
        for name, value in DEFAULTS.items():
            self.assertIs(getattr(LegShims, name), value)

    def test_autobahnsInitialValues(self) -> None:
        """
        Autobahn's protocols, server and client, start a connection with
        the values L{DEFAULTS} gives (for the attributes they set then;
        importing L{RelayLeg} installed the adjustments).
        """
        loop = replace_loop(Clock())
        loop.__enter__()
        self.addCleanup(loop.__exit__, None, None, None)
        server = WebSocketServerFactory()
        server.protocol = WebSocketServerProtocol
        client = WebSocketClientFactory(url="ws://example.com/")
        client.protocol = WebSocketClientProtocol
        for factory in (server, client):
            # The relay's legs have no opening handshake timer of Autobahn's.
            factory.setProtocolOptions(openHandshakeTimeout=0)
            protocol = factory.buildProtocol(None)
            protocol.makeConnection(StringTransport())
            # (The handshake's texts are set to None when a leg opens.)
            seen = {
                n: vars(protocol)[n]
                for n in DEFAULTS
                if n in vars(protocol) and n not in RelayLeg._HANDSHAKE_ONLY
            }
            self.assertGreater(len(seen), 20)
            self.assertEqual(
                {n: v for n, v in seen.items() if v is not DEFAULTS[n]}, {}
            )


class CompactTests(SynchronousTestCase):
    """
    L{compact} and the legs' write queue.
    """

    def test_compact(self) -> None:
        """
        L{compact} drops the attributes whose value is their class default
        and keeps the others; every attribute reads as before, and the
        dictionary is smaller.
        """

        class Thing:
            a = None
            b = False
            c = 0
            d = "x"

        thing = Thing()
        for i in range(40):
            setattr(thing, f"extra{i}", None)
        thing.a, thing.b, thing.c, thing.d = None, True, 0, "x"
        before = {name: getattr(thing, name) for name in vars(thing)}
        size = sys.getsizeof(vars(thing))
        compact(thing)
        self.assertEqual(
            sorted(vars(thing)), ["b", "d", *sorted(f"extra{i}" for i in range(40))]
        )
        self.assertEqual({name: getattr(thing, name) for name in before}, before)
        self.assertLess(sys.getsizeof(vars(thing)), size)

    def test_openLegs(self) -> None:
        """
        Once the client has its 101, neither leg's dictionary holds an
        attribute of L{DEFAULTS} at its default, nor Autobahn's write
        queue, nor the client's request its fields by name; messages still
        pass both ways.
        """
        network = Network(self, relayConfig())
        client, backend, _, session = network.openSession()
        for leg in (session.frontend, session.upstream):
            kept = [
                name
                for name, value in vars(leg).items()
                if name in DEFAULTS and value is DEFAULTS[name]
            ]
            self.assertEqual(kept, [])
            self.assertIs(leg.send_queue, NO_QUEUE)
            self.assertLessEqual(sys.getsizeof(vars(leg)), 832)
        # The request stays for a failover's next upstream, without the
        # fields by name that handling it made (Head.fields).
        head = session.frontend.head
        self.assertIsNotNone(head)
        self.assertNotIn("fields", vars(head))
        client.sendMessage(b"up")
        backend.sendMessage(b"down")
        network.flush()
        self.assertEqual(backend.messages, [(b"up", False)])
        self.assertEqual(client.messages, [(b"down", False)])

    def test_optionsOnClass(self) -> None:
        """
        Autobahn copies no option into a leg (the class of each leg has
        none to copy): each reads as its factory's, or is the leg's own
        method.
        """
        network = Network(self, relayConfig())
        _, _, _, session = network.openSession()
        for leg, base in (
            (session.frontend, FrontendProtocol),
            (session.upstream, UpstreamProtocol),
        ):
            self.assertEqual(type(leg).CONFIG_ATTRS, ())
            self.assertGreater(len(base.CONFIG_ATTRS), 20)
            for name in base.CONFIG_ATTRS:
                self.assertNotIn(name, vars(leg))
                if name not in vars(base) and not hasattr(RelayLeg, name):
                    self.assertEqual(
                        getattr(leg, name), getattr(leg.factory, name), name
                    )

    def test_observers(self) -> None:
        """
        Legs share one tuple of Autobahn's observable events and hold no
        results until an observer listens; then C{fire} reaches it, as
        Autobahn's own would.
        """
        network = Network(self, relayConfig())
        _, _, _, session = network.openSession()
        f, up = session.frontend, session.upstream
        self.assertIs(f._valid_events, up._valid_events)
        self.assertEqual(f._valid_events, ("message",))
        self.assertNotIn("_results", vars(f))
        heard: list[object] = []
        f.on("message", lambda payload, is_binary: heard.append(payload))
        self.successResultOf(f.fire("message", b"x", is_binary=False))
        self.assertEqual(heard, [b"x"])
        self.assertIn("message", f._results)
        self.assertRaises(RuntimeError, f.on, "nonsense", print)

    def test_synchronousWrite(self) -> None:
        """
        A synchronous write, which needs Autobahn's queue, makes one and
        reaches the peer in order with what follows it.
        """
        network = Network(self, relayConfig())
        client, backend, _, session = network.openSession()
        frontend = session.frontend
        frontend.sendMessage(b"one", sync=True)
        self.assertIsInstance(frontend.send_queue, deque)
        frontend.sendMessage(b"two")
        network.advance(1)
        self.assertEqual(client.messages, [(b"one", False), (b"two", False)])


class HeldPassthroughTests(TestCase):
    """
    What a held passthrough connection keeps, over real sockets.
    """

    async def test_held(self) -> None:
        """
        Once the pipe carries a connection, the client's leg no longer
        holds the request's head, neither leg's dictionary holds an
        attribute at its class default (but the few set after), and it is
        sized for less than 43 entries; Autobahn's write queue and UTF-8
        validator were never made; messages still pass both ways.
        """
        relay, session, c = await openedPassthrough(self)
        self.assertIsNotNone(session.pipe)
        self.assertIsNone(session.frontend.head)
        for leg in (session.frontend, session.upstream):
            # (Autobahn's keepalive timers and the head are set again after
            # the leg was compacted.)
            defaults = classDefaults(type(leg))
            self.assertLessEqual(
                {n for n, v in vars(leg).items() if defaults.get(n, self) is v},
                {"head", "autoPingPendingCall", "autoPingTimeoutCall"},
            )
            self.assertLessEqual(sys.getsizeof(vars(leg)), 832)
        f = session.frontend
        self.assertIs(f.send_queue, NO_QUEUE)
        self.assertEqual(vars(f.utf8validator), {})
        # The upstream is a plain leg: nothing of Autobahn's at all.
        self.assertIsInstance(session.upstream, PlainUpstream)
        self.assertLessEqual(len(vars(session.upstream)), 11)
        await inThread(c.send, "again")
        self.assertEqual(await inThread(c.recv, TIMEOUT), "again")
        await inThread(c.close)


class _CountingProtocol:
    """
    Stands for Autobahn's client protocol in L{wsrelay.ws.upstream}:
    counts the handshakes handed to Autobahn, and hands them on.
    """

    def __init__(self) -> None:
        self.calls = 0

    def processHandshake(self, protocol: object) -> object:
        self.calls += 1
        return WebSocketClientProtocol.processHandshake(protocol)

    def __getattr__(self, name: str) -> object:
        return getattr(WebSocketClientProtocol, name)


class PlainOpenTests(SynchronousTestCase):
    """
    L{UpstreamProtocol} opens on a plain 101 itself, and leaves the rest to
    Autobahn.
    """

    def test_plain(self) -> None:
        """
        A backend's plain 101 opens the upstream without Autobahn's
        C{processHandshake}; the leg is open as Autobahn would leave it,
        and messages pass both ways.
        """
        counting = _CountingProtocol()
        self.patch(upstream, "WebSocketClientProtocol", counting)
        network = Network(self, relayConfig())
        client, backend, _, session = network.openSession()
        up = session.upstream
        assert up is not None
        self.assertEqual(counting.calls, 0)
        self.assertEqual(
            (up.websocket_version, up.websocket_protocol_in_use, up.data),
            (up.version, None, b""),
        )
        self.assertEqual(up.websocket_extensions_in_use, [])
        self.assertTrue(up.is_open.called)
        client.sendMessage(b"up")
        backend.sendMessage(b"down")
        network.flush()
        self.assertEqual(backend.messages, [(b"up", False)])
        self.assertEqual(client.messages, [(b"down", False)])

    def test_otherToAutobahn(self) -> None:
        """
        A 101 that is not plain (here its C{Sec-WebSocket-Accept} is not
        right for the key) goes to Autobahn, which fails it: the client is
        answered 502.
        """
        counting = _CountingProtocol()
        self.patch(upstream, "WebSocketClientProtocol", counting)
        network = Network(self, relayConfig())
        client = network.connectClient()
        network.flush()
        _, pump = network.acceptUpstream()
        # (The leg is the transport's protocol: no endpoint wraps it.)
        leg = pump.client
        self.assertIsInstance(leg, UpstreamProtocol)
        leg.websocket_key = b"c29tZSBvdGhlciBrZXkgISE="
        network.flush()
        self.assertEqual(counting.calls, 1)
        self.assertFalse(client.opened)
        self.assertIn(b" 502 ", b"".join(client.raw))
