"""
The whole relay, as users run it, on every reactor it supports (issue 16):
C{twistd wsrelay}'s own (L{wsrelay.reactor.RelayReactor}, on Linux) and
Twisted's epoll, poll, select and asyncio reactors, chosen with C{twistd
-r NAME} (the lean transports of L{wsrelay.ws.accepting} and
L{wsrelay.ws.tcpclient} watch their sockets through epoll directly only on
an epoll reactor).  On each, in one relay: a passthrough route and a
message route echo through a backend, in both directions, with a message
split over frames and a close code relayed back; a fan-out route delivers
its source's messages to two clients in order.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading

from twisted.trial.unittest import SynchronousTestCase
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import ServerConnection

from tests.support.backends import startBackend
from tests.support.clients import client, closeOf
from tests.support.processes import JSONRelay
from tests.support.waiting import TIMEOUT

#: What the relay's routes look like; the backends' ports filled in.
CONFIG = """\
[relay]
listen = tcp:0:interface=127.0.0.1
[route:pass]
path = /pass
data_path = passthrough
backends = {echo}
[route:message]
path = /message
data_path = message
backends = {echo}
[route:feed]
path = /feed
mode = fanout
backends = {source}
"""


def ticks(connection: ServerConnection) -> None:
    """
    A fan-out source: C{tick N} every 20 ms, until the relay goes away.
    """
    n = 0
    stop = threading.Event()
    try:
        while not stop.wait(0.02):
            connection.send(f"tick {n}")
            n += 1
    except ConnectionClosed:
        pass


class ReactorTests(SynchronousTestCase):
    """
    One relay per reactor, each exercised the same way.
    """

    def relayOn(self, reactor: str | None) -> int:
        """
        Start a relay on C{reactor} in front of an echo backend and a
        ticking source.

        @return: Its port.
        """
        echo, source = startBackend(self), startBackend(self, handler=ticks)
        directory = tempfile.mkdtemp(prefix="wsrelay-reactors-")
        self.addCleanup(shutil.rmtree, directory, ignore_errors=True)
        config = os.path.join(directory, "relay.ini")
        with open(config, "w") as f:
            f.write(CONFIG.format(echo=echo.url, source=source.url))
        relay = JSONRelay(
            self, config, os.path.join(directory, "twistd.log"), reactor=reactor
        )
        [listening] = relay.waitFor(lambda e: "listening on" in e.get("log_format", ""))
        self.relay = relay
        return int(listening["port"])

    def exercise(self, reactor: str | None, className: str) -> None:
        """
        The checks every reactor passes, on the relay's reactor of class
        C{className}.
        """
        port = self.relayOn(reactor)
        [chosen] = self.relay.waitFor(
            lambda e: e.get("log_format") == "reactor class: {reactor}."
        )
        self.assertEqual(chosen["reactor"].rsplit(".", 1)[-1], className)
        for path in ("/pass", "/message"):
            with client(port, path) as c:
                c.send("hello")
                self.assertEqual(c.recv(TIMEOUT), "hello", path)
                c.send([b"\x00" * 70_000, b"\x01" * 3])
                self.assertEqual(c.recv(TIMEOUT), b"\x00" * 70_000 + b"\x01" * 3)
                c.send("close 4003 bye")
                self.assertEqual(closeOf(c), (4003, "bye"), path)
        a, b = client(port, "/feed"), client(port, "/feed")
        try:
            for c in (a, b):
                first = int(c.recv(TIMEOUT).split()[1])
                later = [int(c.recv(TIMEOUT).split()[1]) for _ in range(5)]
                self.assertEqual(later, list(range(first + 1, first + 6)))
        finally:
            a.close()
            b.close()
        self.assertIsNone(self.relay.process.poll(), self.relay.tail())

    def test_default(self) -> None:
        """
        C{twistd wsrelay}'s own reactor.
        """
        self.exercise(None, "RelayReactor")

    def test_epoll(self) -> None:
        """
        Twisted's epoll reactor (C{-r epoll}).
        """
        self.exercise("epoll", "EPollReactor")

    def test_poll(self) -> None:
        """
        Twisted's poll reactor (C{-r poll}).
        """
        self.exercise("poll", "PollReactor")

    def test_select(self) -> None:
        """
        Twisted's select reactor (C{-r select}).
        """
        self.exercise("select", "SelectReactor")

    def test_asyncio(self) -> None:
        """
        Twisted's asyncio reactor (C{-r asyncio}).
        """
        self.exercise("asyncio", "AsyncioSelectorReactor")
