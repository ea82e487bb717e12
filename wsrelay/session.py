# -*- test-case-name: tests.test_proxy -*-
"""
A proxy session: one client connection paired with one upstream.

The session owns both legs, opens the upstream (trying the route's
candidates within the handshake budget), relays the close handshake from
either side to the other, enforces the idle timeout, and with
C{failover = reconnect} opens a new upstream when the backend vanishes,
buffering what the client sends meanwhile.
"""

from __future__ import annotations

from http.cookies import CookieError, SimpleCookie
from typing import TYPE_CHECKING, Any, cast

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from wsrelay.frontend import Refused
from wsrelay.legs import OPEN, RelayLeg, TransportPauser, failureClose
from wsrelay.passthrough import Pipe
from wsrelay.routing import Backend, ConnectionInfo, Route
from wsrelay.upstream import (
    END_TO_END,
    RELAY_DEFLATE,
    RequestHeaders,
    UpstreamProtocol,
    UpstreamRefused,
)

if TYPE_CHECKING:
    from twisted.internet.interfaces import IConsumer, IPushProducer, IReactorTime

    from wsrelay.config import ProxyRouteConfig, RelayConfig
    from wsrelay.frontend import ClientAddresses, FrontendProtocol
    from wsrelay.roles import SessionRegistry, Upstreams
    from wsrelay.stats import Histogram

#: How many idle checks make up one C{idle_timeout}.
IDLE_CHECKS = 4


def joinPath(base: str, rest: str) -> str:
    """
    Append a route remainder to a backend URL path.
    """
    if not rest:
        return base or "/"
    return base.rstrip("/") + rest


class ReconnectBuffer:
    """
    Holds client frames while a new upstream opens.

    @ivar skipping: Whether the rest of a message that was partly sent to
        the lost backend is being dropped (it can never be delivered
        whole).
    """

    def __init__(self, session: ProxySession, limit: int, skipping: bool) -> None:
        self._session = session
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
                    self._session.frontend.target = self.upstream
            return
        self.size += len(payload)
        if self.size > self._limit:
            self._session.bufferOverflow()
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
            self._session.frontend.target = upstream


class ProxySession:
    """
    Pairs a L{FrontendProtocol} with an L{UpstreamProtocol}.

    @ivar backend: The backend of the current upstream.
    @ivar done: Fires when both legs are closed.
    """

    log = Logger()

    def __init__(
        self,
        route: Route,
        frontend: FrontendProtocol,
        *,
        upstreams: Upstreams,
        registry: SessionRegistry,
        addresses: ClientAddresses,
        clock: IReactorTime,
        config: RelayConfig,
        latency: Histogram,
    ) -> None:
        """
        @param upstreams: Opens the upstream (and hears of its failures).
        @param registry: Told when the session ends.
        @param addresses: Says who the client is, and what the backend is
            told of it.
        @param clock: Times the handshake budget and the idle timeout.
        @param config: The relay's configuration when the client came.
        @param latency: Where the handshake's duration goes.
        """
        self.upstreams = upstreams
        self.registry = registry
        self.addresses = addresses
        self.config = config
        self.latency = latency
        self.route = route
        self.frontend = frontend
        self.upstream: UpstreamProtocol | None = None
        self.backend: Backend | None = None
        self.done: Deferred[None] = Deferred()
        self.stopping = False
        self._clock = self.clock = clock
        self._opening: Deferred[Any] | None = None
        self._closeWaiting: RelayLeg | None = None
        #: The leg holding back its failure until the other side answers
        #: (L{holdFailure}).
        self._failing: RelayLeg | None = None
        self._buffer: ReconnectBuffer | None = None
        self._idleCall: Any = None
        self._idleMark = -1
        self._idleQuiet = 0
        self._finished = False
        self._clientGone = False
        self.startedAt = self._clock.seconds()
        self.openedAt: float | None = None
        self.closedBy: str | None = None
        self.lastBackend: str | None = None
        self.peer = addresses.clientAddress(frontend)
        self.pipe: Pipe | None = None
        frontend.session = self
        frontend.listener = self

    @property
    def routeConfig(self) -> ProxyRouteConfig:
        """
        The configuration of L{route}: a proxy route's, the only kind that
        has proxy sessions.
        """
        config = self.route.config
        if config.mode != "proxy":
            raise TypeError(f"route {config.name!r} is not a proxy route")
        return config

    # Opening.

    def open(self) -> Deferred[tuple[str | None, dict[str, list[str]]]]:
        """
        Open the upstream.

        @return: A L{Deferred} that fires with the subprotocol and the
            headers for the client's 101, or fails with L{Refused}.  It
            never fires when the client leaves first.
        """
        result: Deferred[tuple[str | None, dict[str, list[str]]]] = Deferred()

        def opened(pair: tuple[Backend, UpstreamProtocol]) -> None:
            up = self._attach(*pair)
            headers: dict[str, list[str]] = {}
            for name, value in up.responseHeaders:
                headers.setdefault(name, []).append(value)
            if up.extensionsAnswer:
                # Passthrough: the backend's answer to the client's offer.
                headers["Sec-WebSocket-Extensions"] = list(up.extensionsAnswer)
            result.callback((up.websocket_protocol_in_use, headers))

        def failed(f: Failure) -> None:
            if not f.check(CancelledError):
                result.errback(self._refusal(f))

        self._opening = Deferred.fromCoroutine(self._connect(None))
        self._opening.addCallbacks(opened, failed)
        return result

    def _refusal(self, f: Failure) -> Refused:
        """
        Turn a failure to open the upstream into the client's answer.
        """
        e = f.value
        if isinstance(e, Refused):
            return e
        if isinstance(e, UpstreamRefused):
            return Refused(e.status, e.reason, e.headers, e.body)
        self.log.failure("opening upstream for route {route}", f, route=self.route.name)
        return Refused(500, "Internal Server Error")

    def connectionInfo(self) -> ConnectionInfo:
        """
        @return: What a balancer may know of this connection.
        """
        f = self.frontend
        assert f.head is not None
        cookies: dict[str, str] = {}
        raw = f.head.get("cookie")
        if raw:
            try:
                jar: SimpleCookie = SimpleCookie(raw.replace(", ", "; "))
                cookies = {k: m.value for k, m in jar.items()}
            except CookieError:
                pass
        return ConnectionInfo(
            self.addresses.clientAddress(f),
            f.path,
            f.query,
            f.head.headers,
            cookies,
        )

    async def _connect(self, avoid: Backend | None) -> tuple[Backend, UpstreamProtocol]:
        """
        Open an upstream within C{handshake_timeout}.
        """
        f = self.frontend
        return await self.upstreams.openUpstream(
            self.route,
            self.connectionInfo(),
            self.upstreamRequest,
            tuple(f.websocket_protocols),
            avoid,
            self._clock.seconds() + self.config.handshakeTimeout,
        )

    def upstreamRequest(self, backend: Backend) -> tuple[str, RequestHeaders]:
        """
        @return: The request target and the header fields for C{backend},
            which say how the upstream leg treats extensions: on the
            passthrough data path the client's C{Sec-WebSocket-Extensions}
            fields go to the backend as they are, and its answer comes back
            to the client (L{END_TO_END}); on the message path the leg
            offers permessage-deflate itself when the client's leg uses it
            (L{RELAY_DEFLATE}).
        """
        f = self.frontend
        head = f.head
        assert head is not None
        config = backend.config
        resource = joinPath(config.path, f.remainder)
        query = "&".join(q for q in (config.query, f.query) if q)
        if query:
            resource += "?" + query
        headers = RequestHeaders(self.addresses.forwardedHeaders(f, head))
        protocols = head.get("sec-websocket-protocol")
        if protocols:
            headers.append(("Sec-WebSocket-Protocol", protocols))
        if self.routeConfig.dataPath == "passthrough":
            offers = [
                (n, v)
                for (n, v) in head.headers
                if n.lower() == "sec-websocket-extensions"
            ]
            if offers:
                headers.extend(offers)
                headers.extensions = END_TO_END
        elif f.relaysDeflate():
            headers.extensions = RELAY_DEFLATE
        return resource, headers

    def _attach(self, backend: Backend, up: UpstreamProtocol) -> UpstreamProtocol:
        """
        Make C{up} the upstream of this session.
        """
        self.upstream = up
        self.backend = backend
        self.lastBackend = backend.name
        up.listener = self
        up.target = self.frontend
        backend.connections += 1
        backend.totalConnections += 1
        listener = self.route.loadListener
        if listener is not None:
            listener.connectionOpened(backend)
        return up

    def clientOpened(self) -> None:
        """
        The client got its 101: data flows both ways now.
        """
        self.openedAt = self._clock.seconds()
        self.latency.observe(self.openedAt - self.startedAt)
        self._pair()
        if self.routeConfig.dataPath == "passthrough":
            # Now, before Autobahn parses a byte after either 101: frames
            # may be compressed (permessage-deflate negotiated end to end,
            # which Autobahn knows nothing of), and this runs inside the
            # handshakes' processing, with what came behind them still in
            # each leg's buffer.
            self._startPipe()
        if self.config.idleTimeout > 0:
            self._armIdle()

    def _pair(self) -> None:
        """
        Send client frames to the upstream, and let each side pause the
        other when it cannot keep up.
        """
        f, up = self.frontend, self.upstream
        assert up is not None
        f.forgetHandshake()
        up.forgetHandshake()
        if self._buffer is None:
            f.target = up
        ft, ut = f.transport, up.transport
        # Both legs are connected once paired.
        assert ft is not None and ut is not None
        cast("IConsumer", ft).registerProducer(TransportPauser(ut), True)
        cast("IConsumer", ut).registerProducer(TransportPauser(ft), True)

    def closing(self) -> None:
        """
        A close frame goes to the client: the other leg's frames stop at
        Autobahn, which sends nothing after a close.
        """

    def _startPipe(self) -> None:
        """
        Switch to the passthrough data path: from now on bytes are
        forwarded as they come (see L{wsrelay.passthrough}), starting with
        those each leg holds unparsed.  A session with a leg in the middle
        of a frame, or a close handshake under way, stays on the message
        path (neither happens when this runs as the client gets its 101).
        """
        f, up = self.frontend, self.upstream
        if (
            up is None
            or f.state != OPEN
            or up.state != OPEN
            or f.current_frame is not None
            or up.current_frame is not None
            or self._buffer is not None
            or self._closeWaiting is not None
            or f.closeRelayed
            or up.closeRelayed
        ):
            return
        pipe = self.pipe = Pipe(self, f, up)
        pipe.fromClient.inMessage = f.receivingFragment
        pipe.fromBackend.inMessage = up.receivingFragment
        leftovers = (f.data, up.data)
        f.data = up.data = b""
        pipe.start()
        if leftovers[0]:
            pipe.fromClient.dataReceived(leftovers[0])
        if leftovers[1]:
            pipe.fromBackend.dataReceived(leftovers[1])

    # Closing.

    def closeReceived(self, leg: Any, code: int | None, reason: bytes | None) -> None:
        """
        Forward a close to the other side, and answer C{leg} with what that
        side answers.
        """
        if self.closedBy is None:
            self.closedBy = "client" if leg is self.frontend else "backend"
        other = self._other(leg)
        if other is not None and other.state == OPEN:
            self._closeWaiting = leg
            other.closeWith(code, reason)
        else:
            leg.replyClose(code, reason)

    def holdFailure(self, leg: Any, code: int) -> bool:
        """
        C{leg}'s peer broke the protocol (the message data path): keep a
        direct connection's order.  The other side gets a close frame now
        (L{failureClose}: the same code for a protocol error), and what it
        sends until it answers still reaches C{leg}'s peer, which then gets
        C{leg}'s close frame (L{closeReplied}, L{legClosed}; the other
        side's close handshake timer bounds the wait).

        Not while a close handshake is under way or failing over, nor for
        a backend on a C{failover = reconnect} route (the client then stays
        while another backend is found).

        @return: Whether C{leg} holds its close frame back.
        """
        other = self._other(leg)
        if (
            self.pipe is not None
            or other is None
            or other.state != OPEN
            or other.closeRelayed
            or other.heldFailure is not None
            or self._closeWaiting is not None
            or self._buffer is not None
            or (leg is self.upstream and self.routeConfig.failover == "reconnect")
        ):
            return False
        self._failing = leg
        self.closedBy = self.closedBy or "relay"
        other.closeWith(*failureClose(code, other is self.frontend))
        return True

    def closeReplied(self, leg: Any, code: int | None, reason: bytes | None) -> None:
        """
        The other side answered a forwarded close: answer the side that
        started it the same way.  Or it answered the close it got for a
        failure held back (L{holdFailure}): the offender gets its close.
        """
        failing = self._failing
        if failing is not None and failing is not leg:
            self._failing = None
            failing.releaseFailure()
        waiting = self._closeWaiting
        if waiting is not None and waiting is not leg:
            self._closeWaiting = None
            waiting.replyClose(code, reason)

    def legClosed(self, leg: Any) -> None:
        """
        One leg's connection is gone.
        """
        f = self.frontend
        pipe = self.pipe
        if pipe is not None:
            pipe.legClosed(leg)
            if leg is f:
                self._clientGone = True
            elif leg is self.upstream:
                self._detach()
            self._maybeFinish()
            if self._finished:
                pipe.stop()
                # The pipe refers to this session: no cycle left behind.
                self.pipe = None
            return
        failing, self._failing = self._failing, None
        if failing is not None and failing is not leg:
            # The other side left before it answered the close it got for
            # a failure held back: the offender gets its close now.
            failing.releaseFailure()
        if leg is f:
            if self.closedBy is None:
                self.closedBy = "client"
            self._clientGone = True
            self._cancelOpening()
            up = self.upstream
            if up is not None:
                if self._closeWaiting is up:
                    self._closeWaiting = None
                    up.replyClose(1001, b"client went away")
                elif up.state == OPEN:
                    up.closeWith(1001, b"client went away")
        elif leg is self.upstream:
            assert leg is not None  # a leg is a protocol, never None
            self._detach()
            waiting = self._closeWaiting
            if waiting is f:
                self._closeWaiting = None
                f.replyClose(f.remoteCloseCode, _encode(f.remoteCloseReason))
            elif f.state == OPEN and not leg.closeRelayed:
                self._upstreamLost(leg)
        self._maybeFinish()

    def _upstreamLost(self, leg: UpstreamProtocol) -> None:
        """
        The backend vanished without a close handshake.
        """
        f = self.frontend
        lost = self.backend
        if lost is not None and not leg.wasClean:
            self.upstreams.backendFailed(self.route, lost, "connection lost")
        if (
            self.routeConfig.failover != "reconnect"
            or self.stopping
            or f.sendingFragment
        ):
            if self.closedBy is None:
                self.closedBy = "backend"
            reason = b"backend connection lost"
            if f.sendingFragment:
                reason = b"backend lost in the middle of a message"
            f.closeWith(1014, reason)
            return
        self._buffer = ReconnectBuffer(
            self, self.routeConfig.failoverBuffer, f.receivingFragment
        )
        f.target = self._buffer
        ft = f.transport
        # The client is still connected (its state is OPEN).
        assert ft is not None
        cast("IConsumer", ft).unregisterProducer()
        cast("IPushProducer", ft).resumeProducing()
        self._opening = Deferred.fromCoroutine(self._connect(lost))
        self._opening.addCallbacks(self._reconnected, self._reconnectFailed)

    def _reconnected(self, pair: tuple[Backend, UpstreamProtocol]) -> None:
        """
        A new upstream is open: send it what the client sent meanwhile.
        """
        self._opening = None
        backend, up = pair
        f = self.frontend
        buffer = self._buffer
        assert buffer is not None
        if f.state != OPEN:
            up.listener = None
            up.closeWith(1001, b"client went away")
            return
        self._attach(backend, up)
        if up.websocket_protocol_in_use != f.websocket_protocol_in_use:
            self.stopping = True
            up.closeWith(1000, b"subprotocol changed")
            f.closeWith(1014, b"new backend chose another subprotocol")
            return
        self._buffer = None
        buffer.attach(up)
        self._pair()

    def _reconnectFailed(self, f: Failure) -> None:
        """
        No new upstream: the client cannot stay.
        """
        self._opening = None
        if f.check(CancelledError):
            return
        self.frontend.closeWith(1014, b"no backend available")

    def bufferOverflow(self) -> None:
        """
        The client sent more than C{failover_buffer} while reconnecting.
        """
        self.stopping = True
        self.closedBy = self.closedBy or "relay"
        self._cancelOpening()
        self.frontend.closeWith(1013, b"failover buffer full")

    def shutdown(
        self, code: int = 1001, reason: bytes = b"relay shutting down"
    ) -> None:
        """
        Close both legs (the relay stops, or the backend is disabled).
        """
        self.stopping = True
        if self.closedBy is None:
            self.closedBy = "relay"
        self._cancelOpening()
        if self.pipe is not None:
            self.pipe.shutdown(code, reason)
            return
        for leg in (self.frontend, self.upstream):
            if leg is not None:
                leg.closeWith(code, reason)

    def _other(self, leg: RelayLeg) -> RelayLeg | None:
        return self.upstream if leg is self.frontend else self.frontend

    def _cancelOpening(self) -> None:
        opening, self._opening = self._opening, None
        if opening is not None:
            opening.cancel()

    def _detach(self) -> None:
        """
        Forget the upstream that closed.
        """
        up, backend = self.upstream, self.backend
        self.upstream = None
        if up is not None:
            up.listener = None
            up.target = None
            if self.frontend.target is up:
                self.frontend.target = None
        if backend is not None and up is not None:
            backend.count(up)
            backend.connections -= 1
            listener = self.route.loadListener
            if listener is not None:
                listener.connectionClosed(backend)

    def _maybeFinish(self) -> None:
        """
        Fire L{done} once no connection is left.
        """
        if self._finished or not self._clientGone or self.upstream is not None:
            return
        self._finished = True
        if self._idleCall is not None and self._idleCall.active():
            self._idleCall.cancel()
        self.registry.sessionEnded(self)
        self._logAccess()
        self.done.callback(None)

    def _logAccess(self) -> None:
        """
        One event per connection, when it ends.
        """
        f = self.frontend
        if self.openedAt is None or not self.config.accessLog:
            return
        code = f.remoteCloseCode if self.closedBy == "client" else f.localCloseCode
        self.log.info(
            "{client} {route} {backend} {duration:.3f}s"
            " in {messagesIn}/{bytesIn} out {messagesOut}/{bytesOut}"
            " close {closeCode} by {closedBy}",
            event="access",
            client=self.peer,
            route=self.route.name,
            backend=self.lastBackend,
            duration=self._clock.seconds() - self.openedAt,
            messagesIn=f.messagesIn,
            bytesIn=f.bytesIn,
            messagesOut=f.messagesOut,
            bytesOut=f.bytesOut,
            closeCode=code,
            closedBy=self.closedBy or "network",
        )

    # Idle timeout.

    def _activity(self) -> int:
        f = self.frontend
        return f.bytesIn + f.bytesOut + f.messagesIn + f.messagesOut

    def _armIdle(self) -> None:
        self._idleMark = self._activity()
        self._idleQuiet = 0
        self._idleCall = self._clock.callLater(
            self.config.idleTimeout / IDLE_CHECKS, self._idleCheck
        )

    def _idleCheck(self) -> None:
        """
        Close both legs with 1001 after C{idle_timeout} without data.
        """
        mark = self._activity()
        if mark != self._idleMark:
            self._idleMark = mark
            self._idleQuiet = 0
        else:
            self._idleQuiet += 1
        if self._idleQuiet >= IDLE_CHECKS:
            self._idleCall = None
            self.shutdown(1001, b"idle timeout")
            return
        self._idleCall = self._clock.callLater(
            self.config.idleTimeout / IDLE_CHECKS, self._idleCheck
        )


def _encode(reason: str | None) -> bytes | None:
    return None if reason is None else reason.encode("utf-8")
