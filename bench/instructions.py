"""
Instructions per proxied connection, counted by valgrind: the measure of
issue 16's storm work that a shared, noisy machine does not move (the
storm's own CPU figure moves by 10% between runs; these by well under 1%).
Two counts, each of user-space instructions only (the kernel's system
calls are in neither):

  - C{openchain}: the open chain in isolation (L{bench.openchain}), up to
    each of the steps named, run under C{cachegrind} at two sizes so that
    start-up cancels out;
  - C{relay}: the whole relay process (C{twistd wsrelay}, configured as
    the benchmark's wsrelay target) in front of the storm's backend, under
    C{callgrind}: its counters zeroed just before a storm of
    C{--connections} (50 handshakes in flight) and dumped once every one
    is open, so that the reactor, both transports and the open chain are
    counted, and the close is not.

    .venv/bin/python -m bench.instructions openchain [--stops head,open]
    .venv/bin/python -m bench.instructions relay [--connections 600] [--keep]

Each C{openchain} step takes about a minute, C{relay} about two (the
relay starts slowly under valgrind).  Needs valgrind (Debian's
C{valgrind}).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.control import ROOT, Peer
from bench.openchain import STEPS
from bench.targets import wsrelayConfig

_REFS = re.compile(rb"I\s+refs:\s+([\d,]+)")


def chainInstructions(stop: str, connections: int) -> int:
    """
    @return: The instructions of one run of L{bench.openchain} to C{stop}
        over C{connections}, in one round.
    """
    done = subprocess.run(
        [
            "valgrind",
            "--tool=cachegrind",
            "--cache-sim=no",
            "--cachegrind-out-file=/dev/null",
            sys.executable,
            "-m",
            "bench.openchain",
            "--stop",
            stop,
            "--connections",
            str(connections),
            "--rounds",
            "1",
        ],
        capture_output=True,
        env={**os.environ, "PYTHONHASHSEED": "0"},
        check=True,
    )
    match = _REFS.search(done.stderr)
    assert match is not None, done.stderr[-2000:]
    return int(match.group(1).replace(b",", b""))


def openchain(stops: Sequence[str]) -> dict[str, int]:
    """
    @return: Instructions per connection up to each of C{stops}: the
        difference of runs over 500 and 2,000 connections, over 1,500.
    """
    return {
        stop: (chainInstructions(stop, 2000) - chainInstructions(stop, 500)) // 1500
        for stop in stops
    }


def _freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _waitFor(check: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 1).close()
    except OSError:
        return False
    return True


def relay(connections: int, keep: bool = False) -> dict[str, int | str]:
    """
    @param keep: Keep the work folder, with callgrind's dump of the storm
        (for C{callgrind_annotate}), rather than remove it.

    @return: The whole relay's instructions over a storm of C{connections}
        (C{instructions}), the connections opened (C{opened}), and the
        instructions per handshake (C{perHandshake}); with C{keep}, the
        work folder too (C{folder}).
    """
    work = Path(tempfile.mkdtemp(prefix="wsrelay-instructions-"))
    backend = Peer("hold-server", [], work, ())
    process = None
    try:
        backendPort = backend.read(30)["port"]
        port = _freePort()
        config = work / "wsrelay.ini"
        config.write_text(wsrelayConfig(port, backendPort, False))
        twistd = str(Path(sys.executable).with_name("twistd"))
        process = subprocess.Popen(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={work}/callgrind.%p",
                sys.executable,
                twistd,
                "-n",
                "--pidfile=",
                "wsrelay",
                "--config",
                str(config),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # This tree's wsrelay, not the one the virtualenv installed
            # (an editable install of another checkout, when a worktree
            # borrows a virtualenv).
            env={**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": str(ROOT)},
        )
        _waitFor(lambda: _listening(port), "the relay to listen", 300)
        control = ["callgrind_control"]
        subprocess.run(
            [*control, "-z", str(process.pid)], check=True, capture_output=True
        )
        storm = Peer(
            "storm",
            [
                "--url",
                f"ws://127.0.0.1:{port}/",
                "--connections",
                str(connections),
                "--concurrency",
                "50",
            ],
            work,
            (),
        )
        try:
            opened = storm.read(600)["opened"]
            subprocess.run(
                [*control, "-d", str(process.pid)], check=True, capture_output=True
            )
        finally:
            storm.close(30)
        dumps = sorted(work.glob("callgrind.*.1"))
        assert dumps, "callgrind wrote no dump"
        summary = re.search(rb"^summary: (\d+)", dumps[0].read_bytes(), re.M)
        assert summary is not None
        total = int(summary.group(1))
    finally:
        if process is not None:
            process.send_signal(signal.SIGTERM)
            process.wait(120)
        backend.close(30)
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    counted: dict[str, int | str] = {
        "instructions": total,
        "opened": opened,
        "perHandshake": total // opened,
    }
    if keep:
        counted["folder"] = str(work)
    return counted


def parseArguments(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions")
    parser.add_argument("what", choices=("openchain", "relay"))
    parser.add_argument(
        "--stops",
        default=",".join(STEPS),
        help=f"openchain: the steps to count up to (of {', '.join(STEPS)})",
    )
    parser.add_argument("--connections", type=int, default=600, help="relay: the storm")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="relay: keep the work folder, with callgrind's dump",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    options = parseArguments(sys.argv[1:] if argv is None else argv)
    if options.what == "openchain":
        for stop, count in openchain(options.stops.split(",")).items():
            print(f"{stop}: {count:,} instructions per connection")
    else:
        result = relay(options.connections, options.keep)
        print(json.dumps(result))


if __name__ == "__main__":
    main()
