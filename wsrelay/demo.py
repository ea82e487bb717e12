# -*- test-case-name: tests.test_demo -*-
"""
Demo backends started inside the relay process: an echo server and a ticker.

They let C{make run} serve C{conf/relay.ini} out of the box with no other
process to start. They are ordinary Autobahn servers, not part of the relay:
the relay reaches them over loopback like any other backend.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from autobahn.twisted.websocket import (
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from autobahn.websocket.types import ConnectionRequest
from twisted.application import strports
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorCore, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

if TYPE_CHECKING:
    from wsrelay.config import DemoConfig

SERVER = "wsrelay-demo"
"""
The C{Server} header of the demo backends' answers.
"""


def _defaultReactor() -> IReactorTime:
    """
    Return the global reactor, imported only when no reactor was given.

    @return: the global reactor.
    """
    from twisted.internet import reactor

    return cast(IReactorTime, reactor)


class _DemoFactory(WebSocketServerFactory):
    """
    Common settings of the demo backends' factories.
    """

    def __init__(self, reactor: IReactorTime | None = None) -> None:
        """
        @param reactor: the reactor; the global one if L{None}.
        """
        if reactor is None:
            reactor = _defaultReactor()
        super().__init__(server=SERVER, reactor=reactor)
        # Answer protocol errors with a close code instead of dropping the
        # connection, and serve no status page on plain HTTP requests.
        self.setProtocolOptions(failByDrop=False, webStatus=False)
        self._reactor = reactor


class EchoProtocol(WebSocketServerProtocol):
    """
    Send every message back unchanged: text stays text, binary stays binary.
    """

    def onConnect(self, request: ConnectionRequest) -> str | None:
        """
        Accept the first subprotocol the client offered, if any.

        @param request: the client's opening handshake.
        @return: the subprotocol to select, or L{None} for none.
        """
        if request.protocols:
            return cast(str, request.protocols[0])
        return None

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """
        Echo one message.

        @param payload: the message's payload.
        @param isBinary: whether it is a binary message (else text).
        """
        self.sendMessage(payload, isBinary)


class EchoFactory(_DemoFactory):
    """
    The echo backend's factory.
    """

    protocol = EchoProtocol


class TickerProtocol(WebSocketServerProtocol):
    """
    A ticker client: receives every tick of its L{TickerFactory}.
    """

    def onOpen(self) -> None:
        """
        Start receiving ticks once the handshake is done.
        """
        cast(TickerFactory, self.factory).addClient(self)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        """
        Stop receiving ticks.

        @param wasClean: whether the closing handshake completed.
        @param code: the close code, if any.
        @param reason: the close reason, if any.
        """
        cast(TickerFactory, self.factory).removeClient(self)


class TickerFactory(_DemoFactory):
    """
    The ticker backend's factory: every C{interval} seconds, while it listens,
    it sends C{{"type": "tick", "seq": n, "ts": t}} to all its clients, with
    C{seq} counting from 1 and C{ts} the wall-clock time (C{time.time()}).

    Each tick is framed once, with L{prepareMessage}, whatever the number of
    clients.

    @ivar interval: seconds between two ticks.
    @ivar seq: the sequence number of the last tick sent; 0 before the first.
    @ivar clients: the open connections that receive ticks.
    """

    protocol = TickerProtocol
    log = Logger()

    def __init__(
        self, interval: float = 1.0, reactor: IReactorTime | None = None
    ) -> None:
        """
        @param interval: seconds between two ticks.
        @param reactor: the reactor, also the clock of the ticks; the global
            one if L{None}.
        """
        super().__init__(reactor=reactor)
        self.interval = interval
        self.seq = 0
        self.clients: set[TickerProtocol] = set()
        self._loop = LoopingCall(self.tick)
        self._loop.clock = self._reactor
        self._loopDone: Deferred[LoopingCall] | None = None

    def addClient(self, client: TickerProtocol) -> None:
        """
        Send the following ticks to C{client}.

        @param client: an open connection.
        """
        self.clients.add(client)

    def removeClient(self, client: TickerProtocol) -> None:
        """
        Send no more ticks to C{client}; nothing happens if it was not a
        client (a connection whose handshake failed).

        @param client: a connection.
        """
        self.clients.discard(client)

    def tick(self) -> None:
        """
        Send the next tick to every client.
        """
        self.seq += 1
        payload = json.dumps(
            {"type": "tick", "seq": self.seq, "ts": time.time()}
        ).encode("utf-8")
        message = self.prepareMessage(payload, isBinary=False)
        for client in tuple(self.clients):
            client.sendPreparedMessage(message)

    def startFactory(self) -> None:
        """
        Start ticking when the factory starts listening.
        """
        super().startFactory()
        self._loopDone = self._loop.start(self.interval, now=False)
        self._loopDone.addErrback(self._tickFailed)

    def _tickFailed(self, failure: Failure) -> None:
        """
        Log the error that stopped the ticks.

        @param failure: the error raised by L{tick}.
        """
        self.log.failure("demo ticker stopped", failure)

    def stopFactory(self) -> None:
        """
        Stop ticking when the factory stops listening.
        """
        if self._loop.running:
            self._loop.stop()
        self._loopDone = None
        super().stopFactory()


class DemoService(MultiService):
    """
    The demo backends configured in the C{[demo]} section, each listening on
    its own endpoint.
    """

    log = Logger()

    def __init__(
        self,
        config: DemoConfig,
        reactor: IReactorTime | None = None,
        listenOn: Callable[[str], object] | None = None,
    ) -> None:
        """
        @param config: the C{[demo]} section: C{echo} and C{ticker} are
            endpoint strings (or L{None} for no such backend) and
            C{tickerInterval} is the ticker's period in seconds.
        @param reactor: the reactor, which must also provide
            L{IReactorCore} and L{twisted.internet.interfaces.IReactorTCP};
            the global one if L{None}.
        @param listenOn: Gives what each endpoint string listens with (the
            relay's L{wsrelay.listening.ListeningSockets}, so that a relay
            that takes over serves the demo backends too); the reactor by
            default.
        """
        super().__init__()
        if reactor is None:
            reactor = _defaultReactor()
        self._reactor = reactor
        self._listenOn = listenOn
        self._listeners: list[tuple[str, str]] = []
        if config.echo is not None:
            self._listen("demo-echo", config.echo, EchoFactory(reactor=reactor))
        if config.ticker is not None:
            ticker = TickerFactory(config.tickerInterval, reactor=reactor)
            self._listen("demo-ticker", config.ticker, ticker)

    def _listen(self, name: str, description: str, factory: _DemoFactory) -> None:
        """
        Add a child service listening on C{description}.

        @param name: the child service's name.
        @param description: a server endpoint string.
        @param factory: the demo backend's factory.
        """
        reactor: object = self._reactor
        if self._listenOn is not None:
            reactor = self._listenOn(description)
        service = strports.service(
            description, factory, reactor=cast(IReactorCore, reactor)
        )
        service.setName(name)
        service.setServiceParent(self)
        self._listeners.append((name, description))

    def startService(self) -> None:
        """
        Start listening, and say where.
        """
        for name, description in self._listeners:
            self.log.info(
                "demo backend {name} on {description}",
                name=name,
                description=description,
            )
        super().startService()
