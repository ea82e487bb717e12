"""
wsrelay's wheel, built from a copy of the repository.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
"""
The repository's root.
"""

COPY_IGNORE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    "*.pyc",
    "dropin.cache",
    ".*_cache",
    ".hypothesis",
    "_trial_temp*",
)
"""
What is not copied from the repository before building: the build then
writes nothing into the work tree.
"""


def run(
    args: list[str | os.PathLike[str]], cwd: Path, timeout: float
) -> subprocess.CompletedProcess[str]:
    """
    Run a command, capturing its output, with no C{PYTHONPATH} leaking in.

    @param args: the command.
    @param cwd: the working directory.
    @param timeout: seconds before giving up.
    @return: the finished process.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return subprocess.run(
        [os.fspath(a) for a in args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def describe(result: subprocess.CompletedProcess[str]) -> str:
    """
    @param result: a finished process.
    @return: its command, exit status and output, for a failure message.
    """
    return (
        f"{' '.join(result.args)} exited {result.returncode}\n"
        f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )


def buildWheel(tmp: Path) -> tuple[subprocess.CompletedProcess[str], list[Path]]:
    """
    Build the wheel from a copy of the repository in C{tmp/src}, without
    build isolation (the test environment has the build requirements),
    into C{tmp/dist}.

    @return: The build's process and the wheels it left.
    """
    source = tmp / "src"
    shutil.copytree(ROOT, source, ignore=COPY_IGNORE)
    dist = tmp / "dist"
    command: list[str | os.PathLike[str]] = [sys.executable, "-m", "build"]
    command += ["--wheel", "--no-isolation", "--outdir", dist, source]
    result = run(command, cwd=tmp, timeout=300)
    return result, sorted(dist.glob("wsrelay-*.whl"))
