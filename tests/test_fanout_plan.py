"""
How a fan-out channel plans its writes (L{wsrelay.fanout.direct}) and
writes to many sockets in one loop in C
(L{wsrelay.fanout.pending.sendAll}): over socket pairs, and over a
relay's real loopback clients whose sockets fill, that leave during a
write, or whose descriptor's number another socket took.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.support import inThread, startRelay
from tests.support.fanout import (
    FrameReader,
    Source,
    feed,
    rawClient,
    reuseDescriptor,
    sessionOf,
    sourceUp,
    unread,
)
from tests.support.waiting import waitFor
from wsrelay.fanout import FanoutSession
from wsrelay.fanout.channel import Channel
from wsrelay.fanout.direct import Members, Plan
from wsrelay.fanout.pending import sendAll
from wsrelay.ws.framing import frame


def socketPair(test: SynchronousTestCase) -> tuple[socket.socket, socket.socket]:
    """
    @return: A non-blocking pair of connected sockets, closed after the
        test, with small buffers (so that a few writes fill them).
    """
    ours, peer = socket.socketpair()
    for s in (ours, peer):
        s.setblocking(False)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        test.addCleanup(s.close)
    return ours, peer


class SendAllTests(SynchronousTestCase):
    """
    L{sendAll} sends one chunk on many sockets and says what each send
    took.
    """

    def test_all(self) -> None:
        """
        Each socket gets the whole chunk, and each send says so.
        """
        pairs = [socketPair(self) for _ in range(3)]
        results = sendAll([ours for ours, _ in pairs], b"chunk")
        self.assertEqual(results, [5, 5, 5])
        self.assertEqual([unread(peer) for _, peer in pairs], [b"chunk"] * 3)

    def test_failedGoesOn(self) -> None:
        """
        A send that fails (a full socket, a closed one) counts as having
        taken nothing, and the sends go on with the next sockets.
        """
        pairs = [socketPair(self) for _ in range(4)]
        full = pairs[1][0]
        with self.assertRaises(BlockingIOError):
            while True:
                full.send(b"x" * 4096)
        gone, _ = socket.socketpair()
        gone.close()
        sockets = [pairs[0][0], full, gone, pairs[3][0]]
        self.assertEqual(sendAll(sockets, b"chunk"), [5, 0, 0, 5])
        self.assertEqual(unread(pairs[0][1]), b"chunk")
        self.assertEqual(unread(pairs[3][1]), b"chunk")

    def test_short(self) -> None:
        """
        A socket that takes part of the chunk says how much it took.
        """
        (ours, peer), (other, otherPeer) = socketPair(self), socketPair(self)
        chunk = b"y" * (1 << 20)
        first, second = sendAll([ours, other], chunk)
        self.assertGreater(first, 0)
        self.assertLess(first, len(chunk))
        self.assertEqual(len(unread(peer)), first)
        self.assertEqual(len(unread(otherPeer)), second)


class FakeConnection:
    """
    What a plan reads of a member's TCP connection; its socket, a name.
    """

    def __init__(self, socket: str) -> None:
        self.socket = socket
        self.connected = 1
        self._tempDataBuffer: list[bytes] = []
        self.dataBuffer = b""


class FakeMember:
    """
    A member with a descriptor (or none) and a connection, whose socket
    is named C{"s"} and the descriptor (C{"s3"}).
    """

    def __init__(self, descriptor: int | None) -> None:
        self.descriptor = descriptor
        self.tcp = FakeConnection(f"s{descriptor}")


class PlanTests(SynchronousTestCase):
    """
    L{Plan} sorts a channel's members by how they are written, and
    L{Members} drops it on every change.
    """

    def test_sorted(self) -> None:
        """
        Members with descriptors whose connections are usable are written
        at once, in order; those whose connections queued something or
        are gone are diverted; those without a descriptor are others.
        """
        members = [FakeMember(n) for n in (3, 4, None, 6, 7)]
        members[1].tcp._tempDataBuffer.append(b"waiting")
        members[3].tcp.connected = 0
        plan = Plan(members)
        self.assertEqual(plan.sockets, ["s3", "s7"])
        self.assertEqual(plan.connections, [members[0].tcp, members[4].tcp])
        self.assertEqual(plan.direct, [members[0], members[4]])
        self.assertEqual(plan.diverted, [members[1], members[3]])
        self.assertEqual(plan.others, [members[2]])

    def test_divertAndReadmit(self) -> None:
        """
        A member whose connection queued something is diverted, and comes
        back to the writes at once when it has nothing queued; lists read
        before are unchanged.
        """
        members = [FakeMember(n) for n in (3, 4, 5)]
        plan = Plan(members)
        sockets = plan.sockets
        members[1].tcp.dataBuffer = b"rest"
        plan.update()
        self.assertEqual((plan.sockets, plan.diverted), (["s3", "s5"], [members[1]]))
        self.assertEqual(sockets, ["s3", "s4", "s5"])
        plan.update()
        self.assertEqual(plan.diverted, [members[1]])
        members[1].tcp.dataBuffer = b""
        plan.update()
        self.assertEqual((plan.sockets, plan.diverted), (["s3", "s5", "s4"], []))
        self.assertEqual(plan.direct, [members[0], members[2], members[1]])

    def test_reactorWriters(self) -> None:
        """
        Given the connections the reactor waits to write to, those are the
        ones diverted (whatever their buffers say), and a connection that
        is gone is diverted too.
        """
        members = [FakeMember(n) for n in (3, 4, 5, 6)]
        members[0].tcp.dataBuffer = b"not read"
        plan = Plan(members, set())
        self.assertEqual(plan.sockets, ["s3", "s4", "s5", "s6"])
        members[3].tcp.connected = 0
        plan.update({members[1].tcp})
        self.assertEqual(plan.sockets, ["s3", "s5"])
        self.assertEqual(plan.diverted, [members[1], members[3]])
        plan.update(set())
        self.assertEqual(plan.sockets, ["s3", "s5", "s4"])
        self.assertEqual(plan.diverted, [members[3]])

    def test_changesDropPlan(self) -> None:
        """
        Every way of changing the members, and L{Members.changed}, drops
        the plan.
        """
        changes: list[Any] = [
            lambda m: m.__setitem__("b", None),
            lambda m: m.__delitem__("a"),
            lambda m: m.pop("a"),
            lambda m: m.pop("missing", None),
            lambda m: m.popitem(),
            lambda m: m.clear(),
            lambda m: m.setdefault("c"),
            lambda m: m.update({"d": None}),
            lambda m: m.__ior__({"e": None}),
            lambda m: m.changed(),
        ]
        for change in changes:
            members = Members()
            dict.__setitem__(members, "a", None)
            members.plan = Plan([])
            change(members)
            self.assertIsNone(members.plan)


class PlannedWritesTests(TestCase):
    """
    A relay's raw clients, and what the plan makes of them as their
    connections change.
    """

    async def joined(
        self, receiveBuffer: int | None = None
    ) -> tuple[Source, Channel, socket.socket, FanoutSession]:
        """
        Start a source and a relay, and join one raw client.

        @return: The source, the channel, the client and its session.
        """
        source = Source(self)
        relay, port = await startRelay(self, feed(source))
        channel = await sourceUp(source, relay)
        client = await inThread(rawClient, port, "/ticker", receiveBuffer)
        self.addCleanup(client.close)
        await waitFor(lambda: len(channel.members) == 1)
        return source, channel, client, sessionOf(relay, client)

    def plan(self, channel: Channel) -> Plan:
        """
        @return: The plan of the channel's last flush.
        """
        plan = channel.members.plan
        assert plan is not None
        return plan

    async def test_fullThenDrained(self) -> None:
        """
        A member whose socket takes only part of a write is no longer
        written at once: what follows goes behind the rest, in Twisted's
        buffer; once Twisted sent it all, the member is written at once
        again, and the client got every message, whole and in order.
        """
        source, channel, client, session = await self.joined(receiveBuffer=4096)
        tcp = session.tcp
        assert tcp is not None
        tcp.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        # Less than Twisted's bufferSize: the member is not paused.
        big = b"z" * 60000
        channel.deliver([(2, big, None)])
        channel.flush()
        self.assertEqual(self.plan(channel).diverted, [session])
        self.assertEqual(self.plan(channel).sockets, [])
        self.assertGreater(len(tcp.dataBuffer) + tcp._tempDataLen, 0)
        for n in range(1, 4):
            channel.deliver([(1, b"%d" % n, None)])
            channel.flush()
        reader = FrameReader(client)
        await inThread(reader.readUntil, lambda: len(reader.frames) == 4)
        await waitFor(lambda: not (tcp._tempDataBuffer or tcp.dataBuffer))
        channel.deliver([(1, b"4", None)])
        channel.flush()
        self.assertEqual(self.plan(channel).direct, [session])
        self.assertEqual(self.plan(channel).diverted, [])
        await inThread(reader.readUntil, lambda: len(reader.frames) == 5)
        self.assertEqual(
            reader.frames,
            [(2, big)] + [(1, b"%d" % n) for n in range(1, 5)],
        )

    async def test_queuedAfterPlanned(self) -> None:
        """
        What the member's connection queued after the plan was made (its
        leg's own frames, say) goes before what the channel writes next:
        the member is diverted, not written at once.
        """
        source, channel, client, session = await self.joined()
        tcp = session.tcp
        assert tcp is not None
        channel.deliver([(1, b"first", None)])
        channel.flush()
        self.assertEqual(self.plan(channel).direct, [session])
        tcp.write(frame(9, b"queued"))
        channel.deliver([(1, b"next", None)])
        channel.flush()
        self.assertEqual(self.plan(channel).diverted, [session])
        reader = FrameReader(client)
        await inThread(reader.readUntil, lambda: len(reader.frames) == 3)
        self.assertEqual(reader.frames, [(1, b"first"), (9, b"queued"), (1, b"next")])

    async def test_leaveAndJoinDuringFlush(self) -> None:
        """
        A member that leaves while the channel writes (here as another
        member is written) gets nothing after that write; one that joins
        then gets what comes next, not what was being written.
        """
        source, channel, client, session = await self.joined()
        joiner: list[bytes] = []

        class Newcomer:
            descriptor = None

            def send(self, data: bytes, count: int = 1) -> None:
                joiner.append(data)

        class Leaver:
            descriptor = None

            def send(self, data: bytes, count: int = 1) -> None:
                channel.leave(session)
                channel.members[Newcomer()] = None

        channel.members[Leaver()] = None
        channel.deliver([(1, b"first", None)])
        channel.flush()
        self.assertNotIn(session, channel.members)
        channel.deliver([(1, b"second", None)])
        channel.flush()
        self.assertEqual(joiner, [frame(1, b"second")])
        reader = FrameReader(client)
        await inThread(reader.readUntil, lambda: len(reader.frames) == 1)
        self.assertEqual(reader.frames, [(1, b"first")])
        self.assertEqual(unread(client), b"")

    async def test_goneWhilePlanned(self) -> None:
        """
        A member still in the plan after its connection is lost (as after
        Autobahn's C{dropConnection}, which unregisters the member as its
        transport's producer) is not written through its old descriptor,
        whose number another socket has by then: here one of the test's.
        """
        source, channel, client, session = await self.joined()
        channel.deliver([(1, b"first", None)])
        channel.flush()
        plan = self.plan(channel)
        assert session.tcp is not None
        self.assertEqual(plan.sockets, [session.tcp.socket])
        peer = await reuseDescriptor(self, channel, client, session)
        dict.__setitem__(channel.members, session, None)
        channel.members.plan = plan
        channel.deliver([(1, b"not yours", None)])
        channel.flush()
        peer.setblocking(False)
        self.assertEqual(unread(peer), b"")
        self.assertEqual(plan.diverted, [session])
