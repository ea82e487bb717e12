"""
Tests for the quick readings of the heads of a passthrough handshake: each
is compared with the general reading it stands in for, on many random
heads (L{wsrelay.ws.response.ResponseReader._quick101}, L{wsrelay.ws.
handshake.parseHead}'s fields, L{wsrelay.ws.handshake.endToEnd} and
L{wsrelay.ws.handshake.endToEndLines}, L{wsrelay.routing.normalizePath},
L{wsrelay.routing.RouteTable.match}, the key check of
L{wsrelay.ws.accept.plainRequest}, and L{wsrelay.ws.accept.plainScreened}
against it).
"""

from __future__ import annotations

import base64
import gc
import hashlib
import random
from typing import Any

from autobahn.util import wildcards2patterns
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.support.forwarding import _BACKEND, _config, _Frontend, _Transport
from tests.support.routes import proxyRoute
from wsrelay.admission import Admission
from wsrelay.proxy.opening import upstreamRequest
from wsrelay.routing import (
    Backend,
    BadPath,
    Route,
    RouteTable,
    matchPrefix,
    normalizePath,
    normalizeSegments,
)
from wsrelay.ws._autobahn import originAllowed
from wsrelay.ws.accept import plainRequest, plainScreened
from wsrelay.ws.fieldlines import _LINES, _NAMES, KEPT_LENGTH, KEPT_LINES
from wsrelay.ws.handshake import (
    FORWARDING,
    MOST_LINES,
    NOT_FORWARDED,
    BadHead,
    Head,
    endToEnd,
    endToEndLines,
    fieldLines,
    parseHead,
    readLines,
)
from wsrelay.ws.response import (
    _SHAPES,
    END_TO_END,
    KEPT_SHAPES,
    NO_EXTENSIONS,
    RELAY_DEFLATE,
    ResponseReader,
)
from wsrelay.ws.screening import (
    _HOSTS,
    _STARTS,
    KEPT_HEAD_FIELDS,
    KEPT_HEAD_LENGTH,
    KEPT_HEADS,
    KEPT_HOST_LENGTH,
    KEPT_HOSTS,
    KEPT_START_LENGTH,
    KEPT_STARTS,
    SEEN_ONCE,
    SKIPPED_HEADS,
    HeadShape,
    Screened,
    routedHost,
    screenHead,
    screenRequest,
)

_MAGIC = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

#: The key of every random handshake, and its right accept value.
_KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
_ACCEPT = base64.b64encode(hashlib.sha1(_KEY + _MAGIC).digest()).decode()


class _Reader(ResponseReader):
    """
    A reader that records how the backend's answer ended.

    @ivar outcome: What happened: C{("open", chosen)}, C{("fail",
        reason)}, C{("notPlain",)} or C{("abort",)}.
    """

    outcome: tuple[Any, ...] | None = None
    quick = True

    def __init__(
        self,
        data: bytes,
        extensions: str,
        offered: tuple[str, ...],
        key: bytes = _KEY,
    ):
        self.data = data
        self.websocket_key = key
        self.extensions = extensions
        self.offered = offered
        self.opened = _Opened()

    def _quick101(self, end: int) -> bool:
        return self.quick and ResponseReader._quick101(self, end)

    def failHandshake(self, reason: str) -> None:
        self.outcome = ("fail", reason)

    def abortHandshake(self) -> None:
        self.outcome = ("abort",)

    def notPlain(self) -> None:
        self.outcome = ("notPlain",)

    def _open(self, end: int, chosen: str) -> None:
        self.data = self.data[end + 4 :]
        self.outcome = ("open", chosen)

    def state(self) -> tuple[Any, ...]:
        """
        @return: Everything the handshake left for what follows it.
        """
        return (
            self.outcome,
            self.data,
            self.responseHeaders,
            self.extensionsAnswer,
            type(self.opened.failure),
            str(self.opened.failure),
        )


class _Opened:
    """
    Stands for the leg's L{Deferred <twisted.internet.defer.Deferred>}:
    records a failure.
    """

    called = False
    failure: Exception | None = None

    def errback(self, failure: Exception) -> None:
        self.called = True
        self.failure = failure


def _blank(rng: random.Random) -> str:
    return rng.choice(["", "", " ", "  ", "\t", " \t"])


def _case(rng: random.Random, name: str) -> str:
    return rng.choice([name, name.lower(), name.upper()])


def _field(rng: random.Random, accept: str = _ACCEPT) -> tuple[str, str]:
    """
    A random field of a backend's 101: the handshake's own, each right or
    wrong (C{accept} is the right accept value), hop-by-hop ones, and
    end-to-end ones, some odd.
    """
    name = rng.choice(
        [
            "Upgrade",
            "Connection",
            "Sec-WebSocket-Accept",
            "Sec-WebSocket-Protocol",
            "Sec-WebSocket-Extensions",
            "Set-Cookie",
            "X-Hop",
            "X_Under",
            "Keep-Alive",
            "Content-Length",
            "Server",
            "Date",
            "X-Echo",
        ]
    )
    value = {
        "upgrade": ["websocket", "WebSocket", "h2c", "websocket, h2c", ""],
        "connection": ["Upgrade", "upgrade", "Upgrade, X-Hop", "x-hop", "close", ""],
        "sec-websocket-accept": [accept, accept, accept.lower(), "x"],
        "x-echo": [accept, "1"],
        "sec-websocket-protocol": ["chat", "other", "chat, other", ""],
        "sec-websocket-extensions": ["permessage-deflate", "x-ext; a=1", ""],
    }.get(name.lower(), ["1", "a=b; c", "caf\xe9", "x\x01y", "v \t w"])
    return _case(rng, name), rng.choice(value)


def _head(rng: random.Random, accept: str = _ACCEPT) -> bytes:
    """
    A random 101 head: mostly the fields of a plain one in random order
    (C{accept} the right accept value), then random fields, a few lines
    malformed, its blank line, and maybe the first bytes of the
    connection.
    """
    status = rng.choice(
        [
            "HTTP/1.1 101 Switching Protocols",
            "HTTP/1.1 101 Switching Protocols",
            "HTTP/1.1 101 ",
            "HTTP/1.1 101 Up\x01",
            "HTTP/1.0 101 Switching Protocols",
        ]
    )
    fields = []
    if rng.random() < 0.7:
        fields = [
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Accept", accept),
        ]
    fields += [_field(rng, accept) for _ in range(rng.randrange(4))]
    rng.shuffle(fields)
    lines = [status]
    for name, value in fields:
        lines.append(f"{name}:{_blank(rng)}{value}{_blank(rng)}")
    if rng.random() < 0.05:
        lines.insert(rng.randrange(1, len(lines) + 1), rng.choice(["", " folded", "x"]))
    tail = rng.choice([b"", b"", b"\x81\x02hi"])
    return "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + tail


class Quick101Tests(SynchronousTestCase):
    """
    L{ResponseReader._quick101} opens a leg on a plain 101 exactly as the
    general reading of the head does, and leaves every other to it.
    """

    def test_random(self) -> None:
        """
        On many random answers, with each way of treating extensions and
        random subprotocols offered, a reader with the quick reading ends
        in the same state as one without: opened with the same subprotocol,
        the same fields for the client, the same extension answer and the
        same bytes left, or failed with the same reason.
        """
        rng = random.Random(16)
        quick = 0
        for _ in range(10000):
            data = _head(rng)
            extensions = rng.choice([NO_EXTENSIONS, END_TO_END, RELAY_DEFLATE])
            offered = rng.choice([(), ("chat",), ("chat", "other")])
            general = _Reader(data, extensions, offered)
            general.quick = False
            general.processHandshake()
            fast = _Reader(data, extensions, offered)
            fast.processHandshake()
            self.assertEqual(fast.state(), general.state(), data)
            end = data.find(b"\r\n\r\n")
            quick += _Reader(data, extensions, offered)._quick101(end)
        # Most plain 101s were read by the quick reading.
        self.assertGreater(quick, 1000)

    def test_plain(self) -> None:
        """
        A backend's plain 101 opens the leg by the quick reading, with its
        end-to-end fields for the client, the extension answer kept and
        taken out of the head, and what followed the head left in C{data}.
        """
        data = (
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: WebSocket\r\n"
            b"Connection: upgrade, X-Hop\r\nX-Hop: 1\r\nSet-Cookie: a=1\r\n"
            b"Sec-WebSocket-Protocol: chat\r\n"
            b"Sec-WebSocket-Extensions: permessage-deflate\r\n"
            b"Set-Cookie: b=2\r\nSec-WebSocket-Accept: " + _ACCEPT.encode() + b"\r\n"
            b"\r\n\x81\x00"
        )
        reader = _Reader(data, END_TO_END, ("chat",))
        self.assertTrue(reader._quick101(data.find(b"\r\n\r\n")))
        self.assertEqual(reader.outcome, ("open", "chat"))
        self.assertEqual(
            reader.responseHeaders, [("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")]
        )
        self.assertEqual(reader.extensionsAnswer, ("permessage-deflate",))
        self.assertEqual(reader.data, b"\x81\x00")

    def test_shapes(self) -> None:
        """
        On many random answers of a few shapes, each with the accept value
        of a key of its own, a reader that remembers the shapes it read
        (L{wsrelay.ws.response._rememberShape}) ends in the same state as
        one with the general reading alone, also when the shape it knows
        comes with a wrong accept value or a subprotocol it did not offer;
        and many of them opened by a shape remembered.
        """
        _SHAPES.clear()
        self.addCleanup(_SHAPES.clear)
        rng = random.Random(17)
        remembered = 0
        for _ in range(6000):
            key = base64.b64encode(rng.randbytes(16))
            accept = base64.b64encode(hashlib.sha1(key + _MAGIC).digest())
            # The head of another key now and then: its shape may be known.
            other = rng.random() < 0.1
            data = _head(
                random.Random(rng.randrange(60)),
                (_ACCEPT if other else accept.decode()),
            )
            extensions = rng.choice([NO_EXTENSIONS, END_TO_END, RELAY_DEFLATE])
            offered = rng.choice([(), ("chat",), ("chat", "other")])
            general = _Reader(data, extensions, offered, key)
            general.quick = False
            general.processHandshake()
            end = data.find(b"\r\n\r\n")
            at = data.find(accept, 0, end)
            known = at >= 0 and (data[:at], data[at + 28 : end]) in _SHAPES
            fast = _Reader(data, extensions, offered, key)
            fast.processHandshake()
            self.assertEqual(fast.state(), general.state(), data)
            assert fast.outcome is not None
            remembered += known and fast.outcome[0] == "open"
        self.assertGreater(remembered, 400)
        self.assertLessEqual(len(_SHAPES), KEPT_SHAPES)

    def test_shapeOnce(self) -> None:
        """
        A head whose accept value is in it twice (a field echoing it) is
        read, but its shape is not remembered: where the value is does not
        say which field holds it.  One with it once is remembered.
        """
        _SHAPES.clear()
        self.addCleanup(_SHAPES.clear)
        plain = (
            "HTTP/1.1 101 Switching Protocols\r\n{}Upgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n"
        )
        data = plain.format(f"X-Echo: {_ACCEPT}\r\n", _ACCEPT).encode()
        reader = _Reader(data, NO_EXTENSIONS, ())
        reader.processHandshake()
        self.assertEqual(reader.outcome, ("open", ""))
        self.assertEqual(reader.responseHeaders, [("X-Echo", _ACCEPT)])
        self.assertEqual(_SHAPES, {})
        data = plain.format("X-Echo: 1\r\n", _ACCEPT).encode()
        _Reader(data, NO_EXTENSIONS, ()).processHandshake()
        self.assertEqual(len(_SHAPES), 1)

    def test_notTaken(self) -> None:
        """
        A wrong key, an extension the leg did not pass on, a subprotocol not
        offered, a repeated handshake field or a character outside ASCII
        is left to the general reading, and the leg is left as it was.
        """
        plain = (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n{}\r\n"
        )
        for accept, more, extensions in [
            ("x", "A: 1", END_TO_END),
            (_ACCEPT, "Sec-WebSocket-Extensions: x", NO_EXTENSIONS),
            (_ACCEPT, "Sec-WebSocket-Protocol: other", END_TO_END),
            (_ACCEPT, "Upgrade: websocket", END_TO_END),
            (_ACCEPT, "A: caf\xe9", END_TO_END),
            (_ACCEPT, "A: 1", RELAY_DEFLATE),
        ]:
            data = plain.format(accept, more).encode("latin-1") + b"\r\n"
            reader = _Reader(data, extensions, ("chat",))
            self.assertFalse(reader._quick101(data.find(b"\r\n\r\n")), more)
            self.assertIsNone(reader.outcome)
            self.assertEqual(reader.data, data)
            self.assertNotIn("responseHeaders", vars(reader))


def _randomHead(rng: random.Random) -> bytes:
    """
    A random request head: random fields, some repeated, some with odd
    blanks, controls or non-ASCII characters, and now and then a line
    that is not a field.
    """
    lines = [
        rng.choice(
            [
                "GET / HTTP/1.1",
                "GET /a\x01 HTTP/1.1",
                "GET /\t HTTP/1.1",
                "HTTP/1.1 101 Up",
            ]
        )
    ]
    for _ in range(rng.randrange(8)):
        name = rng.choice(
            [
                "Host",
                "host",
                "X-A",
                "Connection",
                "X_B",
                "Cookie",
                "A B",
                "Sec-WebSocket-Key",
            ]
        )
        value = rng.choice(
            ["h", "Upgrade, X-A", "x-a", "caf\xe9", "1\r2", "a\x00", "", "\xa0", "a\tb"]
        )
        lines.append(f"{name}:{_blank(rng)}{value}{_blank(rng)}")
    if rng.random() < 0.1:
        lines.insert(
            rng.randrange(1, len(lines) + 1),
            rng.choice(["", " fold", "x", "Host", ":h"]),
        )
    return "\r\n".join(lines).encode("latin-1")


def _oldEndToEnd(head: Head, also: Any = (), underscores: bool = True) -> Any:
    """
    What L{endToEnd} did before it remembered its sets: the reference.
    """
    drop = head.tokens("connection") | NOT_FORWARDED | set(also)
    return [
        (n, v)
        for (n, v) in head.headers
        if n.lower() not in drop and (underscores or "_" not in n)
    ]


class HeadTests(SynchronousTestCase):
    """
    A head read in one pass, its fields by name made as it is read, and
    the fields forwarded, are as the line-by-line reading and the lazy
    fields make them.
    """

    def test_random(self) -> None:
        """
        On many random heads, read by L{parseHead} once and again (its
        lines then remembered, L{readField}), L{parseHead} reads what
        L{readLines} reads (or refuses what it refuses), the fields by name
        it made at once are those L{Head.fields} makes, and L{endToEnd}
        drops what it dropped before, as does L{endToEndLines}, which
        writes the rest as lines.
        """
        rng = random.Random(6455)
        for _ in range(10000):
            data = _randomHead(rng)
            text = data.decode("latin-1")
            try:
                expected = readLines(text)
            except BadHead as e:
                with self.assertRaises(BadHead) as caught:
                    parseHead(data)
                self.assertEqual(str(caught.exception), str(e))
                continue
            head = parseHead(data)
            self.assertEqual(parseHead(data), head)
            self.assertEqual(head, expected)
            self.assertEqual(hash(head), hash(expected))
            made = {k: v for k, v in vars(head).items() if k != "fields"}
            self.assertEqual(made, vars(expected))
            self.assertEqual(head.fields, Head(head.startLine, head.headers).fields)
            for also, underscores in [((), True), (FORWARDING, False), ({"x-a"}, True)]:
                self.assertEqual(
                    endToEnd(head, also, underscores),
                    _oldEndToEnd(head, also, underscores),
                )
            self.assertEqual(
                endToEndLines(head, FORWARDING),
                fieldLines(_oldEndToEnd(head, FORWARDING, False)),
            )


class KeptLinesTests(SynchronousTestCase):
    """
    What L{readField} remembers of the lines it read.
    """

    def test_kept(self) -> None:
        """
        A short field line is remembered, a key's or a long one's is not,
        and however many different lines come, at most L{KEPT_LINES} are
        kept, as are names.
        """
        head = parseHead(
            b"GET / HTTP/1.1\r\nHost: kept.example\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nX-Long: "
            + b"x"
            * KEPT_LENGTH
        )
        self.assertEqual(head.fields["host"], ["kept.example"])
        self.assertEqual(
            _LINES["Host: kept.example"],
            (("Host", "kept.example"), "host", "kept.example"),
        )
        self.assertNotIn("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", _LINES)
        self.assertFalse([line for line in _LINES if line.startswith("X-Long")])
        for i in range(3 * KEPT_LINES):
            head = parseHead(b"GET / HTTP/1.1\r\nX-%d: %d" % (i, i))
            self.assertEqual(head.headers, ((f"X-{i}", str(i)),))
            self.assertLessEqual(len(_LINES), KEPT_LINES)
            self.assertLessEqual(len(_NAMES), KEPT_LINES)

    def test_credentialsNotKept(self) -> None:
        """
        The lines of credentials (C{Authorization}, C{Proxy-Authorization},
        C{Cookie}, C{Set-Cookie}) are read but not remembered, whatever the
        case of their names.
        """
        lines = [
            "Authorization: Basic dXNlcjpwYXNz",
            "proxy-authorization: Bearer abc",
            "COOKIE: session=1",
            "Set-Cookie: a=1",
        ]
        head = parseHead(("GET / HTTP/1.1\r\n" + "\r\n".join(lines)).encode())
        self.assertEqual(len(head.headers), 4)
        self.assertEqual(head.fields["cookie"], ["session=1"])
        for line in lines:
            self.assertNotIn(line, _LINES)

    def test_manyLines(self) -> None:
        """
        A head of more than L{MOST_LINES} lines is read as a shorter one
        is, in one pass that remembers none of its lines; one of more
        lines that is not well formed is still refused.
        """
        fields = [(f"X-Many-{i}", str(i)) for i in range(MOST_LINES + 1)]
        text = "GET / HTTP/1.1\r\n" + "\r\n".join(f"{n}: {v}" for n, v in fields)
        head = parseHead(text.encode())
        self.assertEqual(head.headers, tuple(fields))
        self.assertEqual(head.fields["x-many-3"], ["3"])
        self.assertFalse([line for line in _LINES if line.startswith("X-Many-")])
        self.assertRaises(BadHead, parseHead, text.encode() + b"\r\nno colon")


def _oldHost(value: str) -> str:
    """
    The host a route was matched on before L{routedHost}.
    """
    host = value.strip().lower()
    if host.startswith("["):
        host = host[: host.find("]") + 1]
    elif host.count(":") == 1:
        host = host.rsplit(":", 1)[0]
    return host


class RoutedHostTests(SynchronousTestCase):
    """
    L{routedHost} gives the host that a route was matched on before it
    remembered hosts.
    """

    def test_random(self) -> None:
        """
        On many random C{Host} values, each given twice (the second time
        remembered), L{routedHost} gives what L{_oldHost} gives, and keeps
        at most L{KEPT_HOSTS} values, none of L{KEPT_HOST_LENGTH} or more.
        """
        rng = random.Random(6455)
        parts = ["a", "B", ".", ":", "80", "[", "]", "::1", " ", "\t", "\xc9"]
        parts.append("x" * KEPT_HOST_LENGTH)
        for _ in range(3 * KEPT_HOSTS):
            value = "".join(rng.choice(parts) for _ in range(rng.randrange(6)))
            expected = _oldHost(value)
            self.assertEqual(routedHost(value), expected)
            self.assertEqual(routedHost(value), expected)
            self.assertLessEqual(len(_HOSTS), KEPT_HOSTS)
        self.assertFalse([v for v in _HOSTS if len(v) >= KEPT_HOST_LENGTH])


class NormalizePathTests(SynchronousTestCase):
    """
    L{normalizePath} takes a path with nothing to normalize as it is.
    """

    def test_random(self) -> None:
        """
        On many random paths, L{normalizePath} gives what the segment by
        segment normalization gives (or refuses what it refuses).
        """
        rng = random.Random(3986)
        for _ in range(20000):
            path = "/" + "".join(
                rng.choice(["a", "/", ".", "%2e", "%2F", "%41", "\\", "b/c"])
                for _ in range(rng.randrange(8))
            )
            try:
                expected = normalizeSegments(path)
            except BadPath as e:
                with self.assertRaises(type(e)):
                    normalizePath(path)
                continue
            self.assertEqual(normalizePath(path), expected, path)


def _oldMatch(
    routes: tuple[Route, ...], host: str | None, path: str
) -> tuple[Route, str] | None:
    """
    What L{RouteTable.match} did before it ranked the routes once: the
    reference, every route's rank compared per request.
    """
    best: tuple[int, int, Route, str] | None = None
    for route in routes:
        rhost = route.config.host
        if rhost is not None and rhost != host:
            continue
        rest = matchPrefix(route.config.path, path)
        if rest is None:
            continue
        rank = (1 if rhost is not None else 0, len(route.config.path))
        if best is None or rank > best[:2]:
            best = (rank[0], rank[1], route, rest)
    return None if best is None else (best[2], best[3])


class RouteTableTests(SynchronousTestCase):
    """
    L{RouteTable.match}, its routes ranked once per table, finds the route
    that comparing every route's rank per request finds.
    """

    def test_random(self) -> None:
        """
        On many random tables (prefixes and hosts repeated, so that ranks
        tie) and requests, the route found and the remainder are the
        reference's; a table given new routes (L{RouteTable.install}, or
        its C{routes} set) finds among those.
        """
        rng = random.Random(7230)
        prefixes = ["/", "/a", "/a/b", "/ab", "/b"]
        hosts = [None, None, "x", "y"]
        table = RouteTable(())
        for i in range(3000):
            routes = tuple(
                proxyRoute(f"r{j}", rng.choice(prefixes), rng.choice(hosts))
                for j in range(rng.randrange(6))
            )
            if i % 2:
                table.install(routes)
            else:
                table.routes = routes
            for _ in range(5):
                host = rng.choice([None, "x", "y", "z"])
                path = rng.choice(["/", "/a", "/a/", "/a/b/c", "/ab", "/abc", "/b"])
                self.assertEqual(table.match(host, path), _oldMatch(routes, host, path))

    def test_installLetsGo(self) -> None:
        """
        The routes a reload replaces (L{RouteTable.install}) are let go at
        once, with nothing matched since: the table holds only the new.
        """
        old = proxyRoute("old", "/", None)
        table = RouteTable((old,))
        self.assertIs(table.match(None, "/x")[0], old)  # type: ignore[index]
        new = proxyRoute("new", "/", None)
        table.install((new,))
        self.assertFalse(_reaches(table, old))
        self.assertTrue(_reaches(table, new))
        self.assertIs(table.match(None, "/x")[0], new)  # type: ignore[index]


def _reaches(start: object, target: object) -> bool:
    """
    @return: Whether C{target} is reachable from C{start} through the
        objects the garbage collector sees each hold, short of the routes'
        own (their backends and configuration hold no route).
    """
    seen, todo = set(), [start]
    while todo:
        obj = todo.pop()
        if obj is target:
            return True
        if id(obj) in seen or (obj is not start and hasattr(obj, "backends")):
            continue
        seen.add(id(obj))
        todo.extend(o for o in gc.get_referents(obj) if not isinstance(o, type))
    return False


#: The characters of a C{Sec-WebSocket-Key} before its C{==}, as
#: L{plainRequest} checked them before it used a regular expression.
_BASE64 = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/")


class PlainKeyTests(SynchronousTestCase):
    """
    L{plainRequest} takes the keys it took when it checked their length,
    their C{==} and their characters one by one.
    """

    def test_random(self) -> None:
        """
        On many random keys (right ones, and ones too short, too long,
        without C{==}, with characters outside base64's, non-ASCII ones
        and blanks among them), a plain request is plain exactly when its
        key passes the old checks, and gives the key stripped.
        """
        rng = random.Random(6455 + 16)
        alphabet = sorted(_BASE64) + ["=", " ", "\t", "-", "_", "\xe9", "\xb2", "*"]
        for _ in range(5000):
            key = "".join(rng.choice(alphabet) for _ in range(rng.choice([21, 22, 23])))
            key += rng.choice(["==", "==", "=", "=A", ""])
            if rng.random() < 0.5:
                key = "".join(rng.choice(sorted(_BASE64)) for _ in range(22)) + "=="
            key = _blank(rng) + key + _blank(rng)
            head = parseHead(
                (
                    "GET /chat HTTP/1.1\r\nHost: relay.example\r\n"
                    "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                    f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13"
                ).encode("latin-1")
            )
            stripped = head.fields["sec-websocket-key"][0].strip()
            taken = (
                len(stripped) == 24
                and stripped.endswith("==")
                and _BASE64.issuperset(stripped[:-2])
            )
            self.assertEqual(
                plainRequest(head, lambda origin: True),
                (stripped, []) if taken else None,
                repr(key),
            )


class _OriginFactory:
    """
    What L{originAllowed} reads of a server factory.
    """

    allowNullOrigin = True
    isSecure = False
    externalPort = None
    port = 80


class _OriginLeg:
    """
    What L{originAllowed} reads of a server leg: one allowed origin.
    """

    factory = _OriginFactory()
    allowedOriginsPatterns = wildcards2patterns(["http://ok.example"])


def _upgradeHead(rng: random.Random) -> bytes:
    """
    A random upgrade request, mostly one that the screening lets through:
    start lines, C{Host} values and ports, versions, C{Connection},
    subprotocol, C{Origin}, key and extension fields that Autobahn takes
    or does not, each now and then repeated or left out.
    """
    lines = [
        rng.choice(
            [
                "GET /chat HTTP/1.1",
                "GET /chat HTTP/1.1",
                "GET / HTTP/1.1",
                "GET //chat HTTP/1.1",
                "GET /a//b HTTP/1.1",
                "GET http://h.example/chat HTTP/1.1",
                "GET /chat HTTP/1.0",
                "GET /chat HTTP/1.2",
                "POST /chat HTTP/1.1",
                "get /chat HTTP/1.1",
                "GET /chat?x=1 HTTP/1.1",
            ]
        )
    ]
    choices = [
        (
            "Host",
            [
                "h.example",
                "h.example:80",
                "h.example:x",
                "h.example:",
                "[::1]",
                "[::1]:8080",
                "[::1]:p",
                " h.example:80 ",
                "a:b:c",
                "h.example:\xb2",
            ],
            0.95,
        ),
        ("Host", ["h.example"], 0.05),
        ("Upgrade", ["websocket", "WebSocket", "h2c, websocket"], 1),
        (
            "Connection",
            ["Upgrade", "upgrade", "keep-alive, Upgrade", "close", " Upgrade "],
            0.95,
        ),
        ("Connection", ["Upgrade", "x"], 0.05),
        ("Sec-WebSocket-Version", ["13"], 0.9),
        ("Sec-WebSocket-Version", ["13", "8"], 0.05),
        ("Sec-WebSocket-Key", [_KEY.decode(), "short=="], 0.95),
        ("Sec-WebSocket-Key", [_KEY.decode()], 0.05),
        ("Sec-WebSocket-Protocol", ["chat", "chat, other", "chat, chat"], 0.2),
        ("Sec-WebSocket-Protocol", ["x"], 0.05),
        ("Origin", ["http://ok.example", "http://no.example", "null", "::"], 0.2),
        ("Origin", ["http://ok.example"], 0.05),
        ("Sec-WebSocket-Extensions", ["permessage-deflate"], 0.2),
        ("Sec-WebSocket-Extensions", ["x"], 0.05),
        ("X-A", ["1"], 0.3),
    ]
    for name, values, chance in choices:
        if rng.random() < chance:
            lines.append(f"{_case(rng, name)}:{_blank(rng)}{rng.choice(values)}")
    fields = lines[1:]
    rng.shuffle(fields)
    return "\r\n".join([lines[0], *fields]).encode("latin-1") + b"\r\n\r\n"


class PlainScreenedTests(SynchronousTestCase):
    """
    L{plainScreened}, which trusts what the screening checked, takes the
    requests that L{plainRequest}, which checks it all, takes.
    """

    def test_random(self) -> None:
        """
        On many random upgrade requests that L{screenRequest} lets through,
        L{plainScreened} gives what L{plainRequest} gives (the key and
        the subprotocols, or L{None}), with the same judge of C{Origin};
        and both kinds of answer came up many times.
        """
        rng = random.Random(6455 + 17)
        routes = RouteTable((proxyRoute("any", "/", None),))
        leg = _OriginLeg()
        seen = {True: 0, False: 0}
        for _ in range(20000):
            data = _upgradeHead(rng)
            screened = screenRequest(data, 8192, routes)
            if not isinstance(screened, Screened):
                continue
            expected = plainRequest(
                screened.head, lambda origin: originAllowed(leg, origin)
            )
            self.assertEqual(plainScreened(screened, leg), expected, data)
            seen[expected is not None] += 1
        self.assertGreater(seen[True], 500)
        self.assertGreater(seen[False], 1000)


def _screenedAs(result: object) -> object:
    """
    @return: What a client is answered for C{result} of L{screenRequest},
        and what the leg keeps of it.
    """
    if isinstance(result, Screened):
        return (
            result.route.name,
            result.remainder,
            result.path,
            result.query,
            result.headLength,
            result.plain,
        )
    refusal = result.refusal  # type: ignore[attr-defined]
    return (refusal.code, refusal.body, refusal.headers)


class KeptStartsTests(SynchronousTestCase):
    """
    What L{screenRequest} remembers of the start lines it read
    (L{wsrelay.ws.screening.readStart}).
    """

    def test_random(self) -> None:
        """
        On many requests of random start lines (well-formed or not, with
        a query or not, paths that climb above C{/} or hold C{%2F}, long
        ones), a line screened again, when remembered, is answered as the
        first time, and as with nothing remembered; what is remembered
        stays within L{KEPT_STARTS} lines, each shorter than
        L{KEPT_START_LENGTH}, none with a query, and many lines were
        remembered.
        """
        _STARTS.clear()
        self.addCleanup(_STARTS.clear)
        rng = random.Random(6455 + 18)
        routes = RouteTable((proxyRoute("any", "/", None),))
        rest = "Host: h\r\nUpgrade: websocket\r\n\r\n"
        found = 0
        for _ in range(3 * KEPT_STARTS):
            method = rng.choice(["GET", "GET", "POST", "get"])
            target = rng.choice(
                [
                    "/chat",
                    "/",
                    "//chat",
                    "/a/../..",
                    "/a%2fb",
                    "/a#f",
                    "/caf\xe9",
                    "http://h/x",
                    "h/x",
                    "/x?token=1",
                    "/chat?",
                    "http://user:pw@h/chat",
                    "/healthz",
                    "/a/./b",
                    "/a b",
                    "/" + "x" * KEPT_START_LENGTH,
                    f"/r{rng.randrange(2000)}",
                ]
            )
            version = rng.choice(["HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/2"])
            line = f"{method} {target} {version}"
            data = f"{line}\r\n{rest}".encode("latin-1")
            first = _screenedAs(screenRequest(data, 8192, routes))
            found += line in _STARTS
            self.assertEqual(_screenedAs(screenRequest(data, 8192, routes)), first)
            kept = dict(_STARTS)
            _STARTS.clear()
            self.assertEqual(_screenedAs(screenRequest(data, 8192, routes)), first)
            _STARTS.clear()
            _STARTS.update(kept)
            self.assertLessEqual(len(_STARTS), KEPT_STARTS)
        self.assertFalse([k for k in _STARTS if len(k) >= KEPT_START_LENGTH])
        self.assertFalse([k for k in _STARTS if "?" in k or "://" in k])
        self.assertGreater(found, 1000)


#: Keys for L{HeadShapeTests}: well formed, and not (too short, too long,
#: a character out of base64's alphabet, no C{==}, a blank, a control).
_ODD_KEYS = [
    "dGhlIHNhbXBsZSBub25jZQ=",
    "dGhlIHNhbXBsZSBub25jZQ===",
    "dGhlIHNhbXBsZSBub25jZ-==",
    "dGhlIHNhbXBsZSBub25jZQAA",
    "dGhlIHNhbXBsZSBub25j Q==",
    "dGhlIHNhbXBsZSBub25j\x01Q==",
    "dGhlIHNhbXBsZSBub25jZQ==\t",
    "",
]


def _randomKey(rng: random.Random) -> str:
    if rng.random() < 0.1:
        return rng.choice(_ODD_KEYS)
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/"
    return "".join(rng.choice(alphabet) for _ in range(22)) + "=="


def _shapedHead(rng: random.Random) -> bytes:
    """
    A random upgrade request (L{_upgradeHead}), its key line often as most
    clients write it, now and then with a credential, a query, a field
    that is no key but looks like one, or another key line.
    """
    data = _upgradeHead(rng)
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    extra = []
    if rng.random() < 0.8:
        extra.append(f"Sec-WebSocket-Key: {_KEY.decode()}")
    for field, chance in [
        ("Cookie: a=b", 0.05),
        ("Authorization: Basic eDp5", 0.05),
        ("X-Sec-WebSocket-Key: " + _KEY.decode(), 0.05),
        ("sec-websocket-key: " + _KEY.decode(), 0.05),
        ("Sec-WebSocket-Key:  " + _KEY.decode(), 0.05),
        ("Sec-WebSocket-Key: " + _KEY.decode() + " ", 0.05),
    ]:
        if rng.random() < chance:
            extra.append(field)
    lines[1:] = [
        line for line in lines[1:] if not line.lower().startswith("sec-websocket-key")
    ]
    for line in extra:
        lines.insert(rng.randrange(1, len(lines) + 1), line)
    if rng.random() < 0.05:
        lines[0] = lines[0].replace("/chat ", "/chat?token=x ")
    return "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + rest


#: What L{_screening} asks to write upstream requests.
_ADMISSION = Admission(Clock(), _config(), None, len, None, None)  # type: ignore[arg-type]
_UPSTREAM = Backend(_BACKEND)


def _screening(result: object, leg: object) -> object:
    """
    @return: What a client is answered for C{result} of L{screenRequest}
        (L{_screenedAs}), the request's head as the leg keeps it, what
        L{plainScreened} makes of it, and the passthrough request written
        for it (twice: the second time, as the first for a head kept).
    """
    head = getattr(result, "head", None)
    request = None
    if isinstance(result, Screened):
        frontend: Any = _Frontend(
            result.head, "192.0.2.7", _Transport(), False, result.remainder, "", False
        )
        request = [
            (resource, lines.lines, lines.extensions, lines.key)  # type: ignore[union-attr]
            for resource, lines in [
                upstreamRequest(frontend, _ADMISSION, "passthrough", _UPSTREAM)
                for _ in range(2)
            ]
        ]
    return (
        _screenedAs(result),
        None if head is None else (head.startLine, head.headers, head.fields),
        plainScreened(result, leg) if isinstance(result, Screened) else None,
        request,
    )


def _keyedHead(extra: bytes) -> bytes:
    """
    @return: An upgrade request for C{/chat} with the key L{_KEY} and the
        field lines C{extra}.
    """
    return (
        b"GET /chat HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: " + _KEY + b"\r\n"
        b"Sec-WebSocket-Version: 13\r\n" + extra + b"\r\n"
    )


class HeadShapeTests(SynchronousTestCase):
    """
    A head screened before but for its key (L{wsrelay.ws.screening.
    HeadShape}) is screened as with nothing remembered.
    """

    def test_random(self) -> None:
        """
        On many random requests, each screened again with another key
        (well formed or not), the screening, the head, what
        L{plainScreened} makes of them and the passthrough request written
        for them are what they are with nothing remembered (L{screenHead}),
        and what L{plainRequest} makes of the head; many were screened as
        a shape remembered, and a route table remembers at most
        L{KEPT_HEADS} heads, each shorter than L{KEPT_HEAD_LENGTH}, none
        with a credential or a query.
        """
        rng = random.Random(6455 + 19)
        routes = RouteTable((proxyRoute("any", "/", None),))
        leg = _OriginLeg()
        hits = 0
        for _ in range(20000):
            data = _shapedHead(rng)
            for _ in range(3):
                key = _randomKey(rng).encode("latin-1")
                data = data.replace(_KEY, key) if key else data
                end = data.find(b"\r\n\r\n")
                alone = _screening(screenHead(data, end, routes), leg)
                result = screenRequest(data, 8192, routes)
                hits += getattr(result, "shape", None) is not None
                self.assertEqual(_screening(result, leg), alone, data)
                if isinstance(result, Screened):
                    expected = plainRequest(
                        result.head, lambda origin: originAllowed(leg, origin)
                    )
                    self.assertEqual(plainScreened(result, leg), expected, data)
                data = data.replace(key, _KEY) if key else data
            self.assertLessEqual(len(routes.shapes), KEPT_HEADS)
        self.assertGreater(hits, 2000)
        self.assertFalse([k for k in routes.shapes if len(k) >= KEPT_HEAD_LENGTH])
        for unkeyed in routes.shapes:
            lowered = unkeyed.lower()
            self.assertNotIn(b"cookie:", lowered)
            self.assertNotIn(b"authorization:", lowered)
            self.assertNotIn(b"?", unkeyed.split(b"\r\n", 1)[0])

    def test_keptOnlyWhenSeenAgain(self) -> None:
        """
        A head is made a shape only when it comes again: seen once, the
        memo holds no more than that it was seen; and one with more than
        L{KEPT_HEAD_FIELDS} fields or a line of L{KEPT_LENGTH} characters
        or more (a long token in a subprotocol, say) is not kept at all,
        however often it comes.
        """

        routes = RouteTable((proxyRoute("any", "/", None),))
        token = b"Sec-WebSocket-Protocol: bearer." + b"t" * 230 + b"\r\n"
        many = b"".join(b"X-%d: 1\r\n" % i for i in range(KEPT_HEAD_FIELDS))
        for extra in (token, many):
            for _ in range(3):
                result = screenRequest(_keyedHead(extra), 8192, routes)
                self.assertIs(result.shape, None)  # type: ignore[union-attr]
        self.assertEqual(routes.shapes, {})
        short = _keyedHead(b"Sec-WebSocket-Protocol: bearer." + b"t" * 200 + b"\r\n")
        screenRequest(short, 8192, routes)
        self.assertIs(routes.shapes[short[:-4].replace(_KEY, b"")], SEEN_ONCE)
        screenRequest(short, 8192, routes)
        self.assertIsInstance(routes.shapes[short[:-4].replace(_KEY, b"")], HeadShape)

    def test_skippedWhenNotSentAgain(self) -> None:
        """
        After L{KEPT_HEADS} heads in a row that the memo did not hold
        (each with a field of its own), the next L{SKIPPED_HEADS} are
        screened without it, as L{screenHead} screens them, even one it
        holds; then it is looked at again.  A head it holds ends a run of
        misses.
        """

        routes = RouteTable((proxyRoute("any", "/", None),))
        kept = _keyedHead(b"")
        for _ in range(3):
            screenRequest(kept, 8192, routes)
        self.assertEqual(routes.shapeMisses, 0)
        for i in range(KEPT_HEADS - 1):
            screenRequest(_keyedHead(b"X-Id: %d\r\n" % i), 8192, routes)
        self.assertEqual(routes.shapesSkipped, 0)
        self.assertIsNot(screenRequest(kept, 8192, routes).shape, None)  # type: ignore[union-attr]
        for i in range(KEPT_HEADS):
            screenRequest(_keyedHead(b"X-Id: %d\r\n" % -i), 8192, routes)
        self.assertEqual(routes.shapesSkipped, SKIPPED_HEADS)
        for _ in range(SKIPPED_HEADS):
            result = screenRequest(kept, 8192, routes)
            self.assertIs(result.shape, None)  # type: ignore[union-attr]
            self.assertEqual(result.route.name, "any")  # type: ignore[union-attr]
        # (Forgotten as the heads of their own filled the memo: seen again.)
        for _ in range(2):
            screenRequest(kept, 8192, routes)
        self.assertIsNot(screenRequest(kept, 8192, routes).shape, None)  # type: ignore[union-attr]

    def test_routesChanged(self) -> None:
        """
        A head remembered is screened against the routes in force: those a
        reload installs (which forget what was remembered), or those set.
        """
        data = (
            b"GET /chat HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: " + _KEY + b"\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        first = proxyRoute("first", "/", None)
        routes = RouteTable((first,))
        for _ in range(2):
            # (Seen once, then made a shape.)
            self.assertIs(screenRequest(data, 8192, routes).route, first)  # type: ignore[union-attr]
        again = screenRequest(data, 8192, routes)
        self.assertIsNot(again.shape, None)  # type: ignore[union-attr]
        self.assertIs(again.route, first)  # type: ignore[union-attr]
        second = proxyRoute("second", "/", None)
        routes.install((second,))
        self.assertEqual(routes.shapes, {})
        self.assertIs(screenRequest(data, 8192, routes).route, second)  # type: ignore[union-attr]
        third = proxyRoute("third", "/chat", None)
        routes.routes = (third,)
        result = screenRequest(data, 8192, routes)
        self.assertIs(result.shape, None)  # type: ignore[union-attr]
        self.assertIs(result.route, third)  # type: ignore[union-attr]
        routes.routes = (proxyRoute("other", "/other", None),)
        self.assertEqual(screenRequest(data, 8192, routes).refusal.code, 404)  # type: ignore[union-attr]
