"""
Smoke tests of the benchmark suite in C{bench/}, so that it cannot rot
between the runs that fill C{BENCHMARKS.md}: the wsrelay configurations it
writes still parse, its table still renders, and its own peers (picows
backend, source and load generators) still drive the C{direct} target for
a moment.  Neither nginx nor HAProxy is needed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from bench import procstat, targets
from bench.report import table
from bench.run import parseArguments
from bench.scenarios import Cell
from wsrelay.config import parseConfig

ROOT = Path(__file__).resolve().parent.parent


class ConfigurationTests(SynchronousTestCase):
    """
    The configurations the suite writes for each proxy.
    """

    def test_wsrelayProxy(self) -> None:
        """
        The proxy-mode configuration is accepted by wsrelay's own parser,
        with pings and the access log off (as nginx's) and one route to the
        echo backend.
        """
        config = parseConfig(targets.wsrelayConfig(8080, 9001, False), "bench.ini")
        self.assertEqual((config.pingInterval, config.accessLog), (0, False))
        [route] = config.routes
        self.assertEqual((route.mode, route.path), ("proxy", "/"))
        self.assertEqual(route.backends[0].port, 9001)

    def test_wsrelayFanout(self) -> None:
        """
        The fan-out configuration is accepted by wsrelay's own parser, with
        the keys the suite relies on.
        """
        config = parseConfig(targets.wsrelayConfig(8080, 9100, True), "bench.ini")
        [route] = config.routes
        self.assertEqual((route.mode, route.path), ("fanout", targets.FANOUT_PATH))
        self.assertEqual((route.replay, route.slowClient), (0, "drop"))
        self.assertIsNone(targets.missing(fanout=True))

    def test_wsrelayPassthrough(self) -> None:
        """
        The C{wsrelay} target runs the default data path, passthrough; the
        C{wsrelay-message} target's configuration is accepted, with the
        message path.
        """
        text = targets.wsrelayConfig(8080, 9001, False)
        [route] = parseConfig(text, "bench.ini").routes
        self.assertEqual(route.dataPath, "passthrough")
        text = targets.wsrelayConfig(8080, 9001, False, "message")
        [route] = parseConfig(text, "bench.ini").routes
        self.assertEqual(route.dataPath, "message")
        self.assertIsNone(targets.missing(fanout=False, dataPath="message"))

    def test_wsrelayWorkers(self) -> None:
        """
        The C{wsrelay-workers} target's configuration is accepted: two
        workers and the admin listener the suite waits on.
        """
        text = targets.wsrelayConfig(8080, 9001, False, None, 2, 9090)
        config = parseConfig(text, "bench.ini")
        self.assertEqual(config.workers, 2)
        self.assertEqual(config.admin, "tcp:9090:interface=127.0.0.1")
        self.assertEqual(config.routes[0].dataPath, "passthrough")

    def test_oneWorker(self) -> None:
        """
        nginx runs one worker process and HAProxy one thread, each in the
        foreground, and both pass the WebSocket upgrade on.
        """
        nginx = targets.nginxConfig(Path("/tmp/x"), 8080, 9001, 100)
        self.assertIn("worker_processes 1;", nginx)
        self.assertIn("daemon off;", nginx)
        self.assertIn("proxy_set_header Upgrade $http_upgrade;", nginx)
        haproxy = targets.haproxyConfig(8080, 9001, 100)
        self.assertIn("nbthread 1", haproxy)
        self.assertIn("timeout tunnel", haproxy)


class ProcStatTests(SynchronousTestCase):
    """
    Reading CPU time and memory from /proc.
    """

    def test_self(self) -> None:
        """
        This process has used some CPU time and holds some memory; a
        process that does not exist counts as zero.
        """
        pid = os.getpid()
        self.assertGreater(procstat.cpuSeconds([pid]), 0)
        self.assertGreater(procstat.residentBytes([pid]), 1 << 20)
        self.assertEqual(procstat.processTree(pid)[0], pid)
        self.assertEqual(procstat.cpuSeconds([2**22 + 1]), 0)


class ReportTests(SynchronousTestCase):
    """
    The results table.
    """

    def test_ratios(self) -> None:
        """
        Figures are followed by their ratio to nginx's in the same scenario;
        a target without figures shows why.
        """
        cells = [
            Cell("echo-small", "nginx", rate=10000, unit="msg/s", cpuPerOp=20),
            Cell("echo-small", "wsrelay", rate=7000, unit="msg/s", cpuPerOp=50),
            Cell("storm", "wsrelay", note="n/a (fan-out not built)"),
        ]
        text = table(cells)
        self.assertIn("7,000 msg/s (0.70×)", text)
        self.assertIn("50.0 (2.50×)", text)
        self.assertIn("n/a (fan-out not built)", text)


class CommandLineTests(SynchronousTestCase):
    """
    The suite's options.
    """

    def test_presets(self) -> None:
        """
        Without options the full suite runs; C{--quick} and C{--preset}
        choose another preset.
        """
        self.assertEqual(parseArguments([]).preset, "full")
        self.assertEqual(parseArguments(["--quick"]).preset, "quick")
        self.assertEqual(parseArguments(["--preset", "smoke"]).preset, "smoke")


class SmokeTests(SynchronousTestCase):
    """
    The suite itself, with tiny numbers.
    """

    def test_direct(self) -> None:
        """
        With the C{smoke} preset, the C{direct} target gives figures in
        C{echo-small}, C{fanout-light} (with nothing lost) and C{storm}.
        """
        if importlib.util.find_spec("picows") is None:
            raise SkipTest(
                "picows is not installed: the suite's load generators need it "
                "(make test installs it with the test extras)"
            )
        with tempfile.TemporaryDirectory() as folder:
            out = Path(folder) / "bench.json"
            process = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "bench",
                    "--preset",
                    "smoke",
                    "--no-pin",
                    "--target",
                    "direct",
                    "--scenario",
                    "echo-small,fanout-light,storm",
                    "--json",
                    str(out),
                ],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=60,
            )
            self.assertEqual(process.returncode, 0, process.stdout + process.stderr)
            cells = {
                (c["scenario"], c["target"]): c
                for c in json.loads(out.read_text())["cells"]
            }
        for scenario in ["echo-small", "fanout-light", "storm"]:
            self.assertGreater(cells[scenario, "direct"]["rate"], 0, scenario)
        self.assertEqual(cells["fanout-light", "direct"]["lost"], 0)
        self.assertGreater(cells["echo-small", "direct"]["p99"], 0)


class TLS13ReproTests(SynchronousTestCase):
    """
    C{bench/tls13_repro.py}, the reproduction of the TLS 1.3 stall of
    C{websockets}' threaded client (docs/reliability.md), with tiny counts
    and the pairings that never stall, so that it cannot rot either.
    """

    def repro(self, *arguments: str) -> str:
        """
        Run C{python -m bench.tls13_repro} with C{arguments}; fail unless
        it exits with 0.

        @return: Its last line of output, the counts.
        """
        process = subprocess.run(
            [sys.executable, "-m", "bench.tls13_repro", *arguments],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(process.returncode, 0, process.stdout + process.stderr)
        return process.stdout.splitlines()[-1]

    def test_relay(self) -> None:
        """
        Against the relay's C{ssl:} listener, C{websockets}' threaded client
        over TLS 1.2 gets every handshake answered, and says so.
        """
        line = self.repro("--server", "relay", "--tls", "1.2", "--count", "5")
        self.assertTrue(
            line.startswith(
                "server=relay client=websockets tls=1.2 tickets=on: answered 5 of 5 in "
            ),
            line,
        )

    def test_directServer(self) -> None:
        """
        Against a direct C{websockets} server, a one-thread C{ssl} socket
        client over TLS 1.3 gets every handshake answered.
        """
        line = self.repro("--server", "websockets", "--client", "raw", "--count", "5")
        self.assertIn("answered 5 of 5 in ", line)
