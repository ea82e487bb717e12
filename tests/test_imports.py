# -*- test-case-name: tests.test_imports -*-
"""
Tests for the shape of the C{wsrelay} package: no import cycle between
its modules.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import wsrelay

PACKAGE = Path(wsrelay.__file__).parent


def moduleName(path: Path) -> str:
    """
    @return: The dotted name of the module at C{path}, a file under
        L{PACKAGE}.
    """
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def importedNames(tree: ast.AST, module: str, isPackage: bool) -> Iterator[str]:
    """
    @return: Every dotted name C{tree} imports, wherever the import
        statement is (in a function, under C{if TYPE_CHECKING:}): for
        C{from a import b}, both C{a} and C{a.b} (C{b} may be a module).
    """
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".")
                if not isPackage:
                    package.pop()
                package = package[: len(package) - (node.level - 1)]
                base = ".".join([*package, base] if base else package)
            yield base
            for alias in node.names:
                yield f"{base}.{alias.name}"


def importGraph() -> dict[str, set[str]]:
    """
    @return: For each module of the C{wsrelay} package, the other modules
        of the package it imports.
    """
    paths = {moduleName(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        isPackage = path.name == "__init__.py"
        graph[name] = {
            target
            for target in importedNames(tree, name, isPackage)
            if target in paths and target != name
        }
    return graph


def findCycle(graph: dict[str, set[str]]) -> list[str] | None:
    """
    @return: One cycle of C{graph} as the modules along it, the first
        repeated at the end, or L{None} when the graph has none.
    """
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(graph, WHITE)
    for start in sorted(graph):
        if colour[start] != WHITE:
            continue
        stack = [(start, iter(sorted(graph[start])))]
        path = [start]
        colour[start] = GREY
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                colour[node] = BLACK
                stack.pop()
                path.pop()
            elif colour[child] == GREY:
                return [*path[path.index(child) :], child]
            elif colour[child] == WHITE:
                colour[child] = GREY
                path.append(child)
                stack.append((child, iter(sorted(graph[child]))))
    return None


class ImportCycleTests(SynchronousTestCase):
    """
    The modules of C{wsrelay} import one another without a cycle.
    """

    def test_findCycle(self) -> None:
        """
        L{findCycle} finds a cycle through three modules, and none in a
        graph without one.
        """
        self.assertEqual(
            findCycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}),
            ["a", "b", "c", "a"],
        )
        self.assertIsNone(findCycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}))

    def test_importedNames(self) -> None:
        """
        Imports inside functions and under C{TYPE_CHECKING} count, and
        relative imports resolve against the module's package.
        """
        tree = ast.parse(
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n"
            "    from wsrelay.service import RelayService\n"
            "def f():\n"
            "    from . import admin\n"
        )
        names = set(importedNames(tree, "wsrelay.tap", False))
        self.assertIn("wsrelay.service", names)
        self.assertIn("wsrelay.admin", names)

    def test_noCycle(self) -> None:
        """
        No module of C{wsrelay} imports, directly or through others, a
        module that imports it, counting imports inside functions and
        under C{TYPE_CHECKING}: a collaborator is typed by an interface
        in a module below both.
        """
        cycle = findCycle(importGraph())
        if cycle is not None:
            self.fail("import cycle: " + " -> ".join(cycle))
