# -*- test-case-name: tests.test_fanout,tests.test_fanout_units,tests.test_inmemory -*-
"""
A fan-out channel: one source (an L{ISource}: the built-in C{websocket}
one, or a plugin's), shared by every client of the channel.

A L{Channel} is the L{ISourceChannel} its source feeds: it frames each
message once (L{wsrelay.ws.framing.frame}), gathers what its source
delivers during one reactor turn (or C{write_delay} milliseconds), and
then writes the same bytes to every member (a
L{wsrelay.fanout.members.FanoutSession}) in one write.  Payloads are never
decoded here.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING
from typing import Protocol as TypingProtocol

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from wsrelay.fanout.direct import Members
from wsrelay.fanout.lifecycle import (
    ENDED,
    Linger,
    Replaced,
    sourceChanged,
    stopSource,
)
from wsrelay.fanout.pending import Pending
from wsrelay.fanout.resume import resumeWindow, withoutParameter
from wsrelay.fanout.source import CONNECTING, IDLE, STOPPED, UP, WAITING
from wsrelay.interfaces import (
    ISource,
    ISourceChannel,
    ISourceHistory,
    ISourceSuccessor,
)
from wsrelay.routing import Backend, Route
from wsrelay.ws.framing import frame

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime
    from twisted.internet.tcp import Connection

    from wsrelay.config import FanoutRouteConfig
    from wsrelay.roles import SessionRegistry

#: Makes a channel's source (L{wsrelay.registry.Sessions} gives one that
#: builds the plugin its route names).
SourceMaker = Callable[["Channel"], ISource]

__all__ = [
    "CONNECTING",
    "IDLE",
    "STOPPED",
    "UP",
    "WAITING",
    "Channel",
    "SourceMaker",
    "channelKey",
]


def channelKey(route: Route, remainder: str, query: str) -> str:
    """
    @return: The channel a client of C{route} joins: C{""} for the whole
        route, or its path remainder and query with C{channel = path}.
        The query is without the parameters that say where a client
        resumes (C{resume_param}) and those that carry its credentials
        (the route's authorizer's C{credentialParameters}): clients with
        different tokens share a channel, and the channel's source, which
        is asked for the key, never gets one client's token.
    """
    config = route.config
    if config.mode != "fanout" or config.channel == "route":
        return ""
    if query:
        if config.resume is not None:
            # Where a client resumes is not which channel it joins.
            query = withoutParameter(query, config.resumeParam)
        for name in getattr(route.authorizer, "credentialParameters", ()):
            query = withoutParameter(query, name)
    return remainder + ("?" + query if query else "")


class Member(TypingProtocol):
    """
    What a channel uses of a member (L{wsrelay.fanout.members.FanoutSession}).
    """

    #: The channel's count of messages from the source when the member
    #: joined, less the replay it got.
    mark: int

    #: The descriptor of the member's socket while L{Pending.flush} may
    #: write to it at once, else L{None}: then it calls L{send}.
    descriptor: int | None

    #: The member's TCP connection, while L{descriptor} is set.
    tcp: Connection | None

    def send(self, data: bytes, count: int = 1) -> None:
        """
        Write C{count} framed messages, or queue them.
        """

    def shutdown(self, code: int = 1001, reason: bytes = b"") -> None:
        """
        Close the client.
        """


@implementer(ISourceChannel)
class Channel:
    """
    One shared source and the clients that receive what it delivers.

    @ivar state: L{IDLE}, L{CONNECTING}, L{UP}, L{WAITING} (to reconnect)
        or L{STOPPED}: the source's, as it reports it, while it runs.
    @ivar members: The clients, in the order they joined.
    @ivar messagesIn: Messages received from the source.
    @ivar deliveries: Messages written or queued to a client.
    @ivar slowDrops: Messages skipped for slow clients.
    @ivar slowCloses: Clients closed for being slow.
    @ivar clientDrops: Client messages not forwarded.
    @ivar connects: Times the source came up (upstream connections opened,
        for the C{websocket} source).
    @ivar source: Where the messages come from (an L{ISource}).
    """

    log = Logger()

    def __init__(
        self,
        route: Route,
        key: str,
        registry: SessionRegistry,
        clock: IReactorTime,
        makeSource: SourceMaker,
        reactor: IReactorTime | None = None,
    ) -> None:
        """
        @param registry: Told when the channel ends.
        @param makeSource: Makes the channel's source, given the channel.
        @param reactor: Whose turns L{flush} follows; C{clock} by default.
        """
        self.registry = registry
        self._route = route
        self.key = key
        self.state = IDLE
        self.members = Members()
        #: With C{resume}: the window that ids, frames and keeps messages.
        self.window = resumeWindow(self.routeConfig, clock)
        self.replay: deque[bytes] = (
            deque(maxlen=self.routeConfig.replay)
            if self.window is None
            else self.window.data
        )
        self.messagesIn = 0
        self.deliveries = 0
        self.slowDrops = 0
        self.slowCloses = 0
        self.clientDrops = 0
        self.connects = 0
        self._linger = Linger(clock)
        self._pending = Pending(clock if reactor is None else reactor)
        #: Whether the source was started and not stopped since.
        self._running = False
        self.retired = False
        self._makeSource = makeSource
        self._replaced = Replaced()
        self.source: ISource = makeSource(self)
        _lendHistory(self)

    @property
    def route(self) -> Route:
        """
        The route, swapped whole on reload.
        """
        return self._route

    @route.setter
    def route(self, route: Route) -> None:
        """
        Take the reloaded C{route}; when it names another source or other
        source options, the source is replaced (the old one stopped, the
        new one started if the old one ran).  The C{websocket} source reads
        its route's backends and settings as it connects, so it stays.
        """
        previous, self._route = self._route, route
        if sourceChanged(previous.config, route.config):
            _replaceSource(self, previous)

    @property
    def name(self) -> str:
        """
        The route's name and the channel's key, for logs.
        """
        return self.route.name + self.key

    @property
    def routeConfig(self) -> FanoutRouteConfig:
        """
        The configuration of L{route}: a fan-out route's, the only kind
        that has channels.
        """
        config = self.route.config
        if config.mode != "fanout":
            raise TypeError(f"route {config.name!r} is not a fan-out route")
        return config

    @property
    def backend(self) -> Backend | None:
        """
        The backend the source is connected to, when it has one (the
        C{websocket} source's), for the admin API and for moving the
        channel off a disabled backend; else L{None}.
        """
        backend: Backend | None = getattr(self.source, "backend", None)
        return backend

    # Members.

    def join(self, member: Member, since: str | None = None) -> None:
        """
        Add a client: it gets the replay now (or, resuming after the
        message C{since}, what it missed: L{wsrelay.fanout.resume}), then
        every message (the others get what is pending first).
        """
        self.flush()
        self._linger.cancel()
        if not self._running and self.state != STOPPED:
            # Before the window looks up C{since}: a source's history
            # answers only while the source runs.
            self.start()
        window = self.window
        if window is not None:
            window.join(self, member, since)
        else:
            for data in self.replay:
                member.send(data)
            self.deliveries += len(self.replay)
            member.mark = self.messagesIn - len(self.replay)
            self.members[member] = None

    def leave(self, member: Member) -> None:
        """
        Remove a client whose connection is gone (what is pending is not
        written to it: nothing would read it, and a slow client's queue
        would only fill); the last one out of a lazy channel starts the
        linger time.
        """
        self.members.pop(member, None)
        if not self.members and self.retired:
            self.retire()
            return
        if not self.members and self._lazy() and self.state != STOPPED:
            self._linger.start(self.routeConfig.linger, self._lingerEnded)

    def _lazy(self) -> bool:
        return self.routeConfig.connect == "lazy" or self.routeConfig.channel == "path"

    def _lingerEnded(self) -> None:
        """
        No client came back: stop the source.
        """
        if self.members:
            return
        self.log.info("channel {channel}: no clients, closing", channel=self.name)
        self._halt(IDLE, 1000, b"no clients")
        if self.routeConfig.channel == "path":
            self._end()

    # The source.

    def start(self) -> None:
        """
        Start the source, which keeps delivering (reconnecting after a loss
        or a failed attempt) until stopped.
        """
        if self._running:
            return
        self._running = True
        self.state = CONNECTING
        if self.window is not None:
            self.window.sourceStarted()
        self.source.start()

    def deliver(self, messages: Sequence[tuple[int, bytes, str | None]]) -> None:
        """
        Messages from the source (what one read gave it): each is framed
        once and kept for the replay; they wait with the others of this
        reactor turn (or C{write_delay}) until L{flush} writes them.  The
        per-message path: nothing else happens here.
        """
        window = self.window
        if window is None:
            framed = [frame(opcode, payload) for opcode, payload, _ in messages]
            self.replay.extend(framed)
        else:
            framed = [window.add(*message) for message in messages]
        if not framed:
            return
        self.messagesIn += len(framed)
        if self.members:
            self._pending.add(self, framed)

    def flush(self) -> None:
        """
        Write what is pending (L{Pending}), at the end of the turn and
        before a client joins, leaves or is closed, or the source stops.
        """
        self._pending.flush(self)

    @property
    def keep(self) -> int:
        """
        Messages the channel keeps: its resume window's, or its replay's.
        """
        kept = self.replay.maxlen
        return 0 if kept is None else kept

    def preload(self, messages: Sequence[tuple[int, bytes, str | None]]) -> None:
        """
        The messages the source's store held before the live ones: the
        replay and resume window start with them; no member gets them now.
        """
        window = self.window
        if window is not None:
            window.preload(messages)
            return
        self.replay.clear()
        self.replay.extend(frame(opcode, payload) for opcode, payload, _ in messages)

    def stateChanged(self, state: str) -> None:
        """
        The source's state changed: shown as the channel's while the source
        runs.
        """
        if not self._running:
            return
        self.state = state
        if state == UP:
            self.connects += 1
            if self.window is not None:
                self.window.sourceUp()

    def sendUpstream(self, opcode: int, payload: bytes) -> None:
        """
        A client's whole message for the source (C{client_messages =
        forward}); counted as dropped when the source does not take it.
        """
        if not self.source.send(opcode, payload):
            self.clientDrops += 1

    # Stopping.

    def stop(self) -> Deferred[None]:
        """
        Stop the source for good (the relay stops).

        @return: A L{Deferred} that fires when the source stopped
            (L{ISource.stop}), and those it replaced on reload.
        """
        return self._replaced.wait(self._halt(STOPPED))

    def moveOff(self) -> None:
        """
        The source's backend is being disabled: the source moves to another
        backend (with C{moveOff}, when it has one); the clients stay.
        """
        moveOff = getattr(self.source, "moveOff", None)
        if moveOff is not None:
            moveOff()

    def retire(self) -> None:
        """
        The route is gone (a reload removed it): serve the clients there
        are, and close once the last has left.
        """
        self.retired = True
        if not self.members:
            self._halt(IDLE, 1000, b"route removed")
            self._end()

    def _halt(
        self, state: str, code: int | None = None, reason: bytes = b""
    ) -> Deferred[None]:
        """
        Stop the source, with a close code and reason for a source that
        takes them (C{stopWith}); what it delivered is written first.
        """
        self.flush()
        self._linger.cancel()
        self.state = state
        self._running = False
        if self.window is not None:
            self.window.sourceStopped()
        return stopSource(self.source, code, reason)

    def _end(self) -> None:
        """
        The channel ended: the registry forgets it, and it lets go of its
        source, which holds it, also through the resume window's history
        (reference counting frees both once the source's connections are
        gone).
        """
        self.registry.channelEnded(self)
        self.source = ENDED
        if self.window is not None:
            # Its history is the source's, which holds the channel.
            self.window.close()


def _lendHistory(channel: Channel) -> None:
    """
    Let the channel's resume window ask its source for what it keeps, when
    the source keeps a history (L{ISourceHistory}).
    """
    if channel.window is not None:
        channel.window.history = ISourceHistory(channel.source, None)


def _replaceSource(channel: Channel, previous: Route) -> None:
    """
    The half of L{Channel.route}'s setter that replaces the channel's
    source for its reloaded route (kept apart: the reload is not the
    message path).  When the new source refuses its options for this
    channel (its key expanded in them), the channel goes on with its
    source and C{previous}, and says why in one line.
    """
    try:
        source = channel._makeSource(channel)
    except ValueError as e:
        channel._route = previous
        channel.log.error(
            "channel {channel}: keeps its source and its route as they"
            " were: the reloaded source options do not fit it: {error}",
            channel=channel.name,
            error=" ".join(str(e).split()),
        )
        return
    running, channel._running = channel._running, False
    if channel.window is not None:
        channel.window.sourceStopped()
    old = channel.source
    channel._replaced.stop(old)
    channel.state = IDLE
    channel.source = source
    successor = ISourceSuccessor(source, None)
    if successor is not None:
        successor.takeOver(old)
    _lendHistory(channel)
    if running:
        channel.start()
