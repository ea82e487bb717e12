# -*- test-case-name: tests.test_fanout -*-
"""
Fan-out: one upstream connection to a source, shared by every client of a
channel.

A L{Channel} holds the upstream, frames each message from the source once
(L{wsrelay.framing.frame}) and writes the same bytes to every member; a
L{FanoutSession} is one client's membership, with its own small queue for the time its
connection cannot keep up.  Payloads are never decoded here.
"""

from __future__ import annotations

import random
from collections import deque
from typing import TYPE_CHECKING, Any, cast

from twisted.application.internet import ClientService
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IPushProducer,
    ITransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from wsrelay.framing import TEXT, Assembler, frame
from wsrelay.legs import OPEN
from wsrelay.routing import Backend, ConnectionInfo, Route
from wsrelay.source import SourceEndpoint, SourceReader, SourceTransport, sourceBackoff

if TYPE_CHECKING:
    from twisted.internet.interfaces import IConsumer, IDelayedCall, IReactorTime

    from wsrelay.config import FanoutRouteConfig, RelayConfig
    from wsrelay.frontend import ClientAddresses, FrontendProtocol
    from wsrelay.roles import SessionRegistry, Upstreams
    from wsrelay.stats import Histogram
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
        self.members: dict[FanoutSession, None] = {}
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

    def join(self, member: FanoutSession) -> None:
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

    def leave(self, member: FanoutSession) -> None:
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


@implementer(IPushProducer)
class FanoutSession:
    """
    One client of a channel.

    Registered as the producer of the client's transport, it learns when
    the transport's buffer is full (C{pauseProducing}) and queues messages
    itself from then on, up to C{max_client_buffer}; beyond that the
    route's C{slow_client} policy applies.

    @ivar queued: Bytes in the queue.
    @ivar dropped: Messages skipped for this client.
    """

    log = Logger()

    def __init__(
        self,
        channel: Channel,
        frontend: FrontendProtocol,
        *,
        registry: SessionRegistry,
        addresses: ClientAddresses,
        clock: IReactorTime,
        config: RelayConfig,
        latency: Histogram,
    ) -> None:
        """
        @param registry: Told when the client is gone.
        @param addresses: Says who the client is (for the access log).
        @param clock: Times the session.
        @param config: The relay's configuration when the client came.
        @param latency: Where the handshake's duration goes.
        """
        self.registry = registry
        self.addresses = addresses
        self.clock = clock
        self.config = config
        self.latency = latency
        self.channel = channel
        self.frontend = frontend
        self.startedAt = clock.seconds()
        self.openedAt = self.startedAt
        self.mark = 0
        self.route = channel.route
        self.done: Deferred[None] = Deferred()
        self.queue: deque[bytes] = deque()
        self.queued = 0
        self.dropped = 0
        self.backend = None
        self._limit = channel.routeConfig.maxClientBuffer
        self._close = channel.routeConfig.slowClient == "close"
        self._forward = channel.routeConfig.clientMessages == "forward"
        self._paused = False
        self._joined = False
        self._closing = False
        self._write: Any = None
        self._message = Assembler()
        frontend.session = self
        frontend.listener = self
        frontend.target = self

    def open(self) -> Deferred[tuple[str | None, dict[str, list[str]]]]:
        """
        Accept the client at once; it waits for the source if need be.
        """
        return succeed((None, {}))

    def clientOpened(self) -> None:
        """
        The client got its 101: join the channel.
        """
        transport = self.frontend.transport
        assert transport is not None
        self.frontend.forgetHandshake()
        self._write = self.frontend.writer()
        cast("IConsumer", transport).registerProducer(self, True)
        self._joined = True
        self.openedAt = self.clock.seconds()
        self.latency.observe(self.openedAt - self.startedAt)
        self.channel.join(self)

    def send(self, data: bytes, count: int = 1) -> None:
        """
        Write C{count} framed messages, or queue them while the client is
        slow.
        """
        if not self._paused:
            self._write(data)
            return
        if self.queued + len(data) <= self._limit:
            self.queue.append(data)
            self.queued += len(data)
            return
        if self._close:
            self.channel.slowCloses += 1
            self.closing()
            self.frontend.closeWith(1013, b"client too slow")
            return
        self.dropped += count
        self.channel.slowDrops += count

    # IPushProducer, for the client's transport.

    def pauseProducing(self) -> None:
        """
        The client's transport holds more than it can send now (once the
        client is being closed, nothing is queued for it any more).
        """
        if not self._closing:
            self._paused = True

    def resumeProducing(self) -> None:
        """
        The transport drained: write what was queued, until it fills up
        again.
        """
        self._paused = False
        queue = self.queue
        while queue and not self._paused:
            data = queue.popleft()
            self.queued -= len(data)
            self._write(data)

    def stopProducing(self) -> None:
        """
        The connection is going: nothing more to write.
        """
        self.queue.clear()
        self.queued = 0

    # Frames from the client.

    def forwardFrame(self, opcode: int, payload: bytes, fin: bool) -> None:
        """
        A frame from the client: forwarded upstream as a whole message with
        C{client_messages = forward}, else dropped.
        """
        if not self._forward:
            if fin:
                self.channel.clientDrops += 1
            return
        message = self._message.add(opcode, payload, fin)
        if message is None:
            return
        opcode, payload = message
        self.channel.sendUpstream(opcode, payload)

    # Closing: the relay is the client's peer.

    def closeReceived(self, leg: Any, code: int | None, reason: bytes | None) -> None:
        """
        The client closes: answer it, and send it nothing more.
        """
        self.closing()
        leg.replyClose(code, reason)

    def closeReplied(self, leg: Any, code: int | None, reason: bytes | None) -> None:
        """
        The client answered our close.
        """

    def legClosed(self, leg: Any) -> None:
        """
        The client is gone: leave the channel.
        """
        self.queue.clear()
        self.queued = 0
        if self._joined:
            self.channel.leave(self)
            self._logAccess()
        self.registry.sessionEnded(self)
        if not self.done.called:
            self.done.callback(None)

    def _logAccess(self) -> None:
        """
        One event per client, when it leaves the channel.
        """
        if not self.config.accessLog:
            return
        f = self.frontend
        self.log.info(
            "{client} {route} fanout {duration:.3f}s in {messagesIn}/{bytesIn}"
            " out {messagesOut} dropped {dropped} close {closeCode}",
            event="access",
            client=self.addresses.clientAddress(f) if f.transport else None,
            route=self.route.name,
            channel=self.channel.key,
            duration=self.clock.seconds() - self.openedAt,
            messagesIn=f.messagesIn,
            bytesIn=f.bytesIn,
            messagesOut=self.channel.messagesIn - self.mark - self.dropped,
            dropped=self.dropped,
            closeCode=f.remoteCloseCode or f.localCloseCode,
        )

    def shutdown(
        self, code: int = 1001, reason: bytes = b"relay shutting down"
    ) -> None:
        """
        Close the client: nothing more is sent after the close frame.
        """
        self.closing()
        self.frontend.closeWith(code, reason)

    def closing(self) -> None:
        """
        A close frame is about to go to the client: no data frame may
        follow it (RFC 6455, 5.5.1), so what the channel sends from now on
        goes nowhere, and nothing more is queued.
        """
        self._closing = True
        self.queue.clear()
        self.queued = 0
        self._paused = False
        self._write = _discard


def _discard(data: bytes) -> None:
    """
    Write nowhere: the client is being closed.
    """
