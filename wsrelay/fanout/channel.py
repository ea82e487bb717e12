# -*- test-case-name: tests.test_fanout,tests.test_fanout_units,tests.test_inmemory -*-
"""
A fan-out channel: one upstream connection to a source, shared by every
client of the channel.

A L{Channel} holds the upstream, frames each message from the source once
(L{wsrelay.framing.frame}) and writes the same bytes to every member (a
L{wsrelay.fanout.members.FanoutSession}).  Payloads are never decoded here.
"""

from __future__ import annotations

import random
from collections import deque
from typing import TYPE_CHECKING, Any, cast
from typing import Protocol as TypingProtocol

from twisted.application.internet import ClientService
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IProtocol, IProtocolFactory, ITransport
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from wsrelay.fanout.source import (
    SourceEndpoint,
    SourceReader,
    SourceTransport,
    sourceBackoff,
)
from wsrelay.framing import TEXT, Assembler, frame
from wsrelay.legs import OPEN
from wsrelay.routing import Backend, ConnectionInfo, Route

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IReactorTime

    from wsrelay.config import FanoutRouteConfig
    from wsrelay.roles import SessionRegistry, Upstreams
    from wsrelay.upstream import UpstreamProtocol

IDLE = "idle"
CONNECTING = "connecting"
UP = "up"
WAITING = "waiting"
STOPPED = "stopped"


def channelKey(route: Route, remainder: str, query: str) -> str:
    """
    @return: The channel a client of C{route} joins: C{""} for the whole
        route, or its path remainder and query with C{channel = path}.
    """
    config = route.config
    if config.mode != "fanout" or config.channel == "route":
        return ""
    return remainder + ("?" + query if query else "")


class Member(TypingProtocol):
    """
    What a channel uses of a member (L{wsrelay.fanout.members.FanoutSession}).
    """

    #: The channel's count of messages from the source when the member
    #: joined, less the replay it got.
    mark: int

    def send(self, data: bytes, count: int = 1) -> None:
        """
        Write C{count} framed messages, or queue them.
        """


class Channel:
    """
    One shared upstream and the clients that receive what it sends.

    @ivar state: L{IDLE}, L{CONNECTING}, L{UP}, L{WAITING} (to reconnect)
        or L{STOPPED}.
    @ivar members: The clients, in the order they joined.
    @ivar backend: The backend of the current upstream.
    @ivar messagesIn: Messages received from the source.
    @ivar deliveries: Messages written or queued to a client.
    @ivar slowDrops: Messages skipped for slow clients.
    @ivar slowCloses: Clients closed for being slow.
    @ivar clientDrops: Client messages not forwarded.
    @ivar connects: Upstream connections opened.
    @ivar batch: While a read from the source is parsed (L{SourceReader}),
        the messages it completed, framed; else L{None}.
    """

    log = Logger()

    def __init__(
        self,
        route: Route,
        key: str,
        upstreams: Upstreams,
        registry: SessionRegistry,
        clock: IReactorTime,
    ) -> None:
        """
        @param upstreams: Opens the source's connection.
        @param registry: Told when the channel ends.
        """
        self.upstreams = upstreams
        self.registry = registry
        self.route = route
        self.key = key
        self.state = IDLE
        self.members: dict[Member, None] = {}
        self.upstream: UpstreamProtocol | None = None
        self.backend: Backend | None = None
        self.replay: deque[bytes] = deque(maxlen=self.routeConfig.replay)
        self.messagesIn = 0
        self.deliveries = 0
        self.slowDrops = 0
        self.slowCloses = 0
        self.clientDrops = 0
        self.connects = 0
        self.random = random.Random()
        self._clock = clock
        self._message = Assembler()
        #: Connects to the source and reconnects after a loss or a failed
        #: attempt (a new one each time the channel starts).
        self._service: ClientService | None = None
        #: Stands for the source's connection to the service.
        self._connection: IProtocol | None = None
        #: The connection of the upstream closed on purpose (L{_halt}).
        self._closingConnection: IProtocol | None = None
        self._linger: IDelayedCall | None = None
        self._lost: Backend | None = None
        self._gone: Deferred[None] | None = None
        self._closing: UpstreamProtocol | None = None
        self.batch: list[bytes] | None = None
        self.retired = False

    @property
    def name(self) -> str:
        """
        The route's name and the channel's key, for logs.
        """
        return self.route.name + self.key

    @property
    def routeConfig(self) -> FanoutRouteConfig:
        """
        The configuration of L{route}: a fan-out route's, the only kind
        that has channels.
        """
        config = self.route.config
        if config.mode != "fanout":
            raise TypeError(f"route {config.name!r} is not a fan-out route")
        return config

    # Members.

    def join(self, member: Member) -> None:
        """
        Add a client: it gets the replay now, then every message.
        """
        for data in self.replay:
            member.send(data)
        self.deliveries += len(self.replay)
        member.mark = self.messagesIn - len(self.replay)
        self.members[member] = None
        self._cancelLinger()
        if self.state == IDLE:
            self.start()

    def leave(self, member: Member) -> None:
        """
        Remove a client; the last one out of a lazy channel starts the
        linger time.
        """
        self.members.pop(member, None)
        if not self.members and self.retired:
            self.retire()
            return
        if not self.members and self._lazy() and self.state != STOPPED:
            self._cancelLinger()
            self._linger = self._clock.callLater(
                self.routeConfig.linger, self._lingerEnded
            )

    def _lazy(self) -> bool:
        config = self.routeConfig
        return config.connect == "lazy" or config.channel == "path"

    def _lingerEnded(self) -> None:
        """
        No client came back: close the upstream.
        """
        self._linger = None
        if self.members:
            return
        self.log.info("channel {channel}: no clients, closing", channel=self.name)
        self._halt(IDLE, 1000, b"no clients")
        if self.routeConfig.channel == "path":
            self.registry.channelEnded(self)

    # The upstream.

    def start(self) -> None:
        """
        Connect to the source, and keep connecting after a loss or a failed
        attempt: a L{ClientService} whose endpoint asks the relay for a
        source each time (the balancer picks a backend per attempt), waiting
        between attempts as L{sourceBackoff} says.
        """
        config = self.routeConfig
        service = self._service = ClientService(
            SourceEndpoint(self),
            Factory.forProtocol(Protocol),
            sourceBackoff(config.backoffBase, config.backoffCap, self.random),
            clock=self._clock,
        )
        service.startService()

    def connectSource(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        """
        One attempt of the channel's L{ClientService} (L{SourceEndpoint}):
        open an upstream to a backend of the route.

        @param factory: Builds what stands for the connection to the
            service, which learns through it when the source is lost.
        @return: A L{Deferred} firing with what C{factory} built once the
            source accepted; cancelling it cancels the attempt.
        """
        self.state = CONNECTING
        route = self.route
        info = ConnectionInfo("", route.config.path + self.key, "", ())
        d = Deferred.fromCoroutine(
            self.upstreams.openUpstream(
                route, info, self._request, (), self._lost, float("inf")
            )
        )

        def opened(pair: tuple[Backend, UpstreamProtocol]) -> IProtocol:
            up = pair[1]
            assert up.transport is not None
            connection = factory.buildProtocol(up.transport.getPeer())
            assert connection is not None
            connection.makeConnection(cast(ITransport, SourceTransport(up)))
            self._opened(pair, connection)
            return connection

        def failed(f: Failure) -> Failure:
            self._openFailed(f)
            return f

        return d.addCallbacks(opened, failed)

    def _request(self, backend: Backend) -> tuple[str, list[tuple[str, str]]]:
        """
        @return: The request target and header fields for the source.
        """
        from wsrelay.session import joinPath

        config = backend.config
        path, _, query = self.key.partition("?")
        resource = joinPath(config.path, path)
        query = "&".join(q for q in (config.query, query) if q)
        return resource + ("?" + query if query else ""), []

    def _opened(
        self, pair: tuple[Backend, UpstreamProtocol], connection: IProtocol
    ) -> None:
        backend, up = pair
        self._connection = connection
        self._lost = None
        self.state = UP
        self.upstream = up
        self.backend = backend
        up.forgetHandshake()
        self.connects += 1
        backend.connections += 1
        backend.totalConnections += 1
        listener = self.route.loadListener
        if listener is not None:
            listener.connectionOpened(backend)
        up.target = self
        up.listener = self
        up.dataPath = SourceReader(self, up)
        for line in self.routeConfig.subscribe:
            up.forwardFrame(TEXT, line.encode("utf-8"), True)
        self.log.info(
            "channel {channel}: source {backend} connected",
            channel=self.name,
            backend=backend.name,
        )

    def _openFailed(self, f: Failure) -> None:
        """
        An attempt failed: the service waits, then tries again.
        """
        if f.check(CancelledError):
            return
        self.log.warn(
            "channel {channel}: no source: {error}",
            channel=self.name,
            error=f.getErrorMessage(),
        )
        self.state = WAITING

    def forwardFrame(self, opcode: int, payload: bytes, fin: bool) -> None:
        """
        A frame from the source: once its message is whole, frame it once
        and hand the bytes to every member.
        """
        message = self._message.add(opcode, payload, fin)
        if message is None:
            return
        opcode, payload = message
        data = frame(opcode, payload)
        self.messagesIn += 1
        self.replay.append(data)
        batch = self.batch
        if batch is not None:
            batch.append(data)
            return
        self.deliveries += len(self.members)
        for member in self.members:
            member.send(data)

    def sendUpstream(self, opcode: int, payload: bytes) -> None:
        """
        A client's whole message for the source (C{client_messages =
        forward}); dropped while the source is not connected.
        """
        up = self.upstream
        if up is None or up.state != OPEN:
            self.clientDrops += 1
            return
        up.forwardFrame(opcode, payload, True)

    # The upstream's close handshake: the relay is its only client.

    def closeReceived(self, leg: Any, code: int | None, reason: bytes | None) -> None:
        """
        The source closes: answer, and treat it as a failure (the clients
        stay and wait for the next source).
        """
        leg.replyClose(code, reason)

    def closeReplied(self, leg: Any, code: int | None, reason: bytes | None) -> None:
        """
        The source answered our close.
        """

    def legClosed(self, leg: Any) -> None:
        """
        The upstream is gone: reconnect unless it was closed on purpose.
        """
        if leg is not None and leg is self._closing:
            # An upstream closed on purpose (see _halt) is gone.
            self._closing = None
            connection, self._closingConnection = self._closingConnection, None
            if connection is not None:
                connection.connectionLost(Failure(ConnectionDone()))
            gone, self._gone = self._gone, None
            if gone is not None:
                gone.callback(None)
            return
        if leg is None or leg is not self.upstream:
            return
        backend = self.backend
        self._release()
        connection, self._connection = self._connection, None
        if self.state != UP:
            return
        self.log.warn(
            "channel {channel}: source {backend} lost (close code {code})",
            channel=self.name,
            backend=backend.name if backend else None,
            code=getattr(leg, "remoteCloseCode", None),
        )
        if backend is not None and not getattr(leg, "wasClean", False):
            self.upstreams.backendFailed(self.route, backend, "connection lost")
        self._lost = backend
        self.state = WAITING
        if connection is not None:
            # The service waits, then connects again.
            connection.connectionLost(Failure(ConnectionDone()))

    # Stopping.

    def stop(self) -> Deferred[None]:
        """
        Close the upstream for good (the relay stops).

        @return: A L{Deferred} that fires when the upstream is gone.
        """
        gone: Deferred[None] = Deferred()
        self._halt(STOPPED, 1001, b"relay shutting down")
        if self._closing is None:
            gone.callback(None)
        else:
            self._gone = gone
        return gone

    def moveOff(self) -> None:
        """
        The backend is being disabled: close the upstream with 1012 and
        connect to another backend; the clients stay.
        """
        up = self.upstream
        if up is not None and self.state == UP:
            self._lost = self.backend
            up.closeWith(1012, b"backend going away")

    def retire(self) -> None:
        """
        The route is gone (a reload removed it): serve the clients there
        are, and close once the last has left.
        """
        self.retired = True
        if not self.members:
            self._halt(IDLE, 1000, b"route removed")
            self.registry.channelEnded(self)

    def _halt(self, state: str, code: int, reason: bytes) -> None:
        self.state = state
        self._cancelLinger()
        up = self.upstream
        if up is not None:
            # It is no longer this channel's upstream, even while it closes:
            # a new one may open meanwhile (a lazy channel's next client).
            self._release()
            up.target = None
            self._closing = up
            self._closingConnection, self._connection = self._connection, None
            up.closeWith(code, reason)
        service, self._service = self._service, None
        if service is not None:
            # Cancels a pending attempt or wait; a connected source is
            # already closing (its transport's loseConnection is a no-op),
            # and the channel waits for it itself (stop).
            service.stopService()

    def _release(self) -> None:
        """
        Forget the upstream and give its backend's connection back.
        """
        backend = self.backend
        self.upstream = None
        self.backend = None
        self._message = Assembler()
        if backend is not None:
            backend.connections -= 1
            listener = self.route.loadListener
            if listener is not None:
                listener.connectionClosed(backend)

    def _cancelLinger(self) -> None:
        linger, self._linger = self._linger, None
        if linger is not None and linger.active():
            linger.cancel()
