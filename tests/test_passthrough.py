"""
The passthrough data path: the frame scanner in memory, and a real
session switching to it.
"""

from __future__ import annotations

import random
import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.tcp import Connection
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.support import TIMEOUT, client, inThread, startBackend, startRelay
from tests.support.clients import closeOf, rawRequest
from tests.support.passthrough import PipeLeg, PipeSession, openedPassthrough
from tests.support.scanning import Leg, Recorder, feed, frame
from tests.support.wire import connectRaw, frameBytes, startRawBackend
from wsrelay.proxy.direction import PING_PREFIX, Direction
from wsrelay.proxy.pipe import Keepalive, Pipe
from wsrelay.ws import accept
from wsrelay.ws.framing import closeFrame
from wsrelay.ws.legs import RelayLeg
from wsrelay.ws.plainleg import PlainUpstream
from wsrelay.ws.writes import DirectWriter, sendWithTurn


def scanner(
    masked: bool = True, maxFrame: int = 1 << 20, maxMessage: int = 1 << 20
) -> tuple[Direction, Leg, Leg, Recorder]:
    """
    A direction between two fake legs.
    """
    source, sink, pipe = Leg(), Leg(), Recorder()
    direction = Direction(pipe, source, sink, masked, maxFrame, maxMessage)  # type: ignore[arg-type]
    return direction, source, sink, pipe


STREAM = b"".join(
    [
        frame(1, b""),
        frame(2, b"x" * 125),
        frame(1, b"y" * 126),
        frame(2, b"z" * 65535),
        frame(2, b"w" * 65536),
        frame(1, b"part", fin=False),
        frame(9, b"ping"),
        frame(0, b"-two", fin=False),
        frame(0, b"-end"),
        frame(10, b"a pong not for the relay"),
    ]
)


class ScannerTests(SynchronousTestCase):
    """
    L{Direction} forwards frames byte for byte, however they are cut.
    """

    @settings(max_examples=60, deadline=None)
    @given(st.lists(st.integers(0, len(STREAM)), max_size=40))
    def test_anyCuts(self, cuts: list[int]) -> None:
        """
        Whatever the chunks, the bytes out are the bytes in, and messages
        and payload bytes are counted once each.
        """
        direction, source, sink, pipe = scanner()
        feed(direction, STREAM, cuts)
        self.assertEqual(b"".join(sink.written), STREAM)
        self.assertEqual((source.messagesIn, sink.messagesOut), (6, 6))
        self.assertEqual(source.bytesIn, 125 + 126 + 65535 + 65536 + 12)
        self.assertEqual(pipe.failures, [])

    def test_byteByByte(self) -> None:
        """
        One byte at a time works too.
        """
        direction, _, sink, _ = scanner()
        feed(direction, STREAM[:70000], list(range(70000)))
        self.assertEqual(b"".join(sink.written), STREAM[:70000])

    def test_pongSwallowed(self) -> None:
        """
        A pong answering the relay's ping is not forwarded; data around it
        is.
        """
        direction, _, sink, pipe = scanner()
        data = frame(1, b"a") + frame(10, PING_PREFIX + b"7") + frame(1, b"b")
        direction.dataReceived(data)
        self.assertEqual(b"".join(sink.written), frame_wo(data, 1))
        self.assertEqual(pipe.pongs, [PING_PREFIX + b"7"])

    def test_pingAtBoundary(self) -> None:
        """
        A ping due while a frame streams goes out after that frame, never
        inside it.
        """
        direction, _, sink, _ = scanner(masked=False)
        big = frame(2, b"q" * 1000, mask=False)
        direction.dataReceived(big[:500])
        self.assertFalse(direction.atBoundary())
        direction.ping = PING_PREFIX + b"1"
        direction.pingDue = True
        direction.dataReceived(big[500:] + frame(1, b"next", mask=False))
        out = b"".join(sink.written)
        ping = bytes([0x89, len(PING_PREFIX) + 1]) + PING_PREFIX + b"1"
        self.assertEqual(out, big + ping + frame(1, b"next", mask=False))

    def test_close(self) -> None:
        """
        A close frame is forwarded and reported; what follows is not
        forwarded.
        """
        direction, _, sink, pipe = scanner(masked=False)
        close = closeFrame(4001, b"bye", mask=False)
        direction.dataReceived(close + frame(1, b"late", mask=False))
        self.assertEqual(b"".join(sink.written), close)
        self.assertEqual(pipe.closes, [struct.pack("!H", 4001) + b"bye"])

    def test_violations(self) -> None:
        """
        Broken frames and limits are reported with the close code they
        call for, and nothing of the offending frame is forwarded.
        """
        cases = [
            (frame(1, b"x", mask=False), {}, 1002),
            (bytes([0xC1, 0x80]) + b"\0\0\0\0", {}, 1002),
            (frame(9, b"p", fin=False), {}, 1002),
            (frame(9, b"p" * 126), {}, 1002),
            (frame(0, b"c"), {}, 1002),
            (frame(3, b"c"), {}, 1002),
            (frame(1, b"a", fin=False) + frame(1, b"b"), {}, 1002),
            (frame(2, b"x" * 11), {"maxFrame": 10}, 1009),
            (
                frame(2, b"x" * 8, fin=False) + frame(0, b"x" * 8),
                {"maxMessage": 10},
                1009,
            ),
        ]
        for data, limits, code in cases:
            direction, _, sink, pipe = scanner(**limits)
            direction.dataReceived(data)
            self.assertEqual([c for c, _ in pipe.failures], [code], data)
            self.assertTrue(len(b"".join(sink.written)) < len(data), data)
        direction, _, _, pipe = scanner(masked=False)
        direction.dataReceived(frame(1, b"x", mask=True))
        self.assertEqual(pipe.failures[0][0], 1002)

    def test_badCloseFrames(self) -> None:
        """
        A close frame the other side would have to refuse (one byte, a code
        that may not be sent, a reason that is not UTF-8) is not forwarded:
        its sender is failed with 1002 or 1007, as the message path does.
        """
        cases = [
            (b"\x03", 1002),
            (struct.pack("!H", 1005), 1002),
            (struct.pack("!H", 2999), 1002),
            (struct.pack("!H", 1000) + b"\xff", 1007),
        ]
        for payload, code in cases:
            direction, _, sink, pipe = scanner()
            direction.dataReceived(frame(1, b"ok") + frame(8, payload))
            self.assertEqual([c for c, _ in pipe.failures], [code], payload)
            self.assertEqual(pipe.closes, [])

    def test_bytesBeforeViolation(self) -> None:
        """
        The frames before a bad one in the same chunk are forwarded whole,
        as a direct connection would have delivered them; nothing of the
        bad frame is.
        """
        before = frame(1, b"valid") + frame(9, b"ping")
        cases = [
            frame(1, b"x", mask=False),
            frame(1, b"x", rsv=2),
            frame(9, b"p", fin=False),
            frame(9, b"p" * 126),
            frame(0, b"c"),
            frame(5, b"c"),
            frame(11, b""),
            frame(8, b"\x03"),
            bytes([0x81, 0xFE, 0, 5]) + b"\0\0\0\0" + b"short",
            frame(2, b"x" * 11),
        ]
        for bad in cases:
            direction, _, sink, pipe = scanner(maxFrame=10)
            direction.dataReceived(before + bad)
            self.assertEqual(len(pipe.failures), 1, bad)
            self.assertEqual(b"".join(sink.written), before, bad)

    def test_nonMinimalLength(self) -> None:
        """
        A frame length encoded in more bytes than needed (RFC 6455 5.2), or
        with the most significant bit of its 64-bit form set, fails the
        sender with 1002, as Autobahn (the message data path) does; the
        smallest lengths of each form pass.
        """
        mask = b"\0\0\0\0"
        for masked in (True, False):
            bit = 0x80 if masked else 0
            key = mask if masked else b""
            bad = [
                bytes([0x82, bit | 126]) + struct.pack("!H", 125) + key,
                bytes([0x82, bit | 127]) + struct.pack("!Q", 5) + key,
                bytes([0x82, bit | 127]) + struct.pack("!Q", 65535) + key,
                bytes([0x82, bit | 127]) + struct.pack("!Q", 1 << 63) + key,
            ]
            for header in bad:
                direction, _, sink, pipe = scanner(masked=masked)
                direction.dataReceived(header)
                self.assertEqual(pipe.failures, [(1002, pipe.failures[0][1])], header)
                self.assertEqual(b"".join(sink.written), b"", header)
            good = [
                bytes([0x82, bit | 126]) + struct.pack("!H", 126) + key + b"x" * 126,
                bytes([0x82, bit | 127])
                + struct.pack("!Q", 65536)
                + key
                + b"x" * 65536,
            ]
            for data in good:
                direction, _, sink, pipe = scanner(masked=masked)
                direction.dataReceived(data)
                self.assertEqual(pipe.failures, [], data[:10])
                self.assertEqual(b"".join(sink.written), data)


def frames(data: bytes) -> list[tuple[int, bytes]]:
    """
    Parse whole frames, masked or not.

    @return: Each frame's opcode and unmasked payload (a close frame's code
        only).
    """
    found = []
    i = 0
    while i < len(data):
        b0, b1 = data[i], data[i + 1]
        n, i = b1 & 0x7F, i + 2
        if n == 126:
            (n,) = struct.unpack_from("!H", data, i)
            i += 2
        elif n == 127:
            (n,) = struct.unpack_from("!Q", data, i)
            i += 8
        key = data[i : i + 4] if b1 & 0x80 else b""
        i += len(key)
        payload = data[i : i + n]
        if key:
            payload = bytes(b ^ key[k % 4] for k, b in enumerate(payload))
        found.append((b0 & 0x0F, payload[:2] if b0 & 0x0F == 8 else payload))
        i += n
    return found


def close(code: int) -> tuple[int, bytes]:
    """
    @return: What L{frames} gives for a close frame with C{code}.
    """
    return 8, struct.pack("!H", code)


class FailureOrderTests(SynchronousTestCase):
    """
    L{Pipe} fails a side that breaks the protocol in a direct connection's
    order: the other side first, then, once it answered (or after
    C{close_timeout}), the offender.
    """

    def pipe(self) -> tuple[Pipe, PipeLeg, PipeLeg, Clock]:
        """
        A pipe between two fake legs, with a C{close_timeout} of 5 seconds.
        """
        clock = Clock()
        f, up = PipeLeg(), PipeLeg()
        pipe = Pipe(PipeSession(clock, 5.0), f, up)  # type: ignore[arg-type]
        return pipe, f, up, clock

    def test_clientFailed(self) -> None:
        """
        A client's text frame and then one with RSV2: the backend gets the
        text and then 1002; its echo and then its close answer go on, and
        the client gets the echo, then 1002 (not the backend's answer) and
        the end of the stream.
        """
        pipe, f, up, _ = self.pipe()
        pipe.fromClient.dataReceived(frame(1, b"Hello") + frame(1, b"bad", rsv=2))
        self.assertEqual(frames(up.transport.data), [(1, b"Hello"), close(1002)])
        self.assertEqual(f.transport.data, b"")
        pipe.fromBackend.dataReceived(
            frame(1, b"Hello", mask=False)
            + closeFrame(1000, b"not forwarded", mask=False)
        )
        self.assertEqual(frames(f.transport.data), [(1, b"Hello"), close(1002)])
        self.assertTrue(f.transport.writeClosed)
        self.assertTrue(up.transport.lost)
        self.assertEqual(pipe.session.closedBy, "relay")

    def test_backendFailed(self) -> None:
        """
        The mirror image: a backend's text frame and then one with a
        reserved opcode; the client gets the text and then 1002, the
        backend the client's echo, then 1002, and the end of the stream.
        """
        pipe, f, up, _ = self.pipe()
        pipe.fromBackend.dataReceived(
            frame(1, b"Hello", mask=False) + frame(5, b"", mask=False)
        )
        self.assertEqual(frames(f.transport.data), [(1, b"Hello"), close(1002)])
        self.assertEqual(up.transport.data, b"")
        pipe.fromClient.dataReceived(
            frame(1, b"Hello") + closeFrame(1002, b"", mask=True)
        )
        self.assertEqual(frames(up.transport.data), [(1, b"Hello"), close(1002)])
        self.assertTrue(up.transport.writeClosed)
        self.assertTrue(f.transport.lost)

    def test_noAnswer(self) -> None:
        """
        A backend that does not answer within C{close_timeout} is dropped,
        and the client then gets its 1002; it is dropped in turn one
        C{close_timeout} later if it does not close.
        """
        pipe, f, up, clock = self.pipe()
        pipe.fromClient.dataReceived(frame(1, b"Hello") + frame(1, b"bad", rsv=2))
        pipe.fromBackend.dataReceived(frame(1, b"Hello", mask=False))
        clock.advance(4.9)
        self.assertEqual(frames(f.transport.data), [(1, b"Hello")])
        self.assertFalse(up.transport.lost)
        clock.advance(0.1)
        self.assertEqual(frames(f.transport.data), [(1, b"Hello"), close(1002)])
        self.assertTrue(up.transport.lost)
        self.assertTrue(f.transport.writeClosed)
        self.assertFalse(f.transport.lost)
        clock.advance(5)
        self.assertTrue(f.transport.lost)

    def test_midFrameAtOnce(self) -> None:
        """
        A failure in the middle of a frame (half of it went to the other
        side, which could not parse a close frame after it) drops the other
        side and closes the offender at once.
        """
        pipe, f, up, _ = self.pipe()
        pipe.fromClient.dataReceived(frame(2, b"x" * 100)[:50])
        pipe.fromClient.stopped = True
        pipe.failed(pipe.fromClient, 1009, b"message too big")
        self.assertTrue(up.transport.lost)
        self.assertEqual(frames(f.transport.data), [close(1009)])
        self.assertTrue(f.transport.writeClosed)

    def test_rateLimitAtOnce(self) -> None:
        """
        A failure that is the relay's own policy, a message rate over the
        limit (1008), closes both sides at once, as before.
        """
        pipe, f, up, _ = self.pipe()
        pipe.failed(pipe.fromClient, 1008, b"message rate exceeded")
        self.assertEqual(frames(f.transport.data), [close(1008)])
        self.assertEqual(frames(up.transport.data), [close(1001)])

    def test_backendLostEndsStream(self) -> None:
        """
        When the backend's connection is lost, the client gets 1014 and
        the end of the stream, and its connection stays open for reading:
        closing it with the client's bytes unread would reset it, and the
        reset can destroy the close frame before the client read it.  What
        the client still sends is dropped, and its leaving ends the pipe.
        """
        pipe, f, up, clock = self.pipe()
        pipe.fromBackend.dataReceived(frame(1, b"Hello", mask=False))
        up.transport = None  # type: ignore[assignment]
        pipe.legClosed(up)
        self.assertEqual(frames(f.transport.data), [(1, b"Hello"), close(1014)])
        self.assertTrue(f.transport.writeClosed)
        self.assertFalse(f.transport.lost)
        self.assertEqual(f.localCloseCode, 1014)  # type: ignore[attr-defined]
        self.assertEqual(pipe.session.closedBy, "backend")
        pipe.fromClient.dataReceived(
            frame(2, b"x" * 16000) + closeFrame(1014, b"", mask=True)
        )
        f.transport = None  # type: ignore[assignment]
        pipe.legClosed(f)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_backendLostClientSilent(self) -> None:
        """
        A client that does not close within C{close_timeout} after its 1014
        is dropped.
        """
        pipe, f, up, clock = self.pipe()
        up.transport = None  # type: ignore[assignment]
        pipe.legClosed(up)
        self.assertEqual(frames(f.transport.data), [close(1014)])
        clock.advance(4.9)
        self.assertFalse(f.transport.lost)
        clock.advance(0.1)
        self.assertTrue(f.transport.lost)

    def test_backendLostMidFrame(self) -> None:
        """
        When the backend's connection is lost after half a frame went to
        the client, which could not parse a close frame after it, the
        client's connection is dropped at once, without a close frame.
        """
        pipe, f, up, _ = self.pipe()
        half = frame(2, b"x" * 16000, mask=False)[:5000]
        pipe.fromBackend.dataReceived(half)
        up.transport = None  # type: ignore[assignment]
        pipe.legClosed(up)
        self.assertEqual(f.transport.data, half)
        self.assertTrue(f.transport.lost)


def frame_wo(data: bytes, index: int) -> bytes:
    """
    C{data} (three small frames) without its frame number C{index}.
    """
    frames = []
    i = 0
    while i < len(data):
        n = data[i + 1] & 0x7F
        frames.append(data[i : i + 2 + 4 + n])
        i += 2 + 4 + n
    return b"".join(f for k, f in enumerate(frames) if k != index)


class KeepaliveTests(SynchronousTestCase):
    """
    The relay's own pings through a L{Pipe} (L{Keepalive}), on a clock.
    """

    def test_pingTimeout(self) -> None:
        """
        When a side sent nothing for a C{ping_interval}, it gets a ping;
        the pong that answers it is not forwarded; a side that does not
        answer within C{ping_timeout} gets both sides closed with 1001, and
        once the pipe stops no timer of it is left.
        """
        clock = Clock()
        f, up = PipeLeg(), PipeLeg()
        session = PipeSession(clock, 5.0, pingInterval=2.0, pingTimeout=3.0)
        pipe = Pipe(session, f, up)  # type: ignore[arg-type]
        pipe.start()
        # The first tick takes each side's marks; the next finds them quiet.
        clock.advance(2.0)
        clock.advance(1.9)
        self.assertEqual((f.transport.data, up.transport.data), (b"", b""))
        clock.advance(0.1)
        self.assertEqual(frames(f.transport.data), [(9, PING_PREFIX + b"1")])
        self.assertEqual(frames(up.transport.data), [(9, PING_PREFIX + b"2")])
        # The backend's ping is masked, as a client's frames are.
        self.assertTrue(up.transport.data[1] & 0x80)
        pipe.fromClient.dataReceived(frame(10, PING_PREFIX + b"1"))
        self.assertEqual(frames(up.transport.data), [(9, PING_PREFIX + b"2")])
        clock.advance(3.0)
        self.assertEqual(frames(f.transport.data)[-1], close(1001))
        self.assertEqual(frames(up.transport.data)[-1], close(1001))
        self.assertEqual(session.closedBy, "relay")
        pipe.stop()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_noPings(self) -> None:
        """
        Without pings (C{ping_interval = 0}) pipes make no keepalive of
        their own: they share one that starts no timer, and stopping a
        pipe leaves it as it was.
        """
        clock = Clock()
        pipes = [
            Pipe(PipeSession(clock, 5.0), PipeLeg(), PipeLeg())  # type: ignore[arg-type]
            for _ in range(2)
        ]
        self.assertIs(pipes[0].keepalive, pipes[1].keepalive)
        self.assertNotIn("keepalive", vars(pipes[0]))
        shared = pipes[0].keepalive
        before = {name: getattr(shared, name, None) for name in Keepalive.__slots__}
        pipes[0].start()
        clock.advance(60)
        self.assertEqual(clock.getDelayedCalls(), [])
        pipes[0].stop()
        after = {name: getattr(shared, name, None) for name in Keepalive.__slots__}
        self.assertEqual(after, before)
        pinging = Pipe(PipeSession(clock, 5.0, pingInterval=2.0), PipeLeg(), PipeLeg())  # type: ignore[arg-type]
        self.assertIsNot(pinging.keepalive, pipes[0].keepalive)


class SessionTests(TestCase):
    """
    A proxy session with C{data_path = passthrough} really switches.
    """

    async def test_switches(self) -> None:
        """
        Messages of every size go both ways unchanged through the pipe,
        and the backend's counters follow.
        """
        b = startBackend(self)
        relay, port = await startRelay(
            self,
            "[relay]\n[route:r]\npath = /\ndata_path = passthrough\n"
            f"backends = {b.url}\n",
        )
        rng = random.Random(5)
        payloads = [rng.randbytes(n) for n in (0, 1, 125, 126, 70000)]

        def run() -> list[bytes]:
            with client(port) as c:
                got = []
                for p in payloads:
                    c.send(p)
                    got.append(bytes(c.recv(TIMEOUT)))
                return got

        self.assertEqual(await inThread(run), payloads)
        self.assertEqual(relay.routes.routes[0].backends[0].sentMessages, 5)

    async def test_backendSpeaksFirst(self) -> None:
        """
        A message that the backend sends in the same TCP write as its 101
        reaches the client after the relay's 101, whole: the 101 waits for
        the end of the reactor's turn (L{wsrelay.ws.writes.sendWithTurn},
        which this handshake took), and the pipe's first write, in that
        same turn, goes behind it.
        """
        raw = startRawBackend(self, None, frameBytes(1, b"first", mask=False))
        relay, port = await startRelay(
            self,
            "[relay]\n[route:r]\npath = /\ndata_path = passthrough\n"
            f"backends = {raw.url}\n",
        )
        took: list[bytes] = []

        def recording(transport: object, data: bytes) -> None:
            took.append(data)
            sendWithTurn(transport, data)

        self.patch(accept, "sendWithTurn", recording)

        def run() -> tuple[bytes, bytes]:
            wire = connectRaw(port, rawRequest(port, "/"))
            with wire.sock:
                head = wire.head()
                return head, wire.frame().payload

        head, first = await inThread(run)
        self.assertTrue(head.startswith(b"HTTP/1.1 101 "), head)
        self.assertEqual(first, b"first")
        self.assertEqual(len(took), 1)
        self.assertTrue(took[0].startswith(b"HTTP/1.1 101 "))

    async def test_pipeInPlace(self) -> None:
        """
        The open session's data path is the pipe: each leg's C{dataPath} is
        the pipe's direction reading from it, called by the leg's own
        C{dataReceived} (no method is replaced on the live legs).  The
        upstream leg is a plain protocol (L{PlainUpstream}), not Autobahn's.
        """
        relay, session, c = await openedPassthrough(self)
        pipe = session.pipe
        self.assertIsInstance(pipe, Pipe)
        assert pipe is not None and session.upstream is not None
        self.assertIs(session.frontend.dataPath, pipe.fromClient)
        self.assertIs(session.upstream.dataPath, pipe.fromBackend)
        self.assertIsInstance(session.upstream, PlainUpstream)
        for leg, method in (
            (session.frontend, RelayLeg.dataReceived),
            (session.upstream, PlainUpstream.dataReceived),
        ):
            self.assertNotIn("dataReceived", vars(leg))
            self.assertEqual(type(leg).dataReceived, method)
        session.shutdown(4000, b"bye")
        self.assertEqual(await inThread(closeOf, c), (4000, "bye"))

    async def test_heldPipeLean(self) -> None:
        """
        An open pipe holds what it needs and nothing made per leg to write:
        each direction writes straight to its sink's TCP connection with
        the method all directions share (L{DirectWriter.write}), from one
        block of slots; no leg keeps a writer of its own; the
        pipe holds no value its configuration gives, nor a timer of its
        own, and the session's close relay nothing of its own.  Messages
        pass both ways, and the close.
        """
        relay, session, c = await openedPassthrough(self)
        pipe = session.pipe
        assert pipe is not None and session.upstream is not None
        for direction in (pipe.fromClient, pipe.fromBackend):
            self.assertIsInstance(direction.tcp, Connection)
            self.assertIs(direction.tcp, direction.sink.transport)
            self.assertFalse(hasattr(direction, "__dict__"))
            self.assertIs(type(direction).write, DirectWriter.write)
        # Neither leg wrote on the message path: the upstream sent its
        # request, and the client's leg its 101, once (writes.sendNow and
        # writes.sendWithTurn).
        for leg in (session.upstream, session.frontend):
            self.assertNotIn("_directWrite", vars(leg))
        # (Its own keepalive only with pings, as here.)
        self.assertEqual(
            sorted(vars(pipe)),
            ["fromBackend", "fromClient", "frontend", "keepalive", "session"]
            + ["upstream"],
        )
        self.assertEqual(vars(session.closes), {})
        # Its keepalive's tick waits in the relay's queue for the ping
        # interval, which one timer serves for every pipe.
        deadlines = session.frontend.factory.deadlines
        queue = deadlines.queue(session.config.pingInterval)
        self.assertIs(pipe.keepalive._queue, queue)
        self.assertEqual(len(queue), 1)
        await inThread(c.send, "again")
        self.assertEqual(await inThread(c.recv, TIMEOUT), "again")
        session.shutdown(4000, b"bye")
        self.assertEqual(await inThread(closeOf, c), (4000, "bye"))
