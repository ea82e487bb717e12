# -*- test-case-name: tests.test_descriptors -*-
"""
Open files: the relay's limit, its capacity, and running out.

Every client connection is a descriptor, and so is every connection to a
backend.  A shell's soft C{RLIMIT_NOFILE} is often 1024 while the hard one
is far higher; as HAProxy does, the relay raises its soft limit at start
(L{raiseLimit}), as far as it needs (at least L{DEFAULT_SOFT}) and the hard
limit allows, says how many connections that leaves room for, and refuses
to start when C{max_connections} cannot fit.

When descriptors run out anyway, that is the relay's problem, not the
backend's: a connect that fails for want of a local resource
(L{isLocalError}) is never counted against the backend, no other backend
is tried, the client is told to come back (503 with C{Retry-After}), and
the condition is logged once per L{Shortage.interval}, not once per
connection.  A failed name lookup or C{EADDRNOTAVAIL} (L{isShortageError})
is treated so only while the relay is L{Shortage.short}; otherwise it is
the backend's failure.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from wsrelay.logs import ErrorBudget

#: Errors of a connect that say the relay's host is out of something
#: (descriptors for the process or the system, buffers), not that the
#: backend failed: the next backend would fail the same way.
LOCAL_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS})

#: Errors of a connect that are the relay's when it is short of
#: descriptors, and the backend's otherwise: C{EADDRNOTAVAIL} is also what
#: a C{ws://[::1]} backend gives on a host without IPv6.  (A failed name
#: lookup, L{DNSLookupError}, is the same: under C{EMFILE} the resolver
#: cannot open its socket.)
SHORTAGE_ERRNOS = frozenset({errno.EADDRNOTAVAIL})

#: Descriptors kept for everything but client connections and their
#: upstreams: standard streams and logs, the reactor's own, the listening
#: sockets, the admin listener and its clients, health checks, and clients
#: that are being refused (each holds a descriptor until its 503 is out;
#: without this room the kernel's accept queue would overflow instead).
RESERVED = 64

#: Descriptors a proxied connection holds: the client's and the backend's.
PER_CONNECTION = 2


def needed(maxConnections: int) -> int:
    """
    @return: The descriptors that C{maxConnections} proxied connections
        need, the relay's own included.
    """
    return RESERVED + PER_CONNECTION * maxConnections


def isLocalError(error: object) -> bool:
    """
    @return: Whether C{error}, the reason a connect failed, is one of
        L{LOCAL_ERRNOS}: Twisted reports them as a L{ConnectError} (for
        example C{ConnectBindError} when no socket can be made) whose
        C{osError} is the number.
    """
    return _errno(error) in LOCAL_ERRNOS


def isShortageError(error: object) -> bool:
    """
    @return: Whether C{error}, the reason a connect failed, is the relay's
        when it is short of descriptors and the backend's otherwise: one of
        L{SHORTAGE_ERRNOS}, or a failed name lookup.
    """
    return isinstance(error, DNSLookupError) or _errno(error) in SHORTAGE_ERRNOS


def _errno(error: object) -> int | None:
    """
    @return: The C{errno} of a L{ConnectError} (its C{osError}) or an
        L{OSError}, or L{None}.
    """
    if isinstance(error, ConnectError):
        number: int | None = error.osError
        return number
    if isinstance(error, OSError):
        return error.errno
    return None


def canOpen() -> bool:
    """
    @return: Whether the process can open one more socket now (it is
        closed at once): L{False} when that fails for want of descriptors
        or buffers.
    """
    try:
        socket.socket().close()
    except OSError as e:
        if e.errno in LOCAL_ERRNOS:
            return False
        raise
    return True


@dataclass(frozen=True)
class Limit:
    """
    The process's limit of open files, after L{raiseLimit}.

    @ivar found: The soft limit the process started with.
    @ivar soft: The soft limit now.
    @ivar hard: The hard limit (C{resource.RLIM_INFINITY} for none).
    """

    found: int
    soft: int
    hard: int

    @property
    def budget(self) -> int:
        """
        The descriptors left for client connections and their upstreams.
        """
        return max(0, self.soft - RESERVED)

    @property
    def capacity(self) -> int:
        """
        The proxied connections that fit (a fan-out client holds one
        descriptor, so about twice as many of them fit).
        """
        return self.budget // PER_CONNECTION

    def problem(self, maxConnections: int) -> str | None:
        """
        @return: Why C{max_connections} cannot fit, or L{None} when it does
            (or is 0, no limit).
        """
        if not maxConnections or needed(maxConnections) <= self.soft:
            return None
        return (
            f"{maxConnections} connections need {needed(maxConnections)} open"
            f" files ({PER_CONNECTION} each and {RESERVED} for the relay), but"
            f" the limit is {self.soft} (hard limit {self.hard}): raise the hard"
            " limit (ulimit -Hn, LimitNOFILE= for systemd) or lower"
            " max_connections"
        )


#: The soft limit of open files L{raiseLimit} raises to at least (the hard
#: limit allowing), whatever C{max_connections} needs.
DEFAULT_SOFT = 65536


def raiseLimit(maxConnections: int, rlimit: Any = None) -> Limit:
    """
    Raise the soft limit of open files, as HAProxy does: to what
    C{maxConnections} needs, or L{DEFAULT_SOFT} if that is more, but not
    beyond the hard limit; never lower it.  Not to the hard limit itself:
    in containers it can be 2**20 to 2**30, and code that sizes a table by
    the soft limit or closes every descriptor up to it (in a child before
    C{exec}, say) then pays for each one.

    @param maxConnections: C{max_connections} (0 for no limit).
    @param rlimit: The L{resource} module, or a test's stand-in.
    @return: The limits found and now in force.
    """
    if rlimit is None:
        import resource as rlimit
    soft, hard = rlimit.getrlimit(rlimit.RLIMIT_NOFILE)
    target = max(needed(maxConnections), DEFAULT_SOFT)
    if hard != rlimit.RLIM_INFINITY:
        target = min(target, hard)
    if soft != rlimit.RLIM_INFINITY and soft < target:
        try:
            rlimit.setrlimit(rlimit.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass
    now, hard = rlimit.getrlimit(rlimit.RLIMIT_NOFILE)
    return Limit(soft, now, hard)


class Shortage:
    """
    Clients refused because the relay is out of descriptors (or another
    local resource): counted, and logged at most once per L{interval}
    (through an L{ErrorBudget}: the first refusal of a window is logged,
    and at the window's end one line says how many more there were).

    @ivar refused: Clients refused so far.
    """

    log = Logger()

    #: Seconds between two log events about it.
    interval = 10.0

    def __init__(
        self,
        clock: IReactorTime,
        limit: Limit | None,
        canOpen: Callable[[], bool] = canOpen,
    ) -> None:
        """
        @param clock: Times the reports and L{short}.
        @param limit: The limit in force, for the reports.
        @param canOpen: Says whether a descriptor can be opened now.
        """
        self._clock = clock
        self._limit = limit
        self._canOpen = canOpen
        self._exhausted: float | None = None
        self._budget = ErrorBudget(
            clock,
            1,
            self.interval,
            "refused {suppressed} more new clients with 503 in the last"
            " {interval:g}s: the relay is short of file descriptors or local"
            " ports ({why}); open-file limit {soft}",
        )
        self._budget.log = self.log
        self.refused = 0

    def occurred(self, why: str) -> None:
        """
        A client was refused with 503 for C{why}; log it unless another was
        logged less than L{interval} seconds ago (then the count is logged
        at the end of the interval).
        """
        self.refused += 1
        limit = self._limit
        soft = "unknown" if limit is None else limit.soft
        self._budget.fields = {"why": why, "soft": soft}
        if not self._budget.allow():
            return
        self.log.warn(
            "refused {refused} new clients with 503: the relay is short of"
            " file descriptors or local ports ({why}); open-file limit {soft};"
            " further refusals reported every {interval:g}s",
            refused=1,
            why=why,
            soft=soft,
            interval=self.interval,
        )

    def flush(self) -> None:
        """
        Log how many refusals have not been reported yet, if any, now (the
        relay stopping).
        """
        self._budget.flush()

    def exhausted(self) -> None:
        """
        A connect failed for want of descriptors or buffers
        (L{LOCAL_ERRNOS}): the relay is L{short} for L{interval} seconds.
        """
        self._exhausted = self._clock.seconds()

    def short(self) -> bool:
        """
        @return: Whether the relay is short of descriptors: a connect failed
            for want of them less than L{interval} seconds ago, or no
            socket can be opened now.  Only then is an error of
            L{isShortageError} the relay's rather than the backend's.
        """
        if (
            self._exhausted is not None
            and self._clock.seconds() - self._exhausted < self.interval
        ):
            return True
        return not self._canOpen()
