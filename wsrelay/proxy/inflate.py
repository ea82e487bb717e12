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

The count must be what the receiver inflates, and the receiver's state
carries over from one message to the next unless the agreed parameters
say otherwise (L{agreedSenders}):

  - With context takeover (no C{*_no_context_takeover} for that sender),
    the receiver keeps one inflater for the connection, and a message need
    not start at a deflate block boundary: the sender decides where the
    previous one ended, say in the middle of a stored block that swallows
    the previous message's tail and the first bytes of the next.  So the
    counter keeps one inflater too, C{zlib.decompressobj(-window_bits)}
    with the sender's negotiated C{*_max_window_bits}, and feeds it every
    compressed message, and the four bytes a receiver appends to each, as
    the receiver does: it counts exactly what the receiver inflates.
  - With C{*_no_context_takeover}, the receiver may start each message
    afresh, and the counter does: a fresh inflater per message, its
    window primed with 32 KiB of zeros (L{ZERO_WINDOW}, the largest window
    deflate has), so that it also accepts, and counts, the back references
    into earlier messages of a receiver that keeps its window (how many
    bytes a deflate stream inflates to depends only on its codes, never on
    the bytes a match copies).  deflate inflates at most 1032 times
    (L{EXPANSION}): a match of 258 bytes takes two bits at the least
    (zlib's FAQ gives the same ratio).  A message in one frame whose
    payload, with the four bytes a receiver appends, is at most a 1032nd
    of the limits cannot pass them there, and is not inflated at all
    (L{InflateCounter.bounded}).  With context takeover nothing is skipped:
    a small message left uncounted is how the counter would fall out of
    step with the receiver.

A message whose deflate stream ends (a block with BFINAL set, RFC 7692
7.2.3.3) and goes on with more payload is refused with 1007: receivers
differ on what they make of those bytes (zlib-based ones drop them, others
start a new stream).  The next message starts a new stream, in a fresh
inflater primed as a no-context-takeover one is.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Sender:
    """
    How one side compresses what it sends, as permessage-deflate was
    agreed.

    @ivar takeover: Whether it may refer back to earlier messages (no
        C{*_no_context_takeover} for it), and so its receiver keeps one
        inflater for the connection.
    @ivar windowBits: Its LZ77 window (C{*_max_window_bits}), as zlib takes
        it for a raw inflater.
    """

    takeover: bool = True
    windowBits: int = 15


def _windowBits(value: str) -> int:
    """
    @return: The window of a C{*_max_window_bits} value, 15 when it is not
        one (the largest window accepts every back reference a smaller one
        does, and counts them the same).
    """
    value = value.strip().strip('"')
    if not (value.isascii() and value.isdigit()) or not 8 <= int(value) <= 15:
        return 15
    # zlib's raw deflate refuses 8 and makes 9 of it; a window of 9 bits
    # takes every stream one of 8 does.
    return max(int(value), 9)


def agreedSenders(answer: Sequence[str]) -> tuple[Sender, Sender]:
    """
    Read how each side compresses from a backend's
    C{Sec-WebSocket-Extensions} answer (RFC 7692 7.1): its first
    C{permessage-deflate} element, parameter names in any case.

    @param answer: The values of the answer's C{Sec-WebSocket-Extensions}
        fields.
    @return: The client's way of sending, and the backend's.
    """
    for value in answer:
        for element in value.split(","):
            name, *params = element.split(";")
            if name.strip().lower() != "permessage-deflate":
                continue
            agreed: dict[str, str] = {}
            for param in params:
                key, _, v = param.partition("=")
                agreed.setdefault(key.strip().lower(), v)
            return (
                Sender(
                    "client_no_context_takeover" not in agreed,
                    _windowBits(agreed.get("client_max_window_bits", "15")),
                ),
                Sender(
                    "server_no_context_takeover" not in agreed,
                    _windowBits(agreed.get("server_max_window_bits", "15")),
                ),
            )
    return Sender(), Sender()


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
        frame that cannot inflate past the limits (and is not counted); -1
        with context takeover, where every compressed message is counted.
    @ivar fin: Whether the current frame ends its message.
    @ivar frameSize: Inflated bytes of the current frame so far.
    @ivar messageSize: Inflated bytes of the current message so far.
    """

    def __init__(
        self, maxFrame: int, maxMessage: int, sender: Sender | None = None
    ) -> None:
        """
        @param maxFrame: The most inflated bytes a frame may have.
        @param maxMessage: The most inflated bytes a message may have.
        @param sender: How the sender compresses; by default with context
            takeover and a window of 15 bits.
        """
        if sender is None:
            sender = Sender()
        self._maxFrame = maxFrame
        self._maxMessage = maxMessage
        self._takeover = sender.takeover
        self._windowBits = sender.windowBits
        if sender.takeover:
            self.bounded = -1
        else:
            self.bounded = min(maxFrame, maxMessage) // EXPANSION - len(TAIL)
        #: The inflater of the current message, or, with context takeover,
        #: of the connection; L{None} before the first message, and once
        #: its deflate stream ended (a final block).
        self._inflater: Any = None
        #: Whether the current message's deflate stream ended.
        self._ended = False
        self._key = b""
        self._position = 0
        self.fin = False
        self.frameSize = 0
        self.messageSize = 0

    def beginMessage(self) -> None:
        """
        A compressed message to count starts.
        """
        if self._inflater is None or not self._takeover:
            if self._takeover and not self._ended:
                # The connection's first compressed message.
                self._inflater = zlib.decompressobj(-self._windowBits)
            else:
                self._inflater = zlib.decompressobj(-15, zdict=ZERO_WINDOW)
        self._ended = False
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
            inflated, or goes on after its deflate stream ended.
        """
        if self._ended:
            problem = _AFTER_END if data else None
        elif self._key and data:
            problem = self._inflate(unmask(self._key, data, self._position))
            self._position += len(data)
        else:
            problem = self._inflate(data)
        if end and self.fin and problem is None and not self._ended:
            problem = self._inflate(TAIL, True)
        if problem is not None or (end and self.fin and not self._takeover):
            # Without context takeover, the inflater, its window and state,
            # lives for one message.
            self._inflater = None
        return problem

    def _inflate(self, data: bytes, tail: bool = False) -> tuple[int, bytes] | None:
        """
        Inflate C{data}, at most L{CHUNK} bytes at a time (or just past the
        room left under the limits), counting the output and dropping it.

        @param tail: Whether C{data} is the tail a receiver appends, which
            may follow the end of the deflate stream.
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
                    # 7.2.3.3): nothing but the tail may follow it, and the
                    # next message starts a new stream.
                    self._ended = True
                    self._inflater = None
                    if inflater.unused_data and not tail:
                        return _AFTER_END
                    return None
                if produced < want:
                    # All input consumed and no output left pending: a full
                    # output buffer may hide more, so go on only then.
                    return None
                data = inflater.unconsumed_tail
        except zlib.error:
            return 1007, b"compressed data invalid"


#: What a sender whose message goes on after the end of its deflate
#: stream is failed with.
_AFTER_END = (1007, b"data after the final deflate block")
