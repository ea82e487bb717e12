# -*- test-case-name: tests.test_plainaccept -*-
"""
The client's opening handshake on a passthrough route, answered without
Autobahn's second parse of the request (issue 16).

The relay has parsed and screened the request head already
(L{wsrelay.ws.screening}); Autobahn would parse it again, build a request
object and answer through a chain of L{Deferred
<twisted.internet.defer.Deferred>} callbacks, none of which a passthrough
connection uses.  L{plainRequest} says whether a request is one that
Autobahn accepts without a doubt, checking what Autobahn checks, and what
the client offered; L{acceptResponse} is the 101 Autobahn would write for
it.  Any other request still goes to Autobahn, which accepts or refuses it
with its own answer, as the upstream leg does with a backend's 101
(L{wsrelay.ws.upstream.UpstreamProtocol}).
"""

from __future__ import annotations

import functools
import re
from binascii import b2a_base64
from collections.abc import Callable, Iterable, Sequence
from hashlib import sha1
from typing import TYPE_CHECKING, Any, cast

from autobahn.websocket.types import ConnectionDeny
from twisted.python.failure import Failure

from wsrelay.ws._autobahn import NONE_IN_USE, isTLS, originAllowed
from wsrelay.ws.legclosing import CLOSED, OPEN
from wsrelay.ws.screening import NOT_ASKED, plainHost
from wsrelay.ws.writes import sendWithTurn

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from wsrelay.routing import Route
    from wsrelay.ws.handshake import Head
    from wsrelay.ws.screening import Screened

#: What a key is hashed with for C{Sec-WebSocket-Accept} (RFC 6455 4.2.2).
WS_MAGIC = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

#: A C{Sec-WebSocket-Key} that Autobahn takes: 16 bytes in base64, 22
#: characters of its alphabet and C{==}.
_KEY = re.compile(r"[A-Za-z0-9+/]{22}==")


def plainRequest(
    head: Head, originAllowed: Callable[[str], bool]
) -> tuple[str, list[str]] | None:
    """
    Whether a screened request (L{wsrelay.ws.screening.screenRequest}) is
    one that Autobahn's server accepts as it stands, as its
    C{processHandshake} checks it: C{GET}, HTTP/1.1, a request target in
    origin form, one C{Host} (with a numeric port if any), C{Connection}
    with C{upgrade}, one C{Sec-WebSocket-Version: 13}, subprotocols offered
    at most once each, at most one C{Origin}, which C{originAllowed}
    accepts, one valid C{Sec-WebSocket-Key}, and at most one
    C{Sec-WebSocket-Extensions} field.  (The screening checked the rest:
    the syntax of the head, the C{Upgrade} field, no fragment.)  The leg
    asks L{plainScreened}, which leaves out what the screening checked
    too; this checks it all, as the reference that tests compare it with.

    @param head: The request's head.
    @param originAllowed: Says whether Autobahn accepts an C{Origin} value.
    @return: The key and the subprotocols offered, in order, or L{None}
        for a request to leave to Autobahn.
    """
    line = head.startLine
    if not (
        line.startswith("GET /")
        and line.endswith(" HTTP/1.1")
        and line.isascii()
        and "\t" not in line
        # Autobahn parses a target "//..." as holding a host.
        and not line.startswith("GET //")
    ):
        return None
    fields = head.fields
    hosts = fields.get("host")
    if hosts is None or len(hosts) != 1 or not plainHost(hosts[0]):
        return None
    if fields.get("sec-websocket-version") != ["13"]:
        return None
    return _plainFields(fields, originAllowed)


def plainScreened(screened: Screened, protocol: Any) -> tuple[str, list[str]] | None:
    """
    L{plainRequest} for a request that L{wsrelay.ws.screening.screenRequest}
    let through, without checking again what the screening checked: its
    start line (C{screened.plain} says whether it is C{GET}, HTTP/1.1 and
    in origin form), its one C{Host} (C{screened.plain} says whether its
    port is numeric) and its C{Sec-WebSocket-Version} (C{13} if given).

    @param protocol: Autobahn's server leg, whose C{originAllowed} judges
        an C{Origin}.
    @return: What L{plainRequest} gives for C{screened.head}.
    """
    if not screened.plain:
        return None
    shape = screened.shape
    if shape is not None:
        # A head screened before but for its key, which the screening
        # found well formed: answered as then, with this key (unless an
        # Origin is to be judged).
        answer = shape.answer
        if answer is NOT_ASKED:
            answer = shape.answer = shapeAnswer(shape.fields)
        if answer is None:
            return None
        if answer is not ASK:
            assert screened.key is not None
            return screened.key, [*cast("tuple[str, ...]", answer)]
    fields = screened.head.fields
    # (The screening refuses a version other than one "13" and a second
    # Host: should it ever let them through, this must check them again,
    # as PlainScreenedTests would show.)
    if "sec-websocket-version" not in fields:
        return None
    return _plainFields(fields, None, protocol)


#: A L{HeadShape.answer <wsrelay.ws.screening.HeadShape>} that says that
#: L{plainScreened} must judge each request's C{Origin}.
ASK = object()


def shapeAnswer(fields: dict[str, list[str]]) -> tuple[str, ...] | object | None:
    """
    What L{plainScreened} makes of every plain screened request of the
    same head but for its key, given that its key is well formed (as
    L{wsrelay.ws.screening.HeadShape} says).

    @param fields: The fields of one such request.
    @return: The subprotocols offered, when L{plainScreened} answers with
        the key and them; L{None} when it answers L{None}; or L{ASK}, for
        a request with an C{Origin}, which the leg judges.
    """
    if "origin" in fields:
        return ASK
    if "sec-websocket-version" not in fields:
        return None
    # (No Origin: no judge is asked.)
    plain = _plainFields(fields, None)
    return None if plain is None else tuple(plain[1])


def _plainFields(
    fields: dict[str, list[str]],
    allowed: Callable[[str], bool] | None,
    protocol: Any = None,
) -> tuple[str, list[str]] | None:
    """
    The checks of L{plainRequest} on C{Connection}, the subprotocols, the
    C{Origin}, the key and the extensions.

    @param allowed: Says whether Autobahn accepts an C{Origin} value; or
        L{None} for L{originAllowed} of C{protocol}.
    """
    connection = fields.get("connection")
    if connection is None or not (
        # (Most requests: "Connection: Upgrade".)
        (len(connection) == 1 and connection[0].lower() == "upgrade")
        or any(
            token.strip().lower() == "upgrade"
            for token in ", ".join(connection).split(",")
        )
    ):
        return None
    offered = fields.get("sec-websocket-protocol")
    protocols: list[str] = []
    if offered is not None:
        protocols = [p.strip() for p in ", ".join(offered).split(",")]
        if len(set(protocols)) != len(protocols):
            return None
    origins = fields.get("origin")
    if origins is not None:
        if len(origins) != 1:
            return None
        origin = origins[0].strip()
        if not (
            allowed(origin) if allowed is not None else originAllowed(protocol, origin)
        ):
            return None
    keys = fields.get("sec-websocket-key")
    if keys is None or len(keys) != 1:
        return None
    key = keys[0].strip()
    if _KEY.fullmatch(key) is None:
        return None
    extensions = fields.get("sec-websocket-extensions")
    if extensions is not None and len(extensions) > 1:
        return None
    return key, protocols


#: The last key L{acceptKey} was asked about, and its answer.
_lastAccept: tuple[str | None, str] = (None, "")


def acceptKey(key: str) -> str:
    """
    @return: The C{Sec-WebSocket-Accept} for C{key}.  The last answer is
        kept: a passthrough leg sends the client's key on to the backend
        and checks the backend's 101 with this (L{wsrelay.ws.plainleg}),
        and the client's 101, which follows at once, needs the same value.
    """
    global _lastAccept
    last = _lastAccept
    if key == last[0]:
        return last[1]
    accept = b2a_base64(sha1(key.encode() + WS_MAGIC).digest(), newline=False).decode()
    _lastAccept = (key, accept)
    return accept


@functools.lru_cache(maxsize=16)
def _startOf101(server: str | None) -> str:
    """
    @return: The lines that start every 101 of a relay whose C{Server}
        field is C{server} (L{None} or empty: none), made once.
    """
    lines = ["HTTP/1.1 101 Switching Protocols"]
    if server:
        lines.append(f"Server: {server}")
    lines.append("Upgrade: WebSocket")
    lines.append("Connection: Upgrade")
    return "\r\n".join(lines)


def acceptResponse(
    key: str,
    protocol: str | None,
    headers: Iterable[tuple[str, Any]],
    server: str | None,
) -> bytes:
    """
    The 101 that Autobahn's server writes (its C{succeedHandshake}), byte
    for byte, when it negotiates no extension.

    @param key: The client's C{Sec-WebSocket-Key}.
    @param protocol: The subprotocol chosen, or L{None}.
    @param headers: Further fields: a name and a value, or an iterable of
        values each written on its own line.
    @param server: The C{Server} field's value, or L{None} for none.
    """
    lines = [_startOf101(server)]
    for name, values in headers:
        if isinstance(values, str):
            lines.append(f"{name}: {values}")
            continue
        try:
            for value in values:
                lines.append(f"{name}: {value}")
        except TypeError:
            lines.append(f"{name}: {values}")
    if protocol is not None:
        lines.append(f"Sec-WebSocket-Protocol: {protocol}")
    lines.append(f"Sec-WebSocket-Accept: {acceptKey(key)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class PlainAccept:
    """
    Mixin for the client's leg (L{wsrelay.ws.frontend.FrontendProtocol},
    before Autobahn's server protocol): a plain request on a passthrough
    route is answered without Autobahn's C{processHandshake} and
    C{succeedHandshake}, as they would answer it.
    """

    #: What Autobahn sets as it checks a request, for the requests the leg
    #: checks itself: the version spoken, no subprotocol offered, no
    #: extension in use (L{NONE_IN_USE}).
    websocket_version = 13
    websocket_protocols: Sequence[str] = ()
    websocket_extensions_in_use: list[Any] = NONE_IN_USE

    # Autobahn's and the leg's, used here.
    route: Route | None
    data: bytes
    dataPath: Any
    state: int
    factory: Any
    log: Any
    maxConnections: int
    trustXForwardedFor: int
    trackedTimings: Any
    websocket_protocol_in_use: str | None
    logOctets: bool
    send_queue: Any
    transport: Any
    openMade: bool
    detailsMade: bool
    is_open: Any

    if TYPE_CHECKING:

        def onConnect(
            self, request: Any, key: str | None = None
        ) -> Deferred[Any] | None: ...
        def sendData(self, data: bytes) -> None: ...
        def failHandshake(self, reason: str, code: int = 400) -> None: ...
        def _onOpen(self) -> None: ...
        def onOpen(self) -> None: ...
        def startKeepalive(self) -> None: ...
        def consumeData(self) -> None: ...

    def answerPlain(self, screened: Screened) -> bool:
        """
        Open the session of a plain request (L{plainRequest}) on a
        passthrough route as Autobahn's C{processHandshake} would, without
        its second parse of the head, its request object and the
        L{Deferred} around C{onConnect}: the client is answered by
        L{acceptPlain} or L{denyPlain}, called by the session itself on the
        common path (no L{Deferred} between), else on the L{Deferred}
        C{onConnect} gives.  Not with any of the Autobahn options under
        which it checks more.

        @param screened: The request as screened, its head at the start of
            C{data}.
        @return: Whether the request was plain (else Autobahn checks it).
        """
        route = self.route
        if (
            route is None
            or route.config.mode != "proxy"
            or route.config.dataPath != "passthrough"
            or self.maxConnections
            or self.trustXForwardedFor
            or self.factory.externalPort
        ):
            return False
        plain = plainScreened(screened, self)
        if plain is None:
            return False
        key, protocols = plain
        self.data = self.data[screened.headLength :]
        if protocols:
            self.websocket_protocols = protocols
        try:
            d = self.onConnect(None, key)
        except Exception:
            self.denyPlain(Failure())
            return True
        if d is not None:
            d.addCallbacks(self.acceptPlain, self.denyPlain, callbackArgs=(key,))
        return True

    def acceptPlain(self, res: Any, key: str) -> None:
        """
        The session opened: write the 101 as Autobahn would
        (L{acceptResponse}), and open the leg as its C{succeedHandshake}
        does, the keepalive pings started only if the session's pipe did
        not take the connection over.  A client that left meanwhile gets
        nothing.
        """
        if self.state == CLOSED:
            return
        # What the session answers, read as Autobahn reads what its
        # onConnect gives.
        protocol, headers = res, cast("dict[str, Any] | None", None)
        if isinstance(res, tuple):
            protocol = res[0] if res else None
            headers = res[1] if len(res) > 1 else None
        if protocol is not None and protocol not in self.websocket_protocols:
            raise ValueError(f"subprotocol {protocol!r} was not offered")
        if protocol is not None:
            self.websocket_protocol_in_use = protocol
        factory = self.factory
        if protocol is None and not headers and not factory.headers:
            # acceptResponse's 101 with no field but the accept value (most
            # handshakes), inline.
            response = (
                f"{_startOf101(factory.server)}\r\n"
                f"Sec-WebSocket-Accept: {acceptKey(key)}\r\n\r\n"
            ).encode()
        else:
            response = acceptResponse(
                key,
                protocol,
                [*factory.headers.items(), *(headers or {}).items()],
                factory.server,
            )
        if self.logOctets or self.send_queue:
            self.sendData(response)
        else:
            # Written once, as sendData would write it (directWrite), but
            # without making the leg's writer, which a pipe never uses
            # (its directions write to the transports themselves); with
            # the other 101s of the turn, and before anything the pipe
            # writes to the client (sendWithTurn).
            sendWithTurn(self.transport, response)
        self.state = OPEN
        # (Autobahn's succeedHandshake also resets inside_message and
        # current_frame: no frame of this leg was parsed yet, its bytes
        # went to its processHandshake only, and they read as their class
        # defaults.)
        if self.trackedTimings:
            self.trackedTimings.track("onOpen")
        # Resolved first, so that the leg lets it go as it is paired; only
        # if something made it (LazyOpen, which says so in openMade, not
        # in a __dict__ that reading would make): it reads as fired from
        # now on.
        if self.openMade:
            self.is_open.callback(None)
        if self.detailsMade or isTLS(self.transport):
            self._onOpen()
        else:
            # What LegShims._onOpen does for a plain leg whose transport
            # details were never made, with no compressor to keep (the
            # relay negotiated no extension).
            self.onOpen()
        if self.state == OPEN and self.dataPath is None:
            # (Not when the session's pipe took the connection over.)
            self.startKeepalive()
        if self.data:
            self.consumeData()

    def denyPlain(self, f: Failure) -> None:
        """
        The session could not open: answer as Autobahn would.
        """
        e = f.value
        if isinstance(e, ConnectionDeny):
            self.failHandshake(e.reason or "", e.code)
            return
        self.log.warn("Unexpected exception in onConnect ['{err.value}']", err=f)
        self.failHandshake(
            f"Internal server error: {e}", ConnectionDeny.INTERNAL_SERVER_ERROR
        )
