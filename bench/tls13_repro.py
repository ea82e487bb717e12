"""
Whose is the TLS 1.3 stall of C{websockets}' threaded client?  A bounded
reproduction: C{--count} WebSocket opening handshakes over TLS, one after
another, each with a C{--timeout}; it prints how many got their answer,
how many stalled (no answer in time) and how many failed otherwise.

    python -m bench.tls13_repro [--server S] [--client C] [--tls 1.2|1.3]
                                [--no-tickets] [--count N] [--timeout SECONDS]

Servers (all in this process, on 127.0.0.1, certificates made on the fly):
  - C{relay}: wsrelay with an C{ssl:} listener (Twisted's TLS over
    pyOpenSSL), proxying to a plain C{websockets} echo backend;
  - C{websockets}: C{websockets}' threaded server, stdlib C{ssl};
  - C{websockets-asyncio}: C{websockets}' asyncio server, stdlib C{ssl};
  - C{autobahn}: an Autobahn echo server on a Twisted C{ssl:} endpoint,
    without wsrelay.
Clients:
  - C{websockets}: C{websockets.sync.client.connect}, whose reading
    thread sits in C{recv} on the same C{SSLSocket} its caller sends the
    request on;
  - C{websockets-asyncio}: C{websockets.asyncio.client.connect}, one
    thread;
  - C{raw-threaded}: a stdlib C{ssl} socket with the same pattern as the
    threaded client and nothing else: a thread waits in C{select} and
    C{recv} from the end of the TLS handshake on, while the caller sends
    the request;
  - C{raw}: the same socket used by one thread: send, then read.
C{--no-tickets} makes the stdlib servers (C{websockets},
C{websockets-asyncio}) send no TLS 1.3 session tickets
(C{SSLContext.num_tickets = 0}).

The findings are in docs/reliability.md ("TLS 1.3 and C{websockets}'
threaded client").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import platform
import selectors
import socket
import ssl
import struct
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from importlib.metadata import version
from typing import Any

import OpenSSL
from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.internet.threads import blockingCallFromThread
from websockets.asyncio import client as asyncio_client
from websockets.asyncio import server as asyncio_server
from websockets.sync import client as sync_client
from websockets.sync import server as sync_server

from tests.support.tls import makeCertificates
from wsrelay.config import loadConfig
from wsrelay.service import RelayService

SERVERS = ("relay", "websockets", "websockets-asyncio", "autobahn")
CLIENTS = ("websockets", "websockets-asyncio", "raw-threaded", "raw")

#: Where C{tcpi_bytes_sent} is in Linux's C{struct tcp_info}.
TCPI_BYTES_SENT = 200

#: What a raw client sends: a valid opening handshake.
REQUEST = (
    b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)


def echo(connection: sync_server.ServerConnection) -> None:
    """
    Answer every message with itself.
    """
    for message in connection:
        connection.send(message)


def serverContext(certs: dict[str, str], tickets: bool) -> ssl.SSLContext:
    """
    A stdlib server context for the test certificate.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs["cert"], certs["key"])
    if not tickets:
        context.num_tickets = 0
    return context


def inThread(target: Callable[[], object]) -> None:
    """
    Run C{target} in a daemon thread.
    """
    threading.Thread(target=target, daemon=True).start()


def startTwisted() -> Any:
    """
    Run Twisted's reactor in a daemon thread (once).

    @return: The reactor.
    """
    core: Any = reactor
    if not core.running:
        inThread(lambda: core.run(installSignalHandlers=False))
    return core


def startServer(name: str, certs: dict[str, str], tickets: bool) -> int:
    """
    Start server C{name}.

    @return: Its port.
    """
    if name == "websockets":
        server = sync_server.serve(
            echo, "127.0.0.1", 0, ssl=serverContext(certs, tickets), compression=None
        )
        inThread(server.serve_forever)
        port: int = server.socket.getsockname()[1]
        return port
    if name == "websockets-asyncio":
        ready = threading.Event()
        ports: list[int] = []

        async def asyncEcho(connection: Any) -> None:
            async for message in connection:
                await connection.send(message)

        async def main() -> None:
            context = serverContext(certs, tickets)
            async with asyncio_server.serve(
                asyncEcho, "127.0.0.1", 0, ssl=context, compression=None
            ) as server:
                ports.append(server.sockets[0].getsockname()[1])
                ready.set()
                await server.serve_forever()

        inThread(lambda: asyncio.run(main()))
        ready.wait(30)
        return ports[0]
    if not tickets:
        raise SystemExit("--no-tickets applies to the stdlib servers only")
    listen = (
        f"ssl:0:interface=127.0.0.1:privateKey={certs['key']}:certKey={certs['cert']}"
    )
    twisted = startTwisted()
    if name == "autobahn":
        from autobahn.twisted.websocket import (
            WebSocketServerFactory,
            WebSocketServerProtocol,
        )

        class Echo(WebSocketServerProtocol):
            def onMessage(self, payload: bytes, isBinary: bool) -> None:
                self.sendMessage(payload, isBinary)

        factory = WebSocketServerFactory()
        factory.protocol = Echo
        listening = blockingCallFromThread(
            twisted, lambda: serverFromString(twisted, listen).listen(factory)
        )
        port = listening.getHost().port
        return port
    backend = sync_server.serve(echo, "127.0.0.1", 0, compression=None)
    inThread(backend.serve_forever)
    backendPort = backend.socket.getsockname()[1]
    path = tempfile.mktemp(suffix=".ini")
    with open(path, "w") as f:
        f.write(
            f"[relay]\nlisten = {listen}\n"
            f"[route:r]\npath = /\nbackends = ws://127.0.0.1:{backendPort}/\n"
        )
    relay = RelayService(loadConfig(path), twisted)

    def start() -> Any:
        relay.startService()
        return relay.whenListening()

    (listening,) = blockingCallFromThread(twisted, start)
    port = listening.getHost().port
    return port


def bytesSent(s: socket.socket) -> int:
    """
    How many bytes the kernel has sent on C{s} so far: Linux's
    C{tcp_info.tcpi_bytes_sent} (since Linux 4.19).
    """
    info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    sent: int = struct.unpack_from("Q", info, TCPI_BYTES_SENT)[0]
    return sent


def rawOpen(port: int, context: ssl.SSLContext, timeout: float, threaded: bool) -> str:
    """
    Open a WebSocket over TLS with a bare C{ssl} socket and wait for the
    whole answer to the handshake.

    @param threaded: Read in a second thread that waits in C{select} and
        C{recv} from the end of the TLS handshake on, as C{websockets}'
        threaded client does; otherwise send, then read, in this thread.
    @return: C{"answered"} when the answer came within C{timeout};
        otherwise C{"stalled"}, and for the threaded client whether the
        request ever reached the kernel: C{"stalled, request sent"} when the
        kernel sent bytes after the TLS handshake, C{"stalled, request never
        sent"} when it did not, though C{sendall} returned; C{"hung"} when
        a call did not return within twice C{timeout}.
    """
    raw = socket.create_connection(("127.0.0.1", port), timeout)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s = context.wrap_socket(raw, server_hostname="localhost")
    s.settimeout(None)
    handshakeBytes = bytesSent(s)
    answered = threading.Event()
    stop = threading.Event()
    deadline = time.monotonic() + timeout

    def read() -> None:
        received = b""
        with selectors.DefaultSelector() as poller:
            poller.register(s, selectors.EVENT_READ)
            while not stop.is_set() and time.monotonic() < deadline:
                if not poller.select(0.05):
                    continue
                try:
                    chunk = s.recv(65536)
                except OSError:
                    return
                if not chunk:
                    return
                received += chunk
                if b"\r\n\r\n" in received:
                    answered.set()
                    return

    # A call that never returns (a blocking sendall on a broken SSL object)
    # is ended by shutting TCP down under it.
    hung = threading.Event()

    def watchdog() -> None:
        hung.set()
        with contextlib.suppress(OSError):
            socket.socket.shutdown(s, socket.SHUT_RDWR)

    timer = threading.Timer(2 * timeout, watchdog)
    timer.start()
    try:
        if threaded:
            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            s.sendall(REQUEST)
            if not answered.wait(timeout):
                if bytesSent(s) == handshakeBytes:
                    return "stalled, request never sent"
                return "stalled, request sent"
            return "answered"
        else:
            s.settimeout(timeout)
            s.sendall(REQUEST)
            read()
        return "answered" if answered.is_set() else "stalled"
    except OSError:
        if hung.is_set():
            return "hung"
        raise
    finally:
        timer.cancel()
        stop.set()
        if threaded:
            # The reader may still be inside recv on a stalled connection:
            # closing the socket under it would race too, so shut down TCP
            # first, which wakes it.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(s, socket.SHUT_RDWR)
            reader.join(timeout)
        s.close()


class DiagnosedConnection(sync_client.ClientConnection):
    """
    C{websockets}' threaded client connection, telling whether its request
    reached the kernel when its opening handshake times out.

    @cvar requestSent: After the latest timeout, whether the kernel sent
        any bytes after the TLS handshake (the loop makes one connection
        at a time).
    """

    requestSent: bool | None = None

    def handshake(self, *args: Any, **kwargs: Any) -> None:
        """
        Send the request and wait for the answer, as C{websockets} does;
        note whether the request was sent when the answer does not come.
        """
        before = bytesSent(self.socket)
        try:
            super().handshake(*args, **kwargs)
        except TimeoutError:
            DiagnosedConnection.requestSent = bytesSent(self.socket) != before
            raise


def websocketsOpen(port: int, context: ssl.SSLContext, timeout: float) -> str:
    """
    Open a WebSocket with C{websockets}' threaded client and exchange one
    message.

    @return: C{"answered"}, or when the handshake was not answered within
        C{timeout} C{"stalled, request sent"} or C{"stalled, request never
        sent"} (whether the kernel sent bytes after the TLS handshake).
    """
    DiagnosedConnection.requestSent = None
    try:
        with sync_client.connect(
            f"wss://localhost:{port}/",
            ssl=context,
            open_timeout=timeout,
            create_connection=DiagnosedConnection,
        ) as ws:
            ws.send("ping")
            ws.recv(timeout)
    except TimeoutError:
        if DiagnosedConnection.requestSent is False:
            return "stalled, request never sent"
        return "stalled, request sent"
    return "answered"


def asyncioOpen(port: int, context: ssl.SSLContext, timeout: float) -> str:
    """
    Open a WebSocket with C{websockets}' asyncio client and exchange one
    message.

    @return: C{"answered"}, or C{"stalled"} when the handshake was not
        answered within C{timeout}.
    """

    async def run() -> None:
        async with asyncio_client.connect(
            f"wss://localhost:{port}/", ssl=context, open_timeout=timeout
        ) as ws:
            await ws.send("ping")
            await asyncio.wait_for(ws.recv(), timeout)

    try:
        asyncio.run(run())
    except TimeoutError:
        return "stalled"
    return "answered"


def versions() -> str:
    """
    The versions that matter here, on one line.
    """
    return (
        f"Python {platform.python_version()} ({ssl.OPENSSL_VERSION}), "
        f"websockets {version('websockets')}, Twisted {version('twisted')}, "
        f"pyOpenSSL {version('pyopenssl')} "
        f"({OpenSSL.SSL.OpenSSL_version(OpenSSL.SSL.OPENSSL_VERSION).decode()})"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run the loop; print the counts.

    @return: 0 when every handshake was answered, 1 otherwise.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", choices=SERVERS, default="relay")
    parser.add_argument("--client", choices=CLIENTS, default="websockets")
    parser.add_argument("--tls", choices=("1.2", "1.3"), default="1.3")
    parser.add_argument("--no-tickets", dest="tickets", action="store_false")
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--timeout", type=float, default=2.0)
    args = parser.parse_args(argv)

    # The raw clients leave without a closing handshake; the servers' logs
    # of that are noise here.
    logging.getLogger("websockets").setLevel(logging.CRITICAL)
    certs = makeCertificates(tempfile.mkdtemp(), ["localhost", "127.0.0.1"])
    port = startServer(args.server, certs, args.tickets)
    context = ssl.create_default_context(cafile=certs["ca"])
    tlsVersion = getattr(ssl.TLSVersion, "TLSv" + args.tls.replace(".", "_"))
    context.minimum_version = context.maximum_version = tlsVersion

    print(versions(), flush=True)
    counts: Counter[str] = Counter()
    started = time.monotonic()
    for _ in range(args.count):
        try:
            if args.client == "websockets":
                outcome = websocketsOpen(port, context, args.timeout)
            elif args.client == "websockets-asyncio":
                outcome = asyncioOpen(port, context, args.timeout)
            else:
                threaded = args.client == "raw-threaded"
                outcome = rawOpen(port, context, args.timeout, threaded)
        except Exception as e:
            counts[f"error {type(e).__name__} ({str(e)[:60]})"] += 1
        else:
            counts[outcome] += 1
    elapsed = time.monotonic() - started
    print(
        f"server={args.server} client={args.client} tls={args.tls} "
        f"tickets={'on' if args.tickets else 'off'}: "
        + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        + f" of {args.count} in {elapsed:.1f} s"
    )
    return 0 if counts["answered"] == args.count else 1


if __name__ == "__main__":
    sys.exit(main())
