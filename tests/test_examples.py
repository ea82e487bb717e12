"""
The example plugins of C{examples/plugins}: the C{tenant} balancer and the
C{clock} fan-out source, loaded from a copy of that folder named by
C{plugin_path}, as a user would.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import twisted.plugins
from twisted.internet import reactor
from twisted.trial.unittest import TestCase
from websockets.exceptions import InvalidStatus
from zope.interface.verify import verifyObject

from tests.support import TIMEOUT, client, inThread, startBackend
from wsrelay.config import ConfigError
from wsrelay.interfaces import (
    ConnectionInfo,
    IBalancer,
    IBalancerFactory,
    ISource,
    ISourceFactory,
)
from wsrelay.plugins import (
    balancerFactories,
    brokenPlugins,
    extendPluginPath,
    findPlugins,
)
from wsrelay.service import RelayService
from wsrelay.tap import readConfig
from wsrelay.testing import FakeBackend, verifyPlugin

EXAMPLES = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "plugins"
)
MODULE = "twisted.plugins.tenant_balancer"
CLOCK_MODULE = "twisted.plugins.clock_source"


def copyExamples(testCase: TestCase) -> str:
    """
    Copy C{examples/plugins} into a new folder; at the end of C{testCase},
    undo any extension of the plugin path, forget the imported dropin and
    remove the folder.

    @return: The new folder, which holds C{plugins/twisted/plugins/}.
    """
    directory = tempfile.mkdtemp(prefix="wsrelay-examples-")
    testCase.addCleanup(shutil.rmtree, directory, ignore_errors=True)
    shutil.copytree(
        EXAMPLES,
        os.path.join(directory, "plugins"),
        ignore=shutil.ignore_patterns("__pycache__", "dropin.cache"),
    )
    before = list(twisted.plugins.__path__)

    def cleanUp() -> None:
        for p in [p for p in twisted.plugins.__path__ if p not in before]:
            twisted.plugins.__path__.remove(p)
        for module in (MODULE, CLOCK_MODULE):
            sys.modules.pop(module, None)
            vars(twisted.plugins).pop(module.rpartition(".")[2], None)

    testCase.addCleanup(cleanUp)
    return directory


def connection(*headers: tuple[str, str]) -> ConnectionInfo:
    """
    @return: A client connection with C{headers}.
    """
    return ConnectionInfo("127.0.0.1", "/app", "", headers)


class TenantBalancerTests(TestCase):
    """
    The C{tenant} balancer on its own, found as a plugin.
    """

    def setUp(self) -> None:
        directory = copyExamples(self)
        extendPluginPath([os.path.join(directory, "plugins")])
        self.factory = balancerFactories()["tenant"]
        self.backends = [FakeBackend("b1"), FakeBackend("b2"), FakeBackend("b3")]

    def build(self, **options: str) -> Any:
        """
        @return: A balancer for C{self.backends} with C{options}, by default
            C{tenants} of acme (b1, b2) and globex (b3).
        """
        options.setdefault("tenants", "\nacme: b1 b2\nglobex: b3")
        return self.factory.build(self.backends, options)

    def test_discoverable(self) -> None:
        """
        The example is found by name, provides L{IBalancerFactory}, declares
        its three options and builds an L{IBalancer}; nothing is broken.
        """
        self.assertTrue(verifyObject(IBalancerFactory, self.factory))
        self.assertEqual(
            tuple(self.factory.options),
            ("tenant_header", "tenants", "default_backends"),
        )
        self.assertTrue(verifyObject(IBalancer, self.build()))
        options = {"tenants": "acme: b1", "default_backends": "b2"}
        verifyPlugin(self.factory, options, self.backends)
        self.assertEqual(brokenPlugins(IBalancerFactory), {})

    def test_small(self) -> None:
        """
        The whole plugin, docstrings included, is under 60 lines.
        """
        path = os.path.join(EXAMPLES, "twisted", "plugins", "tenant_balancer.py")
        with open(path) as f:
            self.assertLess(len(f.readlines()), 60)

    def test_byTenant(self) -> None:
        """
        A tenant's clients go to its backends, the least loaded first, the
        first listed on a tie; the header name is case-insensitive.
        """
        b1, b2, b3 = self.backends
        balancer = self.build()
        acme = connection(("x-tenant", "acme"))
        self.assertIs(balancer.pick(self.backends, acme), b1)
        b1.connections = 1
        self.assertIs(balancer.pick(self.backends, acme), b2)
        self.assertIs(
            balancer.pick(self.backends, connection(("X-TENANT", "globex"))), b3
        )

    def test_onlyCandidates(self) -> None:
        """
        Only candidates (healthy backends) are picked: with none of the
        tenant's, the balancer gives up.
        """
        b1, b2, b3 = self.backends
        balancer = self.build()
        acme = connection(("X-Tenant", "acme"))
        self.assertIs(balancer.pick([b2, b3], acme), b2)
        self.assertIsNone(balancer.pick([b3], acme))

    def test_unknownTenant(self) -> None:
        """
        Without C{default_backends}, an unknown tenant or a request without
        the header gets no backend; with it, they go there.
        """
        balancer = self.build()
        self.assertIsNone(balancer.pick(self.backends, connection(("X-Tenant", "x"))))
        self.assertIsNone(balancer.pick(self.backends, connection()))
        balancer = self.build(default_backends="b3")
        self.assertIs(balancer.pick(self.backends, connection()), self.backends[2])

    def test_tenantHeader(self) -> None:
        """
        C{tenant_header} names another header.
        """
        balancer = self.build(tenant_header="X-Org")
        picked = balancer.pick(
            self.backends, connection(("X-Tenant", "acme"), ("X-Org", "globex"))
        )
        self.assertIs(picked, self.backends[2])

    def test_semicolons(self) -> None:
        """
        Tenants may also be separated by C{;}.
        """
        balancer = self.build(tenants="acme: b1; globex: b3")
        picked = balancer.pick(self.backends, connection(("X-Tenant", "globex")))
        self.assertIs(picked, self.backends[2])

    def test_badOptions(self) -> None:
        """
        A bad option raises L{ValueError} whose message starts with the key.
        """
        tenants = "acme: b1"
        cases: Mapping[str, dict[str, str]] = {
            "tenants: acme: unknown backend 'b9'": {"tenants": "acme: b1 b9"},
            "tenants: expected 'TENANT: BACKEND ...'": {"tenants": "acme b1"},
            "tenants: tenant 'acme' given twice": {"tenants": "acme: b1\nacme: b2"},
            "tenants: acme: expected backend names": {"tenants": "acme:"},
            "tenants: expected at least one": {"tenants": " \n"},
            "tenants: required": {},
            "tenant_header: expected a header name": {
                "tenants": tenants,
                "tenant_header": "X Tenant",
            },
            "default_backends: unknown backend 'b0'": {
                "tenants": tenants,
                "default_backends": "b0",
            },
        }
        for message, options in cases.items():
            with self.assertRaises(ValueError) as raised:
                self.factory.build(self.backends, options)
            self.assertTrue(str(raised.exception).startswith(message), raised.exception)


class TenantRelayTests(TestCase):
    """
    A relay whose configuration names the example folder in C{plugin_path}
    and selects C{balancer = tenant}, with real backends and clients.
    """

    def setUp(self) -> None:
        self.directory = copyExamples(self)
        self.b1 = startBackend(self)
        self.b2 = startBackend(self)
        self.b3 = startBackend(self)

    def writeConfig(self, tenantOptions: str, balancer: str = "tenant") -> str:
        """
        Write a configuration whose route C{/app} has the backends b1, b2
        and b3 (whose paths are their names) and C{tenantOptions}.

        @return: Its path.
        """
        path = os.path.join(self.directory, "relay.ini")
        with open(path, "w") as f:
            f.write(
                "[relay]\n"
                "listen = tcp:0:interface=127.0.0.1\n"
                "plugin_path = plugins\n"
                "[route:app]\n"
                "path = /app\n"
                "backends =\n"
                f"    {self.b1.url}b1 name=b1\n"
                f"    {self.b2.url}b2 name=b2\n"
                f"    {self.b3.url}b3 name=b3\n"
                f"balancer = {balancer}\n" + tenantOptions
            )
        return path

    async def startRelay(self, path: str) -> int:
        """
        Read the configuration at C{path} as C{twistd wsrelay} does and
        start a relay from it, stopped at the end of the test.

        @return: The relay's port.
        """
        relay = RelayService(readConfig(path), reactor)
        relay.startService()
        self.addCleanup(relay.stopService)
        (port,) = await relay.whenListening()
        return int(port.getHost().port)

    async def test_routesByTenant(self) -> None:
        """
        acme's clients reach b1 then (b1 being busy) b2, globex's reach b3;
        each backend sees one connection.
        """
        port = await self.startRelay(
            self.writeConfig("tenants =\n    acme: b1 b2\n    globex: b3\n")
        )

        def run() -> list[str]:
            reached = []
            acme = {"X-Tenant": "acme"}
            with client(port, "/app", additional_headers=acme) as first:
                first.send("path")
                reached.append(first.recv(TIMEOUT))
                with client(port, "/app", additional_headers=acme) as second:
                    second.send("path")
                    reached.append(second.recv(TIMEOUT))
            with client(port, "/app", additional_headers={"X-Tenant": "globex"}) as c:
                c.send("path")
                reached.append(c.recv(TIMEOUT))
            return reached

        self.assertEqual(await inThread(run), ["/b1", "/b2", "/b3"])
        self.assertEqual(
            [b.connections for b in (self.b1, self.b2, self.b3)], [1, 1, 1]
        )

    async def test_unknownTenant(self) -> None:
        """
        Without C{default_backends}, a client of an unknown tenant gets 503
        and no backend sees it.
        """
        port = await self.startRelay(self.writeConfig("tenants = acme: b1\n"))

        def run() -> int:
            try:
                client(port, "/app", additional_headers={"X-Tenant": "initech"})
            except InvalidStatus as e:
                return int(e.response.status_code)
            raise AssertionError("connected")

        self.assertEqual(await inThread(run), 503)
        self.assertEqual(
            [b.connections for b in (self.b1, self.b2, self.b3)], [0, 0, 0]
        )

    async def test_defaultBackends(self) -> None:
        """
        With C{default_backends} and another C{tenant_header}, a client of
        an unknown tenant, or without the header, reaches the default.
        """
        port = await self.startRelay(
            self.writeConfig(
                "tenant_header = X-Org\ntenants = acme: b1\ndefault_backends = b2\n"
            )
        )

        def run() -> list[str]:
            reached = []
            for headers in ({"X-Org": "initech"}, {}, {"X-Tenant": "acme"}):
                with client(port, "/app", additional_headers=headers) as c:
                    c.send("path")
                    reached.append(c.recv(TIMEOUT))
            return reached

        self.assertEqual(await inThread(run), ["/b2", "/b2", "/b2"])

    def test_badOption(self) -> None:
        """
        A bad value of the balancer's option is a configuration error
        naming the route and the option.
        """
        path = self.writeConfig("tenants = acme: b1 b9\n")
        with self.assertRaises(ConfigError) as raised:
            RelayService(readConfig(path), reactor)
        message = str(raised.exception)
        self.assertIn("[route:app]", message)
        self.assertIn("tenants: acme: unknown backend 'b9'", message)

    def test_optionOfAnotherBalancer(self) -> None:
        """
        The example's options are accepted only in a route that selects it;
        elsewhere the error says which balancer they belong to.
        """
        path = self.writeConfig("tenants = acme: b1\n", balancer="round_robin")
        with self.assertRaises(ConfigError) as raised:
            readConfig(path)
        message = str(raised.exception)
        self.assertIn("[route:app] tenants: unknown key", message)
        self.assertIn("tenants is an option of balancer tenant", message)


class ClockSourceTests(TestCase):
    """
    The C{clock} source of the examples, found through C{plugin_path},
    feeding real clients of a fan-out route without backends.
    """

    def setUp(self) -> None:
        self.directory = copyExamples(self)

    def writeConfig(self, options: str) -> str:
        """
        Write a configuration whose fan-out route C{/time} has C{source =
        clock} and C{options}.

        @return: Its path.
        """
        path = os.path.join(self.directory, "clock.ini")
        with open(path, "w") as f:
            f.write(
                "[relay]\n"
                "listen = tcp:0:interface=127.0.0.1\n"
                "plugin_path = plugins\n"
                "[route:time]\n"
                "path = /time\n"
                "mode = fanout\n"
                "source = clock\n" + options
            )
        return path

    def test_discoverable(self) -> None:
        """
        The example is found by name, provides L{ISourceFactory}, declares
        its option and builds an L{ISource}; nothing is broken.
        """
        extendPluginPath([os.path.join(self.directory, "plugins")])
        factory = findPlugins(ISourceFactory)["clock"]
        self.assertTrue(verifyObject(ISourceFactory, factory))
        self.assertEqual(tuple(factory.options), ("clock_interval",))
        relay = RelayService(readConfig(self.writeConfig("")), reactor)
        channel = relay.sessionFactory.channel(relay.routes.routes[0], "")
        self.assertEqual(type(channel.source).__name__, "ClockSource")
        self.assertTrue(verifyObject(ISource, channel.source))
        self.assertEqual(brokenPlugins(ISourceFactory), {})

    def test_small(self) -> None:
        """
        The whole source, docstrings included, is under 70 lines.
        """
        path = os.path.join(EXAMPLES, "twisted", "plugins", "clock_source.py")
        with open(path) as f:
            self.assertLess(len(f.readlines()), 70)

    async def test_ticks(self) -> None:
        """
        Every client gets the ticks, as ISO 8601 times in UTC, in order.
        """
        relay = RelayService(
            readConfig(self.writeConfig("clock_interval = 0.05\n")), reactor
        )
        relay.startService()
        self.addCleanup(relay.stopService)
        (listening,) = await relay.whenListening()
        port = listening.getHost().port
        clients = [await inThread(client, port, "/time") for _ in range(2)]
        for c in clients:
            self.addCleanup(inThread, c.close)
        for c in clients:
            ticks = [
                datetime.fromisoformat(await inThread(c.recv, TIMEOUT))
                for _ in range(3)
            ]
            self.assertEqual({t.utcoffset() for t in ticks}, {timedelta(0)})
            self.assertEqual(ticks, sorted(ticks))
            self.assertEqual(len(set(ticks)), 3)

    def test_badOption(self) -> None:
        """
        A C{clock_interval} the source rejects is one configuration error
        naming the route's C{source} key.
        """
        path = self.writeConfig("clock_interval = soon\n")
        with self.assertRaises(ConfigError) as raised:
            RelayService(readConfig(path), reactor)
        self.assertEqual(
            str(raised.exception),
            f"{path}: [route:time] source: clock: clock_interval: expected seconds",
        )
