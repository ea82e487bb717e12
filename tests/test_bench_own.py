"""
Tests for the benchmark's relays with their own sockets: C{ownsockets} and
C{ownsockets-level} (L{bench.ownsockets}), and C{ownsockets-features}
(L{bench.ownfeatures}), which does wsrelay's per-connection work on them.
Each runs as the suite runs it, in its own process, on loopback.
"""

from __future__ import annotations

import base64
import hashlib
import socket
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from bench import targets
from tests.support.benchsmoke import ROOT, smoke
from tests.support.clients import readHead
from tests.support.frames import frameBytes, maskedFrame, readFrame
from tests.support.waiting import TIMEOUT, pollUntil


def fields(head: bytes) -> dict[str, str]:
    """
    @return: A head's fields by lower-case name (the last of each).
    """
    found = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        found[name.strip().lower()] = value.strip()
    return found


def accept(key: str) -> str:
    """
    @return: The C{Sec-WebSocket-Accept} for C{key}.
    """
    magic = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
    return base64.b64encode(hashlib.sha1(key.encode() + magic).digest()).decode()


class OwnSocketsTests(SynchronousTestCase):
    """
    The relays with their own sockets.
    """

    def test_ownsockets(self) -> None:
        """
        The C{ownsockets} targets, passthrough relays with their own sockets
        (edge-triggered, and through C{addReader}), echo and open every
        storm connection (checking the backend's accept value); each
        answers a request that is not a WebSocket handshake with 400, and a
        handshake with 502 while its backend is down.
        """
        for target, mode in [("ownsockets", "edge"), ("ownsockets-level", "level")]:
            cells = smoke(self, target, "echo-small,storm")
            self.assertGreater(cells["echo-small"]["rate"], 0)
            self.assertEqual([r["opened"] for r in cells["storm"]["rounds"]], [20])
            port = self.startRelay("bench.ownsockets", targets.freePort(), mode)
            self.assertRefuses(port, b"HTTP/1.1 400 Bad Request")

    def test_features(self) -> None:
        """
        The C{ownsockets-features} target echoes and opens every storm
        connection; it answers a handshake with 502 while its backend is
        down, and a request that is not an upgrade with wsrelay's 426.
        """
        cells = smoke(self, "ownsockets-features", "echo-small,storm")
        self.assertGreater(cells["echo-small"]["rate"], 0)
        self.assertEqual([r["opened"] for r in cells["storm"]["rounds"]], [20])
        self.assertGreater(cells["storm"]["cpuPerOp"], 0)
        port = self.startRelay("bench.ownfeatures", targets.freePort())
        self.assertRefuses(port, b"HTTP/1.1 426 Upgrade Required")

    def test_featuresRelay(self) -> None:
        """
        C{ownsockets-features} sends the backend the request wsrelay builds
        (the client's claimed C{X-Forwarded-For} replaced by the peer, the
        forwarding fields added, the backend's own C{Host}), answers the
        client with wsrelay's 101, relays frames both ways (also those that
        came right behind the backend's 101), and fails a client that sends
        an unmasked frame with a close frame of code 1002, as wsrelay's
        frame scanner does.
        """
        backend = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(backend.close)
        backend.settimeout(TIMEOUT)
        backendPort = backend.getsockname()[1]
        port = self.startRelay("bench.ownfeatures", backendPort)
        key = "dGhlIHNhbXBsZSBub25jZQ=="
        client = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.addCleanup(client.close)
        client.sendall(
            (
                f"GET /chat?a=1 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                "X-Forwarded-For: 6.6.6.6\r\n\r\n"
            ).encode()
        )
        upstream, _ = backend.accept()
        self.addCleanup(upstream.close)
        upstream.settimeout(TIMEOUT)
        request = readHead(upstream)
        self.assertTrue(request.startswith(b"GET /chat?a=1 HTTP/1.1\r\n"), request)
        sent = fields(request)
        self.assertEqual(sent["host"], f"127.0.0.1:{backendPort}")
        self.assertEqual(sent["x-forwarded-for"], "127.0.0.1")
        self.assertEqual(sent["x-forwarded-proto"], "http")
        self.assertEqual(
            sent["forwarded"], f'for=127.0.0.1;proto=http;host="127.0.0.1:{port}"'
        )
        self.assertNotEqual(sent["sec-websocket-key"], key)
        upstream.sendall(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
            + accept(sent["sec-websocket-key"]).encode()
            + b"\r\n\r\n"
            + frameBytes(True, 0, 1, None, b"first", "min")
        )
        answer = readHead(client)
        self.assertTrue(answer.startswith(b"HTTP/1.1 101 "), answer)
        self.assertEqual(fields(answer)["sec-websocket-accept"], accept(key))
        self.assertEqual(fields(answer)["server"], "wsrelay")
        self.assertEqual(readFrame(client), (1, b"first"))
        frame = maskedFrame(2, b"to the backend")
        client.sendall(frame)
        received = b""
        while len(received) < len(frame):
            received += upstream.recv(len(frame) - len(received))
        self.assertEqual(received, frame)
        client.sendall(frameBytes(True, 0, 1, None, b"unmasked", "min"))
        opcode, payload = readFrame(client)
        self.assertEqual((opcode, payload[:2]), (8, (1002).to_bytes(2, "big")))

    def startRelay(self, module: str, backendPort: int, *extra: str) -> int:
        """
        Start C{python -m module PORT BACKEND_PORT EXTRA...} and wait until
        it accepts connections.

        @return: Its port.
        """
        port = targets.freePort()
        command = [sys.executable, "-m", module, str(port), str(backendPort)]
        relay = subprocess.Popen([*command, *extra], cwd=ROOT)
        self.addCleanup(relay.wait, TIMEOUT)
        self.addCleanup(relay.kill)

        def listening() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT).close()
            except ConnectionRefusedError:
                return False
            return True

        pollUntil(listening, f"{module} listening")
        return port

    def assertRefuses(self, port: int, notUpgrade: bytes) -> None:
        """
        The relay on C{port}, in front of a backend that is down, answers a
        handshake with 502, and a request that is not one with a status
        line that starts with C{notUpgrade}.
        """
        self.assertEqual(targets.handshake(port, "/"), b"HTTP/1.1 502 Bad Gateway")
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: relay\r\n\r\n")
            self.assertEqual(s.recv(4096)[: len(notUpgrade)], notUpgrade)
