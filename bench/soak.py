"""
Soak: N minutes of mixed traffic through C{twistd -n wsrelay}, with
backends killed (C{SIGKILL}) and restarted on a schedule and clients
joining and leaving, printing every minute the relay's memory, open
descriptors, connections and error counts.  Not a CI test; its result for
10 minutes is in C{docs/reliability.md}.

    .venv/bin/python -m bench.soak              # 10 minutes
    .venv/bin/python -m bench.soak --minutes 1
    .venv/bin/python -m bench.soak --minutes 120 --log soak.log
    .venv/bin/python -m bench.soakplot soak.log # soak.png, last hour's slope
    .venv/bin/python -m bench.soak --minutes 8 --memory-reports /tmp/mem
    .venv/bin/python -m bench.memreport /tmp/mem

C{--memory-reports DIR} has the relay write a memory report
(C{wsrelay/memory.py}) into DIR at the start, every minute, and after
the clients left (with a full collection); C{--tracemalloc N} adds a
snapshot to each, C{--collect} a full collection to each.

The relay has three routes, all on the same two echo backends or two
ticking sources (C{tests/support/faultbackend.py} programs):

  - C{/close}: proxy, C{failover = close};
  - C{/reconnect}: proxy, C{failover = reconnect};
  - C{/feed}: fan-out, C{backoff_base = 0.05}, C{backoff_cap = 0.5}.

Every C{--period} seconds one echo backend is killed, and half a period
later one source, in turn; each comes back C{--down} seconds later on the
same port.  Each route keeps C{--clients} clients; each stays a random
time between C{--min-life} and C{--max-life} seconds, then leaves (close
1000) and a new one joins.  Echo clients send numbered messages of mixed
sizes every C{--interval} seconds and count lost, duplicated and reordered
echoes across their reconnections; feed clients check that ticks only
grow.

Errors are what must not happen: a duplicated or reordered message, a
close other than 1014 on C{/close} (but for a 1006 where the relay logged
that it dropped the connection without a close frame: its backend went
away in the middle of a frame to the client, after which no close frame
can be sent), any close on C{/reconnect} or
C{/feed}, a handshake the relay refused, a client whose last echo did not
come within C{--finish-timeout} seconds, and an unhandled error in the
relay's log.  The exit status is 1 when there was one.

After each row a line gives the close codes the clients saw, by route,
and how many C{/close} sessions the relay dropped mid-frame (C{closes:
close {1014: 12, 1006: 1}; reconnect {}; feed {}; dropped mid-frame on
close 1}; 1006 is a connection that ended without a close frame), so the
errors can be told apart; the table's readers (C{bench/soakplot.py}) skip
it.  The C{other_closes} column counts every close but 1014 on C{/close},
dropped ones included; C{errors} does not count those.

The last two columns say how busy the machine was: the load average, and
the longest delay of this process's own event loop in that minute (a
starved client process looks like a slow relay).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import re
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TextIO

from tests.support.faultbackend import (
    TIMEOUT,
    BackendProcess,
    EchoTalker,
    RelayProcess,
    TickListener,
    waitUntil,
)
from wsrelay.memory import ENVIRONMENT, TRACE_ENVIRONMENT

#: Payload sizes of the echo clients' messages, one per client.
SIZES = (0, 0, 100, 1000, 16000)


@dataclass
class RouteCounts:
    """
    What the clients of one route saw, left or still there.
    """

    joined: int = 0
    left: int = 0
    sent: int = 0
    received: int = 0
    lost: int = 0
    gaps: int = 0
    duplicated: int = 0
    reordered: int = 0
    closes: dict[int | None, int] = field(default_factory=dict)
    refusals: int = 0
    unfinished: int = 0

    def add(self, client: EchoTalker | TickListener) -> None:
        """
        Add what C{client} saw.
        """
        t = client.tally
        self.received += len(t.received)
        self.duplicated += t.duplicated
        self.reordered += t.reordered
        self.refusals += len(t.refusals)
        for code in t.closes:
            self.closes[code] = self.closes.get(code, 0) + 1
        if isinstance(client, EchoTalker):
            self.sent += client.sent
            self.lost += client.lost
        elif t.received:
            self.gaps += t.last - t.received[0] + 1 - len(set(t.received))

    def plus(self, clients: Sequence[EchoTalker | TickListener]) -> RouteCounts:
        """
        @return: These counts with those of C{clients} added.
        """
        total = RouteCounts(
            self.joined,
            self.left,
            self.sent,
            self.received,
            self.lost,
            self.gaps,
            self.duplicated,
            self.reordered,
            dict(self.closes),
            self.refusals,
            self.unfinished,
        )
        for c in clients:
            total.add(c)
        return total

    def errors(self, allowedClose: int | None, dropped: int = 0) -> int:
        """
        @return: The errors among these counts; a close with
            C{allowedClose} is not one, nor are up to C{dropped} closes
            1006 (connections the relay dropped without a close frame, and
            said so: L{droppedMidFrame}).
        """
        closes = sum(n for code, n in self.closes.items() if code != allowedClose)
        closes -= min(dropped, self.closes.get(1006, 0))
        return (
            self.duplicated + self.reordered + closes + self.refusals + self.unfinished
        )


class Route:
    """
    One route's population of clients.
    """

    def __init__(
        self, name: str, url: str, options: argparse.Namespace, allowedClose: int | None
    ) -> None:
        self.name = name
        self.url = url
        self.options = options
        self.allowedClose = allowedClose
        self.counts = RouteCounts()
        self.live: list[EchoTalker | TickListener] = []
        self.problems: list[str] = []
        self.started = time.monotonic()
        self.random = random.Random(name)

    def make(self) -> EchoTalker | TickListener:
        """
        A new client of this route.
        """
        if self.name == "feed":
            return TickListener(self.url)
        return EchoTalker(self.url, self.options.interval, self.random.choice(SIZES))

    async def slot(self, stopping: asyncio.Event) -> None:
        """
        Keep one client: it stays a random time, leaves, another joins.
        """
        o = self.options
        while not stopping.is_set():
            client = self.make()
            client.start()
            self.live.append(client)
            self.counts.joined += 1
            life = self.random.uniform(o.min_life, o.max_life)
            try:
                await asyncio.wait_for(stopping.wait(), life)
            except TimeoutError:
                pass
            await self.leave(client)

    async def leave(self, client: EchoTalker | TickListener) -> None:
        """
        Let C{client} leave: an echo client first waits for its last echo.
        """
        o = self.options
        if isinstance(client, EchoTalker):
            try:
                await client.finish(o.finish_timeout)
            except AssertionError as e:
                self.counts.unfinished += 1
                self.problems.append(
                    f"at {time.monotonic() - self.started:.0f}s: {e}"
                    f" (closes {client.tally.closes})"
                )
        try:
            await client.stop()
        except (TimeoutError, AssertionError) as e:
            self.counts.unfinished += 1
            self.problems.append(
                f"at {time.monotonic() - self.started:.0f}s: stop: {e!r}"
            )
        self.live.remove(client)
        self.counts.left += 1
        self.counts.add(client)

    def now(self) -> RouteCounts:
        """
        @return: The counts of the clients that left and of those here.
        """
        return self.counts.plus(self.live)

    def connected(self) -> int:
        """
        @return: How many of its clients are connected now.
        """
        return sum(1 for c in self.live if c.connected)


async def killer(
    backends: list[BackendProcess],
    offset: float,
    options: argparse.Namespace,
    stopping: asyncio.Event,
) -> None:
    """
    Every C{--period} seconds, from C{offset}, kill one of C{backends} in
    turn and start it again C{--down} seconds later.
    """

    async def pause(seconds: float) -> None:
        try:
            await asyncio.wait_for(stopping.wait(), seconds)
        except TimeoutError:
            pass

    await pause(offset)
    turn = 0
    while not stopping.is_set():
        victim = backends[turn % len(backends)]
        turn += 1
        await victim.kill()
        await pause(options.down)
        await victim.start()
        await pause(options.period - options.down)


def cpuSeconds(pid: int) -> float:
    """
    @return: The user and system CPU seconds process C{pid} used.
    """
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


HEADER = (
    "  min  rss_MB  fds  cpu_s  open  joined   left  echo_sent  echoed  lost"
    "  ticks  gaps  dup  reord  1014  other_closes  refused  kills  errors"
    "  load  lag_ms"
)


class LagMonitor:
    """
    How late this process's event loop wakes up: a loop starved of CPU
    (the machine is busy) delays the clients, whatever the relay does.

    @ivar worst: The longest delay since the last L{take}, in seconds.
    """

    def __init__(self) -> None:
        self.worst = 0.0

    async def run(self, stopping: asyncio.Event) -> None:
        """
        Sleep 0.1 s at a time and note how much longer it took.
        """
        while not stopping.is_set():
            start = time.monotonic()
            await asyncio.sleep(0.1)
            self.worst = max(self.worst, time.monotonic() - start - 0.1)

    def take(self) -> float:
        """
        @return: The worst delay so far, which starts over.
        """
        worst, self.worst = self.worst, 0.0
        return worst


def line(
    label: str,
    relay: RelayProcess,
    routes: list[Route],
    kills: int,
    errors: int,
    lag: float = 0.0,
) -> str:
    """
    One line of the table.
    """
    c = [r.now() for r in routes]
    close, reconnect, feed = c
    other = sum(
        n
        for r, counts in zip(routes, c, strict=True)
        for code, n in counts.closes.items()
        if code != r.allowedClose
    )
    return (
        f"{label:>5} {relay.rss() / 2**20:7.1f} {relay.descriptors():4d}"
        f" {cpuSeconds(relay.pid):6.1f} {sum(r.connected() for r in routes):5d}"
        f" {sum(x.joined for x in c):7d} {sum(x.left for x in c):6d}"
        f" {close.sent + reconnect.sent:10d}"
        f" {close.received + reconnect.received:7d}"
        f" {close.lost + reconnect.lost:5d} {feed.received:6d} {feed.gaps:5d}"
        f" {sum(x.duplicated for x in c):4d} {sum(x.reordered for x in c):6d}"
        f" {close.closes.get(1014, 0):5d} {other:13d}"
        f" {sum(x.refusals for x in c):8d} {kills:6d} {errors:7d}"
        f" {os.getloadavg()[0]:5.1f} {lag * 1000:7.0f}"
    )


#: The relay's access event of a C{/close} session it ended without a
#: close frame because its backend went away: part of a frame had gone to
#: the client, which could not parse a close frame after it
#: (C{Pipe._closeTo} in C{wsrelay/proxy/pipe.py}); the client sees 1006.
DROPPED = re.compile(
    r"\] \S+ close \S+ \S+s in \S+ out \S+ close None by backend$", re.MULTILINE
)


def droppedMidFrame(log: str) -> int:
    """
    @return: How many C{/close} sessions the relay's log C{log} says were
        dropped without a close frame when their backend went away.
    """
    return len(DROPPED.findall(log))


def closesLine(routes: list[Route], dropped: int) -> str:
    """
    The close codes the clients of each route saw, most frequent first
    (1006: no close frame came), and how many C{/close} sessions the relay
    dropped without one (L{droppedMidFrame}).
    """
    parts = []
    for r in routes:
        closes = sorted(
            r.now().closes.items(), key=lambda item: (-item[1], str(item[0]))
        )
        codes = ", ".join(f"{code}: {n}" for code, n in closes)
        parts.append(f"{r.name} {{{codes}}}")
    return f"closes: {'; '.join(parts)}; dropped mid-frame on close {dropped}"


def config(echoes: list[BackendProcess], sources: list[BackendProcess]) -> str:
    """
    The relay's configuration.
    """
    health = "health = tcp\nhealth_interval = 0.5\nhealth_timeout = 2\nrise = 1\n"
    echo = f"backends = {echoes[0].url} {echoes[1].url}\n{health}"
    return (
        "[relay]\n"
        "[route:close]\npath = /close\nfailover = close\n" + echo + "\n"
        "[route:reconnect]\npath = /reconnect\nfailover = reconnect\n" + echo + "\n"
        "[route:feed]\npath = /feed\nmode = fanout\n"
        "backoff_base = 0.05\nbackoff_cap = 0.5\n"
        f"backends = {sources[0].url} {sources[1].url}\n{health}"
    )


async def memoryReport(
    relay: RelayProcess, folder: str, label: str, collect: bool
) -> None:
    """
    Ask the relay for a memory report (L{wsrelay.memory}) labelled C{label},
    with a full collection if C{collect}, and wait until it is written.
    """
    # SIGUSR2 kills a relay that has not installed the reporter yet.
    await waitUntil(
        lambda: "memory reports into" in relay.logText(), "memory reporter", 60
    )
    with open(os.path.join(folder, "request"), "w") as f:
        f.write(label + (" collect\n" if collect else "\n"))
    path = os.path.join(folder, label + ".json")
    os.kill(relay.pid, signal.SIGUSR2)
    await waitUntil(lambda: os.path.exists(path), f"memory report {label}", 60)


def machine() -> str:
    """
    @return: The CPU count and model, and the Python version.
    """
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for text in f:
                if text.startswith("model name"):
                    model = text.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({model}), Python {platform.python_version()}"


async def soak(options: argparse.Namespace) -> int:
    """
    Run the soak.

    @return: The exit status: 0 without errors, else 1.
    """
    echoes = [BackendProcess("echo"), BackendProcess("echo")]
    sources = [
        BackendProcess("source", str(options.tick), str(options.tick_size)),
        BackendProcess("source", str(options.tick), str(options.tick_size)),
    ]
    for b in echoes + sources:
        await b.start()
    environment: dict[str, str] = {}
    reports = options.memory_reports
    if reports:
        reports = os.path.abspath(reports)
        os.makedirs(reports, exist_ok=True)
        environment[ENVIRONMENT] = reports
        if options.tracemalloc:
            environment[TRACE_ENVIRONMENT] = str(options.tracemalloc)
    relay = RelayProcess(config(echoes, sources), environment=environment)
    try:
        await relay.start()
        base = f"ws://127.0.0.1:{relay.port}"
        routes = [
            Route("close", f"{base}/close", options, 1014),
            Route("reconnect", f"{base}/reconnect", options, None),
            Route("feed", f"{base}/feed", options, None),
        ]
        print(f"machine: {machine()}", flush=True)
        print(
            f"relay: pid {relay.pid}, port {relay.port}, log {relay.log}; "
            f"{options.clients} clients per route, kill every {options.period}s"
            f" (down {options.down}s), for {options.minutes} minutes",
            flush=True,
        )
        print(HEADER, flush=True)
        print(line("start", relay, routes, 0, 0), flush=True)
        if reports:
            await memoryReport(relay, reports, "start", options.collect)
        start = (relay.rss(), relay.descriptors())

        def kills() -> int:
            return sum(b.kills for b in echoes + sources)

        def dropped() -> int:
            return droppedMidFrame(relay.logText())

        def errors() -> int:
            mid = dropped()
            return sum(
                r.now().errors(r.allowedClose, mid if r.name == "close" else 0)
                for r in routes
            ) + len(relay.errors())

        stopping = asyncio.Event()
        lag = LagMonitor()
        tasks = [
            asyncio.create_task(lag.run(stopping)),
            asyncio.create_task(killer(echoes, options.period / 4, options, stopping)),
            asyncio.create_task(
                killer(sources, options.period * 3 / 4, options, stopping)
            ),
        ]
        for r in routes:
            for _ in range(options.clients):
                tasks.append(asyncio.create_task(r.slot(stopping)))
                # Joins are spread, not all at once.
                await asyncio.sleep(0.01)
        began = time.monotonic()
        for minute in range(1, int(options.minutes) + 1):
            await asyncio.sleep(max(0.0, began + 60 * minute - time.monotonic()))
            print(
                line(str(minute), relay, routes, kills(), errors(), lag.take()),
                flush=True,
            )
            print(closesLine(routes, dropped()), flush=True)
            if reports:
                await memoryReport(relay, reports, f"min-{minute:03d}", options.collect)
        stopping.set()
        await asyncio.gather(*tasks)
        for b in echoes + sources:
            if not b.running:
                await b.start()
        # Wait for the relay to close what the clients left.
        deadline = time.monotonic() + TIMEOUT
        while relay.descriptors() > start[1] and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        print(line("end", relay, routes, kills(), errors()), flush=True)
        print(closesLine(routes, dropped()), flush=True)
        if reports:
            await memoryReport(relay, reports, "end", True)
        end = (relay.rss(), relay.descriptors())
        print(
            f"relay: resident memory {start[0] / 2**20:.1f} MB at the start,"
            f" {end[0] / 2**20:.1f} MB at the end; descriptors {start[1]} then"
            f" {end[1]}",
            flush=True,
        )
        for r in routes:
            c = r.now()
            closes = ", ".join(
                f"{k}: {v}" for k, v in sorted(c.closes.items(), key=str)
            )
            print(
                f"route {r.name}: {c.joined} clients, sent {c.sent}, received"
                f" {c.received}, lost {c.lost}, gaps {c.gaps}, duplicated"
                f" {c.duplicated}, reordered {c.reordered}, closes {{{closes}}},"
                f" refused {c.refusals}, unfinished {c.unfinished}",
                flush=True,
            )
            for problem in r.problems[:10]:
                print(f"route {r.name}: {problem}", flush=True)
        found = errors()
    finally:
        status = await relay.stop()
        for b in echoes + sources:
            await b.stop()
    logged = relay.errors()
    for text in logged:
        print(f"relay log: {text}", flush=True)
    print(f"relay exit status {status}; errors {found}", flush=True)
    return 0 if found == 0 and status == 0 else 1


def parseArguments(argv: Sequence[str]) -> argparse.Namespace:
    """
    Parse the command line.
    """
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--minutes", type=float, default=10, help="default 10")
    parser.add_argument(
        "--clients", type=int, default=20, help="clients per route (default 20)"
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=0.05,
        help="seconds between an echo client's messages (default 0.05)",
    )
    parser.add_argument(
        "--tick", type=float, default=0.02, help="seconds between ticks (0.02)"
    )
    parser.add_argument(
        "--tick-size", type=int, default=64, help="padding bytes of a tick (64)"
    )
    parser.add_argument(
        "--period", type=float, default=10, help="seconds between kills (10)"
    )
    parser.add_argument(
        "--down", type=float, default=2, help="seconds a killed backend stays down (2)"
    )
    parser.add_argument(
        "--min-life", type=float, default=5, help="shortest client stay (5 s)"
    )
    parser.add_argument(
        "--max-life", type=float, default=60, help="longest client stay (60 s)"
    )
    parser.add_argument(
        "--finish-timeout",
        type=float,
        default=30,
        help="seconds a leaving echo client waits for its last echo (30)",
    )
    parser.add_argument(
        "--log",
        metavar="FILE",
        help="write the output to FILE too (for python -m bench.soakplot)",
    )
    parser.add_argument(
        "--memory-reports",
        metavar="DIR",
        help="ask the relay for a memory report (wsrelay/memory.py) into DIR"
        " at the start, every minute, and at the end after a full collection",
    )
    parser.add_argument(
        "--collect",
        action="store_true",
        help="with --memory-reports: a full collection at every report",
    )
    parser.add_argument(
        "--tracemalloc",
        type=int,
        default=0,
        metavar="FRAMES",
        help="with --memory-reports: the relay traces allocations once it runs"
        " (WSRELAY_MEMORY_TRACE=FRAMES) and dumps a snapshot with each report",
    )
    return parser.parse_args(argv)


class Tee:
    """
    Writes to standard output and to a file (C{--log}).
    """

    def __init__(self, stream: TextIO, file: TextIO) -> None:
        self.stream = stream
        self.file = file

    def write(self, text: str) -> int:
        """
        Write C{text} to both.
        """
        self.file.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        """
        Flush both.
        """
        self.file.flush()
        self.stream.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run the soak from the command line.
    """
    options = parseArguments(sys.argv[1:] if argv is None else argv)
    if not options.log:
        return asyncio.run(soak(options))
    with open(options.log, "w") as log:
        stdout = sys.stdout
        sys.stdout = Tee(stdout, log)  # type: ignore[assignment]
        try:
            return asyncio.run(soak(options))
        finally:
            sys.stdout = stdout


if __name__ == "__main__":
    sys.exit(main())
