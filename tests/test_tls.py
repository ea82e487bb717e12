"""
TLS on both sides, with certificates made by the test: an C{ssl:}
listener for clients, and C{wss://} backends verified against a route's
C{ca_file}, the system's trust store, or not at all.
"""

from __future__ import annotations

import os
import socket
import ssl
import tempfile
import threading
from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import TestCase
from websockets.sync.client import connect
from websockets.sync.server import ServerConnection, serve

from tests.support import TIMEOUT, inThread, noDelay, startBackend
from tests.support.clients import rawExchange, rawRequest
from tests.support.frames import CLOSE, CLOSE_REPLY, goodRequest
from tests.support.relays import openSession
from tests.support.tls import makeCertificates, websocketsContext
from wsrelay.config import loadConfig
from wsrelay.service import RelayService


class TLSBackend:
    """
    A C{websockets} server over TLS in a thread: it answers every message
    with the request's C{X-Forwarded-Proto} and the SNI it was sent.
    """

    def __init__(self, certs: dict[str, str]) -> None:
        self.names: list[str | None] = []
        self.connections = 0
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certs["cert"], certs["key"])

        def sni(sock: Any, name: str | None, ctx: Any) -> None:
            self.names.append(name)

        context.sni_callback = sni

        def handle(connection: ServerConnection) -> None:
            self.connections += 1
            for _ in connection:
                proto = connection.request.headers.get("X-Forwarded-Proto")
                connection.send(f"{proto} {self.names[-1] if self.names else None}")

        self.server = serve(handle, "127.0.0.1", 0, ssl=context, compression=None)
        self.port = self.server.socket.getsockname()[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """
        Stop serving.
        """
        self.server.shutdown()
        self._thread.join(TIMEOUT)


def closeAndWaitForEOF(port: int, ca: str) -> bytes:
    """
    Over TLS: open a WebSocket, send a close frame, and read until the
    relay closes the connection (a timeout fails).

    @return: Everything the relay sent.
    """
    context = ssl.create_default_context(cafile=ca)
    received = b""
    with socket.create_connection(("127.0.0.1", port), TIMEOUT) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(goodRequest("/"))
            while b"\r\n\r\n" not in received:
                received += s.recv(4096)
            s.sendall(CLOSE)
            try:
                while chunk := s.recv(4096):
                    received += chunk
            except (ssl.SSLEOFError, ConnectionResetError):
                pass
    return received


def holdOpen(port: int, ca: str, done: threading.Event) -> None:
    """
    Exchange one message with the relay over TLS, then hold the connection
    open until C{done} is set.
    """
    with connect(
        f"wss://localhost:{port}/", ssl=websocketsContext(ca), open_timeout=TIMEOUT
    ) as ws:
        ws.send("hello")
        ws.recv(TIMEOUT)
        done.wait(TIMEOUT)


class TLSTests(TestCase):
    """
    TLS towards clients and towards backends.
    """

    def setUp(self) -> None:
        self.directory = tempfile.mkdtemp()
        self.certs = makeCertificates(self.directory, ["localhost", "127.0.0.1"])
        self.backend = TLSBackend(self.certs)
        self.addCleanup(self.backend.stop)

    async def sslRelay(self, route: str) -> tuple[RelayService, int]:
        """
        Start a relay with an C{ssl:} listener and one route C{r} on C{/}
        with the keys C{route}.
        """
        c = self.certs
        return await self.relay(
            "[relay]\n"
            f"listen = ssl:0:interface=127.0.0.1:privateKey={c['key']}"
            f":certKey={c['cert']}\n"
            f"[route:r]\npath = /\n{route}"
        )

    async def relay(self, text: str) -> tuple[RelayService, int]:
        """
        Start a relay from a config text that has its own C{listen}.
        """
        path = os.path.join(self.directory, "relay.ini")
        with open(path, "w") as f:
            f.write(text)
        relay = RelayService(loadConfig(path), reactor)
        relay.startService()
        self.addCleanup(relay.stopService)
        (port,) = await relay.whenListening()
        return relay, port.getHost().port

    async def test_sslListenerToVerifiedBackend(self) -> None:
        """
        A client connects over TLS to an C{ssl:} listener; the relay
        reaches a C{wss://} backend it verifies against the route's
        C{ca_file}, sending SNI from the URL's host; the backend sees
        C{X-Forwarded-Proto: https}.
        """
        c = self.certs
        _, port = await self.sslRelay(
            f"ca_file = {c['ca']}\nbackends = wss://localhost:{self.backend.port}/\n"
        )

        def run() -> str:
            context = websocketsContext(c["ca"])
            with connect(
                f"wss://localhost:{port}/", ssl=context, open_timeout=TIMEOUT
            ) as ws:
                ws.send("hello")
                return str(ws.recv(TIMEOUT))

        self.assertEqual(await inThread(run), "https localhost")

    async def test_noDelayUnderTLS(self) -> None:
        """
        With TLS on both legs, the TCP sockets under it have TCP_NODELAY on
        either data path: TLS records of a message are not held back for
        delayed ACKs.
        """
        c = self.certs
        for dataPath in ("message", "passthrough"):
            relay, port = await self.sslRelay(
                f"ca_file = {c['ca']}\ndata_path = {dataPath}\n"
                f"backends = wss://localhost:{self.backend.port}/\n"
            )
            done = threading.Event()
            running = inThread(holdOpen, port, c["ca"], done)
            try:
                session = await openSession(relay)
                for leg in (session.frontend, session.upstream):
                    self.assertEqual(noDelay(leg.transport), 1, (dataPath, leg))
            finally:
                done.set()
                await running

    async def test_closeOverTLS(self) -> None:
        """
        On either data path, once a TLS client's close handshake is done
        the relay closes the connection: the client, which waits for the
        server to close TCP, gets the close frame and then EOF.
        """
        c = self.certs
        plain = startBackend(self)
        for dataPath in ("message", "passthrough"):
            _, port = await self.sslRelay(
                f"data_path = {dataPath}\nbackends = {plain.url}\n"
            )
            answer = await inThread(closeAndWaitForEOF, port, c["ca"])
            self.assertTrue(answer.startswith(b"HTTP/1.1 101 "), answer[:40])
            self.assertTrue(answer.endswith(CLOSE_REPLY), (dataPath, answer[-20:]))

    async def test_untrustedBackend(self) -> None:
        """
        A backend whose certificate the relay does not trust (the system's
        trust store knows nothing of the test CA) is a failed connect: 502,
        and counted against the backend.
        """
        relay, port = await self.relay(
            "[relay]\nlisten = tcp:0:interface=127.0.0.1\n"
            f"[route:r]\npath = /\nbackends = wss://localhost:{self.backend.port}/\n"
        )
        raw = await inThread(rawExchange, port, rawRequest(port, "/"))
        self.assertTrue(raw.startswith(b"HTTP/1.1 502 "), raw[:40])
        [backend] = relay.routes.routes[0].backends
        self.assertEqual(backend.failures, 1)
        self.assertEqual(self.backend.connections, 0)

    async def test_wrongHost(self) -> None:
        """
        A certificate from the trusted CA but for another host is refused
        too.
        """
        other = makeCertificates(tempfile.mkdtemp(), ["other.example", "127.0.0.2"])
        impostor = TLSBackend(other)
        self.addCleanup(impostor.stop)
        _, port = await self.relay(
            "[relay]\nlisten = tcp:0:interface=127.0.0.1\n"
            f"[route:r]\npath = /\nca_file = {other['ca']}\n"
            f"backends = wss://127.0.0.1:{impostor.port}/\n"
        )
        raw = await inThread(rawExchange, port, rawRequest(port, "/"))
        self.assertTrue(raw.startswith(b"HTTP/1.1 502 "), raw[:40])

    async def test_verifyOff(self) -> None:
        """
        With C{verify = off} the untrusted backend is accepted, still with
        SNI.
        """
        _, port = await self.relay(
            "[relay]\nlisten = tcp:0:interface=127.0.0.1\n"
            f"[route:r]\npath = /\nverify = off\n"
            f"backends = wss://localhost:{self.backend.port}/\n"
        )

        def run() -> str:
            with connect(f"ws://127.0.0.1:{port}/", open_timeout=TIMEOUT) as ws:
                ws.send("hello")
                return str(ws.recv(TIMEOUT))

        self.assertEqual(await inThread(run), "http localhost")
