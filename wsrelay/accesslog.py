# -*- test-case-name: tests.test_edge,tests.test_operations -*-
"""
The access log of proxied connections: one event per connection that got
its 101, when it ends (C{access_log}).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from twisted.logger import Logger

    from wsrelay.config import RelayConfig
    from wsrelay.frontend import FrontendProtocol
    from wsrelay.routing import Route


class Accounted(Protocol):
    """
    A proxy session as its access log event tells of it
    (L{wsrelay.session.ProxySession}).
    """

    frontend: FrontendProtocol
    config: RelayConfig
    route: Route
    peer: str
    lastBackend: str | None
    openedAt: float | None
    closedBy: str | None


def logAccess(log: Logger, session: Accounted, now: float) -> None:
    """
    Log C{session}'s access event, if it got its 101 and C{access_log} is
    on: the client, the route, the last backend, how long it lasted, the
    messages and bytes each way, and which close code ended it, sent by
    whom.

    @param log: Where the event goes.
    @param now: When the session ended.
    """
    f = session.frontend
    openedAt = session.openedAt
    if openedAt is None or not session.config.accessLog:
        return
    closedBy = session.closedBy
    code = f.remoteCloseCode if closedBy == "client" else f.localCloseCode
    log.info(
        "{client} {route} {backend} {duration:.3f}s"
        " in {messagesIn}/{bytesIn} out {messagesOut}/{bytesOut}"
        " close {closeCode} by {closedBy}",
        event="access",
        client=session.peer,
        route=session.route.name,
        backend=session.lastBackend,
        duration=now - openedAt,
        messagesIn=f.messagesIn,
        bytesIn=f.bytesIn,
        messagesOut=f.messagesOut,
        bytesOut=f.bytesOut,
        closeCode=code,
        closedBy=closedBy or "network",
    )
