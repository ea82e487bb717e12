"""
C{python -m bench.fanout_cluster}: the C{fanout-cluster} scenario of
issue 15, fan-out over the Redis backplane.

One broadcast source (L{bench.peers}' C{source}), a C{redis-server} of its
own (loopback, an OS-chosen free port, persistence off), and three relays,
each C{twistd -n wsrelay --config FILE} as users run it, with one fan-out
route C{source = redis} on the same stream, C{ingest = on} and the source
in C{backends}: one relay holds the ingest lease, connects to the source
and C{XADD}s its messages; all three read the stream and fan it out.
300 subscribers (L{bench.peers}' C{feed-clients}, one process) are spread
over the three relays.  Then the same load against one relay without Redis
(C{source = websocket}, the C{wsrelay} target of L{bench.targets}), for
comparison.

Each round measures, as L{bench.scenarios.Bench.fanout} does (messages
stamped by the source with C{CLOCK_MONOTONIC}, latency taken at a sample of
the subscribers): deliveries per second, p50 and p99 latency, messages lost
(not arrived C{--drain} seconds after the source's last send), the relays'
CPU per delivery, the source's connections (counted at the source, before
and after each round: must be 1 with the cluster), and C{redis-server}'s
CPU per message the source sent (its CPU time from C{/proc}, before and
after the round: L{bench.procstat.cpuSeconds}, the same total as
C{utime + stime} in C{/proc/PID/stat}, at nanosecond resolution where the
kernel keeps schedstat).

Without C{redis-server} on C{PATH} (Debian's package: C{apt-get install
redis-server}) the scenario is skipped with a message, as it is when this
checkout's wsrelay does not accept the cluster's route (no C{redis}
source).  Usage::

    python -m bench.fanout_cluster [--clients 300] [--rate 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import targets
from bench.control import Peer, PeerFailed
from bench.procstat import cpuSeconds, processTree
from bench.scenarios import median

#: The stream every relay of the cluster reads.
STREAM = "wsrelay:bench"


@dataclass
class Options:
    """
    How big and how long the scenario runs (the command line's options).

    @ivar relays: Relays on the stream.
    @ivar clients: Subscribers, spread over the relays.
    @ivar rate: Messages per second the source sends in a round.
    @ivar size: Bytes of each message (text).
    @ivar rounds: Measured rounds.
    @ivar duration: Seconds the source sends in one round.
    @ivar drain: Seconds after the source's last send by which a message
        must have arrived; later ones count as lost.
    @ivar history: The route's C{history} (entries the stream keeps).
    @ivar lease: The route's C{lease} value, or L{None} for its default.
    @ivar reactor: The reactor for C{twistd -r}, or L{None} for its default
        (the Redis client may need C{asyncio}).
    @ivar baseline: Whether to run the one-relay comparison.
    """

    relays: int = 3
    clients: int = 300
    rate: float = 200
    size: int = 100
    rounds: int = 3
    duration: float = 3.0
    drain: float = 2.0
    history: int = 10000
    lease: str | None = None
    reactor: str | None = None
    baseline: bool = True


@dataclass
class Result:
    """
    One configuration's figures: medians over its rounds.

    @ivar name: C{cluster} or C{one relay}.
    @ivar rate: Deliveries per second.
    @ivar p50: Median latency, seconds.
    @ivar p99: 99th percentile latency, seconds.
    @ivar lost: Deliveries that did not arrive in time, over all rounds.
    @ivar expected: Deliveries due, over all rounds.
    @ivar relayCPU: The relays' CPU microseconds per delivery.
    @ivar redisCPU: redis-server's CPU microseconds per message sent.
    @ivar sourceConnections: The source's connections seen before and
        after each round (every one must be 1).
    @ivar streamLength: C{XLEN} of the stream at the end.
    @ivar note: A remark (a failure, a source that could not keep up).
    """

    name: str
    rate: float | None = None
    p50: float | None = None
    p99: float | None = None
    lost: int = 0
    expected: int = 0
    relayCPU: float | None = None
    redisCPU: float | None = None
    sourceConnections: list[int] = field(default_factory=list)
    streamLength: int | None = None
    note: str | None = None
    rounds: list[dict[str, Any]] = field(default_factory=list)


class Skipped(Exception):
    """
    The scenario cannot run here; the message says why.
    """


# Redis.


def command(port: int, *words: str, timeout: float = 5) -> bytes:
    """
    Send one command to the Redis server on C{port} and read its reply's
    first line (enough for C{PING}, C{XLEN} and errors).

    @return: The line, without its CRLF.
    """
    request = f"*{len(words)}\r\n".encode()
    for word in words:
        data = word.encode()
        request += b"$%d\r\n%s\r\n" % (len(data), data)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        reply = b""
        while b"\r\n" not in reply:
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
    return reply.split(b"\r\n", 1)[0]


class Redis:
    """
    A C{redis-server} of the scenario's own: loopback, a free port, its
    own folder, persistence off.
    """

    def __init__(self, program: str, work: Path) -> None:
        self.port = targets.freePort()
        folder = work / "redis"
        folder.mkdir()
        self._log = open(folder / "redis.log", "wb")
        self.process = subprocess.Popen(
            [
                program,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(folder),
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while True:
            if self.process.poll() is not None:
                raise targets.TargetFailed(
                    f"redis-server exited with {self.process.returncode}"
                )
            try:
                if command(self.port, "PING") == b"+PONG":
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise targets.TargetFailed("redis-server did not answer PING")
            time.sleep(0.05)

    @property
    def url(self) -> str:
        """
        Its URL, for the relays' C{redis} key.
        """
        return f"redis://127.0.0.1:{self.port}/0"

    def cpu(self) -> float:
        """
        Its CPU seconds so far.
        """
        return cpuSeconds([self.process.pid])

    def length(self, stream: str) -> int | None:
        """
        @return: C{XLEN} of C{stream}, or L{None} on an error reply.
        """
        reply = command(self.port, "XLEN", stream)
        return int(reply[1:]) if reply.startswith(b":") else None

    def stop(self) -> None:
        """
        Stop it (SIGTERM, then SIGKILL).
        """
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


# The relays.


def clusterConfig(port: int, sourcePort: int, redisURL: str, options: Options) -> str:
    """
    The configuration of one relay of the cluster: the fan-out route of the
    C{wsrelay} target (L{targets.wsrelayConfig}) with C{source = redis} on
    L{STREAM}, C{ingest = on} and the source in C{backends}.
    """
    text = targets.wsrelayConfig(port, sourcePort, True)
    text += (
        f"source = redis\nredis = {redisURL}\nstream = {STREAM}\n"
        f"history = {options.history}\ningest = on\n"
    )
    if options.lease is not None:
        text += f"lease = {options.lease}\n"
    return text


def unsupported(options: Options) -> str | None:
    """
    @return: Why this checkout's wsrelay does not accept the cluster's
        configuration, or L{None} if it does.
    """
    from wsrelay.config import ConfigError, parseConfig

    try:
        parseConfig(
            clusterConfig(1, 2, "redis://127.0.0.1:3/0", options), "cluster.ini"
        )
    except ConfigError as e:
        return f"this wsrelay does not accept a redis source route: {e}"
    return None


def startRelay(
    name: str, work: Path, text: str, port: int, reactor: str | None
) -> targets.Running:
    """
    Start one relay as users do, C{twistd -n wsrelay --config FILE}, and
    wait until it answers a handshake on the fan-out route.
    """
    folder = work / name
    folder.mkdir()
    config = folder / "wsrelay.ini"
    config.write_text(text)
    twistd = str(Path(sys.executable).with_name("twistd"))
    head = [twistd, "-n", "--pidfile="]
    if reactor is not None:
        head += ["-r", reactor]
    url = f"ws://127.0.0.1:{port}{targets.FANOUT_PATH}"
    return targets._launch(
        name,
        [*head, "wsrelay", "--config", str(config)],
        folder,
        url,
        port,
        targets.FANOUT_PATH,
    )


# Measuring.


def settle(source: Peer, least: int, timeout: float = 15) -> int:
    """
    Wait until the source has at least C{least} connections and their
    number has stopped changing.

    @return: The source's connections.
    """
    deadline = time.monotonic() + timeout
    last = -1
    while time.monotonic() < deadline:
        count: int = source.request({"cmd": "count"}, 10)["connections"]
        if count >= least and count == last:
            return count
        last = count
        time.sleep(0.2)
    return last


def measure(
    name: str,
    relays: Sequence[targets.Running],
    source: Peer,
    redis: Redis | None,
    options: Options,
    work: Path,
) -> Result:
    """
    Connect the subscribers to C{relays} and run the rounds.
    """
    result = Result(name)
    pids = [pid for r in relays for pid in processTree(r.pids[0])]
    feed = Peer(
        "feed-clients",
        [
            "--url",
            ",".join(r.url for r in relays),
            "--clients",
            str(options.clients),
            "--concurrency",
            "100",
            "--sampled",
            "100",
        ],
        work,
        (),
    )
    try:
        ready = feed.read(120)
        if ready["failed"]:
            raise PeerFailed(
                f"{ready['failed']} of {options.clients} subscribers failed to"
                " connect: " + "; ".join(ready["errors"])
            )
        for r in range(options.rounds):
            tag = ord("A") + r
            feed.request({"cmd": "arm", "tag": tag, "size": options.size}, 30)
            result.sourceConnections.append(
                source.request({"cmd": "count"}, 10)["connections"]
            )
            before = (cpuSeconds(pids), redis.cpu() if redis else 0.0)
            sent = source.request(
                {
                    "cmd": "send",
                    "duration": options.duration,
                    "rate": options.rate,
                    "size": options.size,
                    "tag": tag,
                    "limit": 1 << 20,
                },
                options.duration + 60,
            )
            got = feed.request(
                {
                    "cmd": "collect",
                    "expect": sent["sent"],
                    "deadline": sent["end"] + options.drain,
                },
                options.drain + 60,
            )
            after = (cpuSeconds(pids), redis.cpu() if redis else 0.0)
            result.sourceConnections.append(
                source.request({"cmd": "count"}, 10)["connections"]
            )
            result.rounds.append(
                {
                    **{f"source.{k}": v for k, v in sent.items()},
                    **{f"clients.{k}": v for k, v in got.items()},
                    "relayCPU": after[0] - before[0],
                    "redisCPU": after[1] - before[1],
                }
            )
            # Let what is still in flight arrive (it no longer counts).
            time.sleep(0.3 if got["received"] >= got["expected"] else options.drain)
    finally:
        feed.close()
    rounds = result.rounds
    result.rate = median(
        [r["clients.frames"] / (r["clients.now"] - r["source.start"]) for r in rounds]
    )
    result.p50 = median([r["clients.p50"] for r in rounds])
    result.p99 = median([r["clients.p99"] for r in rounds])
    result.lost = sum(r["clients.expected"] - r["clients.received"] for r in rounds)
    result.expected = sum(r["clients.expected"] for r in rounds)
    result.relayCPU = median(
        [
            r["relayCPU"] / r["clients.frames"] * 1e6
            for r in rounds
            if r["clients.frames"]
        ]
    )
    if redis is not None:
        result.redisCPU = median(
            [r["redisCPU"] / r["source.sent"] * 1e6 for r in rounds if r["source.sent"]]
        )
        result.streamLength = redis.length(STREAM)
    sentTotal = sum(r["source.sent"] for r in rounds)
    scheduled = sum(r["source.scheduled"] for r in rounds)
    if scheduled and sentTotal < 0.98 * scheduled:
        result.note = f"the source sent {sentTotal} of {scheduled} scheduled messages"
    return result


def cluster(options: Options, work: Path, program: str) -> Result:
    """
    The cluster: redis-server, the source, and L{Options.relays} relays
    on one stream with ingest.
    """
    redis = Redis(program, work)
    source = Peer("source", [], work, ())
    relays: list[targets.Running] = []
    try:
        sourcePort = source.read(30)["port"]
        for i in range(options.relays):
            port = targets.freePort()
            text = clusterConfig(port, sourcePort, redis.url, options)
            relays.append(startRelay(f"relay{i}", work, text, port, options.reactor))
        # One relay takes the lease and connects to the source.
        settle(source, 1)
        result = measure("cluster", relays, source, redis, options, work)
        if any(n != 1 for n in result.sourceConnections):
            result.note = (
                f"the source had {result.sourceConnections} connections, not 1"
            )
        return result
    finally:
        for relay in relays:
            relay.stop()
        source.close()
        redis.stop()


def oneRelay(options: Options, work: Path) -> Result:
    """
    The comparison: the same load against one relay without Redis (the
    C{wsrelay} target's fan-out route, C{source = websocket}).
    """
    source = Peer("source", [], work, ())
    relay: targets.Running | None = None
    try:
        sourcePort = source.read(30)["port"]
        port = targets.freePort()
        text = targets.wsrelayConfig(port, sourcePort, True)
        relay = startRelay("single", work, text, port, options.reactor)
        settle(source, 1)
        return measure("one relay", [relay], source, None, options, work)
    finally:
        if relay is not None:
            relay.stop()
        source.close()


def run(options: Options, work: Path) -> list[Result]:
    """
    Run the cluster and (with L{Options.baseline}) the comparison.

    @raise Skipped: Without redis-server, or when wsrelay has no redis
        source.
    """
    program = targets.findProgram("redis-server")
    if program is None:
        raise Skipped(
            "redis-server is not installed (Debian: apt-get install redis-server)"
        )
    if why := unsupported(options):
        raise Skipped(why)
    results = [cluster(options, work, program)]
    if options.baseline:
        results.append(oneRelay(options, work))
    return results


def _ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1000:.2f}"


def _us(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def table(results: Sequence[Result], options: Options) -> str:
    """
    The results as a Markdown table, with the load in its header line.
    """
    lines = [
        f"fanout-cluster: {options.clients} clients, {options.rate:g} msg/s of "
        f"{options.size} B, {options.rounds} rounds of {options.duration:g} s, "
        f"{options.relays} relays on one stream",
        "",
        "| setup | deliv/s | p50 ms | p99 ms | lost | relay CPU µs/deliv"
        " | redis CPU µs/msg | source connections | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        rate = "—" if r.rate is None else f"{r.rate:,.0f}"
        connections = ",".join(map(str, sorted(set(r.sourceConnections))))
        lines.append(
            f"| {r.name} | {rate} | {_ms(r.p50)} | {_ms(r.p99)} "
            f"| {r.lost} of {r.expected} | {_us(r.relayCPU)} | {_us(r.redisCPU)} "
            f"| {connections} | {r.note or ''} |"
        )
    return "\n".join(lines)


def parseArguments(argv: Sequence[str]) -> tuple[Options, argparse.Namespace]:
    """
    Parse the command line.
    """
    defaults = Options()
    parser = argparse.ArgumentParser(
        prog="python -m bench.fanout_cluster",
        description="fanout-cluster: three relays on a Redis stream with one"
        " ingest, against one relay without Redis.",
    )
    parser.add_argument("--relays", type=int, default=defaults.relays)
    parser.add_argument(
        "--clients",
        type=int,
        default=defaults.clients,
        help="subscribers, spread over the relays",
    )
    parser.add_argument(
        "--rate", type=float, default=defaults.rate, help="messages per second"
    )
    parser.add_argument(
        "--size", type=int, default=defaults.size, help="message bytes (at least 32)"
    )
    parser.add_argument("--rounds", type=int, default=defaults.rounds)
    parser.add_argument(
        "--duration",
        type=float,
        default=defaults.duration,
        help="seconds of sending per round",
    )
    parser.add_argument(
        "--drain",
        type=float,
        default=defaults.drain,
        help="seconds after the last send before a message counts as lost",
    )
    parser.add_argument(
        "--history",
        type=int,
        default=defaults.history,
        help="the route's history (entries kept in the stream)",
    )
    parser.add_argument("--lease", help="the route's lease value (default: its own)")
    parser.add_argument(
        "--reactor", help="twistd's reactor for the relays (twistd -r), say asyncio"
    )
    parser.add_argument(
        "--no-baseline",
        dest="baseline",
        action="store_false",
        help="skip the one-relay comparison",
    )
    parser.add_argument("--work", type=Path, help="folder for configs and logs")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    options = Options(
        relays=args.relays,
        clients=args.clients,
        rate=args.rate,
        size=max(args.size, 32),
        rounds=args.rounds,
        duration=args.duration,
        drain=args.drain,
        history=args.history,
        lease=args.lease,
        reactor=args.reactor,
        baseline=args.baseline,
    )
    return options, args


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run the scenario and print its table.

    @return: 0 when it ran (or was skipped, said on standard error), 1 when
        it failed.
    """
    options, args = parseArguments(sys.argv[1:] if argv is None else argv)
    work: Path = args.work or Path(tempfile.mkdtemp(prefix="wsrelay-cluster-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        results = run(options, work)
    except Skipped as e:
        print(f"fanout-cluster: skipped: {e}", file=sys.stderr)
        return 0
    except (targets.TargetFailed, PeerFailed) as e:
        print(f"fanout-cluster: failed: {e} (logs in {work})", file=sys.stderr)
        return 1
    print(table(results, options))
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1))
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
