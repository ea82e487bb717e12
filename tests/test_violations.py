"""
A peer that breaks the protocol, through the relay as directly: what it
sent before the bad frame reaches the other side, what the other side
answers before it closes comes back, and then both sides get the close
code (Autobahn|Testsuite cases 3.2-3.4, 4.1.3-4.2.5 and 5.15, which are
OK directly and were NON-STRICT through the relay).

Both ends are raw sockets (L{Wire}) that handle frames in order, as the
testsuite's echo testees do: a C{websockets} peer answers a close frame
from its I/O thread, possibly before its handler echoed the message that
came before it.
"""

from __future__ import annotations

import struct

from twisted.trial.unittest import TestCase

from tests.support import inThread, startRelay
from tests.support.wire import Wire, connectRaw, frameBytes, request, startRawBackend

#: A frame as the tests compare them: its opcode and payload (a close
#: frame's code only).
Seen = tuple[int, bytes]


def code(n: int) -> bytes:
    """
    @return: A close frame's code, as its payload starts.
    """
    return struct.pack("!H", n)


def readUntilClose(wire: Wire, echo: bool, answer: bool = True) -> list[Seen]:
    """
    Read frames until a close frame, answer it with its code (unless not
    C{answer}: then read on until the connection closes), and echo the
    data frames before it when C{echo} (as an echo testee does).

    @return: The frames read.
    """
    seen: list[Seen] = []
    while True:
        f = wire.frame()
        if f.opcode == 8:
            seen.append((8, f.payload[:2]))
            if answer:
                wire.send(8, f.payload[:2])
                return seen
            try:
                while True:
                    wire.frame()
            except (EOFError, OSError):
                return seen
        seen.append((f.opcode, f.payload))
        if echo and f.opcode < 8:
            wire.send(f.opcode, f.payload, f.fin)


def nonMinimal(opcode: int, payload: bytes, size: int, mask: bool) -> bytes:
    """
    A frame whose length is encoded in C{size} bytes (2 or 8) where fewer
    would do (RFC 6455 5.2: the minimal number of bytes MUST be used).
    """
    bit = 0x80 if mask else 0
    if size == 2:
        head = bytes([0x80 | opcode, bit | 126]) + struct.pack("!H", len(payload))
    else:
        head = bytes([0x80 | opcode, bit | 127]) + struct.pack("!Q", len(payload))
    if not mask:
        return head + payload
    return head + b"\0\0\0\0" + payload


#: Frames a client must be failed for with 1002, each after a valid text
#: message in the same write (the cases of the testsuite named).
CLIENT_VIOLATIONS = [
    # 3.2: RSV2 set on a text frame.
    frameBytes(1, b"bad", rsv=2),
    # 4.1.3: a reserved data opcode.
    frameBytes(5, b""),
    # 4.2.3: a reserved control opcode.
    frameBytes(11, b""),
    # 5.15: a continuation with nothing to continue.
    frameBytes(0, b"nothing to continue"),
]

#: Frames whose length is encoded in more bytes than needed, from a client.
CLIENT_NON_MINIMAL = [
    nonMinimal(1, b"short", 2, mask=True),
    nonMinimal(1, b"short", 8, mask=True),
]


class ClientViolationTests(TestCase):
    """
    A client that sends a valid message and then a bad frame gets the
    echo of its message before its 1002, and the backend gets that
    message and then 1002, on the message data path (this class) and the
    passthrough one (the subclass).
    """

    dataPath = "message"

    async def exchange(
        self,
        bad: bytes,
        answer: bool = True,
        after: bytes = frameBytes(9, b"ping?"),
        relayKeys: str = "",
    ) -> tuple[list[Seen], list[Seen]]:
        """
        Send a text message, C{bad} and C{after} (a ping) in one write
        through a relay to a raw echo backend.

        @param answer: Whether the backend answers the relay's close frame
            (else the relay gives up after C{close_timeout}: then 2
            seconds, which Autobahn's timers, on the message path,
            truncate to the whole second, to between 1 and 2; else 5).
        @return: What the client and what the backend received.
        """
        got: list[Seen] = []

        def echo(wire: Wire) -> None:
            got.extend(readUntilClose(wire, echo=True, answer=answer))

        backend = startRawBackend(self, None, then=echo)
        _, port = await startRelay(
            self,
            f"[relay]\nclose_timeout = {2 if not answer else 5}\n{relayKeys}"
            f"[route:r]\npath = /\nbackends = {backend.url}\n",
        )

        def run() -> list[Seen]:
            wire = connectRaw(port, request(port, "/", None))
            with wire.sock:
                wire.head()
                wire.sock.sendall(frameBytes(1, b"Hello, world!") + bad + after)
                return readUntilClose(wire, echo=False)

        seen = await inThread(run)
        await inThread(backend.done.wait, 10)
        self.assertEqual(backend.errors, [])
        return seen, got

    async def test_echoBeforeClose(self) -> None:
        """
        For each kind of bad frame, the client gets the echo of the
        message it sent before it, then a close frame with 1002 (and no
        pong: its ping came after the bad frame); the backend gets the
        message, then a close frame with 1002.
        """
        for bad in CLIENT_VIOLATIONS:
            seen, got = await self.exchange(bad)
            expected = [(1, b"Hello, world!"), (8, code(1002))]
            self.assertEqual(seen, expected, bad)
            self.assertEqual(got, expected, bad)

    async def test_nonMinimalLength(self) -> None:
        """
        A frame length encoded in more bytes than needed (RFC 6455 5.2) is
        refused with 1002 on both data paths, as Autobahn refuses it: the
        frame never reaches the backend.
        """
        for bad in CLIENT_NON_MINIMAL:
            seen, got = await self.exchange(bad)
            expected = [(1, b"Hello, world!"), (8, code(1002))]
            self.assertEqual(seen, expected, bad)
            self.assertEqual(got, expected, bad)

    async def test_notCountedAfterViolation(self) -> None:
        """
        What the client sends after its bad frame is dropped, and not
        counted against C{max_messages_per_second}: it does not turn the
        held 1002 into an early 1008.
        """
        seen, got = await self.exchange(
            CLIENT_VIOLATIONS[0],
            after=b"".join(frameBytes(1, b"more") for _ in range(5)),
            relayKeys="max_messages_per_second = 1\n",
        )
        expected = [(1, b"Hello, world!"), (8, code(1002))]
        self.assertEqual(seen, expected)
        self.assertEqual(got, expected)

    async def test_noAnswer(self) -> None:
        """
        A backend that never answers the relay's close frame holds the
        client's 1002 back for C{close_timeout} at most: the client still
        gets the echo, then 1002.
        """
        seen, got = await self.exchange(CLIENT_VIOLATIONS[0], answer=False)
        expected = [(1, b"Hello, world!"), (8, code(1002))]
        self.assertEqual(seen, expected)
        self.assertEqual(got, expected)


class PassthroughClientViolationTests(ClientViolationTests):
    """
    The same on the passthrough data path.
    """

    dataPath = "passthrough"


#: Frames a backend must be failed for with 1002, each after a valid text
#: message in the same write.
BACKEND_VIOLATIONS = [
    frameBytes(1, b"bad", rsv=2, mask=False),
    frameBytes(5, b"", mask=False),
    frameBytes(11, b"", mask=False),
    frameBytes(0, b"nothing to continue", mask=False),
]

#: Frames whose length is encoded in more bytes than needed, from a backend.
BACKEND_NON_MINIMAL = [
    nonMinimal(1, b"short", 2, mask=False),
    nonMinimal(1, b"short", 8, mask=False),
]


class BackendViolationTests(TestCase):
    """
    The mirror image: a backend that sends a valid message and then a bad
    frame gets the client's echo of its message before its 1002, and the
    client gets the message and then 1002.
    """

    dataPath = "message"

    async def exchange(
        self, bad: bytes, answer: bool = True
    ) -> tuple[list[Seen], list[Seen]]:
        """
        A raw backend sends a text message, C{bad} and a ping in one write
        to a raw client that echoes, through a relay.

        @param answer: Whether the client answers the relay's close frame
            (else the relay gives up after C{close_timeout}: then 2
            seconds, which Autobahn's timers, on the message path,
            truncate to the whole second, to between 1 and 2; else 5).
        @return: What the client and what the backend received.
        """
        got: list[Seen] = []

        def offend(wire: Wire) -> None:
            wire.sock.sendall(
                frameBytes(1, b"Hello, world!", mask=False)
                + bad
                + frameBytes(9, b"ping?", mask=False)
            )
            got.extend(readUntilClose(wire, echo=False))

        backend = startRawBackend(self, None, then=offend)
        _, port = await startRelay(
            self,
            f"[relay]\nclose_timeout = {2 if not answer else 5}\n"
            f"[route:r]\npath = /\nbackends = {backend.url}\n",
        )

        def run() -> list[Seen]:
            wire = connectRaw(port, request(port, "/", None))
            with wire.sock:
                wire.head()
                return readUntilClose(wire, echo=True, answer=answer)

        seen = await inThread(run)
        await inThread(backend.done.wait, 10)
        self.assertEqual(backend.errors, [])
        return seen, got

    async def test_echoBeforeClose(self) -> None:
        """
        For each kind of bad frame, the backend gets the client's echo of
        the message it sent before it, then a close frame with 1002; the
        client gets the message, then a close frame with 1002.
        """
        for bad in BACKEND_VIOLATIONS:
            seen, got = await self.exchange(bad)
            expected = [(1, b"Hello, world!"), (8, code(1002))]
            self.assertEqual(got, expected, bad)
            self.assertEqual(seen, expected, bad)

    async def test_nonMinimalLength(self) -> None:
        """
        The same from a backend: a frame length encoded in more bytes than
        needed is refused with 1002, and never reaches the client.
        """
        for bad in BACKEND_NON_MINIMAL:
            seen, got = await self.exchange(bad)
            expected = [(1, b"Hello, world!"), (8, code(1002))]
            self.assertEqual(got, expected, bad)
            self.assertEqual(seen, expected, bad)

    async def test_noAnswer(self) -> None:
        """
        A client that never answers the relay's close frame holds the
        backend's 1002 back for C{close_timeout} at most: the backend still
        gets the client's echo, then 1002.
        """
        seen, got = await self.exchange(BACKEND_VIOLATIONS[0], answer=False)
        expected = [(1, b"Hello, world!"), (8, code(1002))]
        self.assertEqual(got, expected)
        self.assertEqual(seen, expected)


class PassthroughBackendViolationTests(BackendViolationTests):
    """
    The same on the passthrough data path.
    """

    dataPath = "passthrough"
