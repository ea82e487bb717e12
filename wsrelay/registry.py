# -*- test-case-name: tests.test_proxy,tests.test_fanout -*-
"""
The registry of what is open: the client sessions and the fan-out
channels (L{Registry}), and the factory that opens them for routed
clients (L{Sessions}).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from wsrelay.auth.gate import (
    authorize,
    authRequest,
    closeAtExpiry,
    withdrawOnClose,
    withHeaders,
)
from wsrelay.fanout import IDLE, Channel, FanoutSession, channelKey
from wsrelay.fanout.context import SourceContext
from wsrelay.proxy.opening import connectionInfo
from wsrelay.proxy.session import ProxySession, openPlain
from wsrelay.ws.legclosing import CLOSED
from wsrelay.ws.screening import Refused

if TYPE_CHECKING:
    from twisted.python.failure import Failure

    from wsrelay.config import RelayConfig
    from wsrelay.interfaces import Allow, ISource
    from wsrelay.roles import LiveChannel, LiveSession, Upstreams
    from wsrelay.routing import Backend, Route, RouteTable
    from wsrelay.stats import Histogram
    from wsrelay.ws.frontend import Admitter, FrontendProtocol


class Registry:
    """
    The sessions and fan-out channels open now
    (L{wsrelay.roles.SessionRegistry}).

    @ivar sessions: The sessions now open.
    @ivar channels: The fan-out channels, by route name and key.
    """

    def __init__(self) -> None:
        self.sessions: set[ProxySession | FanoutSession] = set()
        self.channels: dict[tuple[str, str], Channel] = {}

    def sessionEnded(self, session: LiveSession) -> None:
        """
        Forget a session whose connections are gone.
        """
        self.sessions.discard(session)

    def channelEnded(self, channel: LiveChannel) -> None:
        """
        Forget a channel that closed for want of clients.
        """
        key = (channel.route.name, channel.key)
        if self.channels.get(key) is channel:
            del self.channels[key]

    def onBackend(self, backend: Backend) -> list[ProxySession | FanoutSession]:
        """
        @return: The sessions whose upstream goes to C{backend}.
        """
        return [s for s in self.sessions if s.backend is backend]

    def traffic(self, backend: Backend) -> tuple[int, int, int, int]:
        """
        @return: Messages and bytes sent to C{backend}, and messages and
            bytes received from it, by closed and open connections.
        """
        sent, sentBytes = backend.sentMessages, backend.sentBytes
        received, receivedBytes = backend.receivedMessages, backend.receivedBytes
        legs = [s.upstream for s in self.sessions if s.backend is backend]
        for c in self.channels.values():
            # The websocket source's upstream; other sources have none.
            if getattr(c.source, "backend", None) is backend:
                legs.append(getattr(c.source, "upstream", None))
        for leg in legs:
            if leg is not None:
                sent += leg.messagesOut
                sentBytes += leg.bytesOut
                received += leg.messagesIn
                receivedBytes += leg.bytesIn
        return sent, sentBytes, received, receivedBytes


class Sessions:
    """
    Opens the session of a client whose handshake is valid
    (L{wsrelay.ws.frontend.SessionOpener}): a proxy session, or a membership
    of a fan-out channel, made if need be; each is kept in the registry.

    @ivar config: The configuration new sessions get (set on reload).
    """

    log = Logger()

    def __init__(
        self,
        registry: Registry,
        upstreams: Upstreams,
        admission: Admitter,
        clock: IReactorTime,
        config: RelayConfig,
        latency: Histogram,
        reactor: Any = None,
    ) -> None:
        """
        @param latency: Where sessions record how long their handshakes
            took.
        @param reactor: What fan-out sources connect with (their
            L{wsrelay.interfaces.ISourceContext}); the clock by default.
        """
        self._registry = registry
        self._upstreams = upstreams
        self._admission = admission
        self._clock = clock
        self.config = config
        self._latency = latency
        self._reactor = clock if reactor is None else reactor

    def configure(self, config: RelayConfig) -> None:
        """
        Give sessions opened from now on C{config}.
        """
        self.config = config

    def openSession(
        self, frontend: FrontendProtocol, route: Route, key: str | None = None
    ) -> Deferred[Any] | None:
        """
        Pair a client whose handshake is valid with an upstream, once the
        route's authorizer (if any) allowed it: before any backend is
        contacted.

        @param key: See L{wsrelay.ws.frontend.SessionOpener.openSession}: a
            proxy route's session with no authorizer answers the leg itself
            (L{openPlain}).
        @return: See L{wsrelay.ws.frontend.SessionOpener.openSession}.
        """
        authorizer = route.authorizer
        if authorizer is None:
            return self._open(frontend, route, None, key)
        assert frontend.head is not None
        method = frontend.head.startLine.split(" ", 1)[0]
        request = authRequest(
            method, connectionInfo(frontend, self._admission), route.name
        )
        config = route.config
        result: Deferred[Any] = Deferred()

        def decided(allow: Allow) -> None:
            # A client that left while its authorizer decided gets no
            # answer, and no backend is contacted for it.
            if frontend.state != CLOSED:
                d = self._open(frontend, route, allow)
                assert d is not None
                d.chainDeferred(result)

        def refused(f: Failure) -> None:
            if frontend.state != CLOSED:
                if isinstance(f.value, Refused):
                    frontend.keepRefusal(f.value)
                result.errback(f)

        d = authorize(authorizer, request, config.authTimeout, self._clock, config.auth)
        d.addCallbacks(decided, refused)
        withdrawOnClose(frontend, d)
        return result

    def _open(
        self,
        frontend: FrontendProtocol,
        route: Route,
        allow: Allow | None,
        key: str | None = None,
    ) -> Deferred[Any] | None:
        """
        Open the session of an allowed client: the header fields of
        C{allow} replace the client's of the same names in the upstream
        request, and its expiry closes the client with 1008.

        @param key: See L{openSession} (given with no C{allow}).
        @return: See L{openSession}: it never fires when the client leaves
            first.
        """
        if allow is not None and frontend.head is not None:
            frontend.head = withHeaders(frontend.head, allow.headers, allow.removed)
        session: ProxySession | FanoutSession
        if route.config.mode == "fanout":
            channelName = channelKey(route, frontend.remainder, frontend.query)
            try:
                channel = self.channel(route, channelName)
            except ValueError as e:
                # The source plugin rejected the new channel: this client
                # is refused, the others go on.
                self.log.error(
                    "route {route}: cannot make channel {key!r}: {error}",
                    route=route.name,
                    key=channelName,
                    error=" ".join(str(e).split()),
                )
                refusal = Refused(
                    503, "Service Unavailable", body=b"channel unavailable\n"
                )
                frontend.keepRefusal(refusal)
                return fail(refusal)
            session = FanoutSession(
                channel,
                frontend,
                registry=self._registry,
                addresses=self._admission,
                clock=self._clock,
                config=self.config,
                latency=self._latency.byRoute(route.name),
            )
        else:
            name = route.name
            # (The route's histogram, made by byRoute on its first session.)
            latency = self._latency.routes.get(name) or self._latency.byRoute(name)
            session = ProxySession(
                route,
                frontend,
                upstreams=self._upstreams,
                registry=self._registry,
                addresses=self._admission,
                clock=self._clock,
                config=self.config,
                latency=latency,
            )
        self._registry.sessions.add(session)
        if key is not None and isinstance(session, ProxySession):
            openPlain(session, key)
            return None
        d = session.open()
        if allow is not None and allow.expires is not None:
            expires = allow.expires

            def opened(result: Any) -> Any:
                closeAtExpiry(session, expires, self._clock)
                return result

            d.addCallback(opened)
        return d

    def channel(self, route: Route, key: str) -> Channel:
        """
        @return: The fan-out channel C{key} of C{route}, made if need be.
        """
        channels = self._registry.channels
        channel = channels.get((route.name, key))
        if channel is None:
            # Writes follow the reactor's turns; a test's reactor without
            # timers leaves them to the clock.
            turns = self._reactor if IReactorTime.providedBy(self._reactor) else None
            channel = Channel(
                route, key, self._registry, self._clock, self.source, turns
            )
            channels[(route.name, key)] = channel
        return channel

    def source(self, channel: Channel) -> ISource:
        """
        @return: A new source for C{channel}, from the plugin its route
            names (C{source = NAME}), with its options.
        """
        context = SourceContext(
            self._reactor,
            channel.route.name,
            lambda: channel.route,
            self._upstreams,
            self._clock,
            backends=channel.routeConfig.backends,
        )
        factory = channel.route.source
        if factory is None:
            return context.websocket(channel)
        return factory.build(channel, channel.routeConfig.sourceOptions, context)

    def startChannels(self, routes: RouteTable) -> None:
        """
        Connect the channels of the fan-out routes with C{connect = eager}.
        """
        for route in routes.routes:
            config = route.config
            if config.mode == "fanout" and config.channel == "route":
                channel = self.channel(route, "")
                if config.connect == "eager" and channel.state == IDLE:
                    channel.start()
