"""
Autobahn|Testsuite conformance, directly and through wsrelay, with
kosoku (a Python 3 runner of the testsuite's own case files).

    python -m bench.conformance                 # the fast subset, both modes
    python -m bench.conformance --full          # all 517 cases
    python -m bench.conformance -i '7.*' --mode client --reports /tmp/r

Two modes, each run directly and through wsrelay (started as users run
it: C{twistd -n --pidfile= wsrelay --config FILE}, on a loopback port the
OS chooses), one relay per data path:

  - C{client}: kosoku is the fuzzing client and drives
    L{bench.conformance_echo}, the testsuite's echo testee: C{direct};
    through a proxy route in front of it, with C{data_path = message}
    (C{proxy}) and C{data_path = passthrough} (C{passthrough}); and
    through a C{fanout} route with C{client_messages = forward}, one case
    at a time (every member of a fan-out channel gets every echo, so an
    echo still on its way when a case ends reaches the next case).
  - C{server}: kosoku is the fuzzing server and
    L{bench.conformance_client}, the testsuite's echo client testee,
    drives it: C{direct}, and through a proxy route whose backend is
    kosoku (C{proxy}, C{passthrough}), which checks wsrelay's
    backend-facing (client) leg.  A fan-out route cannot front a fuzzing
    server: its upstream is one long-lived shared connection to a fixed
    URL, and a source that closes is reconnected, which would run a case
    again.

It prints one Markdown table per mode (verdict counts per case group and
data path) and the cases whose verdict differs from the direct run, and
exits with 1 when a case that passes directly gets another verdict
through the relay, NON-STRICT for OK included (on the fan-out path that
is only reported: see L{INFORMATIONAL_PATHS}).  The 12.x and 13.x
(permessage-deflate) cases count like the others on the proxy paths,
which negotiate compression (the message path on each leg, the
passthrough path end to end); on the fan-out path, which declines it,
they are expected UNIMPLEMENTED (L{DECLINES_COMPRESSION}).
C{docs/conformance.md} holds the results.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TWISTD = str(Path(sys.executable).parent / "twistd")

#: How long a helper process has to start listening.
START_TIMEOUT = 30.0

#: How long one run may take.
RUN_TIMEOUT = 3600.0

#: The relay's size limits: the 9.x cases send messages of up to 16 MiB.
MAX_SIZE = 64 * 1024 * 1024

#: Case groups and their names in the testsuite's reports (there is no
#: group 8 or 11).
GROUPS = {
    "1": "Framing",
    "2": "Pings/Pongs",
    "3": "Reserved Bits",
    "4": "Opcodes",
    "5": "Fragmentation",
    "6": "UTF-8 Handling",
    "7": "Close Handling",
    "9": "Limits/Performance",
    "10": "Misc",
    "12": "Compression (payloads)",
    "13": "Compression (parameters)",
}

#: Verdicts, in the tables' order.  A case is FAILED when its message
#: exchange failed or could not be run (kosoku's ERROR), or when its
#: exchange passed but its closing handshake did not.
VERDICTS = ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED")

#: Verdicts that pass.
PASSING = frozenset(["OK", "NON-STRICT", "INFORMATIONAL"])

#: The fast subset: groups 1-7, 9 and 10, and the first (smallest)
#: payload of a few compression subgroups: 12.1 and 12.2 (text and binary),
#: 13.1, 13.2, 13.3, 13.5 and 13.7 (the default offer, no context
#: takeover, a 9-bit window, both, several offers).
FAST_CASES = (
    "1.*",
    "2.*",
    "3.*",
    "4.*",
    "5.*",
    "6.*",
    "7.*",
    "9.*",
    "10.*",
    "12.1.1",
    "12.2.1",
    "13.1.1",
    "13.2.1",
    "13.3.1",
    "13.5.1",
    "13.7.1",
)

#: Left out of the fast subset, which keeps every 9.x subgroup: the
#: costliest 9.x cases (16 MiB messages; 4 MiB in pieces of 64 or 128
#: bytes, which the message data path forwards frame by frame), and half
#: of the 1000-round-trip cases of 9.7 and 9.8.
FAST_EXCLUDE = (
    "9.1.6",
    "9.2.6",
    "9.3.1",
    "9.3.2",
    "9.4.1",
    "9.4.2",
    "9.7.2",
    "9.7.4",
    "9.7.6",
    "9.8.2",
    "9.8.4",
    "9.8.6",
)

#: Data paths of each mode.
PATHS = {
    "client": ("direct", "proxy", "passthrough", "fanout"),
    "server": ("direct", "proxy", "passthrough"),
}

#: Data paths whose regressions are reported but do not fail the run: a
#: fan-out channel hands an echo that comes back after its case ended to
#: the next case's client (docs/conformance.md), so which cases fail there
#: depends on timing.
INFORMATIONAL_PATHS = frozenset(["fanout"])

#: The permessage-deflate groups.
COMPRESSION_GROUPS = frozenset(["12", "13"])

#: Data paths that decline permessage-deflate, where the compression cases
#: are expected UNIMPLEMENTED: a fan-out channel frames each message once
#: for all its clients.
DECLINES_COMPRESSION = frozenset(["fanout"])


def declined(direct: Outcome, relayed: Outcome | None, path: str) -> bool:
    """
    @return: Whether C{relayed} is a compression case answered
        UNIMPLEMENTED on a data path that declines compression.
    """
    return (
        path in DECLINES_COMPRESSION
        and relayed is not None
        and relayed.verdict == "UNIMPLEMENTED"
        and direct.group in COMPRESSION_GROUPS
    )


@dataclass(frozen=True)
class Outcome:
    """
    One case's result, as plain values.

    @ivar caseId: The case, as C{"7.1.3"}.
    @ivar verdict: One of L{VERDICTS}.
    @ivar behavior: kosoku's verdict on the message exchange.
    @ivar behaviorClose: kosoku's verdict on the closing handshake.
    @ivar remoteCloseCode: The close code the peer under test sent.
    @ivar expected: The event sequences that would pass, by verdict.
    @ivar received: The events seen.
    """

    caseId: str
    verdict: str
    behavior: str
    behaviorClose: str
    remoteCloseCode: int | None
    expected: Any
    received: Any

    @property
    def group(self) -> str:
        """
        The case group: C{"7"} for C{"7.1.3"}.
        """
        return self.caseId.split(".", 1)[0]

    @property
    def passed(self) -> bool:
        """
        Whether the case passed.
        """
        return self.verdict in PASSING


def outcome(result: Any) -> Outcome:
    """
    @param result: A kosoku C{CaseResult}.
    @return: Its L{Outcome}.
    """
    behavior = result.behavior.value
    if behavior == "UNIMPLEMENTED" or (behavior in PASSING and result.passed):
        verdict = behavior
    else:
        verdict = "FAILED"
    return Outcome(
        result.case_id,
        verdict,
        behavior,
        result.behavior_close.value,
        result.remote_close_code,
        result.expected,
        result.received,
    )


@dataclass(frozen=True)
class Run:
    """
    The outcomes of one mode over one data path.
    """

    mode: str
    path: str
    outcomes: list[Outcome]
    seconds: float


def caseKey(caseId: str) -> tuple[int, ...]:
    """
    @return: A key that sorts case ids numerically (1.2.10 after 1.2.9).
    """
    return tuple(int(p) for p in caseId.split("."))


def relayConfig(backend: str, path: str) -> str:
    """
    @param backend: The backend's URL.
    @param path: C{"proxy"} (proxy mode, message data path),
        C{"passthrough"} (proxy mode, passthrough data path) or
        C{"fanout"}.
    @return: The text of a relay config with one route, C{/}, to
        C{backend}.
    """
    lines = [
        "[relay]",
        "listen = tcp:0:interface=127.0.0.1",
        f"max_message_size = {MAX_SIZE}",
        f"max_frame_size = {MAX_SIZE}",
        "ping_interval = 0",
        "",
        "[route:conformance]",
        "path = /",
        f"backends = {backend}",
    ]
    if path in ("proxy", "passthrough"):
        lines.append("data_path = " + ("message" if path == "proxy" else path))
    elif path == "fanout":
        # One shared channel, eager (a lazy one drops what its first
        # client sends before the upstream is open).  Cases run one at a
        # time, but an echo still on its way when a case ends goes to
        # the next case's client: fan-out semantics, not a relay fault.
        lines += ["mode = fanout", "client_messages = forward"]
    return "\n".join(lines) + "\n"


class HelperFailed(Exception):
    """
    A helper process (echo backend, relay, testee client) did not start
    or did not finish its work.
    """


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _stop(process: subprocess.Popen[Any]) -> None:
    """
    SIGTERM, then SIGKILL after a while.
    """
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def echoBackend(work: Path, deflate: bool = True) -> Iterator[str]:
    """
    Run L{bench.conformance_echo} on a loopback port.

    @param deflate: Whether it accepts permessage-deflate.
    @return: A context manager giving its URL.
    """
    args = [sys.executable, "-m", "bench.conformance_echo"]
    if not deflate:
        args.append("--no-deflate")
    errors = work / "echo.log"
    with open(errors, "w") as log:
        process = subprocess.Popen(
            args, cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True
        )
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], START_TIMEOUT)
        line = process.stdout.readline() if ready else ""
        found = re.match(r"listening on (\d+)", line)
        if found is None:
            raise HelperFailed(f"echo backend did not start:\n{_tail(errors)}")
        yield f"ws://127.0.0.1:{found.group(1)}/"
    finally:
        _stop(process)


@contextlib.contextmanager
def relay(work: Path, backend: str, path: str = "proxy") -> Iterator[str]:
    """
    Run C{twistd -n --pidfile= wsrelay --config FILE} with one route to
    C{backend}.

    @param path: C{"proxy"}, C{"passthrough"} or C{"fanout"}.
    @return: A context manager giving the relay's URL.
    """
    directory = Path(tempfile.mkdtemp(prefix=f"relay-{path}-", dir=work)).resolve()
    config = directory / "relay.ini"
    config.write_text(relayConfig(backend, path))
    logPath = directory / "twistd.log"
    with open(logPath, "w") as log:
        process = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "wsrelay", "--config", str(config)],
            cwd=directory,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            # Twisted's port logs "<factory> starting on <port>".
            found = re.search(r"FrontendFactory starting on (\d+)", logPath.read_text())
            if found is not None:
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise HelperFailed(f"relay did not start:\n{_tail(logPath)}")
            time.sleep(0.05)
        yield f"ws://127.0.0.1:{found.group(1)}/"
    finally:
        _stop(process)


async def fuzzServer(
    url: str,
    include: Sequence[str] | None,
    exclude: Sequence[str] | None,
    concurrency: int,
    reports: Path | None = None,
) -> list[Outcome]:
    """
    Drive the server at C{url} through the selected cases, as the fuzzing
    client.

    @return: The outcome of each case.
    """
    from kosoku import FailureError, run_fuzzingclient

    try:
        results = await run_fuzzingclient(
            url, include, exclude, concurrency=concurrency
        )
    except FailureError as failure:
        results = failure.results
    _writeReports(results, reports)
    return [outcome(r) for r in results]


async def fuzzClient(
    work: Path,
    path: str,
    include: Sequence[str] | None,
    exclude: Sequence[str] | None,
    reports: Path | None = None,
) -> list[Outcome]:
    """
    Serve the selected cases as the fuzzing server, and let
    L{bench.conformance_client} run them, directly (C{path} C{"direct"})
    or through a relay whose backend is the fuzzing server (C{"proxy"}).

    @return: The outcome of each case.
    """
    from kosoku import FailureError, run_fuzzingserver

    async with run_fuzzingserver(include, exclude, host="127.0.0.1", port=0) as server:
        backend = f"ws://127.0.0.1:{server.port}/"
        with contextlib.ExitStack() as stack:
            url = backend
            if path != "direct":
                # In a thread: another run may be going on in this loop.
                url = await asyncio.to_thread(
                    stack.enter_context, relay(work, backend, path)
                )
            logPath = work / f"client-{path}.log"
            with open(logPath, "w") as log:
                process = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "bench.conformance_client",
                    url,
                    "--agent",
                    f"testee-client-{path}",
                    cwd=ROOT,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            try:
                status = await asyncio.wait_for(process.wait(), RUN_TIMEOUT)
            finally:
                if process.returncode is None:
                    process.kill()
                    await process.wait()
            if status != 0:
                raise HelperFailed(
                    f"testee client exited with {status}:\n{_tail(logPath)}"
                )
            try:
                results = await asyncio.wait_for(server.get_result(), START_TIMEOUT)
            except FailureError as failure:
                results = failure.results
    _writeReports(results, reports)
    return [outcome(r) for r in results]


def _writeReports(results: Sequence[Any], reports: Path | None) -> None:
    """
    Write kosoku's HTML and JSON reports (expected and received events,
    wire logs) into C{reports}, when given.
    """
    if reports is not None and results:
        from kosoku._report import write_reports

        write_reports(results, str(reports))


async def _timed(mode: str, path: str, work: Any, timeout: float) -> Run:
    """
    Await one run, within C{timeout} seconds.

    @raise TimeoutError: When it takes longer.
    """
    started = time.monotonic()
    outcomes = await asyncio.wait_for(work, timeout)
    return Run(mode, path, outcomes, time.monotonic() - started)


async def runClientMode(
    work: Path,
    paths: Sequence[str],
    include: Sequence[str] | None,
    exclude: Sequence[str] | None,
    parallelism: int = 1,
    together: bool = False,
    reports: Path | None = None,
    deflate: bool = True,
    timeout: float = RUN_TIMEOUT,
) -> list[Run]:
    """
    Run kosoku's fuzzing client against the echo backend over each of
    C{paths} (C{direct}, C{proxy}, C{fanout}).

    @param parallelism: Cases run at once in each run (a C{fanout} run
        always runs one at a time).
    @param together: Whether the runs over different paths run at the same
        time.
    @param deflate: Whether the echo backend accepts permessage-deflate.
    @param timeout: Seconds each run may take.
    """
    with contextlib.ExitStack() as stack:
        backend = stack.enter_context(echoBackend(work, deflate))
        jobs = []
        for path in paths:
            url = backend
            if path != "direct":
                url = stack.enter_context(relay(work, backend, path))
            concurrency = 1 if path == "fanout" else parallelism
            where = None if reports is None else reports / f"client-{path}"
            jobs.append(
                _timed(
                    "client",
                    path,
                    fuzzServer(url, include, exclude, concurrency, where),
                    timeout,
                )
            )
        if together:
            return list(await asyncio.gather(*jobs))
        return [await job for job in jobs]


async def runServerMode(
    work: Path,
    paths: Sequence[str],
    include: Sequence[str] | None,
    exclude: Sequence[str] | None,
    together: bool = False,
    reports: Path | None = None,
    timeout: float = RUN_TIMEOUT,
) -> list[Run]:
    """
    Run kosoku's fuzzing server for the echo client testee over each of
    C{paths} (C{direct}, C{proxy}).

    @param together: Whether the runs over different paths run at the same
        time.
    @param timeout: Seconds each run may take.
    """
    jobs = [
        _timed(
            "server",
            path,
            fuzzClient(
                work,
                path,
                include,
                exclude,
                None if reports is None else reports / f"server-{path}",
            ),
            timeout,
        )
        for path in paths
    ]
    if together:
        return list(await asyncio.gather(*jobs))
    return [await job for job in jobs]


def regressions(direct: Run, relayed: Run) -> list[tuple[Outcome, Outcome | None]]:
    """
    @return: The cases that pass in C{direct} and get another verdict in
        C{relayed} (with L{None} for a case missing from C{relayed}): a
        relay must be as strict as a direct connection, so OK directly and
        NON-STRICT through the relay is one.  Compression cases answered
        UNIMPLEMENTED on a path that declines compression
        (L{DECLINES_COMPRESSION}) are not.
    """
    byId = {o.caseId: o for o in relayed.outcomes}
    found: list[tuple[Outcome, Outcome | None]] = []
    for d in direct.outcomes:
        r = byId.get(d.caseId)
        if not d.passed or (r is not None and r.verdict == d.verdict):
            continue
        if declined(d, r, relayed.path):
            continue
        found.append((d, r))
    return found


def changes(direct: Run, relayed: Run) -> list[tuple[Outcome, Outcome]]:
    """
    @return: The cases whose verdict differs between the two runs.
    """
    byId = {o.caseId: o for o in relayed.outcomes}
    return [
        (d, byId[d.caseId])
        for d in direct.outcomes
        if d.caseId in byId and byId[d.caseId].verdict != d.verdict
    ]


def counts(run: Run) -> dict[str, Counter[str]]:
    """
    @return: Verdict counts by case group.
    """
    table: dict[str, Counter[str]] = {}
    for o in run.outcomes:
        table.setdefault(o.group, Counter())[o.verdict] += 1
    return table


def table(runs: Sequence[Run]) -> str:
    """
    @return: A Markdown table of verdict counts per group and data path,
        with a total per path.
    """
    header = "| group | path | cases | " + " | ".join(VERDICTS) + " |"
    lines = [header, "|---|---|--:|" + "--:|" * len(VERDICTS)]
    byRun = [(run, counts(run)) for run in runs]
    groups = sorted({g for _, c in byRun for g in c}, key=int)
    for group in [*groups, "all"]:
        for i, (run, c) in enumerate(byRun):
            if group == "all":
                row: Counter[str] = sum(c.values(), Counter())
                label = "**all**" if i == 0 else ""
            else:
                row = c.get(group, Counter())
                label = f"{group} {GROUPS.get(group, '')}".strip() if i == 0 else ""
            cells = [str(row[v]) if row[v] else "" for v in VERDICTS]
            lines.append(
                f"| {label} | {run.path} | {sum(row.values())} | "
                + " | ".join(cells)
                + " |"
            )
    return "\n".join(lines)


def report(runs: Sequence[Run]) -> tuple[str, bool]:
    """
    @return: The Markdown report of C{runs}, and whether every case that
        passes directly gets the same verdict over every other path
        (L{INFORMATIONAL_PATHS} aside).
    """
    out: list[str] = []
    ok = True
    titles = {
        "client": "Fuzzing client (kosoku) → server under test (echo testee)",
        "server": "Fuzzing server (kosoku) ← client under test (echo client testee)",
    }
    for mode in ("client", "server"):
        mine = [r for r in runs if r.mode == mode]
        if not mine:
            continue
        out += [f"### {titles[mode]}", "", table(mine), ""]
        out.append(
            "Time: " + ", ".join(f"{r.path} {r.seconds:.0f} s" for r in mine) + "."
        )
        out.append("")
        direct = next((r for r in mine if r.path == "direct"), None)
        if direct is None:
            continue
        for other in mine:
            if other is direct:
                continue
            differ = changes(direct, other)
            lost = regressions(direct, other)
            informational = other.path in INFORMATIONAL_PATHS
            ok = ok and (informational or not lost)
            lostIds = {d.caseId for d, _ in lost}
            if not differ and not lost:
                out += [f"{other.path}: every verdict as direct.", ""]
                continue
            out.append(
                f"{other.path}: {len(differ)} verdicts differ from direct,"
                f" {len(lost)} of cases passing directly"
                + (
                    " (informational: late echoes reach the next case's client)."
                    if informational
                    else "."
                )
            )
            out.append("")
            for d, r in sorted(differ, key=lambda p: caseKey(p[0].caseId)):
                if declined(d, r, other.path):
                    continue
                mark = " **REGRESSION**" if d.caseId in lostIds else ""
                out.append(
                    f"- {d.caseId}: {d.verdict} → {r.verdict}"
                    f" (close {d.remoteCloseCode} → {r.remoteCloseCode}){mark}"
                )
            compressed = [d.caseId for d, r in differ if declined(d, r, other.path)]
            if compressed:
                out.append(
                    f"- {len(compressed)} compression cases → UNIMPLEMENTED"
                    f" (the {other.path} path declines permessage-deflate)"
                )
            for d, missing in lost:
                if missing is None:
                    out.append(f"- {d.caseId}: missing **REGRESSION**")
            out.append("")
    return "\n".join(out), ok


def versions() -> str:
    """
    @return: The versions that matter, on one line.
    """
    names = ("kosoku", "autobahn", "twisted", "wsrelay")
    found = []
    for name in names:
        try:
            found.append(f"{name} {version(name)}")
        except Exception:
            found.append(f"{name} ?")
    return f"Python {sys.version.split()[0]}, " + ", ".join(found)


def parseArguments(argv: Sequence[str]) -> argparse.Namespace:
    """
    Parse the command line.
    """
    parser = argparse.ArgumentParser(
        prog="python -m bench.conformance",
        description=(
            "Autobahn|Testsuite cases with kosoku: directly and through"
            " wsrelay. Default: the fast subset (groups 1-7, 9 less its"
            " costliest cases, 10, the first case of seven 12/13 subgroups),"
            " both modes."
        ),
    )
    parser.add_argument("--full", action="store_true", help="all 517 cases")
    parser.add_argument(
        "-i",
        "--include",
        action="append",
        metavar="CASE",
        help="case id or glob to run instead (repeatable)",
    )
    parser.add_argument(
        "-x",
        "--exclude",
        action="append",
        metavar="CASE",
        help="case id or glob to leave out (repeatable)",
    )
    parser.add_argument(
        "--mode",
        default="client,server",
        help="client (kosoku drives the echo backend), server (kosoku"
        " serves the echo client), or both (default)",
    )
    parser.add_argument(
        "--path",
        default=None,
        help="data paths, comma-separated: direct, proxy, passthrough, fanout (client"
        " mode only); default: all that the mode has",
    )
    parser.add_argument(
        "-p",
        "--parallelism",
        type=int,
        default=1,
        help="cases at once in each run (fan-out runs one at a time)",
    )
    parser.add_argument(
        "--together",
        action="store_true",
        help="run the data paths of a mode at the same time",
    )
    parser.add_argument(
        "--no-deflate",
        action="store_true",
        help="the echo backend declines permessage-deflate too",
    )
    parser.add_argument(
        "--reports",
        type=Path,
        default=None,
        help="write kosoku's HTML/JSON reports under this folder",
    )
    return parser.parse_args(argv)


async def runSelected(args: argparse.Namespace, work: Path) -> list[Run]:
    """
    Run what the command line asked for.
    """
    if args.include:
        include: list[str] | None = list(args.include)
        exclude = list(args.exclude or [])
    elif args.full:
        include, exclude = None, list(args.exclude or [])
    else:
        include = list(FAST_CASES)
        exclude = [*FAST_EXCLUDE, *(args.exclude or [])]
    modes = [m.strip() for m in args.mode.split(",") if m.strip()]
    runs: list[Run] = []
    for mode in modes:
        if mode not in PATHS:
            raise SystemExit(f"unknown mode {mode!r}: client, server")
        paths = list(PATHS[mode])
        if args.path:
            wanted = [p.strip() for p in args.path.split(",") if p.strip()]
            paths = [p for p in paths if p in wanted]
        if "direct" in paths:
            paths.remove("direct")
            paths.insert(0, "direct")
        print(f"{mode} mode: {', '.join(paths)}", file=sys.stderr)
        if mode == "client":
            runs += await runClientMode(
                work,
                paths,
                include,
                exclude or None,
                args.parallelism,
                args.together,
                args.reports,
                not args.no_deflate,
            )
        else:
            runs += await runServerMode(
                work, paths, include, exclude or None, args.together, args.reports
            )
    return runs


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run, print the report.

    @return: 0 when every case that passes directly gets the same verdict
        through the relay, 1 otherwise.
    """
    args = parseArguments(sys.argv[1:] if argv is None else argv)
    try:
        import kosoku  # noqa: F401
    except ImportError:
        print("kosoku is not installed: .venv/bin/pip install kosoku", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="wsrelay-conformance-") as tmp:
        try:
            runs = asyncio.run(runSelected(args, Path(tmp)))
        except HelperFailed as e:
            print(f"conformance: {e}", file=sys.stderr)
            return 2
    text, ok = report(runs)
    print(f"_{versions()}; {os.cpu_count()} CPUs._\n")
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
