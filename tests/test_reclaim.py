"""
A closed connection's objects are freed by reference counting, without
the cyclic garbage collector: with the relay's raised collector thresholds
(L{wsrelay.tap.GC_THRESHOLDS}), a connection that outlived a young
collection and ended in a reference cycle waited for a collection of an
older generation, tens of minutes or hours (docs/reliability.md, "Memory:
where it goes and its bounds").

Each test turns the collector off, lets connections open and close over
real loopback sockets, and waits (bounded) for weak references to the
relay's objects of those connections to die.  The relays run with
C{access_log = off}: under pytest nothing begins Twisted's logging, so its
start-up buffer (C{LimitedHistoryLogObserver}) keeps every event, and an
access event refers to its session (twistd begins logging, which ends the
buffer).  Also the memory reports of L{wsrelay.memory}.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
import time
import tracemalloc
import weakref
from typing import Any, cast

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.logger import globalLogBeginner, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.support import TIMEOUT, client, inThread, startBackend, startRelay
from tests.support.fanout import Source, channelUp, feed, sourceUp
from tests.support.waiting import waitFor
from wsrelay import memory
from wsrelay.fanout import FanoutSession
from wsrelay.fanout.source import WebSocketSource
from wsrelay.proxy.session import ProxySession
from wsrelay.service import RelayService


def noCollector(testCase: TestCase) -> None:
    """
    Turn the cyclic garbage collector off for the rest of C{testCase}.
    """
    if gc.isenabled():
        gc.disable()
        testCase.addCleanup(gc.enable)


def noLogBuffer(testCase: TestCase) -> None:
    """
    Stop Twisted's start-up log buffer from keeping events (and the objects
    they name as C{log_source}) for the rest of C{testCase}, as twistd's
    beginning to log ends it.  There is no public way to do it without
    beginning logging for the whole test process: the buffer is
    C{globalLogBeginner}'s private C{_temporaryObserver}.
    """
    buffer = getattr(globalLogBeginner, "_temporaryObserver", None)
    if buffer is not None and buffer in globalLogPublisher._observers:
        globalLogPublisher.removeObserver(buffer)
        testCase.addCleanup(globalLogPublisher.addObserver, buffer)


async def pause(seconds: float) -> None:
    """
    Let the reactor run for C{seconds}.
    """
    d: Deferred[None] = Deferred()
    reactor.callLater(seconds, d.callback, None)  # type: ignore[attr-defined]
    await d


async def freed(refs: dict[str, weakref.ref[Any]], what: str) -> None:
    """
    Wait until every object of C{refs} is freed.

    @raise AssertionError: After L{TIMEOUT} seconds, naming those that are
        not, with the types of what refers to them.
    """
    deadline = time.monotonic() + TIMEOUT
    while True:
        alive = {name: r() for name, r in refs.items() if r() is not None}
        if not alive:
            return
        if time.monotonic() > deadline:
            held = {
                name: sorted({type(r).__name__ for r in gc.get_referrers(o)})
                for name, o in alive.items()
            }
            raise AssertionError(f"{what}: still alive, referred to by {held}")
        del alive
        await pause(0.02)


def weakrefs(**objects: Any) -> dict[str, weakref.ref[Any]]:
    """
    @return: Weak references to C{objects}, by name.
    """
    return {name: weakref.ref(o) for name, o in objects.items()}


def onlySession(relay: RelayService) -> ProxySession | FanoutSession:
    """
    @return: The relay's one open session.
    """
    (session,) = relay.sessions
    return session


class ProxyReclaimTests(TestCase):
    """
    Proxied connections, on the passthrough path (the default).
    """

    dataPath: str | None = None

    async def test_closedSessionFreed(self) -> None:
        """
        After a client closes, its session, both legs and the passthrough
        pipe are freed with the collector off.
        """
        await self.closedSessionFreed("")

    async def test_closedSessionFreedIdleTimeout(self) -> None:
        """
        The same with C{idle_timeout}, whose timer calls back into the
        session.
        """
        await self.closedSessionFreed("idle_timeout = 60\n")

    async def closedSessionFreed(self, relayKeys: str) -> None:
        """
        Open and close three clients in turn; each one's session, legs and
        pipe must be freed with the collector off.

        @param relayKeys: More keys of C{[relay]}.
        """
        noCollector(self)
        b = startBackend(self)
        relay, port = await startRelay(
            self,
            f"[relay]\naccess_log = off\n{relayKeys}[route:chat]\npath = /chat\n"
            f"backends = {b.url}\n",
        )
        for i in range(3):
            c = await inThread(client, port, "/chat")
            await inThread(c.send, "hi")
            self.assertEqual(await inThread(c.recv, TIMEOUT), "hi")
            session = onlySession(relay)
            assert isinstance(session, ProxySession)
            refs = weakrefs(
                session=session, frontend=session.frontend, upstream=session.upstream
            )
            if session.pipe is not None:
                refs["pipe"] = weakref.ref(session.pipe)
            del session
            await inThread(c.close)
            await freed(refs, f"connection {i}")

    async def test_lostUpstreamFreed(self) -> None:
        """
        With C{failover = reconnect}, the upstream leg of a backend that
        went away is freed while the session goes on with a new one.
        """
        noCollector(self)
        b = startBackend(self)
        relay, port = await startRelay(
            self,
            "[relay]\naccess_log = off\n[route:chat]\npath = /chat\n"
            "failover = reconnect\n"
            f"backends = {b.url}\n",
        )
        c = await inThread(client, port, "/chat")
        self.addCleanup(inThread, c.close)
        session = onlySession(relay)
        assert isinstance(session, ProxySession)
        refs = weakrefs(upstream=session.upstream)
        del session
        await inThread(c.send, "vanish")
        await freed(refs, "the lost upstream")
        await inThread(c.send, "still here")
        self.assertEqual(await inThread(c.recv, TIMEOUT), "still here")


class MessagePathReclaimTests(ProxyReclaimTests):
    """
    The same on the message path.
    """

    dataPath = "message"


class FanoutReclaimTests(TestCase):
    """
    Fan-out clients and sources.
    """

    async def test_closedMemberFreed(self) -> None:
        """
        After a fan-out client closes, its session and leg are freed with
        the collector off, and so is the upstream leg of a source that
        went away.
        """
        noCollector(self)
        source = Source(self)
        relay, port = await startRelay(self, feed(source, relay="access_log = off\n"))
        for i in range(3):
            c = await inThread(client, port, "/ticker")
            channel = await sourceUp(source, relay)
            await inThread(source.send, 1)
            await inThread(c.recv, TIMEOUT)
            session = onlySession(relay)
            refs = weakrefs(session=session, frontend=session.frontend)
            del session
            await inThread(c.close)
            await freed(refs, f"client {i}")
        refs = weakrefs(upstream=cast(WebSocketSource, channel.source).upstream)
        await inThread(source.kill)
        await freed(refs, "the lost source's leg")

    async def test_endedChannelFreed(self) -> None:
        """
        A C{channel = path} channel that ended (its last client left and
        its linger passed) is freed with the collector off, with its source
        link and the stopped service that connected it (the channel logs
        as it closes: without the start-up log buffer, as under twistd).
        """
        noCollector(self)
        noLogBuffer(self)
        source = Source(self)
        relay, port = await startRelay(
            self,
            feed(source, "channel = path\nlinger = 0.01\n", "access_log = off\n"),
        )
        for i in range(2):
            c = await inThread(client, port, "/ticker/x")
            channel = await channelUp(relay, "/x")
            refs = weakrefs(channel=channel, link=channel.source)
            del channel
            await inThread(c.close)
            await waitFor(lambda: ("ticker", "/x") not in relay.channels)
            await freed(refs, f"channel {i}")


class MemoryReportTests(TestCase):
    """
    L{wsrelay.memory}: reports written on C{SIGUSR2}.
    """

    def test_notInstalled(self) -> None:
        """
        Without C{WSRELAY_MEMORY_REPORT}, nothing is installed.
        """
        self.assertIsNone(memory.installReporter(reactor, {}))

    async def test_reportOnSignal(self) -> None:
        """
        C{SIGUSR2} writes a report named by the C{request} file; with
        C{collect}, a full collection's garbage is counted (here the
        cycle made for it) and the figures taken again.
        """
        folder = self.mktemp()
        previous = signal.getsignal(signal.SIGUSR2)
        self.addCleanup(signal.signal, signal.SIGUSR2, previous)
        reporter = memory.installReporter(reactor, {memory.ENVIRONMENT: folder})
        assert reporter is not None
        with open(os.path.join(folder, "request"), "w") as f:
            f.write("first collect\n")

        class Cycle:
            pass

        # Only the cycle below is garbage at the signal (reports list the
        # most numerous types).
        gc.collect()

        cycle = Cycle()
        cycle.me = cycle  # type: ignore[attr-defined]
        del cycle
        os.kill(os.getpid(), signal.SIGUSR2)
        path = os.path.join(folder, "first.json")
        deadline = time.monotonic() + TIMEOUT
        while not os.path.exists(path):
            self.assertLess(time.monotonic(), deadline, "no report written")
            await pause(0.02)
        with open(path) as f:
            report = json.load(f)
        self.assertEqual(report["label"], "first")
        self.assertGreater(report["before"]["process"]["VmRSS"], 0)
        self.assertIn("count", report["before"]["gc"])
        self.assertGreater(report["before"]["pymalloc"]["arenas"], 0)
        garbage = report["collected"]["types"]
        self.assertGreaterEqual(
            garbage.get(
                f"{__name__}.MemoryReportTests.test_reportOnSignal.<locals>.Cycle"
            ),
            1,
        )
        self.assertIn("after", report)

    def test_trace(self) -> None:
        """
        C{WSRELAY_MEMORY_TRACE} starts C{tracemalloc}, and a report writes
        its snapshot beside the JSON file (C{pymalloc}'s statistics are
        not to be had while it traces: they are left out).
        """
        folder = self.mktemp()
        previous = signal.getsignal(signal.SIGUSR2)
        self.addCleanup(signal.signal, signal.SIGUSR2, previous)
        if tracemalloc.is_tracing():
            raise self.skipTest("tracemalloc was already tracing")
        self.addCleanup(tracemalloc.stop)
        reporter = memory.installReporter(
            reactor, {memory.ENVIRONMENT: folder, memory.TRACE_ENVIRONMENT: "5"}
        )
        assert reporter is not None
        self.assertTrue(tracemalloc.is_tracing())
        with open(reporter.report()) as f:
            report = json.load(f)
        self.assertGreater(report["before"]["tracemalloc"]["current"], 0)
        snapshot = tracemalloc.Snapshot.load(
            os.path.join(folder, report["label"] + ".tracemalloc")
        )
        self.assertGreater(len(snapshot.traces), 0)

    def test_everyType(self) -> None:
        """
        With the word C{types} in the request, a report lists every type,
        however few its objects, with the bytes they take (before and after
        the collection); without it, only the most numerous types.
        """
        folder = self.mktemp()
        reporter = memory.MemoryReporter(folder)
        os.makedirs(folder)

        class Rare:
            pass

        name = f"{__name__}.MemoryReportTests.test_everyType.<locals>.Rare"
        rare = [Rare() for _ in range(3)]
        requests = {"some": "some\n", "every": "every collect types\n"}
        reports = {}
        for label, request in requests.items():
            with open(os.path.join(folder, "request"), "w") as f:
                f.write(request)
            with open(reporter.report()) as f:
                reports[label] = json.load(f)
        self.assertNotIn(name, reports["some"]["before"]["types"])
        self.assertEqual(
            reports["some"]["before"]["typeBytes"].keys(),
            reports["some"]["before"]["types"].keys(),
        )
        for when in ("before", "after"):
            figures = reports["every"][when]
            self.assertEqual(figures["types"][name], 3)
            self.assertEqual(figures["typeBytes"][name], 3 * sys.getsizeof(rare[0]))


class ParseTests(SynchronousTestCase):
    """
    Reading C{sys._debugmallocstats()}'s text.
    """

    def test_parsePymalloc(self) -> None:
        """
        The arenas, their bytes and the blocks' bytes are read from the
        lines that hold them.
        """
        text = (
            "# arenas allocated total           =                1,033\n"
            "# arenas reclaimed                 =                1,001\n"
            "# arenas highwater mark            =                   45\n"
            "# arenas allocated current         =                   32\n"
            "32 arenas * 1048576 bytes/arena    =           33,554,432\n"
            "\n"
            "# bytes in allocated blocks        =           29,600,000\n"
            "# bytes in available blocks        =            2,500,000\n"
            "3 unused pools * 16384 bytes       =               49,152\n"
        )
        self.assertEqual(
            memory.parsePymalloc(text),
            {
                "arenas": 32,
                "arenaBytes": 33554432,
                "blockBytes": 29600000,
                "freeBlockBytes": 2500000,
                "freePoolBytes": 49152,
            },
        )
