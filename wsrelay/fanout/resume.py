# -*- test-case-name: tests.test_resume -*-
"""
Resume on fan-out routes: a client that reconnects with C{?since=ID} gets
the messages it missed, then the live stream.

A L{ResumeWindow} is made per channel of a route with C{resume} set.  The
channel hands it each message it delivers (L{ResumeWindow.add}), which
gives the message its id (its top-level JSON field with C{resume =
json:FIELD}, or the source's id or C{EPOCH-N} with C{resume = envelope}),
frames it, and keeps it in a ring indexed by id.  A joining client is
served from that ring (L{ResumeWindow.join}), or, when the id is not in it
and the source keeps a history of its own (L{ISourceHistory}, the Redis
stream), from that history, while live messages are held for it and
merged without gaps or repeats.

Without C{resume} the channel has no window, and nothing here runs on its
message path.  The format is documented for client authors in
C{docs/resume.md}.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
from collections import deque
from collections.abc import Sequence
from itertools import islice
from json.encoder import encode_basestring
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qsl, unquote_plus

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from wsrelay.ws.framing import frame

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IReactorTime

    from wsrelay.config import FanoutRouteConfig
    from wsrelay.interfaces import ISourceHistory

__all__ = [
    "MAX_SINCE",
    "RESUME_GONE",
    "RESUME_GONE_REASON",
    "ResumeWindow",
    "envelope",
    "jsonId",
    "resumeWindow",
    "sinceOf",
    "withoutParameter",
]

RESUME_GONE = 4410
"""
The close code a client gets, with C{resume_miss = close}, when the id it
resumes after is no longer in the window.
"""

RESUME_GONE_REASON = b"resume point gone"
"""
The close reason that goes with L{RESUME_GONE}.
"""

PAGE = 1000
"""
Messages asked of a source's history at a time.
"""

MAX_SINCE = 256
"""
The longest C{since} looked up: a longer one is a miss.
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

_TEXT = 1
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

    members: dict[Any, None]
    messagesIn: int
    deliveries: int


def withoutParameter(query: str, name: str) -> str:
    """
    @return: C{query} without its C{name} parameters, the others as sent.
    """
    if name not in query and "%" not in query:
        return query
    kept = [
        item
        for item in query.split("&")
        if unquote_plus(item.partition("=")[0]) != name
    ]
    return "&".join(kept)


def sinceOf(query: str, name: str) -> str | None:
    """
    @return: The value of the first C{name} parameter of C{query}, or
        L{None} when there is none or it is empty; cut to one character
        more than L{MAX_SINCE} (a miss) when longer.
    """
    if name not in query and "%" not in query:
        return None
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key == name:
            return value[: MAX_SINCE + 1] or None
    return None


_decode = json.JSONDecoder().decode


def jsonId(payload: bytes, field: str, quoted: bytes | None = None) -> str | None:
    """
    @param quoted: C{field} as a JSON string (C{b'"seq"'}), if the caller
        has it: a payload that holds it nowhere and has no escapes is
        skipped without being parsed.
    @return: The top-level field C{field} of the JSON object C{payload}: a
        string as it is, an integer in decimal; L{None} when C{payload} is
        not a JSON object, lacks the field, or its value is of another
        type.
    """
    if quoted is not None and quoted not in payload and b"\\" not in payload:
        return None
    try:
        document = _decode(payload.decode("utf-8"))
    except (ValueError, RecursionError):
        return None
    if not isinstance(document, dict):
        return None
    value = document.get(field)
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def envelope(messageId: str, opcode: int, payload: bytes) -> bytes:
    """
    @return: The text payload C{{"id": messageId, "data": TEXT}}, or for a
        binary message C{{"id": messageId, "data": BASE64, "binary":
        true}}.
    """
    head = b'{"id":' + encode_basestring(messageId).encode("utf-8") + b',"data":'
    if opcode == _TEXT:
        text: str = encode_basestring(payload.decode("utf-8"))
        return head + text.encode("utf-8") + b"}"
    return head + b'"' + base64.b64encode(payload) + b'","binary":true}'


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


def resumeWindow(config: FanoutRouteConfig, clock: IReactorTime) -> ResumeWindow | None:
    """
    @return: The window of a channel of a route with C{resume} set, else
        L{None}.
    """
    mode = config.resume
    if mode is None:
        return None
    field = None if mode == "envelope" else mode[len("json:") :]
    return ResumeWindow(
        field=field,
        size=max(config.replay, config.resumeWindow),
        replay=config.replay,
        miss=config.resumeMiss,
        clock=clock,
    )


class _Held:
    """
    Stands for a member in its channel's members while its history is
    fetched: the channel sends it nothing (the window hands the member
    what it needs), and counts it as a client (no linger).

    @ivar mark: Unused; a channel member has one.
    """

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
        itself, until it becomes a member like any other (L{_live}).
    @ivar pending: The history's answer, while it is awaited.
    @ivar timeout: Gives the lookup up after L{LOOKUP_TIMEOUT}, until it
        ends.
    """

    def __init__(
        self, channel: ResumeChannel, member: ResumeMember, since: str
    ) -> None:
        self.channel = channel
        self.member = member
        self.held = _Held()
        self.since = since
        self.live: list[tuple[str | None, bytes]] | None = []
        self.last: tuple[int, int] | None = None
        self.direct = False
        self.pending: Deferred[None] | None = None
        self.timeout: IDelayedCall | None = None


class ResumeWindow:
    """
    One channel's resume window: the last C{size} messages, framed (as
    the channel sends them), with their ids.

    @ivar data: The framed messages, oldest first; the channel's replay.
    @ivar ids: The id of each message in L{data}, or L{None}.
    @ivar index: Where each id is: its message's number (the count of
        messages added before it).
    @ivar count: Messages added so far.
    @ivar epoch: Makes the ids of messages without a source id (C{EPOCH-N})
        unique to this window: random, never all digits.
    @ivar history: The source's own window (L{ISourceHistory}), or
        L{None}: set by the channel when its source provides one.
    @ivar held: The stand-ins (L{_Held}) among the channel's members: the
        channel counts no delivery to them (the window counts what it
        writes to the members they stand for).
    """

    log = Logger()

    def __init__(
        self,
        *,
        field: str | None,
        size: int,
        replay: int,
        miss: str,
        clock: IReactorTime,
        epoch: str | None = None,
    ) -> None:
        """
        @param field: The JSON field of a message's id, or L{None} for
            envelopes.
        @param size: Messages kept.
        @param replay: Messages a new client gets.
        @param miss: C{"replay"} or C{"close"}: what a client whose id is
            gone gets.
        @param clock: Schedules a caught-up member's move to the live
            stream.
        """
        self.field = field
        self._quoted = (
            None if field is None else encode_basestring(field).encode("utf-8")
        )
        self.replay = replay
        self.miss = miss
        self.data: deque[bytes] = deque(maxlen=size)
        self.ids: deque[str | None] = deque(maxlen=size)
        self.index: dict[str, int] = {}
        self.count = 0
        self.epoch = epoch if epoch is not None else "e" + secrets.token_hex(4)
        self.history: ISourceHistory | None = None
        self._size = size
        self._clock = clock
        self._catchUps: dict[ResumeMember, _CatchUp] = {}
        self.held = 0
        self._positioned = True
        self._waiting: list[Deferred[None]] = []

    # The message path.

    def add(self, opcode: int, payload: bytes, sourceId: str | None) -> bytes:
        """
        A message the channel delivers: give it its id, frame it and keep
        it.

        @return: The framed message to send to every member.
        """
        number = self.count
        field = self.field
        if field is None:
            if sourceId is None:
                sourceId = self.epoch + "-" + str(number + 1)
            messageId: str | None = sourceId
            data = frame(_TEXT, envelope(sourceId, opcode, payload))
        else:
            messageId = (
                jsonId(payload, field, self._quoted) if opcode == _TEXT else None
            )
            data = frame(opcode, payload)
        ids = self.ids
        if len(ids) == self._size:
            old = ids[0]
            if old is not None and self.index.get(old) == number - self._size:
                del self.index[old]
        self.data.append(data)
        ids.append(messageId)
        if messageId is not None:
            self.index[messageId] = number
        self.count = number + 1
        if self._catchUps:
            self._hold(messageId, data)
        return data

    def after(self, messageId: str) -> list[bytes] | None:
        """
        @return: The framed messages after the one with C{messageId}, or
            L{None} when it is not in the window.
        """
        number = self.index.get(messageId)
        if number is None:
            return None
        start = number + 1 - (self.count - len(self.data))
        return list(islice(self.data, start, None))

    def replayed(self) -> list[bytes]:
        """
        @return: What a new client gets: the last C{replay} messages.
        """
        if not self.replay:
            return []
        data = self.data
        return list(islice(data, max(0, len(data) - self.replay), None))

    # Joining.

    def join(
        self, channel: ResumeChannel, member: ResumeMember, since: str | None
    ) -> None:
        """
        Add C{member} to C{channel}: it gets the replay (no C{since}), or
        what came after C{since}, then the live stream.
        """
        if since is None:
            self._admit(channel, member, self.replayed())
            return
        if len(since) > MAX_SINCE:
            self._missed(channel, member)
            return
        found = self.after(since)
        if found is not None:
            self._admit(channel, member, found)
            return
        history = self.history
        if history is not None and self.field is None and streamOrder(since):
            self._fetch(history, channel, member, since)
            return
        self._missed(channel, member)

    # The source.

    def sourceStarted(self) -> None:
        """
        The channel starts its source: until the source is up (has found
        where it reads from), its history cannot tell where the live
        stream goes on, and a history lookup waits (L{sourceUp}).
        """
        self._positioned = False

    def sourceUp(self) -> None:
        """
        The source is up: lookups waiting for it go on.
        """
        self._positioned = True
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            if not d.called:
                d.callback(None)

    def sourceStopped(self) -> None:
        """
        The channel stopped its source, or replaced it: started again, the
        source reads from the stream's end, and what came meanwhile never
        reaches the window.  The ids it holds no longer tell where a client
        can go on from: they are forgotten (the messages stay, for the
        replay), so that a client resuming after one of them is served from
        the source's history when it has one, else gets a miss; never the
        window's messages without those that came while the source was
        stopped.
        """
        self.index.clear()

    def close(self) -> None:
        """
        The channel ended: let go of the source's history (which holds the
        channel: a cycle), and give up the lookups under way.
        """
        self.history = None
        catchUps, self._catchUps = self._catchUps, {}
        for catchUp in catchUps.values():
            self._unhold(catchUp)
            catchUp.live = None
            self._stopLookup(catchUp)
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.cancel()

    def _sourcePositioned(self) -> Deferred[None]:
        """
        @return: A L{Deferred} that fires once the source is up.
        """
        d: Deferred[None] = Deferred(self._unwait)
        if self._positioned:
            d.callback(None)
        else:
            self._waiting.append(d)
        return d

    def _unwait(self, d: Deferred[None]) -> None:
        """
        A lookup waiting for the source was cancelled: forget its wait.
        """
        if d in self._waiting:
            self._waiting.remove(d)

    def forget(self, member: ResumeMember) -> None:
        """
        C{member} is gone: stop holding messages for it.
        """
        catchUp = self._catchUps.pop(member, None)
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
            self.held -= 1

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

    def _admit(
        self, channel: ResumeChannel, member: ResumeMember, data: Sequence[bytes]
    ) -> None:
        """
        Send C{data} to C{member}, then make it a member like any other.
        """
        count = len(data)
        if count:
            member.send(b"".join(data), count)
        channel.deliveries += count
        member.mark = channel.messagesIn - count
        channel.members[member] = None

    def _missed(self, channel: ResumeChannel, member: ResumeMember) -> None:
        """
        The member's id is gone: the replay, or a close with 4410.
        """
        if self.miss == "close":
            member.shutdown(RESUME_GONE, RESUME_GONE_REASON)
            return
        self._admit(channel, member, self.replayed())

    # Resuming from the source's history.

    def _fetch(
        self,
        history: ISourceHistory,
        channel: ResumeChannel,
        member: ResumeMember,
        since: str,
    ) -> None:
        """
        Ask the source's history for what came after C{since}; meanwhile
        hold the live messages for C{member}.
        """
        catchUp = _CatchUp(channel, member, since)
        self._catchUps[member] = catchUp
        channel.members[catchUp.held] = None
        self.held += 1
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
        if self._catchUps.get(catchUp.member) is not catchUp:
            return
        del self._catchUps[catchUp.member]
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
        self._missed(catchUp.channel, catchUp.member)

    async def _catchUp(self, history: ISourceHistory, catchUp: _CatchUp) -> None:
        """
        Page through the history after C{catchUp.since}, then merge.
        """
        found: list[tuple[int, bytes, str | None]] = []
        cursor: str | None = catchUp.since
        missed = False
        try:
            await self._sourcePositioned()
            # The source may have been replaced meanwhile (a reload).
            history = self.history or history
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
            if not missed and self._catchUps.get(catchUp.member) is catchUp:
                self._merge(catchUp, found)
                return
        except Exception as e:
            if self._catchUps.get(catchUp.member) is not catchUp:
                return
            self.log.warn(
                "resume: the source's history failed ({error}); the client"
                " resuming after {since} gets what resume_miss says",
                error=str(e) or type(e).__name__,
                since=catchUp.since,
            )
            missed = True
        if self._catchUps.get(catchUp.member) is not catchUp:
            return
        if missed:
            self._catchUps.pop(catchUp.member)
            catchUp.pending = None
            self._stopLookup(catchUp)
            self._unhold(catchUp)
            self._missed(catchUp.channel, catchUp.member)

    def _merge(
        self, catchUp: _CatchUp, found: list[tuple[int, bytes, str | None]]
    ) -> None:
        """
        Send the history, then the live messages held that it lacks.
        """
        out: list[bytes] = []
        ids: set[str] = set()
        last = streamOrder(catchUp.since)
        for opcode, payload, sourceId in found:
            if sourceId is None:
                continue
            out.append(frame(_TEXT, envelope(sourceId, opcode, payload)))
            ids.add(sourceId)
            order = streamOrder(sourceId)
            if order is not None:
                last = order
        live = catchUp.live or []
        catchUp.live = None
        timeout, catchUp.timeout = catchUp.timeout, None
        if timeout is not None and timeout.active():
            timeout.cancel()
        for messageId, data in live:
            order = streamOrder(messageId)
            if order is not None and last is not None:
                if order <= last:
                    continue
                last = order
            elif messageId in ids:
                continue
            out.append(data)
        catchUp.pending = None
        member = catchUp.member
        channel = catchUp.channel
        if out:
            member.send(b"".join(out), len(out))
        channel.deliveries += len(out)
        member.mark = channel.messagesIn - len(out)
        newest = self.ids[-1] if self.ids else None
        newestOrder = streamOrder(newest)
        if last is None or newestOrder is None or newestOrder >= last:
            self._live(catchUp)
            return
        # The history is ahead of this relay's live stream: skip what the
        # member has until the live stream passes it.
        catchUp.last = last

    def _hold(self, messageId: str | None, data: bytes) -> None:
        """
        A live message while members catch up: keep it for those whose
        history is pending; pass it to those past their history.
        """
        for catchUp in list(self._catchUps.values()):
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
        if self._catchUps.get(catchUp.member) is not catchUp:
            return
        del self._catchUps[catchUp.member]
        self._unhold(catchUp)
        catchUp.channel.members[catchUp.member] = None
