"""
A real C{redis-server} for a test: its own port (chosen by the system) and
directory, persistence off, optionally with a password or TLS; stopped,
killed and restarted on the same port for the failure tests.

The system's own Redis (the Debian package starts one on 6379) is never
used.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
from collections.abc import Sequence
from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from tests.support.tls import makeCertificates
from tests.support.waiting import TIMEOUT, pollUntil, waitFor
from wsrelay.interfaces import ISource, ISourceChannel, ISourceContext
from wsrelay.redis.client import (
    RedisClient,
    parseRedisURL,
    redisBackoff,
    redisEndpoint,
)

#: The server's program, or L{None} when it is not installed.
REDIS_SERVER = shutil.which("redis-server")

#: Why a test that needs a Redis server skips when there is none.
MISSING = (
    "redis-server is not installed (Debian package redis-server, which"
    " `make test` installs): the test needs a real Redis"
)

#: Attempts at starting a server on a fresh port before giving up (a port
#: picked free may be taken by someone else before the server binds it).
ATTEMPTS = 5


def freePort() -> int:
    """
    @return: A loopback TCP port the system just gave out as free.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def requireRedis(testCase: Any) -> None:
    """
    Skip C{testCase} with the reason when C{redis-server} cannot be had.
    """
    if REDIS_SERVER is None:
        testCase.skipTest(MISSING)


class RedisServer:
    """
    One C{redis-server} process bound to 127.0.0.1.

    @ivar port: Its port (TLS only, when made with C{tls}).
    @ivar directory: Its working directory (also holds its log and, with
        C{tls}, the certificates).
    @ivar password: The C{requirepass} password, or L{None}.
    @ivar certificates: With C{tls}, the paths of C{ca}, C{cert} and
        C{key} (PEM); else an empty dict.
    """

    def __init__(
        self,
        directory: str | None = None,
        password: str | None = None,
        tls: bool = False,
    ) -> None:
        """
        @param directory: Where it works, a new temporary one by default.
        @param password: Its C{requirepass}, none by default.
        @param tls: Whether it speaks only TLS (C{rediss://}), with a
            certificate for 127.0.0.1 signed by a CA made here.
        """
        if REDIS_SERVER is None:
            raise RuntimeError(MISSING)
        self.directory = directory or tempfile.mkdtemp(prefix="redis-")
        self.password = password
        self.tls = tls
        self.certificates: dict[str, str] = (
            makeCertificates(self.directory, ["127.0.0.1"]) if tls else {}
        )
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._log = os.path.join(self.directory, "redis.log")

    @property
    def url(self) -> str:
        """
        Its URL, C{redis://} or C{rediss://}, with the password.
        """
        scheme = "rediss" if self.tls else "redis"
        auth = f":{self.password}@" if self.password is not None else ""
        return f"{scheme}://{auth}127.0.0.1:{self.port}/0"

    def _command(self) -> list[str]:
        assert REDIS_SERVER is not None
        command = [REDIS_SERVER, "--bind", "127.0.0.1", "--save", ""]
        command += ["--appendonly", "no", "--dir", self.directory]
        command += ["--logfile", self._log]
        if self.tls:
            c = self.certificates
            command += ["--port", "0", "--tls-port", str(self.port)]
            command += ["--tls-cert-file", c["cert"], "--tls-key-file", c["key"]]
            command += ["--tls-ca-cert-file", c["ca"], "--tls-auth-clients", "no"]
        else:
            command += ["--port", str(self.port)]
        if self.password is not None:
            command += ["--requirepass", self.password]
        return command

    def launch(self) -> None:
        """
        Start the process on L{port} (picking a free one if it has none
        yet), without waiting for it to answer.
        """
        if not self.port:
            self.port = freePort()
        self.process = subprocess.Popen(
            self._command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def exited(self) -> bool:
        """
        @return: Whether the process launched last has exited.
        """
        return self.process is None or self.process.poll() is not None

    def answers(self) -> bool:
        """
        @return: Whether the server answers C{PING} (any reply: C{NOAUTH}
            from a server with a password is an answer too).
        """
        try:
            raw = socket.create_connection(("127.0.0.1", self.port), timeout=1)
        except OSError:
            return False
        try:
            sock: socket.socket = raw
            if self.tls:
                context = ssl.create_default_context(cafile=self.certificates["ca"])
                sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
            sock.sendall(b"PING\r\n")
            return sock.recv(64)[:1] in (b"+", b"-")
        except OSError:
            return False
        finally:
            raw.close()

    def _ready(self) -> bool:
        """
        @return: Whether it answers; or, once the process has exited (its
            port taken), L{True} too, for L{_settle} to look at.
        """
        return self.exited() or self.answers()

    def _settle(self, attempt: int, keepPort: bool) -> bool:
        """
        After a wait: whether the server is up, or else forget the port
        for another attempt.

        @raise RuntimeError: When the process exited and no attempt is left.
        """
        if not self.exited():
            return True
        if attempt + 1 >= ATTEMPTS or keepPort:
            raise RuntimeError(f"redis-server did not start: {self.logTail()}")
        self.port = 0
        return False

    async def start(self, keepPort: bool = False) -> None:
        """
        Launch it and wait on the reactor until it answers, on another
        fresh port if its port proved taken (at most L{ATTEMPTS} times).

        @param keepPort: Start on the port it had (a restart): fail rather
            than move.
        """
        for attempt in range(ATTEMPTS):
            self.launch()
            await waitFor(self._ready)
            if self._settle(attempt, keepPort):
                return

    def startBlocking(self) -> None:
        """
        L{start}, blocking: for a benchmark or a synchronous test (never
        from the reactor thread).
        """
        for attempt in range(ATTEMPTS):
            self.launch()
            pollUntil(self._ready, "redis-server answering PING")
            if self._settle(attempt, False):
                return

    def kill(self) -> None:
        """
        Kill the process at once (SIGKILL), as a crash would.
        """
        self._end(signal.SIGKILL)

    def stop(self) -> None:
        """
        Stop the process (SIGTERM: it exits at once without persistence),
        and wait for it; a no-op when it is not running.
        """
        self._end(signal.SIGTERM)

    def _end(self, sig: int) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(TIMEOUT)

    async def restart(self) -> None:
        """
        Kill it and start it again, empty, on the same port.
        """
        self.kill()
        await self.start(keepPort=True)

    def logTail(self) -> str:
        """
        @return: The end of its log, for a failure message.
        """
        try:
            with open(self._log, encoding="utf-8", errors="replace") as f:
                return f.read()[-2000:]
        except OSError as e:
            return f"(no log: {e})"

    def transaction(self, *commands: tuple[str | bytes, ...]) -> Any:
        """
        Run C{commands} at once, as one C{MULTI}/C{EXEC} transaction: no
        other client's command runs between them.

        @return: C{EXEC}'s reply: each command's.
        """
        return self._session([("MULTI",), *commands, ("EXEC",)])[-1]

    def call(self, *args: str | bytes) -> Any:
        """
        Run one command on it over a blocking socket of its own, for
        arranging or reading a test's data beside the client under test
        (a quick loopback round trip; the server never blocks on it).

        @return: The reply, parsed (bytes, int, list, L{None}, or a
            L{ReplyError}).
        """
        return self._session([args])[-1]

    def _session(self, commands: list[tuple[str | bytes, ...]]) -> list[Any]:
        """
        Run C{commands} in order on one new connection (after C{AUTH}).

        @return: Their replies.
        """
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT)
        sock: socket.socket = raw
        try:
            if self.tls:
                context = ssl.create_default_context(cafile=self.certificates["ca"])
                sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
            reader = _Reader(sock)
            if self.password is not None:
                sock.sendall(_encode(("AUTH", self.password)))
                reply = reader.read()
                if isinstance(reply, ReplyError):
                    raise reply
            sock.sendall(b"".join(_encode(c) for c in commands))
            return [reader.read() for _ in commands]
        finally:
            sock.close()


async def startRedis(
    testCase: Any, password: str | None = None, tls: bool = False
) -> RedisServer:
    """
    Start a L{RedisServer} in C{testCase}'s temporary directory, stopped
    at its end; skip the test when C{redis-server} is not installed.
    """
    requireRedis(testCase)
    directory = os.path.abspath(testCase.mktemp())
    os.makedirs(directory)
    server = RedisServer(directory, password=password, tls=tls)
    testCase.addCleanup(server.stop)
    await server.start()
    return server


class ReplyError(Exception):
    """
    An error reply (C{-ERR ...}) from L{RedisServer.call}.
    """


def _encode(args: tuple[str | bytes, ...]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a.encode("utf-8") if isinstance(a, str) else a
        parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(parts)


class _Reader:
    """
    A blocking RESP2 reply reader over a socket.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._file = sock.makefile("rb")

    def read(self) -> Any:
        line = self._file.readline()
        if not line:
            raise ConnectionError("redis-server closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest
        if kind == b"-":
            return ReplyError(rest.decode("utf-8", "replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self._file.read(n + 2)
            return data[:-2]
        if kind == b"*":
            n = int(rest)
            if n < 0:
                return None
            return [self.read() for _ in range(n)]
        raise ValueError(f"bad reply line {line!r}")


@implementer(ISourceChannel)
class FakeChannel:
    """
    An L{ISourceChannel} that keeps what it was given.

    @ivar keep: What it keeps, for a source to preload.
    @ivar batches: Each C{deliver} call's messages.
    @ivar states: Each state it was told of.
    """

    def __init__(self, key: str = "", name: str = "feed", keep: int = 0) -> None:
        self.name = name
        self.key = key
        self.keep = keep
        self.batches: list[list[tuple[int, bytes, str | None]]] = []
        self.states: list[str] = []
        #: Each C{preload} call's messages.
        self.preloads: list[list[tuple[int, bytes, str | None]]] = []

    def preload(self, messages: Sequence[tuple[int, bytes, str | None]]) -> None:
        """
        Keep a preload, and the state it came in.
        """
        self.preloads.append(list(messages))

    def deliver(self, messages: Sequence[tuple[int, bytes, str | None]]) -> None:
        """
        Keep a delivery.
        """
        self.batches.append(list(messages))

    def stateChanged(self, state: str) -> None:
        """
        Keep a state.
        """
        self.states.append(state)

    @property
    def messages(self) -> list[tuple[int, bytes, str | None]]:
        """
        Every message delivered, in order.
        """
        return [m for batch in self.batches for m in batch]

    @property
    def payloads(self) -> list[bytes]:
        """
        Every payload delivered, in order.
        """
        return [m[1] for m in self.messages]


@implementer(ISourceContext)
class FakeContext:
    """
    An L{ISourceContext} lending the global reactor.
    """

    reactor = reactor
    route = "feed"

    def websocket(self, channel: ISourceChannel) -> ISource:
        """
        Not used by a reading source.
        """
        raise NotImplementedError()


def makeClient(
    testCase: TestCase, url: str, caFile: str | None = None, password: str | None = None
) -> RedisClient:
    """
    A started L{RedisClient} for C{url} with quick retries, stopped at the
    end of C{testCase}.
    """
    address = parseRedisURL(url)
    if password is not None:
        address = type(address)(
            address.host, address.port, address.db, address.tls, None, password
        )
    client = RedisClient(
        reactor,
        address,
        redisEndpoint(reactor, address, caFile),
        "test",
        redisBackoff(0.01, 0.1),
    )
    client.start()
    testCase.addCleanup(client.stop)
    return client
