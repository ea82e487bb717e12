# -*- test-case-name: tests.test_fanout_units,tests.test_sources -*-
"""
The built-in C{websocket} fan-out source (L{WebSocketSource}, an
L{ISource}): how its bytes are read (L{SourceReader}, the source leg's
data path) and how it keeps connecting to a backend of the route (a
L{twisted.application.internet.ClientService} whose endpoint,
L{SourceEndpoint}, asks the relay for an upstream each time, waiting
between attempts as L{sourceBackoff} says).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast
from weakref import ref

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    fail,
    succeed,
)
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
    ITransport,
)
from twisted.internet.protocol import Factory
from twisted.internet.protocol import Protocol as NullProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from wsrelay.interfaces import ILoadListener, ISource, ISourceChannel
from wsrelay.routing import ConnectionInfo, joinPath
from wsrelay.ws.framing import TEXT
from wsrelay.ws.legclosing import OPEN

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from wsrelay.config import FanoutRouteConfig
    from wsrelay.roles import Upstreams
    from wsrelay.routing import Backend, Route
    from wsrelay.ws.upstream import UpstreamProtocol

#: The states of a channel (L{wsrelay.fanout.channel.Channel.state}): no
#: source wanted (a lazy channel without clients) ...
IDLE = "idle"
#: ... an attempt to open one under way ...
CONNECTING = "connecting"
#: ... connected ...
UP = "up"
#: ... waiting to try again after a failed attempt or a lost source ...
WAITING = "waiting"
#: ... or closed for good (the relay stops).
STOPPED = "stopped"


def sourceBackoff(
    settings: Callable[[], tuple[float, float]], rng: random.Random
) -> Callable[[int], float]:
    """
    The retry policy of a channel's L{ClientService}: the wait before the
    C{attempt}-th attempt in a row (1: the first after the source was lost
    or after a connected one) lies between half and all of C{base * 2**(attempt
    - 1)}, capped at C{cap} (C{backoff_base}, C{backoff_cap}).

    @param settings: Gives C{(base, cap)}, read at each attempt, so that a
        reload's values apply to the next wait.
    """

    def policy(attempt: int) -> float:
        base, cap = settings()
        ceiling = backoffPolicy(
            initialDelay=base, maxDelay=cap, factor=2.0, jitter=_none
        )
        top = ceiling(attempt - 1)
        return top / 2 + rng.uniform(0, top / 2)

    return policy


def _none() -> float:
    """
    No jitter from L{backoffPolicy}: L{sourceBackoff} adds its own, in
    proportion.
    """
    return 0.0


def _settingsOf(source: ref[WebSocketSource]) -> Callable[[], tuple[float, float]]:
    """
    @return: What gives the route's C{backoff_base} and C{backoff_cap} in
        force for C{source}'s L{sourceBackoff}, holding the source weakly
        (a stopped L{ClientService} lives on in its own reference cycle).
    """

    def settings() -> tuple[float, float]:
        alive = source()
        assert alive is not None
        config = alive.routeConfig
        return config.backoffBase, config.backoffCap

    return settings


@implementer(IStreamClientEndpoint)
class SourceEndpoint:
    """
    The endpoint of a source's L{ClientService}: each connection attempt
    asks the relay for an upstream (L{WebSocketSource.connect}).
    """

    def __init__(self, source: WebSocketSource) -> None:
        # Held weakly: a stopped ClientService is itself a reference cycle
        # (its Logger), which must not keep the source alive.
        self._source = ref(source)
        self._name = source.channel.name

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        """
        Open a source.
        """
        source = self._source()
        if source is None:
            return fail(CancelledError("the channel is gone"))
        return source.connect(protocolFactory)

    def __repr__(self) -> str:
        """
        How the service's log lines name it.
        """
        return f"the source of channel {self._name}"


class SourceTransport:
    """
    What the L{ClientService} sees of a source's connection: it only ever
    closes it (when the service stops, after the source closed the
    upstream with its own code).
    """

    def __init__(self, leg: UpstreamProtocol) -> None:
        self._leg = leg

    def loseConnection(self) -> None:
        """
        Close the upstream, unless it is closing already.
        """
        self._leg.closeWith(1001, b"relay shutting down")


class SourceReader:
    """
    The data path of a source leg (L{RelayLeg.dataPath}) and its C{target}:
    Autobahn parses each read from the source (L{RelayLeg.parse}), its
    frames come back to L{forwardFrame}, whole messages are collected in
    the read's batch, and the batch goes to the channel in one
    L{ISourceChannel.deliver} call, which writes it to each member in one
    write.

    @ivar batch: While a read is parsed, the messages it completed; else
        L{None}.
    """

    def __init__(self, channel: ISourceChannel, leg: UpstreamProtocol) -> None:
        self.channel = channel
        self.leg = leg
        self.batch: list[tuple[int, bytes, str | None]] | None = None
        #: A message's frames so far, and its opcode.
        self._parts: list[bytes] = []
        self._opcode = TEXT

    def dataReceived(self, data: bytes) -> None:
        """
        Parse one read from the source, then deliver its messages at once.
        """
        batch: list[tuple[int, bytes, str | None]] = []
        self.batch = batch
        try:
            self.leg.parse(data)
        finally:
            self.batch = None
        if batch:
            self.channel.deliver(batch)

    def forwardFrame(self, opcode: int, payload: bytes, fin: bool) -> None:
        """
        A frame from the source: once its message is whole, add it to the
        read's batch (or deliver it, for frames parsed outside
        L{dataReceived}: those that came in the read of the 101).
        """
        parts = self._parts
        if not fin:
            if opcode:
                self._opcode = opcode
            parts.append(payload)
            return
        if parts:
            parts.append(payload)
            self._parts = []
            opcode, payload = self._opcode, b"".join(parts)
        batch = self.batch
        if batch is not None:
            batch.append((opcode, payload, None))
        else:
            self.channel.deliver([(opcode, payload, None)])


@implementer(ISource)
class WebSocketSource:
    """
    The built-in C{websocket} source: one upstream to a backend of the
    route, kept connected by a L{ClientService} whose endpoint
    (L{SourceEndpoint}) asks the relay for an upstream each time (the
    balancer picks a backend per attempt, among the healthy ones), waiting
    between attempts as L{sourceBackoff} says.  On every connect it sends
    the route's C{subscribe} lines.  It counts its connections against its
    backend (and tells the balancer's load listener), and reports a source
    lost without a close handshake as a failed connection (passive
    health).

    @ivar channel: Where the messages go.
    @ivar upstreams: Opens the upstream, and hears of one that fails.
    @ivar state: L{IDLE}, L{CONNECTING}, L{UP} or L{WAITING}.
    @ivar upstream: The open upstream, or L{None}.
    @ivar backend: The backend of L{upstream}, or L{None}.
    @ivar random: The jitter of the waits.
    @ivar connection: Stands for the source's connection to the service,
        while one is open.
    @ivar lost: The backend of the source lost last (or being moved off),
        which the next attempt avoids; else L{None}.
    """

    log = Logger()

    def __init__(
        self,
        channel: ISourceChannel,
        routeOf: Callable[[], Route],
        upstreams: Upstreams,
        clock: IReactorTime,
    ) -> None:
        """
        @param routeOf: Gives the route in force (a reload may replace it):
            its backends, balancer, C{subscribe} and backoff settings.
        @param upstreams: Opens the upstream.
        @param clock: Times the waits between attempts.
        """
        self.channel = channel
        self.state = IDLE
        self.upstream: UpstreamProtocol | None = None
        self.backend: Backend | None = None
        self.random = random.Random()
        self.connection: IProtocol | None = None
        self.lost: Backend | None = None
        self._routeOf = routeOf
        self.upstreams = upstreams
        self._clock = clock
        #: Connects and reconnects (a new one each time the source starts).
        self._service: ClientService | None = None
        #: Upstreams closed on purpose (L{stop}), each with what stood for
        #: it to its service and what fires once it is gone.
        self._closing: dict[
            UpstreamProtocol, tuple[IProtocol | None, Deferred[None]]
        ] = {}
        #: The load listener the upstream was counted on when it opened.
        self._listener: ILoadListener | None = None

    @property
    def routeConfig(self) -> FanoutRouteConfig:
        """
        The configuration of the route in force: a fan-out route's.
        """
        config = self._routeOf().config
        if config.mode != "fanout":
            raise TypeError(f"route {config.name!r} is not a fan-out route")
        return config

    def _setState(self, state: str) -> None:
        self.state = state
        self.channel.stateChanged(state)

    # ISource.

    def start(self) -> None:
        """
        Connect to the source, and keep connecting after a loss or a failed
        attempt.
        """
        if self._service is not None:
            return
        service = self._service = ClientService(
            SourceEndpoint(self),
            Factory.forProtocol(NullProtocol),
            sourceBackoff(_settingsOf(ref(self)), self.random),
            clock=self._clock,
        )
        service.startService()

    def stop(self) -> Deferred[None]:
        """
        Close the upstream with 1001 and stop connecting.

        @return: A L{Deferred} that fires once the upstreams closed so far
            are gone.
        """
        return self.stopWith(1001, b"relay shutting down")

    def stopWith(self, code: int, reason: bytes) -> Deferred[None]:
        """
        Close the upstream with C{code} and C{reason}, and stop connecting
        (cancelling a pending attempt or wait).  The channel calls this
        instead of L{stop} when it has a reason of its own (no clients
        left, the route removed).

        @return: See L{stop}.
        """
        up = self.upstream
        if up is not None:
            # It is no longer this source's upstream, even while it closes:
            # a new one may open meanwhile (a lazy channel's next client).
            self._release()
            up.target = None
            connection, self.connection = self.connection, None
            self._closing[up] = (connection, Deferred())
            up.closeWith(code, reason)
        service, self._service = self._service, None
        if service is not None:
            service.stopService()
        if self.state != IDLE:
            self._setState(IDLE)
        waits = [gone for _, gone in self._closing.values()]
        if not waits:
            return succeed(None)
        return DeferredList(waits).addCallback(lambda _: None)

    def send(self, opcode: int, payload: bytes) -> bool:
        """
        A client's whole message for the source; not sent while the source
        is not connected.
        """
        up = self.upstream
        if up is None or up.state != OPEN:
            return False
        up.forwardFrame(opcode, payload, True)
        return True

    def moveOff(self) -> None:
        """
        The backend is being disabled: close the upstream with 1012 and
        connect to another backend.
        """
        up = self.upstream
        if up is not None and self.state == UP:
            self.lost = self.backend
            up.closeWith(1012, b"backend going away")

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
        closing = self._closing.pop(leg, None)
        if closing is not None:
            # An upstream closed on purpose (see stopWith) is gone.
            connection, gone = closing
            if connection is not None:
                connection.connectionLost(Failure(ConnectionDone()))
            gone.callback(None)
            return
        if leg is None or leg is not self.upstream:
            return
        backend = self.backend
        self._release()
        connection, self.connection = self.connection, None
        if self.state != UP:
            return
        self.log.warn(
            "channel {channel}: source {backend} lost (close code {code})",
            channel=self.channel.name,
            backend=backend.name if backend else None,
            code=getattr(leg, "remoteCloseCode", None),
        )
        if backend is not None and not getattr(leg, "wasClean", False):
            self.upstreams.backendFailed(self._routeOf(), backend, "connection lost")
        self.lost = backend
        self._setState(WAITING)
        if connection is not None:
            # The service waits, then connects again.
            connection.connectionLost(Failure(ConnectionDone()))

    # Connecting, one attempt of the service at a time.

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        """
        One attempt of the service (L{SourceEndpoint}): open an upstream to
        a backend of the route.

        @param factory: Builds what stands for the connection to the
            service, which learns through it when the source is lost.
        @return: A L{Deferred} firing with what C{factory} built once the
            source accepted; cancelling it cancels the attempt.
        """
        self._setState(CONNECTING)
        route = self._routeOf()
        info = ConnectionInfo("", route.config.path + self.channel.key, "", ())
        d = Deferred.fromCoroutine(
            self.upstreams.openUpstream(
                route, info, self.request, (), self.lost, float("inf")
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

    def request(self, backend: Backend) -> tuple[str, list[tuple[str, str]]]:
        """
        @return: The request target and header fields for the source.
        """
        config = backend.config
        path, _, query = self.channel.key.partition("?")
        resource = joinPath(config.path, path)
        query = "&".join(q for q in (config.query, query) if q)
        return resource + ("?" + query if query else ""), []

    def _opened(
        self, pair: tuple[Backend, UpstreamProtocol], connection: IProtocol
    ) -> None:
        backend, up = pair
        self.connection = connection
        self.lost = None
        self.upstream = up
        self.backend = backend
        up.forgetHandshake()
        route = self._routeOf()
        # Told of the closing too, even if a reload changes the route's.
        self._listener = route.loadListener
        _countOpened(route, backend, self.channel.name)
        reader = SourceReader(self.channel, up)
        up.target = reader
        up.listener = self
        up.dataPath = reader
        for line in self.routeConfig.subscribe:
            up.forwardFrame(TEXT, line.encode("utf-8"), True)
        self._setState(UP)
        self.log.info(
            "channel {channel}: source {backend} connected",
            channel=self.channel.name,
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
            channel=self.channel.name,
            error=f.getErrorMessage(),
        )
        self._setState(WAITING)

    def _release(self) -> None:
        """
        Forget the upstream and give its backend's connection back (its
        slot to the oldest waiter of the route's queue).
        """
        backend = self.backend
        self.upstream = None
        self.backend = None
        listener, self._listener = self._listener, None
        if backend is not None:
            backend.connections -= 1
            if listener is not None:
                listener.connectionClosed(backend)
            self._routeOf().queue.slotFreed()


def _countOpened(route: Route, backend: Backend, channel: str) -> None:
    """
    Count a source's new connection against C{backend}, and tell the
    route's balancer if it listens.
    """
    backend.connections += 1
    backend.totalConnections += 1
    listener = route.loadListener
    if listener is not None:
        try:
            listener.connectionOpened(backend)
        except Exception:
            # A plugin's error: logged, and the source stays wired (the
            # service must not take it for a failed attempt).
            WebSocketSource.log.failure(
                "channel {channel}: balancer's connectionOpened failed",
                channel=channel,
            )
