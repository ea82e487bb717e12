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

With context takeover the sender's compressor remembers earlier messages,
so the counter keeps its inflater from one message to the next (a window
of 2 ** C{windowBits} bytes plus zlib's state: about 40 KiB at the default
15 bits); with C{*_no_context_takeover} it makes a new one for each
message and lets it go at the message's end.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
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


def deflateParameters(answer: Sequence[str]) -> dict[str, str]:
    """
    @param answer: The values of the C{Sec-WebSocket-Extensions} fields of
        a backend's 101.
    @return: The parameters of its C{permessage-deflate}, names in lower
        case, values unquoted (an empty string for a parameter without
        one); empty when it has none or is not there.
    """
    for value in answer:
        for extension in value.split(","):
            name, *parameters = extension.split(";")
            if name.strip().lower() != "permessage-deflate":
                continue
            found = {}
            for parameter in parameters:
                key, _, v = parameter.partition("=")
                found[key.strip().lower()] = v.strip().strip('"')
            return found
    return {}


def counterFor(
    answer: Sequence[str], sender: str, maxFrame: int, maxMessage: int
) -> InflateCounter:
    """
    An L{InflateCounter} for the messages C{sender} compresses, as the
    backend's C{answer} negotiated them.

    @param sender: C{"client"} or C{"server"} (the backend): whose
        C{*_max_window_bits} and C{*_no_context_takeover} apply.
    """
    parameters = deflateParameters(answer)
    try:
        windowBits = int(parameters.get(sender + "_max_window_bits") or 15)
    except ValueError:
        windowBits = 15
    if not 8 <= windowBits <= 15:
        # Not a valid answer: a window large enough for any sender.
        windowBits = 15
    takeover = sender + "_no_context_takeover" not in parameters
    return InflateCounter(windowBits, takeover, maxFrame, maxMessage)


class InflateCounter:
    """
    Counts the inflated size of one sender's compressed messages.

    Use: L{beginMessage} at the first frame of a compressed message,
    L{beginFrame} at each of its frames, L{feed} with each piece of a
    frame's payload as it arrives.

    @ivar windowBits: The window, in bits, it inflates with.
    @ivar contextTakeover: Whether it keeps its inflater from one message
        to the next.
    @ivar fin: Whether the current frame ends its message.
    @ivar frameSize: Inflated bytes of the current frame so far.
    @ivar messageSize: Inflated bytes of the current message so far.
    """

    def __init__(
        self, windowBits: int, contextTakeover: bool, maxFrame: int, maxMessage: int
    ) -> None:
        """
        @param windowBits: The sender's largest LZ77 window, 8 to 15.
        @param contextTakeover: Whether the sender may refer to earlier
            messages (no C{*_no_context_takeover} was negotiated).
        @param maxFrame: The most inflated bytes a frame may have.
        @param maxMessage: The most inflated bytes a message may have.
        """
        # zlib 1.2.9 and later never compress with a window of 8 bits, but
        # of 9; a larger window inflates whatever a smaller one made.
        self.windowBits = windowBits if windowBits > 8 else 9
        self.contextTakeover = contextTakeover
        self._maxFrame = maxFrame
        self._maxMessage = maxMessage
        self._inflater: Any = None
        self._ended = False
        self._key = b""
        self._position = 0
        self.fin = False
        self.frameSize = 0
        self.messageSize = 0

    def beginMessage(self) -> None:
        """
        A compressed message starts.
        """
        if self._inflater is None or not self.contextTakeover:
            self._inflater = zlib.decompressobj(-self.windowBits)
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
            inflated.
        """
        if self._key and data:
            data = unmask(self._key, data, self._position)
            self._position += len(data)
        problem = self._inflate(data) if not self._ended else None
        if end and self.fin and problem is None:
            if not self._ended:
                problem = self._inflate(TAIL)
            if not self.contextTakeover:
                self._inflater = None
        if problem is not None:
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
                    # message; the next one starts a new stream.
                    self._ended = True
                    self._inflater = None
                    return None
                if produced < want:
                    # All input consumed and no output left pending: a full
                    # output buffer may hide more, so go on only then.
                    return None
                data = inflater.unconsumed_tail
        except zlib.error:
            return 1007, b"compressed data invalid"
