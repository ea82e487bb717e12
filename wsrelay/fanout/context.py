# -*- test-case-name: tests.test_sources -*-
"""
What the relay lends a fan-out source (L{SourceContext}, an
L{ISourceContext}), and the C{websocket} source plugin's implementation
(L{websocketSource}).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from zope.interface import implementer

from wsrelay.fanout.source import WebSocketSource
from wsrelay.interfaces import ISource, ISourceChannel, ISourceContext

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from wsrelay.roles import Upstreams
    from wsrelay.routing import Route


@implementer(ISourceContext)
class SourceContext:
    """
    What the relay lends the source of one channel (L{ISourceContext}).

    @ivar reactor: Connects and times.
    @ivar route: The route's name.
    @ivar backends: The route's backends when known, else L{None} (not in
        L{ISourceContext}: see the issue 15 report of the ingest).
    """

    def __init__(
        self,
        reactor: Any,
        route: str,
        routeOf: Callable[[], Route],
        upstreams: Upstreams,
        clock: IReactorTime,
        backends: Sequence[object] | None = None,
    ) -> None:
        """
        @param route: The route's name.
        @param routeOf: Gives the channel's route in force (called only
            once a source built with L{websocket} starts).
        @param upstreams: Opens upstreams to the route's backends.
        @param clock: Times the built-in source's waits.
        @param backends: The route's backends, for a source that needs
            some (the C{redis} source's ingest), or L{None} if unknown.
        """
        self.reactor = reactor
        self.route = route
        self.backends = backends
        self._routeOf = routeOf
        self._upstreams = upstreams
        self._clock = clock

    def websocket(self, channel: ISourceChannel) -> ISource:
        """
        @return: The route's built-in C{websocket} source feeding
            C{channel}.
        """
        return WebSocketSource(channel, self._routeOf, self._upstreams, self._clock)


def websocketSource(
    channel: ISourceChannel, options: Mapping[str, str], context: ISourceContext
) -> ISource:
    """
    The implementation of the C{websocket} source plugin
    (C{twisted/plugins/wsrelay_sources.py}): the route's backends.
    """
    return context.websocket(channel)
