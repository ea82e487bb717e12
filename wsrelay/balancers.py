# -*- test-case-name: tests.test_balancers -*-
"""
wsrelay's built-in balancers.

Each class is registered lazily, by name, as a Twisted plugin in
C{twisted/plugins/wsrelay_balancers.py}, exactly as a third-party one would
be: this module is imported when a route first chooses one of them.  Each
constructor takes the route's backends and options.

None of them counts connections (none provides the optional
L{ILoadListener}): the relay keeps L{IBackend.connections} up to date, and
the balancers that follow the load read it at each pick.
"""

from __future__ import annotations

import hashlib
import struct
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from random import Random
from typing import Any
from urllib.parse import parse_qsl

from zope.interface import implementer

from wsrelay.interfaces import ConnectionInfo, IBackend, IBalancer


def _smoothPick(current: dict[str, int], candidates: Sequence[IBackend]) -> IBackend:
    """
    One step of smooth weighted round robin, as nginx does it: add every
    candidate's weight to its current score, take the highest (the first
    listed among equals), and take the total of the weights away from it.

    @param current: The scores by backend name, updated in place.
    @param candidates: A non-empty sequence of backends.
    @return: The chosen candidate.
    """
    total = 0
    best = candidates[0]
    bestScore = 0
    for i, b in enumerate(candidates):
        # (Each backend's weight read once: it is a property.)
        weight = b.weight
        score = current.get(b.name, 0) + weight
        current[b.name] = score
        total += weight
        if i == 0 or score > bestScore:
            best, bestScore = b, score
    current[best.name] = bestScore - total
    return best


def _lessLoaded(a: IBackend, b: IBackend) -> bool:
    """
    @return: Whether C{a} has fewer open connections per unit of weight
        than C{b} (compared without division, so exactly).
    """
    return bool(a.connections * b.weight < b.connections * a.weight)


@implementer(IBalancer)
class RoundRobin:
    """
    Smooth weighted round robin, as nginx does it: each pick adds every
    candidate's weight to its current score, takes the highest, and takes
    the total away from it.  With weights 5, 1, 1 the order is
    a a b a c a a, not a a a a a b c.
    """

    def __init__(self, backends: Sequence[Any], options: Mapping[str, str]) -> None:
        self._current: dict[str, int] = {}

    def pick(
        self, candidates: Sequence[IBackend], connection: ConnectionInfo
    ) -> IBackend | None:
        """
        Pick the candidate with the highest smooth weight.
        """
        if len(candidates) == 1:
            # (A route with one backend up: its score would go up by its
            # weight and back down by the same total.)
            return candidates[0]
        if not candidates:
            return None
        return _smoothPick(self._current, candidates)


@implementer(IBalancer)
class First:
    """
    Active/standby: always the first candidate in the configured order.
    """

    def __init__(self, backends: Sequence[Any], options: Mapping[str, str]) -> None:
        pass

    def pick(
        self, candidates: Sequence[IBackend], connection: ConnectionInfo
    ) -> IBackend | None:
        """
        Pick the first candidate.
        """
        return candidates[0] if candidates else None


@implementer(IBalancer)
class LeastConnections:
    """
    Weighted least connections: the candidate with the fewest open
    connections per unit of weight.  Candidates equally loaded take turns
    by smooth weighted round robin (as nginx's C{least_conn} does), so a
    burst of new connections spreads over them instead of all going to the
    first listed.
    """

    def __init__(
        self, backends: Sequence[IBackend], options: Mapping[str, str]
    ) -> None:
        self._current: dict[str, int] = {}

    def pick(
        self, candidates: Sequence[IBackend], connection: ConnectionInfo
    ) -> IBackend | None:
        """
        Pick the least loaded candidate, taking turns among equals.
        """
        tied: list[IBackend] = []
        for b in candidates:
            if not tied or _lessLoaded(b, tied[0]):
                tied = [b]
            elif not _lessLoaded(tied[0], b):
                tied.append(b)
        if not tied:
            return None
        if len(tied) == 1:
            return tied[0]
        return _smoothPick(self._current, tied)


def _weightedIndex(
    random: Random, weights: Sequence[float], total: float, skip: int = -1
) -> int:
    """
    Draw an index with a probability proportional to its weight.

    @param weights: Positive numbers (whole, except during slow start).
    @param total: The sum of C{weights}, without the skipped one.
    @param skip: An index never drawn, or C{-1}.
    @return: An index of C{weights}.
    """
    r = random.randrange(total) if isinstance(total, int) else random.random() * total
    last = -1
    for i, w in enumerate(weights):
        if i == skip:
            continue
        last = i
        if r < w:
            break
        r -= w
    return last


@implementer(IBalancer)
class RandomTwo:
    """
    The power of two random choices: draw two different candidates at
    random (each with a probability proportional to its weight) and take
    the one with fewer open connections per unit of weight.  It follows the
    load almost as well as L{LeastConnections} without sending a burst of
    new connections all to the same backend.

    @ivar random: The source of randomness; tests may replace or seed it.
    """

    def __init__(
        self,
        backends: Sequence[IBackend],
        options: Mapping[str, str],
        random: Random | None = None,
    ) -> None:
        """
        @param random: The source of randomness; a new L{Random} by default.
        """
        self.random = Random() if random is None else random

    def pick(
        self, candidates: Sequence[IBackend], connection: ConnectionInfo
    ) -> IBackend | None:
        """
        Pick the less loaded of two candidates drawn at random.
        """
        if len(candidates) < 2:
            return candidates[0] if candidates else None
        weights = [b.weight for b in candidates]
        total = sum(weights)
        i = _weightedIndex(self.random, weights, total)
        j = _weightedIndex(self.random, weights, total - weights[i], i)
        a, b = candidates[i], candidates[j]
        return b if _lessLoaded(b, a) else a


#: Points on the ring per unit of weight of a backend (a multiple of 4).
VIRTUAL_NODES = 160

HASH_ON_FORMS = "ip, path, header:NAME, cookie:NAME or query:NAME"
"""
The accepted values of C{hash_on}, for messages.
"""

_NAMED = ("header", "cookie", "query")


def parseHashOn(value: str) -> tuple[str, str]:
    """
    Parse a C{hash_on} value.

    @param value: C{ip}, C{path}, C{header:NAME}, C{cookie:NAME} or
        C{query:NAME}; the kind is case-insensitive, and so is a header's
        name (a cookie's or a query parameter's is not).
    @return: The kind (C{"ip"}, C{"path"}, C{"header"}, C{"cookie"} or
        C{"query"}) and the name (lower case for a header; C{""} for
        C{ip} and C{path}).
    @raise ValueError: When C{value} is none of these.
    """
    kind, colon, name = value.strip().partition(":")
    kind = kind.strip().lower()
    name = name.strip()
    if not colon and kind in ("ip", "path"):
        return kind, ""
    if colon and kind in _NAMED and name and not any(c.isspace() for c in name):
        return kind, name.lower() if kind == "header" else name
    raise ValueError(f"expected {HASH_ON_FORMS}, got {value!r}")


def _point(data: bytes) -> int:
    """
    @return: A point on the ring: 64 bits of BLAKE2b, the same in every
        process (unlike L{hash}).
    """
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def _points(label: str) -> tuple[int, int, int, int]:
    """
    @return: Four points on the ring from one hash of C{label}: the four
        64-bit words of its 256-bit BLAKE2b (as ketama takes four from
        one MD5).
    """
    digest = hashlib.blake2b(label.encode(), digest_size=32).digest()
    return _FOUR_WORDS.unpack(digest)


_FOUR_WORDS = struct.Struct(">4Q")


@implementer(IBalancer)
class ConsistentHash:
    """
    A consistent hash ring: the same key (the client's address, a header, a
    cookie, a query parameter or the path, as C{hash_on} says) goes to the
    same backend for as long as that backend is a candidate.

    Every backend of the route has C{VIRTUAL_NODES} points per unit of
    weight on the ring, four from each hash of C{"NAME#0"}, C{"NAME#1"}...
    A key goes to the owner of the first point at or after the key's hash,
    going round, that is among the candidates.  So when a backend is down
    only its own keys go elsewhere (each to the next backend on the ring),
    and they come back when it is up again; adding or removing one of n
    backends moves about 1/n of the keys, all to or from that backend.

    A request without the key (no such header, cookie or query parameter,
    or an empty one) is hashed on the client's address.

    @ivar hashOn: The C{hash_on} value as configured.
    """

    def __init__(
        self, backends: Sequence[IBackend], options: Mapping[str, str]
    ) -> None:
        """
        @param options: C{hash_on}, by default C{ip}.
        @raise ValueError: When C{hash_on} is not acceptable.
        """
        self.hashOn = options.get("hash_on", "ip")
        self._kind, self._name = parseHashOn(self.hashOn)
        # The ring is a sorted list of point * count + index, where index is
        # the position of the point's backend: one sort of plain integers.
        count = max(1, len(backends))
        ring = []
        for index, b in enumerate(backends):
            for i in range(VIRTUAL_NODES // 4 * max(1, round(b.weight))):
                for point in _points(f"{b.name}#{i}"):
                    ring.append(point * count + index)
        ring.sort()
        self._ring = ring
        self._count = count
        self._names = [b.name for b in backends]

    def key(self, connection: ConnectionInfo) -> str:
        """
        @return: What C{connection} is hashed on.
        """
        kind, name = self._kind, self._name
        value: str | None = None
        if kind == "header":
            values = [v for (n, v) in connection.headers if n.lower() == name]
            value = ", ".join(values)
        elif kind == "cookie":
            value = connection.cookies.get(name)
        elif kind == "query":
            for n, v in parse_qsl(connection.query, keep_blank_values=True):
                if n == name:
                    value = v
                    break
        elif kind == "path":
            value = connection.path
        return value or connection.peer

    def pick(
        self, candidates: Sequence[IBackend], connection: ConnectionInfo
    ) -> IBackend | None:
        """
        Pick the first candidate clockwise from the key's point.
        """
        if not candidates:
            return None
        byName = {b.name: b for b in candidates}
        point = _point(self.key(connection).encode("utf-8", "surrogatepass"))
        ring, count, names = self._ring, self._count, self._names
        size = len(ring)
        start = bisect_left(ring, point * count)
        for i in range(start, start + size):
            chosen = byName.get(names[ring[i % size] % count])
            if chosen is not None:
                return chosen
        # A candidate the route did not have when this balancer was built.
        return candidates[point % len(candidates)]
