# -*- test-case-name: tests.test_fanout_coalesce -*-
"""
What a fan-out channel's source delivered and its members have not been
written yet: L{Pending} gathers it, and writes it to every member in one
write each at the end of the reactor turn, or C{write_delay} milliseconds
after the first message (as Centrifugo's C{WriteDelay}), so that at high
rates a client gets one C{send} for many reads from the source.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable
from itertools import compress, islice, repeat
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.interfaces import IReactorFDSet

from wsrelay.fanout.direct import Members, Plan

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IReactorTime

    from wsrelay.config import FanoutRouteConfig

__all__ = ["Pending", "PendingChannel", "sendAll"]


class _Window(Protocol):
    """
    What L{Pending} uses of a channel's resume window.
    """

    held: int


class PendingChannel(Protocol):
    """
    What L{Pending} uses of its channel (L{wsrelay.fanout.channel.Channel}).
    """

    members: Members
    deliveries: int

    @property
    def window(self) -> _Window | None:
        """
        The resume window, whose C{held} members are stand-ins.
        """

    @property
    def routeConfig(self) -> FanoutRouteConfig:
        """
        The route's configuration: its C{writeDelay}.
        """


class Pending:
    """
    One channel's messages waiting for the end of the turn (or of
    C{write_delay}).

    Only the scheduled flush refers to the channel, and only until it
    runs: an ended channel is freed by reference counting.
    """

    __slots__ = ("_call", "_frames", "_reactor", "_writers")

    def __init__(self, reactor: IReactorTime) -> None:
        """
        @param reactor: Whose turns the writes follow: its C{callLater}
            schedules them.
        """
        self._reactor = reactor
        #: The framed messages, in order.
        self._frames: list[bytes] = []
        #: The flush to come, while messages are pending.
        self._call: IDelayedCall | None = None
        #: Which connections the reactor waits to write to (those with
        #: something queued), when it says: one set a flush, against which
        #: the connections to write to at once are checked in C, rather
        #: than each one's buffers.
        self._writers: Callable[[], list[Any]] | None = (
            reactor.getWriters if IReactorFDSet.providedBy(reactor) else None
        )

    def add(self, channel: PendingChannel, framed: list[bytes]) -> None:
        """
        Keep C{framed} for C{channel}'s members; the first message after a
        flush schedules the next one, with the route's C{write_delay} of
        the moment.
        """
        self._frames += framed
        if self._call is None:
            self._call = self._reactor.callLater(
                channel.routeConfig.writeDelay / 1000, self.flush, channel
            )

    def flush(self, channel: PendingChannel) -> None:
        """
        Write what is pending to every member of C{channel}, in one write
        each, and count the deliveries; cancel the flush scheduled.

        The per-delivery path: the members that may be written at once
        (L{wsrelay.fanout.direct.Plan}, kept by the channel's members
        between flushes) whose TCP connections are connected with nothing
        queued get the bytes straight from C{send} on their sockets, in
        one loop that runs in C (L{sendAll}); the rest of
        a partial write, or all of one that failed (full, or an error
        Twisted then meets), goes to the connection's C{write}, which
        queues it in order and pauses the member when too much waits, and
        the member's next writes go there too, behind it, until its
        connection has nothing queued again.  Every other member is
        written by its own C{send} (paused, being closed, TLS, a stand-in
        of the resume window).

        Each connection is checked as connected right before the writes,
        so that one lost meanwhile is written by Twisted's C{write}, which
        drops the bytes, as for any connection that is gone.
        """
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()
        frames = self._frames
        if not frames:
            return
        self._frames = []
        count = len(frames)
        chunk = frames[0] if count == 1 else b"".join(frames)
        members = channel.members
        window = channel.window
        # Clients catching up are counted by the window.
        held = 0 if window is None else window.held
        channel.deliveries += count * (len(members) - held)
        writers = self._writers
        writing = None if writers is None else set(writers())
        plan = members.plan
        if plan is None:
            plan = members.plan = Plan(members, writing)
        else:
            plan.update(writing)
        # What is written below may change the members (a member paused,
        # or closed for being slow): the plan's lists are replaced then,
        # never changed, and these are the ones of this flush.
        diverted = plan.diverted
        others = plan.others
        if plan.sockets:
            size = len(chunk)
            results = sendAll(plan.sockets, chunk)
            if results.count(size) != len(results):
                short = list(compress(range(len(results)), map(size.__ne__, results)))
                connections = plan.connections
                plan.divert(short)
                for i in short:
                    connections[i].write(chunk[results[i] :])
        for member in diverted:
            if member.descriptor is None:
                # Paused or closed by what this flush wrote.
                member.send(chunk, count)
            else:
                # Behind what its connection queued (or nowhere, for a
                # connection that is gone).
                member.tcp.write(chunk)
        for member in others:
            member.send(chunk, count)


#: C{send} of the sockets of the relay's transports (Python's, and
#: L{wsrelay.ws.accepting.LeanSocket}, which skips C{socket.socket}'s
#: Python C{__init__}): the C method both share.
_send = socket.socket.send


def sendAll(sockets: list[socket.socket], chunk: bytes) -> list[int]:
    """
    Send C{chunk} on each of C{sockets}, in a loop that runs in C.

    C{send} rather than C{os.write} on their descriptors: the kernel's
    C{write} goes through its file layer first (C{vfs_write}, the file
    position's lock), which took about a tenth of the relay's CPU per
    delivery in the fan-out benchmark (BENCHMARKS.md, the fourteenth
    session).  A socket closed meanwhile fails its C{send}, where a
    descriptor's number could by then be another socket's.

    @return: What each send took, in order: C{0} for one that failed
        (C{list.extend} keeps what it appended before the failure, so the
        failed send is the one after them, and the sends go on from the
        next).
    """
    results: list[int] = []
    rest: Iterable[socket.socket] = sockets
    while True:
        try:
            results.extend(map(_send, rest, repeat(chunk)))
        except OSError:
            # Full (BlockingIOError), or an error that Twisted then meets
            # on its own write.
            results.append(0)
            rest = islice(sockets, len(results), None)
        else:
            return results
