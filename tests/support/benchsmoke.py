"""
Running the benchmark suite from tests: with the C{smoke} preset's tiny
numbers (L{smoke}), and skipped without its load generators
(L{needPicows}).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase

#: The project's root, where C{python -m bench} runs.
ROOT = Path(__file__).resolve().parent.parent.parent


def needPicows() -> None:
    """
    Skip unless picows, which the suite's peers are written with, is
    installed.

    @raise SkipTest: If it is not.
    """
    if importlib.util.find_spec("picows") is None:
        raise SkipTest(
            "picows is not installed: the suite's load generators need it "
            "(make test installs it with the test extras)"
        )


def smoke(
    case: SynchronousTestCase, target: str, scenarios: str
) -> dict[str, dict[str, Any]]:
    """
    Run the suite with the C{smoke} preset, unpinned, on one target; fail
    C{case} unless it exits with 0.

    @param scenarios: Comma-separated scenarios.
    @return: The cells of its JSON output by scenario.
    """
    needPicows()
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "bench.json"
        process = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench",
                "--preset",
                "smoke",
                "--no-pin",
                "--target",
                target,
                "--scenario",
                scenarios,
                "--json",
                str(out),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=90,
        )
        case.assertEqual(process.returncode, 0, process.stdout + process.stderr)
        cells = json.loads(out.read_text())["cells"]
    case.assertEqual({c["target"] for c in cells}, {target})
    return {c["scenario"]: c for c in cells}
