# -*- test-case-name: tests.test_connecting,tests.test_connectlean,tests.test_proxy -*-
"""
Connecting an upstream leg: L{connectUpstream} opens a connection to a
backend and completes the opening handshake, within a timeout, with
cancellation, mapping a failed connect to the connector's errors.

A plain-TCP backend's endpoint is a L{PlainTCPEndpoint}, which
L{connectUpstream} bypasses.  Twisted's C{TCP4ClientEndpoint} wraps every
connection: a factory and a protocol of its own around the leg's (every
read from the backend goes through its C{_WrappingProtocol}), and a
L{Deferred} that fires with the connection.  A L{PlainTCPEndpoint} is still
an ordinary endpoint for whoever connects through it (the health checkers,
a fan-out source), and also says how to reach the backend with
C{IReactorTCP.connectTCP} itself: the leg is then the transport's
protocol, and the connect's failure comes to its factory.  On Twisted's
own reactors that connect is the relay's own, with less per connection
(L{wsrelay.ws.tcpclient}).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.error import TimeoutError as ConnectTimeoutError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.posixbase import PosixReactorBase
from twisted.internet.protocol import ClientFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from wsrelay.descriptors import isLocalError, isShortageError
from wsrelay.ws.plainleg import PlainUpstream
from wsrelay.ws.tcpclient import IPV6, DirectConnector, hostKind
from wsrelay.ws.upstream import (
    NO_EXTENSIONS,
    UpstreamError,
    UpstreamFactory,
    UpstreamLocalError,
    UpstreamProtocol,
    UpstreamShortageError,
    UpstreamTimeout,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from twisted.internet.interfaces import (
        IAddress,
        IConnector,
        IProtocol,
        IProtocolFactory,
        IReactorTCP,
        ITCPTransport,
    )

    from wsrelay.deadlines import Deadlines


@implementer(IStreamClientEndpoint)
class PlainTCPEndpoint:
    """
    A backend reached over plain TCP.

    @ivar reactor: Connects.
    @ivar host: The backend's host name or address.
    @ivar port: Its port.
    @ivar timeout: Seconds an ordinary L{connect} waits for the TCP
        connection (L{connectDirect} leaves the timing to its caller).
    @ivar kind: What C{host} is (L{hostKind}), told once: Twisted's
        connector and transport tell it per connect.
    @ivar destination: The backend's address, as a connector's
        C{getDestination} answers, made once.
    """

    def __init__(
        self, reactor: IReactorTCP, host: str, port: int, timeout: float
    ) -> None:
        self.reactor = reactor
        self.host = host
        self.port = port
        self.timeout = timeout
        self._endpoint = TCP4ClientEndpoint(reactor, host, port, timeout)
        self.kind = hostKind(host)
        self.destination: IPv4Address | IPv6Address = (
            IPv6Address("TCP", host, port)
            if self.kind is IPV6
            else IPv4Address("TCP", host, port)
        )

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        """
        Connect as C{TCP4ClientEndpoint} does.
        """
        return self._endpoint.connect(protocolFactory)

    def connectDirect(self, factory: ClientFactory) -> IConnector:
        """
        Connect C{factory}'s protocol straight to the transport, with no
        timeout of Twisted's: the caller times the attempt, and stops it
        with the connector's C{stopConnecting} or the protocol's
        transport's C{abortConnection}.  On Twisted's own reactors, through
        a L{DirectConnector}.

        @return: The connector, whose failure reaches C{factory}'s
            C{clientConnectionFailed}, and the end of its connection
            C{clientConnectionLost} (on Twisted's own reactors, C{factory}'s
            C{doStart} and C{doStop} are not called: the relay's factories
            have nothing to start).
        """
        reactor = self.reactor
        if isinstance(reactor, PosixReactorBase):
            return DirectConnector(self, factory, reactor)
        return reactor.connectTCP(
            self.host,
            self.port,
            factory,
            timeout=None,  # type: ignore[arg-type]
        )

    def __repr__(self) -> str:
        return f"<PlainTCPEndpoint {self.host}:{self.port}>"


class _Attempt(ClientFactory):
    """
    Builds the one protocol of one connection attempt, and hears of the
    attempt's failure when it connects without an endpoint
    (L{PlainTCPEndpoint.connectDirect}).

    @ivar failed: Called with the failure of a direct connect.
    @ivar _plain: Whether the protocol is a L{PlainUpstream} (else the
        factory's Autobahn leg).
    """

    noisy = False

    def __init__(
        self, factory: UpstreamFactory, setup: dict[str, Any], plain: bool
    ) -> None:
        self._factory = factory
        self._setup = setup
        self._plain = plain
        self.protocol: UpstreamProtocol | None = None  # type: ignore[assignment]
        self.failed: Callable[[Failure], None] = _ignore

    def buildProtocol(self, addr: IAddress | None) -> UpstreamProtocol:
        """
        Make the protocol and give it the request.
        """
        if self._plain:
            # Passthrough: a plain leg, which has what that data path reads
            # of an upstream leg (wsrelay.ws.plainleg).
            p = cast("UpstreamProtocol", PlainUpstream())
        else:
            p = cast("UpstreamProtocol", self._factory.buildProtocol(addr))
        p.__dict__.update(self._setup)
        # The connector keeps this factory as long as the connection.
        self._setup = {}
        self.protocol = p
        return p

    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:
        """
        The direct connect failed (or was stopped).
        """
        failed, self.failed = self.failed, _ignore
        failed(reason)


def _ignore(reason: Failure) -> None:
    """
    Nothing to tell: the attempt is settled.
    """


def connectError(f: Failure) -> UpstreamError:
    """
    @param f: Why a connect failed.
    @return: What the connector makes of it: L{UpstreamTimeout} for
        Twisted's own timeout (504, not 502), L{UpstreamLocalError} and
        L{UpstreamShortageError} for the relay's want of resources
        (L{isLocalError}, L{isShortageError}), else L{UpstreamError}.
    """
    kind = UpstreamTimeout if f.check(ConnectTimeoutError) else UpstreamError
    if isLocalError(f.value):
        kind = UpstreamLocalError
    elif isShortageError(f.value):
        kind = UpstreamShortageError
    return kind(f"connect failed: {f.getErrorMessage()}")


def connectUpstream(
    deadlines: Deadlines,
    endpoint: IStreamClientEndpoint,
    factory: UpstreamFactory,
    resource: str,
    hostHeader: str,
    headers: list[tuple[str, str]],
    offered: tuple[str, ...],
    timeout: float,
) -> Deferred[UpstreamProtocol]:
    """
    Connect to a backend and complete the opening handshake.

    @param deadlines: Times the attempt (L{Deadlines.queue} of C{timeout}).
    @param headers: The request's header fields; a L{RequestHeaders} also
        says how the leg treats extensions (a plain list: L{NO_EXTENSIONS}).
    @return: A L{Deferred} that fires with the open L{UpstreamProtocol},
        or fails with L{UpstreamError} (including a timeout after
        C{timeout} seconds, and L{UpstreamLocalError} when the relay is
        out of descriptors or ports) or L{UpstreamRefused}.  Cancelling it
        closes whatever was opened.
    """

    def cancel(d: Deferred[UpstreamProtocol]) -> None:
        p = attempt.protocol
        if p is not None and p.transport is not None:
            cast("ITCPTransport", p.transport).abortConnection()
        elif direct is not None:
            # Not connected yet: stopping fails the attempt, which is
            # being cancelled and fails by itself.
            attempt.failed = _ignore
            direct.stopConnecting()
        else:
            connecting.cancel()

    opened: Deferred[UpstreamProtocol] = Deferred(cancel)
    attempt = _Attempt(
        factory,
        {
            "resource": resource,
            "hostHeader": hostHeader,
            "requestHeaders": headers,
            "offered": offered,
            "opened": opened,
            "extensions": getattr(headers, "extensions", NO_EXTENSIONS),
        },
        getattr(headers, "plain", False),
    )

    def connectFailed(f: Failure) -> None:
        if not opened.called:
            # Twisted's endpoints fail a cancelled attempt with
            # ConnectingCancelledError: C{opened} is being cancelled then,
            # and fails by itself (a timeout, or the client went away).
            if f.check(CancelledError, ConnectingCancelledError):
                return
            opened.errback(connectError(f))

    direct: IConnector | None = None
    if isinstance(endpoint, PlainTCPEndpoint):
        # The leg is the transport's protocol, with no endpoint between.
        attempt.failed = connectFailed
        direct = endpoint.connectDirect(attempt)
    else:
        connecting = endpoint.connect(attempt)
        connecting.addCallbacks(_dropResult, connectFailed)

    # One deadline, cancelled once the attempt is settled: what
    # Deferred.addTimeout does, without its closures and its three
    # callbacks per attempt, and without a DelayedCall of its own.
    expired: list[bool] = []

    def expire() -> None:
        expired.append(True)
        opened.cancel()

    queue = deadlines.queue(timeout)
    queue.add(expire)

    def settled(result: object) -> object:
        # Twisted's connector and the endpoint's factory form a cycle
        # that lives as long as the connection: neither may hold the
        # protocol through this attempt once it is no longer needed for
        # cancelling, or a closed leg would wait for the cyclic collector.
        attempt.protocol = None
        attempt.failed = _ignore
        if expired:
            if isinstance(result, Failure) and result.check(CancelledError):
                return Failure(
                    UpstreamTimeout(f"backend did not answer within {timeout:g}s")
                )
        else:
            queue.cancel(expire)
        return result

    opened.addBoth(settled)
    return opened


def _dropResult(protocol: object) -> None:
    """
    The endpoint's L{Deferred} fired with the protocol, which its factory
    keeps as long as the connection: let it go (the leg is handed over
    through its C{opened} L{Deferred}).
    """
