# -*- test-case-name: tests.test_plugins -*-
"""
Lazy plugin objects, for the modules of a C{twisted/plugins/} folder.

A dropin holds one line per plugin, as C{twisted/plugins/twisted_reactors.py}
does with L{twisted.application.reactors.Reactor}::

    tenant = BalancerPlugin("tenant", "acme.tenant.TenantBalancer", "...")

Listing plugins (C{twistd --help}, wsrelay's start-up scan, the
C{dropin.cache} refresh) imports the dropin and this module, which import
only C{zope.interface}, L{twisted.plugin} and L{wsrelay.interfaces}; the
implementation is imported when a route first builds with it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twisted.python.reflect import namedAny
from zope.interface import implementer

from wsrelay.interfaces import (
    IAuthorizer,
    IAuthorizerContext,
    IAuthorizerFactory,
    IBackend,
    IBalancer,
    IBalancerFactory,
    IHealthChecker,
    IHealthCheckerFactory,
    ISource,
    ISourceChannel,
    ISourceContext,
    ISourceFactory,
)


class PluginError(ValueError):
    """
    A plugin chosen by a route cannot be used: its implementation does not
    import.  A L{ValueError}, as a bad option is: the relay reports it as a
    configuration error naming the route's section and the key that chose
    the plugin.
    """


class LazyPlugin:
    """
    A plugin named by a route, whose implementation is imported only when
    a route is built with it.  Each extension point has a subclass whose
    C{build} calls L{implementation} with that point's arguments.

    @ivar name: The word used in the config.
    @ivar description: One line for people.
    @ivar options: The route keys the plugin reads.
    """

    def __init__(
        self,
        name: str,
        implementation: str | Callable[..., Any],
        description: str,
        options: Sequence[str] = (),
    ) -> None:
        """
        @param implementation: The fully qualified name of a callable (a
            class, usually) that takes the arguments of C{build} and returns
            the built object; or the callable itself.
        """
        self.name = name
        self.description = description
        self.options = tuple(options)
        self._implementation = implementation

    @property
    def implementation(self) -> Callable[..., Any]:
        """
        The callable that builds, imported now if it was given by name.

        @raise PluginError: When it cannot be imported.
        """
        named = self._implementation
        if not isinstance(named, str):
            return named
        try:
            found: Callable[..., Any] = namedAny(named)
        except Exception as e:
            problem = str(e).strip().splitlines()[:1]
            why = ": ".join([type(e).__name__, *problem])
            raise PluginError(f"cannot load {named}: {why}") from None
        self._implementation = found
        return found

    def __repr__(self) -> str:
        """
        @return: The class and the plugin's name.
        """
        return f"<{type(self).__name__} {self.name!r}>"


@implementer(IBalancerFactory)
class BalancerPlugin(LazyPlugin):
    """
    A balancer plugin: L{implementation} is called as
    C{implementation(backends, options)}.
    """

    def build(
        self, backends: Sequence[IBackend], options: Mapping[str, str]
    ) -> IBalancer:
        """
        Make a balancer for one route.
        """
        balancer: IBalancer = self.implementation(backends, options)
        return balancer


@implementer(IHealthCheckerFactory)
class HealthCheckerPlugin(LazyPlugin):
    """
    A health-checker plugin: L{implementation} is called as
    C{implementation(options, reactor)}.
    """

    def build(self, options: Mapping[str, str], reactor: Any) -> IHealthChecker:
        """
        Make a checker for one route.
        """
        checker: IHealthChecker = self.implementation(options, reactor)
        return checker


@implementer(ISourceFactory)
class SourcePlugin(LazyPlugin):
    """
    A fan-out source plugin: L{implementation} is called as
    C{implementation(channel, options, context)}.
    """

    def build(
        self,
        channel: ISourceChannel,
        options: Mapping[str, str],
        context: ISourceContext,
    ) -> ISource:
        """
        Make the source of one channel.
        """
        source: ISource = self.implementation(channel, options, context)
        return source


@implementer(IAuthorizerFactory)
class AuthorizerPlugin(LazyPlugin):
    """
    An authorizer plugin: L{implementation} is called as
    C{implementation(options, context)}.
    """

    def build(
        self, options: Mapping[str, str], context: IAuthorizerContext
    ) -> IAuthorizer:
        """
        Make the authorizer of one route.
        """
        authorizer: IAuthorizer = self.implementation(options, context)
        return authorizer
