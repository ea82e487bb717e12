"""
The Redis backplane as users run it: three C{twistd wsrelay} processes with
one fan-out route each, C{source = redis} on one stream with C{ingest =
on}, a real C{redis-server}, and a source that numbers its messages and
counts its connections.  One relay holds the ingest lease and is the only
one connected to the source; all three read the stream.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from collections.abc import Callable, Coroutine
from typing import Any

from twisted.trial.unittest import SynchronousTestCase
from websockets.asyncio.server import ServerConnection, broadcast, serve

from tests.support.faultbackend import RelayProcess, TickListener, waitUntil
from tests.support.redis import RedisServer, requireRedis
from tests.support.waiting import pollUntil

#: The stream the relays share.
STREAM = "test:feed"

#: The lease's key (the stream's, with C{:lease}).
LEASE = STREAM + ":lease"

#: Clients on each relay.
PER_RELAY = 10

#: Seconds a scenario may take at most.
DEADLINE = 60.0

#: Seconds between two messages of the source.
TICK = 0.01


class Ticker:
    """
    A source in the test's event loop: sends C{"N"} (N counting up from 1)
    to every open connection every L{TICK} seconds while ticking, and
    counts its connections.

    @ivar connections: Connections accepted, in all.
    @ivar open: Connections open now.
    @ivar most: The most connections ever open at once.
    @ivar next: The next number.
    """

    def __init__(self) -> None:
        self.connections = 0
        self.open: set[ServerConnection] = set()
        self.most = 0
        self.next = 1
        self.port = 0
        self._server: Any = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """
        Listen, and start ticking.
        """
        self._server = await serve(
            self._hold, "127.0.0.1", 0, compression=None, ping_interval=None
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._task = asyncio.get_running_loop().create_task(self._tick())

    async def _hold(self, connection: ServerConnection) -> None:
        """
        Count a connection, and keep it until it closes.
        """
        self.connections += 1
        self.open.add(connection)
        self.most = max(self.most, len(self.open))
        try:
            await connection.wait_closed()
        finally:
            self.open.discard(connection)

    async def _tick(self) -> None:
        """
        Send the next number to every open connection, every L{TICK} seconds.
        """
        while True:
            if self.open:
                broadcast(self.open, str(self.next))
                self.next += 1
            await asyncio.sleep(TICK)

    def pause(self) -> int:
        """
        Stop ticking.

        @return: The last number sent.
        """
        if self._task is not None:
            self._task.cancel()
            self._task = None
        return self.next - 1

    async def stop(self) -> None:
        """
        Stop ticking and close.
        """
        self.pause()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


def relayConfig(redis: RedisServer, ticker: Ticker) -> str:
    """
    @return: A relay's config: the route C{/feed} reading L{STREAM},
        ingesting from C{ticker} with a one-second lease.
    """
    return (
        "[relay]\nping_interval = 0\n"
        "[route:feed]\npath = /feed\nmode = fanout\nsource = redis\n"
        f"redis = {redis.url}\nstream = {STREAM}\nhistory = 100000\n"
        "ingest = on\nlease = 1\n"
        f"backends = ws://127.0.0.1:{ticker.port}/feed\n"
        "backoff_base = 0.05\nbackoff_cap = 0.2\n"
    )


def holder(redis: RedisServer, relays: list[RelayProcess]) -> RelayProcess | None:
    """
    @return: The relay whose token the lease's key holds, or L{None}.
    """
    token = redis.call("GET", LEASE)
    if not isinstance(token, bytes):
        return None
    pid = int(token.split(b":")[-2])
    for relay in relays:
        if relay.pid == pid:
            return relay
    return None


def _killed(relay: RelayProcess) -> None:
    """
    C{SIGKILL} C{relay} if it still runs (its process ID still names a
    process running its config: not another that took the ID since).
    """
    if not relay.pid:
        return
    try:
        with open(f"/proc/{relay.pid}/cmdline", "rb") as f:
            ours = relay.config.encode() in f.read()
        if ours:
            os.kill(relay.pid, signal.SIGKILL)
    except (FileNotFoundError, ProcessLookupError):
        pass


def streamNumbers(redis: RedisServer) -> list[int]:
    """
    @return: The numbers of the stream's entries, in order.
    """
    out = []
    for _, fields in redis.call("XRANGE", STREAM, "-", "+"):
        values = dict(zip(fields[::2], fields[1::2], strict=True))
        out.append(int(values[b"data"]))
    return out


class ClusterTests(SynchronousTestCase):
    """
    Three relays on one stream, thirty clients between them.
    """

    def setUp(self) -> None:
        requireRedis(self)
        self.redis = RedisServer(os.path.abspath(self.mktemp()))
        os.makedirs(self.redis.directory)
        self.redis.startBlocking()
        self.addCleanup(self.redis.stop)

    def runScenario(self, scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """
        Run C{scenario} in a new event loop, for at most L{DEADLINE}
        seconds.
        """
        asyncio.run(asyncio.wait_for(scenario(), DEADLINE))

    async def cluster(
        self, ticker: Ticker
    ) -> tuple[list[RelayProcess], list[list[TickListener]]]:
        """
        Start three relays and L{PER_RELAY} clients on each; wait until
        every client has messages.

        @return: The relays, and each one's clients.
        """
        relays = [RelayProcess(relayConfig(self.redis, ticker)) for _ in range(3)]
        for relay in relays:
            self.addCleanup(shutil.rmtree, relay.directory, True)
            # Whatever became of the scenario (its deadline passed while
            # stopping them, say), no relay outlives the test.
            self.addCleanup(_killed, relay)
        self._relays = relays
        await asyncio.gather(*(relay.start() for relay in relays))
        clients = [
            [TickListener(f"ws://127.0.0.1:{r.port}/feed") for _ in range(PER_RELAY)]
            for r in relays
        ]
        self._clients = [c for cs in clients for c in cs]
        for c in self._clients:
            c.start()
        await waitUntil(
            lambda: all(len(c.tally.received) >= 20 for c in self._clients),
            "every client receiving",
        )
        return relays, clients

    async def cleanUp(self, ticker: Ticker) -> None:
        """
        Stop the clients, relays and source of a scenario.
        """
        for c in getattr(self, "_clients", []):
            await c.stop()
        await asyncio.gather(*(r.stop() for r in getattr(self, "_relays", [])))
        await ticker.stop()

    def test_oneConnection(self) -> None:
        """
        The source sees one connection for the whole cluster, and every
        client, whichever relay it is on, gets every message from the one
        it started with to the last, in order.
        """

        async def scenario() -> None:
            ticker = Ticker()
            await ticker.start()
            try:
                relays, clients = await self.cluster(ticker)
                last = ticker.pause()
                await waitUntil(
                    lambda: all(c.tally.last == last for c in self._clients),
                    "every client at the last message",
                )
                self.assertEqual(ticker.connections, 1)
                for c in self._clients:
                    first = c.tally.received[0]
                    self.assertEqual(c.tally.received, list(range(first, last + 1)))
                    self.assertEqual((c.tally.connects, c.tally.closes), (1, []))
                self.assertIsNotNone(holder(self.redis, relays))
                self.assertEqual(streamNumbers(self.redis), list(range(1, last + 1)))
            finally:
                await self.cleanUp(ticker)

        self.runScenario(scenario)

    def test_holderKilled(self) -> None:
        """
        SIGKILL of the lease's holder: another relay takes the lease once
        it expired and connects to the source (one connection open at a
        time); the other relays' clients stay connected and go on, their
        messages strictly increasing; no entry is written twice.
        """

        async def scenario() -> None:
            ticker = Ticker()
            await ticker.start()
            try:
                relays, clients = await self.cluster(ticker)
                victim = holder(self.redis, relays)
                assert victim is not None
                index = relays.index(victim)
                for c in clients[index]:
                    await c.stop()
                os.kill(victim.pid, signal.SIGKILL)
                await victim.stop()
                await waitUntil(lambda: ticker.connections == 2, "a new holder")
                heir = holder(self.redis, relays)
                self.assertIsNotNone(heir)
                self.assertIsNot(heir, victim)
                survivors = [
                    c for i, cs in enumerate(clients) if i != index for c in cs
                ]
                mark = ticker.next
                await waitUntil(
                    lambda: all(c.tally.last >= mark + 20 for c in survivors),
                    "the survivors receiving again",
                )
                last = ticker.pause()
                await waitUntil(
                    lambda: all(c.tally.last == last for c in survivors),
                    "every survivor at the last message",
                )
                self.assertEqual(ticker.most, 1)
                for c in survivors:
                    self.assertTrue(c.tally.strictlyIncreasing())
                    self.assertEqual((c.tally.connects, c.tally.closes), (1, []))
                numbers = streamNumbers(self.redis)
                self.assertEqual(numbers, sorted(set(numbers)))
                self.assertEqual(numbers[-1], last)
            finally:
                await self.cleanUp(ticker)

        self.runScenario(scenario)

    def test_redisRestarted(self) -> None:
        """
        Redis killed and restarted (empty) under traffic: the relays
        reconnect, the holder takes the lease again and the clients, all
        still connected, go on receiving, their messages strictly
        increasing.
        """

        async def scenario() -> None:
            ticker = Ticker()
            await ticker.start()
            try:
                relays, clients = await self.cluster(ticker)
                self.redis.kill()
                await asyncio.to_thread(self._restartRedis)
                await waitUntil(
                    lambda: holder(self.redis, relays) is not None, "a holder again"
                )
                mark = ticker.next
                await waitUntil(
                    lambda: all(c.tally.last >= mark + 20 for c in self._clients),
                    "every client receiving again",
                )
                last = ticker.pause()
                await waitUntil(
                    lambda: all(c.tally.last == last for c in self._clients),
                    "every client at the last message",
                )
                for c in self._clients:
                    self.assertTrue(c.tally.strictlyIncreasing())
                    self.assertEqual((c.tally.connects, c.tally.closes), (1, []))
                self.assertEqual(ticker.most, 1)
                numbers = streamNumbers(self.redis)
                self.assertEqual(numbers, sorted(set(numbers)))
            finally:
                await self.cleanUp(ticker)

        self.runScenario(scenario)

    def _restartRedis(self) -> None:
        """
        Start Redis again on its port, empty (blocking: in a thread).
        """
        self.redis.launch()
        pollUntil(self.redis.answers, "redis-server answering again")
