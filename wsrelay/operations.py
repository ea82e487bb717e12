# -*- test-case-name: tests.test_operations,tests.test_admin -*-
"""
Operating a running relay: drain, disable and enable a backend, reload the
configuration, close everything on stop, and the admin token
(L{Operations}, used by the admin listener, the workers and SIGHUP).  Also
L{RelayStatus}, what the admin listener and the workers read of a relay.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger

from wsrelay.config import ConfigError
from wsrelay.routes import readConfig
from wsrelay.routing import DISABLED, DRAINING, ENABLED

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IListeningPort, IReactorTime

    from wsrelay.config import RelayConfig
    from wsrelay.descriptors import Limit
    from wsrelay.fanout import Channel, FanoutSession
    from wsrelay.proxy.session import ProxySession
    from wsrelay.registry import Registry, Sessions
    from wsrelay.roles import LiveSession
    from wsrelay.routes import RouteBuilder
    from wsrelay.routing import Backend, Route, RouteTable
    from wsrelay.stats import Histogram


class Configurable(Protocol):
    """
    A collaborator that applies a new configuration to what comes next.
    """

    def configure(self, config: RelayConfig) -> None:
        """
        Apply C{config} from now on.
        """


class Peers(Protocol):
    """
    The other workers of a relay (L{wsrelay.workers.WorkerPool}), told of
    what the operator did to this one.
    """

    def act(self, route: str, backend: str, action: str) -> Deferred[None]:
        """
        Tell every other worker to drain, disable or enable a backend.
        """

    def reload(self) -> Deferred[None]:
        """
        Tell every other worker to reload.
        """


class ListenerStatus(Protocol):
    """
    A listener as the status shows it.
    """

    @property
    def description(self) -> str:
        """
        Its endpoint string.
        """

    @property
    def port(self) -> IListeningPort | None:
        """
        Its port, once listening.
        """


class RelayStatus(Protocol):
    """
    What the admin listener and the workers read of a running relay
    (L{wsrelay.service.RelayService}), and its L{Operations}, which they
    run.
    """

    clock: IReactorTime
    startedAt: float
    worker: int
    handshakeLatency: Histogram
    #: Clients refused a 101 with a status, by route name (C{""} for
    #: requests no route matched).
    refused: Mapping[str, int]
    workerPool: Any
    operations: Operations

    @property
    def config(self) -> RelayConfig:
        """
        The configuration in force.
        """

    @property
    def routes(self) -> RouteTable:
        """
        The routes in force.
        """

    @property
    def sessions(self) -> Collection[ProxySession | FanoutSession]:
        """
        The sessions now open.
        """

    @property
    def channels(self) -> Mapping[tuple[str, str], Channel]:
        """
        The fan-out channels, by route name and key.
        """

    @property
    def listeners(self) -> Sequence[ListenerStatus]:
        """
        The client listeners.
        """

    def traffic(self, route: Route, backend: Backend) -> tuple[int, int, int, int]:
        """
        @return: Messages and bytes sent to and received from C{backend}.
        """

    def whenListening(self) -> Deferred[list[IListeningPort]]:
        """
        @return: A L{Deferred} that fires with every listening port.
        """


class Operations:
    """
    What an operator does to a running relay.

    @ivar config: The configuration in force.
    @ivar peers: The other workers, told of every action and reload, or
        L{None}.
    @ivar running: Whether the relay runs (channels connect on reload only
        then).
    @ivar configurables: Told of each configuration a reload applies.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        config: RelayConfig,
        routes: RouteTable,
        builder: RouteBuilder,
        registry: Registry,
        sessions: Sessions,
        descriptors: Limit | None,
        read: Callable[[str], RelayConfig] = readConfig,
    ) -> None:
        """
        @param read: Reads the configuration file on reload.
        """
        self._clock = clock
        self.config = config
        self._routes = routes
        self._builder = builder
        self._registry = registry
        self._sessions = sessions
        self._descriptors = descriptors
        self._read = read
        self._draining: dict[Backend, IDelayedCall] = {}
        self.random = random.Random()
        self.peers: Peers | None = None
        self.running = False
        self.configurables: list[Configurable] = []

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

    def spreadCloses(
        self, sessions: Sequence[LiveSession], code: int, reason: bytes
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
                self._clock.callLater(delay, session.shutdown, code, reason)
            else:
                session.shutdown(code, reason)

    def closeAll(self) -> list[Deferred[None]]:
        """
        The relay stops: close every session with 1001 (spread over
        C{close_spread}) and every channel.

        @return: A L{Deferred} for each, firing when it is gone.
        """
        for call in self._draining.values():
            if call.active():
                call.cancel()
        self._draining.clear()
        sessions = list(self._registry.sessions)
        self.spreadCloses(sessions, 1001, b"relay shutting down")
        channels = list(self._registry.channels.values())
        self._registry.channels.clear()
        return [*(s.done for s in sessions), *(c.stop() for c in channels)]

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
        route = self._routes.byName(routeName)
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
        else:
            route.queue.slotFreed()
        if self.peers is not None:
            self.peers.act(routeName, backendName, action)
        return backend

    def _drainLater(self, backend: Backend) -> None:
        """
        Close what is left on a draining backend after C{drain_timeout}.
        """
        self._cancelDrain(backend)
        self._draining[backend] = self._clock.callLater(
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
        self.spreadCloses(
            self._registry.onBackend(backend), 1012, b"backend going away"
        )
        for channel in list(self._registry.channels.values()):
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
        try:
            config = self._read(self.config.path)
            self._apply(config)
        except ConfigError as e:
            self.log.error("reload rejected, configuration unchanged: {error}", error=e)
            return fail(e)
        self.log.info(
            "reloaded {path}: {routes} routes",
            path=config.path,
            routes=len(config.routes),
        )
        if self.peers is not None:
            return self.peers.reload()
        return succeed(None)

    def _apply(self, config: RelayConfig) -> None:
        """
        Make C{config} the configuration in force.

        @raise ConfigError: When a plugin rejects its options, or its
            C{max_connections} does not fit in the open-file limit; nothing
            has changed then.
        """
        limit = self._descriptors
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
        # Check every route on stand-in backends before the real ones,
        # which the running routes share, are touched.
        self._builder.check(config)
        self.config = config
        table = self._routes
        routes = self._builder.build(config, {r.name: r for r in table.routes})
        kept = {b for r in routes for b in r.backends}
        for route in table.routes:
            route.stop()
            for backend in route.backends:
                if backend not in kept and backend.admin != DRAINING:
                    backend.admin = DRAINING
                    self._drainLater(backend)
        table.install(routes)
        for configurable in self.configurables:
            configurable.configure(config)
        for route in routes:
            if self.running:
                route.monitor.start()
            # A maxconn= raised, a backend added: waiters may go on.
            route.queue.slotFreed()
        for channel in list(self._registry.channels.values()):
            current = table.byName(channel.route.name)
            if current is not None and current.config.mode == "fanout":
                channel.route = current
            else:
                channel.retire()
        if self.running:
            self._sessions.startChannels(table)
