"""
What Autobahn makes for every connection, made only when used
(L{wsrelay.ws._autobahn.install} puts these in its place): the text of its
debug lines (L{LazyCall}, L{lazy}, L{LazyFormat}), which it formats whether
debug logging is on or not, and a leg's incremental UTF-8 validator
(L{LazyUtf8Validator}, L{LazyValidator}), which a passthrough leg never
uses.
"""

from __future__ import annotations

import pprint
from collections.abc import Callable
from typing import Any

import autobahn.websocket.protocol
from autobahn.websocket.utf8validator import Utf8Validator

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
