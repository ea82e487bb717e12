# -*- test-case-name: tests.test_redis_ingest -*-
"""
The C{redis} source's ingest (C{ingest = on}): one relay of the cluster
feeds the stream from the route's C{backends}.

The relays of the route compete for a lease (L{wsrelay.redis.lease}) on
the key C{STREAM:lease}.  Only the holder connects to the backends, through
the route's built-in C{websocket} source (L{ISourceContext.websocket}:
balancer, health checks and backoff as for any fan-out route), which
delivers here; each batch of messages becomes stream entries, in order, on
the connection the lease was taken on, as C{XADD STREAM MAXLEN ~ HISTORY *
data PAYLOAD type text|binary} for each message.  The C{XADD}s run inside
one Lua script per batch that first checks that the lease's key still holds
this relay's token: an old holder whose lease expired in Redis (a holder
stalled past its own deadline) writes nothing, so two holders never both
write.  The relay's readers (this one's included) read the stream as any
relay does.  The script runs by its id (C{EVALSHA}); a batch Redis answers
C{NOSCRIPT} (its script cache flushed) did not run, and is sent once more
with the script's body (C{EVAL}, which loads it again).  That retry goes
out after any batch already sent behind it, which wrote nothing either
(also C{NOSCRIPT}) unless someone else loaded the very same script in
between: the batches stay in order in practice.

Delivery is at most once.  When the lease is lost (a renewal failed,
refused or late; a batch refused for want of the lease; the connection to
Redis lost), the websocket source is stopped at once and whatever it still
delivers is dropped; batches already sent to Redis are not sent again
(they were written, or not, once).  The next holder connects anew and goes
on from what the source sends it then.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from wsrelay.interfaces import ISource, ISourceChannel, ISourceContext
from wsrelay.redis.client import RedisAddress, RedisClient
from wsrelay.redis.lease import Lease, evalSha, scriptId
from wsrelay.redis.protocol import RedisConnectionLost, RedisProtocol, Reply

#: Append a batch of messages to the stream, only while the lease is this
#: relay's: KEYS = lease, stream; ARGV = token, history, then data and type
#: of each message.  Answers the number of entries added, or -1 (no lease).
XADD = b"""\
if redis.call('get', KEYS[1]) ~= ARGV[1] then
  return -1
end
for i = 3, #ARGV, 2 do
  redis.call('xadd', KEYS[2], 'MAXLEN', '~', ARGV[2], '*',
             'data', ARGV[i], 'type', ARGV[i + 1])
end
return (#ARGV - 2) / 2"""

#: The script's id for C{EVALSHA}.
XADD_ID = scriptId(XADD)

#: The suffix of the lease's key after the stream's.
LEASE_SUFFIX = ":lease"

#: An entry's C{type} by opcode (text 1, binary 2).
TYPES = (b"", b"text", b"binary")


@implementer(ISourceChannel)
class Ingest:
    """
    The ingest of one channel of a C{redis} source with C{ingest = on}
    (see the module's docstring).  To the route's websocket source it is
    the channel it delivers to.

    @ivar name: The channel's name (the websocket source logs with it).
    @ivar key: The channel's key (the websocket source asks its backends
        for the same path).
    @ivar lease: The lease.
    @ivar upstream: The websocket source's state (C{"idle"} while this
        relay does not hold the lease).
    @ivar written: Entries written.
    @ivar dropped: Messages dropped: delivered while the lease was not
        held, or in a batch that failed or was refused.
    @ivar lastError: The last failed batch's error, one line, or L{None}.
    """

    log = Logger()

    def __init__(
        self,
        channel: ISourceChannel,
        context: ISourceContext,
        client: RedisClient,
        stream: str,
        history: int,
        lease: float,
    ) -> None:
        """
        @param channel: The channel the C{redis} source feeds (its name and
            key only: the messages reach it through the stream).
        @param context: Lends the websocket source and the clock.
        @param client: The ingest's own connection to Redis (apart from
            the reader's, which blocks in C{XREAD}).
        @param stream: The stream's key.
        @param history: C{MAXLEN ~} of each C{XADD}.
        @param lease: Seconds the lease lasts unless renewed.
        """
        self.name = channel.name
        self.key = channel.key
        self._context = context
        self._client = client
        self._stream = stream.encode("utf-8")
        self._history = b"%d" % history
        self.lease = Lease(
            context.reactor,
            self._connection,
            self._stream + LEASE_SUFFIX.encode("ascii"),
            lease,
            f"channel {channel.name}",
            self._acquired,
            self._lost,
        )
        self.upstream = "idle"
        self.written = 0
        self.dropped = 0
        self.lastError: str | None = None
        self._redis: RedisProtocol | None = None
        self._source: ISource | None = None
        self._stopping: Deferred[None] = succeed(None)
        #: Whether started (and not stopped since).
        self._started = False
        #: Stops whose connection is not closed yet: a start waits for
        #: them, lest a stop's late C{client.stop()} close the connection
        #: the new start took the lease on.
        self._closing = 0

    def _connection(self) -> Deferred[RedisProtocol]:
        """
        @return: The ingest's connection to Redis, when there is one.
        """
        self._client.start()
        return self._client.connection()

    def start(self) -> None:
        """
        Compete for the lease; ingest while holding it.  After a stop, only
        once its connection is closed.
        """
        self._started = True
        if not self._closing:
            self.lease.start()

    def stop(self) -> Deferred[None]:
        """
        Stop ingesting, release the lease if held, and close the
        connection.

        @return: A L{Deferred} that fires once all of that is done.
        """
        self._started = False
        self._closing += 1
        released = self.lease.stop()
        stopping = self._stopping
        d = gatherResults([released, stopping])
        d.addBoth(lambda _: self._client.stop())
        return d.addBoth(self._closed)

    def _closed(self, _: object) -> None:
        """
        A stop is done: if started meanwhile, compete for the lease now.
        """
        self._closing -= 1
        if self._started and not self._closing:
            self.lease.start()

    def send(self, opcode: int, payload: bytes) -> bool:
        """
        A client's message for the source: sent on when this relay holds
        the lease and its websocket source takes it.
        """
        source = self._source
        if self._redis is None or source is None:
            return False
        return source.send(opcode, payload)

    def status(self) -> dict[str, int | float | str | None]:
        """
        The ingest's counters and gauges, merged into the C{redis}
        source's (L{wsrelay.interfaces.ISourceStatus}): whether this relay
        holds the lease (C{lease_held}, 0 or 1: its sum over the cluster
        should be 1), times it took and lost it, entries written and
        messages dropped, and its websocket source's state.
        """
        lease = self.lease
        return {
            "lease_held": int(lease.held),
            "lease_acquired_total": lease.acquired,
            "lease_lost_total": lease.lost,
            "ingest_written_total": self.written,
            "ingest_dropped_total": self.dropped,
            "ingest_upstream": self.upstream,
            "ingest_last_error": self.lastError,
        }

    # The lease

    def _acquired(self, connection: RedisProtocol) -> None:
        """
        The lease is this relay's: load the script on its connection
        (ahead of the first batch), and connect to the backends.
        """
        self._redis = connection
        connection.execute("SCRIPT", "LOAD", XADD).addErrback(lambda _: None)
        source = self._source
        if source is None:
            source = self._source = self._context.websocket(self)
        # Start only once the previous stop is done (a quick loss and
        # gain of the lease).
        self._stopping.addCallback(lambda _: self._startSource(connection))

    def _startSource(self, connection: RedisProtocol) -> None:
        """
        Start the websocket source if the lease taken on C{connection} is still held.
        """
        if self._redis is connection and self._source is not None:
            self._source.start()

    def _lost(self) -> None:
        """
        The lease is lost or released: stop writing and the websocket
        source at once.
        """
        self._redis = None
        source = self._source
        if source is not None:
            stopping = source.stop()
            self._stopping = gatherResults([self._stopping, stopping]).addBoth(
                lambda _: None
            )
        self.upstream = "idle"

    # ISourceChannel (what the websocket source delivers to)

    def deliver(self, messages: Sequence[tuple[int, bytes, str | None]]) -> None:
        """
        Write a batch of messages to the stream, in order, if this relay
        still holds the lease; else drop it.
        """
        redis = self._redis
        if redis is None:
            self.dropped += len(messages)
            return
        args: list[Any] = [2, self.lease.key, self._stream]
        args += (self.lease.token, self._history)
        for opcode, payload, _ in messages:
            args += (payload, TYPES[opcode])
        evalSha(redis, XADD, *args).addCallbacks(
            self._written,
            self._failed,
            callbackArgs=(len(messages),),
            errbackArgs=(len(messages),),
        )

    #: The websocket source preloads nothing.
    keep = 0

    def preload(self, messages: Sequence[tuple[int, bytes, str | None]]) -> None:
        """
        Never called: the websocket source has no store of past messages.
        """

    def stateChanged(self, state: str) -> None:
        """
        The websocket source's state, for C{/status}.
        """
        self.upstream = state

    def _written(self, reply: Reply, count: int) -> None:
        """
        A batch answered: written, or refused for want of the lease.
        """
        if reply == count:
            self.written += count
            return
        self.dropped += count
        if reply == -1:
            self.lease.lose("a write found the lease no longer this relay's")

    def _failed(self, f: Failure, count: int) -> None:
        """
        A batch failed: dropped, and its error logged once.
        """
        self.dropped += count
        if f.check(RedisConnectionLost):
            # The lease sees it too, and stops the ingest.
            return
        error = " ".join(f.getErrorMessage().split())
        if error != self.lastError:
            self.lastError = error
            self.log.error(
                "channel {channel}: cannot write to stream {stream}: {error}",
                channel=self.name,
                stream=self._stream.decode("utf-8", "replace"),
                error=error,
            )


def ingestFor(
    channel: ISourceChannel,
    context: ISourceContext,
    address: RedisAddress,
    endpoint: IStreamClientEndpoint,
    retry: Callable[[int], float],
    stream: str,
    history: int,
    lease: float,
) -> Ingest:
    """
    The ingest of a C{redis} source with C{ingest = on}, with a connection
    of its own to Redis.

    @param endpoint: Reaches C{address}.
    @param retry: The reconnection backoff.
    @raise ValueError: When the route has no C{backends} to ingest from
        (known when the context says, as its C{backends}).
    """
    backends = getattr(context, "backends", None)
    if backends is not None and not backends:
        raise ValueError(
            "backends: missing: ingest = on feeds the stream from the route's backends"
        )
    client = RedisClient(
        context.reactor, address, endpoint, f"{channel.name} (ingest)", retry
    )
    return Ingest(channel, context, client, stream, history, lease)
