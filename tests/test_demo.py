"""
Tests for L{wsrelay.demo}: the echo and ticker backends behind C{make run}.

The tick loop is tested in memory with a L{Clock}; the wire behaviour over
real loopback sockets, with clients from the C{websockets} library (its
synchronous client, run in a thread) to show that another implementation
talks to them.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, cast

from autobahn.websocket.protocol import PreparedMessage
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IAddress, IListeningPort, IReactorTime
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from websockets.sync.client import connect

from wsrelay.demo import (
    SERVER,
    DemoService,
    EchoFactory,
    TickerFactory,
    TickerProtocol,
)

TIMEOUT = 10.0
"""
Seconds a client in a thread waits for any one step before giving up.
"""


@dataclass(frozen=True)
class _DemoConfig:
    """
    A stand-in for C{wsrelay.config.DemoConfig}, with the same attributes.
    """

    echo: str | None = None
    ticker: str | None = None
    tickerInterval: float = 1.0


class _FakeClient:
    """
    Records the prepared messages a L{TickerFactory} sends it.

    @ivar sent: the messages, in order.
    """

    def __init__(self) -> None:
        self.sent: list[PreparedMessage] = []

    def sendPreparedMessage(self, message: PreparedMessage) -> None:
        """
        Record C{message}.

        @param message: a prepared message.
        """
        self.sent.append(message)


def _tick(message: PreparedMessage) -> dict[str, Any]:
    """
    Decode a tick.

    @param message: a prepared text message.
    @return: the decoded JSON object.
    """
    result: dict[str, Any] = json.loads(message.payload)
    return result


def _countPrepared(factory: TickerFactory) -> list[PreparedMessage]:
    """
    Wrap C{factory.prepareMessage} to record every message it prepares.

    @param factory: the factory to instrument.
    @return: the list the prepared messages are appended to.
    """
    prepared: list[PreparedMessage] = []
    original = factory.prepareMessage

    def prepareMessage(
        payload: bytes, isBinary: bool = False, doNotCompress: bool = False
    ) -> PreparedMessage:
        message: PreparedMessage = original(payload, isBinary, doNotCompress)
        prepared.append(message)
        return message

    factory.prepareMessage = prepareMessage  # type: ignore[method-assign]
    return prepared


class TickerLoopTests(SynchronousTestCase):
    """
    The tick loop of L{TickerFactory}, driven by a L{Clock}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.factory = TickerFactory(interval=2.0, reactor=self.clock)
        self.prepared = _countPrepared(self.factory)
        self.clients = [_FakeClient() for _ in range(3)]
        for client in self.clients:
            self.factory.addClient(cast(TickerProtocol, client))

    def test_noTickBeforeFirstInterval(self) -> None:
        """
        Starting the factory sends nothing until one interval has passed.
        """
        self.factory.startFactory()
        self.addCleanup(self.factory.stopFactory)
        self.clock.advance(1.999)
        self.assertEqual(self.prepared, [])
        self.assertEqual([c.sent for c in self.clients], [[], [], []])

    def test_seqIncrementsPerInterval(self) -> None:
        """
        Each interval sends one tick whose C{seq} counts from 1, with a
        float C{ts} of the wall clock, and the type C{"tick"}.
        """
        self.factory.startFactory()
        self.addCleanup(self.factory.stopFactory)
        before = time.time()
        for _ in range(3):
            self.clock.advance(2.0)
        after = time.time()
        ticks = [_tick(m) for m in self.clients[0].sent]
        self.assertEqual([t["seq"] for t in ticks], [1, 2, 3])
        self.assertEqual({t["type"] for t in ticks}, {"tick"})
        for t in ticks:
            self.assertIsInstance(t["ts"], float)
            self.assertTrue(before <= t["ts"] <= after)
        self.assertEqual(self.factory.seq, 3)

    def test_onePreparedMessagePerTick(self) -> None:
        """
        A tick is framed once, as text, and that same prepared message goes
        to every client.
        """
        self.factory.startFactory()
        self.addCleanup(self.factory.stopFactory)
        self.clock.advance(2.0)
        self.clock.advance(2.0)
        self.assertEqual(len(self.prepared), 2)
        self.assertFalse(self.prepared[0].binary)
        for client in self.clients:
            self.assertEqual(len(client.sent), 2)
            self.assertIs(client.sent[0], self.prepared[0])
            self.assertIs(client.sent[1], self.prepared[1])

    def test_removedClientGetsNoTicks(self) -> None:
        """
        A removed client receives no further ticks; removing an unknown
        client is harmless.
        """
        self.factory.startFactory()
        self.addCleanup(self.factory.stopFactory)
        self.clock.advance(2.0)
        self.factory.removeClient(cast(TickerProtocol, self.clients[0]))
        self.factory.removeClient(cast(TickerProtocol, _FakeClient()))
        self.clock.advance(2.0)
        self.assertEqual(len(self.clients[0].sent), 1)
        self.assertEqual(len(self.clients[1].sent), 2)

    def test_stopFactoryStopsTicks(self) -> None:
        """
        Stopping the factory cancels its timer.
        """
        self.factory.startFactory()
        self.clock.advance(2.0)
        self.factory.stopFactory()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(10.0)
        self.assertEqual(self.factory.seq, 1)


class FactoryOptionsTests(SynchronousTestCase):
    """
    The demo factories' Autobahn options.
    """

    def test_options(self) -> None:
        """
        Both factories name themselves C{wsrelay-demo}, serve no status page
        and answer protocol errors with a close code instead of a drop.
        """
        clock = Clock()
        for factory in [EchoFactory(reactor=clock), TickerFactory(reactor=clock)]:
            self.assertEqual(factory.server, SERVER)
            self.assertEqual(SERVER, "wsrelay-demo")
            self.assertFalse(factory.webStatus)
            self.assertFalse(factory.failByDrop)


class DemoServiceTests(SynchronousTestCase):
    """
    L{DemoService} listens on the configured endpoints.
    """

    def test_listensOnConfiguredEndpoints(self) -> None:
        """
        The echo and ticker backends listen where the config says, and the
        ticker keeps time with the given reactor at the configured interval.
        """
        reactor = MemoryReactorClock()
        service = DemoService(
            _DemoConfig(
                echo="tcp:9001:interface=127.0.0.1",
                ticker="tcp:9002:interface=127.0.0.1",
                tickerInterval=0.5,
            ),
            reactor=reactor,
        )
        service.startService()
        self.addCleanup(service.stopService)
        servers = {
            port: (factory, iface) for port, factory, _, iface in reactor.tcpServers
        }
        self.assertEqual(sorted(servers), [9001, 9002])
        echo, echoInterface = servers[9001]
        tickerFactory, tickerInterface = servers[9002]
        ticker = cast(TickerFactory, tickerFactory)
        self.assertIsInstance(echo, EchoFactory)
        self.assertIsInstance(ticker, TickerFactory)
        self.assertEqual((echoInterface, tickerInterface), ("127.0.0.1", "127.0.0.1"))
        self.assertEqual(ticker.interval, 0.5)
        self.assertIs(ticker._loop.clock, reactor)
        self.assertEqual(
            sorted(child.name for child in service), ["demo-echo", "demo-ticker"]
        )

    def test_nothingConfigured(self) -> None:
        """
        With neither backend configured the service has no children.
        """
        service = DemoService(_DemoConfig(), reactor=MemoryReactorClock())
        self.assertEqual(list(service), [])

    def test_onlyEcho(self) -> None:
        """
        Only the configured backends are started.
        """
        reactor = MemoryReactorClock()
        service = DemoService(
            _DemoConfig(echo="tcp:9001:interface=127.0.0.1"), reactor=reactor
        )
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual([port for port, _, _, _ in reactor.tcpServers], [9001])


class LoopbackTests(TestCase):
    """
    The demo backends over real loopback sockets, with C{websockets}'
    synchronous client in a thread.
    """

    def _listen(
        self, factory: EchoFactory | TickerFactory
    ) -> tuple[Deferred[str], list[Deferred[None]]]:
        """
        Listen with C{factory} on an OS-chosen loopback port, to be closed
        at cleanup.

        @param factory: a demo factory.
        @return: a L{Deferred} firing with the base URL, and the list of
            L{Deferred}s that fire when each server-side connection is lost.
        """
        from twisted.internet import reactor

        lost = _trackConnectionLost(factory)
        endpoint = serverFromString(reactor, "tcp:0:interface=127.0.0.1")

        def listening(port: IListeningPort) -> str:
            self.addCleanup(port.stopListening)
            address = port.getHost()
            assert isinstance(address, IPv4Address)
            return f"ws://127.0.0.1:{address.port}"

        return endpoint.listen(factory).addCallback(listening), lost

    async def test_echo(self) -> None:
        """
        Text comes back as text and binary as binary, unchanged, and the
        first subprotocol the client offers is selected.
        """
        from twisted.internet import reactor

        factory = EchoFactory(reactor=cast(IReactorTime, reactor))
        listening, lost = self._listen(factory)
        url = await listening

        def talk() -> tuple[str | None, object, object, str | None]:
            with connect(
                url + "/",
                subprotocols=["demo.one", "demo.two"],  # type: ignore[list-item]
                open_timeout=TIMEOUT,
                close_timeout=TIMEOUT,
            ) as ws:
                ws.send("héllo ✓")
                text = ws.recv(timeout=TIMEOUT)
                ws.send(b"\x00\xff binary")
                data = ws.recv(timeout=TIMEOUT)
                offered = ws.subprotocol
            with connect(
                url + "/", open_timeout=TIMEOUT, close_timeout=TIMEOUT
            ) as plain:
                none = plain.subprotocol
            return offered, text, data, none

        offered, text, data, none = await deferToThread(talk)
        await gatherResults(lost)
        self.assertEqual(offered, "demo.one")
        self.assertEqual(text, "héllo ✓")
        self.assertEqual(data, b"\x00\xff binary")
        self.assertIsNone(none)

    async def test_ticker(self) -> None:
        """
        A client receives ticks with consecutive C{seq} numbers and a float
        C{ts}, as text messages.
        """
        from twisted.internet import reactor

        factory = TickerFactory(interval=0.02, reactor=cast(IReactorTime, reactor))
        listening, lost = self._listen(factory)
        url = await listening

        def collect() -> list[object]:
            with connect(url + "/", open_timeout=TIMEOUT, close_timeout=TIMEOUT) as ws:
                return [ws.recv(timeout=TIMEOUT) for _ in range(3)]

        messages = await deferToThread(collect)
        await gatherResults(lost)
        for message in messages:
            self.assertIsInstance(message, str)
        ticks = [json.loads(cast(str, m)) for m in messages]
        first = ticks[0]["seq"]
        self.assertGreaterEqual(first, 1)
        self.assertEqual([t["seq"] for t in ticks], [first, first + 1, first + 2])
        for t in ticks:
            self.assertEqual(t["type"], "tick")
            self.assertIsInstance(t["ts"], float)


def _trackConnectionLost(factory: EchoFactory | TickerFactory) -> list[Deferred[None]]:
    """
    Make every protocol C{factory} builds fire a L{Deferred} once its
    connection is lost, so a test can wait for the server side to be gone.

    @param factory: the factory to instrument.
    @return: the list each new connection's L{Deferred} is appended to.
    """
    lost: list[Deferred[None]] = []
    buildProtocol = factory.buildProtocol

    def build(addr: IAddress | None) -> Any:
        protocol = buildProtocol(addr)
        assert protocol is not None
        done: Deferred[None] = Deferred()
        lost.append(done)
        connectionLost = protocol.connectionLost

        def onLost(reason: Failure) -> None:
            try:
                connectionLost(reason)
            finally:
                done.callback(None)

        protocol.connectionLost = onLost  # type: ignore[method-assign]
        return protocol

    factory.buildProtocol = build  # type: ignore[method-assign]
    return lost
