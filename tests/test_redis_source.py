"""
Tests for L{wsrelay.redis.source.RedisSource}: a fan-out channel's
messages read from a stream of a real C{redis-server}, through Redis
restarts, trimming, bad entries and bad settings.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from twisted.internet.task import LoopingCall
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

import wsrelay.redis.client
import wsrelay.redis.entries
import wsrelay.redis.settings
import wsrelay.redis.source
from tests.support.redis import (
    FakeChannel,
    FakeContext,
    RedisServer,
    ReplyError,
    freePort,
    requireRedis,
    startRedis,
)
from tests.support.tls import makeCertificates
from tests.support.waiting import waitFor
from wsrelay.interfaces import ISource, ISourceHistory
from wsrelay.redis.entries import parseId
from wsrelay.redis.settings import parseSettings
from wsrelay.redis.source import RedisSource

#: A Lua script adding entries C{data} = ARGV[1..n] in one go, so that one
#: XREAD reply holds them all.
ADD_MANY = (
    "for i = 1, #ARGV do"
    " redis.call('XADD', KEYS[1], '*', 'data', ARGV[i]) end"
    " return #ARGV"
)


def capture(testCase: TestCase) -> list[dict[str, Any]]:
    """
    @return: The log events emitted from now on during C{testCase}.
    """
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    testCase.addCleanup(globalLogPublisher.removeObserver, events.append)
    return events


def said(events: list[dict[str, Any]], level: LogLevel) -> list[str]:
    """
    @return: The text of the events of C{level}.
    """
    return [formatEvent(e) for e in events if e.get("log_level") == level]


def options(server: RedisServer, **extra: str) -> dict[str, str]:
    """
    @return: A redis source's options for C{server}, stream C{s}.
    """
    result = {"redis": server.url, "stream": "s"}
    if server.tls:
        result["redis_ca_file"] = server.certificates["ca"]
    result.update(extra)
    return result


def ids(channel: FakeChannel) -> list[tuple[int, int]]:
    """
    @return: The stream ids of the messages delivered, as numbers.
    """
    out = []
    for _, _, sourceId in channel.messages:
        assert sourceId is not None
        out.append(parseId(sourceId))
    return out


def readerId(server: RedisServer) -> int | None:
    """
    @return: The id of the client connection blocked in C{XREAD}, if any.
    """
    for line in server.call("CLIENT", "LIST").decode().splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        if fields.get("cmd") == "xread":
            return int(fields["id"])
    return None


async def readingSource(
    testCase: TestCase,
    server: RedisServer,
    channel: FakeChannel | None = None,
    **extra: str,
) -> tuple[RedisSource, FakeChannel]:
    """
    A started L{RedisSource} on C{server}, stopped at the end of
    C{testCase}, once it reads (its channel was told C{up}).
    """
    channel = channel if channel is not None else FakeChannel()
    source = RedisSource(channel, options(server, **extra), FakeContext())
    source.start()
    testCase.addCleanup(source.stop)
    await waitFor(lambda: "up" in channel.states)
    return source, channel


class ReadingTests(TestCase):
    """
    The source delivers a stream's new entries in order, one C{deliver}
    per read, with their ids.
    """

    async def test_interfaces(self) -> None:
        """
        The source provides L{ISource} and L{ISourceHistory}.
        """
        server = await startRedis(self)
        source = RedisSource(FakeChannel(), options(server), FakeContext())
        self.assertTrue(verifyObject(ISource, source))
        self.assertTrue(verifyObject(ISourceHistory, source))

    async def test_fromTheEnd(self) -> None:
        """
        Entries already in the stream at start are not delivered; new ones
        are, in order, text by default, with their stream ids.
        """
        server = await startRedis(self)
        server.call("XADD", "s", "*", "data", "old")
        source, channel = await readingSource(self, server)
        added = [server.call("XADD", "s", "*", "data", f"m{i}") for i in range(3)]
        await waitFor(lambda: len(channel.messages) == 3)
        self.assertEqual(
            channel.messages,
            [(1, f"m{i}".encode(), added[i].decode()) for i in range(3)],
        )
        self.assertEqual(source.entries, 3)
        self.assertEqual(source.lastId, added[-1].decode())

    async def test_types(self) -> None:
        """
        C{type} C{binary} delivers opcode 2 with the bytes as they are;
        C{type} C{text} opcode 1.
        """
        server = await startRedis(self)
        source, channel = await readingSource(self, server)
        server.call("XADD", "s", "*", "data", b"\x00\xff", "type", "binary")
        server.call("XADD", "s", "*", "type", "text", "data", "é")
        await waitFor(lambda: len(channel.messages) == 2)
        self.assertEqual(
            [m[:2] for m in channel.messages],
            [(2, b"\x00\xff"), (1, "é".encode())],
        )

    async def test_oneDeliveryPerRead(self) -> None:
        """
        Entries that one read gets go to the channel in one call.
        """
        server = await startRedis(self)
        source, channel = await readingSource(self, server)
        server.call("EVAL", ADD_MANY, "1", "s", "a", "b", "c", "d")
        await waitFor(lambda: len(channel.messages) == 4)
        self.assertEqual(len(channel.batches), 1)
        self.assertEqual(channel.payloads, [b"a", b"b", b"c", b"d"])

    async def test_channelKey(self) -> None:
        """
        C{{channel}} in C{stream} expands to the channel's key.
        """
        server = await startRedis(self)
        channel = FakeChannel(key="/eu")
        source, _ = await readingSource(self, server, channel, stream="f:{channel}")
        self.assertEqual(source.settings.stream, "f:/eu")
        server.call("XADD", "s", "*", "data", "not this one")
        server.call("XADD", "f:/eu", "*", "data", "this one")
        await waitFor(lambda: len(channel.messages) == 1)
        self.assertEqual(channel.payloads, [b"this one"])

    async def test_secondStream(self) -> None:
        """
        Two sources on two streams of the same server each deliver only
        their own stream's entries.
        """
        server = await startRedis(self)
        _, one = await readingSource(self, server, FakeChannel(name="one"))
        _, two = await readingSource(
            self, server, FakeChannel(name="two"), stream="other"
        )
        for i in range(3):
            server.call("XADD", "s", "*", "data", f"s{i}")
            server.call("XADD", "other", "*", "data", f"o{i}")
        await waitFor(lambda: len(one.messages) == 3 and len(two.messages) == 3)
        self.assertEqual(one.payloads, [b"s0", b"s1", b"s2"])
        self.assertEqual(two.payloads, [b"o0", b"o1", b"o2"])

    async def test_send(self) -> None:
        """
        A stream source takes no client messages.
        """
        server = await startRedis(self)
        source = RedisSource(FakeChannel(), options(server), FakeContext())
        self.assertFalse(source.send(1, b"hi"))

    async def test_stopAndStart(self) -> None:
        """
        L{RedisSource.stop} closes its connections (its Deferred fires, and
        nothing is delivered after); a new start reads from the end again.
        """
        server = await startRedis(self)
        source, channel = await readingSource(self, server)
        await source.stop()
        self.assertEqual(channel.states[-1], "idle")
        listed = server.call("CLIENT", "LIST").decode()
        self.assertNotIn("cmd=xread", listed)
        server.call("XADD", "s", "*", "data", "while stopped")
        channel.states.clear()
        source.start()
        await waitFor(lambda: "up" in channel.states)
        server.call("XADD", "s", "*", "data", "after")
        await waitFor(lambda: len(channel.messages) == 1)
        self.assertEqual(channel.payloads, [b"after"])

    async def test_takeOver(self) -> None:
        """
        A source that replaces another on the same stream (a reload that
        changed the route's source options) goes on after the last entry
        the other delivered: what was added in between is delivered, once.
        A source on another stream starts at its end.
        """
        server = await startRedis(self)
        old, channel = await readingSource(self, server)
        server.call("XADD", "s", "*", "data", "before")
        await waitFor(lambda: len(channel.messages) == 1)
        await old.stop()
        server.call("XADD", "s", "*", "data", "in between")
        new = RedisSource(channel, options(server, history="5"), FakeContext())
        new.takeOver(old)
        new.start()
        self.addCleanup(new.stop)
        await waitFor(lambda: len(channel.messages) == 2)
        server.call("XADD", "s", "*", "data", "after")
        await waitFor(lambda: len(channel.messages) == 3)
        self.assertEqual(channel.payloads, [b"before", b"in between", b"after"])
        other = RedisSource(FakeChannel(), options(server, stream="t"), FakeContext())
        other.takeOver(new)
        other.start()
        self.addCleanup(other.stop)
        self.assertIsNone(other.lastId)


class BadEntryTests(TestCase):
    """
    Malformed entries are skipped and counted, logged at most once a
    minute; the good ones around them are delivered.
    """

    async def test_skipped(self) -> None:
        """
        No C{data}, an unknown C{type}, text that is not UTF-8: three
        skipped, one warning line naming the first; the rest delivered.
        """
        server = await startRedis(self)
        events = capture(self)
        source, channel = await readingSource(self, server)
        first = server.call("XADD", "s", "*", "payload", "x").decode()
        server.call("XADD", "s", "*", "data", "a", "type", "json")
        server.call("XADD", "s", "*", "data", b"\xff\xfe", "type", "text")
        server.call("XADD", "s", "*", "data", b"\xff\xfe", "type", "binary")
        server.call("XADD", "s", "*", "data", "fine")
        await waitFor(lambda: len(channel.messages) == 2)
        self.assertEqual(source.skipped, 3)
        self.assertEqual(channel.payloads, [b"\xff\xfe", b"fine"])
        warnings = said(events, LogLevel.warn)
        self.assertEqual(len(warnings), 1, warnings)
        self.assertIn(f"skipped entry {first}: no data field", warnings[0])
        self.assertNotIn("\n", warnings[0])


class FailureTests(TestCase):
    """
    Redis restarted, connections dropped, a trimmed stream, a key of the
    wrong type: the source goes on, never delivering an entry twice or out
    of order, and counts what it may have missed.
    """

    async def test_connectionDropped(self) -> None:
        """
        When its connection is closed, the source reconnects and goes on
        from its last id: entries added meanwhile are delivered, none
        twice, no gap counted.
        """
        server = await startRedis(self)
        source, channel = await readingSource(self, server)
        server.call("XADD", "s", "*", "data", "before")
        await waitFor(lambda: len(channel.messages) == 1)
        server.transaction(
            ("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"),
            ("XADD", "s", "*", "data", "meanwhile"),
        )
        server.call("XADD", "s", "*", "data", "after")
        await waitFor(lambda: len(channel.messages) >= 3)
        self.assertEqual(channel.payloads, [b"before", b"meanwhile", b"after"])
        self.assertEqual(source.gaps, 0)
        self.assertIn("waiting", channel.states)

    async def test_emptyAtStartReconnect(self) -> None:
        """
        When the stream was empty at the start and the connection is lost
        before the first entry, the source reconnects and delivers every
        entry added meanwhile, counting no gap.
        """
        server = await startRedis(self)
        source, channel = await readingSource(self, server)
        self.assertEqual(source.lastId, "0-0")
        server.transaction(
            ("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"),
            ("XADD", "s", "*", "data", "meanwhile"),
        )
        server.call("XADD", "s", "*", "data", "after")
        await waitFor(lambda: len(channel.messages) >= 2 or source.gaps > 0)
        self.assertEqual(channel.payloads, [b"meanwhile", b"after"])
        self.assertEqual(source.gaps, 0)

    async def test_trimmedWhileReading(self) -> None:
        """
        When the stream is trimmed past the last entry read while the
        source is connected (it fell behind a writer outrunning the
        history), it counts one gap, logs it once, and delivers the
        entries left; a trimmed stream it keeps up with counts none.
        """
        self.patch(wsrelay.redis.source, "BLOCK_MS", 500)
        server = await startRedis(self)
        events = capture(self)
        source, channel = await readingSource(self, server)
        for i in range(3):
            server.call("XADD", "s", "MAXLEN", "2", "*", "data", f"kept up {i}")
            await waitFor(lambda n=i + 1: len(channel.messages) == n)
        self.assertEqual(source.gaps, 0)
        server.call(
            "EVAL",
            "for i = 1, 2000 do redis.call('XADD', KEYS[1], 'MAXLEN', '100',"
            " '*', 'data', 'x' .. i) end return 1",
            "1",
            "s",
        )
        await waitFor(lambda: len(channel.messages) == 103)
        self.assertEqual(channel.payloads[3], b"x1901")
        # Counted at the next check: a read at most CHECK_INTERVAL later.
        await waitFor(lambda: source.gaps > 0)
        self.assertEqual(source.gaps, 1)
        gaps = [w for w in said(events, LogLevel.warn) if "no longer holds" in w]
        self.assertEqual(len(gaps), 1, gaps)

    async def test_trimmedAfterEmptyStart(self) -> None:
        """
        From a stream that did not exist at the start, a trim past the
        first entry read before the source ever caught up again is a gap
        too.
        """
        self.patch(wsrelay.redis.source, "BLOCK_MS", 500)
        server = await startRedis(self)
        source, channel = await readingSource(self, server)
        server.call("XADD", "s", "*", "data", "first")
        await waitFor(lambda: len(channel.messages) == 1)
        server.call(
            "EVAL",
            "for i = 1, 2000 do redis.call('XADD', KEYS[1], 'MAXLEN', '100',"
            " '*', 'data', 'x' .. i) end return 1",
            "1",
            "s",
        )
        await waitFor(lambda: len(channel.messages) == 101)
        await waitFor(lambda: source.gaps > 0)
        self.assertEqual(source.gaps, 1)

    async def test_silentServer(self) -> None:
        """
        When Redis stops answering (the process stopped, as a cut network
        looks), the source notices by the read's deadline and reconnects
        with backoff, each login attempt also given up after its
        deadline; once Redis answers again, reading goes on.
        """
        self.patch(wsrelay.redis.source, "BLOCK_MS", 100)
        self.patch(wsrelay.redis.source, "REPLY_MARGIN", 0.5)
        server = await startRedis(self)
        process = server.process
        assert process is not None
        source, channel = await readingSource(self, server)
        # After the endpoint was made: it takes whole seconds.
        self.patch(wsrelay.redis.client, "CONNECT_TIMEOUT", 0.5)
        channel.states.clear()
        process.send_signal(signal.SIGSTOP)
        self.addCleanup(process.send_signal, signal.SIGCONT)
        await waitFor(lambda: "waiting" in channel.states)
        await waitFor(lambda: source._reader.attempts >= 1)
        process.send_signal(signal.SIGCONT)
        await waitFor(lambda: channel.states[-1] == "up")
        server.call("XADD", "s", "*", "data", "back")
        await waitFor(lambda: len(channel.messages) == 1)
        self.assertEqual(channel.payloads, [b"back"])

    async def test_trimmed(self) -> None:
        """
        When the stream was trimmed past the last id delivered while the
        source was away, it counts one gap, logs it once, and goes on with
        the entries after that id still in the stream.
        """
        server = await startRedis(self)
        events = capture(self)
        source, channel = await readingSource(self, server)
        server.call("XADD", "s", "*", "data", "seen")
        await waitFor(lambda: len(channel.messages) == 1)
        server.transaction(
            ("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"),
            ("XADD", "s", "*", "data", "missed"),
            ("XADD", "s", "*", "data", "kept but old"),
            ("XTRIM", "s", "MAXLEN", "1"),
        )
        await waitFor(lambda: source.gaps == 1)
        await waitFor(lambda: channel.states[-1] == "up")
        server.call("XADD", "s", "*", "data", "new")
        await waitFor(lambda: len(channel.messages) == 3)
        self.assertEqual(channel.payloads, [b"seen", b"kept but old", b"new"])
        gaps = [w for w in said(events, LogLevel.warn) if "no longer holds" in w]
        self.assertEqual(len(gaps), 1, gaps)
        self.assertNotIn("\n", gaps[0])

    async def test_restartedUnderTraffic(self) -> None:
        """
        Redis killed and restarted empty while entries keep coming: the
        source reconnects, counts one gap, and delivers the new entries;
        no entry twice, ids only ever growing.
        """
        server = await startRedis(self)
        source, channel = await readingSource(self, server)
        written = []

        def write() -> None:
            try:
                reply = server.call("XADD", "s", "*", "data", str(len(written)))
            except OSError:
                return
            if not isinstance(reply, ReplyError):
                written.append(reply)

        writer = LoopingCall(write)
        writer.start(0.005)
        self.addCleanup(lambda: writer.running and writer.stop())
        await waitFor(lambda: len(channel.messages) >= 20)
        await server.restart()
        self.assertEqual(source.gaps, 0)
        await waitFor(lambda: source.gaps == 1)
        count = len(channel.messages)
        await waitFor(lambda: len(channel.messages) >= count + 20)
        writer.stop()
        got = ids(channel)
        self.assertEqual(got, sorted(set(got)))
        self.assertEqual(source.gaps, 1)

    async def test_unreachableAtStart(self) -> None:
        """
        No Redis at the URL when the source starts: one warning line naming
        the server and the cause; once a server answers there, the source
        reads.
        """
        requireRedis(self)
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        server = RedisServer(directory)
        server.port = freePort()
        self.addCleanup(server.stop)
        events = capture(self)
        channel = FakeChannel()
        source = RedisSource(channel, options(server), FakeContext())
        source.start()
        self.addCleanup(source.stop)
        await waitFor(lambda: source._reader.attempts >= 2)
        warnings = said(events, LogLevel.warn)
        self.assertEqual(len(warnings), 1, warnings)
        self.assertIn(f"redis://127.0.0.1:{server.port}/0: Connection", warnings[0])
        self.assertNotIn("\n", warnings[0])
        self.assertEqual(channel.states, ["connecting"])
        await server.start(keepPort=True)
        await waitFor(lambda: "up" in channel.states)
        server.call("XADD", "s", "*", "data", "at last")
        await waitFor(lambda: channel.payloads == [b"at last"])

    async def test_stopWhileUnreachable(self) -> None:
        """
        A source waiting for an unreachable Redis stops at once.
        """
        requireRedis(self)
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        server = RedisServer(directory)
        server.port = freePort()
        channel = FakeChannel()
        source = RedisSource(channel, options(server), FakeContext())
        source.start()
        await waitFor(lambda: source._reader.attempts >= 1)
        self.successResultOf(source.stop())
        self.assertEqual(channel.states[-1], "idle")

    async def test_wrongType(self) -> None:
        """
        A key that is no stream: one error line naming the stream and
        Redis's reason, retried with backoff; once the key is a stream,
        entries are delivered.
        """
        server = await startRedis(self)
        server.call("SET", "s", "a string")
        events = capture(self)
        channel = FakeChannel()
        source = RedisSource(channel, options(server), FakeContext())
        source.start()
        self.addCleanup(source.stop)
        await waitFor(lambda: source.errors >= 2)
        errors = said(events, LogLevel.error)
        self.assertEqual(len(errors), 1, errors)
        self.assertIn("cannot read stream s: WRONGTYPE", errors[0])
        self.assertNotIn("\n", errors[0])
        self.assertNotIn("up", channel.states)
        server.call("DEL", "s")
        await waitFor(lambda: "up" in channel.states)
        server.call("XADD", "s", "*", "data", "now")
        await waitFor(lambda: len(channel.messages) == 1)
        self.assertIsNone(source.lastError)


class SettingsTests(TestCase):
    """
    Passwords, password files and TLS, and what is said when they are
    wrong.
    """

    async def test_wrongPassword(self) -> None:
        """
        A wrong password: one warning line naming the server and
        C{WRONGPASS}, never the password; nothing delivered, retried.
        """
        server = await startRedis(self, password="sesame")
        events = capture(self)
        channel = FakeChannel()
        url = server.url.replace("sesame", "guess")
        source = RedisSource(channel, options(server, redis=url), FakeContext())
        source.start()
        self.addCleanup(source.stop)
        await waitFor(lambda: source._reader.attempts >= 2)
        warnings = said(events, LogLevel.warn)
        self.assertEqual(len(warnings), 1, warnings)
        self.assertIn(f"127.0.0.1:{server.port}/0: WRONGPASS", warnings[0])
        self.assertNotIn("guess", warnings[0])
        self.assertNotIn("up", channel.states)

    def test_filesReadOnce(self) -> None:
        """
        The channels of a route (sources built from the same options)
        read the password file once; options parsed anew (a reload) read
        it again.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("pw\n")
        reads: list[str] = []
        read = wsrelay.redis.settings.readPasswordFile

        def counting(name: str) -> str:
            reads.append(name)
            return read(name)

        self.patch(wsrelay.redis.settings, "readPasswordFile", counting)
        opts = {"redis": "redis://127.0.0.1:1/0", "stream": "s:{channel}"}
        opts["redis_password_file"] = path
        context = FakeContext()
        a = RedisSource(FakeChannel(), opts, context)
        b = RedisSource(FakeChannel(), opts, context)
        self.assertEqual(reads, [path])
        self.assertEqual(
            (a.settings.address.password, b.settings.address.password), ("pw", "pw")
        )
        RedisSource(FakeChannel(), dict(opts), context)
        self.assertEqual(reads, [path, path])

    async def test_passwordFile(self) -> None:
        """
        C{redis_password_file} gives the password.
        """
        server = await startRedis(self, password="sesame")
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write("sesame\n")
        url = f"redis://127.0.0.1:{server.port}/0"
        source, channel = await readingSource(
            self, server, redis=url, redis_password_file=path
        )
        server.call("XADD", "s", "*", "data", "in")
        await waitFor(lambda: len(channel.messages) == 1)

    async def test_tls(self) -> None:
        """
        C{rediss://}: the server's certificate verified against
        C{redis_ca_file}, entries delivered.
        """
        server = await startRedis(self, tls=True)
        source, channel = await readingSource(self, server)
        server.call("XADD", "s", "*", "data", "secret")
        await waitFor(lambda: len(channel.messages) == 1)

    async def test_tlsUnverified(self) -> None:
        """
        A certificate the configured CA did not sign is refused: one
        warning line, no reading.
        """
        server = await startRedis(self, tls=True)
        other = os.path.abspath(self.mktemp())
        os.makedirs(other)
        foreign = makeCertificates(other, ["127.0.0.1"])["ca"]
        events = capture(self)
        channel = FakeChannel()
        source = RedisSource(
            channel, options(server, redis_ca_file=foreign), FakeContext()
        )
        source.start()
        self.addCleanup(source.stop)
        await waitFor(lambda: source._reader.attempts >= 1)
        warnings = said(events, LogLevel.warn)
        self.assertEqual(len(warnings), 1, warnings)
        self.assertIn(f"rediss://127.0.0.1:{server.port}/0", warnings[0])
        self.assertNotIn("\n", warnings[0])
        self.assertNotIn("up", channel.states)


class HistoryTests(TestCase):
    """
    L{RedisSource.after}: the entries after an id, up to the last one
    delivered; L{None} when the stream no longer holds the id.
    """

    async def test_after(self) -> None:
        """
        The entries after the id, oldest first, at most C{limit}.
        """
        server = await startRedis(self)
        source, channel = await readingSource(self, server)
        for i in range(5):
            server.call("XADD", "s", "*", "data", f"m{i}")
        await waitFor(lambda: len(channel.messages) == 5)
        first = channel.messages[0][2]
        assert first is not None
        got = await source.after(first, 10)
        assert got is not None
        self.assertEqual(list(got), channel.messages[1:])
        got = await source.after(first, 2)
        assert got is not None
        self.assertEqual(list(got), channel.messages[1:3])

    async def test_upToDelivered(self) -> None:
        """
        The history ends at the last entry delivered when its result
        fires, wherever the live reads are: the history, then what the
        channel delivers next, make the stream once, in order.
        """
        server = await startRedis(self)
        source, channel = await readingSource(self, server)
        server.call("XADD", "s", "*", "data", "m0")
        await waitFor(lambda: len(channel.messages) == 1)
        first = channel.messages[0][2]
        assert first is not None
        for i in range(1, 4):
            # The reader's connection closed as the entry is added: it
            # reads it only after reconnecting (with backoff), most likely
            # after the history's reply came.
            await waitFor(lambda: readerId(server) is not None)
            server.transaction(
                ("CLIENT", "KILL", "ID", str(readerId(server))),
                ("XADD", "s", "*", "data", f"m{i}"),
            )
            d = source.after(first, 100)
            got, delivered = await d.addCallback(lambda r: (r, list(channel.messages)))
            self.assertEqual(list(got), delivered[1:])
            await waitFor(lambda n=i + 1: len(channel.messages) == n)
        self.assertEqual(channel.payloads, [b"m0", b"m1", b"m2", b"m3"])

    async def test_notPositioned(self) -> None:
        """
        Started but not yet positioned (no C{lastId}): L{None}, not an
        empty history that would move a resuming client to the live
        stream past what came after its id.
        """
        server = await startRedis(self)
        first = server.call("XADD", "s", "*", "data", "m0").decode()
        server.call("XADD", "s", "*", "data", "m1")
        channel = FakeChannel()
        source = RedisSource(channel, options(server), FakeContext())
        source.start()
        self.addCleanup(source.stop)
        self.assertIsNone(source.lastId)
        self.assertIsNone(await source.after(first, 10))

    async def test_gone(self) -> None:
        """
        An id the stream was trimmed past, or one that is no id: L{None}.
        """
        server = await startRedis(self)
        source, channel = await readingSource(self, server)
        for i in range(3):
            server.call("XADD", "s", "*", "data", f"m{i}")
        await waitFor(lambda: len(channel.messages) == 3)
        server.call("XTRIM", "s", "MAXLEN", "1")
        first = channel.messages[0][2]
        assert first is not None
        self.assertIsNone(await source.after(first, 10))
        self.assertIsNone(await source.after("nonsense", 10))

    async def test_unreachable(self) -> None:
        """
        When Redis cannot be reached, the history fails after one attempt
        instead of keeping a resuming client waiting.
        """
        server = await startRedis(self)
        source, channel = await readingSource(self, server)
        server.call("XADD", "s", "*", "data", "m0")
        await waitFor(lambda: len(channel.messages) == 1)
        first = channel.messages[0][2]
        assert first is not None
        server.kill()
        d = source.after(first, 10)
        await waitFor(lambda: d.called)
        self.failureResultOf(d)

    async def test_silentServer(self) -> None:
        """
        A server that stops answering fails a lookup within
        L{wsrelay.redis.entries.HISTORY_TIMEOUT}, and the connection is
        made again for the next one.
        """
        self.patch(wsrelay.redis.entries, "HISTORY_TIMEOUT", 0.3)
        server = await startRedis(self)
        process = server.process
        assert process is not None
        source, channel = await readingSource(self, server)
        server.call("XADD", "s", "*", "data", "m0")
        server.call("XADD", "s", "*", "data", "m1")
        await waitFor(lambda: len(channel.messages) == 2)
        first = channel.messages[0][2]
        assert first is not None
        self.assertEqual(len(await source.after(first, 10) or []), 1)
        process.send_signal(signal.SIGSTOP)
        self.addCleanup(process.send_signal, signal.SIGCONT)
        d = source.after(first, 10)
        await waitFor(lambda: d.called)
        self.failureResultOf(d)
        process.send_signal(signal.SIGCONT)
        got = await source.after(first, 10)
        self.assertEqual([m[1] for m in got or []], [b"m1"])


class PreloadTests(TestCase):
    """
    At its start the source hands its channel the stream's newest entries,
    as many as the channel keeps, before it reports itself up; the live
    reads go on after them.
    """

    async def test_newest(self) -> None:
        """
        The last C{keep} entries, oldest first, before C{up}; the next
        entry added is delivered live, and no preloaded one is.
        """
        server = await startRedis(self)
        ids = [
            server.call("XADD", "s", "*", "data", f"m{n}").decode() for n in range(3)
        ]
        channel = FakeChannel(keep=2)
        source, _ = await readingSource(self, server, channel)
        self.assertEqual(channel.preloads, [[(1, b"m1", ids[1]), (1, b"m2", ids[2])]])
        self.assertEqual(source.lastId, ids[2])
        server.call("XADD", "s", "*", "data", "live")
        await waitFor(lambda: len(channel.messages) == 1)
        self.assertEqual(channel.payloads, [b"live"])

    async def test_emptyAndOnce(self) -> None:
        """
        An empty stream preloads nothing (what the channel held goes);
        a reconnect does not preload again: the window goes on.
        """
        server = await startRedis(self)
        channel = FakeChannel(keep=5)
        source, _ = await readingSource(self, server, channel)
        self.assertEqual(channel.preloads, [[]])
        server.call("XADD", "s", "*", "data", "m0")
        await waitFor(lambda: len(channel.messages) == 1)
        await waitFor(lambda: readerId(server) is not None)
        channel.states.clear()
        server.call("CLIENT", "KILL", "ID", str(readerId(server)))
        await waitFor(lambda: "up" in channel.states)
        server.call("XADD", "s", "*", "data", "m1")
        await waitFor(lambda: len(channel.messages) == 2)
        self.assertEqual(channel.preloads, [[]])
        self.assertEqual(channel.payloads, [b"m0", b"m1"])

    async def test_keepsNothing(self) -> None:
        """
        A channel that keeps nothing is not preloaded.
        """
        server = await startRedis(self)
        server.call("XADD", "s", "*", "data", "m0")
        channel = FakeChannel()
        await readingSource(self, server, channel)
        self.assertEqual(channel.preloads, [])


class ParseSettingsTests(SynchronousTestCase):
    """
    L{parseSettings} checks a redis source's options, each error one line
    naming the key.
    """

    def test_defaults(self) -> None:
        """
        History 10000, ingest off, a lease of 5 seconds, no CA file.
        """
        s = parseSettings({"redis": "redis://h:1/2", "stream": "k"}, "")
        self.assertEqual(
            (s.stream, s.history, s.ingest, s.lease, s.caFile),
            ("k", 10000, False, 5.0, None),
        )
        self.assertEqual((s.address.host, s.address.port, s.address.db), ("h", 1, 2))

    def test_errors(self) -> None:
        """
        Each wrong option is named.
        """
        base = {"redis": "redis://h:1/0", "stream": "k"}
        for change, key in [
            ({"redis": ""}, "redis"),
            ({"redis": "http://h"}, "redis"),
            ({"stream": " "}, "stream"),
            ({"history": "0"}, "history"),
            ({"history": "many"}, "history"),
            ({"ingest": "maybe"}, "ingest"),
            ({"lease": "-1"}, "lease"),
            ({"lease": "soon"}, "lease"),
            ({"redis_ca_file": "/ca.pem"}, "redis_ca_file"),
            ({"redis_password_file": "/nonexistent/pw"}, "redis_password_file"),
            (
                {"redis": "redis://:pw@h/0", "redis_password_file": "/x"},
                "redis_password_file",
            ),
        ]:
            e = self.assertRaises(ValueError, parseSettings, {**base, **change}, "")
            self.assertTrue(str(e).startswith(key + ": "), str(e))
            self.assertNotIn("\n", str(e))

    def test_passwordFileMissing(self) -> None:
        """
        An unreadable password file: its path and the reason.
        """
        e = self.assertRaises(
            ValueError,
            parseSettings,
            {"redis": "redis://h/0", "stream": "k", "redis_password_file": "/no/pw"},
            "",
        )
        self.assertEqual(
            str(e), "redis_password_file: cannot read /no/pw: No such file or directory"
        )
