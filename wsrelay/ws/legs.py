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

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from wsrelay.ws import _autobahn
from wsrelay.ws._autobahn import NO_QUEUE, compact
from wsrelay.ws.framing import compressFrame
from wsrelay.ws.legclosing import CLOSED, OPEN, ClosingLeg
from wsrelay.ws.writes import directWrite

if TYPE_CHECKING:
    from wsrelay.config import RelayConfig

_autobahn.install()

#: The state of a leg before it opened (Autobahn's).
CONNECTING = WebSocketProtocol.STATE_CONNECTING


def legOptions(config: RelayConfig) -> dict[str, Any]:
    """
    @return: The Autobahn protocol options both legs take from C{config}:
        the relay's limits, timeouts and keepalive pings, close codes and
        reasons echoed, UTF-8 checked, no opening-handshake timer of
        Autobahn's (the relay times the handshake itself).
    """
    return {
        "failByDrop": False,
        "echoCloseCodeReason": True,
        "maxMessagePayloadSize": config.maxMessageSize,
        "maxFramePayloadSize": config.maxFrameSize or config.maxMessageSize,
        "openHandshakeTimeout": 0,
        "closeHandshakeTimeout": config.closeTimeout,
        "autoPingInterval": config.pingInterval,
        "autoPingTimeout": config.pingTimeout,
        "autoPingRestartOnAnyTraffic": True,
        "utf8validateIncoming": True,
    }


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
    # With every option on the class, Autobahn's loop over CONFIG_ATTRS in
    # each new connection's _connectionMade (a hasattr, a getattr and a
    # tuple for its debug line, per option and leg) would copy nothing.
    options["CONFIG_ATTRS"] = ()
    # A server leg with nothing else to set up as it connects takes the
    # short way (LegShims.connectsLean).
    options["connectsLean"] = bool(
        factory.isServer
        and options.get("tcpNoDelay", getattr(base, "tcpNoDelay", None)) is True
        and not factory.trackTimings
        and not factory.openHandshakeTimeout > 0
    )
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


@implementer(IPushProducer)
class LegProducer:
    """
    A leg as the producer of what the other leg's transport writes: pauses
    and resumes reading from its own transport when the other leg's cannot
    keep up (L{wsrelay.proxy.pairing.pairLegs} registers each leg with the
    other's transport), as C{twisted.protocols.portforward} registers each
    side's transport with the other; the leg itself, so that pairing makes
    no object per leg.

    Not the transport itself, because a transport calls C{stopProducing}
    on its producer when it loses its connection: that would close this
    leg too, before the relay could tell it why (or reconnect it).
    """

    transport: Any

    def pauseProducing(self) -> None:
        """
        Stop reading from the leg's transport.
        """
        transport = self.transport
        if transport is not None:
            transport.pauseProducing()

    def resumeProducing(self) -> None:
        """
        Read from the leg's transport again.
        """
        transport = self.transport
        if transport is not None:
            transport.resumeProducing()

    def stopProducing(self) -> None:
        """
        Nothing: the session decides when the leg's transport closes.
        """


class RelayLeg(LegProducer, ClosingLeg):
    """
    Mixin for an Autobahn protocol that relays frames and closes.

    Its base, L{ClosingLeg}, closes it.

    @ivar dataPath: What reads the bytes the transport receives
        (L{dataReceived}): L{None} for Autobahn's parser (L{parse}), the
        handshake and the message data path; a passthrough
        L{wsrelay.proxy.direction.Direction} set by the session's pipe; the
        L{wsrelay.fanout.Channel} of a fan-out source, which calls
        L{parse} itself.
    @ivar target: Where received data frames go.
    @ivar messagesIn: Complete messages received.
    @ivar bytesIn: Payload bytes received in data frames.
    @ivar messagesOut: Complete messages sent on.
    @ivar bytesOut: Payload bytes sent on.
    @ivar receivingFragment: Whether the last data frame received did not
        end its message.
    @ivar sendingFragment: Whether the last data frame sent did not end its
        message.
    """

    dataPath: DataPath | None = None
    target: FrameSink | None = None
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

    # Receiving: bytes go to the data path.

    def dataReceived(self, data: bytes) -> None:
        """
        Bytes from the transport: to the data path, or to Autobahn's parser
        when there is none; before the leg opened, straight to its
        handshake (C{processHandshake}), as Autobahn's parser would hand
        them on (without its count of them in the traffic counters, which
        no one reads).
        """
        path = self.dataPath
        if path is not None:
            path.dataReceived(data)
        elif self.state == CONNECTING:
            self.data += data
            self.processHandshake()  # type: ignore[attr-defined]
        else:
            self.parse(data)

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
    _HANDSHAKE_ONLY: tuple[str, ...] = (
        "http_headers",
        "http_request_data",
        "http_response_data",
        "http_status_line",
        "http_request_host",
        "http_request_params",
        "http_request_path",
        "http_request_uri",
        "websocket_origin",
        "websocket_key",
        "_wskey",
        # The relay's own: the client's peer host (wsrelay.admission.peerHost).
        "peerAddress",
    )

    #: The peer's host, once asked (a client's leg: L{wsrelay.admission.
    #: peerHost}).
    peerAddress: str | None = None
    #: The request's parsed head, if the leg keeps one (a client's leg).
    head: Any = None

    #: What a leg whose connection is gone lets go of (L{letGo}): the
    #: references by which it and its session, data path or channel refer
    #: to each other, and the handshake's L{Deferred} of an upstream leg.
    #: (And Autobahn's C{is_closed}, resolved with the leg itself: it
    #: reads as L{None} then.)
    _CYCLES = (
        "listener",
        "target",
        "session",
        "dataPath",
        "opened",
    )

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
        _autobahn.letGo(self, self._CYCLES, not self.is_server)  # type: ignore[attr-defined]
        # (Not made when first read after this: LazyClosed.)
        self.__dict__["is_closed"] = None

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        Autobahn's C{connectionLost} (which tells the listener through
        C{onClose}), or for a client's leg that a passthrough pipe carried
        L{pipeLost}; then let go (L{letGo}).
        """
        if self.dataPath is not None and self.is_server:  # type: ignore[attr-defined]
            self.pipeLost()
        else:
            super().connectionLost(reason)  # type: ignore[misc]
        self.letGo()

    def pipeLost(self) -> None:
        """
        The connection of a client's leg that a passthrough pipe carried
        (the only data path a client's leg is given) is gone.  The pipe ran
        the close handshake, not Autobahn, whose C{connectionLost} would
        only format its debug lines, find no timer of its own left (the
        pipe stopped its pings) and tell the listener through C{onClose}:
        do what of it matters (the leg closed, C{is_closed} resolved, the
        factory's count of connections) and tell the listener.
        """
        self.state = CLOSED
        # (Only if something made it: LazyClosed.)
        closed = self.__dict__.get("is_closed")
        if closed is not None and not closed.called:
            closed.callback(self)
        self.factory.countConnections -= 1
        self.onClose(self.wasClean, self.remoteCloseCode, None)

    def forgetHandshake(self, compacting: bool = True) -> None:
        """
        Let the opening handshake's texts go once the leg is open: a relay
        holds many connections for long, and with the relay's own copies
        (L{UpstreamProtocol.forgetHandshake}) they were a fifth of each
        one's memory (19.7 against 15.6 KiB resident per connection in the
        storm benchmark, BENCHMARKS.md).  Then give the leg a dictionary
        sized for the attributes that differ from their class defaults
        (L{compact <wsrelay.ws._autobahn.compact>}).

        @param compacting: Whether to compact now (not when the caller
            compacts the leg later: a passthrough pipe, once it started).
        """
        if self.is_server and self.http_headers is None:  # type: ignore[attr-defined]
            # A client's leg whose request Autobahn never parsed (the relay
            # answered it: PlainAccept) holds none of Autobahn's fields;
            # nor its __dict__, unless something asked for it (Python 3.11
            # makes one then, and every later attribute access of the leg
            # is slower): what it set is deleted as such.
            if self.peerAddress is not None:
                del self.peerAddress
        else:
            attributes = self.__dict__
            for name in self._HANDSHAKE_ONLY:
                # (Each reads as its class default, None, once dropped.)
                attributes.pop(name, None)
        if self.detailsMade:
            # Read by Autobahn's _onOpen (a TLS leg's channel id and peer
            # certificate) and never after, if made at all
            # (LazyTransportDetails); 336 bytes a held connection.
            del self._transport_details
            del self.detailsMade
        if self.openMade:
            # Once it fired, it reads as FIRED (LazyOpen).
            if self.is_open.called:
                del self.is_open
                del self.openMade
        head = self.head
        if head is not None:
            # The request's fields by name, made while it was handled.
            vars(head).pop("fields", None)
        if compacting:
            compact(self)

    def sendData(
        self, data: bytes, sync: bool = False, chopsize: int | None = None
    ) -> None:
        """
        Autobahn's C{sendData} without the arguments of its debug line,
        which it computes on every write, and sending at once when nothing
        is queued (L{directWrite}).  Autobahn's queue is made here when a
        chopped or synchronous write first needs it.
        """
        if sync or chopsize or self.send_queue or self.logOctets:
            if (sync or chopsize) and self.send_queue is NO_QUEUE:
                self.send_queue = deque()
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
