# -*- test-case-name: tests.test_inflate -*-
"""
Counting what permessage-deflate messages inflate to, on the passthrough
data path, without keeping it.

The passthrough path forwards compressed frames as they are; but a size
limit on the wire bytes is no limit, since 100 KB of deflate inflates to
100 MB.  An L{InflateCounter} follows the compressed messages one sender
sends: it inflates their payloads as they pass, a bounded piece at a time
(L{CHUNK}), throws the output away and counts it against the frame and
message limits.  The bytes forwarded are the bytes received.

Two facts about deflate make this cheap:

  - How many bytes a deflate stream inflates to depends only on its codes
    (literals, and the lengths of matches), never on the bytes a match
    copies.  A sender with context takeover refers back to earlier
    messages, but an inflater whose window is primed with 32 KiB of zeros
    (L{ZERO_WINDOW}, the largest window deflate has) accepts every such
    reference and counts exactly as the receiver's will: so each message
    gets a fresh inflater, no state is kept from one message to the next,
    and the negotiated C{*_max_window_bits} and C{*_no_context_takeover}
    do not matter.
  - deflate inflates at most 1032 times (L{EXPANSION}): a match of 258
    bytes takes two bits at the least (zlib's FAQ gives the same ratio).
    A message in one frame whose payload, with the four bytes a receiver
    appends, is at most a 1032nd of the limits cannot pass them, and is not
    inflated at all (L{InflateCounter.bounded}).
"""

from __future__ import annotations

import zlib
from typing import Any

from autobahn.websocket import USES_NVX
from autobahn.websocket.xormasker import (  # type: ignore[attr-defined]
    create_xor_masker,
)

#: The most inflated bytes one call into zlib produces, and so what the
#: counting holds in memory at once, whatever the compression ratio.
CHUNK = 65536

#: What permessage-deflate strips off the end of every compressed message,
#: and a receiver appends before inflating it (RFC 7692 7.2.2).
TAIL = b"\x00\x00\xff\xff"

#: The most bytes one byte of deflate data inflates to.
EXPANSION = 1032

#: The dictionary of every inflater: as long as deflate's largest window,
#: so that any back reference, into whatever earlier messages held, is
#: valid.
ZERO_WINDOW = bytes(32768)

#: Payload pieces from this size on are unmasked with Autobahn's native
#: masker (NVX, when built); smaller ones by an exclusive or of integers,
#: which costs less than making a native masker (measured here: 14 against
#: 20 microseconds at 2 KiB, 25 against 17 at 4 KiB, 42 against 17 at 8).
_NATIVE_FROM = 3072


def unmask(key: bytes, data: bytes, position: int) -> bytes:
    """
    Unmask a piece of a frame's payload.

    @param key: The frame's four-byte masking key.
    @param data: The masked bytes.
    @param position: The offset of C{data} in the frame's payload.
    @return: The bytes unmasked.
    """
    n = len(data)
    shift = position & 3
    if shift:
        key = key[shift:] + key[:shift]
    if USES_NVX and n >= _NATIVE_FROM:
        return bytes(create_xor_masker(key, n).process(data))
    mask = (key * ((n >> 2) + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(mask, "little")).to_bytes(
        n, "little"
    )


class InflateCounter:
    """
    Counts the inflated size of one sender's compressed messages.

    Use: L{beginMessage} at the first frame of a compressed message that
    must be counted (not a single frame of at most L{bounded} bytes),
    L{beginFrame} at each of its frames, L{feed} with each piece of a
    frame's payload as it arrives.

    @ivar bounded: The largest payload of a compressed message in a single
        frame that cannot inflate past the limits (and is not counted).
    @ivar fin: Whether the current frame ends its message.
    @ivar frameSize: Inflated bytes of the current frame so far.
    @ivar messageSize: Inflated bytes of the current message so far.
    """

    def __init__(self, maxFrame: int, maxMessage: int) -> None:
        """
        @param maxFrame: The most inflated bytes a frame may have.
        @param maxMessage: The most inflated bytes a message may have.
        """
        self._maxFrame = maxFrame
        self._maxMessage = maxMessage
        self.bounded = min(maxFrame, maxMessage) // EXPANSION - len(TAIL)
        self._inflater: Any = None
        self._key = b""
        self._position = 0
        self.fin = False
        self.frameSize = 0
        self.messageSize = 0

    def beginMessage(self) -> None:
        """
        A compressed message to count starts.
        """
        self._inflater = zlib.decompressobj(-15, zdict=ZERO_WINDOW)
        self.messageSize = 0

    def beginFrame(self, key: bytes, fin: bool) -> None:
        """
        A frame of the current message starts.

        @param key: Its masking key, or C{b""} when it is not masked.
        @param fin: Whether it ends the message.
        """
        self._key = key
        self._position = 0
        self.fin = fin
        self.frameSize = 0

    def feed(self, data: bytes, end: bool) -> tuple[int, bytes] | None:
        """
        Count what a piece of the current frame's payload inflates to.

        @param data: The next bytes of the frame's payload, as received.
        @param end: Whether they end the frame.
        @return: L{None} while within the limits; else the close code and
            reason to fail the sender with: 1009 when the frame or the
            message inflated past its limit, 1007 when it cannot be
            inflated.
        """
        if self._inflater is None:
            # The stream ended in this message (a final block): a receiver
            # inflates nothing more of it.
            problem = None
        elif self._key and data:
            problem = self._inflate(unmask(self._key, data, self._position))
            self._position += len(data)
        else:
            problem = self._inflate(data)
        if end and self.fin and problem is None and self._inflater is not None:
            problem = self._inflate(TAIL)
        if problem is not None or (end and self.fin):
            # The inflater, its window and state, lives for one message.
            self._inflater = None
        return problem

    def _inflate(self, data: bytes) -> tuple[int, bytes] | None:
        """
        Inflate C{data}, at most L{CHUNK} bytes at a time (or just past the
        room left under the limits), counting the output and dropping it.
        """
        inflater = self._inflater
        try:
            while True:
                room = self._maxMessage - self.messageSize
                frameRoom = self._maxFrame - self.frameSize
                if frameRoom < room:
                    room = frameRoom
                want = room + 1 if room < CHUNK else CHUNK
                produced = len(inflater.decompress(data, want))
                self.messageSize += produced
                self.frameSize += produced
                if produced > room:
                    if self.messageSize > self._maxMessage:
                        return 1009, b"message too big"
                    return 1009, b"frame too big"
                if inflater.eof:
                    # A final block ended the deflate stream (RFC 7692
                    # 7.2.3.3): a receiver inflates nothing more of this
                    # message.
                    self._inflater = None
                    return None
                if produced < want:
                    # All input consumed and no output left pending: a full
                    # output buffer may hide more, so go on only then.
                    return None
                data = inflater.unconsumed_tail
        except zlib.error:
            return 1007, b"compressed data invalid"
