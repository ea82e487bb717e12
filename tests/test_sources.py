"""
Fan-out sources as plugins (C{source = NAME}): the built-in C{websocket}
and C{redis} plugins found by name, the config's C{source} key and the
options of the chosen plugin, and a third-party source found through a
dropin in a plugin folder, feeding a real relay's clients.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import textwrap
import uuid
from typing import Any

import twisted.plugins
from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.logger import LogEvent, LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests.support import TIMEOUT, client, inThread
from tests.support.fanout import Source
from tests.support.waiting import waitFor
from wsrelay.config import ConfigError, parseConfig
from wsrelay.fanout import UP, Channel
from wsrelay.fanout.context import SourceContext
from wsrelay.fanout.source import WebSocketSource
from wsrelay.interfaces import ISource, ISourceChannel, ISourceContext, ISourceFactory
from wsrelay.plugins import brokenPlugins, findPlugins, logPlugins
from wsrelay.routes import readConfig
from wsrelay.service import RelayService
from wsrelay.ws.framing import BINARY, TEXT, frame

#: A dropin holding a third-party source: what a test tells it, it
#: delivers; C{relaying_*} relays the route's backends through the
#: built-in websocket source (C{context.websocket}), as the redis source's
#: ingest does, numbering each message.
DROPIN = '''
"""
Fan-out sources for tests.
"""
from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from wsrelay.dropins import SourcePlugin
from wsrelay.interfaces import ISource, ISourceChannel


@implementer(ISource)
class FakeSource:
    """
    Delivers what a test hands its channel; keeps what clients send.
    """

    def __init__(self, channel, options, context):
        if options.get("fake_greeting") == "bad":
            raise ValueError("fake_greeting must not be bad")
        self.channel = channel
        self.options = options
        self.context = context
        self.running = False
        self.sent = []
        self.stopping = None

    def start(self):
        self.running = True
        self.channel.stateChanged("up")

    def stop(self):
        if not self.running:
            return succeed(None)
        self.running = False
        self.stopping = Deferred()
        return self.stopping

    def send(self, opcode, payload):
        self.sent.append((opcode, payload))
        return True


@implementer(ISource, ISourceChannel)
class RelayingSource:
    """
    Feeds its channel from the route's websocket source, which feeds this
    object: each message goes on with an id.
    """

    def __init__(self, channel, options, context):
        self.channel = channel
        self.name = channel.name + " (relayed)"
        self.key = channel.key
        self.upstream = context.websocket(self)
        self.count = 0

    def start(self):
        self.upstream.start()

    def stop(self):
        return self.upstream.stop()

    def send(self, opcode, payload):
        return self.upstream.send(opcode, payload)

    def deliver(self, messages):
        out = []
        for opcode, payload, _ in messages:
            self.count += 1
            out.append((opcode, payload + b" #" + str(self.count).encode(), None))
        self.channel.deliver(out)

    def stateChanged(self, state):
        self.channel.stateChanged(state)


fake = SourcePlugin(
    "fake_{tag}", FakeSource, "delivers what a test tells it", ("fake_greeting",)
)
relaying = SourcePlugin("relaying_{tag}", RelayingSource, "relays the backends")
broken = SourcePlugin("broken_{tag}", "wsrelay.nowhere.Missing", "never imports")
'''


def sourceDropin(testCase: SynchronousTestCase) -> tuple[str, str]:
    """
    Write L{DROPIN} into a new plugin folder (as C{twisted/plugins/} in
    it, as C{plugin_path} users lay it out); at the end of C{testCase},
    take it off C{twisted.plugins.__path__}, forget the module and remove
    the folder.

    @return: The folder (for C{plugin_path}) and the plugins' name tag.
    """
    folder = tempfile.mkdtemp(prefix="wsrelay-sources-")
    testCase.addCleanup(shutil.rmtree, folder, ignore_errors=True)
    plugins = os.path.join(folder, "twisted", "plugins")
    os.makedirs(plugins)
    tag = uuid.uuid4().hex[:8]
    module = f"wsrelay_test_sources_{tag}"
    with open(os.path.join(plugins, module + ".py"), "w") as f:
        f.write(textwrap.dedent(DROPIN).replace("{tag}", tag))
    before = list(twisted.plugins.__path__)

    def cleanUp() -> None:
        for p in [p for p in twisted.plugins.__path__ if p not in before]:
            twisted.plugins.__path__.remove(p)
        sys.modules.pop("twisted.plugins." + module, None)
        vars(twisted.plugins).pop(module, None)

    testCase.addCleanup(cleanUp)
    return folder, tag


def configFile(testCase: SynchronousTestCase, text: str) -> str:
    """
    @return: The path of a new file holding C{text}, removed at the end
        of C{testCase}.
    """
    directory = tempfile.mkdtemp(prefix="wsrelay-sources-ini-")
    testCase.addCleanup(shutil.rmtree, directory, ignore_errors=True)
    path = os.path.join(directory, "relay.ini")
    with open(path, "w") as f:
        f.write(text)
    return path


ROUTE = "[relay]\nlisten = tcp:0\n[route:feed]\npath = /feed\nmode = fanout\n"


class BuiltinSourceTests(SynchronousTestCase):
    """
    wsrelay's own sources are plugins found as any other.
    """

    def test_discoverable(self) -> None:
        """
        C{websocket} and C{redis} are found by name, provide
        L{ISourceFactory}, and C{redis} declares its options; nothing is
        reported broken.
        """
        found = findPlugins(ISourceFactory)
        self.assertLessEqual({"websocket", "redis"}, set(found))
        for name, factory in found.items():
            self.assertEqual(factory.name, name)
            self.assertTrue(verifyObject(ISourceFactory, factory))
        self.assertEqual(found["websocket"].options, ())
        self.assertEqual(
            set(found["redis"].options),
            {
                "redis",
                "redis_password_file",
                "redis_ca_file",
                "stream",
                "history",
                "ingest",
                "lease",
            },
        )
        self.assertEqual(brokenPlugins(ISourceFactory), {})

    def test_logged(self) -> None:
        """
        The start-up line that lists the plugins found lists the sources.
        """
        events: list[LogEvent] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        logPlugins()
        (line,) = [
            formatEvent(e)
            for e in events
            if e.get("log_namespace") == "wsrelay.plugins"
            and e.get("log_level") == LogLevel.info
        ]
        self.assertRegex(line, r"; sources ([a-z_]+, )*redis, ([a-z_]+, )*websocket;")

    def test_websocketBuilds(self) -> None:
        """
        The C{websocket} plugin builds, through the relay's
        L{SourceContext}, a L{WebSocketSource} feeding the channel, which
        provides L{ISource}; the channel is an L{ISourceChannel} whose
        source it is.
        """
        relay = RelayService(
            parseConfig(ROUTE + "backends = ws://127.0.0.1:1/\n", "t.ini"),
            reactor,
        )
        channel = relay.sessionFactory.channel(relay.routes.routes[0], "")
        source = channel.source
        self.assertIsInstance(source, WebSocketSource)
        self.assertTrue(verifyObject(ISource, source))
        assert isinstance(source, WebSocketSource)
        self.assertIs(source.channel, channel)
        context = SourceContext(
            reactor, "feed", lambda: channel.route, relay.connector, relay.clock
        )
        self.assertTrue(verifyObject(ISourceContext, context))
        built = findPlugins(ISourceFactory)["websocket"].build(channel, {}, context)
        self.assertIsInstance(built, WebSocketSource)


class Member:
    """
    Stands for a L{wsrelay.fanout.FanoutSession}: keeps what it is sent
    (by L{send}: it has no C{descriptor}).
    """

    descriptor = None
    tcp = None

    def __init__(self) -> None:
        self.mark = 0
        self.writes: list[tuple[bytes, int]] = []

    def send(self, data: bytes, count: int = 1) -> None:
        """
        Keep one write of C{count} messages.
        """
        self.writes.append((data, count))


@implementer(ISource)
class Silent:
    """
    A source that takes no client messages and reports nothing itself.
    """

    def start(self) -> None:
        """
        Nothing to start.
        """

    def stop(self) -> Deferred[None]:
        """
        Nothing to stop.
        """
        return succeed(None)

    def send(self, opcode: int, payload: bytes) -> bool:
        """
        Refuse every message.
        """
        return False


class ChannelTests(SynchronousTestCase):
    """
    L{Channel} as the L{ISourceChannel} of any source.
    """

    def channel(self, extra: str = "") -> Channel:
        """
        @return: A channel of an eager fan-out route whose source is a
            L{Silent}, not started.
        """
        relay = RelayService(
            parseConfig(ROUTE + "backends = ws://127.0.0.1:1/\n" + extra, "t.ini"),
            reactor,
        )
        route = relay.routes.routes[0]
        return Channel(route, "", relay.registry, relay.clock, lambda c: Silent())

    def test_deliver(self) -> None:
        """
        One C{deliver} call is framed once per message and written to each
        member in one write when the channel flushes (at the end of the
        reactor turn), whatever the opcodes and ids; the replay keeps each
        message framed.
        """
        channel = self.channel("replay = 2\n")
        self.assertTrue(verifyObject(ISourceChannel, channel))
        members = [Member(), Member()]
        for m in members:
            channel.join(m)
        channel.deliver([(1, b"a", "1-0"), (2, b"\x00", None), (1, b"c", "3-0")])
        self.assertEqual(members[0].writes, [])
        channel.flush()
        expected = frame(TEXT, b"a") + frame(BINARY, b"\x00") + frame(TEXT, b"c")
        for m in members:
            self.assertEqual(m.writes, [(expected, 3)])
        self.assertEqual((channel.messagesIn, channel.deliveries), (3, 6))
        self.assertEqual(
            list(channel.replay), [frame(BINARY, b"\x00"), frame(TEXT, b"c")]
        )
        channel.deliver([])
        self.assertEqual(members[0].writes, [(expected, 3)])

    def test_state(self) -> None:
        """
        The source's state is the channel's while the source runs, each
        C{up} counted as a connect; a client message the source does not
        take is counted as dropped.
        """
        channel = self.channel()
        channel.stateChanged(UP)
        self.assertEqual((channel.state, channel.connects), ("idle", 0))
        channel.start()
        self.assertEqual(channel.state, "connecting")
        channel.stateChanged(UP)
        channel.stateChanged("waiting")
        channel.stateChanged(UP)
        self.assertEqual((channel.state, channel.connects), (UP, 2))
        channel.sendUpstream(1, b"x")
        self.assertEqual(channel.clientDrops, 1)
        self.assertIsNone(self.successResultOf(channel.stop()))
        self.assertEqual(channel.state, "stopped")


class SourceConfigTests(SynchronousTestCase):
    """
    C{source = NAME} in a fan-out route, and the options of that plugin.
    """

    def refused(self, text: str, **plugins: Any) -> str:
        """
        @return: The message of the L{ConfigError} C{text} gives.
        """
        with self.assertRaises(ConfigError) as caught:
            parseConfig(ROUTE + text, "t.ini", **plugins)
        message = str(caught.exception)
        self.assertNotIn("\n", message)
        return message

    def test_default(self) -> None:
        """
        A fan-out route without C{source} reads its backends: C{websocket}.
        """
        config = parseConfig(ROUTE + "backends = ws://127.0.0.1:1/\n", "t.ini")
        route = config.routes[0]
        assert route.mode == "fanout"
        self.assertEqual((route.source, dict(route.sourceOptions)), ("websocket", {}))

    def test_unknown(self) -> None:
        """
        An unknown source is one line naming the file, section and key, and
        the installed sources.
        """
        self.assertEqual(
            self.refused("source = kafka\nbackends = ws://127.0.0.1:1/\n"),
            "t.ini: [route:feed] source: unknown source 'kafka';"
            " installed: redis, websocket",
        )

    def test_backendsRequiredByWebsocket(self) -> None:
        """
        The C{websocket} source needs C{backends}, chosen or by default.
        """
        for text in ("", "source = websocket\n"):
            self.assertEqual(
                self.refused(text),
                "t.ini: [route:feed] backends: required key missing",
            )

    def test_redisWithoutBackends(self) -> None:
        """
        C{source = redis} does not demand C{backends} (its build does when
        C{ingest = on}); its options are accepted and kept for it.
        """
        config = parseConfig(
            ROUTE + "source = redis\nredis = redis://127.0.0.1:1/0\n"
            "stream = s\nhistory = 10\n",
            "t.ini",
        )
        route = config.routes[0]
        assert route.mode == "fanout"
        self.assertEqual(route.backends, ())
        self.assertEqual(
            dict(route.sourceOptions),
            {"redis": "redis://127.0.0.1:1/0", "stream": "s", "history": "10"},
        )

    def test_optionOfAnotherSource(self) -> None:
        """
        A key of a source the route did not choose is unknown, and the
        message says whose option it is.
        """
        message = self.refused("backends = ws://127.0.0.1:1/\nstream = s\n")
        self.assertTrue(
            message.startswith("t.ini: [route:feed] stream: unknown key; known keys:"),
            message,
        )
        self.assertTrue(message.endswith("; stream is an option of source redis"))

    def test_proxyRoute(self) -> None:
        """
        C{source} belongs to fan-out routes.
        """
        with self.assertRaises(ConfigError) as caught:
            parseConfig(
                "[relay]\nlisten = tcp:0\n[route:chat]\npath = /chat\n"
                "backends = ws://127.0.0.1:1/\nsource = websocket\n",
                "t.ini",
            )
        self.assertEqual(
            str(caught.exception),
            "t.ini: [route:chat] source: only used with mode = fanout",
        )

    def test_builtInKey(self) -> None:
        """
        A source plugin may not declare a built-in route key.
        """
        self.assertEqual(
            self.refused(
                "source = odd\n",
                sources={"websocket": (), "odd": ("replay",)},
            ),
            "t.ini: [route:feed] source: odd: its option 'replay' is a built-in"
            " route key",
        )

    def test_defaultNotInstalled(self) -> None:
        """
        Without the C{websocket} plugin, a fan-out route that names no
        source is refused in one line.
        """
        self.assertEqual(
            self.refused("backends = ws://127.0.0.1:1/\n", sources={"redis": ()}),
            "t.ini: [route:feed] source: the default source 'websocket' is not"
            " installed; installed: redis",
        )


class SourcePluginTests(TestCase):
    """
    A third-party source, found through a dropin in C{plugin_path}, feeds
    a real relay's clients.
    """

    def setUp(self) -> None:
        self.folder, self.tag = sourceDropin(self)

    def configPath(self, extra: str) -> str:
        """
        @return: The path of a relay config with C{plugin_path} and the
            route C{feed}, listening on a loopback port the system picks.
        """
        return configFile(
            self,
            f"[relay]\nlisten = tcp:0:interface=127.0.0.1\n"
            f"plugin_path = {self.folder}\n"
            f"[route:feed]\npath = /feed\nmode = fanout\n{extra}",
        )

    async def startRelay(self, extra: str) -> tuple[RelayService, int]:
        """
        Start a relay from L{configPath} as C{twistd wsrelay} reads it (its
        plugin folder searched), stopped at the end of the test.

        @return: The service and its port.
        """
        self.path = self.configPath(extra)
        relay = RelayService(readConfig(self.path), reactor)
        relay.startService()
        self.addCleanup(relay.stopService)
        (port,) = await relay.whenListening()
        return relay, port.getHost().port

    async def test_deliversToClients(self) -> None:
        """
        The plugin's source is built with its options and the relay's
        context, started with the channel (its state shown as the
        channel's); what it delivers in one call reaches every real client,
        text and binary, in order; a client's message reaches its C{send}
        with C{client_messages = forward}; the channel's C{stop} waits for
        the source's.
        """
        relay, port = await self.startRelay(
            f"source = fake_{self.tag}\nfake_greeting = hi\nclient_messages = forward\n"
        )
        channel = relay.channels[("feed", "")]
        source: Any = channel.source
        self.assertEqual(type(source).__name__, "FakeSource")
        self.assertTrue(verifyObject(ISource, source))
        self.assertEqual(dict(source.options), {"fake_greeting": "hi"})
        self.assertEqual(source.context.route, "feed")
        self.assertIs(source.context.reactor, reactor)
        self.assertEqual((source.running, channel.state), (True, UP))
        clients = [await inThread(client, port, "/feed") for _ in range(3)]
        for c in clients:
            self.addCleanup(inThread, c.close)
        await waitFor(lambda: len(channel.members) == 3)
        channel.deliver([(1, b"one", None), (2, b"\x00\x01", None)])
        channel.deliver([(1, "tr\u00e8s".encode(), "7-0")])
        for c in clients:
            got = [await inThread(c.recv, TIMEOUT) for _ in range(3)]
            self.assertEqual(got, ["one", b"\x00\x01", "tr\u00e8s"])
        await inThread(clients[0].send, "up")
        await waitFor(lambda: source.sent == [(1, b"up")])
        self.assertEqual(channel.clientDrops, 0)
        stopped = channel.stop()
        self.assertNoResult(stopped)
        source.stopping.callback(None)
        self.assertIsNone(self.successResultOf(stopped))

    async def test_reloadReplaces(self) -> None:
        """
        A reload that changes the route's source options replaces the
        running source (the old one stopped, the new one built with the new
        options and started; the clients stay and get what it delivers); one
        that changes only other keys keeps it; the channel's C{stop} waits
        for the replaced source too.
        """
        relay, port = await self.startRelay(
            f"source = fake_{self.tag}\nfake_greeting = hi\n"
        )
        channel = relay.channels[("feed", "")]
        first: Any = channel.source
        c = await inThread(client, port, "/feed")
        self.addCleanup(inThread, c.close)
        await waitFor(lambda: len(channel.members) == 1)
        with open(self.path, "a") as f:
            f.write("linger = 5\n")
        await relay.operations.reload()
        self.assertIs(channel.source, first)
        with open(self.path) as f:
            text = f.read().replace("fake_greeting = hi", "fake_greeting = bye")
        with open(self.path, "w") as f:
            f.write(text)
        await relay.operations.reload()
        second: Any = channel.source
        self.assertIsNot(second, first)
        self.assertEqual(dict(second.options), {"fake_greeting": "bye"})
        self.assertEqual((first.running, second.running), (False, True))
        self.assertEqual(channel.state, UP)
        channel.deliver([(1, b"from the second", None)])
        self.assertEqual(await inThread(c.recv, TIMEOUT), "from the second")
        stopped = channel.stop()
        second.stopping.callback(None)
        self.assertNoResult(stopped)
        first.stopping.callback(None)
        self.assertIsNone(self.successResultOf(stopped))

    async def test_relaysWebsocket(self) -> None:
        """
        A source built on the route's websocket source (C{context.websocket},
        feeding the plugin's own L{ISourceChannel}) connects to the route's
        backends and hands on what they send: one connection to the backend,
        every client gets each message as the plugin changed it.
        """
        feed = Source(self)
        relay, port = await self.startRelay(
            f"source = relaying_{self.tag}\nbackends = {feed.url()}\n"
            "backoff_base = 0.05\n"
        )
        channel = relay.channels[("feed", "")]
        await waitFor(lambda: channel.state == UP)
        await feed.until(lambda: feed.connectionsTo("/feed") == [0])
        c = await inThread(client, port, "/feed")
        self.addCleanup(inThread, c.close)
        await waitFor(lambda: len(channel.members) == 1)
        await inThread(feed.send, 2)
        self.assertEqual(
            [await inThread(c.recv, TIMEOUT) for _ in range(2)],
            ["1 /feed  #1", "2 /feed  #2"],
        )
        self.assertEqual(len(feed.paths), 1)

    def test_badOption(self) -> None:
        """
        A source whose build rejects its options (C{ValueError}) is a
        configuration error naming the route's C{source} key.
        """
        path = self.configPath(f"source = fake_{self.tag}\nfake_greeting = bad\n")
        with self.assertRaises(ConfigError) as caught:
            RelayService(readConfig(path), reactor)
        self.assertEqual(
            str(caught.exception),
            f"{path}: [route:feed] source: fake_{self.tag}: fake_greeting must"
            " not be bad",
        )

    def test_notImporting(self) -> None:
        """
        A source whose implementation does not import (as C{redis} before
        its module exists) is one line naming the route's C{source} key.
        """
        path = self.configPath(f"source = broken_{self.tag}\n")
        with self.assertRaises(ConfigError) as caught:
            RelayService(readConfig(path), reactor)
        self.assertEqual(
            str(caught.exception),
            f"{path}: [route:feed] source: broken_{self.tag}: cannot load"
            " wsrelay.nowhere.Missing: AttributeError: module 'wsrelay' has no"
            " attribute 'nowhere'",
        )
