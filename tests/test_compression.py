"""
permessage-deflate through the relay, over loopback sockets: negotiated
on each leg by the relay on the message data path (route key
C{compression}), end to end on the passthrough data path, declined by
fan-out routes.

Where what goes over the wire matters (the RSV1 bit, fragmentation,
frames sent in the same TCP write as a handshake), one end is a raw
socket (L{Wire}); elsewhere both ends are C{websockets} peers, which offer
and accept permessage-deflate when asked to.
"""

from __future__ import annotations

import os
import struct
import zlib
from typing import Any

from twisted.trial.unittest import TestCase
from websockets.exceptions import ConnectionClosed

from tests.support import TIMEOUT, client, inThread, startBackend, startRelay
from tests.support.inflate import MIB, bomb, desync, peakAbove, traceMemory
from tests.support.wire import (
    Frame,
    Wire,
    connectRaw,
    frameBytes,
    headerValue,
    request,
    startRawBackend,
)

#: The RSV bits, as C{Frame.rsv} holds them.
RSV1, RSV2 = 4, 2

#: What a sync flush ends with, left off the end of each message.
TAIL = b"\x00\x00\xff\xff"


def deflate(*parts: bytes) -> list[bytes]:
    """
    Compress one message, as permessage-deflate frames: one payload per
    part, each flushed (the last without the flush's tail).
    """
    c = zlib.compressobj(wbits=-15)
    out = [c.compress(p) + c.flush(zlib.Z_SYNC_FLUSH) for p in parts]
    out[-1] = out[-1][: -len(TAIL)]
    return out


def messagesThenClose(c: Any) -> tuple[list[Any], tuple[int | None, str | None]]:
    """
    Read from the C{websockets} connection C{c} until it is closed.

    @return: The messages received, and the code and reason of the close
        frame received.
    """
    messages = []
    try:
        while True:
            messages.append(c.recv(TIMEOUT))
    except ConnectionClosed:
        pass
    rcvd = c.protocol.close_rcvd
    return messages, ((rcvd.code, rcvd.reason) if rcvd else (None, None))


def inflate(frames: list[Frame], d: Any) -> bytes:
    """
    Decompress a message's frames with the decompressor C{d}.
    """
    return bytes(d.decompress(b"".join(f.payload for f in frames) + TAIL))


def inflateUntilClose(wire: Wire) -> tuple[list[int], int | None]:
    """
    Read messages as a receiver with context takeover does, with one
    inflater, each message inflated to at most 2 MiB, until a close frame
    (answered) or the end of the connection.

    @return: What each message inflated to, and the code of the close
        frame received (L{None} when the connection ended without one,
        say in the middle of a frame).
    """
    d = zlib.decompressobj(-15)
    sizes = []
    try:
        while True:
            frames = wire.message()
            if frames[-1].opcode == 8:
                payload = frames[-1].payload
                wire.send(8, payload[:2])
                return sizes, struct.unpack("!H", payload[:2])[0]
            data = b"".join(f.payload for f in frames) + TAIL
            sizes.append(len(d.decompress(data, 2 * MIB)))
    except (EOFError, OSError):
        return sizes, None


def sendCompressed(port: int, frame: bytes) -> int | None:
    """
    Open a client that offers permessage-deflate to C{port}, send C{frame}
    once the relay answered, and wait for the close.

    @return: The close code the client got, if any.
    """
    wire = connectRaw(port, request(port, "/", "permessage-deflate"))
    with wire.sock:
        wire.head()
        wire.sock.sendall(frame)
        return wire.closeCode()


def rawOneMessage(
    port: int, offer: str | None, before: list[bytes], after: list[bytes]
) -> tuple[bytes, list[Frame]]:
    """
    A raw client: send the handshake and the frames C{before} in one write,
    the frames C{after} once the 101 is in; read one message; close.

    @return: The 101's head and the message's frames.
    """
    wire = connectRaw(port, request(port, "/", offer) + b"".join(before))
    with wire.sock:
        head = wire.head()
        wire.sock.sendall(b"".join(after))
        frames = wire.message()
        wire.send(8, struct.pack("!H", 1000))
        return head, frames


TEXT = b"compressible, " * 500


class CompressionTests(TestCase):
    """
    What both proxy data paths do with compressed messages, on the message
    path (this class) and the passthrough path (the subclass).
    """

    dataPath = "message"

    async def relay(self, backend: str) -> int:
        """
        Start a relay with one route, C{/}, to C{backend} on this data path
        (L{startRelay} adds C{data_path}).

        @return: Its port.
        """
        self.service, port = await startRelay(
            self, f"[relay]\n[route:r]\npath = /\nbackends = {backend}\n"
        )
        return port

    async def test_compressedBehindHandshake(self) -> None:
        """
        A compressed message sent in the same TCP write as the client's
        handshake goes through: its echo comes back compressed after the
        101, which answers permessage-deflate.
        """
        b = startBackend(self, compression="deflate")
        port = await self.relay(b.url)
        first = frameBytes(1, deflate(TEXT)[0], rsv=RSV1)
        head, frames = await inThread(
            rawOneMessage, port, "permessage-deflate", [first], []
        )
        self.assertIn(b" 101 ", head.split(b"\r\n")[0])
        answer = headerValue(head, "Sec-WebSocket-Extensions") or ""
        self.assertTrue(answer.startswith("permessage-deflate"), answer)
        self.assertEqual(frames[0].rsv, RSV1)
        self.assertEqual(inflate(frames, zlib.decompressobj(wbits=-15)), TEXT)

    async def test_backendSendsAt101(self) -> None:
        """
        A compressed message that a backend sends in the same TCP write as
        its 101 reaches a C{websockets} client, whole.
        """
        sent = frameBytes(1, deflate(TEXT)[0], rsv=RSV1, mask=False)
        raw = startRawBackend(self, "permessage-deflate", sent)
        port = await self.relay(raw.url)

        def run() -> str:
            with client(port, "/", compression="deflate") as c:
                return str(c.recv(TIMEOUT))

        self.assertEqual(await inThread(run), TEXT.decode())
        await inThread(raw.done.wait, TIMEOUT)
        self.assertEqual(raw.errors, [])


class PassthroughCompressionTests(CompressionTests):
    """
    L{CompressionTests} with C{data_path = passthrough}, and what only that
    path does: extensions negotiated end to end, RSV bits checked against
    what was negotiated.
    """

    dataPath = "passthrough"

    async def test_endToEnd(self) -> None:
        """
        The client's offer reaches the backend as it was sent, the client
        gets the backend's answer as it was sent, and messages go through
        compressed: fewer payload bytes pass than the client sent.
        """
        b = startBackend(self, compression="deflate")
        port = await self.relay(b.url)

        def run() -> tuple[dict[str, str], str, str, Any, Any]:
            with client(port, "/", compression="deflate") as c:
                c.send("headers")
                lines = str(c.recv(TIMEOUT)).split("\n")
                c.send("extensions")
                backendAnswer = str(c.recv(TIMEOUT))
                c.send(TEXT.decode())
                echo = str(c.recv(TIMEOUT))
                return (
                    dict(line.split(": ", 1) for line in lines),
                    backendAnswer,
                    echo,
                    c.request.headers.get("Sec-WebSocket-Extensions"),
                    c.response.headers.get("Sec-WebSocket-Extensions"),
                )

        seen, backendAnswer, echo, offered, answered = await inThread(run)
        self.assertTrue(offered.startswith("permessage-deflate"), offered)
        self.assertEqual(seen["Sec-WebSocket-Extensions"], offered)
        self.assertTrue(backendAnswer.startswith("permessage-deflate"))
        self.assertEqual(answered, backendAnswer)
        self.assertEqual(echo, TEXT.decode())
        [backend] = self.service.routes.routes[0].backends
        # Passthrough counts payload bytes from the frame headers: the
        # compressed ones.
        self.assertLess(backend.sentBytes, len(TEXT) // 4)

    async def test_rsvRefused(self) -> None:
        """
        With permessage-deflate negotiated, RSV1 is allowed on the first
        frame of a message only: a client that sets it on a control frame
        or a continuation, or sets RSV2, is closed with 1002.
        """
        b = startBackend(self, compression="deflate")
        port = await self.relay(b.url)
        first, second = deflate(b"part one, ", b"part two")
        cases = [
            [frameBytes(9, b"ping", rsv=RSV1)],
            [
                frameBytes(1, first, fin=False, rsv=RSV1),
                frameBytes(0, second, rsv=RSV1),
            ],
            [frameBytes(1, b"plain", rsv=RSV2)],
            [frameBytes(1, deflate(b"x")[0], rsv=RSV1 | RSV2)],
        ]

        def run(frames: list[bytes]) -> tuple[str | None, int | None]:
            wire = connectRaw(port, request(port, "/", "permessage-deflate"))
            with wire.sock:
                head = wire.head()
                wire.sock.sendall(b"".join(frames))
                return headerValue(head, "Sec-WebSocket-Extensions"), wire.closeCode()

        for frames in cases:
            answer, code = await inThread(run, frames)
            self.assertTrue((answer or "").startswith("permessage-deflate"), answer)
            self.assertEqual(code, 1002, frames)

    async def test_compressedFragments(self) -> None:
        """
        A compressed message in fragments (RSV1 on the first only), then
        an uncompressed one, go through and come back.
        """
        b = startBackend(self, compression="deflate")
        port = await self.relay(b.url)
        first, second = deflate(b"part one, ", b"part two")
        frames = [
            frameBytes(1, first, fin=False, rsv=RSV1),
            frameBytes(0, second),
        ]
        _, echo = await inThread(rawOneMessage, port, "permessage-deflate", [], frames)
        self.assertEqual(
            inflate(echo, zlib.decompressobj(wbits=-15)), b"part one, part two"
        )

    async def limitedRelay(self, backend: str, limit: int = MIB) -> int:
        """
        Start a relay as L{relay} does, with C{max_message_size = limit}.

        @return: Its port.
        """
        self.service, port = await startRelay(
            self,
            f"[relay]\nmax_message_size = {limit}\n[route:r]\npath = /\n"
            f"backends = {backend}\n",
        )
        return port

    async def test_compressedOverLimit(self) -> None:
        """
        C{max_message_size} counts a compressed message inflated: with a
        limit of 1 MiB, a C{websockets} client (which compresses by
        default) sends a message of exactly 1 MiB, which comes back, then
        one of 2,000,000 characters (a few KB deflated), which closes the
        client and the backend with 1009 and never reaches the backend.
        """
        b = startBackend(self, compression="deflate")
        port = await self.limitedRelay(b.url)

        def run() -> tuple[bool, list[Any], tuple[int | None, str | None]]:
            with client(port, "/", compression="deflate") as c:
                c.send("a" * MIB)
                intact = c.recv(TIMEOUT) == "a" * MIB
                c.send("b" * 2_000_000)
                return intact, *messagesThenClose(c)

        intact, after, (code, _) = await inThread(run)
        self.assertTrue(intact)
        self.assertEqual((after, code), ([], 1009))
        await b.whenClosed()
        self.assertEqual(b.closes[0][0], 1009)

    async def test_bombBoundedMemory(self) -> None:
        """
        100 MiB of zeros deflated to about 100 KB in one frame closes the
        client and the backend with 1009; neither the relay nor the backend
        (here in the same process) ever holds more than a few MiB for it.
        """
        payload = bomb(100 * MIB)
        b = startBackend(self, compression="deflate")
        port = await self.limitedRelay(b.url)
        bombFrame = frameBytes(2, payload, rsv=RSV1)

        baseline = traceMemory(self)
        self.assertEqual(await inThread(sendCompressed, port, bombFrame), 1009)
        await b.whenClosed()
        self.assertLess(peakAbove(baseline), 8 * MIB)
        self.assertEqual(b.closes[0][0], 1009)

    async def test_backendBomb(self) -> None:
        """
        A backend that sends a bomb (right behind its 101) is closed with
        1009, and so is the client, which gets none of it.
        """
        codes: list[int | None] = []
        bombFrame = frameBytes(2, bomb(100 * MIB), rsv=RSV1, mask=False)
        raw = startRawBackend(
            self,
            "permessage-deflate",
            bombFrame,
            lambda wire: codes.append(wire.closeCode()),
        )
        port = await self.limitedRelay(raw.url)

        def run() -> tuple[list[Any], tuple[int | None, str | None]]:
            with client(port, "/", compression="deflate") as c:
                return messagesThenClose(c)

        baseline = traceMemory(self)
        self.assertEqual(await inThread(run), ([], (1009, "message too big")))
        await inThread(raw.done.wait, TIMEOUT)
        self.assertLess(peakAbove(baseline), 8 * MIB)
        self.assertEqual((raw.errors, codes), ([], [1009]))

    async def test_desyncedFromClient(self) -> None:
        """
        With context takeover, a client's message that leaves the backend's
        inflater in the middle of a stored block (L{desync}) goes on; the
        next, which the backend would inflate to 16 MiB, closes the client
        and the backend with 1009, and the backend never gets it whole.
        """
        got: list[tuple[list[int], int | None]] = []
        raw = startRawBackend(
            self, "permessage-deflate", then=lambda w: got.append(inflateUntilClose(w))
        )
        port = await self.limitedRelay(raw.url)
        first, second = desync()

        def run() -> int | None:
            wire = connectRaw(port, request(port, "/", "permessage-deflate"))
            with wire.sock:
                wire.head()
                wire.sock.sendall(
                    frameBytes(2, first, rsv=RSV1) + frameBytes(2, second, rsv=RSV1)
                )
                return wire.closeCode()

        self.assertEqual(await inThread(run), 1009)
        await inThread(raw.done.wait, TIMEOUT)
        self.assertEqual(raw.errors, [])
        [(sizes, code)] = got
        self.assertEqual(sizes, [14])
        # A close frame, or the end of the connection when part of the
        # second frame had gone on.
        self.assertIn(code, (1009, None))

    async def test_desyncedFromBackend(self) -> None:
        """
        L{test_desyncedFromClient} the other way: a backend that sends the
        two messages behind its 101 is closed with 1009, and so is the
        client, which inflates the first message and never gets the second
        whole.
        """
        codes: list[int | None] = []
        first, second = desync()
        sent = frameBytes(2, first, rsv=RSV1, mask=False)
        sent += frameBytes(2, second, rsv=RSV1, mask=False)
        raw = startRawBackend(
            self,
            "permessage-deflate",
            sent,
            lambda wire: codes.append(wire.closeCode()),
        )
        port = await self.limitedRelay(raw.url)

        def run() -> tuple[list[int], int | None]:
            wire = connectRaw(port, request(port, "/", "permessage-deflate"))
            with wire.sock:
                wire.head()
                return inflateUntilClose(wire)

        sizes, code = await inThread(run)
        self.assertEqual(sizes, [14])
        # A close frame, or the end of the connection when part of the
        # second frame had gone on (it came in more than one read).
        self.assertIn(code, (1009, None))
        await inThread(raw.done.wait, TIMEOUT)
        self.assertEqual((raw.errors, codes), ([], [1009]))

    async def test_negotiatedParameters(self) -> None:
        """
        With C{client_no_context_takeover} and C{client_max_window_bits=10}
        answered by the backend, a client's message compressed that way
        that inflates to just under the limit passes byte for byte; the
        next one, over the limit, closes both sides with 1009.
        """
        codes: list[int | None] = []

        def echoOnce(wire: Wire) -> None:
            f = wire.frame()
            wire.send(f.opcode, f.payload, f.fin, f.rsv)
            codes.append(wire.closeCode())

        answer = (
            "permessage-deflate; client_no_context_takeover;"
            " server_no_context_takeover; client_max_window_bits=10"
        )
        raw = startRawBackend(self, answer, then=echoOnce)
        port = await self.limitedRelay(raw.url, 100_000)

        def deflate10(data: bytes) -> bytes:
            c = zlib.compressobj(9, zlib.DEFLATED, -10)
            return (c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH))[: -len(TAIL)]

        under = deflate10(TEXT * 13 + b"x" * (100_000 - len(TEXT) * 13))
        over = deflate10(bytes(100_001))

        def run() -> tuple[Frame, int | None]:
            offer = "permessage-deflate; client_no_context_takeover"
            wire = connectRaw(port, request(port, "/", offer))
            with wire.sock:
                wire.head()
                wire.send(1, under, rsv=RSV1)
                echo = wire.frame()
                wire.send(2, over, rsv=RSV1)
                return echo, wire.closeCode()

        echo, code = await inThread(run)
        self.assertEqual(echo, Frame(True, RSV1, 1, under))
        self.assertEqual(len(zlib.decompressobj(-10).decompress(under + TAIL)), 100_000)
        self.assertEqual(code, 1009)
        await inThread(raw.done.wait, TIMEOUT)
        self.assertEqual((raw.errors, codes), ([], [1009]))

    async def test_rsvWithoutExtension(self) -> None:
        """
        A frame with RSV1 from a client when nothing was negotiated (the
        backend declined the client's offer) is refused with 1002.
        """
        b = startBackend(self)
        port = await self.relay(b.url)

        def run() -> tuple[str | None, int | None]:
            wire = connectRaw(port, request(port, "/", "permessage-deflate"))
            with wire.sock:
                head = wire.head()
                wire.send(1, deflate(b"x")[0], rsv=RSV1)
                return headerValue(head, "Sec-WebSocket-Extensions"), wire.closeCode()

        self.assertEqual(await inThread(run), (None, 1002))

    async def test_otherExtension(self) -> None:
        """
        An extension the relay does not know, negotiated end to end, may
        use the RSV bits: frames with RSV2 pass both ways.
        """

        def echoRaw(wire: Wire) -> None:
            f = wire.frame()
            wire.send(f.opcode, f.payload, f.fin, f.rsv)
            wire.closeCode()

        raw = startRawBackend(self, "x-custom", then=echoRaw)
        port = await self.relay(raw.url)
        _, echo = await inThread(
            rawOneMessage, port, "x-custom", [], [frameBytes(2, b"odd", rsv=RSV2)]
        )
        self.assertEqual(echo, [Frame(True, RSV2, 2, b"odd")])
        self.assertEqual(
            headerValue(raw.heads[0], "Sec-WebSocket-Extensions"), "x-custom"
        )


class MessagePathTests(TestCase):
    """
    The message data path negotiates permessage-deflate on each leg itself
    (route key C{compression}).
    """

    dataPath = "message"

    async def test_bothLegsCompressed(self) -> None:
        """
        With C{compression = on} (the default) and a client that offers
        permessage-deflate, each leg compresses what it sends (RSV1 on the
        first frame of each message) and the relay keeps the fragmentation.
        """
        got: list[list[Frame]] = []

        def echoRaw(wire: Wire) -> None:
            # Echo one message, compressed with context takeover.
            d = zlib.decompressobj(wbits=-15)
            c = zlib.compressobj(wbits=-15)
            frames = wire.message()
            got.append(frames)
            data = c.compress(inflate(frames, d)) + c.flush(zlib.Z_SYNC_FLUSH)
            wire.send(1, data[: -len(TAIL)], rsv=RSV1)
            wire.closeCode()

        raw = startRawBackend(self, "permessage-deflate", then=echoRaw)
        _, port = await startRelay(
            self, f"[relay]\n[route:r]\npath = /\nbackends = {raw.url}\n"
        )
        first, second = deflate(b"part one, ", b"part two")
        frames = [
            frameBytes(1, first, fin=False, rsv=RSV1),
            frameBytes(0, second),
        ]
        head, echo = await inThread(
            rawOneMessage, port, "permessage-deflate", [], frames
        )
        self.assertEqual(
            headerValue(head, "Sec-WebSocket-Extensions"), "permessage-deflate"
        )
        offer = headerValue(raw.heads[0], "Sec-WebSocket-Extensions") or ""
        self.assertTrue(offer.startswith("permessage-deflate"), offer)
        await inThread(raw.done.wait, TIMEOUT)
        self.assertEqual(raw.errors, [])
        [toBackend] = got
        self.assertEqual(
            [(f.rsv, f.opcode, f.fin) for f in toBackend],
            [(RSV1, 1, False), (0, 0, True)],
        )
        self.assertEqual(
            inflate(toBackend, zlib.decompressobj(wbits=-15)), b"part one, part two"
        )
        self.assertEqual([(f.rsv, f.opcode) for f in echo], [(RSV1, 1)])
        self.assertEqual(
            inflate(echo, zlib.decompressobj(wbits=-15)), b"part one, part two"
        )

    async def test_sizeLimitUncompressed(self) -> None:
        """
        C{max_message_size} counts a compressed message's uncompressed
        bytes on the message path: a small compressed message that
        inflates past it closes the client with 1009.
        """
        b = startBackend(self, compression="deflate")
        _, port = await startRelay(
            self,
            "[relay]\nmax_message_size = 1000\n[route:r]\npath = /\n"
            f"backends = {b.url}\n",
        )
        small = deflate(b"a" * 5000)[0]
        self.assertLess(len(small), 100)

        def run() -> int | None:
            wire = connectRaw(port, request(port, "/", "permessage-deflate"))
            with wire.sock:
                wire.head()
                wire.send(1, small, rsv=RSV1)
                return wire.closeCode()

        self.assertEqual(await inThread(run), 1009)

    async def test_bombBoundedMemory(self) -> None:
        """
        On the message path Autobahn inflates each leg's compressed messages
        within what is left of C{max_message_size}: 100 MiB of zeros
        deflated to about 100 KB closes its sender with 1009 (the other side
        is told 1001 or 1014), whichever side sends it, and the relay never
        holds more than a few MiB for it.
        """
        payload = bomb(100 * MIB)
        codes: list[int | None] = []
        raw = startRawBackend(
            self,
            "permessage-deflate",
            frameBytes(2, payload, rsv=RSV1, mask=False),
            lambda wire: codes.append(wire.closeCode()),
        )
        b = startBackend(self, compression="deflate")
        _, port = await startRelay(
            self,
            f"[relay]\nmax_message_size = {MIB}\n[route:r]\npath = /\n"
            f"backends = {b.url}\n[route:bomb]\npath = /bomb\n"
            f"backends = {raw.url}\n",
        )
        bombFrame = frameBytes(2, payload, rsv=RSV1)

        def fromBackend() -> tuple[list[Any], tuple[int | None, str | None]]:
            with client(port, "/bomb", compression="deflate") as c:
                return messagesThenClose(c)

        baseline = traceMemory(self)
        self.assertEqual(await inThread(sendCompressed, port, bombFrame), 1009)
        await b.whenClosed()
        self.assertEqual(b.closes[0][0], 1001)
        self.assertLess(peakAbove(baseline), 8 * MIB)
        baseline = traceMemory(self)
        messages, (code, _) = await inThread(fromBackend)
        self.assertEqual((messages, code), ([], 1014))
        await inThread(raw.done.wait, TIMEOUT)
        self.assertEqual((raw.errors, codes), ([], [1009]))
        self.assertLess(peakAbove(baseline), 8 * MIB)

    async def test_backendDeclines(self) -> None:
        """
        A backend that declines the relay's offer gets uncompressed frames;
        the client's leg is compressed all the same.
        """
        b = startBackend(self)
        _, port = await startRelay(
            self, f"[relay]\n[route:r]\npath = /\nbackends = {b.url}\n"
        )
        head, echo = await inThread(
            rawOneMessage,
            port,
            "permessage-deflate",
            [],
            [frameBytes(1, deflate(TEXT)[0], rsv=RSV1)],
        )
        self.assertEqual(
            headerValue(head, "Sec-WebSocket-Extensions"), "permessage-deflate"
        )
        self.assertEqual(echo[0].rsv, RSV1)
        self.assertEqual(inflate(echo, zlib.decompressobj(wbits=-15)), TEXT)

    async def test_compressionOff(self) -> None:
        """
        With C{compression = off}, neither leg negotiates: the client's
        offer is declined, and the backend (which would accept) gets none.
        """
        b = startBackend(self, compression="deflate")
        _, port = await startRelay(
            self,
            f"[relay]\n[route:r]\npath = /\ncompression = off\nbackends = {b.url}\n",
        )

        def run() -> tuple[str, str, Any, str]:
            with client(port, "/", compression="deflate") as c:
                c.send("headers")
                seen = str(c.recv(TIMEOUT))
                c.send("extensions")
                backendAnswer = str(c.recv(TIMEOUT))
                c.send(TEXT.decode())
                echo = str(c.recv(TIMEOUT))
                answer = c.response.headers.get("Sec-WebSocket-Extensions")
                return seen, backendAnswer, answer, echo

        seen, backendAnswer, answered, echo = await inThread(run)
        self.assertNotIn("sec-websocket-extensions", seen.lower())
        self.assertEqual(backendAnswer, "")
        self.assertIsNone(answered)
        self.assertEqual(echo, TEXT.decode())

    async def test_compressionOnWebsockets(self) -> None:
        """
        With C{websockets} on both sides, compression is negotiated on both
        legs and messages of every size go both ways.
        """
        b = startBackend(self, compression="deflate")
        _, port = await startRelay(
            self, f"[relay]\n[route:r]\npath = /\nbackends = {b.url}\n"
        )
        payloads = [b"", b"x", TEXT, os.urandom(70000)]

        def run() -> tuple[str, Any, list[bytes]]:
            with client(port, "/", compression="deflate") as c:
                c.send("extensions")
                backendAnswer = str(c.recv(TIMEOUT))
                got = []
                for p in payloads:
                    c.send(p)
                    got.append(bytes(c.recv(TIMEOUT)))
                c.send(["frag-", "ment-", "ed"])
                got.append(str(c.recv(TIMEOUT)).encode())
                answer = c.response.headers.get("Sec-WebSocket-Extensions")
                return backendAnswer, answer, got

        backendAnswer, answered, got = await inThread(run)
        self.assertTrue(backendAnswer.startswith("permessage-deflate"), backendAnswer)
        self.assertEqual(answered, "permessage-deflate")
        self.assertEqual(got, [*payloads, b"frag-ment-ed"])


class FanoutCompressionTests(TestCase):
    """
    Fan-out has no compression.
    """

    async def test_fanoutDeclines(self) -> None:
        """
        A fan-out route declines permessage-deflate: it frames each message
        once for all its clients.
        """
        b = startBackend(self, compression="deflate")
        _, port = await startRelay(
            self,
            f"[relay]\n[route:f]\npath = /\nmode = fanout\nbackends = {b.url}\n",
        )

        def run() -> Any:
            with client(port, "/", compression="deflate") as c:
                return c.response.headers.get("Sec-WebSocket-Extensions")

        self.assertIsNone(await inThread(run))
