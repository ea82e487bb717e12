"""
Start the picows peers of L{bench.peers} as child processes and talk to
them in JSON lines.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
"""
The repository, from which C{python -m bench.peers} is run.
"""


class PeerFailed(Exception):
    """
    A peer exited, reported an error, or did not answer in time.
    """


class Peer:
    """
    One peer process (C{python -m bench.peers ROLE ...}).

    @ivar process: The child process.
    """

    _count = 0

    def __init__(
        self, role: str, arguments: Sequence[str], work: Path, pin: Sequence[str]
    ) -> None:
        """
        Start the peer.

        @param role: A role of L{bench.peers.ROLES}.
        @param arguments: Its options.
        @param work: The folder its standard error goes to.
        @param pin: A command prefix pinning it to a CPU (C{taskset -c 0}).
        """
        Peer._count += 1
        self.role = role
        self._errors = work / f"{role}-{Peer._count}.err"
        self._buffer = b""
        with open(self._errors, "wb") as errors:
            self.process = subprocess.Popen(
                [*pin, sys.executable, "-m", "bench.peers", role, *arguments],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=errors,
                cwd=ROOT,
            )

    @property
    def pid(self) -> int:
        """
        The peer's process ID.
        """
        return self.process.pid

    def _failure(self, what: str) -> PeerFailed:
        """
        An exception naming the peer, with the end of its standard error.
        """
        tail = ""
        if self._errors.exists():
            lines = self._errors.read_text(errors="replace").strip().splitlines()
            tail = " | ".join(lines[-3:])
        return PeerFailed(f"{self.role}: {what}" + (f": {tail}" if tail else ""))

    def read(self, timeout: float) -> dict[str, Any]:
        """
        Wait for the peer's next JSON line.

        @raise PeerFailed: If it exits first, does not answer within
            C{timeout} seconds, or answers with an C{error}.
        """
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._failure(f"no answer within {timeout:g} s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                data = os.read(fd, 1 << 16)
                if not data:
                    self.process.wait()
                    raise self._failure(f"exited with {self.process.returncode}")
                self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise self._failure(answer["error"])
        return answer

    def request(self, command: dict[str, Any], timeout: float) -> dict[str, Any]:
        """
        Send a command and wait for its answer (see L{read}).
        """
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(json.dumps(command).encode() + b"\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            raise self._failure("exited") from None
        return self.read(timeout)

    def close(self, timeout: float = 10) -> None:
        """
        Close the peer's standard input, which ends it, and wait for it;
        kill it if it lingers.
        """
        if self.process.stdin is not None and not self.process.stdin.closed:
            try:
                self.process.stdin.close()
            except BrokenPipeError:
                pass
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
