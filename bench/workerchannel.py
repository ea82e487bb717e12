"""
C{python -m bench.workerchannel}: the round trip of worker 0's control
channel to another worker, as the admin API sees it.

Starts C{twistd wsrelay} with C{workers = 2} and an admin listener on
loopback, waits until both workers answer, then times admin requests on
one kept-alive HTTP connection: C{/status?worker=0} (worker 0's own status,
no channel), C{/status?worker=1} (the same status asked of worker 1 over
the channel), C{/status} (every worker's row) and C{/metrics} (every
worker's page, merged).  The difference between the first two medians is
the channel's round trip with a status answer.

Usage: C{python -m bench.workerchannel [--requests N]}.
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

from bench.targets import freePort, wsrelayConfig

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


def main(argv: list[str] | None = None) -> int:
    """
    Run the measurement and print one line per admin request: its median
    and 90th percentile in milliseconds.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args(argv)
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
