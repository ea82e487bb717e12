"""
L{wsrelay.testing}: the fake backend view and L{verifyPlugin} offered to
plugin authors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.plugins import wsrelay_balancers, wsrelay_health
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import Invalid, implementer
from zope.interface.verify import verifyObject

from wsrelay.balancers import ConsistentHash
from wsrelay.dropins import BalancerPlugin, HealthCheckerPlugin
from wsrelay.health.checkers import HTTPChecker
from wsrelay.interfaces import (
    ConnectionInfo,
    IBackend,
    IBalancer,
    IBalancerFactory,
    ILoadListener,
)
from wsrelay.testing import FakeBackend, verifyPlugin


@implementer(IBalancer)
class Naming:
    """
    A balancer whose C{pick} answers with a backend's name, not the backend.
    """

    def __init__(self, backends: Sequence[IBackend], options: Mapping[str, str]):
        pass

    def pick(self, candidates: Sequence[IBackend], connection: ConnectionInfo) -> Any:
        """
        @return: The first candidate's name: wrong.
        """
        return candidates[0].name


@implementer(IBalancer, ILoadListener)
class Deaf(Naming):
    """
    Says it has load hooks, but has none; picks right.
    """

    def pick(self, candidates: Sequence[IBackend], connection: ConnectionInfo) -> Any:
        """
        @return: The first candidate.
        """
        return candidates[0]


@implementer(IBalancerFactory)
class NoBuild:
    """
    Declares L{IBalancerFactory} without C{build}.
    """

    name = "no_build"
    description = "d"
    options = ()


class FakeBackendTests(SynchronousTestCase):
    """
    L{FakeBackend} is a backend view.
    """

    def test_providesIBackend(self) -> None:
        """
        It provides L{IBackend}, with its host and port read from its URL.
        """
        backend = FakeBackend("b", "wss://[::1]/x", weight=2, connections=3)
        self.assertTrue(verifyObject(IBackend, backend))
        self.assertEqual((backend.host, backend.port), ("::1", 443))
        self.assertEqual(FakeBackend("c").port, 9)
        self.assertEqual(FakeBackend("d", "ws://example.com/").port, 80)


class VerifyPluginTests(SynchronousTestCase):
    """
    L{verifyPlugin} accepts wsrelay's own plugins and names what is wrong
    with a broken one.
    """

    def assertInvalid(self, plugin: object, part: str, **kwargs: Any) -> None:
        """
        L{verifyPlugin} rejects C{plugin} with an L{Invalid} that says
        C{part}.
        """
        with self.assertRaises(Invalid) as raised:
            verifyPlugin(plugin, **kwargs)
        self.assertIn(part, str(raised.exception))

    def test_builtins(self) -> None:
        """
        Every built-in balancer and health checker verifies, and what it
        builds is returned.
        """
        for attribute in ("roundRobin", "first", "leastConnections", "randomTwo"):
            self.assertTrue(
                IBalancer.providedBy(
                    verifyPlugin(getattr(wsrelay_balancers, attribute))
                )
            )
        ring = verifyPlugin(wsrelay_balancers.consistentHash, {"hash_on": "path"})
        self.assertIsInstance(ring, ConsistentHash)
        self.assertEqual(ring.hashOn, "path")
        for checker in (wsrelay_health.tcp, wsrelay_health.websocket):
            verifyPlugin(checker)
        reactor = MemoryReactorClock()
        http = verifyPlugin(
            wsrelay_health.http, {"health_path": "/up"}, reactor=reactor
        )
        self.assertIsInstance(http, HTTPChecker)
        self.assertIs(http._reactor, reactor)

    def test_rejectedOption(self) -> None:
        """
        A bad option value is the plugin's own L{ValueError}.
        """
        self.assertRaises(
            ValueError,
            verifyPlugin,
            wsrelay_balancers.consistentHash,
            {"hash_on": "moon"},
        )

    def test_notAPlugin(self) -> None:
        """
        An object that provides no factory interface, or does not
        implement the one it declares, is rejected.
        """
        self.assertInvalid(object(), "provides no wsrelay factory interface")
        self.assertInvalid(NoBuild(), "build")

    def test_badDeclarations(self) -> None:
        """
        A name that is not a word, a description of several lines, an
        option in capitals, one given twice, a built-in route key as an
        option, or options given to C{build} that it does not declare.
        """
        cases = [
            (BalancerPlugin("two words", Deaf, "d"), "bad name 'two words'", {}),
            (BalancerPlugin("x", Deaf, "a\nb"), "not one line", {}),
            (BalancerPlugin("x", Deaf, "d", ("Key",)), "option 'Key'", {}),
            (BalancerPlugin("x", Deaf, "d", ("k", "k")), "declared twice", {}),
            (
                HealthCheckerPlugin("x", Deaf, "d", ("path",)),
                "option 'path' is built-in",
                {},
            ),
            (BalancerPlugin("x", Deaf, "d"), "not declared", {"k": "v"}),
        ]
        for plugin, part, options in cases:
            self.assertInvalid(plugin, part, options=options)

    def test_badBalancer(self) -> None:
        """
        A balancer that declares load hooks it lacks, or picks something
        other than a candidate, is rejected.
        """
        self.assertInvalid(BalancerPlugin("deaf", Deaf, "d"), "connectionOpened")
        self.assertInvalid(BalancerPlugin("naming", Naming, "d"), "pick returned 'b1'")

    def test_backends(self) -> None:
        """
        A balancer is built with the backends given.
        """
        seen = []

        def build(backends: Sequence[IBackend], options: Mapping[str, str]) -> Any:
            seen.extend(backends)
            return wsrelay_balancers.first.build(backends, options)

        backends = [FakeBackend("only")]
        verifyPlugin(BalancerPlugin("x", build, "d"), backends=backends)
        self.assertEqual(seen, backends)
