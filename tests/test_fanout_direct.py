"""
A fan-out channel sends to a client's socket at once
(L{wsrelay.fanout.pending.Pending.flush}, through the client's
C{descriptor})
only while that is what its own write would do: over real loopback
sockets, a paused client, a client being closed and a partial send.
"""

from __future__ import annotations

import socket

from twisted.trial.unittest import TestCase

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
from wsrelay.ws.framing import frame

#: A close frame's opcode.
CLOSE = 8
#: A ping frame's opcode.
PING = 9


def numbers(reader: FrameReader) -> list[int]:
    """
    @return: The source's numbers in the text frames C{reader} read.
    """
    return [int(payload.split(b" ", 1)[0]) for op, payload in reader.frames if op == 1]


class DirectSendTests(TestCase):
    """
    One raw client of a relay's fan-out route, and what the channel's
    writes at the end of each turn give it.
    """

    async def joined(
        self, route: str = "", receiveBuffer: int | None = None
    ) -> tuple[Source, Channel, socket.socket, FanoutSession]:
        """
        Start a source and a relay whose route has the C{route} keys, and
        join one raw client.

        @return: The source, the channel, the client and its session.
        """
        source = Source(self)
        relay, port = await startRelay(self, feed(source, route))
        channel = await sourceUp(source, relay)
        client = await inThread(rawClient, port, "/ticker", receiveBuffer)
        self.addCleanup(client.close)
        await waitFor(lambda: len(channel.members) == 1)
        session = sessionOf(relay, client)
        return source, channel, client, session

    async def written(self, source: Source, channel: Channel, count: int) -> None:
        """
        Have the source send C{count} messages, and wait until the channel
        wrote them to its member (it counts them as it writes).
        """
        deliveries = channel.deliveries + count
        await inThread(source.send, count)
        await waitFor(lambda: channel.deliveries == deliveries)

    async def test_writtenAtOnce(self) -> None:
        """
        A joined client on a plain TCP connection is written at once: its
        C{descriptor} is its socket's, and what the channel writes has
        reached the client, with nothing left in Twisted's buffers, when
        the write returns.
        """
        source, channel, client, session = await self.joined()
        tcp = session.tcp
        assert tcp is not None
        self.assertIs(tcp, session.frontend.transport)
        self.assertEqual(session.descriptor, tcp.socket.fileno())
        await self.written(source, channel, 3)
        self.assertEqual((tcp._tempDataBuffer, tcp.dataBuffer), ([], b""))
        reader = FrameReader(client)
        await inThread(reader.readUntil, lambda: len(reader.frames) == 3)
        self.assertEqual(numbers(reader), [1, 2, 3])

    async def test_paused(self) -> None:
        """
        While the client's transport has paused it (its buffer is full),
        nothing is sent to its socket, not even when Twisted's buffers are
        empty: what the channel writes waits in the client's queue, and
        goes out, in order and before what comes next, once the transport
        resumes it.
        """
        source, channel, client, session = await self.joined()
        session.pauseProducing()
        self.assertIsNone(session.descriptor)
        await self.written(source, channel, 3)
        self.assertGreater(session.queued, 0)
        self.assertEqual(unread(client), b"")
        session.resumeProducing()
        self.assertEqual(session.queued, 0)
        assert session.tcp is not None
        self.assertEqual(session.descriptor, session.tcp.socket.fileno())
        await self.written(source, channel, 2)
        reader = FrameReader(client)
        await inThread(reader.readUntil, lambda: len(reader.frames) == 5)
        self.assertEqual(numbers(reader), [1, 2, 3, 4, 5])

    async def test_closing(self) -> None:
        """
        Once the client is being closed, what the channel writes goes
        nowhere: the close frame is the last thing the client gets (RFC
        6455, 5.5.1), and it stays a member until its connection is gone.
        """
        source, channel, client, session = await self.joined()
        await self.written(source, channel, 1)
        session.shutdown(1001, b"going")
        self.assertIsNone(session.descriptor)
        await self.written(source, channel, 3)
        self.assertIn(session, channel.members)
        reader = FrameReader(client)
        await inThread(reader.readUntil, lambda: len(reader.frames) == 2)
        self.assertEqual([op for op, _ in reader.frames], [1, CLOSE])
        self.assertEqual(numbers(reader), [1])
        self.assertEqual(unread(client), b"")

    async def test_partialSend(self) -> None:
        """
        When the client's socket takes only part of a write, the rest is
        queued in Twisted's buffer, and what the channel writes next goes
        behind it (not to the socket): the client, reading at last, gets
        every message whole and in order.
        """
        source, channel, client, session = await self.joined(receiveBuffer=4096)
        tcp = session.tcp
        assert tcp is not None
        tcp.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        deliveries = channel.deliveries + 1
        await inThread(source.send, 1, 1 << 18)
        await waitFor(lambda: channel.deliveries == deliveries)
        queued = len(tcp.dataBuffer) + sum(map(len, tcp._tempDataBuffer))
        self.assertGreater(queued, 0)
        self.assertLess(queued, 1 << 18)
        await self.written(source, channel, 20)
        reader = FrameReader(client)
        await inThread(reader.readUntil, lambda: len(reader.frames) == 21)
        self.assertEqual(numbers(reader), list(range(1, 22)))
        self.assertEqual(len(reader.frames[0][1]), 1 << 18)

    async def test_queuedFirst(self) -> None:
        """
        What Twisted holds for the connection (its leg's own frames, say)
        goes before what the channel writes in the same turn: that is not
        sent to the socket ahead of it.
        """
        source, channel, client, session = await self.joined()
        tcp = session.tcp
        assert tcp is not None
        tcp.write(frame(PING, b"queued"))
        channel.deliver([(1, b"next", None)])
        channel.flush()
        reader = FrameReader(client)
        await inThread(reader.readUntil, lambda: len(reader.frames) == 2)
        self.assertEqual(reader.frames, [(PING, b"queued"), (1, b"next")])

    async def test_goneDescriptor(self) -> None:
        """
        A member still listed after its connection is lost (as if it had
        not left) is not written through its old descriptor, whose number
        another socket may have by then: here a socket of the test's own.
        """
        source, channel, client, session = await self.joined()
        fd = session.descriptor
        peer = await reuseDescriptor(self, channel, client, session)
        channel.members[session] = None
        session.descriptor = fd
        channel.deliver([(1, b"not yours", None)])
        channel.flush()
        self.assertEqual(unread(peer), b"")
