"""
What wakes a route's queue besides a closed connection: a backend that
health checks bring back (or that is tried again without them), and a
backend the admin API enables.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.support import TIMEOUT, client, inThread, startBackend, startRelay
from tests.support.waiting import waitFor
from wsrelay.config import BackendConfig
from wsrelay.health.monitor import HealthMonitor
from wsrelay.proxy.queue import QueueTimeout, RouteQueue
from wsrelay.routing import Backend, Route


class Answers:
    """
    A health checker whose answers the test gives, one per check.
    """

    def __init__(self, results: list[bool]) -> None:
        self.results = results

    def check(self, backend: Any) -> Deferred[tuple[bool, str]]:
        return succeed((self.results.pop(0), "scripted"))


class MonitorWakeTests(SynchronousTestCase):
    """
    L{HealthMonitor} tells its C{cameUp} when a backend comes back, so that
    the route's waiters may use it.
    """

    def monitor(self, checker: Any) -> tuple[HealthMonitor, Backend, Clock, list[int]]:
        """
        @return: A monitor of one backend with C{checker} on a clock,
            checking every 2 seconds (rise and fall 1), and the list its
            C{cameUp} appends to.
        """
        clock = Clock()
        backend = Backend(BackendConfig.fromURL("ws://127.0.0.1:1/"))
        calls: list[int] = []
        monitor = HealthMonitor(
            "r", (backend,), checker, clock, 2, 1, 1, 1, cameUp=lambda: calls.append(1)
        )
        return monitor, backend, clock, calls

    def test_checksBringBack(self) -> None:
        """
        A backend that goes down and comes back up through checks calls
        C{cameUp} once, when it comes up; a check that only confirms it is
        up does not.
        """
        monitor, backend, clock, calls = self.monitor(
            Answers([True, False, True, True])
        )
        monitor.start()
        self.addCleanup(monitor.stop)
        clock.advance(2)
        self.assertEqual((backend.healthy, calls), (False, []))
        clock.advance(2)
        self.assertEqual((backend.healthy, calls), (True, [1]))
        clock.advance(2)
        self.assertEqual(calls, [1])

    def test_triedAgain(self) -> None:
        """
        Without active checks, a backend taken out by failed connections is
        tried again after an interval, which calls C{cameUp}.
        """
        monitor, backend, clock, calls = self.monitor(None)
        monitor.start()
        self.addCleanup(monitor.stop)
        monitor.failed(backend, "refused")
        self.assertEqual((backend.healthy, calls), (False, []))
        clock.advance(2)
        self.assertEqual((backend.healthy, calls), (True, [1]))


class EnableWakeTests(TestCase):
    """
    A backend enabled through the admin API serves the oldest waiter at
    once.
    """

    async def test_enabled(self) -> None:
        """
        With backend C{b} disabled and C{a} at its C{maxconn=}, a client
        waits in the queue; enabling C{b} connects it there.
        """
        a, b = startBackend(self), startBackend(self)
        relay, port = await startRelay(
            self,
            "[relay]\n[route:chat]\npath = /chat\nqueue_timeout = 30\n"
            f"backends = {a.url} name=a maxconn=1 {b.url} name=b maxconn=1\n",
            Clock(),
        )
        route = relay.routes.byName("chat")
        assert isinstance(route, Route)
        relay.operations.setBackendState("chat", "b", "disable")
        first = await inThread(client, port, "/chat", legacy=True)
        self.addCleanup(inThread, first.close)
        waiting = inThread(client, port, "/chat", legacy=True)
        await waitFor(lambda: len(route.queue) == 1)
        self.assertEqual([x.connections for x in route.backends], [1, 0])
        relay.operations.setBackendState("chat", "b", "enable")
        second = await waiting
        self.addCleanup(inThread, second.close)
        await inThread(second.send, "hi")
        self.assertEqual(await inThread(second.recv, TIMEOUT), "hi")
        self.assertEqual([x.connections for x in route.backends], [1, 1])
        self.assertEqual(len(route.queue), 0)


class CountedOnceTests(SynchronousTestCase):
    """
    A handshake that waits again (woken, it found no backend it could try)
    counts once in the queue's total.
    """

    def test_again(self) -> None:
        """
        L{RouteQueue.wait} with C{again} adds to the waiters but not to
        C{total}.
        """
        queue, clock = RouteQueue(), Clock()
        first = queue.wait(clock, 10, queue, lambda: False)
        self.assertEqual((len(queue), queue.total), (1, 1))
        second = queue.wait(clock, 10, queue, lambda: False, again=True)
        self.assertEqual((len(queue), queue.total), (2, 1))
        clock.advance(10)
        self.assertEqual((len(queue), queue.timeouts), (0, 2))
        for d in (first, second):
            self.failureResultOf(d, QueueTimeout)
