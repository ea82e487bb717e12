# -*- test-case-name: tests.test_admin -*-
"""
The admin listener: the relay's state as JSON, Prometheus metrics, a
dashboard, and the operator's actions on backends and on the
configuration.

Everything here runs when a page is asked for, never on the per-message
path: the relay keeps plain integer counters, and this package reads them.
The reads are open to whoever can reach the admin listener; the actions
(C{POST}) need the bearer token of C{admin_token_file}.  Every request
must name the listener in C{Host} by an IP address, C{localhost} or a name
of C{admin_hosts}: a web page whose own name was made to resolve to the
listener's address (DNS rebinding) sends its own name, and is refused.

Everything here reads the relay, and asks it to act, through
L{wsrelay.admin.relay.RelayView}.  The modules: L{wsrelay.admin.rows}
(C{/status}),
L{wsrelay.admin.history} (C{/history}, sampled once a second),
L{wsrelay.admin.metrics} (C{/metrics}), L{wsrelay.admin.dashboard} (C{/},
the package-data file C{dashboard.html}), L{wsrelay.admin.resources} (the
tree of pages, the method and token checks) and L{wsrelay.admin.site}
(the C{Host} check, the headers of every answer, the log).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from wsrelay.admin import metrics as _metrics
from wsrelay.admin import rows as _rows
from wsrelay.admin.dashboard import DASHBOARD_PATH
from wsrelay.admin.metrics import STATES, RelayCollector, mergeMetrics
from wsrelay.admin.relay import RelayView, WorkersView
from wsrelay.admin.resources import ACTIONS
from wsrelay.admin.rows import backendStatus, channelStatus, workerRows
from wsrelay.admin.site import AdminSite, adminSite, hostAllowed

if TYPE_CHECKING:
    from wsrelay.operations import RelayStatus

#: The dashboard page, as served.
DASHBOARD = DASHBOARD_PATH.getContent()


def status(relay: RelayStatus) -> Any:
    """
    @return: What C{GET /status} answers for C{relay} by itself (a
        worker's answer to worker 0), as JSON values.
    """
    return _rows.status(RelayView(relay))


def metricsText(relay: RelayStatus) -> str:
    """
    @return: C{relay}'s metrics page by itself (a worker's answer to
        worker 0), in Prometheus' text format.
    """
    return _metrics.metricsText(RelayView(relay))


__all__ = [
    "ACTIONS",
    "DASHBOARD",
    "DASHBOARD_PATH",
    "STATES",
    "AdminSite",
    "RelayCollector",
    "RelayView",
    "WorkersView",
    "adminSite",
    "backendStatus",
    "channelStatus",
    "hostAllowed",
    "mergeMetrics",
    "metricsText",
    "status",
    "workerRows",
]
