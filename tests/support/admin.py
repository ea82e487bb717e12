"""
A relay with its admin listener for tests (L{startAdmin}), and reading
what the admin answers: HTTP requests (L{fetch}), metrics (L{samples},
L{labels}).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.message import Message
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.trial.unittest import TestCase
from websockets.sync.client import ClientConnection

from tests.support import TIMEOUT, client, inThread, startRelay
from wsrelay.admin import adminSite
from wsrelay.service import RelayService


async def startAdmin(testCase: TestCase, routes: str, token: bool = True) -> Admin:
    """
    Start a relay with C{routes} and serve its admin site on a loopback
    port, all stopped at the end of C{testCase}.

    @param token: Whether the relay has an C{admin_token_file} (holding
        L{TOKEN}).
    """
    relay = "[relay]\n"
    if token:
        directory = tempfile.mkdtemp()
        testCase.addCleanup(shutil.rmtree, directory, True)
        tokenFile = os.path.join(directory, "token")
        with open(tokenFile, "w") as f:
            f.write(f"  {TOKEN}  \nthe first line only\n")
        relay += f"admin_token_file = {tokenFile}\n"
    service, port = await startRelay(testCase, relay + routes)
    endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    listening = await endpoint.listen(adminSite(service))
    testCase.addCleanup(listening.stopListening)
    return Admin(service, port, listening.getHost().port, service.config.path)


async def connect(testCase: TestCase, port: int, path: str) -> ClientConnection:
    """
    Connect a C{websockets} client to the relay, closed at the end of
    C{testCase}.
    """
    c: ClientConnection = await inThread(client, port, path, legacy=True)
    testCase.addCleanup(inThread, c.close)
    return c


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """
    Parse a Prometheus text exposition.

    @return: Every sample's value by its name and labels.
    """
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def labels(**kw: str) -> frozenset[tuple[str, str]]:
    """
    @return: Labels as L{samples} keys them.
    """
    return frozenset(kw.items())


TOKEN = "s3cret-t0ken"


_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class Answer:
    """
    An HTTP response, read whole.
    """

    status: int
    headers: Message
    body: bytes
    reason: str = ""

    def json(self) -> Any:
        """
        @return: The body, parsed as JSON.
        """
        return json.loads(self.body)


def fetch(
    port: int,
    path: str,
    method: str = "GET",
    token: str | None = None,
    host: str | None = None,
) -> Answer:
    """
    Make one request to the admin listener on C{port} (blocking; run it
    with L{inThread}).

    @param token: Sent as C{Authorization: Bearer TOKEN} when given.
    @param host: Sent as C{Host} when given (else C{127.0.0.1:PORT}).
    """
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    if host is not None:
        headers["Host"] = host
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        method=method,
        headers=headers,
        data=b"" if method == "POST" else None,
    )
    try:
        with _opener.open(request, timeout=TIMEOUT) as r:
            return Answer(r.status, r.headers, r.read(), r.reason)
    except urllib.error.HTTPError as e:
        with e:
            return Answer(e.code, e.headers, e.read(), e.reason)


@dataclass
class Admin:
    """
    A running relay and its admin listener.

    @ivar relay: The relay.
    @ivar port: The relay's client port.
    @ivar admin: The admin listener's port.
    @ivar path: The relay's configuration file.
    """

    relay: RelayService
    port: int
    admin: int
    path: str

    def get(self, path: str) -> Any:
        """
        @return: A L{Deferred} that fires with the L{Answer} to C{GET path}.
        """
        return inThread(fetch, self.admin, path)

    async def status(self) -> Any:
        """
        @return: C{GET /status}, parsed.
        """
        answer = await self.get("/status")
        assert answer.status == 200, answer
        return answer.json()

    def post(self, path: str, token: str | None = TOKEN) -> Any:
        """
        @return: A L{Deferred} that fires with the L{Answer} to C{POST path}.
        """
        return inThread(fetch, self.admin, path, "POST", token)
