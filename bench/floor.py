"""
Twisted's floor: the port forwarder that ships with Twisted
(L{twisted.protocols.portforward}), run as the benchmark's C{twisted}
target.  It connects each client to the backend on accept and forwards
bytes both ways (with Twisted's flow control), parsing nothing: no HTTP,
no WebSocket, no routing.  It runs on wsrelay's reactor and with wsrelay's
garbage-collector settings, its per-connection log lines off, so that its
figures are what any relay built on Twisted's TCP transports costs before
it does anything of its own (BENCHMARKS.md, issue 16's storm).

Usage: C{python -m bench.floor PORT BACKEND_PORT}.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.protocols import portforward

from wsrelay.reactor import install
from wsrelay.tap import tuneGC


class _QuietClientFactory(portforward.ProxyClientFactory):
    """
    A client factory per connection, as Twisted's, without its start and
    stop log lines.
    """

    noisy = False


class _Server(portforward.ProxyServer):
    clientProtocolFactory = _QuietClientFactory


def main(argv: list[str]) -> None:
    """
    Listen on 127.0.0.1, port C{argv[0]}, with a backlog of 4096, and
    forward every connection to 127.0.0.1, port C{argv[1]}.
    """
    port, backendPort = (int(a) for a in argv)
    install()
    from twisted.internet import reactor as _reactor

    reactor: Any = _reactor
    factory = portforward.ProxyFactory("127.0.0.1", backendPort)
    factory.protocol = _Server
    factory.noisy = False
    reactor.listenTCP(port, factory, backlog=4096, interface="127.0.0.1")
    tuneGC()
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
