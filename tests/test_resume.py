"""
Tests for L{wsrelay.fanout.resume}: clients of a fan-out route that
reconnect with C{?since=ID} get what they missed, then the live stream.
"""

from __future__ import annotations

import base64
import gc
import json
import weakref
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from websockets.sync.client import ClientConnection
from zope.interface import implementer

from tests.support import TIMEOUT, client, inThread, startRelay
from tests.support.clients import closeOf
from tests.support.fanout import Source, channelUp, feed, sourceUp
from tests.support.waiting import waitFor
from wsrelay.config import ConfigError, parseConfig
from wsrelay.fanout import catchup, resume
from wsrelay.fanout.catchup import streamOrder
from wsrelay.fanout.channel import Channel
from wsrelay.fanout.resume import (
    RESUME_GONE,
    ResumeWindow,
    envelope,
    jsonId,
    sinceOf,
    withoutParameter,
)
from wsrelay.interfaces import ISource, ISourceHistory
from wsrelay.routes import sourceFactories
from wsrelay.service import RelayService

Delivered = tuple[int, bytes, "str | None"]


class JSONSource(Source):
    """
    A L{Source} whose messages are JSON objects C{{"seq": N, "path":
    PATH}}, numbered as the source's plain ones are.
    """

    def message(self, seq: int, path: str, size: int) -> str:
        """
        @return: The message numbered C{seq}, as JSON (C{size} is not
            used).
        """
        return json.dumps({"seq": seq, "path": path})

    def sendRaw(self, message: str | bytes) -> None:
        """
        Send C{message} as it is to every open connection.  Blocks.
        """
        with self._lock:
            targets = list(self.open.values())
        for connection in targets:
            connection.send(message)


def receive(c: ClientConnection, count: int) -> list[str | bytes]:
    """
    Receive C{count} messages, each within L{TIMEOUT}.  Blocks.
    """
    return [c.recv(TIMEOUT) for _ in range(count)]


def seqs(messages: Sequence[str | bytes]) -> list[int]:
    """
    @return: The C{seq} field of each JSON message.
    """
    return [int(json.loads(m)["seq"]) for m in messages]


async def connected(testCase: TestCase, port: int, path: str) -> ClientConnection:
    """
    Connect a C{websockets} client, closed at the end of C{testCase}.
    """
    c: ClientConnection = await inThread(client, port, path)
    testCase.addCleanup(inThread, c.close)
    return c


def deliver(channel: Channel, messages: Sequence[Delivered]) -> None:
    """
    Hand C{channel} messages as a source does, with their source ids: its
    C{deliver} (L{wsrelay.interfaces.ISourceChannel}) where it has one, or
    what that does (the window frames each, every member gets it); then
    the end of the reactor turn, when the channel writes to its members
    (L{Channel.flush}).
    """
    method = getattr(channel, "deliver", None)
    if method is not None:
        method(messages)
        channel.flush()
        return
    window = channel.window
    assert window is not None
    for opcode, payload, sourceId in messages:
        data = window.add(opcode, payload, sourceId)
        channel.messagesIn += 1
        channel.deliveries += len(channel.members)
        for member in list(channel.members):
            member.send(data)


def entries(first: int, last: int) -> list[Delivered]:
    """
    @return: Text messages C{"m N"} with Redis stream ids C{1-N}, for N
        from C{first} to C{last}.
    """
    return [(1, f"m {n}".encode(), f"1-{n}") for n in range(first, last + 1)]


def data(messages: Sequence[str | bytes]) -> list[str]:
    """
    @return: The C{data} of each envelope.
    """
    return [json.loads(m)["data"] for m in messages]


@implementer(ISourceHistory)
class FakeHistory:
    """
    A source's history whose answers the test gives by hand.

    @ivar calls: Each C{(sourceId, limit)} asked, with its L{Deferred}.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, Deferred[Any]]] = []

    def after(self, sourceId: str, limit: int) -> Deferred[Any]:
        """
        Record the question; the test fires the answer.
        """
        d: Deferred[Any] = Deferred()
        self.calls.append((sourceId, limit, d))
        return d


class JSONFieldTests(TestCase):
    """
    C{resume = json:FIELD}: a message's id is its JSON field C{FIELD}.
    """

    async def test_resumeInOrder(self) -> None:
        """
        A client joining with C{?since=7} after ten messages gets 8, 9 and
        10, then the live stream, and nothing twice: the message after the
        last one it got is the next live one.  A client joining while the
        source streams gets an unbroken run from its id to the last.
        """
        source = JSONSource(self)
        relay, port = await startRelay(
            self, feed(source, "resume = json:seq\nreplay = 2\n")
        )
        channel = await sourceUp(source, relay)
        await inThread(source.send, 10)
        await waitFor(lambda: channel.messagesIn == 10)
        first = await connected(self, port, "/ticker?since=7")
        self.assertEqual(seqs(await inThread(receive, first, 3)), [8, 9, 10])
        await inThread(source.send, 5)
        self.assertEqual(seqs(await inThread(receive, first, 5)), [11, 12, 13, 14, 15])

        sending = inThread(source.send, 300)
        second = await connected(self, port, "/ticker?since=3")
        await sending
        await inThread(source.send, 1)
        got = seqs(await inThread(receive, second, 313))
        self.assertEqual(got, list(range(4, 317)))
        self.assertEqual(
            seqs(await inThread(receive, first, 301)), list(range(16, 317))
        )

    async def test_noSince(self) -> None:
        """
        Without C{since} (or with an empty one) a client gets the replay,
        as on a route without C{resume}; messages that have no id (not
        JSON, not an object, no such field) go out unchanged.
        """
        source = JSONSource(self)
        relay, port = await startRelay(
            self, feed(source, "resume = json:seq\nreplay = 2\n")
        )
        channel = await sourceUp(source, relay)
        await inThread(source.send, 5)
        await waitFor(lambda: channel.messagesIn == 5)
        c = await connected(self, port, "/ticker?since=")
        self.assertEqual(seqs(await inThread(receive, c, 2)), [4, 5])
        for raw in ("not json", "[1]", '{"other": 1}', b"\x00binary"):
            await inThread(source.sendRaw, raw)
        await inThread(source.send, 1)
        got = await inThread(receive, c, 5)
        self.assertEqual(got[:4], ["not json", "[1]", '{"other": 1}', b"\x00binary"])
        self.assertEqual(seqs(got[4:]), [6])


class EnvelopeTests(TestCase):
    """
    C{resume = envelope}: each message goes out as C{{"id", "data"}}.
    """

    async def test_format(self) -> None:
        """
        Text goes out as C{{"id": ID, "data": TEXT}}, binary as base64 with
        C{"binary": true}, in text frames; ids are C{EPOCH-N} for a
        websocket source, and a client resuming after one gets the rest.
        """
        source = JSONSource(self)
        relay, port = await startRelay(self, feed(source, "resume = envelope\n"))
        channel = await sourceUp(source, relay)
        c = await connected(self, port, "/ticker")
        await waitFor(lambda: len(channel.members) == 1)
        await inThread(source.sendRaw, "hello \u00e9")
        await inThread(source.sendRaw, b"\x00\xffbin")
        await inThread(source.sendRaw, '{"a": 1}')
        got = await inThread(receive, c, 3)
        for message in got:
            self.assertIsInstance(message, str)
        envelopes = [json.loads(m) for m in got]
        self.assertEqual(envelopes[0]["data"], "hello \u00e9")
        self.assertNotIn("binary", envelopes[0])
        self.assertEqual(
            (base64.b64decode(envelopes[1]["data"]), envelopes[1]["binary"]),
            (b"\x00\xffbin", True),
        )
        self.assertEqual(envelopes[2]["data"], '{"a": 1}')
        ids = [e["id"] for e in envelopes]
        epoch = ids[0].rsplit("-", 1)[0]
        self.assertEqual(ids, [f"{epoch}-{n}" for n in (1, 2, 3)])
        self.assertFalse(epoch.isdigit())

        again = await connected(self, port, "/ticker?since=" + ids[0])
        self.assertEqual(await inThread(receive, again, 2), got[1:])

    async def test_unknownEpoch(self) -> None:
        """
        An id of another channel start (another epoch: here another relay
        on the same source, as after a restart) is a miss, not a replay of
        whatever this one numbered the same: with C{resume_miss = close}
        the client is closed with 4410.
        """
        source = JSONSource(self)
        config = feed(source, "resume = envelope\nresume_miss = close\n")
        relay, port = await startRelay(self, config)
        channel = await sourceUp(source, relay)
        c = await connected(self, port, "/ticker")
        await waitFor(lambda: len(channel.members) == 1)
        await inThread(source.send, 2)
        (old, _) = [json.loads(m)["id"] for m in await inThread(receive, c, 2)]
        relay, port = await startRelay(self, config)
        channel = await sourceUp(source, relay, count=2)
        await inThread(source.send, 3)
        await waitFor(lambda: channel.messagesIn == 3)
        window = channel.window
        assert window is not None
        self.assertNotEqual(window.epoch, old.rsplit("-", 1)[0])
        self.assertIn(window.epoch + "-1", window.index)
        resumed = await connected(self, port, "/ticker?since=" + old)
        self.assertEqual(
            await inThread(closeOf, resumed), (RESUME_GONE, "resume point gone")
        )


class MissTests(TestCase):
    """
    An id no longer in the window: C{resume_miss = replay} or C{close}.
    """

    async def test_missReplay(self) -> None:
        """
        With C{resume_window = 3}, C{replay = 2} and C{resume_miss =
        replay}, a client resuming after message 2 of 10 (evicted) gets 9
        and 10, as a new client does, then the live stream.
        """
        source = JSONSource(self)
        relay, port = await startRelay(
            self, feed(source, "resume = json:seq\nreplay = 2\nresume_window = 3\n")
        )
        channel = await sourceUp(source, relay)
        await inThread(source.send, 10)
        await waitFor(lambda: channel.messagesIn == 10)
        c = await connected(self, port, "/ticker?since=2")
        self.assertEqual(seqs(await inThread(receive, c, 2)), [9, 10])
        await inThread(source.send, 1)
        self.assertEqual(seqs(await inThread(receive, c, 1)), [11])
        # The window now holds 9 to 11.
        kept = await connected(self, port, "/ticker?since=9")
        self.assertEqual(seqs(await inThread(receive, kept, 2)), [10, 11])

    async def test_missClose(self) -> None:
        """
        With C{resume_miss = close}, a client resuming after an evicted id
        is closed with 4410, "resume point gone", and nothing before it.
        """
        source = JSONSource(self)
        relay, port = await startRelay(
            self,
            feed(
                source,
                "resume = json:seq\nreplay = 2\nresume_window = 3\n"
                "resume_miss = close\n",
            ),
        )
        channel = await sourceUp(source, relay)
        await inThread(source.send, 10)
        await waitFor(lambda: channel.messagesIn == 10)
        c = await connected(self, port, "/ticker?since=2")
        received: list[str | bytes] = []

        def closing() -> tuple[int | None, str | None]:
            try:
                while True:
                    received.append(c.recv(TIMEOUT))
            except Exception:
                pass
            rcvd = c.protocol.close_rcvd
            return (rcvd.code, rcvd.reason) if rcvd else (None, None)

        self.assertEqual(await inThread(closing), (4410, "resume point gone"))
        self.assertEqual(received, [])
        await waitFor(lambda: not channel.members)


class HistoryTests(TestCase):
    """
    A source with a history of its own (L{ISourceHistory}): a client
    whose id is not in the relay's window is served from it, and the live
    messages that come meanwhile are merged, none twice, none missing.
    """

    async def historyRelay(self) -> tuple[Channel, FakeHistory, int]:
        """
        A relay with C{resume = envelope} whose channel has a hand-fired
        history and a small window, and messages C{1-1} to C{1-5}
        delivered (only 1-4 and 1-5 kept).
        """
        source = JSONSource(self)
        relay, port = await startRelay(
            self, feed(source, "resume = envelope\nresume_window = 2\n")
        )
        channel = await sourceUp(source, relay)
        window = channel.window
        assert window is not None
        history = FakeHistory()
        window.history = history
        deliver(channel, entries(1, 5))
        return channel, history, port

    async def test_liveDuringLookup(self) -> None:
        """
        A client resuming after C{1-2} waits for the history; live
        messages 1-6 to 1-8 arrive meanwhile; the history answers 1-3 to
        1-7 (the source had not 1-8 yet when asked): the client gets 1-3
        to 1-8 once each, in order, then 1-9 live.
        """
        channel, history, port = await self.historyRelay()
        c = await connected(self, port, "/ticker?since=1-2")
        await waitFor(lambda: len(history.calls) == 1)
        sourceId, limit, answer = history.calls[0]
        self.assertEqual(sourceId, "1-2")
        self.assertGreater(limit, 0)
        deliver(channel, entries(6, 8))
        answer.callback(entries(3, 7))
        deliver(channel, entries(9, 9))
        got = await inThread(receive, c, 7)
        self.assertEqual(data(got), [f"m {n}" for n in range(3, 10)])
        self.assertEqual([json.loads(m)["id"] for m in got][:2], ["1-3", "1-4"])
        deliver(channel, entries(10, 10))
        self.assertEqual(data(await inThread(receive, c, 1)), ["m 10"])

    async def test_historyAhead(self) -> None:
        """
        The history may be ahead of this relay's live stream (another
        relay wrote more than this one read yet): the client gets the
        history, then only the live messages after its end.
        """
        channel, history, port = await self.historyRelay()
        c = await connected(self, port, "/ticker?since=1-1")
        await waitFor(lambda: len(history.calls) == 1)
        history.calls[0][2].callback(entries(2, 9))
        self.assertEqual(
            data(await inThread(receive, c, 8)), [f"m {n}" for n in range(2, 10)]
        )
        deliver(channel, entries(6, 11))
        self.assertEqual(data(await inThread(receive, c, 2)), ["m 10", "m 11"])
        window = channel.window
        assert window is not None
        await waitFor(lambda: not window._catchUps)
        deliver(channel, entries(12, 12))
        self.assertEqual(data(await inThread(receive, c, 1)), ["m 12"])

    async def test_historyMiss(self) -> None:
        """
        The history no longer has the id: the client gets the replay (here
        none), then the live messages, including those that came during
        the lookup only if they are in the replay.
        """
        channel, history, port = await self.historyRelay()
        c = await connected(self, port, "/ticker?since=1-1")
        await waitFor(lambda: len(history.calls) == 1)
        history.calls[0][2].callback(None)
        await waitFor(lambda: len(channel.members) == 1)
        deliver(channel, entries(6, 6))
        self.assertEqual(data(await inThread(receive, c, 1)), ["m 6"])

    async def test_pages(self) -> None:
        """
        A history answers at most C{limit} messages at a time: a full page
        is followed by a question after its last id, until a short page.
        """
        self.patch(catchup, "PAGE", 3)
        channel, history, port = await self.historyRelay()
        c = await connected(self, port, "/ticker?since=1-0")
        await waitFor(lambda: len(history.calls) == 1)
        self.assertEqual(history.calls[0][:2], ("1-0", 3))
        history.calls[0][2].callback(entries(1, 3))
        self.assertEqual(history.calls[1][:2], ("1-3", 3))
        history.calls[1][2].callback(entries(4, 5))
        self.assertEqual(len(history.calls), 2)
        deliver(channel, entries(6, 6))
        got = await inThread(receive, c, 6)
        self.assertEqual(data(got), [f"m {n}" for n in range(1, 7)])

    async def test_anotherRelay(self) -> None:
        """
        Envelope ids that are source ids mean the same on every relay of
        the source: a client that got C{1-3} from one relay resumes on
        another, which has the same messages, after C{1-3}.
        """
        channel, history, port = await self.historyRelay()
        source = JSONSource(self)
        other, otherPort = await startRelay(
            self, feed(source, "resume = envelope\nresume_window = 10\n")
        )
        otherChannel = await sourceUp(source, other)
        deliver(otherChannel, entries(1, 5))
        first = await connected(self, port, "/ticker")
        await waitFor(lambda: len(channel.members) == 1)
        deliver(channel, entries(6, 6))
        deliver(otherChannel, entries(6, 6))
        (got,) = await inThread(receive, first, 1)
        self.assertEqual(json.loads(got)["id"], "1-6")
        resumed = await connected(self, otherPort, "/ticker?since=1-3")
        self.assertEqual(
            data(await inThread(receive, resumed, 3)), ["m 4", "m 5", "m 6"]
        )
        self.assertEqual(history.calls, [])

    async def test_historyFails(self) -> None:
        """
        A history that fails (Redis unreachable) is a miss, logged as one
        line: with C{resume_miss = replay} the client gets the replay (here
        none) and the live stream.
        """
        channel, history, port = await self.historyRelay()
        c = await connected(self, port, "/ticker?since=1-1")
        await waitFor(lambda: len(history.calls) == 1)
        history.calls[0][2].errback(ConnectionError("redis down"))
        window = channel.window
        assert window is not None
        await waitFor(lambda: not window._catchUps)
        deliver(channel, entries(6, 6))
        self.assertEqual(data(await inThread(receive, c, 1)), ["m 6"])

    async def test_leaveDuringLookup(self) -> None:
        """
        A client that leaves while its history is looked up is forgotten:
        the answer, when it comes, goes nowhere, and the channel has no
        members left.
        """
        channel, history, port = await self.historyRelay()
        c = await connected(self, port, "/ticker?since=1-1")
        await waitFor(lambda: len(history.calls) == 1)
        self.assertEqual(len(channel.members), 1)
        await inThread(c.close)
        await waitFor(lambda: not channel.members)
        window = channel.window
        assert window is not None
        self.assertEqual(window._catchUps, {})

    async def test_hugeSince(self) -> None:
        """
        A C{since} of thousands of digits (more than Python turns into an
        int) is a miss, not an exception that leaves the client open with
        no membership.
        """
        channel, history, port = await self.historyRelay()
        c = await connected(self, port, "/ticker?since=" + "1" * 4400 + "-1")
        await waitFor(lambda: len(channel.members) == 1)
        self.assertEqual(history.calls, [])
        deliver(channel, entries(6, 6))
        self.assertEqual(data(await inThread(receive, c, 1)), ["m 6"])

    async def test_joinFails(self) -> None:
        """
        An exception while a client joins (a bug) closes it with 1011,
        logged.
        """
        channel, _, port = await self.historyRelay()

        def join(member: Any, since: str | None = None) -> None:
            raise RuntimeError("boom")

        channel.join = join  # type: ignore[method-assign]
        c = await connected(self, port, "/ticker?since=1-1")
        self.assertEqual(await inThread(closeOf, c), (1011, "internal error"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class ParameterTests(TestCase):
    """
    The resume parameter is the relay's: not sent to the source, and no
    part of a channel's key.
    """

    async def test_pathChannels(self) -> None:
        """
        With C{channel = path}, C{/ticker/AAPL?since=3} and
        C{/ticker/AAPL} are one channel, with one connection to the source
        at C{/feed/AAPL}; other parameters are kept in both.
        """
        source = JSONSource(self)
        relay, port = await startRelay(
            self, feed(source, "channel = path\nresume = json:seq\n")
        )
        plain = await connected(self, port, "/ticker/AAPL")
        channel = await sourceUp(source, relay, "/AAPL")
        await inThread(source.send, 4)
        await inThread(receive, plain, 4)
        resumed = await connected(self, port, "/ticker/AAPL?since=2")
        self.assertEqual(seqs(await inThread(receive, resumed, 2)), [3, 4])
        deep = await connected(self, port, "/ticker/AAPL?depth=1&since=2")
        await channelUp(relay, "/AAPL?depth=1")
        self.assertEqual(
            sorted(relay.channels),
            [
                ("ticker", "/AAPL"),
                ("ticker", "/AAPL?depth=1"),
            ],
        )
        await source.until(lambda: len(source.paths) == 2)
        self.assertEqual(source.paths, ["/feed/AAPL", "/feed/AAPL?depth=1"])
        self.assertEqual(len(channel.members), 2)
        await inThread(source.send, 1)
        self.assertEqual(seqs(await inThread(receive, resumed, 1)), [5])
        self.assertEqual(seqs(await inThread(receive, deep, 1)), [5])

    async def test_notWithoutResume(self) -> None:
        """
        On a route without C{resume}, C{since} is an ordinary parameter:
        it goes to the source, and makes its own channel.
        """
        source = JSONSource(self)
        relay, port = await startRelay(self, feed(source, "channel = path\n"))
        await connected(self, port, "/ticker/AAPL?since=2")
        await channelUp(relay, "/AAPL?since=2")
        await source.until(lambda: source.paths)
        self.assertEqual(source.paths, ["/feed/AAPL?since=2"])


class WindowTests(SynchronousTestCase):
    """
    L{ResumeWindow} and the helpers, in memory.
    """

    def window(self, field: str | None = "seq", size: int = 3) -> ResumeWindow:
        """
        A window of C{size} messages, epoch C{eX}.
        """
        return ResumeWindow(
            field=field, size=size, replay=1, miss="replay", clock=Clock(), epoch="eX"
        )

    def test_evictionForgetsIds(self) -> None:
        """
        An id leaves the index with its message; a repeated id points at
        its latest message, and survives the eviction of the earlier one.
        """
        w = self.window()
        for seq in (1, 2, 1, 3):
            w.add(1, b'{"seq": %d}' % seq, None)
        self.assertEqual(set(w.index), {"1", "2", "3"})
        self.assertEqual(len(w.after("1") or ()), 1)
        w.add(1, b'{"seq": 4}', None)
        self.assertNotIn("2", w.index)
        self.assertIsNone(w.after("2"))
        self.assertEqual(len(w.after("1") or ()), 2)

    def test_jsonId(self) -> None:
        """
        Strings are ids as they are, integers in decimal; anything else,
        and anything not a JSON object, has no id.
        """
        self.assertEqual(jsonId(b'{"seq": "a-1"}', "seq"), "a-1")
        self.assertEqual(jsonId(b'{"seq": 12}', "seq"), "12")
        # The quick check for the field's name does not miss an escaped one.
        self.assertEqual(jsonId(b'{"s\\u0065q": 7}', "seq", b'"seq"'), "7")
        self.assertIsNone(jsonId(b'{"sequence": 7}', "seq", b'"seq"'))
        self.assertIsNone(jsonId(b'{"a": {"seq": 7}}', "seq", b'"seq"'))
        for payload in (
            b'{"seq": true}',
            b'{"seq": 1.5}',
            b'{"seq": null}',
            b'{"x": 1}',
            b"[1]",
            b"nope",
            b"\xff",
            b"[" * 100000,
        ):
            self.assertIsNone(jsonId(payload, "seq"), payload[:10])

    def test_envelope(self) -> None:
        """
        An envelope is a JSON object with C{id} and C{data}, and
        C{binary} for binary messages.
        """
        self.assertEqual(
            json.loads(envelope("x-1", 1, '"q\u00e9"'.encode())),
            {"id": "x-1", "data": '"q\u00e9"'},
        )
        odd = 'line\nbreak "quoted" \u2028 \U0001f600 \x07'
        self.assertEqual(
            json.loads(envelope('a"b', 1, odd.encode())), {"id": 'a"b', "data": odd}
        )
        self.assertEqual(
            json.loads(envelope("1-2", 2, b"\x00")),
            {"id": "1-2", "data": "AA==", "binary": True},
        )

    def test_sourceIds(self) -> None:
        """
        With envelopes, a message's id is its source id when it has one,
        else C{EPOCH-N}.
        """
        w = self.window(None)
        w.add(1, b"a", None)
        w.add(1, b"b", "5-0")
        self.assertEqual(list(w.ids), ["eX-1", "5-0"])

    def test_streamOrder(self) -> None:
        """
        Redis stream entry ids are ordered by their two numbers; anything
        else (an C{EPOCH-N} id, a bare number, other digits) has no order.
        """
        self.assertLess(streamOrder("9-10") or (), streamOrder("10-0") or ())
        self.assertEqual(streamOrder("1733140000000-2"), (1733140000000, 2))
        for other in ("e1a2-3", "12", "1-", "-1", "\u0661-1", "1-2x", None):
            self.assertIsNone(streamOrder(other), other)

    def test_hugeIds(self) -> None:
        """
        An id of thousands of digits is no stream id (the parts of one have
        at most 20 digits each); a C{since} longer than L{resume.MAX_SINCE}
        is cut so that it finds nothing, and the window counts it a miss
        without asking the history.
        """
        self.assertIsNone(streamOrder("1" * 4400 + "-1"))
        self.assertIsNone(streamOrder("1-" + "1" * 21))
        self.assertEqual(
            streamOrder("18446744073709551615-18446744073709551615"),
            (2**64 - 1, 2**64 - 1),
        )
        since = sinceOf("since=" + "1" * 5000, "since")
        assert since is not None
        self.assertEqual(len(since), resume.MAX_SINCE + 1)
        window = self.window(field=None)
        history = FakeHistory()
        window.history = history
        channel = MemoryChannel()
        member = Member()
        window.join(channel, member, "1" * 300 + "-1")
        self.assertEqual(history.calls, [])
        self.assertEqual(list(channel.members), [member])

    def test_parameters(self) -> None:
        """
        The resume parameter is found and removed by name, whatever its
        position or escaping; the rest of the query is kept as sent.
        """
        self.assertEqual(withoutParameter("a=1&since=2&b=%20", "since"), "a=1&b=%20")
        self.assertEqual(withoutParameter("si%6Ece=2", "since"), "")
        self.assertEqual(withoutParameter("sincere=1", "since"), "sincere=1")
        self.assertEqual(sinceOf("a=1&since=x%2D1", "since"), "x-1")
        self.assertIsNone(sinceOf("since=", "since"))
        self.assertIsNone(sinceOf("a=1", "since"))


class ConfigTests(SynchronousTestCase):
    """
    The resume keys in the config.
    """

    def parse(self, keys: str) -> Any:
        """
        @return: The one route of a config with C{keys}.
        """
        text = (
            "[relay]\nlisten = tcp:0\n[route:r]\npath = /\nmode = fanout\n"
            "backends = ws://h:1/\n" + keys
        )
        return parseConfig(text, "r.ini").routes[0]

    def test_values(self) -> None:
        """
        The keys are read, with their defaults.
        """
        route = self.parse("")
        self.assertEqual(
            (route.resume, route.resumeParam, route.resumeMiss, route.resumeWindow),
            (None, "since", "replay", 1000),
        )
        route = self.parse(
            "resume = json:seq\nresume_param = after\nresume_miss = close\n"
            "resume_window = 5\n"
        )
        self.assertEqual(
            (route.resume, route.resumeParam, route.resumeMiss, route.resumeWindow),
            ("json:seq", "after", "close", 5),
        )
        self.assertIsNone(self.parse("resume = off\n").resume)

    def test_fanoutOnly(self) -> None:
        """
        C{resume} on a proxy route is refused, naming the key.
        """
        e = self.assertRaises(
            ConfigError,
            parseConfig,
            "[relay]\nlisten = tcp:0\n[route:r]\npath = /\nbackends = ws://h:1/\n"
            "resume = envelope\n",
            "r.ini",
        )
        self.assertEqual((e.section, e.key), ("route:r", "resume"))


class Member:
    """
    A channel member in memory: what it is sent, and how it was closed.

    @ivar got: Each write, as C{(data, count)}.
    @ivar closed: The close code and reason, or L{None}.
    @ivar descriptor: L{None}: the channel calls L{send}.
    """

    descriptor = None
    tcp = None

    def __init__(self) -> None:
        self.mark = 0
        self.got: list[tuple[bytes, int]] = []
        self.closed: tuple[int, bytes] | None = None

    def send(self, data: bytes, count: int = 1) -> None:
        """
        Record the write.
        """
        self.got.append((data, count))

    def shutdown(self, code: int = 1001, reason: bytes = b"") -> None:
        """
        Record the close.
        """
        self.closed = (code, reason)

    def messages(self) -> list[dict[str, Any]]:
        """
        @return: The envelopes written to it, decoded.
        """
        out = []
        rest = b"".join(data for data, _ in self.got)
        while rest:
            size = rest[1] & 0x7F
            head = 2
            if size == 126:
                size = int.from_bytes(rest[2:4], "big")
                head = 4
            out.append(json.loads(rest[head : head + size]))
            rest = rest[head + size :]
        return out


class MemoryChannel:
    """
    What a window uses of a channel, in memory.
    """

    def __init__(self) -> None:
        self.members: dict[Any, None] = {}
        self.messagesIn = 0
        self.deliveries = 0

    def flush(self) -> None:
        """
        Nothing is pending: L{deliver} writes at once.
        """


class MemorySource:
    """
    A source in memory: it starts and stops when told, and reports its
    state to its channel by hand (L{up}).
    """

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.running = False

    def start(self) -> None:
        """
        Start (the test says when it is up).
        """
        self.running = True

    def stop(self) -> Deferred[None]:
        """
        Stop.
        """
        self.running = False
        return succeed(None)

    def send(self, opcode: int, payload: bytes) -> bool:
        """
        Take no client message.
        """
        return False

    def up(self) -> None:
        """
        Report the source up.
        """
        self.channel.stateChanged("up")


@implementer(ISource)
class PlainSource(MemorySource):
    """
    A L{MemorySource} without a history.
    """


@implementer(ISource, ISourceHistory)
class HistorySource(MemorySource):
    """
    A L{MemorySource} with a hand-fired history (L{FakeHistory}).
    """

    def __init__(self, channel: Channel) -> None:
        super().__init__(channel)
        self.history = FakeHistory()

    def after(self, sourceId: str, limit: int) -> Deferred[Any]:
        """
        Ask the hand-fired history.
        """
        return self.history.after(sourceId, limit)


def memoryChannel(
    testCase: SynchronousTestCase,
    make: type[MemorySource],
    extra: str = "stream = s\n",
    resume: str = "envelope",
) -> tuple[Channel, Clock]:
    """
    A lazy channel of a route with C{source = redis} (options only: the
    source is made by C{make}), C{resume = envelope}, C{resume_miss =
    close} and C{linger = 5}, on a clock.
    """
    config = parseConfig(
        "[relay]\nlisten = tcp:0\n[route:feed]\npath = /feed\nmode = fanout\n"
        "source = redis\nredis = redis://127.0.0.1:1/0\nconnect = lazy\n"
        f"linger = 5\nresume = {resume}\nresume_miss = close\n" + extra,
        "t.ini",
        sources={n: tuple(f.options) for n, f in sourceFactories().items()},
    )
    clock = Clock()
    relay = RelayService(config, MemoryReactorClock(), clock)
    route = relay.routes.routes[0]
    channel = Channel(route, "", relay.registry, clock, make)
    return channel, clock


def sourceOf(channel: Channel) -> Any:
    """
    @return: The channel's L{MemorySource}.
    """
    source = channel.source
    assert isinstance(source, MemorySource)
    return source


class SourceStopTests(SynchronousTestCase):
    """
    The channel stops its source (linger) or replaces it (reload): what
    came meanwhile never reached the window, so the ids from before the
    stop no longer count there.
    """

    def lingered(self, make: type[MemorySource]) -> tuple[Channel, Clock]:
        """
        A channel that delivered C{1-1} and C{1-2} to a client that left,
        and whose source stopped when the linger ran out.
        """
        channel, clock = memoryChannel(self, make)
        first = Member()
        channel.join(first)
        sourceOf(channel).up()
        deliver(channel, entries(1, 2))
        channel.leave(first)
        clock.advance(5)
        self.assertFalse(sourceOf(channel).running)
        return channel, clock

    def test_stoppedIsMiss(self) -> None:
        """
        Without a history, a client resuming after an id from before the
        stop gets a miss, not the window's messages without those sent
        while the source was stopped.
        """
        channel, _ = self.lingered(PlainSource)
        member = Member()
        channel.join(member, "1-1")
        self.assertEqual(member.closed, (RESUME_GONE, b"resume point gone"))
        self.assertEqual(member.got, [])

    def test_stoppedAsksHistory(self) -> None:
        """
        With a history, such a client is served from it, once the source
        started again is up.
        """
        channel, _ = self.lingered(HistorySource)
        member = Member()
        channel.join(member, "1-1")
        history = sourceOf(channel).history
        self.assertEqual(history.calls, [])
        sourceOf(channel).up()
        self.assertEqual([c[0] for c in history.calls], ["1-1"])
        history.calls[0][2].callback(entries(2, 4))
        self.assertEqual([m["id"] for m in member.messages()], ["1-2", "1-3", "1-4"])
        self.assertIsNone(member.closed)

    def test_replaced(self) -> None:
        """
        A reload that replaces the source (other source options) forgets
        the ids too.
        """
        channel, _ = memoryChannel(self, PlainSource, "stream = a\n")
        first = Member()
        channel.join(first)
        sourceOf(channel).up()
        deliver(channel, entries(1, 2))
        old = channel.source
        channel.route = memoryChannel(self, PlainSource, "stream = b\n")[0].route
        self.assertIsNot(channel.source, old)
        member = Member()
        channel.join(member, "1-1")
        self.assertEqual(member.closed, (RESUME_GONE, b"resume point gone"))


@implementer(ISource)
class PickySource(PlainSource):
    """
    A L{PlainSource} that refuses a route whose stream is C{bad}, as a
    source plugin refuses options that do not fit a channel.
    """

    def __init__(self, channel: Channel) -> None:
        if channel.routeConfig.sourceOptions.get("stream") == "bad":
            raise ValueError("stream: bad does not fit this channel")
        super().__init__(channel)


class SourceRejectedTests(SynchronousTestCase):
    """
    A reload whose source options the source refuses for an existing
    channel: the channel goes on as it was, and says why in one line.
    """

    def test_keepsSource(self) -> None:
        """
        The channel keeps its source, its route and its window; the error
        is logged in one line naming the channel.
        """
        channel, _ = memoryChannel(self, PickySource, "stream = good\n")
        member = Member()
        channel.join(member)
        sourceOf(channel).up()
        deliver(channel, entries(1, 2))
        old, oldRoute = channel.source, channel.route
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        channel.route = memoryChannel(self, PlainSource, "stream = bad\n")[0].route
        self.assertIs(channel.source, old)
        self.assertIs(channel.route, oldRoute)
        self.assertTrue(sourceOf(channel).running)
        (error,) = [formatEvent(e) for e in events if "bad does not" in formatEvent(e)]
        self.assertTrue(error.startswith("channel feed: keeps its source"), error)
        self.assertNotIn("\n", error)
        resumed = Member()
        channel.join(resumed, "1-1")
        self.assertEqual([m["id"] for m in resumed.messages()], ["1-2"])


@implementer(ISource, ISourceHistory)
class StoreSource(HistorySource):
    """
    A L{HistorySource} whose store preloads its channel when it comes up
    (as the C{redis} source does from its stream).
    """

    def up(self) -> None:
        """
        Preload the stream's C{1-1} to C{1-3}, then report the source up.
        """
        self.channel.preload(entries(1, 3))
        super().up()


class PreloadTests(SynchronousTestCase):
    """
    A source with a store hands its channel the stream's newest messages
    before it is up (L{Channel.preload}): a relay started after a message
    resumes clients from it, as every other relay of the stream does.
    """

    def test_window(self) -> None:
        """
        The window holds the preloaded messages: a client resuming after
        one gets the others, a new client gets the replay from them; no
        member gets them when they are preloaded.
        """
        channel, _ = memoryChannel(self, StoreSource, "stream = s\nreplay = 1\n")
        first = Member()
        channel.join(first)
        sourceOf(channel).up()
        self.assertEqual(first.got, [])
        resumed, fresh = Member(), Member()
        channel.join(resumed, "1-1")
        channel.join(fresh)
        self.assertEqual([m["id"] for m in resumed.messages()], ["1-2", "1-3"])
        self.assertEqual([m["id"] for m in fresh.messages()], ["1-3"])
        self.assertEqual(sourceOf(channel).history.calls, [])

    def test_replaces(self) -> None:
        """
        A preload replaces what the window held (the source started
        again): no message twice in the replay.
        """
        channel, _ = memoryChannel(self, StoreSource, "stream = s\nreplay = 5\n")
        channel.join(Member())
        sourceOf(channel).up()
        sourceOf(channel).up()
        fresh = Member()
        channel.join(fresh)
        self.assertEqual([m["id"] for m in fresh.messages()], ["1-1", "1-2", "1-3"])

    def test_jsonWaitsForUp(self) -> None:
        """
        With C{resume = json:FIELD}, a client resuming while the source
        comes up waits for the preload (its ids are not stream ids, so no
        history lookup can serve it), then gets what came after its id.
        """
        channel, clock = memoryChannel(self, JSONStoreSource, resume="json:seq")
        member = Member()
        channel.join(member, "1")
        self.assertEqual(member.got, [])
        self.assertIsNone(member.closed)
        sourceOf(channel).up()
        self.assertEqual([m["seq"] for m in member.messages()], [2, 3])
        self.assertIn(member, channel.members)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_jsonNeverUp(self) -> None:
        """
        A source that does not come up in time: the waiting client gets a
        miss.
        """
        channel, clock = memoryChannel(self, JSONStoreSource, resume="json:seq")
        member = Member()
        channel.join(member, "1")
        clock.advance(catchup.LOOKUP_TIMEOUT)
        clock.advance(0)
        self.assertEqual(member.closed, (RESUME_GONE, b"resume point gone"))
        self.assertNotIn(member, channel.members)


@implementer(ISource, ISourceHistory)
class JSONStoreSource(HistorySource):
    """
    A L{HistorySource} whose store holds JSON messages C{{"seq": N}}.
    """

    def up(self) -> None:
        """
        Preload C{seq} 1 to 3, then report the source up.
        """
        self.channel.preload(
            [(1, json.dumps({"seq": n}).encode(), f"1-{n}") for n in (1, 2, 3)]
        )
        super().up()


class LookupBoundTests(SynchronousTestCase):
    """
    A client resuming from the source's history never waits for ever: a
    failure anywhere (also while merging), a slow answer, or too many
    live messages held meanwhile is a miss.
    """

    def resuming(self) -> tuple[Channel, Clock, Member, FakeHistory]:
        """
        A channel whose source (with a history) is up, and a client
        resuming after C{1-1}, its lookup pending.
        """
        channel, clock = memoryChannel(self, HistorySource)
        member = Member()
        channel.join(member, "1-1")
        sourceOf(channel).up()
        history = sourceOf(channel).history
        self.assertEqual(len(history.calls), 1)
        return channel, clock, member, history

    def assertMissed(self, channel: Channel, member: Member) -> None:
        """
        C{member} got a miss (C{resume_miss = close}), and the window
        holds nothing for it.
        """
        self.assertEqual(member.closed, (RESUME_GONE, b"resume point gone"))
        window = channel.window
        assert window is not None
        self.assertEqual(window._catchUps, {})
        self.assertEqual(channel.members, {})

    def test_mergeFails(self) -> None:
        """
        A history whose text is not UTF-8 cannot be put in envelopes: the
        merge fails, which is a miss, logged.
        """
        channel, _, member, history = self.resuming()
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        history.calls[0][2].callback([(1, b"\xff", "1-2")])
        self.assertMissed(channel, member)
        self.assertIn("history failed", " ".join(map(formatEvent, events)))

    def test_timeout(self) -> None:
        """
        No answer in L{catchup.LOOKUP_TIMEOUT} seconds: a miss, and the
        lookup is cancelled.
        """
        channel, clock, member, history = self.resuming()
        clock.advance(catchup.LOOKUP_TIMEOUT - 1)
        self.assertIsNone(member.closed)
        clock.advance(1)
        clock.advance(0)
        self.assertMissed(channel, member)
        self.assertTrue(history.calls[0][2].called)

    def test_sourceNeverUp(self) -> None:
        """
        A source that never comes up: the lookup, which waits for it, is a
        miss after L{catchup.LOOKUP_TIMEOUT} seconds.
        """
        channel, clock = memoryChannel(self, HistorySource)
        member = Member()
        channel.join(member, "1-1")
        clock.advance(catchup.LOOKUP_TIMEOUT)
        clock.advance(0)
        self.assertMissed(channel, member)
        self.assertEqual(sourceOf(channel).history.calls, [])

    def test_heldBound(self) -> None:
        """
        More than L{catchup.HELD_MAX} live messages while the history is
        looked up: a miss, and nothing more is held.
        """
        self.patch(catchup, "HELD_MAX", 3)
        channel, clock, member, history = self.resuming()
        deliver(channel, entries(2, 4))
        self.assertIsNone(member.closed)
        deliver(channel, entries(5, 5))
        clock.advance(0)
        self.assertMissed(channel, member)

    def test_countAfterAdd(self) -> None:
        """
        A message the window cannot take (text that is not UTF-8, in an
        envelope) is not counted: the next one gets the number it would
        have had.
        """
        window = ResumeWindow(
            field=None, size=3, replay=1, miss="replay", clock=Clock(), epoch="eX"
        )
        self.assertRaises(UnicodeDecodeError, window.add, 1, b"\xff", None)
        self.assertEqual(window.count, 0)
        window.add(1, b"ok", None)
        self.assertEqual(list(window.ids), ["eX-1"])
        self.assertEqual(window.after("eX-1"), [])


class EndedChannelTests(SynchronousTestCase):
    """
    A channel that ended is freed by reference counting, also when its
    source lends the window a history (which holds the channel).
    """

    def test_freed(self) -> None:
        """
        With the collector off, an ended channel whose source has a
        history is gone once the last reference to it is dropped.
        """
        channel, _ = memoryChannel(self, HistorySource)
        registry = channel.registry
        registry.channels[(channel.route.name, "")] = channel
        window = channel.window
        assert window is not None
        self.assertIsNotNone(window.history)
        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)
        channel.start()
        channel.retire()
        self.assertNotIn((channel.route.name, ""), registry.channels)
        self.assertIsNone(window.history)
        ref = weakref.ref(channel)
        del channel
        self.assertIsNone(ref())


class DeliveriesTests(SynchronousTestCase):
    """
    The channel's C{deliveries} counts each message written to a client
    once, also for clients catching up from the history (the window
    counts those; the channel does not count their stand-ins).
    """

    def setUp(self) -> None:
        """
        A client C{live} on a channel that delivered C{1-1} to C{1-5}
        (window of 2), and a client resuming after C{1-1}, its lookup
        pending.
        """
        self.channel, self.clock = memoryChannel(
            self, HistorySource, "stream = s\nresume_window = 2\n"
        )
        self.live = Member()
        self.channel.join(self.live)
        sourceOf(self.channel).up()
        deliver(self.channel, entries(1, 5))
        self.resuming = Member()
        self.channel.join(self.resuming, "1-1")
        self.history = sourceOf(self.channel).history
        self.assertEqual(len(self.history.calls), 1)
        self.before = self.channel.deliveries

    def test_whileLookingUp(self) -> None:
        """
        Live messages while the history is looked up count once for the
        live client; the merged history and held messages once each for
        the resuming one.
        """
        deliver(self.channel, entries(6, 7))
        self.assertEqual(self.channel.deliveries - self.before, 2)
        self.history.calls[0][2].callback(entries(2, 7))
        self.assertEqual(
            [m["id"] for m in self.resuming.messages()],
            [f"1-{n}" for n in range(2, 8)],
        )
        self.assertEqual(self.channel.deliveries - self.before, 2 + 6)
        deliver(self.channel, entries(8, 8))
        self.assertEqual(self.channel.deliveries - self.before, 2 + 6 + 2)

    def test_historyAhead(self) -> None:
        """
        The history ahead of the live stream: the messages the window
        writes itself to the resuming client count once, and none for
        its stand-in.
        """
        self.history.calls[0][2].callback(entries(2, 9))
        self.assertEqual(self.channel.deliveries - self.before, 8)
        deliver(self.channel, entries(8, 10))
        self.assertEqual(
            [m["id"] for m in self.resuming.messages()][-2:], ["1-9", "1-10"]
        )
        self.assertEqual(self.channel.deliveries - self.before, 8 + 3 + 1)
        self.clock.advance(0)
        deliver(self.channel, entries(11, 11))
        self.assertEqual(self.channel.deliveries - self.before, 8 + 3 + 1 + 2)


class CloseTests(SynchronousTestCase):
    """
    L{ResumeWindow.close}, in memory.
    """

    def test_waitingLookup(self) -> None:
        """
        Closing a window whose lookup waits for the source gives it up: the
        stand-in leaves the channel, no history is asked, ever.
        """
        window = ResumeWindow(
            field=None, size=2, replay=1, miss="close", clock=Clock(), epoch="eX"
        )
        history = FakeHistory()
        window.history = history
        window.sourceStarted()
        channel = MemoryChannel()
        member = Member()
        window.join(channel, member, "1-1")
        self.assertEqual(len(channel.members), 1)
        window.close()
        self.assertEqual((channel.members, window._catchUps), ({}, {}))
        self.assertEqual(window.held, 0)
        window.sourceUp()
        self.assertEqual(history.calls, [])
        self.assertIsNone(member.closed)
