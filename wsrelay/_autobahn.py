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


class LegShims:
    """
    Autobahn's private protocol attributes that a relay leg uses, under
    public names.  A mixin placed before Autobahn's protocol class.
    """

    #: Autobahn's parser: takes bytes from the transport, runs the opening
    #: handshake and then parses frames (C{onMessageFrameEnd}, ...).  Its
    #: Twisted C{dataReceived} only formats a debug line and calls it.
    parse: ClassVar[Callable[[Any, bytes], None]] = WebSocketProtocol._dataReceived
