# -*- test-case-name: tests.test_edge,tests.test_proxy -*-
"""
The screening of a client's request before Autobahn sees it: head size
(431), syntax (400), a body (400), the path (dot segments resolved, 400
when it climbs above C{/}), C{GET /healthz}, the route (404) and the
upgrade itself (426, also for a WebSocket version other than 13).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from autobahn.websocket.types import ConnectionDeny

from wsrelay.routing import BadPath, PathAboveRoot, normalizePath
from wsrelay.ws.fieldlines import CREDENTIALS, KEPT_LENGTH, keep
from wsrelay.ws.handshake import BadHead, Head, HeadParts, parseHead

if TYPE_CHECKING:
    from wsrelay.routing import Route, RouteTable


class Refused(ConnectionDeny):
    """
    The relay refuses a handshake with this status, these headers and
    this body (relayed from a backend, or its own).
    """

    #: Always given, unlike Autobahn's.
    reason: str

    def __init__(
        self,
        code: int,
        reason: str,
        headers: list[tuple[str, str]] | None = None,
        body: bytes | None = None,
    ) -> None:
        super().__init__(code, reason)
        self.headers = headers or []
        self.body = body


class Rejected:
    """
    A request the relay answers itself (L{screenRequest}).

    @ivar refusal: The answer.
    @ivar head: The request's head, when it could be parsed.
    """

    def __init__(self, refusal: Refused, head: Head | None = None) -> None:
        self.refusal = refusal
        self.head = head


class Screened:
    """
    A routed, well-formed upgrade request (L{screenRequest}).

    @ivar head: The request's head.
    @ivar route: The route it matched.
    @ivar remainder: The normalized path after the route's prefix.
    @ivar path: The request path, normalized (L{normalizePath}).
    @ivar query: The query string, without C{?}, as sent.
    @ivar headLength: How many bytes of what the client sent the head
        takes, with the blank line that ends it.
    @ivar plain: Whether its start line is C{GET}, HTTP/1.1 and in origin
        form (not C{//}), and its C{Host} has no port or a numeric one:
        what L{wsrelay.ws.accept.plainScreened} needs of what was screened.
    @ivar shape: The L{HeadShape} the request was screened as, when it was
        one seen before (else L{None}).
    @ivar key: With a C{shape}, the request's C{Sec-WebSocket-Key}.
    """

    __slots__ = (
        "head",
        "headLength",
        "key",
        "path",
        "plain",
        "query",
        "remainder",
        "route",
        "shape",
    )

    def __init__(
        self,
        head: Head,
        route: Route,
        remainder: str,
        path: str,
        query: str,
        headLength: int,
        plain: bool = False,
        shape: HeadShape | None = None,
        key: str | None = None,
    ) -> None:
        self.head = head
        self.route = route
        self.remainder = remainder
        self.path = path
        self.query = query
        self.headLength = headLength
        self.plain = plain
        self.shape = shape
        self.key = key


#: How many C{Host} values L{routedHost} remembers (it forgets them all
#: when it has as many), and how long each may be.
KEPT_HOSTS = 1024
KEPT_HOST_LENGTH = 256

#: The hosts L{routedHost} made, by C{Host} value as sent, each with
#: whether L{plainHost} takes the value: a relay's clients name a few.
_HOSTS: dict[str, tuple[str, bool]] = {}


def hostOf(value: str) -> str:
    """
    @param value: A request's C{Host} field value, as sent (or C{""} for
        none).
    @return: The host a route is matched on: lower case, without the
        blanks around it and without a port.
    """
    host = value.strip().lower()
    if host.startswith("["):
        host = host[: host.find("]") + 1]
    elif host.count(":") == 1:
        host = host.rsplit(":", 1)[0]
    return host


def plainHost(value: str) -> bool:
    """
    @param value: A C{Host} field's value, as sent.
    @return: Whether Autobahn's server takes it as it stands: its port, if
        it has one, numeric (L{wsrelay.ws.accept.plainRequest}).
    """
    host = value.strip()
    if ":" in host and not host.endswith("]"):
        port = host.rsplit(":", 1)[1].strip()
        return port.isascii() and port.isdigit()
    return True


def hostEntry(value: str) -> tuple[str, bool]:
    """
    L{hostOf} and L{plainHost} of C{value}, remembered for the short values
    they were given (at most L{KEPT_HOSTS}).
    """
    entry = _HOSTS.get(value)
    if entry is None:
        entry = (hostOf(value), plainHost(value))
        keep(_HOSTS, value, entry, KEPT_HOSTS, KEPT_HOST_LENGTH)
    return entry


def routedHost(value: str) -> str:
    """
    L{hostOf}, remembered (L{hostEntry}).
    """
    return hostEntry(value)[0]


#: How many start lines L{screenRequest} remembers what L{readStart} read
#: of (it forgets them all when it has as many), and how long each may be.
KEPT_STARTS = 1024
KEPT_START_LENGTH = 256

#: What L{readStart} read of start lines, by line: only of lines whose
#: target has no query (which may hold a credential) and a path that
#: L{normalizePath} takes.  A relay's clients ask for a few paths.
_STARTS: dict[str, tuple[str, str, str, str, str | None, bool]] = {}


def readStart(line: str) -> tuple[str, str, str, str, str | None, bool]:
    """
    Read a request line.

    @param line: The start line of a request head.
    @return: Its method, its version, the path of its target as sent and
        its query (without C{?}); the path normalized (L{normalizePath}),
        or L{None} when it is refused (L{screenRequest} says why, after
        what it checks first); and whether the line is plain for the relay
        to answer (L{wsrelay.ws.accept.plainScreened}): C{GET}, HTTP/1.1,
        a target in origin form that Autobahn does not take for a host (not
        C{//}).
    @raise ValueError: When it is not three parts, or its target is not
        one (a fragment, a character that is not visible ASCII, an
        absolute form without scheme or host).
    """
    method, target, version = line.split(" ")
    if "#" in target or not (target.isascii() and target.isprintable()):
        # A request target has no fragment, and only visible ASCII
        # characters (RFC 9112 3.2, RFC 3986 2): a backend must not get
        # raw bytes a client did not percent-encode.
        raise ValueError(target)
    if target.startswith("/"):
        # Origin form; urlsplit would take "//x/y" for a host.
        rawPath, _, query = target.partition("?")
        originForm = target[1:2] != "/"
    else:
        parts = urlsplit(target)
        if not (parts.scheme and parts.netloc):
            raise ValueError(target)
        rawPath, query = parts.path or "/", parts.query
        originForm = False
    try:
        normalized: str | None = normalizePath(rawPath)
    except BadPath:
        # (PathAboveRoot among them.)
        normalized = None
    plain = originForm and method == "GET" and version == "HTTP/1.1"
    return method, version, rawPath, query, normalized, plain


def _upgradeRequired(*headers: tuple[str, str]) -> Refused:
    """
    @return: A 426 that names the upgrade the relay speaks, with
        C{headers}.
    """
    return Refused(
        426,
        "Upgrade Required",
        [("Upgrade", "websocket"), ("Connection", "Upgrade"), *headers],
    )


#: How many heads a route table remembers the screening of
#: (L{HeadShape}: it forgets them all when it has as many), how long each
#: may be, without its key, and how many fields it may have.  Each of its
#: lines is shorter than L{KEPT_LENGTH}, as the memo of lines keeps them
#: (a long value, a token say, is not kept).
KEPT_HEADS = 256
KEPT_HEAD_LENGTH = 1024
KEPT_HEAD_FIELDS = 32

#: After as many heads in a row that the memo of heads did not hold
#: (L{KEPT_HEADS}: a memo filled with heads sent once, or heads it does
#: not keep), the next L{SKIPPED_HEADS} are screened without looking
#: there: where clients do not send the same heads again, looking would
#: cost each head more than the memo saves.
SKIPPED_HEADS = 4096

#: What the memo of heads holds for a head seen once: only a head seen
#: again is made a L{HeadShape}, so that heads sent once (a field of a
#: request's own, a trace identifier) cost no shape each.
SEEN_ONCE: Any = None

#: Where the key starts in a head whose key line is written as most
#: clients write it, and the key itself (16 bytes in base64, as
#: L{wsrelay.ws.accept.plainRequest} takes it) with the end of its line.
_KEY_LINE = b"\r\nSec-WebSocket-Key: "
_KEY_VALUE = re.compile(rb"[A-Za-z0-9+/]{22}==\r\n")

#: Makes a L{Head} without initializing it.
_new = object.__new__

#: What the memo of heads gives for a head it does not hold.
_UNSEEN: Any = object()


class HeadShape:
    """
    What L{screenRequest} made of a head that clients send again but for
    their C{Sec-WebSocket-Key} (a relay's clients send the same head again
    and again, each with a new key): the head without its key, and how it
    was screened, against which routes.  A head of the same bytes but for
    a key of the same form (L{_KEY_LINE}, L{_KEY_VALUE}) is screened the
    same: only its head's key differs.

    Only a head that was routed (L{Screened}) is remembered, and only when
    it holds one key, no credential (L{CREDENTIALS}: no C{Cookie} nor
    C{Authorization}) and a start line without a query or an absolute
    form, either of which may carry one.

    @ivar routes: The routes it was screened against.
    @ivar startLine: Its start line.
    @ivar before: Its fields before the key's.
    @ivar after: Its fields after the key's.
    @ivar fields: Its fields by lower-case name (L{Head.fields}).
    @ivar answer: What L{wsrelay.ws.accept.plainScreened} made of it
        (L{wsrelay.ws.accept.shapeAnswer}), or L{NOT_ASKED}.
    @ivar parts: What the relay writes of every head of this shape
        (L{Head.parts}: not the shape, which holds the routes, and which
        a head kept for a connection's life must not keep).
    """

    __slots__ = (
        "after",
        "answer",
        "before",
        "fields",
        "headLength",
        "parts",
        "path",
        "plain",
        "query",
        "remainder",
        "route",
        "routes",
        "startLine",
    )

    def __init__(self, routes: tuple[Route, ...], screened: Screened, at: int) -> None:
        """
        @param screened: The head's screening.
        @param at: Where its key field is among its fields.
        """
        head = screened.head
        headers = head.headers
        self.routes = routes
        self.startLine = head.startLine
        self.before = headers[:at]
        self.after = headers[at + 1 :]
        # (Its own dictionary: the first head's is that head's; it holds
        # the first head's key, which each head screened as this one
        # replaces in its own copy.)
        self.fields = dict(head.fields)
        self.route = screened.route
        self.remainder = screened.remainder
        self.path = screened.path
        self.query = screened.query
        self.headLength = screened.headLength
        self.plain = screened.plain
        self.answer: object = NOT_ASKED
        self.parts = HeadParts()


#: What L{HeadShape.answer} is before it is asked.
NOT_ASKED = object()


def _keyAt(head: Head) -> int | None:
    """
    @return: Where the one C{Sec-WebSocket-Key} field of C{head} is among
        its fields, when it may be remembered as a L{HeadShape}: it has no
        other key, no credential field, at most L{KEPT_HEAD_FIELDS} fields
        and no line of L{KEPT_LENGTH} characters or more.
    """
    fields = head.fields
    headers = head.headers
    if (
        len(fields["sec-websocket-key"]) != 1
        or not CREDENTIALS.isdisjoint(fields)
        or len(headers) > KEPT_HEAD_FIELDS
        or len(head.startLine) >= KEPT_LENGTH
    ):
        return None
    found = None
    for at, (name, value) in enumerate(headers):
        if len(name) + len(value) + 2 >= KEPT_LENGTH:
            return None
        if name == "Sec-WebSocket-Key":
            found = at
    return found


def screenRequest(
    data: bytes, maxHeaderSize: int, routes: RouteTable
) -> Screened | Rejected | None:
    """
    Screen the request at the start of C{data}: as L{screenHead} does, or
    for a head screened before but for its key (L{HeadShape}), as then.

    @param data: What the client sent so far.
    @param maxHeaderSize: The most bytes its head may take (431 beyond).
    @param routes: Where the request is routed (404 when nowhere).
    @return: The routed request, or the relay's own answer to it, or
        L{None} while its head is incomplete (and within the limit).
    """
    end = data.find(b"\r\n\r\n")
    if end < 0:
        if len(data) > maxHeaderSize:
            return Rejected(Refused(431, "Request Header Fields Too Large"))
        return None
    if end + 4 > maxHeaderSize:
        return Rejected(Refused(431, "Request Header Fields Too Large"))
    if routes.shapesSkipped:
        routes.shapesSkipped -= 1
        return screenHead(data, end, routes)
    at = data.find(_KEY_LINE, 0, end)
    if at < 0:
        return screenHead(data, end, routes)
    start = at + 21
    # (The line ends after the key, within the head: none of the key's
    # characters is CR, so the head's blank line does not start inside.)
    if _KEY_VALUE.match(data, start) is None:
        return screenHead(data, end, routes)
    stop = start + 24
    unkeyed = data[:start] + data[stop:end]
    shapes = routes.shapes
    # (A HeadShape, SEEN_ONCE or _UNSEEN.)
    shape: Any = shapes.get(unkeyed, _UNSEEN)
    if shape is _UNSEEN or shape is SEEN_ONCE or shape.routes is not routes.routes:
        routes.shapeMisses += 1
        if routes.shapeMisses >= KEPT_HEADS:
            routes.shapeMisses = 0
            routes.shapesSkipped = SKIPPED_HEADS
        screened = screenHead(data, end, routes)
        if (
            type(screened) is Screened
            and len(unkeyed) < KEPT_HEAD_LENGTH
            and "?" not in screened.head.startLine
            and "://" not in screened.head.startLine
        ):
            keyAt = _keyAt(screened.head)
            if keyAt is not None:
                keep(
                    shapes,
                    unkeyed,
                    SEEN_ONCE
                    if shape is _UNSEEN
                    else HeadShape(routes.routes, screened, keyAt),
                    KEPT_HEADS,
                    KEPT_HEAD_LENGTH,
                )
        return screened
    routes.shapeMisses = 0
    # The head seen before, with this key: its fields (the key's as the
    # line-by-line reading makes it, a value with no blank to strip) and
    # its screening, as screenHead would make them.
    key = data[start:stop].decode("ascii")
    fields = shape.fields.copy()
    fields["sec-websocket-key"] = [key]
    head = _new(Head)
    head.__dict__.update(
        startLine=shape.startLine,
        headers=(*shape.before, ("Sec-WebSocket-Key", key), *shape.after),
        fields=fields,
        parts=shape.parts,
    )
    return Screened(
        head,
        shape.route,
        shape.remainder,
        shape.path,
        shape.query,
        shape.headLength,
        shape.plain,
        shape,
        key,
    )


def screenHead(data: bytes, end: int, routes: RouteTable) -> Screened | Rejected:
    """
    Screen the request at the start of C{data}, whose head ends at C{end}
    (where its blank line starts), within the size limit.

    @return: The routed request, or the relay's own answer to it.
    """
    try:
        head = parseHead(data[:end])
    except BadHead:
        return Rejected(Refused(400, "Bad Request"))
    line = head.startLine
    start = _STARTS.get(line)
    if start is None:
        try:
            start = readStart(line)
        except ValueError:
            return Rejected(Refused(400, "Bad Request"))
        if start[4] is not None and "?" not in line and "://" not in line:
            # (A line whose path is well formed, and whose target has no
            # query and no absolute form, either of which may hold a
            # credential: "?token=", "http://user:password@".)
            keep(_STARTS, line, start, KEPT_STARTS, KEPT_START_LENGTH)
    method, version, rawPath, query, normalized, originForm = start
    if version != "HTTP/1.1" and not version.startswith("HTTP/1."):
        return Rejected(Refused(505, "HTTP Version Not Supported"), head)
    fields = head.fields
    hosts = fields.get("host")
    if (hosts is None and version == "HTTP/1.1") or (hosts and len(hosts) > 1):
        # RFC 9112 3.2: one Host field, required in HTTP/1.1; two would
        # be joined by Head.get into a host no route has.
        return Rejected(
            Refused(400, "Bad Request", body=b"one Host field needed\n"), head
        )
    lengths = fields.get("content-length")
    if (lengths is not None and lengths != ["0"]) or "transfer-encoding" in fields:
        # An upgrade request has no body: what follows its head would
        # be read as frames (RFC 6455 4.1); a length given twice is
        # ambiguous (RFC 9112 6.3).
        return Rejected(
            Refused(400, "Bad Request", body=b"a request body is not allowed\n"),
            head,
        )
    try:
        path = normalized if normalized is not None else normalizePath(rawPath)
    except PathAboveRoot:
        return Rejected(
            Refused(400, "Bad Request", body=b"path climbs above /\n"), head
        )
    except BadPath:
        return Rejected(
            Refused(400, "Bad Request", body=b"path holds %2F, %5C, %00 or \\\n"),
            head,
        )
    if path == "/healthz" and method in ("GET", "HEAD"):
        return Rejected(Refused(200, "OK", body=b"ok\n"), head)
    if hosts:
        host, plainPort = hostEntry(hosts[0])
    else:
        host, plainPort = "", False
    found = routes.match(host or None, path)
    if found is None:
        return Rejected(Refused(404, "Not Found"), head)
    upgrade = fields.get("upgrade")
    if upgrade is None or (
        upgrade[0].lower() != "websocket" and "websocket" not in head.tokens("upgrade")
    ):
        return Rejected(_upgradeRequired(), head)
    versions = fields.get("sec-websocket-version")
    if versions is not None:
        if len(versions) > 1:
            return Rejected(Refused(400, "Bad Request"), head)
        if versions[0] != "13":
            # RFC 6455 4.4: say which version the relay speaks.
            return Rejected(_upgradeRequired(("Sec-WebSocket-Version", "13")), head)
    route, remainder = found
    # (What the relay answers itself, wsrelay.ws.accept.plainScreened,
    # needs: a numeric port if any, and a plain start line, readStart.)
    plain = plainPort and originForm
    return Screened(head, route, remainder, path, query, end + 4, plain)
