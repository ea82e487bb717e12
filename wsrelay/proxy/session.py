# -*- test-case-name: tests.test_proxy -*-
"""
A proxy session: one client connection paired with one upstream.

The session owns both legs and opens the upstream (trying the route's
candidates within the handshake budget).  It hands the close handshake
between the legs to a L{CloseRelay}, the idle timeout to an L{IdleTimer},
and a backend that vanishes to a L{Failover} (which, with
C{failover = reconnect}, opens a new upstream, buffering what the client
sends meanwhile).
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any, cast

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from wsrelay.accesslog import logAccess
from wsrelay.proxy.closing import CloseRelay
from wsrelay.proxy.failover import Failover
from wsrelay.proxy.idle import IdleTimer, activity
from wsrelay.proxy.opening import UpstreamOpener, clientAnswer
from wsrelay.proxy.pairing import compactLegs, pairLegs, startPipe
from wsrelay.proxy.pipe import Pipe
from wsrelay.routing import Backend, Route
from wsrelay.ws.legclosing import OPEN, failureClose
from wsrelay.ws.legs import RelayLeg
from wsrelay.ws.upstream import UpstreamProtocol

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from wsrelay.config import ProxyRouteConfig, RelayConfig
    from wsrelay.roles import SessionRegistry, Upstreams
    from wsrelay.stats import Histogram
    from wsrelay.ws.frontend import ClientAddresses, FrontendProtocol
    from wsrelay.ws.screening import Refused


def sessionDone(session: ProxySession) -> Deferred[None]:
    """
    The C{done} of C{session}: fires when both legs are closed.  Made when
    first read (and fired at once when read after C{session} ended): most
    sessions end with nobody waiting for them (the relay stopping, an
    authorizer's expiry), and a L{Deferred} made and fired for nobody is
    part of every handshake.
    """
    done = session._done
    if done is None:
        done = session._done = succeed(None) if session._finished else Deferred()
    return done


class SessionParts:
    """
    The parts of a L{ProxySession} that it makes only when first needed:
    most sessions need neither (a passthrough session closes through its
    pipe, and few lose their backend), and making both was some 4,000
    instructions of every handshake.
    """

    #: (L{closes} and L{failover}, once made.)
    _closes: CloseRelay | None = None
    _failover: Failover | None = None

    @property
    def closes(self) -> CloseRelay:
        """
        Relays the close handshake between the legs.
        """
        closes = self._closes
        if closes is None:
            closes = self._closes = CloseRelay()
        return closes

    @property
    def failover(self) -> Failover:
        """
        Handles a backend that vanishes.
        """
        failover = self._failover
        if failover is None:
            failover = self._failover = Failover(cast("ProxySession", self))
        return failover

    def _buffering(self) -> bool:
        """
        @return: Whether a failover's buffer holds the client's frames
            (without making a L{Failover} to tell).
        """
        failover = self._failover
        return failover is not None and failover.buffer is not None


class ProxySession(SessionParts):
    """
    Pairs a L{FrontendProtocol} with an L{UpstreamProtocol}.

    @ivar backend: The backend of the current upstream.
    @ivar opener: Opens the upstreams.
    """

    log = Logger()
    _done: Deferred[None] | None = None
    upstream: UpstreamProtocol | None = None  # (Defaults: not set per session.)
    backend: Backend | None = None
    stopping = False
    _idle: IdleTimer | None = None
    _finished = False
    _clientGone = False
    openedAt: float | None = None
    closedBy: str | None = None
    lastBackend: str | None = None
    pipe: Pipe | None = None

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
        self._clock = self.clock = clock
        #: Opens the upstreams.
        self.opener = UpstreamOpener(
            route, frontend, upstreams, addresses, clock, config.handshakeTimeout
        )
        self.startedAt = clock.seconds()
        self.peer = addresses.clientAddress(frontend)
        frontend.session = self
        frontend.listener = self

    @property
    def done(self) -> Deferred[None]:
        """Fires when both legs are closed (L{sessionDone})."""
        return sessionDone(self)

    @property
    def routeConfig(self) -> ProxyRouteConfig:
        """The configuration of L{route}, a proxy route's: it has sessions."""
        config = self.route.config
        if config.mode != "proxy":
            raise TypeError(f"route {config.name!r} is not a proxy route")
        return config

    # Opening.

    def open(self) -> Deferred[tuple[str | None, dict[str, list[str]]]]:
        """
        Open the upstream.

        @return: A L{Deferred} that fires with the subprotocol and the
            headers for the client's 101 (L{clientAnswer}), or fails with
            L{wsrelay.ws.frontend.Refused}.  It never fires when the client
            leaves first.
        """
        result: Deferred[tuple[str | None, dict[str, list[str]]]] = Deferred()
        # (A Deferred of its own: when the opening is cancelled, it never
        # fires, and nothing refers to it.)
        self.opener.start(None).addCallbacks(
            _opened,
            _openFailed,
            callbackArgs=(self, result),
            errbackArgs=(self, result),
        )
        return result

    def attach(self, backend: Backend, up: UpstreamProtocol) -> UpstreamProtocol:
        """
        Make C{up} the upstream of this session (the opener has nothing
        left to cancel: L{UpstreamOpener.opened}).
        """
        self.upstream = up
        self.backend = backend
        self.lastBackend = backend.name
        up.listener = self
        up.target = self.frontend
        self.opener.opened(backend)
        return up

    def clientOpened(self) -> None:
        """
        The client got its 101: data flows both ways now (as L{pair}
        does); on the passthrough data path, through the pipe
        (L{startPipe}), unless a failover or a close handshake is under
        way.
        """
        self.openedAt = now = self._clock.seconds()
        self.latency.observe(now - self.startedAt)
        config = self.route.config
        passthrough = config.mode == "proxy" and config.dataPath == "passthrough"
        up = self.upstream
        assert up is not None
        # (L{_buffering}, inline: most sessions never made a failover.)
        failover = self._failover
        buffering = failover is not None and failover.buffer is not None
        # (The pipe compacts the legs once, after it started.)
        pairLegs(self.frontend, up, not buffering, not passthrough)
        if passthrough:
            # Now, before Autobahn parses a byte after either 101: frames
            # may be compressed (permessage-deflate negotiated end to end,
            # which Autobahn knows nothing of), and this runs inside the
            # handshakes' processing, with what came behind them still in
            # each leg's buffer.
            closes = self._closes
            if not buffering and (closes is None or closes.waiting is None):
                startPipe(self, self.frontend, up)
            else:
                compactLegs(self.frontend, up)
        if self.config.idleTimeout > 0:
            self._idle = IdleTimer(
                self._clock,
                self.config.idleTimeout,
                partial(activity, self.frontend),
                partial(self.shutdown, 1001, b"idle timeout"),
            )
            self._idle.start()

    def pair(self, compacting: bool = True) -> None:
        """
        Send client frames to the upstream (unless a failover's buffer
        holds them), and let each side pause the other when it cannot keep
        up (L{pairLegs}, C{compacting} the legs or leaving it to the pipe).
        """
        assert self.upstream is not None
        pairLegs(self.frontend, self.upstream, not self._buffering(), compacting)

    def closing(self) -> None:
        """A close frame goes to the client: Autobahn sends no more frames."""

    # Closing.

    def closeReceived(self, leg: Any, code: int | None, reason: bytes | None) -> None:
        """
        Forward a close to the other side, and answer C{leg} with what that
        side answers (L{CloseRelay.forward}).
        """
        if self.closedBy is None:
            self.closedBy = "client" if leg is self.frontend else "backend"
        self.closes.forward(leg, self._other(leg), code, reason)

    def holdFailure(self, leg: Any, code: int) -> bool:
        """
        C{leg}'s peer broke the protocol (the message data path): keep a
        direct connection's order.  The other side gets a close frame now,
        and what it sends until it answers still reaches C{leg}'s peer,
        which then gets C{leg}'s close frame (L{CloseRelay.hold}; the other
        side's close handshake timer bounds the wait).

        Not while a close handshake is under way or failing over, nor for
        a backend on a C{failover = reconnect} route (the client then stays
        while another backend is found).

        @return: Whether C{leg} holds its close frame back.
        """
        if (
            self.pipe is not None
            or self._buffering()
            or (leg is self.upstream and self.routeConfig.failover == "reconnect")
        ):
            return False
        other = self._other(leg)
        if not self.closes.hold(leg, other):
            return False
        assert other is not None
        self.closedBy = self.closedBy or "relay"
        other.closeWith(*failureClose(code, other is self.frontend))
        return True

    def closeReplied(self, leg: Any, code: int | None, reason: bytes | None) -> None:
        """
        The other side answered a close it was sent (L{CloseRelay.replied}).
        """
        self.closes.replied(leg, code, reason)

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
        self.closes.release(leg)
        if leg is f:
            if self.closedBy is None:
                self.closedBy = "client"
            self._clientGone = True
            self.opener.cancel()
            self.closes.clientGone(self.upstream)
        elif leg is self.upstream:
            assert leg is not None  # a leg is a protocol, never None
            self._detach()
            if (
                not self.closes.upstreamGone(f)
                and f.state == OPEN
                and not leg.closeRelayed
            ):
                lost = self.backend
                if lost is not None and not leg.wasClean:
                    self.upstreams.backendFailed(self.route, lost, "connection lost")
                self.failover.backendLost(lost)
        self._maybeFinish()

    def shutdown(
        self, code: int = 1001, reason: bytes = b"relay shutting down"
    ) -> None:
        """
        Close both legs (the relay stops, or the backend is disabled).
        """
        self.stopping = True
        if self.closedBy is None:
            self.closedBy = "relay"
        self.opener.cancel()
        if self.pipe is not None:
            self.pipe.shutdown(code, reason)
            return
        for leg in (self.frontend, self.upstream):
            if leg is not None:
                leg.closeWith(code, reason)

    def _other(self, leg: RelayLeg) -> RelayLeg | None:
        return self.upstream if leg is self.frontend else self.frontend

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
            self.opener.closed(backend, up)

    def _maybeFinish(self) -> None:
        """
        Fire L{done} once no connection is left.
        """
        if self._finished or not self._clientGone or self.upstream is not None:
            return
        self._finished = True
        done = self._done
        if self._idle is not None:
            # Its expiry calls back into the session: let both go.
            self._idle.stop()
            self._idle = None
        self.registry.sessionEnded(self)
        if self.config.accessLog:
            # (Reading C{self.log} makes a Logger: only for a line.)
            logAccess(self.log, self, self._clock.seconds())
        if done is not None:
            done.callback(None)


def openPlain(session: ProxySession, key: str) -> None:
    """
    L{ProxySession.open} for a client's leg that answers a plain request
    itself (L{answerPlain <wsrelay.ws.accept.PlainAccept.answerPlain>}):
    the leg's C{acceptPlain} (with C{key}, the client's
    C{Sec-WebSocket-Key}) or C{denyPlain} is called where C{open}'s
    L{Deferred} would fire, without that L{Deferred} and the leg's callback
    on it (most handshakes), by the opening's own first callback
    (L{_plainSettled}).  Neither is called when the opening is cancelled.
    """
    session.opener.start(None, _plainSettled, (session, key))


def _opened(
    pair: tuple[Backend, UpstreamProtocol],
    session: ProxySession,
    result: Deferred[tuple[str | None, dict[str, list[str]]]],
) -> None:
    """
    The upstream of C{session} is open: C{result} fires with the client's
    answer (L{ProxySession.open}).
    """
    result.callback(_answer(pair, session))


def _plainSettled(
    result: tuple[Backend, UpstreamProtocol] | Failure,
    session: ProxySession,
    key: str,
) -> None:
    """
    The opening of C{session}'s upstream settled (L{openPlain}).  When
    open, the upstream is the session's and its client's leg answers the
    client with what L{_answer} gives (made here: a call fewer on every
    plain handshake); when the backend's 101 has no field for the client,
    with the subprotocol alone, as Autobahn reads what its C{onConnect}
    gives (no L{clientAnswer} to make an empty dictionary).  Else the
    client's leg refuses the client (L{_refusal}).
    """
    if isinstance(result, Failure):
        refusal = _refusal(result, session)
        if refusal is not None:
            session.frontend.denyPlain(Failure(refusal))
        return
    up = session.attach(*result)
    answer: Any = (
        clientAnswer(up)
        if up.responseHeaders or up.extensionsAnswer
        else up.websocket_protocol_in_use
    )
    session.frontend.acceptPlain(answer, key)


def _answer(
    pair: tuple[Backend, UpstreamProtocol], session: ProxySession
) -> tuple[str | None, dict[str, list[str]]]:
    """
    @return: The client's answer, once the opened upstream is C{session}'s.
    """
    return clientAnswer(session.attach(*pair))


def _openFailed(f: Failure, session: ProxySession, result: Deferred[Any]) -> None:
    """
    No upstream for C{session}: C{result} fails with the client's refusal
    (L{_refusal}).
    """
    refusal = _refusal(f, session)
    if refusal is not None:
        result.errback(refusal)


def _refusal(f: Failure, session: ProxySession) -> Refused | None:
    """
    @return: The refusal of the client for which no upstream opened, given
        to the client's leg first (L{FrontendProtocol.keepRefusal
        <wsrelay.ws.frontend.FrontendProtocol.keepRefusal>}); L{None} when
        the opening was cancelled (the client left, or the relay stops).
    """
    session.opener.settled()
    if f.check(CancelledError):
        return None
    refusal = session.opener.refusal(f)
    session.frontend.keepRefusal(refusal)
    return refusal
