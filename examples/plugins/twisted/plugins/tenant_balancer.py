"""
An example wsrelay balancer plugin: C{balancer = tenant} sends each client
to the backends of its tenant, named by a request header.

Twisted finds this module because it sits in a C{twisted/plugins/} folder
(without an C{__init__.py}) that is either on C{sys.path} (for example
through C{PYTHONPATH}) or named, or held, by C{plugin_path} in C{[relay]}.
It reads three keys of the route that selects it::

    [route:api]
    path = /api
    backends =
        ws://10.0.0.1:9000/ name=b1
        ws://10.0.0.2:9000/ name=b2
        ws://10.0.0.3:9000/ name=b3
    balancer = tenant
    ; The request header naming the tenant (default X-Tenant).
    tenant_header = X-Tenant
    ; Each tenant and the names of its backends, one tenant per line.
    tenants =
        acme: b1 b2
        globex: b3
    ; Where other tenants (and requests without the header) go; without
    ; this key they are refused with 503.
    default_backends = b3

Among the healthy backends of its tenant, a client goes to the one with the
fewest open connections for its weight, the first listed on a tie.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from twisted.plugin import IPlugin
from zope.interface import implementer

from wsrelay.interfaces import IBackend, IBalancer, IBalancerFactory
from wsrelay.routing import ConnectionInfo

DEFAULT_HEADER = "X-Tenant"

# An HTTP field name (RFC 9110 token).
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")


def parseNames(key: str, text: str, known: Sequence[str]) -> frozenset[str]:
    """
    Parse a list of backend names separated by white space.

    @param key: The option being parsed, for error messages.
    @param known: The names of the route's backends.
    @return: The names.
    @raise ValueError: When the list is empty or names an unknown backend.
    """
    names = text.split()
    if not names:
        raise ValueError(f"{key}: expected backend names, got {text!r}")
    for name in names:
        if name not in known:
            raise ValueError(
                f"{key}: unknown backend {name!r}; the route's backends are "
                + ", ".join(known)
            )
    return frozenset(names)


def parseTenants(text: str, known: Sequence[str]) -> dict[str, frozenset[str]]:
    """
    Parse the C{tenants} option: entries C{TENANT: NAME NAME ...}, one per
    line (or separated by C{;} with no space before it, since C{ ;} starts
    a comment in the configuration file).

    @param known: The names of the route's backends.
    @return: The backend names of each tenant.
    @raise ValueError: When an entry is malformed, names an unknown
        backend or repeats a tenant.
    """
    tenants: dict[str, frozenset[str]] = {}
    for entry in re.split(r"[\n;]", text):
        if not entry.strip():
            continue
        tenant, colon, names = entry.partition(":")
        tenant = tenant.strip()
        if not colon or not tenant or len(tenant.split()) != 1:
            raise ValueError(
                f"tenants: expected 'TENANT: BACKEND ...', got {entry.strip()!r}"
            )
        if tenant in tenants:
            raise ValueError(f"tenants: tenant {tenant!r} given twice")
        tenants[tenant] = parseNames(f"tenants: {tenant}", names, known)
    if not tenants:
        raise ValueError("tenants: expected at least one 'TENANT: BACKEND ...'")
    return tenants


@implementer(IBalancer)
class TenantBalancer:
    """
    Picks among the backends of the tenant named by a request header.

    @ivar header: The header naming the tenant, in lower case.
    @ivar tenants: The backend names of each tenant.
    @ivar default: The backend names of any other tenant, or L{None} to
        refuse it.
    """

    def __init__(
        self,
        header: str,
        tenants: Mapping[str, frozenset[str]],
        default: frozenset[str] | None,
    ) -> None:
        self.header = header.lower()
        self.tenants = tenants
        self.default = default

    def tenantOf(self, connection: ConnectionInfo) -> str | None:
        """
        @return: The value of the first tenant header, stripped, or L{None}
            when there is none.
        """
        for name, value in connection.headers:
            if name.lower() == self.header:
                return value.strip()
        return None

    def pick(
        self, candidates: Sequence[IBackend], connection: ConnectionInfo
    ) -> IBackend | None:
        """
        Pick the candidate of the connection's tenant with the fewest
        connections for its weight.

        @return: That backend, or L{None} (the client gets 503) when the
            tenant is unknown and there are no C{default_backends}, or none
            of the tenant's backends is a candidate now.
        """
        tenant = self.tenantOf(connection)
        allowed = self.tenants.get(tenant, self.default) if tenant else self.default
        if allowed is None:
            return None
        best: IBackend | None = None
        for backend in candidates:
            if backend.name not in allowed:
                continue
            if (
                best is None
                or backend.connections * best.weight < best.connections * backend.weight
            ):
                best = backend
        return best

    def connectionOpened(self, backend: IBackend) -> None:
        """
        Nothing to do: the relay counts open connections in
        L{IBackend.connections}.
        """

    def connectionClosed(self, backend: IBackend) -> None:
        """
        Nothing to do, as for L{connectionOpened}.
        """


@implementer(IPlugin, IBalancerFactory)
class TenantBalancerFactory:
    """
    The C{tenant} balancer plugin.
    """

    name = "tenant"
    description = "the backends of the tenant named by a request header"
    options = ("tenant_header", "tenants", "default_backends")

    def build(
        self, backends: Sequence[IBackend], options: Mapping[str, str]
    ) -> TenantBalancer:
        """
        Make the balancer of one route from its C{tenant_header},
        C{tenants} and C{default_backends} keys.

        @raise ValueError: When one of them is invalid; the message starts
            with the key.
        """
        known = [b.name for b in backends]
        header = options.get("tenant_header", DEFAULT_HEADER).strip()
        if not _TOKEN.match(header):
            raise ValueError(f"tenant_header: expected a header name, got {header!r}")
        if "tenants" not in options:
            raise ValueError("tenants: required by the tenant balancer")
        tenants = parseTenants(options["tenants"], known)
        default = None
        if "default_backends" in options:
            default = parseNames("default_backends", options["default_backends"], known)
        return TenantBalancer(header, tenants, default)


tenant = TenantBalancerFactory()
