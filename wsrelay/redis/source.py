# -*- test-case-name: tests.test_redis_source -*-
"""
The C{redis} fan-out source: a channel's messages read from a Redis stream.

The source reads with C{XREAD BLOCK} from the last entry it delivered (at
start, from the stream's end) and hands each reply's entries to the channel
in one L{ISourceChannel.deliver} call, each with its stream id.  Each
entry holds the message in its field C{data} (the payload's bytes) and
C{type} (C{text}, the default when absent, or C{binary})::

    redis-cli XADD wsrelay:feed MAXLEN '~' 10000 '*' data '{"seq": 1}' type text

A lost connection is made again with backoff (a server that does not
answer a read within L{BLOCK_MS} and L{REPLY_MARGIN}, or a login within
L{wsrelay.redis.client.CONNECT_TIMEOUT}, counts as lost) and reading goes
on from the last id delivered, so no entry comes twice or out of order;
when the stream no longer holds that id (trimmed past it, or Redis restarted
empty), the source counts a gap (L{RedisSource.gaps}) and goes on with the
entries after that id still in the stream.  While connected, it counts
a gap too when entries were trimmed before it read them (it fell behind
by more than the stream keeps; Redis 7's C{XINFO STREAM} tells, checked
with a read at most every L{CHECK_INTERVAL}, so a gap is counted up to
that and L{BLOCK_MS} late).  Entries without C{data}, with
another C{type}, or text that is not UTF-8 are skipped and counted
(L{RedisSource.skipped}).
A key of another type is an error logged in one line and retried with
backoff; clients stay connected throughout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from wsrelay.interfaces import (
    ISource,
    ISourceChannel,
    ISourceContext,
    ISourceHistory,
    ISourceStatus,
    ISourceSuccessor,
)
from wsrelay.redis.client import (
    BadRedisSetting,
    RedisAddress,
    RedisClient,
    redisBackoff,
    redisEndpoint,
)
from wsrelay.redis.entries import (
    entriesAfter,
    entryMessage,
    locate,
    newest,
    parseId,
)
from wsrelay.redis.ingest import Ingest, ingestFor
from wsrelay.redis.protocol import (
    ProtocolError,
    RedisConnectionLost,
    RedisError,
    RedisProtocol,
    Reply,
)
from wsrelay.redis.settings import parseSettings

#: Milliseconds one C{XREAD} waits for entries before asking again.
BLOCK_MS = 5000

#: Entries one C{XREAD} takes at most.
READ_COUNT = 500

#: Seconds an C{XREAD} may take beyond L{BLOCK_MS} before the server is
#: taken for gone (stopped, or the network cut) and the connection is
#: aborted and made again.
REPLY_MARGIN = 5.0

#: A script giving how many entries were ever added to the stream and the
#: last id given (Redis 7's C{XINFO STREAM}; no payload goes back), or
#: false (before Redis 7); none and C{0-0} without a stream: sent with
#: an C{XREAD}, so that once the source has caught up it knows whether
#: entries were added that it did not read (trimmed or deleted first).
ADDED = (
    "local i = redis.pcall('XINFO', 'STREAM', KEYS[1])"
    " if i['err'] then return {0, '0-0'} end"
    " local a, g"
    " for n = 1, #i, 2 do"
    " if i[n] == 'entries-added' then a = i[n + 1]"
    " elseif i[n] == 'last-generated-id' then g = i[n + 1] end end"
    " if not a or not g then return false end"
    " return {a, g}"
)

#: Seconds between two checks (L{ADDED}) for entries trimmed before they
#: were read.
CHECK_INTERVAL = 1.0

#: Seconds between two log lines about skipped entries.
SKIP_LOG_INTERVAL = 60.0


@implementer(ISource, ISourceHistory, ISourceStatus, ISourceSuccessor)
class RedisSource:
    """
    A fan-out channel's source reading a Redis stream (see the module's
    docstring).  Built as C{RedisSource(channel, options, context)}.

    @ivar channel: The channel it delivers to.
    @ivar reactor: The reactor it reads and times with.
    @ivar settings: The options, checked.
    @ivar lastId: The id of the last entry delivered (or skipped), or
        L{None} before the first read's start was found.
    @ivar entries: Entries delivered.
    @ivar gaps: Times the stream no longer held the last id delivered,
        so that entries may have been missed.
    @ivar skipped: Entries skipped as malformed.
    @ivar errors: Reads that failed with an error reply (a key of the
        wrong type, say).
    @ivar lastError: The last read's error, one line, or L{None}.
    """

    log = Logger()

    def __init__(
        self,
        channel: ISourceChannel,
        options: Mapping[str, str],
        context: ISourceContext,
    ) -> None:
        """
        @raise ValueError: When an option is invalid (one line naming it).
        """
        self.channel = channel
        self.reactor = context.reactor
        address, endpoint = _connectionFor(options, self.reactor)
        self.settings = settings = parseSettings(options, channel.key, address)
        self.key = settings.stream.encode("utf-8")
        self._retry = redisBackoff()
        name = str(channel.name)
        #: Reads: an XREAD BLOCK holds its connection.
        self._reader = RedisClient(
            self.reactor, settings.address, endpoint, name, self._retry
        )
        #: Everything else (history, the stream's bounds; the ingest later).
        self.control = RedisClient(
            self.reactor, settings.address, endpoint, name, self._retry
        )
        self.lastId: str | None = None
        self.entries = 0
        self.gaps = 0
        self.skipped = 0
        self.errors = 0
        self.lastError: str | None = None
        #: How old the last entry delivered was when delivered.
        self.lag: float | None = None
        self._skipLogged = float("-inf")
        self._gapLogged = float("-inf")
        self._running: Deferred[None] | None = None
        #: Where to start reading: the last id of the source this one
        #: replaced, or L{None} for the stream's end.
        self._successorOf: str | None = None
        #: Whether the channel's window is yet to be preloaded from the
        #: stream: at the first positioning after L{start} (L{_Reading}).
        self.preloading = False
        # -- ingest hook (H-ingest; wsrelay.redis.ingest) --
        #: With ingest on: this relay's side of the lease and its writes.
        self._ingest: Ingest | None = None
        if settings.ingest:
            self._ingest = ingestFor(
                channel,
                context,
                settings.address,
                endpoint,
                self._retry,
                settings.stream,
                settings.history,
                settings.lease,
            )
        # -- end of the ingest hook --

    @property
    def reading(self) -> bool:
        """
        Whether the source is started.
        """
        return self._running is not None

    # ISource

    def start(self) -> None:
        """
        Start reading from the stream's end, or after the last entry the
        source it replaces delivered (L{takeOver}).
        """
        if self._running is not None:
            return
        self.lastId, self._successorOf = self._successorOf, None
        self.preloading = True
        self._reader.start()
        self._running = Deferred.fromCoroutine(self._read())
        self._running.addErrback(_readingFailed, self.channel.name)
        if self._ingest is not None:  # ingest hook
            self._ingest.start()

    def stop(self) -> Deferred[None]:
        """
        Stop reading and close the connections.
        """
        running, self._running = self._running, None
        if running is not None:
            running.cancel()
        self.channel.stateChanged("idle")
        stopping = [self._reader.stop(), self.control.stop()]
        if self._ingest is not None:  # ingest hook
            stopping.append(self._ingest.stop())
        return gatherResults(stopping).addCallback(lambda _: None)

    def takeOver(self, previous: ISource) -> None:
        """
        Go on after the last entry C{previous} delivered when it read the
        same stream of the same server (L{ISourceSuccessor}).
        """
        if isinstance(previous, RedisSource):
            old, new = previous.settings, self.settings
            if (old.address, old.stream) == (new.address, new.stream):
                self._successorOf = previous.lastId

    def send(self, opcode: int, payload: bytes) -> bool:
        """
        A client's message: sent to the source when this relay holds the
        ingest lease (C{ingest = on}), else not taken.
        """
        ingest = self._ingest  # ingest hook
        return ingest is not None and ingest.send(opcode, payload)

    # ISourceHistory

    def after(
        self, sourceId: str, limit: int
    ) -> Deferred[Sequence[tuple[int, bytes, str | None]] | None]:
        """
        The entries after C{sourceId}, up to the last one delivered to the
        channel when the result fires (so that a resuming client goes on
        with the live entries without a gap or a repeat).

        @return: A L{Deferred} of at most C{limit} messages, oldest first;
            or of L{None} when the stream no longer holds C{sourceId} (or
            the source is stopped, or has not yet found where it reads
            from: a caller waits for the channel's C{up} first); failing
            when Redis cannot be reached (one attempt) or answers with an
            error.
        """
        return Deferred.fromCoroutine(entriesAfter(self, sourceId, limit))

    # Reading

    async def _read(self) -> None:
        """
        Read until stopped: connect, find where to go on from, then
        C{XREAD BLOCK} in a loop; a lost connection or an error reply
        starts over (the client reconnects with backoff).
        """
        failures = 0
        channel = self.channel
        while True:
            channel.stateChanged("connecting")
            connection = await self._reader.connection()
            try:
                reading = _Reading(self, connection)
                await reading.resume()
                channel.stateChanged("up")
                failures = 0
                if self.lastError is not None:
                    self.log.info(
                        "channel {channel}: reading stream {stream} again",
                        channel=channel.name,
                        stream=self.settings.stream,
                    )
                    self.lastError = None
                await reading.run()
            except (RedisConnectionLost, ProtocolError):
                # The connection is gone (a bad reply aborts it): the
                # client makes a new one, with backoff.
                channel.stateChanged("waiting")
            except RedisError as e:
                self.errors += 1
                failures += 1
                error = " ".join(str(e).split())
                if error != self.lastError:
                    self.log.error(
                        "channel {channel}: cannot read stream {stream}: {error}",
                        channel=channel.name,
                        stream=self.settings.stream,
                        error=error,
                    )
                self.lastError = error
                channel.stateChanged("waiting")
                await deferLater(self.reactor, self._retry(failures), lambda: None)

    def gap(self, lastId: str) -> None:
        """
        Count a gap: the stream no longer holds C{lastId}, the last entry
        read, nor maybe some after it; log it unless a gap was logged in
        the last L{SKIP_LOG_INTERVAL} seconds.
        """
        self.gaps += 1
        now = self.reactor.seconds()
        if now - self._gapLogged < SKIP_LOG_INTERVAL:
            return
        self._gapLogged = now
        self.log.warn(
            "channel {channel}: stream {stream} no longer holds entry {id}"
            " (trimmed, or Redis restarted empty): entries may be missed;"
            " going on after {end} ({gaps} gaps so far)",
            channel=self.channel.name,
            stream=self.settings.stream,
            id=lastId,
            end=self.lastId,
            gaps=self.gaps,
        )

    def message(self, entry: Any, count: bool) -> tuple[int, bytes, str] | None:
        """
        @param count: Whether a malformed entry is counted and logged.
        @return: The message of a stream entry, or L{None} when it is
            malformed.
        """
        message = entryMessage(entry)
        if isinstance(message, str):
            self._bad(entry[0], message, count)
            return None
        return message

    def _bad(self, entryId: bytes, why: str, count: bool) -> None:
        """
        Count a malformed entry, and log it unless one was logged in the
        last L{SKIP_LOG_INTERVAL} seconds.
        """
        if not count:
            return None
        self.skipped += 1
        now = self.reactor.seconds()
        if now - self._skipLogged >= SKIP_LOG_INTERVAL:
            self._skipLogged = now
            self.log.warn(
                "channel {channel}: stream {stream}: skipped entry {id}: {why}"
                " ({skipped} skipped so far)",
                channel=self.channel.name,
                stream=self.settings.stream,
                id=entryId.decode("ascii", "replace"),
                why=why,
                skipped=self.skipped,
            )
        return None

    # ISourceStatus

    def status(self) -> Mapping[str, int | float | str | None]:
        """
        The counters and gauges for C{/status} and C{/metrics}
        (C{wsrelay_source_<key>}): entries delivered, gaps, skipped
        entries and failed reads (C{_total}: counters); C{lag_seconds}, how
        old the last entry delivered was when delivered (the relay's clock
        less its id's milliseconds: the stream's delay plus the clocks'
        skew), L{None} before the first; the last id and error.
        """
        return {
            "entries_total": self.entries,
            "gaps_total": self.gaps,
            "skipped_total": self.skipped,
            "errors_total": self.errors,
            "lag_seconds": self.lag,
            "last_id": self.lastId,
            "last_error": self.lastError,
            # ingest hook: the lease's and the ingest's, with ingest on.
            **(self._ingest.status() if self._ingest is not None else {}),
        }


class _Reading:
    """
    The reads on one connection of a L{RedisSource}: C{XREAD BLOCK} in a
    loop, each under a deadline, and the count of entries added to the
    stream that finds those trimmed before they were read.

    @ivar _added: The stream's count of entries ever added when the source
        last read all it held, on this connection, or L{None} before.
    @ivar _readSince: Entries read since then.
    """

    def __init__(self, source: RedisSource, connection: RedisProtocol) -> None:
        self._source = source
        self._connection = connection
        self._added: int | None = None
        self._readSince = 0

    async def resume(self) -> None:
        """
        On a new connection: find the stream's end at the start, or check
        that the stream still holds the last id delivered.  If it does
        not, count a gap; go on with the entries after it that are left
        (C{XREAD} gives them), or from the stream's end when all its
        entries are older (its ids went back: another server).  At the
        first positioning after the source started, hand the channel the
        stream's newest entries up to where the reads go on
        (L{ISourceChannel.preload}), so that every relay reading the
        stream resumes clients from the same window.
        """
        source = self._source
        connection = self._connection
        lastId = source.lastId
        keep = source.channel.keep if source.preloading else 0
        if keep:
            messages, newestId = await newest(
                connection, source.key, lastId or "+", keep
            )
            source.channel.preload(messages)
            source.preloading = False
            if lastId is None:
                source.lastId = newestId or "0-0"
                return
        if lastId is None:
            found = await locate(connection, source.key, None)
            source.lastId = found.last or "0-0"
            return
        if lastId == "0-0":
            # The stream was empty at the start: everything in it is new.
            return
        found = await locate(connection, source.key, lastId)
        if found.holds(lastId):
            return
        if found.last is not None and parseId(found.last) < parseId(lastId):
            source.lastId = found.last
        source.gap(lastId)

    async def run(self) -> None:
        """
        C{XREAD BLOCK} from the source's last id until the connection is
        lost, each reply delivered in one call.
        """
        source = self._source
        connection = self._connection
        key = source.key
        deliver = source.channel.deliver
        callLater = source.reactor.callLater
        seconds = source.reactor.seconds
        checked = float("-inf")
        while True:
            lastId = source.lastId
            assert lastId is not None
            # A silent server (stopped, a cut network) is noticed only by
            # a deadline: one timer a read, not an entry.
            within = BLOCK_MS / 1000 + REPLY_MARGIN
            deadline = callLater(within, connection.timedOut, within)
            # Entries ever added, to count those trimmed before they were
            # read: a script (some 23 us of Redis's time) pipelined with
            # each read until the source first catches up, then at most
            # every CHECK_INTERVAL; the count is cumulative, so no gap
            # escapes (one is counted at the first check after it).
            now = seconds()
            if self._added is None or now - checked >= CHECK_INTERVAL:
                checked = now
                added = connection.execute("EVAL", ADDED, 1, key)
                added.addCallbacks(self._counted, lambda _: None, (lastId,))
            try:
                reply = await connection.execute(
                    "XREAD",
                    "COUNT",
                    READ_COUNT,
                    "BLOCK",
                    BLOCK_MS,
                    "STREAMS",
                    key,
                    lastId,
                )
            finally:
                if deadline.active():
                    deadline.cancel()
            if not reply:
                continue
            assert isinstance(reply, list)
            stream = reply[0]
            assert isinstance(stream, list)
            entries = stream[1]
            assert isinstance(entries, list) and entries
            messages = []
            message = source.message
            for entry in entries:
                m = message(entry, True)
                if m is not None:
                    messages.append(m)
            self._readSince += len(entries)
            newest = entries[-1]
            assert isinstance(newest, list) and isinstance(newest[0], bytes)
            source.lastId = newest[0].decode("ascii")
            if messages:
                source.entries += len(messages)
                source.lag = seconds() - parseId(messages[-1][2])[0] / 1e3
                deliver(messages)

    def _counted(self, counted: Reply, lastId: str) -> None:
        """
        The stream's count of entries ever added and last id given, just
        before a read from C{lastId}: when the source has caught up (that
        last id is C{lastId}), count a gap if entries were added since it
        last caught up that it did not read (trimmed or deleted first).
        """
        if not isinstance(counted, list) or counted[1] != lastId.encode("ascii"):
            return
        total = counted[0]
        assert isinstance(total, int)
        if self._added is not None and total != self._added + self._readSince:
            self._source.gap(lastId)
        self._added, self._readSince = total, 0


#: The servers and endpoints of the options sources were built with
#: lately, by the options' and reactor's identity (each entry holds
#: them, so that an identity is not reused while cached): a route's
#: channels share them, and the password and CA files are read once per
#: route build (a reload parses the options anew, and so reads them again).
_connections: dict[
    tuple[int, int], tuple[Mapping[str, str], Any, RedisAddress, Any]
] = {}

#: Entries L{_connections} keeps at most.
CONNECTIONS_KEPT = 64


def _connectionFor(
    options: Mapping[str, str], reactor: Any
) -> tuple[RedisAddress, Any]:
    """
    @return: The server C{options} name and an endpoint reaching it, made
        once for the same C{options} and C{reactor}.
    @raise ValueError: When an option is invalid (one line naming it).
    """
    cacheKey = (id(options), id(reactor))
    hit = _connections.get(cacheKey)
    if hit is not None and hit[0] is options and hit[1] is reactor:
        return hit[2], hit[3]
    settings = parseSettings(options, "")
    try:
        endpoint = redisEndpoint(reactor, settings.address, settings.caFile)
    except BadRedisSetting as e:
        raise ValueError(f"redis_ca_file: {e}") from None
    if len(_connections) >= CONNECTIONS_KEPT:
        del _connections[next(iter(_connections))]
    _connections[cacheKey] = (options, reactor, settings.address, endpoint)
    return settings.address, endpoint


def _readingFailed(f: Failure, channel: str) -> None:
    """
    A source's read loop ended: stopped (cancelled), or a bug, logged.
    """
    if f.check(CancelledError):
        return
    RedisSource.log.failure(
        "channel {channel}: the redis source stopped reading", f, channel=channel
    )
