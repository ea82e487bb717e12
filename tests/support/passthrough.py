"""
A relay with one passthrough route and one client through it, open.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import TestCase

from tests.support import TIMEOUT, client, inThread, startBackend, startRelay
from wsrelay.proxy.session import ProxySession


async def openedPassthrough(testCase: TestCase) -> tuple[Any, ProxySession, Any]:
    """
    Start an echo backend and a relay whose route C{/} is on the
    passthrough data path, and open a client whose first message came
    back.

    @return: The relay, the client's session and the client.
    """
    b = startBackend(testCase)
    relay, port = await startRelay(
        testCase,
        f"[relay]\n[route:r]\npath = /\ndata_path = passthrough\nbackends = {b.url}\n",
    )
    c = await inThread(client, port, legacy=True)
    await inThread(c.send, "hi")
    testCase.assertEqual(await inThread(c.recv, TIMEOUT), "hi")
    [session] = relay.sessions
    assert isinstance(session, ProxySession)
    return relay, session, c
