# -*- test-case-name: tests.test_collaborators -*-
"""
Tests for how the relay's parts are wired: a session, a channel or a
client's protocol gets the few collaborators it uses, never the relay
service (L{wsrelay.service.RelayService}); the listeners are Twisted's
services.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from functools import partial
from types import FunctionType, MethodType, ModuleType
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.support.relays import chatSession
from wsrelay.config import parseConfig
from wsrelay.fanout import FanoutSession
from wsrelay.service import Listener, RelayService

_ATOMS = (type, ModuleType, str, bytes, bytearray, int, float, bool, type(None))


def _children(obj: Any) -> Iterator[tuple[str, Any]]:
    """
    @return: What C{obj} holds, each with a name for the path: container
        items, a bound method's object, a closure's cells, an instance's
        attributes (not a function's module globals).
    """
    if isinstance(obj, dict):
        for key, value in list(obj.items()):
            yield f"[{key!r}]", value
            yield "<key>", key
    elif isinstance(obj, (list, tuple, set, frozenset, deque)):
        for i, value in enumerate(list(obj)):
            yield f"[{i}]", value
    elif isinstance(obj, MethodType):
        yield ".__self__", obj.__self__
        yield ".__func__", obj.__func__
    elif isinstance(obj, FunctionType):
        for cell in obj.__closure__ or ():
            try:
                yield ".<cell>", cell.cell_contents
            except ValueError:
                pass
    elif isinstance(obj, partial):
        yield ".func", obj.func
        for i, value in enumerate(obj.args):
            yield f".args[{i}]", value
        for key, value in obj.keywords.items():
            yield f".keywords[{key!r}]", value
    else:
        for name, value in list(getattr(obj, "__dict__", {}).items()):
            yield "." + name, value
        for cls in type(obj).__mro__:
            slots = cls.__dict__.get("__slots__", ())
            for name in (slots,) if isinstance(slots, str) else slots:
                if name != "__dict__" and hasattr(obj, name):
                    yield "." + name, getattr(obj, name)


def pathTo(start: Any, target: Any, limit: int = 100_000) -> str | None:
    """
    @return: How C{start} holds C{target} through attributes, containers,
        bound methods and closures (as C{.a.b[0]}), or L{None} when it does
        not.  Reactors, clocks and loggers are not followed: they hold
        the whole process (a logger, the events logged so far).
    """
    seen: set[int] = set()
    queue: deque[tuple[Any, str]] = deque([(start, "")])
    while queue and len(seen) < limit:
        obj, path = queue.popleft()
        if obj is target:
            return path
        if id(obj) in seen or isinstance(obj, _ATOMS):
            continue
        if isinstance(obj, Logger) or (
            IReactorTime.providedBy(obj) and obj is not start
        ):
            continue
        seen.add(id(obj))
        for name, child in _children(obj):
            queue.append((child, path + name))
    return None


class PathToTests(SynchronousTestCase):
    """
    L{pathTo} finds what an object holds.
    """

    def test_found(self) -> None:
        """
        A target held through an attribute, a list and a closure is found,
        with its path; one not held is not.
        """

        class Holder:
            pass

        target, other = object(), object()
        holder = Holder()
        holder.items = [1, (lambda: target)]  # type: ignore[attr-defined]
        self.assertEqual(pathTo(holder, target), ".items[1].<cell>")
        self.assertIsNone(pathTo(holder, other))

    def test_slotsAndPartials(self) -> None:
        """
        A target held through a slot a base class declares, or through a
        L{partial}'s arguments, is found (as the pipe's keepalive tick and
        the L{wsrelay.ws.writes.DirectWriter} slots of a direction hold
        theirs).
        """

        class Base:
            __slots__ = ("held",)

        class Derived(Base):
            __slots__ = ("other",)

        target = object()
        derived = Derived()
        derived.held = target
        self.assertEqual(pathTo(derived, target), ".held")
        self.assertEqual(pathTo(partial(print, 1, target), target), ".args[1]")
        self.assertEqual(pathTo(partial(print, end=target), target), ".keywords['end']")


class NoRelayTests(TestCase):
    """
    Sessions, channels and client protocols do not hold the relay service.
    """

    def assertHoldsNoRelay(self, obj: Any, relay: RelayService) -> None:
        """
        Fail, naming the path, when C{obj} holds C{relay}.
        """
        path = pathTo(obj, relay)
        if path is not None:
            self.fail(f"{type(obj).__name__} holds the relay service: {path}")

    async def test_proxySession(self) -> None:
        """
        A proxied connection's session, both its legs and the client
        listener's factory hold no reference to the relay service.
        """
        relay, session, _ = await chatSession(self)
        self.assertHoldsNoRelay(session, relay)
        self.assertHoldsNoRelay(session.frontend, relay)
        self.assertHoldsNoRelay(session.upstream, relay)
        self.assertHoldsNoRelay(relay.frontendFactory, relay)

    def test_fanout(self) -> None:
        """
        A fan-out channel and a client's membership of it hold no reference
        to the relay service.
        """
        config = parseConfig(
            "[relay]\nlisten = tcp:0\n[route:feed]\npath = /feed\nmode = fanout\n"
            "backends = ws://127.0.0.1:1/src\n",
            "t.ini",
        )
        relay = RelayService(config, MemoryReactorClock())
        (route,) = relay.routes.routes
        frontend = relay.frontendFactory.buildProtocol(None)
        frontend.route, frontend.remainder = route, ""
        relay.sessionFactory.openSession(frontend, route)
        (session,) = relay.sessions
        assert isinstance(session, FanoutSession)
        self.assertHoldsNoRelay(session, relay)
        self.assertHoldsNoRelay(session.channel, relay)


class _BusyReactor(MemoryReactorClock):
    """
    A memory reactor whose ports are all taken, and which records what is
    to run once it runs.
    """

    def __init__(self) -> None:
        super().__init__()
        self.whenRunning: list[Any] = []

    def listenTCP(
        self, port: int, factory: Any, backlog: int = 50, interface: str = ""
    ) -> Any:
        """
        @raise CannotListenError: Always.
        """
        raise CannotListenError(interface, port, OSError(98, "Address in use"))

    def callWhenRunning(self, f: Any, *args: Any, **kwargs: Any) -> None:
        """
        Record C{f}.
        """
        self.whenRunning.append(f)


class ListenerTests(SynchronousTestCase):
    """
    L{Listener} is Twisted's L{StreamServerEndpointService}, which reports
    in one line, and stops the relay, when its port cannot be had.
    """

    def test_twistedService(self) -> None:
        """
        A relay's listeners are L{StreamServerEndpointService}s.
        """
        relay = RelayService(
            parseConfig(
                "[relay]\nlisten = tcp:0\n[route:a]\npath = /\n"
                "backends = ws://127.0.0.1:1/\n",
                "t.ini",
            ),
            MemoryReactorClock(),
        )
        self.assertIsInstance(relay.listeners[0], StreamServerEndpointService)

    def test_busyPort(self) -> None:
        """
        A port that is taken: one critical log line naming the endpoint
        and the error, C{listening} fails, the relay's reactor is asked to
        stop once it runs, and the listener stops cleanly.
        """
        events: list[dict[str, Any]] = []
        self.patch(Listener, "log", Logger(observer=events.append))
        reactor = _BusyReactor()
        listener = Listener(reactor, "tcp:8080:interface=127.0.0.1", object())
        listener.startService()
        self.failureResultOf(listener.listening, CannotListenError)
        self.assertTrue(listener.failed)
        self.assertEqual(len(events), 1)
        line = formatEvent(events[0])
        self.assertIn("cannot listen on tcp:8080:interface=127.0.0.1", line)
        self.assertIn("Address in use", line)
        self.assertEqual(reactor.whenRunning, [reactor.stop])
        self.assertIsNone(self.successResultOf(listener.stopService()))

    def test_listening(self) -> None:
        """
        A listener that listens fires C{listening} with its port, keeps it
        as C{port}, and stops listening when stopped.
        """
        reactor = MemoryReactorClock()
        listener = Listener(reactor, "tcp:0:interface=127.0.0.1", object())
        listener.startService()
        port = self.successResultOf(listener.listening)
        self.assertIs(listener.port, port)
        self.assertEqual(len(reactor.tcpServers), 1)
        self.successResultOf(listener.stopService())
        self.assertIsNone(listener.port)

    def test_stopUnstarted(self) -> None:
        """
        Stopping a listener that never started is a no-op.
        """
        listener = Listener(MemoryReactorClock(), "tcp:0", object())
        self.assertIsNone(self.successResultOf(listener.stopService()))
