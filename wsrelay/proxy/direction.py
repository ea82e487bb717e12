# -*- test-case-name: tests.test_passthrough -*-
"""
One direction of the passthrough data path (L{wsrelay.proxy.pipe}): the
scanner that forwards a leg's bytes as they arrive, reading only each
frame's header (L{Direction}), and the frame rules it keeps.

Extensions are negotiated end to end (the client's offer goes to the
backend, whose answer goes to the client), and the reserved bits are
checked against what was negotiated (L{rsvRules}): with none, frames with
RSV bits set are refused; with permessage-deflate, RSV1 marks the first
frame of a compressed message and is refused on continuation and control
frames, RSV2 and RSV3 are refused; with any other extension, whose rules
the relay does not know, the RSV bits are left to the endpoints.

With permessage-deflate, compressed messages are also counted inflated
against the size limits (L{wsrelay.proxy.inflate}); a frame that passes a limit
is never finished (L{cutFrame}).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from wsrelay.proxy.inflate import InflateCounter, agreedSenders, unmask
from wsrelay.ws.framing import CLOSE, PING, PONG, controlFrame
from wsrelay.ws.legclosing import sendableCloseCode
from wsrelay.ws.writes import DirectWriter

if TYPE_CHECKING:
    from wsrelay.roles import PipeOwner

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


class PipeEvents(Protocol):
    """
    What a L{Direction} reports to: its pipe (L{wsrelay.proxy.pipe.Pipe}).
    """

    session: PipeOwner

    def ponged(self, direction: Direction, payload: bytes) -> None:
        """
        C{direction}'s source answered one of the relay's pings.
        """

    def closeSeen(self, direction: Direction, payload: bytes) -> None:
        """
        A close frame went C{direction}'s way.
        """

    def failed(self, direction: Direction, code: int, reason: bytes) -> None:
        """
        C{direction}'s source broke a rule: fail it with C{code}.
        """

    def tooBig(self, direction: Direction, reason: bytes) -> None:
        """
        A message from C{direction}'s source broke a size limit.
        """


class Direction(DirectWriter):
    """
    One direction of a pipe: scans the frames from C{source} and writes
    their bytes to C{sink}'s transport (L{DirectWriter.write}: the method
    every direction shares, where a function per leg cost each held
    connection some 940 bytes).

    Its attributes are slots: each direction is one block of memory.

    @ivar closeSeen: Whether a close frame went this way.
    @ivar rsvRefused: The RSV bits refused on any frame (L{rsvRules}).
    @ivar deflate: Whether permessage-deflate's rules apply to RSV1.
    @ivar counter: With permessage-deflate, what counts the inflated size
        of the compressed messages from C{source} against the limits.
    @ivar inflating: Whether the message now arriving is compressed.
    @ivar pipe: The pipe, until it stops (L{wsrelay.proxy.pipe.Pipe.stop}).
    @ivar ping: The payload of the relay's ping to write into this stream.
    @ivar expected: The payload of the pong the relay waits for from this
        source.
    @ivar rated: Whether the messages from C{source} count against its
        C{max_messages_per_second} (a client with a limit).
    @ivar dropping: Whether the message now arriving is dropped (over the
        rate).
    @ivar skipping: Whether the rest of the current frame's payload is cut
        out.
    @ivar answering: Whether the relay sent C{source} a close frame because
        the other side broke the protocol
        (L{wsrelay.proxy.pipe.Pipe.failed}): its close frame is the answer,
        and is not forwarded.
    """

    # fmt: off
    __slots__ = (
        "pipe", "source", "sink", "masked", "maxFrame", "maxMessage",
        # The frame and the message being read.
        "pending", "remaining", "inMessage", "messageSize", "stopped",
        # The rules: reserved bits, compression, the message rate.
        "rsvRefused", "deflate", "counter", "inflating",
        "rated", "rateAction", "dropping", "skipping",
        # The relay's pings, and closing.
        "ping", "expected", "pingDue", "closeSeen", "answering",
    )
    # fmt: on

    def __init__(
        self,
        pipe: PipeEvents,
        source: Any,
        sink: Any,
        masked: bool,
        maxFrame: int,
        maxMessage: int,
        rsvRefused: int = RSV_BITS,
        deflate: bool = False,
        counter: InflateCounter | None = None,
    ) -> None:
        self.writeTo(sink.transport)
        self.pipe: PipeEvents | None = pipe
        self.rsvRefused = rsvRefused
        self.deflate = deflate
        self.counter = counter
        self.inflating = False
        self.source = source
        self.sink = sink
        self.masked = masked
        self.maxFrame = maxFrame
        self.maxMessage = maxMessage
        self.pending = b""
        self.remaining = 0
        self.inMessage = False
        self.messageSize = 0
        self.closeSeen = False
        self.ping: bytes | None = None
        self.expected: bytes | None = None
        self.pingDue = False
        self.stopped = False
        self.rated = masked and bool(getattr(source, "rateLimit", 0))
        if self.rated:
            self.rateAction = pipe.session.config.messageRateAction
        self.dropping = False
        self.skipping = False
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
                        return cutFrame(self, data, start, i, frameAt, *problem)
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
                return cutFrame(self, data, start, i, i, 1009, b"frame too big")
            size = self.messageSize + length
            if size > self.maxMessage:
                return cutFrame(self, data, start, i, i, 1009, b"message too big")
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
                        return cutFrame(self, data, start, i, i, *problem)
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


def cutFrame(
    direction: Direction,
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
    closed with 1009 too (L{wsrelay.proxy.pipe.Pipe.tooBig}).

    @param direction: The direction reading C{data}.
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
        direction.write(data[start:end])
    if frameAt >= 0 or direction.skipping:
        # Nothing of the frame went on: the sink is between frames.
        direction.remaining = 0
    direction.inflating = False
    if code != 1009:
        return direction.fail(code, reason)
    direction.stopped = True
    direction.pending = b""
    if direction.pipe is not None:
        direction.pipe.tooBig(direction, reason)


def directions(
    pipe: PipeEvents, frontend: Any, upstream: Any, maxFrame: int, maxMessage: int
) -> tuple[Direction, Direction]:
    """
    The two directions of a pipe, with the rules of the extensions the
    backend agreed to (C{upstream.extensionsAnswer}).

    @return: The direction from the client, and the one from the backend.
    """
    answer = upstream.extensionsAnswer
    if not answer:
        # No extension (as most connections): the default rules.
        return (
            Direction(pipe, frontend, upstream, True, maxFrame, maxMessage),
            Direction(pipe, upstream, frontend, False, maxFrame, maxMessage),
        )
    refused, deflate = rsvRules(answer)
    fromClient = fromBackend = None
    if deflate:
        # Each counter inflates as its receiver does: with one inflater
        # for the connection where the agreed parameters give its
        # sender context takeover.
        client, server = agreedSenders(answer)
        fromClient = InflateCounter(maxFrame, maxMessage, client)
        fromBackend = InflateCounter(maxFrame, maxMessage, server)
    return (
        Direction(
            pipe,
            frontend,
            upstream,
            True,
            maxFrame,
            maxMessage,
            refused,
            deflate,
            fromClient,
        ),
        Direction(
            pipe,
            upstream,
            frontend,
            False,
            maxFrame,
            maxMessage,
            refused,
            deflate,
            fromBackend,
        ),
    )
