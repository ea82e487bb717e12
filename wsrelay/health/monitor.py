# -*- test-case-name: tests.test_health -*-
"""
The monitor that turns check results and failed connections into each
backend's up or down state.

As in HAProxy, a backend goes down after C{fall} failures in a row and
comes back up after C{rise} successful checks in a row.  Failed connects
and handshakes of real clients count as failures too (passive checks), so
a dead backend stops getting clients before the next check.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from wsrelay.descriptors import isLocalError
from wsrelay.interfaces import CheckResult as CheckResult
from wsrelay.interfaces import IHealthChecker

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IReactorTime

    from wsrelay.routing import Backend


#: CheckResult of one check: healthy or not, and why.
class HealthMonitor:
    """
    Keeps the health of one route's backends from active checks and from
    what real connections show.

    Without a checker (C{health = none}) a backend that fails C{fall}
    times in a row is taken out for C{health_interval} seconds, then
    given one more chance, as nginx's C{max_fails} and C{fail_timeout}
    do.

    @ivar checker: The route's L{IHealthChecker}, or L{None}.
    """

    log = Logger()

    def __init__(
        self,
        routeName: str,
        backends: Sequence[Backend],
        checker: IHealthChecker | None,
        clock: IReactorTime,
        interval: float,
        timeout: float,
        rise: int,
        fall: int,
        slowstart: float = 0.0,
        cameUp: Callable[[], None] | None = None,
    ) -> None:
        """
        @param cameUp: Called when a backend comes up (or is tried again):
            the route's queue may use it.
        """
        self.routeName = routeName
        self._cameUp = cameUp
        self._slowstart = slowstart
        self.backends = tuple(backends)
        self.checker = checker
        self._clock = clock
        self._interval = interval
        self._timeout = timeout
        self._rise = rise
        self._fall = fall
        self._loops: list[LoopingCall] = []
        self._checking: dict[Backend, Deferred[None]] = {}
        self._revivals: dict[Backend, IDelayedCall] = {}

    def start(self) -> None:
        """
        Check every backend now, and every C{interval} after each check
        finishes.
        """
        if self.checker is None:
            return
        for backend in self.backends:
            loop = LoopingCall(self.check, backend)
            loop.clock = self._clock
            self._loops.append(loop)
            loop.start(self._interval, now=True)

    def stop(self) -> None:
        """
        Stop checking, and cancel checks in flight.
        """
        loops, self._loops = self._loops, []
        for loop in loops:
            if loop.running:
                loop.stop()
        for d in list(self._checking.values()):
            d.cancel()
        revivals, self._revivals = self._revivals, {}
        for call in revivals.values():
            if call.active():
                call.cancel()

    def check(self, backend: Backend) -> Deferred[None]:
        """
        Check one backend once, within C{health_timeout}.

        @return: A L{Deferred} that fires (never fails) when the result is
            recorded.
        """
        assert self.checker is not None
        try:
            d: Deferred[CheckResult] = self.checker.check(backend)
        except Exception as e:
            d = Deferred()
            d.callback((False, f"checker raised {e!r}"))
        d.addTimeout(self._timeout, self._clock)

        def failed(f: Failure) -> CheckResult | None:
            if f.check(TimeoutError):
                return (False, f"no answer within {self._timeout:g}s")
            if f.check(CancelledError) or isLocalError(f.value):
                # Stopped; or the relay is out of descriptors or ports,
                # which says nothing of the backend.
                return None
            return (False, f.getErrorMessage())

        def record(result: CheckResult | None) -> None:
            self._checking.pop(backend, None)
            if result is None:
                # Stopped.
                return
            healthy, reason = result
            backend.lastCheck = (self._clock.seconds(), bool(healthy), str(reason))
            backend.checks.append(backend.lastCheck)
            self._record(backend, bool(healthy), str(reason))

        done = d.addErrback(failed).addCallback(record)
        if not done.called:
            self._checking[backend] = done
        return done

    def failed(self, backend: Backend, reason: str) -> None:
        """
        A real connection to C{backend} failed (a passive check).
        """
        self._record(backend, False, reason)

    def succeeded(self, backend: Backend) -> None:
        """
        A real connection to C{backend} opened: its run of failures ends.
        (The connector calls it only when there is a run to end.)
        """
        if backend.healthy:
            backend.failuresInRow = 0

    def _record(self, backend: Backend, healthy: bool, reason: str) -> None:
        """
        Count a result, and turn the backend up or down when a run is long
        enough.
        """
        if healthy:
            backend.failuresInRow = 0
            backend.successesInRow += 1
            if not backend.healthy and backend.successesInRow >= self._rise:
                backend.healthy = True
                backend.slowStart(self._clock, self._slowstart)
                self.log.info(
                    "route {route}: backend {backend} is up: {reason}",
                    route=self.routeName,
                    backend=backend.name,
                    reason=reason,
                )
                self._up()
            return
        backend.failures += 1
        backend.successesInRow = 0
        backend.failuresInRow += 1
        if backend.healthy and backend.failuresInRow >= self._fall:
            backend.healthy = False
            self.log.warn(
                "route {route}: backend {backend} is down after {count} failures"
                " in a row: {reason}",
                route=self.routeName,
                backend=backend.name,
                count=backend.failuresInRow,
                reason=reason,
            )
            if self.checker is None:
                self._revivals[backend] = self._clock.callLater(
                    self._interval, self._revive, backend
                )

    def _revive(self, backend: Backend) -> None:
        """
        Without active checks: give a backend that was taken out one more
        chance (one more failure takes it out again).
        """
        self._revivals.pop(backend, None)
        backend.healthy = True
        backend.slowStart(self._clock, self._slowstart)
        backend.successesInRow = 0
        backend.failuresInRow = self._fall - 1
        self.log.info(
            "route {route}: backend {backend} is tried again",
            route=self.routeName,
            backend=backend.name,
        )
        self._up()

    def _up(self) -> None:
        """
        A backend came up: tell whoever asked.
        """
        if self._cameUp is not None:
            self._cameUp()
