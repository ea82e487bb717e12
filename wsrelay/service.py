# -*- test-case-name: tests.test_proxy -*-
"""
The relay service: the service tree of a relay and the collaborators it
is made of, each passed to whoever needs it.

    - L{RouteBuilder} (L{wsrelay.routes}): routes, plugins, TLS, backend
      endpoints;
    - L{Admission} (L{wsrelay.admission}): limits, origins, trusted
      proxies, forwarding header fields, client counting;
    - L{Connector} (L{wsrelay.connector}): a route's candidates, deadlines,
      failover and passive health;
    - L{Registry} and L{Sessions} (L{wsrelay.registry}): the open sessions
      and channels, and the opening of new ones;
    - L{Operations} (L{wsrelay.operations}): drain, disable, enable,
      reload, for the admin listener, the workers and SIGHUP;
    - L{Listener}s: Twisted's L{StreamServerEndpointService} for each
      endpoint string.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import CancelledError, Deferred, DeferredList, succeed
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import Logger
from zope.interface import implementer

from wsrelay.admission import Admission
from wsrelay.connector import Connector
from wsrelay.descriptors import Limit, Shortage
from wsrelay.operations import Operations
from wsrelay.plugins import logPlugins
from wsrelay.proxyprotocol import listenerEndpoint
from wsrelay.registry import Registry, Sessions
from wsrelay.routes import RouteBuilder
from wsrelay.routing import RouteTable
from wsrelay.stats import LATENCY_BUCKETS, Histogram
from wsrelay.workers import SharedPorts, WorkerPool, WorkerSpec
from wsrelay.ws.frontend import FrontendFactory

if TYPE_CHECKING:
    from twisted.internet.interfaces import IListeningPort
    from twisted.python.failure import Failure

    from wsrelay.config import RelayConfig
    from wsrelay.fanout import Channel, FanoutSession
    from wsrelay.proxy.session import ProxySession
    from wsrelay.routing import Backend, Route


@implementer(IStreamServerEndpoint)
class _ReportingEndpoint:
    """
    The endpoint of a L{Listener}: parses its endpoint string when it
    listens, and reports the outcome in one log line; a port that cannot be
    had stops the relay.
    """

    def __init__(self, listener: Listener, reactor: Any, listenOn: Any) -> None:
        self._listener = listener
        self._reactor = reactor
        # What the endpoint listens with: the reactor, or the workers'
        # SharedPorts.
        self._listenOn = reactor if listenOn is None else listenOn

    def listen(self, factory: Any) -> Deferred[IListeningPort]:
        """
        Listen on the listener's endpoint string.

        @return: A L{Deferred} that fires with the port, or with L{None}
            when it cannot be had (logged here, in one line, so that
            L{StreamServerEndpointService} has nothing to log).
        """
        listener = self._listener
        endpoint = listenerEndpoint(self._listenOn, listener.description)
        d: Deferred[Any] = endpoint.listen(factory)
        d.addCallbacks(self._listening, self._failed)
        return d

    def _listening(self, port: IListeningPort) -> IListeningPort:
        listener = self._listener
        listener.port = port
        listener.log.info(
            "listening on {description} (port {port})",
            description=listener.description,
            port=getattr(port.getHost(), "port", None),
        )
        listener.listening.callback(port)
        return port

    def _failed(self, f: Failure) -> None:
        listener = self._listener
        if f.check(CancelledError):
            # Stopped before it listened: nothing to report.
            return
        listener.failed = True
        listener.log.critical(
            "cannot listen on {description}: {error}",
            description=listener.description,
            error=f.getErrorMessage(),
        )
        listener.listening.errback(f)
        # twistd starts services before the reactor runs.
        self._reactor.callWhenRunning(self._reactor.stop)


class Listener(StreamServerEndpointService):
    """
    Twisted's service for one server endpoint string, which also tells
    when it listens, and whether it failed to.

    @ivar description: The endpoint string.
    @ivar port: The listening port, once listening.
    @ivar listening: Fires with the port, or fails.
    @ivar failed: Whether the port could not be had.
    """

    log = Logger()

    def __init__(
        self, reactor: Any, description: str, factory: Any, listenOn: Any = None
    ) -> None:
        """
        @param reactor: Stopped when the port cannot be had.
        @param listenOn: What the endpoint listens with (the workers'
            L{SharedPorts}); the reactor by default.
        """
        self.description = description
        self.port: IListeningPort | None = None
        self.listening: Deferred[IListeningPort] = Deferred()
        self.failed = False
        super().__init__(_ReportingEndpoint(self, reactor, listenOn), factory)

    def privilegedStartService(self) -> None:
        """
        Nothing yet: the listener listens when it starts (L{startService}),
        after the relay logged its start, as before twistd's privileged
        start existed for it.
        """
        Service.privilegedStartService(self)

    def startService(self) -> None:
        """
        Listen (Twisted's L{StreamServerEndpointService} does).
        """
        Service.startService(self)
        StreamServerEndpointService.privilegedStartService(self)

    def stopService(self) -> Deferred[None]:
        """
        Stop listening (or trying to).
        """
        self.port = None
        if self._waitingForPort is None:
            # Never started.
            self.running = False
            return succeed(None)
        d: Deferred[None] = super().stopService()
        return d


class RelayService(MultiService):
    """
    wsrelay: routes client WebSocket connections to backends.  Builds its
    collaborators and its service tree (listeners, worker pool, admin
    listener, demo backends); its own work is starting and stopping them.

    @ivar routes: The routes in force (one table; a reload fills it anew).
    @ivar registry: The open sessions and channels.
    @ivar admission: Who may connect, counted.
    @ivar connector: Opens upstreams.
    @ivar operations: Drain, disable, enable, reload.
    @ivar frontendFactory: The client listeners' factory.
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
        self.descriptors = descriptors
        self.startedAt = self.clock.seconds()
        self.handshakeLatency = Histogram(LATENCY_BUCKETS)
        self.worker = 0 if worker is None else worker.index
        builder = RouteBuilder(reactor, self.clock)
        self.routes = RouteTable(builder.build(config))
        self.registry = Registry()
        shortage = Shortage(self.clock, descriptors)
        self.connector = Connector(self.clock, shortage, config.connectTimeout)
        self.admission = Admission(
            self.clock,
            config,
            self.routes,
            self.registry.channels.__len__,
            descriptors,
            shortage,
        )
        self.sessionFactory = Sessions(
            self.registry,
            self.connector,
            self.admission,
            self.clock,
            config,
            self.handshakeLatency,
            reactor,
        )
        self.frontendFactory = FrontendFactory(
            reactor,
            self.clock,
            config,
            self.routes,
            self.admission,
            self.sessionFactory,
        )
        self.operations = Operations(
            self.clock,
            config,
            self.routes,
            builder,
            self.registry,
            self.sessionFactory,
            descriptors,
        )
        self.operations.configurables += [
            self.admission,
            self.connector,
            self.sessionFactory,
            self.frontendFactory,
        ]
        self._buildTree(reactor, config, worker)

    def _buildTree(
        self, reactor: Any, config: RelayConfig, worker: WorkerSpec | None
    ) -> None:
        """
        Add the listeners, and for worker 0 the worker pool, the admin
        listener and the demo backends.
        """
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
            self.operations.peers = self.workerPool
        if config.admin is not None:
            from wsrelay.admin import adminSite

            self.adminListener = Listener(reactor, config.admin, adminSite(self))
            self.adminListener.setServiceParent(self)
        if config.demo.echo or config.demo.ticker:
            from wsrelay.demo import DemoService

            DemoService(config.demo, reactor).setServiceParent(self)

    # What the admin listener and the workers read (RelayStatus).

    @property
    def config(self) -> RelayConfig:
        """
        The configuration in force.
        """
        return self.operations.config

    @property
    def sessions(self) -> set[ProxySession | FanoutSession]:
        """
        The sessions now open.
        """
        return self.registry.sessions

    @property
    def channels(self) -> Mapping[tuple[str, str], Channel]:
        """
        The fan-out channels, by route name and key.
        """
        return self.registry.channels

    @property
    def refused(self) -> Mapping[str, int]:
        """
        Clients refused a 101 with a status, by route name (C{""} for
        requests no route matched).
        """
        return self.frontendFactory.refused

    def traffic(self, route: Route, backend: Backend) -> tuple[int, int, int, int]:
        """
        @return: Messages and bytes sent to C{backend} through C{route}, and
            messages and bytes received from it, by closed and open
            connections.
        """
        return self.registry.traffic(backend)

    def adminToken(self) -> str | None:
        """
        @return: The admin API's bearer token (L{Operations.adminToken}).
        """
        return self.operations.adminToken()

    def setBackendState(self, routeName: str, backendName: str, action: str) -> Backend:
        """
        Drain, disable or enable a backend (L{Operations.setBackendState}).
        """
        return self.operations.setBackendState(routeName, backendName, action)

    def reload(self) -> Deferred[None]:
        """
        Read the configuration file again and apply it
        (L{Operations.reload}).
        """
        return self.operations.reload()

    # Starting and stopping.

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
        self.operations.running = True
        for route in self.routes.routes:
            route.monitor.start()
        self.sessionFactory.startChannels(self.routes)

    def stopService(self) -> Deferred[None]:
        """
        Stop accepting, close every session with 1001 and wait for their
        close handshakes (each bounded by C{close_timeout}).
        """
        stopped = super().stopService()
        self.operations.running = False
        self.connector.shortage.flush()
        waits = [stopped, *self.operations.closeAll()]
        for route in self.routes.routes:
            closed = route.stop()
            if closed is not None:
                waits.append(closed)
        d = DeferredList(waits, consumeErrors=True)
        d.addTimeout(self.config.drainTimeout, self.clock)
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
