"""
Waiting on the reactor for what a test cannot be told about: a
condition polled with back-off until a deadline.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet import reactor, task

#: Seconds a test waits for anything: a connection, a reply, a condition.
TIMEOUT = 10


async def waitFor(predicate: Any, timeout: float = TIMEOUT) -> None:
    """
    Poll C{predicate} on the reactor until it holds, failing after
    C{timeout} seconds.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await task.deferLater(reactor, 0.01, lambda: None)
