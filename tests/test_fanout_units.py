"""
Fan-out pieces in memory: the source's data path, channel keys and the
reconnect backoff.
"""

from __future__ import annotations

import base64
import hashlib
import random
import re
from dataclasses import replace
from typing import Any, cast

from twisted.application.internet import ClientService
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import IProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from txaio.testutil import replace_loop

from tests.support.relays import relayFor
from wsrelay.fanout import IDLE, UP, WAITING, Channel, channelKey
from wsrelay.fanout.source import SourceReader, WebSocketSource, sourceBackoff
from wsrelay.service import RelayService
from wsrelay.ws.framing import BINARY, TEXT, frame
from wsrelay.ws.legs import RelayLeg
from wsrelay.ws.screening import Refused


def acceptSource(reactor: MemoryReactorClock) -> tuple[IProtocol, StringTransport]:
    """
    Answer the last connection the relay opened on C{reactor} as a source
    does: a 101 with the accept key of the relay's request.

    @return: What the connection's transport delivers bytes to, and the
        transport.
    """
    factory = reactor.tcpClients[-1][2]
    wire = factory.buildProtocol(None)
    transport = StringTransport()
    wire.makeConnection(transport)
    found = re.search(rb"Sec-WebSocket-Key: (\S+)", transport.value())
    assert found is not None
    accept = base64.b64encode(
        hashlib.sha1(found.group(1) + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
    )
    transport.clear()
    wire.dataReceived(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )
    return wire, transport


def openSource(
    testCase: SynchronousTestCase, extra: str
) -> tuple[RelayService, Clock, IProtocol, Channel]:
    """
    Start a relay with one eager fan-out route (L{relayFor}) whose source
    accepts at once (L{acceptSource}); every timer, Autobahn's too, on the
    relay's clock.

    @return: The relay, its clock, what the source connection's transport
        delivers bytes to, and the channel.
    """
    relay, clock = relayFor(extra)
    loop = replace_loop(clock)
    loop.__enter__()
    testCase.addCleanup(loop.__exit__, None, None, None)
    relay.startService()
    testCase.addCleanup(relay.stopService)
    wire, _ = acceptSource(cast(MemoryReactorClock, relay._reactor))
    return relay, clock, wire, relay.channels[("feed", "")]


class Member:
    """
    Stands for a L{wsrelay.fanout.FanoutSession}: keeps what it is sent
    (by L{send}: it has no C{descriptor}).
    """

    descriptor = None
    tcp = None

    def __init__(self) -> None:
        self.writes: list[tuple[bytes, int]] = []

    def send(self, data: bytes, count: int = 1) -> None:
        """
        Keep one write of C{count} messages.
        """
        self.writes.append((data, count))


class SourceReaderTests(SynchronousTestCase):
    """
    The source leg's data path is the channel's L{SourceReader}.
    """

    def test_dataPath(self) -> None:
        """
        Once the source is connected, its leg's C{dataPath} is a
        L{SourceReader} called by the leg's own C{dataReceived} (no method
        of the live leg is replaced); the messages of one read, fragmented
        or not, reach each member framed once, in one write, at the end of
        the reactor turn.
        """
        relay, clock, wire, channel = openSource(self, "")
        self.assertEqual(channel.state, UP)
        source = cast(WebSocketSource, channel.source)
        up = source.upstream
        assert up is not None
        self.assertIsInstance(up.dataPath, SourceReader)
        self.assertNotIn("dataReceived", vars(up))
        self.assertEqual(type(up).dataReceived, RelayLeg.dataReceived)
        members = [Member(), Member()]
        for m in members:
            channel.members[m] = None  # type: ignore[index]
        wire.dataReceived(
            b"\x81\x02hi" + b"\x02\x01a" + b"\x00\x01b" + b"\x80\x01c" + b"\x82\x00"
        )
        expected = frame(TEXT, b"hi") + frame(BINARY, b"abc") + frame(BINARY, b"")
        self.assertEqual(members[0].writes, [])
        cast(MemoryReactorClock, relay._reactor).advance(0)
        for m in members:
            self.assertEqual(m.writes, [(expected, 3)])
        self.assertEqual((channel.messagesIn, channel.deliveries), (3, 6))
        self.assertIs(up.target, up.dataPath)
        self.assertIsNone(cast(SourceReader, up.dataPath).batch)


class LoadListenerErrorTests(SynchronousTestCase):
    """
    A balancer whose C{connectionOpened} raises cannot unwire a source.
    """

    def test_sourceStays(self) -> None:
        """
        The error is logged; the source stays connected and the channel
        up, and no second source is opened.
        """

        class Raising:
            def connectionOpened(self, backend: object) -> None:
                raise RuntimeError("plugin bug")

            def connectionClosed(self, backend: object) -> None:
                pass

        relay, clock = relayFor("")
        loop = replace_loop(clock)
        loop.__enter__()
        self.addCleanup(loop.__exit__, None, None, None)
        object.__setattr__(relay.routes.routes[0], "loadListener", Raising())
        relay.startService()
        self.addCleanup(relay.stopService)
        reactor = cast(MemoryReactorClock, relay._reactor)
        acceptSource(reactor)
        channel = relay.channels[("feed", "")]
        self.assertEqual(channel.state, UP)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        clock.advance(60)
        self.assertEqual(len(reactor.tcpClients), 1)
        self.assertEqual(channel.state, UP)


class RecordingListener:
    """
    A balancer's load listener that records what it is told.

    @ivar calls: C{("opened" or "closed", backend)}, in order.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def connectionOpened(self, backend: object) -> None:
        """
        Record an opening.
        """
        self.calls.append(("opened", backend))

    def connectionClosed(self, backend: object) -> None:
        """
        Record a closing.
        """
        self.calls.append(("closed", backend))


class LoadListenerReloadTests(SynchronousTestCase):
    """
    A source's connection is closed on the load listener it was opened on,
    whatever balancer a reload put in force meanwhile.
    """

    def test_closedOnOpener(self) -> None:
        """
        The route's listener changes between the source's opening and its
        closing: the first gets both, the second neither.
        """
        relay, clock = relayFor("")
        loop = replace_loop(clock)
        loop.__enter__()
        self.addCleanup(loop.__exit__, None, None, None)
        first, second = RecordingListener(), RecordingListener()
        route = relay.routes.routes[0]
        object.__setattr__(route, "loadListener", first)
        relay.startService()
        self.addCleanup(relay.stopService)
        acceptSource(cast(MemoryReactorClock, relay._reactor))
        channel = relay.channels[("feed", "")]
        source = cast(WebSocketSource, channel.source)
        backend = source.backend
        self.assertIsNotNone(backend)
        object.__setattr__(route, "loadListener", second)
        source.stopWith(1000, b"bye")
        self.assertEqual(first.calls, [("opened", backend), ("closed", backend)])
        self.assertEqual(second.calls, [])


class ReconnectTests(SynchronousTestCase):
    """
    How long a channel takes from losing its source to its next attempt,
    and between failed attempts, on an injected clock.
    """

    def attempts(self, channel: Channel, clock: Clock) -> list[float]:
        """
        @return: The times (on C{clock}) at which C{channel} asks for a
            source from now on.
        """
        times: list[float] = []
        upstreams = cast(WebSocketSource, channel.source).upstreams
        original = upstreams.openUpstream

        def recording(*args: Any) -> Any:
            times.append(clock.seconds())
            return original(*args)

        upstreams.openUpstream = recording  # type: ignore[method-assign]
        self.addCleanup(delattr, upstreams, "openUpstream")
        return times

    def test_lossToReconnect(self) -> None:
        """
        A source lost (its connection dropped) is asked for again after
        between half and all of C{backoff_base}; attempts that fail in a
        row wait between half and all of C{backoff_base * 2**n}, capped at
        C{backoff_cap}; a connected source starts the count again.
        """
        relay, clock, wire, channel = openSource(
            self, "backoff_base = 1\nbackoff_cap = 4\nhealth = none\nfall = 100\n"
        )
        reactor = cast(MemoryReactorClock, relay._reactor)
        times = self.attempts(channel, clock)

        def nextAttempt() -> None:
            count = len(times)
            for _ in range(1000):
                if len(times) > count:
                    return
                clock.advance(0.01)
            self.fail("no attempt within 10 s")

        lostAt = clock.seconds()
        wire.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(channel.state, WAITING)
        for _ in range(5):
            nextAttempt()
            # Refuse the attempt.
            reactor.tcpClients[-1][2].clientConnectionFailed(
                None, Failure(ConnectionRefusedError())
            )
            self.assertEqual(channel.state, WAITING)
        nextAttempt()
        wire, _ = acceptSource(reactor)
        self.assertEqual(channel.state, UP)
        gaps = [b - a for a, b in zip([lostAt, *times], times, strict=False)]
        ceilings = [1, 2, 4, 4, 4, 4]
        self.assertEqual(len(gaps), len(ceilings))
        for gap, ceiling in zip(gaps, ceilings, strict=True):
            self.assertTrue(ceiling / 2 <= gap <= ceiling + 0.01, (gaps, ceilings))
        # Connected again: the next loss waits at most backoff_base.
        lostAt = clock.seconds()
        wire.connectionLost(Failure(ConnectionDone()))
        nextAttempt()
        self.assertTrue(0.5 <= times[-1] - lostAt <= 1.01, times[-1] - lostAt)


class _Credentials:
    """
    An authorizer's stand-in that reads credentials from C{parameters}.
    """

    def __init__(self, parameters: tuple[str, ...]) -> None:
        self.credentialParameters = parameters


class ChannelKeyTests(SynchronousTestCase):
    """
    Which channel a client joins.
    """

    def test_keys(self) -> None:
        """
        With C{channel = route} every client shares one channel; with
        C{channel = path} the path remainder and query name it.
        """
        relay, _ = relayFor("")
        route = relay.routes.routes[0]
        self.assertEqual(channelKey(route, "/AAPL", "x=1"), "")
        relay, _ = relayFor("channel = path\n")
        route = relay.routes.routes[0]
        self.assertEqual(channelKey(route, "/AAPL", ""), "/AAPL")
        self.assertEqual(channelKey(route, "/AAPL", "x=1"), "/AAPL?x=1")

    def test_keyWithoutCredentials(self) -> None:
        """
        With C{channel = path}, the query parameters the route's authorizer
        reads credentials from (its C{credentialParameters}, however their
        names are encoded) and the resume parameter name no channel: the
        other parameters do, in the order sent.
        """
        relay, _ = relayFor("channel = path\nresume = envelope\n")
        route = replace(
            relay.routes.routes[0],
            authorizer=cast(Any, _Credentials(("access_token", "key"))),
        )
        self.assertEqual(
            channelKey(route, "/AAPL", "access_token=T1&x=1&since=5&key=K&y=2"),
            "/AAPL?x=1&y=2",
        )
        for query, key in (
            ("access%5Ftoken=T2&x=1", "/AAPL?x=1"),
            ("access_token=T3", "/AAPL"),
            ("access_tokens=T4", "/AAPL?access_tokens=T4"),
        ):
            self.assertEqual(channelKey(route, "/AAPL", query), key)
        route = replace(route, authorizer=cast(Any, object()))
        self.assertEqual(
            channelKey(route, "/AAPL", "access_token=T1&since=5"),
            "/AAPL?access_token=T1",
        )

    def test_request(self) -> None:
        """
        A path channel's upstream asks for the backend's path with the
        channel's path and query appended.
        """
        relay, _ = relayFor("channel = path\n")
        route = relay.routes.routes[0]
        channel = Channel(
            route, "/AAPL?x=1", relay.registry, relay.clock, relay.sessionFactory.source
        )
        source = cast(WebSocketSource, channel.source)
        self.assertEqual(source.request(route.backends[0]), ("/src/AAPL?x=1", []))


class BackoffTests(SynchronousTestCase):
    """
    A channel whose source cannot be reached waits longer after each
    failure, with jitter, up to C{backoff_cap}.
    """

    def test_delays(self) -> None:
        """
        The n-th wait in a row lies between half and all of
        C{base * 2**(n - 1)}, capped.
        """
        policy = sourceBackoff(lambda: (1, 8), random.Random(7))
        delays = [policy(n) for n in range(1, 7)]
        for n, delay in enumerate(delays):
            ceiling = min(8, 2**n)
            self.assertTrue(ceiling / 2 <= delay <= ceiling, (n, delay))
        self.assertGreater(len(set(delays)), 1)

    def test_stopCancels(self) -> None:
        """
        Stopping a channel waiting after a refused attempt cancels its next
        attempt.
        """
        relay, clock = relayFor("health = none\n")
        relay.startService()
        self.addCleanup(relay.stopService)
        channel = relay.channels[("feed", "")]
        reactor = cast(MemoryReactorClock, relay._reactor)
        reactor.tcpClients[-1][2].clientConnectionFailed(
            None, Failure(ConnectionRefusedError())
        )
        self.assertEqual(channel.state, WAITING)
        # Twisted's ClientService waits and connects again.
        source = cast(WebSocketSource, channel.source)
        self.assertIsInstance(source._service, ClientService)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        self.successResultOf(channel.stop())
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_idleUntilJoined(self) -> None:
        """
        A lazy channel stays idle (no connect) until a client joins.
        """
        relay, clock = relayFor("connect = lazy\n")
        channel = relay.sessionFactory.channel(relay.routes.routes[0], "")
        relay.startService()
        self.addCleanup(relay.stopService)
        self.assertEqual(channel.state, IDLE)
        self.assertEqual(relay._reactor.tcpClients, [])


class BuildErrorTests(SynchronousTestCase):
    """
    A source that cannot be made for a new channel refuses that client.
    """

    def test_refused(self) -> None:
        """
        When the source plugin rejects a client's new channel, the client
        is refused (503) and one line is logged; no channel is kept.
        """
        relay, _ = relayFor("channel = path\n")
        route = relay.routes.routes[0]
        sessions = relay.sessionFactory

        def failing(channel: Channel) -> Any:
            raise ValueError("redis_password_file: cannot read /pw:\ngone")

        self.patch(sessions, "source", failing)
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        kept: list[Refused] = []
        frontend = cast(
            Any,
            type(
                "Frontend",
                (),
                {
                    "remainder": "/a",
                    "query": "",
                    "keepRefusal": staticmethod(kept.append),
                },
            ),
        )
        failure = self.failureResultOf(sessions.openSession(frontend, route), Refused)
        self.assertEqual(cast(Refused, failure.value).code, 503)
        # The client's leg was given it, to answer with its body.
        self.assertEqual(kept, [failure.value])
        self.assertNotIn(("feed", "/a"), relay.registry.channels)
        errors = [
            formatEvent(e) for e in events if e.get("log_level") == LogLevel.error
        ]
        self.assertEqual(len(errors), 1, errors)
        self.assertIn("redis_password_file", errors[0])
        self.assertNotIn("\n", errors[0])
