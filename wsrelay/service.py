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
    - L{Listener}s (L{wsrelay.listening}): Twisted's
      L{StreamServerEndpointService} for each endpoint string.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import deferLater
from twisted.logger import Logger

from wsrelay.admission import Admission
from wsrelay.connector import Connector
from wsrelay.control import ControlFactory, ControlSocketService, Held
from wsrelay.descriptors import Limit, Shortage
from wsrelay.listening import Listener, ListeningSockets
from wsrelay.operations import Operations
from wsrelay.plugins import logPlugins
from wsrelay.registry import Registry, Sessions
from wsrelay.routes import RouteBuilder
from wsrelay.routing import RouteTable
from wsrelay.stats import LATENCY_BUCKETS, Histogram
from wsrelay.takeover import Handover, TakeoverService
from wsrelay.workers import WorkerPool, WorkerSpec
from wsrelay.ws.frontend import FrontendFactory

if TYPE_CHECKING:
    from twisted.internet.interfaces import IListeningPort

    from wsrelay.config import RelayConfig
    from wsrelay.fanout import Channel, FanoutSession
    from wsrelay.proxy.session import ProxySession
    from wsrelay.routing import Backend, Route


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
    handingOff = False
    _takeoverFailed = False
    listeners: list[Listener]
    workerPool: WorkerPool | None
    adminListener: Listener
    _demoSockets: list[ListeningSockets]

    def __init__(
        self,
        config: RelayConfig,
        reactor: Any = None,
        clock: Any = None,
        worker: WorkerSpec | None = None,
        descriptors: Limit | None = None,
        handover: Handover | None = None,
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
        @param handover: The listening sockets of a relay this one takes
            over (C{--takeover}), told to stop once this one serves.
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
        self.refused: Mapping[str, int] = self.frontendFactory.refused
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
        _buildTree(self, reactor, config, worker, handover)

    def held(self) -> list[Held]:
        """
        @return: The listeners whose sockets the relay holds (the clients'
            and the admin listener), each with its endpoint string and
            sockets, for a relay that takes over.
        """
        listeners = [*self.listeners, getattr(self, "adminListener", None)]
        sockets = [lst.sockets for lst in listeners if lst is not None]
        return [
            (held.description, held.sockets)
            for held in [*sockets, *self._demoSockets]
            if held is not None and held.sockets
        ]

    def workerDescriptors(self, index: int) -> list[int]:
        """
        @return: The descriptor of the listening socket worker C{index}
            serves, for each listener in the order of C{listen}.
        """
        fds = []
        for listener in self.listeners:
            assert listener.sockets is not None
            fds.append(listener.sockets.forWorker(index)[0].fileno())
        return fds

    def coverWorker(self, index: int, cover: bool) -> None:
        """
        Serve worker C{index}'s listening sockets here, in worker 0, while
        it is not running (C{cover}), or stop.
        """
        for listener in self.listeners:
            if listener.sockets is not None:
                if cover:
                    listener.sockets.cover(index)
                else:
                    listener.sockets.uncover(index)

    def whenServing(self) -> Deferred[None]:
        """
        @return: A L{Deferred} that fires when the relay listens and its
            workers run, or fails when one cannot.
        """
        d = self.whenListening()
        pool = self.workerPool
        if pool is not None:
            d.addCallback(lambda _: pool.whenRunning())
        return d.addCallback(lambda _: None)

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
        close handshakes (each bounded by C{close_timeout}).  A relay
        handing off to another (L{handOff}) first lets the handshakes under
        way finish (within C{handshake_timeout}).
        """
        stopped = super().stopService()
        self.operations.running = False
        self.connector.shortage.flush()
        closing = [c for c in (r.stop() for r in self.routes.routes) if c is not None]
        for sockets in self._demoSockets:
            stopped.addBoth(_closing(sockets))
        d: Deferred[Any]
        if self.handingOff:
            d = Deferred.fromCoroutine(_closeAfterHandshakes(self, stopped, closing))
        else:
            waits = [stopped, *self.operations.closeAll(), *closing]
            d = DeferredList(waits, consumeErrors=True)
        d.addTimeout(self.config.drainTimeout, self.clock)
        return d.addBoth(lambda _: None)

    def handOff(self) -> None:
        """
        Another relay took the listening sockets over: stop as SIGTERM
        stops the relay, but let the clients accepted last finish their
        handshakes first (in every worker), rather than drop them.
        """
        self.handingOff = True
        if self.workerPool is not None:
            self.workerPool.handingOff = True
        self._reactor.stop()

    @property
    def startFailed(self) -> bool:
        """
        Whether a listener could not listen, or the relay could not take
        over from another (it then stops).
        """
        return self._takeoverFailed or any(lst.failed for lst in self.listeners)

    def takeoverFailed(self) -> None:
        """
        The relay could not serve in place of the one it took the sockets
        of, which runs on: stop, with status 1.
        """
        if not self._takeoverFailed:
            self._takeoverFailed = True
            self._reactor.stop()

    def whenListening(self) -> Deferred[list[IListeningPort]]:
        """
        @return: A L{Deferred} that fires with every listening port.
        """
        d = DeferredList(
            [lst.listening for lst in self.listeners], fireOnOneErrback=True
        )
        return d.addCallback(lambda results: [port for (_, port) in results])


#: Seconds between two looks at the handshakes under way while a relay
#: that handed off waits for them.
HANDSHAKE_POLL = 0.01


def _handshaking(relay: RelayService) -> int:
    """
    @return: How many of the relay's clients have not had their 101 yet.
    """
    upgraded = sum(
        1
        for session in relay.registry.sessions
        if getattr(getattr(session, "frontend", None), "upgraded", False)
    )
    return relay.admission.clientConnections - upgraded


async def _closeAfterHandshakes(
    relay: RelayService, stopped: Deferred[None], closing: list[Deferred[None]]
) -> None:
    """
    Close the sessions of a relay that handed off, once its clients that
    are still in their opening handshake got their 101 (or after
    C{handshake_timeout}).
    """
    clock = relay.clock
    deadline = clock.seconds() + relay.config.handshakeTimeout
    while clock.seconds() < deadline and _handshaking(relay) > 0:
        await deferLater(clock, HANDSHAKE_POLL, lambda: None)
    waits = [stopped, *relay.operations.closeAll(), *closing]
    await DeferredList(waits, consumeErrors=True)


def _closing(sockets: ListeningSockets) -> Callable[[object], object]:
    def close(result: object) -> object:
        sockets.close()
        return result

    return close


def _buildTree(
    relay: RelayService,
    reactor: Any,
    config: RelayConfig,
    worker: WorkerSpec | None,
    handover: Handover | None,
) -> None:
    """
    Add the listeners, and for worker 0 the worker pool, the admin
    listener, the control socket and the demo backends.
    """
    # The relay holds its listening sockets itself when it may hand
    # them on (wsrelay.listening).
    held = (
        config.workers > 1 or config.controlSocket is not None or handover is not None
    )

    def sockets(description: str, index: int) -> ListeningSockets | None:
        if worker is not None:
            return ListeningSockets(
                reactor,
                description,
                inherited=[socket.socket(fileno=worker.fds[index])],
            )
        if not held:
            return None
        return ListeningSockets(reactor, description, config.workers, handover)

    relay.listeners = [
        Listener(reactor, d, relay.frontendFactory, sockets(d, i))
        for i, d in enumerate(config.listen)
    ]
    for listener in relay.listeners:
        listener.setServiceParent(relay)
    relay.workerPool = None
    relay._demoSockets = []
    if worker is not None:
        return
    if config.workers > 1:
        relay.workerPool = WorkerPool(relay, reactor)
        relay.workerPool.setServiceParent(relay)
        relay.operations.peers = relay.workerPool
    if config.admin is not None:
        from wsrelay.admin import adminSite

        admin = None
        if held:
            # Named apart from a client listener with the same string.
            admin = ListeningSockets(reactor, f"admin {config.admin}", 1, handover)
        relay.adminListener = Listener(reactor, config.admin, adminSite(relay), admin)
        relay.adminListener.setServiceParent(relay)
    if config.controlSocket is not None:
        control = ControlSocketService(
            reactor, config.controlSocket, ControlFactory(relay.held, relay.handOff)
        )
        if handover is None:
            control.setServiceParent(relay)
        else:
            # Bound once the old relay is told to stop: until then the
            # file is its, which it keeps if this relay fails to start.
            TakeoverService(
                reactor,
                handover,
                relay.whenServing,
                lambda: control.setServiceParent(relay),
                relay.takeoverFailed,
            ).setServiceParent(relay)
    if config.demo.echo or config.demo.ticker:
        from wsrelay.demo import DemoService

        def demoSockets(description: str) -> ListeningSockets:
            sockets = ListeningSockets(reactor, f"demo {description}", 1, handover)
            relay._demoSockets.append(sockets)
            return sockets

        listenOn = demoSockets if held else None
        DemoService(config.demo, reactor, listenOn).setServiceParent(relay)
