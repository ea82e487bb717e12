"""
Tests for L{wsrelay.redis.protocol} and L{wsrelay.redis.client}: RESP2
parsed by either parser, and a connection from a URL to a real
C{redis-server} (password, password file, database, verified TLS,
reconnection).
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

import wsrelay.redis.protocol
from tests.support.redis import makeClient, startRedis
from tests.support.tls import makeCertificates
from tests.support.waiting import waitFor
from wsrelay.redis.client import (
    BadRedisSetting,
    parseRedisURL,
    readPasswordFile,
    redisBackoff,
    redisEndpoint,
)
from wsrelay.redis.protocol import (
    HiredisParser,
    ProtocolError,
    RedisConnectionLost,
    RedisError,
    RedisProtocol,
    ReplyParser,
    encode,
)

#: Replies of every RESP2 type, and what they parse to.
REPLIES: list[tuple[bytes, Any]] = [
    (b"+OK\r\n", b"OK"),
    (b":42\r\n", 42),
    (b"$5\r\nhello\r\n", b"hello"),
    (b"$0\r\n\r\n", b""),
    (b"$-1\r\n", None),
    (b"*-1\r\n", None),
    (b"*0\r\n", []),
    (b"$4\r\na\r\nb\r\n", b"a\r\nb"),
    (
        b"*2\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$4\r\ndata\r\n$1\r\n\xff\r\n:7\r\n",
        [[b"1-0", [b"data", b"\xff"]], 7],
    ),
]


class ParserTests(SynchronousTestCase):
    """
    L{ReplyParser} (Python) and L{HiredisParser} parse the same replies,
    whole or split anywhere.
    """

    parser: Any = ReplyParser

    def test_whole(self) -> None:
        """
        Every reply type, fed all at once, parses in order.
        """
        stream = b"".join(r for r, _ in REPLIES)
        self.assertEqual(self.parser().feed(stream), [v for _, v in REPLIES])

    def test_split(self) -> None:
        """
        Fed a byte at a time, the replies come out once each, complete.
        """
        stream = b"".join(r for r, _ in REPLIES)
        parser = self.parser()
        out: list[Any] = []
        for i in range(len(stream)):
            out.extend(parser.feed(stream[i : i + 1]))
        self.assertEqual(out, [v for _, v in REPLIES])

    def test_error(self) -> None:
        """
        An error reply parses to a L{RedisError} with its text and code,
        also inside an array.
        """
        top, nested = self.parser().feed(b"-WRONGTYPE bad key\r\n*1\r\n-ERR x\r\n")
        self.assertIsInstance(top, RedisError)
        self.assertEqual(str(top), "WRONGTYPE bad key")
        self.assertEqual(top.code, "WRONGTYPE")
        self.assertIsInstance(nested[0], RedisError)

    def test_garbage(self) -> None:
        """
        Bytes that are not RESP2 raise L{ProtocolError}.
        """
        self.assertRaises(ProtocolError, self.parser().feed, b"?what\r\n")


class HiredisParserTests(ParserTests):
    """
    L{ParserTests} with C{hiredis}' reader.
    """

    parser = HiredisParser


class EncodeTests(SynchronousTestCase):
    """
    L{encode} writes commands as arrays of bulk strings.
    """

    def test_encode(self) -> None:
        """
        Text, bytes and ints are each one bulk string.
        """
        self.assertEqual(
            encode(("XADD", b"\x00k", 5)),
            b"*3\r\n$4\r\nXADD\r\n$2\r\n\x00k\r\n$1\r\n5\r\n",
        )


class ProtocolTests(SynchronousTestCase):
    """
    L{RedisProtocol} over an in-memory transport.
    """

    def connected(self) -> tuple[RedisProtocol, StringTransport]:
        """
        @return: A protocol on a L{StringTransport}.
        """
        protocol = RedisProtocol()
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def test_pipelined(self) -> None:
        """
        Commands go out at once; replies fire their Deferreds in order.
        """
        protocol, transport = self.connected()
        a = protocol.execute("GET", "a")
        b = protocol.execute("GET", "b")
        self.assertEqual(transport.value(), encode(("GET", "a")) + encode(("GET", "b")))
        protocol.dataReceived(b"$1\r\nA\r")
        self.assertNoResult(a)
        protocol.dataReceived(b"\n-ERR no\r\n")
        self.assertEqual(self.successResultOf(a), b"A")
        self.failureResultOf(b, RedisError)

    def test_lostTellsWaitersFirst(self) -> None:
        """
        When the connection is lost, those waiting for the loss hear of it
        before the pending commands fail: a command's user then never
        finds the connection still handed out.
        """
        protocol, _ = self.connected()
        pending = protocol.execute("XREAD", "BLOCK", 0, "STREAMS", "s", "$")
        seen: list[bool] = []
        protocol.whenLost().addCallback(lambda _: seen.append(pending.called))
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(seen, [False])
        self.failureResultOf(pending, RedisConnectionLost)
        self.failureResultOf(protocol.execute("PING"), RedisConnectionLost)

    def test_replyTooLong(self) -> None:
        """
        A reply that grows past L{MAX_REPLY_BYTES} without completing
        fails the pending commands and aborts the connection, with one
        line logged, instead of being held in memory.
        """
        self.patch(wsrelay.redis.protocol, "MAX_REPLY_BYTES", 1000)
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        protocol, transport = self.connected()
        pending = protocol.execute("GET", "big")
        protocol.dataReceived(b"$100000\r\n" + b"x" * 600)
        self.assertNoResult(pending)
        protocol.dataReceived(b"x" * 600)
        self.failureResultOf(pending, ProtocolError)
        self.assertTrue(transport.disconnecting)
        errors = [
            formatEvent(e) for e in events if e.get("log_level") == LogLevel.error
        ]
        self.assertEqual(len(errors), 1, errors)
        self.assertIn("longer than 1000 bytes", errors[0])
        self.assertNotIn("\n", errors[0])

    def test_badReply(self) -> None:
        """
        Bytes that are not RESP2 fail the pending commands and abort the
        connection.
        """
        protocol, transport = self.connected()
        pending = protocol.execute("PING")
        protocol.dataReceived(b"?\r\n")
        self.failureResultOf(pending, ProtocolError)
        self.assertTrue(transport.disconnecting)


class URLTests(SynchronousTestCase):
    """
    L{parseRedisURL} reads C{redis://} and C{rediss://} URLs, and says in
    one line what is wrong with others.
    """

    def test_full(self) -> None:
        """
        User, password (percent-decoded), host, port, database and TLS.
        """
        a = parseRedisURL("rediss://me:p%40ss@cache.internal:6380/3")
        self.assertEqual(
            (a.host, a.port, a.db, a.tls, a.username, a.password),
            ("cache.internal", 6380, 3, True, "me", "p@ss"),
        )
        self.assertNotIn("p@ss", repr(a))
        self.assertEqual(a.display, "rediss://cache.internal:6380/3")

    def test_defaults(self) -> None:
        """
        Without port, database or password: 6379, database 0, no login.
        """
        a = parseRedisURL("redis://127.0.0.1")
        self.assertEqual((a.port, a.db, a.tls, a.password), (6379, 0, False, None))
        self.assertEqual(parseRedisURL("redis://:pw@h/").password, "pw")

    def test_bad(self) -> None:
        """
        Another scheme, no host, a database that is no number, a bad port:
        L{BadRedisSetting} with a one-line message.
        """
        for url in (
            "http://h:1/0",
            "redis:///0",
            "redis://h/zero",
            "redis://h:99999/0",
            "redis://h/0?x=1",
        ):
            e = self.assertRaises(BadRedisSetting, parseRedisURL, url)
            self.assertNotIn("\n", str(e))
            self.assertNotIn(url, str(e))

    def test_passwordNotEchoed(self) -> None:
        """
        A wrong URL's error names the problem and never shows the
        password: not for another scheme, nor for a password that is not
        percent-encoded (its C{#}, C{/} or C{?} ending the host part).
        """
        for url, problem in [
            ("redsi://:hunter2@127.0.0.1/0", "scheme must be redis or rediss"),
            ("redis://:s3cr#et@127.0.0.1:6379/0", "percent-encode the password"),
            ("redis://:ab/cd@127.0.0.1:6379/0", "percent-encode the password"),
            ("redis://:abc?d@127.0.0.1:6379/0", "percent-encode the password"),
            ("redis://:a[b@127.0.0.1:6379/0", "percent-encode the password"),
        ]:
            e = self.assertRaises(BadRedisSetting, parseRedisURL, url)
            self.assertIn(problem, str(e))
            password = url.split("@")[0].split(":")[-1]
            for part in (password, password[:2], url.split("@")[1]):
                self.assertNotIn(part, str(e), url)


class PasswordFileTests(SynchronousTestCase):
    """
    L{readPasswordFile} reads the first line of a file.
    """

    def test_read(self) -> None:
        """
        The first line without its end is the password.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("s3cret\nignored\n")
        self.assertEqual(readPasswordFile(path), "s3cret")

    def test_missing(self) -> None:
        """
        A file that cannot be read: one line naming it and why.
        """
        path = self.mktemp()
        e = self.assertRaises(BadRedisSetting, readPasswordFile, path)
        self.assertEqual(str(e), f"cannot read {path}: No such file or directory")

    def test_empty(self) -> None:
        """
        An empty file is no password.
        """
        path = self.mktemp()
        open(path, "w").close()
        e = self.assertRaises(BadRedisSetting, readPasswordFile, path)
        self.assertIn("is empty", str(e))


class BackoffTests(SynchronousTestCase):
    """
    L{redisBackoff} waits longer after each failure, up to its cap.
    """

    def test_grows(self) -> None:
        """
        Between half and all of C{base * 2**attempt}, capped.
        """
        wait = redisBackoff(0.1, 2.0)
        for attempt, top in ((0, 0.1), (1, 0.2), (3, 0.8), (10, 2.0)):
            self.assertTrue(top / 2 <= wait(attempt) <= top)


def capture(testCase: TestCase) -> list[dict[str, Any]]:
    """
    @return: The log events emitted during C{testCase}.
    """
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    testCase.addCleanup(globalLogPublisher.removeObserver, events.append)
    return events


def warnings(events: list[dict[str, Any]]) -> list[str]:
    """
    @return: The text of the warnings among C{events}.
    """
    return [formatEvent(e) for e in events if e.get("log_level") == LogLevel.warn]


class ClientTests(TestCase):
    """
    L{RedisClient} against a real C{redis-server}.
    """

    async def test_commands(self) -> None:
        """
        Commands pipeline on one connection, replies in order, error
        replies fail their own command only.
        """
        server = await startRedis(self)
        client = makeClient(self, server.url)
        connection = await client.connection()
        a = connection.execute("SET", "k", b"\x00v")
        b = connection.execute("INCR", "k")
        c = connection.execute("GET", "k")
        self.assertEqual(await a, b"OK")
        with self.assertRaises(RedisError):
            await b
        self.assertEqual(await c, b"\x00v")

    async def test_database(self) -> None:
        """
        The URL's database is selected on connecting.
        """
        server = await startRedis(self)
        client = makeClient(self, server.url[: -len("/0")] + "/5")
        connection = await client.connection()
        await connection.execute("SET", "k", "in five")
        self.assertIsNone(server.call("GET", "k"))
        self.assertEqual(server.call("SELECT", "5"), b"OK")

    async def test_password(self) -> None:
        """
        The URL's password logs in.
        """
        server = await startRedis(self, password="sesame")
        client = makeClient(self, server.url)
        connection = await client.connection()
        self.assertEqual(await connection.execute("PING"), b"PONG")

    async def test_user(self) -> None:
        """
        A user name in the URL logs in as that ACL user.
        """
        server = await startRedis(self)
        server.call("ACL", "SETUSER", "relay", "on", ">pw", "~*", "+@all")
        url = f"redis://relay:pw@127.0.0.1:{server.port}/0"
        connection = await makeClient(self, url).connection()
        self.assertEqual(await connection.execute("ACL", "WHOAMI"), b"relay")

    async def test_wrongPassword(self) -> None:
        """
        A wrong password: one warning line naming the server and Redis's
        reason, logged once however often the client retries; no
        connection is handed out.
        """
        server = await startRedis(self, password="sesame")
        events = capture(self)
        client = makeClient(self, server.url.replace("sesame", "wrong"))
        pending = client.connection()
        await waitFor(lambda: client.attempts >= 3)
        said = warnings(events)
        self.assertEqual(len(said), 1, said)
        self.assertIn(f"redis://127.0.0.1:{server.port}/0: WRONGPASS", said[0])
        self.assertNotIn("\n", said[0])
        self.assertNotIn("wrong", said[0].split("WRONGPASS")[0])
        self.assertNoResult(pending)
        pending.cancel()
        self.failureResultOf(pending)

    async def test_reconnects(self) -> None:
        """
        After Redis restarts, the client connects again by itself.
        """
        server = await startRedis(self)
        client = makeClient(self, server.url)
        first = await client.connection()
        await server.restart()
        await first.whenLost()
        second = await client.connection()
        self.assertIsNot(first, second)
        self.assertEqual(await second.execute("PING"), b"PONG")

    async def test_tls(self) -> None:
        """
        C{rediss://} verifies the server's certificate against the CA file.
        """
        server = await startRedis(self, tls=True)
        client = makeClient(self, server.url, caFile=server.certificates["ca"])
        connection = await client.connection()
        self.assertEqual(await connection.execute("PING"), b"PONG")

    async def test_tlsUnverified(self) -> None:
        """
        A certificate that the trusted CA did not sign is refused: no
        connection, a one-line warning.
        """
        server = await startRedis(self, tls=True)
        other = os.path.abspath(self.mktemp())
        os.makedirs(other)
        foreign = makeCertificates(other, ["127.0.0.1"])["ca"]
        events = capture(self)
        client = makeClient(self, server.url, caFile=foreign)
        pending = client.connection()
        await waitFor(lambda: client.attempts >= 1)
        self.assertNoResult(pending)
        pending.cancel()
        self.failureResultOf(pending)
        said = warnings(events)
        self.assertTrue(said)
        self.assertIn("rediss://127.0.0.1", said[0])
        self.assertNotIn("\n", said[0])

    def test_badCAFile(self) -> None:
        """
        A CA file without a certificate: L{BadRedisSetting} naming it.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("nothing\n")
        e = self.assertRaises(
            BadRedisSetting,
            redisEndpoint,
            reactor,
            parseRedisURL("rediss://h/0"),
            path,
        )
        self.assertIn(path, str(e))
