# -*- test-case-name: tests.test_units,tests.test_edge,tests.test_heads -*-
"""
HTTP/1.1 pieces of the opening handshake that Autobahn does not expose.

Autobahn joins repeated headers with commas and keeps neither the body nor
the raw header lines of a refused handshake; a relay needs both.  These
functions parse request and response heads into ordered lists of raw
C{(name, value)} pairs, decide which headers are end-to-end, and build the
upstream request and the error responses the relay writes itself.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, ClassVar, Generic, TypeVar, overload

from wsrelay.ws.fieldlines import _CONTROL, _LINES, _TOKEN, readField

_T = TypeVar("_T")

#: Hop-by-hop headers (RFC 9110, 7.6.1) and the handshake's own headers,
#: which each leg generates for itself and which are never copied.
NOT_FORWARDED = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-accept",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "server",
        "date",
    }
)

#: The fields that say whom a request was forwarded for: from a client the
#: relay does not trust they are dropped, and the relay writes its own.
FORWARDING = frozenset(
    {
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-real-ip",
        "forwarded",
    }
)

#: Further fields that some backends or frameworks take as a proxy's word
#: on the client, its scheme, port or URL: from a peer the relay does not
#: trust they are dropped (and the relay writes none of them).
CLAIMED = frozenset(
    {
        "x-forwarded-port",
        "x-forwarded-prefix",
        "x-forwarded-ssl",
        "x-forwarded-scheme",
        "x-forwarded-server",
        "x-client-ip",
        "true-client-ip",
        "x-original-url",
        "x-rewrite-url",
    }
)


def _phrase(status: int) -> str:
    """
    @return: The reason phrase of C{status}, as RFC 9110 names it (Python's
        L{HTTPStatus}; Twisted's C{RESPONSES} lacks 426, 429 and 431 and
        has RFC 2616's wording), or C{Error} for a code it does not know.
    """
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


class MadeOnce(Generic[_T]):
    """
    An attribute made from its instance when first read, and then kept in
    the instance's dictionary, where later reads find it: what
    C{functools.cached_property} does, without the lock it takes (Python
    3.11) on every first read, which was about 1% of a proxied handshake.
    Heads are read by the reactor's thread only.
    """

    def __init__(self, make: Callable[[Any], _T]) -> None:
        self._make = make
        self._name = make.__name__
        self.__doc__ = make.__doc__

    @overload
    def __get__(self, instance: None, owner: type | None = None) -> MadeOnce[_T]: ...

    @overload
    def __get__(self, instance: object, owner: type | None = None) -> _T: ...

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        if instance is None:
            return self
        value = instance.__dict__[self._name] = self._make(instance)
        return value


class BadHead(ValueError):
    """
    An HTTP head that cannot be parsed.
    """


def byName(pairs: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """
    @return: The values of the fields C{pairs} by lower-case name, each
        name's in the order given.
    """
    fields: dict[str, list[str]] = {}
    for n, v in pairs:
        lname = n.lower()
        values = fields.get(lname)
        if values is None:
            fields[lname] = [v]
        else:
            values.append(v)
    return fields


class HeadParts:
    """
    What the relay writes of every request head of one shape (the same
    head but for its key, L{wsrelay.ws.screening.HeadShape}), written for
    the first and shared by all (L{Head.parts}): strings only.

    @ivar forwarding: What L{wsrelay.admission.Admission.forwardedLines}
        writes of the head (its end-to-end lines, its C{X-Forwarded-Host}
        line and C{Forwarded} parameter), or L{None} until written.
    @ivar passthrough: What L{wsrelay.proxy.opening.passthroughLines}
        writes of it (its subprotocol and extension lines, and how the
        upstream leg treats extensions), or L{None} until written.
    """

    __slots__ = ("forwarding", "passthrough")

    def __init__(self) -> None:
        self.forwarding: tuple[str, str, str] | None = None
        self.passthrough: tuple[str, str] | None = None


@dataclass(frozen=True)
class Head:
    """
    A parsed HTTP request or response head.

    @ivar startLine: The request line or the status line, without CRLF.
    @ivar headers: The header fields in the order received, names as sent.
    @ivar parts: The L{HeadParts} of a request head screened as one seen
        before but for its key (L{wsrelay.ws.screening.HeadShape}), else
        L{None}.
    """

    startLine: str
    headers: tuple[tuple[str, str], ...]
    #: (Not a field: set in the instance's dictionary, or this default.)
    parts: ClassVar[HeadParts | None] = None

    @MadeOnce
    def fields(self) -> dict[str, list[str]]:
        """
        The values of the fields by lower-case name, each name's in the
        order received: made once, on first use (a leg that holds its
        request once open lets it go, L{wsrelay.ws.legs.RelayLeg.
        forgetHandshake}).  Not to be changed.
        """
        return byName(self.headers)

    def get(self, name: str) -> str | None:
        """
        @return: The values of all fields called C{name} (case-insensitive),
            joined with C{", "}, or L{None} when there is none.
        """
        values = self.fields.get(name.lower())
        return ", ".join(values) if values else None

    def tokens(self, name: str) -> set[str]:
        """
        @return: The lower-cased comma-separated tokens of header C{name}.
        """
        values = self.fields.get(name.lower())
        if not values:
            return set()
        if len(values) == 1 and "," not in values[0]:
            # (Most heads: one token, as "Connection: Upgrade".)
            token = values[0].strip().lower()
            return {token} if token else set()
        return {t.strip().lower() for t in ",".join(values).split(",") if t.strip()}


#: One header field line, after the CRLF that starts it: its name, and its
#: value without the blanks before it, up to the line's end, holding no
#: control but tab.
_FIELD = re.compile(
    r"\r\n([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*"
    r"([^\x00-\x08\x0a-\x1f\x7f]*)(?=\r\n|\Z)"
)


def quickFields(text: str, first: int) -> list[tuple[str, str]] | None:
    """
    Read the header fields of a head in one pass of a regular expression,
    when every line after the start line is a well-formed field and the
    start line holds no control character but tab (most heads).

    @param text: The head, without the blank line that ends it.
    @param first: Where the start line ends in C{text}.
    @return: The fields, names as sent and values without the blanks
        around them, in order; or L{None} for a head to read line by line
        (L{parseHead}), which says what is wrong with it.
    """
    fields = _FIELD.findall(text, first)
    if len(fields) != text.count("\r\n", first) or _CONTROL.search(text, 0, first):
        return None
    if " \r\n" in text or "\t\r\n" in text or text.endswith((" ", "\t")):
        fields = [(n, v.rstrip(" \t")) for n, v in fields]
    return fields


#: Makes a L{Head} without initializing it (L{parseHead}).
_newHead = object.__new__

#: A head of more lines is read in one pass without L{readField}: a
#: browser's has some 15, and a head of many lines, each new, would only
#: empty the kept lines of every other client's.
MOST_LINES = 64


def parseHead(data: bytes) -> Head:
    """
    Parse an HTTP head (start line and header fields, without the blank
    line that ends it).

    @raise BadHead: When the head is not ISO-8859-1 text made of
        C{name: value} lines.
    """
    try:
        text = data.decode("iso-8859-1")
    except UnicodeDecodeError as e:  # pragma: no cover - latin-1 decodes all
        raise BadHead(str(e)) from e
    lines = text.split("\r\n")
    if len(lines) > MOST_LINES:
        return _parseMany(text)
    startLine = lines[0]
    if startLine.isprintable() or not _CONTROL.search(startLine):
        # Each line read once by readField, then found (most heads): what
        # readLines reads when every line is a field.
        known = _LINES
        headers = []
        fields: dict[str, list[str]] = {}
        for line in lines[1:]:
            entry = known.get(line)
            if entry is None:
                entry = readField(line)
                if entry is None:
                    # Something is wrong (or unusual, an empty line): line
                    # by line, to say what.
                    return readLines(text)
            pair, lname, value = entry
            headers.append(pair)
            values = fields.get(lname)
            if values is None:
                fields[lname] = [value]
            else:
                values.append(value)
        # The Head that Head(startLine, headers) makes, its attributes
        # given at once, without the frozen dataclass's __init__ (a call of
        # object.__setattr__ per field); and since every reader of a
        # request head reads its fields by name, those made now, in the
        # same pass (see Head.fields).
        head = _newHead(Head)
        head.__dict__.update(startLine=startLine, headers=tuple(headers), fields=fields)
        return head
    return readLines(text)


def _parseMany(text: str) -> Head:
    """
    L{parseHead} for a head of more than L{MOST_LINES} lines: one pass of
    L{quickFields} over the whole head, nothing kept.
    """
    first = text.find("\r\n")
    fields = quickFields(text, first)
    if fields is None:
        # Something is wrong (or unusual, an empty line): line by line, to
        # say what.
        return readLines(text)
    head = _newHead(Head)
    head.__dict__.update(
        startLine=text[:first], headers=tuple(fields), fields=byName(fields)
    )
    return head


def readLines(text: str) -> Head:
    """
    Read a head line by line: what L{parseHead} does with a head that its
    one pass does not take, and says what is wrong.

    @param text: The head, decoded as ISO-8859-1.
    @raise BadHead: When it is not made of C{name: value} lines.
    """
    lines = text.split("\r\n")
    if _CONTROL.search(lines[0]):
        raise BadHead(f"control character in start line {lines[0][:40]!r}")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        if line[0] in " \t":
            raise BadHead("obsolete header line folding")
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.fullmatch(name):
            raise BadHead(f"malformed header line {line[:40]!r}")
        if _CONTROL.search(value):
            # A bare CR or LF would let a value smuggle a header through to
            # the other side (RFC 9110 5.5).
            raise BadHead(f"control character in header {name!r}")
        headers.append((name, value.strip(" \t")))
    return Head(lines[0], tuple(headers))


@functools.lru_cache(maxsize=1024)
def quotedString(value: str) -> str:
    """
    @return: C{value} as a token when it is one, else as a quoted string
        (RFC 9110 5.6.4), for a parameter of C{Forwarded}.  Remembered for
        the last thousand values: a relay's clients name a few hosts.
    """
    if _TOKEN.fullmatch(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@functools.lru_cache(maxsize=4096)
def forwardedNode(address: str) -> str:
    """
    @param address: An IP address, or anything else for a peer without one
        (a Unix socket's).
    @return: The node of a C{Forwarded} element's C{for=} (RFC 7239 6):
        IPv6 in brackets and quotes, C{unknown} when not an address (an
        IPv6 address with a scope id included: the scope is free text).
        Remembered for the last few thousand addresses: a client's
        reconnects, and a balancer's few addresses, parse once.
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id is not None:
            # Anything may follow a %: never copy it into a header.
            return "unknown"
        return f'"[{ip}]"'
    return str(ip)


def connectionTokens(head: Head) -> set[str]:
    """
    @return: The header names listed in C{Connection}, which are hop-by-hop
        too.
    """
    return head.tokens("connection")


#: The names L{endToEnd} drops, by the further names it was asked to:
#: each union made once.
_DROPPED: dict[frozenset[str], frozenset[str]] = {}


def dropped(head: Head, also: Iterable[str] = ()) -> frozenset[str] | set[str]:
    """
    @param also: Further lower-case names to leave out (a C{frozenset}
        given again and again is joined with L{NOT_FORWARDED} once).
    @return: The lower-case names of the fields of C{head} that a proxy
        does not forward: L{NOT_FORWARDED}, C{also} and those C{Connection}
        lists.
    """
    drop: frozenset[str] | set[str] = NOT_FORWARDED
    if also:
        if isinstance(also, frozenset):
            known = _DROPPED.get(also)
            if known is None:
                known = NOT_FORWARDED | also
                if len(_DROPPED) < 16:
                    # (The callers' few constant sets.)
                    _DROPPED[also] = known
            drop = known
        else:
            drop = NOT_FORWARDED.union(also)
    listed = head.fields.get("connection")
    if listed is not None and not (
        # (Most heads: "Connection: Upgrade", which drops nothing more.)
        len(listed) == 1 and listed[0].lower() == "upgrade"
    ):
        drop = drop.union(connectionTokens(head))
    return drop


def endToEnd(
    head: Head, also: Iterable[str] = (), underscores: bool = True
) -> list[tuple[str, str]]:
    """
    @param also: Further lower-case names to leave out (L{dropped}).
    @param underscores: Whether names that hold C{_} are forwarded.
    @return: The header fields of C{head} that a proxy forwards, in one
        pass over them.
    """
    drop = dropped(head, also)
    if underscores:
        return [(n, v) for (n, v) in head.headers if n.lower() not in drop]
    return [(n, v) for (n, v) in head.headers if "_" not in n and n.lower() not in drop]


def endToEndLines(head: Head, also: Iterable[str] = ()) -> str:
    """
    @param also: Further lower-case names to leave out (L{dropped}).
    @return: The fields L{endToEnd} gives of C{head} when names that hold
        C{_} are not forwarded, written as lines (L{fieldLines}) in the
        same pass.
    """
    drop = dropped(head, also)
    return "".join(
        [
            f"{n}: {v}\r\n"
            for (n, v) in head.headers
            if "_" not in n and n.lower() not in drop
        ]
    )


def fieldLines(headers: Iterable[tuple[str, str]]) -> str:
    """
    @return: The header fields C{headers} as the lines of a head, each
        ended with CRLF.
    """
    return "".join([f"{n}: {v}\r\n" for (n, v) in headers])


class RequestLines:
    """
    The header fields of an upstream request already written as the lines
    of its head, which L{buildRequest} writes as they are: a passthrough
    request's, made in one piece by
    L{wsrelay.proxy.opening.upstreamRequest} rather than as a list of
    pairs (L{wsrelay.ws.response.RequestHeaders}, the general form).  Only
    the plain leg gets one (its C{plain} is true).

    @ivar lines: The fields, each line ended with CRLF.
    @ivar extensions: L{wsrelay.ws.response.NO_EXTENSIONS}, or
        L{wsrelay.ws.response.END_TO_END} for lines with the client's
        extension offer.
    @ivar key: The client's C{Sec-WebSocket-Key}, which the plain leg
        sends on to the backend, as nginx and HAProxy pass the request
        through, rather than a key of its own: the right accept value for
        the backend's 101 is then the one the client's 101 carries, worked
        out once for both (L{wsrelay.ws.accept.acceptKey}); L{None}, as for
        a request with none, and the leg makes one.
    """

    __slots__ = ("extensions", "key", "lines")

    plain = True

    def __init__(self, lines: str, extensions: str, key: str | None = None) -> None:
        self.lines = lines
        self.extensions = extensions
        self.key = key


def buildRequest(
    resource: str,
    host: str,
    key: str,
    headers: Sequence[tuple[str, str]] | RequestLines,
) -> bytes:
    """
    Build a WebSocket opening handshake request.

    @param resource: The request target (path and query).
    @param host: The C{Host} header value.
    @param key: The C{Sec-WebSocket-Key}.
    @param headers: Further fields, each written on its own line; or
        fields already written as lines (L{RequestLines}).
    """
    lines = headers.lines if isinstance(headers, RequestLines) else fieldLines(headers)
    return (
        f"GET {resource} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        f"Sec-WebSocket-Version: 13\r\n{lines}\r\n"
    ).encode("iso-8859-1", "replace")


def buildResponse(
    status: int,
    reason: str | None = None,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes | None = None,
    server: str | None = "wsrelay",
) -> bytes:
    """
    Build a complete HTTP/1.1 response that closes the connection.

    @param headers: Its fields; the options of a C{Connection} field among
        them (C{Upgrade} in a 426) join C{close} in the response's one
        C{Connection} field.
    @param body: The body; when L{None}, a one-line plain-text body naming
        the status is made up.
    """
    if reason is None:
        reason = _phrase(status)
    reason = reason.replace("\r", " ").replace("\n", " ")
    if body is None:
        body = f"{status} {reason}\n".encode()
        headers = [*headers, ("Content-Type", "text/plain; charset=utf-8")]
    lines = [f"HTTP/1.1 {status} {reason}"]
    if server:
        lines.append(f"Server: {server}")
    options = []
    for n, v in headers:
        if n.lower() == "connection":
            options.append(v)
        else:
            lines.append(f"{n}: {v}")
    lines.append(f"Content-Length: {len(body)}")
    lines.append(f"Connection: {', '.join([*options, 'close'])}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("iso-8859-1", "replace")
    return head + body


def parseStatusLine(line: str) -> tuple[str, int, str]:
    """
    @return: The version, status code and reason phrase of a status line.
    @raise BadHead: When it is not one.
    """
    parts = line.split(" ", 2)
    code = parts[1] if len(parts) > 1 else ""
    if not (code.isascii() and code.isdigit() and len(code) == 3):
        raise BadHead(f"bad status line {line[:60]!r}")
    return parts[0], int(parts[1]), parts[2] if len(parts) > 2 else ""
