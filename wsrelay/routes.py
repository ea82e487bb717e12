# -*- test-case-name: tests.test_operations,tests.test_config,tests.test_tls -*-
"""
The route builder: reads the configuration file with the installed
plugins' options (L{readConfig}) and makes the run-time routes from it,
each with its backends' endpoints (plain or TLS), its balancer and its
health monitor (L{RouteBuilder}).
"""

from __future__ import annotations

import configparser
import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from twisted.logger import Logger
from zope.interface import implementer

from wsrelay.auth import NO_AUTH
from wsrelay.auth.gate import AuthorizerContext
from wsrelay.config import NO_HEALTH, ConfigError, loadConfig
from wsrelay.fanout.context import SourceContext
from wsrelay.health.monitor import HealthMonitor
from wsrelay.interfaces import IAuthorizer, ISourceChannel, ISourceFactory
from wsrelay.plugins import (
    authorizerFactories,
    balancerFactories,
    extendPluginPath,
    findPlugins,
    healthCheckerFactories,
)
from wsrelay.proxy.queue import RouteQueue
from wsrelay.routing import Backend, Route, buildBackends
from wsrelay.tls import BadCAFile, loadTrust, tlsEndpoint
from wsrelay.ws.connecting import PlainTCPEndpoint
from wsrelay.ws.upstream import UpstreamFactory

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from wsrelay.config import RelayConfig, RouteConfig
    from wsrelay.roles import Upstreams


def sourceFactories() -> dict[str, ISourceFactory]:
    """
    @return: The installed fan-out source factories by name.
    """
    return cast("dict[str, ISourceFactory]", findPlugins(ISourceFactory))


def readConfig(path: str) -> RelayConfig:
    """
    Read a configuration file, with the installed balancers' option keys
    (after extending the plugin path it names).

    @raise ConfigError: With the one-line message naming file, section and
        key.
    """
    extendPluginPath(_pluginPath(path))
    return loadConfig(
        path,
        {name: tuple(f.options) for name, f in balancerFactories().items()},
        {name: tuple(f.options) for name, f in healthCheckerFactories().items()},
        {name: tuple(f.options) for name, f in sourceFactories().items()},
        {name: tuple(f.options) for name, f in authorizerFactories().items()},
    )


def _pluginPath(path: str) -> list[str]:
    """
    Read only C{plugin_path} from C{[relay]}: the balancers it holds must
    be known before the whole file can be checked.  Anything wrong with the
    file is left for L{loadConfig} to report.
    """
    parser = configparser.ConfigParser(
        interpolation=None, inline_comment_prefixes=(";", "#")
    )
    try:
        parser.read(path, encoding="utf-8")
        raw = parser.get("relay", "plugin_path", fallback="")
    except (configparser.Error, UnicodeDecodeError):
        return []
    base = os.path.dirname(path)
    found = [os.path.join(base, os.path.expanduser(d)) for d in raw.split()]
    # Only existing folders: loadConfig reports the others by name.
    return [d for d in found if "\0" not in d and os.path.isdir(d)]


class RouteBuilder:
    """
    Makes run-time routes (L{Route}) from their configuration: backends
    with their endpoints, the balancer and the health checker the route
    names (found as plugins), and its health monitor.
    """

    log = Logger()

    def __init__(self, reactor: Any, clock: IReactorTime) -> None:
        """
        @param reactor: Connects to the backends and runs health checks.
        @param clock: Times the health checks.
        """
        self._reactor = reactor
        self._clock = clock
        self._balancers = balancerFactories()
        self._checkers = healthCheckerFactories()
        self._sources = sourceFactories()
        self._authorizers = authorizerFactories()

    def build(
        self, config: RelayConfig, previous: dict[str, Route] | None = None
    ) -> tuple[Route, ...]:
        """
        Make the routes of C{config}, reusing the backends of the routes of
        the same names in C{previous} that did not change.

        @raise ConfigError: When a plugin rejects its options or a
            C{ca_file} cannot be used.
        """
        previous = previous or {}
        return tuple(
            self._buildRoute(config, rc, previous.get(rc.name)) for rc in config.routes
        )

    def check(self, config: RelayConfig) -> None:
        """
        Check every route of C{config} with the plugins installed now (found
        again: a reload may bring new ones) on stand-in backends, so that
        the backends of running routes are untouched when one is rejected.

        @raise ConfigError: When one is rejected; the plugins found before
            stay in use then.
        """
        balancers, checkers, sources = self._balancers, self._checkers, self._sources
        authorizers = self._authorizers
        try:
            self._balancers = balancerFactories()
            self._checkers = healthCheckerFactories()
            self._sources = sourceFactories()
            self._authorizers = authorizerFactories()
            for rc in config.routes:
                self._trust(config, rc)
                self._plugins(config, rc, buildBackends(rc, None))
                self._authorizer(config, rc)
        except ConfigError:
            self._balancers, self._checkers = balancers, checkers
            self._sources, self._authorizers = sources, authorizers
            raise

    def _buildRoute(
        self, relay: RelayConfig, config: RouteConfig, previous: Route | None
    ) -> Route:
        """
        Make the run-time route for a route's configuration, reusing the
        backends of C{previous} that did not change.

        @raise ConfigError: When a plugin rejects its options or the
            C{ca_file} cannot be used; the backends of C{previous} are
            untouched then.
        """
        trust = self._trust(relay, config)
        if previous is not None:
            # Check the plugins on stand-in backends first.
            self._plugins(relay, config, buildBackends(config, None))
        authorizer = self._authorizer(relay, config)
        backends = buildBackends(config, previous)
        balancer, checker, source = self._plugins(relay, config, backends)
        if not config.verify and any(b.config.secure for b in backends):
            self.log.warn(
                "route {route}: verify = off: wss:// backends' certificates"
                " are NOT checked",
                route=config.name,
            )
        for b in backends:
            # Made again at each reload: limits apply to new connections.
            b.factory = UpstreamFactory(b.url, relay, self._reactor)
            if b.config.secure:
                b.endpoint = tlsEndpoint(
                    self._reactor,
                    b.host,
                    b.port,
                    relay.connectTimeout,
                    config.verify,
                    trust,
                )
            else:
                # The TCP4ClientEndpoint of endpointDescription, which the
                # upstream leg's connect bypasses (wsrelay.ws.connecting).
                b.endpoint = PlainTCPEndpoint(
                    self._reactor,
                    b.host,
                    b.port,
                    max(1, math.ceil(relay.connectTimeout)),
                )
        # The queue stays with the route's name, waiters and all.
        queue = RouteQueue() if previous is None else previous.queue
        monitor = HealthMonitor(
            config.name,
            backends,
            checker,
            self._clock,
            config.healthInterval,
            config.healthTimeout,
            config.rise,
            config.fall,
            config.slowstart,
            queue.slotFreed,
        )
        return Route(config, backends, balancer, monitor, source, authorizer, queue)

    def _trust(self, relay: RelayConfig, config: RouteConfig) -> Any:
        """
        @return: The trust root of the route's C{ca_file}, or L{None}.
        @raise ConfigError: When it cannot be used.
        """
        if config.caFile is None:
            return None
        try:
            return loadTrust(config.caFile)
        except (OSError, BadCAFile) as e:
            raise ConfigError(relay.path, str(e), config.section, "ca_file") from None

    def _authorizer(
        self, relay: RelayConfig, config: RouteConfig
    ) -> IAuthorizer | None:
        """
        Build the route's authorizer (C{auth = NAME}) with its options; the
        files they name are read now.

        @return: It, or L{None} with C{auth = none}.
        @raise ConfigError: When it rejects its options or is no longer
            installed.
        """
        if config.auth == NO_AUTH:
            return None
        factory = self._authorizers.get(config.auth)
        if factory is None:
            problem = f"authorizer {config.auth!r} is no longer installed"
            raise ConfigError(relay.path, problem, config.section, "auth")
        context = AuthorizerContext(
            self._reactor, config.name, os.path.dirname(relay.path)
        )
        try:
            return factory.build(config.authOptions, context)
        except ValueError as e:
            raise ConfigError(
                relay.path, f"{config.auth}: {e}", config.section, "auth"
            ) from None

    def _plugins(
        self, relay: RelayConfig, config: RouteConfig, backends: Sequence[Backend]
    ) -> tuple[Any, Any, ISourceFactory | None]:
        """
        Build a route's balancer and health checker, and find a fan-out
        route's source plugin (checked by building a source that is never
        started: a source connects only when started).

        @raise ConfigError: When one rejects its options.
        """
        try:
            balancer = self._balancers[config.balancer].build(backends, config.options)
        except ValueError as e:
            raise ConfigError(
                relay.path, f"{config.balancer}: {e}", config.section, "balancer"
            ) from None
        checker = None
        if config.health != NO_HEALTH:
            try:
                checker = self._checkers[config.health].build(
                    config.healthOptions, self._reactor
                )
            except ValueError as e:
                raise ConfigError(
                    relay.path, f"{config.health}: {e}", config.section, "health"
                ) from None
        source = None
        if config.mode == "fanout":
            source = self._sources.get(config.source)
            if source is None:
                problem = f"source {config.source!r} is no longer installed"
                raise ConfigError(relay.path, problem, config.section, "source")
            context = SourceContext(
                self._reactor,
                config.name,
                _notStarted,
                _NO_UPSTREAMS,
                self._clock,
                backends=config.backends,
            )
            try:
                source.build(
                    _CheckedChannel(config.name), config.sourceOptions, context
                )
            except ValueError as e:
                raise ConfigError(
                    relay.path, f"{config.source}: {e}", config.section, "source"
                ) from None
        return balancer, checker, source


@implementer(ISourceChannel)
class _CheckedChannel:
    """
    The channel of a source built only to check a route's source options.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.key = ""

    def deliver(self, messages: Sequence[tuple[int, bytes, str | None]]) -> None:
        """
        Never called: the source is never started.
        """

    #: Keeps nothing: the source is never started.
    keep = 0

    def preload(self, messages: Sequence[tuple[int, bytes, str | None]]) -> None:
        """
        Never called: the source is never started.
        """

    def stateChanged(self, state: str) -> None:
        """
        Never called: the source is never started.
        """


def _notStarted() -> Route:
    """
    The route of a source built only to check its options: never asked
    for, since such a source is never started.
    """
    raise RuntimeError("a source built to check its options was started")


#: The upstreams of a source built only to check its options: never used.
_NO_UPSTREAMS = cast("Upstreams", None)
