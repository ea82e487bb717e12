"""
C{bench/heldmemory.py}, what one held connection costs inside the relay
(issue 16): its figures from reports, and a run with few connections in
each mode, so that it cannot rot between the runs that fill
C{BENCHMARKS.md}.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import tracemalloc
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from bench import heldmemory
from bench.control import ROOT


def figures(rss: int, types: dict[str, tuple[int, int]]) -> dict[str, Any]:
    """
    @param types: Objects and bytes by type name.
    @return: A report with a full collection, with these figures after it.
    """
    after = {
        "process": {"VmRSS": rss},
        "types": {name: objects for name, (objects, _) in types.items()},
        "typeBytes": {name: size for name, (_, size) in types.items()},
    }
    return {"before": {"process": {"VmRSS": 0}}, "after": after}


class FiguresTests(SynchronousTestCase):
    """
    The figures per connection, from two reports.
    """

    def test_resident(self) -> None:
        """
        The resident memory grown between two reports is taken after their
        full collections.
        """
        self.assertEqual(
            heldmemory.residentGrowth(figures(1000, {}), figures(9000, {})), 8000
        )

    def test_types(self) -> None:
        """
        The types that gained objects or bytes, per connection, most bytes
        first; a type new in the second report counts from none, one that
        did not change is left out.
        """
        old = figures(0, {"dict": (100, 10000), "same": (5, 50), "a.Leg": (1, 56)})
        new = figures(
            0,
            {
                "dict": (140, 14000),
                "same": (5, 50),
                "a.Leg": (11, 616),
                "b.New": (10, 1000),
            },
        )
        self.assertEqual(
            heldmemory.typeGrowth(old, new, 10),
            [
                {"type": "dict", "objects": 4.0, "bytes": 400.0},
                {"type": "b.New", "objects": 1.0, "bytes": 100.0},
                {"type": "a.Leg", "objects": 1.0, "bytes": 56.0},
            ],
        )

    def test_site(self) -> None:
        """
        An allocation site is named relative to the repository, to
        C{site-packages} or to the standard library.
        """
        ours = tracemalloc.Frame((str(ROOT / "wsrelay" / "registry.py"), 7))
        theirs = tracemalloc.Frame(
            (str(ROOT / ".venv/lib/python3.11/site-packages/twisted/a.py"), 8)
        )
        stdlib = tracemalloc.Frame(("/usr/lib/python3.11/socket.py", 9))
        self.assertEqual(
            [heldmemory.site(f) for f in (ours, theirs, stdlib)],
            ["wsrelay/registry.py:7", "twisted/a.py:8", "socket.py:9"],
        )

    def test_table(self) -> None:
        """
        The table gives the totals per connection, the allocation sites and
        types up to C{top}, and the relay's own classes.
        """
        result = {
            "connections": 10,
            "mode": "proxy",
            "dataPath": "passthrough",
            "warmup": 2,
            "figures": {
                "resident": 2048.0,
                "residentTraced": 4096.0,
                "residentLeft": 0.0,
                "traced": 1536.0,
                "tracedBlocks": 12.5,
                "tracedLeft": 0.0,
                "sites": [
                    {"site": "wsrelay/a.py:1", "bytes": 1000.0, "blocks": 2.0},
                    {"site": "wsrelay/b.py:2", "bytes": 536.0, "blocks": 10.5},
                ],
                "types": [
                    {"type": "dict", "objects": 2.0, "bytes": 800.0},
                    {"type": "wsrelay.ws.frontend.FrontendProtocol", "objects": 1.0,
                     "bytes": 56.0},
                ],
                "typesLeft": [{"type": "list", "objects": 0.5, "bytes": 28.0}],
            },
        }  # fmt: skip
        lines = heldmemory.table(result, top=1).splitlines()
        self.assertIn("10 connections held (proxy, data_path = passthrough)", lines[0])
        self.assertIn("2.00 KiB   (traced run: 4.00 KiB)", lines[1])
        self.assertIn("1.50 KiB in 12.5 blocks", lines[2])
        self.assertIn("0.50 objects", lines[3])
        self.assertIn("wsrelay/a.py:1", "\n".join(lines))
        self.assertNotIn("wsrelay/b.py:2", "\n".join(lines))
        self.assertEqual(
            lines[-1], "the relay's own objects: ws.frontend.FrontendProtocol 1"
        )


class ConnectionsTests(SynchronousTestCase):
    """
    L{heldmemory.connections} counts a process's sockets from C{/proc}.
    """

    def test_ownSockets(self) -> None:
        """
        Of a connection this process makes to its own listener, it counts
        the accepted end on the listener's port and the end that connected
        to it, not the listener; once closed, neither.
        """
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            port = listener.getsockname()[1]
            client = socket.create_connection(("127.0.0.1", port))
            accepted, _ = listener.accept()
            pid = os.getpid()
            self.assertEqual(heldmemory.connections(pid, port, port), (1, 1))
            self.assertEqual(heldmemory.connections(pid, port, 1), (1, 0))
            client.close()
            accepted.close()
            self.assertEqual(heldmemory.connections(pid, port, port), (0, 0))


class SmokeTests(SynchronousTestCase):
    """
    C{python -m bench.heldmemory} with few connections: a relay and its
    peers run, twice.
    """

    def setUp(self) -> None:
        """
        Skip unless picows, which the benchmark's peers are written with,
        is installed (the test extras install it).
        """
        if importlib.util.find_spec("picows") is None:
            raise SkipTest("picows is not installed: the benchmark's peers need it")

    def heldMemory(self, *arguments: str) -> tuple[str, dict[str, Any]]:
        """
        Run C{python -m bench.heldmemory --connections 20} with
        C{arguments}; fail unless it exits with 0.

        @return: Its output and its figures (C{--json}).
        """
        with tempfile.TemporaryDirectory() as folder:
            out = Path(folder) / "held.json"
            process = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "bench.heldmemory",
                    "--connections",
                    "20",
                    "--warmup",
                    "5",
                    "--json",
                    str(out),
                    *arguments,
                ],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=120,
            )
            self.assertEqual(process.returncode, 0, process.stdout + process.stderr)
            result: dict[str, Any] = json.loads(out.read_text())
        return process.stdout, result

    def assertHeld(
        self, output: str, result: dict[str, Any], legs: dict[str, float]
    ) -> None:
        """
        The run held 20 connections, each costing resident and traced
        memory, listed by allocation site and by type in the table, each
        holding exactly C{legs} of the relay's own classes.
        """
        f = result["figures"]
        self.assertEqual(result["connections"], 20)
        self.assertGreater(f["resident"], 0)
        self.assertGreater(f["traced"], 0)
        self.assertGreater(f["tracedBlocks"], 0)
        self.assertGreater(len(f["sites"]), 0)
        self.assertGreater(f["sites"][0]["bytes"], 0)
        objects = {row["type"]: row["objects"] for row in f["types"]}
        for name, count in legs.items():
            self.assertEqual(objects.get(name), count, name)
        lines = output.splitlines()
        for header in ("allocation site (top 15)", "type (top 15, sys.getsizeof)"):
            [start] = [i for i, line in enumerate(lines) if line.startswith(header)]
            self.assertTrue(lines[start + 1].startswith("  "), output)
        own = lines[-1]
        self.assertTrue(own.startswith("the relay's own objects: "), output)
        for name in legs:
            self.assertIn(name[len("wsrelay.") :] + " 1", own)

    def test_proxy(self) -> None:
        """
        A held connection of a passthrough proxy route is one client leg
        and one upstream leg, in one session.
        """
        output, result = self.heldMemory()
        self.assertEqual((result["mode"], result["dataPath"]), ("proxy", "passthrough"))
        self.assertHeld(
            output,
            result,
            {
                "wsrelay.ws.frontend.FrontendProtocol": 1.0,
                "wsrelay.ws.plainleg.PlainUpstream": 1.0,
                "wsrelay.proxy.session.ProxySession": 1.0,
            },
        )

    def test_fanout(self) -> None:
        """
        A held subscriber of a fan-out route is one client leg and its
        membership, with no upstream leg of its own.
        """
        output, result = self.heldMemory("--mode", "fanout")
        self.assertEqual(result["mode"], "fanout")
        self.assertHeld(
            output,
            result,
            {
                "wsrelay.ws.frontend.FrontendProtocol": 1.0,
                "wsrelay.fanout.members.FanoutSession": 1.0,
            },
        )
        types = {row["type"] for row in result["figures"]["types"]}
        self.assertNotIn("wsrelay.ws.upstream.UpstreamProtocol", types)
