"""
What Autobahn makes for every connection, made only when used
(L{wsrelay.ws._autobahn.install} puts these in its place): the text of its
debug lines (L{LazyCall}, L{lazy}, L{LazyFormat}), which it formats whether
debug logging is on or not, a leg's incremental UTF-8 validator
(L{LazyUtf8Validator}, L{LazyValidator}), which a passthrough leg never
uses, and a leg's L{Deferred}s of its opening and closing (L{LazyOpen},
L{LazyClosed}), which nothing in the relay waits on for most legs.
"""

from __future__ import annotations

import pprint
from collections.abc import Callable
from typing import Any

import autobahn.websocket.protocol
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.utf8validator import Utf8Validator
from twisted.internet.defer import Deferred, succeed

#: Autobahn's protocol module (its C{Utf8Validator}, as installed).
_PROTOCOL: Any = autobahn.websocket.protocol


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


class LazyUtf8Validator:
    """
    Autobahn's C{Utf8Validator}, made when it is first reset (Autobahn
    resets it as each text message begins) or used: until then, an empty
    object, which costs a connection a fraction of the real one's memory
    and construction.  The first call replaces both methods on the
    instance by the real validator's, so that later calls reach it
    directly.
    """

    def reset(self) -> None:
        """
        Make the real validator and reset it.
        """
        self._realize().reset()

    def validate(self, data: bytes) -> Any:
        """
        Make the real validator and validate C{data} with it.
        """
        return self._realize().validate(data)

    def _realize(self) -> Any:
        real = Utf8Validator()
        self.reset = real.reset  # type: ignore[method-assign]
        self.validate = real.validate  # type: ignore[method-assign]
        return real


class LazyValidator:
    """
    A leg's C{utf8validator}, made (as Autobahn makes it: a
    L{LazyUtf8Validator} once L{install}ed) when first read: a
    passthrough leg never reads it.
    """

    def __get__(self, leg: Any, owner: type | None = None) -> Any:
        if leg is None:
            return self
        validator = leg.__dict__["utf8validator"] = _PROTOCOL.Utf8Validator()
        return validator


class Fired(Deferred[Any]):
    """
    A L{Deferred} that has fired with L{None}, that firing again leaves as
    it is, and whose result no callback changes: what an open leg's
    C{is_open} reads as when nothing made one (L{LazyOpen}), which
    Autobahn still resolves as the leg opens, and an open upstream's
    C{opened} once it let its own go.  One is shared by every leg of the
    process (L{FIRED}), so each callback added to it runs on a L{Deferred}
    of its own that has fired with L{None}: a callback that returns
    another value, raises, or waits on another L{Deferred} (one that
    chains two legs' opening) changes no other leg's.
    """

    def __init__(self) -> None:
        super().__init__()
        super().callback(None)

    def callback(self, result: object) -> None:
        """
        Nothing: fired already.
        """

    def addCallbacks(self, *args: Any, **kwargs: Any) -> Deferred[Any]:
        return succeed(None).addCallbacks(*args, **kwargs)

    def addCallback(self, *args: Any, **kwargs: Any) -> Deferred[Any]:
        return succeed(None).addCallback(*args, **kwargs)

    def addErrback(self, *args: Any, **kwargs: Any) -> Deferred[Any]:
        return succeed(None).addErrback(*args, **kwargs)

    def addBoth(self, *args: Any, **kwargs: Any) -> Deferred[Any]:
        return succeed(None).addBoth(*args, **kwargs)


#: A L{Deferred} that has fired (L{Fired}): an open leg's C{is_open}
#: unless something made one before it opened (L{LazyOpen}), or once it
#: let that go (L{wsrelay.ws._autobahn.forgetOpened}); an open upstream's
#: C{opened} once it let its own go.
FIRED: Deferred[Any] = Fired()


class LazyClosed:
    """
    A leg's C{is_closed} (Autobahn's L{Deferred}, resolved with the leg
    when its connection closes), made when first read: by Autobahn as it
    resolves it, or by whoever waits for the close (an authorizer's
    decision, L{wsrelay.auth.gate.withdrawOnClose}).  A client's leg that
    a passthrough pipe carried reads it only if it was made
    (L{wsrelay.ws.legs.RelayLeg.pipeLost}): most legs never make one,
    which spares each connection a L{Deferred} as it is accepted and each
    held connection its 128 bytes.
    """

    def __get__(self, leg: Any, owner: type | None = None) -> Any:
        if leg is None:
            return self
        closed: Deferred[Any] = Deferred()
        leg.__dict__["is_closed"] = closed
        return closed


#: Autobahn's states of an open leg, of one closing, and of one closed
#: (L{LazyOpen}).
_OPEN = WebSocketProtocol.STATE_OPEN
_CLOSING = WebSocketProtocol.STATE_CLOSING
_CLOSED = WebSocketProtocol.STATE_CLOSED


class LazyOpen:
    """
    A leg's C{is_open} (Autobahn's L{Deferred}, resolved as the leg opens),
    made when read before the leg opened, or once it closed without having
    opened (then it never fires, as Autobahn's would not); once the leg
    opened (its C{upgraded} is true), L{FIRED}, which Autobahn's resolving
    leaves as it is.  Nothing in the relay waits on it: most legs never
    make one, which spares each connection a L{Deferred} made and fired
    with nothing waiting (L{wsrelay.ws.accept.PlainAccept.acceptPlain}
    fires it only if it was made).  Making one sets the leg's C{openMade}
    (its class default false): that is how the leg knows it has its own.
    """

    def __get__(self, leg: Any, owner: type | None = None) -> Any:
        if leg is None:
            return self
        # (Not through the leg's __dict__, which Python 3.11 makes when
        # asked for, slowing every later attribute access of the leg.)
        state = getattr(leg, "state", None)
        if state == _OPEN or state == _CLOSING or (state == _CLOSED and leg.upgraded):
            return FIRED
        opened: Deferred[Any] = Deferred()
        leg.is_open = opened
        # (What tells those that resolve or let go of it that it was made,
        # without asking the leg's __dict__.)
        leg.openMade = True
        return opened
