# -*- test-case-name: tests.test_redis_source -*-
"""
A Redis stream's entries as the C{redis} source reads them: ids, the
message an entry holds, and where the stream begins and ends.

Each entry holds the message in its field C{data} (the payload's bytes)
and C{type} (C{text}, the default when absent, or C{binary}).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.defer import DeferredList

from wsrelay.redis.client import RedisClient
from wsrelay.redis.protocol import RedisProtocol, Reply

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

#: The opcodes of the two entry types.
TEXT, BINARY = 1, 2

#: Seconds a history lookup (L{entriesAfter}) may take on its connection
#: before the server is taken for gone and the connection aborted (its
#: client makes a new one): a silent server must not hold every later
#: lookup behind the first.
HISTORY_TIMEOUT = 5.0


def parseId(entryId: str) -> tuple[int, int]:
    """
    @return: A stream id (C{"ms-seq"}) as numbers, for comparing.
    @raise ValueError: When it is not a stream id.
    """
    ms, _, seq = entryId.partition("-")
    return int(ms), int(seq or 0)


class Found:
    """
    What L{locate} learnt of an id in the stream.

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


def entryMessage(entry: Any) -> tuple[int, bytes, str] | str:
    """
    @param entry: A stream entry as Redis gives it: C{[id, [field, value,
        ...]]}.
    @return: Its message as C{(opcode, payload, id)}; or, when it is
        malformed, why (one line).
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
        return "no data field"
    if kind is None or kind == b"text":
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            return "text that is not UTF-8"
        return TEXT, data, entryId.decode("ascii")
    if kind == b"binary":
        return BINARY, data, entryId.decode("ascii")
    return f"type {kind!r} (want text or binary)"


async def locate(connection: RedisProtocol, key: bytes, entryId: str | None) -> Found:
    """
    @return: Whether the stream C{key} holds C{entryId}, and its first and
        last entries' ids, in one round trip.
    """
    commands = [
        connection.execute("XRANGE", key, "-", "+", "COUNT", 1),
        connection.execute("XREVRANGE", key, "+", "-", "COUNT", 1),
    ]
    if entryId is not None:
        commands.append(connection.execute("XRANGE", key, entryId, entryId))
    results: list[tuple[bool, Any]] = await DeferredList(commands, consumeErrors=True)
    for ok, value in results:
        if not ok:
            value.raiseException()
    replies = [value for _, value in results]
    held = len(replies) > 2 and bool(replies[2])
    return Found(held, _firstId(replies[0]), _firstId(replies[1]))


async def newest(
    connection: RedisProtocol, key: bytes, end: str, count: int
) -> tuple[list[tuple[int, bytes, str]], str | None]:
    """
    The stream's last C{count} entries up to C{end} (C{+}: its newest), in
    one round trip; malformed ones left out (the reads count them).

    @return: Their messages, oldest first, and the newest entry's id, or
        L{None} when the stream holds none.
    """
    reply = await connection.execute("XREVRANGE", key, end, "-", "COUNT", count)
    assert isinstance(reply, list)
    messages = []
    for entry in reversed(reply):
        message = entryMessage(entry)
        if not isinstance(message, str):
            messages.append(message)
    return messages, _firstId(reply)


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


class StreamReader(Protocol):
    """
    What L{entriesAfter} reads of a source reading a stream
    (L{wsrelay.redis.source.RedisSource}).
    """

    #: The stream's key.
    key: bytes
    #: Times the lookups.
    reactor: IReactorTime
    #: The id of the last entry delivered, or L{None} before the source
    #: found where it reads from.
    lastId: str | None

    @property
    def reading(self) -> bool:
        """
        Whether the source is started.
        """

    @property
    def control(self) -> RedisClient:
        """
        The source's connection for everything but its reads.
        """


async def entriesAfter(
    source: StreamReader, sourceId: str, limit: int
) -> Sequence[tuple[int, bytes, str | None]] | None:
    """
    The implementation of L{wsrelay.redis.source.RedisSource.after}: the
    messages of the entries after C{sourceId}, up to the last one the
    source delivered when this returns (malformed entries left out).
    """
    try:
        parseId(sourceId)
    except ValueError:
        return None
    if not source.reading or source.lastId is None:
        # Stopped: its window is no longer followed; or not yet
        # positioned: where the live entries go on is unknown.
        return None
    control = source.control
    control.start()
    # A resuming client waits for this: fail rather than wait for Redis
    # to come back.
    connection = await control.connection(failAfterFailures=1)
    deadline = source.reactor.callLater(
        HISTORY_TIMEOUT, connection.timedOut, HISTORY_TIMEOUT
    )
    try:
        return await _entriesAfter(source, connection, sourceId, limit)
    finally:
        if deadline.active():
            deadline.cancel()


async def _entriesAfter(
    source: StreamReader, connection: RedisProtocol, sourceId: str, limit: int
) -> Sequence[tuple[int, bytes, str | None]] | None:
    """
    L{entriesAfter} on a connection.
    """
    found = await locate(connection, source.key, sourceId)
    if not found.holds(sourceId):
        return None
    out: list[tuple[int, bytes, str | None]] = []
    cursor = sourceId
    while len(out) < limit:
        end = source.lastId
        if end is None:
            # Restarted meanwhile: the entries read so far may not reach
            # where the live entries go on.
            return None
        if parseId(cursor) >= parseId(end):
            break
        reply = await connection.execute(
            "XRANGE", source.key, "(" + cursor, end, "COUNT", limit - len(out)
        )
        assert isinstance(reply, list)
        if not reply:
            break
        for entry in reply:
            message = entryMessage(entry)
            if not isinstance(message, str):
                out.append(message)
        last = reply[-1]
        assert isinstance(last, list) and isinstance(last[0], bytes)
        cursor = last[0].decode("ascii")
    return out
