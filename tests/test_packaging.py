"""
Packaging check: the wheel carries the twistd dropin the right way, and a
fresh virtualenv that installs it gets a working C{twistd wsrelay}.

This is the one test that installs into a new environment; it lets pip fetch
wsrelay's dependencies from the configured index (pip's cache keeps it fast)
and is skipped, saying why, only when no index can be reached.
"""

from __future__ import annotations

import configparser
import re
import shlex
import shutil
import sys
import tempfile
import zipfile
from importlib.metadata import packages_distributions
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.support.packaging import ROOT, buildWheel, describe, run
from wsrelay.config import loadConfig

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


class WheelTests(SynchronousTestCase):
    """
    The built wheel and a fresh install of it.
    """

    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="wsrelay-packaging-"))
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def _buildWheel(self) -> Path:
        """
        Build the wheel from a copy of the repository.

        @return: the wheel's path.
        """
        result, wheels = buildWheel(self.tmp)
        self.assertEqual(result.returncode, 0, describe(result))
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
        result = run([sys.executable, "-m", "venv", venv], cwd=self.tmp, timeout=120)
        self.assertEqual(result.returncode, 0, describe(result))
        scripts = venv / "bin"

        result = run(
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
            self.fail(describe(result))

        result = run([scripts / "twistd", "--help"], cwd=self.tmp, timeout=120)
        self.assertEqual(result.returncode, 0, describe(result))
        commands = [line.split() for line in result.stdout.splitlines()]
        self.assertIn(
            "wsrelay",
            [words[0] for words in commands if words],
            describe(result),
        )

        result = run(
            [scripts / "twistd", "wsrelay", "--help"], cwd=self.tmp, timeout=120
        )
        self.assertEqual(result.returncode, 0, describe(result))
        self.assertIn("--config", result.stdout, describe(result))


def _requirementName(requirement: str) -> str:
    """
    @return: The normalised project name of a requirement
        (C{"twisted[tls]>=24.7"} gives C{"twisted"}).
    """
    name = re.split(r"[\[<>=!~;\s]", requirement.strip(), maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def runInstalls() -> set[str]:
    """
    @return: The projects that C{make run} installs into C{.venv}: what the
        recipe of C{$(VENV)/.stamp-run} names after C{pip install} (with
        the Makefile's variables expanded), and wsrelay's own runtime
        requirements (C{install_requires} in C{setup.cfg}).
    """
    makefile = (ROOT / "Makefile").read_text()
    variables = dict(
        re.findall(r"^([A-Z_]+)\s*\??=\s*(.*)$", makefile, flags=re.MULTILINE)
    )
    recipe = re.search(
        r"^\$\(VENV\)/\.stamp-run:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE
    )
    assert recipe is not None, "no $(VENV)/.stamp-run rule in the Makefile"
    text = re.sub(
        r"\$\(([A-Z_]+)\)", lambda m: variables.get(m.group(1), ""), recipe.group(1)
    )
    names: set[str] = set()
    for line in text.splitlines():
        words = shlex.split(line)
        if "install" not in words or "pip" not in words:
            continue
        for word in words[words.index("install") + 1 :]:
            if not word.startswith("-") and word != "." and "=" not in word[:1]:
                names.add(_requirementName(word))
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    for line in setup["options"]["install_requires"].splitlines():
        if line.strip() and not line.strip().startswith("#"):
            names.add(_requirementName(line))
    return names


class ReadmeTests(SynchronousTestCase):
    """
    Every command the README shows works after its quick start, C{make
    run} then C{make test}.
    """

    def test_commands(self) -> None:
        """
        Each command of the README's C{sh} blocks is a target of the
        Makefile, a Python module run from C{.venv} whose project C{make
        run} installs (and which runs), or C{twistd} from C{.venv} with a
        configuration file that loads; any other command fails this test
        until it is given a check here.
        """
        readme = (ROOT / "README.md").read_text()
        makefile = (ROOT / "Makefile").read_text()
        installed = runInstalls()
        modules = packages_distributions()
        commands = [
            line.strip()
            for block in re.findall(r"```sh\n(.*?)```", readme, flags=re.DOTALL)
            for line in block.splitlines()
            if line.strip() and not line.strip().startswith("#")
        ]
        self.assertIn("make run", commands)
        for command in commands:
            words = shlex.split(command)
            if words[0] == "make":
                for target in words[1:]:
                    self.assertRegex(makefile, rf"(?m)^{re.escape(target)}:", command)
            elif words[:3] == [".venv/bin/python", "-m", words[2]]:
                module = words[2]
                projects = {_requirementName(d) for d in modules.get(module, [])}
                self.assertTrue(projects, f"{command}: no project provides {module}")
                self.assertTrue(
                    projects & installed,
                    f"{command}: make run does not install {projects}",
                )
                result = run(
                    [sys.executable, "-m", module, "--help"], cwd=ROOT, timeout=60
                )
                self.assertEqual(result.returncode, 0, describe(result))
            elif words[0] == ".venv/bin/twistd":
                self.assertIn("twisted", installed)
                config = words[words.index("--config") + 1]
                self.assertEqual(
                    loadConfig(str(ROOT / config)).path, str(ROOT / config)
                )
            else:
                self.fail(f"README command {command!r}: no check knows it; add one")
