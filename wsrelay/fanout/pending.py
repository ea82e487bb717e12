# -*- test-case-name: tests.test_fanout_coalesce -*-
"""
What a fan-out channel's source delivered and its members have not been
written yet: L{Pending} gathers it, and writes it to every member in one
write each at the end of the reactor turn, or C{write_delay} milliseconds
after the first message (as Centrifugo's C{WriteDelay}), so that at high
rates a client gets one C{send} for many reads from the source.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IReactorTime

    from wsrelay.config import FanoutRouteConfig

__all__ = ["Pending", "PendingChannel"]


class _Window(Protocol):
    """
    What L{Pending} uses of a channel's resume window.
    """

    held: int


class PendingChannel(Protocol):
    """
    What L{Pending} uses of its channel (L{wsrelay.fanout.channel.Channel}).
    """

    members: dict[Any, None]
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

    __slots__ = ("_call", "_frames", "_reactor", "flushing")

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
        #: Whether L{flush} is writing to the members: a member that joins
        #: or leaves meanwhile must not change the dictionary it iterates.
        self.flushing = False

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

        The per-delivery path, inlined: a member that may be written at
        once (its C{descriptor}) whose TCP connection is connected with
        nothing queued gets the bytes straight from C{os.write} on its
        socket (a few percent less CPU than the socket's C{send}); the rest
        of a partial write, or all of one that failed (full, or an error
        Twisted then meets), goes to the connection's C{write}, which
        queues it in order and pauses the member when too much waits.
        Every other member is written by its own C{send} (paused, being
        closed, TLS, a stand-in of the resume window).

        The connection is checked as connected: a descriptor's number is
        the connection's only until Twisted closes its socket (which it
        does after marking it lost), and then the next socket may get it.
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
        size = len(chunk)
        write = os.write
        members = channel.members
        window = channel.window
        # Clients catching up are counted by the window.
        held = 0 if window is None else window.held
        channel.deliveries += count * (len(members) - held)
        # No copy: no member joins or leaves while it is written to (a
        # client closed for being slow leaves when its connection is lost,
        # in a later turn); should one, the channel changes a copy
        # (channel._unshare).
        flushing, self.flushing = self.flushing, True
        try:
            for member in members:
                fd = member.descriptor
                if fd is not None:
                    tcp = member.tcp
                    if tcp.connected and not (tcp._tempDataBuffer or tcp.dataBuffer):
                        try:
                            sent = write(fd, chunk)
                        except OSError:
                            sent = 0
                        if sent != size:
                            tcp.write(chunk[sent:])
                        continue
                member.send(chunk, count)
        finally:
            # A flush within a flush (none is known) leaves it flushing.
            self.flushing = flushing
