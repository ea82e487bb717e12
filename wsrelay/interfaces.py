"""
The extension points of wsrelay: balancers and health checkers.

Both are found as Twisted plugins: a module in a C{twisted/plugins/} folder
on C{sys.path} (or in a folder named by C{plugin_path}) holds module-level
objects that provide L{IPlugin} and L{IBalancerFactory} (or
L{IHealthCheckerFactory}).  wsrelay's own balancers are registered exactly
the same way.  See C{docs/plugins.md} for a walk-through.

Methods are declared without C{self}, as zope.interface requires.
"""

from __future__ import annotations

from twisted.plugin import IPlugin
from zope.interface import Attribute, Interface


class IBackend(Interface):
    """
    What a balancer or a health checker knows of one backend of a route.
    """

    name = Attribute("The backend's name (C{str}), unique within its route.")
    url = Attribute("The backend's C{ws://} or C{wss://} URL (C{str}).")
    host = Attribute("The host part of the URL (C{str}, IPv6 without brackets).")
    port = Attribute("The port (C{int}).")
    weight = Attribute(
        "The configured C{weight=} (a number, at least 1), or during slow start"
        " a growing part of it (then a C{float}, at least a tenth of it)."
    )
    endpoint = Attribute(
        "An L{IStreamClientEndpoint} that reaches the backend as the relay"
        " does: plain TCP, or TLS with the route's verification settings."
    )
    connections = Attribute(
        "The number of connections now open to this backend through this route"
        " (C{int}), kept by the relay."
    )


class IBalancer(Interface):
    """
    Picks the backend for each new connection of one route.

    A balancer is built for one route and lives as long as that route's
    configuration: a reload builds a new one.
    """

    def pick(candidates, connection):  # type: ignore[no-untyped-def]
        """
        Choose a backend for a new connection.

        @param candidates: The backends that may take the connection now
            (healthy and in rotation), in the order of the configuration; a
            non-empty sequence of L{IBackend}.
        @param connection: What is known of the connection: a
            L{wsrelay.routing.ConnectionInfo} with C{peer} (the client's
            address, C{str}), C{path} (the request path, C{str}),
            C{query} (C{str}, without C{?}), C{headers} (a sequence of
            C{(name, value)} pairs) and C{cookies} (a C{dict}).

        @return: One of C{candidates}, or L{None} when the balancer cannot
            pick (the client then gets 503).
        """

    def connectionOpened(backend):  # type: ignore[no-untyped-def]
        """
        A connection to C{backend} (an L{IBackend}) opened.
        """

    def connectionClosed(backend):  # type: ignore[no-untyped-def]
        """
        A connection to C{backend} (an L{IBackend}) closed.
        """


class IBalancerFactory(IPlugin):
    """
    A plugin that makes balancers; C{balancer = NAME} in a route selects it.
    """

    name = Attribute("The word used in the config (C{str}).")
    description = Attribute("One line for people (C{str}).")
    options = Attribute(
        "The route keys this balancer reads (a sequence of C{str}); the config"
        " parser accepts them in a route that selects this balancer."
    )

    def build(backends, options):  # type: ignore[no-untyped-def]
        """
        Make a balancer for one route.

        @param backends: All backends of the route (a sequence of
            L{IBackend}), in the order of the configuration.
        @param options: The route's values for the keys in C{options} (a
            mapping of C{str} to C{str}; absent keys are missing).

        @return: An L{IBalancer}.
        @raise ValueError: When an option's value is invalid; the message
            is shown to the operator with the route's section and key.
        """


class IHealthChecker(Interface):
    """
    Checks backends of one route.
    """

    def check(backend):  # type: ignore[no-untyped-def]
        """
        Check one backend once.

        @param backend: An L{IBackend}.
        @return: A L{Deferred} that fires with a pair C{(healthy, reason)}:
            a C{bool} and a short C{str} saying why.  It is cancelled when
            the route's C{health_timeout} passes.
        """


class IHealthCheckerFactory(IPlugin):
    """
    A plugin that makes health checkers; C{health = NAME} in a route
    selects it.
    """

    name = Attribute("The word used in the config (C{str}).")
    description = Attribute("One line for people (C{str}).")
    options = Attribute("The route keys this checker reads (sequence of C{str}).")

    def build(options, reactor):  # type: ignore[no-untyped-def]
        """
        Make a checker.

        @param options: The route's values for the keys in C{options}.
        @param reactor: The reactor to connect and time with.
        @return: An L{IHealthChecker}.
        @raise ValueError: When an option's value is invalid.
        """
