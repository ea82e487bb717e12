"""
L{wsrelay.proxy.inflate}: what permessage-deflate messages inflate to, counted
without keeping it; and the passthrough scanner (L{Direction}) counting
compressed messages against the size limits with it.
"""

from __future__ import annotations

import os
import random
import zlib
from collections.abc import Callable
from typing import Any, TypeVar

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests.support.inflate import MIB, TAIL, bomb, desync, peakAbove, traceMemory
from tests.support.scanning import Leg, Recorder, feed, frame
from wsrelay.proxy.direction import RSV1, RSV_BITS, Direction
from wsrelay.proxy.inflate import (
    CHUNK,
    EXPANSION,
    InflateCounter,
    Sender,
    agreedSenders,
    unmask,
)

T = TypeVar("T")


def compress(c: Any, data: bytes) -> bytes:
    """
    One message's payload from the compressor C{c}, as permessage-deflate
    sends it.
    """
    return (c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH))[: -len(TAIL)]


def pureUnmask(key: bytes, data: bytes, position: int) -> bytes:
    """
    Unmask byte by byte: what L{unmask} must agree with.
    """
    return bytes(b ^ key[(position + i) % 4] for i, b in enumerate(data))


def peakMemory(testCase: Any, f: Callable[..., T], *args: Any) -> tuple[T, int]:
    """
    Run C{f(*args)} with C{tracemalloc} on.

    @return: Its result and the most memory traced meanwhile, in bytes,
        above what was traced before.
    """
    baseline = traceMemory(testCase)
    result = f(*args)
    return result, peakAbove(baseline)


def count(counter: InflateCounter, frames: list[bytes], cut: int = 0) -> Any:
    """
    Feed one message's frames to C{counter}, each in pieces of C{cut}
    bytes (0: whole).

    @return: The first problem reported, or L{None}.
    """
    counter.beginMessage()
    for index, payload in enumerate(frames):
        counter.beginFrame(b"", index == len(frames) - 1)
        pieces = [payload]
        if cut:
            pieces = [payload[k : k + cut] for k in range(0, len(payload), cut)] or [
                b""
            ]
        for k, piece in enumerate(pieces):
            problem = counter.feed(piece, k == len(pieces) - 1)
            if problem is not None:
                return problem
    return None


#: Text that compresses well and repeats from far back.
TEXT = b"".join(b"line %d of some text, " % (i % 700) for i in range(20000))


class UnmaskTests(SynchronousTestCase):
    """
    L{unmask} undoes a client's masking from any offset in a payload.
    """

    def test_agreesWithBytewise(self) -> None:
        """
        For small and large pieces (which take the native masker, when
        built) and every offset modulo four, L{unmask} gives what unmasking
        byte by byte gives.
        """
        key = os.urandom(4)
        for n in (0, 1, 3, 4, 5, 127, 3071, 3072, 3073, 70001):
            data = os.urandom(n)
            for position in range(5):
                self.assertEqual(
                    unmask(key, data, position),
                    pureUnmask(key, data, position),
                    (n, position),
                )


class CounterTests(SynchronousTestCase):
    """
    L{InflateCounter} counts exactly what compressed messages inflate to,
    in bounded memory, and reports the first byte past a limit.
    """

    @settings(max_examples=40, deadline=None)
    @given(
        st.lists(st.integers(0, 3000), min_size=1, max_size=6),
        st.integers(0, 700),
        st.booleans(),
    )
    def test_exact(self, sizes: list[int], cut: int, takeover: bool) -> None:
        """
        Messages of any sizes, compressed with or without context takeover,
        in frames fed in pieces of any size, are counted to the byte.
        """
        rng = random.Random(sum(sizes))
        c = zlib.compressobj(wbits=-15)
        counter = InflateCounter(1 << 30, 1 << 30)
        for size in sizes:
            if not takeover:
                c = zlib.compressobj(wbits=-15)
            data = TEXT[rng.randrange(len(TEXT)) :][:size]
            half = len(data) // 2
            frames = [
                c.compress(data[:half]) + c.flush(zlib.Z_SYNC_FLUSH),
                compress(c, data[half:]),
            ]
            self.assertIsNone(count(counter, frames, cut))
            self.assertEqual(counter.messageSize, len(data))

    def test_noTakeoverBackReference(self) -> None:
        """
        Without context takeover, a message that refers back to earlier
        ones all the same is counted by the counter's fresh inflater, which
        never saw them, as a receiver that kept its window counts it: how
        much a message inflates to does not depend on what its back
        references copy.
        """
        c = zlib.compressobj(wbits=-15)
        compress(c, TEXT[:20000])
        second = compress(c, TEXT[:20000])
        self.assertLess(len(second), 400)
        self.assertRaises(zlib.error, zlib.decompressobj(-15).decompress, second)
        counter = InflateCounter(MIB, MIB, Sender(False))
        self.assertIsNone(count(counter, [second]))
        self.assertEqual(counter.messageSize, 20000)

    def test_oneMessageState(self) -> None:
        """
        Without context takeover, the inflater lives for one message:
        nothing is held between messages.  With it, one inflater lives as
        long as the connection.
        """
        for sender in (Sender(False), Sender(True)):
            counter = InflateCounter(MIB, MIB, sender)
            c = zlib.compressobj(wbits=-15)
            kept = []
            for size in (100, 5000):
                self.assertIsNone(count(counter, [compress(c, TEXT[:size])]))
                self.assertEqual(counter.messageSize, size)
                kept.append(counter._inflater)
            if sender.takeover:
                self.assertIsNotNone(kept[0])
                self.assertIs(kept[0], kept[1])
            else:
                self.assertEqual(kept, [None, None])

    def test_desyncedTakeover(self) -> None:
        """
        With context takeover, the counter keeps one inflater for the
        connection, as the receiver does, and counts every message with
        it, however small: a message that leaves the receiver in the
        middle of a stored block cannot make the next one, which the
        receiver inflates to 16 MiB, count as the 16 KB stored block it
        looks like from its start.
        """
        first, second = desync()
        receiver = zlib.decompressobj(-15)
        self.assertEqual(len(receiver.decompress(first + TAIL)), 14)
        self.assertEqual(len(receiver.decompress(second + TAIL)), 16 * MIB + 5)
        counter = InflateCounter(MIB, MIB)
        self.assertEqual(counter.bounded, -1)
        self.assertIsNone(count(counter, [first]))
        self.assertEqual(counter.messageSize, 14)
        self.assertEqual(count(counter, [second]), (1009, b"message too big"))

    @settings(max_examples=20, deadline=None)
    @given(
        st.integers(9, 15),
        st.lists(st.integers(0, 5000), min_size=2, max_size=5),
        st.integers(0, 500),
    )
    def test_takeoverWindow(self, bits: int, sizes: list[int], cut: int) -> None:
        """
        With context takeover and the sender's negotiated window, messages
        that refer back to earlier ones, small ones included, are counted
        exactly, however they are cut.
        """
        c = zlib.compressobj(9, zlib.DEFLATED, -bits)
        counter = InflateCounter(MIB, MIB, Sender(True, bits))
        for size in sizes:
            data = TEXT[size : size * 2]
            self.assertIsNone(count(counter, [compress(c, data)], cut))
            self.assertEqual(counter.messageSize, len(data))

    def test_noTakeoverExact(self) -> None:
        """
        With C{*_no_context_takeover}, each message is counted exactly by an
        inflater of its own, and a message in one frame small enough that
        it cannot pass the limits is not inflated (L{InflateCounter.bounded}
        is a 1032nd of the limits, less the tail).
        """
        counter = InflateCounter(MIB, MIB, Sender(False, 10))
        self.assertEqual(counter.bounded, MIB // EXPANSION - len(TAIL))
        for size in (0, 1, 700, 30000, 200_000):
            c = zlib.compressobj(9, zlib.DEFLATED, -10)
            self.assertIsNone(count(counter, [compress(c, TEXT[:size])], 1000))
            self.assertEqual(counter.messageSize, size)

    @settings(max_examples=30, deadline=None)
    @given(
        st.integers(9, 15),
        st.integers(1, 9),
        st.sampled_from([zlib.Z_DEFAULT_STRATEGY, zlib.Z_RLE, zlib.Z_FIXED]),
        st.lists(st.integers(0, 200_000), min_size=1, max_size=5),
    )
    def test_anySender(
        self, bits: int, level: int, strategy: int, sizes: list[int]
    ) -> None:
        """
        Whatever the sender's window (C{*_max_window_bits}), level and
        strategy, its messages, compressed with context takeover, are each
        counted exactly, and inflate to no more than L{EXPANSION} times
        their payload and the four bytes of the tail.
        """
        rng = random.Random(bits * level + sum(sizes))
        c = zlib.compressobj(level, zlib.DEFLATED, -bits, 9, strategy)
        counter = InflateCounter(1 << 30, 1 << 30)
        for size in sizes:
            at = rng.randrange(len(TEXT))
            data = (TEXT[at:] + bytes(size))[:size]
            payload = compress(c, data)
            self.assertIsNone(count(counter, [payload]))
            self.assertEqual(counter.messageSize, size)
            self.assertLessEqual(size, (len(payload) + len(TAIL)) * EXPANSION)

    def test_limits(self) -> None:
        """
        A message that inflates to exactly C{maxMessage} bytes passes; one
        more byte is refused with 1009, also when it is only the end of the
        message (its tail) that brings it out.  A frame over C{maxFrame}
        is refused in a message that is not.
        """
        for size, expected in ((1000, None), (1001, (1009, b"message too big"))):
            counter = InflateCounter(1000, 1000)
            c = zlib.compressobj(wbits=-15)
            self.assertEqual(count(counter, [compress(c, TEXT[:size])]), expected)
        counter = InflateCounter(600, 1000)
        c = zlib.compressobj(wbits=-15)
        frames = [c.compress(TEXT[:500]) + c.flush(zlib.Z_SYNC_FLUSH)]
        frames.append(compress(c, TEXT[500:1000]))
        self.assertIsNone(count(counter, frames))
        c = zlib.compressobj(wbits=-15)
        frames = [c.compress(TEXT[:601]) + c.flush(zlib.Z_SYNC_FLUSH)]
        frames.append(compress(c, b"x"))
        self.assertEqual(count(counter, frames), (1009, b"frame too big"))

    def test_bombBounded(self) -> None:
        """
        100 MiB of zeros deflated to about 100 KB, fed whole or in pieces,
        is refused with 1009 as soon as it passes a limit of 1 MiB, and
        counting it never holds more than a few hundred KiB.
        """
        payload = bomb(100 * MIB)
        self.assertLess(len(payload), 120_000)
        for cut in (0, 16384):
            counter = InflateCounter(MIB, MIB)
            problem, peak = peakMemory(self, count, counter, [payload], cut)
            self.assertEqual(problem, (1009, b"message too big"))
            self.assertLessEqual(counter.messageSize, MIB + CHUNK)
            self.assertLess(peak, 512 * 1024)

    def test_bombWithoutLimit(self) -> None:
        """
        Even with limits far above it, the bomb is counted whole in bounded
        memory: the inflated bytes are never kept.
        """
        counter = InflateCounter(1 << 40, 1 << 40)
        problem, peak = peakMemory(self, count, counter, [bomb(100 * MIB)])
        self.assertIsNone(problem)
        self.assertEqual(counter.messageSize, 100 * MIB)
        self.assertLess(peak, 512 * 1024)

    def test_corrupt(self) -> None:
        """
        Bytes that are not deflate data are refused with 1007.
        """
        counter = InflateCounter(MIB, MIB)
        self.assertEqual(count(counter, [b"\xff" * 50])[0], 1007)

    def test_finalBlock(self) -> None:
        """
        A message that ends its deflate stream with a final block (RFC 7692
        7.2.3.3) is counted, and the next message starts a new stream, with
        context takeover or without.
        """
        for sender in (Sender(True), Sender(False)):
            counter = InflateCounter(MIB, MIB, sender)
            for _ in range(3):
                c = zlib.compressobj(wbits=-15)
                data = c.compress(TEXT[:3000]) + c.flush(zlib.Z_FINISH)
                self.assertIsNone(count(counter, [data, b""], 7))
                self.assertEqual(counter.messageSize, 3000)

    def test_afterFinalBlock(self) -> None:
        """
        Payload after the final block of a message, in the same piece, a
        later piece or a later frame, is refused with 1007: receivers
        differ on what they make of it.
        """
        c = zlib.compressobj(wbits=-15)
        data = c.compress(TEXT[:3000]) + c.flush(zlib.Z_FINISH)
        for frames, cut in (
            ([data + b"\x00"], 0),
            ([data + b"\x00"], len(data)),
            ([data, b"\xff" * 10], 0),
        ):
            counter = InflateCounter(MIB, MIB)
            self.assertEqual(
                count(counter, frames, cut),
                (1007, b"data after the final deflate block"),
            )

    def test_masked(self) -> None:
        """
        A masked frame (from a client) is unmasked as it is counted, from
        whatever offset each piece starts at.
        """
        c = zlib.compressobj(wbits=-15)
        payload = compress(c, TEXT[:30000])
        key = os.urandom(4)
        masked = pureUnmask(key, payload, 0)
        counter = InflateCounter(MIB, MIB)
        counter.beginMessage()
        counter.beginFrame(key, True)
        pieces = [masked[k : k + 333] for k in range(0, len(masked), 333)]
        for k, piece in enumerate(pieces):
            self.assertIsNone(counter.feed(piece, k == len(pieces) - 1))
        self.assertEqual(counter.messageSize, 30000)


def scanner(
    masked: bool = True,
    maxFrame: int = MIB,
    maxMessage: int = MIB,
    sender: Sender | None = None,
) -> tuple[Direction, Leg, Recorder]:
    """
    A direction between two fake legs, with permessage-deflate negotiated
    (by default with context takeover).
    """
    source, sink, pipe = Leg(), Leg(), Recorder()
    counter = InflateCounter(maxFrame, maxMessage, sender)
    direction = Direction(
        pipe,  # type: ignore[arg-type]
        source,
        sink,
        masked,
        maxFrame,
        maxMessage,
        RSV_BITS & ~RSV1,
        True,
        counter,
    )
    return direction, sink, pipe


def compressedStream(masked: bool) -> bytes:
    """
    Compressed messages (one in fragments, one that inflates to just
    under 1 MiB), uncompressed ones and control frames between them, as
    one sender sends them with context takeover.
    """
    c = zlib.compressobj(wbits=-15)

    def data(opcode: int, payload: bytes, fin: bool = True, rsv: bool = False) -> bytes:
        return frame(opcode, payload, fin, masked, 4 if rsv else 0)

    return b"".join(
        [
            data(1, compress(c, TEXT[:5000]), rsv=True),
            data(2, b"plain"),
            data(1, c.compress(TEXT[:700]) + c.flush(zlib.Z_SYNC_FLUSH), False, True),
            data(9, b"ping"),
            data(0, compress(c, TEXT[700:1400]), fin=False),
            data(0, b""),
            data(2, compress(c, bytes(MIB - 1)), rsv=True),
            data(1, compress(c, b""), rsv=True),
        ]
    )


class ScannerTests(SynchronousTestCase):
    """
    The passthrough scanner counts compressed messages inflated, forwards
    them byte for byte while they are within the limits, and never
    finishes a frame that passes them.
    """

    @settings(max_examples=40, deadline=None)
    @given(st.data())
    def test_anyCuts(self, data: Any) -> None:
        """
        Compressed messages within the limits (one just under them) go
        through unchanged, from a client or a backend, however the stream
        is cut.
        """
        masked = data.draw(st.booleans())
        stream = compressedStream(masked)
        cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=30))
        direction, sink, pipe = scanner(masked)
        feed(direction, stream, cuts)
        self.assertEqual(pipe.failures, [])
        self.assertEqual(b"".join(sink.written), stream)

    def test_bombInOneRead(self) -> None:
        """
        A bomb whose header arrives with enough of it to pass the limit:
        the frames before it go on, none of it does, and the stream
        towards the other side stays between frames (so that side can be
        sent a close frame).
        """
        for masked in (True, False):
            direction, sink, pipe = scanner(masked)
            before = frame(1, b"hello", mask=masked)
            bombFrame = frame(2, bomb(100 * MIB), mask=masked, rsv=4)
            direction.dataReceived(before + bombFrame[:20000])
            self.assertEqual(pipe.failures, [(1009, b"message too big")])
            self.assertEqual(b"".join(sink.written), before)
            self.assertTrue(direction.atBoundary())
            self.assertTrue(direction.stopped)

    def test_bombAcrossReads(self) -> None:
        """
        A bomb whose first read is within the limit: that read goes on, the
        read that passes the limit does not, and the frame stays
        unfinished (the other side can only be dropped).
        """
        direction, sink, pipe = scanner()
        bombFrame = frame(2, bomb(100 * MIB), rsv=4)
        direction.dataReceived(bombFrame[:300])
        self.assertEqual(pipe.failures, [])
        direction.dataReceived(bombFrame[300:20000])
        self.assertEqual(pipe.failures, [(1009, b"message too big")])
        self.assertEqual(b"".join(sink.written), bombFrame[:300])
        self.assertFalse(direction.atBoundary())

    def test_fragmentedOverLimit(self) -> None:
        """
        A compressed message whose frames are each within C{maxFrame} but
        together inflate past C{maxMessage} is stopped in the frame that
        passes it; with a smaller C{maxFrame}, a frame that inflates past
        it is refused as such.
        """
        c = zlib.compressobj(wbits=-15)
        part = c.compress(bytes(600)) + c.flush(zlib.Z_SYNC_FLUSH)
        first = frame(2, part, fin=False, rsv=4)
        second = frame(0, compress(c, bytes(600)))
        direction, sink, pipe = scanner(maxFrame=1000, maxMessage=1000)
        direction.dataReceived(first + second)
        self.assertEqual(pipe.failures, [(1009, b"message too big")])
        self.assertEqual(b"".join(sink.written), first)
        direction, sink, pipe = scanner(maxFrame=500, maxMessage=1000)
        direction.dataReceived(first + second)
        self.assertEqual(pipe.failures, [(1009, b"frame too big")])
        self.assertEqual(sink.written, [])

    def test_boundedNotCounted(self) -> None:
        """
        Without context takeover, a compressed message in one frame whose
        payload is at most a 1032nd of the limits (less the tail) cannot
        pass them and is not inflated:
        even bytes that are not deflate pass, left to the endpoints.  One
        byte more, or the same bytes as the first of several frames, are
        inflated, and fail with 1007.
        """
        noTakeover = Sender(False)
        direction, sink, pipe = scanner(sender=noTakeover)
        bounded = MIB // EXPANSION - len(TAIL)
        passes = frame(2, b"\xff" * bounded, rsv=4)
        direction.dataReceived(passes)
        self.assertEqual((pipe.failures, b"".join(sink.written)), ([], passes))
        for data in (
            frame(2, b"\xff" * (bounded + 1), rsv=4),
            frame(2, b"\xff" * bounded, fin=False, rsv=4),
        ):
            direction, sink, pipe = scanner(sender=noTakeover)
            direction.dataReceived(data)
            self.assertEqual(pipe.failures, [(1007, b"compressed data invalid")])
            self.assertEqual(sink.written, [])

    def test_smallCountedWithTakeover(self) -> None:
        """
        With context takeover, even the smallest compressed message is
        inflated: bytes that are not deflate fail with 1007.
        """
        direction, sink, pipe = scanner()
        direction.dataReceived(frame(2, b"\xff", rsv=4))
        self.assertEqual(pipe.failures, [(1007, b"compressed data invalid")])
        self.assertEqual(sink.written, [])

    def test_desyncedTakeover(self) -> None:
        """
        The adversarial pair of L{desync}, from a client or a backend: the
        first message goes on, the second, which the receiver inflates to
        16 MiB, passes the limit of 1 MiB and none of it goes on.
        """
        for masked in (True, False):
            first, second = (frame(2, p, mask=masked, rsv=4) for p in desync())
            direction, sink, pipe = scanner(masked)
            direction.dataReceived(first + second)
            self.assertEqual(pipe.failures, [(1009, b"message too big")])
            self.assertEqual(b"".join(sink.written), first)

    def test_rateDroppedNotInflated(self) -> None:
        """
        A compressed message dropped for the message rate never reaches the
        receiver, and is not fed to the kept inflater either: the
        messages after it are counted as the receiver inflates them.
        """
        direction, sink, pipe = scanner()
        direction.rated = True
        direction.rateAction = "drop"
        over = [False, True, False]
        direction.source.messageOverRate = lambda: over.pop(0)
        direction.source.rateDrops = 0
        c = zlib.compressobj(wbits=-15)
        kept = frame(1, compress(c, TEXT[:3000]), rsv=4)
        dropped = frame(1, b"\xff" * 20, rsv=4)
        after = frame(1, compress(c, TEXT[3000:6000]), rsv=4)
        direction.dataReceived(kept + dropped + after)
        self.assertEqual(pipe.failures, [])
        self.assertEqual(b"".join(sink.written), kept + after)
        self.assertEqual(direction.counter.messageSize, 3000)  # type: ignore[union-attr]


class AgreedSendersTests(SynchronousTestCase):
    """
    L{agreedSenders} reads each side's context takeover and window from a
    backend's permessage-deflate answer.
    """

    def test_parameters(self) -> None:
        """
        Parameter names in any case, values quoted or not; a missing
        window is 15, one of 8 is 9 (zlib's raw deflate has none of 8), an
        invalid one is 15; the first permessage-deflate element counts.
        """
        cases = [
            ([], (Sender(True, 15), Sender(True, 15))),
            (["permessage-deflate"], (Sender(True, 15), Sender(True, 15))),
            (
                [
                    "Permessage-Deflate; Client_No_Context_Takeover;"
                    ' server_max_window_bits="10"; client_max_window_bits=8'
                ],
                (Sender(False, 9), Sender(True, 10)),
            ),
            (
                ["x-other, permessage-deflate; SERVER_NO_CONTEXT_TAKEOVER", "y"],
                (Sender(True, 15), Sender(False, 15)),
            ),
            (
                [
                    "permessage-deflate; client_max_window_bits=16;"
                    " server_max_window_bits=\u00b2",
                    "permessage-deflate; client_no_context_takeover",
                ],
                (Sender(True, 15), Sender(True, 15)),
            ),
        ]
        for answer, expected in cases:
            self.assertEqual(agreedSenders(answer), expected, answer)
