"""
WebSocket frames and handshakes written and read by hand: frames a
conforming peer would never send, and the raw reading of a frame from a
socket.
"""

from __future__ import annotations

import os
import socket
import struct


def unmask(key: bytes, payload: bytes) -> bytes:
    """
    @return: C{payload} XORed with the 4-byte C{key}.
    """
    n = len(payload)
    repeated = (key * (n // 4 + 1))[:n]
    value = int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")
    return value.to_bytes(n, "big")


def frameBytes(
    fin: bool, rsv: int, opcode: int, mask: bytes | None, payload: bytes, form: str
) -> bytes:
    """
    Encode one frame, possibly wrongly.

    @param mask: The masking key, or L{None} for an unmasked frame.
    @param form: How the length is written: C{"min"} (as RFC 6455 wants),
        C{"16"} or C{"64"} (longer than needed), C{"short"} or C{"long"}
        (announcing fewer or more bytes than follow).
    """
    n = len(payload)
    announced = {"short": max(0, n - 1), "long": n + 3}.get(form, n)
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    m = 0x80 if mask is not None else 0
    if form == "64" or announced > 65535:
        head = struct.pack("!BBQ", b0, m | 127, announced)
    elif form == "16" or announced > 125:
        head = struct.pack("!BBH", b0, m | 126, announced)
    else:
        head = struct.pack("!BB", b0, m | announced)
    if mask is not None:
        return head + mask + unmask(mask, payload)
    return head + payload


def goodRequest(path: str = "/chat", extra: bytes = b"") -> bytes:
    """
    A valid opening handshake request.
    """
    return (
        (
            f"GET {path} HTTP/1.1\r\nHost: relay.example\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n"
        ).encode()
        + extra
        + b"\r\n"
    )


#: A close frame with code 1000, masked as a client sends it.
CLOSE = frameBytes(True, 0, 8, b"abcd", struct.pack("!H", 1000), "min")


#: The same, unmasked, as a server sends it.
CLOSE_REPLY = frameBytes(True, 0, 8, None, struct.pack("!H", 1000), "min")


def readFrame(s: socket.socket) -> tuple[int, bytes]:
    """
    Read one unmasked frame: its opcode and payload.
    """

    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = s.recv(n - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    b0, b1 = exactly(2)
    length = b1 & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", exactly(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", exactly(8))
    return b0 & 0x0F, exactly(length)


def maskedFrame(opcode: int, payload: bytes) -> bytes:
    """
    A client frame.
    """
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert len(payload) < 126
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + body
