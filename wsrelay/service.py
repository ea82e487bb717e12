# -*- test-case-name: tests.test_proxy -*-
"""
The relay service: listeners, routes, backends and the sessions between
them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.logger import Logger

from wsrelay.config import NO_HEALTH, ConfigError
from wsrelay.fanout import IDLE, Channel, FanoutSession, channelKey
from wsrelay.frontend import FrontendFactory, FrontendProtocol, Refused
from wsrelay.handshake import Head, endToEnd
from wsrelay.health import HealthMonitor
from wsrelay.plugins import balancerFactories, healthCheckerFactories, logPlugins
from wsrelay.routing import (
    Backend,
    ConnectionInfo,
    Route,
    RouteTable,
    buildBackends,
    endpointDescription,
)
from wsrelay.session import ProxySession
from wsrelay.upstream import (
    UpstreamError,
    UpstreamFactory,
    UpstreamProtocol,
    UpstreamRefused,
    UpstreamTimeout,
    connectUpstream,
)

if TYPE_CHECKING:
    from twisted.internet.interfaces import IListeningPort

    from wsrelay.config import RelayConfig, RouteConfig


class Listener(Service):
    """
    Listens on one server endpoint string while running.

    @ivar port: The listening port, once listening.
    """

    log = Logger()

    def __init__(self, reactor: Any, description: str, factory: Any) -> None:
        self._reactor = reactor
        self.description = description
        self._factory = factory
        self.port: IListeningPort | None = None
        self.listening: Deferred[IListeningPort] = Deferred()
        self.failed = False

    def startService(self) -> None:
        """
        Start listening; a port that cannot be had is one line in the log
        and stops the relay.
        """
        super().startService()
        endpoint = serverFromString(self._reactor, self.description)
        d = endpoint.listen(self._factory)

        def listening(port: IListeningPort) -> IListeningPort:
            self.port = port
            self.listening.callback(port)
            return port

        def failed(f: Any) -> None:
            self.failed = True
            self.log.critical(
                "cannot listen on {description}: {error}",
                description=self.description,
                error=f.getErrorMessage(),
            )
            self.listening.errback(f)
            # twistd starts services before the reactor runs.
            self._reactor.callWhenRunning(self._reactor.stop)

        d.addCallbacks(listening, failed)

    def stopService(self) -> Deferred[None]:
        """
        Stop listening.
        """
        super().stopService()
        port, self.port = self.port, None
        if port is None:
            return succeed(None)
        return port.stopListening()  # type: ignore[return-value]


class RelayService(MultiService):
    """
    wsrelay: routes client WebSocket connections to backends.

    @ivar config: The configuration in force.
    @ivar routes: The routes in force.
    @ivar sessions: The sessions now open.
    @ivar channels: The fan-out channels, by route name and key.
    """

    log = Logger()

    def __init__(
        self, config: RelayConfig, reactor: Any = None, clock: Any = None
    ) -> None:
        """
        @param reactor: Listens and connects; the global one by default.
        @param clock: Times the relay's own timers (idle timeout,
            handshake budget); the reactor by default.
        """
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self._reactor = reactor
        self.clock = reactor if clock is None else clock
        self.config = config
        self.sessions: set[ProxySession | FanoutSession] = set()
        self.channels: dict[tuple[str, str], Channel] = {}
        self._balancers = balancerFactories()
        self._checkers = healthCheckerFactories()
        self._trusted = [ipaddress.ip_network(n) for n in config.trustedProxies]
        self.routes = RouteTable(
            tuple(self._buildRoute(rc, None) for rc in config.routes)
        )
        self.frontendFactory = FrontendFactory(self)
        self.listeners = [
            Listener(reactor, description, self.frontendFactory)
            for description in config.listen
        ]
        for listener in self.listeners:
            listener.setServiceParent(self)
        if config.demo.echo or config.demo.ticker:
            from wsrelay.demo import DemoService

            DemoService(config.demo, reactor).setServiceParent(self)

    def _buildRoute(self, config: RouteConfig, previous: Route | None) -> Route:
        """
        Make the run-time route for a route's configuration.
        """
        backends = buildBackends(config, previous)
        for b in backends:
            if getattr(b, "factory", None) is None:
                b.factory = UpstreamFactory(b.url, self.config, self._reactor)  # type: ignore[attr-defined]
                b.endpoint = clientFromString(  # type: ignore[attr-defined]
                    self._reactor,
                    endpointDescription(
                        b.host, b.port, b.config.secure, self.config.connectTimeout
                    ),
                )
        try:
            balancer = self._balancers[config.balancer].build(backends, config.options)
        except ValueError as e:
            raise ConfigError(
                self.config.path, f"{config.balancer}: {e}", config.section, "balancer"
            ) from None
        checker = None
        if config.health != NO_HEALTH:
            try:
                checker = self._checkers[config.health].build(
                    config.healthOptions, self._reactor
                )
            except ValueError as e:
                raise ConfigError(
                    self.config.path, f"{config.health}: {e}", config.section, "health"
                ) from None
        monitor = HealthMonitor(
            config.name,
            backends,
            checker,
            self.clock,
            config.healthInterval,
            config.healthTimeout,
            config.rise,
            config.fall,
        )
        return Route(config, backends, balancer, monitor)

    def startService(self) -> None:
        """
        Start the listeners (and the demo backends).
        """
        from autobahn.websocket import USES_NVX

        self.log.info(
            "wsrelay starting: {routes} routes, native acceleration (NVX) {nvx}",
            routes=len(self.routes.routes),
            nvx="on" if USES_NVX else "off",
        )
        logPlugins()
        super().startService()
        for route in self.routes.routes:
            route.monitor.start()
            config = route.config
            if config.mode == "fanout" and config.channel == "route":
                channel = self.channel(route, "")
                if config.connect == "eager" and channel.state == IDLE:
                    channel.start()

    def stopService(self) -> Deferred[None]:
        """
        Stop accepting, close every session with 1001 and wait for their
        close handshakes (each bounded by C{close_timeout}).
        """
        stopped = super().stopService()
        for route in self.routes.routes:
            route.monitor.stop()
        sessions = list(self.sessions)
        for session in sessions:
            session.shutdown()
        channels = list(self.channels.values())
        self.channels.clear()
        waits = [stopped, *(s.done for s in sessions), *(c.stop() for c in channels)]
        d = DeferredList(waits, consumeErrors=True)
        d.addTimeout(self.config.closeTimeout * 2 + 1, self._reactor)
        return d.addBoth(lambda _: None)

    @property
    def startFailed(self) -> bool:
        """
        Whether a listener could not listen (the relay then stops).
        """
        return any(listener.failed for listener in self.listeners)

    def whenListening(self) -> Deferred[list[IListeningPort]]:
        """
        @return: A L{Deferred} that fires with every listening port.
        """
        d = DeferredList(
            [lst.listening for lst in self.listeners], fireOnOneErrback=True
        )
        return d.addCallback(lambda results: [port for (_, port) in results])

    # Sessions.

    def openSession(self, frontend: FrontendProtocol, route: Route) -> Deferred[Any]:
        """
        Pair a client whose handshake is valid with an upstream.
        """
        session: ProxySession | FanoutSession
        if route.config.mode == "fanout":
            key = channelKey(route, frontend.remainder, frontend.query)
            session = FanoutSession(self, self.channel(route, key), frontend)
        else:
            session = ProxySession(self, route, frontend)
        self.sessions.add(session)
        return session.open()

    def sessionEnded(self, session: ProxySession | FanoutSession) -> None:
        """
        Forget a session whose connections are gone.
        """
        self.sessions.discard(session)

    def channel(self, route: Route, key: str) -> Channel:
        """
        @return: The fan-out channel C{key} of C{route}, made if need be.
        """
        channel = self.channels.get((route.name, key))
        if channel is None:
            channel = Channel(self, route, key)
            self.channels[(route.name, key)] = channel
        return channel

    def channelEnded(self, channel: Channel) -> None:
        """
        Forget a channel that closed for want of clients.
        """
        if self.channels.get((channel.route.name, channel.key)) is channel:
            del self.channels[(channel.route.name, channel.key)]

    def _candidates(
        self,
        route: Route,
        info: ConnectionInfo,
        tried: list[Backend],
        avoid: Backend | None,
    ) -> Iterator[Backend]:
        """
        Pick backends of C{route} one after the other, each at most once,
        C{avoid} only when no other is left.
        """
        while True:
            candidates = [b for b in route.candidates() if b not in tried]
            if avoid is not None and len(candidates) > 1 and avoid in candidates:
                candidates.remove(avoid)
            if not candidates:
                return
            backend = route.balancer.pick(candidates, info)
            if backend is None:
                return
            tried.append(backend)
            yield backend

    async def openUpstream(
        self,
        route: Route,
        info: ConnectionInfo,
        request: Callable[[Backend], tuple[str, list[tuple[str, str]]]],
        offered: tuple[str, ...],
        avoid: Backend | None,
        deadline: float,
    ) -> tuple[Backend, UpstreamProtocol]:
        """
        Open an upstream to a backend of C{route}: try the candidates the
        balancer picks, each within C{connect_timeout}, until one accepts
        or C{deadline} (on the relay's clock) passes.

        @param info: What the balancer may know of the connection.
        @param request: Gives the request target and header fields for a
            backend.
        @param offered: The subprotocols offered.
        @param avoid: A backend to try last (the one just lost).

        @raise Refused: 503 when no backend is available, 502 when none
            could be reached, 504 when the time ran out; a backend's own
            refusal is relayed as it came.
        """
        tried: list[Backend] = []
        timedOut = False
        for backend in self._candidates(route, info, tried, avoid):
            remaining = deadline - self.clock.seconds()
            if remaining <= 0:
                timedOut = True
                break
            resource, headers = request(backend)
            try:
                up = await connectUpstream(
                    self.clock,
                    backend.endpoint,  # type: ignore[attr-defined]
                    backend.factory,  # type: ignore[attr-defined]
                    resource,
                    backend.hostHeader(),
                    headers,
                    offered,
                    min(self.config.connectTimeout, remaining),
                )
            except UpstreamRefused as e:
                self.backendAnswered(route, backend, e.status)
                raise
            except UpstreamError as e:
                timedOut = isinstance(e, UpstreamTimeout)
                self.backendFailed(route, backend, str(e))
                continue
            route.monitor.succeeded(backend)
            return backend, up
        if not tried:
            raise Refused(503, "Service Unavailable", body=b"no backend available\n")
        if timedOut:
            raise Refused(504, "Gateway Timeout", body=b"backend timed out\n")
        raise Refused(502, "Bad Gateway", body=b"no backend reachable\n")

    def backendFailed(self, route: Route, backend: Backend, reason: str) -> None:
        """
        A connection to C{backend} failed (passive health).
        """
        self.log.warn(
            "route {route}: backend {backend} failed: {reason}",
            route=route.name,
            backend=backend.name,
            reason=reason,
        )
        route.monitor.failed(backend, reason)

    def backendAnswered(self, route: Route, backend: Backend, status: int) -> None:
        """
        C{backend} refused a handshake with C{status}; 5xx counts as a
        failure, 4xx does not.
        """
        if status >= 500:
            self.backendFailed(route, backend, f"answered {status}")

    # Requests.

    def clientAddress(self, frontend: FrontendProtocol) -> str:
        """
        The client's address: the peer's, or the last untrusted one in
        C{X-Forwarded-For} when the peer is a trusted proxy.
        """
        # The client is connected while its request is handled.
        assert frontend.transport is not None
        peer = getattr(frontend.transport.getPeer(), "host", None) or "unix"
        if not self._trusted or frontend.head is None:
            return str(peer)
        chain = [
            a.strip()
            for a in (frontend.head.get("x-forwarded-for") or "").split(",")
            if a.strip()
        ]
        address = str(peer)
        while self._isTrusted(address) and chain:
            address = chain.pop()
        return address

    def _isTrusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self._trusted)

    def forwardedHeaders(
        self, frontend: FrontendProtocol, head: Head
    ) -> list[tuple[str, str]]:
        """
        @return: The client's end-to-end fields and the C{X-Forwarded-*}
            ones for an upstream request.
        """
        headers = endToEnd(head)
        # The client is connected while its request is handled.
        assert frontend.transport is not None
        peer = getattr(frontend.transport.getPeer(), "host", None) or "unix"
        xff = head.get("x-forwarded-for")
        headers.append(("X-Forwarded-For", f"{xff}, {peer}" if xff else str(peer)))
        headers.append(("X-Forwarded-Proto", "https" if frontend.secure else "http"))
        host = head.get("host")
        if host:
            headers.append(("X-Forwarded-Host", host))
        return headers
