"""
The frames the relay writes itself (L{wsrelay.ws.framing}).
"""

from __future__ import annotations

import struct

from twisted.trial.unittest import SynchronousTestCase

from wsrelay.fanout import channel as fanout
from wsrelay.proxy import direction, pipe
from wsrelay.proxy.inflate import unmask
from wsrelay.ws import legs
from wsrelay.ws.framing import (
    BINARY,
    CLOSE,
    PING,
    TEXT,
    Assembler,
    closeFrame,
    compressFrame,
    controlFrame,
    frame,
)


class FrameTests(SynchronousTestCase):
    """
    L{frame} writes what RFC 6455 says a server sends.
    """

    def test_lengths(self) -> None:
        """
        Payloads under 126 bytes have a one-byte length, up to 65535 a
        16-bit one, beyond a 64-bit one; the FIN bit is set, no mask.
        """
        self.assertEqual(frame(TEXT, b"hi"), b"\x81\x02hi")
        self.assertEqual(frame(BINARY, b""), b"\x82\x00")
        self.assertEqual(frame(TEXT, b"x" * 125)[:2], b"\x81\x7d")
        self.assertEqual(frame(TEXT, b"x" * 126)[:4], b"\x81\x7e\x00\x7e")
        self.assertEqual(frame(TEXT, b"x" * 65535)[:4], b"\x81\x7e\xff\xff")
        big = frame(BINARY, b"x" * 65536)
        self.assertEqual(big[:2], b"\x82\x7f")
        self.assertEqual(struct.unpack("!Q", big[2:10])[0], 65536)
        self.assertEqual(len(big), 10 + 65536)

    def test_shared(self) -> None:
        """
        Fan-out and passthrough write their frames with this module's
        functions, and the message path compresses with it: there is one
        framing code for the data paths.
        """
        self.assertIs(legs.compressFrame, compressFrame)
        self.assertIs(fanout.frame, frame)
        self.assertIs(direction.controlFrame, controlFrame)
        self.assertIs(pipe.closeFrame, closeFrame)


class ControlFrameTests(SynchronousTestCase):
    """
    L{controlFrame} and L{closeFrame} write a control frame as a server
    (unmasked) or a client (masked) sends it.
    """

    def test_unmasked(self) -> None:
        """
        Towards a client: FIN and the opcode, the length, the payload.
        """
        self.assertEqual(controlFrame(PING, b"abc", False), b"\x89\x03abc")
        self.assertEqual(
            closeFrame(1001, b"bye", False),
            b"\x88\x05" + struct.pack("!H", 1001) + b"bye",
        )

    def test_masked(self) -> None:
        """
        Towards a backend: the mask bit, a 4-byte key, and the payload
        masked with it.
        """
        data = closeFrame(4000, b"why", True)
        self.assertEqual(data[:2], b"\x88\x85")
        key = data[2:6]
        self.assertEqual(unmask(key, data[6:], 0), struct.pack("!H", 4000) + b"why")
        self.assertEqual(data[0] & 0x0F, CLOSE)

    def test_reasonCut(self) -> None:
        """
        A close reason longer than a control frame holds is cut to 123
        bytes (the code takes 2 of the 125).
        """
        data = closeFrame(1000, b"r" * 200, False)
        self.assertEqual(data[1], 125)
        self.assertEqual(len(data), 2 + 125)


class AssemblerTests(SynchronousTestCase):
    """
    L{Assembler} joins a fragmented message.
    """

    def test_join(self) -> None:
        """
        A message in one frame comes back at once; fragments come back
        joined, with the first frame's opcode, when the last arrives.
        """
        a = Assembler()
        self.assertEqual(a.add(TEXT, b"one", True), (TEXT, b"one"))
        self.assertIsNone(a.add(BINARY, b"a", False))
        self.assertIsNone(a.add(0, b"b", False))
        self.assertEqual(a.add(0, b"c", True), (BINARY, b"abc"))
        self.assertEqual(a.add(TEXT, b"next", True), (TEXT, b"next"))
