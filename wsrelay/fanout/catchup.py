# -*- test-case-name: tests.test_resume -*-
"""
The catch-up of a client resuming on a fan-out route from its source's
history (L{ISourceHistory}, the Redis stream): when the id it resumes
after is no longer in its channel's L{wsrelay.fanout.resume.ResumeWindow},
the window hands it to L{CatchUps}, which waits for the source to be up,
pages through the history, holds the live messages delivered meanwhile
and merges them without gaps or repeats, within bounds (L{LOOKUP_TIMEOUT},
L{HELD_MAX}); past them, the client gets a miss.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IReactorTime

    from wsrelay.fanout.direct import Members
    from wsrelay.interfaces import ISourceHistory

__all__ = [
    "HELD_MAX",
    "LOOKUP_TIMEOUT",
    "PAGE",
    "CatchUpWindow",
    "CatchUps",
    "ResumeChannel",
    "ResumeMember",
    "SourceUp",
    "merged",
    "streamOrder",
]

PAGE = 1000
"""
Messages asked of a source's history at a time.
"""

LOOKUP_TIMEOUT = 10.0
"""
Seconds a client resuming from the source's history waits for it (for the
source to be up, then for every page): past that it gets a miss.
"""

HELD_MAX = 10000
"""
Live messages held for a client while its history is looked up: one more
is a miss (its lookup is given up).
"""

# A Redis stream id is two 64-bit numbers: at most 20 digits each (and no
# int() of thousands of digits, which Python refuses).
_STREAM_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})\Z")


class ResumeMember(Protocol):
    """
    What a window uses of a channel member (a
    L{wsrelay.fanout.members.FanoutSession}).
    """

    mark: int

    def send(self, data: bytes, count: int = 1) -> None:
        """
        Write C{count} framed messages, or queue them.
        """

    def shutdown(self, code: int = 1001, reason: bytes = b"") -> None:
        """
        Close the client.
        """


class ResumeChannel(Protocol):
    """
    What a window uses of its channel (L{wsrelay.fanout.channel.Channel}).
    """

    members: Members
    messagesIn: int
    deliveries: int

    def flush(self) -> None:
        """
        Write what is pending to the members, before one is added.
        """


class CatchUpWindow(Protocol):
    """
    What the catch-ups use of their window (a
    L{wsrelay.fanout.resume.ResumeWindow}).

    @ivar ids: The id of each message in the window, oldest first, or
        L{None}.
    @ivar history: The source's own window, or L{None}.
    @ivar held: The stand-ins (L{_Held}) among the channel's members.
    """

    ids: deque[str | None]
    history: ISourceHistory | None
    held: int

    def enveloped(self, opcode: int, payload: bytes, sourceId: str) -> bytes:
        """
        @return: The message from the history, framed in its envelope as
            the channel sends it.
        """

    def missed(self, channel: ResumeChannel, member: ResumeMember) -> None:
        """
        The member's id is gone: it gets what C{resume_miss} says.
        """

    def join(
        self, channel: ResumeChannel, member: ResumeMember, since: str | None
    ) -> None:
        """
        Add C{member} to C{channel}, resuming after C{since}.
        """


def streamOrder(sourceId: str | None) -> tuple[int, int] | None:
    """
    @return: The order of a Redis stream entry id (C{MS-SEQ}), or L{None}
        for any other id.
    """
    if sourceId is None:
        return None
    match = _STREAM_ID.match(sourceId)
    if match is None:
        return None
    try:
        return int(match.group(1)), int(match.group(2))
    except ValueError:
        return None


def merged(
    since: str,
    found: Sequence[tuple[int, bytes, str | None]],
    live: Sequence[tuple[str | None, bytes]],
    enveloped: Callable[[int, bytes, str], bytes],
) -> tuple[list[bytes], tuple[int, int] | None]:
    """
    Merge what a source's history has after C{since} with the live
    messages held meanwhile.

    @param found: The history's messages, as C{(opcode, payload, id)}.
    @param live: The live messages held, as C{(id, framed)}.
    @param enveloped: Frames a message of the history, given its opcode,
        payload and id.
    @return: The framed messages: the history's (those with an id), then
        the live ones it lacks; and the order of the last id among them
        (or of C{since}), L{None} when there is none.
    """
    out: list[bytes] = []
    ids: set[str] = set()
    last = streamOrder(since)
    for opcode, payload, sourceId in found:
        if sourceId is None:
            continue
        out.append(enveloped(opcode, payload, sourceId))
        ids.add(sourceId)
        order = streamOrder(sourceId)
        if order is not None:
            last = order
    for messageId, data in live:
        order = streamOrder(messageId)
        if order is not None and last is not None:
            if order <= last:
                continue
            last = order
        elif messageId in ids:
            continue
        out.append(data)
    return out, last


class _Held:
    """
    Stands for a member in its channel's members while its history is
    fetched: the channel sends it nothing (the window hands the member
    what it needs), and counts it as a client (no linger).

    @ivar mark: Unused; a channel member has one.
    @ivar descriptor: L{None}: the channel calls L{send}, which does
        nothing.
    """

    descriptor = None
    tcp = None

    def __init__(self) -> None:
        self.mark = 0

    def send(self, data: bytes, count: int = 1) -> None:
        """
        Nothing: the window writes to the member itself.
        """


class _CatchUp:
    """
    A member resuming from its source's history.

    @ivar live: The live messages delivered since it joined, as C{(id,
        framed)}, while the history is fetched; L{None} once it is merged.
    @ivar last: The order of the last id the member got, while live
        messages at or before it must be skipped (the history was ahead of
        this relay's live stream).
    @ivar direct: Whether the window writes live messages to the member
        itself, until it becomes a member like any other
        (L{CatchUps._live}).
    @ivar pending: The history's answer, while it is awaited.
    @ivar timeout: Gives the lookup up after L{LOOKUP_TIMEOUT}, until it
        ends.
    @ivar window: The window the member resumes in.
    """

    def __init__(
        self,
        window: CatchUpWindow,
        channel: ResumeChannel,
        member: ResumeMember,
        since: str,
    ) -> None:
        self.window = window
        self.channel = channel
        self.member = member
        self.held = _Held()
        self.since = since
        self.live: list[tuple[str | None, bytes]] | None = []
        self.last: tuple[int, int] | None = None
        self.direct = False
        self.pending: Deferred[None] | None = None
        self.timeout: IDelayedCall | None = None


class SourceUp:
    """
    Whether a channel's source is up, and the waits for it: until the
    source is up (has found where it reads from, and preloaded the window
    when it does), its history cannot tell where the live stream goes on.

    @ivar up: Whether the source is up, or not started.
    """

    def __init__(self) -> None:
        self.up = True
        self._waiting: list[Deferred[None]] = []

    def started(self) -> None:
        """
        The channel starts its source: waits wait from now on.
        """
        self.up = False

    def arrived(self) -> None:
        """
        The source is up: the waits end.
        """
        self.up = True
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            if not d.called:
                d.callback(None)

    def wait(self) -> Deferred[None]:
        """
        @return: A L{Deferred} that fires once the source is up; cancelling
            it forgets the wait.
        """
        d: Deferred[None] = Deferred(self._unwait)
        if self.up:
            d.callback(None)
        else:
            self._waiting.append(d)
        return d

    def cancel(self) -> None:
        """
        The channel ended: cancel every wait.
        """
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.cancel()

    def _unwait(self, d: Deferred[None]) -> None:
        """
        A wait was cancelled: forget it.
        """
        if d in self._waiting:
            self._waiting.remove(d)


class CatchUps:
    """
    The members of one window's channel resuming from the source's
    history.

    @ivar active: Each member catching up, and its L{_CatchUp}; the window
        holds live messages (L{hold}) while there is one.  Only a
        L{_CatchUp} refers to its window, so that the window and these
        make no cycle once no member catches up.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime) -> None:
        """
        @param clock: Times the lookups out, and schedules a caught-up
            member's move to the live stream.
        """
        self._clock = clock
        self.active: dict[ResumeMember, _CatchUp] = {}
        #: Whether the source is up, and the lookups waiting for it.
        self.source = SourceUp()

    def close(self) -> None:
        """
        The channel ended: give up the lookups under way.
        """
        catchUps = list(self.active.values())
        self.active.clear()
        for catchUp in catchUps:
            self._unhold(catchUp)
            catchUp.live = None
            self._stopLookup(catchUp)
        self.source.cancel()

    def rejoinWhenUp(
        self,
        window: CatchUpWindow,
        channel: ResumeChannel,
        member: ResumeMember,
        since: str,
    ) -> None:
        """
        A member resuming after an id that its window lacks while the
        source comes up: join it again once the source is up, when the
        source has preloaded the window from its store (live messages go to
        the window meanwhile, so none is held here).  Bounded by
        L{LOOKUP_TIMEOUT} like a lookup.
        """
        catchUp = _CatchUp(window, channel, member, since)
        self.active[member] = catchUp
        channel.members[catchUp.held] = None
        window.held += 1
        catchUp.timeout = self._clock.callLater(
            LOOKUP_TIMEOUT, self._giveUp, catchUp, "the source did not come up in time"
        )
        pending = self.source.wait()
        pending.addCallbacks(
            lambda _: self._rejoin(catchUp), lambda f: f.trap(CancelledError)
        )
        catchUp.pending = pending

    def _rejoin(self, catchUp: _CatchUp) -> None:
        """
        The source is up: the member joins again, from the window as the
        source preloaded it.
        """
        if self.active.get(catchUp.member) is not catchUp:
            return
        del self.active[catchUp.member]
        catchUp.pending = None
        self._stopLookup(catchUp)
        self._unhold(catchUp)
        catchUp.window.join(catchUp.channel, catchUp.member, catchUp.since)

    # Members.

    def forget(self, member: ResumeMember) -> None:
        """
        C{member} is gone: stop holding messages for it.
        """
        catchUp = self.active.pop(member, None)
        if catchUp is not None:
            self._unhold(catchUp)
            self._stopLookup(catchUp)

    def _unhold(self, catchUp: _CatchUp) -> None:
        """
        Take C{catchUp}'s stand-in out of its channel's members.
        """
        members = catchUp.channel.members
        if catchUp.held in members:
            del members[catchUp.held]
            catchUp.window.held -= 1

    def _stopLookup(self, catchUp: _CatchUp) -> None:
        """
        Stop C{catchUp}'s lookup and its timeout.
        """
        timeout, catchUp.timeout = catchUp.timeout, None
        if timeout is not None and timeout.active():
            timeout.cancel()
        pending, catchUp.pending = catchUp.pending, None
        if pending is not None:
            pending.cancel()

    # Resuming from the source's history.

    def fetch(
        self,
        window: CatchUpWindow,
        history: ISourceHistory,
        channel: ResumeChannel,
        member: ResumeMember,
        since: str,
    ) -> None:
        """
        Ask the source's history for what came after C{since}; meanwhile
        hold the live messages for C{member}.

        @param window: The window C{member} resumes in.
        """
        catchUp = _CatchUp(window, channel, member, since)
        self.active[member] = catchUp
        channel.members[catchUp.held] = None
        window.held += 1
        catchUp.timeout = self._clock.callLater(
            LOOKUP_TIMEOUT, self._giveUp, catchUp, "no answer in time"
        )
        pending = Deferred.fromCoroutine(self._catchUp(history, catchUp))
        if not pending.called:
            catchUp.pending = pending

    def _giveUp(self, catchUp: _CatchUp, why: str) -> None:
        """
        Give C{catchUp}'s lookup up (too slow, or too many live messages
        held): the member gets a miss.  Not while the channel delivers:
        its members change.
        """
        if self.active.get(catchUp.member) is not catchUp:
            return
        del self.active[catchUp.member]
        self._stopLookup(catchUp)
        catchUp.live = None
        self.log.warn(
            "resume: the source's history for the client resuming after"
            " {since}: {why}; it gets what resume_miss says",
            since=catchUp.since,
            why=why,
        )
        self._clock.callLater(0, self._gaveUp, catchUp)

    def _gaveUp(self, catchUp: _CatchUp) -> None:
        """
        The member whose lookup was given up gets its miss.
        """
        self._unhold(catchUp)
        catchUp.window.missed(catchUp.channel, catchUp.member)

    async def _catchUp(self, history: ISourceHistory, catchUp: _CatchUp) -> None:
        """
        Page through the history after C{catchUp.since}, then merge.
        """
        found: list[tuple[int, bytes, str | None]] = []
        cursor: str | None = catchUp.since
        missed = False
        try:
            await self.source.wait()
            # The source may have been replaced meanwhile (a reload).
            history = catchUp.window.history or history
            while cursor is not None:
                page = await history.after(cursor, PAGE)
                if page is None:
                    # Gone (or trimmed between two pages): the member
                    # cannot have everything.
                    missed = True
                    break
                found.extend(page)
                live = catchUp.live or ()
                last = page[-1][2] if page else None
                if len(page) < PAGE or any(i == last for i, _ in live):
                    break
                cursor = last
            if not missed and self.active.get(catchUp.member) is catchUp:
                self._merge(catchUp, found)
                return
        except Exception as e:
            if self.active.get(catchUp.member) is not catchUp:
                return
            self.log.warn(
                "resume: the source's history failed ({error}); the client"
                " resuming after {since} gets what resume_miss says",
                error=str(e) or type(e).__name__,
                since=catchUp.since,
            )
            missed = True
        if self.active.get(catchUp.member) is not catchUp:
            return
        if missed:
            self.active.pop(catchUp.member)
            catchUp.pending = None
            self._stopLookup(catchUp)
            self._unhold(catchUp)
            catchUp.window.missed(catchUp.channel, catchUp.member)

    def _merge(
        self, catchUp: _CatchUp, found: list[tuple[int, bytes, str | None]]
    ) -> None:
        """
        Send the history, then the live messages held that it lacks.
        """
        out, last = merged(
            catchUp.since, found, catchUp.live or [], catchUp.window.enveloped
        )
        catchUp.live = None
        timeout, catchUp.timeout = catchUp.timeout, None
        if timeout is not None and timeout.active():
            timeout.cancel()
        catchUp.pending = None
        member = catchUp.member
        channel = catchUp.channel
        if out:
            member.send(b"".join(out), len(out))
        channel.deliveries += len(out)
        member.mark = channel.messagesIn - len(out)
        windowIds = catchUp.window.ids
        newest = windowIds[-1] if windowIds else None
        newestOrder = streamOrder(newest)
        if last is None or newestOrder is None or newestOrder >= last:
            self._live(catchUp)
            return
        # The history is ahead of this relay's live stream: skip what the
        # member has until the live stream passes it.
        catchUp.last = last

    def hold(self, messageId: str | None, data: bytes) -> None:
        """
        A live message while members catch up: keep it for those whose
        history is pending; pass it to those past their history.
        """
        for catchUp in list(self.active.values()):
            live = catchUp.live
            if live is not None:
                if len(live) >= HELD_MAX:
                    self._giveUp(catchUp, "too many live messages held meanwhile")
                    continue
                live.append((messageId, data))
                continue
            if not catchUp.direct:
                last = catchUp.last
                order = streamOrder(messageId)
                if last is not None and order is not None and order <= last:
                    continue
                catchUp.direct = True
                # Not now: the channel may be writing to its members.
                self._clock.callLater(0, self._live, catchUp)
            catchUp.member.send(data)
            catchUp.channel.deliveries += 1

    def _live(self, catchUp: _CatchUp) -> None:
        """
        The member has all the window had for it: from now on the channel
        writes to it like to any other member.
        """
        if self.active.get(catchUp.member) is not catchUp:
            return
        del self.active[catchUp.member]
        self._unhold(catchUp)
        # The member has what is pending (it was held for it, or written
        # to it): the others get it first.
        catchUp.channel.flush()
        catchUp.channel.members[catchUp.member] = None
