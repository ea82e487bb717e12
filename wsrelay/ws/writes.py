# -*- test-case-name: tests.test_edge,tests.test_proxy -*-
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
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.tcp import Connection

from wsrelay.proxyprotocol import ProxyProtocolWrapper


def directWrite(transport: Any) -> Callable[[bytes], None]:
    """
    @return: A function writing bytes to C{transport}: sending them at once
        when it is a plain TCP (or UNIX) connection, or a PROXY protocol
        wrapper over one, with nothing queued, else through
        C{transport.write}.
    """
    if isinstance(transport, ProxyProtocolWrapper):
        # A haproxy: listener's connection: past its header, the wrapper
        # passes writes through unchanged.
        transport = transport.transport
    write: Callable[[bytes], None] = transport.write
    if not isinstance(transport, Connection):
        # TLS, or a test's transport: Twisted's write only.
        return write
    send = transport.socket.send

    def writeNow(data: bytes) -> None:
        if (
            transport._tempDataBuffer
            or transport.dataBuffer
            or not transport.connected
            or transport.disconnecting
            or transport._writeDisconnected
        ):
            write(data)
            return
        try:
            sent = send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            # Let Twisted meet the error on its own write.
            write(data)
            return
        if sent < len(data):
            write(data[sent:])

    return writeNow
