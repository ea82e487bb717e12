"""
Relays upgraded in place (C{--takeover}): C{twistd wsrelay} processes
started on one configuration file, and a stream of new WebSocket
connections held across the upgrade.
"""

from __future__ import annotations

import os
import ssl
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.support.processes import JSONRelay
from tests.support.waiting import TIMEOUT, pollUntil

#: Seconds between two new connections of a L{Stream}.
INTERVAL = 0.02


class Relay(JSONRelay):
    """
    One C{twistd wsrelay} process with JSON logs, killed (with its workers)
    at the end of the test.
    """

    def __init__(self, testCase: Any, config: str, *args: str) -> None:
        directory = os.path.dirname(config)
        number = len(os.listdir(directory))
        logPath = os.path.join(directory, f"twistd-{number}.log")
        super().__init__(testCase, config, logPath, *args)

    def listening(self, workers: int = 1, listeners: int = 1) -> list[int]:
        """
        Wait until worker 0 listens on its C{listeners} listeners, and the
        other workers on theirs.

        @return: Worker 0's ports, in the order of its listeners.
        """
        zero = self.waitFor(
            lambda e: "listening on" in _f(e) and "worker" not in e, listeners
        )
        if workers > 1:
            self.waitFor(
                lambda e: "listening on" in _f(e) and "worker" in e, workers - 1
            )
        return [e["port"] for e in zero]


def _f(event: dict[str, Any]) -> str:
    return str(event.get("log_format", ""))


class Stream:
    """
    A new connection every L{INTERVAL} seconds, each in a thread: it
    completes its handshake, sends a message, receives its echo and closes.

    @ivar done: The number of connections that succeeded.
    @ivar goingAway: The number of connections closed with 1001 after their
        handshake, before their echo: those the old relay accepted as it
        was told to stop (its clients, closed as documented).
    @ivar failures: What went wrong with the others.
    """

    def __init__(self, url: str, context: ssl.SSLContext | None = None) -> None:
        """
        @param context: The clients' TLS context, for a C{wss:} URL: its
            sockets become L{CertificateKeepingSocket}s.
        """
        self._url = url
        self._context = context
        if context is not None:
            context.sslsocket_class = CertificateKeepingSocket
        self.done = 0
        self.goingAway = 0
        self.failures: list[str] = []
        self.certificates: set[bytes] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(32)
        self._futures: list[Future[None]] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            self._futures.append(self._pool.submit(self._one, i))
            i += 1
            # The pace of new connections, not a wait for an event.
            self._stop.wait(INTERVAL)

    def _one(self, i: int) -> None:
        try:
            kwargs: dict[str, Any] = {"open_timeout": TIMEOUT, "compression": None}
            if self._context is not None:
                kwargs["ssl"] = self._context
            with connect(self._url, **kwargs) as c:
                c.send(f"hello {i}")
                answer = c.recv(TIMEOUT)
                if answer != f"hello {i}":
                    raise AssertionError(f"echo {answer!r}")
                certificate = _peerCertificate(c)
            with self._lock:
                self.done += 1
                if certificate is not None:
                    self.certificates.add(certificate)
        except ConnectionClosed as e:
            with self._lock:
                if e.rcvd is not None and e.rcvd.code == 1001:
                    self.goingAway += 1
                else:
                    self.failures.append(f"connection {i}: {e!r}")
        except Exception as e:
            with self._lock:
                self.failures.append(f"connection {i}: {e!r}")

    def waitDone(self, count: int) -> None:
        """
        Wait until C{count} connections succeeded.
        """
        pollUntil(lambda: self.done >= count, f"{count} connections", TIMEOUT * 3)

    def stop(self) -> None:
        """
        Stop opening connections, and wait for those under way.

        Each connection bounds its own steps (its handshake, its echo and
        its close handshake, L{TIMEOUT} each) and records what went wrong
        in L{failures}; the wait for all of them is longer than that, so
        a slow connection is reported as what it is, not as this wait's
        timeout.

        @raise AssertionError: If some are still under way even so.
        """
        self._stop.set()
        self._thread.join(TIMEOUT)
        if self._thread.is_alive():
            raise AssertionError(f"the stream did not stop within {TIMEOUT}s")
        _, pending = wait(self._futures, TIMEOUT * 6)
        if pending:
            raise AssertionError(f"{len(pending)} connections still under way")
        self._pool.shutdown()


class CertificateKeepingSocket(ssl.SSLSocket):
    """
    A client's TLS socket that keeps the server's certificate as its
    handshake ends.

    A C{websockets} client's reading thread closes its socket as soon as
    the server closes the connection (the old relay closing its clients
    with 1001 as it stops), and a closed L{ssl.SSLSocket} no longer has
    the certificate (C{getpeercert} then raises L{AttributeError}): read
    after the echo, it would turn a connection that succeeded into a
    failure whenever that close came in between.

    @ivar peerCertificate: The server's certificate (DER), once the
        handshake is done.
    """

    peerCertificate: bytes | None = None

    def do_handshake(self, block: bool = False) -> None:
        """
        Do the handshake and keep the certificate it brought.
        """
        super().do_handshake(block)
        self.peerCertificate = self.getpeercert(binary_form=True)


def _peerCertificate(c: ClientConnection) -> bytes | None:
    """
    @return: The certificate the server of C{c} presented (kept by
        L{CertificateKeepingSocket}, so even once C{c} is closed), or
        L{None} over plain TCP.
    """
    certificate: bytes | None = getattr(c.socket, "peerCertificate", None)
    return certificate


def held(url: str, count: int, context: ssl.SSLContext | None = None) -> list[Any]:
    """
    Open C{count} connections that stay open, each after an echo.

    @return: For each, a L{Future} of its close code (L{None} when it was
        dropped without one).
    """
    results = []
    for _ in range(count):
        kwargs: dict[str, Any] = {"open_timeout": TIMEOUT, "compression": None}
        if context is not None:
            kwargs["ssl"] = context
        c = connect(url, legacy=True, **kwargs)
        c.send("held")
        assert c.recv(TIMEOUT) == "held"
        future: Future[int | None] = Future()

        def wait(c: ClientConnection = c, future: Future[int | None] = future) -> None:
            try:
                c.recv(TIMEOUT * 6)
            except ConnectionClosed as e:
                future.set_result(None if e.rcvd is None else e.rcvd.code)
            except Exception as e:
                future.set_exception(e)
            else:
                future.set_exception(AssertionError("a message came"))

        threading.Thread(target=wait, daemon=True).start()
        results.append(future)
    return results
