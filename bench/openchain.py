"""
The passthrough open chain of one proxied connection, in isolation, on the
relay's real objects (issue 16's storm): C{FrontendFactory}, C{Sessions},
C{ProxySession}, C{UpstreamOpener}, C{Connector}, C{connectUpstream} and
C{PlainUpstream}, with L{MemoryReactor}'s C{connectTCP} and transports
that keep what is written.  Each connection goes as far as C{--stop}:

  - C{built}: the client leg built (C{FrontendFactory.buildProtocol});
  - C{connected}: its C{makeConnection};
  - C{head}: the client's head read, up to the upstream's connect;
  - C{upstream}: the upstream leg connected, its request written;
  - C{open} (the default): the backend's 101 read, the client's 101
    written and the pipe started.

    .venv/bin/python -m bench.openchain [--stop STEP] [--connections N]
        [--rounds R] [--profile]

It prints the CPU per connection (the median of the rounds, each over
C{--connections} held connections, with the garbage collector off), or
with C{--profile} a C{cProfile} of 1,000 chains by cumulative time.
Instructions per connection, the measure that the machine's noise does
not move, come from running it under valgrind at two sizes
(L{bench.instructions}).

The route is the one of issue 16's seventh session's figures: one
passthrough route on C{/chat} to one backend, the relay's defaults
otherwise (so its pipes start a keepalive, which the storm's do not).
"""

from __future__ import annotations

import argparse
import gc
import re
import sys
import time
from binascii import b2a_base64
from collections.abc import Sequence
from hashlib import sha1
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactor

from wsrelay.config import parseConfig
from wsrelay.service import RelayService

CONFIG = (
    "[relay]\nlisten = tcp:0\n"
    "[route:chat]\npath = /chat\ndata_path = passthrough\n"
    "backends = ws://10.0.0.1:9001/base\n"
)
HEAD = (
    b"GET /chat HTTP/1.1\r\nHost: relay.example:8080\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)
PEER = IPv4Address("TCP", "203.0.113.7", 40000)
HOST = IPv4Address("TCP", "192.0.2.1", 8080)
BACKEND = IPv4Address("TCP", "10.0.0.1", 9001)
MAGIC = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
KEY = re.compile(rb"Sec-WebSocket-Key: (\S+)\r\n", re.I)
STEPS = ("built", "connected", "head", "upstream", "open")


class Transport:
    """
    A transport that keeps what is written to it, with what the legs ask
    of a TCP transport.
    """

    disconnecting = False

    def __init__(self) -> None:
        self.out: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def writeSequence(self, seq: Sequence[bytes]) -> None:
        self.out.extend(seq)

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass

    def getPeer(self) -> IPv4Address:
        return PEER

    def getHost(self) -> IPv4Address:
        return HOST

    def loseConnection(self) -> None:
        pass

    abortConnection = loseConnection

    def registerProducer(self, producer: object, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def pauseProducing(self) -> None:
        pass

    resumeProducing = pauseProducing


def answer(request: bytes) -> bytes:
    """
    @return: A backend's 101 to C{request}.
    """
    match = KEY.search(request)
    assert match is not None, request
    accept = b2a_base64(sha1(match.group(1) + MAGIC).digest(), newline=False)
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )


class Chain:
    """
    A relay on a L{MemoryReactor}, whose connections go as far as C{stop}
    (an index of L{STEPS}).
    """

    def __init__(self, stop: int) -> None:
        from twisted.internet import reactor as clock

        self.stop = stop
        self.clock = clock
        self.reactor = MemoryReactor()
        self.relay = RelayService(
            parseConfig(CONFIG, "openchain.ini"), reactor=self.reactor, clock=clock
        )
        self.factory = self.relay.frontendFactory

    def one(self) -> tuple[Any, Transport, Any]:
        """
        One connection, as far as the chain's step.

        @return: The client leg, its transport, the upstream leg (or
            L{None} before the upstream step).
        """
        stop = self.stop
        leg = self.factory.buildProtocol(PEER)
        transport = Transport()
        if stop == 0:
            return leg, transport, None
        leg.makeConnection(transport)
        if stop == 1:
            return leg, transport, None
        leg.dataReceived(HEAD)
        if stop == 2:
            return leg, transport, None
        upstream = self.reactor.tcpClients.pop()[2].buildProtocol(BACKEND)
        upstreamTransport = Transport()
        upstream.makeConnection(upstreamTransport)
        if stop == 3:
            return leg, transport, upstream
        upstream.dataReceived(answer(b"".join(upstreamTransport.out)))
        return leg, transport, upstream

    def check(self) -> None:
        """
        Run one whole chain and check that it opened: the client got its
        101 and its session a pipe.

        @raise AssertionError: If it did not.
        """
        leg, transport, _ = Chain(len(STEPS) - 1).one()
        assert transport.out and transport.out[-1].startswith(b"HTTP/1.1 101 "), (
            transport.out
        )
        assert leg.session.pipe is not None

    def forget(self) -> None:
        """
        Let the relay forget a round's connections: its counts, sessions
        and the timers they armed on the clock (which never runs).
        """
        clock = self.clock
        clock._pendingTimedCalls[:] = []
        clock._newTimedCalls[:] = []
        self.factory.admission.clientConnections = 0
        self.factory.countConnections = 0
        self.relay.registry.sessions.clear()

    def time(self, connections: int, rounds: int) -> list[float]:
        """
        @return: The CPU microseconds per connection of each round.
        """
        results = []
        for _ in range(rounds):
            gc.collect()
            gc.disable()
            keep = []
            start = time.process_time()
            for _ in range(connections):
                keep.append(self.one())
            elapsed = time.process_time() - start
            gc.enable()
            del keep
            self.forget()
            results.append(elapsed / connections * 1e6)
        return results

    def profile(self) -> None:
        """
        Print a C{cProfile} of 1,000 chains, by cumulative time.
        """
        import cProfile
        import pstats

        keep = [self.one() for _ in range(10)]
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(1000):
            keep.append(self.one())
        profiler.disable()
        pstats.Stats(profiler).sort_stats("cumtime").print_stats(60)


def parseArguments(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.openchain")
    parser.add_argument("--stop", choices=STEPS, default="open")
    parser.add_argument("--connections", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--profile", action="store_true")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    options = parseArguments(sys.argv[1:] if argv is None else argv)
    chain = Chain(STEPS.index(options.stop))
    chain.check()
    if options.profile:
        chain.profile()
        return
    results = sorted(chain.time(options.connections, options.rounds))
    print(
        f"open chain to {options.stop}: median {results[len(results) // 2]:.2f} µs "
        f"per connection (rounds: {' '.join(f'{r:.2f}' for r in results)})"
    )


if __name__ == "__main__":
    main()
