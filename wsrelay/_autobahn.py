"""
One adjustment to Autobahn, measured: it formats its protocol options with
C{pprint.pformat} for a debug log line on every new connection, whether
debug logging is on or not; in the storm benchmark that was an eighth of
the relay's CPU per handshake.  The module's C{pformat} is replaced with a
wrapper that formats only when the line is actually rendered.
"""

from __future__ import annotations

import pprint
from typing import Any

import autobahn.websocket.protocol


class LazyFormat(str):
    """
    Formats C{obj} with C{pprint.pformat} only when turned into a string.

    A C{str} itself (an empty one), so that it may stand wherever
    C{pformat}'s result did, C{__str__} methods included.
    """

    obj: Any

    def __new__(cls, obj: Any) -> LazyFormat:
        self = super().__new__(cls, "")
        self.obj = obj
        return self

    def __str__(self) -> str:
        return pprint.pformat(self.obj)

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)

    __repr__ = __str__


def install() -> None:
    """
    Make Autobahn's debug formatting lazy.
    """
    autobahn.websocket.protocol.pformat = LazyFormat  # type: ignore[attr-defined,assignment]
