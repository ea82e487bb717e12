"""
Relay trees: a fan-out route whose C{backends} is another relay's fan-out
route, as users build them to serve more clients than one relay holds
while the source still sees one connection (see docs/scaling.md).

Three tiers of real relays on loopback, with C{websockets} clients on
each: the source (L{Source}) feeds relay A; relays B1 and B2 feed from
A's route; C1 feeds from B1 and C2 from B2.  Each relay below the top is
one member of the channel above it, however many clients it serves.
"""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from tests.support import inThread, startRelay
from tests.support.fanout import Clients, Source, channelUp, feed, seqs
from tests.support.waiting import waitFor
from wsrelay.fanout import UP, Channel
from wsrelay.service import RelayService

#: Clients on each relay of the tree.
PER_RELAY = 3


def below(port: int) -> str:
    """
    @return: The config text of a relay whose fan-out route C{ticker} (at
        C{/ticker}) feeds from the route C{/ticker} of the relay on C{port},
        quick to reconnect.
    """
    return (
        "[relay]\n[route:ticker]\npath = /ticker\nmode = fanout\n"
        f"backends = ws://127.0.0.1:{port}/ticker\nbackoff_base = 0.05\n"
        "backoff_cap = 0.2\nhealth_interval = 0.1\n"
    )


class Tier:
    """
    One relay of the tree, its channel and its clients.
    """

    def __init__(
        self, relay: RelayService, port: int, channel: Channel, clients: Clients
    ) -> None:
        self.relay = relay
        self.port = port
        self.channel = channel
        self.clients = clients
        self.mine: list[int] = []

    def received(self, count: int) -> bool:
        """
        @return: Whether each of this relay's clients received C{count}
            messages.
        """
        return self.clients.received(self.mine, count)


async def tier(testCase: TestCase, text: str, listen: str | None = None) -> Tier:
    """
    Start a relay from C{text} and wait for its channel to be up.

    @param listen: Its listening endpoint; an OS-chosen loopback port by
        default.
    """
    if listen is None:
        relay, port = await startRelay(testCase, text)
    else:
        relay, port = await startRelay(testCase, text, listen=listen)
    channel = await channelUp(relay)
    return Tier(relay, port, channel, Clients(testCase, port))


class TreeTests(TestCase):
    """
    A source, relay A, relays B1 and B2 below A, C1 below B1 and C2 below
    B2, and clients on every relay.
    """

    async def grow(self) -> tuple[Source, Tier, list[Tier]]:
        """
        Build the tree and connect L{PER_RELAY} clients to each relay.

        @return: The source, tier A, and the tiers below it (B1, B2, C1,
            C2), each channel holding its clients and the relays below it.
        """
        source = Source(self)
        a = await tier(self, feed(source))
        await source.until(lambda: len(source.open) == 1)
        b1 = await tier(self, below(a.port))
        b2 = await tier(self, below(a.port))
        c1 = await tier(self, below(b1.port))
        c2 = await tier(self, below(b2.port))
        for t in (a, b1, b2, c1, c2):
            t.mine = await inThread(t.clients.add, PER_RELAY, "/ticker")
        await waitFor(lambda: len(a.channel.members) == PER_RELAY + 2)
        await waitFor(lambda: len(b1.channel.members) == PER_RELAY + 1)
        await waitFor(lambda: len(b2.channel.members) == PER_RELAY + 1)
        await waitFor(lambda: len(c1.channel.members) == PER_RELAY)
        await waitFor(lambda: len(c2.channel.members) == PER_RELAY)
        return source, a, [b1, b2, c1, c2]

    async def test_everyClientEveryMessage(self) -> None:
        """
        Every client, on every tier, gets every message of the source in
        order, and the source saw one connection for the whole tree: each
        relay below the top is one member of the channel above it.
        """
        source, a, lower = await self.grow()
        await inThread(source.send, 100)
        await waitFor(lambda: all(t.received(100) for t in (a, *lower)))
        for t in (a, *lower):
            for i in t.mine:
                self.assertEqual(seqs(t.clients.messages[i]), list(range(1, 101)))
        self.assertEqual(source.paths, ["/feed"])
        self.assertEqual(source.lost, [])
        self.assertEqual([t.channel.connects for t in (a, *lower)], [1, 1, 1, 1, 1])
        # A wrote each message to its 3 clients and to B1 and B2, not to
        # the clients of B1, B2, C1 and C2.
        self.assertEqual(a.channel.deliveries, (PER_RELAY + 2) * 100)

    async def test_middleRestarts(self) -> None:
        """
        Relay A (the upstream of B1 and B2) stops and starts again on the
        same port: A's own clients are closed with 1001; the clients of the
        lower tiers stay connected, B1 and B2 reconnect to the new A (C1
        and C2 notice nothing), and they all go on receiving.  Delivery is
        at most once, live: what the source sent while A was down is lost
        for the whole tree, and nothing else is lost, repeated or
        reordered.  The source still saw one connection at a time: one per
        run of A.
        """
        source, a, lower = await self.grow()
        b1, b2, c1, c2 = lower
        await inThread(source.send, 100)
        await waitFor(lambda: all(t.received(100) for t in (a, *lower)))

        await a.relay.stopService()
        await source.until(lambda: not source.open)
        await waitFor(lambda: b1.channel.state != UP and b2.channel.state != UP)
        await waitFor(lambda: None not in a.clients.closes)
        self.assertEqual(a.clients.closes, [(1001, "relay shutting down")] * PER_RELAY)
        await inThread(source.send, 20)
        self.assertEqual(source.lost, list(range(101, 121)))

        again = await tier(
            self, feed(source), listen=f"tcp:{a.port}:interface=127.0.0.1"
        )
        again.mine = await inThread(again.clients.add, PER_RELAY, "/ticker")
        await channelUp(b1.relay)
        await channelUp(b2.relay)
        await waitFor(lambda: len(again.channel.members) == PER_RELAY + 2)
        await source.until(lambda: len(source.open) == 1)
        await inThread(source.send, 100)
        await waitFor(lambda: again.received(100))
        await waitFor(lambda: all(t.received(200) for t in lower))

        for t in lower:
            for i in t.mine:
                self.assertEqual(
                    seqs(t.clients.messages[i]),
                    [*range(1, 101), *range(121, 221)],
                )
            self.assertEqual(t.clients.closes, [None] * PER_RELAY)
        for i in again.mine:
            self.assertEqual(seqs(again.clients.messages[i]), list(range(121, 221)))
        self.assertEqual(source.paths, ["/feed", "/feed"])
        self.assertEqual(len(source.open), 1)
        self.assertEqual([t.channel.connects for t in (b1, b2, c1, c2)], [2, 2, 1, 1])
        self.assertEqual((c1.channel.state, c2.channel.state), (UP, UP))
