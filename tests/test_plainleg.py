"""
Tests for L{wsrelay.ws.plainleg}: the passthrough data path's upstream
leg, a plain protocol, in memory.
"""

from __future__ import annotations

import base64
import hashlib
import os
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from wsrelay.proxy.pairing import startPipe
from wsrelay.ws._autobahn import FIRED
from wsrelay.ws.plainleg import CLOSED, KEYS, OPEN, KeyPool, PlainUpstream
from wsrelay.ws.response import (
    END_TO_END,
    NO_EXTENSIONS,
    UpstreamError,
    UpstreamRefused,
)

_MAGIC = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


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
        digest = hashlib.sha1(leg.websocket_key + _MAGIC).digest()
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
        self.assertIn(b"\r\nSec-WebSocket-Key: " + leg.websocket_key + b"\r\n", head)
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
        leg.websocket_key = b"c29tZSBvdGhlciBrZXkgISE="
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
                leg.websocket_key = b"dGhlIHNhbXBsZSBub25jZQ=="
                leg.dataReceived(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
                    + accept
                    + b"\r\n"
                    + extra
                    + b"\r\n"
                )
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
        keys = {tests.connect()[0].websocket_key for _ in range(300)}
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
