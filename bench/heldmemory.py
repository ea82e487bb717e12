"""
What one held connection costs inside the relay, object by object (issue
16): its resident memory, C{tracemalloc}'s bytes by allocation site, and
the objects the garbage collector tracks by type, each per connection.

    .venv/bin/python -m bench.heldmemory --connections 1000 \\
        [--mode proxy|fanout] [--data-path passthrough|message] [--json FILE]

A relay (C{twistd -n --pidfile= wsrelay}, configured as the benchmark's
wsrelay targets are: no access log, no pings) runs in front of the storm's
backend (proxy mode) or the fan-out source, and writes memory reports
(L{wsrelay.memory}) when asked.  After a few connections opened and closed
(C{--warmup}: what the first connection builds once, imports and caches,
is not what a held connection costs), it reports with no client
(C{empty}), with C{--connections} held (C{held}), and after they closed
(C{closed}: what they left behind), each after a full collection.  The
storm's client (L{bench.rawws}) opens them, 50 handshakes in flight, and
holds them; each report waits until the relay holds (or has closed) every
socket.

The relay runs twice: untraced, for the resident memory and the objects
by type, then with C{tracemalloc} tracing one frame, for the allocation
sites (tracing takes memory of its own for each block it traces, which
would count as the connections').  The traced bytes are all a held
connection allocated; the bytes by type are each object's own
(C{sys.getsizeof}): an instance's dictionary counts as a C{dict} when it
has one, and the attribute values Python 3.11 keeps beside an instance
without one are counted nowhere.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench import targets
from bench.control import ROOT, Peer, PeerFailed
from bench.run import _raiseFileLimit
from wsrelay import memory

KIB = 1024

#: The rows of each table.
TOP = 15

#: The state of a listening socket in C{/proc/net/tcp}.
LISTEN = "0A"

#: Handshakes in flight, as in issue 16's storm.
CONCURRENCY = 50


class HeldMemoryFailed(Exception):
    """
    The relay or a peer did not do what the measurement needs; the
    message says what.
    """


def waitFor(check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    """
    Poll C{check} until it holds.

    @raise HeldMemoryFailed: If it does not within C{timeout} seconds.
    """
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise HeldMemoryFailed(f"{what}: not within {timeout:g} s")
        time.sleep(0.02)


def connections(pid: int, port: int, backendPort: int) -> tuple[int, int]:
    """
    @return: The TCP connections (IPv4) of a process that it accepted on
        C{port}, and those it made to C{backendPort}, in any state but
        closed (its sockets).
    """
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            # Closed meanwhile.
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    accepted = made = 0
    with open(f"/proc/{pid}/net/tcp") as f:
        next(f)
        for line in f:
            # sl local remote state queues timer retransmits uid timeout inode
            fields = line.split()
            if fields[3] == LISTEN or fields[9] not in inodes:
                continue
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                accepted += 1
            elif int(fields[2].rsplit(":", 1)[1], 16) == backendPort:
                made += 1
    return accepted, made


class Relay:
    """
    A relay started with memory reports on, in front of its backend (or
    fan-out source), a peer.

    @ivar folder: Where its reports go.
    @ivar upstreams: How many connections to its backend the relay holds
        with no client: the fan-out channel's one, or none.
    """

    def __init__(
        self, work: Path, mode: str, dataPath: str, trace: bool, connections: int
    ) -> None:
        self.work = work
        self.folder = work / "reports"
        fanout = mode == "fanout"
        self.upstreams = 1 if fanout else 0
        self.backend = Peer("source" if fanout else "hold-server", [], work, ())
        try:
            self.backendPort: int = self.backend.read(30)["port"]
            environ = {memory.ENVIRONMENT: str(self.folder)}
            if trace:
                environ[memory.TRACE_ENVIRONMENT] = "1"
            name = "wsrelay-message" if dataPath == "message" else "wsrelay"
            self.running = targets.start(
                name,
                work / "relay",
                self.backendPort,
                fanout,
                connections + 64,
                environ=environ,
            )
        except BaseException:
            self.backend.close()
            raise
        try:
            assert self.running.process is not None
            self.pid = self.running.process.pid
            port = urlsplit(self.running.url).port
            assert port is not None
            self.port = port
            # SIGUSR2 ends a relay that has not installed its reporter yet.
            waitFor(
                lambda: "memory reports into" in self.running.logTail(50),
                "the relay's memory reporter",
            )
            # The handshake that found it ready is closed, the channel open.
            self.waitForClients(0)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """
        Stop the relay, then its backend.
        """
        try:
            self.running.stop()
        finally:
            self.backend.close()

    def waitForClients(self, clients: int) -> None:
        """
        Wait until the relay holds C{clients} client connections, and their
        upstream connections in proxy mode.
        """
        upstreams = self.upstreams or clients
        waitFor(
            lambda: (
                connections(self.pid, self.port, self.backendPort)
                == (clients, upstreams)
            ),
            f"the relay holding {clients} clients and {upstreams} upstreams",
        )

    def report(self, label: str) -> dict[str, Any]:
        """
        Ask for a report with a full collection and every type, and wait
        for it.

        @return: The report.
        """
        (self.folder / "request").write_text(f"{label} collect types\n")
        path = self.folder / f"{label}.json"
        os.kill(self.pid, signal.SIGUSR2)
        waitFor(path.exists, f"memory report {label}")
        result: dict[str, Any] = json.loads(path.read_text())
        return result

    def hold(self, connections: int) -> Peer:
        """
        Open C{connections} through the relay and hold them, until the
        relay holds every one (and its upstream).

        @return: The storm's client, which closes them when closed.
        """
        storm = Peer(
            "storm",
            [
                "--url",
                self.running.url,
                "--connections",
                str(connections),
                "--concurrency",
                str(CONCURRENCY),
            ],
            self.work,
            (),
        )
        try:
            opened = storm.read(180)
            if opened["opened"] != connections:
                raise HeldMemoryFailed(
                    f"{opened['opened']} of {connections} connections opened: "
                    + "; ".join(opened["errors"])
                )
            self.waitForClients(connections)
        except BaseException:
            storm.close(30)
            raise
        return storm

    def release(self, storm: Peer) -> None:
        """
        Close the storm's connections, and wait until the relay has closed
        its side of each.
        """
        storm.close(30)
        self.waitForClients(0)


def measure(
    work: Path, mode: str, dataPath: str, connections: int, warmup: int, trace: bool
) -> dict[str, Any]:
    """
    Start a relay, take its reports C{empty}, C{held} and C{closed}.

    @return: The reports by label, and C{folder}: theirs.
    """
    relay = Relay(work, mode, dataPath, trace, connections)
    try:
        if warmup:
            relay.release(relay.hold(warmup))
        reports: dict[str, Any] = {"folder": str(relay.folder)}
        reports["empty"] = relay.report("empty")
        storm = relay.hold(connections)
        try:
            reports["held"] = relay.report("held")
        finally:
            relay.release(storm)
        reports["closed"] = relay.report("closed")
    finally:
        relay.stop()
    return reports


def settled(report: dict[str, Any]) -> dict[str, Any]:
    """
    @return: A report's figures after its full collection.
    """
    figures: dict[str, Any] = report.get("after", report["before"])
    return figures


def residentGrowth(old: dict[str, Any], new: dict[str, Any]) -> int:
    """
    @return: How many bytes of resident memory (C{VmRSS}) C{new} has more
        than C{old}.
    """
    growth: int = settled(new)["process"]["VmRSS"] - settled(old)["process"]["VmRSS"]
    return growth


def typeGrowth(
    old: dict[str, Any], new: dict[str, Any], connections: int
) -> list[dict[str, Any]]:
    """
    @return: The types of which C{new} has more objects, or more bytes,
        than C{old}, each with the objects and bytes it gained per
        connection, most bytes first.
    """
    before, after = settled(old), settled(new)
    rows = []
    for name, count in after["types"].items():
        objects = count - before["types"].get(name, 0)
        size = after["typeBytes"][name] - before["typeBytes"].get(name, 0)
        if objects > 0 or size > 0:
            rows.append(
                {
                    "type": name,
                    "objects": objects / connections,
                    "bytes": size / connections,
                }
            )
    rows.sort(key=lambda r: (-r["bytes"], -r["objects"], r["type"]))
    return rows


def site(frame: tracemalloc.Frame) -> str:
    """
    @return: Where a block was allocated, as C{file:line}, the file
        relative to the repository, to C{site-packages} or to the standard
        library.
    """
    name = re.sub(r"^.*/(site-packages|lib/python3\.\d+)/", "", frame.filename)
    prefix = str(ROOT) + os.sep
    if name.startswith(prefix):
        name = name[len(prefix) :]
    return f"{name}:{frame.lineno}"


def siteGrowth(folder: str, old: str, new: str, connections: int) -> dict[str, Any]:
    """
    @return: The traced bytes and blocks that the snapshot of report C{new}
        has more than that of C{old}, in total (C{bytes}, C{blocks}) and
        by allocation site (C{sites}, most bytes first, those that grew),
        per connection.
    """
    # The reports' own work, which a larger report has more of.
    ignored = [
        tracemalloc.Filter(False, tracemalloc.__file__),
        tracemalloc.Filter(False, memory.__file__),
    ]
    snapshots = [
        tracemalloc.Snapshot.load(
            os.path.join(folder, label + ".tracemalloc")
        ).filter_traces(ignored)
        for label in (old, new)
    ]
    stats = snapshots[1].compare_to(snapshots[0], "lineno")
    rows = [
        {
            "site": site(s.traceback[0]),
            "bytes": s.size_diff / connections,
            "blocks": s.count_diff / connections,
        }
        for s in stats
        if s.size_diff > 0
    ]
    return {
        "bytes": sum(s.size_diff for s in stats) / connections,
        "blocks": sum(s.count_diff for s in stats) / connections,
        "sites": rows,
    }


def figures(
    untraced: dict[str, Any], traced: dict[str, Any], connections: int
) -> dict[str, Any]:
    """
    @param untraced: The reports of the untraced run (L{measure}).
    @param traced: Those of the traced run.
    @return: The figures per connection: resident memory held and left
        after closing (untraced, and C{residentTraced} when tracing), the
        traced bytes and blocks held and left, by allocation site, and the
        objects by type.
    """
    n = connections
    held = siteGrowth(traced["folder"], "empty", "held", n)
    left = siteGrowth(traced["folder"], "empty", "closed", n)
    return {
        "resident": residentGrowth(untraced["empty"], untraced["held"]) / n,
        "residentLeft": residentGrowth(untraced["empty"], untraced["closed"]) / n,
        "residentTraced": residentGrowth(traced["empty"], traced["held"]) / n,
        "traced": held["bytes"],
        "tracedBlocks": held["blocks"],
        "tracedLeft": left["bytes"],
        "sites": held["sites"],
        "types": typeGrowth(untraced["empty"], untraced["held"], n),
        "typesLeft": typeGrowth(untraced["empty"], untraced["closed"], n),
    }


def table(result: dict[str, Any], top: int = TOP) -> str:
    """
    @return: The figures of a run as text: totals, the allocation sites
        and the types that hold most per connection, and the relay's own
        classes.
    """
    f = result["figures"]
    leftObjects = sum(r["objects"] for r in f["typesLeft"])
    lines = [
        f"wsrelay, {result['connections']} connections held"
        f" ({result['mode']}, data_path = {result['dataPath']}),"
        f" after a warm-up of {result['warmup']}; per connection:",
        f"  resident memory (VmRSS)   {f['resident'] / KIB:8.2f} KiB"
        f"   (traced run: {f['residentTraced'] / KIB:.2f} KiB)",
        f"  traced (tracemalloc)      {f['traced'] / KIB:8.2f} KiB"
        f" in {f['tracedBlocks']:.1f} blocks",
        f"  left after closing        {f['residentLeft'] / KIB:8.2f} KiB resident,"
        f" {f['tracedLeft']:.0f} bytes traced, {leftObjects:.2f} objects",
        "",
        f"{f'allocation site (top {top})':<58} {'bytes':>9} {'blocks':>7}",
    ]
    for row in f["sites"][:top]:
        lines.append(f"  {row['site']:<56} {row['bytes']:9.1f} {row['blocks']:7.2f}")
    lines += [
        "",
        f"{f'type (top {top}, sys.getsizeof)':<58} {'bytes':>9} {'objects':>7}",
    ]
    for row in f["types"][:top]:
        lines.append(f"  {row['type']:<56} {row['bytes']:9.1f} {row['objects']:7.2f}")
    own = [r for r in f["types"] if r["type"].startswith("wsrelay.")]
    lines.append("")
    lines.append(
        "the relay's own objects: "
        + ", ".join(f"{r['type'][len('wsrelay.') :]} {r['objects']:g}" for r in own)
    )
    return "\n".join(lines)


def run(options: argparse.Namespace) -> dict[str, Any]:
    """
    Measure both runs in a temporary folder.

    @return: The options and the figures.
    """
    dataPath = "message" if options.data_path == "message" else "passthrough"
    if options.mode == "fanout":
        dataPath = "n/a"
    with tempfile.TemporaryDirectory(prefix="heldmemory-") as folder:
        work = Path(folder)
        runs = []
        for trace in (False, True):
            where = work / ("traced" if trace else "untraced")
            where.mkdir()
            runs.append(
                measure(
                    where,
                    options.mode,
                    dataPath,
                    options.connections,
                    options.warmup,
                    trace,
                )
            )
        result = {
            "connections": options.connections,
            "mode": options.mode,
            "dataPath": dataPath,
            "warmup": options.warmup,
            "figures": figures(runs[0], runs[1], options.connections),
        }
    return result


def parseArguments(argv: Sequence[str]) -> argparse.Namespace:
    """
    Parse the command line.
    """
    parser = argparse.ArgumentParser(
        prog="python -m bench.heldmemory", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--connections", type=int, default=1000, help="connections held (1000)"
    )
    parser.add_argument("--mode", choices=["proxy", "fanout"], default="proxy")
    parser.add_argument(
        "--data-path",
        choices=["passthrough", "message"],
        default="passthrough",
        help="the proxy route's data path (passthrough)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=20,
        help="connections opened and closed before the first report (20)",
    )
    parser.add_argument("--top", type=int, default=TOP, help="rows of each table")
    parser.add_argument("--json", help="write the figures to this file")
    options = parser.parse_args(argv)
    if options.connections < 1:
        parser.error("--connections must be at least 1")
    if options.mode == "fanout" and options.data_path == "message":
        parser.error("--data-path is for proxy mode")
    return options


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run from the command line.

    @return: The exit status: 1 if the measurement failed.
    """
    options = parseArguments(sys.argv[1:] if argv is None else argv)
    _raiseFileLimit()
    try:
        result = run(options)
    except (HeldMemoryFailed, PeerFailed, targets.TargetFailed) as e:
        print(f"heldmemory: {e}", file=sys.stderr)
        return 1
    if options.json:
        with open(options.json, "w") as f:
            json.dump(result, f, indent=1)
    print(table(result, options.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
