"""
Tests for L{wsrelay.ws.plainleg}: the passthrough data path's upstream
leg, a plain protocol, in memory.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.support.memory import BACKEND_A, Network, RawClient, request
from wsrelay.proxy.pairing import startPipe
from wsrelay.ws._autobahn import FIRED
from wsrelay.ws.accept import acceptKey
from wsrelay.ws.frontend import FrontendProtocol
from wsrelay.ws.handshake import RequestLines
from wsrelay.ws.plainleg import CLOSED, KEYS, OPEN, KeyPool, PlainUpstream
from wsrelay.ws.response import (
    END_TO_END,
    NO_EXTENSIONS,
    UpstreamError,
    UpstreamRefused,
)

_MAGIC = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

#: A relay with a passthrough route to backend A.
_CONFIG = (
    "[relay]\nlisten = tcp:0\nping_interval = 0\n"
    "[route:chat]\npath = /chat\ndata_path = passthrough\n"
    f"backends = ws://{BACKEND_A[0]}:{BACKEND_A[1]}/base\n"
)


class _Listener:
    """
    Records the legs whose connection closed.
    """

    def __init__(self) -> None:
        self.closed: list[Any] = []

    def legClosed(self, leg: Any) -> None:
        self.closed.append(leg)


class _Path:
    """
    Records what a data path is given.
    """

    def __init__(self) -> None:
        self.received: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)


class PlainUpstreamTests(SynchronousTestCase):
    """
    L{PlainUpstream} sends the request, reads the answer as Autobahn's
    upstream leg does a plain one, and then hands its bytes on.
    """

    def connect(
        self, extensions: str = NO_EXTENSIONS, offered: tuple[str, ...] = ()
    ) -> tuple[PlainUpstream, StringTransport, Deferred[Any]]:
        """
        @return: A leg connected to a transport in memory, its request
            sent, and its C{opened}.
        """
        leg = PlainUpstream()
        opened: Deferred[Any] = Deferred()
        leg.__dict__.update(
            resource="/chat?x=1",
            hostHeader="backend:8080",
            requestHeaders=[("X-Forwarded-For", "192.0.2.1")],
            offered=offered,
            extensions=extensions,
            opened=opened,
        )
        transport = StringTransport()
        leg.makeConnection(transport)
        return leg, transport, opened

    def accept(self, leg: PlainUpstream, extra: bytes = b"") -> bytes:
        """
        @return: A plain 101 for C{leg}'s key, with C{extra} header lines.
        """
        digest = hashlib.sha1(leg.requestKey.encode() + _MAGIC).digest()
        return (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
            + base64.b64encode(digest)
            + b"\r\nX-Backend: b1\r\n"
            + extra
            + b"\r\n"
        )

    def test_request(self) -> None:
        """
        The request head goes out as the leg connects: the target, C{Host},
        the handshake's fields with a fresh key, the rewritten fields.
        """
        leg, transport, opened = self.connect()
        head = transport.value()
        self.assertTrue(head.startswith(b"GET /chat?x=1 HTTP/1.1\r\n"), head)
        self.assertIn(b"\r\nHost: backend:8080\r\n", head)
        self.assertIn(f"\r\nSec-WebSocket-Key: {leg.requestKey}\r\n".encode(), head)
        self.assertIn(b"\r\nX-Forwarded-For: 192.0.2.1\r\n", head)
        self.assertTrue(head.endswith(b"\r\n\r\n"))
        self.assertNoResult(opened)

    def test_open(self) -> None:
        """
        A plain 101, in pieces: the leg opens with the backend's end-to-end
        fields, its extension answer (end to end) and subprotocol; what
        came after the head waits for the pipe, and once the pipe's
        direction is the data path, bytes go there.
        """
        leg, transport, opened = self.connect(END_TO_END, ("chat",))
        answer = self.accept(
            leg,
            b"Sec-WebSocket-Protocol: chat\r\n"
            b"Sec-WebSocket-Extensions: permessage-deflate\r\n",
        )
        leg.dataReceived(answer[:20])
        self.assertNoResult(opened)
        leg.dataReceived(answer[20:] + b"\x81\x02hi")
        self.assertIs(self.successResultOf(opened), leg)
        self.assertEqual(leg.state, OPEN)
        self.assertEqual(leg.responseHeaders, [("X-Backend", "b1")])
        self.assertEqual(leg.extensionsAnswer, ("permessage-deflate",))
        self.assertEqual(leg.websocket_protocol_in_use, "chat")
        self.assertEqual(leg.data, b"\x81\x02hi")
        leg.dataReceived(b"\x81\x01!")
        self.assertEqual(leg.data, b"\x81\x02hi\x81\x01!")
        path = leg.dataPath = _Path()
        leg.dataReceived(b"more")
        self.assertEqual(path.received, [b"more"])

    def test_openRest(self) -> None:
        """
        What follows a plain 101 in the same read, with no extension answer
        taken out of the head, waits for the pipe, all of it and only it.
        """
        leg, transport, opened = self.connect()
        leg.dataReceived(self.accept(leg) + b"\x81\x02hi")
        self.assertIs(self.successResultOf(opened), leg)
        self.assertEqual(leg.data, b"\x81\x02hi")

    def test_badAccept(self) -> None:
        """
        A 101 whose C{Sec-WebSocket-Accept} is not right for the key fails
        the attempt and drops the connection.
        """
        leg, transport, opened = self.connect()
        leg.requestKey = "c29tZSBvdGhlciBrZXkgISE="
        leg.dataReceived(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: xxx\r\n\r\n"
        )
        self.failureResultOf(opened, UpstreamError)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(leg.state, CLOSED)

    def test_rfcAccept(self) -> None:
        """
        The accept value checked is RFC 6455's (its example in 1.3), on the
        quick path for an ASCII head and on the general one for a head
        that is not: the right one opens, one character off fails.
        """
        for extra in (b"", "X-Name: caf\u00e9\r\n".encode()):
            for accept, works in (
                (b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", True),
                (b"s3pPLMBiTxaQ9kYGzzhZRbK+xOp=", False),
            ):
                leg, transport, opened = self.connect()
                leg.requestKey = "dGhlIHNhbXBsZSBub25jZQ=="
                leg.dataReceived(_answer(accept, extra))
                if works:
                    self.assertIs(self.successResultOf(opened), leg)
                else:
                    self.failureResultOf(opened, UpstreamError)

    def test_notOffered(self) -> None:
        """
        A subprotocol the client did not offer, or an extension answer
        when none was offered, fails the attempt.
        """
        for extra in (
            b"Sec-WebSocket-Protocol: other\r\n",
            b"Sec-WebSocket-Extensions: permessage-deflate\r\n",
        ):
            leg, transport, opened = self.connect(offered=("chat",))
            leg.dataReceived(self.accept(leg, extra))
            self.failureResultOf(opened, UpstreamError)
            self.assertTrue(transport.disconnecting)

    def test_refused(self) -> None:
        """
        A refusal is relayed with its status, fields and body, once the
        body is all there; then the connection is dropped.
        """
        leg, transport, opened = self.connect()
        leg.dataReceived(
            b"HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\nX-Why: no\r\n\r\nno"
        )
        self.assertNoResult(opened)
        leg.dataReceived(b"!\n")
        refused = self.failureResultOf(opened, UpstreamRefused).value
        self.assertEqual(
            (refused.status, refused.reason, refused.body), (403, "Forbidden", b"no!\n")
        )
        self.assertIn(("X-Why", "no"), refused.headers)
        self.assertTrue(transport.disconnecting)

    def test_lostDuringHandshake(self) -> None:
        """
        A connection lost before the answer fails the attempt; one lost
        during a refusal's body without a length relays what came.
        """
        leg, transport, opened = self.connect()
        leg.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(opened, UpstreamError)
        leg, transport, opened = self.connect()
        leg.dataReceived(b"HTTP/1.1 503 Busy\r\n\r\nlater")
        leg.connectionLost(Failure(ConnectionDone()))
        refused = self.failureResultOf(opened, UpstreamRefused).value
        self.assertEqual((refused.status, refused.body), (503, b"later"))

    def test_lostWhenOpen(self) -> None:
        """
        Once open, a lost connection is the listener's news; the leg then
        lets go of its listener, target and data path.
        """
        leg, transport, opened = self.connect()
        leg.dataReceived(self.accept(leg))
        listener = leg.listener = _Listener()
        leg.target = object()
        leg.dataPath = _Path()
        leg.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(listener.closed, [leg])
        self.assertEqual(leg.state, CLOSED)
        for name in ("listener", "target", "dataPath", "opened"):
            self.assertNotIn(name, vars(leg))

    def test_forgetHandshake(self) -> None:
        """
        Once paired, the request's and the response's parts go, and
        C{opened} reads as L{FIRED}.
        """
        leg, transport, opened = self.connect()
        leg.dataReceived(self.accept(leg))
        leg.forgetHandshake()
        for name in PlainUpstream._REQUEST + ("opened",):
            self.assertNotIn(name, vars(leg))
        self.assertIs(leg.opened, FIRED)

    def test_forgetHandshakeUnfired(self) -> None:
        """
        A leg that lets its handshake go before C{opened} fired keeps
        C{opened} (whoever fires it later still can).
        """
        leg, transport, opened = self.connect()
        leg.forgetHandshake()
        self.assertIs(leg.opened, opened)
        self.assertNotIn("requestHeaders", vars(leg))

    def test_closeWith(self) -> None:
        """
        C{closeWith} sends a masked close frame with the code, then closes.
        """
        leg, transport, opened = self.connect()
        leg.dataReceived(self.accept(leg))
        transport.clear()
        leg.closeWith(1001, b"bye")
        frame = transport.value()
        self.assertEqual(frame[:2], b"\x88\x85")
        self.assertEqual(leg.localCloseCode, 1001)
        self.assertTrue(transport.disconnecting)

    def test_writer(self) -> None:
        """
        The leg's writer writes to its transport, and is made once.
        """
        leg, transport, opened = self.connect()
        transport.clear()
        write = leg.writer()
        self.assertIs(leg.writer(), write)
        write(b"frame")
        self.assertEqual(transport.value(), b"frame")


class _Leg:
    """
    A client's leg that is no longer open, recording the close asked of it.
    """

    state = CLOSED
    current_frame = None
    closeRelayed = False

    def __init__(self) -> None:
        self.closes: list[tuple[int, bytes]] = []

    def closeWith(self, code: int, reason: bytes) -> None:
        self.closes.append((code, reason))


class NoMessagePathTests(SynchronousTestCase):
    """
    A plain leg whose pipe cannot start (the client's leg is not open) has
    no message path to fall back on.
    """

    def test_closed(self) -> None:
        """
        Both legs are closed with 1011, and no pipe is made.
        """
        tests = PlainUpstreamTests()
        leg, transport, opened = tests.connect()
        leg.dataReceived(tests.accept(leg))
        transport.clear()
        client = _Leg()
        holder = _Holder()
        startPipe(holder, client, leg)  # type: ignore[arg-type]
        self.assertIsNone(holder.pipe)
        self.assertEqual(client.closes, [(1011, b"relay error")])
        self.assertEqual(leg.localCloseCode, 1011)
        self.assertTrue(transport.disconnecting)


class _Holder:
    """
    Holds the pipe, if one is made.
    """

    pipe = None


class _Random:
    """
    Counts bytes out, and records each read.
    """

    def __init__(self) -> None:
        self.reads: list[int] = []
        self.next = 0

    def __call__(self, size: int) -> bytes:
        self.reads.append(size)
        data = bytes((self.next + i) % 256 for i in range(size))
        self.next += size
        return data


class KeyPoolTests(SynchronousTestCase):
    """
    L{KeyPool} cuts each key from its pool of random bytes once, and reads
    a new pool when it runs out or forgot its own.
    """

    def test_slices(self) -> None:
        """
        Each key is the base64 of the next 16 bytes of the pool, none used
        twice; the pool is read again when it has no 16 bytes left.
        """
        random = _Random()
        pool = KeyPool(size=40, random=random)
        keys = [pool.newKey() for _ in range(4)]
        self.assertEqual(
            [base64.b64decode(k) for k in keys],
            [bytes(range(0, 16)), bytes(range(16, 32)), bytes(range(40, 56))]
            + [bytes(range(56, 72))],
        )
        self.assertEqual(random.reads, [40, 40])
        self.assertTrue(all(len(k) == 24 and k.endswith(b"==") for k in keys))

    def test_forget(self) -> None:
        """
        After L{KeyPool.forget}, the next key is cut from a new pool, not
        from what was left of the old one.
        """
        random = _Random()
        pool = KeyPool(size=64, random=random)
        pool.newKey()
        pool.forget()
        self.assertEqual(base64.b64decode(pool.newKey()), bytes(range(64, 80)))
        self.assertEqual(random.reads, [64, 64])

    def test_legsKeys(self) -> None:
        """
        A leg sends a key from L{KEYS}, and the next leg another one.
        """
        tests = PlainUpstreamTests()
        keys = {tests.connect()[0].requestKey for _ in range(300)}
        self.assertEqual(len(keys), 300)
        self.assertTrue(all(len(base64.b64decode(k)) == 16 for k in keys))

    def test_fork(self) -> None:
        """
        A forked child does not cut its keys from the pool it inherited:
        its first key is none that the parent goes on to send.
        """
        KEYS.newKey()
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                os.close(read)
                os.write(write, KEYS.newKey())
            finally:
                os._exit(0)
        os.close(write)
        try:
            child = b""
            while len(child) < 24:
                chunk = os.read(read, 24)
                if not chunk:
                    break
                child += chunk
        finally:
            os.close(read)
            os.waitpid(pid, 0)
        self.assertEqual(len(child), 24)
        parents = {KEYS.newKey() for _ in range(KEYS.size // 16)}
        self.assertNotIn(child, parents)


#: RFC 6455's example key (1.3), and its accept value.
_RFC_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
_RFC_ACCEPT = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def _answer(accept: bytes, extra: bytes = b"") -> bytes:
    """
    @return: A plain 101 with C{accept} as its C{Sec-WebSocket-Accept}.
    """
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
        + accept
        + b"\r\n"
        + extra
        + b"\r\n"
    )


class _WrongBackend(Protocol):
    """
    A backend that answers any request with a 101 whose accept value is
    right for another key than the one it was sent.
    """

    def dataReceived(self, data: bytes) -> None:
        """
        Answer once the request is here.
        """
        if b"\r\n\r\n" in data:
            other = base64.b64encode(
                hashlib.sha1(b"c29tZSBvdGhlciBrZXkgISE=" + _MAGIC).digest()
            )
            self.transport.write(_answer(other))  # type: ignore[union-attr]


class _CookieBackend(Protocol):
    """
    A backend that accepts any request with fields of its own in its 101:
    by default two C{Set-Cookie}s and an C{X-Backend}.
    """

    def __init__(
        self,
        fields: bytes = b"Set-Cookie: a=1\r\nSet-Cookie: b=2\r\nX-Backend: one\r\n",
    ) -> None:
        self.fields = fields

    def dataReceived(self, data: bytes) -> None:
        """
        Answer once the request is here.
        """
        if b"\r\n\r\n" in data:
            key = re.search(rb"Sec-WebSocket-Key: (\S+)\r\n", data, re.I)
            assert key is not None
            accept = base64.b64encode(hashlib.sha1(key.group(1) + _MAGIC).digest())
            self.transport.write(  # type: ignore[union-attr]
                _answer(accept, self.fields)
            )


def _throughBackend(network: Network, backend: Protocol) -> RawClient:
    """
    @return: A client whose request went through the relay of C{network}
        to C{backend}, and whatever the relay answered it.
    """
    client = RawClient()
    network.pair(network.frontend(), client).clientIO.write(request())
    network.flush()
    host, port, factory, *_ = network.reactor.tcpClients.pop(0)
    network.reactor.connectors.pop(0)
    address = IPv4Address("TCP", host, port)
    network.pair(backend, factory.buildProtocol(address), address)
    network.flush()
    return client


class ForwardedKeyTests(SynchronousTestCase):
    """
    A plain leg given the client's key (L{RequestLines.key}) sends it on to the
    backend, and checks the backend's accept value against it: the value
    the client's 101 carries (L{acceptKey}).
    """

    def connect(self, key: str | None) -> tuple[PlainUpstream, StringTransport]:
        """
        @return: A leg given C{key} with its request's lines, connected to
            a transport in memory.
        """
        leg = PlainUpstream()
        leg.__dict__.update(
            requestHeaders=RequestLines("X-A: 1\r\n", NO_EXTENSIONS, key),
            opened=Deferred(),
        )
        transport = StringTransport()
        leg.makeConnection(transport)
        return leg, transport

    def test_sent(self) -> None:
        """
        The request carries the client's key, once, and the leg opens on
        the accept value that is right for it.
        """
        leg, transport = self.connect(_RFC_KEY)
        head = transport.value()
        self.assertEqual(head.count(b"Sec-WebSocket-Key: "), 1)
        self.assertIn(f"\r\nSec-WebSocket-Key: {_RFC_KEY}\r\n".encode(), head)
        self.assertIn(b"\r\nX-A: 1\r\n", head)
        leg.dataReceived(_answer(_RFC_ACCEPT))
        self.assertIs(self.successResultOf(leg.opened), leg)

    def test_noKey(self) -> None:
        """
        Lines without the client's key: the leg sends a fresh key of its
        own, and checks the answer against that one.
        """
        leg, transport = self.connect(None)
        self.assertEqual(len(base64.b64decode(leg.requestKey)), 16)
        self.assertNotEqual(leg.requestKey, _RFC_KEY)
        self.assertIn(
            f"Sec-WebSocket-Key: {leg.requestKey}\r\n".encode(), transport.value()
        )
        leg.dataReceived(_answer(_RFC_ACCEPT))
        self.failureResultOf(leg.opened, UpstreamError)

    def test_wrongAccept(self) -> None:
        """
        A 101 with the accept value of another key (a fresh one, as for a
        backend that did not read the one sent) fails the attempt, on the
        quick path (an ASCII head) and the general one (a head that is not),
        after a head of the same shape with the right value opened (so that
        the shape is known).
        """
        other = base64.b64encode(hashlib.sha1(KEYS.newKey() + _MAGIC).digest())
        for extra in (b"", "X-Name: caf\u00e9\r\n".encode()):
            leg, _ = self.connect(_RFC_KEY)
            leg.dataReceived(_answer(_RFC_ACCEPT, extra))
            self.successResultOf(leg.opened)
            leg, transport = self.connect(_RFC_KEY)
            leg.dataReceived(_answer(other, extra))
            self.failureResultOf(leg.opened, UpstreamError)
            self.assertEqual(leg.state, CLOSED)

    def test_acceptKeyLast(self) -> None:
        """
        L{acceptKey} keeps its last answer, for that key only: over keys
        asked in turn and again, each answer is the one for its key.
        """
        keys = [base64.b64encode(os.urandom(16)).decode() for _ in range(50)]
        for key in [_RFC_KEY, *keys, *keys[::-1], _RFC_KEY, _RFC_KEY, ""]:
            for _ in range(2):
                self.assertEqual(
                    acceptKey(key),
                    base64.b64encode(
                        hashlib.sha1(key.encode() + _MAGIC).digest()
                    ).decode(),
                )
        self.assertEqual(acceptKey(_RFC_KEY), _RFC_ACCEPT.decode())

    def test_relay(self) -> None:
        """
        Through the relay, the backend reads the client's key, and the
        client's 101 carries the accept value the backend's did, whether
        the client's leg answers the request itself or Autobahn does.
        """
        for plain in (True, False):
            if not plain:
                self.patch(
                    FrontendProtocol, "answerPlain", lambda self, screened: False
                )
            network = Network(self, _CONFIG)
            client = RawClient()
            network.pair(network.frontend(), client).clientIO.write(request())
            network.flush()
            backend, _ = network.acceptUpstream()
            network.flush()
            self.assertEqual(backend.request.headers["sec-websocket-key"], _RFC_KEY)
            self.assertTrue(client.received.startswith(b"HTTP/1.1 101 "))
            self.assertIn(
                b"\r\nSec-WebSocket-Accept: " + _RFC_ACCEPT + b"\r\n", client.received
            )

    def test_relayFields(self) -> None:
        """
        Through the relay, the fields of the backend's 101 reach the
        client's, repeated ones each in turn: for the first 101 of its
        shape, and for the next, which opens as the first did.
        """
        network = Network(self, _CONFIG)
        for _ in range(2):
            client = _throughBackend(network, _CookieBackend())
            self.assertTrue(
                client.received.startswith(b"HTTP/1.1 101 "), client.received
            )
            self.assertIn(
                b"\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nX-Backend: one\r\n",
                client.received,
            )

    def test_relayUTF8Field(self) -> None:
        """
        A field of the backend's 101 whose value is UTF-8 reaches the
        client's 101 byte for byte, whether the relay answers the client
        itself or through Autobahn's handshake.
        """
        field = "X-Name: café ✓\r\n".encode()
        for plain in (True, False):
            if not plain:
                self.patch(
                    FrontendProtocol, "answerPlain", lambda self, screened: False
                )
            network = Network(self, _CONFIG)
            for _ in range(2):
                client = _throughBackend(network, _CookieBackend(field))
                self.assertTrue(
                    client.received.startswith(b"HTTP/1.1 101 "), client.received
                )
                self.assertIn(b"\r\n" + field, client.received, plain)

    def test_relayWrongAccept(self) -> None:
        """
        Through the relay, a backend whose 101 has the accept value of
        another key than the client's gets no connection through: the
        client is answered 502.
        """
        network = Network(self, _CONFIG)
        client = _throughBackend(network, _WrongBackend())
        self.assertTrue(client.received.startswith(b"HTTP/1.1 502 "), client.received)
        self.assertEqual(network.relay.sessions, set())
