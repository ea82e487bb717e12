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

And the only place in wsrelay that names Autobahn's private attributes:
L{LegShims} gives a relay leg the ones it uses under public names.
"""

from __future__ import annotations

import pprint
from collections.abc import Callable
from typing import Any, ClassVar

import autobahn.twisted.websocket
import autobahn.websocket.protocol
from autobahn import util
from autobahn.websocket.protocol import WebSocketProtocol


class LazyCall(str):
    """
    The text C{function(*arguments, **keywords)}, computed only when turned
    into a string.

    A C{str} itself (an empty one), so that it may stand wherever the
    function's result did, C{__str__} methods included.
    """

    function: Callable[..., str]
    arguments: tuple[Any, ...]
    keywords: dict[str, Any]

    def __new__(
        cls, function: Callable[..., str], *arguments: Any, **keywords: Any
    ) -> LazyCall:
        self = super().__new__(cls, "")
        self.function = function
        self.arguments = arguments
        self.keywords = keywords
        return self

    def __str__(self) -> str:
        return self.function(*self.arguments, **self.keywords)

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)

    __repr__ = __str__


def lazy(function: Callable[..., str]) -> Callable[..., LazyCall]:
    """
    @return: A function giving a L{LazyCall} of C{function}.
    """

    def deferred(*arguments: Any, **keywords: Any) -> LazyCall:
        return LazyCall(function, *arguments, **keywords)

    return deferred


def LazyFormat(obj: Any) -> LazyCall:
    """
    C{pprint.pformat(obj)}, when rendered.
    """
    return LazyCall(pprint.pformat, obj)


def install() -> None:
    """
    Make Autobahn's debug formatting lazy.
    """
    protocol: Any = autobahn.websocket.protocol
    twisted: Any = autobahn.twisted.websocket
    protocol.pformat = LazyFormat
    for module in (protocol, twisted):
        module.hltype = lazy(util.hltype)
        module.hlval = lazy(util.hlval)


#: Autobahn's private protocol methods that wsrelay calls or overrides,
#: all of them here (C{WebSocketProtocol} or its Twisted adapter has each):
#: tests/test_autobahn.py fails, naming it, when an upgrade of Autobahn
#: renames one.
PRIVATE_METHODS = (
    "_dataReceived",
    "_fail_connection",
    "_protocol_violation",
    "_invalid_payload",
    "_onOpen",
)

#: Autobahn's private attributes of a connected protocol that wsrelay
#: reads (checked the same way).
PRIVATE_ATTRIBUTES = ("_perMessageCompress", "_transport_details")


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

    def _onOpen(self) -> None:
        """
        Autobahn opened the connection: keep the compressor it negotiated,
        then go on as Autobahn does (to C{onOpen}).
        """
        self.compressor = self._perMessageCompress  # type: ignore[attr-defined]
        super()._onOpen()  # type: ignore[misc]

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


def setPeer(protocol: Any, peer: str) -> None:
    """
    Give an Autobahn protocol another C{peer} (the address a PROXY protocol
    header names), in its transport details too.
    """
    protocol.peer = peer
    details = getattr(protocol, "_transport_details", None)
    if details is not None:
        details.peer = peer
