# -*- test-case-name: tests.test_proxy -*-
"""
The idle timeout of a proxied connection (C{idle_timeout}).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from wsrelay.ws.legs import RelayLeg

#: How many idle checks make up one C{idle_timeout}.
IDLE_CHECKS = 4


def activity(leg: RelayLeg) -> int:
    """
    @return: A count that grows with every byte and message C{leg} relays
        either way.
    """
    return leg.bytesIn + leg.bytesOut + leg.messagesIn + leg.messagesOut


class IdleTimer:
    """
    Calls C{expired} once C{timeout} seconds pass without activity.

    Rather than rearm a timer for every message (the per-message path
    stays untouched), it looks at a count of activity L{IDLE_CHECKS} times
    per timeout: the connection is idle once that many checks in a row
    find the count unchanged.
    """

    __slots__ = (
        "_activity",
        "_call",
        "_clock",
        "_expired",
        "_mark",
        "_quiet",
        "_timeout",
    )

    def __init__(
        self,
        clock: IReactorTime,
        timeout: float,
        activity: Callable[[], int],
        expired: Callable[[], None],
    ) -> None:
        """
        @param clock: Times the checks.
        @param timeout: Seconds without activity before C{expired}.
        @param activity: Returns a count that grows with every byte or
            message either way.
        @param expired: Called once, when the connection is idle.
        """
        self._clock = clock
        self._timeout = timeout
        self._activity = activity
        self._expired = expired
        self._call: Any = None
        self._mark = -1
        self._quiet = 0

    def start(self) -> None:
        """
        Start counting quiet checks from now.
        """
        self._mark = self._activity()
        self._quiet = 0
        self._call = self._clock.callLater(self._timeout / IDLE_CHECKS, self._check)

    def stop(self) -> None:
        """
        No more checks.
        """
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def _check(self) -> None:
        """
        Call C{expired} after C{timeout} without activity, else check
        again later.
        """
        mark = self._activity()
        if mark != self._mark:
            self._mark = mark
            self._quiet = 0
        else:
            self._quiet += 1
        if self._quiet >= IDLE_CHECKS:
            self._call = None
            self._expired()
            return
        self._call = self._clock.callLater(self._timeout / IDLE_CHECKS, self._check)
