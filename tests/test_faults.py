"""
Backends killed with C{SIGKILL} in the middle of traffic, many times, with
the relay run as users run it (C{twistd -n wsrelay --config FILE}, see
L{tests.support.faultbackend.RelayProcess}) and C{websockets} clients.

Each test counts, per client, the disconnects and the lost, duplicated and
reordered messages, and reads the relay's resident memory and open file
descriptors from C{/proc} before the clients come and after they left.
With C{WSRELAY_FAULTS_REPORT} set to a file name, each test appends its
numbers there as one JSON line (C{docs/reliability.md} quotes them).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.support.faultbackend import (
    TIMEOUT,
    BackendProcess,
    EchoTalker,
    RelayProcess,
    TickListener,
    backoff,
    waitUntil,
)

#: Backend kills per test.
KILLS = 8

#: Clients per test.
CLIENTS = 10

#: Seconds between two messages of one client.
SEND_INTERVAL = 0.01

#: Seconds between two ticks of a fan-out source.
TICK_INTERVAL = 0.005

#: How many descriptors more than at the start the relay may hold once
#: every client left.
FD_SLACK = 5

#: How much more resident memory than at the start the relay may hold once
#: every client left.
RSS_SLACK = 30 * 1024 * 1024


def report(name: str, numbers: dict[str, Any]) -> None:
    """
    Append a test's numbers to the file C{WSRELAY_FAULTS_REPORT} names, if
    it is set.
    """
    path = os.environ.get("WSRELAY_FAULTS_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"test": name, **numbers}) + "\n")


def upCount(relay: RelayProcess, backend: BackendProcess) -> int:
    """
    @return: How many times the relay logged that C{backend} is up.
    """
    return relay.logText().count(f"backend 127.0.0.1:{backend.port} is up")


async def settle(
    measure: Callable[[], int], bound: int, timeout: float = TIMEOUT
) -> int:
    """
    Poll C{measure} until it is at most C{bound} or C{timeout} passed.

    @return: The last value measured.
    """
    deadline = time.monotonic() + timeout
    value = measure()
    delays = backoff()
    while value > bound and time.monotonic() < deadline:
        await asyncio.sleep(next(delays))
        value = measure()
    return value


class FaultTestCase(SynchronousTestCase):
    """
    Runs an asyncio scenario against backend processes and a relay
    process, all stopped at the end whatever happens.
    """

    def runScenario(self, scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """
        Run C{scenario} in a new event loop.
        """
        asyncio.run(scenario())

    async def stopAll(
        self, relay: RelayProcess, backends: list[BackendProcess]
    ) -> None:
        """
        Stop the relay (it must exit with status 0, having logged no
        unhandled error) and the backends.
        """
        try:
            status = await relay.stop()
        finally:
            for b in backends:
                await b.stop()
        self.assertEqual(relay.errors(), [], relay.log)
        self.assertEqual(status, 0, relay.logText()[-2000:])

    def assertNoLeak(
        self, name: str, start: tuple[int, int], end: tuple[int, int]
    ) -> None:
        """
        The relay's descriptors are back within L{FD_SLACK} of the start,
        and its memory grew by less than L{RSS_SLACK}.

        @param start: Resident bytes and descriptors at the start.
        @param end: The same once every client left.
        """
        self.assertLessEqual(
            end[1],
            start[1] + FD_SLACK,
            f"{name}: descriptors {start[1]} at the start, {end[1]} at the end",
        )
        self.assertLess(
            end[0] - start[0],
            RSS_SLACK,
            f"{name}: resident memory {start[0]} at the start, {end[0]} at the end",
        )


class ProxyFaultTests(FaultTestCase):
    """
    Proxy mode: two echo backends, killed in turn while clients talk.
    """

    async def scenario(
        self, failover: str, check: Callable[[list[EchoTalker]], Awaitable[None]]
    ) -> dict[str, Any]:
        """
        Two echo backends behind a C{balancer = first} route, so every
        client is on the same backend; L{CLIENTS} clients send a numbered
        message every L{SEND_INTERVAL}; the backend they are on is killed,
        L{KILLS} times: each time once their traffic came back through the
        other backend, and once the relay's health check (C{tcp}, every
        0.1 s) logged the killed one up again.

        @param check: Called after each kill, once traffic resumed.
        @return: The numbers: kills, disconnects, lost, duplicated and
            reordered messages, memory and descriptors.
        """
        backends = [BackendProcess("echo"), BackendProcess("echo")]
        for b in backends:
            await b.start()
        relay = RelayProcess(
            "[relay]\nping_interval = 0\n"
            "[route:echo]\npath = /\nbalancer = first\n"
            f"failover = {failover}\n"
            "health = tcp\nhealth_interval = 0.1\nhealth_timeout = 1\n"
            "rise = 1\nfall = 1\n"
            f"backends = {backends[0].url} {backends[1].url}\n"
        )
        self.addCleanup(shutil.rmtree, relay.directory, True)
        try:
            await relay.start()
            start = (relay.rss(), relay.descriptors())
            url = f"ws://127.0.0.1:{relay.port}/"
            talkers = [EchoTalker(url, SEND_INTERVAL) for _ in range(CLIENTS)]
            for t in talkers:
                t.start()
            await waitUntil(
                lambda: all(t.tally.received for t in talkers), "first echoes"
            )
            for i in range(KILLS):
                victim = backends[i % 2]
                marks = [t.sent for t in talkers]
                await victim.kill()
                # Every client gets an echo of a message sent after the kill.
                await waitUntil(
                    lambda marks=marks: all(  # type: ignore[misc]
                        t.tally.last >= m for t, m in zip(talkers, marks, strict=True)
                    ),
                    f"traffic after kill {i + 1}",
                )
                await check(talkers)
                ups = upCount(relay, victim)
                await victim.start()
                # The relay's health check sees it up before the other dies.
                await waitUntil(
                    lambda ups=ups, victim=victim: (  # type: ignore[misc]
                        upCount(relay, victim) > ups
                    ),
                    f"backend up after kill {i + 1}",
                )
            for t in talkers:
                await t.finish()
            for t in talkers:
                await t.stop()
            bound = start[1] + FD_SLACK
            fds = await settle(relay.descriptors, bound)
            end = (relay.rss(), fds)
        finally:
            await self.stopAll(relay, backends)
        numbers = {
            "kills": sum(b.kills for b in backends),
            "clients": len(talkers),
            "sent": sum(t.sent for t in talkers),
            "lost": sum(t.lost for t in talkers),
            "duplicated": sum(t.tally.duplicated for t in talkers),
            "reordered": sum(t.tally.reordered for t in talkers),
            "disconnects": sum(len(t.tally.closes) for t in talkers),
            "closeCodes": sorted({c for t in talkers for c in t.tally.closes}, key=str),
            "refusals": sum(len(t.tally.refusals) for t in talkers),
            "rss": [start[0], end[0]],
            "fds": [start[1], end[1]],
        }
        self.assertEqual(numbers["kills"], KILLS)
        for t in talkers:
            self.assertEqual(t.tally.duplicated, 0, numbers)
            self.assertEqual(t.tally.reordered, 0, numbers)
            self.assertTrue(t.tally.strictlyIncreasing(), numbers)
        self.assertNoLeak(f"failover = {failover}", start, end)
        return numbers

    def test_failoverClose(self) -> None:
        """
        With C{failover = close}, each kill closes every client with 1014
        (no other code), and each reconnects at once to the backend left;
        across reconnections nothing is duplicated or reordered.  Messages
        in flight on a closed connection are lost (counted, not asserted:
        closing is what this setting promises).  The relay's descriptors
        and memory come back to where they were.
        """

        async def noCheck(talkers: list[EchoTalker]) -> None:
            pass

        async def scenario() -> None:
            numbers = await self.scenario("close", noCheck)
            report("proxy failover=close", numbers)
            self.assertEqual(numbers["disconnects"], KILLS * CLIENTS, numbers)
            self.assertEqual(numbers["closeCodes"], [1014], numbers)

        self.runScenario(scenario)

    def test_failoverReconnect(self) -> None:
        """
        With C{failover = reconnect}, no client is ever disconnected: after
        each kill the relay opens a new upstream to the other backend and
        the traffic goes on, in order and without duplicates.

        Messages in flight at the kill (received by the dying backend but
        not echoed, or still in the relay's socket to it) may be lost: the
        relay cannot know what the dead backend received, so it does not
        replay anything.  They are counted and reported, not asserted; what
        is asserted is no duplicate, no reordering and no disconnect, and no
        descriptor or memory leak.
        """

        async def connected(talkers: list[EchoTalker]) -> None:
            for t in talkers:
                self.assertEqual(t.tally.closes, [])
                self.assertEqual(t.tally.connects, 1)

        async def scenario() -> None:
            numbers = await self.scenario("reconnect", connected)
            report("proxy failover=reconnect", numbers)
            self.assertEqual(numbers["disconnects"], 0, numbers)

        self.runScenario(scenario)


class FanoutFaultTests(FaultTestCase):
    """
    Fan-out mode: two ticking sources, the one in use killed in turn.
    """

    def test_sourceKilled(self) -> None:
        """
        The source of a fan-out channel is killed L{KILLS} times while
        L{CLIENTS} clients receive its ticks: no client is disconnected,
        every client's ticks are strictly increasing (ticks due while no
        source was connected are never produced, so they are gaps, not
        losses), every client received the same ticks from the moment the
        last one joined (the relay lost nothing it received), each kill is
        seen by the relay as its source lost, and the relay's descriptors
        and memory come back to where they were.
        """

        async def scenario() -> None:
            sources = [
                BackendProcess("source", str(TICK_INTERVAL)),
                BackendProcess("source", str(TICK_INTERVAL)),
            ]
            for s in sources:
                await s.start()
            relay = RelayProcess(
                "[relay]\nping_interval = 0\n"
                "[route:feed]\npath = /\nmode = fanout\nbalancer = first\n"
                "backoff_base = 0.05\nbackoff_cap = 0.2\nhealth_interval = 0.2\n"
                f"backends = {sources[0].url} {sources[1].url}\n"
            )
            self.addCleanup(shutil.rmtree, relay.directory, True)
            step = int(TICK_INTERVAL * 1e9)
            try:
                await relay.start()
                await waitUntil(
                    lambda: "source " in relay.logText(), "source connected"
                )
                start = (relay.rss(), relay.descriptors())
                url = f"ws://127.0.0.1:{relay.port}/"
                listeners = [TickListener(url) for _ in range(CLIENTS)]
                for c in listeners:
                    c.start()
                await waitUntil(
                    lambda: all(len(c.tally.received) > 5 for c in listeners),
                    "first ticks",
                )
                for i in range(KILLS):
                    victim = sources[i % 2]
                    await victim.kill()
                    tick = time.monotonic_ns() // step
                    await waitUntil(
                        lambda tick=tick: all(  # type: ignore[misc]
                            c.tally.last > tick for c in listeners
                        ),
                        f"ticks after kill {i + 1}",
                    )
                    await victim.start()
                for c in listeners:
                    await c.stop()
                fds = await settle(relay.descriptors, start[1] + FD_SLACK)
                end = (relay.rss(), fds)
            finally:
                await self.stopAll(relay, sources)
            log = relay.logText()
            first = max(c.tally.received[0] for c in listeners)
            last = min(c.tally.last for c in listeners)
            common = [
                [n for n in c.tally.received if first <= n <= last] for c in listeners
            ]
            received = sum(len(c.tally.received) for c in listeners)
            span = sum(c.tally.last - c.tally.received[0] + 1 for c in listeners)
            numbers = {
                "kills": sum(s.kills for s in sources),
                "clients": len(listeners),
                "received": received,
                "gaps": span - received,
                "duplicated": sum(c.tally.duplicated for c in listeners),
                "reordered": sum(c.tally.reordered for c in listeners),
                "disconnects": sum(len(c.tally.closes) for c in listeners),
                "sourcesLost": log.count("lost (close code"),
                "rss": [start[0], end[0]],
                "fds": [start[1], end[1]],
            }
            report("fanout", numbers)
            self.assertEqual(numbers["kills"], KILLS)
            self.assertEqual(numbers["sourcesLost"], KILLS, numbers)
            for c in listeners:
                self.assertEqual(c.tally.closes, [], numbers)
                self.assertEqual(c.tally.connects, 1, numbers)
                self.assertTrue(c.tally.strictlyIncreasing(), numbers)
            for other in common[1:]:
                self.assertEqual(other, common[0])
            self.assertNoLeak("fanout", start, end)

        self.runScenario(scenario)
