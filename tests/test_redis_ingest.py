"""
Tests for L{wsrelay.redis.ingest}: only the lease's holder connects to the
backends (a websocket source driven by hand here), writes each batch to the
stream in order and trimmed to the history, and stops at once when the
lease is no longer its own; nothing is written by a relay without it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests.support.redis import RedisServer, makeClient, startRedis
from tests.support.waiting import waitFor
from wsrelay.config import ConfigError
from wsrelay.interfaces import ISource, ISourceChannel, ISourceContext
from wsrelay.redis.ingest import Ingest
from wsrelay.redis.source import RedisSource
from wsrelay.routes import readConfig
from wsrelay.service import RelayService

#: The stream of the tests.
STREAM = "wsrelay:feed"


@implementer(ISource)
class HandSource:
    """
    The route's websocket source, driven by the test: it delivers what the
    test says to the channel it was made for.

    @ivar channel: Where it delivers.
    @ivar running: Whether it is started.
    @ivar starts: Times it was started.
    @ivar sent: What clients sent it.
    """

    def __init__(self, channel: ISourceChannel) -> None:
        self.channel = channel
        self.running = False
        self.starts = 0
        self.sent: list[tuple[int, bytes]] = []

    def start(self) -> None:
        """
        Start: the channel hears C{up}.
        """
        self.running = True
        self.starts += 1
        self.channel.stateChanged("up")

    def stop(self) -> Deferred[None]:
        """
        Stop: the channel hears C{idle}.
        """
        self.running = False
        self.channel.stateChanged("idle")
        return succeed(None)

    def send(self, opcode: int, payload: bytes) -> bool:
        """
        @return: Whether taken (only while started).
        """
        if not self.running:
            return False
        self.sent.append((opcode, payload))
        return True

    def deliver(self, messages: Sequence[tuple[int, bytes, str | None]]) -> None:
        """
        Deliver C{messages} as a real source would: only while started.
        """
        if self.running:
            self.channel.deliver(messages)


@implementer(ISourceContext)
class HandContext:
    """
    A source context whose websocket sources are L{HandSource}s.

    @ivar sources: Those made, in order.
    """

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.route = "feed"
        self.sources: list[HandSource] = []

    def websocket(self, channel: ISourceChannel) -> ISource:
        """
        @return: A new L{HandSource} delivering to C{channel}.
        """
        source = HandSource(channel)
        self.sources.append(source)
        return source


@implementer(ISourceChannel)
class Named:
    """
    The channel of the C{redis} source: only its name and key are used.
    """

    name = "feed"
    key = ""

    def deliver(self, messages: Sequence[tuple[int, bytes, str | None]]) -> None:
        """
        Never called: the ingest's messages go through the stream.
        """
        raise AssertionError("the ingest delivers through the stream only")

    def stateChanged(self, state: str) -> None:
        """
        Not watched.
        """


def makeIngest(
    testCase: TestCase,
    server: RedisServer,
    clock: Clock,
    history: int = 1000,
    lease: float = 30.0,
) -> tuple[Ingest, HandContext]:
    """
    A started L{Ingest} on L{STREAM}, its lease timed by C{clock}, stopped
    at the end of C{testCase}.
    """
    context = HandContext(clock)
    client = makeClient(testCase, server.url)
    ingest = Ingest(Named(), context, client, STREAM, history, lease)
    ingest.start()
    testCase.addCleanup(ingest.stop)
    return ingest, context


async def holding(ingest: Ingest, context: HandContext) -> HandSource:
    """
    @return: The ingest's websocket source, once the ingest holds the
        lease and started it.
    """
    await waitFor(lambda: ingest.lease.held and context.sources[0].running)
    return context.sources[0]


def entries(server: RedisServer) -> list[tuple[bytes, bytes]]:
    """
    @return: Each entry's C{data} and C{type} in the stream, in order.
    """
    out = []
    for _, fields in server.call("XRANGE", STREAM, "-", "+"):
        values = dict(zip(fields[::2], fields[1::2], strict=True))
        out.append((values[b"data"], values[b"type"]))
    return out


class IngestTests(TestCase):
    """
    L{Ingest} against a real C{redis-server}.
    """

    async def test_channel(self) -> None:
        """
        The ingest is the channel its websocket source delivers to, with
        the C{redis} source's channel's name and key.
        """
        server = await startRedis(self)
        ingest, context = makeIngest(self, server, Clock())
        source = await holding(ingest, context)
        self.assertTrue(verifyObject(ISourceChannel, ingest))
        self.assertIs(source.channel, ingest)
        self.assertEqual((ingest.name, ingest.key), ("feed", ""))

    async def test_writes(self) -> None:
        """
        Each message delivered becomes one entry, in order, with its bytes
        in C{data} and C{text} or C{binary} in C{type}.
        """
        server = await startRedis(self)
        ingest, context = makeIngest(self, server, Clock())
        source = await holding(ingest, context)
        source.deliver([(1, b'{"seq": 1}', None), (2, b"\x00\xff", None)])
        source.deliver([(1, "é".encode(), None)])
        await waitFor(lambda: ingest.written == 3)
        self.assertEqual(
            entries(server),
            [
                (b'{"seq": 1}', b"text"),
                (b"\x00\xff", b"binary"),
                ("é".encode(), b"text"),
            ],
        )
        self.assertEqual(ingest.dropped, 0)

    async def test_inOrder(self) -> None:
        """
        Many batches in a row, pipelined, land in the order delivered.
        """
        server = await startRedis(self)
        ingest, context = makeIngest(self, server, Clock())
        source = await holding(ingest, context)
        for i in range(300):
            source.deliver([(1, b"%d" % i, None)])
        await waitFor(lambda: ingest.written == 300)
        self.assertEqual(
            [d for d, _ in entries(server)], [b"%d" % i for i in range(300)]
        )

    async def test_trimmed(self) -> None:
        """
        The stream is kept near C{history} entries (C{MAXLEN ~}).
        """
        server = await startRedis(self)
        ingest, context = makeIngest(self, server, Clock(), history=10)
        source = await holding(ingest, context)
        for i in range(1000):
            source.deliver([(1, b"%d" % i, None)])
        await waitFor(lambda: ingest.written == 1000)
        self.assertLess(server.call("XLEN", STREAM), 200)

    async def test_oneHolder(self) -> None:
        """
        Of two relays, only the holder connects to the backends.
        """
        server = await startRedis(self)
        clock = Clock()
        first, one = makeIngest(self, server, clock)
        await holding(first, one)
        second, two = makeIngest(self, server, clock)
        await waitFor(lambda: second.lease.refusals == 1)
        clock.advance(10)
        await waitFor(lambda: second.lease.refusals == 2)
        self.assertFalse(second.lease.held)
        self.assertEqual([s.starts for s in two.sources], [])
        self.assertFalse(second.send(1, b"hello"))

    async def test_takesOver(self) -> None:
        """
        When the holder stops, another relay takes the lease at its next
        attempt and connects to the backends.
        """
        server = await startRedis(self)
        clock = Clock()
        first, one = makeIngest(self, server, clock)
        old = await holding(first, one)
        second, two = makeIngest(self, server, clock)
        await waitFor(lambda: second.lease.refusals == 1)
        await first.stop()
        self.assertFalse(old.running)
        clock.advance(10)
        new = await holding(second, two)
        new.deliver([(1, b"from the second", None)])
        await waitFor(lambda: second.written == 1)
        self.assertEqual(entries(server), [(b"from the second", b"text")])

    async def test_fenced(self) -> None:
        """
        A holder whose lease was taken in Redis meanwhile (it stalled past
        its lease) writes nothing: its batch is refused, it stops its
        websocket source at once and drops what it still delivers.
        """
        server = await startRedis(self)
        ingest, context = makeIngest(self, server, Clock())
        source = await holding(ingest, context)
        server.call("SET", f"{STREAM}:lease", "another")
        source.channel.deliver([(1, b"late", None)])
        await waitFor(lambda: not ingest.lease.held)
        self.assertFalse(source.running)
        ingest.deliver([(1, b"later", None)])
        self.assertEqual(server.call("XLEN", STREAM), 0)
        self.assertEqual(ingest.dropped, 2)
        self.assertEqual(ingest.lease.lost, 1)

    async def test_send(self) -> None:
        """
        A client's message goes to the websocket source while this relay
        holds the lease.
        """
        server = await startRedis(self)
        ingest, context = makeIngest(self, server, Clock())
        source = await holding(ingest, context)
        self.assertTrue(ingest.send(1, b"up"))
        self.assertEqual(source.sent, [(1, b"up")])

    async def test_reacquires(self) -> None:
        """
        After Redis restarts (empty), the holder stops its source, takes
        the lease again on the new connection and starts it again.
        """
        server = await startRedis(self)
        clock = Clock()
        ingest, context = makeIngest(self, server, clock)
        source = await holding(ingest, context)
        await server.restart()
        await waitFor(lambda: not source.running)
        await waitFor(lambda: _advanced(clock) and source.running)
        self.assertEqual(source.starts, 2)
        source.deliver([(1, b"again", None)])
        await waitFor(lambda: ingest.written == 1)
        self.assertEqual(entries(server), [(b"again", b"text")])

    async def test_stopStart(self) -> None:
        """
        Started again right after a stop (a channel's linger ends and a
        client joins): the new start waits for the stop to close its
        connection, then takes the lease on a new one and keeps it.
        """
        server = await startRedis(self)
        clock = Clock()
        ingest, context = makeIngest(self, server, clock)
        source = await holding(ingest, context)
        stopped = ingest.stop()
        ingest.start()
        await stopped
        await waitFor(lambda: _advanced(clock) and ingest.lease.held and source.running)
        source.deliver([(1, b"after", None)])
        await waitFor(lambda: ingest.written + ingest.dropped == 1)
        self.assertEqual(ingest.written, 1)
        self.assertEqual(ingest.lease.lost, 0)
        self.assertTrue(ingest.lease.held)
        self.assertEqual(source.starts, 2)

    async def test_stopWhileTaking(self) -> None:
        """
        A clean stop while the C{SET NX PX} is unanswered leaves no lease
        behind: its release goes out behind the C{SET} on the same
        connection, answered before that is closed.
        """
        server = await startRedis(self)
        client = makeClient(self, server.url)
        await client.connection()
        # Out of the client's state machine (which handed the connection
        # over) before asking it again.
        await deferLater(reactor, 0, lambda: None)
        ingest = Ingest(Named(), HandContext(Clock()), client, STREAM, 1000, 30.0)
        ingest.start()
        await ingest.stop()
        self.assertFalse(ingest.lease.held)
        self.assertIsNone(server.call("GET", STREAM + ":lease"))

    async def test_scriptFlushed(self) -> None:
        """
        After Redis's scripts are flushed, each batch answered C{NOSCRIPT}
        is sent again with the script's body: all are written, once each
        and in order, and the lease is kept.
        """
        server = await startRedis(self)
        ingest, context = makeIngest(self, server, Clock())
        source = await holding(ingest, context)
        source.deliver([(1, b"one", None)])
        await waitFor(lambda: ingest.written == 1)
        server.call("SCRIPT", "FLUSH")
        for i in range(4):
            source.deliver([(1, b"m%d" % i, None), (2, b"b%d" % i, None)])
        await waitFor(lambda: ingest.written + ingest.dropped == 9)
        self.assertEqual(ingest.dropped, 0)
        self.assertEqual(
            entries(server),
            [(b"one", b"text")]
            + [
                x
                for i in range(4)
                for x in ((b"m%d" % i, b"text"), (b"b%d" % i, b"binary"))
            ],
        )
        self.assertTrue(ingest.lease.held)

    async def test_badKey(self) -> None:
        """
        A stream key of another type: the batch is dropped and the error
        logged in one line; the ingest goes on.
        """
        server = await startRedis(self)
        ingest, context = makeIngest(self, server, Clock())
        source = await holding(ingest, context)
        server.call("SET", STREAM, "a string")
        source.deliver([(1, b"x", None)])
        await waitFor(lambda: ingest.dropped == 1)
        self.assertIn("WRONGTYPE", ingest.lastError or "")
        self.assertTrue(ingest.lease.held)
        self.assertTrue(source.running)


def _advanced(clock: Clock) -> bool:
    """
    Run what is due on C{clock} now (a retry at once), for a poll.

    @return: L{True}.
    """
    clock.advance(0)
    return True


@implementer(ISourceChannel)
class Recording:
    """
    A fan-out channel that records what its source delivers.

    @ivar delivered: The messages, in order.
    @ivar states: The source's states, in order.
    """

    name = "feed"
    key = ""
    keep = 0

    def __init__(self) -> None:
        self.delivered: list[tuple[int, bytes, str | None]] = []
        self.states: list[str] = []

    def preload(self, messages: Sequence[tuple[int, bytes, str | None]]) -> None:
        """
        Never called: it keeps nothing.
        """

    def deliver(self, messages: Sequence[tuple[int, bytes, str | None]]) -> None:
        """
        Record C{messages}.
        """
        self.delivered.extend(messages)

    def stateChanged(self, state: str) -> None:
        """
        Record C{state}.
        """
        self.states.append(state)


class HookTests(TestCase):
    """
    C{ingest = on} in L{RedisSource}: the lease and ingest beside the
    reader.
    """

    def options(self, server: RedisServer, **extra: str) -> dict[str, str]:
        """
        @return: A C{redis} source's options on L{STREAM}, ingest on.
        """
        return {"redis": server.url, "stream": STREAM, "ingest": "on", **extra}

    async def started(
        self, server: RedisServer
    ) -> tuple[RedisSource, Recording, HandContext]:
        """
        @return: A started C{redis} source with ingest on (stopped at the
            end of the test), once it reads and holds the lease.
        """
        channel = Recording()
        context = HandContext(reactor)
        source = RedisSource(channel, self.options(server), context)
        source.start()
        self.addCleanup(source.stop)
        await waitFor(
            lambda: (
                "up" in channel.states
                and bool(context.sources)
                and context.sources[0].running
            )
        )
        return source, channel, context

    async def test_throughTheStream(self) -> None:
        """
        What the holder's websocket source delivers reaches the channel
        through the stream, in order, with the entries' ids.
        """
        server = await startRedis(self)
        source, channel, context = await self.started(server)
        context.sources[0].deliver([(1, b"one", None), (2, b"\x02", None)])
        await waitFor(lambda: len(channel.delivered) == 2)
        self.assertEqual(
            [(o, p) for o, p, _ in channel.delivered], [(1, b"one"), (2, b"\x02")]
        )
        ids = [i for _, _, i in channel.delivered]
        stream = [e[0].decode() for e in server.call("XRANGE", STREAM, "-", "+")]
        self.assertEqual(ids, stream)

    async def test_send(self) -> None:
        """
        A client's message goes to the websocket source while this relay
        holds the lease; a relay that does not hold it takes none.
        """
        server = await startRedis(self)
        source, channel, context = await self.started(server)
        self.assertTrue(source.send(1, b"up"))
        self.assertEqual(context.sources[0].sent, [(1, b"up")])
        other = RedisSource(Recording(), self.options(server), HandContext(reactor))
        other.start()
        self.addCleanup(other.stop)
        self.assertFalse(other.send(1, b"up"))

    async def test_stopReleases(self) -> None:
        """
        Stopping the source stops its websocket source and releases the
        lease (the key is gone) before closing its connections.
        """
        server = await startRedis(self)
        source, channel, context = await self.started(server)
        self.assertIsNotNone(server.call("GET", f"{STREAM}:lease"))
        await source.stop()
        self.assertFalse(context.sources[0].running)
        self.assertIsNone(server.call("GET", f"{STREAM}:lease"))

    async def test_status(self) -> None:
        """
        With ingest on, the source's status tells whether this relay holds
        the lease and what the ingest wrote, and every key is in
        C{docs/admin.md} (each number as its metric).
        """
        server = await startRedis(self)
        source, channel, context = await self.started(server)
        context.sources[0].deliver([(1, b"one", None)])
        await waitFor(lambda: source.status()["ingest_written_total"] == 1)
        status = source.status()
        self.assertEqual((status["lease_held"], status["lease_acquired_total"]), (1, 1))
        self.assertEqual(status["ingest_upstream"], "up")
        other = RedisSource(Recording(), self.options(server), HandContext(reactor))
        self.assertEqual(other.status()["lease_held"], 0)
        docs = (Path(__file__).parent.parent / "docs" / "admin.md").read_text()
        for key, value in status.items():
            if isinstance(value, int | float):
                self.assertIn(f"| `wsrelay_source_{key}` |", docs)
            self.assertIn(f"`{key}`", docs)

    def test_noBackends(self) -> None:
        """
        C{ingest = on} on a route without C{backends} (as the context
        tells them) is refused in one line naming the key.
        """
        context = HandContext(reactor)
        context.backends = ()  # type: ignore[attr-defined]
        e = self.assertRaises(
            ValueError,
            RedisSource,
            Recording(),
            {"redis": "redis://127.0.0.1/0", "stream": "s", "ingest": "on"},
            context,
        )
        self.assertTrue(str(e).startswith("backends: "), str(e))
        self.assertNotIn("\n", str(e))

    def test_ingestOff(self) -> None:
        """
        Without C{ingest}, the source takes no client message.
        """
        source = RedisSource(
            Recording(),
            {"redis": "redis://127.0.0.1/0", "stream": "s"},
            HandContext(reactor),
        )
        self.assertFalse(source.send(1, b"up"))


class IngestConfigTests(SynchronousTestCase):
    """
    C{ingest = on} in a relay's configuration.
    """

    def relay(self, extra: str) -> RelayService:
        """
        @return: A relay (not started) with a C{redis} route and C{extra}.
        """
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(
                "[relay]\nlisten = tcp:0:interface=127.0.0.1\n"
                "[route:feed]\npath = /feed\nmode = fanout\nsource = redis\n"
                f"redis = redis://127.0.0.1:1/0\nstream = s\n{extra}"
            )
        self.path = path
        return RelayService(readConfig(path), reactor)

    def test_noBackends(self) -> None:
        """
        Without C{backends}, C{ingest = on} is a configuration error in one
        line naming the file, the route, and C{backends}.
        """
        with self.assertRaises(ConfigError) as caught:
            self.relay("ingest = on\n")
        self.assertEqual(
            str(caught.exception),
            f"{self.path}: [route:feed] source: redis: backends: missing:"
            " ingest = on feeds the stream from the route's backends",
        )

    def test_backends(self) -> None:
        """
        With C{backends}, or without C{ingest}, the route is accepted.
        """
        self.relay("ingest = on\nbackends = ws://127.0.0.1:1/\n")
        self.relay("ingest = off\n")
