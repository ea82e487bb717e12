"""
Tests for the quick form of a passthrough upstream request (the fields of
a client the relay does not trust, written as lines in one piece:
L{wsrelay.admission.Admission.forwardedLines}, L{wsrelay.proxy.opening.
RequestLines}): on many random clients it gives the backend the bytes the
general form (L{wsrelay.admission.Admission.forwardedHeaders}, a list of
pairs) gives, byte for byte.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from twisted.internet import tcp, unix
from twisted.internet.address import IPv6Address, UNIXAddress
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from tests.support.forwarding import _BACKEND, _config, _Frontend, _Transport
from wsrelay.admission import Admission, peerHost
from wsrelay.auth.gate import withHeaders
from wsrelay.proxy.opening import upstreamRequest
from wsrelay.proxyprotocol import ProxyProtocolWrapper
from wsrelay.routing import Backend, joinPath
from wsrelay.ws.accepting import LeanServer
from wsrelay.ws.handshake import RequestLines, buildRequest, parseHead
from wsrelay.ws.response import END_TO_END, NO_EXTENSIONS, RequestHeaders

#: The key of every request built here.
_KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def _oldBuildRequest(
    resource: str, host: str, key: str, headers: Sequence[tuple[str, str]]
) -> bytes:
    """
    C{buildRequest} as it was before it took fields written as lines: the
    reference of these tests.
    """
    start = (
        f"GET {resource} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n"
    )
    fields = "".join([f"{n}: {v}\r\n" for (n, v) in headers])
    return (start + fields + "\r\n").encode("iso-8859-1", "replace")


def _oldTarget(backend: Backend, frontend: Any) -> str:
    """
    The request target as C{upstreamRequest} made it before L{target
    <wsrelay.proxy.opening.target>}: the reference of these tests.
    """
    config = backend.config
    resource = joinPath(config.path, frontend.remainder)
    query = "&".join(q for q in (config.query, frontend.query) if q)
    if query:
        resource += "?" + query
    return resource


class _General:
    """
    An admission's answers without its quick form: the upstream request
    is made the general way.
    """

    def __init__(self, admission: Admission) -> None:
        self.clientAddress = admission.clientAddress
        self.forwardedHeaders = admission.forwardedHeaders


def _proxied(source: str | None) -> ProxyProtocolWrapper:
    """
    @param source: The client address a PROXY header gave, or L{None} for
        a header without one (C{UNKNOWN}, C{LOCAL}).
    @return: A client's transport that read such a header.
    """
    wrapper = ProxyProtocolWrapper.__new__(ProxyProtocolWrapper)
    wrapper._read = True
    wrapper._source = None if source is None else object()  # type: ignore[assignment]
    return wrapper


_PEERS = [
    "192.0.2.7",
    "10.1.2.3",
    "127.0.0.1",
    "2001:db8::5",
    "::1",
    "fe80::1%eth0",
    "unix",
]

_HOSTS = [
    "relay.example",
    "relay.example:8443",
    "[2001:db8::1]:8080",
    "127.0.0.1:8080",
    "a b",
    'q"uote\\',
    "",
    "\xe9t\xe9.example",
]


def _case(rng: random.Random, name: str) -> str:
    return rng.choice([name, name.lower(), name.upper()])


def _fields(rng: random.Random) -> list[tuple[str, str]]:
    """
    @return: The fields of a random client's request: the handshake's,
        sometimes others a browser sends, forwarding fields, claimed ones,
        names with C{_}, repeated fields, subprotocols, extension offers,
        a C{Connection} that lists a further field.
    """
    fields: list[tuple[str, str]] = []
    for _ in range(rng.choice([0, 1, 1, 1, 2])):
        fields.append((_case(rng, "Host"), rng.choice(_HOSTS)))
    fields.append(("Upgrade", "websocket"))
    fields.append(
        (
            "Connection",
            rng.choice(["Upgrade", "upgrade", "keep-alive, Upgrade", "Upgrade, X-Hop"]),
        )
    )
    fields.append(("Sec-WebSocket-Key", "AQIDBAUGBwgJCgsMDQ4PEA=="))
    fields.append(("Sec-WebSocket-Version", "13"))
    optional = [
        ("Origin", "https://relay.example"),
        ("User-Agent", "Mozilla/5.0 (X11; Linux x86_64)"),
        ("Cookie", "a=b; c=d"),
        ("X-Hop", "hop"),
        ("X-Forwarded-For", "198.51.100.1, 10.0.0.9"),
        ("X-Forwarded-For", "203.0.113.4"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "front.example"),
        ("X-Real-IP", "198.51.100.1"),
        ("Forwarded", "for=198.51.100.1;proto=https"),
        ("X-Forwarded-Port", "443"),
        ("True-Client-IP", "198.51.100.9"),
        ("X_Forwarded_For", "6.6.6.6"),
        ("X_Custom", "x"),
        ("Sec-WebSocket-Protocol", "chat, superchat"),
        ("Sec-WebSocket-Protocol", "v2.json"),
        ("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits"),
        ("Sec-WebSocket-Extensions", "x-webkit-deflate-frame"),
        ("Keep-Alive", "timeout=5"),
        ("Authorization", "Bearer t"),
        ("Accept-Language", "fr, \xe9"),
    ]
    if rng.random() < 0.6:
        fields += rng.sample(optional, rng.randint(1, 8))
    rng.shuffle(fields)
    return [(_case(rng, n), v) for n, v in fields]


def _client(rng: random.Random) -> _Frontend:
    """
    @return: A random client's leg, its request parsed (sometimes then
        changed as an authorizer's C{withHeaders} does).
    """
    lines = [f"{n}: {v}" for n, v in _fields(rng)]
    data = "\r\n".join(["GET /x HTTP/1.1", *lines]).encode("latin-1")
    head = parseHead(data)
    if rng.random() < 0.2:
        head = withHeaders(
            head,
            rng.choice([[("X-User", "ann")], [("Authorization", "Basic eA==")], []]),
            rng.choice([["Cookie"], ["authorization"], []]),
        )
    peer = rng.choice(_PEERS)
    transport = rng.choice([_Transport(), _Transport(), _proxied(peer), _proxied(None)])
    return _Frontend(
        head,
        peer,
        transport,
        rng.random() < 0.3,
        rng.choice(["", "", "/a", "/a/b%20c"]),
        rng.choice(["", "", "q=1", "a=1&b=\xe9"]),
        rng.random() < 0.5,
    )


def _backend(rng: random.Random) -> Backend:
    """
    @return: A backend with a random URL path and query.
    """
    return Backend(
        replace(
            _BACKEND,
            path=rng.choice(["/", "/", "/ws", "/ws/", "/\u2603"]),
            query=rng.choice(["", "", "k=v"]),
        )
    )


def _sent(resource: str, backend: Backend, headers: RequestHeaders) -> bytes:
    """
    @return: The request head a plain leg sends for C{resource} and
        C{headers} (its key L{_KEY}).
    """
    return buildRequest(resource, backend.hostHeader(), _KEY, headers)


def _passthrough(head: Any, peer: str, secure: bool) -> tuple[str, Backend, Any]:
    """
    @return: The request target, the backend and the header fields of a
        passthrough request for C{head} from C{peer}, whom the relay does
        not trust.
    """
    frontend: Any = _Frontend(head, peer, _Transport(), secure, "", "", False)
    admission = Admission(Clock(), _config(), None, len, None, None)  # type: ignore[arg-type]
    backend = Backend(_BACKEND)
    resource, headers = upstreamRequest(frontend, admission, "passthrough", backend)
    return resource, backend, headers


class QuickRequestTests(SynchronousTestCase):
    """
    L{upstreamRequest}'s quick form of a passthrough request is its general
    form, written otherwise.
    """

    def test_random(self) -> None:
        """
        On many random clients (with and without forwarding fields,
        trusted and untrusted peers, IPv4 and IPv6, PROXY-protocol
        addresses, subprotocols, extension offers, fields an authorizer
        set), on both data paths, the backend gets the same request
        target and the same head byte for byte, and its leg the same
        extension handling, as the general form makes them; and the quick
        form was taken for most passthrough requests.
        """
        rng = random.Random(6455)
        admissions = [
            Admission(Clock(), _config(trusted), None, len, None, None)  # type: ignore[arg-type]
            for trusted in ["", "10.0.0.0/8, ::1", "0.0.0.0/0, ::/0", "192.0.2.7"]
        ]
        quick = 0
        for _ in range(5000):
            frontend: Any = _client(rng)
            backend = _backend(rng)
            admission = rng.choice(admissions)
            dataPath = rng.choice(["passthrough", "passthrough", "message"])
            resource, headers = upstreamRequest(frontend, admission, dataPath, backend)
            expected, general = upstreamRequest(
                frontend,
                _General(admission),  # type: ignore[arg-type]
                dataPath,
                backend,
            )
            self.assertNotIsInstance(general, RequestLines)
            self.assertEqual(resource, expected)
            self.assertEqual(resource, _oldTarget(backend, frontend))
            self.assertEqual(
                _sent(resource, backend, headers),
                _oldBuildRequest(resource, backend.hostHeader(), _KEY, general),
            )
            self.assertEqual(
                (headers.extensions, headers.plain),
                (general.extensions, general.plain),
            )
            if isinstance(headers, RequestLines):
                quick += 1
                self.assertEqual(dataPath, "passthrough")
        self.assertGreater(quick, 2000)

    def test_storm(self) -> None:
        """
        A client that sent the handshake's fields only, from an address
        the relay does not trust, gets the quick form, and the backend
        gets the relay's forwarding fields after the handshake's, and the
        client's key.
        """
        head = parseHead(
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: AQIDBAUGBwgJCgsMDQ4PEA==\r\n"
            b"Sec-WebSocket-Version: 13"
        )
        resource, backend, headers = _passthrough(head, "127.0.0.1", False)
        self.assertIsInstance(headers, RequestLines)
        self.assertEqual((headers.extensions, headers.plain), (NO_EXTENSIONS, True))
        # The client's key, which the plain leg sends on.
        self.assertEqual(headers.key, "AQIDBAUGBwgJCgsMDQ4PEA==")
        self.assertEqual(
            _sent(resource, backend, headers),
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1:9001\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: " + _KEY.encode() + b"\r\n"
            b"Sec-WebSocket-Version: 13\r\nX-Forwarded-For: 127.0.0.1\r\n"
            b"X-Forwarded-Proto: http\r\nX-Forwarded-Host: 127.0.0.1:8080\r\n"
            b"X-Real-IP: 127.0.0.1\r\n"
            b'Forwarded: for=127.0.0.1;proto=http;host="127.0.0.1:8080"\r\n\r\n',
        )

    def test_offers(self) -> None:
        """
        The quick form passes the client's subprotocols and extension
        offers on, the offers as sent, and says the backend's answer to
        them is the client's (L{END_TO_END}).
        """
        head = parseHead(
            b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nsec-websocket-extensions: a\r\n"
            b"Sec-WebSocket-Protocol: p1\r\nSec-WebSocket-Extensions: b; x=1\r\n"
            b"Sec-WebSocket-Protocol: p2"
        )
        _, backend, headers = _passthrough(head, "192.0.2.7", True)
        self.assertIsInstance(headers, RequestLines)
        self.assertEqual(headers.extensions, END_TO_END)
        self.assertTrue(
            _sent("/", backend, headers).endswith(
                b"Forwarded: for=192.0.2.7;proto=https;host=h\r\n"
                b"Sec-WebSocket-Protocol: p1, p2\r\n"
                b"sec-websocket-extensions: a\r\n"
                b"Sec-WebSocket-Extensions: b; x=1\r\n\r\n"
            )
        )

    def test_trustedAfterReload(self) -> None:
        """
        A peer that a reloaded configuration trusts gets the general form
        at once (its forwarding fields believed), and the quick form again
        once a later one no longer trusts it.
        """
        head = parseHead(b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 198.51.100.1")
        frontend: Any = _Frontend(head, "10.1.2.3", _Transport(), False, "", "", False)
        admission = Admission(Clock(), _config(), None, len, None, None)  # type: ignore[arg-type]
        self.assertIsNotNone(admission.forwardedLines(frontend, head))
        admission.configure(_config("10.0.0.0/8"))
        self.assertIsNone(admission.forwardedLines(frontend, head))
        backend = Backend(_BACKEND)
        _, headers = upstreamRequest(frontend, admission, "passthrough", backend)
        self.assertNotIsInstance(headers, RequestLines)
        self.assertIn(("X-Forwarded-For", "198.51.100.1, 10.1.2.3"), headers)
        admission.configure(_config())
        self.assertIsNotNone(admission.forwardedLines(frontend, head))

    def test_trustedKey(self) -> None:
        """
        The general form of a passthrough request (a peer the relay
        trusts) carries the client's key for the plain leg to send on, as
        the quick form does; the message path's request does not (its leg
        makes its own).
        """
        head = parseHead(
            b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key:  AQIDBAUGBwgJCgsMDQ4PEA== \r\n"
            b"Sec-WebSocket-Version: 13"
        )
        frontend: Any = _Frontend(head, "10.1.2.3", _Transport(), False, "", "", False)
        admission = Admission(Clock(), _config("10.0.0.0/8"), None, len, None, None)  # type: ignore[arg-type]
        backend = Backend(_BACKEND)
        _, headers = upstreamRequest(frontend, admission, "passthrough", backend)
        self.assertNotIsInstance(headers, RequestLines)
        self.assertEqual(headers.key, "AQIDBAUGBwgJCgsMDQ4PEA==")
        _, headers = upstreamRequest(frontend, admission, "message", backend)
        self.assertIsNone(headers.key)


class BuildRequestTests(SynchronousTestCase):
    """
    L{buildRequest} writes a list of fields and their lines alike.
    """

    def test_linesAndPairs(self) -> None:
        """
        Fields given as lines (a L{RequestLines}) are written as the same
        fields given as pairs, which are written as before.
        """
        pairs = [("X-A", "1"), ("x-b", "\xe9 \u2603"), ("X-C", "")]
        lines = RequestLines("X-A: 1\r\nx-b: \xe9 \u2603\r\nX-C: \r\n", NO_EXTENSIONS)
        expected = _oldBuildRequest("/p?q", "h:1", _KEY, pairs)
        self.assertEqual(buildRequest("/p?q", "h:1", _KEY, pairs), expected)
        self.assertEqual(buildRequest("/p?q", "h:1", _KEY, lines), expected)
        self.assertEqual(
            buildRequest("/", "h", _KEY, []), _oldBuildRequest("/", "h", _KEY, [])
        )


class _Leg:
    """
    What L{peerHost} reads of a client's leg.
    """

    peerAddress: str | None = None

    def __init__(self, transport: object) -> None:
        self.transport = transport


class PeerHostTests(SynchronousTestCase):
    """
    L{peerHost} reads a Twisted TCP server transport's peer without making
    its address object, and says what that object says.
    """

    def server(self, client: tuple[Any, ...]) -> tcp.Server:
        """
        @param client: The peer's address, as C{accept} gave it.
        @return: A Twisted TCP server transport of a connection from
            C{client}.
        """
        sockets = socket.socketpair()
        for s in sockets:
            self.addCleanup(s.close)
        return tcp.Server(sockets[0], Protocol(), client, None, 1, MemoryReactor())

    def test_tcp(self) -> None:
        """
        From a TCP server transport of an IPv4 or IPv6 peer, with or without
        a scope, L{peerHost} is C{getPeer().host}, kept on the leg.
        """
        for client in [
            ("192.0.2.7", 50000),
            ("2001:db8::5", 50000, 0, 0),
            ("fe80::1%lo", 50000, 0, 1),
        ]:
            transport = self.server(client)
            leg: Any = _Leg(transport)
            self.assertEqual(peerHost(leg), transport.getPeer().host)
            self.assertEqual(leg.peerAddress, client[0])
            transport.client = ("198.51.100.1", 1)
            self.assertEqual(peerHost(leg), client[0])

    def test_tcpAddressNotMade(self) -> None:
        """
        From a TCP server transport, Twisted's or the relay's own
        (L{LeanServer}), L{peerHost} does not ask C{getPeer}.
        """
        transport = self.server(("192.0.2.7", 50000))
        transport.getPeer = lambda: self.fail("getPeer called")  # type: ignore[method-assign]
        self.assertEqual(peerHost(_Leg(transport)), "192.0.2.7")  # type: ignore[arg-type]
        sockets = socket.socketpair()
        for s in sockets:
            self.addCleanup(s.close)
        lean = LeanServer(
            sockets[0], Protocol(), ("2001:db8::5", 1, 0, 0), None, 1, MemoryReactor()
        )
        self.assertEqual(lean.getPeer().host, "2001:db8::5")
        lean.getPeer = lambda: self.fail("getPeer called")  # type: ignore[method-assign]
        self.assertEqual(peerHost(_Leg(lean)), "2001:db8::5")  # type: ignore[arg-type]

    def test_others(self) -> None:
        """
        From another transport, L{peerHost} asks C{getPeer}: its host, or
        C{unix} for an address without one (a Unix socket's, a Unix
        server transport's, which is a TCP server transport's subclass).
        """
        leg: Any = _Leg(StringTransport(peerAddress=IPv6Address("TCP", "::1", 1)))
        self.assertEqual(peerHost(leg), "::1")
        leg = _Leg(StringTransport(peerAddress=UNIXAddress(None)))
        self.assertEqual(peerHost(leg), "unix")
        sockets = socket.socketpair(socket.AF_UNIX)
        for s in sockets:
            self.addCleanup(s.close)
        server = unix.Server(sockets[0], Protocol(), b"", None, 1, MemoryReactor())
        leg = _Leg(server)
        self.assertEqual(peerHost(leg), "unix")
