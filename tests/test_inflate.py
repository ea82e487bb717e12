"""
L{wsrelay.inflate}: what permessage-deflate messages inflate to, counted
without keeping it; and the passthrough scanner (L{Direction}) counting
compressed messages against the size limits with it.
"""

from __future__ import annotations

import functools
import os
import random
import tracemalloc
import zlib
from collections.abc import Callable
from typing import Any, TypeVar

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests.test_passthrough import Leg, Recorder, feed, frame
from wsrelay.inflate import (
    CHUNK,
    EXPANSION,
    InflateCounter,
    unmask,
)
from wsrelay.passthrough import RSV1, RSV_BITS, Direction

#: What a sync flush ends with, left off the end of each message.
TAIL = b"\x00\x00\xff\xff"

MIB = 1 << 20

T = TypeVar("T")


@functools.cache
def bomb(size: int) -> bytes:
    """
    C{size} zero bytes deflated as one permessage-deflate message (about a
    thousandth of C{size}), made without holding C{size} bytes at once.
    """
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    piece = bytes(MIB)
    parts = [c.compress(piece) for _ in range(size // MIB)]
    parts.append(c.compress(bytes(size % MIB)))
    return b"".join(parts) + c.flush(zlib.Z_SYNC_FLUSH)[: -len(TAIL)]


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


def traceMemory(testCase: Any) -> int:
    """
    Trace memory allocations (until the end of C{testCase}) and reset the
    peak.

    @return: The memory traced now, in bytes.
    """
    if not tracemalloc.is_tracing():
        tracemalloc.start()
        testCase.addCleanup(tracemalloc.stop)
    tracemalloc.reset_peak()
    return tracemalloc.get_traced_memory()[0]


def peakAbove(baseline: int) -> int:
    """
    @return: The most memory traced since L{traceMemory} gave C{baseline},
        above it.
    """
    return tracemalloc.get_traced_memory()[1] - baseline


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

    def test_contextTakeover(self) -> None:
        """
        A message that refers back to earlier ones (context takeover) is
        counted exactly by the counter's fresh inflater, which never saw
        them: how much a message inflates to does not depend on what its
        back references copy.
        """
        c = zlib.compressobj(wbits=-15)
        compress(c, TEXT[:20000])
        second = compress(c, TEXT[:20000])
        self.assertLess(len(second), 400)
        self.assertRaises(zlib.error, zlib.decompressobj(-15).decompress, second)
        counter = InflateCounter(MIB, MIB)
        self.assertIsNone(count(counter, [second]))
        self.assertEqual(counter.messageSize, 20000)

    def test_oneMessageState(self) -> None:
        """
        The inflater lives for one message: nothing is held between
        messages.
        """
        counter = InflateCounter(MIB, MIB)
        c = zlib.compressobj(wbits=-15)
        for size in (100, 5000):
            self.assertIsNone(count(counter, [compress(c, TEXT[:size])]))
            self.assertEqual(counter.messageSize, size)
            self.assertIsNone(counter._inflater)

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
        7.2.3.3) is counted, what follows the final block in the message is
        not inflated (a receiver does not inflate it either), and the next
        message starts a new stream.
        """
        counter = InflateCounter(MIB, MIB)
        for _ in range(2):
            c = zlib.compressobj(wbits=-15)
            data = c.compress(TEXT[:3000]) + c.flush(zlib.Z_FINISH)
            self.assertIsNone(count(counter, [data, b"\xff" * 10]))
            self.assertEqual(counter.messageSize, 3000)

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
    masked: bool = True, maxFrame: int = MIB, maxMessage: int = MIB
) -> tuple[Direction, Leg, Recorder]:
    """
    A direction between two fake legs, with permessage-deflate negotiated.
    """
    source, sink, pipe = Leg(), Leg(), Recorder()
    counter = InflateCounter(maxFrame, maxMessage)
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
        A compressed message in one frame whose payload is at most a 1032nd
        of the limits (less the tail) cannot pass them and is not inflated:
        even bytes that are not deflate pass, left to the endpoints.  One
        byte more, or the same bytes as the first of several frames, are
        inflated, and fail with 1007.
        """
        direction, sink, pipe = scanner()
        bounded = MIB // EXPANSION - len(TAIL)
        passes = frame(2, b"\xff" * bounded, rsv=4)
        direction.dataReceived(passes)
        self.assertEqual((pipe.failures, b"".join(sink.written)), ([], passes))
        for data in (
            frame(2, b"\xff" * (bounded + 1), rsv=4),
            frame(2, b"\xff" * bounded, fin=False, rsv=4),
        ):
            direction, sink, pipe = scanner()
            direction.dataReceived(data)
            self.assertEqual(pipe.failures, [(1007, b"compressed data invalid")])
            self.assertEqual(sink.written, [])
