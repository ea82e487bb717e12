# -*- test-case-name: tests.test_proxy,tests.test_plainleg,tests.test_heads -*-
"""
An upstream leg's opening handshake as the relay reads it, for both kinds
of upstream leg (Autobahn's, L{wsrelay.ws.upstream.UpstreamProtocol}, and
the passthrough data path's plain one, L{wsrelay.ws.plainleg}): the
backend's answer parsed, a refusal kept with its status, headers and body
for relaying, the subprotocol checked, and a plain 101 accepted without
Autobahn.  The errors an upstream fails with.
"""

from __future__ import annotations

from binascii import b2a_base64
from hashlib import sha1
from typing import TYPE_CHECKING, Any

from wsrelay.ws.handshake import (
    NOT_FORWARDED,
    BadHead,
    Head,
    endToEnd,
    parseHead,
    parseStatusLine,
    quickFields,
)

if TYPE_CHECKING:
    from collections.abc import Iterable

    from twisted.internet.defer import Deferred

#: What a key is hashed with for C{Sec-WebSocket-Accept} (RFC 6455 4.2.2).
_WS_MAGIC = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

#: The length of a C{Sec-WebSocket-Accept} value (the base64 of a SHA-1).
_ACCEPT_LENGTH = 28

#: How many shapes of 101 L{ResponseReader._quick101} remembers before it
#: forgets them all (a backend whose 101 holds a C{Date} makes a new one
#: every second).
KEPT_SHAPES = 32

#: The plain 101s that L{ResponseReader._quick101} read lately, by their
#: shape (the head before and after its accept value), each with what the
#: leg opened with: its fields for the client and its subprotocol.
_SHAPES: dict[tuple[bytes, bytes], tuple[tuple[tuple[str, str], ...], str]] = {}

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
    @ivar plain: Whether the leg is a plain protocol rather than Autobahn's
        (the passthrough data path: L{wsrelay.ws.plainleg}).
    @ivar key: On the passthrough data path, the client's
        C{Sec-WebSocket-Key}, which the plain leg sends on, as with
        a L{RequestLines<wsrelay.ws.handshake.RequestLines>}.
    """

    key: str | None = None

    def __init__(
        self,
        fields: Iterable[tuple[str, str]] = (),
        extensions: str = NO_EXTENSIONS,
        plain: bool = False,
    ) -> None:
        super().__init__(fields)
        self.extensions = extensions
        self.plain = plain


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


def _rememberShape(
    raw: bytes, at: int, relayed: list[tuple[str, str]], protocol: str
) -> None:
    """
    Remember the shape of a plain 101 that L{ResponseReader._quick101}
    opened on, with no extension answer, for the next with another accept
    value.

    That one opens as this one did.  Its head is this one's bytes with one
    base64 run of the same length for another (at C{at}, where this one's
    only accept value was): base64 holds no CR, LF, colon or blank, so the
    lines, the fields' names and every other value are this one's, and its
    C{Sec-WebSocket-Accept} value is the new run, right for its leg's key
    (found by it).  What else the reading depends on is the leg's: the
    subprotocols offered, checked again; extensions, the same with no
    answer but for L{RELAY_DEFLATE}, which the quick reading does not take.

    @param raw: The head, without its blank line.
    @param at: Where its accept value is.
    @param relayed: Its fields for the client.
    @param protocol: The subprotocol chosen, or C{""}.
    """
    if len(_SHAPES) >= KEPT_SHAPES:
        _SHAPES.clear()
    _SHAPES[raw[:at], raw[at + _ACCEPT_LENGTH :]] = (tuple(relayed), protocol)


class ResponseReader:
    """
    Reads the backend's answer to an upstream leg's request (a mixin).

    The leg gives C{data} (the bytes received), C{websocket_key} (or its
    own L{_expectedAccept}), C{offered}, C{extensions} and C{opened}, and
    the hooks C{failHandshake}
    (the answer is not a valid handshake), C{abortHandshake} (drop the
    connection after a refusal), C{notPlain} (a 101 that
    L{_plainAccept} does not accept) and C{_open} (a plain 101).

    @ivar responseHeaders: The end-to-end fields of the backend's 101.
    @ivar extensionsAnswer: With L{END_TO_END}, the values of the
        C{Sec-WebSocket-Extensions} fields of the backend's 101, as sent.
    """

    data: bytes
    websocket_key: bytes
    offered: tuple[str, ...] = ()
    extensions: str = NO_EXTENSIONS
    opened: Deferred[Any]
    responseHeaders: list[tuple[str, str]] = FORGOTTEN
    extensionsAnswer: tuple[str, ...] = ()
    _refused: tuple[int, str, list[tuple[str, str]], int, int | None] | None = None
    #: What only the opening handshake reads (L{forgetRequest}).
    _REQUEST: tuple[str, ...] = (
        "resource",
        "hostHeader",
        "requestHeaders",
        "offered",
        "extensions",
        "responseHeaders",
    )

    def forgetRequest(self) -> None:
        """
        Let the request's and the response's header fields go once open:
        each then reads as its class default.
        """
        attributes = vars(self)
        for name in self._REQUEST:
            attributes.pop(name, None)

    def failHandshake(self, reason: str) -> None:
        """
        The backend's answer is not a valid handshake.
        """
        raise NotImplementedError()

    def abortHandshake(self) -> None:
        """
        Drop the connection (a refusal was relayed).
        """
        raise NotImplementedError()

    def notPlain(self) -> None:
        """
        A 101 that L{_plainAccept} does not accept.
        """
        raise NotImplementedError()

    def _open(self, end: int, chosen: str) -> None:
        """
        Open on a plain 101 whose head ends at C{end} in C{data}, with the
        subprotocol C{chosen} (or C{""}).
        """
        raise NotImplementedError()

    def _expectedAccept(self) -> bytes:
        """@return: The accept value right for the key sent, C{websocket_key}."""
        # (binascii: base64.b64encode is a Python function around it.)
        return b2a_base64(sha1(self.websocket_key + _WS_MAGIC).digest(), newline=False)

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
        if self.data.startswith(b"HTTP/1.1 101 ") and self._quick101(end):
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
        self.notPlain()

    def _quick101(self, end: int) -> bool:
        """
        Open on a plain 101 (L{_plainAccept}) read in one pass over its
        fields, with nothing made that nothing reads: no L{Head}, no fields
        by name.  A head this does not take (an unusual line, a field
        repeated, a subprotocol not offered, a wrong key, an extension the
        leg would negotiate, a character outside ASCII) is read again by
        L{processHandshake}'s general path, which says what is wrong or
        leaves it to Autobahn; whatever it takes, that path takes alike
        (C{tests.test_heads}).  A head of a shape it took before (the same
        bytes around another accept value, right for this leg's key) opens
        as that one did, with no reading at all (L{_rememberShape}).

        @param end: Where the head ends in C{self.data}, which starts with
            C{HTTP/1.1 101 }.
        @return: Whether the leg opened.
        """
        if self.extensions == RELAY_DEFLATE:
            return False
        data = self.data
        expected = self._expectedAccept()
        at = data.find(expected, 0, end)
        if at >= 0:
            # A head of a shape read before (most backends answer every
            # handshake alike, but for the accept value): read as that one.
            known = _SHAPES.get((data[:at], data[at + _ACCEPT_LENGTH : end]))
            if known is not None and (not known[1] or known[1] in self.offered):
                if known[0]:  # (Else left at the empty FORGOTTEN.)
                    self.responseHeaders = [*known[0]]
                self._open(end, known[1])
                return True
        raw = data[:end]
        if not raw.isascii():
            return False
        text = raw.decode("ascii")
        first = text.find("\r\n")
        fields = quickFields(text, first if first >= 0 else end)
        if fields is None:
            return False
        upgrade = connection = accept = protocol = None
        relayed: list[tuple[str, str]] = []
        answer: list[str] = []
        for name, value in fields:
            lname = name.lower()
            if lname not in NOT_FORWARDED:
                relayed.append((name, value))
            elif lname == "upgrade":
                if upgrade is not None:
                    return False
                upgrade = value
            elif lname == "connection":
                if connection is not None:
                    return False
                connection = value
            elif lname == "sec-websocket-accept":
                if accept is not None:
                    return False
                accept = value
            elif lname == "sec-websocket-protocol":
                if protocol is not None:
                    return False
                protocol = value
            elif lname == "sec-websocket-extensions":
                answer.append(value)
        if (
            upgrade is None
            or connection is None
            or accept is None
            or upgrade.lower() != "websocket"
            or (answer and self.extensions != END_TO_END)
            or (protocol and protocol not in self.offered)
        ):
            return False
        if connection.lower() != "upgrade":
            tokens = {t.strip().lower() for t in connection.split(",")}
            if "upgrade" not in tokens:
                return False
            relayed = [(n, v) for (n, v) in relayed if n.lower() not in tokens]
        if accept != expected.decode():
            return False
        self.responseHeaders = relayed
        if not answer and raw.find(expected, at + _ACCEPT_LENGTH) < 0:
            # The accept value is in the head once (it found at C{at}):
            # whatever this head's shape holds around another one reads as
            # this head did (L{_rememberShape}).
            _rememberShape(raw, at, relayed, protocol or "")
        if answer:
            self.extensionsAnswer = tuple(answer)
            self._dropExtensions(end)
            # (The head is shorter now.)
            end = self.data.find(b"\r\n\r\n")
        self._open(end, protocol or "")
        return True

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
        fields = head.fields
        if "sec-websocket-extensions" in fields and self.extensions != END_TO_END:
            return False
        upgrade = fields.get("upgrade", [])
        accept = fields.get("sec-websocket-accept", [])
        if (
            len(upgrade) != 1
            or upgrade[0].strip().lower() != "websocket"
            or "upgrade" not in head.tokens("connection")
            or len(fields.get("sec-websocket-protocol", ())) > 1
            or len(accept) != 1
        ):
            return False
        return accept[0].strip() == self._expectedAccept().decode()

    def _keepExtensionsAnswer(self, head: Head, end: int) -> None:
        """
        Keep the backend's C{Sec-WebSocket-Extensions} fields for the
        client, and take them out of the head Autobahn goes on to check: it
        would refuse an extension this leg did not offer itself, or
        activate permessage-deflate on a connection whose bytes it does not
        parse (the passthrough pipe does).

        @param end: Where the head ends in C{self.data}.
        """
        self.extensionsAnswer = tuple(head.fields.get("sec-websocket-extensions", ()))
        if self.extensionsAnswer:
            self._dropExtensions(end)

    def _dropExtensions(self, end: int) -> None:
        """
        Take the C{Sec-WebSocket-Extensions} fields out of the head that
        ends at C{end} in C{self.data}.
        """
        lines = self.data[:end].split(b"\r\n")
        kept = [
            line
            for line in lines
            if line.split(b":", 1)[0].strip().lower() != b"sec-websocket-extensions"
        ]
        self.data = b"\r\n".join(kept) + self.data[end:]

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
        self.abortHandshake()
