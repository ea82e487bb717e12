"""
Tests for L{wsrelay.proxy.opening.LazyConnectionInfo}: what a balancer
may know of a connection, read from the client's leg only when read.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from wsrelay.proxy.opening import LazyConnectionInfo, connectionInfo
from wsrelay.routing import ConnectionInfo
from wsrelay.ws.handshake import Head, parseHead


class FakeFrontend:
    """
    What L{connectionInfo} reads of a client's leg.
    """

    def __init__(self, head: Head) -> None:
        self.head = head
        self.path = "/chat"
        self.query = "room=1"


class CountingAddresses:
    """
    Says who the client is, and counts how often it was asked.
    """

    def __init__(self) -> None:
        self.asked = 0

    def clientAddress(self, frontend: Any) -> str:
        self.asked += 1
        return "192.0.2.7"


def lazy() -> tuple[LazyConnectionInfo, ConnectionInfo, CountingAddresses]:
    """
    @return: A lazy L{ConnectionInfo} of a client that sent a cookie, the
        plain one L{connectionInfo} makes of it, and the addresses the lazy
        one asks.
    """
    head = parseHead(
        b"GET /chat?room=1 HTTP/1.1\r\nHost: relay\r\n"
        b"Cookie: session=abc; theme=dark\r\nX-User: ann"
    )
    frontend = FakeFrontend(head)
    addresses = CountingAddresses()
    plain = connectionInfo(frontend, CountingAddresses())  # type: ignore[arg-type]
    info = LazyConnectionInfo.of(frontend, addresses)  # type: ignore[arg-type]
    return info, plain, addresses


class LazyConnectionInfoTests(SynchronousTestCase):
    """
    L{LazyConnectionInfo} reads nothing until a field is read, then is the
    L{ConnectionInfo} that L{connectionInfo} makes.
    """

    def test_nothingReadUntilAsked(self) -> None:
        """
        Made and passed around, it asks nothing of the client's leg; the
        first field read reads them all, once.
        """
        info, _, addresses = lazy()
        self.assertIsInstance(info, ConnectionInfo)
        self.assertEqual(addresses.asked, 0)
        self.assertEqual(info.peer, "192.0.2.7")
        self.assertEqual(info.cookies, {"session": "abc", "theme": "dark"})
        self.assertEqual(addresses.asked, 1)

    def test_fields(self) -> None:
        """
        Its fields are L{connectionInfo}'s, and it compares equal to that
        one either way round, with the same C{repr}.
        """
        info, plain, _ = lazy()
        for f in dataclasses.fields(ConnectionInfo):
            self.assertEqual(getattr(info, f.name), getattr(plain, f.name), f.name)
        self.assertEqual(info, plain)
        self.assertEqual(plain, info)
        self.assertEqual(repr(info), repr(plain))
        other, _, _ = lazy()
        self.assertEqual(info, other)
        self.assertNotEqual(info, dataclasses.replace(plain, peer="192.0.2.8"))

    def test_copies(self) -> None:
        """
        C{dataclasses.replace}, C{asdict} and C{copy} treat it as the plain
        one, before or after its fields were read.
        """
        info, plain, _ = lazy()
        self.assertEqual(dataclasses.asdict(info), dataclasses.asdict(plain))
        fresh, _, _ = lazy()
        self.assertEqual(copy.copy(fresh), plain)
        replaced = dataclasses.replace(lazy()[0], path="/other")
        self.assertEqual(replaced, dataclasses.replace(plain, path="/other"))
        self.assertEqual(replaced.path, "/other")

    def test_frozen(self) -> None:
        """
        Its fields cannot be set, and it has no attribute but the fields'.
        """
        info, _, _ = lazy()
        with self.assertRaises(dataclasses.FrozenInstanceError):
            info.peer = "x"  # type: ignore[misc]
        with self.assertRaises(AttributeError):
            info.nothing  # type: ignore[attr-defined]  # noqa: B018
        self.assertEqual(info.query, "room=1")
        with self.assertRaises(AttributeError):
            info.nothing  # type: ignore[attr-defined]  # noqa: B018
