# -*- test-case-name: tests.test_edge,tests.test_operations -*-
"""
The access log (C{access_log}): one event per proxied connection that got
its 101, when it ends, and one per client connection that did not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from twisted.logger import Logger

    from wsrelay.config import RelayConfig
    from wsrelay.routing import Route
    from wsrelay.ws.handshake import Head
    from wsrelay.ws.screening import Refused


class ClientLeg(Protocol):
    """
    A client's leg (L{wsrelay.ws.frontend.FrontendProtocol}) as its access log
    event tells of it.
    """

    @property
    def messagesIn(self) -> int:
        """
        Complete messages received from the client.
        """

    @property
    def bytesIn(self) -> int:
        """
        Payload bytes received from the client.
        """

    @property
    def messagesOut(self) -> int:
        """
        Complete messages sent to the client.
        """

    @property
    def bytesOut(self) -> int:
        """
        Payload bytes sent to the client.
        """

    @property
    def remoteCloseCode(self) -> int | None:
        """
        The code of the client's close frame.
        """

    @property
    def localCloseCode(self) -> int | None:
        """
        The code of the close frame sent to the client.
        """


class Accounted(Protocol):
    """
    A proxy session as its access log event tells of it
    (L{wsrelay.proxy.session.ProxySession}).
    """

    @property
    def frontend(self) -> ClientLeg:
        """
        The client's leg.
        """

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


def logRefused(
    log: Logger,
    client: str | None,
    route: Route | None,
    head: Head | None,
    refusal: Refused | None,
) -> None:
    """
    Log the access event of a client connection that did not get its 101:
    it was refused (C{refusal}) or left first.

    @param log: Where the event goes.
    @param client: The client's address, if it is still known.
    @param route: The route its request matched, if any.
    @param head: Its request's head, if it could be parsed.
    """
    log.info(
        "{client} {route} refused {status}",
        event="access",
        client=client,
        route=route.name if route else None,
        status=refusal.code if refusal is not None else None,
        path=head.startLine.split(" ")[1] if head else None,
        closedBy="relay" if refusal is not None else "client",
    )
