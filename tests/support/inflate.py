"""
permessage-deflate payloads that inflate far beyond their size (bombs),
streams that desynchronise a careless inflater, and peak memory read
through L{tracemalloc}.
"""

from __future__ import annotations

import functools
import struct
import tracemalloc
import zlib
from typing import Any

#: What a sync flush ends with, left off the end of each message.
TAIL = b"\x00\x00\xff\xff"


MIB = 1 << 20


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


def storedHeader(length: int) -> bytes:
    """
    The start of a deflate stored block (not final) of C{length} bytes: its
    header byte, LEN and NLEN.
    """
    return b"\x00" + struct.pack("<HH", length, length ^ 0xFFFF)


def desync(n1: int = 10) -> tuple[bytes, bytes]:
    """
    Two permessage-deflate payloads that a receiver with context takeover
    inflates differently from a counter that starts each message afresh.

    The first opens a stored block longer than itself: a receiver that
    keeps its inflater goes on copying, through the tail it appends and
    the first five bytes of the second message.  The second, read from its
    start, is a stored block of 16 MiB of zeros deflated (about 16 KB):
    read from its sixth byte, as that receiver does, it is that deflate
    stream, and inflates to 16 MiB.

    @param n1: The bytes of the first message in its stored block.
    @return: The two payloads.
    """
    bombed = bomb(16 * MIB)
    first = storedHeader(n1 + len(TAIL) + 5) + b"a" * n1
    return first, storedHeader(len(bombed)) + bombed


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
