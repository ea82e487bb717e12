"""
Autobahn|Testsuite conformance through wsrelay, with kosoku: a fast
subset of what C{python -m bench.conformance --full} runs (results in
C{docs/conformance.md}).

Each test runs the same cases directly and through relays started with
C{twistd wsrelay}, one per proxy data path (C{data_path = message} and
C{passthrough}), and checks that every case that passes directly gets the
same verdict through the relay (NON-STRICT where it is OK directly fails),
the compression cases (12.x, 13.x) included: the message path negotiates
permessage-deflate on each leg, the passthrough path end to end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from fnmatch import fnmatchcase
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase, TestCase

from bench.conformance import FAST_CASES, FAST_EXCLUDE, Outcome, Run, regressions

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
#: so it is shorter than the client-mode one (C{bench.conformance}'s
#: C{FAST_CASES}).
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
    "13.5.1",
)

#: Seconds one run of C{bench.conformance} may take.
RUN_TIMEOUT = 240.0

#: The cases where a valid message comes just before a frame the receiver
#: must fail the connection for: OK directly, they were NON-STRICT through
#: the relay when it failed the connection before the echo of that message
#: came back (docs/conformance.md).
ORDER_CASES = (
    "3.2",
    "3.3",
    "3.4",
    "4.1.3",
    "4.1.4",
    "4.1.5",
    "4.2.3",
    "4.2.4",
    "4.2.5",
    "5.15",
)


def selected(case: str, include: tuple[str, ...], exclude: tuple[str, ...]) -> bool:
    """
    @return: Whether C{bench.conformance} runs C{case} with these C{-i} and
        C{-x} globs.
    """
    return any(fnmatchcase(case, g) for g in include) and not any(
        fnmatchcase(case, g) for g in exclude
    )


def outcome(caseId: str, verdict: str) -> Outcome:
    """
    @return: An L{Outcome} of C{caseId} with C{verdict}.
    """
    return Outcome(caseId, verdict, verdict, "OK", 1002, {}, [])


class StrictnessTests(SynchronousTestCase):
    """
    C{bench.conformance} fails a run when a case gets another verdict
    through the relay than directly, and the fast subset holds the cases
    where that used to happen.
    """

    def test_nonStrictIsRegression(self) -> None:
        """
        A case OK directly and NON-STRICT through a proxy data path is a
        regression; the same verdict, or a case that fails directly, is
        not; a compression case UNIMPLEMENTED on the fan-out path (which
        declines compression) is not either.
        """
        direct = Run(
            "client",
            "direct",
            [
                outcome("3.2", "OK"),
                outcome("3.3", "OK"),
                outcome("7.1.1", "FAILED"),
                outcome("12.1.1", "OK"),
            ],
            1.0,
        )
        proxy = Run(
            "client",
            "proxy",
            [
                outcome("3.2", "NON-STRICT"),
                outcome("3.3", "OK"),
                outcome("7.1.1", "OK"),
                outcome("12.1.1", "OK"),
            ],
            1.0,
        )
        self.assertEqual([d.caseId for d, _ in regressions(direct, proxy)], ["3.2"])
        fanout = Run("client", "fanout", [*proxy.outcomes[:3]], 1.0)
        fanout.outcomes.append(outcome("12.1.1", "UNIMPLEMENTED"))
        self.assertEqual([d.caseId for d, _ in regressions(direct, fanout)], ["3.2"])

    def test_orderCasesInSubsets(self) -> None:
        """
        Both modes of the fast subset run the ten cases.
        """
        for case in ORDER_CASES:
            self.assertTrue(selected(case, FAST_CASES, FAST_EXCLUDE), case)
            self.assertTrue(selected(case, SERVER_CASES, ()), case)


class ConformanceTests(TestCase):
    """
    What passes directly gets the same verdict through the relay, in both
    directions.
    """

    if SKIP is not None:
        skip = SKIP

    timeout = RUN_TIMEOUT + 60

    def runCLI(self, *args: str) -> str:
        """
        Run C{python -m bench.conformance} with C{args} in its own process:
        kosoku's Python-2-era case files import Autobahn's UTF-8 validator
        through a shim, which only works where Autobahn is not imported
        yet (this test process imports it).

        @return: What it printed; the test fails when it exits non-zero
            (a case that passes directly gets another verdict through the
            relay).
        """
        # A session of its own, so that a run that takes too long goes
        # with everything it started (echo backend, relays, testee client).
        process = subprocess.Popen(
            [sys.executable, "-m", "bench.conformance", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=str(Path(__file__).resolve().parent.parent),
            start_new_session=True,
        )
        try:
            output, _ = process.communicate(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
            self.fail(f"no result within {RUN_TIMEOUT:g}s:\n{output[-4000:]}")
        self.assertEqual(process.returncode, 0, output[-4000:])
        self.assertIn("| **all** | direct |", output, output[-4000:])
        return output

    def test_fuzzingClient(self) -> None:
        """
        kosoku, as the fuzzing client, drives the Autobahn echo backend
        directly and through the relay on both proxy data paths (message
        and passthrough): groups 1-7, 9 (less its costliest cases), 10 and
        the first case of seven compression subgroups (12.1, 12.2, 13.1,
        13.2, 13.3, 13.5, 13.7);
        every case that passes directly gets the same verdict through the
        relay, the ten of L{ORDER_CASES} included.  (The
        fan-out path is in the full run only: its shared channel hands a
        late echo to the next case's client.)
        """
        # One data path at a time, two cases at once: more at once on a
        # busy 2-core machine made kosoku's timing-sensitive verdicts flaky.
        self.runCLI(
            "--mode",
            "client",
            "--path",
            ",".join(("direct", *PATHS)),
            "-p",
            "2",
        )

    def test_fuzzingServer(self) -> None:
        """
        kosoku, as the fuzzing server, is the backend of the relay's route,
        and the Autobahn echo client testee runs its cases through the
        relay (and directly): wsrelay's backend-facing leg is the client
        under test.  Every case that passes directly gets the same verdict
        through the relay, the ten of L{ORDER_CASES} included.
        """
        self.runCLI(
            "--mode",
            "server",
            "--path",
            ",".join(("direct", *PATHS)),
            "--together",
            *(arg for case in SERVER_CASES for arg in ("-i", case)),
        )
