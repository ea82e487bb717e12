# -*- test-case-name: tests.test_redis_source -*-
"""
The C{redis} fan-out source: a channel's messages read from a Redis stream.

The source reads with C{XREAD BLOCK} from the last entry it delivered (at
start, from the stream's end) and hands each reply's entries to the channel
in one L{ISourceChannel.deliver} call, each with its stream id.  Each
entry holds the message in its field C{data} (the payload's bytes) and
C{type} (C{text}, the default when absent, or C{binary})::

    redis-cli XADD wsrelay:feed MAXLEN '~' 10000 '*' data '{"seq": 1}' type text

A lost connection is made again with backoff and reading goes on from the
last id delivered, so no entry comes twice or out of order; when the
stream no longer holds that id (trimmed past it, or Redis restarted
empty), the source goes on from the stream's end and counts a gap
(L{RedisSource.gaps}).  Entries without C{data}, with another C{type}, or
text that is not UTF-8 are skipped and counted (L{RedisSource.skipped}).
A key of another type is an error logged in one line and retried with
backoff; clients stay connected throughout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, DeferredList, gatherResults
from twisted.internet.task import deferLater
from twisted.logger import Logger
from zope.interface import implementer

from wsrelay.interfaces import (
    ISource,
    ISourceChannel,
    ISourceContext,
    ISourceHistory,
    ISourceStatus,
)
from wsrelay.redis.client import (
    BadRedisSetting,
    RedisAddress,
    RedisClient,
    parseRedisURL,
    readPasswordFile,
    redisBackoff,
    redisEndpoint,
)
from wsrelay.redis.ingest import Ingest, ingestFor
from wsrelay.redis.protocol import (
    ProtocolError,
    RedisConnectionLost,
    RedisError,
    RedisProtocol,
    Reply,
)

#: The route keys the C{redis} source reads.
OPTIONS = (
    "redis",
    "redis_password_file",
    "redis_ca_file",
    "stream",
    "history",
    "ingest",
    "lease",
)

#: Milliseconds one C{XREAD} waits for entries before asking again.
BLOCK_MS = 5000

#: Entries one C{XREAD} takes at most.
READ_COUNT = 500

#: Seconds between two log lines about skipped entries.
SKIP_LOG_INTERVAL = 60.0

#: The opcodes of the two entry types.
TEXT, BINARY = 1, 2


@dataclass(frozen=True)
class RedisSourceSettings:
    """
    A C{redis} source's options, checked.

    @ivar address: The server (the password from C{redis_password_file}
        when given).
    @ivar caFile: C{redis_ca_file}, or L{None} for the system's CAs.
    @ivar stream: The stream's key, C{{channel}} expanded.
    @ivar history: Entries kept in the stream (C{XADD MAXLEN ~}) by the
        ingest: the resume window.
    @ivar ingest: Whether this relay may feed the stream from C{backends}.
    @ivar lease: Seconds the ingest lease lasts unless renewed.
    """

    address: RedisAddress
    caFile: str | None
    stream: str
    history: int
    ingest: bool
    lease: float


def _whole(options: Mapping[str, str], key: str, default: int) -> int:
    text = options.get(key)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{key}: want a whole number of at least 1, not {text!r}")
    return value


def _switch(options: Mapping[str, str], key: str) -> bool:
    text = options.get(key, "off").strip().lower()
    if text in ("on", "yes", "true", "1"):
        return True
    if text in ("off", "no", "false", "0"):
        return False
    raise ValueError(f"{key}: want on or off, not {text!r}")


def parseSettings(options: Mapping[str, str], key: str) -> RedisSourceSettings:
    """
    @param key: The channel's key, for C{{channel}} in C{stream}.
    @return: The checked options of a C{redis} source.
    @raise ValueError: With one line naming the option that is wrong.
    """
    url = options.get("redis")
    if not url:
        raise ValueError("redis: missing: the redis source needs a Redis URL")
    try:
        address = parseRedisURL(url)
    except BadRedisSetting as e:
        raise ValueError(f"redis: {e}") from None
    passwordFile = options.get("redis_password_file")
    if passwordFile:
        if address.password is not None:
            raise ValueError(
                "redis_password_file: the redis URL has a password already"
            )
        try:
            password = readPasswordFile(passwordFile)
        except BadRedisSetting as e:
            raise ValueError(f"redis_password_file: {e}") from None
        address = RedisAddress(
            address.host,
            address.port,
            address.db,
            address.tls,
            address.username,
            password,
        )
    caFile = options.get("redis_ca_file") or None
    if caFile is not None and not address.tls:
        raise ValueError("redis_ca_file: only for a rediss:// URL")
    stream = options.get("stream", "").strip()
    if not stream:
        raise ValueError("stream: missing: the redis source needs a stream key")
    stream = stream.replace("{channel}", key)
    leaseText = options.get("lease", "5")
    try:
        lease = float(leaseText)
    except ValueError:
        lease = 0.0
    if not lease > 0 or lease == float("inf"):
        raise ValueError(f"lease: want a number of seconds above 0, not {leaseText!r}")
    return RedisSourceSettings(
        address=address,
        caFile=caFile,
        stream=stream,
        history=_whole(options, "history", 10000),
        ingest=_switch(options, "ingest"),
        lease=lease,
    )


def parseId(entryId: str) -> tuple[int, int]:
    """
    @return: A stream id (C{"ms-seq"}) as numbers, for comparing.
    @raise ValueError: When it is not a stream id.
    """
    ms, _, seq = entryId.partition("-")
    return int(ms), int(seq or 0)


class _Found:
    """
    What L{RedisSource._locate} learnt of an id in the stream.

    @ivar present: Whether the stream holds it.
    @ivar first: The first entry's id, or L{None} (no entry).
    @ivar last: The last entry's id, or L{None}.
    """

    def __init__(self, present: bool, first: str | None, last: str | None) -> None:
        self.present = present
        self.first = first
        self.last = last

    def holds(self, entryId: str) -> bool:
        """
        @return: Whether every entry after C{entryId} is still in the
            stream: it holds C{entryId}, or C{entryId} lies between its
            first and last entries (only that entry was deleted).
        """
        if self.present:
            return True
        if self.first is None or self.last is None:
            return False
        position = parseId(entryId)
        return parseId(self.first) < position < parseId(self.last)


@implementer(ISource, ISourceHistory, ISourceStatus)
class RedisSource:
    """
    A fan-out channel's source reading a Redis stream (see the module's
    docstring).  Built as C{RedisSource(channel, options, context)}.

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
        self.settings = settings = parseSettings(options, channel.key)
        self._channel = channel
        self._reactor = context.reactor
        try:
            endpoint = redisEndpoint(self._reactor, settings.address, settings.caFile)
        except BadRedisSetting as e:
            raise ValueError(f"redis_ca_file: {e}") from None
        self._key = settings.stream.encode("utf-8")
        self._retry = redisBackoff()
        name = str(channel.name)
        #: Reads: an XREAD BLOCK holds its connection.
        self._reader = RedisClient(
            self._reactor, settings.address, endpoint, name, self._retry
        )
        #: Everything else (history, the stream's bounds; the ingest later).
        self._control = RedisClient(
            self._reactor, settings.address, endpoint, name, self._retry
        )
        self.lastId: str | None = None
        self.entries = 0
        self.gaps = 0
        self.skipped = 0
        self.errors = 0
        self.lastError: str | None = None
        self._skipLogged = float("-inf")
        self._running: Deferred[None] | None = None
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

    # ISource

    def start(self) -> None:
        """
        Start reading from the stream's end.
        """
        if self._running is not None:
            return
        self.lastId = None
        self._reader.start()
        self._running = Deferred.fromCoroutine(self._read())
        self._running.addErrback(self._crashed)
        if self._ingest is not None:  # ingest hook
            self._ingest.start()

    def stop(self) -> Deferred[None]:
        """
        Stop reading and close the connections.
        """
        running, self._running = self._running, None
        if running is not None:
            running.cancel()
        self._channel.stateChanged("idle")
        stopping = [self._reader.stop(), self._control.stop()]
        if self._ingest is not None:  # ingest hook
            stopping.append(self._ingest.stop())
        return gatherResults(stopping).addCallback(lambda _: None)

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
        return Deferred.fromCoroutine(self._after(sourceId, limit))

    async def _after(
        self, sourceId: str, limit: int
    ) -> Sequence[tuple[int, bytes, str | None]] | None:
        try:
            parseId(sourceId)
        except ValueError:
            return None
        if self._running is None or self.lastId is None:
            # Stopped: its window is no longer followed; or not yet
            # positioned: where the live entries go on is unknown.
            return None
        self._control.start()
        # A resuming client waits for this: fail rather than wait for
        # Redis to come back.
        connection = await self._control.connection(failAfterFailures=1)
        found = await self._locate(connection, sourceId)
        if not found.holds(sourceId):
            return None
        out: list[tuple[int, bytes, str | None]] = []
        cursor = sourceId
        while len(out) < limit:
            end = self.lastId
            if end is None:
                # Restarted meanwhile: the entries read so far may not
                # reach where the live entries go on.
                return None
            if parseId(cursor) >= parseId(end):
                break
            reply = await connection.execute(
                "XRANGE", self._key, "(" + cursor, end, "COUNT", limit - len(out)
            )
            assert isinstance(reply, list)
            if not reply:
                break
            for entry in reply:
                message = self._message(entry, count=False)
                if message is not None:
                    out.append(message)
            last = reply[-1]
            assert isinstance(last, list) and isinstance(last[0], bytes)
            cursor = last[0].decode("ascii")
        return out

    # Reading

    async def _read(self) -> None:
        """
        Read until stopped: connect, find where to go on from, then
        C{XREAD BLOCK} in a loop; a lost connection or an error reply
        starts over (the client reconnects with backoff).
        """
        failures = 0
        channel = self._channel
        while True:
            channel.stateChanged("connecting")
            connection = await self._reader.connection()
            try:
                await self._resume(connection)
                channel.stateChanged("up")
                failures = 0
                if self.lastError is not None:
                    self.log.info(
                        "channel {channel}: reading stream {stream} again",
                        channel=channel.name,
                        stream=self.settings.stream,
                    )
                    self.lastError = None
                await self._readFrom(connection)
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
                await deferLater(self._reactor, self._retry(failures), lambda: None)

    async def _resume(self, connection: RedisProtocol) -> None:
        """
        On a new connection: find the stream's end at the start, or check
        that the stream still holds the last id delivered; if it does not,
        count a gap and go on from the stream's end.
        """
        lastId = self.lastId
        if lastId is None:
            found = await self._locate(connection, None)
            self.lastId = found.last or "0-0"
            return
        found = await self._locate(connection, lastId)
        if found.holds(lastId):
            return
        self.gaps += 1
        self.lastId = found.last or "0-0"
        self.log.warn(
            "channel {channel}: stream {stream} no longer holds entry {id}"
            " (trimmed, or Redis restarted empty): entries may be missed;"
            " going on from {end}",
            channel=self._channel.name,
            stream=self.settings.stream,
            id=lastId,
            end=self.lastId,
        )

    async def _locate(self, connection: RedisProtocol, entryId: str | None) -> _Found:
        """
        @return: Whether the stream holds C{entryId}, and its first and
            last entries' ids, in one round trip.
        """
        key = self._key
        commands = [
            connection.execute("XRANGE", key, "-", "+", "COUNT", 1),
            connection.execute("XREVRANGE", key, "+", "-", "COUNT", 1),
        ]
        if entryId is not None:
            commands.append(connection.execute("XRANGE", key, entryId, entryId))
        results: list[tuple[bool, Any]] = await DeferredList(
            commands, consumeErrors=True
        )
        for ok, value in results:
            if not ok:
                value.raiseException()
        replies = [value for _, value in results]
        held = len(replies) > 2 and bool(replies[2])
        return _Found(held, _firstId(replies[0]), _firstId(replies[1]))

    async def _readFrom(self, connection: RedisProtocol) -> None:
        """
        C{XREAD BLOCK} from L{lastId} until the connection is lost, each
        reply delivered in one call.
        """
        key = self._key
        deliver = self._channel.deliver
        while True:
            lastId = self.lastId
            assert lastId is not None
            reply = await connection.execute(
                "XREAD", "COUNT", READ_COUNT, "BLOCK", BLOCK_MS, "STREAMS", key, lastId
            )
            if not reply:
                continue
            assert isinstance(reply, list)
            stream = reply[0]
            assert isinstance(stream, list)
            entries = stream[1]
            assert isinstance(entries, list) and entries
            messages = []
            message = self._message
            for entry in entries:
                m = message(entry, True)
                if m is not None:
                    messages.append(m)
            newest = entries[-1]
            assert isinstance(newest, list) and isinstance(newest[0], bytes)
            self.lastId = newest[0].decode("ascii")
            if messages:
                self.entries += len(messages)
                self.lag = self._reactor.seconds() - parseId(messages[-1][2])[0] / 1e3
                deliver(messages)

    def _message(self, entry: Any, count: bool) -> tuple[int, bytes, str] | None:
        """
        @param count: Whether a malformed entry is counted and logged.
        @return: The message of a stream entry (C{[id, [field, value,
            ...]]}), or L{None} when it is malformed.
        """
        entryId, fields = entry
        data = kind = None
        for i in range(0, len(fields) - 1, 2):
            name = fields[i]
            if name == b"data":
                data = fields[i + 1]
            elif name == b"type":
                kind = fields[i + 1]
        if data is None:
            self._bad(entryId, "no data field", count)
            return None
        if kind is None or kind == b"text":
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                self._bad(entryId, "text that is not UTF-8", count)
                return None
            return TEXT, data, entryId.decode("ascii")
        if kind == b"binary":
            return BINARY, data, entryId.decode("ascii")
        self._bad(entryId, f"type {kind!r} (want text or binary)", count)
        return None

    def _bad(self, entryId: bytes, why: str, count: bool) -> None:
        """
        Count a malformed entry, and log it unless one was logged in the
        last L{SKIP_LOG_INTERVAL} seconds.
        """
        if not count:
            return None
        self.skipped += 1
        now = self._reactor.seconds()
        if now - self._skipLogged >= SKIP_LOG_INTERVAL:
            self._skipLogged = now
            self.log.warn(
                "channel {channel}: stream {stream}: skipped entry {id}: {why}"
                " ({skipped} skipped so far)",
                channel=self._channel.name,
                stream=self.settings.stream,
                id=entryId.decode("ascii", "replace"),
                why=why,
                skipped=self.skipped,
            )
        return None

    def _crashed(self, f: Any) -> None:
        """
        The read loop ended: stopped (cancelled), or a bug, logged.
        """
        if f.check(CancelledError):
            return
        self.log.failure(
            "channel {channel}: the redis source stopped reading",
            f,
            channel=self._channel.name,
        )

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
            "lag_seconds": getattr(self, "lag", None),
            "last_id": self.lastId,
            "last_error": self.lastError,
            # ingest hook: the lease's and the ingest's, with ingest on.
            **(self._ingest.status() if self._ingest is not None else {}),
        }


def _firstId(reply: Reply) -> str | None:
    """
    @return: The id of the first entry of an C{XRANGE} reply, or L{None}.
    """
    if not reply:
        return None
    assert isinstance(reply, list)
    entry = reply[0]
    assert isinstance(entry, list) and isinstance(entry[0], bytes)
    return entry[0].decode("ascii")
