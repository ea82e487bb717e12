# -*- test-case-name: tests.test_passthrough -*-
"""
The passthrough data path for proxy mode: once both handshakes are done,
bytes are forwarded as they arrive, without unmasking or re-framing.

Client frames are already masked as a backend expects them and backend
frames unmasked as a client expects them, so a L{Pipe} only reads each
frame's header as bytes go by: to keep the frame and message size limits,
the per-message counters and the close handshake (whose codes pass
verbatim, being forwarded as they are), and to insert the relay's own
keepalive pings at frame boundaries.  It does not validate UTF-8.

Extensions are negotiated end to end (the client's offer goes to the
backend, whose answer goes to the client), and the reserved bits are
checked against what was negotiated (L{rsvRules}): with none, frames with
RSV bits set are refused; with permessage-deflate, RSV1 marks the first
frame of a compressed message and is refused on continuation and control
frames, RSV2 and RSV3 are refused; with any other extension, whose rules
the relay does not know, the RSV bits are left to the endpoints.

With permessage-deflate, compressed messages are also counted inflated
against the size limits (L{wsrelay.inflate}); a frame that passes a limit
is never finished, and both sides are closed with 1009 (L{Pipe.tooBig}).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol

from wsrelay.framing import CLOSE, PING, PONG, closeFrame, controlFrame
from wsrelay.inflate import InflateCounter, agreedSenders, unmask
from wsrelay.legs import failureClose, sendableCloseCode
from wsrelay.proxyprotocol import ProxyProtocolWrapper

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall

    from wsrelay.frontend import FrontendProtocol
    from wsrelay.roles import PipeOwner
    from wsrelay.upstream import UpstreamProtocol

_U16 = struct.Struct("!H")
_U64 = struct.Struct("!Q")

#: Prefix of the relay's own ping payloads; the pongs that answer them are
#: not forwarded.
PING_PREFIX = b"wsrelay:"


def closeProblem(payload: bytes) -> tuple[int, bytes] | None:
    """
    @return: The code and reason to fail a peer with for a close frame with
        this payload, or L{None} when it is valid: the relay does not pass
        on a close frame the other side would have to refuse.
    """
    if len(payload) == 1:
        return 1002, b"close frame of one byte"
    if len(payload) >= 2:
        if not sendableCloseCode(_U16.unpack_from(payload)[0]):
            return 1002, b"invalid close code"
        try:
            payload[2:].decode("utf-8")
        except UnicodeDecodeError:
            return 1007, b"close reason not UTF-8"
    return None


#: The RSV bits of a frame's first byte.
RSV_BITS = 0x70

#: RSV1, the "compressed" bit of permessage-deflate (RFC 7692).
RSV1 = 0x40


def extensionNames(answer: Sequence[str]) -> set[str]:
    """
    @param answer: The values of C{Sec-WebSocket-Extensions} fields.
    @return: The names of the extensions they list, in lower case.
    """
    names = set()
    for value in answer:
        for extension in value.split(","):
            name = extension.split(";", 1)[0].strip().lower()
            if name:
                names.add(name)
    return names


def rsvRules(answer: Sequence[str]) -> tuple[int, bool]:
    """
    The reserved-bit rules for frames once a backend answered
    C{Sec-WebSocket-Extensions} with C{answer}.

    @return: The RSV bits that fail a frame whatever its kind, and whether
        permessage-deflate's rules apply to RSV1 (allowed only on the first
        frame of a data message).
    """
    names = extensionNames(answer)
    if not names:
        return RSV_BITS, False
    if names == {"permessage-deflate"}:
        return RSV_BITS & ~RSV1, True
    # An extension the relay does not know may use any RSV bit on any
    # frame: the endpoints, which negotiated it, check them.
    return 0, False


def rsvProblem(b0: int, refused: int, deflate: bool) -> bytes | None:
    """
    @param b0: The first byte of a frame with RSV bits set.
    @param refused: The RSV bits refused on any frame.
    @param deflate: Whether RSV1 means permessage-deflate.
    @return: Why the frame must be refused, or L{None} when it may pass.
    """
    if b0 & refused:
        return b"reserved bits set"
    if deflate and b0 & RSV1:
        opcode = b0 & 0x0F
        if opcode >= CLOSE:
            return b"compressed control frame"
        if opcode == 0:
            return b"compressed continuation frame"
    return None


class Direction:
    """
    One direction of a pipe: scans the frames from C{source} and writes
    their bytes to C{sink}'s transport.

    @ivar closeSeen: Whether a close frame went this way.
    @ivar rsvRefused: The RSV bits refused on any frame (L{rsvRules}).
    @ivar deflate: Whether permessage-deflate's rules apply to RSV1.
    @ivar counter: With permessage-deflate, what counts the inflated size
        of the compressed messages from C{source} against the limits.
    @ivar inflating: Whether the message now arriving is compressed.
    """

    def __init__(
        self,
        pipe: Pipe,
        source: Any,
        sink: Any,
        masked: bool,
        maxFrame: int,
        maxMessage: int,
        rsvRefused: int = RSV_BITS,
        deflate: bool = False,
        counter: InflateCounter | None = None,
    ) -> None:
        #: The pipe, until it stops (L{Pipe.stop}).
        self.pipe: Pipe | None = pipe
        self.rsvRefused = rsvRefused
        self.deflate = deflate
        self.counter = counter
        self.inflating = False
        self.source = source
        self.sink = sink
        self.write = sink.writer()
        self.masked = masked
        self.maxFrame = maxFrame
        self.maxMessage = maxMessage
        self.pending = b""
        self.remaining = 0
        self.inMessage = False
        self.messageSize = 0
        self.closeSeen = False
        #: The payload of the relay's ping to write into this stream.
        self.ping: bytes | None = None
        #: The payload of the pong the relay waits for from this source.
        self.expected: bytes | None = None
        self.pingDue = False
        self.stopped = False
        #: Whether the messages from C{source} count against its
        #: C{max_messages_per_second} (a client with a limit).
        self.rated = masked and bool(getattr(source, "rateLimit", 0))
        if self.rated:
            self.rateAction = pipe.session.config.messageRateAction
        #: Whether the message now arriving is dropped (over the rate).
        self.dropping = False
        #: Whether the rest of the current frame's payload is cut out.
        self.skipping = False
        #: Whether the relay sent C{source} a close frame because the other
        #: side broke the protocol (L{Pipe.failed}): its close frame is the
        #: answer, and is not forwarded.
        self.answering = False

    def dataReceived(self, data: bytes) -> None:
        """
        Forward C{data}, minus what the relay itself consumes (pongs to its
        pings, anything after a close frame), checking every frame header.
        """
        if self.stopped:
            return
        if self.pending:
            data = self.pending + data
            self.pending = b""
        n = len(data)
        i = 0
        start = 0
        # Where the header of the compressed frame being read is in data,
        # or -1 when it came in an earlier read.
        frameAt = -1
        source = self.source
        while i < n:
            remaining = self.remaining
            if remaining:
                take = n - i if n - i < remaining else remaining
                if self.inflating:
                    # Counted before any of it is written: a frame that
                    # inflates past a limit is never finished.
                    counter = self.counter
                    assert counter is not None
                    problem = counter.feed(data[i : i + take], take == remaining)
                    if problem is not None:
                        return self.cutFrame(data, start, i, frameAt, *problem)
                    if take == remaining and counter.fin:
                        self.inflating = False
                if self.skipping:
                    if i > start:
                        self.write(data[start:i])
                    start = i + take
                i += take
                self.remaining = remaining - take
                continue
            if self.pingDue:
                # At a frame boundary: the relay's ping goes in here.
                self.write(data[start:i])
                start = i
                self.sendPing()
            if n - i < 2:
                break
            b0 = data[i]
            b1 = data[i + 1]
            length = b1 & 0x7F
            header = 2
            if length == 126:
                header = 4
                if n - i < header:
                    break
                length = _U16.unpack_from(data, i + 2)[0]
                if length < 126:
                    self.write(data[start:i])
                    return self.fail(1002, b"frame length not minimally encoded")
            elif length == 127:
                header = 10
                if n - i < header:
                    break
                length = _U64.unpack_from(data, i + 2)[0]
                if length < 0x10000 or length >> 63:
                    self.write(data[start:i])
                    return self.fail(1002, b"bad frame length")
            if b1 & 0x80:
                header += 4
                if not self.masked:
                    self.write(data[start:i])
                    return self.fail(1002, b"masked frame from a backend")
            elif self.masked:
                self.write(data[start:i])
                return self.fail(1002, b"unmasked frame from a client")
            if n - i < header:
                break
            if b0 & RSV_BITS:
                why = rsvProblem(b0, self.rsvRefused, self.deflate)
                if why is not None:
                    self.write(data[start:i])
                    return self.fail(1002, why)
            opcode = b0 & 0x0F
            fin = b0 & 0x80
            if opcode >= CLOSE:
                if opcode > PONG or not fin or length > 125:
                    self.write(data[start:i])
                    return self.fail(1002, b"bad control frame")
                end = i + header + length
                if end > n:
                    break
                payload = data[i + header : end]
                if b1 & 0x80:
                    payload = unmask(data[i + header - 4 : i + header], payload, 0)
                if opcode == PONG and payload.startswith(PING_PREFIX):
                    self.write(data[start:i])
                    start = end
                    i = end
                    pipe = self.pipe
                    if pipe is not None:
                        pipe.ponged(self, payload)
                    continue
                if opcode == CLOSE:
                    bad = closeProblem(payload)
                    if bad is not None:
                        self.write(data[start:i])
                        return self.fail(*bad)
                    # The answer to the relay's own close frame (the other
                    # side failed) is not forwarded: that side gets its own.
                    self.write(data[start : i if self.answering else end])
                    i = start = end
                    self.closeReceived(payload)
                    if self.stopped:
                        return
                    continue
                i = end
                continue
            if opcode > 2 or (opcode == 0) != self.inMessage:
                self.write(data[start:i])
                return self.fail(1002, b"bad opcode or fragmentation")
            if length > self.maxFrame:
                return self.cutFrame(data, start, i, i, 1009, b"frame too big")
            size = self.messageSize + length
            if size > self.maxMessage:
                return self.cutFrame(data, start, i, i, 1009, b"message too big")
            if opcode and self.rated and source.messageOverRate():
                # Counted as a message starts: its frames are then cut out
                # whole, or the client closed before any of it went on.
                source.rateDrops += 1
                if self.rateAction == "close":
                    self.write(data[start:i])
                    return self.fail(1008, b"message rate exceeded")
                self.dropping = True
            if self.inflating or (
                b0 & RSV1
                and self.counter is not None
                and not self.dropping
                and (not fin or length > self.counter.bounded)
            ):
                # A frame of a compressed message that might inflate past
                # the limits: its payload is counted inflated as it passes.
                # (A message dropped for the rate never reaches the
                # receiver, nor its inflater.)
                counter = self.counter
                assert counter is not None
                if opcode:
                    counter.beginMessage()
                    self.inflating = True
                key = data[i + header - 4 : i + header] if b1 & 0x80 else b""
                counter.beginFrame(key, bool(fin))
                frameAt = i
                if not length:
                    problem = counter.feed(b"", True)
                    if problem is not None:
                        return self.cutFrame(data, start, i, i, *problem)
                    if fin:
                        self.inflating = False
            self.skipping = self.dropping
            if self.skipping and i > start:
                self.write(data[start:i])
            i += header
            if self.skipping:
                start = i
            self.remaining = length
            if fin:
                self.inMessage = False
                self.messageSize = 0
                source.messagesIn += 1
                if not self.dropping:
                    self.sink.messagesOut += 1
                self.dropping = False
            else:
                self.inMessage = True
                self.messageSize = size
            source.bytesIn += length
            if not self.skipping:
                self.sink.bytesOut += length
        if i < n:
            self.pending = data[i:]
        if i > start:
            self.write(data[start:i])

    def cutFrame(
        self,
        data: bytes,
        start: int,
        at: int,
        frameAt: int,
        code: int,
        reason: bytes,
    ) -> None:
        """
        A data frame broke a size limit, or cannot be inflated: the bytes
        before it go on, the frame itself is never finished, and the
        source is failed with C{code}.  For a size limit (1009) the sink is
        closed with 1009 too (L{Pipe.tooBig}).

        @param data: The bytes being scanned.
        @param start: Where the bytes not yet written begin in C{data}.
        @param at: Where the frame's bytes in C{data} that do not go on
            begin.
        @param frameAt: Where the frame's header is in C{data}, or -1 when
            it came in an earlier read (and went on already: the sink can
            then only be dropped, having half a frame).
        """
        end = frameAt if frameAt >= 0 else at
        if end > start:
            self.write(data[start:end])
        if frameAt >= 0 or self.skipping:
            # Nothing of the frame went on: the sink is between frames.
            self.remaining = 0
        self.inflating = False
        if code != 1009:
            return self.fail(code, reason)
        self.stopped = True
        self.pending = b""
        if self.pipe is not None:
            self.pipe.tooBig(self, reason)

    def sendPing(self) -> None:
        """
        Write the relay's ping now (the stream is at a frame boundary).
        """
        self.pingDue = False
        ping = self.ping
        if ping is not None:
            self.write(controlFrame(PING, ping, self.masked))

    def atBoundary(self) -> bool:
        """
        @return: Whether the stream is between frames.
        """
        return not self.remaining and not self.pending

    def closeReceived(self, payload: bytes) -> None:
        """
        A close frame went this way (forwarded as it was).
        """
        self.closeSeen = True
        self.stopped = True
        if self.pipe is not None:
            self.pipe.closeSeen(self, payload)

    def fail(self, code: int, reason: bytes) -> None:
        """
        The source broke the protocol or a limit: close it with C{code}.
        """
        self.stopped = True
        self.pending = b""
        if self.pipe is not None:
            self.pipe.failed(self, code, reason)


class Pipe:
    """
    Both directions of a passthrough session, its keepalive pings and its
    close handshake.
    """

    log = Logger()

    def __init__(
        self,
        session: PipeOwner,
        frontend: FrontendProtocol,
        upstream: UpstreamProtocol,
    ) -> None:
        config = session.config
        maxMessage = config.maxMessageSize
        maxFrame = config.maxFrameSize or maxMessage
        self.session = session
        self.frontend = frontend
        self.upstream = upstream
        self.clock = session.clock
        refused, deflate = rsvRules(upstream.extensionsAnswer)
        fromClient = fromBackend = None
        if deflate:
            # Each counter inflates as its receiver does: with one inflater
            # for the connection where the agreed parameters give its
            # sender context takeover.
            client, server = agreedSenders(upstream.extensionsAnswer)
            fromClient = InflateCounter(maxFrame, maxMessage, client)
            fromBackend = InflateCounter(maxFrame, maxMessage, server)
        self.fromClient = Direction(
            self,
            frontend,
            upstream,
            True,
            maxFrame,
            maxMessage,
            refused,
            deflate,
            fromClient,
        )
        self.fromBackend = Direction(
            self,
            upstream,
            frontend,
            False,
            maxFrame,
            maxMessage,
            refused,
            deflate,
            fromBackend,
        )
        self.closeTimeout = config.closeTimeout
        self.pingInterval = config.pingInterval
        self.pingTimeout = config.pingTimeout
        self._pingCall: IDelayedCall | None = None
        self._closeCall: IDelayedCall | None = None
        self._marks = (-1, -1)
        self._seq = 0
        #: The leg whose peer was sent the end of the stream after a close
        #: frame (L{failed}), and is left to close by itself.
        self._ending: Any = None
        #: A failure held back until the other side answered the relay's
        #: close frame (L{failed}): the offending direction, the code and
        #: the reason.
        self._failing: tuple[Direction, int, bytes] | None = None

    def start(self) -> None:
        """
        Take over both legs' incoming bytes: each leg's data path becomes
        the direction that reads from it.
        """
        for leg, direction in (
            (self.frontend, self.fromClient),
            (self.upstream, self.fromBackend),
        ):
            _stopAutobahnPings(leg)
            leg.dataPath = direction
        if self.pingInterval > 0:
            self._pingCall = self.clock.callLater(self.pingInterval, self._keepalive)

    # Keepalive.

    def _keepalive(self) -> None:
        """
        Ping each side that sent nothing since the last time, at its next
        frame boundary; close both when a ping went unanswered.
        """
        self._pingCall = None
        f, up = self.frontend, self.upstream
        marks = (f.bytesIn + f.messagesIn, up.bytesIn + up.messagesIn)
        for direction, sender, mark, old in (
            (self.fromBackend, self.fromClient, marks[0], self._marks[0]),
            (self.fromClient, self.fromBackend, marks[1], self._marks[1]),
        ):
            if sender.expected is not None and mark == old:
                self.shutdown(1001, b"ping timeout")
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
        self._pingCall = self.clock.callLater(
            self.pingInterval if not self._waiting() else self.pingTimeout,
            self._keepalive,
        )

    def _waiting(self) -> bool:
        return (
            self.fromClient.expected is not None
            or self.fromBackend.expected is not None
        )

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
        if self._closeCall is None:
            self._closeCall = self.clock.callLater(self.closeTimeout, self._drop)

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
            if self._closeCall is None:
                self._closeCall = self.clock.callLater(self.closeTimeout, self._drop)
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
        if self._closeCall is None:
            self._closeCall = self.clock.callLater(self.closeTimeout, self._drop)

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
        if self._closeCall is not None and self._closeCall.active():
            self._closeCall.cancel()
        self._closeCall = self.clock.callLater(self.closeTimeout, self._drop)

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
        if self._closeCall is None:
            self._closeCall = self.clock.callLater(self.closeTimeout, self._drop)

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
        self._closeCall = None
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
                    if self._closeCall is None:
                        self._closeCall = self.clock.callLater(
                            self.closeTimeout, self._drop
                        )
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
        would otherwise be a reference cycle holding both legs).
        """
        for name in ("_pingCall", "_closeCall"):
            call = getattr(self, name)
            setattr(self, name, None)
            if call is not None and call.active():
                call.cancel()
        self.fromClient.pipe = self.fromBackend.pipe = None


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
    """
    leg.autoPingInterval = 0
    leg.autoPingTimeout = 0
    for name in ("autoPingPendingCall", "autoPingTimeoutCall"):
        call = getattr(leg, name, None)
        setattr(leg, name, None)
        if call is not None:
            call.cancel()
