"""
The benchmark's scenarios: each starts its backend or source and a target,
drives the target with the load generators of L{bench.peers}, stops them,
and returns one L{Cell} of the table.
"""

from __future__ import annotations

import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import targets
from bench.control import Peer, PeerFailed
from bench.procstat import (
    cpuSeconds,
    processTree,
    residentBytes,
    systemSeconds,
    waitSeconds,
)

SCENARIOS = (
    "echo-small",
    "echo-large",
    "echo-deflate",
    "fanout-light",
    "fanout-heavy",
    "storm",
)
"""
Every scenario, in the order the table shows them.
"""


#: The upstreams a fan-out target keeps to the source whatever its
#: clients (the others open one per client).
UPSTREAMS = {"wsrelay": 1, "wsrelay-workers": 2}


@dataclass(frozen=True)
class Preset:
    """
    How long and how big each scenario runs.

    @ivar warmup: Seconds of echo load before the first measured round.
    @ivar rounds: Measured echo rounds; the table shows their medians.
    @ivar duration: Seconds of one echo round.
    @ivar fanoutRounds: Measured fan-out rounds.
    @ivar fanoutDuration: Seconds the source sends in one fan-out round.
    @ivar drain: Seconds after the source's last send by which a message
        must have arrived; later ones count as lost.
    @ivar stormRuns: Storms, each against a freshly started target.
    @ivar heavyTick: How the source writes in C{fanout-heavy}: every
        C{heavyTick} seconds, each tick's messages at once (one write per
        connection per tick), or, with 0, each message on its own (see
        L{bench.peers.broadcast}).
    @ivar lightSampled: The C{fanout-light} subscribers that record
        latencies (the others only count, see L{bench.peers.CountingClient}).
    @ivar heavySampled: The same for C{fanout-heavy}.
    @ivar stormConcurrency: Handshakes a storm keeps in flight.
    """

    name: str
    warmup: float
    rounds: int
    duration: float
    fanoutRounds: int
    fanoutDuration: float
    drain: float
    stormRuns: int
    echoConnections: int = 50
    smallSize: int = 64
    largeConnections: int = 10
    largeSize: int = 65536
    deflateSize: int = 8192
    lightClients: int = 500
    lightRate: float = 50
    heavyClients: int = 500
    heavyRate: float = 2000
    heavyTick: float = 0.001
    lightSampled: int = 100
    heavySampled: int = 20
    fanoutSize: int = 100
    stormConnections: int = 2000
    stormConcurrency: int = 50


PRESETS = {
    # The storm and fanout-heavy shapes are issue 16's: 2000 connections with
    # 50 handshakes in flight, and 500 subscribers at 2000 messages/s (a
    # million deliveries a second offered) with the source writing each 1 ms
    # tick's messages at once.  The storm's five runs per target are
    # interleaved across the targets (Bench.storms), and each restarts its
    # target.
    "full": Preset("full", 1.0, 3, 3.0, 3, 3.0, 2.0, 5),
    "quick": Preset(
        "quick",
        0.5,
        3,
        1.0,
        2,
        1.0,
        1.0,
        1,
        lightClients=200,
        heavyClients=300,
        stormConnections=1000,
    ),
    # For tests/test_bench.py: a few seconds in all.
    "smoke": Preset(
        "smoke",
        0.2,
        1,
        0.5,
        1,
        0.5,
        1.0,
        1,
        echoConnections=4,
        largeConnections=2,
        lightClients=5,
        heavyClients=5,
        heavyRate=100,
        # Two messages a tick, as the full preset's 2000/s in 1 ms ticks.
        heavyTick=0.02,
        heavySampled=2,
        stormConnections=20,
        stormConcurrency=10,
    ),
}


@dataclass
class Cell:
    """
    One target's figures in one scenario (medians over rounds or runs).

    @ivar rate: Messages, megabytes, deliveries or handshakes per second.
    @ivar unit: The unit of C{rate}.
    @ivar p50: Median latency, seconds.
    @ivar p99: 99th percentile latency, seconds.
    @ivar cpuPerOp: The proxy's CPU microseconds per message, delivery or
        handshake.
    @ivar proxyCPU: The proxy's CPU seconds in one round (or storm).
    @ivar systemPerOp: The system (kernel) part of C{cpuPerOp}: its
        microseconds per message, delivery or handshake.
    @ivar closeCPUPerConn: In the storm, the proxy's CPU microseconds per
        connection closed, over the close phase (after C{cpuPerOp}'s).
    @ivar sideCPU: The backend's or source's CPU seconds in one round (a
        storm's: in one run's open phase).
    @ivar lost: Fan-out deliveries that did not arrive in time.
    @ivar expected: Fan-out deliveries due.
    @ivar memPerConn: The proxy's resident bytes per held connection.
    @ivar loadPercent: CPU use of the load side (CPU 0: load generator,
        backend or source), percent of one CPU.
    @ivar proxyWait: Time the proxy waited, runnable, for its CPU while
        other processes ran, percent of the measured time.
    @ivar loadWait: The same for the load side's processes, summed.
    @ivar note: Why there are no figures, or a remark on them.
    """

    scenario: str
    target: str
    rate: float | None = None
    unit: str = ""
    p50: float | None = None
    p99: float | None = None
    cpuPerOp: float | None = None
    proxyCPU: float | None = None
    systemPerOp: float | None = None
    closeCPUPerConn: float | None = None
    sideCPU: float | None = None
    lost: int | None = None
    expected: int | None = None
    memPerConn: float | None = None
    loadPercent: float | None = None
    proxyWait: float | None = None
    loadWait: float | None = None
    note: str | None = None
    failed: bool = False
    rounds: list[dict[str, Any]] = field(default_factory=list)


def median(values: Sequence[float | None]) -> float | None:
    """
    The median of the values that are not L{None}, or L{None}.
    """
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


@dataclass
class Bench:
    """
    What every scenario needs: the preset, the working folder, and the
    command prefixes pinning the proxy and the load side to their CPUs.

    @ivar profile: A folder for py-spy flame graphs of the wsrelay, twisted
        and ownsockets targets, or L{None} for none.
    @ivar pySpy: The py-spy program.
    @ivar maxMessageSize: The wsrelay targets' C{max_message_size}.
    @ivar reactor: The wsrelay targets' reactor (C{twistd -r}), or L{None}
        for C{twistd wsrelay}'s default.
    @ivar writeDelay: The wsrelay targets' fan-out C{write_delay}, or
        L{None} for its default.
    """

    preset: Preset
    work: Path
    proxyPin: Sequence[str] = ()
    loadPin: Sequence[str] = ()
    stormConnections: int = 5000
    profile: Path | None = None
    pySpy: str = "py-spy"
    maxMessageSize: int = 16777216
    reactor: str | None = None
    writeDelay: float | None = None

    def peer(self, role: str, *arguments: object) -> Peer:
        """
        Start a peer on the load side's CPU.
        """
        return Peer(role, [str(a) for a in arguments], self.work, self.loadPin)

    def folder(self, scenario: str, target: str) -> Path:
        """
        A fresh folder for one target's configuration and logs.
        """
        n = 1
        while (path := self.work / f"{scenario}-{target}-{n}").exists():
            n += 1
        path.mkdir(parents=True)
        return path

    def start(
        self, scenario: str, target: str, port: int, fanout: bool, connections: int
    ) -> targets.Running:
        """
        Start a target for a scenario (see L{targets.start}), pinned to its
        CPU; with L{profile} set, record a wsrelay target's profile with
        py-spy until it stops, into C{PROFILE/SCENARIO-TARGET-N.svg}.
        """
        folder = self.folder(scenario, target)
        running = targets.start(
            target,
            folder,
            port,
            fanout,
            connections,
            self.proxyPin,
            self.maxMessageSize,
            self.reactor,
            self.writeDelay,
        )
        if self.profile is not None and (
            target.startswith(("wsrelay", "ownsockets")) or target == "twisted"
        ):
            self.profile.mkdir(parents=True, exist_ok=True)
            svg = self.profile / f"{folder.name}.svg"
            running.profiler = subprocess.Popen(
                [
                    *self.loadPin,
                    self.pySpy,
                    "record",
                    "--nonblocking",
                    "--rate",
                    "250",
                    "--pid",
                    str(running.pids[0]),
                    "--output",
                    str(svg),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        return running

    def run(self, scenario: str, target: str) -> Cell:
        """
        Run one scenario against one target.  A target that cannot run or
        fails gives a cell with a note instead of figures.
        """
        runners: dict[str, Callable[[str], Cell]] = {
            "echo-small": lambda t: self.echo(t, large=False),
            "echo-large": lambda t: self.echo(t, large=True),
            "echo-deflate": lambda t: self.echo(t, large=False, deflate=True),
            "fanout-light": lambda t: self.fanout(t, heavy=False),
            "fanout-heavy": lambda t: self.fanout(t, heavy=True),
            "storm": lambda t: self.storms([t])[0],
        }
        try:
            cell = runners[scenario](target)
        except targets.TargetUnavailable as e:
            return Cell(scenario, target, note=str(e))
        except (targets.TargetFailed, PeerFailed) as e:
            return Cell(scenario, target, note=f"error: {e}", failed=True)
        cell.scenario = scenario
        return cell

    def echo(self, target: str, large: bool, deflate: bool = False) -> Cell:
        """
        C{echo-small} (64-byte text), C{echo-large} (64 KiB binary) or
        C{echo-deflate} (8 KiB of JSON-like text, deflated about fourfold,
        with permessage-deflate negotiated by the client and the backend):
        closed-loop clients through the target to the echo backend.
        """
        p = self.preset
        connections = p.largeConnections if large else p.echoConnections
        size = p.largeSize if large else p.smallSize
        if deflate:
            size = p.deflateSize
        scenario = "echo-large" if large else "echo-small"
        if deflate:
            scenario = "echo-deflate"
        backend = self.peer("echo-server", *(["--deflate"] if deflate else []))
        try:
            port = backend.read(30)["port"]
            running = self.start(
                scenario,
                target,
                port,
                False,
                connections + 64,
            )
            try:
                arguments: list[object] = [
                    "--url",
                    running.url,
                    "--connections",
                    connections,
                    "--size",
                    size,
                    "--warmup",
                    p.warmup,
                    "--rounds",
                    p.rounds,
                    "--duration",
                    p.duration,
                    "--pids",
                    ",".join(map(str, running.pids)),
                    "--side-pids",
                    backend.pid,
                ]
                if large:
                    arguments.append("--binary")
                if deflate:
                    arguments.append("--deflate")
                load = self.peer("echo-load", *arguments)
                try:
                    result = load.read(p.warmup + p.rounds * (p.duration + 5) + 60)
                finally:
                    load.close()
            finally:
                running.stop()
        finally:
            backend.close()
        rounds = result["rounds"]
        proxied = bool(running.pids)
        cell = Cell("", target, unit="MB/s" if large else "msg/s", rounds=rounds)
        if large:
            cell.rate = median(
                [r["messages"] * size / r["seconds"] / 1e6 for r in rounds]
            )
        else:
            cell.rate = median([r["messages"] / r["seconds"] for r in rounds])
        cell.p50 = median([r["p50"] for r in rounds])
        cell.p99 = median([r["p99"] for r in rounds])
        if proxied:
            cell.cpuPerOp = median(
                [r["proxyCPU"] / r["messages"] * 1e6 for r in rounds if r["messages"]]
            )
            cell.proxyCPU = median([r["proxyCPU"] for r in rounds])
            cell.systemPerOp = median(
                [
                    r["proxySystem"] / r["messages"] * 1e6
                    for r in rounds
                    if r["messages"]
                ]
            )
        cell.sideCPU = median([r["sideCPU"] for r in rounds])
        cell.loadPercent = median(
            [(r["loadCPU"] + r["sideCPU"]) / r["seconds"] * 100 for r in rounds]
        )
        self._waits(cell, rounds, "seconds")
        return cell

    @staticmethod
    def _waits(cell: Cell, rounds: list[dict[str, Any]], seconds: str) -> None:
        """
        Set a cell's waiting figures from its rounds' C{proxyWait} and
        C{loadWait} seconds over their C{seconds} key.
        """
        if cell.proxyCPU is not None:
            cell.proxyWait = median(
                [r["proxyWait"] / r[seconds] * 100 for r in rounds if r[seconds]]
            )
        cell.loadWait = median(
            [r["loadWait"] / r[seconds] * 100 for r in rounds if r[seconds]]
        )

    def fanout(self, target: str, heavy: bool) -> Cell:
        """
        C{fanout-light} or C{fanout-heavy}: subscribers through the target
        to the broadcast source.  nginx and HAProxy give each subscriber
        its own upstream, so the source sends each message to each of
        them; wsrelay holds one upstream; C{direct} subscribes to the
        source itself.
        """
        p = self.preset
        clients = p.heavyClients if heavy else p.lightClients
        rate = p.heavyRate if heavy else p.lightRate
        source = self.peer("source")
        try:
            port = source.read(30)["port"]
            running = self.start(
                "fanout-heavy" if heavy else "fanout-light",
                target,
                port,
                True,
                clients + 64,
            )
            try:
                cell = self._fanoutRounds(
                    running,
                    source,
                    clients,
                    rate,
                    p.heavyTick if heavy else 0,
                    p.heavySampled if heavy else p.lightSampled,
                )
            finally:
                running.stop()
        finally:
            source.close()
        return cell

    def _settle(self, source: Peer, least: int) -> int:
        """
        Wait until the source has at least C{least} connections and their
        number has stopped changing (the probe's has closed).

        @return: The source's connections.
        """
        deadline = time.monotonic() + 15
        last = -1
        while time.monotonic() < deadline:
            count: int = source.request({"cmd": "count"}, 10)["connections"]
            if count >= least and count == last:
                return count
            last = count
            time.sleep(0.2)
        return last

    def _fanoutRounds(
        self,
        running: targets.Running,
        source: Peer,
        clients: int,
        rate: float,
        tick: float,
        sampled: int,
    ) -> Cell:
        """
        Connect the subscribers and measure the fan-out rounds, the source
        writing per message (C{tick} 0) or per tick of C{tick} seconds, the
        latency taken at C{sampled} of the subscribers.
        """
        p = self.preset
        # wsrelay connects its upstream at start (connect = eager).
        self._settle(source, UPSTREAMS.get(running.name, 0))
        feed = self.peer(
            "feed-clients",
            "--url",
            running.url,
            "--clients",
            clients,
            "--concurrency",
            200,
            "--sampled",
            sampled,
        )
        try:
            ready = feed.read(120)
            if ready["failed"]:
                raise PeerFailed(
                    f"{ready['failed']} of {clients} subscribers failed to connect: "
                    + "; ".join(ready["errors"])
                )
            upstreams = self._settle(source, UPSTREAMS.get(running.name, clients))
            rounds = []
            for r in range(p.fanoutRounds):
                tag = ord("A") + r
                feed.request({"cmd": "arm", "tag": tag, "size": p.fanoutSize}, 30)
                started = time.monotonic()
                load = [source.pid, feed.pid]
                before = (
                    cpuSeconds(running.pids),
                    cpuSeconds([source.pid]),
                    waitSeconds(running.pids),
                    waitSeconds(load),
                    systemSeconds(running.pids),
                )
                sent = source.request(
                    {
                        "cmd": "send",
                        "duration": p.fanoutDuration,
                        "rate": rate,
                        "size": p.fanoutSize,
                        "tag": tag,
                        "limit": 1 << 20,
                        "tick": tick,
                    },
                    p.fanoutDuration + 60,
                )
                got = feed.request(
                    {
                        "cmd": "collect",
                        "expect": sent["sent"],
                        "deadline": sent["end"] + p.drain,
                    },
                    p.drain + 60,
                )
                after = (
                    cpuSeconds(running.pids),
                    cpuSeconds([source.pid]),
                    waitSeconds(running.pids),
                    waitSeconds(load),
                    systemSeconds(running.pids),
                )
                span = max(got["last"], sent["end"]) - sent["start"]
                rounds.append(
                    {
                        **{f"source.{k}": v for k, v in sent.items()},
                        **{f"clients.{k}": v for k, v in got.items()},
                        "upstreams": upstreams,
                        "proxyCPU": after[0] - before[0],
                        "proxySystem": after[4] - before[4],
                        "sideCPU": after[1] - before[1],
                        "proxyWait": after[2] - before[2],
                        "loadWait": after[3] - before[3],
                        "seconds": time.monotonic() - started,
                        "span": span,
                    }
                )
                # Let what is still in flight arrive (it no longer counts).
                time.sleep(0.3 if got["received"] >= got["expected"] else p.drain)
        finally:
            feed.close()
        cell = Cell("", running.name, unit="deliv/s", rounds=rounds)
        # Every message received counts towards the rate, also one the round
        # before sent: an overloaded target delivers its backlog meanwhile.
        cell.rate = median(
            [
                r["clients.frames"] / (r["clients.now"] - r["source.start"])
                for r in rounds
            ]
        )
        cell.p50 = median([r["clients.p50"] for r in rounds])
        cell.p99 = median([r["clients.p99"] for r in rounds])
        lost = [r["clients.expected"] - r["clients.received"] for r in rounds]
        cell.lost = sum(lost)
        cell.expected = sum(r["clients.expected"] for r in rounds)
        if running.pids:
            cell.cpuPerOp = median(
                [
                    r["proxyCPU"] / r["clients.frames"] * 1e6
                    for r in rounds
                    if r["clients.frames"]
                ]
            )
            cell.systemPerOp = median(
                [
                    r["proxySystem"] / r["clients.frames"] * 1e6
                    for r in rounds
                    if r["clients.frames"]
                ]
            )
            cell.proxyCPU = median([r["proxyCPU"] for r in rounds])
        cell.sideCPU = median([r["sideCPU"] for r in rounds])
        cell.loadPercent = median(
            [
                (r["sideCPU"] + r["clients.loadCPU"]) / r["span"] * 100
                for r in rounds
                if r["span"] > 0
            ]
        )
        self._waits(cell, rounds, "seconds")
        sent = sum(r["source.sent"] for r in rounds)
        scheduled = sum(r["source.scheduled"] for r in rounds)
        if sent < 0.98 * scheduled:
            cell.note = (
                f"the source sent {sent} of {scheduled} scheduled messages "
                f"({sent / scheduled:.0%}): it could not keep up"
            )
        return cell

    def storms(
        self,
        chosen: Sequence[str],
        ran: Callable[[str, int, float, str | None], None] | None = None,
    ) -> list[Cell]:
        """
        C{storm}: open many connections through each target as fast as a
        window of handshakes in flight allows, and hold them.  Each run
        starts a fresh target, so its resident memory before the storm is
        its idle size.  Then the storm's client closes them all, each with
        a closing handshake (L{bench.rawws.storm}): the proxy's CPU over
        that phase, per connection, is C{closeCPUPerConn}.

        The runs are interleaved: the first of every target, then the
        second of every target, and so on.  The load side's speed, which
        sets the rate of a fast proxy such as nginx, moves by a third
        within an hour on a shared machine; interleaved, a target's run
        and nginx's of the same number see the same machine.  Each run's
        dictionary keeps its number (C{"run"}), by which
        L{bench.report.stormRunLine} pairs the runs.

        @param chosen: The targets, in the table's order.
        @param ran: Called after each run with the target, the run's
            number, the seconds it took, and why it gave no figures (or
            L{None}).
        @return: One cell per target, in C{chosen}'s order.
        """
        runs: dict[str, list[dict[str, Any]]] = {t: [] for t in chosen}
        ended: dict[str, Cell] = {}
        for number in range(1, self.preset.stormRuns + 1):
            for target in chosen:
                if target in ended:
                    continue
                t0 = time.monotonic()
                note = None
                try:
                    result = self._stormRun(target)
                except targets.TargetUnavailable as e:
                    note = str(e)
                    ended[target] = Cell("storm", target, note=note)
                except (targets.TargetFailed, PeerFailed) as e:
                    note = f"error: {e}"
                    ended[target] = Cell("storm", target, note=note, failed=True)
                else:
                    result["run"] = number
                    runs[target].append(result)
                if ran is not None:
                    ran(target, number, time.monotonic() - t0, note)
        return [ended.get(t) or self._stormCell(t, runs[t]) for t in chosen]

    def _stormRun(self, target: str) -> dict[str, Any]:
        """
        One storm through a freshly started target and backend.
        """
        backend = self.peer("hold-server")
        try:
            port = backend.read(30)["port"]
            running = self.start(
                "storm", target, port, False, self.stormConnections + 64
            )
            try:
                return self._stormOnce(running, self.stormConnections, backend.pid)
            finally:
                running.stop()
        finally:
            backend.close()

    def _stormCell(self, target: str, runs: list[dict[str, Any]]) -> Cell:
        """
        One target's storm figures: medians over its runs.
        """
        n = self.stormConnections
        cell = Cell("storm", target, unit="hs/s", rounds=runs)
        cell.rate = median([r["opened"] / r["seconds"] for r in runs])
        if any(r["failed"] for r in runs):
            cell.note = (
                f"{max(r['failed'] for r in runs)} of {n} connections failed: "
                + "; ".join(runs[0]["errors"])
            )
        cell.loadPercent = median([r["loadCPU"] / r["seconds"] * 100 for r in runs])
        if all("sideCPU" in r for r in runs):
            cell.sideCPU = median([r["sideCPU"] for r in runs])
        if runs[0]["proxied"]:
            cell.memPerConn = median([r["memory"] / r["opened"] for r in runs])
            cell.cpuPerOp = median([r["proxyCPU"] / r["opened"] * 1e6 for r in runs])
            cell.proxyCPU = median([r["proxyCPU"] for r in runs])
            cell.systemPerOp = median(
                [r["proxySystem"] / r["opened"] * 1e6 for r in runs]
            )
            cell.closeCPUPerConn = median(
                [r["closeCPU"] / r["opened"] * 1e6 for r in runs]
            )
        self._waits(cell, runs, "window")
        return cell

    def _stormOnce(
        self, running: targets.Running, n: int, backend: int
    ) -> dict[str, Any]:
        """
        One storm against a started target in front of the backend (a
        process ID): the open phase, whose CPU is read once every
        connection is open, then the close phase, read once the client has
        seen every connection end (or given up on it) and the proxy has had
        the same half second to finish its bookkeeping.
        """
        time.sleep(0.2)
        pids = processTree(running.pids[0]) if running.pids else []
        memory, cpu = residentBytes(pids), cpuSeconds(pids)
        system, side = systemSeconds(pids), cpuSeconds([backend])
        waits = (waitSeconds(pids), waitSeconds([backend]), time.monotonic())
        storm = self.peer(
            "storm",
            "--url",
            running.url,
            "--connections",
            n,
            "--concurrency",
            self.preset.stormConcurrency,
        )
        try:
            result = storm.read(180)
            if not result["opened"]:
                raise PeerFailed(
                    "storm: no connection opened: " + "; ".join(result["errors"])
                )
            # Let the proxy finish the last handshakes' bookkeeping.
            time.sleep(0.5)
            result["memory"] = residentBytes(pids) - memory
            openCPU = cpuSeconds(pids)
            result["proxyCPU"] = openCPU - cpu
            result["proxySystem"] = systemSeconds(pids) - system
            result["sideCPU"] = cpuSeconds([backend]) - side
            result["proxied"] = bool(pids)
            result["proxyWait"] = waitSeconds(pids) - waits[0]
            result["loadWait"] = waitSeconds([backend, storm.pid]) - waits[1]
            result["window"] = time.monotonic() - waits[2]
            result.update(storm.request({"close": True}, 30))
            time.sleep(0.5)
            result["closeCPU"] = cpuSeconds(pids) - openCPU
        finally:
            storm.close(30)
        return result
