"""
A fan-out channel writes what its source delivered once per reactor turn,
or once per C{write_delay} milliseconds (L{wsrelay.fanout.channel.Channel}'s
C{flush}): in memory, with the reactor's turns on a clock of their own, and
over real loopback sockets.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from tests.support import inThread, startRelay
from tests.support.fanout import Clients, Source, feed, seqs, sourceUp
from tests.support.waiting import waitFor
from wsrelay.config import parseConfig
from wsrelay.fanout import FanoutSession
from wsrelay.fanout.channel import Channel
from wsrelay.interfaces import ISource, ISourceHistory
from wsrelay.routing import Route
from wsrelay.service import RelayService
from wsrelay.ws.framing import TEXT, frame

Delivered = tuple[int, bytes, str | None]


def payloads(data: bytes) -> list[bytes]:
    """
    @return: The payloads of the unmasked frames, shorter than 126 bytes,
        in C{data}.
    """
    out = []
    while data:
        size = data[1] & 0x7F
        out.append(data[2 : 2 + size])
        data = data[2 + size :]
    return out


class Recorder:
    """
    Stands for a L{FanoutSession}: keeps each write.

    @ivar writes: Each write, as C{(data, count)}.
    @ivar descriptor: L{None}: the channel calls L{send}.
    """

    descriptor = None
    tcp = None

    def __init__(self) -> None:
        self.mark = 0
        self.writes: list[tuple[bytes, int]] = []

    def send(self, data: bytes, count: int = 1) -> None:
        """
        Keep one write of C{count} messages.
        """
        self.writes.append((data, count))

    def shutdown(self, code: int = 1001, reason: bytes = b"") -> None:
        """
        Nothing: the tests here close no member.
        """

    def got(self) -> list[bytes]:
        """
        @return: The payloads written, in order.
        """
        return payloads(b"".join(data for data, _ in self.writes))

    def ids(self) -> list[str]:
        """
        @return: The ids of the envelopes written, in order.
        """
        return [json.loads(p)["id"] for p in self.got()]


@implementer(ISource, ISourceHistory)
class HistorySource:
    """
    A source that starts and stops when told, with a history whose answers
    the test fires (L{calls}).
    """

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.calls: list[Deferred[Any]] = []

    def start(self) -> None:
        """
        Nothing to start: the test says when it is up.
        """

    def stop(self) -> Deferred[None]:
        """
        Nothing to stop.
        """
        return succeed(None)

    def send(self, opcode: int, payload: bytes) -> bool:
        """
        Take no client message.
        """
        return False

    def after(self, sourceId: str, limit: int) -> Deferred[Any]:
        """
        Keep the question; the test fires the answer.
        """
        d: Deferred[Any] = Deferred()
        self.calls.append(d)
        return d


def texts(*names: str) -> list[Delivered]:
    """
    @return: Text messages with these payloads, without ids.
    """
    return [(TEXT, name.encode(), None) for name in names]


def entries(first: int, last: int) -> list[Delivered]:
    """
    @return: Text messages C{"m N"} with stream ids C{1-N}.
    """
    return [(TEXT, f"m {n}".encode(), f"1-{n}") for n in range(first, last + 1)]


def route(extra: str = "") -> Route:
    """
    @return: The route of a relay with one fan-out route and C{extra} keys.
    """
    config = parseConfig(
        "[relay]\nlisten = tcp:0\n[route:feed]\npath = /feed\nmode = fanout\n"
        "backends = ws://127.0.0.1:1/src\n" + extra,
        "t.ini",
    )
    return RelayService(config, MemoryReactorClock(), Clock()).routes.routes[0]


class FlushTests(SynchronousTestCase):
    """
    When the members get what the source delivered: at the end of the
    reactor turn (C{write_delay = 0}), or C{write_delay} later; first when
    who gets what changes.
    """

    def channel(self, extra: str = "") -> Channel:
        """
        A channel of a route with C{extra} keys whose source is a
        L{HistorySource}; the reactor's turns are L{turns}, the channel's
        other timers L{clock}.
        """
        self.turns = Clock()
        self.clock = Clock()
        relay = RelayService(
            parseConfig(
                "[relay]\nlisten = tcp:0\n[route:feed]\npath = /feed\n"
                "mode = fanout\nbackends = ws://127.0.0.1:1/src\n" + extra,
                "t.ini",
            ),
            MemoryReactorClock(),
            self.clock,
        )
        self.route = relay.routes.routes[0]
        return Channel(
            self.route, "", relay.registry, self.clock, HistorySource, self.turns
        )

    def assertNoTimers(self) -> None:
        """
        No flush (nor any other call) is left on the reactor.
        """
        self.assertEqual(self.turns.getDelayedCalls(), [])

    def test_oneWritePerTurn(self) -> None:
        """
        The reads of one turn reach each member in one write when the turn
        ends, counted as deliveries then; the channel counts them in at
        once.
        """
        channel = self.channel()
        members = [Recorder(), Recorder()]
        for m in members:
            channel.join(m)
        channel.deliver(texts("a"))
        channel.deliver(texts("b", "c"))
        self.assertEqual((members[0].writes, channel.messagesIn), ([], 3))
        self.assertEqual(channel.deliveries, 0)
        self.turns.advance(0)
        expected = frame(TEXT, b"a") + frame(TEXT, b"b") + frame(TEXT, b"c")
        for m in members:
            self.assertEqual(m.writes, [(expected, 3)])
        self.assertEqual(channel.deliveries, 6)
        self.assertNoTimers()
        channel.deliver(texts("d"))
        self.turns.advance(0)
        self.assertEqual(members[1].got(), [b"a", b"b", b"c", b"d"])

    def test_writeDelay(self) -> None:
        """
        With C{write_delay = 500}, what the source delivers within 500 ms of
        the first message is written together, 500 ms after it.
        """
        channel = self.channel("write_delay = 500\n")
        member = Recorder()
        channel.join(member)
        channel.deliver(texts("a"))
        self.turns.advance(0.25)
        channel.deliver(texts("b"))
        self.turns.advance(0.125)
        self.assertEqual(member.writes, [])
        self.turns.advance(0.125)
        self.assertEqual([count for _, count in member.writes], [2])
        channel.deliver(texts("c"))
        self.turns.advance(0.25)
        self.assertEqual(len(member.writes), 1)
        self.turns.advance(0.25)
        self.assertEqual(member.got(), [b"a", b"b", b"c"])
        self.assertNoTimers()

    def test_noMembers(self) -> None:
        """
        With no member nothing is scheduled; the replay still keeps what
        came, and a client joining gets it once.
        """
        channel = self.channel("replay = 2\n")
        channel.deliver(texts("a", "b", "c"))
        self.assertNoTimers()
        member = Recorder()
        channel.join(member)
        self.turns.advance(0)
        self.assertEqual(member.got(), [b"b", b"c"])

    def test_joinBetween(self) -> None:
        """
        A client joining between a delivery and the end of the turn gets
        the replay, which holds what is pending, and nothing twice; the
        members get what is pending before it joins.
        """
        channel = self.channel("replay = 5\n")
        first = Recorder()
        channel.join(first)
        channel.deliver(texts("a", "b"))
        second = Recorder()
        channel.join(second)
        self.assertEqual(first.got(), [b"a", b"b"])
        self.assertEqual(second.got(), [b"a", b"b"])
        self.turns.advance(0)
        self.assertEqual(second.got(), [b"a", b"b"])
        channel.deliver(texts("c"))
        self.turns.advance(0)
        for m in (first, second):
            self.assertEqual(m.got(), [b"a", b"b", b"c"])
        self.assertEqual(channel.deliveries, 2 + 2 + 2)

    def test_resumeBetween(self) -> None:
        """
        With C{resume}, a client resuming between a delivery and the end of
        the turn gets what followed its id, pending messages included, once.
        """
        channel = self.channel("resume = envelope\n")
        first = Recorder()
        channel.join(first)
        channel.deliver(entries(1, 3))
        self.turns.advance(0)
        channel.deliver(entries(4, 5))
        second = Recorder()
        channel.join(second, "1-2")
        self.assertEqual(second.ids(), ["1-3", "1-4", "1-5"])
        channel.deliver(entries(6, 6))
        self.turns.advance(0)
        self.assertEqual(first.ids(), [f"1-{n}" for n in range(1, 7)])
        self.assertEqual(second.ids(), ["1-3", "1-4", "1-5", "1-6"])

    def test_leaveBetween(self) -> None:
        """
        A client that leaves (its connection is gone) is not written what
        is pending, nor counted as delivered it; the others get it at the
        end of the turn.
        """
        channel = self.channel()
        leaving, staying = Recorder(), Recorder()
        channel.join(leaving)
        channel.join(staying)
        channel.deliver(texts("a"))
        channel.leave(leaving)
        self.assertEqual((leaving.got(), staying.got()), ([], []))
        channel.deliver(texts("b"))
        self.turns.advance(0)
        self.assertEqual((leaving.got(), staying.got()), ([], [b"a", b"b"]))
        self.assertEqual(channel.deliveries, 2)
        self.assertNoTimers()

    def test_membersChangeDuringFlush(self) -> None:
        """
        Should members join or leave while the channel writes to them (it
        iterates its members without a copy), the write goes on to every
        member there was (not to one that joined: no replay here), and the
        change holds after it.
        """
        channel = self.channel()
        leaving, joining = Recorder(), Recorder()

        class Changing(Recorder):
            """
            A member whose first write makes another leave and another
            join.
            """

            def send(self, data: bytes, count: int = 1) -> None:
                """
                Keep the write, then change the members once.
                """
                super().send(data, count)
                if leaving in channel.members:
                    channel.leave(leaving)
                    channel.join(joining)

        first, last = Changing(), Recorder()
        for m in (first, leaving, last):
            channel.join(m)
        channel.deliver(texts("a"))
        self.turns.advance(0)
        self.assertEqual([m.got() for m in (first, leaving, last)], [[b"a"]] * 3)
        self.assertEqual(list(channel.members), [first, last, joining])
        channel.deliver(texts("b"))
        self.turns.advance(0)
        self.assertEqual(
            [m.got() for m in (first, leaving, last, joining)],
            [[b"a", b"b"], [b"a"], [b"a", b"b"], [b"b"]],
        )

    def test_stopWithPending(self) -> None:
        """
        A channel that stops writes what is pending, and leaves no flush
        behind.
        """
        channel = self.channel("write_delay = 1000\n")
        member = Recorder()
        channel.join(member)
        channel.deliver(texts("a"))
        self.successResultOf(channel.stop())
        self.assertEqual(member.got(), [b"a"])
        self.assertNoTimers()

    def test_retiredWithPending(self) -> None:
        """
        A retired channel whose last client leaves with messages pending
        ends (the client is gone: they are not written to it), and leaves
        no flush behind.
        """
        channel = self.channel("write_delay = 1000\n")
        member = Recorder()
        channel.join(member)
        channel.retire()
        channel.deliver(texts("a"))
        channel.leave(member)
        self.assertEqual(member.got(), [])
        self.assertTrue(channel.retired)
        self.assertNotIsInstance(channel.source, HistorySource)
        self.assertNoTimers()

    def test_reload(self) -> None:
        """
        A reload that changes C{write_delay} applies from the next flush:
        the one scheduled keeps its time.
        """
        channel = self.channel("write_delay = 50\n")
        member = Recorder()
        channel.join(member)
        channel.deliver(texts("a"))
        channel.route = route("write_delay = 0\n")
        self.turns.advance(0)
        self.assertEqual(member.writes, [])
        self.turns.advance(0.05)
        self.assertEqual(member.got(), [b"a"])
        channel.deliver(texts("b"))
        self.turns.advance(0)
        self.assertEqual(member.got(), [b"a", b"b"])
        channel.route = route("write_delay = 20\n")
        channel.deliver(texts("c"))
        self.turns.advance(0.019)
        self.assertEqual(len(member.writes), 2)
        self.turns.advance(0.001)
        self.assertEqual(member.got(), [b"a", b"b", b"c"])
        self.assertNoTimers()


class CatchUpTests(SynchronousTestCase):
    """
    Clients catching up from the source's history (their stand-ins among
    the members) while the channel holds messages for the turn.
    """

    def setUp(self) -> None:
        """
        A client C{live} on a channel that delivered C{1-1} to C{1-5}
        (window and replay of 2), and a client resuming after C{1-1}, its
        lookup pending.
        """
        self.turns = Clock()
        self.clock = Clock()
        relay = RelayService(
            parseConfig(
                "[relay]\nlisten = tcp:0\n[route:feed]\npath = /feed\n"
                "mode = fanout\nbackends = ws://127.0.0.1:1/src\n"
                "resume = envelope\nresume_window = 2\nreplay = 2\n",
                "t.ini",
            ),
            MemoryReactorClock(),
            self.clock,
        )
        self.channel = Channel(
            relay.routes.routes[0],
            "",
            relay.registry,
            self.clock,
            HistorySource,
            self.turns,
        )
        self.live = Recorder()
        self.channel.join(self.live)
        self.channel.stateChanged("up")
        self.deliver(entries(1, 5))
        self.turns.advance(0)
        self.resuming = Recorder()
        self.channel.join(self.resuming, "1-1")
        source = self.channel.source
        assert isinstance(source, HistorySource)
        self.calls = source.calls
        self.assertEqual(len(self.calls), 1)

    def deliver(self, messages: Sequence[Delivered]) -> None:
        """
        Deliver C{messages}, not flushed.
        """
        self.channel.deliver(messages)

    def test_mergedBetween(self) -> None:
        """
        The history answers between a delivery and the end of the turn:
        the resuming client gets the history and the messages held, the
        live one what is pending, each once.
        """
        self.deliver(entries(6, 7))
        self.calls[0].callback(entries(2, 7))
        self.turns.advance(0)
        self.clock.advance(0)
        self.deliver(entries(8, 8))
        self.turns.advance(0)
        every = [f"1-{n}" for n in range(1, 9)]
        self.assertEqual(self.live.ids(), every)
        self.assertEqual(self.resuming.ids(), every[1:])
        self.assertEqual(
            self.channel.deliveries, 5 + 2 + 6 + 2 * 1
        )  # live 1-7, resuming 2-7, both 8

    def test_missBetween(self) -> None:
        """
        The history no longer has the id, between a delivery and the end of
        the turn: the resuming client gets the replay, which holds what is
        pending, once.
        """
        self.deliver(entries(6, 7))
        self.calls[0].callback(None)
        self.turns.advance(0)
        self.assertEqual(self.resuming.ids(), ["1-6", "1-7"])
        self.assertEqual(self.live.ids(), [f"1-{n}" for n in range(1, 8)])

    def test_historyAhead(self) -> None:
        """
        The history is ahead of the live stream: the messages the window
        writes itself to the resuming client, and its move to the members
        before or after the end of the turn, give each client each message
        once.
        """
        for turnFirst in (True, False):
            self.setUp()
            self.calls[0].callback(entries(2, 9))
            self.deliver(entries(6, 10))
            if turnFirst:
                self.turns.advance(0)
            self.clock.advance(0)
            self.turns.advance(0)
            self.deliver(entries(11, 11))
            self.turns.advance(0)
            every = [f"1-{n}" for n in range(1, 12)]
            self.assertEqual(self.live.ids(), every, turnFirst)
            self.assertEqual(self.resuming.ids(), every[1:], turnFirst)


class CoalescedOverSocketsTests(TestCase):
    """
    Real clients of a relay: what a long C{write_delay} holds reaches them
    once, in order, when a client joins and when the relay stops.
    """

    async def test_joinAndStop(self) -> None:
        """
        With C{write_delay} far longer than the test, each client gets
        every message once, in order: a client joining makes the channel
        write what it holds (in one write per member, for five reads), the
        joining client gets it in its replay, and the relay stopping writes
        the rest before the close.
        """
        source = Source(self)
        relay, port = await startRelay(
            self, feed(source, "replay = 100\nwrite_delay = 600000\n")
        )
        channel = await sourceUp(source, relay)
        clients = Clients(self, port)
        first = await inThread(clients.add, 1, "/ticker")
        await waitFor(lambda: len(channel.members) == 1)
        (session,) = channel.members
        assert isinstance(session, FanoutSession)
        writes: list[bytes] = []
        write = session._write

        def counted(data: bytes) -> None:
            writes.append(data)
            write(data)

        session._write = counted
        # Every write through the session's own, to be counted.
        session.descriptor = None
        channel.members.changed()
        for n in range(1, 6):
            await inThread(source.send, 1)
            await waitFor(lambda n=n: channel.messagesIn == n)
        self.assertEqual(writes, [])
        second = await inThread(clients.add, 1, "/ticker")
        self.assertEqual(len(writes), 1)
        await waitFor(lambda: clients.received(first + second, 5))
        await inThread(source.send, 5)
        await waitFor(lambda: channel.messagesIn == 10)
        await relay.stopService()
        await waitFor(lambda: clients.closes[0] is not None)
        await waitFor(lambda: clients.closes[1] is not None)
        for index in first + second:
            self.assertEqual(seqs(clients.messages[index]), list(range(1, 11)))
            self.assertEqual(clients.closes[index], (1001, "relay shutting down"))
