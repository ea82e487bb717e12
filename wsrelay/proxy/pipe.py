# -*- test-case-name: tests.test_passthrough -*-
"""
The passthrough data path for proxy mode: once both handshakes are done,
bytes are forwarded as they arrive, without unmasking or re-framing.

Client frames are already masked as a backend expects them and backend
frames unmasked as a client expects them, so a L{Pipe} only reads each
frame's header as bytes go by (its two L{Direction}s, one per leg): to keep
the frame and message size limits, the per-message counters and the close
handshake (whose codes pass verbatim, being forwarded as they are), and to
insert the relay's own keepalive pings at frame boundaries (L{Keepalive}).
It does not validate UTF-8.

The frame rules, reserved bits and permessage-deflate included, are in
L{wsrelay.proxy.direction}; a frame that passes a size limit is never
finished, and both sides are closed with 1009 (L{Pipe.tooBig}).
"""

from __future__ import annotations

import struct
from functools import partial
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol

from wsrelay.deadlines import Deadlines
from wsrelay.proxy.direction import PING_PREFIX, Direction, directions
from wsrelay.proxyprotocol import ProxyProtocolWrapper
from wsrelay.ws.framing import closeFrame
from wsrelay.ws.legclosing import failureClose

if TYPE_CHECKING:
    from collections.abc import Callable

    from wsrelay.deadlines import DeadlineQueue
    from wsrelay.roles import PipeOwner
    from wsrelay.ws.frontend import FrontendProtocol
    from wsrelay.ws.upstream import UpstreamProtocol

_U16 = struct.Struct("!H")


class Keepalive:
    """
    The relay's own pings through a pipe: each side that sent nothing for
    C{ping_interval} gets one at its stream's next frame boundary, and both
    sides are closed when one goes unanswered for C{ping_timeout}.

    Its ticks wait in the relay's deadline queues (L{pipeDeadlines}: one
    timer for every pipe's C{ping_interval}, another for C{ping_timeout}),
    not a timer of its own.  It holds no reference to its pipe (only its
    pending tick does, until L{stop}): the pipe holds it.
    """

    __slots__ = ("interval", "timeout", "_tick", "_queue", "_marks", "_seq")

    def __init__(self, interval: float, timeout: float) -> None:
        self.interval = interval
        self.timeout = timeout
        #: The next tick (L{_keepalive} for the pipe), while pinging.
        self._tick: Callable[[], None] | None = None
        #: The deadline queue the tick waits in, or L{None}.
        self._queue: DeadlineQueue | None = None
        self._marks = (-1, -1)
        self._seq = 0

    def start(self, pipe: Pipe) -> None:
        """
        Start pinging (a keepalive with a C{ping_interval}: L{Pipe.start}
        starts no other).
        """
        self._tick = partial(self._keepalive, pipe)
        self._queue = queue = pipeDeadlines(pipe).queue(self.interval)
        queue.add(self._tick)

    def stop(self) -> None:
        """
        Cancel the next tick.
        """
        queue, self._queue = self._queue, None
        tick, self._tick = self._tick, None
        if queue is not None and tick is not None:
            queue.cancel(tick)

    def _keepalive(self, pipe: Pipe) -> None:
        """
        Ping each side that sent nothing since the last time, at its next
        frame boundary; close both when a ping went unanswered.
        """
        self._queue = None
        f, up = pipe.frontend, pipe.upstream
        marks = (f.bytesIn + f.messagesIn, up.bytesIn + up.messagesIn)
        for direction, sender, mark, old in (
            (pipe.fromBackend, pipe.fromClient, marks[0], self._marks[0]),
            (pipe.fromClient, pipe.fromBackend, marks[1], self._marks[1]),
        ):
            if sender.expected is not None and mark == old:
                pipe.shutdown(1001, b"ping timeout")
                return
            if mark == old:
                self._seq += 1
                # The ping goes into the stream towards the quiet side; its
                # pong comes back from that side.
                sender.expected = direction.ping = PING_PREFIX + str(self._seq).encode()
                if direction.atBoundary():
                    direction.sendPing()
                else:
                    direction.pingDue = True
        self._marks = marks
        tick = self._tick
        if tick is None:
            # Stopped meanwhile.
            return
        waiting = (
            pipe.fromClient.expected is not None
            or pipe.fromBackend.expected is not None
        )
        self._queue = queue = pipeDeadlines(pipe).queue(
            self.timeout if waiting else self.interval
        )
        queue.add(tick)


class Pipe:
    """
    Both directions of a passthrough session, its keepalive pings and its
    close handshake.
    """

    log = Logger()
    #: Where the close handshake's deadline (L{_drop}) waits, or L{None}.
    _closeClock: DeadlineQueue | None = None
    #: The keepalive: without pings (C{ping_interval = 0}), one idle
    #: L{Keepalive} that every such pipe shares, which never starts a timer.
    keepalive = Keepalive(0, 0)
    #: The leg whose peer was sent the end of the stream after a close
    #: frame (L{failed}), and is left to close by itself.
    _ending: Any = None
    #: A failure held back until the other side answered the relay's close
    #: frame (L{failed}): the offending direction, the code and the reason.
    _failing: tuple[Direction, int, bytes] | None = None

    def __init__(
        self,
        session: PipeOwner,
        frontend: FrontendProtocol,
        upstream: UpstreamProtocol,
    ) -> None:
        config = session.config
        maxMessage = config.maxMessageSize
        self.session = session
        self.frontend = frontend
        self.upstream = upstream
        self.fromClient, self.fromBackend = directions(
            self, frontend, upstream, config.maxFrameSize or maxMessage, maxMessage
        )
        if config.pingInterval > 0:
            self.keepalive = Keepalive(config.pingInterval, config.pingTimeout)

    def start(self) -> None:
        """
        Take over both legs' incoming bytes: each leg's data path becomes
        the direction that reads from it.
        """
        f, up = self.frontend, self.upstream
        _stopAutobahnPings(f)
        _stopAutobahnPings(up)
        f.dataPath = self.fromClient
        up.dataPath = self.fromBackend
        keepalive = self.keepalive
        if keepalive.interval > 0:
            # (Not the idle one every pipe without pings shares.)
            keepalive.start(self)

    def ponged(self, direction: Direction, payload: bytes) -> None:
        """
        A side answered the relay's ping.
        """
        if payload == direction.expected:
            direction.expected = None

    # Closing.

    def closeSeen(self, direction: Direction, payload: bytes) -> None:
        """
        A close frame went through.  Once both went, the backend drops its
        connection (a server does) and the relay then drops the client's;
        until then, wait at most C{close_timeout}.

        When the other side of a failed one answered the relay's close
        frame (L{failed}), the offender now gets its own, and the side that
        answered is dropped.
        """
        session = self.session
        if session.closedBy is None:
            session.closedBy = "client" if direction is self.fromClient else "backend"
        code = _U16.unpack_from(payload)[0] if len(payload) >= 2 else None
        leg = direction.source
        leg.remoteCloseCode = code
        direction.sink.localCloseCode = code
        if direction.answering:
            self._finishFailure()
            hangUp(leg.transport)
            return
        if self.fromClient.closeSeen and self.fromBackend.closeSeen:
            # The backend, a server, drops its TCP connection now.
            hangUp(self.upstream.transport)
        self._startCloseClock()

    def failed(self, direction: Direction, code: int, reason: bytes) -> None:
        """
        C{direction}'s source broke a rule: fail it with C{code}, in the
        order a direct connection keeps.

        What it sent before the bad frame went on (L{Direction} wrote it).
        The other side gets a close frame now (L{failureClose}: the same
        code for a protocol error, as if its own peer had failed the
        connection), and what it sends until it answers still reaches the
        offender, say the echo of a message sent just before the bad
        frame; then the offender gets its close frame with C{code}
        (L{closeSeen}), or after C{close_timeout} if the other side never
        answers (L{_drop}).

        A message rate over the limit (1008), a failure in the middle of a
        frame (the other side could not parse a close frame after it), or
        while a close handshake is under way, closes both sides at once.
        """
        source, other = direction.source, direction.sink
        back = self.fromBackend if direction is self.fromClient else self.fromClient
        self.session.closedBy = self.session.closedBy or "relay"
        if self._failing is not None:
            # The other side broke a rule too while the relay waited for
            # its answer: the first offender gets its close frame now.
            self._finishFailure()
        if (
            code != 1008
            and direction.atBoundary()
            and not direction.closeSeen
            and not back.stopped
            and source.transport is not None
            and other.transport is not None
        ):
            self._failing = (direction, code, reason)
            self._closeTo(other, *failureClose(code, other is self.frontend))
            back.answering = True
            self._startCloseClock()
            return
        self._closeTo(source, code, reason)
        self._closeTo(other, *failureClose(code, other is self.frontend))
        if other.transport is not None:
            hangUp(other.transport)
        if source.transport is not None:
            # It may still be sending: it gets the close frame and then
            # the end of the stream, and what it sends meanwhile is read
            # and dropped until it closes, for at most close_timeout.
            self._ending = source
            endWrites(source.transport)
        self._startCloseClock()

    def tooBig(self, direction: Direction, reason: bytes) -> None:
        """
        A message from C{direction}'s source broke a size limit: its
        receiver is closed with 1009 first (a close frame, or, when half a
        frame of it went on, the end of the connection), then the sender
        (L{failed}), so that neither side ever sees the message whole.
        """
        self._closeTo(direction.sink, 1009, reason)
        self.failed(direction, 1009, reason)

    def _finishFailure(self) -> None:
        """
        The other side of the offender of a held failure (L{failed})
        answered, left or took too long: send the offender its close frame
        and then the end of the stream, and read what it still sends until
        it closes, for at most C{close_timeout}.
        """
        failing, self._failing = self._failing, None
        if failing is None:
            return
        direction, code, reason = failing
        source = direction.source
        back = self.fromBackend if direction is self.fromClient else self.fromClient
        back.answering = False
        transport = source.transport
        if transport is None:
            return
        if back.atBoundary():
            source.localCloseCode = code
            transport.write(closeFrame(code, reason, source is self.upstream))
            back.stopped = back.closeSeen = True
            self._ending = source
            endWrites(transport)
        else:
            # Half a frame of the other side's went out: drop it.
            back.stopped = back.closeSeen = True
            hangUp(transport)
        # Anew: a pending deadline moves to the queue's end.
        self._closeClock = queue = self._closeClock or closeQueue(self)
        queue.add(self._drop)

    def shutdown(self, code: int, reason: bytes) -> None:
        """
        Close both sides with C{code} (the relay stops, a backend is
        disabled, the idle timeout).
        """
        self.session.closedBy = self.session.closedBy or "relay"
        if self._failing is not None:
            # The offender of a held failure gets this code instead.
            self._failing = None
            self.fromClient.answering = self.fromBackend.answering = False
        for leg in (self.frontend, self.upstream):
            self._closeTo(leg, code, reason)
        self._startCloseClock()

    def _startCloseClock(self) -> None:
        """
        Unless it runs already, start the close handshake's clock: in
        C{close_timeout}, L{_drop} (L{closeQueue}).
        """
        if self._closeClock is None:
            self._closeClock = queue = closeQueue(self)
            queue.add(self._drop)

    def _closeTo(self, leg: Any, code: int, reason: bytes) -> bool:
        """
        Send a close frame to C{leg}'s peer, at a frame boundary: anything
        still flowing to it is cut off (it is being closed anyway).

        @return: Whether the close frame was written (not when one already
            went that way, nor after half a frame: the connection is then
            dropped).
        """
        toward = self.fromBackend if leg is self.frontend else self.fromClient
        if toward.closeSeen or leg.transport is None:
            return False
        if not toward.atBoundary():
            # Half a frame went out: the peer cannot parse a close frame
            # after it, so just drop the connection.
            toward.stopped = True
            toward.closeSeen = True
            hangUp(leg.transport)
            return False
        toward.stopped = True
        toward.closeSeen = True
        leg.localCloseCode = code
        leg.transport.write(closeFrame(code, reason, leg is self.upstream))
        if leg is self.upstream:
            self.fromClient.stopped = True
        return True

    def _drop(self) -> None:
        """
        Close both connections (the close handshake is over or took too
        long).  With a failure held (L{failed}), the other side did not
        answer in time: drop it, and send the offender its close frame.
        """
        self._closeClock = None
        if self._failing is not None:
            other = self._failing[0].sink
            self._finishFailure()
            if other.transport is not None:
                hangUp(other.transport)
            return
        for leg in (self.frontend, self.upstream):
            if leg.transport is not None:
                hangUp(leg.transport)

    def legClosed(self, leg: Any) -> None:
        """
        One side's connection is gone: tell the other side, then drop it.
        """
        failing = self._failing
        if failing is not None:
            if leg is failing[0].source:
                # The offender of a held failure left: nothing to send it.
                self._failing = None
                self.fromClient.answering = self.fromBackend.answering = False
            else:
                # The other side left before it answered.
                self._finishFailure()
        other = self.upstream if leg is self.frontend else self.frontend
        if other.transport is not None:
            if leg is self.upstream:
                self.session.closedBy = self.session.closedBy or "backend"
                if (
                    self._closeTo(other, 1014, b"backend connection lost")
                    and self._ending is None
                ):
                    # The client may be sending still: closing with its
                    # bytes unread would reset the connection, and the
                    # reset can destroy the close frame before the client
                    # read it.  End the stream after the close frame, and
                    # read (and drop) until the client closes, at most
                    # close_timeout.
                    self.fromClient.stopped = True
                    self._ending = other
                    endWrites(other.transport)
                    self._startCloseClock()
            else:
                self.session.closedBy = self.session.closedBy or "client"
                self._closeTo(other, 1001, b"client went away")
            if other is not self._ending:
                hangUp(other.transport)
        if self.frontend.transport is None and self.upstream.transport is None:
            self.stop()

    def stop(self) -> None:
        """
        Cancel the timers; the directions let go of the pipe (they and it
        would otherwise be a reference cycle holding both legs).  Once done
        (the session ends the pipe again, L{ProxySession.legClosed
        <wsrelay.proxy.session.ProxySession.legClosed>}), nothing more,
        unless the close handshake's clock started again meanwhile.
        """
        if self.fromClient.pipe is None and self._closeClock is None:
            return
        self.keepalive.stop()
        queue, self._closeClock = self._closeClock, None
        if queue is not None:
            queue.cancel(self._drop)
        self.fromClient.pipe = self.fromBackend.pipe = None


def pipeDeadlines(pipe: Pipe) -> Deadlines:
    """
    The deadlines that time a pipe's C{close_timeout} and keepalive: those
    the client leg's factory keeps on the same clock (every pipe of the
    relay shares one timer per timeout, L{wsrelay.deadlines}), or for a
    leg with no such factory, deadlines of the pipe's own.
    """
    clock = pipe.session.clock
    factory = getattr(pipe.frontend, "factory", None)
    deadlines = getattr(factory, "deadlines", None)
    if not isinstance(deadlines, Deadlines) or deadlines.clock is not clock:
        deadlines = Deadlines(clock)
    return deadlines


def closeQueue(pipe: Pipe) -> DeadlineQueue:
    """
    @return: The queue that times a pipe's C{close_timeout}
        (L{pipeDeadlines}).
    """
    return pipeDeadlines(pipe).queue(pipe.session.config.closeTimeout)


def hangUp(transport: Any) -> None:
    """
    Close a connection once what was written to it went out.

    Over TLS, C{loseConnection} sends a close alert and then waits for the
    peer's before it closes the TCP connection; but a WebSocket client that
    got its close frame waits for the server to close TCP first (RFC 6455
    7.1.1), so both would wait out their timeouts.  The TCP connection
    under TLS is closed too, after the alert and everything before it.
    """
    transport.loseConnection()
    if isinstance(transport, TLSMemoryBIOProtocol) and transport.transport:
        transport.transport.loseConnection()


def endWrites(transport: Any) -> None:
    """
    Send the end of the stream after what was written, and keep reading
    (TCP's half-close); over TLS, which has none, close (L{hangUp}).
    """
    if isinstance(transport, TLSMemoryBIOProtocol):
        hangUp(transport)
        return
    raw = (
        transport.transport
        if isinstance(transport, ProxyProtocolWrapper)
        else transport
    )
    if not getattr(raw, "connected", True) or getattr(raw, "disconnecting", False):
        # Already gone or going (both legs lost in one reactor turn, the
        # relay stopping): a half-close would register a closed socket.
        transport.loseConnection()
        return
    transport.loseWriteConnection()


def _stopAutobahnPings(leg: Any) -> None:
    """
    Autobahn's own pings would cut into frames passing through: stop them.
    Nothing starts them again (Autobahn does as a leg opens, and after a
    pong, which its parser no longer sees).  The timers are dropped from
    the leg's dictionary: they read as their class default, L{None}.
    (Deleted, not popped from C{vars(leg)}: asked for, Python 3.11 makes
    the dictionary an instance keeps its attributes in without, which
    slows every later attribute access of the leg.)
    """
    call = getattr(leg, "autoPingPendingCall", None)
    if call is not None:
        call.cancel()
        del leg.autoPingPendingCall
    call = getattr(leg, "autoPingTimeoutCall", None)
    if call is not None:
        call.cancel()
        del leg.autoPingTimeoutCall
