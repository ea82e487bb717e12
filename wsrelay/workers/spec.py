# -*- test-case-name: tests.test_workers -*-
"""
What worker 0 tells each other worker on its command line.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WorkerSpec:
    """
    What a worker other than worker 0 is told on its command line.

    @ivar index: Its number, from 1.
    @ivar fds: The descriptor of the listening socket it serves (worker 0
        opened it and passed it on) for each listener, in the order of
        C{listen}.
    """

    index: int
    fds: tuple[int, ...]

    @classmethod
    def parse(cls, text: str) -> WorkerSpec:
        """
        Read C{"INDEX:FD,FD..."}.

        @raise ValueError: When C{text} is not that.
        """
        index, _, fds = text.partition(":")
        spec = cls(int(index), tuple(int(p) for p in fds.split(",") if p))
        if spec.index < 1 or not spec.fds:
            raise ValueError(f"not INDEX:FD,...: {text!r}")
        return spec

    def __str__(self) -> str:
        return f"{self.index}:{','.join(map(str, self.fds))}"
