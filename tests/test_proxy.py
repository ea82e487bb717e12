"""
Proxy mode over real loopback sockets, with C{websockets} clients and
backends on both sides of the relay.
"""

from __future__ import annotations

import socket
import threading
import unittest
from typing import Any

from twisted.internet import reactor, task
from twisted.trial.unittest import TestCase
from websockets.exceptions import InvalidStatus

from tests.support import (
    TIMEOUT,
    client,
    inThread,
    noDelay,
    startBackend,
    startRelay,
)
from tests.support.clients import closedPort, closeOf, rawExchange, rawRequest
from tests.support.relays import buffered, chatSession, paused
from tests.support.waiting import waitFor


def silentBackend(testCase: Any) -> socket.socket:
    """
    A loopback socket that accepts connections and never answers, closed
    at the end of C{testCase}.
    """
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(5)
    testCase.addCleanup(silent.close)
    return silent


class HandshakeTests(TestCase):
    """
    The client's handshake is answered with the backend's.
    """

    dataPath = "message"

    async def test_headersForwarded(self) -> None:
        """
        End-to-end headers reach the backend; hop-by-hop ones do not; the
        C{X-Forwarded-*} fields are the relay's (the client's own
        C{X-Forwarded-For} is dropped: the peer is not a trusted proxy, see
        L{tests.test_edge.ForwardedHeaderTests}); C{Host} is the backend's.
        """
        b = startBackend(self)
        _, port = await startRelay(
            self, f"[relay]\n[route:chat]\npath = /chat\nbackends = {b.url}\n"
        )

        def run() -> str:
            headers = {
                "Origin": "https://app.example",
                "Cookie": "session=abc",
                "Authorization": "Bearer t0k",
                "X-Custom": "1",
                "X-Forwarded-For": "203.0.113.9",
                "Keep-Alive": "timeout=5",
            }
            with client(
                port, "/chat", additional_headers=headers, user_agent_header="ua/1"
            ) as c:
                c.send("headers")
                return str(c.recv(TIMEOUT))

        lines = (await inThread(run)).split("\n")
        got = dict(line.split(": ", 1) for line in lines)
        self.assertEqual(got["Origin"], "https://app.example")
        self.assertEqual(got["Cookie"], "session=abc")
        self.assertEqual(got["Authorization"], "Bearer t0k")
        self.assertEqual(got["User-Agent"], "ua/1")
        self.assertEqual(got["X-Custom"], "1")
        self.assertEqual(got["X-Forwarded-For"], "127.0.0.1")
        self.assertEqual(got["X-Forwarded-Proto"], "http")
        self.assertEqual(got["X-Forwarded-Host"], f"127.0.0.1:{port}")
        self.assertEqual(got["Host"], f"127.0.0.1:{b.port}")
        self.assertNotIn("Keep-Alive", got)

    async def test_compression(self) -> None:
        """
        A client offering permessage-deflate to a backend that declines it:
        on the message path the relay accepts the client's offer on the
        client leg and offers permessage-deflate of its own to the backend
        (C{compression = on} by default); on the passthrough path the
        client's offer reaches the backend as it was, and the backend's
        answer (none here) the client (see the data-path table in
        docs/architecture.md).
        """
        b = startBackend(self)
        _, port = await startRelay(
            self, f"[relay]\n[route:chat]\npath = /chat\nbackends = {b.url}\n"
        )

        def run() -> tuple[dict[str, str], Any, Any]:
            with client(port, "/chat", compression="deflate") as c:
                c.send("headers")
                lines = str(c.recv(TIMEOUT)).split("\n")
                offer = c.request.headers.get("Sec-WebSocket-Extensions")
                answer = c.response.headers.get("Sec-WebSocket-Extensions")
                return dict(line.split(": ", 1) for line in lines), offer, answer

        seen, offered, answered = await inThread(run)
        if getattr(self, "dataPath", None) == "passthrough":
            self.assertEqual(seen["Sec-WebSocket-Extensions"], offered)
            self.assertIsNone(answered)
        else:
            self.assertEqual(answered, "permessage-deflate")
            self.assertTrue(
                seen["Sec-WebSocket-Extensions"].startswith("permessage-deflate;"),
                seen["Sec-WebSocket-Extensions"],
            )
            self.assertNotEqual(seen["Sec-WebSocket-Extensions"], offered)

    async def test_pathAndQuery(self) -> None:
        """
        The path after the route's prefix and the query go to the backend
        URL's path; a prefix matches at segment boundaries only.
        """
        b = startBackend(self)
        _, port = await startRelay(
            self,
            f"[relay]\n[route:chat]\npath = /chat\nbackends = {b.url}base\n",
        )

        def run() -> tuple[str, int]:
            with client(port, "/chat/room/1?x=1&y=2") as c:
                c.send("path")
                path = str(c.recv(TIMEOUT))
            try:
                client(port, "/chatty")
            except InvalidStatus as e:
                return path, e.response.status_code
            return path, 0

        path, status = await inThread(run)
        self.assertEqual(path, "/base/room/1?x=1&y=2")
        self.assertEqual(status, 404)

    async def test_subprotocolFromBackend(self) -> None:
        """
        The subprotocol the backend picks is the one the client gets.
        """
        b = startBackend(self, subprotocols=["v2", "v3"])
        _, port = await startRelay(
            self, f"[relay]\n[route:chat]\npath = /chat\nbackends = {b.url}\n"
        )

        def run() -> str | None:
            with client(port, "/chat", subprotocols=["v1", "v2"]) as c:  # type: ignore[list-item]
                return c.subprotocol

        self.assertEqual(await inThread(run), "v2")

    async def test_refusalRelayed(self) -> None:
        """
        A backend's refusal reaches the client with its status, its
        end-to-end headers (repeated ones on their own lines) and its body.
        """
        b = startBackend(
            self,
            refuse=(
                401,
                [
                    ("WWW-Authenticate", 'Bearer realm="chat"'),
                    ("Set-Cookie", "a=1"),
                    ("Set-Cookie", "b=2"),
                    ("Retry-After", "30"),
                ],
                b"login first",
            ),
        )
        _, port = await startRelay(
            self, f"[relay]\n[route:chat]\npath = /chat\nbackends = {b.url}\n"
        )
        raw = await inThread(rawExchange, port, rawRequest(port))
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        self.assertTrue(lines[0].startswith("HTTP/1.1 401 "), lines[0])
        self.assertIn('WWW-Authenticate: Bearer realm="chat"', lines)
        self.assertIn("Set-Cookie: a=1", lines)
        self.assertIn("Set-Cookie: b=2", lines)
        self.assertIn("Retry-After: 30", lines)
        self.assertEqual(body, b"login first")

    async def test_unreachableTriesNext(self) -> None:
        """
        An unreachable backend is skipped for the next candidate.
        """
        b = startBackend(self)
        dead = closedPort()
        _, port = await startRelay(
            self,
            "[relay]\n[route:chat]\npath = /chat\nbalancer = first\n"
            f"backends = ws://127.0.0.1:{dead}/ {b.url}\n",
        )

        def run() -> str:
            with client(port, "/chat") as c:
                c.send("hi")
                return str(c.recv(TIMEOUT))

        self.assertEqual(await inThread(run), "hi")

    async def test_noneReachable502(self) -> None:
        """
        With no backend reachable the client gets 502; with none
        available at all, 503.
        """
        relay, port = await startRelay(
            self,
            "[relay]\n[route:chat]\npath = /chat\n"
            f"backends = ws://127.0.0.1:{closedPort()}/ ws://127.0.0.1:{closedPort()}/\n",
        )
        raw = await inThread(rawExchange, port, rawRequest(port))
        self.assertTrue(raw.startswith(b"HTTP/1.1 502 "), raw[:40])
        for backend in relay.routes.routes[0].backends:
            backend.healthy = False
        raw = await inThread(rawExchange, port, rawRequest(port))
        self.assertTrue(raw.startswith(b"HTTP/1.1 503 "), raw[:40])

    async def test_slowBackend504(self) -> None:
        """
        A backend that accepts TCP but never answers the handshake: the
        client gets 504 once the handshake budget is spent, and no 101
        before.
        """
        silent = silentBackend(self)
        _, port = await startRelay(
            self,
            "[relay]\nhandshake_timeout = 1\nconnect_timeout = 0.4\n"
            f"[route:chat]\npath = /chat\nbackends = ws://127.0.0.1:{silent.getsockname()[1]}/\n",
        )
        raw = await inThread(rawExchange, port, rawRequest(port))
        self.assertTrue(raw.startswith(b"HTTP/1.1 504 "), raw[:40])

    async def test_clientGivesUp(self) -> None:
        """
        A client that leaves while its upstream is still connecting leaves
        no upstream connection behind.
        """
        silent = silentBackend(self)
        relay, port = await startRelay(
            self,
            "[relay]\nhandshake_timeout = 30\nconnect_timeout = 30\n"
            f"[route:chat]\npath = /chat\nbackends = ws://127.0.0.1:{silent.getsockname()[1]}/\n",
        )

        def run() -> bytes:
            with socket.create_connection(("127.0.0.1", port), TIMEOUT) as c:
                c.sendall(rawRequest(port))
                silent.settimeout(TIMEOUT)
                upstream, _ = silent.accept()
                upstream.settimeout(TIMEOUT)
                data = b""
                while b"\r\n\r\n" not in data:
                    data += upstream.recv(65536)
            # The client is gone: the relay must close its upstream.
            with upstream:
                try:
                    while chunk := upstream.recv(65536):
                        data += chunk
                except ConnectionResetError:
                    pass
                return data

        request = await inThread(run)
        self.assertIn(b"GET / HTTP/1.1", request)
        await waitFor(lambda: not relay.sessions)

    async def test_plainRequests(self) -> None:
        """
        A plain HTTP request gets 426, an unknown path 404, garbage 400,
        C{/healthz} 200, an oversized head 431; none of them disturbs an
        open connection.
        """
        b = startBackend(self)
        _, port = await startRelay(
            self,
            "[relay]\nmax_header_size = 2048\n"
            f"[route:chat]\npath = /chat\nbackends = {b.url}\n",
        )

        def run() -> list[bytes]:
            with client(port, "/chat") as c:
                answers = [
                    rawExchange(port, b"GET /chat HTTP/1.1\r\nHost: x\r\n\r\n"),
                    rawExchange(port, rawRequest(port, "/nowhere")),
                    rawExchange(port, b"\x16\x03\x01garbage\r\n\r\n"),
                    rawExchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"),
                    rawExchange(
                        port, rawRequest(port, extra="X-Big: " + "a" * 4000 + "\r\n")
                    ),
                ]
                c.send("still here")
                answers.append(c.recv(TIMEOUT).encode())
                return answers

        answers = await inThread(run)
        self.assertTrue(answers[0].startswith(b"HTTP/1.1 426 "), answers[0][:40])
        self.assertIn(b"Upgrade: websocket", answers[0])
        self.assertTrue(answers[1].startswith(b"HTTP/1.1 404 "), answers[1][:40])
        self.assertTrue(answers[2].startswith(b"HTTP/1.1 400 "), answers[2][:40])
        self.assertTrue(answers[3].startswith(b"HTTP/1.1 200 "), answers[3][:40])
        self.assertTrue(answers[4].startswith(b"HTTP/1.1 431 "), answers[4][:40])
        self.assertEqual(answers[5], b"still here")


class MessageTests(TestCase):
    """
    Messages pass unchanged both ways.
    """

    dataPath = "message"

    async def test_sizesAndOrder(self) -> None:
        """
        Text and binary messages from 0 bytes to C{max_message_size} come
        back unchanged and in order, fragmented ones too; UTF-8 stays valid.
        """
        b = startBackend(self)
        size = 1 << 20
        _, port = await startRelay(
            self,
            f"[relay]\nmax_message_size = {size}\n[route:chat]\npath = /chat\n"
            f"backends = {b.url}\n",
        )
        sizes = [0, 1, 125, 126, 65535, 65536, size]

        def run() -> None:
            with client(port, "/chat") as c:
                for n in sizes:
                    data = bytes(i % 251 for i in range(n))
                    c.send(data)
                    self.assertEqual(c.recv(TIMEOUT), data)
                    text = ("é€😀x" * (n // 10 + 1))[: n // 4]
                    c.send(text)
                    self.assertEqual(c.recv(TIMEOUT), text)
                c.send(["frag", "mented ", "ünïcode"])
                self.assertEqual(c.recv(TIMEOUT), "fragmented ünïcode")
                for i in range(200):
                    c.send(str(i))
                self.assertEqual(
                    [c.recv(TIMEOUT) for i in range(200)], [str(i) for i in range(200)]
                )

        await inThread(run)

    async def test_noDelay(self) -> None:
        """
        Both legs' sockets have TCP_NODELAY: a message forwarded in several
        frames (several writes) does not wait for delayed ACKs.
        """
        _, session, _ = await chatSession(self)
        for leg in (session.frontend, session.upstream):
            self.assertEqual(noDelay(leg.transport), 1, leg)

    async def test_handshakeForgotten(self) -> None:
        """
        Once the client has its 101, neither leg keeps the opening
        handshake's texts (they were a fifth of a held connection's
        memory), and messages still flow.  (The passthrough data path's
        upstream, a plain leg, never had Autobahn's.)
        """
        _, session, c = await chatSession(self)
        up = session.upstream
        assert up is not None
        for leg in (session.frontend, up):
            for name in ("http_headers", "http_request_data", "http_response_data"):
                self.assertIsNone(getattr(leg, name, None), (leg, name))
        self.assertEqual((up.requestHeaders, up.responseHeaders), ([], []))
        await inThread(c.send, "again")
        self.assertEqual(await inThread(c.recv, TIMEOUT), "again")

    async def test_pingPerHop(self) -> None:
        """
        The relay answers a client's ping itself.
        """
        b = startBackend(self)
        _, port = await startRelay(
            self, f"[relay]\n[route:chat]\npath = /chat\nbackends = {b.url}\n"
        )

        def run() -> float:
            with client(port, "/chat") as c:
                return float(c.ping(b"p").wait(TIMEOUT) or 0) + 1

        self.assertGreater(await inThread(run), 0)


CODES = [
    1000,
    1001,
    1002,
    1003,
    1007,
    1008,
    1009,
    1010,
    1011,
    1012,
    1013,
    1014,
    3000,
    4999,
]


class CloseTests(TestCase):
    """
    Close codes and reasons pass unchanged both ways.
    """

    dataPath = "message"

    async def test_clientCodes(self) -> None:
        """
        Every sendable code a client closes with reaches the backend with
        its reason.
        """
        b = startBackend(self)
        _, port = await startRelay(
            self, f"[relay]\n[route:chat]\npath = /chat\nbackends = {b.url}\n"
        )

        def run() -> None:
            for code in CODES:
                with client(port, "/chat") as c:
                    c.close(code, f"bye {code}")

        await inThread(run)
        await b.whenClosed(len(CODES))
        self.assertEqual(sorted(b.closes), [(c, f"bye {c}") for c in CODES])

    async def test_backendCodes(self) -> None:
        """
        Every sendable code a backend closes with reaches the client with
        its reason.
        """
        b = startBackend(self)
        _, port = await startRelay(
            self, f"[relay]\n[route:chat]\npath = /chat\nbackends = {b.url}\n"
        )

        def run() -> list[tuple[int | None, str | None]]:
            result = []
            for code in CODES:
                with client(port, "/chat") as c:
                    c.send(f"close {code} reason {code}")
                    result.append(closeOf(c))
            return result

        self.assertEqual(await inThread(run), [(c, f"reason {c}") for c in CODES])

    async def test_backendVanishes(self) -> None:
        """
        With C{failover = close}, a backend that drops without a close
        frame gives the client 1014.
        """
        b = startBackend(self)
        _, port = await startRelay(
            self, f"[relay]\n[route:chat]\npath = /chat\nbackends = {b.url}\n"
        )

        def run() -> tuple[int | None, str | None]:
            with client(port, "/chat") as c:
                c.send("vanish")
                return closeOf(c)

        code, reason = await inThread(run)
        self.assertEqual(code, 1014)

    async def test_reconnect(self) -> None:
        """
        With C{failover = reconnect}, the client stays connected when its
        backend vanishes: a new upstream opens to another backend with the
        same request, and what the client sends meanwhile arrives in order.
        """
        b1 = startBackend(self)
        gate = threading.Event()
        b2 = startBackend(self, gate=gate)
        relay, port = await startRelay(
            self,
            "[relay]\n[route:chat]\npath = /chat\nfailover = reconnect\n"
            "balancer = first\n"
            f"backends = {b1.url} {b2.url}\n",
        )

        def run() -> list[str]:
            with client(port, "/chat/x") as c:
                c.send("one")
                first = str(c.recv(TIMEOUT))
                c.send("vanish")
                # The relay connects to b2 once it noticed the loss; b2
                # holds its handshake until the messages are sent, so they
                # are buffered.
                assert b2.requested.wait(TIMEOUT), "backend loss not noticed"
                assert any(s.failover.buffer is not None for s in list(relay.sessions))
                for i in range(50):
                    c.send(f"m{i}")
                c.send("path")
                gate.set()
                return [first] + [str(c.recv(TIMEOUT)) for i in range(51)]

        got = await inThread(run)
        self.assertEqual(got, ["one"] + [f"m{i}" for i in range(50)] + ["/x"])
        self.assertEqual((b1.connections, b2.connections), (1, 1))


class BackpressureTests(TestCase):
    """
    A side that reads slowly pauses the other instead of growing buffers.
    """

    dataPath = "message"

    COUNT = 400
    SIZE = 65536
    BOUND = 4 * 1024 * 1024

    async def test_slowClient(self) -> None:
        """
        While the backend floods a client that does not read, the relay
        stops reading from the backend and its buffer stays bounded; every
        message arrives in order once the client reads.
        """
        b = startBackend(self)
        relay, port = await startRelay(
            self, f"[relay]\n[route:chat]\npath = /chat\nbackends = {b.url}\n"
        )
        c = await inThread(client, port, "/chat", max_queue=4)
        self.addCleanup(inThread, c.close)
        await inThread(c.send, f"flood {self.COUNT} {self.SIZE}")
        await waitFor(lambda: len(relay.sessions) == 1)
        (session,) = relay.sessions
        await waitFor(
            lambda: session.upstream is not None and paused(session.upstream.transport)
        )
        peak = 0
        for _i in range(20):
            peak = max(peak, buffered(session.frontend.transport))
            await task.deferLater(reactor, 0.01, lambda: None)
        self.assertLess(peak, self.BOUND)
        self.assertLess(session.frontend.messagesOut, self.COUNT)

        def drain() -> list[int]:
            return [
                int.from_bytes(c.recv(TIMEOUT)[:4], "big") for i in range(self.COUNT)
            ]

        self.assertEqual(await inThread(drain), list(range(self.COUNT)))

    async def test_slowBackend(self) -> None:
        """
        While a client floods a backend that does not read, the relay stops
        reading from the client and its buffer stays bounded; the backend
        gets every message once it reads.
        """
        b = startBackend(self)
        relay, port = await startRelay(
            self, f"[relay]\n[route:chat]\npath = /chat\nbackends = {b.url}\n"
        )
        c = await inThread(client, port, "/chat")
        self.addCleanup(inThread, c.close)
        await inThread(c.send, "sink")
        await inThread(c.send, "stall")
        payload = b"x" * self.SIZE
        sending = inThread(lambda: [c.send(payload) for i in range(self.COUNT)])
        await waitFor(lambda: len(relay.sessions) == 1)
        (session,) = relay.sessions
        await waitFor(lambda: paused(session.frontend.transport))
        peak = 0
        for _i in range(20):
            assert session.upstream is not None
            peak = max(peak, buffered(session.upstream.transport))
            await task.deferLater(reactor, 0.01, lambda: None)
        self.assertLess(peak, self.BOUND)
        self.assertLess(session.frontend.messagesIn, self.COUNT)
        b.stall.set()
        await sending

        def count() -> str:
            c.send("count")
            return str(c.recv(TIMEOUT))

        self.assertEqual(await inThread(count), str(self.COUNT))


class PassthroughHandshakeTests(HandshakeTests):
    """
    L{HandshakeTests} with C{data_path = passthrough}.
    """

    dataPath = "passthrough"


class PassthroughMessageTests(MessageTests):
    """
    L{MessageTests} with C{data_path = passthrough}.
    """

    dataPath = "passthrough"


class PassthroughCloseTests(CloseTests):
    """
    L{CloseTests} with C{data_path = passthrough}.
    """

    dataPath = "passthrough"

    @unittest.skip("failover = reconnect needs data_path = message")
    async def test_reconnect(self) -> None:
        """
        Not on this data path.
        """


class PassthroughBackpressureTests(BackpressureTests):
    """
    L{BackpressureTests} with C{data_path = passthrough}.
    """

    dataPath = "passthrough"
