# -*- test-case-name: tests.test_proxy -*-
"""
What both legs of a relayed connection share: forwarding data frames
without reassembling messages, and relaying the close handshake.

Each leg hands every complete data frame it receives to its C{target}
(the other leg, a reconnect buffer, a fan-out channel...) through
C{forwardFrame(opcode, payload, fin)}, and is itself such a target.

What a leg's transport receives goes to the leg's data path
(L{RelayLeg.dataPath}): Autobahn's parser until the session sets another
(a passthrough L{wsrelay.proxy.direction.Direction}, or the fan-out
L{wsrelay.fanout.Channel} reading its source).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import txaio
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from wsrelay import _autobahn
from wsrelay._autobahn import LegShims
from wsrelay.framing import compressFrame
from wsrelay.writes import directWrite

if TYPE_CHECKING:
    from twisted.internet.interfaces import ITransport

_autobahn.install()

OPEN = WebSocketProtocol.STATE_OPEN
CLOSING = WebSocketProtocol.STATE_CLOSING
CLOSED = WebSocketProtocol.STATE_CLOSED

#: Close codes that may appear in a close frame (RFC 6455 7.4 and the IANA
#: registry): 1004-1006 and 1015 are reserved, 1016-2999 unassigned.
_SENDABLE = frozenset([1000, 1001, 1002, 1003, *range(1007, 1015)])


def sendableCloseCode(code: int) -> bool:
    """
    @return: Whether C{code} may be sent in a close frame.
    """
    return code in _SENDABLE or 3000 <= code <= 4999


def failureClose(code: int, toClient: bool) -> tuple[int, bytes]:
    """
    The close frame for the other side of a relayed connection when the
    relay fails one side with C{code}.

    @param toClient: Whether the other side is the client (the backend was
        failed).
    @return: The code and reason: a protocol error (1002, 1007) passes
        as it is, as if the other side's own peer had failed the connection
        (which is what a direct connection would show); any other failure,
        a limit of the relay's, gives a client 1014 and a backend 1001.
    """
    if code == 1002 or code == 1007:
        return code, (
            b"backend broke the protocol" if toClient else b"client broke the protocol"
        )
    if toClient:
        return 1014, b"backend broke the protocol"
    return 1001, b"client went away"


def withOptions(base: type[Any], factory: Any) -> type[Any]:
    """
    A subclass of the protocol class C{base} that holds C{factory}'s
    protocol options as class attributes.

    Autobahn copies each of its 40-odd options from the factory into every
    new protocol's C{__dict__}, unless the protocol already has it: as
    class attributes they are read the same way and stored once, which
    saves memory (and some time) per connection.  Callable options (say,
    C{perMessageCompressionAccept}) stay unbound.
    """
    options = {}
    for name in base.CONFIG_ATTRS:
        if hasattr(base, name):
            # The protocol's own (a method), as Autobahn leaves it.
            continue
        value = getattr(factory, name)
        options[name] = staticmethod(value) if callable(value) else value
    return type(base.__name__, (base,), {"__module__": base.__module__, **options})


class DataPath(Protocol):
    """
    What reads the bytes a leg's transport receives, instead of Autobahn's
    parser.
    """

    def dataReceived(self, data: bytes) -> None:
        """
        Take bytes as the leg's transport received them.
        """


class FrameSink(Protocol):
    """
    Something data frames can be forwarded to.
    """

    def forwardFrame(self, opcode: int, payload: bytes, fin: bool) -> None:
        """
        Take one data frame: C{opcode} 1 (text), 2 (binary) or 0
        (continuation), its unmasked payload and its FIN bit.
        """


class CloseListener(Protocol):
    """
    What a leg tells about closing (a session).
    """

    def closeReceived(self, leg: Any, code: int | None, reason: bytes | None) -> None:
        """
        C{leg}'s peer started a close handshake; C{leg} waits with its reply
        until L{RelayLeg.replyClose} is called.
        """

    def closeReplied(self, leg: Any, code: int | None, reason: bytes | None) -> None:
        """
        C{leg}'s peer answered the close frame C{leg} sent.
        """

    def legClosed(self, leg: Any) -> None:
        """
        C{leg}'s connection is gone.
        """


class FailureListener(Protocol):
    """
    A listener (L{CloseListener}) that may hold a leg's failure back.
    """

    def holdFailure(self, leg: Any, code: int) -> bool:
        """
        C{leg}'s peer broke the protocol, and Autobahn fails the connection
        with C{code}.

        @return: Whether C{leg} holds its close frame back until
            L{RelayLeg.releaseFailure} is called (the listener closed the
            other side, and calls it once that side answered or left).
        """


@implementer(IPushProducer)
class TransportPauser:
    """
    Pauses and resumes reading from a transport on behalf of the other leg.

    Registered with the other leg's transport instead of the transport
    itself, because a transport calls C{stopProducing} on its producer when
    it loses its connection: that would close this leg too, before the
    relay could tell it why (or reconnect it).
    """

    def __init__(self, transport: ITransport) -> None:
        self._transport = transport

    def pauseProducing(self) -> None:
        """
        Stop reading from the transport.
        """
        self._transport.pauseProducing()  # type: ignore[attr-defined]

    def resumeProducing(self) -> None:
        """
        Read from the transport again.
        """
        self._transport.resumeProducing()  # type: ignore[attr-defined]

    def stopProducing(self) -> None:
        """
        Nothing: the session decides when the transport closes.
        """


class RelayLeg(LegShims):
    """
    Mixin for an Autobahn protocol that relays frames and closes.

    @ivar dataPath: What reads the bytes the transport receives
        (L{dataReceived}): L{None} for Autobahn's parser (L{parse}), the
        handshake and the message data path; a passthrough
        L{wsrelay.proxy.direction.Direction} set by the session's pipe; the
        L{wsrelay.fanout.Channel} of a fan-out source, which calls
        L{parse} itself.
    @ivar target: Where received data frames go.
    @ivar listener: Told about closing.
    @ivar messagesIn: Complete messages received.
    @ivar bytesIn: Payload bytes received in data frames.
    @ivar messagesOut: Complete messages sent on.
    @ivar bytesOut: Payload bytes sent on.
    @ivar receivingFragment: Whether the last data frame received did not
        end its message.
    @ivar sendingFragment: Whether the last data frame sent did not end its
        message.
    @ivar closeRelayed: Whether the peer started a close handshake that
        this leg has not answered yet (the other side has not replied).
        The peer may send nothing more then: its pings are not answered
        and its data frames are dropped, as Autobahn does once it has
        replied.
    @ivar heldFailure: The close code and reason of a failure of this
        leg's connection (its peer broke the protocol) held back until the
        other side answered the close frame it was sent
        (L{FailureListener.holdFailure}), or L{None}.  Meanwhile the peer
        is treated as failed (its frames are dropped, its pings not
        answered) while what the other side sends still reaches it.
    """

    dataPath: DataPath | None = None
    target: FrameSink | None = None
    listener: CloseListener | None = None
    #: TCP_NODELAY on both legs.  Autobahn's Twisted C{connectionMade}
    #: calls C{transport.setTcpNoDelay(self.tcpNoDelay)} before it copies
    #: the factory's options onto the protocol, swallowing the
    #: C{AttributeError}: without this class attribute Nagle's algorithm
    #: stays on, and the last frame of a message forwarded in several
    #: writes waits for the peer's delayed ACK (40 ms per message on Linux).
    tcpNoDelay = True
    messagesIn = 0
    bytesIn = 0
    messagesOut = 0
    bytesOut = 0
    receivingFragment = False
    sendingFragment = False
    closeRelayed = False
    heldFailure: tuple[int, str] | None = None

    # Autobahn's own attributes used here (its private ones through
    # LegShims).
    state: int
    failedByMe: bool
    frame_data: list[bytes] | None
    current_frame: Any
    utf8validateIncomingCurrentMessage: bool
    utf8validateLast: Any
    message_data_total_length: int
    factory: Any
    serverConnectionDropTimeout: float
    serverConnectionDropTimeoutCall: Any
    closeHandshakeTimeoutCall: Any
    send_queue: Any
    logOctets: bool
    transport: Any

    if TYPE_CHECKING:

        def sendFrame(
            self, opcode: int, payload: bytes = b"", fin: bool = True, rsv: int = 0
        ) -> None: ...
        def sendCloseFrame(
            self,
            code: int | None = None,
            reasonUtf8: bytes | None = None,
            isReply: bool = False,
        ) -> None: ...  # noqa: E501
        def dropConnection(self, abort: bool = False) -> None: ...
        def sendPong(self, payload: bytes | None = None) -> None: ...
        def onServerConnectionDropTimeout(self) -> None: ...

    # Receiving: bytes go to the data path.

    def dataReceived(self, data: bytes) -> None:
        """
        Bytes from the transport: to the data path, or to Autobahn's parser
        when there is none.
        """
        path = self.dataPath
        if path is None:
            self.parse(data)
        else:
            path.dataReceived(data)

    # Receiving on the message path: whole frames, never whole messages.

    def onMessageBegin(self, isBinary: bool) -> None:
        """
        A message starts: only reset the size count Autobahn's limit uses.
        """
        self.message_data_total_length = 0

    def onMessageFrameEnd(self) -> None:
        """
        A data frame is complete: hand it to the target unless it ends a
        text message in the middle of a UTF-8 sequence (Autobahn fails the
        connection with 1007 right after this).
        """
        data = self.frame_data
        self.frame_data = None
        if self.failedByMe or self.closeRelayed:
            return
        frame = self.current_frame
        fin = frame.fin
        if (
            fin
            and self.utf8validateIncomingCurrentMessage
            and not self.utf8validateLast[1]
        ):
            return
        if data is None or not data:
            payload = b""
        elif len(data) == 1:
            payload = data[0]
        else:
            payload = b"".join(data)
        self.bytesIn += len(payload)
        self.receivingFragment = not fin
        if fin:
            self.messagesIn += 1
        target = self.target
        if target is not None:
            target.forwardFrame(frame.opcode, payload, fin)

    def onMessageEnd(self) -> None:
        """
        Nothing to assemble: frames went on as they came.
        """

    # Sending.

    _directWrite: Any = None

    def writer(self) -> Callable[[bytes], None]:
        """
        @return: This leg's L{directWrite} to its transport, made once and
            shared by whatever writes to the leg's peer.
        """
        write: Callable[[bytes], None] | None = self._directWrite
        if write is None:
            write = self._directWrite = directWrite(self.transport)
        return write

    #: Autobahn's attributes that only its opening handshake reads (the
    #: request, the response, their parsed headers), checked against its
    #: source: L{forgetHandshake} lets them go.
    _HANDSHAKE_ONLY = (
        "http_headers",
        "http_request_data",
        "http_response_data",
        "http_status_line",
        "http_request_params",
        "http_request_uri",
        "websocket_origin",
    )

    #: What a leg whose connection is gone lets go of (L{letGo}): the
    #: references by which it and its session, data path or channel refer
    #: to each other, Autobahn's C{is_closed} (resolved with the leg itself),
    #: and the handshake's L{Deferred} of an upstream leg.
    _CYCLES = (
        "listener",
        "target",
        "session",
        "dataPath",
        "is_closed",
        "opened",
    )

    #: Autobahn's future resolved with the protocol when its connection
    #: closes; None once the leg let go of it (L{letGo}).
    is_closed: Any = None

    def letGo(self) -> None:
        """
        The connection is gone: drop the references that make the leg, its
        session (or channel) and its data path a reference cycle, so that
        a closed connection's objects are freed as soon as the relay
        forgets it, without waiting for the cyclic garbage collector.
        With the relay's raised thresholds (L{wsrelay.tap.GC_THRESHOLDS}),
        a connection that outlived a young collection would otherwise
        wait for a collection of an older generation, for tens of minutes
        or hours (docs/reliability.md, "Memory: where it goes and its
        bounds").
        """
        attributes = self.__dict__
        for name in self._CYCLES:
            attributes.pop(name, None)
        # Twisted's client connector and its TCP transport refer to each
        # other for good (the connector's factory holds the endpoint's
        # wrapping factory and Deferred): once the connection is lost the
        # connector no longer uses its transport.
        transport = self.transport
        for _ in range(2):
            connector = getattr(transport, "connector", None)
            if connector is not None:
                if getattr(connector, "transport", None) is transport:
                    connector.transport = None
                break
            # TLS: the TCP transport is under the TLS protocol.
            transport = getattr(transport, "transport", None)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        Autobahn's C{connectionLost} (which tells the listener through
        C{onClose}), then let go (L{letGo}).
        """
        super().connectionLost(reason)  # type: ignore[misc]
        self.letGo()

    def forgetHandshake(self) -> None:
        """
        Let the opening handshake's texts go once the leg is open: a relay
        holds many connections for long, and with the relay's own copies
        (L{UpstreamProtocol.forgetHandshake}) they were a fifth of each
        one's memory (19.7 against 15.6 KiB resident per connection in the
        storm benchmark, BENCHMARKS.md).
        """
        attributes = self.__dict__
        for name in self._HANDSHAKE_ONLY:
            if name in attributes:
                attributes[name] = None

    def sendData(
        self, data: bytes, sync: bool = False, chopsize: int | None = None
    ) -> None:
        """
        Autobahn's C{sendData} without the arguments of its debug line,
        which it computes on every write, and sending at once when nothing
        is queued (L{directWrite}).
        """
        if sync or chopsize or self.send_queue or self.logOctets:
            super().sendData(data, sync, chopsize)  # type: ignore[misc]
            return
        (self._directWrite or self.writer())(data)

    def forwardFrame(self, opcode: int, payload: bytes, fin: bool) -> None:
        """
        Send a data frame received on the other side, compressed when this
        leg negotiated permessage-deflate.
        """
        if self.state != OPEN:
            return
        pmce = self.compressor
        if pmce is None:
            self.sendFrame(opcode, payload, fin)
        else:
            self.sendFrame(
                *compressFrame(pmce, opcode, payload, fin, self.sendingFragment)
            )
        self.bytesOut += len(payload)
        self.sendingFragment = not fin
        if fin:
            self.messagesOut += 1

    def onPing(self, payload: bytes) -> None:
        """
        Answer a ping, unless the peer already sent its close frame: the
        relay holds its reply to that close until the other side answers,
        so the state is still open, but the peer's ping came after its
        close and gets no pong (Autobahn|Testsuite case 7.1.3).
        """
        if self.state == OPEN and not self.closeRelayed and not self.failedByMe:
            self.sendPong(payload)

    # Closing.

    def onCloseFrame(self, code: int | None, reasonRaw: bytes | None) -> bool | None:
        """
        A close frame arrived.  Unlike Autobahn, accept every code that may
        be sent, and do not answer at once when the peer starts the close:
        the listener forwards it and L{replyClose} answers with what the
        other side said.
        """
        if code is not None and not sendableCloseCode(code):
            return self.protocolViolation(f"invalid close code {code}")
        reason = None
        if reasonRaw is not None:
            try:
                reason = reasonRaw.decode("utf-8")
            except UnicodeDecodeError:
                return self.invalidPayload("invalid close reason (non-UTF8 payload)")
        self.remoteCloseCode = code
        self.remoteCloseReason = reason
        self.wasClean = True
        if self.heldFailure is not None:
            # The peer closes after breaking the protocol: its close frame
            # answers the failure's, sent now.
            self.releaseFailure()
        if self.state == CLOSING:
            if self.closeHandshakeTimeoutCall is not None:
                self.closeHandshakeTimeoutCall.cancel()
                self.closeHandshakeTimeoutCall = None
            self._afterClose()
            if self.listener is not None:
                self.listener.closeReplied(self, code, reasonRaw)
        elif self.state == OPEN:
            self.closeRelayed = True
            if self.listener is not None:
                self.listener.closeReceived(self, code, reasonRaw)
            else:
                self.replyClose(code, reasonRaw)
        return None

    def replyClose(self, code: int | None, reasonRaw: bytes | None) -> None:
        """
        Answer the close frame the peer sent.
        """
        if self.state != OPEN:
            return
        self.sendCloseFrame(code=code, reasonUtf8=reasonRaw, isReply=True)
        self._afterClose()

    def closeWith(self, code: int | None, reason: bytes | None = None) -> None:
        """
        Start a close handshake with any sendable code (Autobahn's
        C{sendClose} refuses most of them); a leg with a held failure
        sends that failure's close frame instead.
        """
        if self.heldFailure is not None:
            self.releaseFailure()
        elif self.state == OPEN:
            self.sendCloseFrame(code=code, reasonUtf8=reason, isReply=False)

    def onFailure(self, code: int, reason: str) -> None:
        """
        Autobahn fails the connection (L{LegShims}): the peer broke the
        protocol (1002), sent invalid UTF-8 (1007) or too big a message
        (1009).

        Autobahn sends its close frame at once; but the other side may
        still be answering what the peer sent before the bad frame (the
        echo of a message, say), which a direct connection would deliver
        before the close.  So when the listener agrees
        (L{FailureListener.holdFailure}: it closed the other side), the
        close frame is held back until L{releaseFailure}, and the peer is
        meanwhile treated as failed: Autobahn, like L{onMessageFrameEnd}
        and L{onPing}, ignores what it sends once C{failedByMe} is set.
        """
        if self.heldFailure is not None:
            return
        hold = getattr(self.listener, "holdFailure", None)
        if (
            hold is not None
            and self.state == OPEN
            and not self.failedByMe
            and not self.closeRelayed
            and hold(self, code)
        ):
            self.failedByMe = True
            self.heldFailure = (code, reason)
            return
        self.failNow(code, reason)

    def releaseFailure(self) -> None:
        """
        Send the close frame of the failure held back (L{onFailure}):
        the other side answered, left or took too long.
        """
        held, self.heldFailure = self.heldFailure, None
        if held is not None:
            self.failNow(*held)

    def _afterClose(self) -> None:
        """
        Both close frames went: a server drops the TCP connection at once, a
        client waits a while for the server to do it.
        """
        if self.factory.isServer:
            self.dropConnection(abort=False)
        elif (
            self.serverConnectionDropTimeout > 0
            and self.serverConnectionDropTimeoutCall is None
        ):
            # A peer that sends a second close frame must not start a
            # second timer: the first would never be cancelled.
            # txaio picks call_later at run time from the loaded framework.
            self.serverConnectionDropTimeoutCall = txaio.call_later(  # type: ignore[attr-defined]
                self.serverConnectionDropTimeout, self.onServerConnectionDropTimeout
            )

    def cancelCloseTimer(self) -> None:
        """
        Cancel the close handshake timer, which Autobahn leaves running
        when the connection is lost first.
        """
        call, self.closeHandshakeTimeoutCall = self.closeHandshakeTimeoutCall, None
        if call is not None:
            call.cancel()

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        """
        The connection is gone.
        """
        self.cancelCloseTimer()
        if self.listener is not None:
            self.listener.legClosed(self)
