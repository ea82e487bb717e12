"""
A passthrough WebSocket relay that owns its sockets, run as the benchmark's
C{ownsockets} target: what a relay on Twisted's reactor costs per
handshake when it does not use Twisted's TCP transports (issue 16's storm).

It runs on wsrelay's reactor (L{wsrelay.reactor.RelayReactor}) with
wsrelay's garbage-collector settings, and does, per connection, the least
an honest WebSocket relay must:

  - accepts on its own listening socket (non-blocking, backlog 4096), a
    bounded number of connections per readiness, with C{accept4()} asking
    for a non-blocking descriptor (no C{ioctl} per connection, and no
    Python socket object: the relay reads and writes descriptors);
  - reads the client's request head (at most L{MAX_HEAD} bytes) and checks
    that it is a WebSocket opening handshake (C{GET}, C{Upgrade:
    websocket}, C{Connection: upgrade}, a key, version 13), else answers
    400 (431 for a head too large) and closes;
  - connects to the backend with a non-blocking socket and writes the
    request, with an added C{X-Forwarded-For} line, as soon as the socket
    takes it (at once when the connect completed in C{connect()}, as it
    does on loopback, else when it becomes writable); a failed connect
    shows as a failed write or read (no C{getsockopt}), answered with 502;
  - reads the backend's head, checks its status (101) and its
    C{Sec-WebSocket-Accept} against the key, and writes the relay's own 101
    to the client (with the backend's subprotocol and extensions);
  - then pipes bytes both ways, writing directly; a short write keeps the
    rest, waits for the socket to be writable and stops reading the other
    side until it is written (backpressure);
  - closes both descriptors on either side's end or error (C{close()}, no
    C{shutdown()}), after writing what is pending to the side still open.

There are no timeouts, no routing, no limits, no statistics and no access
log: BENCHMARKS.md estimates what those add.

Two ways to wait for the sockets:

  - C{edge} (the default): each connection's two sockets are registered
    once with the reactor's epoll object, for input, edge-triggered;
    closing a descriptor removes it.  A socket is also registered for
    output (once, and it stays) only when a write is short, or the
    request is written before the connect completed.  L{OwnReactor}, a
    L{RelayReactor}, hands their events to the relay itself.  Two
    C{epoll_ctl} calls per connection, and no event for output that
    nothing waits for.  (Registering both for input and output at once
    costs an event per socket when it becomes writable, each a turn of
    the loop: about as much as the two C{epoll_ctl} calls it saves.)
  - C{level}: the reactor's C{addReader}, C{addWriter}, C{removeReader}
    and C{removeWriter}, with an L{IReadWriteDescriptor} per socket, as a
    Twisted transport waits (an C{epoll_ctl} each time a socket starts or
    stops waiting).

Usage: C{python -m bench.ownsockets PORT BACKEND_PORT [edge|level]}.
"""

from __future__ import annotations

import _socket
import ctypes
import errno
import os
import select
import socket
import sys
from binascii import b2a_base64
from hashlib import sha1
from typing import Any

from twisted.internet.main import installReactor
from twisted.python import log
from twisted.python.failure import Failure

from wsrelay.reactor import RelayReactor
from wsrelay.tap import tuneGC

MAX_HEAD = 8192
"""
The longest request or response head the relay reads.
"""

ACCEPTS = 64
"""
The most connections accepted per readiness of the listening socket.
"""

CHUNK = 65536
"""
The most bytes read from a socket at once.
"""

BACKLOG = 4096
"""
The listening socket's backlog, as the other targets'.
"""

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
"""
What RFC 6455 appends to a key before hashing it into the accept value.
"""

BAD_REQUEST = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
)
TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"Content-Length: 0\r\nConnection: close\r\n\r\n"
)
BAD_GATEWAY = (
    b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
)
SWITCHING = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
)

_EDGE_IN = select.EPOLLIN | select.EPOLLET
_EDGE_INOUT = select.EPOLLIN | select.EPOLLOUT | select.EPOLLET
_READ_EVENTS = select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR
_NONBLOCK = socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
_PENDING_CONNECT = (0, errno.EINPROGRESS)

_libc = ctypes.CDLL(None, use_errno=True)
_accept4 = _libc.accept4
_accept4.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
_accept4.restype = ctypes.c_int


def acceptValue(key: bytes) -> bytes:
    """
    The C{Sec-WebSocket-Accept} value for a C{Sec-WebSocket-Key}.
    """
    return b2a_base64(sha1(key + GUID).digest(), newline=False)


def checkRequest(head: bytes) -> bytes | None:
    """
    Check a request head (without its final empty line) for a WebSocket
    opening handshake.

    @return: Its C{Sec-WebSocket-Key}, or L{None} if it is not one.
    """
    lines = head.split(b"\r\n")
    first = lines[0]
    if not (first.startswith(b"GET ") and first.endswith(b" HTTP/1.1")):
        return None
    upgrade = connection = key = version = None
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            return None
        name = name.lower()
        if name == b"upgrade":
            upgrade = value.strip().lower()
        elif name == b"connection":
            connection = value.lower()
        elif name == b"sec-websocket-key":
            key = value.strip()
        elif name == b"sec-websocket-version":
            version = value.strip()
    if (
        upgrade != b"websocket"
        or connection is None
        or b"upgrade" not in connection
        or version != b"13"
        or key is None
        or len(key) != 24
    ):
        return None
    return key


def checkResponse(head: bytes, accept: bytes) -> bytes | None:
    """
    Check the backend's response head (without its final empty line).

    @param accept: The C{Sec-WebSocket-Accept} value it must carry.
    @return: The lines to copy into the relay's 101 (the backend's
        subprotocol and extensions, each ending with CRLF), or L{None} if
        the head is not a valid 101.
    """
    lines = head.split(b"\r\n")
    if not lines[0].startswith(b"HTTP/1.1 101"):
        return None
    found = False
    copied = b""
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.lower()
        if name == b"sec-websocket-accept":
            found = value.strip() == accept
        elif name in (b"sec-websocket-protocol", b"sec-websocket-extensions"):
            copied += line + b"\r\n"
    return copied if found else None


class _End:
    """
    One socket of a connection: the client's or the backend's.  Under
    C{level} waiting it is the descriptor the reactor watches.

    @ivar fd: Its descriptor, -1 once closed.
    @ivar pipe: The connection it belongs to.
    @ivar other: The connection's other end.
    @ivar pending: Bytes that its socket did not take yet, or L{None}.
    @ivar paused: Whether reading it waits for the other end's writes.
    @ivar isClient: Whether it is the client's socket.
    @ivar waitsOut: Whether it is registered for output too (C{edge}).
    """

    __slots__ = ("fd", "pipe", "other", "pending", "paused", "isClient", "waitsOut")

    def __init__(self, fd: int, pipe: Pipe, isClient: bool) -> None:
        self.fd = fd
        self.pipe = pipe
        self.other: _End = self
        self.pending: bytes | None = None
        self.paused = False
        self.isClient = isClient
        self.waitsOut = False

    def fileno(self) -> int:
        """
        @return: The descriptor.
        """
        return self.fd

    def logPrefix(self) -> str:
        """
        @return: Which end this is, for the reactor's log.
        """
        return "client" if self.isClient else "backend"

    def doRead(self) -> None:
        """
        Read what the socket has and hand it to the connection; on the
        connection's end or an error, close it.  Under C{edge} waiting,
        read until a read returns less than asked (the socket is empty:
        more data would be a new edge).
        """
        pipe = self.pipe
        while not self.paused and self.fd >= 0:
            try:
                data = os.read(self.fd, CHUNK)
            except BlockingIOError:
                return
            except OSError:
                pipe.ended(self)
                return
            if not data:
                pipe.ended(self)
                return
            pipe.received(self, data)
            if len(data) < CHUNK or not pipe.relay.edge:
                return

    def doWrite(self) -> None:
        """
        Write what is pending; once all is written, stop waiting to write
        and read the other end again (or close the connection if the
        other end has ended).
        """
        pending = self.pending
        if pending is None or self.fd < 0:
            return
        try:
            n = os.write(self.fd, pending)
        except BlockingIOError:
            return
        except OSError:
            self.pipe.ended(self)
            return
        if n < len(pending):
            self.pending = pending[n:]
            return
        self.pending = None
        self.pipe.flushed(self)

    def connectionLost(self, reason: Failure) -> None:
        """
        The reactor saw the socket hang up (C{level} waiting only).
        """
        self.pipe.ended(self)


class Pipe:
    """
    One client's connection: its handshake, then the relay of its bytes
    both ways.

    @ivar relay: The relay.
    @ivar client: The client's end.
    @ivar backend: The backend's end, or L{None} before it is opened.
    @ivar head: The head read so far from the end being read, or L{None}
        once the handshake is done.
    @ivar accept: The accept value the backend must answer with.
    @ivar early: Bytes of the client's that followed its head.
    @ivar closing: Whether the connection closes once its pending bytes
        are written.
    @ivar peer: The client's IPv4 address, four bytes.
    """

    __slots__ = (
        "relay",
        "client",
        "backend",
        "head",
        "accept",
        "early",
        "closing",
        "peer",
    )

    def __init__(self, relay: Relay, fd: int, peer: bytes) -> None:
        self.relay = relay
        self.peer = peer
        self.client = _End(fd, self, True)
        self.backend: _End | None = None
        self.head: bytes | None = b""
        self.accept = b""
        self.early = b""
        self.closing = False

    def received(self, end: _End, data: bytes) -> None:
        """
        Bytes arrived on C{end}: a part of a head, or bytes to relay.
        """
        head = self.head
        if head is None:
            self.relay.write(end.other, data, end)
            return
        if end.isClient and self.backend is not None:
            # The client's bytes before the backend answered.
            self.early += data
            return
        head += data
        stop = head.find(b"\r\n\r\n")
        if stop < 0:
            if len(head) > MAX_HEAD:
                self.refuse(TOO_LARGE if end.isClient else BAD_GATEWAY)
            else:
                self.head = head
            return
        if end.isClient:
            self.requested(head, stop)
        else:
            self.answered(head, stop)

    def requested(self, head: bytes, stop: int) -> None:
        """
        The client's head is complete: check it, open the backend and
        write the request to it.
        """
        key = checkRequest(head[:stop])
        if key is None:
            self.refuse(BAD_REQUEST)
            return
        self.accept = acceptValue(key)
        self.head = b""
        relay = self.relay
        request = b"%s\r\nX-Forwarded-For: %s\r\n\r\n%s" % (
            head[:stop],
            socket.inet_ntoa(self.peer).encode("ascii"),
            head[stop + 4 :],
        )
        # _socket's, without socket.socket's Python wrapper: 1.4 µs less.
        s = _socket.socket(socket.AF_INET, socket.SOCK_STREAM | _NONBLOCK)
        code = s.connect_ex(relay.backendAddress)
        fd = s.detach()
        backend = self.backend = _End(fd, self, False)
        backend.other = self.client
        self.client.other = backend
        if code not in _PENDING_CONNECT:
            os.close(fd)
            backend.fd = -1
            self.refuse(BAD_GATEWAY)
            return
        relay.watch(backend)
        relay.write(backend, request, None)
        if self.backend is not None and backend.fd >= 0 and backend.pending is None:
            relay.startReading(backend)

    def answered(self, head: bytes, stop: int) -> None:
        """
        The backend's head is complete: check it, answer the client with
        the relay's own 101 and start relaying.
        """
        copied = checkResponse(head[:stop], self.accept)
        if copied is None:
            self.refuse(BAD_GATEWAY)
            return
        self.head = None
        relay = self.relay
        client = self.client
        relay.write(client, SWITCHING + self.accept + b"\r\n" + copied + b"\r\n", None)
        rest = head[stop + 4 :]
        if rest:
            relay.write(client, rest, None)
        early = self.early
        if early:
            self.early = b""
            assert self.backend is not None
            relay.write(self.backend, early, None)

    def flushed(self, end: _End) -> None:
        """
        All of C{end}'s pending bytes are written.
        """
        relay = self.relay
        relay.stopWriting(end)
        if self.closing:
            self.close()
        elif end is self.backend and self.head == b"":
            # The request is written: read the answer.
            relay.startReading(end)
        elif end.other.paused:
            relay.resumeReading(end.other)

    def ended(self, end: _End) -> None:
        """
        C{end}'s socket ended or failed: close the connection, once the
        other end has what is pending for it (or answer 502 if the backend
        ended before its 101).
        """
        if self.head is not None and not end.isClient:
            self.refuse(BAD_GATEWAY)
            return
        other = end.other
        if other is not end and other.fd >= 0 and other.pending is not None:
            self.closing = True
            self.relay.stopReading(end)
            return
        self.close()

    def refuse(self, answer: bytes) -> None:
        """
        Answer the client with an error (as far as its socket takes it at
        once) and close the connection.
        """
        try:
            os.write(self.client.fd, answer)
        except OSError:
            pass
        self.close()

    def close(self) -> None:
        """
        Close both sockets.
        """
        relay = self.relay
        relay.forget(self.client)
        if self.backend is not None:
            relay.forget(self.backend)
            self.backend = None


class Relay:
    """
    The relay: its listening socket, its backend, and how it waits for
    sockets.

    @ivar reactor: The reactor.
    @ivar edge: Whether sockets are registered once, edge-triggered, with
        the reactor's epoll object (else through C{addReader} and
        C{addWriter}).
    @ivar backendAddress: The backend's host and port.
    @ivar listening: The listening socket.
    @ivar pipeFactory: Makes the L{Pipe} of each accepted connection
        (L{bench.ownfeatures} gives its own).
    """

    pipeFactory: Any = Pipe

    def __init__(
        self, reactor: Any, edge: bool, port: int, backendAddress: tuple[str, int]
    ) -> None:
        self.reactor = reactor
        self.edge = edge
        self.backendAddress = backendAddress
        self.listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM | _NONBLOCK)
        self.listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listening.bind(("127.0.0.1", port))
        self.listening.listen(BACKLOG)
        self._listeningFD = self.listening.fileno()
        self._address = ctypes.create_string_buffer(16)
        self._addressLength = ctypes.c_uint32(16)

    def fileno(self) -> int:
        """
        @return: The listening socket's descriptor.
        """
        return self._listeningFD

    def logPrefix(self) -> str:
        """
        @return: The listener's name in the reactor's log.
        """
        return "ownsockets"

    def doRead(self) -> None:
        """
        Accept at most L{ACCEPTS} connections, each non-blocking.

        C{accept4()} through ctypes, asking for a non-blocking descriptor,
        took 5.5 µs per connection on the benchmark machine (a thousand
        pending connections accepted in a loop), against 6.7 µs for
        C{socket._accept()}, a socket object made on its descriptor and
        C{setblocking(False)} (an C{ioctl}), and 12.2 µs for
        C{socket.accept()} and C{setblocking(False)}.
        """
        address = self._address
        length = self._addressLength
        lengthRef = ctypes.byref(length)
        for _ in range(ACCEPTS):
            length.value = 16
            fd = _accept4(self._listeningFD, address, lengthRef, _NONBLOCK)
            if fd < 0:
                if ctypes.get_errno() not in (errno.EAGAIN, errno.EINTR):
                    log.msg(f"accept: {os.strerror(ctypes.get_errno())}")
                return
            client = self.pipeFactory(self, fd, address.raw[4:8]).client
            self.watch(client)
            self.startReading(client)

    def connectionLost(self, reason: Failure) -> None:
        """
        The reactor stops: close the listening socket.
        """
        self.listening.close()

    def watch(self, end: _End) -> None:
        """
        Register a new socket (once, under C{edge} waiting).
        """
        if self.edge:
            self.reactor.own[end.fd] = end
            self.reactor._poller.register(end.fd, _EDGE_IN)

    def forget(self, end: _End) -> None:
        """
        Close a socket and stop waiting for it.
        """
        fd = end.fd
        if fd < 0:
            return
        if self.edge:
            del self.reactor.own[fd]
        else:
            self.reactor.removeReader(end)
            self.reactor.removeWriter(end)
        end.fd = -1
        os.close(fd)

    def startReading(self, end: _End) -> None:
        """
        Wait for C{end} to be readable.
        """
        if not self.edge:
            self.reactor.addReader(end)

    def stopReading(self, end: _End) -> None:
        """
        Stop reading C{end}.
        """
        end.paused = True
        if not self.edge:
            self.reactor.removeReader(end)

    def resumeReading(self, end: _End) -> None:
        """
        Read C{end} again after L{stopReading}: under C{edge} waiting, read
        what arrived meanwhile now (its edge has passed).
        """
        end.paused = False
        if self.edge:
            end.doRead()
        else:
            self.reactor.addReader(end)

    def stopWriting(self, end: _End) -> None:
        """
        Stop waiting for C{end} to be writable.
        """
        if not self.edge:
            self.reactor.removeWriter(end)

    def write(self, to: _End, data: bytes, source: _End | None) -> None:
        """
        Write C{data} to C{to}'s socket now, as far as it takes it; keep
        the rest, wait until it is writable, and stop reading C{source}
        until then.
        """
        if to.fd < 0:
            return
        if to.pending is not None:
            to.pending += data
            return
        try:
            n = os.write(to.fd, data)
        except BlockingIOError:
            n = 0
        except OSError:
            to.pipe.ended(to)
            return
        if n == len(data):
            return
        to.pending = data[n:]
        if not self.edge:
            self.reactor.addWriter(to)
        elif not to.waitsOut:
            to.waitsOut = True
            self.reactor._poller.modify(to.fd, _EDGE_INOUT)
        if source is not None:
            self.stopReading(source)


class OwnReactor(RelayReactor):
    """
    A L{RelayReactor} that also hands the events of the relay's sockets,
    registered edge-triggered with its epoll object, to the relay.

    @ivar own: The relay's sockets by descriptor.
    """

    def __init__(self) -> None:
        super().__init__()
        self.own: dict[int, _End] = {}

    def doPoll(self, timeout: float | None) -> None:
        """
        Wait at most C{timeout} seconds for ready descriptors; hand each of
        the relay's to it (reading first, then writing what is pending),
        and the others to the reactor as L{RelayReactor} does.
        """
        if timeout is None:
            timeout = -1
        try:
            ready = self._poller.poll(timeout, 1024)
        except InterruptedError:
            return
        own = self.own
        selectables = self._selectables
        for fd, event in ready:
            end = own.get(fd)
            try:
                if end is not None:
                    if event & _READ_EVENTS:
                        end.doRead()
                    if end.pending is not None and event & select.EPOLLOUT:
                        end.doWrite()
                    continue
                selectable = selectables.get(fd)
                if selectable is not None:
                    self._doReadOrWrite(selectable, fd, event)
            except KeyboardInterrupt:
                raise
            except BaseException:
                log.err()
                if end is not None:
                    end.pipe.close()

    doIteration = doPoll


def main(argv: list[str]) -> None:
    """
    Listen on 127.0.0.1, port C{argv[0]}, and relay every WebSocket
    connection to 127.0.0.1, port C{argv[1]}, waiting for sockets as
    C{argv[2]} says (C{edge}, the default, or C{level}).
    """
    port, backendPort = int(argv[0]), int(argv[1])
    mode = argv[2] if len(argv) > 2 else "edge"
    if mode not in ("edge", "level"):
        raise SystemExit(f"ownsockets: unknown waiting {mode!r}: edge or level")
    installReactor(OwnReactor() if mode == "edge" else RelayReactor())
    from twisted.internet import reactor

    relay = Relay(reactor, mode == "edge", port, ("127.0.0.1", backendPort))
    reactor.addReader(relay)  # type: ignore[attr-defined]
    tuneGC()
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main(sys.argv[1:])
