"""
C{python -m bench.workerchannel}: the round trip of worker 0's control
channel to another worker, as the admin API sees it.

Starts C{twistd wsrelay} with C{workers = 2} and an admin listener on
loopback, waits until both workers answer, then times admin requests on
one kept-alive HTTP connection: C{/status?worker=0} (worker 0's own status,
no channel), C{/status?worker=1} (the same status asked of worker 1 over
the channel), C{/status} (every worker's row) and C{/metrics} (every
worker's page, merged).  The difference between the first two medians is
the channel's round trip with a status answer.  On a loaded machine that
difference drowns in scheduling noise: C{--memory} instead joins worker
0's end of the channel (L{wsrelay.workers.WorkerProcess}) to a worker's
(L{wsrelay.workers.WorkerControl}) in this process and times status round
trips in CPU time, with a small status (one route) and a large one (many
routes, beyond AMP's 64 KiB value limit).  It works with the JSON-lines
channel before AMP too, so that both can be measured.

Usage: C{python -m bench.workerchannel [--requests N] [--memory]}.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.targets import freePort, wsrelayConfig

#: A worker's status with one route of two backends, as C{/status} has it.
SMALL_STATUS = {
    "version": "0.1.0",
    "worker": 1,
    "uptime": 12.5,
    "clients": 40,
    "handshakes": {"count": 1234, "latency": [[0.001 * 2**i, i] for i in range(12)]},
    "routes": [
        {
            "name": "echo",
            "path": "/",
            "mode": "proxy",
            "backends": [
                {
                    "name": f"b{i}",
                    "url": f"ws://127.0.0.1:{9000 + i}/",
                    "state": "up",
                    "admin": "enabled",
                    "connections": 20,
                    "failures": 0,
                }
                for i in range(2)
            ],
        }
    ],
}

#: The same with 300 routes (about 100 KiB of JSON).
LARGE_STATUS = {
    **SMALL_STATUS,
    "routes": [
        {**SMALL_STATUS["routes"][0], "name": f"r{i}", "path": f"/r{i}"}  # type: ignore[index]
        for i in range(300)
    ],
}

PATHS = ("/status?worker=0", "/status?worker=1", "/status", "/metrics")
"""
The admin requests timed, in order.
"""


def waitForWorkers(adminPort: int, process: subprocess.Popen[bytes]) -> None:
    """
    Wait (30 seconds at most) until both workers answer C{/status}.

    @raise SystemExit: When they do not, or twistd exits.
    """
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit("twistd exited")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", adminPort, timeout=5)
            connection.request("GET", "/status")
            rows = json.load(connection.getresponse()).get("workers", [])
            connection.close()
        except OSError:
            rows = []
        if len(rows) == 2 and all("error" not in r for r in rows):
            return
        time.sleep(0.1)
    raise SystemExit("the workers did not answer within 30 s")


def timeRequests(adminPort: int, path: str, count: int) -> list[float]:
    """
    @return: The duration, in seconds, of each of C{count} C{GET path}
        on one connection (after one untimed warm-up request).
    """
    connection = http.client.HTTPConnection("127.0.0.1", adminPort, timeout=10)
    durations = []
    for i in range(count + 1):
        started = time.perf_counter()
        connection.request("GET", path)
        answer = connection.getresponse()
        answer.read()
        if answer.status != 200:
            raise SystemExit(f"{path}: HTTP {answer.status}")
        if i:
            durations.append(time.perf_counter() - started)
    connection.close()
    return durations


class _Pipe:
    """
    A worker's pipes as both ends see them in memory: what either end
    writes is kept until L{_Channel.pump} carries it over.
    """

    pid = 4242

    def __init__(self) -> None:
        self.written = b""
        self.disconnecting = False

    def write(self, data: bytes) -> None:
        self.written += data

    def writeToChild(self, childFD: int, data: bytes) -> None:
        self.written += data

    def writeSequence(self, data: list[bytes]) -> None:
        self.written += b"".join(data)

    def getPeer(self) -> None:
        return None

    def getHost(self) -> None:
        return None

    def loseConnection(self) -> None:
        raise RuntimeError("the channel closed")

    def signalProcess(self, signal: str) -> None:
        raise RuntimeError(f"the worker was sent {signal}")


class _Channel:
    """
    Worker 0's end and a worker's end of the control channel, joined in
    memory; works with the JSON-lines channel (C{ask}) and with AMP
    (C{status}).
    """

    def __init__(self, status: dict[str, object]) -> None:
        import importlib
        from types import SimpleNamespace

        from twisted.internet.task import Clock
        from twisted.logger import Logger

        # Any: this runs against the JSON-lines channel's API as well.
        workers: Any = importlib.import_module("wsrelay.workers")
        pool = SimpleNamespace(clock=Clock(), log=Logger())
        self.toWorker = _Pipe()
        self.toPool = _Pipe()
        self.worker = workers.WorkerProcess(pool, 1)
        self.worker.makeConnection(self.toWorker)
        reactor = SimpleNamespace(running=False)
        if hasattr(workers, "RelayAnswers"):
            answers = workers.RelayAnswers(None, lambda r: status, lambda r: "")
            self.control = workers.WorkerControl(answers, reactor)
            self.ask = self.worker.status
        else:  # the JSON-lines channel
            admin: Any = importlib.import_module("wsrelay.admin")
            admin.status = lambda relay: status
            self.control = workers.WorkerControl(None, reactor)
            self.ask = lambda: self.worker.ask("status")
        self.control.makeConnection(self.toPool)

    def roundTrip(self) -> object:
        """
        Ask for the status and carry the bytes until it is answered.
        """
        answers: list[object] = []
        self.ask().addCallback(answers.append)
        while self.toWorker.written or self.toPool.written:
            data, self.toWorker.written = self.toWorker.written, b""
            if data:
                self.control.dataReceived(data)
            data, self.toPool.written = self.toPool.written, b""
            if data:
                self.worker.childDataReceived(3, data)
        [answer] = answers
        return answer


def memory(count: int) -> None:
    """
    Print the CPU time of a status round trip over the channel in memory:
    the median over 15 rounds of C{count} round trips each.
    """
    import json

    for name, status in (("small", SMALL_STATUS), ("large", LARGE_STATUS)):
        channel = _Channel(status)
        if channel.roundTrip() != status:
            raise SystemExit("the answer is not the status")
        rounds = []
        for _ in range(15):
            started = time.process_time()
            for _ in range(count):
                channel.roundTrip()
            rounds.append((time.process_time() - started) / count)
        size = len(json.dumps(status))
        print(
            f"status round trip in memory, {name} ({size} bytes of JSON):"
            f" median {statistics.median(rounds) * 1e6:8.1f} us CPU"
            f"  min {min(rounds) * 1e6:8.1f} us  ({count} x 15)"
        )


def main(argv: list[str] | None = None) -> int:
    """
    Run the measurement and print one line per admin request: its median
    and 90th percentile in milliseconds.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--memory", action="store_true")
    args = parser.parse_args(argv)
    if args.memory:
        memory(args.requests)
        return 0
    work = Path(tempfile.mkdtemp(prefix="wsrelay-workerchannel-"))
    adminPort = freePort()
    config = work / "wsrelay.ini"
    config.write_text(wsrelayConfig(freePort(), freePort(), False, None, 2, adminPort))
    twistd = str(Path(sys.executable).with_name("twistd"))
    with open(work / "twistd.log", "wb") as log:
        process = subprocess.Popen(
            [twistd, "-n", "--pidfile=", "wsrelay", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        waitForWorkers(adminPort, process)
        for path in PATHS:
            durations = timeRequests(adminPort, path, args.requests)
            median = statistics.median(durations) * 1000
            p90 = statistics.quantiles(durations, n=10)[-1] * 1000
            print(
                f"{path:20} median {median:6.3f} ms  p90 {p90:6.3f} ms"
                f"  (n={args.requests})"
            )
    finally:
        process.terminate()
        process.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
