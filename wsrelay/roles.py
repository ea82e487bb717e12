# -*- test-case-name: tests.test_imports -*-
"""
The roles the relay's collaborators play for the sessions and channels
that use them, as small L{typing.Protocol}s.

A proxy session or a fan-out channel gets the few collaborators it uses,
each typed by one of these, never the relay service: an L{Upstreams} (the
upstream connector, L{wsrelay.connector.Connector}) to reach a backend, a
L{SessionRegistry} (L{wsrelay.registry.Registry}) to say it ended.  This
module imports only modules below the sessions (routing, upstream), so
that the sessions, the channels and the collaborators can all import it
without an import cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred
    from twisted.internet.interfaces import IReactorTime

    from wsrelay.config import RelayConfig
    from wsrelay.routing import Backend, ConnectionInfo, Route
    from wsrelay.ws.handshake import RequestLines
    from wsrelay.ws.upstream import UpstreamProtocol


#: Gives the request target and the header fields for a backend.
RequestFor = Callable[["Backend"], "tuple[str, list[tuple[str, str]] | RequestLines]"]


class Upstreams(Protocol):
    """
    Opens upstreams to a route's backends, and hears of the ones that
    fail (passive health).
    """

    async def openUpstream(
        self,
        route: Route,
        info: ConnectionInfo,
        request: RequestFor,
        offered: tuple[str, ...],
        avoid: Backend | None,
        deadline: float,
    ) -> tuple[Backend, UpstreamProtocol]:
        """
        Open an upstream to one of C{route}'s backends before C{deadline}.

        @raise wsrelay.ws.frontend.Refused: When none could be had.
        """

    def open(
        self,
        route: Route,
        info: ConnectionInfo,
        request: RequestFor,
        offered: tuple[str, ...],
        avoid: Backend | None,
        deadline: float,
        then: Callable[..., object] | None = None,
        thenArgs: tuple[object, ...] = (),
    ) -> Deferred[Any]:
        """
        L{openUpstream} as a L{Deferred}: cancelling it stops opening.

        @param then: Called with the outcome (the backend and the open
            upstream, or the failure) and C{thenArgs}, as the L{Deferred}'s
            first callback would be; it fires with what C{then} returns, or
            (on a success) may never fire: the caller only cancels it.
        """

    def backendFailed(self, route: Route, backend: Backend, reason: str) -> None:
        """
        An open connection to C{backend} failed.
        """


class LiveSession(Protocol):
    """
    A client's session (proxied or fan-out) as the registry and the
    operations see it.
    """

    @property
    def backend(self) -> Backend | None:
        """
        The backend of its upstream, if it has one of its own.
        """

    @property
    def done(self) -> Deferred[None]:
        """
        Fires when the session's connections are gone.
        """

    def shutdown(self, code: int = 1001, reason: bytes = b"") -> None:
        """
        Close the client with C{code}.
        """


class LiveChannel(Protocol):
    """
    A fan-out channel as the registry sees it.
    """

    @property
    def route(self) -> Route:
        """
        The route it serves.
        """

    @property
    def key(self) -> str:
        """
        Its key within the route.
        """


class SessionRegistry(Protocol):
    """
    Where sessions and channels say they ended.
    """

    def sessionEnded(self, session: LiveSession) -> None:
        """
        Forget a session whose connections are gone.
        """

    def channelEnded(self, channel: LiveChannel) -> None:
        """
        Forget a channel that closed for want of clients.
        """


class PipeOwner(Protocol):
    """
    The proxy session a passthrough pipe (L{wsrelay.proxy.pipe.Pipe})
    works for.
    """

    config: RelayConfig
    clock: IReactorTime
    closedBy: str | None
