"""
The benchmark's targets: how each is configured, started on loopback,
waited for, measured and stopped.

  - C{direct}: no proxy; clients connect to the backend or source itself.
  - C{nginx}: Debian's nginx as a WebSocket reverse proxy, one worker.
  - C{haproxy}: Debian's HAProxy in HTTP mode (WebSocket is a tunnel after
    the upgrade), one thread.
  - C{wsrelay}: C{twistd -n --pidfile= wsrelay --config FILE}, as users run
    it, on the default data path (C{data_path = passthrough}).
  - C{wsrelay-message}: the same with C{data_path = message}, which exists
    in proxy mode only.
  - C{wsrelay-workers}: C{workers = 2}, not pinned: its two processes may
    use both CPUs, which it shares with the load side.  Its CPU figures are
    the sum over its processes.
  - C{twisted}: Twisted's own port forwarder (L{bench.floor}), the floor
    of any relay on Twisted's TCP transports; it parses nothing, so it has
    no fan-out.
  - C{ownsockets}: a minimal passthrough WebSocket relay on wsrelay's
    reactor with its own sockets and epoll registration
    (L{bench.ownsockets}), each socket registered once, edge-triggered;
    no fan-out either.
  - C{ownsockets-level}: the same waiting through the reactor's
    C{addReader} and C{addWriter}.
  - C{ownsockets-features}: C{ownsockets} doing wsrelay's per-connection
    work with wsrelay's own code (L{bench.ownfeatures}): screening,
    routing, admission, the balancer, the upstream request, the backend's
    answer, timers, the frame scanners and the counters.

Each proxy's configuration and logs go to a temporary folder; each runs in
the foreground as the current user.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.procstat import processTree

TARGETS = (
    "direct",
    "nginx",
    "haproxy",
    "wsrelay",
    "wsrelay-message",
    "wsrelay-workers",
    "twisted",
    "ownsockets",
    "ownsockets-level",
    "ownsockets-features",
)
"""
Every target, in the order the table shows them.
"""

FANOUT_PATH = "/feed"
"""
The path of the fan-out route, and of the source's feed.
"""

BACKLOG = 4096
"""
Every proxy's listen backlog, as issue 16 measured them.  Linux caps a
backlog at C{net.core.somaxconn} (4096 by default since Linux 5.4), so a
larger one would not be larger.
"""


class TargetUnavailable(Exception):
    """
    A target cannot run on this machine, or not in this scenario; the
    message says why and is shown in the table.
    """


class TargetFailed(Exception):
    """
    A target did not start, or did not answer a WebSocket handshake.
    """


def findProgram(name: str) -> str | None:
    """
    Find a program on C{PATH}, or in C{/usr/sbin}, which an ordinary user's
    C{PATH} often lacks and where Debian puts nginx and HAProxy.

    @return: Its path, or L{None}.
    """
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def freePort() -> int:
    """
    A loopback TCP port that was free a moment ago.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def nginxConfig(work: Path, port: int, backendPort: int, connections: int) -> str:
    """
    nginx as a WebSocket reverse proxy: one worker process, no access log,
    temporary files under C{work}; the upgrade headers are passed on as
    nginx's documentation shows.

    @param connections: Client connections it must hold at once.  Each also
        takes an upstream connection, and nginx drains its idle connections
        (those still waiting for their request) when fewer than a sixteenth
        of C{worker_connections} are free, so it gets three per client.
    """
    user = ""
    if os.geteuid() == 0:
        # Otherwise the worker would switch to "nobody".
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name};\n"
    return f"""\
{user}worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
worker_rlimit_nofile {3 * connections + 256};
events {{
    worker_connections {3 * connections + 128};
}}
http {{
    access_log off;
    client_body_temp_path {work}/client_body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        '' close;
    }}
    upstream backend {{
        server 127.0.0.1:{backendPort};
    }}
    server {{
        listen 127.0.0.1:{port} backlog={BACKLOG};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
        }}
    }}
}}
"""


def haproxyConfig(port: int, backendPort: int, connections: int) -> str:
    """
    HAProxy in HTTP mode with one thread: it sees the upgrade and switches
    the connection to a tunnel, the standard way to proxy WebSocket.

    @param connections: Client connections it must hold at once.
    """
    return f"""\
global
    nbthread 1
    maxconn {connections + 64}

defaults
    mode http
    maxconn {connections + 64}
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout tunnel 1h

frontend websocket
    bind 127.0.0.1:{port} backlog {BACKLOG}
    default_backend backends

backend backends
    server backend 127.0.0.1:{backendPort}
"""


def wsrelayConfig(
    port: int,
    backendPort: int,
    fanout: bool,
    dataPath: str | None = None,
    workers: int = 1,
    adminPort: int | None = None,
    maxMessageSize: int = 16777216,
    writeDelay: float | None = None,
) -> str:
    """
    A wsrelay configuration: one proxy-mode route on C{/} to the echo
    backend (on C{dataPath} if given, else the default), or one fan-out route
    on L{FANOUT_PATH} to the source.  No pings (the other proxies send none
    either) and no access log (nginx runs with C{access_log off}).  With
    C{workers} above 1, an admin listener on C{adminPort} tells when every
    worker runs.  C{maxMessageSize} is its C{max_message_size}; the fan-out
    route's C{write_delay} is C{writeDelay} milliseconds when given, else
    its default.
    """
    relay = f"""\
[relay]
listen = tcp:{port}:interface=127.0.0.1:backlog={BACKLOG}
max_message_size = {maxMessageSize}
ping_interval = 0
access_log = off
"""
    if workers > 1:
        relay += f"workers = {workers}\nadmin = tcp:{adminPort}:interface=127.0.0.1\n"
    if not fanout:
        return (
            relay
            + f"""
[route:echo]
path = /
mode = proxy
backends = ws://127.0.0.1:{backendPort}/
"""
            + ("" if dataPath is None else f"data_path = {dataPath}\n")
        )
    return (
        relay
        + f"""
[route:feed]
path = {FANOUT_PATH}
mode = fanout
backends = ws://127.0.0.1:{backendPort}{FANOUT_PATH}
channel = route
replay = 0
client_messages = drop
max_client_buffer = 1048576
slow_client = drop
connect = eager
"""
        + ("" if writeDelay is None else f"write_delay = {writeDelay:g}\n")
    )


def missing(fanout: bool, dataPath: str | None = None) -> str | None:
    """
    Whether this checkout of wsrelay has what a configuration needs (fan-out
    mode, a data path): it accepts their keys.

    @return: L{None} if it does, else the reason to show.
    """
    try:
        from wsrelay.config import ConfigError, parseConfig
    except ImportError as e:
        return f"n/a (wsrelay not importable: {e})"
    try:
        parseConfig(wsrelayConfig(1, 2, fanout, dataPath), "bench.ini")
    except ConfigError as e:
        if "unknown" in str(e):
            what = "fan-out" if fanout else f"data_path = {dataPath}"
            return f"n/a ({what} not built)"
        return f"n/a ({e})"
    return None


def handshake(port: int, path: str, timeout: float = 10) -> bytes:
    """
    Do one WebSocket opening handshake by hand and close the socket.

    @return: The response's status line.
    """
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode("ascii")
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        head = b""
        while b"\r\n" not in head:
            data = s.recv(4096)
            if not data:
                break
            head += data
    return head.split(b"\r\n", 1)[0]


@dataclass
class Running:
    """
    A started target.

    @ivar url: Where clients connect.
    @ivar pids: The proxy's processes (empty for C{direct}).
    @ivar process: The proxy's main process.
    @ivar logPath: Its log (standard output and error).
    @ivar profiler: A profiler attached to the proxy, which ends with it.
    """

    name: str
    url: str
    pids: list[int] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None
    logPath: Path | None = None
    profiler: subprocess.Popen[bytes] | None = None

    def logTail(self, lines: int = 5) -> str:
        """
        The last lines of the proxy's log, for error messages.
        """
        if self.logPath is None or not self.logPath.exists():
            return ""
        text = self.logPath.read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:])

    def stop(self) -> None:
        """
        Stop the proxy (SIGTERM, then SIGKILL after 10 seconds), and wait
        for its profiler to write its output.
        """
        process = self.process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self.profiler is not None:
            try:
                self.profiler.wait(30)
            except subprocess.TimeoutExpired:
                self.profiler.kill()
                self.profiler.wait()


def _launch(
    name: str,
    command: Sequence[str],
    work: Path,
    url: str,
    port: int,
    path: str,
    environ: Mapping[str, str] | None = None,
) -> Running:
    """
    Start a proxy, wait until it answers a handshake on C{path}, and find
    its processes.

    @param environ: Variables added to the proxy's environment.
    @raise TargetFailed: If it exits, or does not answer within 30 seconds.
    """
    logPath = work / f"{name}.log"
    with open(logPath, "wb") as log:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=work,
            env=None if environ is None else {**os.environ, **environ},
        )
    running = Running(name, url, [process.pid], process, logPath)
    deadline = time.monotonic() + 30
    status = b""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise TargetFailed(
                f"{name} exited with {process.returncode}: {running.logTail()}"
            )
        try:
            status = handshake(port, path)
        except OSError:
            time.sleep(0.05)
            continue
        if b" 101 " in status + b" ":
            running.pids = processTree(process.pid)
            return running
        time.sleep(0.05)
    running.stop()
    raise TargetFailed(f"{name} did not answer a handshake: {status!r}")


def start(
    name: str,
    work: Path,
    backendPort: int,
    fanout: bool,
    connections: int,
    pin: Sequence[str] = (),
    maxMessageSize: int = 16777216,
    reactor: str | None = None,
    writeDelay: float | None = None,
    environ: Mapping[str, str] | None = None,
) -> Running:
    """
    Start a target in front of a backend (or fan-out source) on loopback.

    @param name: One of L{TARGETS}.
    @param work: A fresh folder for configuration files and logs.
    @param backendPort: The echo backend's or the source's port.
    @param fanout: Whether this is a fan-out scenario (route L{FANOUT_PATH}).
    @param connections: Client connections the proxy must hold at once.
    @param pin: A command prefix that pins the proxy to its CPU.
    @param maxMessageSize: wsrelay's C{max_message_size}.
    @param reactor: wsrelay's reactor (C{twistd -r NAME}), or L{None} for
        its default.
    @param writeDelay: wsrelay's fan-out C{write_delay} (milliseconds), or
        L{None} for its default.
    @param environ: Variables added to the proxy's environment.
    @raise TargetUnavailable: The target cannot run here.
    @raise TargetFailed: It did not start.
    """
    path = FANOUT_PATH if fanout else "/"
    if name == "direct":
        return Running(name, f"ws://127.0.0.1:{backendPort}{path}")
    port = freePort()
    url = f"ws://127.0.0.1:{port}{path}"
    work.mkdir(parents=True, exist_ok=True)
    if name == "nginx":
        program = findProgram("nginx")
        if program is None:
            raise TargetUnavailable("n/a (nginx not installed)")
        config = work / "nginx.conf"
        config.write_text(nginxConfig(work, port, backendPort, connections))
        command = [program, "-p", str(work), "-c", str(config)]
        command += ["-e", str(work / "nginx-error.log")]
    elif name == "haproxy":
        program = findProgram("haproxy")
        if program is None:
            raise TargetUnavailable("n/a (haproxy not installed)")
        config = work / "haproxy.cfg"
        config.write_text(haproxyConfig(port, backendPort, connections))
        command = [program, "-db", "-f", str(config)]
    elif name in ("wsrelay", "wsrelay-message", "wsrelay-workers"):
        dataPath = "message" if name == "wsrelay-message" else None
        if dataPath and fanout:
            raise TargetUnavailable("n/a (data_path is for proxy mode)")
        if why := missing(fanout, dataPath):
            raise TargetUnavailable(why)
        workers, adminPort = 1, None
        if name == "wsrelay-workers":
            workers, adminPort, pin = 2, freePort(), ()
        config = work / "wsrelay.ini"
        config.write_text(
            wsrelayConfig(
                port,
                backendPort,
                fanout,
                dataPath,
                workers,
                adminPort,
                maxMessageSize,
                writeDelay,
            )
        )
        command = wsrelayCommand(config, reactor)
        running = _launch(name, [*pin, *command], work, url, port, path, environ)
        if adminPort is not None:
            _waitForWorkers(running, adminPort, workers)
        return running
    elif name in ("twisted", "ownsockets", "ownsockets-level", "ownsockets-features"):
        if fanout:
            raise TargetUnavailable(f"n/a ({name} has no fan-out)")
        command = [sys.executable, "-m", "bench.floor", str(port), str(backendPort)]
        if name == "ownsockets-features":
            command[2] = "bench.ownfeatures"
        elif name != "twisted":
            command[2] = "bench.ownsockets"
            command.append("level" if name.endswith("-level") else "edge")
        # bench.floor imports bench, wherever the suite runs from.
        environ = {**(environ or {}), "PYTHONPATH": str(Path(__file__).parent.parent)}
    else:
        raise ValueError(f"unknown target {name!r}")
    return _launch(name, [*pin, *command], work, url, port, path, environ)


def wsrelayCommand(config: Path, reactor: str | None = None) -> list[str]:
    """
    The command that runs wsrelay in the foreground on C{config}, as users
    run it (C{twistd wsrelay}), on C{reactor} (C{twistd -r}) when given.
    """
    twistd = str(Path(sys.executable).with_name("twistd"))
    chosen = [] if reactor is None else ["-r", reactor]
    return [twistd, "-n", "--pidfile=", *chosen, "wsrelay", "--config", str(config)]


def _waitForWorkers(running: Running, adminPort: int, count: int) -> None:
    """
    Wait until C{count} wsrelay workers answer on the admin listener (so
    that each takes its share of the connections), then find their
    processes.

    @raise TargetFailed: If they do not within 30 seconds.
    """
    deadline = time.monotonic() + 30
    rows: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{adminPort}/status", timeout=5
            ) as answer:
                rows = json.load(answer).get("workers", [])
        except OSError:
            rows = []
        if len(rows) == count and all("error" not in r for r in rows):
            assert running.process is not None
            running.pids = processTree(running.process.pid)
            return
        time.sleep(0.05)
    running.stop()
    raise TargetFailed(f"{running.name}: {count} workers did not start: {rows}")


def versions() -> dict[str, str]:
    """
    The versions of what the benchmark measures and runs on, for the
    table's header.
    """
    found: dict[str, str] = {}
    for program, flag in (("nginx", "-v"), ("haproxy", "-v")):
        path = findProgram(program)
        if path is None:
            found[program] = "not installed"
            continue
        result = subprocess.run([path, flag], capture_output=True, text=True)
        words = (result.stdout + result.stderr).split()
        # "nginx version: nginx/1.22.1", "HAProxy version 2.6.12-1 2023/...".
        found[program] = words[2].split("/")[-1] if len(words) > 2 else "unknown"
    for module in ("twisted", "autobahn", "picows", "uvloop"):
        try:
            found[module] = __import__(module).__version__
        except ImportError:
            found[module] = "not installed"
    try:
        from autobahn.websocket import USES_NVX
    except ImportError:
        found["NVX"] = "unknown"
    else:
        found["NVX"] = "on" if USES_NVX else "off"
    return found
