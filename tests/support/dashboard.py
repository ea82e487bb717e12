"""
The admin dashboard as a browser shows it: Chromium renders the page
(L{dumpDOM}) and L{Dashboard} reads the rendered DOM; L{Browser} drives a
headless Chromium over the DevTools protocol (run scripts in the page,
take screenshots).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from html.parser import HTMLParser
from typing import Any

import websockets.sync.client
from websockets.sync.client import ClientConnection

from tests.support.waiting import TIMEOUT, pollUntil

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


#: Chromium's options for a test: headless, nothing asked of the network
#: but what the page asks.
_OPTIONS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
    "--no-proxy-server",
)


class Browser:
    """
    A headless Chromium showing one page, driven over the DevTools
    protocol; every method blocks (call them through C{inThread}).
    """

    def __init__(self, url: str, timeout: float = 60) -> None:
        """
        Start Chromium on C{url} with a fresh profile, and connect to the
        page.

        @param timeout: Seconds that starting, and each later call, may
            take.
        """
        assert CHROMIUM is not None
        self._timeout = timeout
        self._profile = tempfile.mkdtemp()
        self._process = subprocess.Popen(
            [
                CHROMIUM,
                *_OPTIONS,
                f"--user-data-dir={self._profile}",
                "--remote-debugging-port=0",
                "--window-size=1280,1000",
                url,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "HOME": self._profile},
        )
        self._ids = 0
        try:
            self._socket = self._connect()
        except BaseException:
            self.close()
            raise

    def _connect(self) -> ClientConnection:
        """
        @return: A connection to the page's DevTools endpoint, once
            Chromium wrote its port and opened the page (polled, within the
            timeout).
        """
        portFile = os.path.join(self._profile, "DevToolsActivePort")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        found: list[str] = []

        def pageOpen() -> bool:
            if self._process.poll() is not None:
                raise AssertionError(f"chromium exited with {self._process.returncode}")
            try:
                with open(portFile) as f:
                    port = int(f.readline())
                with opener.open(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                    found.extend(
                        t["webSocketDebuggerUrl"]
                        for t in json.load(r)
                        if t["type"] == "page"
                    )
            except (OSError, ValueError):
                return False
            return bool(found)

        pollUntil(pageOpen, "chromium's DevTools page", self._timeout)
        return websockets.sync.client.connect(
            found[0], max_size=None, open_timeout=self._timeout, legacy=True
        )

    def call(self, method: str, **params: Any) -> Any:
        """
        Call a DevTools method and wait for its result (the events sent
        meanwhile are skipped).

        @return: The result.
        """
        self._ids += 1
        ident = self._ids
        self._socket.send(json.dumps({"id": ident, "method": method, "params": params}))
        deadline = time.monotonic() + self._timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no answer to {method}")
            message = json.loads(self._socket.recv(timeout=left))
            if message.get("id") != ident:
                continue
            if "error" in message:
                raise AssertionError(f"{method}: {message['error']}")
            return message["result"]

    def evaluate(self, expression: str) -> Any:
        """
        @return: The value of a script run in the page (awaited when it is
            a promise), as JSON values.
        """
        result = self.call(
            "Runtime.evaluate",
            expression=expression,
            returnByValue=True,
            awaitPromise=True,
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def waitFor(self, expression: str, timeout: float = TIMEOUT) -> Any:
        """
        Poll the page until a script's value is true, within C{timeout}
        seconds (L{pollUntil}).

        @return: That value.
        """
        values: list[Any] = []

        def true() -> bool:
            values.append(self.evaluate(expression))
            return bool(values[-1])

        pollUntil(true, expression, timeout)
        return values[-1]

    def screenshot(self, path: str) -> None:
        """
        Write a PNG of the whole page to C{path}.
        """
        data = self.call(
            "Page.captureScreenshot", format="png", captureBeyondViewport=True
        )
        with open(path, "wb") as f:
            f.write(base64.b64decode(data["data"]))

    def close(self) -> None:
        """
        Stop Chromium and remove its profile.
        """
        socket = getattr(self, "_socket", None)
        if socket is not None:
            socket.close()
        self._process.kill()
        self._process.wait()
        shutil.rmtree(self._profile, ignore_errors=True)


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
                *_OPTIONS,
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
