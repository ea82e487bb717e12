"""
Tests for L{wsrelay.redis.lease}: one holder at a time through a real
C{redis-server}, renewals and their deadlines timed by an injected clock,
the holder giving up at once when a renewal fails, is refused or is late,
and a release that deletes only its own lease.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.support.redis import RedisServer, makeClient, startRedis
from tests.support.waiting import waitFor
from wsrelay.redis.lease import (
    ACQUIRE,
    RELEASE_TIMEOUT,
    RENEW,
    Lease,
    newToken,
    scriptId,
)
from wsrelay.redis.protocol import RedisConnectionLost, RedisError

#: The lease's key in the tests.
KEY = b"wsrelay:feed:lease"


class Holder:
    """
    What a lease tells its ingest: when it was taken and lost.

    @ivar events: C{"acquired"} and C{"lost"} in order.
    """

    def __init__(self) -> None:
        self.events: list[str] = []
        self._waiting: list[tuple[str, Deferred[None]]] = []

    def acquired(self, connection: Any) -> None:
        """
        The lease was taken.
        """
        self._note("acquired")

    def lost(self) -> None:
        """
        The lease was lost or released.
        """
        self._note("lost")

    def _note(self, event: str) -> None:
        """
        Record C{event} and fire what waits for it.
        """
        self.events.append(event)
        waiting, self._waiting = self._waiting, []
        for wanted, d in waiting:
            if wanted == event:
                d.callback(None)
            else:
                self._waiting.append((wanted, d))

    def next(self, event: str) -> Deferred[None]:
        """
        @return: A L{Deferred} firing at the next C{event}.
        """
        d: Deferred[None] = Deferred()
        self._waiting.append((event, d))
        return d


def makeLease(
    testCase: TestCase, server: RedisServer, clock: Clock, length: float = 30.0
) -> tuple[Lease, Holder]:
    """
    A lease on L{KEY} through a client of its own, timed by C{clock}
    (long enough that Redis's own expiry, in real time, never comes in a
    test), stopped at the end of C{testCase}.
    """
    client = makeClient(testCase, server.url)
    holder = Holder()
    lease = Lease(
        clock, client.connection, KEY, length, "test", holder.acquired, holder.lost
    )
    testCase.addCleanup(lease.stop)
    return lease, holder


class LeaseTests(TestCase):
    """
    L{Lease} against a real C{redis-server}, its timers on a L{Clock}.
    """

    async def test_one(self) -> None:
        """
        The first lease to ask takes the key with its token and the
        lease's length; a second is refused, and asks again every third of
        the lease without taking it.
        """
        server = await startRedis(self)
        clock = Clock()
        first, one = makeLease(self, server, clock)
        first.start()
        await one.next("acquired")
        self.assertTrue(first.held)
        self.assertEqual(server.call("GET", KEY), first.token)
        self.assertGreater(server.call("PTTL", KEY), 25000)
        second, two = makeLease(self, server, clock)
        second.start()
        await waitFor(lambda: second.refusals == 1)
        self.assertFalse(second.held)
        clock.advance(9.9)
        self.assertEqual(_calls(server, "set"), 2)
        clock.advance(0.1)
        await waitFor(lambda: second.refusals == 2)
        self.assertEqual(_calls(server, "set"), 3)
        self.assertFalse(second.held)
        self.assertEqual(two.events, [])
        self.assertEqual(server.call("GET", KEY), first.token)

    async def test_renews(self) -> None:
        """
        At a third of the lease the holder extends it to its whole length
        again.
        """
        server = await startRedis(self)
        clock = Clock()
        lease, holder = makeLease(self, server, clock)
        lease.start()
        await holder.next("acquired")
        server.call("PEXPIRE", KEY, "5000")
        clock.advance(9.9)
        self.assertLess(server.call("PTTL", KEY), 5001)
        clock.advance(0.1)
        await waitFor(lambda: server.call("PTTL", KEY) > 25000)
        self.assertTrue(lease.held)
        self.assertEqual(holder.events, ["acquired"])

    async def test_renewsAfterScriptFlush(self) -> None:
        """
        A renewal answered C{NOSCRIPT} (Redis's scripts flushed) is sent
        again with the script's body: the lease is extended and kept.
        """
        server = await startRedis(self)
        clock = Clock()
        lease, holder = makeLease(self, server, clock)
        lease.start()
        await holder.next("acquired")
        server.call("SCRIPT", "FLUSH")
        server.call("PEXPIRE", KEY, "5000")
        clock.advance(10.0)
        await waitFor(lambda: not lease.held or server.call("PTTL", KEY) > 25000)
        self.assertTrue(lease.held)
        self.assertEqual(holder.events, ["acquired"])

    async def test_refused(self) -> None:
        """
        When the key holds another relay's token (the lease expired and was
        taken), the next renewal is refused: the holder stops at once and
        leaves the other's lease alone.
        """
        server = await startRedis(self)
        clock = Clock()
        lease, holder = makeLease(self, server, clock)
        lease.start()
        await holder.next("acquired")
        server.call("SET", KEY, "another")
        lost = holder.next("lost")
        clock.advance(10)
        await lost
        self.assertFalse(lease.held)
        self.assertEqual(lease.lost, 1)
        self.assertEqual(server.call("GET", KEY), b"another")

    async def test_takesOver(self) -> None:
        """
        A relay that was refused takes the lease at its next attempt once
        the holder released it; the release was a delete.
        """
        server = await startRedis(self)
        clock = Clock()
        first, one = makeLease(self, server, clock)
        first.start()
        await one.next("acquired")
        second, two = makeLease(self, server, clock)
        second.start()
        await waitFor(lambda: second.refusals == 1)
        await first.stop()
        self.assertEqual(one.events, ["acquired", "lost"])
        self.assertIsNone(server.call("GET", KEY))
        taken = two.next("acquired")
        clock.advance(10)
        await taken
        self.assertEqual(server.call("GET", KEY), second.token)

    async def test_releasesOnlyItsOwn(self) -> None:
        """
        A holder whose lease was meanwhile taken by another does not delete
        the other's lease when it stops.
        """
        server = await startRedis(self)
        clock = Clock()
        lease, holder = makeLease(self, server, clock)
        lease.start()
        await holder.next("acquired")
        server.call("SET", KEY, "another")
        await lease.stop()
        self.assertEqual(server.call("GET", KEY), b"another")
        self.assertEqual(holder.events, ["acquired", "lost"])

    async def test_connectionLost(self) -> None:
        """
        Losing the connection the lease was taken on loses the lease at
        once, without waiting for the next renewal.
        """
        server = await startRedis(self)
        clock = Clock()
        lease, holder = makeLease(self, server, clock)
        lease.start()
        await holder.next("acquired")
        lost = holder.next("lost")
        server.call("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        await lost
        self.assertFalse(lease.held)

    async def test_connectionBlip(self) -> None:
        """
        A holder that lost only its connection takes the lease back at
        once on the next one (the key still holds its token): it is not
        refused by its own lease until that expires.
        """
        server = await startRedis(self)
        clock = Clock()
        lease, holder = makeLease(self, server, clock)
        lease.start()
        await holder.next("acquired")
        lost = holder.next("lost")
        server.call("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        await lost
        await waitFor(lambda: _advanced(clock) and (lease.held or lease.refusals))
        self.assertTrue(lease.held)
        self.assertEqual(lease.refusals, 0)
        self.assertEqual(server.call("GET", KEY), lease.token)
        self.assertGreater(server.call("PTTL", KEY), 29000)

    async def test_restarted(self) -> None:
        """
        Redis restarted empty: the holder's next renewal finds no key, it
        stops, then takes the lease again on a new connection.
        """
        server = await startRedis(self)
        clock = Clock()
        lease, holder = makeLease(self, server, clock)
        lease.start()
        await holder.next("acquired")
        lost = holder.next("lost")
        again = holder.next("acquired")
        await server.restart()
        await lost
        await waitFor(lambda: _advanced(clock) and lease.held)
        await again
        self.assertEqual(server.call("GET", KEY), lease.token)
        self.assertEqual(holder.events, ["acquired", "lost", "acquired"])


def _advanced(clock: Clock) -> bool:
    """
    Run what is due on C{clock} now (a retry at once), for a poll.

    @return: L{True}.
    """
    clock.advance(0)
    return True


def _calls(server: RedisServer, command: str) -> int:
    """
    @return: How many times the server ran C{command}, from C{INFO
        commandstats}.
    """
    info = server.call("INFO", "commandstats").decode("ascii")
    for line in info.splitlines():
        if line.startswith(f"cmdstat_{command}:"):
            return int(line.split("calls=", 1)[1].split(",", 1)[0])
    return 0


class FakeRedis:
    """
    A connection whose commands are answered by the test.

    @ivar sent: Each command sent and its L{Deferred}.
    """

    def __init__(self) -> None:
        self.sent: list[tuple[tuple[Any, ...], Deferred[Any]]] = []
        self._lost: Deferred[None] = Deferred()

    def execute(self, *args: Any) -> Deferred[Any]:
        """
        @return: A L{Deferred} the test answers (L{answer}).
        """
        d: Deferred[Any] = Deferred()
        self.sent.append((args, d))
        return d

    def whenLost(self) -> Deferred[None]:
        """
        @return: A L{Deferred} that never fires: the connection stays.
        """
        return self._lost

    def answer(self, command: str, reply: Any) -> None:
        """
        Answer the oldest unanswered C{command} (C{"ACQUIRE"}: the
        L{ACQUIRE} script).
        """
        for args, d in self.sent:
            name = "ACQUIRE" if args[:2] == ("EVAL", ACQUIRE) else args[0]
            if name == command and not d.called:
                if isinstance(reply, Exception):
                    d.errback(reply)
                else:
                    d.callback(reply)
                return
        raise AssertionError(f"no {command} waiting in {self.sent!r}")


class TimingTests(SynchronousTestCase):
    """
    L{Lease}'s timing, on a L{Clock} and a connection answered by hand.
    """

    def fakeLease(self, holder: Holder | None = None) -> Lease:
        """
        @return: A lease of three seconds on the hand-answered connection,
            telling C{holder} (a new one by default).
        """
        holder = holder if holder is not None else Holder()
        return Lease(
            self.clock,
            lambda: succeed(self.redis),  # type: ignore[arg-type]
            KEY,
            3.0,
            "test",
            holder.acquired,
            holder.lost,
        )

    def setUp(self) -> None:
        """
        A lease of three seconds on a hand-answered connection, taken.
        """
        self.clock = Clock()
        self.redis = FakeRedis()
        self.holder = Holder()
        self.lease = Lease(
            self.clock,
            lambda: succeed(self.redis),  # type: ignore[arg-type]
            KEY,
            3.0,
            "test",
            self.holder.acquired,
            self.holder.lost,
            token=b"me",
        )
        self.lease.start()
        self.redis.answer("ACQUIRE", 1)

    def renewals(self) -> list[tuple[Any, ...]]:
        """
        @return: The renewals sent so far.
        """
        return [a for a, _ in self.redis.sent if a[:2] == ("EVALSHA", scriptId(RENEW))]

    def test_acquired(self) -> None:
        """
        L{ACQUIRE} (C{SET key token NX PX ms}), with the lease's length in
        ms, takes it.
        """
        self.assertIn(
            ("EVAL", ACQUIRE, 1, KEY, b"me", 3000), [a for a, _ in self.redis.sent]
        )
        self.assertTrue(self.lease.held)
        self.assertEqual(self.holder.events, ["acquired"])

    def test_renewsAtAThird(self) -> None:
        """
        The first renewal goes at a third of the lease, the next a third
        after the one before was sent.
        """
        self.clock.advance(0.99)
        self.assertEqual(self.renewals(), [])
        self.clock.advance(0.01)
        self.assertEqual(
            self.renewals(), [("EVALSHA", scriptId(RENEW), 1, KEY, b"me", 3000)]
        )
        self.clock.advance(0.5)
        self.redis.answer("EVALSHA", 1)
        self.clock.advance(0.49)
        self.assertEqual(len(self.renewals()), 1)
        self.clock.advance(0.01)
        self.assertEqual(len(self.renewals()), 2)
        self.assertTrue(self.lease.held)

    def test_late(self) -> None:
        """
        A renewal unanswered when the lease would have expired (timed from
        when the last successful command was sent) loses the lease then;
        its answer coming later changes nothing.
        """
        self.clock.advance(1.0)
        self.clock.advance(1.99)
        self.assertTrue(self.lease.held)
        self.clock.advance(0.01)
        self.assertFalse(self.lease.held)
        self.assertEqual(self.holder.events, ["acquired", "lost"])
        self.redis.answer("EVALSHA", 1)
        self.assertFalse(self.lease.held)
        self.assertEqual(self.holder.events, ["acquired", "lost"])

    def test_lateAfterRenewals(self) -> None:
        """
        The deadline moves with each renewal answered: to the renewal's
        sending plus the lease's length.
        """
        self.clock.advance(1.0)
        self.clock.advance(1.5)
        self.redis.answer("EVALSHA", 1)  # sent at 1.0: expires at 4.0
        self.clock.advance(0.5)  # 3.0: second renewal sent, unanswered
        self.assertEqual(len(self.renewals()), 2)
        self.clock.advance(0.99)
        self.assertTrue(self.lease.held)
        self.clock.advance(0.01)
        self.assertFalse(self.lease.held)

    def test_failed(self) -> None:
        """
        A renewal that fails (an error reply, the connection lost) loses
        the lease at once.
        """
        self.clock.advance(1.0)
        self.redis.answer("EVALSHA", RedisError("ERR something went wrong"))
        self.assertFalse(self.lease.held)
        self.assertEqual(self.holder.events, ["acquired", "lost"])

    def test_renewNoScript(self) -> None:
        """
        A renewal answered C{NOSCRIPT} goes again, once, as C{EVAL} with
        the script's body; its answer extends the lease as the first's
        would have.
        """
        self.clock.advance(1.0)
        self.redis.answer("EVALSHA", RedisError("NOSCRIPT No matching script"))
        self.assertTrue(self.lease.held)
        self.assertEqual(self.redis.sent[-1][0], ("EVAL", RENEW, 1, KEY, b"me", 3000))
        self.redis.answer("EVAL", 1)
        self.clock.advance(2.99)
        self.assertTrue(self.lease.held)
        self.assertEqual(self.holder.events, ["acquired"])

    def test_refused(self) -> None:
        """
        A renewal answered 0 (not ours any more) loses the lease at once;
        the relay asks again at once, then every third of the lease.
        """
        self.clock.advance(1.0)
        self.redis.answer("EVALSHA", 0)
        self.assertFalse(self.lease.held)
        self.clock.advance(0)
        sets = [a for a, _ in self.redis.sent if a[:2] == ("EVAL", ACQUIRE)]
        self.assertEqual(len(sets), 2)
        self.redis.answer("ACQUIRE", 0)
        self.clock.advance(0.99)
        self.assertEqual(
            len([a for a, _ in self.redis.sent if a[:2] == ("EVAL", ACQUIRE)]), 2
        )
        self.clock.advance(0.01)
        self.assertEqual(
            len([a for a, _ in self.redis.sent if a[:2] == ("EVAL", ACQUIRE)]), 3
        )

    def test_stopReleases(self) -> None:
        """
        Stopping the holder stops the ingest first and releases with a
        compare-and-delete; no renewal follows.
        """
        d = self.lease.stop()
        self.assertEqual(self.holder.events, ["acquired", "lost"])
        self.assertNoResult(d)
        release = self.redis.sent[-1][0]
        self.assertEqual(release[0], "EVAL")
        self.assertEqual(release[2:], (1, KEY, b"me"))
        self.redis.answer("EVAL", 1)
        self.successResultOf(d)
        self.clock.advance(10)
        self.assertEqual(self.renewals(), [])

    def test_stopWhileTaking(self) -> None:
        """
        A lease stopped while its C{SET} is unanswered releases the lease
        if the C{SET} took it after all, without telling anyone it held it.
        """
        self.lease.stop()
        self.redis.answer("EVAL", 1)
        holder = Holder()
        lease = Lease(
            self.clock,
            lambda: succeed(self.redis),  # type: ignore[arg-type]
            KEY,
            3.0,
            "test",
            holder.acquired,
            holder.lost,
            token=b"me",
        )
        lease.start()
        stopped = lease.stop()
        self.assertEqual(self.redis.sent[-1][0][2:], (1, KEY, b"me"))
        self.redis.answer("ACQUIRE", 1)
        self.assertNoResult(stopped)
        self.redis.answer("EVAL", 1)
        self.successResultOf(stopped)
        self.assertEqual(holder.events, [])

    def test_stopWhileTakingUnanswered(self) -> None:
        """
        A stop waits for the release queued behind an unanswered C{SET} a
        bounded time only.
        """
        self.lease.stop()
        self.redis.answer("EVAL", 1)
        lease = self.fakeLease()
        lease.start()
        stopped = lease.stop()
        self.clock.advance(RELEASE_TIMEOUT - 0.01)
        self.assertNoResult(stopped)
        self.clock.advance(0.01)
        self.successResultOf(stopped)

    def test_restartedWhileTaking(self) -> None:
        """
        Stopped and started again while a C{SET} is unanswered: that
        C{SET}'s success does not count (the stop's release follows it),
        and the lease is asked for anew.
        """
        self.lease.stop()
        self.redis.answer("EVAL", 1)
        holder = Holder()
        lease = self.fakeLease(holder)
        lease.start()
        lease.stop()
        lease.start()
        self.redis.answer("ACQUIRE", 1)
        self.assertEqual(holder.events, [])
        self.clock.advance(0)
        self.redis.answer("ACQUIRE", 1)
        self.assertEqual(holder.events, ["acquired"])
        self.assertTrue(lease.held)
        lease.stop()

    def test_connectionLostWhileTaking(self) -> None:
        """
        A C{SET} that fails for a lost connection is tried again a third
        of the lease later.
        """
        self.lease.stop()
        self.redis.answer("EVAL", 1)
        lease = self.fakeLease()
        lease.start()
        self.redis.answer("ACQUIRE", RedisConnectionLost("gone"))
        count = len(self.redis.sent)
        self.clock.advance(1.0)
        self.assertEqual(len(self.redis.sent), count + 1)
        lease.stop()


class TokenTests(SynchronousTestCase):
    """
    L{newToken}.
    """

    def test_unique(self) -> None:
        """
        Two tokens of one process differ, and name the process.
        """
        a, b = newToken(), newToken()
        self.assertNotEqual(a, b)
        self.assertIn(f":{os.getpid()}:".encode(), a)
