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

    from wsrelay.deadlines import DeadlineQueue, Deadlines
    from wsrelay.ws.handshake import RequestLines


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
    One connection attempt of L{connectUpstream}: builds its one protocol,
    hears of its failure when it connects without an endpoint
    (L{PlainTCPEndpoint.connectDirect}), and settles it.  Its bound methods
    are the canceller of C{opened}, the deadline's call and C{opened}'s
    first callback: no closures (nor their cells) per attempt.

    @ivar opened: The attempt's L{Deferred}, until it is settled or being
        cancelled (L{None} then: a failure of the connect is not its to
        tell any more).
    @ivar protocol: The leg, once built, until the attempt is settled.
    @ivar _setup: What the leg is given as it is built: the request's
        C{resource}, C{hostHeader}, C{requestHeaders}, C{offered} and
        C{extensions}, and C{opened} (L{None} once given).
    @ivar _plain: Whether the protocol is a L{PlainUpstream} (else the
        factory's Autobahn leg).
    @ivar _direct: The connector of a direct connect (L{None} through an
        endpoint).
    @ivar _connecting: The endpoint's L{Deferred} (L{None} for a direct
        connect).
    @ivar _queue: The deadlines' queue timing the attempt.
    @ivar _expired: Whether the deadline passed.
    @ivar _then: The caller's first callback, called by L{settled} (with
        C{_thenArgs}), or L{None}.
    @ivar _settlesDirectly: Whether nothing but C{_then} waits for
        C{opened} to succeed, so that a plain leg settles the attempt itself
        as it opens (L{legOpened}).
    """

    noisy = False
    protocol: UpstreamProtocol | None = None  # type: ignore[assignment]
    _direct: IConnector | None = None
    _connecting: Deferred[IProtocol] | None = None
    _expired = False
    _setup: tuple[Any, ...] | None = None
    _then: Callable[..., object] | None = None
    _thenArgs: tuple[object, ...] = ()
    _settlesDirectly = False

    # Set by L{connectUpstream} as it makes the attempt (no C{__init__}:
    # calling one is some thousand instructions of every handshake).
    _factory: UpstreamFactory
    _queue: DeadlineQueue
    _plain = False
    opened: Deferred[UpstreamProtocol] | None = None

    def buildProtocol(self, addr: IAddress | None) -> UpstreamProtocol:
        """
        Make the protocol and give it the request.
        """
        # (Typed for mypy without typing.cast, a Python call.)
        p: UpstreamProtocol
        if self._plain:
            # Passthrough: a plain leg, which has what that data path reads
            # of an upstream leg (wsrelay.ws.plainleg).
            p = PlainUpstream()  # type: ignore[assignment]
        else:
            p = self._factory.buildProtocol(addr)  # type: ignore[assignment]
        setup = self._setup
        assert setup is not None
        # One attribute at a time: asked for, the leg's __dict__ would be
        # made (Python 3.11 keeps a new object's attributes without one),
        # and every later attribute access of the leg would be slower.
        (
            p.resource,
            p.hostHeader,
            p.requestHeaders,
            p.offered,
            p.extensions,
            p.opened,
        ) = setup
        # The connector keeps this factory as long as the connection.
        self._setup = None
        if self._settlesDirectly and self._plain:
            p._settle = self.legOpened  # type: ignore[attr-defined]
        self.protocol = p
        return p

    def legOpened(self, leg: UpstreamProtocol) -> None:
        """
        The plain leg opened, for a caller whose C{then} is all that waits
        for C{opened} to succeed: the attempt is settled with the leg, as
        C{opened}'s firing would settle it, without firing C{opened} (its
        callback and L{Deferred._runCallbacks} once per handshake), which
        the leg lets go of unfired.  Nothing is done when C{opened} is
        being cancelled: its failure settles the attempt.
        """
        if self.opened is None:
            return
        # (L{settled} with the leg, inline: a call fewer on every handshake.
        # An attempt whose deadline passed is being cancelled, so
        # C{_expired} is checked only to be as L{settled}.)
        self.protocol = None
        self.opened = None
        if not self._expired:
            self._queue.cancel(self.expire)
        then = self._then
        args = self._thenArgs
        self._then = None
        self._thenArgs = ()
        if then is not None:
            then(leg, *args)

    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:
        """
        The direct connect failed (or was stopped).
        """
        self.connectFailed(reason)

    def connectFailed(self, f: Failure) -> None:
        """
        The connect failed: so does the attempt, unless it is settled or
        being cancelled.
        """
        opened = self.opened
        if opened is None or opened.called:
            return
        # Twisted's endpoints fail a cancelled attempt with
        # ConnectingCancelledError: C{opened} is being cancelled then, and
        # fails by itself (a timeout, or the client went away).
        if f.check(CancelledError, ConnectingCancelledError):
            return
        opened.errback(connectError(f))

    def cancel(self, opened: Deferred[UpstreamProtocol]) -> None:
        """
        C{opened} is being cancelled: close whatever was opened.
        """
        if self.opened is None:
            # Settled already (a leg that opened settles its attempt
            # without firing C{opened}, L{legOpened}): nothing is
            # connecting any more, and Twisted's connector would raise.
            return
        # (Stopping the connect fails it: not for this attempt to tell, as
        # C{opened} fails by itself.)
        self.opened = None
        p = self.protocol
        if p is not None and p.transport is not None:
            cast("ITCPTransport", p.transport).abortConnection()
        elif self._direct is not None:
            self._direct.stopConnecting()
        elif self._connecting is not None:
            self._connecting.cancel()

    def expire(self) -> None:
        """
        The deadline passed: cancel the attempt, which fails with
        L{UpstreamTimeout} (L{settled}).
        """
        self._expired = True
        if self.opened is not None:
            self.opened.cancel()

    def settled(self, result: object) -> object:
        """
        C{opened}'s first callback: the attempt is settled with C{result},
        which goes on to the caller's first callback, if it gave one.
        Twisted's connector and the endpoint's factory form a cycle that
        lives as long as the connection: neither may hold the protocol
        (nor the caller's callback and its arguments) through this attempt
        once it is no longer needed, or a closed leg would wait for the
        cyclic collector.
        """
        self.protocol = None
        self.opened = None
        if self._expired:
            if isinstance(result, Failure) and result.check(CancelledError):
                result = Failure(
                    UpstreamTimeout(
                        f"backend did not answer within {self._queue.timeout:g}s"
                    )
                )
        else:
            self._queue.cancel(self.expire)
        then = self._then
        if then is None:
            return result
        args = self._thenArgs
        self._then = None
        self._thenArgs = ()
        return then(result, *args)


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
    headers: list[tuple[str, str]] | RequestLines,
    offered: tuple[str, ...],
    timeout: float,
    then: Callable[..., object] | None = None,
    thenArgs: tuple[object, ...] = (),
    direct: bool = False,
) -> Deferred[Any]:
    """
    Connect to a backend and complete the opening handshake.

    @param deadlines: Times the attempt (L{Deadlines.queue} of C{timeout}).
    @param headers: The request's header fields; a L{RequestHeaders}, or
        a passthrough request's L{RequestLines}, also says how the leg
        treats extensions (a plain list: L{NO_EXTENSIONS}).
    @param then: The caller's first callback on the L{Deferred}, with
        C{thenArgs}: called by the attempt's own, rather than added after
        it (a link of the L{Deferred}'s fewer, on every handshake).
    @param direct: Whether C{then} is all that waits for the L{Deferred} to
        succeed (nothing is added to it, nor does anything wait for it but
        to cancel it): a plain leg then calls C{then} itself as it opens,
        and the L{Deferred} never fires with it (L{_Attempt.legOpened}).
        It fails, and is cancelled, as ever.
    @return: A L{Deferred} that fires with the open L{UpstreamProtocol},
        or fails with L{UpstreamError} (including a timeout after
        C{timeout} seconds, and L{UpstreamLocalError} when the relay is
        out of descriptors or ports) or L{UpstreamRefused}; with C{then},
        with what C{then} makes of that.  Cancelling it closes whatever was
        opened.
    """
    queue = deadlines.queue(timeout)
    attempt = _Attempt()
    attempt._factory = factory
    if getattr(headers, "plain", False):
        attempt._plain = True
    attempt._queue = queue
    opened: Deferred[UpstreamProtocol] = Deferred(attempt.cancel)
    attempt.opened = opened
    attempt._setup = (
        resource,
        hostHeader,
        headers,
        offered,
        getattr(headers, "extensions", NO_EXTENSIONS),
        opened,
    )
    if isinstance(endpoint, PlainTCPEndpoint):
        # The leg is the transport's protocol, with no endpoint between.
        attempt._direct = endpoint.connectDirect(attempt)
    else:
        connecting = attempt._connecting = endpoint.connect(attempt)
        connecting.addCallbacks(_dropResult, attempt.connectFailed)
    # One deadline, cancelled once the attempt is settled: what
    # Deferred.addTimeout does, without its closures and its three
    # callbacks per attempt, and without a DelayedCall of its own.
    queue.add(attempt.expire)
    if then is not None:
        attempt._then = then
        attempt._thenArgs = thenArgs
        if direct:
            attempt._settlesDirectly = True
    opened.addBoth(attempt.settled)
    return opened


def _dropResult(protocol: object) -> None:
    """
    The endpoint's L{Deferred} fired with the protocol, which its factory
    keeps as long as the connection: let it go (the leg is handed over
    through its C{opened} L{Deferred}).
    """
