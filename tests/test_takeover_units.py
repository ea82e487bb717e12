"""
The parts of a takeover one at a time: listening sockets the relay holds
(L{wsrelay.listening}), the control socket (L{wsrelay.control}) and the
receiving side (L{wsrelay.takeover}), on real loopback and Unix sockets.
"""

from __future__ import annotations

import os
import socket
import stat
import tempfile
from dataclasses import replace
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IReactorSSL, IReactorTCP
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from tests.support import TIMEOUT
from tests.support.relays import relayFor
from wsrelay.config import ConfigError
from wsrelay.control import (
    ControlFactory,
    ControlSocketService,
    checkControlSocket,
    relayAnswers,
)
from wsrelay.listening import Listener, ListeningSockets, openSockets
from wsrelay.proxyprotocol import listenerEndpoint
from wsrelay.routes import readConfig
from wsrelay.takeover import Handover, TakeoverError, receive

LOOPBACK = "tcp:0:interface=127.0.0.1"


def acceptsOn(s: socket.socket) -> bool:
    """
    @return: Whether a client's connection to listening socket C{s} is
        accepted on it.
    """
    try:
        client = socket.create_connection(s.getsockname()[:2], TIMEOUT)
    except ConnectionRefusedError:
        return False
    try:
        s.settimeout(TIMEOUT)
        accepted, _ = s.accept()
        accepted.close()
        return True
    except OSError:
        return False
    finally:
        client.close()


class ListeningSocketsTests(TestCase):
    """
    L{ListeningSockets} is what listeners' endpoints listen with when the
    relay may hand its sockets on: it opens them (one per worker, with
    C{SO_REUSEPORT} when there are several) and serves them adopted.
    """

    def listen(self, sockets: ListeningSockets) -> Deferred[IListeningPort]:
        """
        Listen on a loopback port with C{sockets}, as a listener does, and
        stop listening and close the sockets at the end of the test.
        """
        self.addCleanup(sockets.close)
        d = listenerEndpoint(sockets, LOOPBACK).listen(Factory.forProtocol(Protocol))

        def listening(port: IListeningPort) -> IListeningPort:
            self.addCleanup(port.stopListening)
            return port

        return d.addCallback(listening)

    def test_interfaces(self) -> None:
        """
        L{ListeningSockets} provides L{IReactorTCP} and L{IReactorSSL}, and
        does not pass for the rest of a reactor.
        """
        sockets = ListeningSockets(reactor, LOOPBACK)
        self.assertTrue(verifyObject(IReactorTCP, sockets))
        self.assertTrue(verifyObject(IReactorSSL, sockets))
        for name in ("callLater", "callWhenRunning", "stop", "spawnProcess"):
            self.assertFalse(hasattr(sockets, name), name)

    async def test_workers(self) -> None:
        """
        For two workers, two sockets share the port with C{SO_REUSEPORT};
        worker 0 serves the first, and a client connects.
        """
        sockets = ListeningSockets(reactor, LOOPBACK, workers=2)
        port = await self.listen(sockets)
        number = port.getHost().port  # type: ignore[attr-defined]
        self.assertEqual(len(sockets.sockets), 2)
        for s in sockets.sockets:
            self.assertEqual(s.getsockname()[1], number)
            self.assertEqual(s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT), 1)
        self.assertEqual(sockets.forWorker(0), sockets.sockets[:1])
        self.assertEqual(sockets.forWorker(1), sockets.sockets[1:])
        client = TCP4ClientEndpoint(reactor, "127.0.0.1", number)
        connected = await client.connect(Factory.forProtocol(Protocol))
        self.assertIsNotNone(connected.transport)
        connected.transport.loseConnection()  # type: ignore[union-attr]

    async def test_cover(self) -> None:
        """
        While worker 1 is not running, worker 0 serves its socket too
        (L{ListeningSockets.cover}): every connection is accepted here,
        whichever socket the kernel gives it to; L{ListeningSockets.uncover}
        stops that, and the socket listens on.
        """
        sockets = ListeningSockets(reactor, LOOPBACK, workers=2)
        accepted: list[object] = []

        class Counted(Protocol):
            def connectionMade(self) -> None:
                accepted.append(self)

        d = listenerEndpoint(sockets, LOOPBACK).listen(Factory.forProtocol(Counted))
        port = await d
        self.addCleanup(sockets.close)
        self.addCleanup(port.stopListening)
        sockets.cover(1)
        number = port.getHost().port  # type: ignore[attr-defined]
        clients = [socket.create_connection(("127.0.0.1", number)) for _ in range(20)]
        for c in clients:
            self.addCleanup(c.close)
        await _until(lambda: len(accepted) == 20)
        sockets.uncover(1)
        listening = sockets.sockets[1].getsockopt(
            socket.SOL_SOCKET, socket.SO_ACCEPTCONN
        )
        self.assertEqual(listening, 1)

    async def test_closedPortListensOn(self) -> None:
        """
        When the port serving an adopted socket stops, the socket listens
        on for whoever holds another descriptor of it (here the
        L{ListeningSockets}; in a takeover, the new relay): it is not shut
        down, and a connection made then is accepted.
        """
        sockets = ListeningSockets(reactor, LOOPBACK)
        port = await self.listen(sockets)
        await port.stopListening()
        (s,) = sockets.sockets
        self.assertTrue(acceptsOn(s))

    async def test_twistedPortShutsDown(self) -> None:
        """
        The trap that L{ListeningSockets} avoids: a port Twisted opened
        itself calls C{shutdown()} as it stops, and the socket stops
        listening for another holder of it too: connections are refused.
        """
        port = reactor.listenTCP(
            0, Factory.forProtocol(Protocol), interface="127.0.0.1"
        )
        other = socket.socket(fileno=os.dup(port.fileno()))
        self.addCleanup(other.close)
        await port.stopListening()
        self.assertFalse(acceptsOn(other))

    async def test_cannotListen(self) -> None:
        """
        A listener whose port is taken stops the relay with its real
        reactor, with Twisted's L{CannotListenError}.
        """
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        core = FakeCore()
        listener = Listener(
            core,
            f"tcp:{port}:interface=127.0.0.1",
            Factory.forProtocol(Protocol),
            ListeningSockets(reactor, f"tcp:{port}:interface=127.0.0.1"),
        )
        listener.startService()
        self.addCleanup(listener.stopService)
        with self.assertRaises(CannotListenError):
            await listener.listening
        self.assertEqual(core.whenRunning, [core.stop])


class FakeCore:
    """
    The reactor a L{Listener} stops when it cannot listen.

    @ivar whenRunning: What was given to C{callWhenRunning}.
    """

    def __init__(self) -> None:
        self.whenRunning: list[Any] = []

    def callWhenRunning(self, f: Any) -> None:
        self.whenRunning.append(f)

    def stop(self) -> None:
        """
        Never called here: L{callWhenRunning} only records.
        """


class AssignmentTests(SynchronousTestCase):
    """
    Which of a listener's sockets each worker serves, whatever the number
    of sockets taken over.
    """

    def sockets(self, count: int, workers: int) -> ListeningSockets:
        held = ListeningSockets(reactor, LOOPBACK, workers=workers)
        held.sockets = openSockets(socket.AF_INET, "127.0.0.1", 0, 5, count)
        self.addCleanup(held.close)
        return held

    def test_asMany(self) -> None:
        """
        Worker I serves socket I.
        """
        held = self.sockets(3, 3)
        for index in range(3):
            self.assertEqual(held.forWorker(index), [held.sockets[index]])

    def test_fewerWorkers(self) -> None:
        """
        With more sockets than workers (a relay of fewer workers took
        over), worker 0 also serves those beyond the last worker: each
        socket is served.
        """
        held = self.sockets(4, 2)
        self.assertEqual(held.forWorker(0), [held.sockets[0], *held.sockets[2:]])
        self.assertEqual(held.forWorker(1), [held.sockets[1]])

    def test_moreWorkers(self) -> None:
        """
        With fewer sockets than workers, workers share them.
        """
        held = self.sockets(2, 3)
        self.assertEqual(held.forWorker(2), [held.sockets[0]])


class HandoverTests(SynchronousTestCase):
    """
    L{Handover.claim} matches a new listener to the old relay's sockets by
    endpoint string, or else by address.
    """

    def setUp(self) -> None:
        self.sockets = openSockets(socket.AF_INET, "127.0.0.1", 0, 5, 1)
        self.addCleanup(self.sockets[0].close)
        self.port = self.sockets[0].getsockname()[1]
        self.handover = Handover(1, {f"tcp:{self.port}": self.sockets})

    def test_description(self) -> None:
        """
        The same endpoint string takes the sockets, once.
        """
        claim = self.handover.claim
        self.assertIs(claim(f"tcp:{self.port}", socket.AF_INET, "", 0), self.sockets)
        self.assertIsNone(claim(f"tcp:{self.port}", socket.AF_INET, "", 0))

    def test_address(self) -> None:
        """
        Another endpoint string on the same address takes the sockets; one
        on another interface, family or port does not.
        """
        claim = self.handover.claim
        self.assertIsNone(claim("x", socket.AF_INET, "127.0.0.2", self.port))
        self.assertIsNone(claim("x", socket.AF_INET6, "::1", self.port))
        self.assertIsNone(claim("x", socket.AF_INET, "127.0.0.1", 0))
        self.assertIs(claim("x", socket.AF_INET, "127.0.0.1", self.port), self.sockets)


class ConfigTests(SynchronousTestCase):
    """
    With C{control_socket}, every listener must be one whose socket can be
    handed over.
    """

    def test_unixListener(self) -> None:
        """
        A C{unix:} listener is refused in one line naming the key.
        """
        directory = tempfile.mkdtemp()
        path = os.path.join(directory, "relay.ini")
        with open(path, "w") as f:
            f.write(
                "[relay]\nlisten = unix:relay.sock\ncontrol_socket = control.sock\n"
                "[route:a]\npath = /\nbackends = ws://127.0.0.1:1/\n"
            )
        with self.assertRaises(ConfigError) as e:
            readConfig(path)
        self.assertEqual(
            str(e.exception),
            f"{path}: [relay] control_socket: control_socket needs tcp:, tcp6: or"
            " ssl: listeners; 'unix:relay.sock' cannot be handed over",
        )


class HandOffTests(SynchronousTestCase):
    """
    A relay that handed off (L{RelayService.handOff}) lets the handshakes
    under way finish before it closes its clients as SIGTERM does.
    """

    def test_waitsForHandshakes(self) -> None:
        """
        The stop waits while a client has not had its 101, and closes once
        none is left; a relay that did not hand off does not wait.
        """
        relay, clock = relayFor("")
        relay.startService()
        relay.admission.clientConnections = 1
        relay.handOff()
        d = relay.stopService()
        clock.advance(1)
        self.assertNoResult(d)
        relay.admission.clientConnections = 0
        clock.advance(0.01)
        self.successResultOf(d)
        other, _ = relayFor("")
        other.startService()
        other.admission.clientConnections = 1
        self.successResultOf(other.stopService())

    def test_handshakeTimeout(self) -> None:
        """
        The wait ends after C{handshake_timeout}.
        """
        relay, clock = relayFor("")
        relay.operations.config = replace(relay.config, handshakeTimeout=3)
        relay.startService()
        relay.admission.clientConnections = 1
        relay.handOff()
        d = relay.stopService()
        clock.advance(2.9)
        self.assertNoResult(d)
        clock.advance(0.2)
        self.successResultOf(d)


class ControlSocketTests(TestCase):
    """
    The control socket: mode 0600, a stale file replaced, a live relay
    refused, and the sockets handed over with their listeners' strings.
    """

    def setUp(self) -> None:
        self.path = os.path.join(tempfile.mkdtemp(), "control.sock")
        self.sockets = [
            *openSockets(socket.AF_INET, "127.0.0.1", 0, 5, 1),
            *openSockets(socket.AF_INET, "127.0.0.1", 0, 5, 1),
        ]
        for s in self.sockets:
            self.addCleanup(s.close)
        self.stopped: list[bool] = []
        factory = ControlFactory(
            lambda: [("tcp:0", self.sockets)], lambda: self.stopped.append(True)
        )
        self.service = ControlSocketService(reactor, self.path, factory)

    async def test_stale(self) -> None:
        """
        A socket file nothing answers on is replaced; the new one has mode
        0600 and answers; it is removed when the service stops.
        """
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(self.path)
        stale.close()
        self.assertEqual(checkControlSocket(self.path), None)
        self.service.startService()
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        self.assertTrue(relayAnswers(self.path))
        self.assertIn("a relay is running", checkControlSocket(self.path) or "")
        await self.service.stopService()
        self.assertFalse(os.path.exists(self.path))

    def test_notSocket(self) -> None:
        """
        A file that is not a socket is not replaced: one line says so.
        """
        with open(self.path, "w"):
            pass
        self.assertEqual(
            checkControlSocket(self.path),
            f"control socket {self.path} exists and is not a socket",
        )

    async def test_receive(self) -> None:
        """
        L{receive} gets every socket, by listener, each a descriptor of the
        same listening socket; C{stop} stops the relay, whose file is left
        in place when another relay put its own there.
        """
        self.service.startService()
        handover = await _inThread(receive, self.path)
        (sockets,) = handover.listeners.values()
        self.addCleanup(handover.abandon)
        self.assertEqual(list(handover.listeners), ["tcp:0"])
        self.assertEqual(
            [s.getsockname() for s in sockets], [s.getsockname() for s in self.sockets]
        )
        self.assertTrue(acceptsOn(sockets[1]))
        os.unlink(self.path)
        other = socket.socket(socket.AF_UNIX)
        self.addCleanup(other.close)
        other.bind(self.path)
        handover.stopOld()
        await _until(lambda: self.stopped == [True])
        await self.service.stopService()
        self.assertTrue(os.path.exists(self.path))

    def test_nobody(self) -> None:
        """
        L{receive} with nothing on the control socket fails with one line.
        """
        with self.assertRaises(TakeoverError) as e:
            receive(self.path, 1)
        self.assertEqual(str(e.exception), "No such file or directory")


def _inThread(f: Any, *args: Any) -> Deferred[Any]:
    from twisted.internet.threads import deferToThread

    return deferToThread(f, *args)


async def _until(predicate: Any) -> None:
    from tests.support.waiting import waitFor

    await waitFor(predicate)
