"""
The C{ownsockets-features} target: the passthrough relay of
L{bench.ownsockets}, on the same own sockets (edge-triggered), doing per
connection the work wsrelay does on a passthrough handshake, by calling
wsrelay's own code wherever that code needs no Twisted transport (issue
16's storm: what would a passthrough path on the relay's own sockets cost
per handshake?).

Per connection, in the order wsrelay does it:

  - on accept: the client counted by the real L{Admission} (its
    C{clientArrived}, which checks the open-file budget of L{Limit}),
    C{TCP_NODELAY} set (as on both of wsrelay's legs), and the
    C{handshake_timeout} timer armed on the reactor;
  - at the client's head: the timer cancelled; the head screened and
    routed by L{screenRequest} against a real L{RouteTable} built by
    L{RouteBuilder} from the configuration wsrelay's target runs with
    (L{bench.targets.wsrelayConfig}, parsed by L{parseConfig}: one
    passthrough route, one backend); the plain-request check
    (L{plainRequest}); L{Admission.admit} (origins, per-address counts,
    C{max_connections}, the open-file budget, the handshake bucket); the
    session registered in a real L{Registry};
  - the upstream: the backend picked by the route's balancer plugin (the
    real C{round_robin} object) among L{Route.candidates}, with the
    L{ConnectionInfo} wsrelay gives it; the backend's C{connecting} count;
    C{TCP_NODELAY} on the upstream's socket;
    the request built by the real L{UpstreamOpener.request}
    (L{upstreamRequest}: hop-by-hop fields dropped, C{X-Forwarded-For},
    C{-Proto}, C{-Host}, C{X-Real-IP}, C{Forwarded}) and
    L{buildRequest}, with a fresh key; the C{connect_timeout} timer armed
    (cancelled when the backend's 101 is read, as wsrelay's
    L{connectUpstream} times the connect and the handshake together);
  - the backend's answer read by the real L{ResponseReader} (status,
    subprotocol, accept value, the end-to-end fields and the extensions
    answer kept for the client); the backend counted as L{Connector} and
    L{UpstreamOpener.opened} count it (passive health told of the
    success); the client's 101 from L{clientAnswer} and L{acceptResponse};
    the handshake's duration observed in the route's L{Histogram}; the
    handshake's parsed fields let go, as both legs' C{forgetHandshake}
    and C{forgetRequest} do;
  - once open: the two real L{Direction} scanners of L{directions}, with
    the relay's frame and message limits, writing to the own sockets; an
    L{IdleTimer} (the configuration sets C{idle_timeout}, so that its
    timer's cost is counted);
  - on close: the idle timer stopped, the backend's counters
    (L{UpstreamOpener.closed}), the session forgotten, the client
    uncounted (L{Admission.clientLeft}).

What stands in for wsrelay's objects: L{Leg} and its two kinds give what
L{Admission}, L{upstreamRequest}, L{Direction} and L{IdleTimer} read of a
leg (addresses, head, route, counters, C{transport}); the pipe's events
(L{FeaturesPipe.failed} and the rest) close the connection where
wsrelay's L{wsrelay.proxy.pipe.Pipe} would run the close handshake with
its C{close_timeout} timer, pings and failover buffer.  Not done: the
access log (off in the benchmark), TLS, the PROXY protocol, queueing at a
full backend, retries on another backend, Autobahn's answer to a request
that is not plain (here 400).

Usage: C{python -m bench.ownfeatures PORT BACKEND_PORT}.
"""

from __future__ import annotations

import _socket
import ctypes
import os
import socket
import sys
from base64 import b64encode
from functools import partial
from typing import Any

from twisted.internet.main import installReactor
from twisted.logger import Logger

from bench.ownsockets import (
    _NONBLOCK,
    _PENDING_CONNECT,
    BAD_GATEWAY,
    BAD_REQUEST,
    OwnReactor,
    Pipe,
    Relay,
    _End,
    _libc,
)
from bench.targets import wsrelayConfig
from wsrelay.admission import Admission
from wsrelay.config import parseConfig
from wsrelay.descriptors import Shortage, raiseLimit
from wsrelay.proxy.direction import Direction, directions
from wsrelay.proxy.idle import IdleTimer, activity
from wsrelay.proxy.opening import UpstreamOpener, clientAnswer, connectionInfo
from wsrelay.registry import Registry
from wsrelay.routes import RouteBuilder
from wsrelay.routing import RouteTable
from wsrelay.stats import LATENCY_BUCKETS, Histogram
from wsrelay.tap import tuneGC
from wsrelay.ws.accept import acceptResponse, plainRequest
from wsrelay.ws.framing import CLOSE, controlFrame
from wsrelay.ws.handshake import buildRequest, buildResponse
from wsrelay.ws.response import ResponseReader, UpstreamRefused
from wsrelay.ws.screening import Rejected, screenRequest

IDLE_TIMEOUT = 300
"""
The C{idle_timeout} of the target's configuration: wsrelay's target has
none (no timer), this one arms one per connection to count its cost.
"""

SERVER = "wsrelay"
"""
The C{Server} field of the client's 101, as wsrelay's frontend factory
writes it.
"""

GATEWAY_TIMEOUT = buildResponse(504, "Gateway Timeout")

_setsockopt = _libc.setsockopt
_setsockopt.argtypes = [
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_void_p,
    ctypes.c_uint32,
]
_ON = ctypes.c_int(1)
_ON_REF = ctypes.byref(_ON)


def noDelay(fd: int) -> None:
    """
    Turn Nagle's algorithm off on a descriptor, as Autobahn's client leg
    and wsrelay's plain upstream leg each do (C{setTcpNoDelay}).
    """
    _setsockopt(fd, socket.IPPROTO_TCP, socket.TCP_NODELAY, _ON_REF, 4)


def anyOrigin(origin: str) -> bool:
    """
    Autobahn's check of an C{Origin} with its default C{allowedOrigins}
    (C{*}), which wsrelay's frontend factory keeps: any origin.  (The
    storm's client sends none.)
    """
    return True


class EndTransport:
    """
    What a L{Direction} writes to for a leg (its sink's C{transport}, not
    a TCP connection of Twisted's): the leg's socket, as far as it takes
    the bytes, pausing the other socket meanwhile (L{Relay.write}).
    """

    __slots__ = ("relay", "end")

    def __init__(self, relay: Relay, end: _End) -> None:
        self.relay = relay
        self.end = end

    def write(self, data: bytes) -> None:
        end = self.end
        self.relay.write(end, data, end.other)


class Leg:
    """
    What wsrelay's code reads of a leg (L{wsrelay.ws.legs.RelayLeg}): the
    counters that L{Direction} keeps and L{IdleTimer}'s activity and
    L{wsrelay.routing.Backend.count} read, and the transport a direction
    writes to (L{EndTransport}).

    @ivar end: The socket of this leg.
    @ivar source: The socket whose reading waits while this one's writes
        are pending.
    """

    rateLimit = 0

    def __init__(self, relay: Relay, end: _End) -> None:
        self.relay = relay
        self.end = end
        self.transport: Any = EndTransport(relay, end)
        self.bytesIn = self.bytesOut = self.messagesIn = self.messagesOut = 0


class ClientLeg(Leg):
    """
    The client's leg, as L{Admission}, L{connectionInfo} and
    L{upstreamRequest} read it (L{wsrelay.ws.frontend.FrontendProtocol}'s
    attributes): its peer, its screened head, route, path and query.
    """

    secure = False
    countedAddress: str | None = None
    head: Any = None
    path = query = remainder = ""
    websocket_protocols: list[str] = []

    def __init__(self, relay: Relay, end: _End, peer: str) -> None:
        super().__init__(relay, end)
        # What peerHost asks of the transport once per connection.
        self.peerAddress = peer


class UpstreamLeg(Leg, ResponseReader):
    """
    The upstream leg, reading the backend's answer with wsrelay's
    L{ResponseReader}; the hooks it calls tell the pipe.  It is also its
    own C{opened}, where a refusal goes.
    """

    websocket_protocol_in_use: str | None = None
    called = False

    def __init__(
        self, pipe: FeaturesPipe, end: _End, key: bytes, offered: tuple[str, ...]
    ) -> None:
        super().__init__(pipe.relay, end)
        self.pipe = pipe
        self.data = b""
        self.websocket_key = key
        self.offered = offered
        self.opened = self  # type: ignore[assignment]

    def errback(self, e: UpstreamRefused) -> None:
        """
        The backend refused the handshake: relay its answer.
        """
        self.called = True
        self.pipe.refuse(buildResponse(e.status, e.reason, e.headers, e.body))

    def failHandshake(self, reason: str) -> None:
        self.pipe.refuse(BAD_GATEWAY)

    def abortHandshake(self) -> None:
        self.pipe.close()

    def notPlain(self) -> None:
        # wsrelay hands such a 101 to Autobahn; the storm's backend sends
        # none.
        self.pipe.refuse(BAD_GATEWAY)

    def _open(self, end: int, chosen: str) -> None:
        self.websocket_protocol_in_use = chosen or None
        self.pipe.upstreamOpened(end)


class FeaturesPipe(Pipe):
    """
    One client's connection, with wsrelay's per-connection work (see the
    module's docstring).  L{Pipe.head} holds the client's bytes until its
    head is screened, then C{b""} until the backend's 101.
    """

    relay: FeaturesRelay
    session = None

    def __init__(self, relay: FeaturesRelay, fd: int, peer: bytes) -> None:
        super().__init__(relay, fd, peer)
        self.leg = ClientLeg(relay, self.client, socket.inet_ntoa(peer))
        self.up: UpstreamLeg | None = None
        self.route: Any = None
        self.opener: UpstreamOpener | None = None
        self.chosen: Any = None
        self.counted = False
        self.done = False
        self.idle: IdleTimer | None = None
        self.directionOf: dict[bool, Direction] = {}
        self.connectCall: Any = None
        relay.admission.clientArrived(self.leg)  # type: ignore[arg-type]
        noDelay(fd)
        self.handshakeCall = relay.reactor.callLater(
            relay.config.handshakeTimeout, self.close
        )

    def received(self, end: _End, data: bytes) -> None:
        """
        Bytes arrived on C{end}: to its direction once open, else to the
        handshake.
        """
        if self.head is None:
            self.directionOf[end.isClient].dataReceived(data)
            return
        if end.isClient:
            if self.backend is not None:
                self.early += data
                return
            self.head += data
            self.screen(self.head)
            return
        up = self.up
        assert up is not None
        up.data += data
        up.processHandshake()

    def screen(self, data: bytes) -> None:
        """
        Screen and route the client's request, admit it, register the
        session, pick the backend and open the upstream.
        """
        relay = self.relay
        config = relay.config
        screened = screenRequest(data, config.maxHeaderSize, relay.routes)
        if screened is None:
            return
        self.handshakeCall.cancel()
        if isinstance(screened, Rejected):
            r = screened.refusal
            self.refuse(buildResponse(r.code, r.reason, r.headers, r.body))
            return
        plain = plainRequest(screened.head, anyOrigin)
        if plain is None:
            self.refuse(BAD_REQUEST)
            return
        key, protocols = plain
        leg = self.leg
        leg.head = screened.head
        leg.path, leg.query = screened.path, screened.query
        leg.remainder = screened.remainder
        if protocols:
            leg.websocket_protocols = protocols
        route = self.route = screened.route
        refused = relay.admission.admit(leg, route)  # type: ignore[arg-type]
        if refused is not None:
            r = refused
            self.refuse(buildResponse(r.code, r.reason, r.headers, r.body))
            return
        relay.registry.sessions.add(self)  # type: ignore[arg-type]
        self.startedAt = relay.reactor.seconds()
        self.accept = key.encode()
        self.early = data[data.find(b"\r\n\r\n") + 4 :]
        self.head = b""
        self.openUpstream(leg, route, protocols)

    def openUpstream(self, leg: ClientLeg, route: Any, protocols: list[str]) -> None:
        """
        Pick a backend with the route's balancer, build the request for it
        as wsrelay does, arm the connect timer, connect and write it.
        """
        relay = self.relay
        candidates = route.candidates()
        info = connectionInfo(leg, relay.admission)  # type: ignore[arg-type]
        backend = route.balancer.pick(candidates, info) if candidates else None
        if backend is None:
            self.refuse(BAD_GATEWAY)
            return
        opener = self.opener = UpstreamOpener(
            route,
            leg,  # type: ignore[arg-type]
            None,  # type: ignore[arg-type]
            relay.admission,
            relay.reactor,
            relay.config.handshakeTimeout,
        )
        self.chosen = backend
        backend.connecting += 1
        resource, headers = opener.request(backend)
        key = b64encode(os.urandom(16))
        request = buildRequest(resource, backend.hostHeader(), key.decode(), headers)
        s = _socket.socket(socket.AF_INET, socket.SOCK_STREAM | _NONBLOCK)
        code = s.connect_ex((backend.host, backend.port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        fd = s.detach()
        end = self.backend = _End(fd, self, False)
        end.other = self.client
        self.client.other = end
        up = self.up = UpstreamLeg(self, end, key, tuple(protocols))
        up.extensions = headers.extensions
        self.connectCall = relay.reactor.callLater(
            relay.config.connectTimeout, self.connectTimedOut
        )
        if code not in _PENDING_CONNECT:
            os.close(fd)
            end.fd = -1
            self.backendFailed(os.strerror(code))
            return
        relay.watch(end)
        relay.write(end, request, None)

    def upstreamOpened(self, end: int) -> None:
        """
        The backend's 101 is read: count the upstream, answer the client
        with wsrelay's 101, observe the handshake, start the directions and
        the idle timer.
        """
        relay = self.relay
        up, backend, opener = self.up, self.chosen, self.opener
        assert up is not None and opener is not None and self.backend is not None
        self.connectCall.cancel()
        self.connectCall = None
        backend.connecting -= 1
        self.route.monitor.succeeded(backend)
        opener.opened(backend)
        self.counted = True
        protocol, fields = clientAnswer(up)  # type: ignore[arg-type]
        rest = up.data[end + 4 :]
        up.data = b""
        up.forgetRequest()
        # As the client's leg forgets its handshake (forgetHandshake).
        vars(self.leg.head).pop("fields", None)
        self.head = None
        relay.write(
            self.client,
            acceptResponse(self.accept.decode(), protocol, fields.items(), SERVER),
            None,
        )
        now = relay.reactor.seconds()
        relay.latency.byRoute(self.route.name).observe(now - self.startedAt)
        config = relay.config
        maxMessage = config.maxMessageSize
        fromClient, fromBackend = directions(
            self,  # type: ignore[arg-type]
            self.leg,
            up,
            config.maxFrameSize or maxMessage,
            maxMessage,
        )
        self.directionOf = {True: fromClient, False: fromBackend}
        if config.idleTimeout > 0:
            self.idle = IdleTimer(
                relay.reactor,
                config.idleTimeout,
                partial(activity, self.leg),  # type: ignore[arg-type]
                self.close,
            )
            self.idle.start()
        if rest:
            fromBackend.dataReceived(rest)
        early = self.early
        if early:
            self.early = b""
            fromClient.dataReceived(early)

    def connectTimedOut(self) -> None:
        """
        The backend did not answer within C{connect_timeout}: 504.
        """
        self.connectCall = None
        self.backendFailed("timeout", GATEWAY_TIMEOUT)

    def backendFailed(self, reason: str, answer: bytes = BAD_GATEWAY) -> None:
        """
        The backend could not be reached: tell passive health and answer
        the client with C{answer}, as wsrelay's L{Connector} does.
        """
        route, backend = self.route, self.chosen
        if backend is not None and not self.counted:
            self.relay.log.warn(
                "route {route}: backend {backend} failed: {reason}",
                route=route.name,
                backend=backend.name,
                reason=reason,
            )
            route.monitor.failed(backend, reason)
        if not self.done:
            self.refuse(answer)

    def ended(self, end: _End) -> None:
        """
        As L{Pipe.ended}, with the backend's failure counted when it ends
        before its 101.
        """
        if self.head is not None and not end.isClient:
            self.backendFailed("connection lost")
            return
        super().ended(end)

    # What a Direction reports (L{wsrelay.proxy.direction.PipeEvents}).

    def ponged(self, direction: Direction, payload: bytes) -> None:
        """
        The relay sends no pings (C{ping_interval = 0}).
        """

    def closeSeen(self, direction: Direction, payload: bytes) -> None:
        """
        wsrelay's pipe arms its C{close_timeout} here; the endpoints close
        the connection themselves.
        """

    def failed(self, direction: Direction, code: int, reason: bytes) -> None:
        """
        C{direction}'s source broke a rule: send it a close frame, close.
        """
        frame = controlFrame(CLOSE, code.to_bytes(2, "big") + reason, False)
        end = self.client if direction.masked else self.backend
        if end is not None:
            self.relay.write(end, frame, None)
        self.close()

    def tooBig(self, direction: Direction, reason: bytes) -> None:
        """
        A message passed a limit.
        """
        self.failed(direction, 1009, reason)

    def close(self) -> None:
        """
        Undo the connection's counts and timers, then close its sockets.
        """
        if not self.done:
            self.done = True
            relay = self.relay
            for call in (self.handshakeCall, self.connectCall):
                if call is not None and call.active():
                    call.cancel()
            if self.idle is not None:
                self.idle.stop()
            backend = self.chosen
            if self.counted:
                assert self.opener is not None
                self.opener.closed(backend, self.up)  # type: ignore[arg-type]
            elif backend is not None:
                backend.connecting -= 1
                self.route.queue.slotFreed()
            relay.registry.sessionEnded(self)  # type: ignore[arg-type]
            relay.admission.clientLeft(self.leg)  # type: ignore[arg-type]
        super().close()


class FeaturesRelay(Relay):
    """
    L{Relay} with wsrelay's relay-wide objects: the parsed configuration,
    the routes, admission, the registry and the handshake histogram.
    """

    pipeFactory = FeaturesPipe
    log = Logger()

    def __init__(self, reactor: Any, port: int, backendPort: int) -> None:
        super().__init__(reactor, True, port, ("127.0.0.1", backendPort))
        text = wsrelayConfig(port, backendPort, False)
        text = text.replace("[relay]\n", f"[relay]\nidle_timeout = {IDLE_TIMEOUT}\n")
        config = self.config = parseConfig(text, "ownfeatures.ini")
        self.routes = RouteTable(RouteBuilder(reactor, reactor).build(config))
        self.registry = Registry()
        limit = raiseLimit(config.maxConnections)
        self.admission = Admission(
            reactor,
            config,
            self.routes,
            self.registry.channels.__len__,
            limit,
            Shortage(reactor, limit),
        )
        self.latency = Histogram(LATENCY_BUCKETS)


def main(argv: list[str]) -> None:
    """
    Listen on 127.0.0.1, port C{argv[0]}, and relay every WebSocket
    connection to the backend on 127.0.0.1, port C{argv[1]}.
    """
    port, backendPort = int(argv[0]), int(argv[1])
    reactor = OwnReactor()
    installReactor(reactor)
    relay = FeaturesRelay(reactor, port, backendPort)
    reactor.addReader(relay)
    tuneGC()
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
