"""
The tests both legs' transports share for their close with nothing to
send (L{wsrelay.ws.accepting.LeanClose}): mixed into a test case of each
leg's module, which says how to connect the two ends.
"""

from __future__ import annotations

import fcntl
import os
import termios
from typing import TYPE_CHECKING, Any

from twisted.internet import reactor
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost

from tests.support.waiting import waitFor
from wsrelay.ws.writes import sendWithTurn

if TYPE_CHECKING:
    from twisted.trial.unittest import TestCase

    _Base = TestCase
else:
    _Base = object


class LeanCloseTests(_Base):
    """
    Tests of a lean transport's C{loseConnection}: mixed into a
    C{TestCase} whose L{ends} connects the transport's protocol (the
    closing end) to a peer.  Both protocols keep what they receive in
    C{received} and fire C{lost} with a list of why the connection was
    lost.
    """

    async def ends(self) -> tuple[Any, Any]:
        """
        @return: The protocol of the lean transport and its peer's,
            connected.
        """
        raise NotImplementedError()

    async def test_nothingQueued(self) -> None:
        """
        With nothing to send, C{loseConnection} stops reading and does not
        wait to write; the connection is lost later, never from inside
        the call, with Twisted's reason, and the peer reads the end of
        the stream (a FIN, not a reset).
        """
        closing, peer = await self.ends()
        transport: Any = closing.transport
        r: Any = reactor
        transport.loseConnection()
        self.assertFalse(closing.lost.called)
        self.assertNotIn(transport, r.getReaders())
        self.assertNotIn(transport, r.getWriters())
        [reason] = await closing.lost
        self.assertIs(type(reason.value), ConnectionDone)
        [reason] = await peer.lost
        self.assertIs(type(reason.value), ConnectionDone)
        self.assertFalse(transport.connected)

    async def test_queued(self) -> None:
        """
        With data queued, C{loseConnection} is Twisted's: the peer gets
        all of it, then the end of the stream.
        """
        closing, peer = await self.ends()
        transport: Any = closing.transport
        data = os.urandom(1 << 16) * 64
        transport.write(data)
        transport.loseConnection()
        self.assertTrue(transport.dataBuffer or transport._tempDataBuffer)
        [reason] = await peer.lost
        self.assertIs(type(reason.value), ConnectionDone)
        self.assertEqual(peer.received, data)
        [reason] = await closing.lost
        self.assertIs(type(reason.value), ConnectionDone)

    async def test_writtenAfter(self) -> None:
        """
        What is written after C{loseConnection}, before the connection is
        lost, still goes out before the end of the stream, as with
        Twisted's transport.
        """
        closing, peer = await self.ends()
        transport: Any = closing.transport
        transport.loseConnection()
        transport.write(b"late")
        [reason] = await peer.lost
        self.assertIs(type(reason.value), ConnectionDone)
        self.assertEqual(peer.received, b"late")
        [reason] = await closing.lost
        self.assertIs(type(reason.value), ConnectionDone)

    async def test_sentWithTurnAfter(self) -> None:
        """
        What L{sendWithTurn} is given after C{loseConnection}, in the same
        turn, still goes out before the end of the stream, and the
        connection is lost then: whichever of the turn's closes and
        writes comes first.
        """
        closing, peer = await self.ends()
        transport: Any = closing.transport
        transport.loseConnection()
        sendWithTurn(transport, b"late")
        [reason] = await peer.lost
        self.assertIs(type(reason.value), ConnectionDone)
        self.assertEqual(peer.received, b"late")
        [reason] = await closing.lost
        self.assertIs(type(reason.value), ConnectionDone)

    async def test_sentWithTurnBefore(self) -> None:
        """
        What L{sendWithTurn} was given before C{loseConnection}, in the
        same turn, goes out, then the end of the stream.
        """
        closing, peer = await self.ends()
        transport: Any = closing.transport
        sendWithTurn(transport, b"first")
        transport.loseConnection()
        [reason] = await peer.lost
        self.assertIs(type(reason.value), ConnectionDone)
        self.assertEqual(peer.received, b"first")
        [reason] = await closing.lost
        self.assertIs(type(reason.value), ConnectionDone)

    async def test_reregisteredAfter(self) -> None:
        """
        A transport registered with the reactor again after
        C{loseConnection} (C{unregisterProducer} starts writing on a
        disconnecting transport, as Autobahn's C{dropConnection} calls it)
        is unregistered when it is lost: the reactor keeps no closed
        descriptor, which a later connection could be given.
        """
        closing, peer = await self.ends()
        transport: Any = closing.transport
        r: Any = reactor
        transport.loseConnection()
        transport.unregisterProducer()
        await closing.lost
        self.assertNotIn(transport, r.getReaders())
        self.assertNotIn(transport, r.getWriters())
        await peer.lost

    async def test_abortedAfter(self) -> None:
        """
        An abort after C{loseConnection} stands: the connection is lost
        with L{ConnectionAborted} and the peer is reset.
        """
        closing, peer = await self.ends()
        transport: Any = closing.transport
        transport.loseConnection()
        transport.abortConnection()
        [reason] = await closing.lost
        self.assertIs(type(reason.value), ConnectionAborted)
        [reason] = await peer.lost
        self.assertIs(type(reason.value), ConnectionLost)

    async def test_unreadDataStillFIN(self) -> None:
        """
        With bytes from the peer left unread, the peer still reads
        everything sent to it and then the end of the stream, not a
        reset: the C{shutdown} before C{close} is what sends the FIN
        first.
        """
        closing, peer = await self.ends()
        transport: Any = closing.transport
        transport.stopReading()
        peer.transport.write(b"unread")
        fd = transport.fileno()
        await waitFor(lambda: _unread(fd) == 6)
        # As wsrelay.ws.writes does: sent at once, nothing queued.
        self.assertEqual(transport.socket.send(b"bye"), 3)
        transport.loseConnection()
        await closing.lost
        [reason] = await peer.lost
        self.assertEqual(peer.received, b"bye")
        self.assertIs(type(reason.value), ConnectionDone)

    async def test_batched(self) -> None:
        """
        Connections closed in the same reactor turn share one timed call,
        and all are lost from it; one closed while that call runs (from
        another's C{connectionLost}) is lost from a later call, never from
        inside the C{connectionLost} that closed it.
        """
        first, firstPeer = await self.ends()
        second, secondPeer = await self.ends()
        third, thirdPeer = await self.ends()
        r: Any = reactor
        closedLater: list[bool] = []

        def closeThird(reasons: list[Any]) -> list[Any]:
            calls = len(r.getDelayedCalls())
            third.transport.loseConnection()
            closedLater.append(
                not third.lost.called and len(r.getDelayedCalls()) == calls + 1
            )
            return reasons

        first.lost.addCallback(closeThird)
        calls = len(r.getDelayedCalls())
        first.transport.loseConnection()
        second.transport.loseConnection()
        self.assertEqual(len(r.getDelayedCalls()), calls + 1)
        self.assertFalse(first.lost.called or second.lost.called)
        for protocol in (first, second, third, firstPeer, secondPeer, thirdPeer):
            [reason] = await protocol.lost
            self.assertIs(type(reason.value), ConnectionDone)
        self.assertEqual(closedLater, [True])


def _unread(fd: int) -> int:
    """
    @return: How many bytes wait in a socket's receive queue.
    """
    return int.from_bytes(fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4), "little")
