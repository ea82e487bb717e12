# -*- test-case-name: tests.test_balancers -*-
"""
wsrelay's built-in balancers.

Each is made by a L{BalancerFactory} registered as a Twisted plugin in
C{twisted/plugins/wsrelay_balancers.py}, exactly as a third-party one would
be.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.plugin import IPlugin
from zope.interface import implementer

from wsrelay.interfaces import IBackend, IBalancer, IBalancerFactory
from wsrelay.routing import ConnectionInfo


@implementer(IPlugin, IBalancerFactory)
@dataclass(frozen=True)
class BalancerFactory:
    """
    A balancer plugin made from a class whose constructor takes the route's
    backends and options.
    """

    name: str
    description: str
    balancerClass: Callable[[Sequence[Any], Mapping[str, str]], IBalancer]
    options: tuple[str, ...] = ()

    def build(self, backends: Sequence[Any], options: Mapping[str, str]) -> IBalancer:
        """
        Make a balancer for one route.
        """
        return self.balancerClass(backends, options)


class _Counting:
    """
    Base for balancers that need not count connections themselves: the
    relay keeps L{IBackend.connections}.
    """

    def connectionOpened(self, backend: IBackend) -> None:
        """
        Nothing to do.
        """

    def connectionClosed(self, backend: IBackend) -> None:
        """
        Nothing to do.
        """


@implementer(IBalancer)
class RoundRobin(_Counting):
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
        current = self._current
        total = 0
        best = None
        bestScore = 0
        for b in candidates:
            score = current.get(b.name, 0) + b.weight
            current[b.name] = score
            total += b.weight
            if best is None or score > bestScore:
                best, bestScore = b, score
        if best is not None:
            current[best.name] = bestScore - total
        return best


@implementer(IBalancer)
class First(_Counting):
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


roundRobin = BalancerFactory(
    "round_robin", "smooth weighted round robin (nginx's order)", RoundRobin
)
first = BalancerFactory(
    "first", "active/standby: the first healthy backend in listed order", First
)
