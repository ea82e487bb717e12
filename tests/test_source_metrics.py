"""
A fan-out source's own counters (L{ISourceStatus}) in the admin
listener: the C{redis} source's gaps and entries in C{/metrics} and
C{/status} of a real relay on a private C{redis-server}, and any source's
keys, by the naming rule, shown without the admin knowing them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer, implementer_only
from zope.interface.verify import verifyObject

from tests.support import TIMEOUT, inThread
from tests.support.admin import connect, labels, samples, startAdmin
from tests.support.dashboard import CHROMIUM, Dashboard, dumpDOM
from tests.support.redis import FakeChannel, FakeContext, startRedis
from tests.support.waiting import waitFor
from wsrelay.admin import RelayView
from wsrelay.admin.metrics import metricsText
from wsrelay.admin.rows import status
from wsrelay.config import parseConfig
from wsrelay.fanout import Channel
from wsrelay.interfaces import ISource, ISourceStatus
from wsrelay.redis.source import RedisSource
from wsrelay.service import RelayService

FEED = labels(route="feed", channel="")


def channelOf(answer: Any, route: str) -> Any:
    """
    @return: The only channel of C{route} in a C{/status} answer.
    """
    (r,) = [r for r in answer["routes"] if r["name"] == route]
    (c,) = r["channels"]
    return c


def sourceSamples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """
    @return: The samples of a metrics page whose names start with
        C{wsrelay_source_}.
    """
    return {
        k: v for k, v in samples(text).items() if k[0].startswith("wsrelay_source_")
    }


class RedisSourceMetricsTests(TestCase):
    """
    A relay with a C{source = redis} route shows the source's counters.
    """

    async def test_gapCounted(self) -> None:
        """
        When the stream was trimmed past the last entry delivered while the
        source was away, C{/metrics} shows one gap
        (C{wsrelay_source_gaps_total}) and the entries delivered, and
        C{/status} and the dashboard the source's name, counters and last
        id.
        """
        server = await startRedis(self)
        a = await startAdmin(
            self,
            "[route:feed]\npath = /feed\nmode = fanout\nsource = redis\n"
            f"redis = {server.url}\nstream = s\n",
        )
        channel = a.relay.channels[("feed", "")]
        source = channel.source
        assert isinstance(source, RedisSource)
        await waitFor(lambda: channel.state == "up")
        c = await connect(self, a.port, "/feed")
        await waitFor(lambda: len(channel.members) == 1)
        server.call("XADD", "s", "*", "data", "seen")
        self.assertEqual(await inThread(c.recv, TIMEOUT), "seen")
        server.transaction(
            ("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"),
            ("XADD", "s", "*", "data", "missed"),
            ("XADD", "s", "*", "data", "kept but old"),
            ("XTRIM", "s", "MAXLEN", "1"),
        )
        await waitFor(lambda: source.gaps == 1)
        await waitFor(lambda: channel.state == "up")
        # The entry still in the stream after the gap is delivered.
        self.assertEqual(await inThread(c.recv, TIMEOUT), "kept but old")
        newest = server.call("XADD", "s", "*", "data", "new").decode("ascii")
        self.assertEqual(await inThread(c.recv, TIMEOUT), "new")

        got = sourceSamples((await a.get("/metrics")).body.decode("utf-8"))
        lag = got.pop(("wsrelay_source_lag_seconds", FEED))
        self.assertEqual(
            got,
            {
                ("wsrelay_source_gaps_total", FEED): 1,
                ("wsrelay_source_entries_total", FEED): 3,
                ("wsrelay_source_skipped_total", FEED): 0,
                ("wsrelay_source_errors_total", FEED): 0,
            },
        )
        # The entry's id is Redis's clock at XADD, on this machine.
        self.assertGreaterEqual(lag, -0.01)
        self.assertLess(lag, TIMEOUT)

        answer = channelOf(await a.status(), "feed")
        self.assertEqual(answer["source"], "redis")
        own = answer["sourceStatus"]
        self.assertEqual(own.pop("lag_seconds"), lag)
        self.assertEqual(
            own,
            {
                "entries_total": 3,
                "gaps_total": 1,
                "skipped_total": 0,
                "errors_total": 0,
                "last_id": newest,
                "last_error": None,
            },
        )

        if CHROMIUM is not None:
            page = Dashboard(await inThread(dumpDOM, f"http://127.0.0.1:{a.admin}/"))
            shown = page.rows[("channel", "feed", "")]["source"].split(" \u00b7 ")
            self.assertEqual(shown[0], "redis")
            self.assertIn("gaps_total 1", shown)
            self.assertIn("entries_total 3", shown)
            self.assertIn(f"last_id {newest}", shown)

    def test_documented(self) -> None:
        """
        Every key of the C{redis} source's status is in C{docs/admin.md}:
        each number as its metric C{wsrelay_source_KEY}, each other value
        as C{KEY} (the channel's C{sourceStatus} row).
        """
        source = RedisSource(
            FakeChannel(),
            {"redis": "redis://127.0.0.1:1/0", "stream": "s"},
            FakeContext(),
        )
        docs = (Path(__file__).parent.parent / "docs" / "admin.md").read_text()
        keys = dict(source.status())
        keys["lag_seconds"] = 0.0
        for key, value in keys.items():
            if isinstance(value, (int, float)):
                self.assertIn(f"| `wsrelay_source_{key}` |", docs)
            self.assertIn(f"`{key}`", docs)


@implementer(ISource, ISourceStatus)
class Counting:
    """
    A source that delivers nothing and reports what a test gives it.
    """

    def __init__(self, values: Mapping[str, int | float | str | None]) -> None:
        self.values = values

    def start(self) -> None:
        """
        Nothing to start.
        """

    def stop(self) -> Deferred[None]:
        """
        Nothing to stop.
        """
        return succeed(None)

    def send(self, opcode: int, payload: bytes) -> bool:
        """
        Refuse every message.
        """
        return False

    def status(self) -> Mapping[str, int | float | str | None]:
        """
        @return: What the test gave.
        """
        return self.values


@implementer_only(ISource)
class Quiet(Counting):
    """
    A source without L{ISourceStatus} (its C{status} is not asked).
    """


@implementer(ISource, ISourceStatus)
class Broken(Counting):
    """
    A source whose C{status} raises.
    """

    def status(self) -> Mapping[str, int | float | str | None]:
        """
        @raise RuntimeError: Always.
        """
        raise RuntimeError("bug")


class SourceStatusTests(SynchronousTestCase):
    """
    Any source's L{ISourceStatus} in C{/status} and C{/metrics}, by the
    naming rule, without the admin knowing its keys.
    """

    def relay(self, source: ISource) -> RelayView:
        """
        @return: The admin's view of a relay with one fan-out channel,
            route C{feed}, fed by C{source}.
        """
        relay = RelayService(
            parseConfig(
                "[relay]\nlisten = tcp:0\n[route:feed]\npath = /feed\n"
                "mode = fanout\nbackends = ws://127.0.0.1:1/\n",
                "t.ini",
            ),
            MemoryReactorClock(),
            Clock(),
        )
        route = relay.routes.routes[0]
        relay.registry.channels[("feed", "")] = Channel(
            route, "", relay.registry, relay.clock, lambda c: source
        )
        return RelayView(relay)

    def test_keys(self) -> None:
        """
        Numbers become C{wsrelay_source_KEY} labelled by route and channel:
        counters for keys ending in C{_total}, else gauges (a C{bool} as 0
        or 1); strings, L{None} and keys that are not snake_case are in
        C{/status} only.
        """
        values: dict[str, int | float | str | None] = {
            "widgets_total": 7,
            "lease_held": True,
            "depth_seconds": 0.25,
            "holder": "relay-2",
            "unknown": None,
            "Not-Snake": 3,
        }
        source = Counting(values)
        verifyObject(ISourceStatus, source)
        view = self.relay(source)
        text = metricsText(view)
        self.assertEqual(
            sourceSamples(text),
            {
                ("wsrelay_source_widgets_total", FEED): 7,
                ("wsrelay_source_lease_held", FEED): 1,
                ("wsrelay_source_depth_seconds", FEED): 0.25,
            },
        )
        self.assertIn("# TYPE wsrelay_source_widgets_total counter", text)
        self.assertIn("# TYPE wsrelay_source_lease_held gauge", text)
        self.assertIn("# TYPE wsrelay_source_depth_seconds gauge", text)
        answer = channelOf(status(view), "feed")
        self.assertEqual(answer["source"], "websocket")
        self.assertEqual(answer["sourceStatus"], values)

    def test_newKey(self) -> None:
        """
        A key the source adds later shows at the next read.
        """
        values: dict[str, int | float | str | None] = {"a_total": 1}
        view = self.relay(Counting(values))
        self.assertNotIn("wsrelay_source_b", metricsText(view))
        values["b"] = 0
        self.assertEqual(
            sourceSamples(metricsText(view)),
            {("wsrelay_source_a_total", FEED): 1, ("wsrelay_source_b", FEED): 0},
        )

    def test_without(self) -> None:
        """
        A source without L{ISourceStatus} adds no metric, and C{null} as
        its status.
        """
        view = self.relay(Quiet({"a_total": 1}))
        self.assertEqual(sourceSamples(metricsText(view)), {})
        answer = channelOf(status(view), "feed")
        self.assertEqual(answer["source"], "websocket")
        self.assertIsNone(answer["sourceStatus"])

    def test_broken(self) -> None:
        """
        A source whose C{status} raises is logged and shown as one without
        it: the pages are still served.
        """
        view = self.relay(Broken({}))
        self.assertEqual(sourceSamples(metricsText(view)), {})
        self.assertIsNone(channelOf(status(view), "feed")["sourceStatus"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)
