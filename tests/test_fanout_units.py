"""
Fan-out pieces in memory: framing, channel keys and the reconnect backoff.
"""

from __future__ import annotations

import struct

from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from wsrelay.config import parseConfig
from wsrelay.fanout import BINARY, IDLE, TEXT, WAITING, Channel, channelKey, frame
from wsrelay.service import RelayService


def relayFor(extra: str) -> tuple[RelayService, Clock]:
    """
    A relay with one fan-out route on a memory reactor and a clock.
    """
    config = parseConfig(
        "[relay]\nlisten = tcp:0\n[route:feed]\npath = /feed\nmode = fanout\n"
        "backends = ws://127.0.0.1:1/src\n" + extra,
        "t.ini",
    )
    clock = Clock()
    return RelayService(config, MemoryReactorClock(), clock), clock


class FrameTests(SynchronousTestCase):
    """
    L{frame} writes what RFC 6455 says a server sends.
    """

    def test_lengths(self) -> None:
        """
        Payloads under 126 bytes have a one-byte length, up to 65535 a
        16-bit one, beyond a 64-bit one; the FIN bit is set, no mask.
        """
        self.assertEqual(frame(TEXT, b"hi"), b"\x81\x02hi")
        self.assertEqual(frame(BINARY, b""), b"\x82\x00")
        self.assertEqual(frame(TEXT, b"x" * 125)[:2], b"\x81\x7d")
        self.assertEqual(frame(TEXT, b"x" * 126)[:4], b"\x81\x7e\x00\x7e")
        self.assertEqual(frame(TEXT, b"x" * 65535)[:4], b"\x81\x7e\xff\xff")
        big = frame(BINARY, b"x" * 65536)
        self.assertEqual(big[:2], b"\x82\x7f")
        self.assertEqual(struct.unpack("!Q", big[2:10])[0], 65536)
        self.assertEqual(len(big), 10 + 65536)


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

    def test_request(self) -> None:
        """
        A path channel's upstream asks for the backend's path with the
        channel's path and query appended.
        """
        relay, _ = relayFor("channel = path\n")
        route = relay.routes.routes[0]
        channel = Channel(
            route, "/AAPL?x=1", relay.connector, relay.registry, relay.clock
        )
        self.assertEqual(channel._request(route.backends[0]), ("/src/AAPL?x=1", []))


class BackoffTests(SynchronousTestCase):
    """
    A channel whose source cannot be reached waits longer after each
    failure, with jitter, up to C{backoff_cap}.
    """

    def test_delays(self) -> None:
        """
        The n-th wait lies between half and all of C{base * 2**n}, capped.
        """
        relay, clock = relayFor("backoff_base = 1\nbackoff_cap = 8\n")
        channel = Channel(
            relay.routes.routes[0], "", relay.connector, relay.registry, relay.clock
        )
        channel.random.seed(7)
        delays = []
        for _ in range(6):
            channel._retry()
            self.assertEqual(channel.state, WAITING)
            [call] = clock.getDelayedCalls()
            delays.append(call.getTime() - clock.seconds())
            call.cancel()
        for n, delay in enumerate(delays):
            ceiling = min(8, 2**n)
            self.assertTrue(ceiling / 2 <= delay <= ceiling, (n, delay))
        self.assertGreater(len(set(delays)), 1)

    def test_stopCancels(self) -> None:
        """
        Stopping a waiting channel cancels its next attempt.
        """
        relay, clock = relayFor("")
        channel = Channel(
            relay.routes.routes[0], "", relay.connector, relay.registry, relay.clock
        )
        channel._retry()
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
