# -*- test-case-name: tests.test_fanout,tests.test_fanout_units,tests.test_sources -*-
"""
The pieces of a fan-out channel's (L{wsrelay.fanout.channel.Channel})
life around its source: stopping a source (L{stopSource}), the sources
replaced on reload until they have stopped (L{Replaced}, L{sourceChanged}),
the source of a channel that ended (L{ENDED}), and the linger of a lazy
channel with no clients (L{Linger}).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred, DeferredList, succeed
from zope.interface import implementer

from wsrelay.interfaces import ISource

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IReactorTime

    from wsrelay.config import RouteConfig

__all__ = ["ENDED", "Linger", "Replaced", "sourceChanged", "stopSource"]


def stopSource(source: ISource, code: int | None, reason: bytes) -> Deferred[None]:
    """
    Stop C{source}, with C{code} and C{reason} if it takes them
    (C{stopWith}, as the C{websocket} source does).
    """
    stopWith = getattr(source, "stopWith", None)
    if code is not None and stopWith is not None:
        stopped: Deferred[None] = stopWith(code, reason)
        return stopped
    return source.stop()


def sourceChanged(old: RouteConfig, new: RouteConfig) -> bool:
    """
    @return: Whether a fan-out route reloaded from C{old} to C{new} names
        another source or other source options, so that its channels
        replace their source.  The C{websocket} source reads its route's
        backends and settings as it connects, so it stays.
    """
    if new.mode != "fanout" or old.mode != "fanout":
        return False
    return (old.source, dict(old.sourceOptions)) != (
        new.source,
        dict(new.sourceOptions),
    )


class Replaced:
    """
    The sources a channel replaced on reload, until each has stopped.
    """

    def __init__(self) -> None:
        #: What fires once each source replaced has stopped.
        self._stopping: list[Deferred[None]] = []

    def stop(self, source: ISource) -> None:
        """
        Stop C{source}, which is replaced, and keep what fires once it has
        stopped until then.
        """
        stopped = stopSource(source, 1000, b"source replaced")
        self._stopping.append(stopped)

        def forget(result: object) -> object:
            self._stopping.remove(stopped)
            return result

        stopped.addBoth(forget)

    def wait(self, stopped: Deferred[None]) -> Deferred[None]:
        """
        @param stopped: Fires when the channel's own source has stopped.
        @return: A L{Deferred} that fires when C{stopped} has, and every
            replaced source has stopped.
        """
        if not self._stopping:
            return stopped
        waits = [stopped, *self._stopping]
        return DeferredList(waits).addCallback(lambda _: None)


class Linger:
    """
    The linger of a lazy channel whose last client left: the time it
    keeps its source, in case a client comes back.  It holds no reference
    to its channel but while a linger is under way (a channel that ended
    is freed by reference counting).
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._call: IDelayedCall | None = None

    def start(self, seconds: float, ended: Callable[[], None]) -> None:
        """
        Linger C{seconds}, from now (the linger under way, if any, is
        cancelled), then call C{ended}.
        """
        self.cancel()
        self._call = self._clock.callLater(seconds, self._end, ended)

    def cancel(self) -> None:
        """
        No linger: a client came, or the source stops anyway.
        """
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def _end(self, ended: Callable[[], None]) -> None:
        """
        The linger ended: call C{ended}.
        """
        self._call = None
        ended()


@implementer(ISource)
class _EndedSource:
    """
    The source of a channel that ended: nothing to start, stop or send.
    """

    def start(self) -> None:
        """
        Nothing to start.
        """

    def stop(self) -> Deferred[None]:
        """
        Nothing to stop.
        """
        return succeed(None)

    def send(self, opcode: int, payload: bytes) -> bool:
        """
        Nothing takes a message.
        """
        return False


#: The source of every channel that ended.
ENDED = _EndedSource()
