"""
Routes for tests that need a L{Route} without a relay.
"""

from __future__ import annotations

from twisted.internet.task import Clock

from wsrelay.balancers import RoundRobin
from wsrelay.config import BackendConfig, ProxyRouteConfig
from wsrelay.health.monitor import HealthMonitor
from wsrelay.routing import Route


def proxyRoute(name: str, path: str, host: str | None = None) -> Route:
    """
    @return: A proxy route C{name} for C{path} on C{host} (L{None}: any
        host), with one backend, round robin and a health monitor on a
        clock of its own.
    """
    config = ProxyRouteConfig(
        name=name,
        path=path,
        host=host,
        backends=(BackendConfig.fromURL("ws://127.0.0.1:1/"),),
    )
    monitor = HealthMonitor(name, (), None, Clock(), 2, 2, 2, 3)
    return Route(config, (), RoundRobin((), {}), monitor)
