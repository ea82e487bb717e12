# -*- test-case-name: tests.test_proxy -*-
"""
The relay service: listeners, routes, backends and the sessions between
them.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.logger import Logger

from wsrelay.config import NO_HEALTH, ConfigError
from wsrelay.frontend import FrontendFactory, FrontendProtocol
from wsrelay.handshake import Head, endToEnd
from wsrelay.health import HealthMonitor
from wsrelay.plugins import balancerFactories, healthCheckerFactories
from wsrelay.routing import (
    Backend,
    Route,
    RouteTable,
    buildBackends,
    endpointDescription,
)
from wsrelay.session import ProxySession
from wsrelay.upstream import UpstreamFactory, UpstreamProtocol, connectUpstream

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
        self.sessions: set[ProxySession] = set()
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
        super().startService()
        for route in self.routes.routes:
            route.monitor.start()

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
        waits = [stopped, *(s.done for s in sessions)]
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
        session = ProxySession(self, route, frontend)
        self.sessions.add(session)
        return session.open()

    def sessionEnded(self, session: ProxySession) -> None:
        """
        Forget a session whose connections are gone.
        """
        self.sessions.discard(session)

    def connectBackend(
        self, session: ProxySession, backend: Backend, timeout: float
    ) -> Deferred[UpstreamProtocol]:
        """
        Open an upstream to C{backend} for C{session}.
        """
        resource, headers = session.upstreamRequest(backend)
        return connectUpstream(
            self.clock,
            backend.endpoint,  # type: ignore[attr-defined]
            backend.factory,  # type: ignore[attr-defined]
            resource,
            backend.hostHeader(),
            headers,
            tuple(session.frontend.websocket_protocols),
            timeout,
        )

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

    def backendConnected(self, route: Route, backend: Backend) -> None:
        """
        A connection to C{backend} opened (passive health).
        """
        route.monitor.succeeded(backend)

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
