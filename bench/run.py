"""
The benchmark suite's command line: runs the chosen scenarios against the
chosen targets and prints one table.

    python -m bench                  # everything, under 10 minutes
    python -m bench --quick          # short rounds, fewer clients: 1-2 minutes
    python -m bench --target wsrelay,nginx --scenario echo-small
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

from bench import targets
from bench.control import ROOT
from bench.report import repeatLines, table
from bench.scenarios import PRESETS, SCENARIOS, Bench, Cell, Preset

PROXY_CPU = 1
LOAD_CPU = 0


def _choices(
    values: Sequence[str] | None, known: Sequence[str], what: str
) -> list[str]:
    """
    Expand repeated or comma-separated choices, in the table's order.

    @raise SystemExit: On an unknown name.
    """
    if not values:
        return list(known)
    chosen = {v.strip() for value in values for v in value.split(",") if v.strip()}
    unknown = chosen - set(known)
    if unknown:
        sys.exit(
            f"unknown {what}: {', '.join(sorted(unknown))}; known: {', '.join(known)}"
        )
    return [k for k in known if k in chosen]


def parseArguments(argv: Sequence[str]) -> argparse.Namespace:
    """
    Parse the command line.
    """
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="WebSocket proxy benchmark: direct, nginx, HAProxy, wsrelay.",
    )
    parser.add_argument(
        "--target",
        action="append",
        metavar="NAME[,NAME]",
        help=f"targets to run (default all: {', '.join(targets.TARGETS)})",
    )
    parser.add_argument(
        "--scenario",
        action="append",
        metavar="NAME[,NAME]",
        help=f"scenarios to run (default all: {', '.join(SCENARIOS)})",
    )
    parser.add_argument(
        "--quick",
        action="store_const",
        const="quick",
        dest="preset",
        help="short rounds and fewer clients (about 1-2 minutes)",
    )
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="sizes and durations (default full; smoke is for the tests)",
    )
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="do not pin the proxy and the load side to separate CPUs",
    )
    parser.add_argument("--json", metavar="FILE", help="also write every figure here")
    parser.add_argument(
        "--max-message-size",
        type=int,
        default=16777216,
        metavar="BYTES",
        help="the wsrelay targets' max_message_size (default 16777216); "
        "compressed messages in one frame of more than a 1032nd of it are "
        "inflated to be counted",
    )
    parser.add_argument(
        "--storm-concurrency",
        type=int,
        metavar="N",
        help="handshakes the storm keeps in flight (default the preset's: 50)",
    )
    parser.add_argument(
        "--fanout-tick",
        type=float,
        metavar="MS",
        help="fanout-heavy's source writes every MS milliseconds each tick's "
        "messages at once; 0: each message on its own (default the preset's: 1)",
    )
    parser.add_argument(
        "--reactor",
        metavar="NAME",
        help="run the wsrelay targets on this reactor (twistd -r NAME; "
        "default twistd wsrelay's own, wsrelay)",
    )
    parser.add_argument(
        "--write-delay",
        type=float,
        metavar="MS",
        help="the wsrelay targets' fan-out write_delay (default the route "
        "key's default: 0, once per reactor turn)",
    )
    parser.set_defaults(preset="full")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="run the chosen scenarios and targets N times over, each pass "
        "its own table, then each target's ratios to nginx over the passes",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the folder of configs and logs"
    )
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="record py-spy flame graphs of the wsrelay, twisted and ownsockets "
        "targets into DIR (py-spy slows the relay a little; pip install py-spy)",
    )
    options = parser.parse_args(argv)
    if options.repeat < 1:
        parser.error("--repeat: N must be 1 or more")
    return options


def _cpuModel() -> str:
    """
    The CPU model from /proc/cpuinfo.
    """
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def interpreter(maps: str = "/proc/self/maps") -> str:
    """
    The Python that runs the relay (the suite's own, whose virtualenv the
    targets run from): its version, its real path, and whether it runs on
    a shared C{libpython}.  Builds of one version differ in speed: Debian's
    C{/usr/bin/python3.11} is linked statically and built with profile
    guided optimization, a pyenv build by default neither, and the relay's
    Python runs slower on the latter (BENCHMARKS.md, the eleventh
    session).

    @param maps: The process's memory map, where a shared C{libpython}
        shows.
    """
    try:
        with open(maps) as f:
            shared = "libpython" in f.read()
    except OSError:
        linking = "libpython unknown"
    else:
        linking = "libpython shared" if shared else "libpython static"
    path = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    return f"Python {platform.python_version()} ({path}, {linking})"


def _revision() -> str:
    """
    The checkout's commit, marked when the work tree has changes.
    """
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "wsrelay"],
            capture_output=True,
            text=True,
            cwd=ROOT,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" with uncommitted changes to wsrelay/" if dirty else "")


def chosenPreset(options: argparse.Namespace) -> Preset:
    """
    The preset named on the command line, with the storm's concurrency and
    fanout-heavy's tick replaced where the options give them.
    """
    p = PRESETS[options.preset]
    if options.storm_concurrency is not None:
        p = replace(p, stormConcurrency=options.storm_concurrency)
    if options.fanout_tick is not None:
        p = replace(p, heavyTick=options.fanout_tick / 1000)
    return p


def header(p: Preset, pinned: bool, stormConnections: int) -> list[str]:
    """
    What the run measured and on what: machine, versions, method.
    """
    preset = p.name
    v = targets.versions()
    pinning = (
        f"proxy pinned to CPU {PROXY_CPU}; backend, source and load generators "
        f"to CPU {LOAD_CPU} (taskset)"
        if pinned
        else "no CPU pinning"
    )
    return [
        f"wsrelay benchmark, preset {preset}, {time.strftime('%Y-%m-%d %H:%M %Z')}",
        f"machine: {os.cpu_count()} CPUs ({_cpuModel()}), Linux {platform.release()}, "
        f"{interpreter()}",
        f"versions: nginx {v['nginx']}, HAProxy {v['haproxy']}, "
        f"Twisted {v['twisted']}, Autobahn {v['autobahn']} (NVX {v['NVX']}), "
        f"picows {v['picows']}, uvloop {v['uvloop']}; wsrelay at {_revision()}",
        pinning,
        f"echo: {p.echoConnections} connections x {p.smallSize} B text / "
        f"{p.largeConnections} x {p.largeSize // 1024} KiB binary / "
        f"{p.echoConnections} x {p.deflateSize // 1024} KiB text deflated "
        "(permessage-deflate both ends), closed loop, "
        f"{p.rounds} rounds of {p.duration:g} s after {p.warmup:g} s warm-up",
        f"fan-out: {p.fanoutSize} B text, light {p.lightClients} clients x "
        f"{p.lightRate:g}/s, heavy {p.heavyClients} x {p.heavyRate:g}/s "
        + (
            f"(the source writing each {p.heavyTick * 1000:g} ms tick's "
            "messages at once)"
            if p.heavyTick
            else "(the source writing each message on its own)"
        )
        + f"; {p.fanoutRounds} rounds of {p.fanoutDuration:g} s, lost = not "
        f"arrived {p.drain:g} s after the source's last send",
        f"storm: {stormConnections} connections, {p.stormConcurrency} handshakes "
        f"in flight, {p.stormRuns} runs of each target, interleaved across them",
        "figures are medians over rounds or runs; "
        "(N×) = ratio to nginx; op = echoed message, delivery or handshake",
    ]


def _loadAverage() -> str:
    """
    The 1-minute load average, as C{uptime} shows it.
    """
    return f"{os.getloadavg()[0]:.2f}"


def _raiseFileLimit() -> int:
    """
    Raise this process's open-file limit to its hard limit (children
    inherit it).

    @return: The limit now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def _progress(scenario: str, target: str, seconds: float, note: str | None) -> None:
    """
    Say on standard error that a scenario has run against a target.
    """
    print(
        f"  {scenario:<13} {target:<8} {seconds:5.1f} s  " + (note or ""),
        file=sys.stderr,
        flush=True,
    )


def _stormRan(target: str, run: int, seconds: float, note: str | None) -> None:
    """
    Say on standard error that one of the storm's runs is done.
    """
    _progress("storm", target, seconds, f"run {run}" + (f"  {note}" if note else ""))


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run the suite and print the table.

    @return: The exit status: 1 if a target failed in a scenario.
    """
    options = parseArguments(sys.argv[1:] if argv is None else argv)
    chosenTargets = _choices(options.target, targets.TARGETS, "target")
    chosenScenarios = _choices(options.scenario, SCENARIOS, "scenario")
    preset = chosenPreset(options)
    notes = []

    limit = _raiseFileLimit()
    # The proxy holds two sockets per connection; keep some for the rest.
    stormConnections = min(preset.stormConnections, (limit - 256) // 2)
    if stormConnections < preset.stormConnections:
        notes.append(
            f"storm: {stormConnections} connections instead of "
            f"{preset.stormConnections}: the open-file limit is {limit}"
        )

    pinned = (
        not options.no_pin
        and (os.cpu_count() or 1) >= 2
        and shutil.which("taskset") is not None
    )
    if not options.no_pin and not pinned:
        notes.append("no CPU pinning: needs 2 CPUs and taskset")
    if pinned:
        os.sched_setaffinity(0, {LOAD_CPU})

    pySpy = "py-spy"
    if options.profile:
        found = shutil.which("py-spy") or shutil.which(
            "py-spy", path=str(Path(sys.executable).parent)
        )
        if found is None:
            sys.exit("--profile needs py-spy: .venv/bin/pip install py-spy")
        pySpy = found
        notes.append(f"wsrelay profiled with py-spy into {options.profile}")

    work = Path(tempfile.mkdtemp(prefix="wsrelay-bench-"))
    bench = Bench(
        preset,
        work,
        ["taskset", "-c", str(PROXY_CPU)] if pinned else [],
        ["taskset", "-c", str(LOAD_CPU)] if pinned else [],
        stormConnections,
        Path(options.profile).resolve() if options.profile else None,
        pySpy,
        options.max_message_size,
        options.reactor,
        options.write_delay,
    )
    lines = header(preset, pinned, stormConnections)
    if options.max_message_size != 16777216:
        lines.append(f"wsrelay: max_message_size = {options.max_message_size}")
    if options.reactor is not None:
        lines.append(f"wsrelay: twistd -r {options.reactor}")
    if options.write_delay is not None:
        lines.append(f"wsrelay: write_delay = {options.write_delay:g}")
    for line in lines:
        print(line, flush=True)
    print(flush=True)

    passes: list[list[Cell]] = []
    started = time.monotonic()
    startLoad = _loadAverage()
    try:
        for _ in range(options.repeat):
            cells: list[Cell] = []
            passes.append(cells)
            for scenario in chosenScenarios:
                if scenario == "storm":
                    cells.extend(bench.storms(chosenTargets, _stormRan))
                    continue
                for target in chosenTargets:
                    t0 = time.monotonic()
                    cell = bench.run(scenario, target)
                    cells.append(cell)
                    _progress(scenario, target, time.monotonic() - t0, cell.note)
    finally:
        if options.keep:
            print(f"configs and logs kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)

    elapsed = time.monotonic() - started
    for number, cells in enumerate(passes, 1):
        if len(passes) > 1:
            print(f"\npass {number} of {len(passes)}:\n")
        print(table(cells))
    summary = repeatLines(passes)
    if summary:
        print("\n" + "\n".join(summary))
    for note in notes:
        print(f"\nnote: {note}")
    print(
        f"\nsuite time: {elapsed:.0f} s; load average {startLoad} at the start, "
        f"{_loadAverage()} at the end (other work on the machine shows here)"
    )
    if options.json:
        Path(options.json).write_text(
            json.dumps(
                {
                    "header": lines,
                    "notes": notes,
                    "cells": [
                        {**asdict(c), "pass": number}
                        for number, cells in enumerate(passes, 1)
                        for c in cells
                    ],
                },
                indent=1,
            )
        )
    return 1 if any(c.failed for cells in passes for c in cells) else 0


if __name__ == "__main__":
    sys.exit(main())
