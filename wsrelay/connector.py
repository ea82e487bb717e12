# -*- test-case-name: tests.test_descriptors,tests.test_proxy -*-
"""
The upstream connector: opens a connection to one of a route's backends,
trying the candidates its balancer picks, each within C{connect_timeout},
failing over to the next, and tells the route's health monitor what the
connections show (passive health).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from wsrelay.deadlines import Deadlines
from wsrelay.proxy.queue import QueueTimeout, retryAfter
from wsrelay.ws.connecting import connectUpstream
from wsrelay.ws.frontend import Refused
from wsrelay.ws.upstream import (
    UpstreamError,
    UpstreamLocalError,
    UpstreamProtocol,
    UpstreamRefused,
    UpstreamShortageError,
    UpstreamTimeout,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from twisted.internet.interfaces import IReactorTime, ITCPTransport

    from wsrelay.config import RelayConfig
    from wsrelay.descriptors import Shortage
    from wsrelay.roles import RequestFor
    from wsrelay.routing import Backend, ConnectionInfo, Route


class _Attempts:
    """
    How the attempts of one L{Connector.openUpstream} went (the class's
    defaults until an attempt says otherwise: no C{__init__} to run for
    the many handshakes whose first attempt succeeds).

    @ivar stop: Whether to try no other backend.
    @ivar timedOut: Whether the last failure was for want of time.
    @ivar local: Whether the relay ran out of descriptors or local ports.
    @ivar reason: Why, then.
    """

    stop: bool = False
    timedOut: bool = False
    local: bool = False
    reason: str = ""


def tooMany(code: int, reason: str, body: bytes) -> Refused:
    """
    @return: A refusal that asks the client to retry in a second.
    """
    return Refused(code, reason, [("Retry-After", "1")], body)


class Connector:
    """
    Opens upstreams to the backends of a route (L{wsrelay.roles.Upstreams}).

    @ivar connectTimeout: Seconds one backend gets to answer (the
        configuration's C{connect_timeout}, set again on reload).
    @ivar shortage: Counts and logs the refusals for want of descriptors
        or local ports, shared with the admission.
    """

    log = Logger()

    def __init__(
        self, clock: IReactorTime, shortage: Shortage, connectTimeout: float
    ) -> None:
        self.clock = clock
        #: The upstream attempts' deadlines, on C{clock}.
        self.deadlines = Deadlines(clock)
        self.shortage = shortage
        self.connectTimeout = connectTimeout

    def configure(self, config: RelayConfig) -> None:
        """
        Apply C{config}'s C{connect_timeout} to connections from now on.
        """
        self.connectTimeout = config.connectTimeout

    def _candidates(
        self,
        route: Route,
        info: ConnectionInfo,
        tried: list[Backend],
        avoid: Backend | None,
    ) -> Iterator[Backend]:
        """
        Pick backends of C{route} one after the other, each at most once,
        C{avoid} only when no other is left.
        """
        while True:
            backend = pickBackend(route, info, tried, avoid)
            if backend is None:
                return
            yield backend

    async def openUpstream(
        self,
        route: Route,
        info: ConnectionInfo,
        request: RequestFor,
        offered: tuple[str, ...],
        avoid: Backend | None,
        deadline: float,
    ) -> tuple[Backend, UpstreamProtocol]:
        """
        Open an upstream to a backend of C{route}: try the candidates the
        balancer picks, each within C{connect_timeout}, until one accepts
        or C{deadline} (on the relay's clock) passes.  When the backends
        left to try are all at their C{maxconn=}, wait in the route's queue
        up to C{queue_timeout} for a slot; the time waited does not count
        against C{deadline}.

        @param info: What the balancer may know of the connection.
        @param request: Gives the request target and header fields for a
            backend.
        @param offered: The subprotocols offered.
        @param avoid: A backend to try last (the one just lost).

        @raise Refused: 503 when no backend is available, or (with
            C{Retry-After}) when all are at their C{maxconn=} past
            C{queue_timeout}, or the relay is out of descriptors or local
            ports; 502 when none could be reached, 504 when the time ran
            out; a backend's own refusal is relayed as it came.
        """
        return await self._tryAll(
            route, info, request, offered, avoid, deadline, [], _Attempts()
        )

    def open(
        self,
        route: Route,
        info: ConnectionInfo,
        request: RequestFor,
        offered: tuple[str, ...],
        avoid: Backend | None,
        deadline: float,
        then: Callable[..., object] | None = None,
        thenArgs: tuple[object, ...] = (),
    ) -> Deferred[Any]:
        """
        L{openUpstream} as a L{Deferred}, the first candidate tried without
        a coroutine: most handshakes are done with it, and the coroutine's
        machinery (a L{Deferred} driving it, a resumption per step) is a
        few percent of a proxied handshake's CPU.  Should it fail, the
        coroutine goes on as L{openUpstream} would have.

        @param then: The caller's callback for both outcomes, with
            C{thenArgs}, as L{Upstreams.open<wsrelay.roles.Upstreams.open>}
            says (by the first attempt's own callback, or with no
            L{Deferred} firing: C{connectUpstream}'s C{direct}).
        @return: A L{Deferred} firing with the backend and the open
            upstream, or failing as L{openUpstream} raises; cancelling it
            cancels the attempt under way (or the wait in the queue).
        """
        tried: list[Backend] = []
        attempts = _Attempts()
        backend = pickBackend(route, info, tried, avoid)
        rest = (route, info, request, offered, avoid, deadline, tried, attempts)
        if backend is None:
            return _others(self, rest, then, thenArgs)
        # (No other Deferred in between: cancelling the one returned cancels
        # the attempt, or the rest once it waits for it.  A module function
        # and its arguments, not closures, called by the attempt's own
        # callback, not as a second one.)
        connecting = self._connect(
            route,
            backend,
            request,
            offered,
            deadline,
            attempts,
            _firstSettled,
            (self, backend, rest, then, thenArgs),
            then is not None,
        )
        if connecting is None:
            return _others(self, rest, then, thenArgs)
        return connecting

    async def _tryAll(
        self,
        route: Route,
        info: ConnectionInfo,
        request: RequestFor,
        offered: tuple[str, ...],
        avoid: Backend | None,
        deadline: float,
        tried: list[Backend],
        attempts: _Attempts,
    ) -> tuple[Backend, UpstreamProtocol]:
        """
        L{openUpstream}'s attempts, the backends in C{tried} tried already
        as C{attempts} says.
        """
        queueDeadline: float | None = None
        while True:
            for backend in (
                () if attempts.stop else self._candidates(route, info, tried, avoid)
            ):
                up = await self._attempt(
                    route, backend, request, offered, deadline, attempts
                )
                if up is not None:
                    return backend, up
                if attempts.stop:
                    break
            if attempts.stop or self.clock.seconds() >= deadline:
                break
            if not any(
                b.available and b.full and b not in tried for b in route.backends
            ):
                # No backend left to try is busy: waiting would not help.
                break
            now = self.clock.seconds()
            again = queueDeadline is not None
            if queueDeadline is None:
                queueDeadline = now + route.config.queueTimeout
            waited = await self._queue(route, queueDeadline - now, again)
            deadline += waited
        if attempts.local:
            self.shortage.occurred(attempts.reason)
            raise tooMany(
                503, "Service Unavailable", b"relay out of resources, retry shortly\n"
            )
        if not tried:
            raise Refused(503, "Service Unavailable", body=b"no backend available\n")
        if attempts.timedOut:
            raise Refused(504, "Gateway Timeout", body=b"backend timed out\n")
        raise Refused(502, "Bad Gateway", body=b"no backend reachable\n")

    async def _queue(self, route: Route, timeout: float, again: bool) -> float:
        """
        Wait in C{route}'s queue for a backend slot.

        @param timeout: Seconds left of the route's C{queue_timeout}.
        @param again: Whether the handshake waited before.
        @return: The seconds waited.
        @raise Refused: 503 with C{Retry-After} when no slot came in time
            (at once when C{timeout} is not positive).
        """
        if timeout > 0:
            try:
                return await route.queue.wait(
                    self.clock, timeout, route, route.hasRoom, again
                )
            except QueueTimeout:
                pass
        raise Refused(
            503,
            "Service Unavailable",
            [("Retry-After", retryAfter(route.config.queueTimeout))],
            b"all backends busy, retry later\n",
        )

    def _attempt(
        self,
        route: Route,
        backend: Backend,
        request: RequestFor,
        offered: tuple[str, ...],
        deadline: float,
        attempts: _Attempts,
    ) -> Deferred[UpstreamProtocol | None]:
        """
        Try one backend, holding one of its C{maxconn=} slots meanwhile: a
        failed attempt gives it to the oldest waiter of the route's queue
        (a successful one to its caller, which counts the connection).

        @return: A L{Deferred} firing with the open upstream, or L{None}
            when the attempt failed (C{attempts} says how); failing with
            L{UpstreamRefused} when the backend refused the handshake.
            Cancelling it cancels the attempt.
        """
        connecting = self._connect(
            route,
            backend,
            request,
            offered,
            deadline,
            attempts,
            _settled,
            (self, route, backend, attempts),
        )
        if connecting is None:
            return succeed(None)
        return connecting

    def _connect(
        self,
        route: Route,
        backend: Backend,
        request: RequestFor,
        offered: tuple[str, ...],
        deadline: float,
        attempts: _Attempts,
        then: Callable[..., object],
        thenArgs: tuple[object, ...],
        direct: bool = False,
    ) -> Deferred[Any] | None:
        """
        Start an attempt's connect, its result for C{then} (L{_settled},
        L{_firstSettled}) with C{thenArgs}, and C{direct}
        (L{connectUpstream<wsrelay.ws.connecting.connectUpstream>}).

        @return: The connect's L{Deferred}, or L{None} when C{deadline}
            passed (C{attempts} says so).
        """
        remaining = deadline - self.clock.seconds()
        if remaining <= 0:
            attempts.timedOut = attempts.stop = True
            return None
        resource, headers = request(backend)
        backend.connecting += 1
        try:
            return connectUpstream(
                self.deadlines,
                backend.endpoint,
                backend.factory,
                resource,
                backend.hostHeader(),
                headers,
                offered,
                min(self.connectTimeout, remaining),
                then,
                thenArgs,
                direct,
            )
        except BaseException:
            backend.connecting -= 1
            route.queue.slotFreed()
            raise

    def backendFailed(self, route: Route, backend: Backend, reason: str) -> None:
        """
        A connection to C{backend} failed (passive health).
        """
        self.log.warn(
            "route {route}: backend {backend} failed: {reason}",
            route=route.name,
            backend=backend.name,
            reason=reason,
        )
        route.monitor.failed(backend, reason)

    def backendAnswered(self, route: Route, backend: Backend, status: int) -> None:
        """
        C{backend} refused a handshake with C{status}; 5xx counts as a
        failure, 4xx does not.
        """
        if status >= 500:
            self.backendFailed(route, backend, f"answered {status}")


def pickBackend(
    route: Route,
    info: ConnectionInfo,
    tried: list[Backend],
    avoid: Backend | None,
) -> Backend | None:
    """
    The next backend a L{Connector} tries (L{Connector._candidates}),
    added to C{tried}; L{None} when there is none.
    """
    candidates = route.candidates()
    if tried:
        candidates = [b for b in candidates if b not in tried]
    if avoid is not None and len(candidates) > 1 and avoid in candidates:
        candidates.remove(avoid)
    if not candidates:
        return None
    # One of the candidates, as IBalancer.pick promises.
    # (Typed for mypy without typing.cast, a Python call.)
    backend: Backend | None = route.balancer.pick(candidates, info)  # type: ignore[assignment]
    if backend is not None:
        tried.append(backend)
    return backend


def _settled(
    result: UpstreamProtocol | Failure,
    connector: Connector,
    route: Route,
    backend: Backend,
    attempts: _Attempts,
) -> UpstreamProtocol | Failure | None:
    """
    An attempt of C{connector}'s (L{Connector._attempt}) to C{backend}
    is settled with C{result}.

    @return: The open upstream; L{None} when the attempt failed
        (C{attempts} says how); or the failure to pass on (the
        backend's refusal, or what the connector does not expect).
    """
    backend.connecting -= 1
    if not isinstance(result, Failure):
        if backend.failuresInRow:
            # (Only a run of failures has anything to end: Monitor.succeeded.)
            route.monitor.succeeded(backend)
        return result
    route.queue.slotFreed()
    e = result.value
    if isinstance(e, UpstreamRefused):
        connector.backendAnswered(route, backend, e.status)
        return result
    if isinstance(e, UpstreamLocalError):
        # The relay's problem: not the backend's failure, and not
        # logged per connection; the next backend would fail the
        # same way.
        connector.shortage.exhausted()
        attempts.local = attempts.stop = True
        attempts.reason = str(e)
    elif isinstance(e, UpstreamShortageError):
        if connector.shortage.short():
            attempts.local = attempts.stop = True
            attempts.reason = str(e)
        else:
            attempts.timedOut = False
            connector.backendFailed(route, backend, str(e))
    elif isinstance(e, UpstreamError):
        attempts.timedOut = isinstance(e, UpstreamTimeout)
        connector.backendFailed(route, backend, str(e))
    else:
        return result
    return None


def _others(
    connector: Connector,
    rest: tuple[Any, ...],
    then: Callable[..., object] | None,
    thenArgs: tuple[object, ...],
) -> Deferred[Any]:
    """
    The attempts of L{Connector.open} after its first (or instead of it),
    through the coroutine L{Connector._tryAll} with C{rest}; C{then}, if
    given, is called with the outcome.
    """
    others: Deferred[Any] = Deferred.fromCoroutine(connector._tryAll(*rest))
    if then is not None:
        others.addBoth(then, *thenArgs)
    return others


def _firstSettled(
    result: UpstreamProtocol | Failure,
    connector: Connector,
    backend: Backend,
    rest: tuple[
        Route,
        ConnectionInfo,
        RequestFor,
        tuple[str, ...],
        Backend | None,
        float,
        list[Backend],
        _Attempts,
    ],
    then: Callable[..., object] | None,
    thenArgs: tuple[object, ...],
) -> object:
    """
    The first attempt of L{Connector.open}, to C{backend}, is settled with
    C{result}.

    @param rest: L{Connector._tryAll}'s arguments, for the attempts after
        a failed first.
    @param then: L{Connector.open}'s C{then}, with C{thenArgs}.
    @return: The backend and the open upstream; the failure to pass on
        (L{_settled}); or the L{Deferred} of the other attempts; with
        C{then}, what C{then} makes of the first two.
    """
    outcome: object
    if isinstance(result, Failure):
        try:
            up = _settled(result, connector, rest[0], backend, rest[7])
        except Exception:
            # A fault in the relay's own bookkeeping: the caller still gets
            # an outcome (its client a 500), as the Deferred's errback used
            # to give it.
            up = Failure()
        if up is None:
            return _others(connector, rest, then, thenArgs)
        # (A failure: the backend's refusal, or what is not expected.)
        outcome = up
    else:
        try:
            # (L{_settled}'s way with an open upstream, inline: a call and
            # a check fewer on every handshake.)
            backend.connecting -= 1
            if backend.failuresInRow:
                # (Only a run of failures has anything to end.)
                rest[0].monitor.succeeded(backend)
            outcome = (backend, result)
        except Exception:
            # The same fault: and an upstream that opened is not left
            # behind.
            outcome = Failure()
            cast("ITCPTransport", result.transport).abortConnection()
    if then is None:
        return outcome
    return then(outcome, *thenArgs)
