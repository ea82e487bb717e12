# -*- test-case-name: tests.test_fanout,tests.test_inmemory -*-
"""
A fan-out channel's members: L{FanoutSession}, one client's membership,
with its own small queue for the time its connection cannot keep up.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, cast

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from wsrelay.fanout.channel import Channel
from wsrelay.fanout.resume import sinceOf
from wsrelay.ws.framing import Assembler
from wsrelay.ws.writes import tcpConnection

if TYPE_CHECKING:
    from twisted.internet.interfaces import IConsumer, IReactorTime
    from twisted.internet.tcp import Connection

    from wsrelay.config import RelayConfig
    from wsrelay.roles import SessionRegistry
    from wsrelay.stats import Histogram
    from wsrelay.ws.frontend import ClientAddresses, FrontendProtocol


@implementer(IPushProducer)
class FanoutSession:
    """
    One client of a channel.

    Registered as the producer of the client's transport, it learns when
    the transport's buffer is full (C{pauseProducing}) and queues messages
    itself from then on, up to C{max_client_buffer}; beyond that the
    route's C{slow_client} policy applies.

    @ivar queued: Bytes in the queue.
    @ivar dropped: Messages skipped for this client.
    @ivar descriptor: The file descriptor of the client's socket while the
        channel may write to it at once
        (L{wsrelay.fanout.pending.Pending.flush}): the client joined, its
        transport is a plain TCP connection (L{tcp}), and it is neither
        paused, being closed nor gone; else L{None}, and the channel calls
        L{send}.  Kept up to date here (L{_direct}), and each change told
        to the channel's members, whose plan of the writes
        (L{wsrelay.fanout.direct.Plan}) is then made again.
    @ivar tcp: The client's TCP connection, when its transport is one (or
        a PROXY protocol wrapper over one); L{None} for TLS.  Whether it is
        connected and what Twisted queues in it can change behind the
        member's back (its leg writes control frames too), so the channel
        checks them before each flush.
    """

    log = Logger()

    def __init__(
        self,
        channel: Channel,
        frontend: FrontendProtocol,
        *,
        registry: SessionRegistry,
        addresses: ClientAddresses,
        clock: IReactorTime,
        config: RelayConfig,
        latency: Histogram,
    ) -> None:
        """
        @param registry: Told when the client is gone.
        @param addresses: Says who the client is (for the access log).
        @param clock: Times the session.
        @param config: The relay's configuration when the client came.
        @param latency: Where the handshake's duration goes.
        """
        self.registry = registry
        self.addresses = addresses
        self.clock = clock
        self.config = config
        self.latency = latency
        self.channel = channel
        self.frontend = frontend
        self.startedAt = clock.seconds()
        self.openedAt = self.startedAt
        self.mark = 0
        self.route = channel.route
        self.done: Deferred[None] = Deferred()
        #: What waits while the client is slow; made when first needed (an
        #: empty deque is 600 bytes, and most clients never wait).
        self.queue: deque[bytes] | None = None
        self.queued = 0
        #: The client's address for the access log, taken as it joins.
        self.peer: str | None = None
        self.dropped = 0
        self.backend = None
        self._limit = channel.routeConfig.maxClientBuffer
        self._close = channel.routeConfig.slowClient == "close"
        self._forward = channel.routeConfig.clientMessages == "forward"
        self._paused = False
        self._joined = False
        self._closing = False
        self._write: Any = None
        self.tcp: Connection | None = None
        self.descriptor: int | None = None
        #: The socket's descriptor, that L{descriptor} is while it may be
        #: used.
        self._descriptor: int | None = None
        self._message = Assembler()
        frontend.session = self
        frontend.listener = self
        frontend.target = self

    def open(self) -> Deferred[tuple[str | None, dict[str, list[str]]]]:
        """
        Accept the client at once; it waits for the source if need be.
        """
        return succeed((None, {}))

    def clientOpened(self) -> None:
        """
        The client got its 101: join the channel.
        """
        transport = self.frontend.transport
        assert transport is not None
        frontend = self.frontend
        if self.config.accessLog:
            self.peer = self.addresses.clientAddress(frontend)
        frontend.forgetHandshake()
        self._write = frontend.writer()
        tcp = self.tcp = tcpConnection(transport)
        if tcp is not None:
            self._descriptor = tcp.socket.fileno()
        cast("IConsumer", transport).registerProducer(self, True)
        self._joined = True
        self._direct(self._descriptor)
        self.openedAt = self.clock.seconds()
        self.latency.observe(self.openedAt - self.startedAt)
        config = self.channel.routeConfig
        try:
            since = None
            if config.resume is not None:
                since = sinceOf(frontend.query, config.resumeParam)
            # The request's parsed head is not read again (a kilobyte per
            # held client).
            frontend.head = None
            self.channel.join(self, since)
        except Exception:
            # A bug: close the client rather than leave it open with no
            # membership (it leaves the channel as it goes: legClosed).
            self.log.failure(
                "channel {channel}: a client could not join", channel=self.channel.name
            )
            self.shutdown(1011, b"internal error")

    def _direct(self, descriptor: int | None) -> None:
        """
        Set L{descriptor}; the channel's plan of its writes is made again
        when it changes (L{wsrelay.fanout.direct.Members.changed}).
        """
        if descriptor != self.descriptor:
            self.descriptor = descriptor
            self.channel.members.changed()

    def send(self, data: bytes, count: int = 1) -> None:
        """
        Write C{count} framed messages, or queue them while the client is
        slow.
        """
        if not self._paused:
            self._write(data)
            return
        if self.queued + len(data) <= self._limit:
            queue = self.queue
            if queue is None:
                queue = self.queue = deque()
            queue.append(data)
            self.queued += len(data)
            return
        if self._close:
            self.channel.slowCloses += 1
            self.closing()
            self.frontend.closeWith(1013, b"client too slow")
            return
        self.dropped += count
        self.channel.slowDrops += count

    # IPushProducer, for the client's transport.

    def pauseProducing(self) -> None:
        """
        The client's transport holds more than it can send now (once the
        client is being closed, nothing is queued for it any more).
        """
        if not self._closing:
            self._paused = True
            self._direct(None)

    def resumeProducing(self) -> None:
        """
        The transport drained: write what was queued, until it fills up
        again.
        """
        self._paused = False
        queue = self.queue
        while queue and not self._paused:
            data = queue.popleft()
            self.queued -= len(data)
            self._write(data)
        if queue is not None and not queue:
            self.queue = None
        if not self._paused and not self._closing and self._joined:
            self._direct(self._descriptor)

    def stopProducing(self) -> None:
        """
        The connection is going: nothing more to write.
        """
        self.queue = None
        self.queued = 0
        self._direct(None)

    # Frames from the client.

    def forwardFrame(self, opcode: int, payload: bytes, fin: bool) -> None:
        """
        A frame from the client: forwarded upstream as a whole message with
        C{client_messages = forward}, else dropped.
        """
        if not self._forward:
            if fin:
                self.channel.clientDrops += 1
            return
        message = self._message.add(opcode, payload, fin)
        if message is None:
            return
        opcode, payload = message
        self.channel.sendUpstream(opcode, payload)

    # Closing: the relay is the client's peer.

    def closeReceived(self, leg: Any, code: int | None, reason: bytes | None) -> None:
        """
        The client closes: answer it, and send it nothing more.
        """
        self.closing()
        leg.replyClose(code, reason)

    def closeReplied(self, leg: Any, code: int | None, reason: bytes | None) -> None:
        """
        The client answered our close.
        """

    def legClosed(self, leg: Any) -> None:
        """
        The client is gone: leave the channel, and write nothing more (not
        what a channel writing to its members as it leaves still has).
        """
        self.queue = None
        self.queued = 0
        self._direct(None)
        self._write = _discard
        if self._joined:
            window = self.channel.window
            if window is not None:
                window.forget(self)
            self.channel.leave(self)
            self._logAccess()
        self.registry.sessionEnded(self)
        if not self.done.called:
            self.done.callback(None)

    def _logAccess(self) -> None:
        """
        One event per client, when it leaves the channel.
        """
        if not self.config.accessLog:
            return
        f = self.frontend
        self.log.info(
            "{client} {route} fanout {duration:.3f}s in {messagesIn}/{bytesIn}"
            " out {messagesOut} dropped {dropped} close {closeCode}",
            event="access",
            client=self.peer,
            route=self.route.name,
            channel=self.channel.key,
            duration=self.clock.seconds() - self.openedAt,
            messagesIn=f.messagesIn,
            bytesIn=f.bytesIn,
            messagesOut=self.channel.messagesIn - self.mark - self.dropped,
            dropped=self.dropped,
            closeCode=f.remoteCloseCode or f.localCloseCode,
        )

    def shutdown(
        self, code: int = 1001, reason: bytes = b"relay shutting down"
    ) -> None:
        """
        Close the client: nothing more is sent after the close frame.
        """
        self.closing()
        self.frontend.closeWith(code, reason)

    def closing(self) -> None:
        """
        A close frame is about to go to the client: no data frame may
        follow it (RFC 6455, 5.5.1), so what the channel sends from now on
        goes nowhere, and nothing more is queued.  What the channel has
        pending goes first: the client got it before its close when the
        channel wrote at once.
        """
        if self._joined and not self._closing:
            self.channel.flush()
        self._closing = True
        self.queue = None
        self.queued = 0
        self._paused = False
        self._direct(None)
        self._write = _discard


def _discard(data: bytes) -> None:
    """
    Write nowhere: the client is being closed.
    """
