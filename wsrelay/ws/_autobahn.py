"""
Adjustments to Autobahn, each measured: it formats values for its debug log
lines whether debug logging is on or not.

  - C{pprint.pformat} of its protocol options on every new connection: in
    the storm benchmark, an eighth of the relay's CPU per handshake.
  - C{hltype} and C{hlval} (a method's qualified name, a value, coloured)
    several times per connection, and in C{dataReceived} on every read: 3
    microseconds a read on the message path, 13 calls per proxied
    connection.

The modules' names for these functions are replaced with wrappers that
format only when a line is actually rendered, with the same text then.

And, for the cost of a connection that is opened and then held:

  - Autobahn makes an incremental UTF-8 validator (a C object through
    cffi) for every connection: a passthrough leg never validates, so
    L{LazyUtf8Validator} makes it on the first message that needs one.
  - Autobahn's queue for chopped or synchronous writes (a C{deque}, 760
    bytes empty), which the relay never makes: L{LegShims} starts each leg
    with L{NO_QUEUE} instead, and L{wsrelay.ws.legs.RelayLeg.sendData}
    makes the queue if it is ever needed.
  - Autobahn's observable events: a list and a dictionary per connection,
    which L{LegShims} replaces with one shared tuple, and a dictionary
    made when an observer listens.
  - Autobahn sets some seventy attributes on each connection, half of them
    to L{None}, C{False} or 0 where they mostly stay: a dictionary of more
    than 42 entries takes 1,584 bytes, one of up to 42 takes 832.  Those
    attributes have class defaults (L{DEFAULTS}, on L{LegShims}), and
    L{compact} drops from an open leg's dictionary each attribute whose
    value is its class default, which reads the same.

And the only place in wsrelay that names Autobahn's private attributes:
L{LegShims} gives a relay leg the ones it uses under public names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import autobahn.twisted.websocket
import autobahn.websocket.protocol
from autobahn import util
from autobahn.twisted.util import create_transport_details, peer2str
from autobahn.wamp.types import TransportDetails
from autobahn.websocket.protocol import (
    TrafficStats,
    WebSocketProtocol,
    _is_same_origin,
    _url_to_origin,
)
from twisted.internet.interfaces import ISSLTransport

from wsrelay.ws.lazy import FIRED as FIRED
from wsrelay.ws.lazy import LazyCall as LazyCall
from wsrelay.ws.lazy import LazyClosed as LazyClosed
from wsrelay.ws.lazy import LazyFormat as LazyFormat
from wsrelay.ws.lazy import LazyOpen as LazyOpen
from wsrelay.ws.lazy import LazyUtf8Validator, LazyValidator, lazy

#: Autobahn's protocol module, whose names L{install} replaces.
_PROTOCOL: Any = autobahn.websocket.protocol


#: The one C{TrafficStats} of every Autobahn connection (L{install}).
_TRAFFIC = TrafficStats()


def sharedTrafficStats() -> TrafficStats:
    """
    Autobahn's traffic counters, which it keeps for each connection in an
    object of 320 bytes and which nothing in the relay reads (the legs
    count messages and bytes themselves): one object that every
    connection adds to costs a connection nothing, and a message what it
    did.

    @return: The shared counters.
    """
    return _TRAFFIC


def forgetOpened(protocol: Any, name: str) -> None:
    """
    Let the protocol's L{Deferred} C{name} go once it has fired: reading
    it then gives L{FIRED}, a class attribute of the leg.
    """
    attributes = protocol.__dict__
    d = attributes.get(name)
    if d is not None and d.called:
        del attributes[name]


def letGo(protocol: Any, cycles: tuple[str, ...], client: bool = True) -> None:
    """
    A leg's connection is gone: drop its attributes C{cycles}, the
    references by which it, its session and its data path refer to each
    other, and its connector's reference to its transport
    (L{dropConnector}), so that reference counting frees them.

    @param client: Whether the leg connected out (else it has no connector).
    """
    attributes = protocol.__dict__
    for name in cycles:
        attributes.pop(name, None)
    if not client:
        return
    dropConnector(protocol.transport)


def dropConnector(transport: Any) -> None:
    """
    The connection of C{transport} is gone: its client connector, if any,
    which refers to it for good, lets go of it (and so of the attempt).
    """
    for _ in range(2):
        connector = getattr(transport, "connector", None)
        if connector is not None:
            if getattr(connector, "transport", None) is transport:
                connector.transport = None
            return
        # TLS: the TCP transport is under the TLS protocol.
        transport = getattr(transport, "transport", None)


#: A leg's C{websocket_extensions_in_use} when it negotiated none without
#: Autobahn (a class attribute): one empty list for all, which nothing
#: adds to (Autobahn sets a list of its own before it adds).
NONE_IN_USE: list[Any] = []

#: The events an observer may listen to on a leg (Autobahn's C{message}).
MESSAGE_EVENTS = ("message",)

#: The tuples of valid events (L{LegShims.set_valid_events}), one of each.
_EVENTS: dict[tuple[str, ...], tuple[str, ...]] = {MESSAGE_EVENTS: MESSAGE_EVENTS}

#: A leg's C{send_queue} until a write needs Autobahn's queue: empty, as
#: Autobahn's checks of its length expect (L{LegShims._connectionMade}).
NO_QUEUE: Any = ()


def install() -> None:
    """
    Make Autobahn's debug formatting, and its UTF-8 validators, lazy;
    give its connections one set of traffic counters
    (L{sharedTrafficStats}).
    """
    protocol: Any = autobahn.websocket.protocol
    twisted: Any = autobahn.twisted.websocket
    protocol.pformat = LazyFormat
    protocol.Utf8Validator = LazyUtf8Validator
    protocol.TrafficStats = sharedTrafficStats
    for module in (protocol, twisted):
        module.hltype = lazy(util.hltype)
        module.hlval = lazy(util.hlval)


#: Autobahn's private protocol methods that wsrelay calls or overrides,
#: all of them here (C{WebSocketProtocol} or its Twisted adapter has each):
#: tests/test_autobahn.py fails, naming it, when an upgrade of Autobahn
#: renames one.
PRIVATE_METHODS = (
    "_connectionMade",
    "_dataReceived",
    "_fail_connection",
    "_protocol_violation",
    "_invalid_payload",
    "_onOpen",
    "_sendAutoPing",
)

#: Autobahn's private attributes of a connected protocol that wsrelay
#: reads (checked the same way).
PRIVATE_ATTRIBUTES = (
    "_perMessageCompress",
    "_transport_details",
    "_valid_events",
    "_results",
    "_listeners",
)


#: Attributes Autobahn sets on each connection to L{None}, C{False} or 0
#: (C{WebSocketProtocol._connectionMade} and the opening handshake),
#: which it has no class attribute for: L{LegShims} has, with the same
#: values, so that L{compact} can drop them from a leg's dictionary while
#: they keep these values.  tests/test_autobahn.py checks that Autobahn's
#: classes define none of them.
DEFAULTS: dict[str, Any] = dict.fromkeys(
    (
        "_perMessageCompress",
        "autoPingPending",
        "autoPingPendingCall",
        "autoPingPendingSent",
        "autoPingTimeoutCall",
        "closeHandshakeTimeoutCall",
        "current_frame",
        "_wskey",
        "http_headers",
        "http_request_data",
        "http_request_host",
        "http_request_params",
        "http_request_path",
        "http_request_uri",
        "http_response_data",
        "http_status_line",
        "localCloseCode",
        "localCloseReason",
        "openHandshakeTimeoutCall",
        "remoteCloseCode",
        "remoteCloseReason",
        "serverConnectionDropTimeoutCall",
        "trackedTimings",
        "wasNotCleanReason",
        "websocket_key",
        "websocket_origin",
        "websocket_protocol_in_use",
    )
)
DEFAULTS.update(
    dict.fromkeys(
        (
            "closedByMe",
            "droppedByMe",
            "failedByMe",
            "inside_message",
            "triggered",
            "wasClean",
            "wasCloseHandshakeTimeout",
            "wasMaxFramePayloadSizeExceeded",
            "wasMaxMessagePayloadSizeExceeded",
            "wasOpenHandshakeTimeout",
            "wasServerConnectionDropTimeout",
            "wasServingFlashSocketPolicyFile",
        ),
        False,
    ),
    autoPingPendingSeq=0,
)

#: What L{compact} drops when an attribute's value is its class default:
#: the values that are the same object wherever they come from, and the
#: objects every leg shares (L{LegShims} has them as class attributes).
_SINGLETONS = (None, False, True, 0, "", b"", NO_QUEUE, _TRAFFIC, MESSAGE_EVENTS)


def classDefaults(cls: type) -> dict[str, Any]:
    """
    @return: The attributes of C{cls} (its own and inherited) whose value
        is one of L{_SINGLETONS}, with their values; worked out once per
        class and kept on it.
    """
    found: dict[str, Any] | None = cls.__dict__.get("_classDefaults")
    if found is None:
        found = {}
        for name in dir(cls):
            value = getattr(cls, name, None)
            if any(value is s for s in _SINGLETONS) and hasattr(cls, name):
                found[name] = value
        cls._classDefaults = found  # type: ignore[attr-defined]
    return found


def compact(protocol: Any) -> None:
    """
    Give C{protocol} a new dictionary without the attributes whose value
    is their class default (L{DEFAULTS} among them, L{classDefaults}):
    they read the same, and the new dictionary is sized for what is left.
    """
    defaults = classDefaults(type(protocol))
    missing = _MISSING
    protocol.__dict__ = {
        name: value
        for name, value in protocol.__dict__.items()
        if defaults.get(name, missing) is not value
    }


#: Stands for no class default in L{compact}.
_MISSING = object()


class LazyTransportDetails:
    """
    A leg's C{_transport_details} (Autobahn's account of its transport),
    made as Autobahn's C{connectionMade} makes it, when first read; before
    the leg connected, empty details (as Autobahn's C{__init__} makes).
    Making them sets the leg's C{detailsMade} (its class default false).
    """

    def __get__(self, leg: Any, owner: type | None = None) -> Any:
        if leg is None:
            return self
        if leg.transport is None:
            return TransportDetails()
        details = create_transport_details(leg.transport, leg.is_server)
        details.channel_framing = TransportDetails.CHANNEL_FRAMING_WEBSOCKET
        details.peer = leg.__dict__.get("peer") or details.peer  # (setPeer's)
        leg.__dict__["_transport_details"] = details
        leg.detailsMade = True
        return details


class LazyPeer:
    """
    A leg's C{peer} (C{"tcp4:192.0.2.7:4000"}), made when first read;
    before it connected, Autobahn's class default.
    """

    def __get__(self, leg: Any, owner: type | None = None) -> Any:
        if leg is None:
            return self
        if leg.transport is None:
            return WebSocketProtocol.peer
        made = getattr(leg, "detailsMade", None)
        if made is None:
            # Not a relay leg: Autobahn made its details as it connected.
            details = vars(leg).get("_transport_details")
        else:
            # (A leg tells it by its flag: asking for its __dict__ would
            # make one, slowing every later attribute access.)
            details = leg._transport_details if made else None
        peer = details.peer if details is not None else peer2str(leg.transport)
        # (Stored as any attribute: this descriptor has no __set__.)
        leg.peer = peer
        return peer


#: Autobahn's state of a leg before it opened.
_CONNECTING = WebSocketProtocol.STATE_CONNECTING

#: Whether a transport's class provides C{ISSLTransport}, by class.
_TLS: dict[type, bool] = {}


def isTLS(transport: Any) -> bool:
    """
    @return: Whether C{transport} is a TLS connection (provides
        C{ISSLTransport}), asked of zope once per transport class.
    """
    cls = type(transport)
    found = _TLS.get(cls)
    if found is None:
        found = _TLS[cls] = ISSLTransport.providedBy(transport)
    return found


class LegShims:
    """
    Autobahn's private protocol attributes that a relay leg uses, under
    public names.  A mixin placed before Autobahn's protocol class, so
    that C{super()} here is Autobahn.

    @ivar compressor: The leg's permessage-deflate compressor as
        negotiated (Autobahn's C{PerMessageDeflate}), or L{None}: set as
        the leg opens, once Autobahn has negotiated it.
    """

    #: Autobahn's parser: takes bytes from the transport, runs the opening
    #: handshake and then parses frames (C{onMessageFrameEnd}, ...).  Its
    #: Twisted C{dataReceived} only formats a debug line and calls it.
    parse: ClassVar[Callable[[Any, bytes], None]] = WebSocketProtocol._dataReceived

    compressor: Any = None
    # What every leg shares, as class attributes too (L{compact}): the
    # write queue until one is needed, Autobahn's traffic counters, the
    # events, and the bytes left unparsed when there are none.
    send_queue: Any = NO_QUEUE
    trafficStats: Any = _TRAFFIC
    _valid_events: tuple[str, ...] | None = MESSAGE_EVENTS
    data = b""
    _results: dict[str, Any] | None = None

    #: Made when first read (L{LazyOpen}, L{LazyClosed},
    #: L{LazyTransportDetails}, L{LazyPeer}, L{LazyValidator}).
    is_open: Any = LazyOpen()
    #: Whether the leg opened (its 101 sent or read; L{LazyOpen}).
    upgraded = False
    #: Whether the leg has an C{is_open} of its own (L{LazyOpen}), and its
    #: C{_transport_details} (L{LazyTransportDetails}): told by these flags,
    #: not by asking for the leg's C{__dict__}, which Python 3.11 makes
    #: then (an instance keeps its attributes without one until asked),
    #: slowing every later attribute access of the leg.
    openMade = False
    detailsMade = False
    is_closed: Any = LazyClosed()
    _transport_details: Any = LazyTransportDetails()
    peer: Any = LazyPeer()
    utf8validator: Any = LazyValidator()
    send_state = WebSocketProtocol.SEND_STATE_GROUND

    #: Autobahn's C{WebSocketProtocol.__init__} without what a leg has as
    #: class attributes (its events, L{MESSAGE_EVENTS}) or makes when read
    #: (its empty transport details, its C{is_open} and C{is_closed}):
    #: nothing left to do.
    __init__ = object.__init__

    #: Whether the leg is a server leg whose options are class attributes
    #: (L{wsrelay.ws.legs.withOptions}, which sets this), with
    #: C{TCP_NODELAY}, no timings tracked and no opening-handshake timer of
    #: Autobahn's: all that L{connectionMade} then does is set the state
    #: and count the connection, read from no other class attribute (on
    #: Python 3.11 each such read of an instance is an unspecialized
    #: lookup).
    connectsLean = False

    def connectionMade(self) -> None:
        """
        Autobahn's Twisted C{connectionMade} (C{TCP_NODELAY}), without its
        debug line, whose arguments it makes for every connection, and
        with its transport details and peer made only when read: a
        passthrough leg answered by the relay never reads them
        (L{_onOpen}).
        """
        transport: Any = self.transport  # type: ignore[attr-defined]
        if self.connectsLean:
            # What the rest would do for such a leg (_connectionMade).
            try:
                transport.setTcpNoDelay(True)
            except Exception:  # noqa: S110 - as Autobahn: not a TCP socket
                pass
            self.state = _CONNECTING
            self.factory.countConnections += 1  # type: ignore[attr-defined]
            return
        try:
            transport.setTcpNoDelay(self.tcpNoDelay)  # type: ignore[attr-defined]
        except Exception:  # noqa: S110 - as Autobahn: not a TCP socket
            pass
        self._connectionMade()

    def _connectionMade(self) -> None:
        """
        Autobahn sets up the connection; its write queue stays unmade
        (L{NO_QUEUE}) until a write needs it.

        For a leg whose options are class attributes (L{wsrelay.ws.legs.
        withOptions}, which empties C{CONFIG_ATTRS}), only what differs
        from the class defaults is set (L{DEFAULTS}, and the shared objects
        of this class): Autobahn sets some forty attributes per connection
        (C{WebSocketProtocol._connectionMade}) to the values they have
        here, which L{compact} would drop again.  tests/test_autobahn.py
        checks that a leg reads the same after both.
        """
        if self.CONFIG_ATTRS:  # type: ignore[attr-defined]
            super()._connectionMade()  # type: ignore[misc]
            self.send_queue = NO_QUEUE
            return
        factory: Any = self.factory  # type: ignore[attr-defined]
        if self.trackTimings:  # type: ignore[attr-defined]
            self.setTrackTimings(True)  # type: ignore[attr-defined]
        self.state = WebSocketProtocol.STATE_CONNECTING
        timeout = self.openHandshakeTimeout  # type: ignore[attr-defined]
        if timeout > 0:
            self.openHandshakeTimeoutCall = factory._batched_timer.call_later(
                timeout,
                self.onOpenHandshakeTimeout,  # type: ignore[attr-defined]
            )
        if factory.isServer:
            # (WebSocketServerProtocol._connectionMade.)
            factory.countConnections += 1
        elif factory.proxy is not None:
            # (WebSocketClientProtocol._connectionMade.)
            self.startProxyConnect()  # type: ignore[attr-defined]
        else:
            self.startHandshake()  # type: ignore[attr-defined]

    def set_valid_events(self, valid_events: Any = None) -> None:
        """
        Autobahn's list of the events an observer may listen to (its
        C{ObservableMixin}), as a tuple shared by every connection, and no
        dictionary of results until an observer listens (L{on}): relay legs
        have none, and Autobahn made both for each connection.
        """
        events = tuple(valid_events or ())
        self._valid_events = _EVENTS.setdefault(events, events)

    def on(self, event: str, handler: Callable[..., Any]) -> None:
        """
        Autobahn's C{on}, with the results' dictionary that C{fire} fills
        once there is an observer.
        """
        if self._results is None:
            self._results = dict.fromkeys(self._valid_events or ())
        super().on(event, handler)  # type: ignore[misc]

    def startKeepalive(self) -> None:
        """
        Start Autobahn's keepalive pings (C{autoPingInterval}), as Autobahn
        does when a connection opens.
        """
        interval = self.autoPingInterval  # type: ignore[attr-defined]
        if interval:
            self.autoPingPendingCall = self.factory._batched_timer.call_later(  # type: ignore[attr-defined]
                interval,
                self._sendAutoPing,  # type: ignore[attr-defined]
            )

    def _onOpen(self) -> None:
        """
        Autobahn opened the connection: keep the compressor it negotiated,
        then go on as Autobahn does (to C{onOpen}), which completes a TLS
        leg's transport details (not made for a plain leg that never read
        them).
        """
        compressor = self._perMessageCompress  # type: ignore[attr-defined]
        if compressor is not None:
            self.compressor = compressor
        if self.detailsMade or isTLS(self.transport):  # type: ignore[attr-defined]
            super()._onOpen()  # type: ignore[misc]
        else:
            self.onOpen()  # type: ignore[attr-defined]

    def _fail_connection(self, code: int = 1001, reason: str = "going away") -> None:
        """
        Autobahn fails the connection (a protocol error, invalid UTF-8, too
        big a message): L{onFailure} decides.
        """
        self.onFailure(code, reason)

    def onFailure(self, code: int, reason: str) -> None:
        """
        Autobahn fails the connection with C{code}; by default, at once
        (L{failNow}).
        """
        self.failNow(code, reason)

    def failNow(self, code: int, reason: str) -> None:
        """
        Fail the connection as Autobahn does: its close frame with C{code}
        (or, with C{failByDrop}, the end of the connection).
        """
        super()._fail_connection(code, reason)  # type: ignore[misc]

    def protocolViolation(self, reason: str) -> bool:
        """
        Fail the connection for a protocol error (1002), as Autobahn does
        for its own.

        @return: Whether to stop processing (Autobahn's answer).
        """
        done: bool = self._protocol_violation(reason)  # type: ignore[attr-defined]
        return done

    def invalidPayload(self, reason: str) -> bool:
        """
        Fail the connection for invalid UTF-8 (1007), as Autobahn does for
        its own.

        @return: Whether to stop processing (Autobahn's answer).
        """
        done: bool = self._invalid_payload(reason)  # type: ignore[attr-defined]
        return done


for _name, _value in DEFAULTS.items():
    setattr(LegShims, _name, _value)
del _name, _value


def originAllowed(protocol: Any, origin: str) -> bool:
    """
    Whether Autobahn's server C{protocol} accepts a handshake with this
    C{Origin} (its C{processHandshake}: a valid origin, allowed by its
    C{allowedOrigins}, or C{null} where it allows that), without the
    handshake: the relay checks a plain request itself
    (L{wsrelay.ws.accept.plainRequest}).
    """
    try:
        found = _url_to_origin(origin)
    except ValueError:
        return False
    factory = protocol.factory
    if found == "null" and factory.allowNullOrigin:
        return True
    return bool(
        _is_same_origin(
            found,
            "https" if factory.isSecure else "http",
            factory.externalPort or factory.port,
            protocol.allowedOriginsPatterns,
        )
    )


def setPeer(protocol: Any, peer: str) -> None:
    """
    Give an Autobahn protocol another C{peer} (the address a PROXY protocol
    header names), in its transport details too.
    """
    protocol.peer = peer
    made = getattr(protocol, "detailsMade", None)
    if made is None:
        # Not a relay leg: Autobahn made its details as it connected.
        details = vars(protocol).get("_transport_details")
    else:
        # (A leg tells it by its flag, not its __dict__: LegShims.detailsMade.)
        details = protocol._transport_details if made else None
    if details is not None:
        details.peer = peer
