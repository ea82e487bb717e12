# -*- test-case-name: tests.test_reactor -*-
"""
wsrelay's reactor: Twisted's epoll reactor without the per-event log
context.

For every ready descriptor, Twisted's L{EPollReactor} calls the
descriptor's C{logPrefix()}, copies the current log context into a new
dictionary, pushes it onto a thread-local stack and pops it again
(L{twisted.python.log.callWithLogger}), so that a message logged with the
legacy L{twisted.python.log} API while the event is handled names the
connection in its C{system} field.  That took about 5 microseconds per
event on the (busy) benchmark machine, around a call that does nothing
(issue 16), whether anything is logged or not; yet almost nothing reads
that context: wsrelay logs through L{twisted.logger.Logger}, whose events
never do.

So L{RelayReactor} only notes which descriptor it is handling (two
attribute stores per event), and the default log context becomes a
dictionary that asks that descriptor for its prefix when, and only when, a
legacy log call copies it (L{EventLogContext}).  A legacy message logged
during an event still names the connection, and an exception raised by
C{doRead} or C{doWrite} is still logged once, with the connection's prefix,
and disconnects that descriptor with it as the reason: L{RelayReactor}
handles each event as Twisted's C{_doReadOrWrite} does (a read or a write
alone, nearly all, inline: a Python call less per event).  One raised
while disconnecting (a protocol's C{connectionLost}) is logged and the loop
goes on with the next event, as L{twisted.python.log.callWithLogger} did.

C{twistd wsrelay} installs this reactor unless C{-r NAME} chose another
(L{wsrelay.tap.installReactor}); C{twistd -r wsrelay} selects it for any
twistd application (the dropin C{twisted/plugins/wsrelay_reactors.py}).
Importing this module needs epoll (Linux).
"""

from __future__ import annotations

import sys
from select import EPOLLIN, EPOLLOUT
from threading import get_ident
from typing import Any

from twisted.internet.epollreactor import EPollReactor
from twisted.internet.main import installReactor
from twisted.internet.posixbase import _NO_FILEDESC, _PollLikeMixin
from twisted.python import context, log

__all__ = [
    "EventLogContext",
    "RelayReactor",
    "install",
    "logPrefixOf",
]


def logPrefixOf(selectable: Any) -> str:
    """
    The log prefix of a descriptor, as L{twisted.python.log.callWithLogger}
    finds it: what its C{logPrefix()} answers, or C{"(buggy logPrefix
    method)"} when that raises.

    @param selectable: A descriptor the reactor watches.
    @return: The C{system} of a log message about it.
    """
    try:
        return str(selectable.logPrefix())
    except KeyboardInterrupt:
        raise
    except BaseException:
        return "(buggy logPrefix method)"


class _Handling:
    """
    The descriptor whose event a L{RelayReactor} is handling, and the
    thread it handles it in.

    @ivar selectable: The descriptor, or L{None} between events.
    @ivar thread: The reactor thread's identifier.
    """

    __slots__ = ("selectable", "thread")

    def __init__(self) -> None:
        self.selectable: Any = None
        self.thread = 0


_handling = _Handling()


class EventLogContext(dict[str, Any]):
    """
    The default log context (L{ILogContext}) under L{RelayReactor}: its
    copy, which a legacy log call makes, and its items hold as C{system}
    the log prefix of the descriptor whose event the reactor is handling in
    this thread, and C{"-"} otherwise, as
    L{twisted.python.log.callWithLogger} would have pushed it.
    """

    def __init__(self) -> None:
        super().__init__(system="-")

    def copy(self) -> dict[str, Any]:
        """
        @return: A plain dictionary of the context as it is now.
        """
        selectable = _handling.selectable
        if selectable is None or _handling.thread != get_ident():
            return {"system": "-"}
        return {"system": logPrefixOf(selectable)}

    def __getitem__(self, key: str) -> Any:
        """
        @return: The value of C{key} in L{copy}.
        """
        return self.copy()[key]

    def get(self, key: str, default: Any = None) -> Any:
        """
        @return: The value of C{key} in L{copy}, or C{default}.
        """
        return self.copy().get(key, default)


_eventLogContext = EventLogContext()

#: Twisted's handling of one event (L{RelayReactor.doPoll} inlines it for
#: a read or a write alone).
_doReadOrWrite = _PollLikeMixin._doReadOrWrite


class RelayReactor(EPollReactor):
    """
    An L{EPollReactor} that handles each ready descriptor without pushing a
    log context for it (see the module's docstring).
    """

    def __init__(self) -> None:
        """
        Make the reactor, and make L{EventLogContext} the default log
        context.
        """
        super().__init__()
        context.setDefault(log.ILogContext, _eventLogContext)

    def doPoll(self, timeout: float | None) -> None:
        """
        Wait at most C{timeout} seconds for ready descriptors and handle
        each: L{EPollReactor.doPoll}, without
        L{twisted.python.log.callWithLogger}, and with what Twisted's
        C{_doReadOrWrite} does for an event that is a read or a write alone
        (nearly all) inline, a Python call less per event.  Other events
        go to C{_doReadOrWrite}, and all of them do when a subclass
        overrides it.

        @param timeout: The longest wait in seconds; L{None} waits until a
            descriptor is ready.
        """
        if timeout is None:
            timeout = -1
        try:
            ready = self._poller.poll(timeout, len(self._selectables))
        except InterruptedError:
            return
        selectables = self._selectables
        handle = self._doReadOrWrite
        if type(self)._doReadOrWrite is _doReadOrWrite:
            readAlone, writeAlone = EPOLLIN, EPOLLOUT
        else:
            # (An event is never -1: all go to _doReadOrWrite.)
            readAlone = writeAlone = -1
        handling = _handling
        handling.thread = get_ident()
        try:
            for fd, event in ready:
                # (A subscript: cheaper than get when found, dearer when an
                # earlier event of the batch lost the descriptor, which is
                # rare.)
                try:
                    selectable = selectables[fd]
                except KeyError:
                    continue
                handling.selectable = selectable
                try:
                    # _doReadOrWrite's way with a read or a write alone: a
                    # read that needs nothing more goes on at once.
                    if event == readAlone:
                        try:
                            if selectable.fileno() == -1:
                                why: Any = _NO_FILEDESC
                                inRead = False
                            else:
                                why = selectable.doRead()
                                if not why:
                                    continue
                                inRead = True
                        except BaseException:
                            why = sys.exc_info()[1]
                            inRead = False
                            log.err()
                    elif event == writeAlone:
                        inRead = False
                        try:
                            if selectable.fileno() == -1:
                                why = _NO_FILEDESC
                            else:
                                why = selectable.doWrite()
                        except BaseException:
                            why = sys.exc_info()[1]
                            log.err()
                    else:
                        handle(selectable, fd, event)
                        continue
                    if why:
                        self._disconnectSelectable(selectable, why, inRead)
                except KeyboardInterrupt:
                    raise
                except BaseException:
                    log.err()
        finally:
            handling.selectable = None

    doIteration = doPoll


def install() -> None:
    """
    Install L{RelayReactor} as the global reactor (C{twistd -r wsrelay}).

    @raise twisted.internet.error.ReactorAlreadyInstalledError: If a
        reactor is installed already.
    """
    installReactor(RelayReactor())
