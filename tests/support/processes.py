"""
The relay as users run it: the C{twistd wsrelay} command line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Any

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def twistd(*args: str, jsonLogs: bool = False) -> list[str]:
    """
    @param jsonLogs: Whether to log JSON lines (C{wsrelay.logs.jsonStdout}).
    @return: The command line of C{twistd wsrelay} in the foreground.
    """
    logger = ["--logger=wsrelay.logs.jsonStdout"] if jsonLogs else []
    return [TWISTD, "--pidfile=", "-n", *logger, "wsrelay", *args]


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
