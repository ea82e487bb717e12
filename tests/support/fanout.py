"""
A fan-out source on loopback (L{Source}), many clients of a relay
(L{Clients}), a client that reads by hand (L{rawClient}, L{unread}, L{FrameReader},
and its session: L{sessionOf}), and the config of a relay that feeds from
a source.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import Server, ServerConnection, serve

from tests.support.clients import inThread, rawRequest
from tests.support.waiting import TIMEOUT, Changes, waitFor
from wsrelay.fanout import UP, Channel, FanoutSession
from wsrelay.service import RelayService

Message = str | bytes


class Source:
    """
    A feed: a C{websockets} server in a thread that sends numbered messages
    to every connection it has, on command, records what each connection
    receives, and can be killed and started again on the same port.

    @ivar port: The port it listens on, the same after a restart.
    @ivar paths: The request path of every connection it accepted, in
        order; a connection's number is its index here.
    @ivar received: What each connection received, by number.
    @ivar open: The connections now open, by number.
    @ivar closes: The close frames received, C{(code, reason)}.
    @ivar lost: The numbers sent while no connection was open.
    @ivar next: The next number to send.
    """

    def __init__(self, testCase: TestCase, first: int = 1) -> None:
        self.port = 0
        self.paths: list[str] = []
        self.received: list[list[Message]] = []
        self.open: dict[int, ServerConnection] = {}
        self.closes: list[tuple[int | None, str | None]] = []
        self.lost: list[int] = []
        self.next = first
        self._lock = threading.Lock()
        self._changes = Changes()
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self.start()
        testCase.addCleanup(inThread, self.stop)

    def url(self, path: str = "/feed") -> str:
        """
        @return: The URL of C{path} on this source.
        """
        return f"ws://127.0.0.1:{self.port}{path}"

    def start(self) -> None:
        """
        Listen (again, on the same port after the first time).
        """
        server = serve(
            self._handle,
            "127.0.0.1",
            self.port,
            compression=None,
            max_size=None,
            ping_interval=None,
        )
        self._server = server
        self.port = server.socket.getsockname()[1]
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()

    def _handle(self, connection: ServerConnection) -> None:
        """
        Record a connection and what it receives until it closes.
        """
        with self._lock:
            number = len(self.paths)
            self.paths.append(connection.request.path if connection.request else "")
            received: list[Message] = []
            self.received.append(received)
            self.open[number] = connection
        self._changes.changedInThread()
        try:
            for message in connection:
                received.append(message)
                self._changes.changedInThread()
        except ConnectionClosed:
            pass
        finally:
            with self._lock:
                del self.open[number]
                rcvd = connection.protocol.close_rcvd
                if rcvd is not None:
                    self.closes.append((rcvd.code, rcvd.reason))
            self._changes.changedInThread()

    def until(self, predicate: Callable[[], object]) -> Deferred[None]:
        """
        @param predicate: A condition on the source's connections (which
            are open, what they received).
        @return: A L{Deferred} that fires once C{predicate} holds, checked
            again whenever a connection opens, receives or closes; it
            fails after L{TIMEOUT} seconds.
        """
        return self._changes.until(predicate)

    def connectionsTo(self, path: str) -> list[int]:
        """
        @return: The numbers of the open connections to C{path}.
        """
        with self._lock:
            return [n for n in self.open if self.paths[n] == path]

    def send(self, count: int, size: int = 0) -> None:
        """
        Send the next C{count} numbers to every open connection, each as
        C{"SEQ PATH"} padded to C{size} characters; a number sent while no
        connection is open is lost.  Blocks: call it in a thread.
        """
        for _ in range(count):
            with self._lock:
                seq = self.next
                self.next += 1
                targets = list(self.open.items())
            if not targets:
                self.lost.append(seq)
                continue
            for number, connection in targets:
                connection.send(self.message(seq, self.paths[number], size))

    def message(self, seq: int, path: str, size: int) -> str:
        """
        @return: The message numbered C{seq} for a connection to C{path}:
            C{"SEQ PATH"} padded to C{size} characters.
        """
        return f"{seq} {path} ".ljust(size, "x")

    def stream(self, stop: threading.Event) -> None:
        """
        Send numbers until C{stop} is set or the last connection closes.
        """
        while not stop.is_set():
            try:
                self.send(10)
            except ConnectionClosed:
                return
            if not self.open:
                return

    def kill(self) -> None:
        """
        Stop listening, then cut every connection without a close frame
        (the data already sent still arrives, then the TCP connection
        ends).  Blocks: call it in a thread.
        """
        server = self._server
        assert server is not None
        stopper = threading.Thread(
            target=server.shutdown, kwargs={"close_connections": False}, daemon=True
        )
        stopper.start()
        server.socket_closed.wait(TIMEOUT)
        deadline = time.monotonic() + TIMEOUT
        while stopper.is_alive():
            assert time.monotonic() < deadline, "source connections did not end"
            with self._lock:
                connections = list(self.open.values())
            for connection in connections:
                try:
                    connection.socket.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            stopper.join(0.01)
        self._server = None

    def goAway(self) -> None:
        """
        Shut down as a server does: close every connection with 1001 and
        stop listening.  Blocks: call it in a thread.
        """
        server, self._server = self._server, None
        assert server is not None
        server.shutdown()

    def stop(self) -> None:
        """
        Shut down, if running.
        """
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
        if self._thread is not None:
            self._thread.join(TIMEOUT)


class Clients:
    """
    Many C{websockets} asyncio clients of a relay, run by one event loop in
    one thread; their methods block (call them in a thread), their
    attributes may be read from anywhere.

    @ivar messages: What each client received, in order.
    @ivar closes: How each client's connection ended, C{(code, reason)},
        or L{None} while it is open.
    """

    def __init__(self, testCase: TestCase, port: int) -> None:
        self.port = port
        self.messages: list[list[Message]] = []
        self.closes: list[tuple[int | None, str | None] | None] = []
        self._connections: list[ClientConnection] = []
        self._readers: list[asyncio.Task[None]] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        testCase.addCleanup(inThread, self.stop)

    def _call(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(
            TIMEOUT * 3
        )

    def add(self, count: int, path: str) -> list[int]:
        """
        Connect C{count} more clients to C{path}, 25 at a time (Twisted's
        default listen queue is 50).

        @return: Their indexes.
        """
        return list(self._call(self._add(count, path)))

    async def _add(self, count: int, path: str) -> range:
        first = len(self._connections)
        url = f"ws://127.0.0.1:{self.port}{path}"
        for start in range(0, count, 25):
            connections = await asyncio.gather(
                *(
                    connect(
                        url,
                        compression=None,
                        max_size=None,
                        open_timeout=TIMEOUT,
                        ping_interval=None,
                    )
                    for _ in range(min(25, count - start))
                )
            )
            for connection in connections:
                index = len(self._connections)
                self._connections.append(connection)
                self.messages.append([])
                self.closes.append(None)
                self._readers.append(
                    self._loop.create_task(self._read(index, connection))
                )
        return range(first, len(self._connections))

    async def _read(self, index: int, connection: ClientConnection) -> None:
        messages = self.messages[index]
        try:
            async for message in connection:
                messages.append(message)
        except ConnectionClosed:
            pass
        self.closes[index] = (connection.close_code, connection.close_reason)

    def send(self, index: int, message: Message) -> None:
        """
        Send a message from client C{index}.
        """
        self._call(self._connections[index].send(message))

    def close(self, index: int) -> None:
        """
        Close client C{index} and wait until its connection is gone.
        """
        self._call(self._connections[index].close())
        self._call(asyncio.wait_for(self._readers[index], TIMEOUT))

    def stop(self) -> None:
        """
        Close every client and stop the thread.
        """

        async def closeAll() -> None:
            await asyncio.gather(
                *(c.close() for c in self._connections), return_exceptions=True
            )
            await asyncio.gather(*self._readers, return_exceptions=True)

        try:
            self._call(closeAll())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(TIMEOUT)
            self._loop.close()

    def received(self, indexes: Sequence[int], count: int) -> bool:
        """
        @return: Whether each of these clients received C{count} messages.
        """
        return all(len(self.messages[i]) >= count for i in indexes)


def seqs(messages: Sequence[Message]) -> list[int]:
    """
    @return: The numbers of messages from a L{Source}.
    """
    return [int(str(m).split(" ", 1)[0]) for m in messages]


def feed(source: Source, extra: str = "", relay: str = "") -> str:
    """
    @param extra: More keys of the route.
    @param relay: More keys of the C{[relay]} section.
    @return: The config text of a relay with one fan-out route C{ticker}
        at C{/ticker} to C{source}'s C{/feed}, quick to reconnect.
    """
    return (
        f"[relay]\n{relay}[route:ticker]\npath = /ticker\nmode = fanout\n"
        f"backends = {source.url()}\nbackoff_base = 0.05\nbackoff_cap = 0.2\n"
        f"health_interval = 0.1\n{extra}"
    )


async def channelUp(relay: RelayService, key: str = "") -> Channel:
    """
    Wait until the channel C{key} of the route C{ticker} is connected.
    """
    await waitFor(
        lambda: (
            ("ticker", key) in relay.channels
            and relay.channels[("ticker", key)].state == UP
        )
    )
    return relay.channels[("ticker", key)]


async def sourceUp(
    source: Source, relay: RelayService, key: str = "", count: int = 1
) -> Channel:
    """
    Wait until the channel C{key} of the route C{ticker} is connected and
    C{source} has C{count} connections open: it sends only to those, and
    the relay can see the source's 101 before the source's thread records
    the connection.
    """
    channel = await channelUp(relay, key)
    await source.until(lambda: len(source.open) >= count)
    return channel


def unread(s: socket.socket) -> bytes:
    """
    @return: What was written to C{s}'s peer (the relay) and C{s} has not
        read, without waiting for more.
    """
    got = b""
    timeout = s.gettimeout()
    s.setblocking(False)
    try:
        while chunk := s.recv(1 << 20):
            got += chunk
    except BlockingIOError:
        pass
    finally:
        s.settimeout(timeout)
    return got


async def reuseDescriptor(
    test: TestCase, channel: Channel, client: socket.socket, session: FanoutSession
) -> socket.socket:
    """
    Close C{client}, wait until its session left C{channel}, and give the
    number of the session's old descriptor to a socket of the test's own.

    @return: The peer of that socket: what it reads is what was written
        through the old number.
    """
    fd = session.descriptor
    assert fd is not None
    ours, peer = socket.socketpair()
    test.addCleanup(ours.close)
    test.addCleanup(peer.close)
    client.close()
    await waitFor(lambda: session not in channel.members)
    with test.assertRaises(OSError):
        os.fstat(fd)
    os.dup2(ours.fileno(), fd)
    test.addCleanup(os.close, fd)
    return peer


def rawClient(port: int, path: str, receiveBuffer: int | None = None) -> socket.socket:
    """
    A client doing the opening handshake by hand, reading nothing beyond
    the 101 response until told to.

    @param receiveBuffer: A small C{SO_RCVBUF}, for a client that stops
        reading: the kernel then takes little of what the relay writes.
    """
    s = socket.socket()
    if receiveBuffer is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receiveBuffer)
    s.settimeout(TIMEOUT)
    s.connect(("127.0.0.1", port))
    s.sendall(rawRequest(port, path))
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        byte = s.recv(1)
        assert byte, f"connection closed during the handshake: {head!r}"
        head += byte
    assert head.startswith(b"HTTP/1.1 101 "), head
    return s


class FrameReader:
    """
    Parses the frames a server sends (unmasked) from a raw socket.

    @ivar frames: The frames read, as C{(opcode, payload)}.
    """

    def __init__(self, s: socket.socket) -> None:
        self._socket = s
        self._data = b""
        self.frames: list[tuple[int, bytes]] = []

    def _parse(self) -> None:
        data = self._data
        while len(data) >= 2:
            n = data[1] & 0x7F
            start = 2
            if n == 126:
                start = 4
            elif n == 127:
                start = 10
            if len(data) < start:
                break
            if n >= 126:
                n = int.from_bytes(data[2:start], "big")
            if len(data) < start + n:
                break
            self.frames.append((data[0] & 0x0F, data[start : start + n]))
            data = data[start + n :]
        self._data = data

    def readUntil(self, done: Callable[[], bool]) -> None:
        """
        Read frames until C{done()} holds or the connection ends.
        """
        while not done():
            try:
                chunk = self._socket.recv(1 << 20)
            except (ConnectionError, TimeoutError):
                return
            if not chunk:
                return
            self._data += chunk
            self._parse()


def sessionOf(relay: RelayService, s: socket.socket) -> FanoutSession:
    """
    @return: The relay's session for the raw client C{s}.
    """
    port = s.getsockname()[1]
    for session in relay.sessions:
        transport = session.frontend.transport
        if transport is not None and transport.getPeer().port == port:  # type: ignore[attr-defined]
            assert isinstance(session, FanoutSession)
            return session
    raise AssertionError("no session for the raw client")
