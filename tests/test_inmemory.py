"""
Fan-out in memory: Autobahn clients, the relay and an Autobahn source
paired with L{twisted.test.iosim}, every timer on one
L{twisted.internet.task.Clock}, no sockets (L{tests.support.memory.Network};
proxy mode in memory is L{tests.test_memory}).

A slow client is one whose connection the test does not pump: its
transport (L{PausingTransport}) pauses the relay's producer once it holds
more than a socket would, as Twisted's own transports do, and resumes it
once the test drains it.
"""

from __future__ import annotations

from twisted.test.iosim import FakeTransport, IOPump
from twisted.trial.unittest import SynchronousTestCase

from tests.support.memory import (
    BACKEND_A,
    Network,
    RecordingBackend,
    RecordingClient,
)
from wsrelay.fanout import UP, WAITING, Channel
from wsrelay.fanout import channel as fanout
from wsrelay.ws.framing import BINARY

#: What a slow client's transport holds before it pauses its producer.
SOCKET_BUFFER = 1000

#: The size of each message the source sends.
SIZE = 300


def fanoutConfig(route: str = "") -> str:
    """
    @param route: More keys of the route.
    @return: The config text of a relay with one lazy fan-out route,
        C{/ticker}, fed by backend A's C{/feed}.
    """
    return (
        "[relay]\nlisten = tcp:0\nping_interval = 0\n"
        "[route:ticker]\npath = /ticker\nmode = fanout\nconnect = lazy\n"
        f"backends = ws://{BACKEND_A[0]}:{BACKEND_A[1]}/feed\n{route}"
    )


def message(n: int) -> bytes:
    """
    @return: The C{n}th message of the source: its number, padded to
        L{SIZE} bytes.
    """
    return str(n).encode().ljust(SIZE, b".")


class PausingTransport(FakeTransport):
    """
    A L{FakeTransport} that, like a socket's transport, pauses its
    streaming producer when more than L{SOCKET_BUFFER} bytes wait to be
    sent and resumes it once they are all taken (by L{IOPump}).

    @ivar paused: Whether it paused its producer and has not resumed it.
    """

    paused = False

    def write(self, data: bytes) -> None:
        """
        Queue C{data}; pause the producer if too much waits.
        """
        FakeTransport.write(self, data)
        waiting = sum(len(chunk) for chunk in self.stream)
        if self.producer is not None and not self.paused and waiting > SOCKET_BUFFER:
            self.paused = True
            self.producer.pauseProducing()

    def getOutBuffer(self) -> bytes | None:
        """
        Hand over what waits; resume the producer, which may write more.
        """
        data: bytes | None = FakeTransport.getOutBuffer(self)
        if self.paused and self.producer is not None:
            self.paused = False
            self.producer.resumeProducing()
        return data


class FanoutMemoryTests(SynchronousTestCase):
    """
    A fan-out channel in memory: one source connection for every client,
    each message framed once for all, a slow client dropped or closed by
    the route's policy while the others get everything.
    """

    def start(self, route: str = "") -> Network:
        """
        @return: A network whose relay has the fan-out route of
            L{fanoutConfig}.
        """
        return Network(self, fanoutConfig(route))

    def join(
        self, network: Network, slow: bool = False
    ) -> tuple[RecordingClient, IOPump]:
        """
        Connect a client to C{/ticker} and complete its handshake (and the
        channel's source connection, for the first client).

        @param slow: Whether the client is slow: its connection has a
            L{PausingTransport} on the relay's side and is taken out of
            the network's pumps once open (the test pumps it itself).
        @return: The client and its connection.
        """
        client = network.connectClient(
            "/ticker", PausingTransport if slow else FakeTransport
        )
        pump = network.pumps[-1]
        network.flush()
        if network.pendingConnects():
            self.source, self.sourcePump = network.acceptUpstream()
            network.flush()
        self.assertTrue(client.opened, client.raw)
        if slow:
            network.pumps.remove(pump)
        return client, pump

    def channel(self, network: Network) -> Channel:
        """
        @return: The route's one channel.
        """
        (channel,) = network.relay.channels.values()
        return channel

    def send(self, network: Network, numbers: range) -> None:
        """
        The source sends the messages C{numbers}, each moved at once.
        """
        source: RecordingBackend = self.source
        for n in numbers:
            source.sendMessage(message(n), isBinary=True)
            network.flush()

    def test_deliversToEveryMember(self) -> None:
        """
        Two clients of one channel share one source connection and each
        get every message the source sends, whole and in order; each
        message is framed once (one call of L{fanout.frame}, whose bytes
        are what each client gets on the wire), and the channel counts it
        once.
        """
        calls: list[int] = []
        original = fanout.frame

        def counting(opcode: int, payload: bytes) -> bytes:
            calls.append(opcode)
            return original(opcode, payload)

        self.patch(fanout, "frame", counting)
        network = self.start()
        one, _ = self.join(network)
        two, _ = self.join(network)
        before = [b"".join(c.raw) for c in (one, two)]
        self.send(network, range(5))
        expected = [(message(n), True) for n in range(5)]
        self.assertEqual(one.messages, expected)
        self.assertEqual(two.messages, expected)
        channel = self.channel(network)
        self.assertEqual(channel.state, UP)
        self.assertEqual(len(network.backends[BACKEND_A].connections), 1)
        self.assertEqual(self.source.request.path, "/feed")
        self.assertEqual((channel.messagesIn, len(calls)), (5, 5))
        wire = b"".join(original(BINARY, message(n)) for n in range(5))
        for client, earlier in zip((one, two), before, strict=True):
            self.assertEqual(b"".join(client.raw), earlier + wire)
        self.assertEqual(channel.deliveries, 10)

    def test_slowClientClosed(self) -> None:
        """
        With C{slow_client = close}, a client that does not read while its
        queue fills past C{max_client_buffer} is closed with 1013 and
        leaves the channel; the other client gets every message.
        """
        network = self.start("max_client_buffer = 1000\nslow_client = close\n")
        fast, _ = self.join(network)
        slow, slowPump = self.join(network, slow=True)
        channel = self.channel(network)
        self.send(network, range(20))
        self.assertEqual(fast.messages, [(message(n), True) for n in range(20)])
        self.assertEqual(channel.slowCloses, 1)
        slowPump.flush()
        network.flush()
        self.assertEqual([code for code, _ in slow.closeFrames], [1013])
        self.assertIsNotNone(slow.closed)
        self.assertEqual(len(channel.members), 1)
        # What it got before it was closed is a prefix of the stream.
        self.assertEqual(
            slow.messages, [(message(n), True) for n in range(len(slow.messages))]
        )

    def test_slowClientDropped(self) -> None:
        """
        With C{slow_client = drop} (the default), a slow client misses the
        messages that found its queue full, counted, and gets the rest in
        order once it reads again; it stays a member, and the other client
        gets every message.
        """
        network = self.start("max_client_buffer = 1000\n")
        fast, _ = self.join(network)
        slow, slowPump = self.join(network, slow=True)
        channel = self.channel(network)
        self.send(network, range(20))
        self.assertGreater(channel.slowDrops, 0)
        slowPump.flush()
        network.pumps.append(slowPump)
        self.send(network, range(20, 25))
        self.assertEqual(fast.messages, [(message(n), True) for n in range(25)])
        got = [int(payload.rstrip(b".")) for payload, _ in slow.messages]
        self.assertEqual(got, sorted(got))
        self.assertEqual(len(got) + channel.slowDrops, 25)
        self.assertEqual(got[-5:], list(range(20, 25)))
        self.assertEqual(channel.slowCloses, 0)
        self.assertEqual(len(channel.members), 2)

    def test_sourceReconnects(self) -> None:
        """
        When the source vanishes, the clients stay connected; the channel
        waits (on the clock) and connects again, and the new source's
        messages reach the same clients.
        """
        network = self.start("backoff_base = 1\nbackoff_cap = 2\n")
        client, _ = self.join(network)
        self.send(network, range(2))
        network.vanish(self.sourcePump)
        network.flush()
        channel = self.channel(network)
        self.assertEqual(channel.state, WAITING)
        self.assertEqual(network.pendingConnects(), [])
        network.advance(1)
        self.assertEqual(network.pendingConnects(), [BACKEND_A])
        self.source, self.sourcePump = network.acceptUpstream()
        network.flush()
        self.assertEqual(channel.state, UP)
        self.send(network, range(2, 4))
        self.assertEqual(client.messages, [(message(n), True) for n in range(4)])
        self.assertIsNone(client.closed)
        self.assertEqual(len(network.backends[BACKEND_A].connections), 2)
