"""
The header field lines of HTTP heads, each read once: a relay's clients
send the same lines again and again (C{Host}, C{Upgrade}, C{Connection},
their C{User-Agent}...), so L{readField} remembers the fields it read, by
line, in bounded memos (L{keep}) that
L{wsrelay.ws.handshake.parseHead} looks lines up in first.
"""

from __future__ import annotations

import re
from typing import TypeVar

__all__ = ["CREDENTIALS", "KEPT_LENGTH", "KEPT_LINES", "keep", "readField"]

_T = TypeVar("_T")
_K = TypeVar("_K", str, bytes)

#: A header field name (RFC 9110 5.1: a token).
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")

#: Characters no start line or field value may hold: controls but tab.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

#: How many field lines L{readField} remembers (it forgets them all when
#: it has as many), and how long each may be.
KEPT_LINES = 1024
KEPT_LENGTH = 256

#: The field lines L{readField} read before, by line: each one's field,
#: its lower-case name and its value.  A relay's clients send the same
#: lines again and again (C{Host}, C{Upgrade}, C{Connection}, their
#: C{User-Agent}...), each read once.
_LINES: dict[str, tuple[tuple[str, str], str, str]] = {}

#: The field names L{readField} read before, each a token, by name as
#: sent: their lower-case forms.  At most L{KEPT_LINES}, as for the lines.
_NAMES: dict[str, str] = {}

#: The fields of credentials, which no request should leave behind in a
#: memo of what clients send.
CREDENTIALS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
    }
)

#: The fields whose lines are not kept: the key, new in every request,
#: and the credentials.
_NOT_KEPT = CREDENTIALS | {"sec-websocket-key"}


def keep(
    kept: dict[_K, _T],
    key: _K,
    value: _T,
    most: int = KEPT_LINES,
    length: int = KEPT_LENGTH,
) -> None:
    """
    Remember C{value} by C{key} in C{kept}, a memo of what clients send
    again and again: only a key shorter than C{length}, and at most
    C{most} of them (all forgotten at once when there are as many), so
    that no client can make it grow.
    """
    if len(key) < length:
        if len(kept) >= most:
            kept.clear()
        kept[key] = value


def readField(line: str) -> tuple[tuple[str, str], str, str] | None:
    """
    Read one header field line, as L{wsrelay.ws.handshake.readLines} does
    when it takes it, and remember it (L{_LINES}) when it is short and not
    of a field in L{_NOT_KEPT} (the key, new in every request, and
    credentials).

    @param line: The line, without CRLF.
    @return: The field (its name as sent and its value without the blanks
        around it), its lower-case name and its value; or L{None} when the
        line is not a well-formed field (for
        L{wsrelay.ws.handshake.readLines} to say why).
    """
    name, sep, value = line.partition(":")
    if not sep:
        return None
    lname = _NAMES.get(name)
    if lname is None:
        if _TOKEN.fullmatch(name) is None:
            return None
        lname = name.lower()
        keep(_NAMES, name, lname)
    # (isprintable: no control at all, most values; a tab may be there.)
    if not value.isprintable() and _CONTROL.search(value):
        return None
    value = value.strip(" \t")
    entry = ((name, value), lname, value)
    if lname not in _NOT_KEPT:
        keep(_LINES, line, entry)
    return entry
