"""
The habits of an open-source project hold: a licence the package
declares, news fragments towncrier can build, pre-commit hooks that run the
gates CI runs, and a CONTRIBUTING guide whose commands exist.
"""

from __future__ import annotations

import ast
import configparser
import re
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parent.parent
"""
The repository's root.
"""

BIN = Path(sys.executable).parent
"""
The virtualenv's scripts (towncrier, pre-commit).
"""

FRAGMENT_TYPES = {"feature", "bugfix", "removal", "doc", "misc"}
"""
The fragment types pyproject.toml declares to towncrier.
"""


def run(*command: str) -> subprocess.CompletedProcess[str]:
    """
    Run a command in the repository's root and return what it did.
    """
    return subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )


class LicenseTests(SynchronousTestCase):
    """
    The project is MIT-licensed, and its metadata says so.
    """

    def test_mit(self) -> None:
        """
        C{LICENSE} is the MIT licence, and setup.cfg declares it and ships
        the file.
        """
        text = (ROOT / "LICENSE").read_text()
        self.assertTrue(text.startswith("MIT License\n"))
        self.assertIn("Permission is hereby granted, free of charge", text)
        setup = configparser.ConfigParser()
        setup.read(ROOT / "setup.cfg")
        self.assertEqual(setup["metadata"]["license"], "MIT")
        self.assertEqual(setup["metadata"]["license_files"], "LICENSE")


class NewsTests(SynchronousTestCase):
    """
    News fragments are well named, and towncrier builds the changelog from
    them.
    """

    def fragments(self) -> list[Path]:
        """
        The news fragments waiting for the next release.
        """
        return sorted(
            p for p in (ROOT / "newsfragments").iterdir() if p.name != ".gitignore"
        )

    def test_names(self) -> None:
        """
        Every fragment is named C{ISSUE.TYPE.md} with a declared type and
        says something.
        """
        for path in self.fragments():
            match = re.fullmatch(r"(\d+)\.([a-z]+)(?:\.\d+)?\.md", path.name)
            self.assertIsNotNone(match, path.name)
            assert match is not None
            self.assertIn(match.group(2), FRAGMENT_TYPES, path.name)
            self.assertTrue(path.read_text().strip(), path.name)

    def test_draft(self) -> None:
        """
        C{towncrier build --draft} succeeds and includes every fragment's
        text under its issue number.
        """
        done = run(str(BIN / "towncrier"), "build", "--draft", "--version", "next")
        self.assertEqual(done.returncode, 0, done.stderr)
        for path in self.fragments():
            self.assertIn(path.read_text().strip(), done.stdout)
            self.assertIn("(#{})".format(path.name.split(".")[0]), done.stdout)


class PreCommitTests(SynchronousTestCase):
    """
    The pre-commit hooks are valid and run the venv's own gates.
    """

    def test_hooks(self) -> None:
        """
        The configuration validates, and its hooks are ruff check, ruff
        format and mypy from C{.venv}, as C{make lint} and C{make typecheck}
        run them (so no hook is fetched from the network).
        """
        config = ROOT / ".pre-commit-config.yaml"
        done = run(str(BIN / "pre-commit"), "validate-config", str(config))
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        entries = re.findall(r"entry: (\S+(?: (?!-)\S+)?)", config.read_text())
        self.assertEqual(
            entries, [".venv/bin/ruff check", ".venv/bin/ruff format", ".venv/bin/mypy"]
        )
        makefile = (ROOT / "Makefile").read_text()
        self.assertIn("$(BIN)/ruff check", makefile)
        self.assertIn("$(BIN)/ruff format --check", makefile)
        self.assertIn("$(BIN)/mypy", makefile)


class ContributingTests(SynchronousTestCase):
    """
    CONTRIBUTING.md names only commands that exist.
    """

    def test_makeTargets(self) -> None:
        """
        Every C{make TARGET} in the guide is a target of the Makefile.
        """
        text = (ROOT / "CONTRIBUTING.md").read_text()
        makefile = (ROOT / "Makefile").read_text()
        targets = set(re.findall(r"^([a-z][\w.-]*):", makefile, re.MULTILINE))
        named = set(re.findall(r"`make ([a-z]+)", text))
        self.assertGreater(len(named), 5)
        self.assertEqual(named - targets, set())

    def test_oneTest(self) -> None:
        """
        The test the guide runs as an example of one test exists: its
        module defines the class, and the class the method.
        """
        text = (ROOT / "CONTRIBUTING.md").read_text()
        nodes = re.findall(r'"(tests/[^"]+::[^"]+)"', text)
        self.assertEqual(len(nodes), 1)
        path, className, methodName = nodes[0].split("::")
        tree = ast.parse((ROOT / path).read_text())
        methods = {
            item.name
            for node in tree.body
            if isinstance(node, ast.ClassDef) and node.name == className
            for item in node.body
            if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
        }
        self.assertIn(methodName, methods)
