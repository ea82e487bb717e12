# -*- test-case-name: tests.test_redis_client -*-
"""
The Redis wire protocol (RESP2), client side: commands as arrays of bulk
strings, replies parsed as they arrive, one L{Deferred} per command in the
order sent (Redis answers in order, so commands pipeline freely).

Replies are bytes (bulk and simple strings), ints, lists and L{None}; an
error reply fails the command's Deferred with L{RedisError}, or, nested in
an array (C{EXEC}), stands in the list as a L{RedisError}.  Nothing is
decoded: stream entries carry binary payloads.  The C{hiredis} reader
parses when it is installed (it is a dependency); L{ReplyParser} is the
same in Python.
"""

from __future__ import annotations

from collections import deque
from typing import Union

from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

try:
    import hiredis
except ImportError:  # pragma: no cover - hiredis is a dependency
    hiredis = None  # type: ignore[assignment]

#: A parsed reply.
Reply = Union[bytes, int, None, list["Reply"], "RedisError"]  # noqa: UP007

#: A command's argument.
Argument = bytes | str | int


class RedisError(Exception):
    """
    An error reply from Redis (C{-ERR ...}, C{-WRONGTYPE ...}, C{-NOAUTH
    ...}); its message is the reply's text.
    """

    @property
    def code(self) -> str:
        """
        The error's first word (C{ERR}, C{WRONGTYPE}, C{NOAUTH}...).
        """
        return str(self).split(" ", 1)[0]


class ProtocolError(Exception):
    """
    The server sent bytes that are not RESP2.
    """


class RedisConnectionLost(Exception):
    """
    The connection closed before the command's reply came.
    """


def encode(args: tuple[Argument, ...]) -> bytes:
    """
    @return: A command as RESP2: an array of bulk strings.
    """
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, str):
            a = a.encode("utf-8")
        elif isinstance(a, int):
            a = b"%d" % a
        parts.append(b"$%d\r\n" % len(a))
        parts.append(a)
        parts.append(b"\r\n")
    return b"".join(parts)


class _Incomplete(Exception):
    """
    The buffer ends inside a reply.
    """


#: The longest line (a simple string, error or length) accepted.
MAX_LINE = 64 * 1024

#: The most bytes held of a reply not yet complete: past it the connection
#: is aborted (a reply of 500 entries, L{wsrelay.redis.source.READ_COUNT},
#: of messages up to 1 MiB each fits).
MAX_REPLY_BYTES = 512 * 1024 * 1024


class ReplyParser:
    """
    Parses RESP2 replies out of a byte stream.

    A fallback for tests and for where C{hiredis} (a dependency) cannot be
    installed: a reply that comes in many reads is parsed again from its
    start on each, which costs time quadratic in its size.
    """

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[Reply]:
        """
        @return: The replies completed by C{data}, in order.
        @raise ProtocolError: On bytes that are not RESP2.
        """
        buffer = self._buffer + data if self._buffer else data
        replies: list[Reply] = []
        position = 0
        end = len(buffer)
        while position < end:
            try:
                reply, position = self._parse(buffer, position)
            except _Incomplete:
                break
            replies.append(reply)
        self._buffer = buffer[position:]
        if len(self._buffer) > MAX_LINE and self._buffer.find(b"\r\n") < 0:
            raise ProtocolError(f"a reply line longer than {MAX_LINE} bytes")
        return replies

    def buffered(self) -> int:
        """
        @return: The bytes held of a reply not yet complete.
        """
        return len(self._buffer)

    def _parse(self, buffer: bytes, position: int) -> tuple[Reply, int]:
        eol = buffer.find(b"\r\n", position)
        if eol < 0:
            raise _Incomplete()
        kind = buffer[position]
        if kind == 36:  # $
            length = int(buffer[position + 1 : eol])
            if length < 0:
                return None, eol + 2
            start = eol + 2
            stop = start + length
            if stop + 2 > len(buffer):
                raise _Incomplete()
            return buffer[start:stop], stop + 2
        if kind == 42:  # *
            count = int(buffer[position + 1 : eol])
            if count < 0:
                return None, eol + 2
            items: list[Reply] = []
            append = items.append
            size = len(buffer)
            position = eol + 2
            for _ in range(count):
                # Bulk strings inline: most of what an array holds (stream
                # entries' ids and fields).
                if position < size and buffer[position] == 36:  # $
                    eol = buffer.find(b"\r\n", position)
                    if eol < 0:
                        raise _Incomplete()
                    length = int(buffer[position + 1 : eol])
                    if length >= 0:
                        position = eol + 2 + length
                        if position + 2 > size:
                            raise _Incomplete()
                        append(buffer[eol + 2 : position])
                        position += 2
                        continue
                item, position = self._parse(buffer, position)
                append(item)
            return items, position
        if kind == 43:  # +
            return buffer[position + 1 : eol], eol + 2
        if kind == 58:  # :
            return int(buffer[position + 1 : eol]), eol + 2
        if kind == 45:  # -
            text = buffer[position + 1 : eol].decode("utf-8", "replace")
            return RedisError(text), eol + 2
        raise ProtocolError(f"unexpected reply type byte {bytes([kind])!r}")


#: How a connection closed, when nobody says.
_DONE = Failure(ConnectionDone())


class HiredisParser:
    """
    L{ReplyParser}'s work done by the C{hiredis} reader (C: reading a
    stream costs three to six times less CPU; BENCHMARKS.md, "Redis
    client"),
    with the same replies.
    """

    def __init__(self) -> None:
        assert hiredis is not None
        self._reader = hiredis.Reader(
            protocolError=ProtocolError, replyError=RedisError
        )

    def feed(self, data: bytes) -> list[Reply]:
        """
        @return: The replies completed by C{data}, in order.
        @raise ProtocolError: On bytes that are not RESP2.
        """
        reader = self._reader
        reader.feed(data)
        replies: list[Reply] = []
        while True:
            reply = reader.gets()
            if reply is False:
                return replies
            replies.append(reply)

    def buffered(self) -> int:
        """
        @return: The bytes held of a reply not yet complete.
        """
        return int(self._reader.len())


def makeParser() -> ReplyParser | HiredisParser:
    """
    @return: A reply parser: C{hiredis}'s when it is installed.
    """
    return HiredisParser() if hiredis is not None else ReplyParser()


class RedisProtocol(Protocol):
    """
    One connection to Redis: L{execute} sends a command and returns a
    L{Deferred} of its reply.  Commands pipeline; a blocking command
    (C{XREAD BLOCK}) holds up those sent after it on the same connection.

    @ivar lost: Whether the connection is closed.
    """

    log = Logger()

    def __init__(self) -> None:
        self._parser = makeParser()
        self._waiting: deque[Deferred[Reply]] = deque()
        self.lost = False
        #: Fires when the connection closes (see L{whenLost}).
        self._lostWaiters: list[Deferred[None]] = []

    def execute(self, *args: Argument) -> Deferred[Reply]:
        """
        Send one command.

        @return: A L{Deferred} firing with its reply, or failing with
            L{RedisError} (an error reply) or L{RedisConnectionLost}.
        """
        if self.lost or self.transport is None:
            return fail(RedisConnectionLost("not connected to Redis"))
        d: Deferred[Reply] = Deferred()
        self._waiting.append(d)
        self.transport.write(encode(args))
        return d

    def dataReceived(self, data: bytes) -> None:
        """
        Parse replies and fire the commands' Deferreds in order.
        """
        parser = self._parser
        try:
            replies = parser.feed(data)
        except (ProtocolError, ValueError) as e:
            self._abort(f"bad reply from Redis: {e}")
            return
        if not replies and parser.buffered() > MAX_REPLY_BYTES:
            self._abort(f"a reply from Redis longer than {MAX_REPLY_BYTES} bytes")
            return
        waiting = self._waiting
        for reply in replies:
            if not waiting:
                self._abort("a reply from Redis that no command asked for")
                return
            d = waiting.popleft()
            if isinstance(reply, RedisError):
                d.errback(reply)
            else:
                d.callback(reply)

    def timedOut(self, seconds: float) -> None:
        """
        A reply did not come in time (the server is stopped, or the
        network cut): fail every command waiting and abort the
        connection, so that its client makes a new one.
        """
        if not self.lost and self.transport is not None:
            self._abort(f"no reply from Redis within {seconds:g} seconds")

    def _abort(self, why: str) -> None:
        self.log.error("{why}; closing the connection to Redis", why=why)
        self._failAll(ProtocolError(why))
        assert self.transport is not None
        self.transport.abortConnection()  # type: ignore[attr-defined]

    def whenLost(self) -> Deferred[None]:
        """
        @return: A L{Deferred} that fires when the connection has closed.
        """
        d: Deferred[None] = Deferred()
        if self.lost:
            d.callback(None)
        else:
            self._lostWaiters.append(d)
        return d

    def connectionLost(self, reason: Failure = _DONE) -> None:
        """
        Tell those waiting for the loss (L{whenLost}), then fail every
        command still waiting for its reply.
        """
        self.lost = True
        # Those waiting for the loss first (the client's service): a
        # command's user told of it then finds no stale connection.
        waiters, self._lostWaiters = self._lostWaiters, []
        for d in waiters:
            d.callback(None)
        self._failAll(RedisConnectionLost(reason.getErrorMessage()))

    def _failAll(self, error: Exception) -> None:
        waiting, self._waiting = self._waiting, deque()
        for d in waiting:
            d.errback(error)
