"""
The relay's lean transports where the platform has no epoll (as off
Linux, where C{twistd wsrelay} keeps Twisted's default reactor): its
listener and connector modules import, and a connection made through them
carries bytes both ways, on the select reactor.
"""

from __future__ import annotations

import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from bench.control import ROOT

SCRIPT = """
import select, sys
for name in [n for n in dir(select) if n.startswith("EPOLL") or n == "epoll"]:
    delattr(select, name)
from twisted.internet import selectreactor
selectreactor.install()
from twisted.internet import protocol, reactor
import wsrelay.listening
from wsrelay.ws.accepting import listenTCP
from wsrelay.ws.connecting import PlainTCPEndpoint
got = []
class Echo(protocol.Protocol):
    def dataReceived(self, data):
        self.transport.write(data)
class Client(protocol.Protocol):
    def connectionMade(self):
        self.transport.write(b"hello")
    def dataReceived(self, data):
        got.append(data)
        reactor.stop()
class Factory(protocol.ClientFactory):
    protocol = Client
    def clientConnectionFailed(self, connector, reason):
        got.append(reason.getErrorMessage())
        reactor.stop()
port = listenTCP(reactor, 0, protocol.Factory.forProtocol(Echo), interface="127.0.0.1")
PlainTCPEndpoint(reactor, "127.0.0.1", port.getHost().port, 5).connectDirect(Factory())
reactor.callLater(20, reactor.stop)
reactor.run()
print(got)
"""


class NoEpollTests(SynchronousTestCase):
    """
    Without epoll in L{select}.
    """

    def test_echo(self) -> None:
        """
        The lean listener accepts, the lean connector connects, and the
        bytes written come back.
        """
        done = subprocess.run(
            [sys.executable, "-c", SCRIPT],
            capture_output=True,
            cwd=ROOT,
            timeout=60,
            check=False,
        )
        self.assertEqual(
            (done.returncode, done.stdout.strip()), (0, b"[b'hello']"), done.stderr
        )
