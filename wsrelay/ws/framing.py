# -*- test-case-name: tests.test_framing -*-
"""
WebSocket frames the relay writes itself (RFC 6455, 5.2), shared by the
data paths that do not go through Autobahn's sender: fan-out frames each
message from its source once for all clients (L{frame}), and passthrough
writes its own close frames and keepalive pings into the streams it
forwards (L{controlFrame}, L{closeFrame}).  L{Assembler} joins a message's
fragments where the relay needs whole messages (fan-out).  On the message
path Autobahn frames, and L{compressFrame} compresses each frame a leg
forwards when that leg negotiated permessage-deflate.

Autobahn's C{PreparedMessage} would frame a broadcast once too, but costs
about three times L{frame} per message (measured: BENCHMARKS.md, issue 14),
and its sending path is per client; these are one C{bytes} concatenation.
"""

from __future__ import annotations

import os
import struct
from typing import Any

from wsrelay.proxy.inflate import unmask

CONTINUATION = 0
TEXT = 1
BINARY = 2
CLOSE = 8
PING = 9
PONG = 10

_U16 = struct.Struct("!H")
_SHORT = struct.Struct("!BBH")
_LONG = struct.Struct("!BBQ")


def frame(opcode: int, payload: bytes) -> bytes:
    """
    Frame a whole message as a server sends it: one final frame, unmasked.
    """
    n = len(payload)
    if n < 126:
        return bytes((0x80 | opcode, n)) + payload
    if n < 65536:
        return _SHORT.pack(0x80 | opcode, 126, n) + payload
    return _LONG.pack(0x80 | opcode, 127, n) + payload


def controlFrame(opcode: int, payload: bytes, mask: bool) -> bytes:
    """
    Frame a control message (at most 125 bytes), masked when sent to a
    backend.
    """
    if not mask:
        return bytes((0x80 | opcode, len(payload))) + payload
    key = os.urandom(4)
    masked = unmask(key, payload, 0)
    return bytes((0x80 | opcode, 0x80 | len(payload))) + key + masked


def closeFrame(code: int, reason: bytes, mask: bool) -> bytes:
    """
    Frame a close message (the reason cut to the 123 bytes that fit).
    """
    return controlFrame(CLOSE, _U16.pack(code) + reason[:123], mask)


#: What a sync flush ends with, and permessage-deflate strips from the end
#: of a message (RFC 7692 7.2.1).
_SYNC_TAIL = b"\x00\x00\xff\xff"


def compressFrame(
    pmce: Any, opcode: int, payload: bytes, fin: bool, inMessage: bool
) -> tuple[int, bytes, bool, int]:
    """
    Compress one frame of a message with permessage-deflate, keeping the
    message's fragmentation: each frame's data is flushed with it, so that
    the receiver gets it as soon as it would have uncompressed.

    @param pmce: The leg's C{PerMessageDeflate}.
    @param inMessage: Whether earlier frames of this message were sent.
    @return: The arguments of C{sendFrame}: opcode, compressed payload, FIN
        and the RSV bits (RSV1 on the first frame only).
    """
    if not inMessage:
        pmce.start_compress_message()
    data = pmce.compress_message_data(payload)
    # end_compress_message is a sync flush without its 4-byte tail; a frame
    # in the middle of the message keeps the tail.
    data += pmce.end_compress_message()
    if not fin:
        data += _SYNC_TAIL
    return opcode, data, fin, 0 if inMessage else 4


class Assembler:
    """
    Joins the frames of a message: the relay frames whole messages for
    fan-out.
    """

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._opcode = TEXT

    def add(self, opcode: int, payload: bytes, fin: bool) -> tuple[int, bytes] | None:
        """
        Take one data frame.

        @return: The opcode and payload of the message it completes, or
            L{None} while the message goes on.
        """
        parts = self._parts
        if not fin:
            if opcode:
                self._opcode = opcode
            parts.append(payload)
            return None
        if not parts:
            return opcode, payload
        parts.append(payload)
        self._parts = []
        return self._opcode, b"".join(parts)
