"""
The Autobahn|Testsuite testee client: an Autobahn echo client that drives
a fuzzing server's cases one connection at a time, as the testsuite's own
testee client does (C{failByDrop=False}, permessage-deflate offered and
accepted).

    python -m bench.conformance_client URL [--agent NAME] [--no-deflate]

It asks C{URL/getCaseCount}, runs each case at
C{URL/runCase?case=N&agent=NAME} (echoing every message), asks
C{URL/updateReports?agent=NAME} and exits: 0 when every step connected,
1 when one did not.  L{bench.conformance} points it at kosoku's fuzzing
server, directly or through wsrelay.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import txaio

txaio.use_twisted()

from autobahn.twisted.websocket import (  # noqa: E402
    WebSocketClientFactory,
    WebSocketClientProtocol,
    connectWS,
)
from autobahn.websocket.compress import (  # noqa: E402
    PerMessageDeflateOffer,
    PerMessageDeflateResponse,
    PerMessageDeflateResponseAccept,
)

from bench.conformance_echo import MAX_SIZE  # noqa: E402


class TesteeClientProtocol(WebSocketClientProtocol):
    """
    Reads the case count, then echoes every message of a case.
    """

    factory: TesteeClientFactory

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """
        The first connection's only message is the case count; the cases'
        messages go back as they came (unless a close went out already:
        some cases send messages after their close frame).
        """
        if self.factory.caseCount is None:
            self.factory.caseCount = int(payload)
        elif self.state == self.STATE_OPEN:
            self.sendMessage(payload, isBinary)


def acceptDeflate(response: Any) -> PerMessageDeflateResponseAccept | None:
    """
    Accept the server's permessage-deflate parameters.
    """
    if isinstance(response, PerMessageDeflateResponse):
        return PerMessageDeflateResponseAccept(response)
    return None


class TesteeClientFactory(WebSocketClientFactory):
    """
    Reconnects for each step: the count, each case, the report update.

    @ivar caseCount: How many cases the server has, once it said.
    @ivar currentCase: The case of the connection in progress (0: the
        count).
    @ivar failed: Whether a step could not connect.
    """

    # Any: Twisted wants a protocol whose factory is a Factory[Self].
    protocol: Any = TesteeClientProtocol

    def __init__(self, url: str, agent: str, deflate: bool, reactor: Any) -> None:
        self._base = url.rstrip("/")
        super().__init__(url=self._base + "/getCaseCount", reactor=reactor)
        self.useragent = agent
        self.agent = agent
        self.caseCount: int | None = None
        self.currentCase = 0
        self.reported = False
        self.failed = False
        self._reactor = reactor
        self.setProtocolOptions(
            failByDrop=False,
            maxFramePayloadSize=MAX_SIZE,
            maxMessagePayloadSize=MAX_SIZE,
            autoPingInterval=0,
        )
        if deflate:
            self.setProtocolOptions(
                perMessageCompressionOffers=[PerMessageDeflateOffer()],
                perMessageCompressionAccept=acceptDeflate,
            )

    def _next(self, connector: Any) -> None:
        """
        Connect for the next step, or stop after the last.
        """
        agent = quote(self.agent)
        self.currentCase += 1
        if self.caseCount is not None and self.currentCase <= self.caseCount:
            self.resource = f"/runCase?case={self.currentCase}&agent={agent}"
        elif not self.reported:
            self.reported = True
            self.resource = f"/updateReports?agent={agent}"
        else:
            self._reactor.stop()
            return
        connector.connect()

    def clientConnectionLost(self, connector: Any, reason: Any) -> None:
        """
        One step is over: on to the next.
        """
        self._next(connector)

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        """
        A step could not connect: give up.
        """
        sys.stderr.write(
            f"cannot connect for case {self.currentCase}: {reason.getErrorMessage()}\n"
        )
        self.failed = True
        self._reactor.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run every case the server has.

    @return: The exit status.
    """
    parser = argparse.ArgumentParser(
        prog="python -m bench.conformance_client",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("url", help="the fuzzing server (or a relay in front of it)")
    parser.add_argument("--agent", default="AutobahnPython-testee-client")
    parser.add_argument(
        "--no-deflate", action="store_true", help="offer no permessage-deflate"
    )
    args = parser.parse_args(argv)

    from twisted.internet import reactor

    factory = TesteeClientFactory(args.url, args.agent, not args.no_deflate, reactor)
    connectWS(factory)
    reactor.run()
    return 1 if factory.failed else 0


if __name__ == "__main__":
    sys.exit(main())
