"""
The admin dashboard as a browser shows it: Chromium renders the page
(L{dumpDOM}) and L{Dashboard} reads the rendered DOM.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser

#: Where Chromium is, if it is installed.
CHROMIUM = shutil.which("chromium")


class Dashboard(HTMLParser):
    """
    Reads a rendered dashboard: the text of the elements with an id, and
    of each backend and channel row's cells by their class.

    @ivar ids: Text by element id.
    @ivar attributes: Attributes by element id.
    @ivar rows: Cell texts by class, for each row keyed by its kind
        (C{backend}, C{channel}, C{worker}), route (C{""} for a worker)
        and name.
    """

    def __init__(self, html: str) -> None:
        super().__init__()
        self.ids: dict[str, str] = {}
        self.attributes: dict[str, dict[str, str | None]] = {}
        self.rows: dict[tuple[str, str, str], dict[str, str]] = {}
        self._open: list[tuple[str, str | None]] = []
        self._row: dict[str, str] | None = None
        self._cell: str | None = None
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        """
        Note elements with an id, and rows and their cells.
        """
        a = dict(attrs)
        ident = a.get("id")
        if ident is not None:
            self.ids[ident] = ""
            self.attributes[ident] = a
            self._open.append((tag, ident))
        if tag == "tr":
            for kind in ("backend", "channel", "worker"):
                name = a.get("data-" + kind)
                if name is not None:
                    key = (kind, a.get("data-route") or "", name)
                    self._row = self.rows.setdefault(key, {})
        elif tag == "td" and self._row is not None:
            self._cell = a.get("class") or ""
            self._row[self._cell] = ""

    def handle_endtag(self, tag: str) -> None:
        """
        Close what is open.
        """
        if self._open and self._open[-1][0] == tag:
            self._open.pop()
        if tag == "tr":
            self._row = None
        elif tag == "td":
            self._cell = None

    def handle_data(self, data: str) -> None:
        """
        Add text to the open element with an id and the open cell.
        """
        if self._open:
            ident = self._open[-1][1]
            if ident is not None:
                self.ids[ident] += data
        if self._row is not None and self._cell is not None:
            self._row[self._cell] += data


def dumpDOM(url: str) -> str:
    """
    Load C{url} in headless Chromium with a fresh profile, let its scripts
    run for five seconds of virtual time, and return the DOM it rendered
    (blocking).
    """
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        done = subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-quic",
                "--no-first-run",
                "--no-proxy-server",
                f"--user-data-dir={profile}",
                "--virtual-time-budget=5000",
                "--dump-dom",
                url,
            ],
            capture_output=True,
            timeout=60,
            env={**os.environ, "HOME": profile},
        )
    if done.returncode != 0:
        raise AssertionError(
            f"chromium exited with {done.returncode}: {done.stderr.decode()[-2000:]}"
        )
    return done.stdout.decode("utf-8")
