"""
Smoke tests of the benchmark suite in C{bench/}, so that it cannot rot
between the runs that fill C{BENCHMARKS.md}: the wsrelay configurations it
writes still parse, its table still renders, and its own peers (picows
backend, source and load generators) still drive the C{direct} target for
a moment.  Neither nginx nor HAProxy is needed.
"""

from __future__ import annotations

import asyncio
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from bench import procstat, targets
from bench.report import table
from bench.run import chosenPreset, header, interpreter, parseArguments
from bench.scenarios import PRESETS, Cell
from tests.support.benchsmoke import ROOT, needPicows, smoke
from wsrelay.config import parseConfig


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

    def test_writeDelay(self) -> None:
        """
        The fan-out route gets C{write_delay} when one is given, and keeps
        the key's default otherwise.
        """
        text = targets.wsrelayConfig(1, 2, True, writeDelay=2)
        [route] = parseConfig(text, "bench.ini").routes
        self.assertEqual(route.writeDelay, 2)
        self.assertNotIn("write_delay", targets.wsrelayConfig(1, 2, True))
        self.assertEqual(parseArguments(["--write-delay", "2"]).write_delay, 2)

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

    def test_backlog(self) -> None:
        """
        Every proxy listens with a backlog of 4096, as issue 16 measured
        them (nginx's C{listen ... backlog=}).
        """
        self.assertEqual(targets.BACKLOG, 4096)
        config = parseConfig(targets.wsrelayConfig(8080, 9001, False), "bench.ini")
        [listen] = config.listen
        self.assertTrue(listen.endswith(":backlog=4096"), listen)
        nginx = targets.nginxConfig(Path("/tmp/x"), 8080, 9001, 100)
        self.assertIn("listen 127.0.0.1:8080 backlog=4096;", nginx)
        haproxy = targets.haproxyConfig(8080, 9001, 100)
        self.assertIn("bind 127.0.0.1:8080 backlog 4096", haproxy)

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

    def test_closeFigure(self) -> None:
        """
        The storm's CPU per connection closed is a line under the table,
        each target's with its ratio to nginx's and the closing handshakes
        that went unanswered, and no column of its own; without it there
        is no such line.
        """
        rounds = [{"opened": 100, "answered": 100}]
        cells = [
            Cell("storm", "nginx", rate=5000, unit="hs/s", cpuPerOp=140),
            Cell("storm", "wsrelay", rate=2500, unit="hs/s", cpuPerOp=400),
        ]
        without = table(cells)
        self.assertNotIn("storm close", without)
        cells[0].closeCPUPerConn, cells[0].rounds = 50, rounds
        cells[1].closeCPUPerConn = 150
        cells[1].rounds = [{"opened": 100, "answered": 97}]
        text = table(cells)
        [line] = [x for x in text.splitlines() if x.startswith("storm close")]
        self.assertIn(": nginx 50.0, wsrelay 150 (3.00×) [3 of 100 ", line)
        self.assertEqual(
            [x.count("|") for x in text.splitlines() if x.startswith("|")],
            [x.count("|") for x in without.splitlines() if x.startswith("|")],
        )

    def test_systemFigure(self) -> None:
        """
        Each scenario's system CPU per operation is a line under the table,
        each target's with its CPU per operation and the share; a target
        without the figure is left out, and a scenario without any has no
        line.
        """
        cells = [
            Cell("fanout-heavy", "nginx", rate=9e5, unit="deliv/s", cpuPerOp=0.83),
            Cell("fanout-heavy", "wsrelay", rate=9e5, unit="deliv/s", cpuPerOp=0.99),
            Cell("storm", "nginx", rate=5000, unit="hs/s", cpuPerOp=140),
            Cell("storm", "wsrelay", rate=2500, unit="hs/s", cpuPerOp=300),
            Cell("storm", "direct", rate=9000, unit="hs/s"),
        ]
        self.assertNotIn("proxy system", table(cells))
        cells[2].systemPerOp, cells[3].systemPerOp = 112, 111
        [line] = [x for x in table(cells).splitlines() if "proxy system" in x]
        self.assertTrue(line.startswith("storm open, proxy system µs per handshake"))
        self.assertTrue(
            line.endswith(": nginx 112 of 140 (80%), wsrelay 111 of 300 (37%)"), line
        )
        cells[0].systemPerOp, cells[1].systemPerOp = 0.7, 0.858
        lines = [x for x in table(cells).splitlines() if "proxy system" in x]
        self.assertEqual(
            lines[0],
            "fanout-heavy, proxy system µs per delivery, of its CPU per delivery "
            "(/proc stime, in 10 ms ticks): nginx 0.7 of 0.83 (84%), "
            "wsrelay 0.858 of 0.99 (87%)",
        )
        self.assertEqual(lines[1], line)


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

    def test_issue16Shapes(self) -> None:
        """
        The full suite's storm and fanout-heavy are issue 16's: 2000
        connections with 50 handshakes in flight, and 500 subscribers at
        2000 messages/s with the source writing each 1 ms tick's messages
        at once.
        """
        p = chosenPreset(parseArguments([]))
        self.assertEqual((p.stormConnections, p.stormConcurrency), (2000, 50))
        self.assertEqual((p.heavyClients, p.heavyRate, p.heavyTick), (500, 2000, 0.001))
        self.assertIn(
            "heavy 500 x 2000/s (the source writing each 1 ms tick's messages at once)",
            "\n".join(header(p, True, 2000)),
        )

    def test_shapeOptions(self) -> None:
        """
        C{--storm-concurrency} and C{--fanout-tick} (milliseconds, 0 for
        a write per message) replace the preset's, and the header says so.
        """
        p = chosenPreset(
            parseArguments(
                ["--quick", "--storm-concurrency", "500", "--fanout-tick", "0"]
            )
        )
        self.assertEqual((p.name, p.stormConcurrency, p.heavyTick), ("quick", 500, 0))
        lines = "\n".join(header(p, True, p.stormConnections))
        self.assertIn("(the source writing each message on its own)", lines)
        self.assertIn("500 handshakes in flight", lines)
        p = chosenPreset(parseArguments(["--fanout-tick", "5"]))
        self.assertEqual(p.heavyTick, 0.005)

    def test_interpreter(self) -> None:
        """
        The header names the Python that runs the relay, and says whether
        it runs on a shared C{libpython} (a pyenv build) or not (Debian's
        C{/usr/bin/python3.11}): builds of one version differ in speed.
        """
        maps = FilePath(self.mktemp())
        maps.setContent(b"7f00-7f01 r-xp 0 08:01 1 /usr/lib/libpython3.11.so.1.0\n")
        described = interpreter(maps.path)
        self.assertIn(f"Python {platform.python_version()} (", described)
        self.assertIn(
            os.path.realpath(getattr(sys, "_base_executable", sys.executable)),
            described,
        )
        self.assertTrue(described.endswith(", libpython shared)"), described)
        maps.setContent(b"7f00-7f01 r-xp 0 08:01 1 /usr/lib/libc.so.6\n")
        self.assertTrue(interpreter(maps.path).endswith(", libpython static)"))
        self.assertTrue(interpreter(self.mktemp()).endswith(", libpython unknown)"))
        self.assertIn(interpreter(), "\n".join(header(PRESETS["quick"], True, 10)))

    def test_reactor(self) -> None:
        """
        C{--reactor NAME} runs the wsrelay targets with C{twistd -r NAME};
        without it they run on C{twistd wsrelay}'s default reactor.
        """
        self.assertIsNone(parseArguments([]).reactor)
        self.assertEqual(parseArguments(["--reactor", "poll"]).reactor, "poll")
        config = Path("relay.ini")
        chosen = targets.wsrelayCommand(config, "poll")
        self.assertEqual(
            chosen[1:],
            ["-n", "--pidfile=", "-r", "poll", "wsrelay", "--config", "relay.ini"],
        )
        self.assertNotIn("-r", targets.wsrelayCommand(config))


class FakeUnderlying:
    """
    The transport under a picows transport, as the source and the counting
    subscribers use it.

    @ivar writes: What was written, a write at a time.
    @ivar protocol: The protocol set last.
    """

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.protocol: object = None
        self.closed = False

    def get_write_buffer_size(self) -> int:
        """
        Nothing waits to be sent.
        """
        return 0

    def write(self, data: bytes) -> None:
        """
        Record a write.
        """
        self.writes.append(data)

    def set_protocol(self, protocol: object) -> None:
        """
        Record the new protocol.
        """
        self.protocol = protocol

    def close(self) -> None:
        """
        Record the close.
        """
        self.closed = True


class FakeWSTransport:
    """
    A picows transport reduced to its C{underlying_transport}.
    """

    def __init__(self) -> None:
        self.underlying_transport = FakeUnderlying()


def frames(data: bytes) -> list[bytes]:
    """
    The payloads of a server's unmasked text frames of under 126 bytes.
    """
    payloads = []
    while data:
        assert data[0] == 0x81 and data[1] < 126, data[:2]
        payloads.append(data[2 : 2 + data[1]])
        data = data[2 + data[1] :]
    return payloads


class PeerTests(SynchronousTestCase):
    """
    The fan-out source's per-tick writes and the counting subscribers of
    C{bench/peers.py}, in memory.
    """

    def setUp(self) -> None:
        needPicows()

    def test_accept(self) -> None:
        """
        The storm's backend answers a key with the accept value of RFC
        6455's example.
        """
        from bench.rawws import accept

        self.assertEqual(
            accept(b"dGhlIHNhbXBsZSBub25jZQ=="), b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        )

    def test_textFrame(self) -> None:
        """
        A server's text frame has the 7-bit, 16-bit or 64-bit length its
        payload needs, and no mask.
        """
        from bench.peers import frameHeader, textFrame

        self.assertEqual(textFrame(b"ab"), b"\x81\x02ab")
        self.assertEqual(frameHeader(100), b"\x81\x64")
        self.assertEqual(frameHeader(126), b"\x81\x7e\x00\x7e")
        self.assertEqual(frameHeader(1 << 16), b"\x81\x7f" + (1 << 16).to_bytes(8))

    def test_ticks(self) -> None:
        """
        Writing per tick, the source sends every scheduled message, in
        order, each in a whole frame, and to every connection the same
        writes, fewer than the messages: at 2000 messages/s in 1 ms ticks
        a tick holds two of them, more if the source fell behind.
        """
        from bench.peers import broadcast

        a, b = FakeWSTransport(), FakeWSTransport()
        peers: Any = {a: None, b: None}
        result = asyncio.run(
            broadcast(peers, 0.05, 2000, 100, ord("C"), 1 << 20, 0.001)
        )
        self.assertEqual((result["sent"], result["scheduled"]), (100, 100))
        writes = a.underlying_transport.writes
        self.assertEqual(writes, b.underlying_transport.writes)
        self.assertEqual(result["writes"], len(writes))
        self.assertLess(len(writes), 100)
        payloads = frames(b"".join(writes))
        self.assertEqual([int(p[1:12]) for p in payloads], list(range(100)))
        self.assertEqual({(p[:1], len(p)) for p in payloads}, {(b"C", 100)})

    def test_counting(self) -> None:
        """
        A counting subscriber counts every message, and those of the
        current round apart, however the reads cut the bytes, a header
        across two reads included, with a 2-byte header (100-byte
        messages) and a 4-byte one (385 bytes, whose length holds the
        header's first byte, C{0x81}); a read is counted with the buffer
        it was read into.
        """
        from bench.peers import CountingClient, FeedStats, message, textFrame

        for size in (100, 385):
            stats = FeedStats()
            stats.arm(ord("B"), size)
            data = b"".join(
                textFrame(message(tag, n, size)) for n, tag in enumerate(b"ABBABBB")
            )

            async def count(
                cuts: list[int], data: bytes = data, stats: FeedStats = stats
            ) -> int:
                transport: Any = FakeWSTransport()
                client = CountingClient(stats, bytearray(4096), transport)
                self.assertIs(transport.underlying_transport.protocol, client)
                for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True):
                    chunk = data[start:end]
                    client.get_buffer(-1)[: len(chunk)] = chunk
                    client.buffer_updated(len(chunk))
                return client.received

            for cut in range(1, len(data)):
                stats.frames = 0
                self.assertEqual(asyncio.run(count([cut])), 5, (size, cut))
                self.assertEqual(stats.frames, 7, (size, cut))
            stats.frames = 0
            self.assertEqual(asyncio.run(count(list(range(1, len(data))))), 5)
            self.assertEqual(stats.frames, 7)

    def test_lastDelivery(self) -> None:
        """
        A counting subscriber notes the time of a read that holds a message
        of the current round, and not of one that holds only late ones.
        """
        from bench.peers import CountingClient, FeedStats, message, textFrame

        stats = FeedStats()
        stats.arm(ord("B"), 100)

        async def read(tag: bytes) -> None:
            transport: Any = FakeWSTransport()
            client = CountingClient(stats, bytearray(1024), transport)
            frame = textFrame(message(tag[0], 0, 100))
            client.get_buffer(-1)[: len(frame)] = frame
            client.buffer_updated(len(frame))

        asyncio.run(read(b"A"))
        self.assertEqual((stats.frames, stats.last), (1, 0))
        before = time.monotonic_ns()
        asyncio.run(read(b"B"))
        self.assertEqual(stats.frames, 2)
        self.assertGreaterEqual(stats.last, before)


class SmokeTests(SynchronousTestCase):
    """
    The suite itself, with tiny numbers.
    """

    def smoke(self, target: str, scenarios: str) -> dict[str, dict[str, Any]]:
        """
        Run the suite with the C{smoke} preset on one target (L{smoke}).
        """
        return smoke(self, target, scenarios)

    def assertTicks(self, cell: dict[str, Any]) -> None:
        """
        In a fan-out cell whose source wrote per tick, every scheduled
        message went out, in fewer writes than messages, and every
        subscriber counted every one of them (the sampled ones and those
        that count bytes alike), the latency measured.
        """
        [only] = cell["rounds"]
        self.assertEqual(only["source.sent"], only["source.scheduled"])
        self.assertLess(only["source.writes"], only["source.sent"])
        self.assertEqual(
            only["clients.received"], only["source.sent"] * 5, "5 subscribers"
        )
        self.assertEqual((cell["lost"], cell["expected"]), (0, only["source.sent"] * 5))
        self.assertGreater(cell["p99"], 0)

    def test_direct(self) -> None:
        """
        With the C{smoke} preset, the C{direct} target gives figures in
        C{echo-small}, C{fanout-light} (with nothing lost), C{fanout-heavy}
        (the source writing per tick) and C{storm}.
        """
        cells = self.smoke("direct", "echo-small,fanout-light,fanout-heavy,storm")
        for scenario in ["echo-small", "fanout-light", "fanout-heavy", "storm"]:
            self.assertGreater(cells[scenario]["rate"], 0, scenario)
        self.assertEqual(cells["fanout-light"]["lost"], 0)
        self.assertGreater(cells["echo-small"]["p99"], 0)
        self.assertTicks(cells["fanout-heavy"])
        [storm] = cells["storm"]["rounds"]
        self.assertEqual((storm["closed"], storm["answered"]), (20, 20))
        self.assertIsNone(cells["storm"]["closeCPUPerConn"], "no proxy")
        [light] = cells["fanout-light"]["rounds"]
        self.assertEqual(light["source.writes"], light["source.sent"])

    def test_wsrelay(self) -> None:
        """
        Through the C{wsrelay} target, C{fanout-heavy}'s subscribers count
        every message of the relay's frames, and the storm's plain client
        and backend open every connection (the relay's upstream leg checks
        the backend's accept value).
        """
        cells = self.smoke("wsrelay", "fanout-heavy,storm")
        self.assertTicks(cells["fanout-heavy"])
        # In 10 ms ticks over a smoke round: present, not precise.
        self.assertGreaterEqual(cells["fanout-heavy"]["systemPerOp"], 0)
        storm = cells["storm"]
        self.assertIsNone(storm["note"])
        self.assertEqual([r["opened"] for r in storm["rounds"]], [20])
        self.assertGreater(storm["cpuPerOp"], 0)
        [only] = storm["rounds"]
        self.assertEqual((only["closed"], only["answered"]), (20, 20))
        self.assertGreater(storm["closeCPUPerConn"], 0)
        # In 10 ms ticks, over 20 handshakes: present, not precise.
        self.assertGreaterEqual(storm["systemPerOp"], 0)

    def test_twisted(self) -> None:
        """
        The C{twisted} target, Twisted's port forwarder, echoes and opens
        every storm connection, and has no fan-out.
        """
        cells = self.smoke("twisted", "echo-small,fanout-light,storm")
        self.assertGreater(cells["echo-small"]["rate"], 0)
        self.assertEqual([r["opened"] for r in cells["storm"]["rounds"]], [20])
        self.assertGreater(cells["storm"]["cpuPerOp"], 0)
        self.assertIn("no fan-out", cells["fanout-light"]["note"])


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
