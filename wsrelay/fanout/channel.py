# -*- test-case-name: tests.test_fanout,tests.test_fanout_units,tests.test_inmemory -*-
"""
A fan-out channel: one upstream connection to a source, shared by every
client of the channel.

A L{Channel} holds the upstream, frames each message from the source once
(L{wsrelay.ws.framing.frame}) and writes the same bytes to every member (a
L{wsrelay.fanout.members.FanoutSession}).  Payloads are never decoded here.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any
from typing import Protocol as TypingProtocol

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from wsrelay.fanout.resume import resumeWindow, withoutParameter
from wsrelay.fanout.source import (
    CONNECTING,
    IDLE,
    STOPPED,
    UP,
    WAITING,
    SourceLink,
)
from wsrelay.routing import Backend, Route
from wsrelay.ws.framing import Assembler, frame
from wsrelay.ws.legclosing import OPEN

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IProtocol, IReactorTime

    from wsrelay.config import FanoutRouteConfig
    from wsrelay.roles import SessionRegistry, Upstreams
    from wsrelay.ws.upstream import UpstreamProtocol

__all__ = ["CONNECTING", "IDLE", "STOPPED", "UP", "WAITING", "Channel", "channelKey"]


def channelKey(route: Route, remainder: str, query: str) -> str:
    """
    @return: The channel a client of C{route} joins: C{""} for the whole
        route, or its path remainder and query with C{channel = path}.
    """
    config = route.config
    if config.mode != "fanout" or config.channel == "route":
        return ""
    if config.resume is not None:
        # Where a client resumes is not which channel it joins.
        query = withoutParameter(query, config.resumeParam)
    return remainder + ("?" + query if query else "")


class Member(TypingProtocol):
    """
    What a channel uses of a member (L{wsrelay.fanout.members.FanoutSession}).
    """

    #: The channel's count of messages from the source when the member
    #: joined, less the replay it got.
    mark: int

    def send(self, data: bytes, count: int = 1) -> None:
        """
        Write C{count} framed messages, or queue them.
        """

    def shutdown(self, code: int = 1001, reason: bytes = b"") -> None:
        """
        Close the client.
        """


class Channel:
    """
    One shared upstream and the clients that receive what it sends.

    @ivar state: L{IDLE}, L{CONNECTING}, L{UP}, L{WAITING} (to reconnect)
        or L{STOPPED}.
    @ivar members: The clients, in the order they joined.
    @ivar backend: The backend of the current upstream.
    @ivar messagesIn: Messages received from the source.
    @ivar deliveries: Messages written or queued to a client.
    @ivar slowDrops: Messages skipped for slow clients.
    @ivar slowCloses: Clients closed for being slow.
    @ivar clientDrops: Client messages not forwarded.
    @ivar connects: Upstream connections opened.
    @ivar source: Keeps the upstream connected (L{SourceLink}).
    @ivar batch: While a read from the source is parsed (L{SourceReader}),
        the messages it completed, framed; else L{None}.
    """

    log = Logger()

    def __init__(
        self,
        route: Route,
        key: str,
        upstreams: Upstreams,
        registry: SessionRegistry,
        clock: IReactorTime,
    ) -> None:
        """
        @param upstreams: Opens the source's connection.
        @param registry: Told when the channel ends.
        """
        self.upstreams = upstreams
        self.registry = registry
        self.route = route
        self.key = key
        self.state = IDLE
        self.members: dict[Member, None] = {}
        self.upstream: UpstreamProtocol | None = None
        self.backend: Backend | None = None
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
        #: Connects to the source and reconnects after a loss or a failed
        #: attempt.
        self.source = SourceLink(self, upstreams, clock)
        self._clock = clock
        self._message = Assembler()
        #: The connection of the upstream closed on purpose (L{_halt}).
        self._closingConnection: IProtocol | None = None
        self._linger: IDelayedCall | None = None
        self._gone: Deferred[None] | None = None
        self._closing: UpstreamProtocol | None = None
        self.batch: list[bytes] | None = None
        self.retired = False

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

    # Members.

    def join(self, member: Member, since: str | None = None) -> None:
        """
        Add a client: it gets the replay now (or, resuming after the
        message C{since}, what it missed: L{wsrelay.fanout.resume}), then
        every message.
        """
        window = self.window
        if window is not None:
            window.join(self, member, since)
        else:
            for data in self.replay:
                member.send(data)
            self.deliveries += len(self.replay)
            member.mark = self.messagesIn - len(self.replay)
            self.members[member] = None
        self._cancelLinger()
        if self.state == IDLE:
            self.start()

    def leave(self, member: Member) -> None:
        """
        Remove a client; the last one out of a lazy channel starts the
        linger time.
        """
        self.members.pop(member, None)
        if not self.members and self.retired:
            self.retire()
            return
        if not self.members and self._lazy() and self.state != STOPPED:
            self._cancelLinger()
            self._linger = self._clock.callLater(
                self.routeConfig.linger, self._lingerEnded
            )

    def _lazy(self) -> bool:
        config = self.routeConfig
        return config.connect == "lazy" or config.channel == "path"

    def _lingerEnded(self) -> None:
        """
        No client came back: close the upstream.
        """
        self._linger = None
        if self.members:
            return
        self.log.info("channel {channel}: no clients, closing", channel=self.name)
        self._halt(IDLE, 1000, b"no clients")
        if self.routeConfig.channel == "path":
            self.registry.channelEnded(self)

    # The upstream.

    def start(self) -> None:
        """
        Connect to the source, and keep connecting after a loss or a failed
        attempt (L{SourceLink}).
        """
        self.source.start()

    def forwardFrame(self, opcode: int, payload: bytes, fin: bool) -> None:
        """
        A frame from the source: once its message is whole, frame it once
        and hand the bytes to every member.
        """
        message = self._message.add(opcode, payload, fin)
        if message is None:
            return
        opcode, payload = message
        window = self.window
        if window is None:
            data = frame(opcode, payload)
            self.replay.append(data)
        else:
            data = window.add(opcode, payload, None)
        self.messagesIn += 1
        batch = self.batch
        if batch is not None:
            batch.append(data)
            return
        self.deliveries += len(self.members)
        for member in self.members:
            member.send(data)

    def sendUpstream(self, opcode: int, payload: bytes) -> None:
        """
        A client's whole message for the source (C{client_messages =
        forward}); dropped while the source is not connected.
        """
        up = self.upstream
        if up is None or up.state != OPEN:
            self.clientDrops += 1
            return
        up.forwardFrame(opcode, payload, True)

    # The upstream's close handshake: the relay is its only client.

    def closeReceived(self, leg: Any, code: int | None, reason: bytes | None) -> None:
        """
        The source closes: answer, and treat it as a failure (the clients
        stay and wait for the next source).
        """
        leg.replyClose(code, reason)

    def closeReplied(self, leg: Any, code: int | None, reason: bytes | None) -> None:
        """
        The source answered our close.
        """

    def legClosed(self, leg: Any) -> None:
        """
        The upstream is gone: reconnect unless it was closed on purpose.
        """
        if leg is not None and leg is self._closing:
            # An upstream closed on purpose (see _halt) is gone.
            self._closing = None
            connection, self._closingConnection = self._closingConnection, None
            if connection is not None:
                connection.connectionLost(Failure(ConnectionDone()))
            gone, self._gone = self._gone, None
            if gone is not None:
                gone.callback(None)
            return
        if leg is None or leg is not self.upstream:
            return
        backend = self.backend
        self._release()
        source = self.source
        connection, source.connection = source.connection, None
        if self.state != UP:
            return
        self.log.warn(
            "channel {channel}: source {backend} lost (close code {code})",
            channel=self.name,
            backend=backend.name if backend else None,
            code=getattr(leg, "remoteCloseCode", None),
        )
        if backend is not None and not getattr(leg, "wasClean", False):
            self.upstreams.backendFailed(self.route, backend, "connection lost")
        source.lost = backend
        self.state = WAITING
        if connection is not None:
            # The service waits, then connects again.
            connection.connectionLost(Failure(ConnectionDone()))

    # Stopping.

    def stop(self) -> Deferred[None]:
        """
        Close the upstream for good (the relay stops).

        @return: A L{Deferred} that fires when the upstream is gone.
        """
        gone: Deferred[None] = Deferred()
        self._halt(STOPPED, 1001, b"relay shutting down")
        if self._closing is None:
            gone.callback(None)
        else:
            self._gone = gone
        return gone

    def moveOff(self) -> None:
        """
        The backend is being disabled: close the upstream with 1012 and
        connect to another backend; the clients stay.
        """
        up = self.upstream
        if up is not None and self.state == UP:
            self.source.lost = self.backend
            up.closeWith(1012, b"backend going away")

    def retire(self) -> None:
        """
        The route is gone (a reload removed it): serve the clients there
        are, and close once the last has left.
        """
        self.retired = True
        if not self.members:
            self._halt(IDLE, 1000, b"route removed")
            self.registry.channelEnded(self)

    def _halt(self, state: str, code: int, reason: bytes) -> None:
        self.state = state
        self._cancelLinger()
        up = self.upstream
        if up is not None:
            # It is no longer this channel's upstream, even while it closes:
            # a new one may open meanwhile (a lazy channel's next client).
            self._release()
            up.target = None
            self._closing = up
            source = self.source
            self._closingConnection, source.connection = source.connection, None
            up.closeWith(code, reason)
        self.source.stop()

    def _release(self) -> None:
        """
        Forget the upstream and give its backend's connection back.
        """
        backend = self.backend
        self.upstream = None
        self.backend = None
        self._message = Assembler()
        if backend is not None:
            backend.connections -= 1
            listener = self.route.loadListener
            if listener is not None:
                listener.connectionClosed(backend)

    def _cancelLinger(self) -> None:
        linger, self._linger = self._linger, None
        if linger is not None and linger.active():
            linger.cancel()
