"""
The C{redis} source in a running relay: fan-out routes with C{source =
redis} read streams of a real C{redis-server} and fan them out to real
clients, through a Redis restart.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.trial.unittest import TestCase

from tests.support import TIMEOUT, client, inThread
from tests.support.redis import RedisServer, startRedis
from tests.support.relays import startRelay
from tests.support.waiting import waitFor
from wsrelay.redis.source import RedisSource


def routes(server: RedisServer) -> str:
    """
    @return: A relay config with two fan-out routes reading two streams of
        C{server}.
    """
    return (
        "[relay]\n"
        f"[route:feed]\npath = /feed\nmode = fanout\nsource = redis\n"
        f"redis = {server.url}\nstream = wsrelay:feed\n"
        f"[route:other]\npath = /other\nmode = fanout\nsource = redis\n"
        f"redis = {server.url}\nstream = wsrelay:other\n"
    )


class RelayTests(TestCase):
    """
    Routes with C{source = redis} in a relay.
    """

    async def start(self) -> tuple[RedisServer, Any, int, dict[str, RedisSource]]:
        """
        A Redis, and a relay with L{routes} whose sources read.

        @return: The server, the relay, its port, the sources by route.
        """
        server = await startRedis(self)
        relay, port = await startRelay(self, routes(server))
        sources: dict[str, RedisSource] = {}
        for name in ("feed", "other"):
            source = relay.channels[(name, "")].source
            assert isinstance(source, RedisSource)
            sources[name] = source
        await waitFor(
            lambda: all(relay.channels[(n, "")].state == "up" for n in sources)
        )
        return server, relay, port, sources

    async def connect(self, relay: Any, port: int, path: str, count: int) -> list[Any]:
        """
        @return: C{count} clients of C{path}, joined.
        """
        clients = [await inThread(client, port, path) for _ in range(count)]
        for c in clients:
            self.addCleanup(inThread, c.close)
        name = path.strip("/")
        await waitFor(lambda: len(relay.channels[(name, "")].members) == count)
        return clients

    async def test_twoStreams(self) -> None:
        """
        Each route's clients get their own stream's entries, text and
        binary, in order.
        """
        server, relay, port, _ = await self.start()
        feed = await self.connect(relay, port, "/feed", 2)
        (other,) = await self.connect(relay, port, "/other", 1)
        server.call("XADD", "wsrelay:feed", "*", "data", "one")
        server.call("XADD", "wsrelay:other", "*", "data", "elsewhere")
        server.call("XADD", "wsrelay:feed", "*", "data", b"\x00\x01", "type", "binary")
        for c in feed:
            got = [await inThread(c.recv, TIMEOUT) for _ in range(2)]
            self.assertEqual(got, ["one", b"\x00\x01"])
        self.assertEqual(await inThread(other.recv, TIMEOUT), "elsewhere")

    async def test_redisRestarted(self) -> None:
        """
        Redis killed and restarted empty: the clients stay connected, the
        sources count a gap, and the entries added after they read again
        reach the clients.
        """
        server, relay, port, sources = await self.start()
        (c,) = await self.connect(relay, port, "/feed", 1)
        server.call("XADD", "wsrelay:feed", "*", "data", "before")
        self.assertEqual(await inThread(c.recv, TIMEOUT), "before")
        await server.restart()
        await waitFor(lambda: sources["feed"].gaps == 1)
        await waitFor(lambda: relay.channels[("feed", "")].state == "up")
        server.call("XADD", "wsrelay:feed", "*", "data", "after")
        self.assertEqual(await inThread(c.recv, TIMEOUT), "after")
        self.assertEqual(len(relay.channels[("feed", "")].members), 1)


class LazyResumeTests(TestCase):
    """
    C{resume = envelope} on a lazy route with C{source = redis}.
    """

    async def test_firstClientResumes(self) -> None:
        """
        The first client of a lazy channel, resuming after an entry the
        stream holds, gets the entries after it from the stream, then
        the live ones: the channel starts its source before the window
        looks the id up, and the lookup waits until the source has found
        where it reads from.
        """
        server = await startRedis(self)
        relay, port = await startRelay(
            self,
            "[relay]\n[route:feed]\npath = /feed\nmode = fanout\nsource = redis\n"
            f"redis = {server.url}\nstream = s\nconnect = lazy\n"
            "resume = envelope\nresume_miss = close\n",
        )
        ids = [
            server.call("XADD", "s", "*", "data", f"m{n}").decode() for n in range(3)
        ]
        c = await inThread(client, port, f"/feed?since={ids[0]}")
        self.addCleanup(inThread, c.close)
        got = [json.loads(await inThread(c.recv, TIMEOUT)) for _ in range(2)]
        self.assertEqual(
            [(m["id"], m["data"]) for m in got], [(ids[1], "m1"), (ids[2], "m2")]
        )
        await waitFor(lambda: relay.channels[("feed", "")].state == "up")
        live = server.call("XADD", "s", "*", "data", "live").decode()
        self.assertEqual(
            json.loads(await inThread(c.recv, TIMEOUT)), {"id": live, "data": "live"}
        )


class JSONResumeTests(TestCase):
    """
    C{resume = json:seq} on routes with C{source = redis}: the window is
    the stream's newest entries, loaded as the source starts, so a relay
    started after a message resumes clients after it.
    """

    async def relayAfter(self, extra: str) -> tuple[RedisServer, Any, int]:
        """
        A Redis whose stream C{s} holds C{{"seq": 1}} to C{{"seq": 3}},
        then a relay reading it.
        """
        server = await startRedis(self)
        for n in (1, 2, 3):
            server.call("XADD", "s", "*", "data", json.dumps({"seq": n}))
        relay, port = await startRelay(
            self,
            "[relay]\n[route:feed]\npath = /feed\nmode = fanout\nsource = redis\n"
            f"redis = {server.url}\nstream = s\nresume = json:seq\n"
            "resume_miss = close\n" + extra,
        )
        return server, relay, port

    async def receive(self, c: Any, count: int) -> list[int]:
        """
        @return: The C{seq} of the next C{count} messages of C{c}.
        """
        return [
            json.loads(await inThread(c.recv, TIMEOUT))["seq"] for _ in range(count)
        ]

    async def test_startedAfter(self) -> None:
        """
        A client resuming after a message sent before the relay started
        gets the later ones, then the live ones; a new client gets the
        replay from the stream.
        """
        server, relay, port = await self.relayAfter("replay = 1\n")
        await waitFor(lambda: relay.channels[("feed", "")].state == "up")
        resumed = await inThread(client, port, "/feed?since=1")
        self.addCleanup(inThread, resumed.close)
        self.assertEqual(await self.receive(resumed, 2), [2, 3])
        fresh = await inThread(client, port, "/feed")
        self.addCleanup(inThread, fresh.close)
        self.assertEqual(await self.receive(fresh, 1), [3])
        await waitFor(lambda: len(relay.channels[("feed", "")].members) == 2)
        server.call("XADD", "s", "*", "data", json.dumps({"seq": 4}))
        self.assertEqual(await self.receive(resumed, 1), [4])
        self.assertEqual(await self.receive(fresh, 1), [4])

    async def test_lazyFirstClient(self) -> None:
        """
        The first client of a lazy channel, resuming, waits for the source
        to load the window, then gets what came after its id.
        """
        server, relay, port = await self.relayAfter("connect = lazy\n")
        c = await inThread(client, port, "/feed?since=2")
        self.addCleanup(inThread, c.close)
        self.assertEqual(await self.receive(c, 1), [3])
        await waitFor(lambda: relay.channels[("feed", "")].state == "up")
        server.call("XADD", "s", "*", "data", json.dumps({"seq": 4}))
        self.assertEqual(await self.receive(c, 1), [4])
