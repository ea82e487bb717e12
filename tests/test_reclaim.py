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
buffer).
"""

from __future__ import annotations

import gc
import time
import weakref
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from tests.support import TIMEOUT, client, inThread, startBackend, startRelay
from tests.test_fanout import Source, channelUp, feed
from wsrelay.fanout import FanoutSession
from wsrelay.service import RelayService
from wsrelay.session import ProxySession


def noCollector(testCase: TestCase) -> None:
    """
    Turn the cyclic garbage collector off for the rest of C{testCase}.
    """
    if gc.isenabled():
        gc.disable()
        testCase.addCleanup(gc.enable)


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
        noCollector(self)
        b = startBackend(self)
        relay, port = await startRelay(
            self,
            "[relay]\naccess_log = off\n[route:chat]\npath = /chat\n"
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
            channel = await channelUp(relay)
            await inThread(source.send, 1)
            await inThread(c.recv, TIMEOUT)
            session = onlySession(relay)
            refs = weakrefs(session=session, frontend=session.frontend)
            del session
            await inThread(c.close)
            await freed(refs, f"client {i}")
        refs = weakrefs(upstream=channel.upstream)
        await inThread(source.kill)
        await freed(refs, "the lost source's leg")
