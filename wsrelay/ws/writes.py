# -*- test-case-name: tests.test_edge,tests.test_proxy,tests.test_fanout_direct -*-
"""
Writing to a TCP transport at once.

Twisted's C{transport.write} never sends: it queues the bytes, registers
the socket for writing (one C{epoll_ctl}), sends on the next reactor turn
and unregisters (another C{epoll_ctl}).  For a relay, which writes small
chunks to sockets that are nearly always writable, that is most of the cost
of a write (the profile in BENCHMARKS.md).  L{directWrite} sends right away
when nothing is queued, and leaves everything else to Twisted: a partial
send queues the rest with C{transport.write}, so flow control (the
producer's pause at C{bufferSize}) and error handling are Twisted's own.

Only what Twisted queues is checked before a send.  The rest of the
transport's state needs no check: a closed connection's socket is closed
(its C{send} fails, and Twisted's C{write} then drops the bytes, as it does
for a connection that is gone), a half-closed one fails with C{EPIPE} the
same way, and a disconnecting one still sends what it is given before it
closes, as Twisted's C{write} would.

L{sendWithTurn} writes a handshake's 101 at the end of the reactor's turn
instead, with the turn's others, from Twisted's own queue of the
connection, where anything written behind it waits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.tcp import Connection

from wsrelay.proxyprotocol import ProxyProtocolWrapper
from wsrelay.ws.watching import TurnBatch

__all__ = [
    "DirectWriter",
    "directWrite",
    "sendNow",
    "sendWithTurn",
    "tcpConnection",
]


def _underProxyHeader(transport: Any) -> Any:
    """
    @return: C{transport}, or for a haproxy: listener's connection the
        transport under its PROXY protocol wrapper, which past its header
        passes writes through unchanged.
    """
    if isinstance(transport, ProxyProtocolWrapper):
        return transport.transport
    return transport


def tcpConnection(transport: Any) -> Connection | None:
    """
    @return: The plain TCP (or UNIX) connection that C{transport} is, or
        that a PROXY protocol wrapper over it writes to unchanged; L{None}
        for any other transport (TLS, a test's), which only Twisted's
        C{write} may write to.
    """
    # (A plain TCP connection, nearly always: one check and no call.)
    if isinstance(transport, Connection):
        return transport
    if isinstance(transport, ProxyProtocolWrapper) and isinstance(
        transport.transport, Connection
    ):
        return transport.transport
    return None


def directWrite(transport: Any) -> Callable[[bytes], None]:
    """
    @return: A function writing bytes to C{transport}: sending them at once
        when it is a plain TCP (or UNIX) connection, or a PROXY protocol
        wrapper over one, with nothing queued (a L{DirectWriter}'s
        C{write}), else through C{transport.write}.
    """
    if not isinstance(transport, Connection):
        transport = _underProxyHeader(transport)
    if not isinstance(transport, Connection):
        # TLS, or a test's transport: Twisted's write only.
        write: Callable[[bytes], None] = transport.write
        return write
    return DirectWriter(transport).write


def sendNow(transport: Any, data: bytes) -> None:
    """
    Write C{data} to C{transport} once, as the function L{directWrite}
    returns would, without making that function: for a single write (a
    request head), where keeping a function on the writer would cost the
    connection its memory.
    """
    connection = tcpConnection(transport)
    if connection is None:
        # TLS, or a test's transport.
        transport.write(data)
        return
    if connection._tempDataBuffer or connection.dataBuffer:
        connection.write(data)
        return
    _send(connection, data)


def _send(connection: Connection, data: bytes) -> None:
    """
    Send C{data} on C{connection}, which has nothing queued, and queue
    with Twisted's C{write} what the socket does not take.
    """
    try:
        sent = connection.socket.send(data)
    except (OSError, AttributeError):
        # Full, or failed as Twisted's write will find; or lost (Twisted
        # deleted the socket, and its write drops the bytes).
        sent = 0
    if sent != len(data):
        connection.write(data[sent:])


def sendWithTurn(transport: Any, data: bytes) -> None:
    """
    Write C{data} to C{transport} at the end of the reactor's turn, with
    the other writes of the turn (L{TurnBatch}), rather than now: for a
    handshake's 101, which wakes the client.  Sent one by one as the relay
    reads its backends' answers, some 30 microseconds of Python apart, the
    101s woke a client that had gone back to sleep each time; sent
    together, the first wakes it and the rest find it awake, which the
    client's CPU and the relay's both show (BENCHMARKS.md, the fourteenth
    session).

    Until then the bytes wait in Twisted's own queue of the connection,
    unregistered for writing, so that whatever is written to it meanwhile
    goes behind them: Twisted's C{write} appends behind them (and its
    C{loseConnection} waits for its C{doWrite}, which sends the lot), and
    the relay's writers (L{DirectWriter}, L{sendNow}) see something
    queued and leave the order to Twisted's C{write}.  Only the writes at
    once of a fan-out flush (L{wsrelay.fanout.direct}) would not see
    them, which is why the fan-out's handshakes never come here.  A
    connection lost meanwhile drops them, as Twisted does: a client whose
    end of the stream is read in the same turn as its backend's 101 (one
    that closed its side right after its request) gets no 101, where it
    got one before it lost the connection anyway.
    """
    connection = tcpConnection(transport)
    if connection is None:
        # TLS, or a test's transport.
        transport.write(data)
        return
    if (
        connection._tempDataBuffer
        or connection.dataBuffer
        or connection.disconnecting
        or not connection.connected
    ):
        # Behind what is queued; or before the end of a connection being
        # closed (the relay's transports close one with nothing queued
        # from the turn's end too, and only a write Twisted registered
        # for keeps it open until it is sent); or dropped, for a
        # connection lost.
        connection.write(data)
        return
    # (Not counted in _tempDataLen, which a held connection of the relay
    # keeps at its class's default: a 101 is far below the bufferSize at
    # which Twisted pauses a producer, and Twisted's doWrite zeroes it.)
    connection._tempDataBuffer.append(data)
    _turnWrites.add(connection.reactor, connection)


def _sendQueued(connection: Connection) -> None:
    """
    At the end of the turn, send what L{sendWithTurn} queued for
    C{connection}, and whatever was queued behind it, unless Twisted has
    it in hand already (it moved it to C{dataBuffer} to write, which
    leaves the rest to it), the connection is gone or it is being aborted
    (which drops what it queued, as Twisted's C{abortConnection} says).  What the socket
    does not take is queued again with Twisted's C{write}; a registration
    for writing that a C{write} or C{loseConnection} made meanwhile finds
    nothing left, and Twisted's next C{doWrite} then unregisters (and
    closes, if closing), as it does for a buffer it emptied itself.
    """
    if not connection.connected or connection.dataBuffer or connection._aborting:
        return
    queued = connection._tempDataBuffer
    if not queued:
        return
    data = queued[0] if len(queued) == 1 else b"".join(queued)
    queued.clear()
    if connection._tempDataLen:
        # What Twisted's write counted behind it.
        connection._tempDataLen = 0
    _send(connection, data)


#: The writes of L{sendWithTurn}, made at the end of each turn.
_turnWrites: TurnBatch[Connection] = TurnBatch(
    _sendQueued, "Unhandled error writing to a connection"
)


class DirectWriter:
    """
    Writes bytes to a transport: at once when it is a plain TCP (or UNIX)
    connection with nothing queued, else through Twisted's C{write}.

    The writing is this class's method, shared by every writer: a function
    made for each connection, with the cells it closes over and the bound
    methods it keeps, cost some 470 bytes in 7 blocks per leg.  A class
    that writes to one transport for its whole life (a pipe's
    L{wsrelay.proxy.direction.Direction}) inherits it, and holds the two
    attributes itself.

    @ivar tcp: The plain TCP connection written to (L{tcpConnection}), or
        L{None}.
    @ivar other: The transport written to with its C{write} when C{tcp} is
        L{None} (a PROXY protocol wrapper looked through), else L{None}.
    """

    __slots__ = ("tcp", "other")

    tcp: Connection | None
    other: Any

    def __init__(self, transport: Any) -> None:
        """
        @param transport: The transport to write to.
        """
        self.writeTo(transport)

    def writeTo(self, transport: Any) -> None:
        """
        Write to C{transport} from now on.
        """
        if isinstance(transport, Connection):
            # (A plain TCP connection, nearly always: no call to look
            # under a PROXY protocol wrapper.)
            self.tcp = transport
            self.other = None
            return
        transport = _underProxyHeader(transport)
        if isinstance(transport, Connection):
            self.tcp = transport
            self.other = None
        else:
            self.tcp = None
            self.other = transport

    def write(self, data: bytes) -> None:
        """
        Write C{data}: sent now when nothing is queued, the rest (or all
        of it) queued with Twisted's C{write}.
        """
        connection = self.tcp
        if connection is None:
            # TLS, or a test's transport.
            self.other.write(data)
            return
        if connection._tempDataBuffer or connection.dataBuffer:
            connection.write(data)
            return
        try:
            sent = connection.socket.send(data)
        except OSError:
            # Full (BlockingIOError), or an error that Twisted meets on its
            # own write.
            sent = 0
        except AttributeError:
            # Lost: Twisted deleted the socket, and its write drops bytes.
            sent = 0
        if sent != len(data):
            connection.write(data[sent:])
