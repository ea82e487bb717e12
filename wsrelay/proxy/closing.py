# -*- test-case-name: tests.test_proxy,tests.test_violations -*-
"""
The close handshake between the two legs of a proxied connection on the
message data path: a close from either side is forwarded to the other,
and answered with what the other side answers; a side that broke the
protocol gets its close frame only once the other side answered its own
(the order of a direct connection).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from wsrelay.ws.legclosing import OPEN

if TYPE_CHECKING:
    from wsrelay.ws.legs import RelayLeg


class CloseRelay:
    """
    Relays the close handshake of one proxy session's two legs.

    @ivar waiting: The leg whose close was forwarded to the other side, and
        which waits for that side's answer, or L{None}.
    @ivar failing: The leg holding back its failure until the other side
        answers the close it got (L{hold}), or L{None}.
    """

    #: (Class defaults: a session made with no close under way costs no
    #: call and no store.)
    waiting: RelayLeg | None = None
    failing: RelayLeg | None = None

    def forward(
        self,
        leg: RelayLeg,
        other: RelayLeg | None,
        code: int | None,
        reason: bytes | None,
    ) -> None:
        """
        C{leg}'s peer sent a close: forward it to C{other}, and answer
        C{leg} once C{other} answers (L{replied}); with no open C{other},
        answer at once.
        """
        if other is not None and other.state == OPEN:
            self.waiting = leg
            other.closeWith(code, reason)
        else:
            leg.replyClose(code, reason)

    def hold(self, leg: RelayLeg, other: RelayLeg | None) -> bool:
        """
        C{leg}'s peer broke the protocol: C{leg} may hold its close frame
        back until C{other}, which the caller closes at once (with
        L{wsrelay.ws.legclosing.failureClose}), answers or goes.  Not while a
        close handshake is under way.

        @return: Whether C{leg} holds its close frame back.
        """
        if (
            other is None
            or other.state != OPEN
            or other.closeRelayed
            or other.heldFailure is not None
            or self.waiting is not None
        ):
            return False
        self.failing = leg
        return True

    def replied(self, leg: RelayLeg, code: int | None, reason: bytes | None) -> None:
        """
        C{leg}'s peer answered a forwarded close: answer the side that
        started it the same way.  Or it answered the close it got for a
        failure held back (L{hold}): the offender gets its close.
        """
        failing = self.failing
        if failing is not None and failing is not leg:
            self.failing = None
            failing.releaseFailure()
        waiting = self.waiting
        if waiting is not None and waiting is not leg:
            self.waiting = None
            waiting.replyClose(code, reason)

    def release(self, leg: RelayLeg) -> None:
        """
        C{leg}'s connection is gone: if the other side held back a failure
        waiting for C{leg}'s answer, it gets its close now.
        """
        failing, self.failing = self.failing, None
        if failing is not None and failing is not leg:
            failing.releaseFailure()

    def clientGone(self, upstream: RelayLeg | None) -> None:
        """
        The client's connection is gone: close C{upstream}, answering the
        close it forwarded if it waits for one.
        """
        if upstream is None:
            return
        if self.waiting is upstream:
            self.waiting = None
            upstream.replyClose(1001, b"client went away")
        elif upstream.state == OPEN:
            upstream.closeWith(1001, b"client went away")

    def upstreamGone(self, frontend: RelayLeg) -> bool:
        """
        The upstream's connection is gone: answer the close C{frontend}
        forwarded with the one its peer sent, if it waits for an answer.

        @return: Whether it did.
        """
        if self.waiting is not frontend:
            return False
        self.waiting = None
        reason = frontend.remoteCloseReason
        frontend.replyClose(
            frontend.remoteCloseCode,
            None if reason is None else reason.encode("utf-8"),
        )
        return True
