"""
Abuse limits over real sockets: connection counts, per-address handshake
rates, message rates, allowed origins, and one flooding address next to a
well-behaved one.
"""

from __future__ import annotations

import socket
import statistics
import threading
import time
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.support import TIMEOUT, client, inThread, startBackend, startRelay
from tests.support.clients import closeOf, rawRequest


def clientFrom(
    address: str, port: int, path: str = "/", **kwargs: Any
) -> ClientConnection:
    """
    Connect to the relay from a given loopback address (127.0.0.0/8 is
    all loopback on Linux).
    """
    sock = socket.socket()
    sock.bind((address, 0))
    sock.settimeout(TIMEOUT)
    sock.connect(("127.0.0.1", port))
    kwargs.setdefault("open_timeout", TIMEOUT)
    kwargs.setdefault("compression", None)
    kwargs.setdefault("legacy", True)
    return connect(f"ws://127.0.0.1:{port}{path}", sock=sock, **kwargs)


def status(address: str, port: int, **kwargs: Any) -> tuple[int, str | None]:
    """
    Try a handshake from C{address}; close at once.

    @return: 101, or the refusal's status, and its C{Retry-After}.
    """
    try:
        with clientFrom(address, port, **kwargs):
            return 101, None
    except InvalidStatus as e:
        return e.response.status_code, e.response.headers.get("Retry-After")


class ConnectionLimitTests(TestCase):
    """
    C{max_connections} and C{max_connections_per_ip}.
    """

    async def test_relayWide(self) -> None:
        """
        Beyond C{max_connections} open clients, a new one gets 503 with
        C{Retry-After}; once one leaves there is room again.
        """
        b = startBackend(self)
        _, port = await startRelay(
            self,
            f"[relay]\nmax_connections = 2\n[route:r]\npath = /\nbackends = {b.url}\n",
        )

        def run() -> list[tuple[int, str | None]]:
            first = client(port, legacy=True)
            second = client(port, legacy=True)
            results = [status("127.0.0.1", port)]
            first.close()
            deadline = time.monotonic() + TIMEOUT
            while (result := status("127.0.0.1", port))[0] != 101:
                assert time.monotonic() < deadline, result
            results.append(result)
            second.close()
            return results

        self.assertEqual(await inThread(run), [(503, "1"), (101, None)])

    async def test_perAddress(self) -> None:
        """
        Beyond C{max_connections_per_ip} from one address, a new client
        from it gets 429; other addresses are not affected.
        """
        b = startBackend(self)
        _, port = await startRelay(
            self,
            "[relay]\nmax_connections_per_ip = 2\n"
            f"[route:r]\npath = /\nbackends = {b.url}\n",
        )

        def run() -> list[tuple[int, str | None]]:
            held = [clientFrom("127.0.0.2", port, legacy=True) for _ in range(2)]
            try:
                return [status("127.0.0.2", port), status("127.0.0.3", port)]
            finally:
                for c in held:
                    c.close()

        self.assertEqual(await inThread(run), [(429, "1"), (101, None)])


class RateLimitTests(TestCase):
    """
    C{handshake_rate_per_ip} and C{max_messages_per_second}.
    """

    async def test_handshakeRate(self) -> None:
        """
        A third handshake within a second from one address gets 429; from
        another address it goes through; a second later there is room.
        """
        b = startBackend(self)
        clock = Clock()
        _, port = await startRelay(
            self,
            "[relay]\nhandshake_rate_per_ip = 2\n"
            f"[route:r]\npath = /\nbackends = {b.url}\n",
            clock=clock,
        )

        def burst() -> list[int]:
            return [status("127.0.0.2", port)[0] for _ in range(3)]

        self.assertEqual(await inThread(burst), [101, 101, 429])
        self.assertEqual((await inThread(status, "127.0.0.3", port))[0], 101)
        clock.advance(1)
        self.assertEqual((await inThread(burst))[:2], [101, 101])

    async def test_messageRateClose(self) -> None:
        """
        A client sending more than C{max_messages_per_second} within a
        second is closed with 1008; what it sent within the limit went on.
        """
        b = startBackend(self)
        clock = Clock()
        _, port = await startRelay(
            self,
            "[relay]\nmax_messages_per_second = 5\n"
            f"[route:r]\npath = /\nbackends = {b.url}\n",
            clock=clock,
        )

        def run() -> tuple[list[str], tuple[int | None, str | None]]:
            with client(port) as c:
                for i in range(5):
                    c.send(f"m{i}")
                echoed = [str(c.recv(TIMEOUT)) for _ in range(5)]
                try:
                    # The relay's 1008 may arrive before the last sends,
                    # which then fail: the close is read below either way.
                    for i in range(5, 8):
                        c.send(f"m{i}")
                    while True:
                        echoed.append(str(c.recv(TIMEOUT)))
                except ConnectionClosed:
                    pass
                return echoed, closeOf(c)

        echoed, (code, reason) = await inThread(run)
        self.assertEqual(code, 1008)
        self.assertEqual(reason, "message rate exceeded")
        self.assertEqual(echoed, [f"m{i}" for i in range(5)])

    async def test_messageRateDrop(self) -> None:
        """
        With C{message_rate_action = drop}, messages beyond the rate are
        dropped and the client stays; in the next second it may send again.
        """
        b = startBackend(self)
        clock = Clock()
        relay, port = await startRelay(
            self,
            "[relay]\nmax_messages_per_second = 5\nmessage_rate_action = drop\n"
            f"[route:r]\npath = /\nbackends = {b.url}\n",
            clock=clock,
        )
        c = await inThread(client, port, legacy=True)
        self.addCleanup(inThread, c.close)

        def send(n: int, start: int) -> None:
            for i in range(n):
                c.send(f"m{start + i}")

        def receive(n: int) -> list[str]:
            return [str(c.recv(TIMEOUT)) for _ in range(n)]

        await inThread(send, 8, 0)
        self.assertEqual(await inThread(receive, 5), [f"m{i}" for i in range(5)])
        clock.advance(1)
        await inThread(send, 1, 100)
        self.assertEqual(await inThread(receive, 1), ["m100"])
        [session] = relay.sessions
        self.assertEqual(session.frontend.rateDrops, 3)  # type: ignore[union-attr]


class MessageRateLimitTests(RateLimitTests):
    """
    L{RateLimitTests} on the message path (the default is passthrough,
    which counts a message as it starts and cuts its frames out whole).
    """

    dataPath = "message"


class OriginTests(TestCase):
    """
    C{allowed_origins} per route.
    """

    async def test_origins(self) -> None:
        """
        Listed origins (and subdomains of a C{*.} entry) are accepted; any
        other, or none, gets 403; a route without the key takes any.
        """
        b = startBackend(self)
        _, port = await startRelay(
            self,
            "[relay]\n[route:r]\npath = /r\n"
            "allowed_origins = https://app.example.com https://*.example.org\n"
            f"backends = {b.url}\n[route:open]\npath = /open\nbackends = {b.url}\n",
        )

        def tryOrigin(path: str, origin: str | None) -> int:
            kwargs: dict[str, Any] = {}
            if origin is not None:
                kwargs["origin"] = origin
            return _status(port, path, kwargs)

        def run() -> list[int]:
            return [
                tryOrigin("/r", "https://app.example.com"),
                tryOrigin("/r", "https://APP.example.com"),
                tryOrigin("/r", "https://a.b.example.org"),
                tryOrigin("/r", "https://example.org"),
                tryOrigin("/r", "http://app.example.com"),
                tryOrigin("/r", "https://evil.example"),
                tryOrigin("/r", None),
                tryOrigin("/open", "https://evil.example"),
            ]

        self.assertEqual(await inThread(run), [101, 101, 101, 403, 403, 403, 403, 101])


def _status(port: int, path: str, kwargs: dict[str, Any]) -> int:
    try:
        with client(port, path, **kwargs):
            return 101
    except InvalidStatus as e:
        return int(e.response.status_code)


class FloodTests(TestCase):
    """
    One address flooding does not starve the others.
    """

    async def test_floodFromOneAddress(self) -> None:
        """
        While 127.0.0.2 floods handshakes (beyond its rate) and messages
        (beyond its message rate), a client on 127.0.0.3 gets every echo,
        with round trips that stay short, and every one of its handshakes.
        """
        b = startBackend(self)
        _, port = await startRelay(
            self,
            "[relay]\nhandshake_rate_per_ip = 5\nmax_messages_per_second = 50\n"
            "message_rate_action = drop\n"
            f"[route:r]\npath = /\nbackends = {b.url}\n",
        )
        stop = threading.Event()
        refused = []

        request = rawRequest(port, "/")

        connected = threading.Event()
        # Set by the handshake flood at its first 429.
        limited = threading.Event()

        def floodHandshakes() -> None:
            # After the message flood's own handshake, which must pass.
            connected.wait(TIMEOUT)
            while not stop.is_set():
                with socket.socket() as sock:
                    sock.bind(("127.0.0.2", 0))
                    sock.settimeout(TIMEOUT)
                    sock.connect(("127.0.0.1", port))
                    sock.sendall(request)
                    refused.append(int(sock.recv(12)[9:12] or b"0"))
                    if refused[-1] == 429:
                        limited.set()

        # A masked 1 KiB text frame (mask 0: the payload is sent as is).
        frame = b"\x81\xfe\x04\x00" + b"\x00" * 4 + b"x" * 1024

        def floodMessages() -> None:
            with socket.socket() as sock:
                sock.bind(("127.0.0.2", 0))
                sock.settimeout(TIMEOUT)
                sock.connect(("127.0.0.1", port))
                sock.sendall(request)
                assert sock.recv(12)[9:12] == b"101"
                connected.set()
                sock.settimeout(0.1)
                while not stop.is_set():
                    try:
                        sock.sendall(frame * 16)
                    except TimeoutError:
                        pass

        def legit(address: str) -> tuple[list[float], list[int]]:
            times = []
            codes = []
            for i in range(3):
                with clientFrom(address, port) as c:
                    codes.append(101)
                    for j in range(10):
                        start = time.monotonic()
                        c.send(f"{i}.{j}")
                        assert c.recv(TIMEOUT) == f"{i}.{j}"
                        times.append(time.monotonic() - start)
            return times, codes

        baseline, _ = await inThread(legit, "127.0.0.4")
        floods = [inThread(floodHandshakes), inThread(floodMessages)]
        try:
            # Let the floods get going before measuring.
            self.assertTrue(
                await inThread(limited.wait, TIMEOUT), "handshake flood not limited"
            )
            times, codes = await inThread(legit, "127.0.0.3")
        finally:
            stop.set()
            for d in floods:
                await d
        self.assertEqual(codes, [101] * 3)
        self.assertEqual(len(times), 30)
        # Generous, against the same client's round trips without the
        # floods, on the same (shared, noisy) machine a moment before.
        before = statistics.median(baseline)
        self.assertLess(statistics.median(times), 20 * before + 0.2, (before, times))
        self.assertLess(max(times), 3.0, times)
