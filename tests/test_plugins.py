"""
Finding balancer and health-checker plugins: the built-in ones by name, and
broken third-party dropins reported by name without stopping the others.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
import tempfile
import textwrap
import uuid

import twisted.plugins
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.logger import LogEvent, LogLevel, formatEvent, globalLogPublisher
from twisted.plugins import wsrelay_balancers
from twisted.trial.unittest import SynchronousTestCase, TestCase
from websockets.sync.server import ServerConnection
from zope.interface.verify import verifyObject

from tests.support import TIMEOUT, client, inThread, script, startBackend
from tests.support.waiting import waitFor
from wsrelay.interfaces import IBalancerFactory, IHealthCheckerFactory
from wsrelay.plugins import (
    KINDS,
    balancerFactories,
    brokenPlugins,
    extendPluginPath,
    findPlugins,
    healthCheckerFactories,
    logPlugins,
)
from wsrelay.service import RelayService
from wsrelay.tap import Options, StartRefused, readConfig

BUILTIN_BALANCERS = set("round_robin least_connections random_two first".split())
BUILTIN_BALANCERS.add("consistent_hash")
BUILTIN_CHECKERS = {"tcp", "websocket", "http"}

GOOD = '''
"""
A working balancer plugin, and one that declares the interface but has no
build method.
"""
from zope.interface import implementer
from wsrelay.dropins import BalancerPlugin
from wsrelay.interfaces import IBalancerFactory

good = BalancerPlugin("{name}", "wsrelay.balancers.RoundRobin", "works")

@implementer(IBalancerFactory)
class Half:
    name = "{name}_half"
    description = "no build"
    options = ()

half = Half()
'''


def temporaryFolder(testCase: SynchronousTestCase) -> str:
    """
    @return: A new empty folder, removed at the end of C{testCase}.
    """
    folder = tempfile.mkdtemp(prefix="wsrelay-plugins-")
    testCase.addCleanup(shutil.rmtree, folder, ignore_errors=True)
    return folder


def addDropins(testCase: SynchronousTestCase, **sources: str) -> dict[str, str]:
    """
    Write dropins into a new plugin folder added with L{extendPluginPath},
    which is taken off C{twisted.plugins.__path__} (and the dropins out of
    C{sys.modules}) at the end of C{testCase}.

    @param sources: The source of each dropin by a short name; the file
        names get a unique prefix, so that no two tests share a module.
    @return: The dropins' full module names by short name.
    """
    folder = temporaryFolder(testCase)
    prefix = f"wsrelay_test_{uuid.uuid4().hex[:8]}_"
    modules = {}
    for short, source in sources.items():
        with open(os.path.join(folder, prefix + short + ".py"), "w") as f:
            f.write(textwrap.dedent(source))
        modules[short] = "twisted.plugins." + prefix + short

    def cleanUp() -> None:
        twisted.plugins.__path__.remove(folder)
        for name in modules.values():
            sys.modules.pop(name, None)
            vars(twisted.plugins).pop(name.rpartition(".")[2], None)

    extendPluginPath([folder])
    testCase.addCleanup(cleanUp)
    return modules


def captureLog(testCase: SynchronousTestCase) -> list[LogEvent]:
    """
    @return: A list that receives every log event until the end of
        C{testCase}.
    """
    events: list[LogEvent] = []
    observer = events.append
    globalLogPublisher.addObserver(observer)
    testCase.addCleanup(globalLogPublisher.removeObserver, observer)
    return events


def warnings(events: list[LogEvent]) -> list[str]:
    """
    @return: The text of the warnings in C{events}.
    """
    return [formatEvent(e) for e in events if e.get("log_level") == LogLevel.warn]


class BuiltinTests(SynchronousTestCase):
    """
    wsrelay's own plugins are found as any other.
    """

    def test_balancers(self) -> None:
        """
        The built-in balancers are found by name, each providing
        L{IBalancerFactory}, with nothing reported broken.
        """
        found = balancerFactories()
        self.assertTrue(BUILTIN_BALANCERS <= set(found), sorted(found))
        self.assertIs(found["round_robin"], wsrelay_balancers.roundRobin)
        for name, factory in found.items():
            self.assertEqual(factory.name, name)
            self.assertTrue(verifyObject(IBalancerFactory, factory))
        self.assertEqual(brokenPlugins(IBalancerFactory), {})

    def test_healthCheckers(self) -> None:
        """
        The built-in health checkers are found by name, each providing
        L{IHealthCheckerFactory}.
        """
        found = healthCheckerFactories()
        self.assertTrue(BUILTIN_CHECKERS <= set(found), sorted(found))
        for name, factory in found.items():
            self.assertEqual(factory.name, name)
            self.assertTrue(verifyObject(IHealthCheckerFactory, factory))
        self.assertEqual(brokenPlugins(IHealthCheckerFactory), {})

    def test_find(self) -> None:
        """
        L{findPlugins} finds the plugins of any interface, and
        L{brokenPlugins} lists what its last search skipped.
        """
        self.assertEqual(findPlugins(IBalancerFactory), balancerFactories())
        self.assertEqual(findPlugins(IHealthCheckerFactory), healthCheckerFactories())
        self.assertEqual(brokenPlugins(IBalancerFactory), {})


class ThirdPartyTests(SynchronousTestCase):
    """
    Third-party dropins in a folder added with L{extendPluginPath}; a
    broken one is skipped and reported by name, in one warning line and
    without a traceback, and the others are still used.
    """

    def setUp(self) -> None:
        self.events = captureLog(self)
        self.name = "good_" + uuid.uuid4().hex[:8]

    def assertOneWarning(self, key: str, *parts: str) -> None:
        """
        Exactly one warning was logged about C{key}, on one line, with each
        of C{parts}; nothing was logged as an error.
        """
        about = [w for w in warnings(self.events) if f"plugin {key} skipped" in w]
        self.assertEqual(len(about), 1, warnings(self.events))
        self.assertNotIn("\n", about[0])
        self.assertNotIn("Traceback", about[0])
        for part in parts:
            self.assertIn(part, about[0])
        self.assertEqual([e for e in self.events if e.get("isError")], [])
        self.assertEqual([e for e in self.events if "log_failure" in e], [])

    def test_working(self) -> None:
        """
        A working dropin's plugin is found next to the built-in ones.
        """
        addDropins(self, good=GOOD.format(name=self.name))
        found = balancerFactories()
        self.assertIn(self.name, found)
        self.assertTrue(BUILTIN_BALANCERS <= set(found))

    def test_syntaxError(self) -> None:
        """
        A dropin with a syntax error is reported by module name and file,
        with the exception; the other plugins are found.
        """
        modules = addDropins(
            self, broken="def broken(:\n", good=GOOD.format(name=self.name)
        )
        found = balancerFactories()
        self.assertIn(self.name, found)
        self.assertIn("round_robin", found)
        broken = brokenPlugins(IBalancerFactory)
        reason = broken[modules["broken"]]
        self.assertIn("SyntaxError", reason)
        self.assertIn(modules["broken"].rpartition(".")[2] + ".py", reason)
        self.assertOneWarning(modules["broken"], "SyntaxError")

    def test_importError(self) -> None:
        """
        A dropin that fails to import a module is reported by module name
        with the exception; the other plugins are found.
        """
        modules = addDropins(
            self,
            broken="import wsrelay_no_such_module\n",
            good=GOOD.format(name=self.name),
        )
        found = balancerFactories()
        self.assertIn(self.name, found)
        reason = brokenPlugins(IBalancerFactory)[modules["broken"]]
        self.assertIn(
            "ModuleNotFoundError: No module named 'wsrelay_no_such_module'", reason
        )
        self.assertOneWarning(modules["broken"], "wsrelay_no_such_module")

    def test_errorInDependency(self) -> None:
        """
        An exception raised by a module the dropin imports is blamed on the
        dropin.
        """
        modules = addDropins(self, broken="import json\njson.loads('{')\n")
        balancerFactories()
        reason = brokenPlugins(IBalancerFactory)[modules["broken"]]
        self.assertIn("JSONDecodeError", reason)

    def test_importErrorReportedForEveryInterface(self) -> None:
        """
        A dropin that fails to import might have held plugins of any kind:
        it is reported for health checkers too, and warned about once.
        """
        modules = addDropins(self, broken="raise RuntimeError('no config')\n")
        self.assertTrue(BUILTIN_BALANCERS <= set(balancerFactories()))
        self.assertTrue(BUILTIN_CHECKERS <= set(healthCheckerFactories()))
        reason = "RuntimeError: no config"
        self.assertIn(reason, brokenPlugins(IBalancerFactory)[modules["broken"]])
        self.assertIn(reason, brokenPlugins(IHealthCheckerFactory)[modules["broken"]])
        self.assertOneWarning(modules["broken"], reason)

    def test_doesNotVerify(self) -> None:
        """
        A plugin that declares L{IBalancerFactory} without implementing it
        is reported by its name, naming the missing method; the working
        plugin of the same dropin is found.
        """
        modules = addDropins(self, good=GOOD.format(name=self.name))
        found = balancerFactories()
        self.assertIn(self.name, found)
        self.assertNotIn(self.name + "_half", found)
        reason = brokenPlugins(IBalancerFactory)[self.name + "_half"]
        self.assertIn(modules["good"] + ".half", reason)
        self.assertIn("does not provide IBalancerFactory", reason)
        self.assertIn("build(backends, options)", reason)
        self.assertOneWarning(self.name + "_half", "build")

    def test_duplicateName(self) -> None:
        """
        A plugin named like one found before it (here a built-in) is
        skipped and reported by its place, naming the one that is used.
        """
        modules = addDropins(
            self,
            dup="""
            from wsrelay.dropins import BalancerPlugin

            dup = BalancerPlugin(
                "round_robin", "wsrelay.balancers.First", "a second round_robin"
            )
            """,
        )
        found = balancerFactories()
        self.assertIs(found["round_robin"], wsrelay_balancers.roundRobin)
        where = modules["dup"] + ".dup"
        reason = brokenPlugins(IBalancerFactory)[where]
        self.assertIn("'round_robin' is taken by", reason)
        self.assertIn("twisted.plugins.wsrelay_balancers.roundRobin", reason)
        self.assertOneWarning(where, "round_robin")

    def test_duplicateThirdParty(self) -> None:
        """
        Of two third-party plugins with one name, the first found (by file
        name within a folder) is used.
        """
        source = """
        from wsrelay.dropins import BalancerPlugin

        plugin = BalancerPlugin("same_name", "wsrelay.balancers.First", "{which}")
        """
        modules = addDropins(
            self, a=source.format(which="a"), b=source.format(which="b")
        )
        found = balancerFactories()
        self.assertEqual(found["same_name"].description, "a")
        self.assertIn(modules["b"] + ".plugin", brokenPlugins(IBalancerFactory))

    def test_noName(self) -> None:
        """
        A plugin whose C{name} is not a non-empty string is reported by its
        place.
        """
        modules = addDropins(
            self,
            unnamed="""
            from wsrelay.dropins import BalancerPlugin

            unnamed = BalancerPlugin("", "wsrelay.balancers.First", "no name")
            """,
        )
        balancerFactories()
        where = modules["unnamed"] + ".unnamed"
        self.assertIn("name", brokenPlugins(IBalancerFactory)[where])

    def test_warnedOnce(self) -> None:
        """
        Finding plugins again (the configuration reader and the service
        both do) does not repeat a warning.
        """
        modules = addDropins(self, broken="def broken(:\n")
        balancerFactories()
        balancerFactories()
        healthCheckerFactories()
        self.assertIn(modules["broken"], brokenPlugins(IBalancerFactory))
        self.assertOneWarning(modules["broken"])

    def test_twistedLogUntouched(self) -> None:
        """
        Dropins are imported with Twisted's own C{log} in
        L{twisted.plugin}: the search patches nothing.
        """
        addDropins(
            self,
            check="""
            import twisted.plugin
            import twisted.python.log

            if twisted.plugin.log is not twisted.python.log:
                raise RuntimeError("twisted.plugin.log is patched")
            """,
        )
        balancerFactories()
        self.assertEqual(brokenPlugins(IBalancerFactory), {})

    def test_notAPlugin(self) -> None:
        """
        A dropin without plugin objects reports nothing.
        """
        addDropins(self, empty="x = 1\n")
        balancerFactories()
        self.assertEqual(brokenPlugins(IBalancerFactory), {})

    def test_logPlugins(self) -> None:
        """
        L{logPlugins} logs one line listing the balancers and health
        checkers found, and the broken plugins skipped.
        """
        modules = addDropins(
            self, good=GOOD.format(name=self.name), broken="def broken(:\n"
        )
        logPlugins()
        infos = [
            formatEvent(e)
            for e in self.events
            if e.get("log_level") == LogLevel.info
            and e.get("log_namespace") == "wsrelay.plugins"
        ]
        self.assertEqual(len(infos), 1)
        (line,) = infos
        for name in (*BUILTIN_BALANCERS, *BUILTIN_CHECKERS, self.name):
            self.assertIn(name, line)
        self.assertIn(modules["broken"], line)
        self.assertIn(self.name + "_half", line)

    def test_kinds(self) -> None:
        """
        A kind of plugin is one entry of L{KINDS}: L{logPlugins} lists the
        plugins of each kind in its line, and the broken ones of each.
        """
        modules = addDropins(
            self,
            kind=f"""
            from twisted.plugin import IPlugin
            from zope.interface import Attribute, Interface, implementer

            class IThing(Interface):
                name = Attribute("the name")

            @implementer(IPlugin, IThing)
            class Thing:
                name = "{self.name}_thing"

            thing = Thing()
            nameless = Thing()
            nameless.name = ""
            """,
        )
        thing = importlib.import_module(modules["kind"]).IThing
        self.patch(sys.modules["wsrelay.plugins"], "KINDS", {**KINDS, "things": thing})
        logPlugins()
        [line] = [
            formatEvent(e)
            for e in self.events
            if e.get("log_level") == LogLevel.info
            and e.get("log_namespace") == "wsrelay.plugins"
        ]
        self.assertIn(f"; things {self.name}_thing; broken ", line)
        self.assertIn(modules["kind"] + ".nameless", line)


class PluginPathTests(SynchronousTestCase):
    """
    L{extendPluginPath} takes a folder of dropins or a folder holding
    C{twisted/plugins/}.
    """

    def extend(self, directory: str) -> list[str]:
        """
        Extend the plugin path with C{directory}, undone at the end of the
        test.

        @return: The folders added to C{twisted.plugins.__path__}.
        """
        before = list(twisted.plugins.__path__)
        extendPluginPath([directory])
        added = [p for p in twisted.plugins.__path__ if p not in before]

        def cleanUp() -> None:
            for p in added:
                twisted.plugins.__path__.remove(p)

        self.addCleanup(cleanUp)
        return added

    def test_flat(self) -> None:
        """
        A folder without C{twisted/plugins/} is itself the dropin folder.
        """
        folder = temporaryFolder(self)
        self.assertEqual(self.extend(folder), [folder])

    def test_nested(self) -> None:
        """
        A folder holding C{twisted/plugins/} adds that folder.
        """
        folder = temporaryFolder(self)
        nested = os.path.join(folder, "twisted", "plugins")
        os.makedirs(nested)
        self.assertEqual(self.extend(folder), [nested])

    def test_once(self) -> None:
        """
        A folder already searched is not added again.
        """
        folder = temporaryFolder(self)
        self.extend(folder)
        self.assertEqual(self.extend(folder), [])


HOOKS = """
from twisted.internet.defer import Deferred
from zope.interface import implementer
from wsrelay.dropins import BalancerPlugin
from wsrelay.interfaces import IBalancer, ILoadListener
events, waiting = [], {}

def happened(event):
    events.append(event)
    for d in waiting.pop(event, []):
        d.callback(event)

@implementer(IBalancer)
class Plain:
    def __init__(self, backends, options):
        pass
    def pick(self, candidates, connection):
        return candidates[0]

@implementer(IBalancer, ILoadListener)
class Listening(Plain):
    def connectionOpened(self, backend):
        happened(("opened", backend.name))
    def connectionClosed(self, backend):
        happened(("closed", backend.name))

@implementer(IBalancer, ILoadListener)
class Other(Plain):
    def connectionOpened(self, backend):
        happened(("other opened", backend.name))
    def connectionClosed(self, backend):
        happened(("other closed", backend.name))

plain = BalancerPlugin("{name}_plain", Plain, "no load hooks")
listening = BalancerPlugin("{name}_listening", Listening, "load hooks")
other = BalancerPlugin("{name}_other", Other, "load hooks, told apart")
"""


def greet(connection: ServerConnection) -> None:
    """
    A backend that says C{hello} as a client connects, then echoes.
    """
    connection.send("hello")
    script(connection)


class LoadHookTests(TestCase):
    """
    The load hooks (L{ILoadListener}) are optional: the relay calls them
    only on a balancer that provides them, in proxy and fan-out routes.
    """

    async def test_optional(self) -> None:
        """
        A balancer without load hooks serves a proxy route and a fan-out
        route; one with them is told when its connection opens and closes.
        """
        name = "hooks_" + uuid.uuid4().hex[:8]
        modules = addDropins(self, hooks=HOOKS.replace("{name}", name))
        backend = startBackend(self)
        source = startBackend(self, handler=greet)
        path = os.path.join(temporaryFolder(self), "relay.ini")
        with open(path, "w") as f:
            f.write(
                "[relay]\nlisten = tcp:0:interface=127.0.0.1\n"
                f"[route:plain]\npath = /plain\nbalancer = {name}_plain\n"
                f"backends = {backend.url} name=p\n"
                f"[route:hooked]\npath = /hooked\nbalancer = {name}_listening\n"
                f"backends = {backend.url} name=h\n"
                f"[route:feed]\npath = /feed\nmode = fanout\nreplay = 1\n"
                f"balancer = {name}_plain\nbackends = {source.url} name=f\n"
            )
        relay = RelayService(readConfig(path), reactor)
        relay.startService()
        self.addCleanup(relay.stopService)
        number = (await relay.whenListening())[0].getHost().port
        hooks = sys.modules[modules["hooks"]]
        closed: Deferred[object] = Deferred()
        hooks.waiting[("closed", "h")] = [closed]

        def run() -> list[str]:
            answers = []
            for route in ("/plain", "/hooked"):
                with client(number, route) as c:
                    c.send("echo " + route)
                    answers.append(c.recv(TIMEOUT))
            with client(number, "/feed") as c:
                # The source's greeting, replayed if the client joins later.
                answers.append(c.recv(TIMEOUT))
            return answers

        answers = await inThread(run)
        self.assertEqual(answers, ["echo /plain", "echo /hooked", "hello"])
        await closed.addTimeout(TIMEOUT, reactor)
        self.assertEqual(hooks.events, [("opened", "h"), ("closed", "h")])


class LoadHookReloadTests(TestCase):
    """
    A fan-out source's connection is closed on the balancer it was opened
    on, whatever balancer a reload put in force meanwhile.
    """

    async def test_sourceAcrossReload(self) -> None:
        """
        The route's balancer changes by a reload while the source stays
        connected: when the channel stops, the first balancer is told of
        the closing, the second of nothing.
        """
        name = "hooks_" + uuid.uuid4().hex[:8]
        modules = addDropins(self, hooks=HOOKS.replace("{name}", name))
        source = startBackend(self, handler=greet)
        path = os.path.join(temporaryFolder(self), "relay.ini")
        route = (
            "[relay]\nlisten = tcp:0:interface=127.0.0.1\n"
            "[route:feed]\npath = /feed\nmode = fanout\n"
            f"backends = {source.url} name=f\nbalancer = {name}_"
        )
        with open(path, "w") as f:
            f.write(route + "listening\n")
        relay = RelayService(readConfig(path), reactor)
        relay.startService()
        self.addCleanup(relay.stopService)
        await relay.whenListening()
        hooks = sys.modules[modules["hooks"]]
        await waitFor(lambda: ("opened", "f") in hooks.events)
        with open(path, "w") as f:
            f.write(route + "other\n")
        await relay.operations.reload()
        channel = relay.channels[("feed", "")]
        self.assertEqual(type(channel.route.balancer).__name__, "Other")
        await channel.stop().addTimeout(TIMEOUT, reactor)
        self.assertEqual(hooks.events, [("opened", "f"), ("closed", "f")])


class StartupErrorTests(SynchronousTestCase):
    """
    A plugin that cannot be used by the route that chooses it stops the
    start with one line naming the file, the route's section and the key.
    """

    def setUp(self) -> None:
        self.name = "bad_" + uuid.uuid4().hex[:8]
        self.path = os.path.join(temporaryFolder(self), "relay.ini")

    def refusal(self, route: str) -> str:
        """
        @return: The one line (without C{wsrelay: }) that C{twistd wsrelay}
            refuses to start with, given a route C{route} (its body).
        """
        with open(self.path, "w") as f:
            f.write(
                "[relay]\nlisten = tcp:0:interface=127.0.0.1\n"
                "[route:app]\npath = /app\nbackends = ws://127.0.0.1:9/\n" + route
            )
        with self.assertRaises(StartRefused) as raised:
            Options().parseOptions(["--config", self.path])
        line = str(raised.exception)
        self.assertEqual(line.splitlines(), [line])
        return line.removeprefix("wsrelay: ")

    def test_optionIsBuiltinKey(self) -> None:
        """
        A balancer or a health checker that declares an option named as a
        built-in route key (which the parser would read as the built-in
        one) cannot be chosen.
        """
        addDropins(
            self,
            clash=f"""
            from wsrelay.dropins import BalancerPlugin as B, HealthCheckerPlugin as H

            b = B("{self.name}", "wsrelay.balancers.First", "d", ("weight_x", "path"))
            c = H("{self.name}", "wsrelay.health.checkers.TCPChecker", "d", ("fall",))
            """,
        )
        self.assertEqual(
            self.refusal(f"balancer = {self.name}\n"),
            f"{self.path}: [route:app] balancer: {self.name}: its option 'path'"
            " is a built-in route key",
        )
        self.assertEqual(
            self.refusal(f"health = {self.name}\n"),
            f"{self.path}: [route:app] health: {self.name}: its option 'fall'"
            " is a built-in route key",
        )

    def test_implementationDoesNotImport(self) -> None:
        """
        A lazy plugin whose implementation cannot be imported is refused
        when a route chooses it, naming what could not be loaded.
        """
        addDropins(
            self,
            missing=f"""
            from wsrelay.dropins import BalancerPlugin as B

            missing = B("{self.name}", "wsrelay_no_such_module.Balancer", "gone")
            """,
        )
        self.assertIn(self.name, balancerFactories())
        line = self.refusal(f"balancer = {self.name}\n")
        self.assertTrue(
            line.startswith(
                f"{self.path}: [route:app] balancer: {self.name}: cannot load"
                " wsrelay_no_such_module.Balancer: "
            ),
            line,
        )
