"""
A relay started from a config text on a loopback port, and readings of
what it holds: its sessions, and the sockets and producers under its
transports.
"""

from __future__ import annotations

import os
import re
import socket
import tempfile
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols.policies import ProtocolWrapper
from websockets.sync.client import ClientConnection

from tests.support.backends import startBackend
from tests.support.clients import client, inThread
from tests.support.waiting import TIMEOUT, waitFor
from wsrelay.config import loadConfig, parseConfig
from wsrelay.proxy.session import ProxySession
from wsrelay.service import RelayService
from wsrelay.ws.legclosing import OPEN
from wsrelay.ws.writes import tcpConnection


def buffered(transport: Any) -> int:
    """
    @return: The bytes a TCP transport holds that the kernel did not take.
    """
    return len(transport.dataBuffer) + transport._tempDataLen  # type: ignore[no-any-return]


def paused(transport: Any) -> bool:
    """
    @return: Whether the reactor stopped reading from C{transport}.
    """
    return transport not in reactor.getReaders()  # type: ignore[attr-defined]


async def openSession(relay: RelayService) -> ProxySession:
    """
    Wait for the relay's one proxy session to have its upstream open, and
    its client its 101 (which a passthrough route's client leg writes at
    the end of the reactor's turn, L{wsrelay.ws.writes.sendWithTurn}).
    """

    def session() -> ProxySession | None:
        for s in relay.sessions:
            if isinstance(s, ProxySession) and s.upstream is not None:
                tcp = tcpConnection(s.frontend.transport)
                if s.upstream.state == OPEN and (
                    tcp is None or not (tcp._tempDataBuffer or tcp.dataBuffer)
                ):
                    return s
        return None

    await waitFor(lambda: session() is not None)
    found = session()
    assert found is not None
    return found


async def startRelay(
    testCase: Any,
    text: str,
    clock: Any = None,
    listen: str = "tcp:0:interface=127.0.0.1",
) -> tuple[RelayService, int]:
    """
    Start a relay on a loopback port from a config text (its C{listen}
    is added), stopped at the end of C{testCase}.  When C{testCase} has a
    C{dataPath} attribute, every route gets that C{data_path}.

    @param listen: The endpoint the relay listens on (port 0: the system
        picks one), say C{haproxy:tcp:0:interface=127.0.0.1}.
    @return: The service and its port.
    """
    dataPath = getattr(testCase, "dataPath", None)
    if dataPath is not None:
        # Run the test case's proxy routes on another data path.
        text = re.sub(r"(\[route:[^\]]+\]\n)", rf"\1data_path = {dataPath}\n", text)
    directory = tempfile.mkdtemp()
    path = os.path.join(directory, "relay.ini")
    with open(path, "w") as f:
        f.write(text.replace("[relay]", f"[relay]\nlisten = {listen}", 1))
    relay = RelayService(loadConfig(path), reactor, clock)
    relay.startService()
    testCase.addCleanup(relay.stopService)
    (port,) = await relay.whenListening()
    return relay, port.getHost().port


async def chatSession(
    testCase: Any,
) -> tuple[RelayService, ProxySession, ClientConnection]:
    """
    Open one client through a relay to an echo backend and exchange a
    message.

    @return: The relay, its session and the client, open.
    """
    b = startBackend(testCase)
    relay, port = await startRelay(
        testCase, f"[relay]\n[route:chat]\npath = /chat\nbackends = {b.url}\n"
    )
    c = await inThread(client, port, "/chat")
    # Closing needs the reactor: not from the reactor's thread.
    testCase.addCleanup(inThread, c.close)
    await inThread(c.send, "hi")
    testCase.assertEqual(await inThread(c.recv, TIMEOUT), "hi")
    [session] = relay.sessions
    assert isinstance(session, ProxySession)
    assert session.upstream is not None
    return relay, session, c


def noDelay(transport: Any) -> int:
    """
    @return: The C{TCP_NODELAY} option of the socket under C{transport}
        (a TCP transport, or TLS over one), 0 if Nagle's algorithm is on.
    """
    while isinstance(transport, ProtocolWrapper):
        # TLS (or the PROXY protocol) over TCP: its handle is not a socket.
        transport = transport.transport
    sock = transport.getHandle()
    return int(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


def relayFor(extra: str) -> tuple[RelayService, Clock]:
    """
    A relay with one fan-out route on a memory reactor and a clock.
    """
    config = parseConfig(
        "[relay]\nlisten = tcp:0\n[route:feed]\npath = /feed\nmode = fanout\n"
        "backends = ws://127.0.0.1:1/src\n" + extra,
        "t.ini",
    )
    clock = Clock()
    return RelayService(config, MemoryReactorClock(), clock), clock
