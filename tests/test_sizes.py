# -*- test-case-name: tests.test_sizes -*-
"""
Tests for the size of the C{wsrelay} package's pieces: no module over
L{MAX_MODULE} lines, no class over L{MAX_CLASS} lines, so that each keeps
to one concern.
"""

from __future__ import annotations

import ast
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import wsrelay

PACKAGE = Path(wsrelay.__file__).parent
ROOT = PACKAGE.parent

#: The most lines a module may have.
MAX_MODULE = 600

#: The most lines a class may have, from its C{class} line to its last.
MAX_CLASS = 300


def oversized(name: str, source: str) -> list[str]:
    """
    @param name: The module's path from the project's root.
    @param source: The module's text.
    @return: The module (C{name}, with its line count) when it is over
        L{MAX_MODULE} lines, and each class in it (C{name::Class}, nested
        ones as C{Outer.Inner}) over L{MAX_CLASS} lines.
    """
    found = []
    lines = len(source.splitlines())
    if lines > MAX_MODULE:
        found.append(f"{name} ({lines} lines)")

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                qualified = prefix + child.name
                assert child.end_lineno is not None
                size = child.end_lineno - child.lineno + 1
                if size > MAX_CLASS:
                    found.append(f"{name}::{qualified} ({size} lines)")
                visit(child, qualified + ".")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return found


class SizeTests(SynchronousTestCase):
    """
    The modules and classes of C{wsrelay} are within L{MAX_MODULE} and
    L{MAX_CLASS} lines.
    """

    def test_oversized(self) -> None:
        """
        L{oversized} names a module over L{MAX_MODULE} lines and each class
        over L{MAX_CLASS} lines, nested ones too, with their sizes, and
        nothing within the limits.
        """
        body = "    x = 1\n" * MAX_CLASS
        source = (
            f"class Big:\n{body}"
            "class Small:\n    pass\n"
            "def f():\n"
            f"    class Inner:\n{body.replace('    ', '        ')}"
            + "\n"
            * max(0, MAX_MODULE - 2 * MAX_CLASS)
        )
        lines = len(source.splitlines())
        self.assertGreater(lines, MAX_MODULE)
        self.assertEqual(
            oversized("m.py", source),
            [
                f"m.py ({lines} lines)",
                f"m.py::Big ({MAX_CLASS + 1} lines)",
                f"m.py::Inner ({MAX_CLASS + 1} lines)",
            ],
        )
        self.assertEqual(oversized("m.py", "class A:\n    pass\n"), [])

    def test_withinLimits(self) -> None:
        """
        Every module of C{wsrelay} is within L{MAX_MODULE} lines and every
        class within L{MAX_CLASS} lines.
        """
        found = []
        for path in sorted(PACKAGE.rglob("*.py")):
            name = path.relative_to(ROOT).as_posix()
            found += oversized(name, path.read_text(encoding="utf-8"))
        self.assertEqual(found, [], "over the size limits: " + ", ".join(found))
