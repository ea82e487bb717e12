"""
Backends that can be killed, a relay run as users run it, and clients that
count what they get: the pieces of C{tests.test_faults} and
C{bench/soak.py}.

Run as a program, this module is a backend process::

    python tests/support/faultbackend.py echo PORT
    python tests/support/faultbackend.py source PORT [INTERVAL [SIZE]]

It listens on C{127.0.0.1:PORT} (C{0}: a port the system picks) and
prints the port, one line, once it listens, so that it can be killed with
C{SIGKILL} and started again on the same port.  C{echo} sends every
message back.  C{source}
sends every connection the same text message every C{INTERVAL} seconds
(default 0.005): the tick of the system-wide monotonic clock
(C{monotonic_ns() // INTERVAL}), then C{SIZE} bytes of padding, so the
numbers keep growing across restarts and across processes.

Imported, it drives such processes from asyncio code: L{BackendProcess},
L{RelayProcess} (C{twistd -n wsrelay --config FILE} in a subprocess, whose
memory and descriptors are read from C{/proc}), and the clients
L{EchoTalker} and L{TickListener}.
"""

from __future__ import annotations

import asyncio
import os
import re
import resource
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed, InvalidStatus

#: Seconds a process has to start, a client to connect, a reply to come.
TIMEOUT = 10.0

#: The longest interval between two looks at a condition waited for (see
#: L{backoff}), and between a load client's connection attempts.
POLL = 0.02

#: Seconds an echo client waits for the echo of its last number before it
#: sends another.
RESEND = 1.0

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
SCRIPT = os.path.abspath(__file__)


# The backend program.


async def _serveEcho(port: int) -> None:
    """
    Serve the echo backend until killed.
    """

    async def echo(connection: ServerConnection) -> None:
        try:
            async for message in connection:
                await connection.send(message)
        except ConnectionClosed:
            pass

    async with serve(
        echo, "127.0.0.1", port, compression=None, max_size=None, ping_interval=None
    ) as server:
        print(server.sockets[0].getsockname()[1], flush=True)
        await server.serve_forever()


async def _serveSource(port: int, interval: float, size: int) -> None:
    """
    Serve the ticking source until killed.
    """

    async def hold(connection: ServerConnection) -> None:
        await connection.wait_closed()

    async with serve(
        hold, "127.0.0.1", port, compression=None, max_size=None, ping_interval=None
    ) as server:
        print(server.sockets[0].getsockname()[1], flush=True)
        step = max(1, int(interval * 1e9))
        padding = " " + "x" * size if size else ""
        tick = time.monotonic_ns() // step
        while True:
            tick = max(tick + 1, time.monotonic_ns() // step)
            delay = (tick * step - time.monotonic_ns()) / 1e9
            if delay > 0:
                await asyncio.sleep(delay)
            broadcast(server.connections, f"{tick}{padding}")


def main(argv: Sequence[str]) -> None:
    """
    Run the backend the command line names.
    """
    mode, port, *rest = argv
    if mode == "echo":
        asyncio.run(_serveEcho(int(port)))
    elif mode == "source":
        interval = float(rest[0]) if rest else 0.005
        size = int(rest[1]) if len(rest) > 1 else 0
        asyncio.run(_serveSource(int(port), interval, size))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


# Waiting.


async def waitUntil(
    predicate: Callable[[], bool], what: str, timeout: float = TIMEOUT
) -> None:
    """
    Poll C{predicate} until it holds.

    @raise AssertionError: After C{timeout} seconds without it holding,
        naming C{what} was waited for.
    """
    deadline = time.monotonic() + timeout
    for delay in backoff():
        if predicate():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g}s")
        await asyncio.sleep(delay)


def backoff() -> Iterator[float]:
    """
    @return: The intervals between two looks at another process's state:
        1 ms, doubled each time up to L{POLL}.
    """
    delay = 0.001
    while True:
        yield delay
        delay = min(delay * 2, POLL)


# Processes.


def residentBytes(pid: int) -> int:
    """
    @return: The resident set size of process C{pid} (C{VmRSS}), in bytes.
    """
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def openDescriptors(pid: int) -> int:
    """
    @return: How many file descriptors process C{pid} has open.
    """
    return len(os.listdir(f"/proc/{pid}/fd"))


class BackendProcess:
    """
    One backend program in a subprocess, restartable on its port.

    @ivar port: The port, once first started.
    @ivar starts: How many times it was started.
    @ivar kills: How many times it was killed.
    """

    def __init__(self, mode: str, *options: str) -> None:
        self.mode = mode
        self.options = options
        self.port = 0
        self.starts = 0
        self.kills = 0
        self._process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        """
        Its C{ws://} URL.
        """
        return f"ws://127.0.0.1:{self.port}/"

    @property
    def running(self) -> bool:
        """
        Whether the process is alive.
        """
        return self._process is not None and self._process.returncode is None

    async def start(self) -> None:
        """
        Start the process, on its port if it had one, and wait until it
        listens.
        """
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            SCRIPT,
            self.mode,
            str(self.port),
            *self.options,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
        )
        self._process = process
        assert process.stdout is not None
        try:
            line = await asyncio.wait_for(process.stdout.readline(), TIMEOUT)
        except TimeoutError:
            line = b""
        if not line.strip().isdigit():
            await self.stop()
            raise AssertionError(
                f"{self.mode} backend did not start on port {self.port}"
            )
        self.port = int(line)
        self.starts += 1

    async def kill(self) -> None:
        """
        C{SIGKILL} the process and wait until it is gone.
        """
        process = self._process
        assert process is not None and process.returncode is None
        process.send_signal(signal.SIGKILL)
        await process.wait()
        self.kills += 1

    async def stop(self) -> None:
        """
        End the process if it runs.
        """
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGKILL)
            await process.wait()


class RelayProcess:
    """
    C{twistd --pidfile= -n wsrelay --config FILE} in a subprocess, listening
    on a loopback port the system picks.

    @ivar port: Its client port, once started.
    @ivar pid: Its process ID, once started.
    @ivar log: The path of its log (its standard output).
    @ivar openFiles: The soft and hard C{RLIMIT_NOFILE} the relay starts
        with (set in the child before it runs twistd), or L{None} for this
        process's.
    @ivar environment: Variables added to its environment.
    """

    _PORT = re.compile(r"FrontendFactory starting on (\d+)")

    def __init__(
        self,
        configText: str,
        openFiles: tuple[int, int] | None = None,
        environment: Mapping[str, str] | None = None,
    ) -> None:
        self.environment = dict(environment or {})
        self.directory = tempfile.mkdtemp(prefix="wsrelay-faults-")
        self.config = os.path.join(self.directory, "relay.ini")
        self.log = os.path.join(self.directory, "twistd.log")
        with open(self.config, "w") as f:
            f.write(
                configText.replace(
                    "[relay]", "[relay]\nlisten = tcp:0:interface=127.0.0.1", 1
                )
            )
        self.port = 0
        self.pid = 0
        self.openFiles = openFiles
        self._process: asyncio.subprocess.Process | None = None

    def _limit(self) -> None:
        """
        In the child, before it runs twistd: set L{openFiles}.
        """
        if self.openFiles is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, self.openFiles)

    async def start(self) -> None:
        """
        Start the relay and wait until it listens.
        """
        with open(self.log, "wb") as log:
            self._process = await asyncio.create_subprocess_exec(
                TWISTD,
                "--pidfile=",
                "-n",
                "wsrelay",
                "--config",
                self.config,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                preexec_fn=self._limit,
                env={**os.environ, **self.environment},
            )
        self.pid = self._process.pid
        found: list[int] = []

        def listening() -> bool:
            assert self._process is not None
            if self._process.returncode is not None:
                raise AssertionError(f"twistd exited early:\n{self.logText()}")
            match = self._PORT.search(self.logText())
            if match:
                found.append(int(match.group(1)))
            return bool(found)

        await waitUntil(listening, "relay listening", TIMEOUT * 3)
        self.port = found[0]

    def logText(self) -> str:
        """
        @return: What the relay logged so far.
        """
        with open(self.log, errors="replace") as f:
            return f.read()

    def errors(self) -> list[str]:
        """
        @return: The log lines that tell of an unhandled error or a
            traceback.
        """
        return [
            line
            for line in self.logText().splitlines()
            if "Traceback" in line or "Unhandled" in line or "CRITICAL" in line
        ]

    def rss(self) -> int:
        """
        @return: The relay's resident memory, in bytes.
        """
        return residentBytes(self.pid)

    def descriptors(self) -> int:
        """
        @return: The relay's open file descriptors.
        """
        return openDescriptors(self.pid)

    async def stop(self) -> int | None:
        """
        C{SIGTERM} the relay and wait for it to exit (C{SIGKILL} if it does
        not within the time limit).

        @return: Its exit status.
        """
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return None if process is None else process.returncode
        process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(process.wait(), TIMEOUT * 3)
        except TimeoutError:
            process.send_signal(signal.SIGKILL)
            await process.wait()
            return None


# Clients.


async def openClient(url: str) -> ClientConnection:
    """
    Connect a C{websockets} client, without compression or size limit.
    """
    return await connect(
        url,
        open_timeout=TIMEOUT,
        compression=None,
        max_size=None,
        proxy=None,
        ping_interval=None,
        close_timeout=TIMEOUT,
    )


@dataclass
class Tally:
    """
    What one client saw of a numbered stream.

    @ivar received: The numbers received, in order.
    @ivar duplicated: Numbers received more than once.
    @ivar reordered: Numbers received after a higher one (and not before).
    @ivar closes: The close codes of the connections the relay (or the
        network) closed, in order: 1006 for a connection lost without a
        close frame.
    @ivar connects: Connections opened.
    @ivar refusals: Handshakes refused (the status codes), while
        reconnecting.
    """

    received: list[int] = field(default_factory=list)
    duplicated: int = 0
    reordered: int = 0
    closes: list[int | None] = field(default_factory=list)
    connects: int = 0
    refusals: list[int] = field(default_factory=list)
    _seen: set[int] = field(default_factory=set)

    def got(self, number: int) -> None:
        """
        Count a number received.
        """
        if number in self._seen:
            self.duplicated += 1
        elif self.received and number < self.received[-1]:
            self.reordered += 1
        self._seen.add(number)
        self.received.append(number)

    @property
    def last(self) -> int:
        """
        The last number received, or -1.
        """
        return self.received[-1] if self.received else -1

    def strictlyIncreasing(self) -> bool:
        """
        @return: Whether every number came after a smaller one.
        """
        r = self.received
        return all(a < b for a, b in zip(r, r[1:], strict=False))


class _Client:
    """
    A client that stays connected: it reconnects when the relay closes it,
    counting the closes, until told to stop.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.tally = Tally()
        self.connection: ClientConnection | None = None
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """
        Connect, and keep connected.
        """
        self._task = asyncio.get_running_loop().create_task(self._run())

    @property
    def connected(self) -> bool:
        """
        Whether a connection is open now.
        """
        c = self.connection
        return c is not None and c.close_code is None

    async def _run(self) -> None:
        tally = self.tally
        while not self._stopping:
            try:
                connection = await openClient(self.url)
            except InvalidStatus as e:
                # 502/503 while every backend is down: try again.
                tally.refusals.append(e.response.status_code)
                await asyncio.sleep(POLL)
                continue
            except (OSError, TimeoutError):
                tally.refusals.append(0)
                await asyncio.sleep(POLL)
                continue
            tally.connects += 1
            self.connection = connection
            try:
                if not self._stopping:
                    await self._session(connection)
            except ConnectionClosed:
                pass
            finally:
                if self._stopping:
                    await connection.close()
                self.connection = None
            if connection.close_code != 1000 or not self._stopping:
                tally.closes.append(connection.close_code)

    async def _session(self, connection: ClientConnection) -> None:
        raise NotImplementedError()

    async def stop(self) -> None:
        """
        Close the connection (1000) and stop reconnecting.
        """
        self._stopping = True
        c = self.connection
        if c is not None:
            await c.close()
        if self._task is not None:
            await asyncio.wait_for(self._task, TIMEOUT)


class EchoTalker(_Client):
    """
    A client of an echo backend: sends numbered text messages at a steady
    rate, its numbers going on across reconnections, and counts the echoes.

    @ivar sent: How many numbers were taken (the next number to send).
    @ivar unsent: How many of them could not be sent (the connection was
        closed).
    """

    def __init__(self, url: str, interval: float, size: int = 0) -> None:
        super().__init__(url)
        self.interval = interval
        self.sent = 0
        self.unsent = 0
        self.sending = True
        self._padding = " " + "x" * size if size else ""

    async def _session(self, connection: ClientConnection) -> None:
        reader = asyncio.get_running_loop().create_task(self._read(connection))
        try:
            while not self._stopping and not reader.done():
                if self.sending:
                    await self._send(connection)
                await asyncio.sleep(self.interval)
            if self._stopping:
                await connection.close()
        finally:
            await reader

    async def _send(self, connection: ClientConnection) -> int:
        """
        Send the next number (taken before sending: C{finish} may send
        while a send waits for the transport).

        @return: The number sent.
        @raise ConnectionClosed: When it could not be sent (and is then not
            counted as sent).
        """
        number = self.sent
        self.sent += 1
        try:
            await connection.send(f"{number}{self._padding}")
        except ConnectionClosed:
            self.unsent += 1
            raise
        return number

    async def _read(self, connection: ClientConnection) -> None:
        try:
            async for message in connection:
                assert isinstance(message, str)
                self.tally.got(int(message.split(" ", 1)[0]))
        except ConnectionClosed:
            pass

    async def finish(self, timeout: float = TIMEOUT) -> None:
        """
        Stop sending, send one last number and wait for its echo: once it
        is back, every echo that is ever coming came (the relay keeps the
        order).  A last number can be lost like any other (in flight when a
        backend dies, or on a connection closed meanwhile): then send
        another, on the next connection if need be.

        @raise AssertionError: When no last echo came within C{timeout}.
        """
        self.sending = False
        deadline = time.monotonic() + timeout
        while True:
            await waitUntil(
                lambda: self.connected, "talker connected", deadline - time.monotonic()
            )
            c = self.connection
            assert c is not None
            try:
                final = await self._send(c)
            except ConnectionClosed:
                continue
            retry = min(time.monotonic() + RESEND, deadline)
            await waitUntil(
                lambda c=c, final=final, retry=retry: (  # type: ignore[misc]
                    self.tally.last >= final
                    or c.close_code is not None
                    or time.monotonic() > retry
                ),
                "last echo",
                deadline - time.monotonic(),
            )
            if self.tally.last >= final:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"last echo: not within {timeout:g}s")

    @property
    def lost(self) -> int:
        """
        Numbers sent that never came back.
        """
        return self.sent - self.unsent - len(set(self.tally.received))


class TickListener(_Client):
    """
    A client of a fan-out route whose source ticks: counts the ticks.
    """

    async def _session(self, connection: ClientConnection) -> None:
        async for message in connection:
            assert isinstance(message, str)
            self.tally.got(int(message.split(" ", 1)[0]))


if __name__ == "__main__":
    main(sys.argv[1:])
