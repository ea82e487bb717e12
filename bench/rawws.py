"""
The storm's peers: a client that opens WebSocket connections and a backend
that accepts them, each an asyncio protocol that writes its opening
handshake as prepared bytes and reads only the answer's end, then holds the
connection until told to close it.

Written with picows, the storm's load side spent about 460 µs of CPU per
handshake in the client and 260 µs in the backend, on the one CPU they
share: no target could go beyond about 1,400 handshakes/s, and nginx, at
about 100 µs per handshake, was held by them.  These spend about 100 and
80 µs.  The other scenarios keep their picows peers (L{bench.peers}),
which parse every frame.

Both run as roles of C{python -m bench.peers}: C{storm} and
C{hold-server}.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import time
from typing import cast
from urllib.parse import urlsplit

from bench.peers import emit, nextCommand, selfCPU, waitForEOF

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
"""
What RFC 6455 appends to a key before hashing it into the accept value.
"""

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
"""
The key of every opening handshake the storm's client sends.
"""

CLIENT_CLOSE = b"\x88\x82\x00\x00\x00\x00\x03\xe9"
"""
A client's close frame with code 1001 (going away), masked with a zero key.
"""

SERVER_CLOSE = b"\x88\x02\x03\xe9"
"""
A server's close frame with code 1001.
"""


def accept(key: bytes) -> bytes:
    """
    The C{Sec-WebSocket-Accept} value for a C{Sec-WebSocket-Key}.
    """
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


class HoldServer(asyncio.Protocol):
    """
    One connection to the storm's backend: answers the opening handshake
    with a 101, then only answers a close frame, with a close frame, and
    closes.

    @ivar head: The request head read so far, or L{None} once answered.
    """

    def __init__(self) -> None:
        self.head: bytes | None = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """
        Keep the transport.
        """
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        """
        Answer the opening handshake once its head is complete; after it,
        answer a close frame.
        """
        transport = self.transport
        assert transport is not None
        if self.head is None:
            if data[0] & 0x0F == 0x8:
                transport.write(SERVER_CLOSE)
                transport.close()
            return
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            return
        key = b""
        for line in self.head[:end].split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"sec-websocket-key":
                key = value.strip()
        self.head = None
        transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept(key) + b"\r\n\r\n"
        )


async def holdServer(options: argparse.Namespace) -> None:
    """
    The storm's backend: prints its port, serves until standard input
    closes.
    """
    loop = asyncio.get_running_loop()
    server = await loop.create_server(HoldServer, "127.0.0.1", 0, backlog=4096)
    emit({"port": server.sockets[0].getsockname()[1]})
    await waitForEOF()
    server.close()


class StormClient(asyncio.Protocol):
    """
    One connection of the storm: sends its opening handshake when
    connected, fires L{opened} when the answer's head has arrived (with
    the transport for a 101, else with an error), and then reads only to
    see a close frame and the end of the connection.

    @ivar opened: Fires with the transport once open.
    @ivar closed: Fires when the connection is lost.
    @ivar answered: Whether a close frame has arrived after the 101.
    """

    answered = False

    def __init__(self, request: bytes) -> None:
        """
        @param request: The opening handshake to send.
        """
        self.request = request
        self.head: bytes | None = b""
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[asyncio.Transport] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """
        Send the opening handshake.
        """
        self.transport = cast(asyncio.Transport, transport)
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        """
        Wait for the end of the answer's head, and look at its status;
        after it, note a close frame (the answer to ours).
        """
        if self.head is None:
            if data[0] & 0x0F == 0x8:
                self.answered = True
            return
        self.head += data
        if b"\r\n\r\n" not in self.head:
            return
        status = self.head.split(b"\r\n", 1)[0]
        self.head = None
        if status.startswith(b"HTTP/1.1 101 "):
            self.opened.set_result(self.transport)
        else:
            self.opened.set_exception(
                ConnectionError(f"answered {status.decode('latin-1')!r}")
            )
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        """
        Fail L{opened} if the connection ends before it; fire L{closed}.
        """
        if not self.opened.done():
            self.opened.set_exception(
                ConnectionError(f"connection lost before the answer: {exc}")
            )
        self.closed.set_result(None)


async def storm(options: argparse.Namespace) -> None:
    """
    Open C{connections} connections to C{url} as fast as C{concurrency}
    handshakes in flight allow, report, hold them until a command arrives
    or standard input closes, then close each as a browser does: send a
    close frame and wait for the server to answer it and close the TCP
    connection (so that a proxy closes its upstream cleanly too), dropping
    those that do not finish in 3 seconds.  Report the close phase:
    connections that ended within the 3 seconds (C{closed}), those whose
    close frame was answered (C{answered}), the seconds from the first
    close frame to the last connection's end (C{closeSeconds}) and this
    process's CPU seconds over it (C{closeLoadCPU}).
    """
    loop = asyncio.get_running_loop()
    url = urlsplit(options.url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    request = (
        f"GET {url.path or '/'} HTTP/1.1\r\nHost: {url.netloc}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {KEY.decode()}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode("ascii")
    gate = asyncio.Semaphore(options.concurrency)
    clients: list[StormClient] = []
    errors: list[str] = []
    start = time.monotonic()
    last = start
    cpu = selfCPU()

    async def one() -> None:
        nonlocal last
        async with gate:
            client = StormClient(request)
            try:
                await loop.create_connection(lambda: client, host, port)
                await asyncio.wait_for(asyncio.shield(client.opened), 30)
            except Exception as e:
                errors.append(f"{type(e).__name__}: {e}")
                if hasattr(client, "transport"):
                    client.transport.close()
                return
        clients.append(client)
        last = time.monotonic()

    await asyncio.gather(*(one() for _ in range(options.connections)))
    emit(
        {
            "opened": len(clients),
            "failed": len(errors),
            "errors": sorted(set(errors))[:3],
            "seconds": last - start,
            "loadCPU": selfCPU() - cpu,
        }
    )
    await nextCommand()
    start = time.monotonic()
    cpu = selfCPU()
    for client in clients:
        client.transport.write(CLIENT_CLOSE)
    if clients:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(c.closed for c in clients)), timeout=3
            )
    report = {
        "closed": sum(c.closed.done() for c in clients),
        "answered": sum(c.answered for c in clients),
        "closeSeconds": time.monotonic() - start,
        "closeLoadCPU": selfCPU() - cpu,
    }
    for client in clients:
        client.transport.close()
    emit(report)
