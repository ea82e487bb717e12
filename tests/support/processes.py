"""
The relay as users run it: the C{twistd wsrelay} command line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from tests.support.waiting import TIMEOUT, pollUntil

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def twistd(*args: str, jsonLogs: bool = False, reactor: str | None = None) -> list[str]:
    """
    @param jsonLogs: Whether to log JSON lines (C{wsrelay.logs.jsonStdout}).
    @param reactor: The reactor (C{twistd -r NAME}), or L{None} for
        C{twistd wsrelay}'s own.
    @return: The command line of C{twistd wsrelay} in the foreground.
    """
    logger = ["--logger=wsrelay.logs.jsonStdout"] if jsonLogs else []
    chosen = [] if reactor is None else ["-r", reactor]
    return [TWISTD, "--pidfile=", "-n", *logger, *chosen, "wsrelay", *args]


def alive(pid: int) -> bool:
    """
    @return: Whether process C{pid} exists and is not a zombie.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def logEvents(path: str) -> list[dict[str, Any]]:
    """
    @return: The events a C{twistd wsrelay} with JSON logs wrote to
        C{path} so far (a record not written completely yet is left out).
    """
    with open(path, "rb") as f:
        records = f.read().split(b"\x1e")
    events = []
    for record in records:
        try:
            events.append(json.loads(record))
        except ValueError:
            continue  # empty, or not written completely yet
    return events


def killRelay(process: subprocess.Popen[bytes], path: str, timeout: float) -> None:
    """
    Kill a C{twistd wsrelay} if it still runs, and the workers its JSON log
    at C{path} says it started.
    """
    pids = [
        e["pid"]
        for e in logEvents(path)
        if str(e.get("log_format", "")).startswith("worker {worker} started")
    ]
    if process.poll() is None:
        process.kill()
        process.wait(timeout)
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


class JSONRelay:
    """
    One C{twistd wsrelay} process with JSON logs written to C{logPath}, on
    C{reactor} (C{twistd -r}) when given, killed (with its workers) at the
    end of the test.
    """

    def __init__(
        self,
        testCase: Any,
        config: str,
        logPath: str,
        *args: str,
        reactor: str | None = None,
    ) -> None:
        self.logPath = logPath
        self._log = open(logPath, "w")
        testCase.addCleanup(self._log.close)
        self.process = subprocess.Popen(
            twistd("--config", config, *args, jsonLogs=True, reactor=reactor),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        testCase.addCleanup(self.kill)

    def kill(self) -> None:
        """
        Kill the relay and its workers if they still run.
        """
        killRelay(self.process, self.logPath, TIMEOUT)

    def events(self) -> list[dict[str, Any]]:
        """
        @return: The log events so far.
        """
        return logEvents(self.logPath)

    def waitFor(
        self, match: Callable[[dict[str, Any]], bool], count: int = 1
    ) -> list[dict[str, Any]]:
        """
        Poll the log until C{count} events match (those logged before the
        process ended count).
        """
        found: list[dict[str, Any]] = []

        def matched() -> bool:
            found[:] = [e for e in self.events() if match(e)]
            if len(found) < count and self.process.poll() is not None:
                raise AssertionError(f"twistd exited: {self.tail()}")
            return len(found) >= count

        try:
            pollUntil(matched, "no such log event", TIMEOUT * 3)
        except AssertionError as e:
            raise AssertionError(f"{e}: {self.tail()}") from None
        return found

    def tail(self) -> str:
        """
        @return: The end of the log.
        """
        with open(self.logPath, errors="replace") as f:
            return f.read()[-3000:]
