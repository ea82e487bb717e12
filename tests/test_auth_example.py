"""
The example authorizer of C{examples/plugins} (C{apikey}), loaded from a
copy of that folder named by C{plugin_path}, as a user would.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

import twisted.plugins
from twisted.internet import reactor
from twisted.trial.unittest import TestCase
from websockets.exceptions import InvalidStatus
from zope.interface.verify import verifyObject

from tests.support import TIMEOUT, client, inThread, startBackend
from wsrelay.auth.gate import AuthorizerContext
from wsrelay.config import ConfigError
from wsrelay.interfaces import Allow, AuthRequest, IAuthorizer, IAuthorizerFactory
from wsrelay.plugins import authorizerFactories, brokenPlugins, extendPluginPath
from wsrelay.service import RelayService
from wsrelay.tap import readConfig

EXAMPLES = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "plugins"
)
MODULE = "twisted.plugins.apikey_authorizer"


def copyExamples(testCase: TestCase) -> str:
    """
    Copy C{examples/plugins} into a new folder, undone at the end of
    C{testCase} (the plugin path, the imported dropin, the folder).

    @return: The copy.
    """
    directory = tempfile.mkdtemp(prefix="wsrelay-auth-example-")
    testCase.addCleanup(shutil.rmtree, directory, ignore_errors=True)
    copy = os.path.join(directory, "plugins")
    shutil.copytree(
        EXAMPLES, copy, ignore=shutil.ignore_patterns("__pycache__", "dropin.cache")
    )
    before = list(twisted.plugins.__path__)

    def cleanUp() -> None:
        for p in [p for p in twisted.plugins.__path__ if p not in before]:
            twisted.plugins.__path__.remove(p)
        sys.modules.pop(MODULE, None)
        vars(twisted.plugins).pop(MODULE.rpartition(".")[2], None)

    testCase.addCleanup(cleanUp)
    return copy


class ApiKeyExampleTests(TestCase):
    """
    The C{apikey} authorizer on its own and in a relay.
    """

    def setUp(self) -> None:
        self.directory = copyExamples(self)

    def test_discoverable(self) -> None:
        """
        The example is found by name, provides L{IAuthorizerFactory},
        declares its option and builds an L{IAuthorizer} that allows a
        known key with the user's header; nothing is broken.
        """
        extendPluginPath([self.directory])
        factory = authorizerFactories()["apikey"]
        self.assertTrue(verifyObject(IAuthorizerFactory, factory))
        self.assertEqual(tuple(factory.options), ("apikey_file",))
        context = AuthorizerContext(reactor, "echo", self.directory)
        authorizer = factory.build({"apikey_file": "apikeys.txt"}, context)
        self.assertTrue(verifyObject(IAuthorizer, authorizer))
        request = AuthRequest("GET", "/", "", (("x-api-key", "k3y-for-bob"),))
        self.assertEqual(authorizer.authorize(request), Allow([("X-User", "bob")]))
        self.assertEqual(
            authorizer.authorize(AuthRequest("GET", "/", "", ())).status, 401
        )
        with self.assertRaises(ValueError) as raised:
            factory.build({}, context)
        self.assertEqual(str(raised.exception), "apikey_file: required")
        self.assertEqual(brokenPlugins(IAuthorizerFactory), {})

    def test_small(self) -> None:
        """
        The whole plugin, docstrings included, is under 60 lines.
        """
        path = os.path.join(EXAMPLES, "twisted", "plugins", "apikey_authorizer.py")
        with open(path) as f:
            self.assertLess(len(f.readlines()), 60)

    def test_documented(self) -> None:
        """
        docs/plugins.md shows the whole plugin as it is.
        """
        path = os.path.join(EXAMPLES, "twisted", "plugins", "apikey_authorizer.py")
        with open(path) as f:
            source = f.read()
        with open(os.path.join(EXAMPLES, "..", "..", "docs", "plugins.md")) as f:
            docs = f.read()
        section = docs.split("## Writing an authorizer", 1)[1]
        self.assertIn("```python\n" + source + "```", section)

    def writeConfig(self, extra: str = "") -> str:
        """
        Write the example's C{apikey.ini} with a port chosen by the system,
        a test backend instead of the demo one, and C{extra}.

        @return: Its path.
        """
        backend = startBackend(self)
        with open(os.path.join(EXAMPLES, "apikey.ini")) as f:
            text = f.read()
        text = text.replace("tcp:8091:", "tcp:0:").replace(
            "ws://127.0.0.1:9013/", backend.url
        )
        text = text.replace("echo = tcp:9013:interface=127.0.0.1\n", "")
        path = os.path.join(self.directory, "test.ini")
        with open(path, "w") as f:
            f.write(text + extra)
        return path

    async def test_relay(self) -> None:
        """
        With the example's configuration, a client with a known key reaches
        the backend, which sees its user; a client without gets 401.
        """
        relay = RelayService(readConfig(self.writeConfig()), reactor)
        relay.startService()
        self.addCleanup(relay.stopService)
        (port,) = await relay.whenListening()
        number = port.getHost().port

        def run() -> tuple[str, int]:
            key = {"X-Api-Key": "k3y-for-alice"}
            with client(number, "/echo", additional_headers=key) as c:
                c.send("headers")
                seen = str(c.recv(TIMEOUT))
            try:
                client(number, "/echo").close()
            except InvalidStatus as e:
                return seen, int(e.response.status_code)
            return seen, 0

        seen, status = await inThread(run)
        self.assertIn("x-user: alice", seen.lower().splitlines())
        self.assertEqual(status, 401)

    def test_badOption(self) -> None:
        """
        A key file that cannot be read is a configuration error naming the
        route's C{auth} key.
        """
        path = self.writeConfig().replace("test.ini", "bad.ini")
        with open(path.replace("bad.ini", "test.ini")) as f:
            text = f.read().replace("apikeys.txt", "absent.txt")
        with open(path, "w") as f:
            f.write(text)
        with self.assertRaises(ConfigError) as raised:
            RelayService(readConfig(path), reactor)
        self.assertIn(
            "[route:echo] auth: apikey: apikey_file: cannot read", str(raised.exception)
        )
