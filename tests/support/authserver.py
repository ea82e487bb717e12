"""
An HTTP auth server on 127.0.0.1 (L{twisted.web}) for the C{http}
authorizer: it records each request and answers as the test says.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from tests.support.waiting import waitFor


class AuthServer(Resource):
    """
    Answers every request with L{answer}, or never when it is L{None}.

    @ivar answer: C{(status, fields, body)}.
    @ivar requests: Each request's method, path, header fields (lower-case
        names) and client C{(host, port)}.
    @ivar lost: How many requests left unanswered had their connection
        lost.
    @ivar url: C{http://127.0.0.1:PORT}.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.answer: tuple[int, list[tuple[str, str]], bytes] | None = (200, [], b"")
        self.requests: list[dict[str, Any]] = []
        self.lost = 0
        self.url = ""
        self.pending: list[Request] = []

    def render(self, request: Request) -> bytes | int:
        """
        Record C{request} and answer it.
        """
        address = request.getClientAddress()
        self.requests.append(
            {
                "method": request.method.decode(),
                "path": request.uri.decode(),
                "headers": {
                    k.decode().lower(): [v.decode() for v in vs]
                    for k, vs in request.requestHeaders.getAllRawHeaders()
                },
                "client": (getattr(address, "host", ""), getattr(address, "port", 0)),
            }
        )
        if self.answer is None:

            def lost(_: object) -> None:
                self.lost += 1

            request.notifyFinish().addErrback(lost)
            self.pending.append(request)
            return NOT_DONE_YET
        status, fields, body = self.answer
        request.setResponseCode(status)
        for name, value in fields:
            request.responseHeaders.addRawHeader(name, value)
        return body

    def release(self, status: int, fields: list[tuple[str, str]]) -> None:
        """
        Answer the requests held so far with C{status}, C{fields} and no
        body.
        """
        pending, self.pending = self.pending, []
        for request in pending:
            request.setResponseCode(status)
            for name, value in fields:
                request.responseHeaders.addRawHeader(name, value)
            request.finish()

    async def waitForRequest(self, count: int = 1) -> None:
        """
        Wait until C{count} requests came.
        """
        await waitFor(lambda: len(self.requests) >= count)

    async def waitForLost(self, count: int = 1) -> None:
        """
        Wait until C{count} unanswered requests lost their connection.
        """
        await waitFor(lambda: self.lost >= count)


def startAuthServer(testCase: Any) -> AuthServer:
    """
    Listen on a loopback port chosen by the system, stopped (its
    connections closed) at the end of C{testCase}.
    """
    server = AuthServer()
    site = Site(server)
    site.noisy = False
    port = reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[attr-defined]
    server.url = f"http://127.0.0.1:{port.getHost().port}"
    testCase.addCleanup(port.stopListening)
    return server
