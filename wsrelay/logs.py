# -*- test-case-name: tests.test_operations,tests.test_edge -*-
"""
Log observers for C{twistd --logger}, and a limit on the log lines that
clients can cause.

C{twistd --logger=wsrelay.logs.jsonStdout wsrelay ...} writes every log
event as one JSON object per line (Twisted's own format, see
L{twisted.logger.jsonFileLogObserver}), with the events' structured
fields (an access event has C{client}, C{route}, C{backend}, C{duration},
counters, C{closeCode} and C{closedBy}).

A client that breaks the protocol (a bad request, a bad frame, a bad PROXY
header) makes Autobahn, or the relay, log a line or two; L{ErrorBudget}
lets through at most L{PROTOCOL_ERROR_LINES} such lines per
L{PROTOCOL_ERROR_INTERVAL} seconds, relay-wide, and then logs how many it
suppressed, so that a client cannot flood the log.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from twisted.logger import FileLogObserver, Logger, jsonFileLogObserver

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IReactorTime

#: Protocol-error log lines let through per interval.
PROTOCOL_ERROR_LINES = 20

#: The interval, in seconds.
PROTOCOL_ERROR_INTERVAL = 10.0


def jsonStdout() -> FileLogObserver:
    """
    @return: An observer writing JSON lines to standard output.
    """
    return jsonFileLogObserver(sys.stdout)


#: What L{ErrorBudget} logs by default at the end of a window.
PROTOCOL_ERRORS_SUPPRESSED = (
    "protocol errors: {suppressed} more log lines suppressed"
    " (at most {limit} every {interval} seconds)"
)


class ErrorBudget:
    """
    Lets at most C{limit} log lines (protocol errors, by default) through
    in a window of C{interval} seconds (a window starts with the first line
    after the last one ended); at the end of a window in which lines were
    held back, logs one line saying how many.

    @ivar suppressed: Lines held back in the current window.
    @ivar totalSuppressed: Lines held back, ever.
    @ivar fields: More fields for the summary line's event (a user may
        update them as lines come).
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        limit: int = PROTOCOL_ERROR_LINES,
        interval: float = PROTOCOL_ERROR_INTERVAL,
        message: str = PROTOCOL_ERRORS_SUPPRESSED,
    ) -> None:
        """
        @param clock: Times the windows.
        @param limit: Lines let through per window.
        @param interval: The length of a window, in seconds.
        @param message: The summary line: a PEP 3101 format string that may
            use the fields C{suppressed}, C{limit}, C{interval} and those of
            L{fields}.
        """
        self._clock = clock
        self.limit = limit
        self.interval = interval
        self.message = message
        self.fields: dict[str, object] = {}
        self._windowEnd = float("-inf")
        self._count = 0
        self.suppressed = 0
        self.totalSuppressed = 0
        self._report: IDelayedCall | None = None

    def allow(self) -> bool:
        """
        Count one line.

        @return: Whether to log it.
        """
        now = self._clock.seconds()
        if now >= self._windowEnd:
            self._windowEnd = now + self.interval
            self._count = 0
        if self._count < self.limit:
            self._count += 1
            return True
        self.suppressed += 1
        self.totalSuppressed += 1
        if self._report is None:
            self._report = self._clock.callLater(self._windowEnd - now, self.flush)
        return False

    def flush(self) -> None:
        """
        Log how many lines were held back, if any, now (the end of a window,
        or the relay stopping).
        """
        call, self._report = self._report, None
        if call is not None and call.active():
            call.cancel()
        count, self.suppressed = self.suppressed, 0
        if count:
            self.log.warn(
                self.message,
                **self.fields,
                suppressed=count,
                limit=self.limit,
                interval=self.interval,
            )


class LimitedLogger:
    """
    A logger (Twisted's, or txaio's as Autobahn's protocols have) whose
    C{info}, C{warn} and C{error} lines count against an L{ErrorBudget};
    its other methods are the logger's own.  C{debug} and C{trace} are
    taken when this is made (so that a call costs what it did: txaio makes
    them no-ops when debug logging is off).
    """

    def __init__(self, log: Any, budget: ErrorBudget) -> None:
        self._log = log
        self._budget = budget
        self.debug = log.debug
        self.trace = getattr(log, "trace", log.debug)
        self.failure = log.failure
        self.critical = log.critical

    def info(self, *args: Any, **kwargs: Any) -> None:
        """
        Log at C{info}, within the budget.
        """
        if self._budget.allow():
            self._log.info(*args, **kwargs)

    def warn(self, *args: Any, **kwargs: Any) -> None:
        """
        Log at C{warn}, within the budget.
        """
        if self._budget.allow():
            self._log.warn(*args, **kwargs)

    def error(self, *args: Any, **kwargs: Any) -> None:
        """
        Log at C{error}, within the budget.
        """
        if self._budget.allow():
            self._log.error(*args, **kwargs)
