# -*- test-case-name: tests.test_proxy -*-
"""
The relay service: listeners, routes, backends and the sessions between
them.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, cast

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.endpoints import clientFromString
from twisted.logger import Logger

from wsrelay.config import NO_HEALTH, ConfigError
from wsrelay.descriptors import RESERVED, Limit, Shortage
from wsrelay.fanout import IDLE, Channel, FanoutSession, channelKey
from wsrelay.frontend import FrontendFactory, FrontendProtocol, Refused
from wsrelay.handshake import (
    CLAIMED,
    FORWARDING,
    Head,
    endToEnd,
    forwardedNode,
    quotedString,
)
from wsrelay.health import HealthMonitor
from wsrelay.plugins import (
    balancerFactories,
    healthCheckerFactories,
    logPlugins,
)
from wsrelay.proxyprotocol import listenerEndpoint, withoutAddress
from wsrelay.routing import (
    DISABLED,
    DRAINING,
    ENABLED,
    Backend,
    ConnectionInfo,
    Route,
    RouteTable,
    buildBackends,
    endpointDescription,
)
from wsrelay.session import ProxySession
from wsrelay.stats import LATENCY_BUCKETS, Histogram, TokenBucket
from wsrelay.tls import BadCAFile, loadTrust, tlsEndpoint
from wsrelay.upstream import (
    UpstreamError,
    UpstreamFactory,
    UpstreamLocalError,
    UpstreamProtocol,
    UpstreamRefused,
    UpstreamShortageError,
    UpstreamTimeout,
    connectUpstream,
)
from wsrelay.workers import SharedPorts, WorkerPool, WorkerSpec

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IListeningPort

    from wsrelay.config import RelayConfig, RouteConfig


#: Per-address handshake buckets kept before idle ones are forgotten.
MAX_BUCKETS = 10000


def _tooMany(code: int, reason: str, body: bytes) -> Refused:
    return Refused(code, reason, [("Retry-After", "1")], body)


def originAllowed(head: Head | None, origins: Sequence[str]) -> bool:
    """
    @return: Whether the request's C{Origin} is one of C{origins}, where
        C{scheme://*.domain} stands for any subdomain of C{domain}.
    """
    origin = (head.get("origin") if head is not None else None) or ""
    origin = origin.strip().lower()
    if not origin:
        return False
    for allowed in origins:
        if origin == allowed:
            return True
        scheme, _, host = allowed.partition("://*.")
        if host and origin.startswith(scheme + "://") and origin.endswith("." + host):
            return True
    return False


class Listener(Service):
    """
    Listens on one server endpoint string while running.

    @ivar port: The listening port, once listening.
    """

    log = Logger()

    def __init__(
        self, reactor: Any, description: str, factory: Any, listenOn: Any = None
    ) -> None:
        self._reactor = reactor
        # What the endpoint listens with: the reactor, or the workers'
        # SharedPorts.
        self._listenOn = reactor if listenOn is None else listenOn
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
        endpoint = listenerEndpoint(self._listenOn, self.description)
        d = endpoint.listen(self._factory)

        def listening(port: IListeningPort) -> IListeningPort:
            self.port = port
            self.log.info(
                "listening on {description} (port {port})",
                description=self.description,
                port=getattr(port.getHost(), "port", None),
            )
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
        self,
        config: RelayConfig,
        reactor: Any = None,
        clock: Any = None,
        worker: WorkerSpec | None = None,
        descriptors: Limit | None = None,
    ) -> None:
        """
        @param reactor: Listens and connects; the global one by default.
        @param clock: Times the relay's own timers (idle timeout,
            handshake budget); the reactor by default.
        @param worker: For a worker other than worker 0 (see
            L{wsrelay.workers}): its number and ports.
        @param descriptors: The process's open-file limit
            (L{wsrelay.descriptors.raiseLimit}): new clients beyond what it
            leaves room for get 503.  L{None}: no such check.
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
        self.startedAt = self.clock.seconds()
        self.handshakeLatency = Histogram(LATENCY_BUCKETS)
        self.admission = TokenBucket(self.clock, config.maxHandshakesPerSecond)
        self.clientConnections = 0
        self._perAddress: dict[str, int] = {}
        self._buckets: dict[str, TokenBucket] = {}
        self.random = random.Random()
        self.descriptors = descriptors
        self.shortage = Shortage(self.clock, descriptors)
        self._draining: dict[Backend, IDelayedCall] = {}
        self.frontendFactory = FrontendFactory(self)
        self.worker = 0 if worker is None else worker.index
        self.listeners = []
        for i, description in enumerate(config.listen):
            listenOn = None
            if config.workers > 1:
                listenOn = SharedPorts(
                    reactor, None if worker is None else worker.ports[i]
                )
            self.listeners.append(
                Listener(reactor, description, self.frontendFactory, listenOn)
            )
        for listener in self.listeners:
            listener.setServiceParent(self)
        self.workerPool: WorkerPool | None = None
        if worker is not None:
            return
        if config.workers > 1:
            self.workerPool = WorkerPool(self, reactor)
            self.workerPool.setServiceParent(self)
        if config.admin is not None:
            from wsrelay.admin import adminSite

            self.adminListener = Listener(reactor, config.admin, adminSite(self))
            self.adminListener.setServiceParent(self)
        if config.demo.echo or config.demo.ticker:
            from wsrelay.demo import DemoService

            DemoService(config.demo, reactor).setServiceParent(self)

    def _buildRoute(self, config: RouteConfig, previous: Route | None) -> Route:
        """
        Make the run-time route for a route's configuration, reusing the
        backends of C{previous} that did not change.

        @raise ConfigError: When a plugin rejects its options or the
            C{ca_file} cannot be used; the backends of C{previous} are
            untouched then.
        """
        trust = self._trust(config)
        if previous is not None:
            # Check the plugins on stand-in backends first.
            self._plugins(config, buildBackends(config, None))
        backends = buildBackends(config, previous)
        balancer, checker = self._plugins(config, backends)
        if not config.verify and any(b.config.secure for b in backends):
            self.log.warn(
                "route {route}: verify = off: wss:// backends' certificates"
                " are NOT checked",
                route=config.name,
            )
        for b in backends:
            # Made again at each reload: limits apply to new connections.
            b.factory = UpstreamFactory(b.url, self.config, self._reactor)
            if b.config.secure:
                b.endpoint = tlsEndpoint(
                    self._reactor,
                    b.host,
                    b.port,
                    self.config.connectTimeout,
                    config.verify,
                    trust,
                )
            else:
                b.endpoint = clientFromString(
                    self._reactor,
                    endpointDescription(
                        b.host, b.port, False, self.config.connectTimeout
                    ),
                )
        monitor = HealthMonitor(
            config.name,
            backends,
            checker,
            self.clock,
            config.healthInterval,
            config.healthTimeout,
            config.rise,
            config.fall,
            config.slowstart,
        )
        return Route(config, backends, balancer, monitor)

    def _trust(self, config: RouteConfig) -> Any:
        """
        @return: The trust root of the route's C{ca_file}, or L{None}.
        @raise ConfigError: When it cannot be used.
        """
        if config.caFile is None:
            return None
        try:
            return loadTrust(config.caFile)
        except (OSError, BadCAFile) as e:
            raise ConfigError(
                self.config.path, str(e), config.section, "ca_file"
            ) from None

    def _plugins(
        self, config: RouteConfig, backends: Sequence[Backend]
    ) -> tuple[Any, Any]:
        """
        Build a route's balancer and health checker.

        @raise ConfigError: When one rejects its options.
        """
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
        return balancer, checker

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
        limit = self.descriptors
        if limit is not None:
            raised = "" if limit.soft == limit.found else "raised from {found}; "
            self.log.info(
                "open files: limit {soft} (" + raised + "hard limit {hard}): room"
                " for about {capacity} proxied connections or {clients} fan-out"
                " clients",
                soft=limit.soft,
                found=limit.found,
                hard=limit.hard,
                capacity=limit.capacity,
                clients=limit.budget,
            )
        self.startedAt = self.clock.seconds()
        super().startService()
        for route in self.routes.routes:
            route.monitor.start()
        self._startChannels()

    def _startChannels(self) -> None:
        """
        Connect the channels of the fan-out routes with C{connect = eager}.
        """
        for route in self.routes.routes:
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
        self.shortage.flush()
        for route in self.routes.routes:
            route.monitor.stop()
        for call in self._draining.values():
            if call.active():
                call.cancel()
        self._draining.clear()
        sessions = list(self.sessions)
        self.spreadCloses(sessions, 1001, b"relay shutting down")
        channels = list(self.channels.values())
        self.channels.clear()
        waits = [stopped, *(s.done for s in sessions), *(c.stop() for c in channels)]
        d = DeferredList(waits, consumeErrors=True)
        d.addTimeout(self.config.drainTimeout, self.clock)
        return d.addBoth(lambda _: None)

    def spreadCloses(
        self, sessions: Sequence[ProxySession | FanoutSession], code: int, reason: bytes
    ) -> None:
        """
        Close C{sessions} with C{code}, each at a random moment within
        C{close_spread} seconds (at once when it is 0), so that their
        clients do not all reconnect in the same instant.
        """
        spread = self.config.closeSpread
        for session in sessions:
            if spread > 0:
                delay = self.random.uniform(0, spread)
                self.clock.callLater(delay, session.shutdown, code, reason)
            else:
                session.shutdown(code, reason)

    # Operating: admin actions and reload.

    def traffic(self, route: Route, backend: Backend) -> tuple[int, int, int, int]:
        """
        @return: Messages and bytes sent to C{backend} through C{route}, and
            messages and bytes received from it, by closed and open
            connections.
        """
        sent, sentBytes = backend.sentMessages, backend.sentBytes
        received, receivedBytes = backend.receivedMessages, backend.receivedBytes
        legs = [s.upstream for s in self.sessions if s.backend is backend]
        legs += [c.upstream for c in self.channels.values() if c.backend is backend]
        for leg in legs:
            if leg is not None:
                sent += leg.messagesOut
                sentBytes += leg.bytesOut
                received += leg.messagesIn
                receivedBytes += leg.bytesIn
        return sent, sentBytes, received, receivedBytes

    def adminToken(self) -> str | None:
        """
        @return: The admin API's bearer token (the first line of
            C{admin_token_file}), or L{None} when there is none.
        """
        path = self.config.adminTokenFile
        if path is None:
            return None
        try:
            with open(path, encoding="utf-8") as f:
                token = f.readline().strip()
        except (OSError, UnicodeDecodeError) as e:
            self.log.error("cannot read admin_token_file: {error}", error=e)
            return None
        return token or None

    def setBackendState(self, routeName: str, backendName: str, action: str) -> Backend:
        """
        Drain, disable or enable a backend of a route.

        C{drain}: no new connections; open ones may finish, and those left
        after C{drain_timeout} are closed with 1012.  C{disable}: no new
        connections, and open ones are closed with 1012 now (spread over
        C{close_spread}).  C{enable}: back in rotation.

        @raise KeyError: When the route or the backend is unknown.
        @raise ValueError: When C{action} is not one of those.
        """
        route = self.routes.byName(routeName)
        if route is None:
            raise KeyError(f"no route {routeName!r}")
        for backend in route.backends:
            if backend.name == backendName:
                break
        else:
            raise KeyError(f"route {routeName!r} has no backend {backendName!r}")
        states = {"drain": DRAINING, "disable": DISABLED, "enable": ENABLED}
        if action not in states:
            raise ValueError(f"unknown action {action!r}")
        self.log.info(
            "route {route}: backend {backend} {state} (was {previous})",
            route=routeName,
            backend=backendName,
            state=states[action],
            previous=backend.admin,
        )
        backend.admin = states[action]
        self._cancelDrain(backend)
        if action == "disable":
            self._closeBackend(backend)
        elif action == "drain":
            self._drainLater(backend)
        if self.workerPool is not None:
            self.workerPool.act(routeName, backendName, action)
        return backend

    def _drainLater(self, backend: Backend) -> None:
        """
        Close what is left on a draining backend after C{drain_timeout}.
        """
        self._cancelDrain(backend)
        self._draining[backend] = self.clock.callLater(
            self.config.drainTimeout, self._drainEnded, backend
        )

    def _drainEnded(self, backend: Backend) -> None:
        self._draining.pop(backend, None)
        self._closeBackend(backend)

    def _cancelDrain(self, backend: Backend) -> None:
        call = self._draining.pop(backend, None)
        if call is not None and call.active():
            call.cancel()

    def _closeBackend(self, backend: Backend) -> None:
        """
        Close every connection to C{backend} with 1012: proxied clients
        (spread), and fan-out sources (whose channels move to another
        backend and keep their clients).
        """
        sessions = [s for s in self.sessions if s.backend is backend]
        self.spreadCloses(sessions, 1012, b"backend going away")
        for channel in list(self.channels.values()):
            if channel.backend is backend:
                channel.moveOff()

    def reload(self) -> Deferred[None]:
        """
        Read the configuration file again and apply it: new routes and
        backends take traffic, removed backends are drained, changed
        settings apply to new connections; no open connection is closed.

        @return: A L{Deferred} that fires when applied, or fails with the
            L{ConfigError} (the running configuration then stays).
        """
        from wsrelay.tap import readConfig

        try:
            config = readConfig(self.config.path)
            self._apply(config)
        except ConfigError as e:
            self.log.error("reload rejected, configuration unchanged: {error}", error=e)
            return fail(e)
        self.log.info(
            "reloaded {path}: {routes} routes",
            path=config.path,
            routes=len(config.routes),
        )
        if self.workerPool is not None:
            return self.workerPool.reload()
        return succeed(None)

    def _apply(self, config: RelayConfig) -> None:
        """
        Make C{config} the configuration in force.

        @raise ConfigError: When a plugin rejects its options, or its
            C{max_connections} does not fit in the open-file limit; nothing
            has changed then.
        """
        limit = self.descriptors
        problem = None if limit is None else limit.problem(config.maxConnections)
        if problem is not None:
            raise ConfigError(config.path, problem, "relay", "max_connections")
        if (config.listen, config.admin, config.workers) != (
            self.config.listen,
            self.config.admin,
            self.config.workers,
        ):
            self.log.warn(
                "listen, admin and workers changes take effect at restart only"
            )
        previous = self.config
        self.config = config
        balancers, checkers = self._balancers, self._checkers
        try:
            self._balancers = balancerFactories()
            self._checkers = healthCheckerFactories()
            # Check every route on stand-in backends before the real ones,
            # which the running routes share, are touched.
            for rc in config.routes:
                self._trust(rc)
                self._plugins(rc, buildBackends(rc, None))
        except ConfigError:
            self.config = previous
            self._balancers, self._checkers = balancers, checkers
            raise
        table = self.routes
        routes = tuple(
            self._buildRoute(rc, table.byName(rc.name)) for rc in config.routes
        )
        old = self.routes.routes
        kept = {b for r in routes for b in r.backends}
        for route in old:
            route.monitor.stop()
            for backend in route.backends:
                if backend not in kept and backend.admin != DRAINING:
                    backend.admin = DRAINING
                    self._drainLater(backend)
        self._trusted = [ipaddress.ip_network(n) for n in config.trustedProxies]
        self.admission = TokenBucket(self.clock, config.maxHandshakesPerSecond)
        self.routes = RouteTable(routes)
        self.frontendFactory.configure()
        for route in routes:
            if self.running:
                route.monitor.start()
        for channel in list(self.channels.values()):
            current = self.routes.byName(channel.route.name)
            if current is not None and current.config.mode == "fanout":
                channel.route = current
            else:
                channel.retire()
        if self.running:
            self._startChannels()

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
            # One of the candidates, as IBalancer.pick promises.
            backend = cast("Backend | None", route.balancer.pick(candidates, info))
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

        @raise Refused: 503 when no backend is available, or (with
            C{Retry-After}) when the relay is out of descriptors or local
            ports; 502 when none could be reached, 504 when the time ran
            out; a backend's own refusal is relayed as it came.
        """
        tried: list[Backend] = []
        timedOut = local = False
        for backend in self._candidates(route, info, tried, avoid):
            remaining = deadline - self.clock.seconds()
            if remaining <= 0:
                timedOut = True
                break
            resource, headers = request(backend)
            try:
                up = await connectUpstream(
                    self.clock,
                    backend.endpoint,
                    backend.factory,
                    resource,
                    backend.hostHeader(),
                    headers,
                    offered,
                    min(self.config.connectTimeout, remaining),
                )
            except UpstreamRefused as e:
                self.backendAnswered(route, backend, e.status)
                raise
            except UpstreamLocalError as e:
                # The relay's problem: not the backend's failure, and not
                # logged per connection; the next backend would fail the
                # same way.
                self.shortage.exhausted()
                local = True
                reason = str(e)
                break
            except UpstreamShortageError as e:
                if self.shortage.short():
                    local = True
                    reason = str(e)
                    break
                timedOut = False
                self.backendFailed(route, backend, str(e))
                continue
            except UpstreamError as e:
                timedOut = isinstance(e, UpstreamTimeout)
                self.backendFailed(route, backend, str(e))
                continue
            route.monitor.succeeded(backend)
            return backend, up
        if local:
            self.shortage.occurred(reason)
            raise _tooMany(
                503, "Service Unavailable", b"relay out of resources, retry shortly\n"
            )
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

    def clientArrived(self, frontend: FrontendProtocol) -> None:
        """
        A client connected.  When even half of the descriptors kept for the
        relay (L{wsrelay.descriptors.RESERVED}) are taken, it is dropped at once:
        clients that hold their connections without finishing a handshake
        would otherwise take the last descriptors, and then the kernel's
        C{accept} fails, which Twisted logs for every connection.
        """
        self.clientConnections += 1
        if not self._descriptorsLeft(None):
            self.shortage.occurred("no descriptor left to answer new clients")
            assert frontend.transport is not None
            frontend.transport.abortConnection()

    def clientLeft(self, frontend: FrontendProtocol) -> None:
        """
        A client's connection is gone.
        """
        self.clientConnections -= 1
        address = frontend.countedAddress
        if address is not None:
            frontend.countedAddress = None
            left = self._perAddress[address] - 1
            if left:
                self._perAddress[address] = left
            else:
                del self._perAddress[address]

    def admit(self, frontend: FrontendProtocol, route: Route) -> Refused | None:
        """
        Apply the abuse limits to a routed, valid upgrade request.

        @return: The refusal to answer with, or L{None} to go on.
        """
        config = self.config
        origins = route.config.allowedOrigins
        if origins and not originAllowed(frontend.head, origins):
            return Refused(403, "Forbidden", body=b"origin not allowed\n")
        address = self.clientAddress(frontend)
        if config.handshakeRatePerIp > 0:
            bucket = self._buckets.get(address)
            if bucket is None:
                if len(self._buckets) >= MAX_BUCKETS:
                    self._buckets = {
                        a: b for a, b in self._buckets.items() if not b.full()
                    }
                bucket = TokenBucket(self.clock, config.handshakeRatePerIp)
                self._buckets[address] = bucket
            if not bucket.take():
                return _tooMany(429, "Too Many Requests", b"handshake rate exceeded\n")
        if config.maxConnections and self.clientConnections > config.maxConnections:
            return _tooMany(503, "Service Unavailable", b"too many connections\n")
        if not self._descriptorsLeft(route):
            self.shortage.occurred("the open-file limit leaves no room for more")
            return _tooMany(
                503, "Service Unavailable", b"relay at capacity, retry shortly\n"
            )
        count = self._perAddress.get(address, 0)
        if config.maxConnectionsPerIp and count >= config.maxConnectionsPerIp:
            return _tooMany(
                429, "Too Many Requests", b"too many connections from this address\n"
            )
        if not self.admission.take():
            return _tooMany(
                503, "Service Unavailable", b"too many new connections, retry shortly\n"
            )
        self._perAddress[address] = count + 1
        frontend.countedAddress = address
        return None

    def _descriptorsLeft(self, route: Route | None) -> bool:
        """
        @param route: The route of a client that has been accepted (so is
            counted in C{clientConnections}), or L{None} for a client that
            was just accepted, whose route is not known yet.
        @return: With a route, whether the open-file limit leaves room for
            this client and, for a proxy route, its upstream; without,
            whether it leaves room to read this client's request and answer
            it (half of L{wsrelay.descriptors.RESERVED} more).
        """
        limit = self.descriptors
        if limit is None:
            return True
        budget = limit.budget
        if route is None:
            budget += RESERVED // 2
        clients = self.clientConnections
        if 2 * clients + len(self.channels) < budget:
            # Far from the limit: no need to count the upstreams.
            return True
        upstreams = sum(b.connections for r in self.routes.routes for b in r.backends)
        more = 1 if route is not None and route.config.mode == "proxy" else 0
        return clients + upstreams + more <= budget

    def clientAddress(self, frontend: FrontendProtocol) -> str:
        """
        The client's address: the peer's, or the last untrusted one in
        C{X-Forwarded-For} when the peer is a trusted proxy (and not a
        load balancer's socket left by a PROXY header without an address:
        L{withoutAddress}).
        """
        # The client is connected while its request is handled.
        assert frontend.transport is not None
        peer = getattr(frontend.transport.getPeer(), "host", None) or "unix"
        if (
            not self._trusted
            or frontend.head is None
            or withoutAddress(frontend.transport)
        ):
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
        The header fields of an upstream request: the client's end-to-end
        fields and the relay's forwarding ones (the table under
        C{trusted_proxies} in docs/configuration.md).  A client's
        C{X-Forwarded-For}, C{X-Forwarded-Proto}, C{X-Forwarded-Host},
        C{X-Real-IP} and C{Forwarded} are dropped and the relay writes its
        own; from a peer in C{trusted_proxies}, as nginx's realip and
        C{$proxy_add_x_forwarded_for} do, its C{X-Forwarded-For} and
        C{Forwarded} are kept with the peer appended, and its
        C{X-Forwarded-Proto} and C{X-Forwarded-Host} are believed.  The
        fields in L{CLAIMED} are dropped from an untrusted peer and passed
        on from a trusted one; a field whose name holds C{_} is dropped
        from any client.

        @return: The fields, in order.
        """
        # The client is connected while its request is handled.
        assert frontend.transport is not None
        peer = str(getattr(frontend.transport.getPeer(), "host", None) or "unix")
        trusted = self._isTrusted(peer) and not withoutAddress(frontend.transport)
        headers = [
            (n, v)
            for (n, v) in endToEnd(
                head, FORWARDING if trusted else FORWARDING | CLAIMED
            )
            # CGI, WSGI and PHP read X_Forwarded_For as X-Forwarded-For:
            # nginx drops such names (underscores_in_headers off).
            if "_" not in n
        ]
        proto = "https" if frontend.secure else "http"
        host = head.get("host")
        element = f"for={forwardedNode(peer)};proto={proto}"
        if host:
            element += ";host=" + quotedString(host)
        chain = forwarded = None
        if trusted:
            chain = head.get("x-forwarded-for")
            forwarded = head.get("forwarded")
            proto = head.get("x-forwarded-proto") or proto
            host = head.get("x-forwarded-host") or host
        headers.append(("X-Forwarded-For", f"{chain}, {peer}" if chain else peer))
        headers.append(("X-Forwarded-Proto", proto))
        if host:
            headers.append(("X-Forwarded-Host", host))
        headers.append(("X-Real-IP", self.clientAddress(frontend)))
        headers.append(
            ("Forwarded", f"{forwarded}, {element}" if forwarded else element)
        )
        return headers
