# -*- test-case-name: tests.test_config -*-
"""
The error every configuration problem is reported with.
"""

from __future__ import annotations

from typing import Any


class ConfigError(Exception):
    """
    The configuration file cannot be used.

    C{str(error)} is L{message}, one line:
    C{"<file>: [<section>] <key>: <problem>"}, without the key or the
    section when the problem is not about one.

    @ivar filename: The path of the file, as the caller gave it.
    @ivar section: The section's name (C{"route:chat"}), or L{None}.
    @ivar key: The key, or L{None}.
    @ivar problem: What is wrong, e.g. C{"expected ..., got '...'"}.
    @ivar message: The whole one-line message.
    """

    def __init__(
        self,
        filename: str,
        problem: str,
        section: str | None = None,
        key: str | None = None,
    ) -> None:
        """
        @param filename: See L{filename}.
        @param problem: See L{problem}.
        @param section: See L{section}.
        @param key: See L{key}; only used with a section.
        """
        self.filename = filename
        self.problem = problem
        self.section = section
        self.key = key
        if section is None:
            message = f"{filename}: {problem}"
        elif key is None:
            message = f"{filename}: [{section}] {problem}"
        else:
            message = f"{filename}: [{section}] {key}: {problem}"
        self.message = _oneLine(message)
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.filename, self.problem, self.section, self.key))


class _BadValue(ValueError):
    """
    A value is not acceptable; the message is the problem, without file,
    section or key (the section parser adds those).
    """


def _oneLine(text: str) -> str:
    """
    @return: C{text} with every line break replaced by a space.
    """
    return " ".join(text.splitlines())


def _expected(what: str, value: str) -> str:
    """
    @return: The usual problem text: C{"expected <what>, got <repr>"}.
    """
    return f"expected {what}, got {value!r}"
