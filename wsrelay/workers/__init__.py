# -*- test-case-name: tests.test_workers -*-
"""
C{workers = N}: N relay processes on the same listening ports.

The process C{twistd} started is worker 0.  It opens N listening sockets
for each listener, with C{SO_REUSEPORT}, so that the kernel spreads new
connections over them (L{wsrelay.listening}), serves the first and then
starts workers 1 to N-1 with L{WorkerPool}: each is C{twistd wsrelay
--worker I:FDS} on the same configuration file, given its socket of each
listener as a descriptor.  Worker 0 keeps every socket, to give it to a
worker it starts again and to a relay that takes over.  Each worker is a
whole relay with its own connections, health checks and fan-out
upstreams; worker 0 alone serves the admin listener and the demo backends.

Worker 0 talks to each of the others over pipes.  A worker's log events
come as JSON lines on its standard output and are logged again by worker
0 with C{worker} set.  Worker 0's commands (L{wsrelay.workers.commands}:
C{Status}, C{Metrics}, C{Reload}, C{Act}) are AMP boxes on the worker's
standard input, and the answers AMP boxes on its file descriptor 3
(L{WorkerControl}).  When worker 0 goes away, its pipes close and the
others stop; when another worker dies, worker 0 logs it and starts it
again.

Modules: L{spec <wsrelay.workers.spec>} (the C{--worker} argument),
L{commands <wsrelay.workers.commands>} (the AMP commands),
L{supervisor <wsrelay.workers.supervisor>} (worker 0's side),
L{process <wsrelay.workers.process>} (worker 0's end of one worker's pipes),
L{worker <wsrelay.workers.worker>} (the other workers' side).  The
admin API's C{workers} rows are L{wsrelay.admin.rows.workerRows}.
"""

from wsrelay.workers.process import ANSWER_TIMEOUT, WorkerGone, WorkerProcess
from wsrelay.workers.spec import WorkerSpec
from wsrelay.workers.supervisor import (
    RESTART_CAP,
    RESTART_DELAY,
    STABLE_AFTER,
    STOP_GRACE,
    WorkerPool,
)
from wsrelay.workers.worker import (
    Answers,
    ControlService,
    RelayAnswers,
    WorkerCommands,
    WorkerControl,
)

__all__ = [
    "ANSWER_TIMEOUT",
    "RESTART_CAP",
    "RESTART_DELAY",
    "STABLE_AFTER",
    "STOP_GRACE",
    "Answers",
    "ControlService",
    "RelayAnswers",
    "WorkerCommands",
    "WorkerControl",
    "WorkerGone",
    "WorkerPool",
    "WorkerProcess",
    "WorkerSpec",
]
