"""
The public interfaces of L{wsrelay.interfaces}, and wsrelay's dropins as
light as Twisted's own: listing plugins imports no implementation.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys

from twisted.plugin import IPlugin
from twisted.plugins import wsrelay_balancers, wsrelay_health, wsrelay_sources
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementedBy, implementer

from wsrelay import interfaces, routing
from wsrelay.config import ProxyRouteConfig

BUILTIN_BALANCERS = {
    "round_robin",
    "least_connections",
    "random_two",
    "first",
    "consistent_hash",
}
BUILTIN_CHECKERS = {"tcp", "websocket", "http"}

DROPINS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "twisted", "plugins"
)

LISTING = """
import json, shutil, sys, tempfile

import twisted.plugins
from twisted.plugin import getPlugins

from wsrelay.interfaces import IBalancerFactory, IHealthCheckerFactory, ISourceFactory

# Only wsrelay's dropins, copied where no dropin.cache was written yet, so
# that getPlugins imports them and reads every object they hold.
folder = tempfile.mkdtemp()
for name in sys.argv[2:]:
    shutil.copy(sys.argv[1] + "/" + name, folder)
twisted.plugins.__path__[:] = [folder]
found = {
    i.__name__: sorted((p.name, p.description, list(p.options)) for p in getPlugins(i))
    for i in (IBalancerFactory, IHealthCheckerFactory, ISourceFactory)
}
for name in sys.argv[2:]:
    __import__("twisted.plugins." + name[:-3])
shutil.rmtree(folder)
heavy = (
    "autobahn", "twisted.web", "wsrelay.balancers", "wsrelay.health", "wsrelay.fanout"
)
loaded = sorted(m for m in sys.modules if m.startswith(heavy))
print(json.dumps({"found": found, "loaded": loaded, "count": len(sys.modules)}))
"""


class InterfaceTests(SynchronousTestCase):
    """
    The public interfaces of L{wsrelay.interfaces}.
    """

    def test_connectionInfoPublic(self) -> None:
        """
        L{ConnectionInfo} is public in L{wsrelay.interfaces}, and it is the
        class the relay makes.
        """
        self.assertIs(routing.ConnectionInfo, interfaces.ConnectionInfo)
        info = interfaces.ConnectionInfo("192.0.2.1", "/app", "a=1", [("A", "b")])
        self.assertEqual(info.cookies, {})

    def test_typedMethods(self) -> None:
        """
        Every method of every interface annotates its parameters and its
        result.
        """
        with open(interfaces.__file__) as f:
            tree = ast.parse(f.read())
        methods = [
            (c.name, m)
            for c in tree.body
            if isinstance(c, ast.ClassDef) and c.name.startswith("I")
            for m in c.body
            if isinstance(m, ast.FunctionDef)
        ]
        self.assertGreaterEqual(len(methods), 6)
        for interface, method in methods:
            where = f"{interface}.{method.name}"
            self.assertIsNotNone(method.returns, where)
            for argument in method.args.args:
                self.assertIsNotNone(argument.annotation, where)

    def test_pluginDeclaredOnce(self) -> None:
        """
        Every factory interface extends L{IPlugin} through
        L{IPluginFactory}, and a built-in plugin declares its factory
        interface alone.
        """
        factories = (
            interfaces.IBalancerFactory,
            interfaces.IHealthCheckerFactory,
            interfaces.ISourceFactory,
        )
        for factory in factories:
            self.assertTrue(factory.extends(interfaces.IPluginFactory))
            self.assertTrue(factory.extends(IPlugin))
        for dropin in (wsrelay_balancers, wsrelay_health, wsrelay_sources):
            for plugin in vars(dropin).values():
                if IPlugin.providedBy(plugin):
                    declared = list(implementedBy(type(plugin)).interfaces())
                    self.assertEqual(len(declared), 1, plugin)
                    self.assertIn(declared[0], factories)


class LightDropinTests(SynchronousTestCase):
    """
    wsrelay's dropins are lazy, as Twisted's own (C{twisted_reactors.py}):
    listing plugins imports no implementation.
    """

    def test_listingLoadsNoImplementation(self) -> None:
        """
        In a fresh interpreter, importing every built-in dropin and running
        L{getPlugins} over them lists every built-in balancer and checker
        with its description and options, and loads neither Autobahn nor
        C{twisted.web}, nor the modules that implement the plugins.
        """
        names = sorted(n for n in os.listdir(DROPINS) if n.startswith("wsrelay_"))
        self.assertIn("wsrelay_balancers.py", names)
        self.assertIn("wsrelay_health.py", names)
        result = subprocess.run(
            [sys.executable, "-c", LISTING, DROPINS, *names],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        listed = json.loads(result.stdout)
        balancers = {n: o for n, _, o in listed["found"]["IBalancerFactory"]}
        checkers = {n: o for n, _, o in listed["found"]["IHealthCheckerFactory"]}
        self.assertEqual(set(balancers), BUILTIN_BALANCERS)
        self.assertEqual(balancers["consistent_hash"], ["hash_on"])
        self.assertEqual(set(checkers), BUILTIN_CHECKERS)
        self.assertEqual(checkers["http"], ["health_path", "health_status"])
        sources = {n: o for n, _, o in listed["found"]["ISourceFactory"]}
        self.assertEqual(set(sources), {"websocket", "redis"})
        self.assertEqual(listed["loaded"], [])


class _Hooks:
    """
    A balancer's C{pick} and both load hooks, declaring nothing.
    """

    def pick(self, candidates: object, info: object) -> None:
        return None

    def connectionOpened(self, backend: object) -> None:
        pass

    def connectionClosed(self, backend: object) -> None:
        pass


class LoadListenerTests(SynchronousTestCase):
    """
    Which object of a route hears of connections opening and closing
    (L{routing.Route.loadListener}).
    """

    def route(self, balancer: object) -> routing.Route:
        """
        @return: A route with no backends and C{balancer}.
        """
        config = ProxyRouteConfig(name="r", path="/", backends=())
        return routing.Route(
            config,
            (),
            balancer,
            None,  # type: ignore[arg-type]
        )

    def test_declared(self) -> None:
        """
        A balancer that declares L{interfaces.ILoadListener} is its own
        listener.
        """
        balancer = implementer(interfaces.IBalancer, interfaces.ILoadListener)(
            type("Declared", (_Hooks,), {})
        )()
        self.assertIs(self.route(balancer).loadListener, balancer)

    def test_undeclaredHooks(self) -> None:
        """
        A balancer written before the hooks were optional (declaring only
        L{interfaces.IBalancer}, with both methods) is still told.
        """
        balancer = implementer(interfaces.IBalancer)(type("Old", (_Hooks,), {}))()
        self.assertIs(self.route(balancer).loadListener, balancer)

    def test_none(self) -> None:
        """
        A balancer without the hooks has no listener: nothing is called.
        """

        @implementer(interfaces.IBalancer)
        class Plain:
            def pick(self, candidates: object, info: object) -> None:
                return None

        self.assertIsNone(self.route(Plain()).loadListener)
