"""
Clients of the relay on loopback: C{websockets} clients run in a
thread, and raw sockets that send a handshake of their own.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.support.waiting import CLOSING, TIMEOUT


def closedPort() -> int:
    """
    @return: A loopback port nothing listens on.
    """
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return int(port)


def closeOf(c: Any, timeout: float = CLOSING) -> tuple[int | None, str | None]:
    """
    Wait for the relay to close C{c} and say with what; what arrives
    meanwhile is dropped.

    One deadline bounds the whole wait (not each message: a stream of them
    would put it off forever), C{timeout} seconds from now.  C{c}'s
    reading thread records the close frame before it ends the connection,
    which is what ends the wait: the frame is read after that.

    @raise AssertionError: If C{c} is still open then.
    """
    deadline = time.monotonic() + timeout
    try:
        while True:
            c.recv(max(deadline - time.monotonic(), 0))
    except ConnectionClosed:
        pass
    except TimeoutError:
        raise AssertionError(f"not closed within {timeout:g}s") from None
    rcvd = c.protocol.close_rcvd
    return (rcvd.code, rcvd.reason) if rcvd else (None, None)


def rawRequest(port: int, path: str = "/chat", extra: str = "") -> bytes:
    """
    An opening handshake request as bytes.
    """
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        f"Sec-WebSocket-Version: 13\r\n{extra}\r\n"
    ).encode()


def readHead(s: socket.socket) -> bytes:
    """
    @return: What C{s} sends up to the end of an HTTP head, without the
        empty line; fails the test if it ends first.
    """
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(1)
        if not chunk:
            raise EOFError(data)
        data += chunk
    return data[:-4]


def rawExchange(port: int, data: bytes) -> bytes:
    """
    Send bytes to the relay and read until it closes.
    """
    with socket.create_connection(("127.0.0.1", port), TIMEOUT) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def inThread(f: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
    """
    Run a blocking client function in a thread.
    """
    return deferToThread(f, *args, **kwargs)


def client(port: int, path: str = "/", **kwargs: Any) -> ClientConnection:
    """
    Connect a C{websockets} client to the relay.
    """
    kwargs.setdefault("open_timeout", TIMEOUT)
    kwargs.setdefault("compression", None)
    kwargs.setdefault("max_size", None)
    # (A connection returned, used with or without C{with}.)
    kwargs.setdefault("legacy", True)
    return connect(f"ws://127.0.0.1:{port}{path}", **kwargs)
