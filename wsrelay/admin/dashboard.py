# -*- test-case-name: tests.test_admin -*-
"""
C{GET /}: the dashboard, one page with no external assets that refreshes
itself from C{/history} (its charts, inline SVG) and C{/status} (its
tables), and sends the backends' actions with the token it asks for.  The
page is the package-data file C{wsrelay/admin/dashboard.html}, served by
L{twisted.web.static.File}.

Stable hooks of the page: C{#version}, C{#uptime}, C{#clients},
C{#updated} (with C{data-refreshes}), C{#error}, C{#action-result}; one
C{section.route[data-route]} per route, holding
C{div.chart[data-chart]} charts (with C{data-last}),
C{tr.backend[data-backend]} and C{tr.channel[data-channel]} rows whose
cells have the class of their column, and
C{button[data-action][data-route][data-backend]} buttons (docs/admin.md
lists them all).
"""

from __future__ import annotations

from twisted.python.filepath import FilePath
from twisted.web.static import File

#: The dashboard's file, installed with the package.
DASHBOARD_PATH = FilePath(__file__).sibling("dashboard.html")


class DashboardFile(File):
    """
    The dashboard's file, labelled as UTF-8 HTML whatever the system's MIME
    table says.
    """

    contentTypes = {".html": "text/html; charset=utf-8"}
    contentEncodings: dict[str, str] = {}


def dashboardFile() -> DashboardFile:
    """
    @return: A resource serving the dashboard's file.
    """
    return DashboardFile(DASHBOARD_PATH.path)
