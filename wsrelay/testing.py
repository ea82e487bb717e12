# -*- test-case-name: tests.test_testing -*-
"""
Helpers for testing wsrelay plugins: L{FakeBackend}, a backend view with
no relay behind it, and L{verifyPlugin}, which checks a plugin object the
way the relay will use it::

    from wsrelay.testing import FakeBackend, verifyPlugin

    backends = [FakeBackend("b1"), FakeBackend("b2")]
    balancer = verifyPlugin(tenant, {"tenants": "acme: b1"}, backends=backends)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from zope.interface import Invalid, implementer
from zope.interface.verify import verifyObject

from wsrelay.config import ROUTE_KEYS
from wsrelay.interfaces import (
    ConnectionInfo,
    IBackend,
    IBalancer,
    IBalancerFactory,
    IHealthChecker,
    IHealthCheckerFactory,
    ILoadListener,
)


@implementer(IBackend)
@dataclass
class FakeBackend:
    """
    What a plugin sees of a backend (L{IBackend}), with no relay behind it:
    set C{connections} and C{weight} as the relay would.

    @ivar host: The host of C{url} (IPv6 without brackets).
    @ivar port: The port of C{url}, or its scheme's default.
    @ivar endpoint: L{None} unless given: wsrelay's own checkers then
        connect to C{host} and C{port}.
    """

    name: str
    url: str = "ws://127.0.0.1:9/"
    weight: float = 1
    connections: int = 0
    endpoint: Any = None
    host: str = field(init=False)
    port: int = field(init=False)

    def __post_init__(self) -> None:
        """
        Read C{host} and C{port} from C{url}.
        """
        parts = urlsplit(self.url)
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if parts.scheme == "wss" else 80)


BUILTIN_ROUTE_KEYS = frozenset(spec.key for spec in ROUTE_KEYS)
"""
The keys of a route section that no plugin option may take.
"""


def _check(condition: bool, problem: str) -> None:
    """
    @raise Invalid: With C{problem}, unless C{condition}.
    """
    if not condition:
        raise Invalid(problem)


def verifyPlugin(
    plugin: object,
    options: Mapping[str, str] | None = None,
    backends: Sequence[IBackend] | None = None,
    reactor: Any = None,
) -> Any:
    """
    Check that C{plugin} is a wsrelay plugin the relay can use, and build
    it once for a route as the relay would.

    Checked: it provides L{IBalancerFactory} or L{IHealthCheckerFactory}
    (so also L{twisted.plugin.IPlugin}: Twisted finds it) as
    L{verifyObject} sees it; its C{name} is a word, its C{description} one
    line, its C{options} distinct lower-case keys none of which is a
    built-in route key; what it builds provides L{IBalancer} (and
    L{ILoadListener}, when it says so) or L{IHealthChecker}; and a
    balancer picks one of the candidates, or L{None}, for a connection.

    @param options: The route's values of its options (none by default).
    @param backends: The route's backends, for a balancer; two
        L{FakeBackend}s by default.
    @param reactor: The reactor a health checker is built with; a
        L{twisted.internet.testing.MemoryReactorClock} by default.
    @return: The balancer or health checker built.
    @raise Invalid: Naming what is wrong (L{verifyObject}'s own errors
        are L{Invalid} too).
    @raise ValueError: When the plugin rejects C{options}.
    """
    options = {} if options is None else options
    kinds = [
        i for i in (IBalancerFactory, IHealthCheckerFactory) if i.providedBy(plugin)
    ]
    how = "no" if not kinds else "more than one"
    _check(len(kinds) == 1, f"{plugin!r} provides {how} wsrelay factory interface")
    (kind,) = kinds
    verifyObject(kind, plugin)
    name, keys = getattr(plugin, "name", None), getattr(plugin, "options", None)
    _check(isinstance(name, str) and name.split() == [name], f"bad name {name!r}")
    description = getattr(plugin, "description", None)
    _check(isinstance(description, str), f"{name}: description is not a str")
    _check(len(str(description).splitlines()) <= 1, f"{name}: description not one line")
    _check(not isinstance(keys, str), f"{name}: options is a str, not a sequence")
    keys = tuple(keys or ())
    for key in keys:
        _check(isinstance(key, str) and key == key.lower(), f"{name}: option {key!r}")
        _check(key not in BUILTIN_ROUTE_KEYS, f"{name}: option {key!r} is built-in")
    _check(len(set(keys)) == len(keys), f"{name}: an option is declared twice")
    _check(set(options) <= set(keys), f"{name}: options not declared: {options}")
    factory: Any = plugin
    if kind is IHealthCheckerFactory:
        if reactor is None:
            from twisted.internet.testing import MemoryReactorClock

            reactor = MemoryReactorClock()
        checker = factory.build(options, reactor)
        verifyObject(IHealthChecker, checker)
        return checker
    backends = [FakeBackend("b1"), FakeBackend("b2")] if backends is None else backends
    balancer = factory.build(backends, options)
    verifyObject(IBalancer, balancer)
    if ILoadListener.providedBy(balancer):
        verifyObject(ILoadListener, balancer)
    picked = balancer.pick(list(backends), ConnectionInfo("192.0.2.1", "/", "", ()))
    _check(
        picked is None or any(picked is b for b in backends),
        f"{name}: pick returned {picked!r}, not a candidate or None",
    )
    return balancer
