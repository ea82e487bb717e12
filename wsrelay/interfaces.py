"""
The extension points of wsrelay, and what a plugin sees of the relay.

Each extension point is a pair of interfaces: a factory, found as a
Twisted plugin and chosen by name in a route (C{balancer = NAME},
C{health = NAME}), and the object it builds for that route.  Every
factory extends L{IPluginFactory}, which extends L{IPlugin}: a plugin
object declares its factory interface alone.  wsrelay's own plugins are
registered as any third-party one is, as lazy objects
(L{wsrelay.dropins}).  See C{docs/plugins.md} for a walk-through and
L{wsrelay.testing} for testing a plugin.

This module is imported by every dropin: it imports nothing but
C{zope.interface} and L{twisted.plugin}.  Methods are declared without
C{self}, as zope.interface requires.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from twisted.plugin import IPlugin
from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred
    from twisted.internet.interfaces import IReactorTime

CheckResult = tuple[bool, str]
"""
What a health check found: whether the backend is healthy, and why (shown
in C{/status} and logged when its state changes).
"""


@dataclass(frozen=True)
class ConnectionInfo:
    """
    What the relay knows of a client connection when it picks a backend.

    @ivar peer: The client's address (from C{X-Forwarded-For} when the peer
        is in C{trusted_proxies}).
    @ivar path: The request path, normalized (dot segments removed,
        slashes merged).
    @ivar query: The query string, without C{?}.
    @ivar headers: The request's header fields in the order received, names
        as sent (compare them case-insensitively), repeated fields kept.
    @ivar cookies: The C{Cookie} header's cookies by name.
    """

    peer: str
    path: str
    query: str
    headers: Sequence[tuple[str, str]]
    cookies: Mapping[str, str] = field(default_factory=dict)


class IBackend(Interface):
    """
    The backend view: what a balancer or a health checker knows of one
    backend of a route.  Read-only for plugins; the relay keeps one object
    per backend for as long as its URL does not change.
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
    configuration: a reload builds a new one.  The relay counts open
    connections itself (L{IBackend.connections}); a balancer that keeps
    its own state about them also provides L{ILoadListener}.
    """

    def pick(
        candidates: Sequence[IBackend], connection: ConnectionInfo
    ) -> IBackend | None:
        """
        Choose a backend for a new connection, at once (no blocking call,
        no L{Deferred}).

        @param candidates: The backends that may take the connection now
            (healthy and in rotation), in the order of the configuration;
            never empty when the relay calls.
        @param connection: What is known of the client's connection.
        @return: One of C{candidates}, or L{None} when the balancer cannot
            pick (the client then gets 503).
        """


class ILoadListener(Interface):
    """
    The optional load hooks of a balancer: one that provides this
    interface too is told when connections open and close.  Each
    L{connectionOpened} is matched by one L{connectionClosed}.
    """

    def connectionOpened(backend: IBackend) -> None:
        """
        A connection to C{backend} opened (after the relay counted it in
        L{IBackend.connections}).
        """

    def connectionClosed(backend: IBackend) -> None:
        """
        A connection to C{backend} closed (after the relay counted it).
        """


class IHealthChecker(Interface):
    """
    Checks backends of one route.
    """

    def check(backend: IBackend) -> Deferred[CheckResult]:
        """
        Check one backend once.

        @return: A L{Deferred} that fires with a pair C{(healthy, reason)}:
            a C{bool} and a short C{str} saying why.  It is cancelled when
            the route's C{health_timeout} passes: give it a canceller that
            aborts the check.
        """


class IPluginFactory(IPlugin):
    """
    What every wsrelay plugin is: a factory, found by Twisted's plugin
    loader, that a route chooses by name and that builds one object per
    route.  Each extension point extends it with a C{build} method.
    """

    name = Attribute("The word used in the config (C{str}), unique per kind.")
    description = Attribute("One line for people (C{str}).")
    options = Attribute(
        "The route keys this plugin reads (a sequence of lower-case C{str},"
        " none of them a built-in route key); the config parser accepts them"
        " in a route that chooses this plugin, and passes their values to"
        " C{build}."
    )


class IBalancerFactory(IPluginFactory):
    """
    A plugin that makes balancers; C{balancer = NAME} in a route selects it.
    """

    def build(backends: Sequence[IBackend], options: Mapping[str, str]) -> IBalancer:
        """
        Make a balancer for one route.

        @param backends: All backends of the route, in the order of the
            configuration, healthy or not.
        @param options: The route's values for the keys in C{options}, as
            written (absent keys are missing).
        @raise ValueError: When an option's value is invalid; the message,
            which should start with the key, is shown to the operator with
            the route's section.
        """


class IHealthCheckerFactory(IPluginFactory):
    """
    A plugin that makes health checkers; C{health = NAME} in a route
    selects it.
    """

    def build(options: Mapping[str, str], reactor: IReactorTime) -> IHealthChecker:
        """
        Make a checker for one route.

        @param options: The route's values for the keys in C{options}.
        @param reactor: The reactor to connect and time with (an
            L{IReactorTime} that is also an L{IReactorTCP}); use it, not
            the global one.
        @raise ValueError: When an option's value is invalid.
        """


class ISourceChannel(Interface):
    """
    What a source sees of the fan-out channel it feeds: where whole
    messages go.  The channel frames each once and writes it to every
    client, keeps the replay and resume window, and counts.
    """

    name = Attribute("The route's name and the channel's key, for logs (C{str}).")
    key = Attribute(
        "The channel's path remainder and query with C{channel = path}, else"
        ' C{""} (C{str}); a source may expand it in its own settings.'
    )

    def deliver(messages: Sequence[tuple[int, bytes, str | None]]) -> None:
        """
        Messages from the source, in order, to every client at once (a
        source hands over what one read gave it in one call).

        @param messages: Each C{(opcode, payload, sourceId)}: opcode 1
            (text, valid UTF-8) or 2 (binary), the whole payload, and the
            message's id in the source when the source numbers its
            messages cluster-wide (a Redis stream entry id), else L{None}.
        """

    keep = Attribute(
        "Messages the channel keeps for its replay and resume window"
        " (C{int}); 0 when it keeps none.  A source that reads from a store"
        " of past messages hands it up to this many with L{preload}."
    )

    def preload(messages: Sequence[tuple[int, bytes, str | None]]) -> None:
        """
        Messages the source held before the live ones (the newest that a
        stream keeps, when the source starts reading after them), oldest
        first, as L{deliver} takes them: the channel's window and replay
        start with them (what they held before is dropped); no client gets
        them now.  Called before the source reports itself C{"up"}, so that
        every relay reading the same stream resumes clients from the same
        window.
        """

    def stateChanged(state: str) -> None:
        """
        The source's state changed: C{"connecting"}, C{"up"},
        C{"waiting"} (to try again after a failure) or C{"idle"}; shown in
        C{/status} and the metrics.
        """


class ISource(Interface):
    """
    Where one fan-out channel's messages come from.  Built per channel;
    started when the channel wants messages (at start, or at its first
    client) and stopped when it no longer does.
    """

    def start() -> None:
        """
        Start delivering to the channel, and keep at it: a source that
        fails reconnects by itself (with backoff) until L{stop}.
        """

    def stop() -> Deferred[None]:
        """
        Stop delivering; L{start} may be called again later.

        @return: A L{Deferred} that fires once the source's connections
            are closed.
        """

    def send(opcode: int, payload: bytes) -> bool:
        """
        A client's whole message for the source (C{client_messages =
        forward}).

        @return: Whether it was sent; L{False} when the source takes none
            or is not connected (the channel counts the drop).
        """


class ISourceHistory(Interface):
    """
    Optional, for a source that keeps its own window of past messages (a
    Redis stream): the channel asks it when a client resumes, instead of
    its in-memory replay ring.
    """

    def after(
        sourceId: str, limit: int
    ) -> Deferred[Sequence[tuple[int, bytes, str | None]] | None]:
        """
        @return: A L{Deferred} firing with the messages after C{sourceId},
            oldest first, at most C{limit}; or L{None} when C{sourceId} is
            no longer in the window.
        """


class ISourceStatus(Interface):
    """
    Optional, for a source that keeps counters and gauges of its own: the
    admin listener reads them when C{/status} or C{/metrics} is asked for
    (never on the message path), and shows them beside the channel's.

    The naming rule for the keys of L{status}:
      - keys are snake_case (C{[a-z][a-z0-9_]*}); another key is left
        out of C{/metrics} (it stays in C{/status});
      - a number (C{int} or C{float}; a C{bool} counts as 0 or 1) becomes
        the Prometheus metric C{wsrelay_source_<key>}, labelled C{route}
        and C{channel} as the channel's own metrics are;
      - a key ending in C{_total} is a counter (it only grows while the
        source lives), any other numeric key a gauge (C{lease_held},
        C{lag_seconds}); give units as Prometheus does (C{_seconds},
        C{_bytes});
      - a C{str} is shown in C{/status} only, and L{None} means "not known
        yet": shown as C{null} in C{/status}, left out of C{/metrics}.
    A new key shows in both at once: the admin listener knows no key.
    """

    def status() -> Mapping[str, int | float | str | None]:
        """
        @return: The source's counters and gauges now, by key (see the
            naming rule above); cheap, synchronous, and without side
            effects.
        """


class ISourceSuccessor(Interface):
    """
    Optional, for a source that can go on where the source it replaces
    stopped (a reload that changes a route's source options builds a new
    source for each open channel).
    """

    def takeOver(previous: ISource) -> None:
        """
        Called on the new source after C{previous} was stopped and before
        this one starts: take over its position if it read the same feed.
        """


class ISourceFactory(IPluginFactory):
    """
    A plugin that makes fan-out sources; C{source = NAME} in a fan-out
    route selects it (default C{websocket}).
    """

    def build(
        channel: ISourceChannel, options: Mapping[str, str], context: ISourceContext
    ) -> ISource:
        """
        Make the source of one channel.

        @param options: The route's values for the keys in C{options}.
        @param context: What else the relay lends a source.
        @raise ValueError: When an option's value is invalid.
        """


class ISourceContext(Interface):
    """
    What the relay lends a source besides its channel.
    """

    reactor = Attribute(
        "The reactor to connect and time with (L{IReactorTime},"
        " L{IReactorTCP}, L{IReactorSSL}); use it, not the global one."
    )
    route = Attribute("The route's name (C{str}).")

    def websocket(channel: ISourceChannel) -> ISource:
        """
        @return: The route's built-in C{websocket} source (its C{backends}
            with its balancer, health checks and backoff) feeding
            C{channel}: what a source that relays another one (the
            C{redis} source's ingest) connects with.
        """


@dataclass(frozen=True)
class AuthRequest:
    """
    What an authorizer sees of a client's opening handshake, before any
    backend is contacted.

    @ivar method: The request method (C{"GET"}).
    @ivar path: The request path, normalized as the relay routes on it.
    @ivar query: The query string, without C{?}, as sent.
    @ivar headers: The request's header fields in the order received, names
        as sent (compare them case-insensitively), repeated fields kept.
    @ivar cookies: The C{Cookie} header's cookies by name.
    @ivar peer: The client's address (from C{X-Forwarded-For} when the peer
        is in C{trusted_proxies}).
    @ivar route: The name of the route the request matched.
    """

    method: str
    path: str
    query: str
    headers: Sequence[tuple[str, str]]
    cookies: Mapping[str, str] = field(default_factory=dict)
    peer: str = ""
    route: str = ""

    def header(self, name: str) -> str | None:
        """
        @return: The values of every field called C{name}
            (case-insensitive) joined with C{", "}, or L{None}.
        """
        lname = name.lower()
        values = [v for (n, v) in self.headers if n.lower() == lname]
        return ", ".join(values) if values else None


@dataclass(frozen=True)
class Allow:
    """
    An authorizer's answer: the client may go on.

    @ivar headers: Header fields to set on the upstream request; any field
        of the client's with one of these names (case-insensitive) is
        removed first.  Names the relay writes itself (C{Host},
        C{X-Forwarded-For}, the handshake's own) or holding C{_}, and values
        holding control characters, are an error: the client gets 503.
    @ivar expires: When the client's credentials expire, in seconds on the
        relay's clock (POSIX time, as C{reactor.seconds()}), or L{None}:
        with C{jwt_expiry = close} (or any authorizer that sets it) the
        relay closes the connection with 1008 then.
    @ivar removed: Names of fields the authorizer owns: the client's fields
        of these names are removed from the upstream request even when
        C{headers} sets none of them (a claim missing from a token must not
        let a client's own C{X-Role} through).
    """

    headers: Sequence[tuple[str, str]] = ()
    expires: float | None = None
    removed: Sequence[str] = ()


@dataclass(frozen=True)
class Deny:
    """
    An authorizer's answer: the client is refused with this HTTP response,
    sent as it is (status, header fields, body), and no backend is
    contacted.

    @ivar status: The status code, 400 to 599.
    @ivar headers: The response's header fields (C{WWW-Authenticate},
        C{Content-Type}...).
    @ivar body: The response's body.
    """

    status: int
    headers: Sequence[tuple[str, str]] = ()
    body: bytes = b""


class IAuthorizer(Interface):
    """
    Decides, for one route, whether a client may open a connection.
    Built once per route (at start and at each reload).

    An authorizer that reads the client's credentials from query
    parameters may name them in an attribute C{credentialParameters} (a
    sequence of parameter names; optional, none when absent): a fan-out
    route with C{channel = path} then tells no channels apart by them, and
    its shared source never gets them
    (L{wsrelay.fanout.channel.channelKey}).
    """

    def authorize(request: AuthRequest) -> Allow | Deny | Deferred[Allow | Deny]:
        """
        Decide about one request, at once or through a L{Deferred}.

        The relay waits at most the route's C{auth_timeout} (and cancels
        the L{Deferred} then: give it a canceller that aborts the work); an
        exception, a failed L{Deferred}, a timeout or an answer that is
        neither L{Allow} nor L{Deny} refuses the client with 503.  Nothing
        is ever allowed by an error.

        @param request: What is known of the request.
        @return: L{Allow} or L{Deny}, or a L{Deferred} firing with one.
        """


class IAuthorizerContext(Interface):
    """
    What the relay lends an authorizer when it builds one.
    """

    reactor = Attribute(
        "The reactor to connect and time with (L{IReactorTime},"
        " L{IReactorTCP}, L{IReactorSSL}); use it, not the global one."
    )
    route = Attribute("The route's name (C{str}).")
    directory = Attribute(
        "The directory of the configuration file (C{str}): relative file"
        " names in options are relative to it."
    )


class IAuthorizerFactory(IPluginFactory):
    """
    A plugin that makes authorizers; C{auth = NAME} in a route selects it.
    """

    def build(options: Mapping[str, str], context: IAuthorizerContext) -> IAuthorizer:
        """
        Make the authorizer of one route.  Called at start and at each
        reload (SIGHUP): read files named in the options here, never in
        L{IAuthorizer.authorize}.

        @param options: The route's values for the keys in C{options}, as
            written (absent keys are missing).
        @param context: What else the relay lends an authorizer.
        @raise ValueError: When an option's value is invalid; the message,
            which should start with the key, is shown to the operator with
            the route's section.
        """
