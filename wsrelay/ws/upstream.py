# -*- test-case-name: tests.test_proxy -*-
"""
The backend-facing leg: an Autobahn client protocol that sends the
client's request as the relay rewrote it, and that keeps a refused
handshake's status, headers and body so they can be relayed.
"""

from __future__ import annotations

import base64
import hashlib
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
from wsrelay.ws.handshake import (
    BadHead,
    Head,
    buildRequest,
    endToEnd,
    parseHead,
    parseStatusLine,
)
from wsrelay.ws.legclosing import OPEN
from wsrelay.ws.legs import RelayLeg, legOptions, withOptions

if TYPE_CHECKING:
    from collections.abc import Iterable

    from wsrelay.config import RelayConfig

#: What a key is hashed with for C{Sec-WebSocket-Accept} (RFC 6455 4.2.2).
_WS_MAGIC = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

#: How much of a refusal's body is relayed.
MAX_REFUSAL_BODY = 65536

#: L{RequestHeaders.extensions}: the upstream leg offers no extension and
#: refuses an answer that names one (Autobahn's default).
NO_EXTENSIONS = "none"

#: L{RequestHeaders.extensions}: the upstream leg offers permessage-deflate
#: and compresses as the backend answers (the message data path).
RELAY_DEFLATE = "deflate"

#: L{RequestHeaders.extensions}: the request carries the client's
#: C{Sec-WebSocket-Extensions} offer; the leg keeps the backend's answer,
#: whatever it is, for the client's 101 and activates nothing in Autobahn
#: (the passthrough data path: the endpoints negotiate with each other).
END_TO_END = "end-to-end"


#: The header fields of a leg that let its handshake go
#: (L{UpstreamProtocol.forgetHandshake}): one empty list for all, which
#: nothing adds to.
FORGOTTEN: list[tuple[str, str]] = []


class RequestHeaders(list[tuple[str, str]]):
    """
    The header fields of an upstream request, and how its leg treats
    WebSocket extensions.

    A list, so that it reaches L{connectUpstream} through
    L{wsrelay.connector.Connector.openUpstream} as it is.

    @ivar extensions: L{NO_EXTENSIONS}, L{RELAY_DEFLATE} or L{END_TO_END}.
    """

    def __init__(
        self, fields: Iterable[tuple[str, str]] = (), extensions: str = NO_EXTENSIONS
    ) -> None:
        super().__init__(fields)
        self.extensions = extensions


class UpstreamError(Exception):
    """
    The backend could not be reached or did not complete the handshake.
    """


class UpstreamTimeout(UpstreamError):
    """
    The backend did not complete the handshake in time.
    """


class UpstreamLocalError(UpstreamError):
    """
    The connect failed for want of a local resource (descriptors, local
    ports, buffers: L{wsrelay.descriptors.LOCAL_ERRNOS}): the relay's
    problem, not the backend's.
    """


class UpstreamShortageError(UpstreamError):
    """
    The connect failed in a way that is the relay's problem when it is
    short of descriptors, and the backend's otherwise
    (L{wsrelay.descriptors.isShortageError}: C{EADDRNOTAVAIL}, a failed
    name lookup).
    """


class UpstreamRefused(Exception):
    """
    The backend answered the handshake with another status than 101.

    @ivar status: The status code.
    @ivar reason: The reason phrase.
    @ivar headers: Its end-to-end header fields.
    @ivar body: Its body, at most L{MAX_REFUSAL_BODY} bytes.
    """

    def __init__(
        self, status: int, reason: str, headers: list[tuple[str, str]], body: bytes
    ) -> None:
        super().__init__(f"backend answered {status} {reason}")
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body


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


class UpstreamProtocol(RelayLeg, WebSocketClientProtocol):  # type: ignore[misc]
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
    #: What only the opening handshake reads (L{forgetHandshake}).
    _REQUEST = (
        "resource",
        "hostHeader",
        "requestHeaders",
        "offered",
        "extensions",
        "responseHeaders",
    )

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
        attributes = vars(self)
        for name in self._REQUEST:
            attributes.pop(name, None)
        forgetOpened(self, "opened")
        super().forgetHandshake(compacting)

    def processHandshake(self) -> None:
        """
        Keep a refusal for relaying; check the subprotocol; let Autobahn
        check the rest of a 101.
        """
        if self._refused is not None:
            self._collectRefusal(final=False)
            return
        end = self.data.find(b"\r\n\r\n")
        if end < 0:
            if len(self.data) > 65536:
                self.failHandshake("response head too large")
            return
        try:
            head = parseHead(self.data[:end])
            _, status, reason = parseStatusLine(head.startLine)
        except (BadHead, ValueError) as e:
            # ValueError: str.isdigit() holds for digits int() refuses
            # (superscripts, in a head read as Latin-1).
            self.failHandshake(f"bad response: {e}")
            return
        if status != 101 and not 200 <= status <= 599:
            # Not a final answer a client could be given (a 1xx, or no
            # HTTP status at all): the backend failed.
            self.failHandshake(f"bad response: status {status}")
            return
        if status != 101:
            length = head.get("content-length")
            self._refused = (
                status,
                reason,
                endToEnd(head),
                end + 4,
                int(length)
                if length and length.isascii() and length.isdigit()
                else None,
            )
            self._collectRefusal(final=False)
            return
        chosen = (head.get("sec-websocket-protocol") or "").strip()
        if chosen and chosen not in self.offered:
            self.failHandshake(f"backend chose subprotocol {chosen!r}, not offered")
            return
        try:
            self.data[: end + 4].decode("utf-8")
        except UnicodeDecodeError:
            # Autobahn decodes the head as UTF-8 (for a debug line) and the
            # error would escape from dataReceived.
            self.failHandshake("bad response: head not UTF-8")
            return
        self.responseHeaders = endToEnd(head)
        if self.extensions == END_TO_END:
            self._keepExtensionsAnswer(head, end)
        if self._plainAccept(head):
            # (The head may be shorter now: _keepExtensionsAnswer.)
            self._open(self.data.find(b"\r\n\r\n"), chosen)
            return
        WebSocketClientProtocol.processHandshake(self)

    def _plainAccept(self, head: Head) -> bool:
        """
        Whether the backend's 101 is one Autobahn accepts without a doubt
        and without negotiating anything: HTTP/1.1, one C{Upgrade:
        websocket}, C{Connection} with C{upgrade}, one
        C{Sec-WebSocket-Accept} that is right for the key, at most one
        C{Sec-WebSocket-Protocol} (checked already), and no extension that
        this leg would negotiate.  Anything else goes to Autobahn, which
        accepts or fails it with its own reason.
        """
        if self.extensions == RELAY_DEFLATE or not head.startLine.startswith(
            "HTTP/1.1 "
        ):
            return False
        upgrade, accept, protocols = [], [], 0
        for name, value in head.headers:
            lname = name.lower()
            if lname == "upgrade":
                upgrade.append(value)
            elif lname == "sec-websocket-accept":
                accept.append(value)
            elif lname == "sec-websocket-protocol":
                protocols += 1
            elif lname == "sec-websocket-extensions" and self.extensions != END_TO_END:
                return False
        if (
            len(upgrade) != 1
            or upgrade[0].strip().lower() != "websocket"
            or "upgrade" not in head.tokens("connection")
            or protocols > 1
            or len(accept) != 1
        ):
            return False
        digest = hashlib.sha1(self.websocket_key + _WS_MAGIC).digest()
        return accept[0].strip() == base64.b64encode(digest).decode()

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

    def _keepExtensionsAnswer(self, head: Head, end: int) -> None:
        """
        Keep the backend's C{Sec-WebSocket-Extensions} fields for the
        client, and take them out of the head Autobahn goes on to check: it
        would refuse an extension this leg did not offer itself, or
        activate permessage-deflate on a connection whose bytes it does not
        parse (the passthrough pipe does).

        @param end: Where the head ends in C{self.data}.
        """
        self.extensionsAnswer = tuple(
            v for (n, v) in head.headers if n.lower() == "sec-websocket-extensions"
        )
        if not self.extensionsAnswer:
            return
        lines = self.data[:end].split(b"\r\n")
        kept = [
            line
            for line in lines
            if line.split(b":", 1)[0].strip().lower() != b"sec-websocket-extensions"
        ]
        self.data = b"\r\n".join(kept) + self.data[end:]

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

    def _collectRefusal(self, final: bool) -> None:
        """
        Relay the refusal once its body is here (by C{Content-Length}, or
        the connection's end).
        """
        assert self._refused is not None
        status, reason, headers, start, length = self._refused
        have = len(self.data) - start
        want = MAX_REFUSAL_BODY if length is None else min(length, MAX_REFUSAL_BODY)
        if not final and have < want:
            return
        body = self.data[start : start + want]
        if not self.opened.called:
            self.opened.errback(UpstreamRefused(status, reason, headers, body))
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
