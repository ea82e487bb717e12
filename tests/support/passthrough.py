"""
A relay with one passthrough route and one client through it, open; and
stand-ins for a pipe's legs and its session (L{PipeLeg}, L{PipeSession}).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from tests.support import TIMEOUT, client, inThread, startBackend, startRelay
from wsrelay.config import RelayConfig
from wsrelay.proxy.session import ProxySession


async def openedPassthrough(testCase: TestCase) -> tuple[Any, ProxySession, Any]:
    """
    Start an echo backend and a relay whose route C{/} is on the
    passthrough data path, and open a client whose first message came
    back.

    @return: The relay, the client's session and the client.
    """
    b = startBackend(testCase)
    relay, port = await startRelay(
        testCase,
        f"[relay]\n[route:r]\npath = /\ndata_path = passthrough\nbackends = {b.url}\n",
    )
    c = await inThread(client, port, legacy=True)
    await inThread(c.send, "hi")
    testCase.assertEqual(await inThread(c.recv, TIMEOUT), "hi")
    [session] = relay.sessions
    assert isinstance(session, ProxySession)
    return relay, session, c


class FakeTransport:
    """
    A TCP transport that keeps what is written, and how it was closed.
    """

    def __init__(self) -> None:
        self.data = b""
        self.lost = False
        self.writeClosed = False

    def write(self, data: bytes) -> None:
        """
        Keep C{data}; nothing may be written once the connection, or its
        writing half, is closed.
        """
        assert not (self.lost or self.writeClosed), "written after closing"
        self.data += data

    def loseConnection(self) -> None:
        """
        Close the connection.
        """
        self.lost = True

    def loseWriteConnection(self) -> None:
        """
        Send the end of the stream.
        """
        self.writeClosed = True


class PipeLeg:
    """
    Stands for a leg of a session: counters and a L{FakeTransport}.
    """

    extensionsAnswer: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.messagesIn = self.bytesIn = self.messagesOut = self.bytesOut = 0
        self.transport = FakeTransport()

    def writer(self) -> Any:
        """
        @return: The transport's C{write}.
        """
        return self.transport.write


class PipeSession:
    """
    Stands for a L{ProxySession} (a L{wsrelay.roles.PipeOwner}): the
    relay's configuration and clock.
    """

    def __init__(
        self,
        clock: Clock,
        closeTimeout: float,
        pingInterval: float = 0,
        pingTimeout: float = 10.0,
    ) -> None:
        config = RelayConfig(
            path="relay.ini",
            listen=(),
            routes=(),
            pingInterval=pingInterval,
            pingTimeout=pingTimeout,
            closeTimeout=closeTimeout,
        )
        self.config = config
        self.clock = clock
        self.closedBy: str | None = None
