"""
An example balancer: C{balancer = tenant} sends a client to the least loaded
backend of its tenant (named by the C{tenant_header} header) in C{tenants};
other tenants go to C{default_backends}, or get 503. See docs/plugins.md.
"""

from collections.abc import Mapping, Sequence

from zope.interface import implementer

from wsrelay.dropins import BalancerPlugin
from wsrelay.interfaces import ConnectionInfo, IBackend, IBalancer


def names(key: str, text: str, known: list[str]) -> frozenset[str]:
    """The backend names listed in C{text}, each one of C{known}."""
    unknown = [f"unknown backend {n!r}" for n in text.split() if n not in known]
    if unknown or not text.split():
        raise ValueError(f"{key}: {(unknown or ['expected backend names'])[0]}")
    return frozenset(text.split())


@implementer(IBalancer)
class TenantBalancer:
    """Built for one route from its backends and options."""

    def __init__(self, backends: Sequence[IBackend], options: Mapping[str, str]):
        known = [b.name for b in backends]
        self.header = options.get("tenant_header", "X-Tenant").strip().lower()
        if not self.header.replace("-", "").isalnum():
            raise ValueError(f"tenant_header: expected a header name: {self.header!r}")
        self.tenants: dict[str, frozenset[str]] = {}
        text = options.get("tenants", "").replace(";", "\n")
        for line in filter(str.strip, text.splitlines()):
            tenant, colon, listed = (part.strip() for part in line.partition(":"))
            if not colon or len(tenant.split()) != 1:
                raise ValueError(f"tenants: expected 'TENANT: BACKEND ...': {line!r}")
            if tenant in self.tenants:
                raise ValueError(f"tenants: tenant {tenant!r} given twice")
            self.tenants[tenant] = names(f"tenants: {tenant}", listed, known)
        if not self.tenants:
            why = "expected at least one" if "tenants" in options else "required"
            raise ValueError(f"tenants: {why} 'TENANT: BACKEND ...' line")
        self.default = None
        if "default_backends" in options:
            self.default = names("default_backends", options["default_backends"], known)

    def pick(
        self, candidates: Sequence[IBackend], connection: ConnectionInfo
    ) -> IBackend | None:
        """The tenant's candidate with the fewest connections for its weight."""
        said = [v.strip() for n, v in connection.headers if n.lower() == self.header]
        allowed = self.tenants.get(said[0], self.default) if said else self.default
        mine = [b for b in candidates if b.name in (allowed or ())]
        return min(mine, key=lambda b: b.connections / b.weight, default=None)


options = ("tenant_header", "tenants", "default_backends")
tenant = BalancerPlugin("tenant", TenantBalancer, "tenant by header", options)
