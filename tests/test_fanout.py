"""
Fan-out mode over real loopback sockets: a source and clients written with
C{websockets} (which wsrelay does not use: Autobahn is on its side only) on
both sides of the relay.

The source (L{Source}) sends numbered messages, C{"SEQ PATH"}, to every
connection it has when a test tells it to, and counts as lost the numbers
it sends while it has none; so what a client missed can be compared with
what the source sent while it was down.
"""

from __future__ import annotations

import threading
import time
from typing import Any, cast

from twisted.internet import task
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from tests.support import TIMEOUT, inThread, noDelay, startRelay
from tests.support.clients import closedPort
from tests.support.fanout import (
    Clients,
    FrameReader,
    Source,
    channelUp,
    feed,
    rawClient,
    seqs,
    sessionOf,
    sourceUp,
)
from tests.support.relays import buffered, paused
from tests.support.waiting import waitFor
from wsrelay.fanout import IDLE, UP, FanoutSession
from wsrelay.fanout import channel as fanout
from wsrelay.fanout.source import WebSocketSource
from wsrelay.service import RelayService
from wsrelay.ws.framing import TEXT
from wsrelay.ws.legclosing import OPEN


class BroadcastTests(TestCase):
    """
    One upstream, every message to every client, framed once.
    """

    async def test_hundredsOfClients(self) -> None:
        """
        300 clients of one channel each receive all 200 messages, in
        order, and the source had one connection for all of them.
        """
        source = Source(self)
        relay, port = await startRelay(self, feed(source))
        channel = await sourceUp(source, relay)
        clients = Clients(self, port)
        everyone = await inThread(clients.add, 300, "/ticker")
        await waitFor(lambda: len(channel.members) == 300)
        await inThread(source.send, 200)
        await waitFor(lambda: clients.received(everyone, 200), timeout=30)
        for i in everyone:
            self.assertEqual(seqs(clients.messages[i]), list(range(1, 201)))
        self.assertEqual(source.paths, ["/feed"])
        self.assertEqual(channel.connects, 1)
        self.assertEqual(channel.messagesIn, 200)
        self.assertEqual(channel.deliveries, 300 * 200)
        self.assertEqual(source.lost, [])

    async def test_framedOnce(self) -> None:
        """
        Each message is framed once however many clients receive it: 200
        messages to two clients and 200 more to 200 clients take the same
        framing work (calls of L{fanout.frame}), while the deliveries grow
        with the clients; on the wire, a client gets exactly those frames,
        one unmasked final frame per message.
        """
        calls = []
        original = fanout.frame

        def counting(opcode: int, payload: bytes) -> bytes:
            calls.append(opcode)
            return original(opcode, payload)

        self.patch(fanout, "frame", counting)
        source = Source(self)
        relay, port = await startRelay(self, feed(source))
        channel = await sourceUp(source, relay)
        clients = Clients(self, port)
        one = await inThread(clients.add, 1, "/ticker")
        raw = await inThread(rawClient, port, "/ticker")
        await waitFor(lambda: len(channel.members) == 2)
        await inThread(source.send, 200)
        await waitFor(lambda: clients.received(one, 200))
        self.assertEqual((len(calls), channel.deliveries), (200, 400))
        expected = b"".join(
            original(TEXT, str(m).encode()) for m in clients.messages[one[0]]
        )

        def readWire() -> bytes:
            got = b""
            while len(got) < len(expected):
                chunk = raw.recv(1 << 16)
                if not chunk:
                    break
                got += chunk
            return got

        self.assertEqual(await inThread(readWire), expected)
        raw.close()
        await waitFor(lambda: len(channel.members) == 1)

        more = await inThread(clients.add, 199, "/ticker")
        await waitFor(lambda: len(channel.members) == 200)
        await inThread(source.send, 200)
        everyone = one + more
        await waitFor(lambda: clients.received(more, 200), timeout=30)
        await waitFor(lambda: clients.received(one, 400))
        self.assertEqual(len(calls), 400)
        self.assertEqual(channel.deliveries, 400 + 200 * 200)
        self.assertEqual(seqs(clients.messages[one[0]]), list(range(1, 401)))
        for i in more:
            self.assertEqual(seqs(clients.messages[i]), list(range(201, 401)))
        self.assertEqual(len(everyone), 200)

    async def test_openLegs(self) -> None:
        """
        The clients' sockets and the source's have TCP_NODELAY: each
        message (one write per client per reactor turn) goes out at once,
        not after the previous segment's delayed ACK.  And once open, they
        no longer hold their opening handshake's texts.
        """
        source = Source(self)
        relay, port = await startRelay(self, feed(source))
        channel = await sourceUp(source, relay)
        s = await inThread(rawClient, port, "/ticker")
        self.addCleanup(s.close)
        await waitFor(lambda: len(channel.members) == 1)
        session = sessionOf(relay, s)
        up = cast(WebSocketSource, channel.source).upstream
        assert up is not None
        for leg in (session.frontend, up):
            self.assertEqual(noDelay(leg.transport), 1, leg)
            self.assertIsNone(leg.http_request_data, leg)
            self.assertIsNone(leg.http_headers, leg)


class SourceFailureTests(TestCase):
    """
    A source that fails is reconnected while its clients stay; they lose
    what it sent while down and nothing else.
    """

    async def test_killedAndRestarted(self) -> None:
        """
        The source is cut mid-stream (no close frame) and started again
        later: no client is closed, the channel reconnects, each client's
        numbers are strictly increasing, and what each missed is exactly
        what the source sent while it was down.
        """
        source = Source(self)
        relay, port = await startRelay(self, feed(source))
        channel = await sourceUp(source, relay)
        clients = Clients(self, port)
        everyone = await inThread(clients.add, 20, "/ticker")
        await waitFor(lambda: len(channel.members) == 20)
        await inThread(source.send, 100)
        await inThread(source.kill)
        await waitFor(lambda: channel.state != UP)
        await inThread(source.send, 50)
        self.assertEqual(source.lost, list(range(101, 151)))
        source.start()
        await sourceUp(source, relay)
        await inThread(source.send, 100)
        await waitFor(lambda: clients.received(everyone, 200))

        expected = [n for n in range(1, 251) if n not in source.lost]
        for i in everyone:
            got = seqs(clients.messages[i])
            self.assertEqual(got, sorted(set(got)))
            self.assertEqual(got, expected)
        self.assertEqual(clients.closes, [None] * 20)
        self.assertEqual(len(source.paths), 2)
        self.assertEqual(channel.connects, 2)
        self.assertEqual(len(channel.members), 20)

    async def test_goingAwayAndLateJoiners(self) -> None:
        """
        The source closing with 1001 (its shutdown) is a failure like any
        other: the relay answers the close, the clients are not closed and
        the channel reconnects once the source is back.  Clients that join
        while it is down get their 101 at once and the messages sent once
        it is back.
        """
        source = Source(self)
        relay, port = await startRelay(self, feed(source))
        channel = await sourceUp(source, relay)
        clients = Clients(self, port)
        early = await inThread(clients.add, 5, "/ticker")
        await waitFor(lambda: len(channel.members) == 5)
        await inThread(source.send, 10)
        await waitFor(lambda: clients.received(early, 10))
        await inThread(source.goAway)
        await waitFor(lambda: channel.state != UP)
        self.assertEqual(source.closes, [(1001, "")])

        late = await inThread(clients.add, 5, "/ticker")
        await waitFor(lambda: len(channel.members) == 10)
        await inThread(source.send, 5)
        source.start()
        await sourceUp(source, relay)
        await inThread(source.send, 10)
        await waitFor(lambda: clients.received(early, 20))
        await waitFor(lambda: clients.received(late, 10))

        for i in early:
            self.assertEqual(seqs(clients.messages[i]), [*range(1, 11), *range(16, 26)])
        for i in late:
            self.assertEqual(seqs(clients.messages[i]), list(range(16, 26)))
        self.assertEqual(source.lost, list(range(11, 16)))
        self.assertEqual(clients.closes, [None] * 10)
        self.assertEqual(channel.connects, 2)


class FailoverTests(TestCase):
    """
    A channel uses another backend of its route when one fails.
    """

    async def test_deadFirstBackend(self) -> None:
        """
        With the first backend unreachable, the channel connects to the
        second and its clients get the messages.
        """
        source = Source(self)
        dead = closedPort()
        relay, port = await startRelay(
            self,
            "[relay]\n[route:ticker]\npath = /ticker\nmode = fanout\n"
            "balancer = first\n"
            f"backends = ws://127.0.0.1:{dead}/feed {source.url()}\n",
        )
        channel = await sourceUp(source, relay)
        assert channel.backend is not None
        self.assertEqual(channel.backend.port, source.port)
        clients = Clients(self, port)
        one = await inThread(clients.add, 1, "/ticker")
        await waitFor(lambda: len(channel.members) == 1)
        await inThread(source.send, 5)
        await waitFor(lambda: clients.received(one, 5))
        self.assertEqual(seqs(clients.messages[one[0]]), [1, 2, 3, 4, 5])

    async def test_movesToHealthyBackend(self) -> None:
        """
        When the source in use is killed, the channel moves to the other
        backend at once, and the clients go on receiving from it.
        """
        first = Source(self)
        second = Source(self, first=1001)
        relay, port = await startRelay(
            self,
            "[relay]\n[route:ticker]\npath = /ticker\nmode = fanout\n"
            "balancer = first\nbackoff_base = 0.05\nbackoff_cap = 0.2\n"
            f"backends = {first.url()} {second.url()}\n",
        )
        channel = await sourceUp(first, relay)
        clients = Clients(self, port)
        some = await inThread(clients.add, 3, "/ticker")
        await waitFor(lambda: len(channel.members) == 3)
        await inThread(first.send, 10)
        await inThread(first.kill)
        await second.until(lambda: len(second.open) == 1)
        await channelUp(relay)
        assert channel.backend is not None
        self.assertEqual(channel.backend.port, second.port)
        await inThread(second.send, 10)
        await waitFor(lambda: clients.received(some, 20))
        for i in some:
            self.assertEqual(
                seqs(clients.messages[i]), [*range(1, 11), *range(1001, 1011)]
            )
        self.assertEqual(clients.closes, [None] * 3)


class SlowClientTests(TestCase):
    """
    A client that stops reading neither delays the others nor grows the
    relay's memory beyond C{max_client_buffer}: the route's policy applies
    to it alone.
    """

    COUNT = 3000
    SIZE = 4096
    #: The source sends this many at a time, once the clients that read
    #: have the previous batch: less than L{LIMIT} in all, so that they
    #: never have more than that queued, however slow this machine.
    BATCH = 50
    LIMIT = 262144

    async def flood(
        self, relay: RelayService, source: Source, clients: Clients, fast: list[int]
    ) -> tuple[int, bool]:
        """
        Have C{source} send L{COUNT} messages of L{SIZE} bytes, a batch at
        a time as soon as the C{fast} clients have the previous one, while
        sampling on the reactor the largest queue of any session and
        whether the relay ever stopped reading from the source.

        @return: The largest queue seen, and whether the source was paused.
        """
        channel = relay.channels[("ticker", "")]
        peak = 0
        sourcePaused = False

        def sample() -> None:
            nonlocal peak, sourcePaused
            for session in relay.sessions:
                assert isinstance(session, FanoutSession)
                peak = max(peak, session.queued)
            up = cast(WebSocketSource, channel.source).upstream
            if up is not None and up.transport is not None and paused(up.transport):
                sourcePaused = True

        sampler = task.LoopingCall(sample)
        sampler.start(0.001)
        try:
            for sent in range(self.BATCH, self.COUNT + 1, self.BATCH):
                await inThread(source.send, self.BATCH, self.SIZE)
                await waitFor(lambda n=sent: clients.received(fast, n))
        finally:
            sampler.stop()
        return peak, sourcePaused

    async def slowOne(self, route: str, relayKeys: str = "") -> tuple[Any, ...]:
        """
        Three reading clients and one raw client that reads nothing on a
        channel with C{route} keys, while the source floods; the readers
        must get every message in order and the slow one's queue stay
        within C{max_client_buffer}.

        @return: The relay, the channel, the readers, the slow socket, its
            session, the peak of its queue, and whether the source was ever
            paused.
        """
        source = Source(self)
        relay, port = await startRelay(self, feed(source, route, relay=relayKeys))
        channel = await sourceUp(source, relay)
        clients = Clients(self, port)
        fast = await inThread(clients.add, 3, "/ticker")
        slow = await inThread(rawClient, port, "/ticker", 4096)
        self.addCleanup(slow.close)
        await waitFor(lambda: len(channel.members) == 4)
        session = sessionOf(relay, slow)
        peak, sourcePaused = await self.flood(relay, source, clients, fast)
        for i in fast:
            self.assertEqual(seqs(clients.messages[i]), list(range(1, self.COUNT + 1)))
        self.assertLessEqual(peak, self.LIMIT)
        return relay, channel, clients, slow, session, peak, sourcePaused

    async def test_dropPolicy(self) -> None:
        """
        With C{slow_client = drop}, a client that reads nothing while the
        source floods has messages skipped (counted) once its queue is
        full, the queue never exceeds C{max_client_buffer}, the relay never
        stops reading from the source, and the other clients receive every
        message in order.  When the slow client reads at last, it gets
        whole messages, in order, with gaps where messages were skipped.
        """
        relay, channel, clients, slow, session, peak, sourcePaused = await self.slowOne(
            f"max_client_buffer = {self.LIMIT}\n"
        )
        self.assertGreater(peak, 0)
        self.assertFalse(sourcePaused)
        self.assertGreater(channel.slowDrops, 0)
        self.assertEqual(session.dropped, channel.slowDrops)
        self.assertEqual(channel.slowCloses, 0)
        self.assertIn(session, relay.sessions)

        reader = FrameReader(slow)
        want = self.COUNT - session.dropped
        await inThread(reader.readUntil, lambda: len(reader.frames) >= want)
        self.assertEqual(len(reader.frames), want)
        self.assertEqual({opcode for opcode, _ in reader.frames}, {1})
        got = [int(payload.split(b" ", 1)[0]) for _, payload in reader.frames]
        self.assertEqual(got, sorted(set(got)))
        self.assertEqual(got[0], 1)
        self.assertTrue(all(len(payload) == self.SIZE for _, payload in reader.frames))

    async def test_closePolicy(self) -> None:
        """
        With C{slow_client = close}, a client that reads nothing is closed
        once its queue is full (and dropped when it does not answer the
        close in C{close_timeout}), while the other clients receive every
        message in order and stay connected.
        """
        relay, channel, clients, slow, session, peak, sourcePaused = await self.slowOne(
            f"max_client_buffer = {self.LIMIT}\nslow_client = close\n",
            "close_timeout = 0.5\n",
        )
        self.assertFalse(sourcePaused)
        self.assertEqual(channel.slowCloses, 1)
        self.assertEqual(channel.slowDrops, 0)
        await waitFor(lambda: session not in relay.sessions)
        self.assertNotIn(session, channel.members)
        self.assertEqual(len(channel.members), 3)
        self.assertEqual(clients.closes, [None] * 3)


class ReplayTests(TestCase):
    """
    A client joining late gets the last C{replay} messages, then the live
    stream, with nothing lost or repeated in between.
    """

    async def test_replayThenLive(self) -> None:
        """
        With C{replay = 3}, a client joining after 10 messages gets 8, 9
        and 10 at once, then 11 onwards; a client joining while the source
        sends gets an unbroken run of numbers from its replay to the last.
        """
        source = Source(self)
        relay, port = await startRelay(self, feed(source, "replay = 3\n"))
        channel = await sourceUp(source, relay)
        await inThread(source.send, 10)
        await waitFor(lambda: channel.messagesIn == 10)
        clients = Clients(self, port)
        first = await inThread(clients.add, 1, "/ticker")
        await waitFor(lambda: clients.received(first, 3))
        self.assertEqual(seqs(clients.messages[first[0]]), [8, 9, 10])
        await inThread(source.send, 10)
        await waitFor(lambda: clients.received(first, 13))
        self.assertEqual(seqs(clients.messages[first[0]]), list(range(8, 21)))

        sending = inThread(source.send, 1000)
        second = await inThread(clients.add, 1, "/ticker")
        await sending
        await waitFor(lambda: clients.received(first, 1013))
        await waitFor(
            lambda: seqs(clients.messages[second[0]])[-1:] == [1020], timeout=20
        )
        got = seqs(clients.messages[second[0]])
        self.assertGreaterEqual(len(got), 3)
        self.assertEqual(got, list(range(got[0], 1021)))
        self.assertEqual(seqs(clients.messages[first[0]]), list(range(8, 1021)))


class PathChannelTests(TestCase):
    """
    With C{channel = path}, each distinct path and query under the prefix
    is a channel with its own upstream, opened with its first client and
    closed C{linger} seconds after its last.
    """

    async def test_channelPerPath(self) -> None:
        """
        Clients of C{/ticker/AAPL} share one upstream to
        C{/feed/AAPL}; C{/ticker/MSFT} and C{/ticker/AAPL?depth=1} have
        their own; messages of one channel reach none of the others.  When
        the last client of C{/ticker/AAPL} leaves, its upstream stays for
        C{linger} seconds (on the relay's clock), then closes, while the
        other channels go on.
        """
        clock = Clock()
        source = Source(self)
        relay, port = await startRelay(
            self, feed(source, "channel = path\nlinger = 5\n"), clock=clock
        )
        self.assertEqual(relay.channels, {})
        clients = Clients(self, port)
        aapl = await inThread(clients.add, 2, "/ticker/AAPL")
        msft = await inThread(clients.add, 1, "/ticker/MSFT")
        depth = await inThread(clients.add, 1, "/ticker/AAPL?depth=1")
        channels = {key: await channelUp(relay, key) for key in ("/AAPL", "/MSFT")}
        await channelUp(relay, "/AAPL?depth=1")
        await source.until(lambda: len(source.open) == 3)
        self.assertEqual(
            sorted(source.paths), ["/feed/AAPL", "/feed/AAPL?depth=1", "/feed/MSFT"]
        )
        self.assertEqual(len(channels["/AAPL"].members), 2)

        await inThread(source.send, 5)
        await waitFor(lambda: clients.received(aapl + msft + depth, 5))
        for indexes, path in (
            (aapl, "/feed/AAPL"),
            (msft, "/feed/MSFT"),
            (depth, "/feed/AAPL?depth=1"),
        ):
            for i in indexes:
                self.assertEqual(
                    clients.messages[i], [f"{n} {path} " for n in range(1, 6)]
                )

        for i in aapl:
            await inThread(clients.close, i)
        aaplChannel = channels["/AAPL"]
        await waitFor(lambda: not aaplChannel.members)
        clock.advance(4.9)
        self.assertEqual(aaplChannel.state, UP)
        self.assertEqual(len(source.connectionsTo("/feed/AAPL")), 1)
        clock.advance(0.2)
        await source.until(lambda: not source.connectionsTo("/feed/AAPL"))
        self.assertEqual(source.closes, [(1000, "no clients")])
        self.assertNotIn(("ticker", "/AAPL"), relay.channels)
        self.assertEqual(channels["/MSFT"].state, UP)
        self.assertEqual(len(source.open), 2)

        await inThread(source.send, 1)
        await waitFor(lambda: clients.received(msft + depth, 6))
        self.assertEqual(seqs(clients.messages[msft[0]]), [1, 2, 3, 4, 5, 6])


class SourceProtocolTests(TestCase):
    """
    What the relay sends the source: subscribe lines, and client messages
    when the route forwards them.
    """

    async def test_subscribeOnEveryConnect(self) -> None:
        """
        The C{subscribe} lines are the first messages of every upstream
        connection, the first and the one after the source came back,
        before any client message.
        """
        lines = ['{"op": "subscribe", "channel": "a"}', '{"op": "subscribe", "b": 1}']
        source = Source(self)
        relay, port = await startRelay(
            self,
            feed(
                source,
                "client_messages = forward\nsubscribe =\n"
                + "".join(f"    {line}\n" for line in lines),
            ),
        )
        channel = await sourceUp(source, relay)
        await source.until(lambda: len(source.received) == 1)
        clients = Clients(self, port)
        (one,) = await inThread(clients.add, 1, "/ticker")
        await inThread(clients.send, one, "c1")
        await source.until(lambda: len(source.received[0]) == 3)
        self.assertEqual(source.received[0], [*lines, "c1"])

        await inThread(source.kill)
        await waitFor(lambda: channel.state != UP)
        await inThread(clients.send, one, "c2")
        await waitFor(lambda: channel.clientDrops == 1)
        source.start()
        await channelUp(relay)
        await inThread(clients.send, one, "c3")
        await source.until(lambda: len(source.received) == 2)
        await source.until(lambda: len(source.received[1]) == 3)
        self.assertEqual(source.received[1], [*lines, "c3"])
        self.assertEqual(source.received[0], [*lines, "c1"])

    async def test_clientMessages(self) -> None:
        """
        With C{client_messages = forward}, what clients send (text and
        binary) reaches the shared upstream; with C{drop} (the default) it
        does not, and the channel counts it.
        """
        source = Source(self)
        relay, port = await startRelay(
            self,
            "[relay]\n"
            "[route:fwd]\npath = /fwd\nmode = fanout\nclient_messages = forward\n"
            f"backends = {source.url('/feed/fwd')}\n"
            "[route:drop]\npath = /drop\nmode = fanout\n"
            f"backends = {source.url('/feed/drop')}\n",
        )
        await waitFor(
            lambda: (
                all(c.state == UP for c in relay.channels.values())
                and len(source.open) == 2
            )
        )
        forwarding = relay.channels[("fwd", "")]
        dropping = relay.channels[("drop", "")]
        clients = Clients(self, port)
        (a,) = await inThread(clients.add, 1, "/drop")
        (b,) = await inThread(clients.add, 1, "/fwd")
        await inThread(clients.send, a, "dropped")
        await waitFor(lambda: dropping.clientDrops == 1)
        await inThread(clients.send, b, "forwarded")
        await inThread(clients.send, b, b"\x00\x01")
        (fwd,) = source.connectionsTo("/feed/fwd")
        (drop,) = source.connectionsTo("/feed/drop")
        await source.until(lambda: len(source.received[fwd]) == 2)
        self.assertEqual(source.received[fwd], ["forwarded", b"\x00\x01"])
        self.assertEqual(source.received[drop], [])
        self.assertEqual(forwarding.clientDrops, 0)


class LazyTests(TestCase):
    """
    With C{connect = lazy}, the upstream opens at the first client and
    closes C{linger} seconds (on the relay's clock) after the last left.
    """

    async def test_lazyConnectAndLinger(self) -> None:
        """
        No upstream before the first client; one at the first client; a
        client coming back within C{linger} finds the same upstream; the
        upstream closes C{linger} seconds after the last client left, and
        the next client opens a new one.
        """
        clock = Clock()
        source = Source(self)
        relay, port = await startRelay(
            self, feed(source, "connect = lazy\nlinger = 5\n"), clock=clock
        )
        channel = relay.channels[("ticker", "")]
        self.assertEqual((channel.state, channel.connects), (IDLE, 0))

        clients = Clients(self, port)
        (a,) = await inThread(clients.add, 1, "/ticker")
        await sourceUp(source, relay)
        await inThread(clients.close, a)
        await waitFor(lambda: not channel.members)
        clock.advance(4.9)
        self.assertEqual(channel.state, UP)

        (b,) = await inThread(clients.add, 1, "/ticker")
        await waitFor(lambda: len(channel.members) == 1)
        clock.advance(10)
        self.assertEqual(channel.state, UP)
        await inThread(source.send, 3)
        await waitFor(lambda: clients.received([b], 3))
        self.assertEqual(seqs(clients.messages[b]), [1, 2, 3])
        self.assertEqual((len(source.paths), channel.connects), (1, 1))

        await inThread(clients.close, b)
        await waitFor(lambda: not channel.members)
        clock.advance(4.9)
        self.assertEqual(channel.state, UP)
        clock.advance(0.1)
        await source.until(lambda: not source.open)
        self.assertEqual(channel.state, IDLE)
        self.assertEqual(source.closes, [(1000, "no clients")])

        (c,) = await inThread(clients.add, 1, "/ticker")
        await sourceUp(source, relay)
        self.assertEqual((len(source.paths), channel.connects), (2, 2))
        await inThread(source.send, 1)
        await waitFor(lambda: clients.received([c], 1))
        self.assertEqual(seqs(clients.messages[c]), [4])


class ClosingTests(TestCase):
    """
    Closing fan-out clients, one or all, while the source streams.
    """

    async def closeWhileBuffered(self, data: bytes) -> list[tuple[int, bytes]]:
        """
        Have a raw client send C{data} while the relay's transport to it
        holds unsent messages (but not enough to queue), then have the
        source send more, and read what the client receives until the
        relay closes the connection; the client must have left its
        channel.

        @return: The frames the client received.
        """
        source = Source(self)
        relay, port = await startRelay(self, feed(source))
        channel = await sourceUp(source, relay)
        raw = await inThread(rawClient, port, "/ticker", 4096)
        self.addCleanup(raw.close)
        await waitFor(lambda: len(channel.members) == 1)
        session = sessionOf(relay, raw)
        frontend = session.frontend
        # Fill the kernel's buffers, so that the relay's transport holds
        # what it writes next, but not so much that it pauses the session.
        deadline = time.monotonic() + TIMEOUT
        while buffered(frontend.transport) < 32768:
            self.assertLess(time.monotonic(), deadline, "the client's buffers grow")
            await inThread(source.send, 8, 1024)
            await waitFor(lambda: channel.messagesIn == source.next - 1)
        self.assertEqual(session.queued, 0)
        await inThread(raw.sendall, data)
        await waitFor(lambda: frontend.state != OPEN)
        await inThread(source.send, 5, 1024)
        await waitFor(lambda: channel.messagesIn == source.next - 1)
        reader = FrameReader(raw)
        await inThread(reader.readUntil, lambda: False)
        await waitFor(lambda: session not in relay.sessions)
        self.assertEqual(channel.members, {})
        self.assertGreater(len(reader.frames), 1)
        return reader.frames

    async def test_clientCloses(self) -> None:
        """
        A client that closes gets the relay's close reply as the last
        frame: messages the source sends after the close are not written
        after it, even while the reply still waits in the transport's
        buffer; the client leaves the channel.
        """
        # A masked close frame, 1000, with a zero mask.
        frames = await self.closeWhileBuffered(b"\x88\x82\x00\x00\x00\x00\x03\xe8")
        opcodes = [opcode for opcode, _ in frames]
        self.assertEqual(opcodes[-1], 8, opcodes[-5:])
        self.assertEqual(opcodes.count(8), 1)
        self.assertEqual(frames[-1][1], (1000).to_bytes(2, "big"))

    async def test_clientFails(self) -> None:
        """
        A client that breaks the protocol (invalid UTF-8 in a text
        message) is closed with 1007, and that close frame is the last
        frame it gets.
        """
        # A masked text frame, zero mask, that is not UTF-8.
        frames = await self.closeWhileBuffered(b"\x81\x82\x00\x00\x00\x00\xc3\x28")
        opcodes = [opcode for opcode, _ in frames]
        self.assertEqual(opcodes[-1], 8, opcodes[-5:])
        self.assertEqual(opcodes.count(8), 1)
        self.assertEqual(frames[-1][1][:2], (1007).to_bytes(2, "big"))

    async def test_relayStops(self) -> None:
        """
        While the source streams, stopping the relay closes every client
        with 1001 and the source connection with 1001 too; no data frame
        follows the close frame a client receives.
        """
        source = Source(self)
        relay, port = await startRelay(self, feed(source, relay="close_timeout = 1\n"))
        channel = await sourceUp(source, relay)
        clients = Clients(self, port)
        some = await inThread(clients.add, 3, "/ticker")
        raw = await inThread(rawClient, port, "/ticker")
        self.addCleanup(raw.close)
        reader = FrameReader(raw)
        reading = inThread(reader.readUntil, lambda: False)
        await waitFor(lambda: len(channel.members) == 4)
        stop = threading.Event()
        streaming = inThread(source.stream, stop)
        await waitFor(lambda: clients.received(some, 100))

        await relay.stopService()
        stop.set()
        await streaming
        await reading
        await waitFor(lambda: None not in clients.closes)
        # The source's thread records the close it got once its end of the
        # connection is over, which may be after the relay's.
        await source.until(lambda: not source.open)

        self.assertEqual(clients.closes, [(1001, "relay shutting down")] * 3)
        self.assertEqual(source.closes, [(1001, "relay shutting down")])
        self.assertEqual(source.open, {})
        self.assertEqual(relay.sessions, set())
        opcodes = [opcode for opcode, _ in reader.frames]
        self.assertEqual(opcodes[-1], 8, opcodes[-5:])
        self.assertEqual(opcodes.count(8), 1)
        self.assertEqual(reader.frames[-1][1][:2], (1001).to_bytes(2, "big"))
