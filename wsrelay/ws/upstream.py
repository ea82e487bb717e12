# -*- test-case-name: tests.test_proxy -*-
"""
The backend-facing leg: an Autobahn client protocol that sends the
client's request as the relay rewrote it, and that keeps a refused
handshake's status, headers and body so they can be relayed.
"""

from __future__ import annotations

import base64
import os
from typing import TYPE_CHECKING, Any

import txaio
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.compress import (
    PerMessageDeflateOffer,
    PerMessageDeflateResponse,
    PerMessageDeflateResponseAccept,
)
from twisted.internet.defer import Deferred

from wsrelay.ws._autobahn import FIRED, NONE_IN_USE, forgetOpened
from wsrelay.ws.handshake import buildRequest
from wsrelay.ws.legclosing import OPEN
from wsrelay.ws.legs import RelayLeg, legOptions, withOptions
from wsrelay.ws.response import (
    END_TO_END,
    FORGOTTEN,
    MAX_REFUSAL_BODY,
    NO_EXTENSIONS,
    RELAY_DEFLATE,
    RequestHeaders,
    ResponseReader,
    UpstreamError,
    UpstreamLocalError,
    UpstreamRefused,
    UpstreamShortageError,
    UpstreamTimeout,
)

#: The names other modules import from here (L{wsrelay.ws.response}'s).
__all__ = [
    "END_TO_END",
    "FORGOTTEN",
    "MAX_REFUSAL_BODY",
    "NO_EXTENSIONS",
    "RELAY_DEFLATE",
    "RequestHeaders",
    "UpstreamError",
    "UpstreamFactory",
    "UpstreamLocalError",
    "UpstreamProtocol",
    "UpstreamRefused",
    "UpstreamShortageError",
    "UpstreamTimeout",
]

if TYPE_CHECKING:
    from wsrelay.config import RelayConfig


class _AnySubprotocol:
    """
    Stands in for the factory's list of subprotocols: the relay checks the
    backend's choice against what each client offered, before Autobahn
    looks.
    """

    def __contains__(self, item: object) -> bool:
        return True

    def __len__(self) -> int:
        return 0


class UpstreamProtocol(ResponseReader, RelayLeg, WebSocketClientProtocol):  # type: ignore[misc]
    """
    One connection to a backend.

    @ivar requestHead: The request to send, without key and version.
    @ivar offered: The subprotocols the client offered.
    @ivar opened: Fires with this protocol when the handshake succeeded,
        fails with L{UpstreamError} or L{UpstreamRefused}.
    @ivar responseHeaders: The end-to-end fields of the backend's 101.
    @ivar extensions: How this leg treats extensions: L{NO_EXTENSIONS},
        L{RELAY_DEFLATE} or L{END_TO_END}.
    @ivar extensionsAnswer: With L{END_TO_END}, the values of the
        C{Sec-WebSocket-Extensions} fields of the backend's 101, as sent.
    """

    resource: str = "/"
    hostHeader: str = ""
    requestHeaders: list[tuple[str, str]] = FORGOTTEN
    offered: tuple[str, ...] = ()
    #: (Once the leg let it go: L{wsrelay.ws._autobahn.forgetOpened}.)
    opened: Deferred[UpstreamProtocol] = FIRED
    responseHeaders: list[tuple[str, str]] = FORGOTTEN
    extensions: str = NO_EXTENSIONS
    extensionsAnswer: tuple[str, ...] = ()
    #: What a plain 101 leaves as Autobahn would set it (L{_open}): the
    #: version spoken, no extension in use (L{NONE_IN_USE}).
    websocket_version = 13
    websocket_extensions_in_use: list[Any] = NONE_IN_USE
    _refused: tuple[int, str, list[tuple[str, str]], int, int | None] | None = None

    def startHandshake(self) -> None:
        """
        Send the client's request, rewritten for this backend.
        """
        key = base64.b64encode(os.urandom(16))
        self.websocket_key = key
        headers = self.requestHeaders
        if self.extensions == RELAY_DEFLATE:
            # Autobahn's client offer (as its testee client makes it); the
            # answer goes through perMessageCompressionAccept.
            self.perMessageCompressionOffers = [PerMessageDeflateOffer()]
            offer = ", ".join(
                o.get_extension_string() for o in self.perMessageCompressionOffers
            )
            headers = [*headers, ("Sec-WebSocket-Extensions", offer)]
        self.http_request_data = buildRequest(
            self.resource, self.hostHeader, key.decode(), headers
        )
        self.sendData(self.http_request_data)

    def forgetHandshake(self, compacting: bool = True) -> None:
        """
        Let the request's and the response's header fields go too, and
        what only the handshake read: each then reads as its class default.
        """
        self.forgetRequest()
        forgetOpened(self, "opened")
        super().forgetHandshake(compacting)

    def _open(self, end: int, chosen: str) -> None:
        """
        Open the leg as Autobahn does once it accepted a 101 (its
        C{processHandshake}), without the response object and the
        L{Deferred} of its C{onConnect}, which this leg does not use.

        @param end: Where the head ends in C{self.data}.
        @param chosen: The subprotocol the backend chose, or C{""}.
        """
        self.data = self.data[end + 4 :]
        self.websocket_protocol_in_use = chosen or None
        self.state = OPEN
        self.upgraded = True
        self.inside_message = False
        self.current_frame = None
        if self.version != self.websocket_version:  # type: ignore[attr-defined]
            self.websocket_version = self.version  # type: ignore[attr-defined]
        self.startKeepalive()
        # Resolved first, so that a leg paired as it opens lets it go.
        txaio.resolve(self.is_open, None)  # type: ignore[attr-defined]
        self._onOpen()
        if self.data:
            self.consumeData()

    def perMessageCompressionAccept(
        self, response: object
    ) -> PerMessageDeflateResponseAccept | None:
        """
        Take the backend's permessage-deflate parameters when this leg
        offered it (Autobahn calls this with the parsed answer; set on the
        class, it is not replaced by the factory's option).

        @return: The acceptance, or L{None}, which fails the handshake.
        """
        if self.extensions == RELAY_DEFLATE and isinstance(
            response, PerMessageDeflateResponse
        ):
            return PerMessageDeflateResponseAccept(response)
        return None

    def notPlain(self) -> None:
        """
        Autobahn checks a 101 that is not plain (and fails it, or opens).
        """
        WebSocketClientProtocol.processHandshake(self)

    def abortHandshake(self) -> None:
        """
        Drop the connection (a refusal was relayed).
        """
        self.dropConnection(abort=True)

    def failHandshake(self, reason: str) -> None:
        """
        The backend's answer is not a valid handshake.
        """
        if not self.opened.called:
            self.opened.errback(UpstreamError(reason))
        WebSocketClientProtocol.failHandshake(self, reason)

    def onOpen(self) -> None:
        """
        The backend accepted.
        """
        if not self.opened.called:
            self.opened.callback(self)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        """
        The connection is gone: before the handshake ended, that fails it.
        """
        if not self.opened.called:
            self.cancelCloseTimer()
            if self._refused is not None:
                self._collectRefusal(final=True)
            else:
                self.opened.errback(
                    UpstreamError(reason or "connection closed during the handshake")
                )
            return
        RelayLeg.onClose(self, wasClean, code, reason)


class UpstreamFactory(WebSocketClientFactory):
    """
    The Autobahn factory for one backend, shared by all its connections.
    """

    protocol = UpstreamProtocol

    def __init__(self, url: str, config: RelayConfig, reactor: Any) -> None:
        super().__init__(url=url, reactor=reactor)
        self.protocols = _AnySubprotocol()
        self.setProtocolOptions(
            serverConnectionDropTimeout=config.closeTimeout,
            perMessageCompressionOffers=[],
            **legOptions(config),
        )
        self.protocol = withOptions(UpstreamProtocol, self)
