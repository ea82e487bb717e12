# -*- test-case-name: tests.test_health -*-
"""
The built-in health checkers: C{tcp} (a connection opens), C{websocket}
(a WebSocket handshake succeeds) and C{http} (a GET answers with an
expected status).

Each checker class is registered lazily, by name, as a Twisted plugin in
C{twisted/plugins/wsrelay_health.py}; its constructor takes the route's
options and the reactor.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit, urlunsplit

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import clientFromString
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from wsrelay.descriptors import isLocalError
from wsrelay.interfaces import CheckResult as CheckResult
from wsrelay.interfaces import IBackend, IHealthChecker
from wsrelay.routing import endpointDescription

if TYPE_CHECKING:
    pass

#: CheckResult of one check: healthy or not, and why.

#: A connect of a check gives up after this long, unless cancelled first
#: by the route's C{health_timeout} (which is what normally happens).
CONNECT_LIMIT = 60


def _passCancel(f: Failure) -> CheckResult | Failure:
    """
    Turn a failed check into an unhealthy result, but let a cancellation
    through so that the monitor can report it as a timeout, and a local
    error (L{isLocalError}: the relay is out of descriptors or ports) so
    that the monitor does not count it against the backend.
    """
    if f.check(CancelledError, ConnectingCancelledError):
        raise CancelledError()
    if isLocalError(f.value):
        return f
    return (False, f.getErrorMessage())


def _unhealthyOnError(d: Deferred[CheckResult]) -> Deferred[CheckResult]:
    """
    @return: C{d} with L{_passCancel} added: a failure that it passes on
        fails the L{Deferred} still, so its result stays a L{CheckResult}.
    """
    return cast("Deferred[CheckResult]", d.addErrback(_passCancel))


def _endpoint(reactor: Any, backend: IBackend) -> Any:
    """
    @return: The endpoint the relay itself reaches C{backend} with (its TLS
        settings included), or one made from its address.
    """
    endpoint = getattr(backend, "endpoint", None)
    if endpoint is not None:
        return endpoint
    return clientFromString(
        reactor,
        endpointDescription(
            backend.host, backend.port, _secure(backend), CONNECT_LIMIT
        ),
    )


def _secure(backend: IBackend) -> bool:
    return str(backend.url).startswith("wss:")


def _target(backend: IBackend, options: Mapping[str, str]) -> tuple[str, str]:
    """
    @return: The path (with query) a check asks for (C{health_path} or
        the backend URL's own) and the backend URL's scheme-less netloc.
    """
    parts = urlsplit(str(backend.url))
    path = options.get("health_path")
    if path is None:
        path = urlunsplit(("", "", parts.path or "/", parts.query, ""))
    elif not path.startswith("/"):
        raise ValueError(f"health_path must start with '/', got {path!r}")
    return path, parts.netloc


class _OneProtocol(Factory):
    """
    Connects one protocol, quietly: a check every few seconds is not worth
    a C{Starting factory} / C{Stopping factory} pair in the log (the
    upstream factories are quiet too).
    """

    noisy = False

    def __init__(self, protocol: Protocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: Any) -> Protocol:
        """
        @return: The one protocol.
        """
        return self._protocol


@implementer(IStreamClientEndpoint)
class _QuietEndpoint:
    """
    An endpoint that makes the factories it connects quiet (C{noisy} off:
    no C{Starting factory} / C{Stopping factory} lines for every probe).
    """

    def __init__(self, endpoint: IStreamClientEndpoint) -> None:
        """
        @param endpoint: The endpoint that connects.
        """
        self._endpoint = endpoint

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[Any]:
        """
        Connect C{protocolFactory}, quietened, through the endpoint.
        """
        protocolFactory.noisy = False  # type: ignore[attr-defined]
        return self._endpoint.connect(protocolFactory)


@implementer(IAgentEndpointFactory)
class _BackendEndpoints:
    """
    Gives an L{Agent} the endpoint of one backend, whatever the URI: the
    C{http} checker reaches a backend as the relay does (its TLS settings
    included), and quietly.
    """

    def __init__(self, endpoint: IStreamClientEndpoint) -> None:
        """
        @param endpoint: The backend's endpoint.
        """
        self._endpoint = _QuietEndpoint(endpoint)

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:
        """
        @return: The backend's endpoint.
        """
        return self._endpoint


@implementer(IHealthChecker)
class TCPChecker:
    """
    Healthy when a TCP connection to the backend opens.
    """

    def __init__(self, options: Mapping[str, str], reactor: Any) -> None:
        self._reactor = reactor

    def check(self, backend: IBackend) -> Deferred[CheckResult]:
        """
        Connect, and close at once.
        """
        endpoint = _endpoint(self._reactor, backend)

        def connected(protocol: Protocol) -> CheckResult:
            assert protocol.transport is not None
            protocol.transport.loseConnection()
            return (True, "connected")

        d: Deferred[CheckResult] = endpoint.connect(
            _OneProtocol(Protocol())
        ).addCallback(connected)
        return _unhealthyOnError(d)


class _Probe(WebSocketClientProtocol):
    """
    Completes an opening handshake, then closes with 1000.
    """

    factory: _ProbeFactory

    def onOpen(self) -> None:
        self.factory.opened = True
        self.sendClose(1000)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        done = self.factory.done
        if done.called:
            return
        if not self.factory.opened:
            why = self.wasNotCleanReason or "connection closed"
            done.callback((False, f"handshake failed: {why}"))
        elif not wasClean:
            done.callback((False, "opened, but did not close cleanly"))
        else:
            done.callback((True, "handshake completed"))


class _ProbeFactory(WebSocketClientFactory):
    """
    The factory of one C{websocket} check: quiet, as the upstream
    factories are.
    """

    protocol = _Probe  # type: ignore[assignment]
    noisy = False

    def __init__(self, url: str, done: Deferred[CheckResult]) -> None:
        super().__init__(url)
        self.done = done
        self.opened = False
        # The monitor times the whole check; Autobahn's own timers use the
        # global txaio loop, not the monitor's clock.
        self.setProtocolOptions(
            openHandshakeTimeout=0, closeHandshakeTimeout=0, autoPingInterval=0
        )


@implementer(IHealthChecker)
class WebSocketChecker:
    """
    Healthy when the backend completes an opening handshake on
    C{health_path} (the backend URL's path by default) and then a clean
    close.
    """

    def __init__(self, options: Mapping[str, str], reactor: Any) -> None:
        self._reactor = reactor
        self._options = dict(options)
        _target(_Example, self._options)

    def check(self, backend: IBackend) -> Deferred[CheckResult]:
        """
        Open a WebSocket connection and close it.
        """
        path, netloc = _target(backend, self._options)
        scheme = "wss" if _secure(backend) else "ws"
        probe: _Probe | None = None

        def cancel(d: Deferred[CheckResult]) -> None:
            connecting.cancel()
            if probe is not None and probe.transport is not None:
                probe.transport.abortConnection()  # type: ignore[attr-defined]

        def connected(p: _Probe) -> None:
            nonlocal probe
            probe = p

        def failed(f: Failure) -> None:
            cancelled = f.check(CancelledError, ConnectingCancelledError)
            if done.called or cancelled:
                return
            if isLocalError(f.value):
                done.errback(f)
            else:
                done.callback((False, f"connect failed: {f.getErrorMessage()}"))

        done: Deferred[CheckResult] = Deferred(cancel)
        factory = _ProbeFactory(f"{scheme}://{netloc}{path}", done)
        connecting = _endpoint(self._reactor, backend).connect(factory)
        connecting.addCallbacks(connected, failed)
        return done


def parseStatuses(text: str) -> tuple[tuple[int, int], ...]:
    """
    Parse C{health_status}: statuses and ranges, as C{"200"},
    C{"200-399"} or C{"200 204 301-302"}.

    @return: Inclusive ranges.
    @raise ValueError: When C{text} is not of that form.
    """
    ranges = []
    for item in text.replace(",", " ").split():
        m = re.fullmatch(r"([1-5][0-9][0-9])(?:-([1-5][0-9][0-9]))?", item)
        if m is None or (m.group(2) and int(m.group(2)) < int(m.group(1))):
            raise ValueError(
                "health_status must be HTTP statuses or ranges such as"
                f" '200' or '200-399', got {text!r}"
            )
        ranges.append((int(m.group(1)), int(m.group(2) or m.group(1))))
    if not ranges:
        raise ValueError("health_status is empty")
    return tuple(ranges)


@implementer(IHealthChecker)
class HTTPChecker:
    """
    Healthy when a plain C{GET} of C{health_path} answers with a status in
    C{health_status} (200 by default).
    """

    def __init__(self, options: Mapping[str, str], reactor: Any) -> None:
        self._options = dict(options)
        _target(_Example, self._options)
        self._statuses = parseStatuses(options.get("health_status", "200"))
        self._reactor = reactor
        self._pool = HTTPConnectionPool(reactor, persistent=False)

    def check(self, backend: IBackend) -> Deferred[CheckResult]:
        """
        Ask for the health path, and read the whole answer.
        """
        path, netloc = _target(backend, self._options)
        scheme = "https" if _secure(backend) else "http"
        url = f"{scheme}://{netloc}{path}".encode("ascii")
        headers = Headers({b"User-Agent": [b"wsrelay-health-check"]})
        agent = Agent.usingEndpointFactory(
            self._reactor,
            _BackendEndpoints(_endpoint(self._reactor, backend)),
            self._pool,
        )
        d: Deferred[Any] = agent.request(b"GET", url, headers)

        def answered(response: Any) -> Deferred[CheckResult]:
            ok = any(lo <= response.code <= hi for lo, hi in self._statuses)
            result = (ok, f"HTTP {response.code}")
            body = _Discard()
            response.deliverBody(body)
            return body.done.addCallback(lambda _: result)

        result: Deferred[CheckResult] = d.addCallback(answered)
        return _unhealthyOnError(result)


class _Discard(Protocol):
    """
    Reads a response body to its end and forgets it.

    @ivar done: Fires when the body has been read; cancelling it closes
        the connection.
    """

    def __init__(self) -> None:
        self.done: Deferred[None] = Deferred(lambda d: self._stop())

    def _stop(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.done.called:
            self.done.callback(None)


class _ExampleBackend:
    """
    Stands for a backend when a checker checks its options at build time.
    """

    url = "ws://example.invalid/"


_Example: Any = _ExampleBackend()
