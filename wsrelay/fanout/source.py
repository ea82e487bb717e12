# -*- test-case-name: tests.test_fanout_units -*-
"""
A fan-out channel's source: how its bytes are read (L{SourceReader}, the
source leg's data path) and how the channel keeps connecting to it (a
L{twisted.application.internet.ClientService} whose endpoint,
L{SourceEndpoint}, asks the relay for a source each time, waiting between
attempts as L{sourceBackoff} says).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, cast
from weakref import ref

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import CancelledError, Deferred, fail
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

from wsrelay.routing import ConnectionInfo, joinPath
from wsrelay.ws.framing import TEXT
from wsrelay.ws.legclosing import CloseListener
from wsrelay.ws.legs import FrameSink

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


class SourceChannel(FrameSink, CloseListener, Protocol):
    """
    What of a fan-out channel (L{wsrelay.fanout.channel.Channel}) its source
    uses: the source leg's C{target} and C{listener}.
    """

    #: L{IDLE}, L{CONNECTING}, L{UP}, L{WAITING} or L{STOPPED}.
    state: str
    #: The route the channel belongs to.
    route: Route
    #: The channel's path and query (C{channel = path}), or C{""}.
    key: str
    #: The current upstream, or L{None}.
    upstream: UpstreamProtocol | None
    #: The backend of the current upstream, or L{None}.
    backend: Backend | None
    #: Upstream connections opened.
    connects: int
    #: The channel's members, each with C{send(data, count)}.
    members: dict[Any, None]
    #: Messages written or queued to a client.
    deliveries: int
    #: The framed messages of the read being parsed, or L{None}.
    batch: list[bytes] | None

    @property
    def name(self) -> str:
        """
        The channel's name, for logs.
        """

    @property
    def routeConfig(self) -> FanoutRouteConfig:
        """
        The configuration of the channel's route.
        """


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


def _settingsOf(channel: ref[SourceChannel]) -> Callable[[], tuple[float, float]]:
    """
    @return: What gives the route's C{backoff_base} and C{backoff_cap} in
        force for C{channel}'s L{sourceBackoff}, holding the channel
        weakly (a stopped L{ClientService} lives on in its own reference
        cycle).
    """

    def settings() -> tuple[float, float]:
        alive = channel()
        assert alive is not None
        config = alive.routeConfig
        return config.backoffBase, config.backoffCap

    return settings


@implementer(IStreamClientEndpoint)
class SourceEndpoint:
    """
    The endpoint of a channel's L{ClientService}: each connection attempt
    asks the relay for a source (L{SourceLink.connect}).
    """

    def __init__(self, link: SourceLink) -> None:
        # Held weakly: a stopped ClientService is itself a reference cycle
        # (its Logger), which must not keep the channel alive.
        self._link = ref(link)
        self._name = link.channel.name

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        """
        Open a source.
        """
        link = self._link()
        if link is None:
            return fail(CancelledError("the channel is gone"))
        return link.connect(protocolFactory)

    def __repr__(self) -> str:
        """
        How the service's log lines name it.
        """
        return f"the source of channel {self._name}"


class SourceTransport:
    """
    What the L{ClientService} sees of a source's connection: it only ever
    closes it (when the service stops, after the channel closed the
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
    The data path of a channel's source leg (L{RelayLeg.dataPath}):
    Autobahn parses each read from the source (L{RelayLeg.parse}), its
    complete messages reach L{wsrelay.fanout.channel.Channel.forwardFrame}
    (the leg's C{target}) and are framed into the channel's batch, and the
    batch goes to each member in one write.
    """

    def __init__(self, channel: SourceChannel, leg: UpstreamProtocol) -> None:
        self.channel = channel
        self.leg = leg

    def dataReceived(self, data: bytes) -> None:
        """
        Parse one read from the source, then write its messages to every
        member at once.
        """
        channel = self.channel
        batch: list[bytes] = []
        channel.batch = batch
        try:
            self.leg.parse(data)
        finally:
            channel.batch = None
        if not batch:
            return
        count = len(batch)
        chunk = batch[0] if count == 1 else b"".join(batch)
        members = channel.members
        channel.deliveries += count * len(members)
        for member in members:
            member.send(chunk, count)


class SourceLink:
    """
    Keeps a channel connected to its source: a L{ClientService} whose
    endpoint (L{SourceEndpoint}) asks the relay for a source each time (the
    balancer picks a backend per attempt), waiting between attempts as
    L{sourceBackoff} says.

    @ivar random: The jitter of the waits.
    @ivar connection: Stands for the source's connection to the service,
        while one is open.
    @ivar lost: The backend of the source lost last (or being moved off),
        which the next attempt avoids; else L{None}.
    """

    log = Logger()

    def __init__(
        self, channel: SourceChannel, upstreams: Upstreams, clock: IReactorTime
    ) -> None:
        """
        @param upstreams: Opens the source's connection.
        @param clock: Times the waits between attempts.
        """
        # The channel holds this link: a weak reference back, so that an
        # ended channel is freed at once by reference counting.
        self._channel = ref(channel)
        self.random = random.Random()
        self.connection: IProtocol | None = None
        self.lost: Backend | None = None
        self._upstreams = upstreams
        self._clock = clock
        #: Connects and reconnects (a new one each time the channel starts).
        self._service: ClientService | None = None

    @property
    def channel(self) -> SourceChannel:
        """
        The channel it connects (alive while it can call this).
        """
        channel = self._channel()
        assert channel is not None
        return channel

    def start(self) -> None:
        """
        Connect to the source, and keep connecting after a loss or a failed
        attempt.
        """
        service = self._service = ClientService(
            SourceEndpoint(self),
            Factory.forProtocol(NullProtocol),
            sourceBackoff(_settingsOf(self._channel), self.random),
            clock=self._clock,
        )
        service.startService()

    def stop(self) -> None:
        """
        Stop connecting: cancels a pending attempt or wait; a connected
        source is already closing (its transport's C{loseConnection} is a
        no-op), and the channel waits for it itself.
        """
        service, self._service = self._service, None
        if service is not None:
            service.stopService()

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        """
        One attempt of the service (L{SourceEndpoint}): open an upstream to
        a backend of the route.

        @param factory: Builds what stands for the connection to the
            service, which learns through it when the source is lost.
        @return: A L{Deferred} firing with what C{factory} built once the
            source accepted; cancelling it cancels the attempt.
        """
        channel = self.channel
        channel.state = CONNECTING
        route = channel.route
        info = ConnectionInfo("", route.config.path + channel.key, "", ())
        d = Deferred.fromCoroutine(
            self._upstreams.openUpstream(
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
        channel = self.channel
        self.connection = connection
        self.lost = None
        channel.state = UP
        channel.upstream = up
        channel.backend = backend
        up.forgetHandshake()
        channel.connects += 1
        backend.connections += 1
        backend.totalConnections += 1
        listener = channel.route.loadListener
        if listener is not None:
            try:
                listener.connectionOpened(backend)
            except Exception:
                # A plugin's error: logged, and the source stays wired (the
                # service must not take it for a failed attempt).
                self.log.failure(
                    "channel {channel}: balancer's connectionOpened failed",
                    channel=channel.name,
                )
        up.target = channel
        up.listener = channel
        up.dataPath = SourceReader(channel, up)
        for line in channel.routeConfig.subscribe:
            up.forwardFrame(TEXT, line.encode("utf-8"), True)
        self.log.info(
            "channel {channel}: source {backend} connected",
            channel=channel.name,
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
        self.channel.state = WAITING
