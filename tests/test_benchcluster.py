"""
The C{fanout-cluster} benchmark scenario (C{bench/fanout_cluster.py}): the
relays' configuration it writes, its skip without C{redis-server}, and the
subscribers spread over several relays' URLs that it measures with.
"""

from __future__ import annotations

import configparser
import importlib.util
import io
import sys
import tempfile
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from bench import fanout_cluster, targets
from bench.control import Peer


class ConfigurationTests(SynchronousTestCase):
    """
    What a relay of the cluster is configured with.
    """

    def test_redisRoute(self) -> None:
        """
        A relay's fan-out route is the C{wsrelay} target's, reading the
        scenario's stream from the given Redis with ingest on and the
        source in C{backends}; C{lease} only when asked for.
        """
        options = fanout_cluster.Options(history=500)
        text = fanout_cluster.clusterConfig(
            8080, 9100, "redis://127.0.0.1:6400/0", options
        )
        parser = configparser.ConfigParser(inline_comment_prefixes=(";",))
        parser.read_string(text)
        route = parser["route:feed"]
        self.assertEqual(
            {k: route[k] for k in ("source", "redis", "stream", "history", "ingest")},
            {
                "source": "redis",
                "redis": "redis://127.0.0.1:6400/0",
                "stream": fanout_cluster.STREAM,
                "history": "500",
                "ingest": "on",
            },
        )
        self.assertEqual(route["backends"], "ws://127.0.0.1:9100/feed")
        self.assertEqual((route["mode"], route["replay"]), ("fanout", "0"))
        self.assertNotIn("lease", route)
        options = fanout_cluster.Options(lease="3")
        parser = configparser.ConfigParser()
        parser.read_string(
            fanout_cluster.clusterConfig(1, 2, "redis://127.0.0.1:3/0", options)
        )
        self.assertEqual(parser["route:feed"]["lease"], "3")


class SkipTests(SynchronousTestCase):
    """
    The scenario does not run where it cannot.
    """

    def test_withoutRedisServer(self) -> None:
        """
        Without C{redis-server}, the command says it skipped, and why, on
        standard error, and exits with 0.
        """
        self.patch(targets, "findProgram", lambda name: None)
        errors = io.StringIO()
        self.patch(sys, "stderr", errors)
        with tempfile.TemporaryDirectory() as folder:
            status = fanout_cluster.main(["--work", folder])
        self.assertEqual(status, 0)
        self.assertEqual(
            errors.getvalue(),
            "fanout-cluster: skipped: redis-server is not installed"
            " (Debian: apt-get install redis-server)\n",
        )


class SpreadTests(SynchronousTestCase):
    """
    The subscribers of C{bench.peers feed-clients} over several URLs.
    """

    def test_severalURLs(self) -> None:
        """
        Given two comma-separated URLs (two sources here, for two relays),
        C{feed-clients} connects its clients to both in turn: each source
        sees half of them.
        """
        if importlib.util.find_spec("picows") is None:
            raise SkipTest("picows is not installed (make test installs it)")
        with tempfile.TemporaryDirectory() as folder:
            work = Path(folder)
            sources = [Peer("source", [], work, ()) for _ in range(2)]
            for source in sources:
                self.addCleanup(source.close)
            ports = [source.read(30)["port"] for source in sources]
            urls = ",".join(f"ws://127.0.0.1:{port}/feed" for port in ports)
            feed = Peer("feed-clients", ["--url", urls, "--clients", "6"], work, ())
            self.addCleanup(feed.close)
            self.assertEqual(feed.read(30)["ready"], 6)
            counts = [
                source.request({"cmd": "count"}, 10)["connections"]
                for source in sources
            ]
        self.assertEqual(counts, [3, 3])
