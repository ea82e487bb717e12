"""
Packaging check: the wheel carries the twistd dropin the right way, and a
fresh virtualenv that installs it gets a working C{twistd wsrelay}.

This is the one test that installs into a new environment; it lets pip fetch
wsrelay's dependencies from the configured index (pip's cache keeps it fast)
and is skipped, saying why, only when no index can be reached.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

ROOT = Path(__file__).resolve().parent.parent
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
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".hypothesis",
    "_trial_temp*",
)
"""
What is not copied from the repository before building: the build then
writes nothing into the work tree.
"""

UNREACHABLE = (
    "Failed to establish a new connection",
    "NewConnectionError",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Network is unreachable",
    "ConnectTimeoutError",
    "ProxyError",
)
"""
Fragments of pip's output that mean no package index could be reached.
"""


def _run(
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


def _describe(result: subprocess.CompletedProcess[str]) -> str:
    """
    @param result: a finished process.
    @return: its command, exit status and output, for a failure message.
    """
    return (
        f"{' '.join(result.args)} exited {result.returncode}\n"
        f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )


class WheelTests(SynchronousTestCase):
    """
    The built wheel and a fresh install of it.
    """

    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="wsrelay-packaging-"))
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def _buildWheel(self) -> Path:
        """
        Build the wheel from a copy of the repository, without build
        isolation (the test environment has the build requirements).

        @return: the wheel's path.
        """
        source = self.tmp / "src"
        shutil.copytree(ROOT, source, ignore=COPY_IGNORE)
        dist = self.tmp / "dist"
        result = _run(
            [
                sys.executable,
                "-m",
                "build",
                "--wheel",
                "--no-isolation",
                "--outdir",
                dist,
                source,
            ],
            cwd=self.tmp,
            timeout=300,
        )
        self.assertEqual(result.returncode, 0, _describe(result))
        wheels = sorted(dist.glob("wsrelay-*.whl"))
        self.assertEqual(len(wheels), 1, [w.name for w in wheels])
        return wheels[0]

    def test_wheelAndFreshInstall(self) -> None:
        """
        The wheel holds the dropin C{twisted/plugins/wsrelay_plugin.py} but
        no C{twisted/__init__.py} or C{twisted/plugins/__init__.py} (which
        would overwrite Twisted's own and hide its plugins), and ships
        C{wsrelay/py.typed}. Installed into a fresh virtualenv, it makes
        C{twistd --help} list C{wsrelay}, and C{twistd wsrelay --help}
        succeed and document C{--config}.
        """
        wheel = self._buildWheel()
        with zipfile.ZipFile(wheel) as archive:
            names = set(archive.namelist())
        self.assertIn("twisted/plugins/wsrelay_plugin.py", names)
        self.assertNotIn("twisted/plugins/__init__.py", names)
        self.assertNotIn("twisted/__init__.py", names)
        self.assertIn("wsrelay/py.typed", names)
        # Only dropin modules under twisted/: no package files, no cache.
        for name in names:
            if name.startswith("twisted/"):
                self.assertTrue(name.startswith("twisted/plugins/"), name)
                self.assertTrue(name.endswith(".py"), name)
                self.assertNotIn("/", name[len("twisted/plugins/") :], name)

        venv = self.tmp / "venv"
        result = _run([sys.executable, "-m", "venv", venv], cwd=self.tmp, timeout=120)
        self.assertEqual(result.returncode, 0, _describe(result))
        scripts = venv / "bin"

        result = _run(
            [scripts / "python", "-m", "pip", "install", "--retries", "2", wheel],
            cwd=self.tmp,
            timeout=600,
        )
        if result.returncode != 0:
            output = result.stdout + result.stderr
            if any(fragment in output for fragment in UNREACHABLE):
                raise SkipTest(
                    "pip could not reach a package index to install wsrelay's "
                    "dependencies into a fresh virtualenv"
                )
            self.fail(_describe(result))

        result = _run([scripts / "twistd", "--help"], cwd=self.tmp, timeout=120)
        self.assertEqual(result.returncode, 0, _describe(result))
        commands = [line.split() for line in result.stdout.splitlines()]
        self.assertIn(
            "wsrelay",
            [words[0] for words in commands if words],
            _describe(result),
        )

        result = _run(
            [scripts / "twistd", "wsrelay", "--help"], cwd=self.tmp, timeout=120
        )
        self.assertEqual(result.returncode, 0, _describe(result))
        self.assertIn("--config", result.stdout, _describe(result))
