"""
How the relay's own transports (L{wsrelay.ws.accepting},
L{wsrelay.ws.tcpclient}) get their sockets watched by Twisted's epoll
reactor: in one call as each socket is made, instead of the three of
C{startReading}, C{addReader} and C{_add}; and what they do once a
reactor turn for all their connections (L{TurnBatch}).
"""

from __future__ import annotations

import select
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from twisted.python import log

try:
    from twisted.internet.epollreactor import EPollReactor
except ImportError:  # pragma: no cover - no epoll (not Linux)
    EPollReactor = None  # type: ignore[assignment,misc]

if TYPE_CHECKING:
    from twisted.internet import tcp
    from twisted.internet.interfaces import IDelayedCall

#: The reactors whose registrations both legs' transports make themselves
#: (L{startWatching}): Twisted's epoll reactor and its subclasses, or none
#: on a platform without epoll.
EPOLL_REACTOR: Any = (EPollReactor,) if EPollReactor is not None else ()

#: The event masks of L{startWatching} (epoll's; their values where the
#: platform has no epoll, which it never watches with).
EPOLLIN: int = getattr(select, "EPOLLIN", 1)
EPOLLOUT: int = getattr(select, "EPOLLOUT", 4)


def startWatching(transport: tcp.Connection, reactor: Any, events: int) -> bool:
    """
    A new transport's socket, which the reactor does not watch yet, starts
    being watched for reading (C{events} L{EPOLLIN}) or writing
    (C{EPOLLOUT}): on Twisted's epoll reactor, what its C{addReader} or
    C{addWriter} does, in one call instead of three (C{startReading},
    C{addReader}, C{_add}).  (Its private C{_poller}, C{_reads},
    C{_writes} and C{_selectables}, as C{_add} keeps them: a Twisted that
    renames them fails every accept and connect, loudly, in
    tests.test_acceptlean and tests.test_connectlean.)

    @param transport: The new transport.
    @param reactor: Its reactor.
    @param events: C{EPOLLIN} or C{EPOLLOUT}.
    @return: Whether it did; if not (another reactor, or a descriptor the
        reactor knows already), the caller starts reading or writing as
        Twisted does.
    """
    if not isinstance(reactor, EPOLL_REACTOR):
        return False
    fd = transport.fileno()
    if fd in reactor._reads or fd in reactor._writes:
        return False
    reactor._poller.register(fd, events)
    (reactor._reads if events == EPOLLIN else reactor._writes).add(fd)
    reactor._selectables[fd] = transport
    return True


def stopWatching(transport: Any, skt: Any) -> None:
    """
    A transport's socket stops being watched for reading and writing: on
    Twisted's epoll reactor, what its C{removeReader} and
    C{removeWriter} do, in this call instead of six (C{stopReading},
    C{removeReader}, C{_remove}; the same to stop writing), with one
    C{epoll_ctl} (Twisted makes two for a socket watched both ways);
    else, or with the socket closed already, Twisted's way.  (The
    reactor's private tables, as L{startWatching} keeps them.)

    @param transport: The relay's own transport (L{wsrelay.ws.accepting}
        or L{wsrelay.ws.tcpclient}).
    @param skt: Its socket.
    """
    reactor: Any = transport.reactor
    fd = skt.fileno()
    if fd != -1 and isinstance(reactor, EPOLL_REACTOR):
        reads = reactor._reads
        writes = reactor._writes
        # In the order of Twisted's _remove, so that a failed unregister
        # (a descriptor closed behind the socket's back) leaves the tables
        # as Twisted's would: watched one way, the transport is forgotten
        # first; both ways, nothing changes.
        if fd in reads and fd in writes:
            reactor._poller.unregister(fd)
            del reactor._selectables[fd]
        elif fd in reads or fd in writes:
            del reactor._selectables[fd]
            reactor._poller.unregister(fd)
        else:
            return
        reads.discard(fd)
        writes.discard(fd)
        return
    transport.stopReading()
    transport.stopWriting()


_T = TypeVar("_T")


class TurnBatch(Generic[_T]):
    """
    Work that the relay's transports do for all the connections of a
    reactor turn at once: what is added during a turn is handed, in the
    order added, to the batch's function from one C{callLater(0)}, the
    reactor's next round of timed calls, rather than from a timed call
    each.  What is added meanwhile (from the function) waits for the next
    round, as with a timed call of its own.  A call that raises is logged,
    as the reactor logs a timed call that raises, and the others are still
    made.  A round whose timed call was cancelled (as trial cancels the
    timed calls a test leaves behind) is made from a new one, with what
    it held, when something is next added.
    """

    __slots__ = ("_pending", "_run", "_why")

    def __init__(self, run: Callable[[_T], object], why: str) -> None:
        """
        @param run: Called with each item, in its round.
        @param why: The log's message when a call raises.
        """
        self._pending: dict[Any, _Round[_T]] = {}
        self._run = run
        self._why = why

    def add(self, reactor: Any, item: _T) -> None:
        """
        Have C{item} handed to the function in C{reactor}'s next round of
        timed calls.
        """
        batch = self._pending.get(reactor)
        if batch is None:
            batch = self._pending[reactor] = _Round()
            batch.call = reactor.callLater(0, self._runBatch, reactor)
        elif not batch.call.active():
            # Cancelled: nothing else would ever hand its items over.
            batch.call = reactor.callLater(0, self._runBatch, reactor)
        batch.append(item)

    def _runBatch(self, reactor: Any) -> None:
        """
        Hand what was added for C{reactor} since its last round to the
        function.
        """
        run = self._run
        for item in self._pending.pop(reactor):
            try:
                run(item)
            except BaseException:
                log.err(None, self._why)


class _Round(list[_T]):
    """
    The items of one round of a L{TurnBatch}, and the timed call that
    hands them over.
    """

    __slots__ = ("call",)

    call: IDelayedCall
