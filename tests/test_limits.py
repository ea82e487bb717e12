"""
Limits and timeouts from the configuration, each enforced.
"""

from __future__ import annotations

import socket

from twisted.internet import task
from twisted.trial.unittest import TestCase

from tests.support import TIMEOUT, client, inThread, startBackend, startRelay
from tests.support.clients import closeOf, rawRequest, readHead
from tests.support.frames import maskedFrame, readFrame
from tests.support.waiting import waitFor


def openRaw(port: int) -> socket.socket:
    """
    Complete a handshake by hand; the socket answers nothing by itself.
    """
    s = socket.create_connection(("127.0.0.1", port), TIMEOUT)
    s.sendall(rawRequest(port))
    head = readHead(s)
    assert head.startswith(b"HTTP/1.1 101 "), head
    return s


class MessageSizeTests(TestCase):
    """
    C{max_message_size} closes with 1009, in both directions.

    @cvar toldBackend: The code the backend gets when a client's message
        is too big.
    @cvar toldClient: The code the client gets when a backend's message is
        too big.
    """

    dataPath = "message"
    toldBackend = 1001
    toldClient = 1014

    async def test_clientTooBig(self) -> None:
        """
        A client message over the limit closes the client with 1009 and
        never reaches the backend; the backend is told the client left
        (1001; passthrough: 1009).
        """
        b = startBackend(self)
        _, port = await startRelay(
            self,
            "[relay]\nmax_message_size = 1000\n"
            f"[route:c]\npath = /\nbackends = {b.url}\n",
        )

        def run() -> tuple[int | None, str | None]:
            with client(port) as c:
                c.send(b"x" * 1000)
                assert c.recv(TIMEOUT) == b"x" * 1000
                c.send(b"x" * 1001)
                return closeOf(c)

        code, _ = await inThread(run)
        self.assertEqual(code, 1009)
        await b.whenClosed()
        self.assertEqual(b.closes[0][0], self.toldBackend)

    async def test_backendTooBig(self) -> None:
        """
        A backend message over the limit closes the backend with 1009;
        the client gets 1014 (passthrough: 1009) and not the message.
        """
        b = startBackend(self)
        _, port = await startRelay(
            self,
            "[relay]\nmax_message_size = 1000\n"
            f"[route:c]\npath = /\nbackends = {b.url}\n",
        )

        def run() -> tuple[int | None, str | None]:
            with client(port) as c:
                c.send("flood 1 2000")
                return closeOf(c)

        code, _ = await inThread(run)
        self.assertEqual(code, self.toldClient)
        # The backend's thread records the close once its handler is done.
        await b.whenClosed()
        self.assertEqual(b.closes[0][0], 1009)


class TimeoutTests(TestCase):
    """
    Handshake, idle and ping timeouts.
    """

    dataPath = "message"

    async def test_slowLoris(self) -> None:
        """
        A client that does not finish its request within
        C{handshake_timeout} is dropped; others are served meanwhile.
        """
        b = startBackend(self)
        _, port = await startRelay(
            self,
            "[relay]\nhandshake_timeout = 0.5\n"
            f"[route:c]\npath = /\nbackends = {b.url}\n",
        )

        def run() -> tuple[bytes, str]:
            with socket.create_connection(("127.0.0.1", port), TIMEOUT) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
                with client(port) as c:
                    c.send("ok")
                    echoed = str(c.recv(TIMEOUT))
                try:
                    rest = s.recv(100)
                except ConnectionResetError:
                    rest = b""
                return rest, echoed

        rest, echoed = await inThread(run)
        self.assertEqual((rest, echoed), (b"", "ok"))

    async def test_idle(self) -> None:
        """
        After C{idle_timeout} seconds without data both sides get 1001;
        traffic postpones it.
        """
        clock = task.Clock()
        b = startBackend(self)
        relay, port = await startRelay(
            self,
            "[relay]\nidle_timeout = 60\nping_interval = 0\n"
            f"[route:c]\npath = /\nbackends = {b.url}\n",
            clock,
        )
        c = await inThread(client, port)
        self.addCleanup(inThread, c.close)
        await waitFor(lambda: len(relay.sessions) == 1)
        (session,) = relay.sessions
        await waitFor(lambda: session.upstream is not None)
        clock.advance(45)
        await inThread(c.send, "ping")
        self.assertEqual(await inThread(c.recv, TIMEOUT), "ping")
        clock.advance(45)
        self.assertIsNone(c.protocol.close_rcvd)
        for _i in range(5):
            clock.advance(15)
        code, reason = await inThread(closeOf, c)
        self.assertEqual((code, reason), (1001, "idle timeout"))
        await b.whenClosed()
        self.assertEqual(b.closes[0], (1001, "idle timeout"))

    async def test_pingTimeout(self) -> None:
        """
        The relay pings every C{ping_interval}; a client that does not
        answer within C{ping_timeout} is dropped.  (Autobahn's timers have
        a resolution of one second.)
        """
        b = startBackend(self)
        _, port = await startRelay(
            self,
            "[relay]\nping_interval = 1\nping_timeout = 1\n"
            f"[route:c]\npath = /\nbackends = {b.url}\n",
        )

        def run() -> tuple[int, bool]:
            with openRaw(port) as s:
                opcode, _ = readFrame(s)
                try:
                    while readFrame(s):
                        pass
                except (EOFError, ConnectionResetError):
                    return opcode, True
            return opcode, False

        self.assertEqual(await inThread(run), (9, True))

    async def test_pongKeepsAlive(self) -> None:
        """
        A client that answers pings stays connected past C{ping_timeout}.
        """
        b = startBackend(self)
        _, port = await startRelay(
            self,
            "[relay]\nping_interval = 1\nping_timeout = 1\n"
            f"[route:c]\npath = /\nbackends = {b.url}\n",
        )

        def run() -> list[int]:
            seen = []
            with openRaw(port) as s:
                for _i in range(3):
                    opcode, payload = readFrame(s)
                    seen.append(opcode)
                    s.sendall(maskedFrame(10, payload))
                s.sendall(maskedFrame(1, b"hi"))
                while True:
                    opcode, payload = readFrame(s)
                    if opcode == 1:
                        seen.append(opcode)
                        return seen
                    s.sendall(maskedFrame(10, payload))

        self.assertEqual(await inThread(run), [9, 9, 9, 1])


class PassthroughMessageSizeTests(MessageSizeTests):
    """
    L{MessageSizeTests} with C{data_path = passthrough}, where the side
    that did not send the message is closed with 1009 too.
    """

    dataPath = "passthrough"
    toldBackend = 1009
    toldClient = 1009


class PassthroughTimeoutTests(TimeoutTests):
    """
    L{TimeoutTests} with C{data_path = passthrough}.
    """

    dataPath = "passthrough"
