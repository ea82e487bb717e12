"""
The layout of the tests themselves: helpers shared between test modules
live in L{tests.support}, so that no test module imports another (running
one file never runs or imports the tests of another, and a helper has one
home).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

TESTS = Path(__file__).resolve().parent

#: The first line of a module naming the tests of it, as trial reads it.
HEADER = re.compile(r"-\*- test-case-name: *([^ ]+) *-\*-")


def isTestModule(name: str) -> bool:
    """
    @param name: A dotted module name.
    @return: Whether it names a test module of this folder
        (C{tests.test_*}), or the folder's package itself.
    """
    parts = name.split(".")
    return parts[0] == "tests" and (len(parts) == 1 or parts[1].startswith("test_"))


def importedTestModules(source: str) -> list[str]:
    """
    @param source: The text of a Python module.
    @return: The test modules it imports, as written (C{import tests.test_x},
        C{from tests.test_x import y}, C{from tests import test_x}, and the
        same inside functions).
    """
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if isTestModule(a.name)]
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            if node.level == 0 and node.module == "tests":
                found += [
                    f"tests.{a.name}" for a in node.names if a.name.startswith("test_")
                ]
            elif node.level == 0 and isTestModule(node.module):
                found.append(node.module)
            elif node.level > 0 and node.module.startswith("test_"):
                found.append(f"{'.' * node.level}{node.module}")
    return found


class ImportTests(SynchronousTestCase):
    """
    No module of C{tests/} imports a test module.
    """

    def test_detects(self) -> None:
        """
        Each way of importing a test module is found, inside a function
        too; imports from L{tests.support} are not.
        """
        source = (
            "import tests.test_proxy\n"
            "from tests.test_fanout import Source\n"
            "from tests import test_tls, support\n"
            "from .test_edge import v1\n"
            "from tests.support import client\n"
            "from tests.support.memory import Network\n"
            "def f():\n"
            "    from tests.test_admin import Dashboard\n"
        )
        self.assertEqual(
            sorted(importedTestModules(source)),
            sorted(
                [
                    "tests.test_proxy",
                    "tests.test_fanout",
                    "tests.test_tls",
                    ".test_edge",
                    "tests.test_admin",
                ]
            ),
        )

    def test_noTestModuleImportsAnother(self) -> None:
        """
        No module under C{tests/} (test modules and L{tests.support} alike)
        imports a test module: shared helpers live in L{tests.support}.
        """
        offenders = {}
        for path in sorted(TESTS.rglob("*.py")):
            found = importedTestModules(path.read_text())
            if found:
                offenders[str(path.relative_to(TESTS.parent))] = found
        self.assertEqual(offenders, {})


class TestCaseNameTests(SynchronousTestCase):
    """
    The C{test-case-name} header of every module names test modules that
    exist (C{trial --testmodule} runs them, editors jump to them).
    """

    def test_headersNameExistingModules(self) -> None:
        """
        Each module named in a C{# -*- test-case-name: ... -*-} header of a
        module of the project is a file under C{tests/}, and the relay's
        package has such headers to check.
        """
        root = TESTS.parent
        missing: dict[str, list[str]] = {}
        headers = 0
        for folder in ("wsrelay", "twisted", "bench", "examples", "tests"):
            for path in sorted((root / folder).rglob("*.py")):
                with path.open() as f:
                    match = HEADER.search(f.readline())
                if match is None:
                    continue
                headers += 1
                for name in match.group(1).split(","):
                    if not (root / (name.replace(".", "/") + ".py")).exists():
                        missing.setdefault(str(path.relative_to(root)), []).append(name)
        self.assertEqual(missing, {})
        self.assertGreater(headers, 10)


class FastTierTests(SynchronousTestCase):
    """
    The fast tier's selection (C{tests/conftest.py}, C{make check}) names
    classes that exist.
    """

    def test_exclusionsExist(self) -> None:
        """
        Every class that C{NOT_IN_MEMORY} keeps out of the fast tier is
        defined where it says (read, not imported: no test module imports
        another): a renamed class would otherwise slip its processes into
        C{make check}.
        """
        from tests.conftest import NOT_IN_MEMORY

        missing = []
        for name in sorted(NOT_IN_MEMORY):
            module, cls = name.split("::")
            tree = ast.parse((TESTS / f"{module}.py").read_text())
            classes = {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
            if cls not in classes:
                missing.append(name)
        self.assertEqual(missing, [])


def blockingSleeps(source: str) -> list[int]:
    """
    @param source: The text of a Python module.
    @return: The lines that call C{time.sleep} (or a C{sleep} imported from
        C{time}).
    """
    tree = ast.parse(source)
    names = {"time.sleep"}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "time":
            names |= {a.asname or a.name for a in node.names if a.name == "sleep"}
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            called = ast.unparse(node.func)
            if called in names:
                lines.append(node.lineno)
    return lines


class SleepTests(SynchronousTestCase):
    """
    No test waits by sleeping: tests wait on Deferreds, or poll another
    process's state through L{tests.support.waiting.pollUntil}, the one
    place that sleeps (with back-off, within a deadline).
    """

    def test_detects(self) -> None:
        """
        L{blockingSleeps} finds C{time.sleep} and an imported C{sleep}.
        """
        self.assertEqual(blockingSleeps("import time\ntime.sleep(1)\n"), [2])
        self.assertEqual(
            blockingSleeps("from time import sleep as nap\n\nnap(1)\n"), [3]
        )
        self.assertEqual(blockingSleeps("import asyncio\nasyncio.sleep(1)\n"), [])

    def test_noSleeps(self) -> None:
        """
        No test module, and no support module but L{tests.support.waiting},
        calls C{time.sleep}.
        """
        found = []
        for path in sorted([*TESTS.glob("*.py"), *(TESTS / "support").glob("*.py")]):
            if path == TESTS / "support" / "waiting.py":
                continue
            for line in blockingSleeps(path.read_text(encoding="utf-8")):
                found.append(f"{path.relative_to(TESTS)}:{line}")
        self.assertEqual(found, [])
