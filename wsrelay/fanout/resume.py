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
merged without gaps or repeats (L{wsrelay.fanout.catchup}).

Without C{resume} the channel has no window, and nothing here runs on its
message path.  The format is documented for client authors in
C{docs/resume.md}.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections import deque
from collections.abc import Sequence
from itertools import islice
from json.encoder import encode_basestring
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, unquote_plus

from wsrelay.fanout.catchup import CatchUps, streamOrder
from wsrelay.ws.framing import frame

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from wsrelay.config import FanoutRouteConfig
    from wsrelay.fanout.catchup import ResumeChannel, ResumeMember
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

MAX_SINCE = 256
"""
The longest C{since} looked up: a longer one is a miss.
"""

_TEXT = 1


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
    @ivar held: The stand-ins among the channel's members of the members
        catching up (L{CatchUps}): the channel counts no delivery to them
        (the window counts what it writes to the members they stand for).
    """

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
        @param clock: Times out a catch-up from the source's history, and
            schedules a caught-up member's move to the live stream.
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
        self.held = 0
        #: The members resuming from the source's history.
        self._lookups = CatchUps(clock)
        #: Who is catching up: while anyone is, live messages are held.
        self._catchUps = self._lookups.active

    # The message path.

    def add(self, opcode: int, payload: bytes, sourceId: str | None) -> bytes:
        """
        A message the channel delivers: give it its id, frame it and keep
        it.

        @return: The framed message to send to every member.
        """
        data, messageId = self._keep(opcode, payload, sourceId)
        if self._catchUps:
            self._lookups.hold(messageId, data)
        return data

    def preload(self, messages: Sequence[tuple[int, bytes, str | None]]) -> None:
        """
        The messages the source's store held before the live ones
        (L{wsrelay.interfaces.ISourceChannel.preload}): the window holds
        them, and only them, as if they had been delivered.
        """
        self.data.clear()
        self.ids.clear()
        self.index.clear()
        for message in messages[-self._size :]:
            self._keep(*message)

    def _keep(
        self, opcode: int, payload: bytes, sourceId: str | None
    ) -> tuple[bytes, str | None]:
        """
        Give a message its id, frame it and keep it.

        @return: The framed message and its id.
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
        return data, messageId

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
            self.missed(channel, member)
            return
        found = self.after(since)
        if found is not None:
            self._admit(channel, member, found)
            return
        history = self.history
        if history is not None and self.field is None and streamOrder(since):
            self._lookups.fetch(self, history, channel, member, since)
            return
        if history is not None and not self._lookups.source.up:
            # The source preloads the window from its store as it comes
            # up: look again then.
            self._lookups.rejoinWhenUp(self, channel, member, since)
            return
        self.missed(channel, member)

    # The source.

    def sourceStarted(self) -> None:
        """
        The channel starts its source: until the source is up (has found
        where it reads from), its history cannot tell where the live
        stream goes on, and a history lookup waits (L{sourceUp}).
        """
        self._lookups.source.started()

    def sourceUp(self) -> None:
        """
        The source is up: lookups waiting for it go on.
        """
        self._lookups.source.arrived()

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
        self._lookups.close()

    def forget(self, member: ResumeMember) -> None:
        """
        C{member} is gone: stop holding messages for it.
        """
        self._lookups.forget(member)

    def _admit(
        self, channel: ResumeChannel, member: ResumeMember, data: Sequence[bytes]
    ) -> None:
        """
        Send C{data} to C{member}, then make it a member like any other.
        The members first get what the channel has pending (C{data} may
        hold it).
        """
        channel.flush()
        count = len(data)
        if count:
            member.send(b"".join(data), count)
        channel.deliveries += count
        member.mark = channel.messagesIn - count
        channel.members[member] = None

    def missed(self, channel: ResumeChannel, member: ResumeMember) -> None:
        """
        The member's id is gone: the replay, or a close with 4410.
        """
        if self.miss == "close":
            member.shutdown(RESUME_GONE, RESUME_GONE_REASON)
            return
        self._admit(channel, member, self.replayed())

    def enveloped(self, opcode: int, payload: bytes, sourceId: str) -> bytes:
        """
        @return: A message from the source's history, framed in its
            envelope as L{add} frames it.
        """
        return frame(_TEXT, envelope(sourceId, opcode, payload))
