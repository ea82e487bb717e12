# -*- test-case-name: tests.test_reactor -*-
"""
wsrelay's reactor: Twisted's epoll reactor without the per-event log
context.

For every ready descriptor, Twisted's L{EPollReactor} calls the
descriptor's C{logPrefix()}, copies the current log context into a new
dictionary, pushes it onto a thread-local stack and pops it again
(L{twisted.python.log.callWithLogger}), so that a legacy log message
emitted while the event is handled names the connection in its
C{system} field.  In a relay that handles tens of thousands of events a
second, that bookkeeping was about 15% of the CPU spent per echoed
message (issue 16).  wsrelay logs through L{twisted.logger.Logger}, whose
events never read that context, so L{RelayReactor} dispatches each event
directly.

What stays as it was: an exception raised by C{doRead} or C{doWrite} is
logged once, with the connection's log prefix as its C{system} as
before, and the descriptor is disconnected with it as the reason
(L{RelayReactor._doReadOrWrite}); one raised while disconnecting (a
protocol's C{connectionLost}) is logged and the loop goes on with the
next event, as L{twisted.python.log.callWithLogger} did.  What changes:
a legacy C{twisted.python.log.msg} call made while an event is handled
(some of Twisted's own protocols still use it) carries C{system} C{"-"}
rather than the connection's prefix.

C{twistd wsrelay} installs this reactor unless C{-r NAME} chose another
(L{installDefault}); C{twistd -r wsrelay} selects it for any twistd
application (the dropin C{twisted/plugins/wsrelay_reactors.py}).
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet.epollreactor import EPollReactor
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST, installReactor
from twisted.internet.posixbase import _NO_FILEDESC
from twisted.python import log
from twisted.python.runtime import platform

__all__ = ["DEFAULT", "RelayReactor", "install", "installDefault", "logPrefixOf"]

#: The short name of the reactor C{twistd wsrelay} installs when the
#: command line does not choose one (C{twistd -r NAME wsrelay ...}).
DEFAULT = "wsrelay"


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


class RelayReactor(EPollReactor):
    """
    An L{EPollReactor} that handles each ready descriptor without pushing a
    log context for it (see the module's docstring).
    """

    def doPoll(self, timeout: float | None) -> None:
        """
        Wait at most C{timeout} seconds for ready descriptors and handle
        each: L{EPollReactor.doPoll}, with L{_doReadOrWrite} called directly
        instead of through L{twisted.python.log.callWithLogger}.

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
        for fd, event in ready:
            selectable = selectables.get(fd)
            if selectable is None:
                continue
            try:
                handle(selectable, fd, event)
            except KeyboardInterrupt:
                raise
            except BaseException:
                log.err(None, None, system=logPrefixOf(selectable))

    doIteration = doPoll

    def _doReadOrWrite(self, selectable: Any, fd: int, event: int) -> None:
        """
        Handle one event of a descriptor: as
        L{twisted.internet.posixbase._PollLikeMixin._doReadOrWrite}, except
        that the log prefix of the descriptor is asked for only when an
        exception must be logged.

        @param selectable: The descriptor.
        @param fd: Its file descriptor number.
        @param event: What epoll reported for it.
        """
        why: Any = None
        inRead = False
        if event & self._POLL_DISCONNECTED and not (event & self._POLL_IN):
            # A hang-up after the last pending input: clean if we were
            # reading (perhaps a half-close), an error otherwise.
            if fd in self._reads:
                inRead = True
                why = CONNECTION_DONE
            else:
                why = CONNECTION_LOST
        else:
            try:
                if selectable.fileno() == -1:
                    why = _NO_FILEDESC
                else:
                    if event & self._POLL_IN:
                        why = selectable.doRead()
                        inRead = True
                    if not why and event & self._POLL_OUT:
                        why = selectable.doWrite()
                        inRead = False
            except BaseException:
                # Logged once, with the connection's prefix, and the
                # descriptor is disconnected with it as the reason.
                why = sys.exc_info()[1]
                log.err(None, None, system=logPrefixOf(selectable))
        if why:
            self._disconnectSelectable(selectable, why, inRead)


def install() -> None:
    """
    Install L{RelayReactor} as the global reactor (C{twistd -r wsrelay}).

    @raise twisted.internet.error.ReactorAlreadyInstalledError: If a
        reactor is installed already.
    """
    installReactor(RelayReactor())


def installDefault(installed: Any = None) -> str | None:
    """
    Install wsrelay's default reactor (L{DEFAULT}) unless one is installed
    already: C{twistd -r NAME} installs its reactor as it reads the
    option, before the subcommand's options are read.  On a platform
    without epoll the platform's own default stays.

    @param installed: Whether a reactor is installed; by default, whether
        C{twisted.internet.reactor} was imported.
    @return: L{DEFAULT} if it was installed now, else L{None}.
    """
    if installed is None:
        installed = "twisted.internet.reactor" in sys.modules
    if installed or not platform.isLinux():
        return None
    install()
    return DEFAULT
