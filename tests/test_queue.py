"""
Backend connection limits (C{maxconn=}) and the route's queue
(C{queue_timeout}): the queue on its own with a clock, and relays on
loopback with real backends and clients, their timers on a clock.
"""

from __future__ import annotations

import socket
import threading
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.support import TIMEOUT, client, inThread, startBackend, startRelay
from tests.support.admin import fetch, labels, samples
from tests.support.clients import rawRequest
from tests.support.waiting import waitFor
from wsrelay.admin import adminSite
from wsrelay.config import ConfigError, RelayConfig, parseConfig
from wsrelay.proxy.queue import QueueTimeout, RouteQueue, retryAfter
from wsrelay.routing import Backend, Route
from wsrelay.service import RelayService


class Room:
    """
    Slots that waiters take when they are woken.
    """

    def __init__(self, free: int = 0) -> None:
        self.free = free

    def hasRoom(self) -> bool:
        return self.free > 0

    def take(self, waited: float) -> float:
        self.free -= 1
        return waited


class RouteQueueTests(SynchronousTestCase):
    """
    L{RouteQueue} wakes its waiters first come first served, as slots free,
    and lets them go when they time out or give up.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.queue = RouteQueue()
        self.room = Room()

    def wait(self, timeout: float = 10, room: Room | None = None) -> Deferred[float]:
        """
        @return: A waiter's L{Deferred}; it takes a slot of C{room} when
            woken.
        """
        room = room or self.room
        d = self.queue.wait(self.clock, timeout, room, room.hasRoom)
        return d.addCallback(room.take)

    def test_firstComeFirstServed(self) -> None:
        """
        Each freed slot goes to the oldest waiter; while there is no room,
        nobody is woken.
        """
        first, second, third = self.wait(), self.wait(), self.wait()
        self.clock.advance(2)
        self.queue.slotFreed()
        self.assertNoResult(first)
        self.room.free = 1
        self.queue.slotFreed()
        self.assertEqual(self.successResultOf(first), 2)
        self.assertNoResult(second)
        self.assertEqual(len(self.queue), 2)
        self.room.free = 2
        self.clock.advance(1)
        self.queue.slotFreed()
        self.assertEqual(self.successResultOf(second), 3)
        self.assertEqual(self.successResultOf(third), 3)
        self.assertEqual(
            (len(self.queue), self.queue.peak, self.queue.total), (0, 3, 3)
        )
        self.assertEqual(self.queue.waits.count, 3)
        self.assertEqual(self.queue.waits.sum, 8)

    def test_timeout(self) -> None:
        """
        A waiter that gets no slot within its timeout fails with
        L{QueueTimeout} and leaves the queue.
        """
        d = self.wait(5)
        self.clock.advance(4.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.failureResultOf(d, QueueTimeout)
        self.assertEqual((len(self.queue), self.queue.timeouts), (0, 1))
        self.assertEqual(self.queue.waits.sum, 5)
        self.room.free = 1
        self.queue.slotFreed()
        self.assertEqual(self.room.free, 1)

    def test_cancel(self) -> None:
        """
        A waiter cancelled (its client left) leaves the queue, its timer
        stopped, and is never woken.
        """
        gone, next_ = self.wait(), self.wait()
        gone.cancel()
        self.failureResultOf(gone, CancelledError)
        self.assertEqual((len(self.queue), self.queue.abandoned), (1, 1))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.room.free = 1
        self.queue.slotFreed()
        self.successResultOf(next_)
        self.assertEqual(self.queue.timeouts, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_groups(self) -> None:
        """
        A waiter whose backends have no room (it came before a reload)
        does not hold back a later waiter whose backends do.
        """
        old = Room()
        stuck, served = self.wait(room=old), self.wait()
        self.room.free = 1
        self.queue.slotFreed()
        self.successResultOf(served)
        self.assertNoResult(stuck)
        old.free = 1
        self.queue.slotFreed()
        self.successResultOf(stuck)

    def test_comingBack(self) -> None:
        """
        A waiter that is woken but takes nothing and queues again is not
        woken again by the same freed slot (no endless loop): it waits for
        the next.
        """
        woken: list[Deferred[float]] = []

        def again(waited: float) -> None:
            woken.append(self.queue.wait(self.clock, 10, self.room, self.room.hasRoom))

        self.queue.wait(self.clock, 10, self.room, self.room.hasRoom).addCallback(again)
        self.room.free = 1
        self.queue.slotFreed()
        self.assertEqual((len(woken), len(self.queue)), (1, 1))
        self.queue.slotFreed()
        self.successResultOf(woken[0])

    def test_retryAfter(self) -> None:
        """
        The C{Retry-After} of a refused client is C{queue_timeout} rounded
        up to whole seconds, at least one.
        """
        self.assertEqual(
            [retryAfter(t) for t in (0, 0.2, 1, 2.5)], ["1", "1", "1", "3"]
        )


def config(extra: str = "", backends: str = "ws://a:1/ maxconn=2") -> str:
    """
    @return: A configuration with one proxy route.
    """
    return f"[relay]\n[route:chat]\npath = /chat\nbackends = {backends}\n{extra}"


def parsed(text: str) -> RelayConfig:
    """
    @return: The configuration C{text} (of L{config}) with a listener.
    """
    return parseConfig(text.replace("[relay]", "[relay]\nlisten = tcp:0", 1), "t.ini")


class ConfigTests(SynchronousTestCase):
    """
    C{maxconn=} follows a backend URL as C{name=} does; C{queue_timeout}
    is a route key.
    """

    def test_parsed(self) -> None:
        """
        C{maxconn=} sets the backend's limit, none by default; the route's
        C{queue_timeout} is 0 by default.
        """
        [route] = parsed(
            config("queue_timeout = 2.5", "ws://a:1/ maxconn=7 name=a ws://b:1/")
        ).routes
        self.assertEqual([b.maxconn for b in route.backends], [7, None])
        self.assertEqual(route.queueTimeout, 2.5)
        [route] = parsed(config()).routes
        self.assertEqual(route.queueTimeout, 0)

    def test_invalid(self) -> None:
        """
        An invalid C{maxconn=} is one line naming the file, the section and
        the key, and what is expected.
        """
        e = self.assertRaises(
            ConfigError, parsed, config(backends="ws://a:1/ maxconn=0")
        )
        self.assertEqual(
            (e.filename, e.section, e.key), ("t.ini", "route:chat", "backends")
        )
        self.assertIn("maxconn of ws://a:1/", str(e))
        self.assertEqual(str(e).splitlines(), [str(e)])


def candidatesOf(*limits: tuple[int | None, int, int]) -> list[str]:
    """
    @param limits: Each backend's C{maxconn=}, connections open and being
        opened.
    @return: The names of the route's candidates.
    """
    text = " ".join(
        f"ws://h{i}:1/ name=b{i}" + ("" if m is None else f" maxconn={m}")
        for i, (m, _, _) in enumerate(limits)
    )
    [rc] = parsed(config(backends=text)).routes
    backends = tuple(Backend(bc) for bc in rc.backends)
    for b, (_, open_, opening) in zip(backends, limits, strict=True):
        b.connections, b.connecting = open_, opening
    route = Route(rc, backends, object(), object())  # type: ignore[arg-type]
    return [b.name for b in route.candidates()]


class CandidatesTests(SynchronousTestCase):
    """
    A backend at its C{maxconn=} (connections open and being opened) is
    not a candidate: balancers never see it.
    """

    def test_candidates(self) -> None:
        """
        Only backends below their limit are candidates.
        """
        self.assertEqual(
            candidatesOf((2, 1, 0), (2, 1, 1), (None, 50, 50), (1, 0, 1)),
            ["b0", "b2"],
        )


def rawHandshake(port: int, path: str = "/chat") -> socket.socket:
    """
    @return: A socket that sent a handshake to the relay (blocking; run it
        in a thread).
    """
    s = socket.create_connection(("127.0.0.1", port), TIMEOUT)
    s.sendall(rawRequest(port, path))
    return s


def response(s: socket.socket) -> bytes:
    """
    @return: The head of the relay's answer on C{s} (blocking).
    """
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data.partition(b"\r\n\r\n")[0]


class QueueTestCase(TestCase):
    """
    A relay on loopback whose one route C{chat} has a backend with a
    C{maxconn=}, its timers on a clock.
    """

    async def start(self, extra: str = "", maxconn: int = 1, **kwargs: Any) -> None:
        """
        Start an echo backend (with C{kwargs}, see L{startBackend}) and a
        relay whose one route C{chat} caps it at C{maxconn}, with its timers
        on a clock.
        """
        self.backend = startBackend(self, **kwargs)
        self.clock = Clock()
        self.relay, self.port = await startRelay(
            self,
            config(extra, f"{self.backend.url} name=b maxconn={maxconn}"),
            self.clock,
        )

    @property
    def route(self) -> Route:
        route = self.relay.routes.byName("chat")
        assert route is not None
        return route

    async def connect(self) -> Any:
        """
        @return: A C{websockets} client of C{/chat}, open.
        """
        c = await inThread(client, self.port, "/chat", legacy=True)
        self.addCleanup(inThread, c.close)
        return c

    async def queued(self, count: int) -> None:
        """
        Wait until C{count} handshakes wait in the route's queue.
        """
        await waitFor(lambda: len(self.route.queue) == count)


class RelayQueueTests(QueueTestCase):
    """
    Handshakes beyond a backend's C{maxconn=} wait in the route's queue,
    first come first served, and are served as slots free, or refused with
    503 and C{Retry-After}.
    """

    async def test_refusedAtOnce(self) -> None:
        """
        With C{queue_timeout = 0} (the default), a client beyond the
        backend's C{maxconn=} gets 503 with C{Retry-After} at once.
        """
        await self.start()
        await self.connect()
        s = await inThread(rawHandshake, self.port)
        self.addCleanup(s.close)
        head = await inThread(response, s)
        self.assertTrue(head.startswith(b"HTTP/1.1 503 "), head)
        self.assertIn(b"\r\nRetry-After: 1", head)
        self.assertEqual(self.route.backends[0].totalConnections, 1)

    async def test_firstComeFirstServed(self) -> None:
        """
        Clients beyond the limit wait; when a connection closes, the oldest
        waiting client gets its backend connection, the others wait on.
        """
        await self.start("queue_timeout = 30")
        first = await self.connect()
        second = inThread(client, self.port, "/chat", legacy=True)
        await self.queued(1)
        third = inThread(client, self.port, "/chat", legacy=True)
        await self.queued(2)
        await inThread(first.close)
        c2 = await second
        self.addCleanup(inThread, c2.close)
        self.assertFalse(third.called)
        self.assertEqual(len(self.route.queue), 1)
        await inThread(c2.send, "hi")
        self.assertEqual(await inThread(c2.recv, TIMEOUT), "hi")
        await inThread(c2.close)
        c3 = await third
        self.addCleanup(inThread, c3.close)
        queue = self.route.queue
        self.assertEqual((queue.total, queue.peak, queue.timeouts), (2, 2, 0))

    async def test_timeout(self) -> None:
        """
        A client that waited C{queue_timeout} gets 503 with C{Retry-After}
        (that time in whole seconds); the relay's clock times it.
        """
        await self.start("queue_timeout = 2.5")
        await self.connect()
        s = await inThread(rawHandshake, self.port)
        self.addCleanup(s.close)
        await self.queued(1)
        self.clock.advance(2.4)
        self.assertEqual(len(self.route.queue), 1)
        self.clock.advance(0.1)
        head = await inThread(response, s)
        self.assertTrue(head.startswith(b"HTTP/1.1 503 "), head)
        self.assertIn(b"\r\nRetry-After: 3", head)
        self.assertEqual((len(self.route.queue), self.route.queue.timeouts), (0, 1))

    async def test_clientLeaves(self) -> None:
        """
        A client that closes while queued leaves the queue, and no backend
        connection is opened for it when a slot frees.
        """
        await self.start("queue_timeout = 30")
        first = await self.connect()
        s = await inThread(rawHandshake, self.port)
        await self.queued(1)
        s.close()
        await self.queued(0)
        self.assertEqual(self.route.queue.abandoned, 1)
        await inThread(first.close)
        backend = self.route.backends[0]
        await waitFor(lambda: backend.connections == 0)
        self.assertEqual((backend.connecting, backend.totalConnections), (0, 1))
        self.assertEqual(self.backend.connections, 1)

    async def test_failedAttemptFreesSlot(self) -> None:
        """
        A connect attempt that fails gives its slot to the oldest waiter at
        once: the waiter gets the backend's own answer, not a timeout.
        """
        gate = threading.Event()
        await self.start("queue_timeout = 30", refuse=(500, [], b"no"), gate=gate)
        backend = self.route.backends[0]
        # The first attempt waits at the backend's gate, holding the slot.
        first = await inThread(rawHandshake, self.port)
        self.addCleanup(first.close)
        await waitFor(lambda: backend.connecting == 1)
        second = await inThread(rawHandshake, self.port)
        self.addCleanup(second.close)
        await self.queued(1)
        gate.set()
        for s in (first, second):
            head = await inThread(response, s)
            self.assertTrue(head.startswith(b"HTTP/1.1 500 "), head)
        self.assertEqual((self.route.queue.total, self.route.queue.timeouts), (1, 0))
        self.assertEqual((backend.connecting, backend.connections), (0, 0))

    async def test_onlyBelowCap(self) -> None:
        """
        The balancer picks among the backends below their limit only:
        C{first} goes on to the second backend once the first is full.
        """
        self.clock = Clock()
        a, b = startBackend(self), startBackend(self)
        self.relay, self.port = await startRelay(
            self,
            config(
                "balancer = first",
                f"{a.url} name=a maxconn=1 {b.url} name=b maxconn=2",
            ),
            self.clock,
        )
        for _ in range(3):
            await self.connect()
        self.assertEqual([x.connections for x in self.route.backends], [1, 2])
        s = await inThread(rawHandshake, self.port)
        self.addCleanup(s.close)
        head = await inThread(response, s)
        self.assertTrue(head.startswith(b"HTTP/1.1 503 "), head)


def _connected(relay: RelayService, key: str) -> bool:
    """
    @return: Whether the fan-out channel C{key} of route C{feed} is up.
    """
    channel = relay.registry.channels.get(("feed", key))
    return channel is not None and channel.state == "up"


class ReloadTests(QueueTestCase):
    """
    Waiters survive a reload on the new route's queue, and the new
    C{maxconn=} applies to them; fan-out sources count and queue too; the
    admin API shows the queue.
    """

    def rewrite(self, maxconn: int) -> None:
        """
        Write the relay's configuration again with another C{maxconn=}.
        """
        path = self.relay.config.path
        with open(path) as f:
            text = f.read()
        with open(path, "w") as f:
            f.write(text.replace("maxconn=1", f"maxconn={maxconn}"))

    async def test_status(self) -> None:
        """
        C{/status} shows each route's queue and each backend's connections
        and C{maxconn=}; C{/metrics} has the queue's gauges, counters and
        wait histogram, and the backends' limits.
        """
        await self.start("queue_timeout = 30", maxconn=1)
        endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        listening = await endpoint.listen(adminSite(self.relay))
        self.addCleanup(listening.stopListening)
        admin = listening.getHost().port
        first = await self.connect()
        waiting = inThread(client, self.port, "/chat", legacy=True)
        await self.queued(1)
        self.clock.advance(2)
        answer = await inThread(fetch, admin, "/status")
        [route] = answer.json()["routes"]
        self.assertEqual(
            route["queue"],
            {
                "current": 1,
                "max": 1,
                "total": 1,
                "timeouts": 0,
                "abandoned": 0,
                "timeout": 30,
                "wait": {"count": 0, "sum": 0},
            },
        )
        [backend] = route["backends"]
        self.assertEqual(
            (backend["connections"], backend["connecting"], backend["maxconn"]),
            (1, 0, 1),
        )
        await inThread(first.close)
        c = await waiting
        self.addCleanup(inThread, c.close)
        answer = await inThread(fetch, admin, "/metrics")
        values = samples(answer.body.decode())
        route_, both = labels(route="chat"), labels(route="chat", backend="b")
        self.assertEqual(values["wsrelay_route_queue_current", route_], 0)
        self.assertEqual(values["wsrelay_route_queue_max", route_], 1)
        self.assertEqual(values["wsrelay_route_queued_total", route_], 1)
        self.assertEqual(values["wsrelay_route_queue_timeouts_total", route_], 0)
        self.assertEqual(values["wsrelay_route_queue_wait_seconds_count", route_], 1)
        self.assertEqual(values["wsrelay_route_queue_wait_seconds_sum", route_], 2)
        le = labels(route="chat", le="2.5")
        self.assertEqual(values["wsrelay_route_queue_wait_seconds_bucket", le], 1)
        self.assertEqual(values["wsrelay_backend_max_connections", both], 1)
        self.assertEqual(values["wsrelay_backend_open_connections", both], 1)

    async def test_raised(self) -> None:
        """
        A reload that raises C{maxconn=} serves the waiting clients at once.
        """
        await self.start("queue_timeout = 30")
        await self.connect()
        waiting = inThread(client, self.port, "/chat", legacy=True)
        await self.queued(1)
        self.rewrite(2)
        await self.relay.operations.reload()
        c = await waiting
        self.addCleanup(inThread, c.close)
        self.assertEqual(self.route.backends[0].connections, 2)

    async def test_kept(self) -> None:
        """
        After a reload that keeps the limit, the waiting client is on the
        new route's queue, and the next slot that frees is its.
        """
        await self.start("queue_timeout = 30")
        first = await self.connect()
        old = self.route
        waiting = inThread(client, self.port, "/chat", legacy=True)
        await self.queued(1)
        self.rewrite(1)
        await self.relay.operations.reload()
        self.assertIsNot(self.route, old)
        self.assertIs(self.route.queue, old.queue)
        self.assertEqual(len(self.route.queue), 1)
        await inThread(first.close)
        c = await waiting
        self.addCleanup(inThread, c.close)

    async def test_fanoutSource(self) -> None:
        """
        A fan-out channel's source connection counts against its backend's
        C{maxconn=}: another channel's source waits in the queue, and gets
        the slot when the first channel closes.
        """
        b = startBackend(self)
        self.clock = Clock()
        self.relay, self.port = await startRelay(
            self,
            "[relay]\n[route:feed]\npath = /feed\nmode = fanout\nchannel = path\n"
            f"connect = lazy\nlinger = 1\nqueue_timeout = 30\n"
            f"backends = {b.url} maxconn=1\n",
            self.clock,
        )
        route = self.relay.routes.byName("feed")
        assert route is not None
        a = await inThread(client, self.port, "/feed/a", legacy=True)
        await waitFor(lambda: _connected(self.relay, "/a"))
        other = await inThread(client, self.port, "/feed/b", legacy=True)
        self.addCleanup(inThread, other.close)
        await waitFor(lambda: len(route.queue) == 1)
        self.assertEqual(route.backends[0].connections, 1)
        self.assertFalse(_connected(self.relay, "/b"))
        await inThread(a.close)
        channel = self.relay.registry.channels[("feed", "/a")]
        await waitFor(lambda: not channel.members)
        self.assertEqual(len(route.queue), 1)
        # The lazy channel's linger ends: its source closes.
        self.clock.advance(1)
        await waitFor(lambda: _connected(self.relay, "/b"))
        self.assertEqual(route.backends[0].connections, 1)
