# -*- test-case-name: tests.test_proxy -*-
"""
How a leg of a relayed connection closes: every sendable close code
accepted and relayed verbatim, the reply to a peer's close held until the
other side answered, and a failure's close frame held back until the other
side had its say (as a direct connection would order them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import txaio
from autobahn.websocket.protocol import WebSocketProtocol

from wsrelay.ws._autobahn import LegShims

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


class ClosingLeg(LegShims):
    """
    Mixin for an Autobahn protocol: the close handshake and failures of a
    relayed leg (L{wsrelay.ws.legs.RelayLeg} adds the frames).

    @ivar listener: Told about closing.
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

    listener: CloseListener | None = None
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
