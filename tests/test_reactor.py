"""
wsrelay's reactor (L{wsrelay.reactor}): events without a log context, the
error handling Twisted's epoll reactor has, and C{twistd wsrelay}
installing it unless C{-r} chose another.
"""

from __future__ import annotations

import select
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from twisted.application.reactors import IReactorInstaller
from twisted.internet import error, utils
from twisted.internet.abstract import FileDescriptor
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.main import CONNECTION_DONE
from twisted.logger import LogEvent, globalLogPublisher
from twisted.plugin import getPlugins
from twisted.python import context, log
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from tests.support import TIMEOUT
from wsrelay import reactor as relayreactor
from wsrelay import tap
from wsrelay.reactor import RelayReactor, logPrefixOf

#: The log prefix of an L{End}.
PREFIX = "End,7,test"


class End(FileDescriptor):
    """
    One end of a socket pair, watched by a reactor under test: it counts
    how often the reactor asks for its log prefix.

    @ivar prefixes: How many times C{logPrefix} was called.
    @ivar received: What each read returned.
    @ivar lost: The reasons given to C{connectionLost}.
    @ivar gone: Whether C{fileno} answers -1 (the descriptor went away).
    """

    def __init__(
        self,
        reactor: Any,
        sock: socket.socket,
        onRead: Callable[[bytes], object] | None = None,
        onLost: Callable[[Failure], object] | None = None,
    ) -> None:
        super().__init__(reactor)
        self.socket = sock
        self.prefixes = 0
        self.received: list[bytes] = []
        self.lost: list[Failure] = []
        self.writes = 0
        self.gone = False
        self._onRead = onRead
        self._onLost = onLost

    def fileno(self) -> int:
        """
        @return: The socket's descriptor, or -1 once it went away.
        """
        return -1 if self.gone else self.socket.fileno()

    def logPrefix(self) -> str:
        """
        @return: L{PREFIX}, counted.
        """
        self.prefixes += 1
        return PREFIX

    def doRead(self) -> object:
        """
        Read what the peer sent; L{CONNECTION_DONE} at its end.
        """
        data = self.socket.recv(4096)
        if not data:
            return CONNECTION_DONE
        self.received.append(data)
        return self._onRead(data) if self._onRead is not None else None

    def doWrite(self) -> None:
        """
        Count a write event and stop asking for more.
        """
        self.writes += 1
        self.stopWriting()

    def connectionLost(self, reason: Failure) -> None:
        """
        Note the reason, stop watching and close the socket.
        """
        self.lost.append(reason)
        super().connectionLost(reason)
        self.socket.close()
        if self._onLost is not None:
            self._onLost(reason)


class Driving(SynchronousTestCase):
    """
    Tests that drive a reactor of their own (L{reactorType}) turn by turn.
    """

    reactorType: Callable[[], Any] = RelayReactor

    def newReactor(self) -> Any:
        """
        @return: A new reactor of L{reactorType} (not the global one),
            cleaned up after the test.
        """
        default = context.defaultContextDict[log.ILogContext]
        reactor = self.reactorType()

        def cleanUp() -> None:
            context.setDefault(log.ILogContext, default)
            for reader in reactor._internalReaders:
                reactor.removeReader(reader)
                reader.connectionLost(None)
            reactor._internalReaders.clear()
            reactor._poller.close()

        self.addCleanup(cleanUp)
        return reactor

    def pair(self, reactor: Any, **behaviour: Any) -> tuple[End, socket.socket]:
        """
        @return: An L{End} that C{reactor} reads from, and its peer socket.
        """
        mine, peer = socket.socketpair()
        self.addCleanup(peer.close)
        self.addCleanup(mine.close)
        mine.setblocking(False)
        end = End(reactor, mine, **behaviour)
        end.startReading()
        return end, peer

    def turn(self, reactor: Any, done: Callable[[], bool]) -> None:
        """
        Let C{reactor} handle events until C{done()} holds.

        @raise AssertionError: If it does not within L{TIMEOUT} seconds.
        """
        deadline = time.monotonic() + TIMEOUT
        while not done():
            if time.monotonic() > deadline:
                raise AssertionError(f"not done within {TIMEOUT}s")
            reactor.doIteration(0.05)

    def logged(self) -> list[LogEvent]:
        """
        @return: The events logged from now until the test's end.
        """
        events: list[LogEvent] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        return events


class EventTests(Driving):
    """
    L{RelayReactor} handles each ready descriptor as L{EPollReactor} does,
    less the log context: reads, writes, hang-ups and exceptions.
    """

    def test_readWithoutContext(self) -> None:
        """
        A read event reaches C{doRead} without the reactor asking for the
        descriptor's log prefix.
        """
        reactor = self.newReactor()
        end, peer = self.pair(reactor)
        peer.send(b"hello")
        self.turn(reactor, lambda: bool(end.received))
        self.assertEqual((end.received, end.prefixes), ([b"hello"], 0))

    def test_readInline(self) -> None:
        """
        A read event alone, or a write event alone, is handled inline, not
        through C{_doReadOrWrite}; an event of both goes through it.
        """
        reactor = self.newReactor()
        handled: list[int] = []
        handle = reactor._doReadOrWrite

        def recording(selectable: Any, fd: int, event: int) -> None:
            handled.append(event)
            handle(selectable, fd, event)

        reactor._doReadOrWrite = recording
        end, peer = self.pair(reactor)
        peer.send(b"hello")
        self.turn(reactor, lambda: bool(end.received))
        self.assertEqual((end.received, handled), ([b"hello"], []))
        end.startWriting()
        self.turn(reactor, lambda: end.writes > 0)
        self.assertEqual((end.writes, handled), (1, []))
        peer.send(b"again")
        end.startWriting()
        self.turn(reactor, lambda: end.writes > 1)
        self.assertEqual(end.received, [b"hello", b"again"])
        self.assertEqual(handled, [select.EPOLLIN | select.EPOLLOUT])

    def test_overriddenHandling(self) -> None:
        """
        A subclass that overrides C{_doReadOrWrite} handles every event
        with it, reads alone too.
        """
        handled: list[int] = []

        class Handling(RelayReactor):
            def _doReadOrWrite(self, selectable: Any, fd: int, event: int) -> None:
                handled.append(event)
                super()._doReadOrWrite(selectable, fd, event)

        self.reactorType = Handling
        reactor = self.newReactor()
        end, peer = self.pair(reactor)
        peer.send(b"hello")
        self.turn(reactor, lambda: bool(end.received))
        self.assertEqual((end.received, handled), ([b"hello"], [select.EPOLLIN]))

    def test_legacyLogDuringEvent(self) -> None:
        """
        A message logged with the legacy L{log.msg} while an event is handled
        has the descriptor's log prefix as its C{system}, as under
        L{EPollReactor}; one logged from another thread meanwhile, or after
        the event, has C{"-"}.
        """
        reactor = self.newReactor()
        events = self.logged()

        def logs(data: bytes) -> None:
            log.msg("during")
            other = threading.Thread(target=log.msg, args=("other thread",))
            other.start()
            other.join()

        end, peer = self.pair(reactor, onRead=logs)
        peer.send(b"x")
        self.turn(reactor, lambda: bool(end.received))
        log.msg("after")
        systems = {e["log_text"]: e["log_system"] for e in events if "log_text" in e}
        self.assertEqual(systems, {"during": PREFIX, "other thread": "-", "after": "-"})
        self.assertEqual(end.prefixes, 1)

    def test_writeWithoutContext(self) -> None:
        """
        A write event reaches C{doWrite} without the log prefix either.
        """
        reactor = self.newReactor()
        end, peer = self.pair(reactor)
        end.startWriting()
        self.turn(reactor, lambda: end.writes > 0)
        self.assertEqual((end.writes, end.prefixes), (1, 0))

    def test_hangUp(self) -> None:
        """
        When the peer closes, the descriptor is disconnected with
        L{error.ConnectionDone} and no longer watched.
        """
        reactor = self.newReactor()
        end, peer = self.pair(reactor)
        peer.close()
        self.turn(reactor, lambda: bool(end.lost))
        self.assertEqual(len(end.lost), 1)
        end.lost[0].trap(error.ConnectionDone)
        self.assertNotIn(end, reactor.getReaders())

    def test_descriptorGone(self) -> None:
        """
        A descriptor whose C{fileno} answers -1 is disconnected with
        L{error.ConnectionFdescWentAway} instead of being read.
        """
        reactor = self.newReactor()
        end, peer = self.pair(reactor)
        peer.send(b"x")
        end.gone = True
        self.turn(reactor, lambda: bool(end.lost))
        end.lost[0].trap(error.ConnectionFdescWentAway)
        self.assertEqual(end.received, [])

    def test_failingRead(self) -> None:
        """
        An exception from C{doRead} is logged once, with the descriptor's
        log prefix as its C{system}, and the descriptor is disconnected with
        it as the reason.
        """
        reactor = self.newReactor()
        events = self.logged()

        def fail(data: bytes) -> None:
            raise ValueError("broken protocol")

        end, peer = self.pair(reactor, onRead=fail)
        peer.send(b"x")
        self.turn(reactor, lambda: bool(end.lost))
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertEqual(len(end.lost), 1)
        end.lost[0].trap(ValueError)
        failures = [e for e in events if e.get("isError")]
        self.assertEqual([e.get("log_system") for e in failures], [PREFIX])
        self.assertNotIn(end, reactor.getReaders())

    def test_failingDisconnect(self) -> None:
        """
        An exception from C{connectionLost} is logged with the
        descriptor's log prefix, and the other descriptors ready in the
        same turn are still handled.
        """
        reactor = self.newReactor()
        events = self.logged()

        def fail(reason: Failure) -> None:
            raise RuntimeError("broken connectionLost")

        first, firstPeer = self.pair(reactor, onLost=fail)
        second, secondPeer = self.pair(reactor)
        firstPeer.close()
        secondPeer.send(b"still served")
        self.turn(reactor, lambda: bool(first.lost) and bool(second.received))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(second.received, [b"still served"])
        failures = [e for e in events if e.get("isError")]
        self.assertEqual([e.get("log_system") for e in failures], [PREFIX])


class EPollControlTests(Driving):
    """
    What L{RelayReactor} leaves out, shown on Twisted's L{EPollReactor}: it
    asks for the log prefix and pushes a context at every event (so that
    L{EventTests.test_readWithoutContext} would fail on it).
    """

    reactorType = EPollReactor

    def test_contextPerEvent(self) -> None:
        """
        L{EPollReactor} asks for the log prefix of a descriptor at each of
        its events, whether anything is logged or not.
        """
        reactor = self.newReactor()
        end, peer = self.pair(reactor)
        peer.send(b"hello")
        self.turn(reactor, lambda: bool(end.received))
        self.assertEqual((end.received, end.prefixes), ([b"hello"], 1))


class InstallTests(SynchronousTestCase):
    """
    The reactors are twistd plugins, and C{twistd wsrelay} installs
    wsrelay's unless one is installed already.
    """

    def test_plugins(self) -> None:
        """
        C{twistd -r wsrelay} finds its installer in wsrelay's dropin.
        """
        installers = {p.shortName: p for p in getPlugins(IReactorInstaller)}
        self.assertTrue(verifyObject(IReactorInstaller, installers["wsrelay"]))
        self.assertEqual(installers["wsrelay"].moduleName, "wsrelay.reactor")  # type: ignore[attr-defined]

    def test_defaultWhenNoneInstalled(self) -> None:
        """
        L{tap.installReactor} installs L{RelayReactor} when no reactor is
        installed yet, on Linux.
        """
        installed: list[bool] = []
        self.patch(relayreactor, "install", lambda: installed.append(True))
        self.patch(tap.platform, "isLinux", lambda: True)
        self.assertEqual(tap.installReactor(installed=False), "wsrelay")
        self.assertEqual(installed, [True])

    def test_chosenStays(self) -> None:
        """
        L{tap.installReactor} leaves a reactor installed already (C{twistd -r})
        in place; by default it looks for C{twisted.internet.reactor}.
        """
        installed: list[bool] = []
        self.patch(relayreactor, "install", lambda: installed.append(True))
        self.assertIsNone(tap.installReactor(installed=True))
        self.assertIn("twisted.internet.reactor", sys.modules)
        self.assertIsNone(tap.installReactor())
        self.assertEqual(installed, [])

    def test_notLinux(self) -> None:
        """
        Without epoll (not Linux), the platform's default reactor stays.
        """
        installed: list[bool] = []
        self.patch(relayreactor, "install", lambda: installed.append(True))
        self.patch(tap.platform, "isLinux", lambda: False)
        self.assertIsNone(tap.installReactor(installed=False))
        self.assertEqual(installed, [])

    def test_logPrefixOf(self) -> None:
        """
        L{logPrefixOf} answers a descriptor's prefix, or Twisted's words
        for a C{logPrefix} that raises.
        """

        class Buggy:
            def logPrefix(self) -> str:
                raise ValueError()

        self.assertEqual(logPrefixOf(End(None, socket.socket())), PREFIX)
        self.assertEqual(logPrefixOf(Buggy()), "(buggy logPrefix method)")


#: A fresh interpreter that parses a twistd command line as twistd does,
#: then prints the global reactor's class.
PARSE = """
import sys
from twisted.scripts._twistd_unix import ServerOptions
ServerOptions().parseOptions(sys.argv[1:])
from twisted.internet import reactor
print(type(reactor).__name__)
"""


class CommandLineTests(TestCase):
    """
    Which reactor C{twistd ... wsrelay} runs on, in a fresh interpreter.
    """

    async def reactorOf(self, *args: str) -> str:
        """
        @return: What L{PARSE} prints for C{twistd ARGS wsrelay --config
            conf/relay.ini}.
        """
        from pathlib import Path

        config = Path(__file__).parent.parent / "conf" / "relay.ini"
        argv = ["-c", PARSE, *args, "wsrelay", "--config", str(config)]
        out, err, code = await utils.getProcessOutputAndValue(sys.executable, argv)
        self.assertEqual((code, err), (0, b""))
        return out.decode().strip()

    async def test_default(self) -> None:
        """
        Without C{-r}, C{twistd wsrelay} runs on L{RelayReactor}.
        """
        self.assertEqual(await self.reactorOf(), "RelayReactor")

    async def test_chosen(self) -> None:
        """
        C{twistd -r epoll wsrelay} runs on Twisted's epoll reactor.
        """
        self.assertEqual(await self.reactorOf("-r", "epoll"), "EPollReactor")

    async def test_withoutEpoll(self) -> None:
        """
        Where there is no epoll (not Linux), C{wsrelay.tap} still imports,
        and its options keep Twisted's default reactor.
        """
        code = (
            "import select, sys; del select.epoll; "
            "from twisted.python.runtime import platform; "
            "platform.isLinux = lambda: False; "
            "from wsrelay import tap; "
            "print(tap.installReactor(), 'wsrelay.reactor' in sys.modules)"
        )
        out, err, status = await utils.getProcessOutputAndValue(
            sys.executable, ["-c", code]
        )
        self.assertEqual((out, err, status), (b"None False\n", b"", 0))
