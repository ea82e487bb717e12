"""
IPv6 end to end: a C{tcp6:} listener, a C{ws://[::1]:PORT/} backend and its
health checks, over the IPv6 loopback (the one place these tests leave
127.0.0.1: it is what they are about).
"""

from __future__ import annotations

import socket

from twisted.trial.unittest import SkipTest, TestCase
from websockets.sync.client import ClientConnection, connect

from tests.support import TIMEOUT, inThread, startRelay
from tests.support.backends import startBackend
from tests.support.waiting import waitFor


def _ipv6Loopback() -> bool:
    """
    @return: Whether this host can listen on C{::1}.
    """
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def client6(port: int, path: str = "/") -> ClientConnection:
    """
    A C{websockets} client of the relay on C{[::1]:port}.
    """
    return connect(
        f"ws://[::1]:{port}{path}", open_timeout=TIMEOUT, compression=None, legacy=True
    )


class IPv6Tests(TestCase):
    """
    A relay listening with C{tcp6:}, in front of a backend on C{::1}.
    """

    def setUp(self) -> None:
        if not _ipv6Loopback():
            raise SkipTest("no IPv6 loopback (::1) on this host")

    async def test_proxied(self) -> None:
        """
        A client on C{::1} reaches a C{ws://[::1]:PORT/} backend through a
        C{tcp6:} listener; the backend is checked healthy by the
        C{websocket} checker over IPv6, and sees the client's address in
        C{X-Forwarded-For} and C{Forwarded} (in brackets there).
        """
        backend = startBackend(self, host="::1")
        self.assertTrue(backend.url.startswith("ws://[::1]:"))
        relay, port = await startRelay(
            self,
            "[relay]\n[route:chat]\npath = /\n"
            f"backends = {backend.url}\n"
            "health = websocket\nhealth_interval = 0.1\n",
            listen=r"tcp6:0:interface=\:\:1",
        )
        (route,) = relay.routes.routes
        (target,) = route.backends
        await waitFor(lambda: any(ok for _, ok, _ in target.checks))
        self.assertTrue(target.healthy)
        c = await inThread(client6, port)
        self.addCleanup(inThread, c.close)
        await inThread(c.send, "hello")
        self.assertEqual(await inThread(c.recv, TIMEOUT), "hello")
        await inThread(c.send, "headers")
        headers = (await inThread(c.recv, TIMEOUT)).lower().splitlines()
        self.assertIn("x-forwarded-for: ::1", headers)
        self.assertIn(f'forwarded: for="[::1]";proto=http;host="[::1]:{port}"', headers)

    async def test_backendDown(self) -> None:
        """
        A C{ws://[::1]:PORT/} backend that is not listening is checked
        unhealthy, and a client gets 502 or 503, not a dropped
        connection.
        """
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
            closedPort = s.getsockname()[1]
        relay, port = await startRelay(
            self,
            "[relay]\n[route:chat]\npath = /\n"
            f"backends = ws://[::1]:{closedPort}/\n"
            "health = tcp\nhealth_interval = 0.1\n",
            listen=r"tcp6:0:interface=\:\:1",
        )
        (target,) = relay.routes.routes[0].backends
        await waitFor(lambda: not target.healthy)
        self.assertTrue(target.checks)
        self.assertFalse(any(ok for _, ok, _ in target.checks))
        with self.assertRaises(Exception) as raised:
            await inThread(client6, port)
        self.assertIn(
            getattr(getattr(raised.exception, "response", None), "status_code", None),
            (502, 503),
        )
