# -*- test-case-name: tests.test_workers -*-
"""
The C{workers} rows of the admin API's C{/status}.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from twisted.python.failure import Failure

if TYPE_CHECKING:
    from wsrelay.workers.supervisor import WorkerPool


def workerRows(
    pool: WorkerPool, own: dict[str, Any], answers: Sequence[tuple[int, Any]]
) -> list[dict[str, Any]]:
    """
    @param pool: Worker 0's pool of the other workers.
    @param own: Worker 0's status.
    @param answers: The other workers' statuses, as L{WorkerPool.status}
        gives them.
    @return: One row per worker for C{/status}: its number, process id,
        client connections and handshakes, or why it did not answer.
    """
    rows = [_row(0, os.getpid(), own)]
    for index, answer in answers:
        worker = pool.workers.get(index)
        pid = None if worker is None else worker.pid
        if isinstance(answer, Failure):
            rows.append(
                {"worker": index, "pid": pid, "error": answer.getErrorMessage()}
            )
        else:
            rows.append(_row(index, pid, answer))
        rows[-1]["restarts"] = pool.restarted.get(index, 0)
    return rows


def _row(index: int, pid: int | None, status: dict[str, Any]) -> dict[str, Any]:
    return {
        "worker": index,
        "pid": pid,
        "clients": status["clients"],
        "handshakes": status["handshakes"]["count"],
        "uptime": status["uptime"],
    }
