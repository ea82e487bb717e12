"""
The relay at the edge: request paths normalized before routing, forwarded
headers that a client cannot forge, the PROXY protocol, and strict HTTP
in the opening handshake.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import struct
import tempfile

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, Logger, LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.support import TIMEOUT, client, inThread, startBackend, startRelay
from tests.support.clients import rawExchange, rawRequest, readHead
from tests.support.frames import maskedFrame, readFrame
from tests.support.relays import openSession
from tests.support.tls import makeCertificates
from wsrelay.logs import ErrorBudget, LimitedLogger
from wsrelay.proxy.session import ProxySession
from wsrelay.proxyprotocol import (
    V2_MAX,
    V2_SIGNATURE,
    BadProxyHeader,
    ProxyProtocolFactory,
    ProxyProtocolWrapper,
    parseV1,
)
from wsrelay.routing import BadPath, PathAboveRoot, normalizePath
from wsrelay.ws.handshake import forwardedNode

PROXY_LISTEN = "haproxy:tcp:0:interface=127.0.0.1"

#: Forwarding fields as a client could forge them.
FORGED = (
    "X-Forwarded-For: 6.6.6.6\r\n"
    "X-Forwarded-Proto: https\r\n"
    "X-Forwarded-Host: evil.example\r\n"
    "X-Real-IP: 6.6.6.6\r\n"
    "Forwarded: for=6.6.6.6;proto=https\r\n"
)

FORWARDING = ("X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host")
FORWARDING += ("X-Real-IP", "Forwarded")


#: Fields some backends believe as a proxy's word on the client.
CLAIMS = (
    "X-Forwarded-Port",
    "X-Forwarded-Prefix",
    "X-Forwarded-Ssl",
    "X-Forwarded-Scheme",
    "X-Forwarded-Server",
    "X-Client-IP",
    "True-Client-IP",
    "X-Original-URL",
    "X-Rewrite-URL",
)

#: Names that CGI, WSGI and PHP read as forwarding fields.
UNDERSCORED = ("X_Forwarded_For", "x_real_ip", "X-Forwarded_Proto", "Some_Field")


def v1(source: str, family: str = "TCP4", destination: str = "127.0.0.1") -> bytes:
    """
    @return: A PROXY version 1 header for a client at C{source}.
    """
    return f"PROXY {family} {source} {destination} 40000 80\r\n".encode()


def v2(source: str = "", command: int = 1, tlvs: bytes = b"") -> bytes:
    """
    @param source: An IPv4 or IPv6 address; none gives family C{UNSPEC}.
    @param command: 1 for C{PROXY}, 0 for C{LOCAL}.
    @param tlvs: What follows the addresses.
    @return: A PROXY version 2 header for a client at C{source}.
    """
    if not source:
        family, body = 0x00, b""
    elif ":" in source:
        family = 0x21
        body = socket.inet_pton(socket.AF_INET6, source) * 2
        body += struct.pack("!HH", 40000, 80)
    else:
        family = 0x11
        body = socket.inet_pton(socket.AF_INET, source) * 2
        body += struct.pack("!HH", 40000, 80)
    body += tlvs
    return (
        V2_SIGNATURE
        + bytes([0x20 | command, family])
        + struct.pack("!H", len(body))
        + body
    )


def backendHeaders(
    port: int, extra: str = "", proxy: bytes = b"", tls: ssl.SSLContext | None = None
) -> list[list[str]]:
    """
    Open a connection to the relay by hand (after C{proxy}, a PROXY
    header), and ask the backend behind it which header fields it got.

    @param tls: A client context: TLS after the PROXY header.
    @return: The fields, as C{[name, value]} pairs.
    """
    with contextlib.ExitStack() as stack:
        s = stack.enter_context(socket.create_connection(("127.0.0.1", port), TIMEOUT))
        if tls is not None:
            s.sendall(proxy)
            proxy = b""
            s = stack.enter_context(tls.wrap_socket(s, server_hostname="localhost"))
        s.sendall(proxy + rawRequest(port, "/chat", extra))
        head = readHead(s)
        assert head.startswith(b"HTTP/1.1 101 "), head
        s.sendall(maskedFrame(1, b"headers"))
        _, payload = readFrame(s)
        s.sendall(maskedFrame(8, b"\x03\xe8"))
    return [line.split(": ", 1) for line in payload.decode().split("\n")]


def refusedOutright(port: int, proxy: bytes) -> bytes:
    """
    Send C{proxy} and a request; read what the relay answers until it
    closes the connection.
    """
    with socket.create_connection(("127.0.0.1", port), TIMEOUT) as s:
        s.sendall(proxy + rawRequest(port))
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


class NormalizePathTests(SynchronousTestCase):
    """
    L{normalizePath} resolves dot segments, percent-encoded dots included,
    and merges slashes; nothing else changes.
    """

    def test_dotSegments(self) -> None:
        """
        C{.} and C{..} segments are removed with what they climb out of,
        as RFC 3986 5.2.4 does; a path ending in a dot segment ends with
        C{/}.
        """
        for path, expected in [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a/b/", "/a/b/"),
            ("/src/../echo", "/echo"),
            ("/a/./b", "/a/b"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/a/./..", "/"),
            ("/a/b/../../c", "/c"),
            ("/a/...", "/a/..."),
            ("/a/..b/.c", "/a/..b/.c"),
        ]:
            self.assertEqual(normalizePath(path), expected, path)

    def test_encodedDots(self) -> None:
        """
        A segment made of dots, some or all of them percent-encoded in
        either case, is a dot segment; other percent-encoding stays as
        sent, double-encoded dots included.
        """
        for path, expected in [
            ("/a/%2e%2e/b", "/b"),
            ("/a/%2E%2e/b", "/b"),
            ("/a/.%2e/b", "/b"),
            ("/a/%2E./b", "/b"),
            ("/a/%2e/b", "/a/b"),
            ("/a/%252e%252e/b", "/a/%252e%252e/b"),
            ("/a%3Bb/%41/..", "/a%3Bb/"),
            ("/a/b%2e/c", "/a/b./c"),
        ]:
            self.assertEqual(normalizePath(path), expected, path)

    def test_unreserved(self) -> None:
        """
        Percent-encoded unreserved characters (RFC 3986 6.2.2.2: letters,
        digits, C{-._~}) are decoded, so C{/%61pi} is C{/api}; other
        percent-encodings stay as sent.
        """
        for path, expected in [
            ("/%61pi", "/api"),
            ("/%41%7a%30%2D%5f%7E%2e", "/Az0-_~."),
            ("/a%20b/%3f%25/%zz/%", "/a%20b/%3f%25/%zz/%"),
            ("/%2561", "/%2561"),
        ]:
            self.assertEqual(normalizePath(path), expected, path)

    def test_refused(self) -> None:
        """
        A path holding an encoded C{/} or C{\\}, a raw C{\\} or an encoded
        NUL, in either case, raises L{BadPath} (a WHATWG URL parser takes
        C{..%2f} and C{..\\} as climbing); so does one that does not start
        with C{/}.
        """
        for path in [
            "/pub/..%2fadmin",
            "/pub/..%2Fadmin",
            "/pub/..\\admin",
            "/pub/..%5cadmin",
            "/pub/..%5Cadmin",
            "/a%00b",
            "/a/%2f",
            "a/b",
            "",
            "*",
        ]:
            self.assertRaises(BadPath, normalizePath, path)

    def test_mergeSlashes(self) -> None:
        """
        Runs of C{/} are one C{/}, as with nginx's C{merge_slashes on}.
        """
        for path, expected in [
            ("//", "/"),
            ("//a///b", "/a/b"),
            ("/a//", "/a/"),
            ("/a//..", "/"),
        ]:
            self.assertEqual(normalizePath(path), expected, path)

    def test_aboveRoot(self) -> None:
        """
        A path whose C{..} would climb above C{/} raises L{PathAboveRoot}.
        """
        for path in [
            "/..",
            "/../a",
            "/a/../..",
            "/public/../../../forbidden/admin",
            "/public/%2e%2e/%2E%2e/forbidden",
            "/a/./../.%2e/b",
        ]:
            self.assertRaises(PathAboveRoot, normalizePath, path)


class PathRoutingTests(TestCase):
    """
    The relay routes on the normalized path and forwards it; a path that
    climbs above C{/} is answered 400.
    """

    async def relay(self) -> tuple[object, int]:
        """
        A backend that says which path it was asked for, behind three
        routes: C{/public} and C{/echo} to sub-paths of it, and C{/src},
        which allows one origin only.

        @return: The backend and the relay's port.
        """
        b = startBackend(self)
        base = f"ws://127.0.0.1:{b.port}"
        _, port = await startRelay(
            self,
            "[relay]\n"
            f"[route:public]\npath = /public\nbackends = {base}/app/public/\n"
            f"[route:echo]\npath = /echo\nbackends = {base}/app/echo/\n"
            f"[route:src]\npath = /src\nbackends = {base}/app/src/\n"
            "allowed_origins = https://only.example\n",
        )
        return b, port

    async def backendPath(self, port: int, path: str) -> str:
        """
        @return: The path (and query) the backend saw for a client that
            asked the relay for C{path}.
        """

        def run() -> str:
            with client(port, path) as c:
                c.send("path")
                return str(c.recv(TIMEOUT))

        return str(await inThread(run))

    async def assertAnswered(self, port: int, path: str, status: int) -> None:
        """
        Assert that a raw upgrade request for C{path} gets C{status}.
        """
        answer = await inThread(rawExchange, port, rawRequest(port, path))
        self.assertTrue(answer.startswith(b"HTTP/1.1 %d " % (status,)), (path, answer))

    async def test_routedOnNormalizedPath(self) -> None:
        """
        C{/src/../echo} is C{/echo}'s: its route rules (here C{/src}'s
        C{allowed_origins}, which would answer 403) are not chosen on the
        raw path, and the backend sees the normalized path with the query
        as sent.
        """
        _, port = await self.relay()
        self.assertEqual(
            await self.backendPath(port, "/src/../echo/./a/%2e%2e/b?q=/../%2e"),
            "/app/echo/b?q=/../%2e",
        )

    async def test_forwardedNormalized(self) -> None:
        """
        The backend sees the path without dot segments or repeated
        slashes; other percent-encoding is as the client sent it.
        """
        _, port = await self.relay()
        for path, expected in [
            ("/public/x/../y", "/app/public/y"),
            ("/public/x/.%2E/y/", "/app/public/y/"),
            ("/echo//a///b", "/app/echo/a/b"),
            ("/echo/a%3Fb/%41", "/app/echo/a%3Fb/A"),
        ]:
            self.assertEqual(await self.backendPath(port, path), expected, path)

    async def test_aboveRoot(self) -> None:
        """
        A path that climbs above C{/}, with plain or percent-encoded dots,
        is answered 400 and reaches no backend.
        """
        b, port = await self.relay()
        for path in [
            "/public/../../../forbidden/admin",
            "/public/%2e%2e/%2E%2e/%2e%2e/forbidden/admin",
            "/public/./.%2e/..",
        ]:
            await self.assertAnswered(port, path, 400)
        self.assertEqual(b.connections, 0)  # type: ignore[attr-defined]

    async def test_unreservedRouted(self) -> None:
        """
        C{/%73rc} is C{/src}: it gets that route's rules (here
        C{allowed_origins}, so 403) rather than falling to another route,
        and C{/%65cho/%61} reaches C{/echo}'s backend decoded.
        """
        b, port = await self.relay()
        await self.assertAnswered(port, "/%73rc/x", 403)
        self.assertEqual(await self.backendPath(port, "/%65cho/%61"), "/app/echo/a")

    async def test_refusedPath(self) -> None:
        """
        A path with an encoded C{/} or C{\\}, a raw C{\\} or an encoded NUL,
        or a request target that is neither a path nor an absolute URL,
        is answered 400 and reaches no backend.
        """
        b, port = await self.relay()
        for path in [
            "/public/..%2fsrc",
            "/public/..%5Csrc",
            "/public/..\\src",
            "/public/a%00",
            "*",
            "public/x",
        ]:
            await self.assertAnswered(port, path, 400)
        self.assertEqual(b.connections, 0)  # type: ignore[attr-defined]

    async def test_fragment(self) -> None:
        """
        A request target with a fragment is answered 400, as Autobahn
        did when the path before it matched a route.
        """
        _, port = await self.relay()
        for path in ["/echo#x", "/echo/..#x"]:
            await self.assertAnswered(port, path, 400)

    async def test_targetNotVisibleASCII(self) -> None:
        """
        A request target holding a byte outside visible ASCII (not
        percent-encoded), in its path or its query, is answered 400 and
        reaches no backend: it would reach the backend raw.
        """
        b, port = await self.relay()
        for path in ["/echo?\x80", "/echo/\xe9", "/echo?a=\x7f", "/echo?\tx"]:
            await self.assertAnswered(port, path, 400)
        self.assertEqual(b.connections, 0)  # type: ignore[attr-defined]
        self.assertEqual(
            await self.backendPath(port, "/echo/a?%C3%A9"), "/app/echo/a?%C3%A9"
        )

    async def test_leavingRoute(self) -> None:
        """
        A path that climbs out of its route's prefix is routed on where it
        lands: C{/public/..} is C{/}, which no route takes (404).
        """
        _, port = await self.relay()
        await self.assertAnswered(port, "/public/..", 404)


class ForwardedHeaderTests(TestCase):
    """
    The forwarding fields a backend gets (C{X-Forwarded-For},
    C{X-Forwarded-Proto}, C{X-Forwarded-Host}, C{X-Real-IP},
    C{Forwarded}) are the relay's unless the peer is a trusted proxy, on
    plain listeners and PROXY protocol ones alike; the peer of a PROXY
    listener is the address its header gives.
    """

    async def forwarded(
        self,
        trusted: str = "",
        listen: str = "tcp:0:interface=127.0.0.1",
        proxy: bytes = b"",
    ) -> tuple[int, dict[str, str]]:
        """
        Send a request with forged forwarding fields.

        @param trusted: The relay's C{trusted_proxies}.
        @return: The relay's port, and the forwarding fields the backend
            got (each of them exactly once).
        """
        b = startBackend(self)
        config = "[relay]\n"
        if trusted:
            config += f"trusted_proxies = {trusted}\n"
        config += f"[route:chat]\npath = /chat\nbackends = {b.url}\n"
        _, port = await startRelay(self, config, listen=listen)
        fields = await inThread(backendHeaders, port, FORGED, proxy)
        got = [(n, v) for (n, v) in fields if n in FORWARDING]
        self.assertEqual(sorted(n for (n, _) in got), sorted(FORWARDING))
        return port, dict(got)

    def assertOwn(self, got: dict[str, str], peer: str, host: str) -> None:
        """
        The fields are the relay's own, for a client at C{peer} that
        asked for C{host}: nothing the client sent survived.
        """
        node = f'"[{peer}]"' if ":" in peer else peer
        self.assertEqual(
            got,
            {
                "X-Forwarded-For": peer,
                "X-Forwarded-Proto": "http",
                "X-Forwarded-Host": host,
                "X-Real-IP": peer,
                "Forwarded": f'for={node};proto=http;host="{host}"',
            },
        )

    async def test_untrustedPeer(self) -> None:
        """
        Without C{trusted_proxies}, the client's forwarding fields are
        dropped and the relay writes its own.
        """
        port, got = await self.forwarded()
        self.assertOwn(got, "127.0.0.1", f"127.0.0.1:{port}")

    async def test_peerNotTrusted(self) -> None:
        """
        With C{trusted_proxies} that do not hold the peer, likewise.
        """
        port, got = await self.forwarded("10.0.0.0/8")
        self.assertOwn(got, "127.0.0.1", f"127.0.0.1:{port}")

    async def test_trustedPeer(self) -> None:
        """
        From a trusted proxy, C{X-Forwarded-For} and C{Forwarded} are
        kept with the peer appended, C{X-Forwarded-Proto} and
        C{X-Forwarded-Host} are believed, and C{X-Real-IP} is the client
        address the chain gives.
        """
        port, got = await self.forwarded("127.0.0.1")
        self.assertEqual(
            got,
            {
                "X-Forwarded-For": "6.6.6.6, 127.0.0.1",
                "X-Forwarded-Proto": "https",
                "X-Forwarded-Host": "evil.example",
                "X-Real-IP": "6.6.6.6",
                "Forwarded": "for=6.6.6.6;proto=https, "
                f'for=127.0.0.1;proto=http;host="127.0.0.1:{port}"',
            },
        )

    async def claimed(self, trusted: str = "") -> dict[str, str]:
        """
        Send a request with underscore names and further fields some
        backends take as a proxy's word.

        @param trusted: The relay's C{trusted_proxies}.
        @return: The fields the backend got, names lower-cased.
        """
        b = startBackend(self)
        config = "[relay]\n"
        if trusted:
            config += f"trusted_proxies = {trusted}\n"
        config += f"[route:chat]\npath = /chat\nbackends = {b.url}\n"
        _, port = await startRelay(self, config)
        extra = "".join(f"{name}: 6.6.6.6\r\n" for name in CLAIMS + UNDERSCORED)
        extra += "X-Kept: yes\r\n"
        fields = await inThread(backendHeaders, port, extra)
        return {n.lower(): v for (n, v) in fields}

    async def test_claimsUntrusted(self) -> None:
        """
        From an untrusted peer, C{X-Forwarded-Port}, C{X-Client-IP},
        C{X-Original-URL} and the like are dropped, and so is every field
        whose name holds C{_} (C{X_Forwarded_For} is C{X-Forwarded-For}
        to CGI, WSGI and PHP); other fields pass.
        """
        got = await self.claimed()
        self.assertEqual(got["x-kept"], "yes")
        self.assertEqual(got["x-forwarded-for"], "127.0.0.1")
        for name in CLAIMS + UNDERSCORED:
            self.assertNotIn(name.lower(), got)

    async def test_claimsTrusted(self) -> None:
        """
        From a trusted peer, the further forwarding fields pass, but a
        name with C{_} is still dropped.
        """
        got = await self.claimed("127.0.0.1")
        for name in CLAIMS:
            self.assertEqual(got[name.lower()], "6.6.6.6", name)
        for name in UNDERSCORED:
            self.assertNotIn(name.lower(), got)

    async def test_proxyListenerUntrusted(self) -> None:
        """
        Behind a PROXY listener without C{trusted_proxies}, the client is
        the header's source, and what it sent is dropped.
        """
        port, got = await self.forwarded(listen=PROXY_LISTEN, proxy=v1("203.0.113.7"))
        self.assertOwn(got, "203.0.113.7", f"127.0.0.1:{port}")

    async def test_proxyListenerSocketTrusted(self) -> None:
        """
        Behind a PROXY listener, C{trusted_proxies} is matched against the
        header's source, not the socket's peer (the load balancer, here
        127.0.0.1): the client there is still untrusted.
        """
        port, got = await self.forwarded(
            "127.0.0.1", listen=PROXY_LISTEN, proxy=v1("203.0.113.7")
        )
        self.assertOwn(got, "203.0.113.7", f"127.0.0.1:{port}")

    async def test_proxyListenerNoAddress(self) -> None:
        """
        A PROXY header that gives no client address (C{UNKNOWN}, C{LOCAL},
        C{UNSPEC}) leaves the load balancer's socket as the peer: even
        with that in C{trusted_proxies}, what the client sent is dropped,
        as it is the client's word, not the balancer's.
        """
        for header in [b"PROXY UNKNOWN\r\n", v2("203.0.113.7", command=0), v2()]:
            port, got = await self.forwarded(
                "127.0.0.1", listen=PROXY_LISTEN, proxy=header
            )
            self.assertOwn(got, "127.0.0.1", f"127.0.0.1:{port}")

    async def test_proxyListenerTrusted(self) -> None:
        """
        Behind a PROXY listener whose header's source is a trusted proxy
        (a CDN in front of the load balancer, say), that proxy's fields
        are believed as from a trusted peer.
        """
        port, got = await self.forwarded(
            "203.0.113.0/24", listen=PROXY_LISTEN, proxy=v1("203.0.113.7")
        )
        self.assertEqual(
            got,
            {
                "X-Forwarded-For": "6.6.6.6, 203.0.113.7",
                "X-Forwarded-Proto": "https",
                "X-Forwarded-Host": "evil.example",
                "X-Real-IP": "6.6.6.6",
                "Forwarded": "for=6.6.6.6;proto=https, "
                f'for=203.0.113.7;proto=http;host="127.0.0.1:{port}"',
            },
        )

    async def test_proxyListenerIPv6(self) -> None:
        """
        An IPv6 source in a version 2 header: the C{Forwarded} node is
        bracketed and quoted.
        """
        port, got = await self.forwarded(listen=PROXY_LISTEN, proxy=v2("2001:db8::7"))
        self.assertOwn(got, "2001:db8::7", f"127.0.0.1:{port}")


class ProxyProtocolTests(TestCase):
    """
    PROXY protocol listeners (C{haproxy:...}) over real sockets.
    """

    async def relay(self) -> tuple[object, int]:
        """
        @return: A backend, and the port of a relay with a PROXY listener
            in front of it.
        """
        b = startBackend(self)
        _, port = await startRelay(
            self,
            f"[relay]\n[route:chat]\npath = /chat\nbackends = {b.url}\n",
            listen=PROXY_LISTEN,
        )
        return b, port

    async def realIP(self, port: int, proxy: bytes) -> str:
        """
        @return: The C{X-Real-IP} the backend got for a client sent
            after C{proxy}.
        """
        fields = await inThread(backendHeaders, port, "", proxy)
        (address,) = [v for (n, v) in fields if n == "X-Real-IP"]
        return str(address)

    async def test_unknown(self) -> None:
        """
        C{PROXY UNKNOWN} (with or without the addresses that may follow
        it) is accepted, and the client's address is the socket's peer.
        """
        _, port = await self.relay()
        for header in [
            b"PROXY UNKNOWN\r\n",
            b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n",
        ]:
            self.assertEqual(await self.realIP(port, header), "127.0.0.1", header)

    async def test_addresses(self) -> None:
        """
        The client's address is the header's source: version 1 and 2,
        IPv4 and IPv6; version 2's C{LOCAL} and C{UNSPEC} leave the
        socket's.
        """
        _, port = await self.relay()
        for header, expected in [
            (v1("198.51.100.4"), "198.51.100.4"),
            (v1("2001:db8::4", "TCP6", "::1"), "2001:db8::4"),
            (v2("198.51.100.5"), "198.51.100.5"),
            (v2("2001:db8::5"), "2001:db8::5"),
            (v2("198.51.100.6", command=0), "127.0.0.1"),
            (v2(), "127.0.0.1"),
        ]:
            self.assertEqual(await self.realIP(port, header), expected, header)

    async def test_invalid(self) -> None:
        """
        A header with an address that is not one (an IPv6 one with a
        scope id included), a bad port, an unknown protocol, or no header
        at all: the connection is closed without
        an answer and reaches no backend.
        """
        b, port = await self.relay()
        for header in [
            v1("999.1.1.1"),
            v1("1.2.3.4", destination="127.0.0.256"),
            v1("::1"),
            v1("1.2.3.4", "TCP6"),
            b"PROXY TCP4 1.2.3.4 127.0.0.1 99999 80\r\n",
            b"PROXY TCP4 1.2.3.4 127.0.0.1 -1 80\r\n",
            b"PROXY UDP4 1.2.3.4 127.0.0.1 1 80\r\n",
            b"PROXY TCP4 1.2.3.4 127.0.0.1 1\r\n",
            b"PROXY " + b"1" * 120,
            b'PROXY TCP6 fe80::1%x",for=6.6.6.6;a="1 ::1 1 2\r\n',
            b"",
        ]:
            answer = await inThread(refusedOutright, port, header)
            self.assertEqual(answer, b"", header)
        self.assertEqual(b.connections, 0)  # type: ignore[attr-defined]


def openAndRead(port: int, proxy: bytes) -> tuple[int, bytes]:
    """
    Open a WebSocket after C{proxy}, a PROXY header, and read one frame.

    @return: Its opcode and payload.
    """
    with socket.create_connection(("127.0.0.1", port), TIMEOUT) as s:
        s.sendall(proxy + rawRequest(port, "/chat"))
        readHead(s)
        frame = readFrame(s)
        s.sendall(maskedFrame(8, b"\x03\xe8"))
        return frame


class ProxyProtocolSessionTests(TestCase):
    """
    A PROXY listener's client leg, open.
    """

    async def opened(self) -> tuple[ProxySession, Deferred[tuple[int, bytes]]]:
        """
        Open a session for a client at 198.51.100.4 behind a PROXY
        listener.

        @return: The session, and what the client reads (one frame).
        """
        b = startBackend(self)
        relay, port = await startRelay(
            self,
            f"[relay]\n[route:chat]\npath = /chat\nbackends = {b.url}\n",
            listen=PROXY_LISTEN,
        )
        reading = inThread(openAndRead, port, v1("198.51.100.4"))
        return await openSession(relay), reading

    async def test_peer(self) -> None:
        """
        Autobahn's C{peer} (in its log lines) names the client the header
        gives, not the load balancer.  (Its transport details, which
        L{setPeer} gives the same, are let go once the leg is open.)
        """
        session, reading = await self.opened()
        self.assertEqual(session.frontend.peer, "tcp4:198.51.100.4:40000")
        self.assertNotIn("_transport_details", vars(session.frontend))
        session.frontend.writer()(b"\x81\x00")
        self.assertEqual(await reading, (1, b""))

    async def test_directWrite(self) -> None:
        """
        A client leg behind a PROXY listener sends at once
        (L{wsrelay.ws.writes.directWrite}): when its writer returns, nothing
        is left queued in the TCP transport under the PROXY wrapper.
        """
        session, reading = await self.opened()
        wrapper = session.frontend.transport
        self.assertIsInstance(wrapper, ProxyProtocolWrapper)
        tcp = wrapper.transport  # type: ignore[union-attr]
        session.frontend.writer()(b"\x81\x02hi")
        self.assertEqual((tcp._tempDataBuffer, tcp.dataBuffer), ([], b""))
        self.assertEqual(await reading, (1, b"hi"))


class ProxyProtocolTLSTests(TestCase):
    """
    C{haproxy:ssl:...}: the PROXY header comes in clear, then TLS, as
    HAProxy's C{send-proxy} in front of a TLS-terminating relay sends.
    """

    async def test_headerThenTLS(self) -> None:
        """
        The header is read before the TLS handshake: the client's address
        is the header's, and the request is known to have come over TLS
        (C{X-Forwarded-Proto: https}); a connection that starts TLS
        without a header is refused.
        """
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        certs = makeCertificates(directory, ["localhost", "127.0.0.1"])
        b = startBackend(self)
        _, port = await startRelay(
            self,
            f"[relay]\n[route:chat]\npath = /chat\nbackends = {b.url}\n",
            listen=f"haproxy:ssl:0:interface=127.0.0.1:privateKey={certs['key']}"
            f":certKey={certs['cert']}",
        )
        context = ssl.create_default_context(cafile=certs["ca"])
        fields = await inThread(backendHeaders, port, "", v1("203.0.113.9"), context)
        got = {n: v for (n, v) in fields}
        self.assertEqual(got["X-Real-IP"], "203.0.113.9")
        self.assertEqual(got["X-Forwarded-Proto"], "https")
        with self.assertRaises((ssl.SSLError, OSError, EOFError)):
            await inThread(backendHeaders, port, "", b"", context)


class ProxyProtocolUnitTests(SynchronousTestCase):
    """
    L{ProxyProtocolFactory} and its parsers, in memory.
    """

    def connect(self) -> tuple[list[bytes], StringTransport, Protocol]:
        """
        @return: What the wrapped protocol receives, the transport, and
            the wrapper.
        """
        received: list[bytes] = []

        class Recorder(Protocol):
            """
            Keeps what it receives.
            """

            def dataReceived(self, data: bytes) -> None:
                """
                Keep C{data}.
                """
                received.append(data)

        factory = ProxyProtocolFactory(Factory.forProtocol(Recorder))
        wrapper = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        assert wrapper is not None
        transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.1", 5000))
        wrapper.makeConnection(transport)
        return received, transport, wrapper

    def test_inPieces(self) -> None:
        """
        A header that arrives a byte at a time (Twisted's wrapper drops a
        connection whose first read is shorter than 8 bytes) is read
        whole; what follows it goes to the wrapped protocol.
        """
        for header, peer in [
            (v1("198.51.100.4"), IPv4Address("TCP", "198.51.100.4", 40000)),
            (v2("2001:db8::5"), IPv6Address("TCP", "2001:db8::5", 40000)),
            (b"PROXY UNKNOWN\r\n", IPv4Address("TCP", "192.0.2.1", 5000)),
        ]:
            received, transport, wrapper = self.connect()
            for i in range(len(header)):
                wrapper.dataReceived(header[i : i + 1])
            self.assertEqual(received, [])
            wrapper.dataReceived(b"GET")
            self.assertEqual(received, [b"GET"])
            self.assertEqual(wrapper.getPeer(), peer)  # type: ignore[attr-defined]
            self.assertFalse(transport.disconnecting)

    def test_longV2(self) -> None:
        """
        A version 2 header of L{V2_MAX} bytes, TLVs included, parses
        when it comes a byte per read; one that declares a byte more is
        refused as soon as its length field is read.
        """
        padding = V2_MAX - len(v2("198.51.100.4"))
        # A TLV of type NOOP (0x04) filling the rest.
        tlvs = b"\x04" + struct.pack("!H", padding - 3) + b"\x00" * (padding - 3)
        header = v2("198.51.100.4", tlvs=tlvs)
        self.assertEqual(len(header), V2_MAX)
        received, transport, wrapper = self.connect()
        for i in range(len(header)):
            wrapper.dataReceived(header[i : i + 1])
        wrapper.dataReceived(b"GET")
        self.assertEqual(received, [b"GET"])
        self.assertEqual(
            wrapper.getPeer(),  # type: ignore[attr-defined]
            IPv4Address("TCP", "198.51.100.4", 40000),
        )
        self.assertFalse(transport.disconnecting)
        tooLong = v2("198.51.100.4", tlvs=tlvs + b"\x00")
        received, transport, wrapper = self.connect()
        wrapper.dataReceived(tooLong[:16])
        self.assertTrue(transport.disconnecting)
        self.assertEqual(received, [])

    def test_rest(self) -> None:
        """
        Bytes after the header in the same read reach the wrapped protocol.
        """
        received, _, wrapper = self.connect()
        wrapper.dataReceived(b"PROXY UNKNOWN\r\nGET / HTTP/1.1")
        self.assertEqual(received, [b"GET / HTTP/1.1"])

    def test_refused(self) -> None:
        """
        A connection that does not start with a header is closed at the
        first byte that shows it.
        """
        received, transport, wrapper = self.connect()
        wrapper.dataReceived(b"PROXX")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(received, [])

    def test_refusalsLogged(self) -> None:
        """
        A refused header is logged as a warning that counts against the
        wrapped factory's L{ErrorBudget} (a relay's frontend factory has
        one): beyond it, refusals are counted, not logged.
        """
        events: list[LogEvent] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        clock = Clock()
        wrapped = Factory.forProtocol(Protocol)
        wrapped.protocolErrors = ErrorBudget(clock, 2, 10)  # type: ignore[attr-defined]
        factory = ProxyProtocolFactory(wrapped)
        for _ in range(5):
            wrapper = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
            assert wrapper is not None
            transport = StringTransport()
            wrapper.makeConnection(transport)
            wrapper.dataReceived(v1("999.1.1.1"))
            self.assertTrue(transport.disconnecting)
        refusals = [e for e in events if "PROXY protocol" in e.get("log_format", "")]
        self.assertEqual(len(refusals), 2)
        self.assertEqual(refusals[0]["log_level"], LogLevel.warn)
        self.assertIn("999.1.1.1", refusals[0]["reason"])
        self.assertEqual(wrapped.protocolErrors.suppressed, 3)  # type: ignore[attr-defined]
        wrapped.protocolErrors.flush()  # type: ignore[attr-defined]

    def test_parseV1(self) -> None:
        """
        L{parseV1} checks addresses and ports, and canonicalizes
        addresses.
        """
        self.assertEqual(
            parseV1(b"PROXY TCP6 2001:DB8:0::1 ::1 1 65535"),
            (IPv6Address("TCP", "2001:db8::1", 1), IPv6Address("TCP", "::1", 65535)),
        )
        self.assertEqual(parseV1(b"PROXY UNKNOWN"), (None, None))
        for line in [
            b"PROXY TCP4 01.2.3.4 1.2.3.4 1 2",
            b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2 3",
            b"PROXY TCP4 1.2.3.4 1.2.3.4 1 +2",
            b"PROXY TCP4 1.2.3.4 1.2.3.4 1 \xd9\xa3",
            b"PROXY  TCP4 1.2.3.4 1.2.3.4 1 2",
            b"proxy TCP4 1.2.3.4 1.2.3.4 1 2",
        ]:
            self.assertRaises(BadProxyHeader, parseV1, line)

    def test_scopeId(self) -> None:
        """
        An IPv6 address with a scope id (which Python's L{ipaddress} takes
        with anything after the C{%}) is refused: it would carry text
        into the forwarding headers.
        """
        for line in [
            b'PROXY TCP6 fe80::1%x",for=6.6.6.6;a="1 ::1 1 2',
            b"PROXY TCP6 fe80::1%eth0 ::1 1 2",
            b"PROXY TCP6 ::1 fe80::1%1,6.6.6.6 1 2",
        ]:
            self.assertRaises(BadProxyHeader, parseV1, line)

    def test_forwardedNode(self) -> None:
        """
        L{forwardedNode} writes only what is an address, canonical, and
        C{unknown} for the rest, scope ids included: nothing of its
        argument can break out of the C{for=} parameter.
        """
        self.assertEqual(forwardedNode("192.0.2.1"), "192.0.2.1")
        self.assertEqual(forwardedNode("2001:DB8::1"), '"[2001:db8::1]"')
        for address in [
            'fe80::1%x",for=6.6.6.6;a="1',
            "fe80::1%eth0",
            "1.2.3.4;proto=https",
            "unix",
            "",
        ]:
            self.assertEqual(forwardedNode(address), "unknown", address)


def upgradeRequest(
    port: int, version: str = "13", extra: str = "", upgrade: bool = True
) -> bytes:
    """
    @return: An opening handshake request for C{/chat} asking for
        WebSocket C{version} (or, without C{upgrade}, a plain C{GET}).
    """
    fields = f"GET /chat HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
    if upgrade:
        fields += (
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            f"Sec-WebSocket-Version: {version}\r\n"
        )
    return (fields + extra + "\r\n").encode()


def responseHead(answer: bytes) -> tuple[int, list[tuple[str, str]]]:
    """
    @return: The status and the header fields of an HTTP response.
    """
    head = answer.split(b"\r\n\r\n", 1)[0].decode("iso-8859-1")
    status, *lines = head.split("\r\n")
    fields = [line.split(": ", 1) for line in lines]
    return int(status.split(" ")[1]), [(n.lower(), v) for (n, v) in fields]


class StrictnessTests(TestCase):
    """
    Requests that HTTP or RFC 6455 do not allow get the answer they call
    for, and reach no backend.
    """

    async def relay(self) -> tuple[object, int]:
        """
        @return: A backend, and the port of a relay in front of it.
        """
        b = startBackend(self)
        _, port = await startRelay(
            self, f"[relay]\n[route:chat]\npath = /chat\nbackends = {b.url}\n"
        )
        return b, port

    async def answer(self, port: int, data: bytes) -> tuple[int, list[tuple[str, str]]]:
        """
        Send C{data}; the relay must answer and close.

        @return: The status and header fields of its answer.
        """
        return responseHead(await inThread(rawExchange, port, data))

    async def test_versionNot13(self) -> None:
        """
        A WebSocket version other than 13 gets 426 with
        C{Sec-WebSocket-Version: 13} (RFC 6455 4.4); two version fields
        get 400.
        """
        b, port = await self.relay()
        for version in ["8", "7", "14", "13, 8", "x"]:
            status, fields = await self.answer(port, upgradeRequest(port, version))
            self.assertEqual(status, 426, version)
            self.assertIn(("sec-websocket-version", "13"), fields)
            self.assertIn(("upgrade", "websocket"), fields)
        twice = upgradeRequest(port, extra="Sec-WebSocket-Version: 13\r\n")
        status, _ = await self.answer(port, twice)
        self.assertEqual(status, 400)
        self.assertEqual(b.connections, 0)  # type: ignore[attr-defined]

    async def test_oneConnectionField(self) -> None:
        """
        A 426 (to a plain request, or for the version) has one
        C{Connection} field, holding both C{Upgrade} (RFC 9110 7.8) and
        C{close}.
        """
        _, port = await self.relay()
        for request in [
            upgradeRequest(port, upgrade=False),
            upgradeRequest(port, "8"),
        ]:
            status, fields = await self.answer(port, request)
            self.assertEqual(status, 426)
            self.assertEqual(
                [v for (n, v) in fields if n == "connection"], ["Upgrade, close"]
            )

    async def test_body(self) -> None:
        """
        An upgrade request with a body (C{Content-Length} above 0, any
        C{Transfer-Encoding}) or with two C{Content-Length} fields gets
        400: its body would be read as frames.
        """
        b, port = await self.relay()
        for extra, body in [
            ("Content-Length: 0\r\nContent-Length: 0\r\n", ""),
            ("Content-Length: 5\r\n", "hello"),
            ("Content-Length: 00\r\n", ""),
            ("Content-Length: -1\r\n", ""),
            ("Transfer-Encoding: chunked\r\n", "0\r\n\r\n"),
            ("Transfer-Encoding: identity\r\n", ""),
        ]:
            request = upgradeRequest(port, extra=extra) + body.encode()
            status, _ = await self.answer(port, request)
            self.assertEqual(status, 400, extra)
        self.assertEqual(b.connections, 0)  # type: ignore[attr-defined]

    async def test_host(self) -> None:
        """
        A request with two C{Host} fields (which would be joined into one
        value), or an HTTP/1.1 request with none, gets 400 (RFC 9112 3.2)
        and reaches no backend, before it is routed: for a path no route
        takes, or C{/healthz}, too.
        """
        b, port = await self.relay()
        host = f"Host: 127.0.0.1:{port}\r\n"
        for path in [b"/chat", b"/nowhere", b"/healthz"]:
            for data in [
                upgradeRequest(port, extra=host),
                upgradeRequest(port, extra="host: evil.example\r\n"),
                upgradeRequest(port).replace(host.encode(), b""),
            ]:
                data = data.replace(b"/chat", path, 1)
                status, _ = await self.answer(port, data)
                self.assertEqual(status, 400, data)
        self.assertEqual(b.connections, 0)  # type: ignore[attr-defined]

    async def test_emptyBody(self) -> None:
        """
        C{Content-Length: 0} is no body: the request is upgraded.
        """
        _, port = await self.relay()

        def run() -> bytes:
            with socket.create_connection(("127.0.0.1", port), TIMEOUT) as s:
                s.sendall(upgradeRequest(port, extra="Content-Length: 0\r\n"))
                head = b""
                while b"\r\n\r\n" not in head:
                    head += s.recv(1)
                return head

        self.assertTrue((await inThread(run)).startswith(b"HTTP/1.1 101 "))


class ErrorBudgetTests(SynchronousTestCase):
    """
    L{ErrorBudget} and L{LimitedLogger}, on a fake clock.
    """

    def setUp(self) -> None:
        """
        A budget of 3 lines every 10 seconds and a logger using it, whose
        events (the summaries' too) are kept.
        """
        self.events: list[LogEvent] = []
        self.clock = Clock()
        self.budget = ErrorBudget(self.clock, 3, 10)
        self.budget.log = Logger(observer=self.events.append)
        self.logger = LimitedLogger(Logger(observer=self.events.append), self.budget)

    def texts(self) -> list[str]:
        """
        @return: The formats logged so far, with the summaries' counts.
        """
        return [str(e.get("suppressed", e["log_format"])) for e in self.events]

    def test_limited(self) -> None:
        """
        Beyond the limit, lines are held back; at the end of the window one
        line says how many; the next window lets lines through again.
        """
        for i in range(10):
            self.logger.warn("line {i}", i=i)
        self.logger.info("info")
        self.logger.error("error")
        self.assertEqual(self.texts(), ["line {i}"] * 3)
        self.assertEqual(self.budget.suppressed, 9)
        self.clock.advance(9.9)
        self.assertEqual(len(self.events), 3)
        self.clock.advance(0.1)
        self.assertEqual(self.texts(), ["line {i}"] * 3 + ["9"])
        self.assertEqual(self.events[-1]["log_level"], LogLevel.warn)
        self.logger.warn("again")
        self.assertEqual(self.texts()[-1], "again")
        self.assertEqual(self.budget.totalSuppressed, 9)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_quiet(self) -> None:
        """
        Within the limit nothing is held back and no summary is logged; the
        window starts with the first line, not at a fixed time.
        """
        self.clock.advance(7)
        for _ in range(3):
            self.logger.warn("w")
        self.clock.advance(9)
        self.logger.warn("held")
        self.assertEqual(self.texts(), ["w"] * 3)
        self.clock.advance(1)
        self.assertEqual(self.texts(), ["w"] * 3 + ["1"])

    def test_flush(self) -> None:
        """
        L{ErrorBudget.flush} (the relay stopping) logs the count at once and
        leaves no timer behind.
        """
        for _ in range(5):
            self.logger.info("i")
        self.budget.flush()
        self.assertEqual(self.texts(), ["i"] * 3 + ["2"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_debugUnlimited(self) -> None:
        """
        C{debug} does not count against the budget.
        """
        for _ in range(10):
            self.logger.debug("d")
        self.logger.warn("w")
        self.assertEqual(self.texts(), ["d"] * 10 + ["w"])


class ProtocolErrorLogTests(TestCase):
    """
    A client that sends bad requests over and over cannot flood the log.
    """

    async def test_badRequests(self) -> None:
        """
        Thirty refused handshakes: Autobahn's lines about them (two each)
        stop at the relay's budget, and one line says how many more there
        were when the window ends (on the relay's clock); the access log,
        which C{access_log} governs, has every refusal.
        """
        events: list[LogEvent] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        clock = Clock()
        b = startBackend(self)
        relay, port = await startRelay(
            self,
            f"[relay]\n[route:chat]\npath = /chat\nbackends = {b.url}\n",
            clock=clock,
        )
        budget = relay.frontendFactory.protocolErrors
        for _ in range(30):
            answer = await inThread(rawExchange, port, upgradeRequest(port, "8"))
            self.assertTrue(answer.startswith(b"HTTP/1.1 426 "), answer)
        autobahn = [
            e
            for e in events
            if e.get("log_namespace", "").startswith("autobahn.")
            and e["log_level"] >= LogLevel.info
        ]
        self.assertEqual(len(autobahn), budget.limit)
        access = [e for e in events if e.get("event") == "access"]
        self.assertEqual(len(access), 30)
        self.assertEqual([e for e in events if "suppressed" in e], [])
        clock.advance(budget.interval)
        (summary,) = [e for e in events if "suppressed" in e]
        self.assertGreaterEqual(summary["suppressed"], 30)
        self.assertEqual(summary["log_level"], LogLevel.warn)
