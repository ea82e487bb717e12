# -*- test-case-name: tests.test_proxy,tests.test_health -*-
"""
What a proxy session does when its backend vanishes without a close
handshake: close the client with 1014, or with C{failover = reconnect}
open a new upstream to another backend, holding what the client sends
meanwhile (L{ReconnectBuffer}).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, cast
from weakref import ref

from twisted.internet.defer import CancelledError

from wsrelay.ws.legclosing import OPEN

if TYPE_CHECKING:
    from twisted.internet.interfaces import IConsumer, IPushProducer
    from twisted.python.failure import Failure

    from wsrelay.config import ProxyRouteConfig
    from wsrelay.proxy.opening import UpstreamOpener
    from wsrelay.routing import Backend
    from wsrelay.ws.frontend import FrontendProtocol
    from wsrelay.ws.upstream import UpstreamProtocol


class Reconnecting(Protocol):
    """
    The proxy session a L{Failover} works for
    (L{wsrelay.proxy.session.ProxySession}).
    """

    frontend: FrontendProtocol
    opener: UpstreamOpener
    stopping: bool
    closedBy: str | None

    @property
    def routeConfig(self) -> ProxyRouteConfig:
        """
        The configuration of the session's route.
        """

    def attach(self, backend: Backend, up: UpstreamProtocol) -> UpstreamProtocol:
        """
        Make C{up}, to C{backend}, the session's upstream.
        """

    def pair(self) -> None:
        """
        Let data and flow control run between the client and the upstream.
        """


class ReconnectBuffer:
    """
    Holds client frames while a new upstream opens.

    @ivar skipping: Whether the rest of a message that was partly sent to
        the lost backend is being dropped (it can never be delivered
        whole).
    """

    def __init__(self, failover: Failover, limit: int, skipping: bool) -> None:
        self._failover = failover
        self._frontend = failover.session.frontend
        self._limit = limit
        self.skipping = skipping
        self.size = 0
        self.frames: list[tuple[int, bytes, bool]] = []
        self.upstream: UpstreamProtocol | None = None

    def forwardFrame(self, opcode: int, payload: bytes, fin: bool) -> None:
        """
        Keep a frame for the new upstream, within the limit.
        """
        if self.skipping:
            if fin:
                self.skipping = False
                if self.upstream is not None:
                    self._frontend.target = self.upstream
            return
        self.size += len(payload)
        if self.size > self._limit:
            self._failover.overflow()
            return
        self.frames.append((opcode, payload, fin))

    def attach(self, upstream: UpstreamProtocol) -> None:
        """
        Send what was kept to C{upstream}, and the rest straight to it.
        """
        for frame in self.frames:
            upstream.forwardFrame(*frame)
        self.frames = []
        self.upstream = upstream
        if not self.skipping:
            self._frontend.target = upstream


class Failover:
    """
    The lost backend of one proxy session.

    @ivar buffer: What the client sent since the backend was lost, while a
        new upstream opens; L{None} when none is being opened.
    """

    def __init__(self, session: Reconnecting) -> None:
        # The session holds this object: a weak reference back, so that a
        # closed session is freed at once by reference counting, not left
        # to the garbage collector (tests/test_reclaim.py).
        self._session = ref(session)
        self.buffer: ReconnectBuffer | None = None

    @property
    def session(self) -> Reconnecting:
        """
        The session this works for (alive while it can call this).
        """
        session = self._session()
        assert session is not None
        return session

    def backendLost(self, lost: Backend | None) -> None:
        """
        The backend vanished without a close handshake: open a new upstream
        to another one when the route says C{failover = reconnect}, and the
        client is not in the middle of a message from the lost one, else
        close the client with 1014.
        """
        session = self.session
        f = session.frontend
        if (
            session.routeConfig.failover != "reconnect"
            or session.stopping
            or f.sendingFragment
        ):
            if session.closedBy is None:
                session.closedBy = "backend"
            reason = b"backend connection lost"
            if f.sendingFragment:
                reason = b"backend lost in the middle of a message"
            f.closeWith(1014, reason)
            return
        self.buffer = ReconnectBuffer(
            self, session.routeConfig.failoverBuffer, f.receivingFragment
        )
        f.target = self.buffer
        ft = f.transport
        # The client is still connected (its state is OPEN).
        assert ft is not None
        cast("IConsumer", ft).unregisterProducer()
        cast("IPushProducer", ft).resumeProducing()
        session.opener.open(lost).addCallbacks(self._reconnected, self._reconnectFailed)

    def _reconnected(self, pair: tuple[Backend, UpstreamProtocol]) -> None:
        """
        A new upstream is open: send it what the client sent meanwhile.
        """
        session = self.session
        backend, up = pair
        f = session.frontend
        buffer = self.buffer
        assert buffer is not None
        if f.state != OPEN:
            up.listener = None
            up.closeWith(1001, b"client went away")
            return
        session.attach(backend, up)
        if up.websocket_protocol_in_use != f.websocket_protocol_in_use:
            session.stopping = True
            up.closeWith(1000, b"subprotocol changed")
            f.closeWith(1014, b"new backend chose another subprotocol")
            return
        self.buffer = None
        buffer.attach(up)
        session.pair()

    def _reconnectFailed(self, f: Failure) -> None:
        """
        No new upstream: the client cannot stay.
        """
        if f.check(CancelledError):
            return
        self.session.frontend.closeWith(1014, b"no backend available")

    def overflow(self) -> None:
        """
        The client sent more than C{failover_buffer} while reconnecting.
        """
        session = self.session
        session.stopping = True
        session.closedBy = session.closedBy or "relay"
        session.opener.cancel()
        session.frontend.closeWith(1013, b"failover buffer full")
