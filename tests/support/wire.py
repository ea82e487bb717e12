"""
Raw WebSocket connections with permessage-deflate: handshakes with a
hand-written offer, frames read one by one (L{Wire}), and a raw backend
that answers as a test script says.
"""

from __future__ import annotations

import base64
import hashlib
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.trial.unittest import TestCase

from tests.support.scanning import frame
from tests.support.waiting import TIMEOUT

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


@dataclass
class Frame:
    """
    One frame as read off the wire.
    """

    fin: bool
    rsv: int
    opcode: int
    payload: bytes


def frameBytes(
    opcode: int, payload: bytes, fin: bool = True, rsv: int = 0, mask: bool = True
) -> bytes:
    """
    Frame C{payload}, masked as a client sends it or not as a server does.
    """
    return frame(opcode, payload, fin, mask, rsv)


def request(port: int, path: str, offer: str | None) -> bytes:
    """
    An opening handshake request, with C{offer} as its
    C{Sec-WebSocket-Extensions}.
    """
    extra = f"Sec-WebSocket-Extensions: {offer}\r\n" if offer else ""
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        f"Sec-WebSocket-Version: 13\r\n{extra}\r\n"
    ).encode()


def headerValue(head: bytes, name: str) -> str | None:
    """
    @return: The value of header C{name} in C{head}, or L{None}.
    """
    for line in head.decode("latin-1").split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


class Wire:
    """
    A raw WebSocket endpoint on a blocking socket.

    @ivar masked: Whether it masks what it sends (it is a client).
    """

    def __init__(self, sock: socket.socket, masked: bool) -> None:
        self.sock = sock
        self.masked = masked
        self.buffer = b""
        sock.settimeout(TIMEOUT)

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed")
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def head(self) -> bytes:
        """
        @return: The HTTP head received (what follows stays buffered).
        """
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed in the head")
            self.buffer += chunk
        end = self.buffer.index(b"\r\n\r\n") + 4
        head, self.buffer = self.buffer[:end], self.buffer[end:]
        return head

    def frame(self) -> Frame:
        """
        @return: The next frame, unmasked.
        """
        b0, b1 = self._read(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._read(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._read(8))[0]
        key = self._read(4) if b1 & 0x80 else b""
        payload = self._read(n)
        if key:
            payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        return Frame(bool(b0 & 0x80), (b0 >> 4) & 7, b0 & 0x0F, payload)

    def message(self) -> list[Frame]:
        """
        @return: The frames of the next data message (or a close frame).
        """
        frames = [self.frame()]
        while not frames[-1].fin and frames[-1].opcode != 8:
            frames.append(self.frame())
        return frames

    def closeCode(self) -> int | None:
        """
        Read until a close frame, answer it, and give its code.
        """
        while True:
            f = self.frame()
            if f.opcode == 8:
                self.send(8, f.payload[:2])
                return struct.unpack("!H", f.payload[:2])[0] if f.payload else None

    def send(self, opcode: int, payload: bytes, fin: bool = True, rsv: int = 0) -> None:
        """
        Send one frame.
        """
        self.sock.sendall(frameBytes(opcode, payload, fin, rsv, self.masked))


class RawBackend:
    """
    A backend on a raw socket, in a thread: for each connection it keeps
    the request head, answers 101 with C{answer} as its
    C{Sec-WebSocket-Extensions} and C{after} in the same write, then runs
    C{then}.

    @ivar heads: The request heads received.
    @ivar errors: What went wrong in the thread.
    """

    def __init__(
        self,
        answer: str | None,
        after: bytes = b"",
        then: Callable[[Wire], None] | None = None,
    ) -> None:
        self.answer = answer
        self.after = after
        self.then = then
        self.heads: list[bytes] = []
        self.errors: list[BaseException] = []
        self.done = threading.Event()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(5)
        self.url = f"ws://127.0.0.1:{self.sock.getsockname()[1]}/"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            try:
                wire = Wire(conn, masked=False)
                head = wire.head()
                self.heads.append(head)
                key = headerValue(head, "Sec-WebSocket-Key") or ""
                accept = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest())
                lines = [
                    "HTTP/1.1 101 Switching Protocols",
                    "Upgrade: websocket",
                    "Connection: Upgrade",
                    f"Sec-WebSocket-Accept: {accept.decode()}",
                ]
                if self.answer:
                    lines.append(f"Sec-WebSocket-Extensions: {self.answer}")
                response = ("\r\n".join(lines) + "\r\n\r\n").encode()
                conn.sendall(response + self.after)
                if self.then is not None:
                    self.then(wire)
                else:
                    wire.closeCode()
            except BaseException as e:
                self.errors.append(e)
            finally:
                self.done.set()

    def close(self) -> None:
        """
        Stop listening.
        """
        self.sock.close()


def startRawBackend(testCase: TestCase, *args: Any, **kwargs: Any) -> RawBackend:
    """
    Start a L{RawBackend} closed at the end of C{testCase}.
    """
    backend = RawBackend(*args, **kwargs)
    testCase.addCleanup(backend.close)
    return backend


def connectRaw(port: int, data: bytes) -> Wire:
    """
    Connect a raw client to the relay and send C{data} in one write.
    """
    sock = socket.create_connection(("127.0.0.1", port), TIMEOUT)
    sock.sendall(data)
    return Wire(sock, masked=True)
