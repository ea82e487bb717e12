"""
The passthrough scanner driven directly, without a session: fake legs
that record what they are asked to do, and frames fed in pieces.
"""

from __future__ import annotations

import os
import struct
from typing import Any

from wsrelay.proxy.direction import Direction


def frame(
    opcode: int, payload: bytes, fin: bool = True, mask: bool = True, rsv: int = 0
) -> bytes:
    """
    Frame C{payload} as a client (masked) or a server sends it, with the
    reserved bits C{rsv} (C{0b100} is RSV1).
    """
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
    bit = 0x80 if mask else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 65536:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class Leg:
    """
    Stands for a leg: counters and a transport that keeps what is written.
    """

    def __init__(self) -> None:
        self.messagesIn = self.bytesIn = self.messagesOut = self.bytesOut = 0
        self.written: list[bytes] = []
        self.transport = self

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def writer(self) -> Any:
        return self.write


class Recorder:
    """
    Stands for a L{Pipe}: records what the scanner reports.
    """

    def __init__(self) -> None:
        self.pongs: list[bytes] = []
        self.closes: list[bytes] = []
        self.failures: list[tuple[int, bytes]] = []

    def ponged(self, direction: Any, payload: bytes) -> None:
        self.pongs.append(payload)

    def closeSeen(self, direction: Any, payload: bytes) -> None:
        self.closes.append(payload)

    def failed(self, direction: Any, code: int, reason: bytes) -> None:
        self.failures.append((code, reason))

    def tooBig(self, direction: Any, reason: bytes) -> None:
        self.failures.append((1009, reason))


def feed(direction: Direction, data: bytes, cuts: list[int]) -> None:
    """
    Feed C{data} in pieces cut at C{cuts}.
    """
    last = 0
    for cut in sorted(set(cuts)) + [len(data)]:
        if cut > last:
            direction.dataReceived(data[last:cut])
            last = cut
