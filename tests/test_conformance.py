"""
Autobahn|Testsuite conformance through wsrelay, with kosoku: a fast
subset of what C{python -m bench.conformance --full} runs (results in
C{docs/conformance.md}).

Each test runs the same cases directly and through relays started with
C{twistd wsrelay}, one per proxy data path (C{data_path = message} and
C{passthrough}), and checks that every case that passes directly passes
through the relay too.  The compression cases (12.x, 13.x) pass directly
and are UNIMPLEMENTED through the relay, which declines permessage-deflate
on both legs, as documented.
"""

from __future__ import annotations

import fnmatch
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from twisted.trial.unittest import TestCase

from bench import conformance

try:
    import kosoku  # noqa: F401
except ImportError:  # the test extra installs it
    SKIP: str | None = (
        "kosoku is not installed (pip install kosoku; it is in the test extra)"
    )
else:
    SKIP = None

#: The proxy data paths checked, beside C{direct}.
PATHS = ("proxy", "passthrough")

#: The server-mode subset: the echo client testee runs one case at a time,
#: so it is shorter than the client-mode one (L{conformance.FAST_CASES}).
SERVER_CASES = (
    "1.*",
    "2.*",
    "3.*",
    "4.*",
    "5.*",
    "6.*",
    "7.*",
    "9.1.1",
    "9.2.1",
    "10.*",
    "12.1.1",
    "13.1.1",
)

#: Cases known not to pass through a data path although they pass
#: directly, with the reason.  Remove an entry when it is fixed.
KNOWN_FAILURES: dict[str, tuple[tuple[str, ...], str]] = {}

#: Seconds one run may take; a run that takes longer fails the test.
RUN_TIMEOUT = 240.0


def known(path: str, caseId: str) -> bool:
    """
    @return: Whether C{caseId} is a known failure over C{path}.
    """
    patterns, _ = KNOWN_FAILURES.get(path, ((), ""))
    return any(fnmatch.fnmatchcase(caseId, p) for p in patterns)


class ConformanceTests(TestCase):
    """
    What passes directly passes through the relay, in both directions.
    """

    if SKIP is not None:
        skip = SKIP

    timeout = RUN_TIMEOUT + 60

    def work(self) -> str:
        """
        @return: A new folder for this test's configs and logs.
        """
        path = str(self.mktemp())
        os.makedirs(path)
        return path

    def assertRelayed(self, runs: Sequence[conformance.Run]) -> None:
        """
        Every case that passes in the first (direct) run passes in each
        of the others, the compression cases and L{KNOWN_FAILURES} aside.
        """
        direct, *relayed = runs
        self.assertEqual(direct.path, "direct")
        self.assertGreater(len(direct.outcomes), 100)
        ids = [o.caseId for o in direct.outcomes]
        for run in relayed:
            self.assertEqual([o.caseId for o in run.outcomes], ids, run.path)
            lost = [
                (d, r)
                for d, r in conformance.regressions(direct, run)
                if not known(run.path, d.caseId)
            ]
            self.assertEqual(
                [],
                [
                    f"{d.caseId}: {d.verdict} directly, "
                    f"{r.verdict if r else 'missing'} through {run.path}"
                    + (
                        f" (close {r.behaviorClose} code {r.remoteCloseCode},"
                        f" expected {d.expected}, got {r.received})"
                        if r
                        else ""
                    )
                    for d, r in lost
                ],
                f"{run.mode} mode, {run.path}: passes directly, not relayed",
            )

    def runCLI(self, *args: str) -> str:
        """
        Run C{python -m bench.conformance} with C{args} in its own process:
        kosoku's Python-2-era case files import Autobahn's UTF-8 validator
        through a shim, which only works where Autobahn is not imported
        yet (this test process imports it).

        @return: What it printed; the test fails when it exits non-zero
            (a case that passes directly does not pass through the relay).
        """
        done = subprocess.run(
            [sys.executable, "-m", "bench.conformance", *args],
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT + 60,
            cwd=str(Path(__file__).resolve().parent.parent),
        )
        output = done.stdout + done.stderr
        self.assertEqual(done.returncode, 0, output[-4000:])
        self.assertIn("| **all** | direct |", output, output[-4000:])
        return output

    def test_fuzzingClient(self) -> None:
        """
        kosoku, as the fuzzing client, drives the Autobahn echo backend
        directly and through the relay on every data path: groups 1-7, 9
        (less its costliest cases), 10 and four compression cases; every
        case that passes directly passes through the relay.
        """
        self.runCLI(
            "--mode",
            "client",
            "--path",
            ",".join(("direct", *PATHS)),
            "--together",
            "-p",
            "4",
        )

    def test_fuzzingServer(self) -> None:
        """
        kosoku, as the fuzzing server, is the backend of the relay's route,
        and the Autobahn echo client testee runs its cases through the
        relay (and directly): wsrelay's backend-facing leg is the client
        under test.
        """
        self.runCLI(
            "--mode", "server", "--path", ",".join(("direct", *PATHS)), "--together"
        )
