# -*- test-case-name: tests.test_fanout_direct,tests.test_fanout_plan -*-
"""
Which members of a fan-out channel may be written at once, kept between
writes: L{Members}, a channel's members, holds a L{Plan} that every change
of its members (or of whether one may be written at once) drops, so that
L{wsrelay.fanout.pending.Pending.flush} writes to most members in one loop
that runs in C, instead of reading five attributes of each member and its
connection in Python per write.

What a member's connection holds can change without the channel knowing
(its leg writes control frames too, and Twisted sends what it queued): the
flush checks, in C over all of them, that every connection of the plan is
connected and has nothing queued (is not among the reactor's writers, or,
when the reactor does not say, has empty buffers), and takes those that
are not out of the plan (L{Plan.update}) before it writes.  A member
taken out is written by its connection's C{write} (which queues behind
what waits) until its connection has nothing queued again
(L{Plan.readmit}).
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import compress
from operator import attrgetter
from typing import Any

__all__ = ["Members", "Plan", "allUsable", "usable"]

#: What a connection of the plan must be, read in C over all of them:
#: connected, with nothing in either of Twisted's buffers.
connectedOf = attrgetter("connected")
queuedOf = attrgetter("_tempDataBuffer")
bufferedOf = attrgetter("dataBuffer")


def usable(tcp: Any, writing: set[Any] | None = None) -> bool:
    """
    @param writing: The connections the reactor waits to write to (those
        with something queued, or closing), if it says
        (L{IReactorFDSet.getWriters}); else L{None}, and Twisted's buffers
        are read.

    @return: Whether C{tcp}, a member's TCP connection, may be written to
        at once: it is connected (its socket still open)
        and Twisted queues nothing for it (which must go first).
    """
    if not tcp.connected:
        return False
    if writing is None:
        return not (tcp._tempDataBuffer or tcp.dataBuffer)
    return tcp not in writing


def allUsable(connections: list[Any], writing: set[Any] | None = None) -> bool:
    """
    @return: Whether every connection of C{connections} is L{usable}, each
        condition checked over all of them by a loop in C.
    """
    if not all(map(connectedOf, connections)):
        return False
    if writing is None:
        return not any(map(queuedOf, connections)) and not any(
            map(bufferedOf, connections)
        )
    return not writing or writing.isdisjoint(connections)


class Plan:
    """
    A channel's members, as its flush writes to them.

    The lists are never changed in place, only replaced (a flush iterates
    those it read while members may change).

    @ivar sockets: The sockets of the members written at once.
    @ivar connections: Their TCP connections, in the same order.
    @ivar direct: Those members, in the same order.
    @ivar diverted: Members that may be written at once but whose
        connection queued something or is gone: written by their
        connections' C{write}, behind what waits (which drops it when the
        connection is gone).
    @ivar others: Members never written at once (paused, being closed,
        TLS, a resume window's stand-ins): written by their C{send}.
    """

    __slots__ = ("connections", "direct", "diverted", "others", "sockets")

    def __init__(self, members: Iterable[Any], writing: set[Any] | None = None) -> None:
        """
        @param members: The channel's members, each with a C{descriptor}
            (L{None} when it is not to be written at once) and a C{tcp},
            whose C{socket} is written to.
        @param writing: As L{usable}'s.
        """
        sockets: list[Any] = []
        connections: list[Any] = []
        direct: list[Any] = []
        self.diverted: list[Any] = []
        self.others: list[Any] = []
        for member in members:
            if member.descriptor is None:
                self.others.append(member)
            elif usable(member.tcp, writing):
                sockets.append(member.tcp.socket)
                connections.append(member.tcp)
                direct.append(member)
            else:
                self.diverted.append(member)
        self.sockets = sockets
        self.connections = connections
        self.direct = direct

    def update(self, writing: set[Any] | None = None) -> None:
        """
        Before a flush: write at once again to the diverted members whose
        connections are L{usable} again (Twisted sent what it queued), and
        divert those whose connections no longer are.

        @param writing: As L{usable}'s.
        """
        if self.diverted:
            self.readmit(writing)
        if not allUsable(self.connections, writing):
            self.divert(
                i for i, tcp in enumerate(self.connections) if not usable(tcp, writing)
            )

    def divert(self, indexes: Iterable[int]) -> None:
        """
        Take the members at C{indexes} of L{direct} out of the writes at
        once.
        """
        out = set(indexes)
        if not out:
            return
        self.diverted = self.diverted + [self.direct[i] for i in sorted(out)]
        keep = [True] * len(self.direct)
        for i in out:
            keep[i] = False
        self.sockets = list(compress(self.sockets, keep))
        self.connections = list(compress(self.connections, keep))
        self.direct = list(compress(self.direct, keep))

    def readmit(self, writing: set[Any] | None = None) -> None:
        """
        Write at once again to the members of L{diverted} whose connections
        are L{usable} again.

        @param writing: As L{usable}'s.
        """
        back: list[Any] = []
        stay: list[Any] = []
        for member in self.diverted:
            (back if usable(member.tcp, writing) else stay).append(member)
        if not back:
            return
        self.diverted = stay
        self.sockets = self.sockets + [m.tcp.socket for m in back]
        self.connections = self.connections + [m.tcp for m in back]
        self.direct = self.direct + back


class Members(dict[Any, None]):
    """
    A channel's members, in the order they joined (a dictionary to
    C{None}), and its L{Plan}, which any change of them drops.

    @ivar plan: How the next flush writes to them; L{None} when it must be
        made again.
    """

    __slots__ = ("plan",)

    def __init__(self) -> None:
        super().__init__()
        self.plan: Plan | None = None

    def changed(self) -> None:
        """
        Whether a member may be written at once changed: make the plan
        again.
        """
        self.plan = None

    def __setitem__(self, key: Any, value: None) -> None:
        self.plan = None
        super().__setitem__(key, value)

    def __delitem__(self, key: Any) -> None:
        self.plan = None
        super().__delitem__(key)

    def pop(self, key: Any, *default: Any) -> Any:
        """
        Remove C{key}, as C{dict.pop}.
        """
        self.plan = None
        return super().pop(key, *default)

    def popitem(self) -> tuple[Any, None]:
        """
        Remove the last member, as C{dict.popitem}.
        """
        self.plan = None
        return super().popitem()

    def clear(self) -> None:
        """
        Remove every member.
        """
        self.plan = None
        super().clear()

    def setdefault(self, key: Any, default: None = None) -> None:
        """
        Add C{key} if it is missing, as C{dict.setdefault}.
        """
        self.plan = None
        return super().setdefault(key, default)

    def update(self, *args: Any, **kwargs: Any) -> None:
        """
        Add members, as C{dict.update}.
        """
        self.plan = None
        super().update(*args, **kwargs)

    def __ior__(self, other: Any) -> Members:  # type: ignore[override,misc]
        self.plan = None
        super().__ior__(other)
        return self
