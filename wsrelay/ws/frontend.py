# -*- test-case-name: tests.test_proxy -*-
"""
The client-facing leg: an Autobahn server protocol that answers the
opening handshake only once the relay has an upstream for it.

Before Autobahn sees a request, L{FrontendProtocol.processHandshake} has
it screened (L{wsrelay.ws.screening}: 431, 400, C{/healthz}, 404, 426) and
the client admitted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.compress import (
    PerMessageDeflateOffer,
    PerMessageDeflateOfferAccept,
)
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from wsrelay.accesslog import logRefused
from wsrelay.deadlines import Deadlines
from wsrelay.logs import ErrorBudget, LimitedLogger
from wsrelay.ws._autobahn import LegShims, isTLS
from wsrelay.ws.accept import PlainAccept
from wsrelay.ws.handshake import Head, buildResponse
from wsrelay.ws.legclosing import OPEN
from wsrelay.ws.legs import RelayLeg, legOptions, withOptions
from wsrelay.ws.screening import Refused as Refused
from wsrelay.ws.screening import Rejected, screenRequest

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred
    from twisted.internet.interfaces import IReactorTime

    from wsrelay.config import RelayConfig
    from wsrelay.deadlines import DeadlineQueue
    from wsrelay.routing import Route, RouteTable


class ClientSession(Protocol):
    """
    What the relay pairs a client connection with: a proxy session or a
    fan-out channel membership.
    """

    def clientOpened(self) -> None:
        """
        The client got its 101.
        """

    def closing(self) -> None:
        """
        A close frame is about to go to the client: nothing may follow it.
        """


class ClientAddresses(Protocol):
    """
    Who a client is, and what the relay tells a backend of it
    (L{wsrelay.admission.Admission}).
    """

    def clientAddress(self, frontend: FrontendProtocol) -> str:
        """
        @return: The client's address, after C{trusted_proxies}.
        """

    def forwardedHeaders(
        self, frontend: FrontendProtocol, head: Head
    ) -> list[tuple[str, str]]:
        """
        @return: The header fields of the upstream request for C{head}.
        """


class Admitter(ClientAddresses, Protocol):
    """
    Decides which clients the relay serves, and counts them
    (L{wsrelay.admission.Admission}).
    """

    def clientArrived(self, frontend: FrontendProtocol) -> None:
        """
        A client connected (it may be dropped at once).
        """

    def clientLeft(self, frontend: FrontendProtocol) -> None:
        """
        A client's connection is gone.
        """

    def admit(self, frontend: FrontendProtocol, route: Route) -> Refused | None:
        """
        @return: The refusal for a routed, valid upgrade request, or
            L{None} to go on.
        """


class SessionOpener(Protocol):
    """
    Opens the session of a client whose handshake is valid
    (L{wsrelay.registry.Sessions}).
    """

    def openSession(
        self, frontend: FrontendProtocol, route: Route, key: str | None = None
    ) -> Deferred[Any] | None:
        """
        @param key: Given when C{frontend} answers a plain request itself
            (L{answerPlain <wsrelay.ws.accept.PlainAccept.answerPlain>}),
            the client's C{Sec-WebSocket-Key}: the opener may then answer
            through C{frontend}'s C{acceptPlain} (with C{key}) and
            C{denyPlain} itself, and return L{None}.
        @return: A L{Deferred} that fires with the subprotocol and the
            headers of the client's 101, or fails with L{Refused}, given to
            C{frontend}'s L{FrontendProtocol.keepRefusal} first; or L{None}
            (see C{key}).
        """


_log = Logger()


class ClientDeflate:
    """
    Mixin for the client's leg: whether it negotiates permessage-deflate
    itself (L{relaysDeflate}).
    """

    route: Route | None
    websocket_extensions: list[tuple[str, Any]]

    def relaysDeflate(self) -> bool:
        """
        @return: Whether this client's leg uses permessage-deflate, which the
            relay negotiates itself: the client offered it, and the route is
            a proxy route on the message data path with C{compression = on}.
            (Passthrough routes pass the offer on; fan-out routes decline.)
        """
        route = self.route
        if route is None:
            return False
        config = route.config
        return (
            config.mode == "proxy"
            and config.dataPath == "message"
            and config.compression
            and any(
                name == "permessage-deflate" for name, _ in self.websocket_extensions
            )
        )


class FrontendProtocol(PlainAccept, ClientDeflate, RelayLeg, WebSocketServerProtocol):  # type: ignore[misc]
    """
    One client connection.

    @ivar session: The session that pairs this connection with its
        upstream, once the request was routed.
    @ivar head: The parsed request head, until a passthrough pipe
        carries the connection (L{wsrelay.proxy.pairing.startPipe}).
    @ivar route: The route the request matched.
    @ivar path: The request path, normalized (L{normalizePath}): the
        relay routes on it and forwards it.
    @ivar remainder: The normalized path after the route's prefix.
    @ivar query: The query string, without C{?}, as sent.
    """

    factory: FrontendFactory
    session: ClientSession | None = None
    head: Head | None = None
    route: Route | None = None
    path = "/"
    remainder = ""
    query = ""
    _refusal: Refused | None = None
    _screened = False
    _handshakeCall: DeadlineQueue | None = None
    #: The client's address as counted by C{max_connections_per_ip}.
    countedAddress: str | None = None
    #: Whether the client got its 101.
    upgraded = False
    rateLimit = 0
    rateCount = 0
    rateWindow = 0.0
    rateDrops = 0

    def connectionMade(self) -> None:
        """
        Start the clock on the client's handshake.  Autobahn's own timer
        rounds to whole seconds (txaio's batched timer), so the relay keeps
        its own, on the relay's clock.
        """
        LegShims.connectionMade(self)
        factory = self.factory
        factory.admission.clientArrived(self)
        rateLimit = factory.config.maxMessagesPerSecond
        if rateLimit:
            self.rateLimit = rateLimit
            self.rateWindow = factory.clock.seconds()
        queue = factory.handshakes
        queue.add(self._handshakeTimedOut)
        self._handshakeCall = queue

    def _handshakeTimedOut(self) -> None:
        """
        The client did not send a complete request in time: drop it.
        """
        # (Reads as its class default, None, once deleted.)
        del self._handshakeCall
        self.wasClean = False
        self.wasNotCleanReason = "opening handshake timeout"
        self.dropConnection(abort=True)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        Stop the handshake clock, and no longer count this connection.
        """
        self._stopHandshakeClock()
        factory = self.factory
        factory.admission.clientLeft(self)
        if not self.upgraded and self._refusal is not None:
            factory.countRefusal(self.route)
        if not self.upgraded and factory.config.accessLog:
            # Sessions log the connections that got their 101.
            client = factory.admission.clientAddress(self) if self.transport else None
            logRefused(_log, client, self.route, self.head, self._refusal)
        RelayLeg.connectionLost(self, reason)

    def sendCloseFrame(
        self,
        code: int | None = None,
        reasonUtf8: bytes | None = None,
        isReply: bool = False,
    ) -> None:
        """
        Every close frame to the client goes through here, Autobahn's own
        (a protocol error, 1007...) included: tell the session first, so
        that it writes no data frame after it.
        """
        session = self.session
        if self.state == OPEN and session is not None:
            session.closing()
        WebSocketServerProtocol.sendCloseFrame(self, code, reasonUtf8, isReply)

    def onMessageFrameEnd(self) -> None:
        """
        Count the client's messages against C{max_messages_per_second}
        (L{messageOverRate}), then relay the frame.  Once the client broke
        the protocol, its frames are not counted (L{RelayLeg} drops them).
        """
        if (
            self.rateLimit
            and not self.failedByMe
            and self.current_frame.fin
            and self.messageOverRate()
            # (The end of a message whose start went on is let through:
            # the other side must not get half of one.)
            and not self.receivingFragment
            and self.overRate()
        ):
            return
        RelayLeg.onMessageFrameEnd(self)

    def messageOverRate(self) -> bool:
        """
        Count one message against C{max_messages_per_second}, in
        one-second windows (the clock is read only once the count is over).

        @return: Whether it is over the limit.
        """
        self.rateCount += 1
        if self.rateCount <= self.rateLimit:
            return False
        now = self.factory.clock.seconds()
        if now - self.rateWindow >= 1:
            self.rateWindow = now
            self.rateCount = 1
            return False
        return True

    def overRate(self) -> bool:
        """
        The client sent too many messages this second.

        @return: Whether to drop this frame.
        """
        self.rateDrops += 1
        if self.factory.config.messageRateAction == "close":
            self.frame_data = None
            self.closeWith(1008, b"message rate exceeded")
        else:
            self.frame_data = None
        return True

    def _stopHandshakeClock(self) -> None:
        queue = self._handshakeCall
        if queue is not None:
            # (Reads as its class default, None, once deleted: not through
            # the instance's __dict__, which Python 3.11 would make then,
            # slowing every later attribute access of the leg.)
            del self._handshakeCall
            queue.cancel(self._handshakeTimedOut)

    @property
    def secure(self) -> bool:
        """
        Whether the client connected over TLS.
        """
        return isTLS(self.transport)

    def processHandshake(self) -> None:
        """
        Screen the request (L{screenRequest}) and admit the client; answer
        it (L{PlainAccept}) or let Autobahn check the handshake itself.
        """
        factory = self.factory
        if self._screened:
            # onConnect is waiting for a backend; keep what the client sent
            # meanwhile, within the head limit.
            if len(self.data) > factory.config.maxMessageSize:
                self.dropConnection(abort=True)
            return
        screened = screenRequest(
            self.data, factory.config.maxHeaderSize, factory.routes
        )
        if screened is None:
            return
        self.head = screened.head
        if isinstance(screened, Rejected):
            self.refuse(screened.refusal)
            return
        refusal = factory.admission.admit(self, screened.route)
        if refusal is not None:
            self.refuse(refusal)
            return
        self.route = screened.route
        # (Each stored only when it is not its class default, as the
        # routed path, with no remainder or query, mostly is.)
        if screened.remainder:
            self.remainder = screened.remainder
        if screened.path != "/":
            self.path = screened.path
        if screened.query:
            self.query = screened.query
        self._screened = True
        if self.answerPlain(screened):
            return
        WebSocketServerProtocol.processHandshake(self)

    def onConnect(self, request: Any, key: str | None = None) -> Any:
        """
        The client's handshake is valid: open the upstream.  The client
        did its part, so the handshake timer stops; the relay's own budget
        for reaching a backend (C{handshake_timeout}) starts.

        @return: A L{Deferred} that fires with the subprotocol and the
            response headers, or fails with L{Refused}, given to
            L{keepRefusal} first (L{SessionOpener.openSession}: no callback
            of this leg's on the L{Deferred} of every handshake); or
            L{None} when the opener answers through the leg's C{acceptPlain}
            or C{denyPlain} itself, as it may when given C{key} (the
            client's C{Sec-WebSocket-Key}, from L{answerPlain
            <wsrelay.ws.accept.PlainAccept.answerPlain>}).
        """
        self._stopHandshakeClock()
        assert self.route is not None
        return self.factory.sessions.openSession(self, self.route, key)

    def perMessageCompressionAccept(
        self, offers: list[object]
    ) -> PerMessageDeflateOfferAccept | None:
        """
        Accept the client's first permessage-deflate offer, with its
        parameters, as Autobahn's testee server does, when L{relaysDeflate}
        (Autobahn calls this with the parsed offers; set on the class, it is
        not replaced by the factory's option).

        @return: The acceptance, or L{None} to decline.
        """
        if not self.relaysDeflate():
            return None
        for offer in offers:
            if isinstance(offer, PerMessageDeflateOffer):
                return PerMessageDeflateOfferAccept(offer)
        return None

    def succeedHandshake(self, res: Any) -> None:
        """
        Answer the client.  On the passthrough data path the client's
        extension offer went to the backend, whose answer is among the
        headers in C{res}: Autobahn neither judges the offer nor negotiates
        anything itself.
        """
        route = self.route
        if route is not None and (
            route.config.mode == "fanout" or route.config.dataPath == "passthrough"
        ):
            self.websocket_extensions = []
        WebSocketServerProtocol.succeedHandshake(self, res)

    def keepRefusal(self, refusal: Refused) -> None:
        """
        Remember the refusal this leg's session opener is about to fail
        with, its headers and body for L{sendHttpErrorResponse}.
        """
        self._refusal = refusal

    def onOpen(self) -> None:
        """
        The 101 went out: start relaying, unless the client left while the
        upstream was opening (Autobahn still calls this then).
        """
        session = self.session
        if session is None or self.transport is None:
            self.dropConnection(abort=True)
            return
        self.upgraded = True
        session.clientOpened()

    def refuse(self, refusal: Refused) -> None:
        """
        Answer the request with an HTTP response and close.
        """
        self._refusal = refusal
        self.failHandshake(refusal.reason, refusal.code)

    def sendHttpErrorResponse(
        self, code: int, reason: str, responseHeaders: Any = None
    ) -> None:
        """
        Write a complete HTTP response: the relayed one when there is one,
        else one with a short plain-text body.
        """
        refusal = self._refusal
        if refusal is not None and refusal.code == code:
            self.sendData(
                buildResponse(code, refusal.reason, refusal.headers, refusal.body)
            )
        else:
            headers = [tuple(h) for h in responseHeaders or ()]
            body = f"{code} {reason}\n".encode()
            self.sendData(
                buildResponse(
                    code,
                    None,
                    [*headers, ("Content-Type", "text/plain; charset=utf-8")],
                    body,
                )
            )


class FrontendFactory(WebSocketServerFactory):
    """
    Makes L{FrontendProtocol}s for every listener of one relay.
    """

    # Any: Twisted wants a protocol whose factory is a Factory[Self], and
    # FrontendProtocol.factory is this (non-generic) class.
    protocol: Any = FrontendProtocol

    def __init__(
        self,
        reactor: Any,
        clock: IReactorTime,
        config: RelayConfig,
        routes: RouteTable,
        admission: Admitter,
        sessions: SessionOpener,
    ) -> None:
        """
        @param reactor: Autobahn's reactor for the connections.
        @param clock: Times the handshakes and the message rate.
        @param config: The configuration in force.
        @param routes: Where requests are routed.
        @param admission: Admits the clients.
        @param sessions: Opens the sessions of admitted clients.
        """
        super().__init__(server="wsrelay", reactor=reactor)
        self.clock = clock
        #: The handshakes' deadlines, on C{clock}.
        self.deadlines = Deadlines(clock)
        self.routes = routes
        self.admission = admission
        self.sessions = sessions
        #: The budget of log lines that clients' protocol errors may cause.
        self.protocolErrors = ErrorBudget(clock)
        #: Clients refused a 101 with a status, by route name (C{""} for
        #: requests no route matched), for the dashboard.
        self.refused: dict[str, int] = {}
        self.configure(config)

    def countRefusal(self, route: Route | None) -> None:
        """
        A client of C{route} (L{None}: no route matched) was refused a 101
        with a status.
        """
        name = "" if route is None else route.name
        self.refused[name] = self.refused.get(name, 0) + 1

    def stopFactory(self) -> None:
        """
        The last listener stopped: log what the budget held back.
        """
        self.protocolErrors.flush()
        super().stopFactory()

    def configure(self, config: RelayConfig) -> None:
        """
        Apply C{config} to connections made from now on.
        """
        self.config = config
        #: The deadlines of the handshakes of clients that connect from now
        #: on (C{handshake_timeout}).
        self.handshakes = self.deadlines.queue(config.handshakeTimeout)
        self.setProtocolOptions(webStatus=False, versions=[13], **legOptions(config))
        self.protocol = withOptions(FrontendProtocol, self)
        # What Autobahn logs of a client's protocol errors (a refused
        # handshake, a bad frame) counts against the budget.
        self.protocol.log = LimitedLogger(
            WebSocketServerProtocol.log, self.protocolErrors
        )
