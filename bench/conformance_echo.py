"""
The Autobahn|Testsuite testee server: an Autobahn echo backend set up as
the testsuite expects of the server under test (C{failByDrop=False},
permessage-deflate accepted, no size limits below the 9.x cases' 16 MiB).

    python -m bench.conformance_echo [ENDPOINT] [--no-deflate]

It listens on C{ENDPOINT} (a Twisted server endpoint string, by default
C{tcp:0:interface=127.0.0.1}) and prints one line, C{listening on PORT},
once it does; it runs until it is killed.  L{bench.conformance} starts it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import txaio

txaio.use_twisted()

from autobahn.twisted.websocket import (  # noqa: E402
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from autobahn.websocket.compress import (  # noqa: E402
    PerMessageDeflateOffer,
    PerMessageDeflateOfferAccept,
)
from twisted.internet.endpoints import serverFromString  # noqa: E402
from twisted.internet.interfaces import IListeningPort  # noqa: E402

#: The largest frame and message the testee takes: the 9.x cases send
#: up to 16 MiB.
MAX_SIZE = 64 * 1024 * 1024


class TesteeServerProtocol(WebSocketServerProtocol):
    """
    Sends every message back as it came, text or binary.
    """

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """
        Echo one whole message.
        """
        self.sendMessage(payload, isBinary)


def acceptDeflate(offers: Sequence[Any]) -> PerMessageDeflateOfferAccept | None:
    """
    Accept the first permessage-deflate offer, as the testsuite's testee
    does.

    @return: The acceptance, or L{None} when nothing was offered.
    """
    for offer in offers:
        if isinstance(offer, PerMessageDeflateOffer):
            return PerMessageDeflateOfferAccept(offer)
    return None


def testeeFactory(reactor: Any, deflate: bool = True) -> WebSocketServerFactory:
    """
    @param deflate: Whether permessage-deflate offers are accepted.
    @return: The testee's factory.
    """
    factory = WebSocketServerFactory(server="AutobahnPython-testee", reactor=reactor)
    factory.protocol = TesteeServerProtocol
    factory.setProtocolOptions(
        failByDrop=False,
        maxFramePayloadSize=MAX_SIZE,
        maxMessagePayloadSize=MAX_SIZE,
        # No pings of its own: they would show up in the cases' event logs.
        autoPingInterval=0,
    )
    if deflate:
        factory.setProtocolOptions(perMessageCompressionAccept=acceptDeflate)
    return factory


def main(argv: Sequence[str] | None = None) -> int:
    """
    Serve until killed.

    @return: The exit status.
    """
    parser = argparse.ArgumentParser(
        prog="python -m bench.conformance_echo", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "endpoint",
        nargs="?",
        default="tcp:0:interface=127.0.0.1",
        help="Twisted server endpoint to listen on",
    )
    parser.add_argument(
        "--no-deflate",
        action="store_true",
        help="decline permessage-deflate offers",
    )
    args = parser.parse_args(argv)

    from twisted.internet import reactor

    def listening(port: IListeningPort) -> None:
        sys.stdout.write(f"listening on {port.getHost().port}\n")  # type: ignore[attr-defined]
        sys.stdout.flush()

    def failed(f: Any) -> None:
        sys.stderr.write(f"cannot listen on {args.endpoint}: {f.getErrorMessage()}\n")
        reactor.stop()

    endpoint = serverFromString(reactor, args.endpoint)
    d = endpoint.listen(testeeFactory(reactor, deflate=not args.no_deflate))
    d.addCallbacks(listening, failed)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
