"""
The C{http} authorizer against a real HTTP auth server (L{twisted.web}) on
127.0.0.1, as nginx's C{auth_request} asks one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import CancelledError
from twisted.trial.unittest import TestCase
from twisted.web.client import ResponseNeverReceived
from zope.interface.verify import verifyObject

from tests.support.authserver import AuthServer, startAuthServer
from wsrelay.auth.gate import AuthorizerContext
from wsrelay.auth.httpauth import MAX_BODY, BadAnswer
from wsrelay.interfaces import Allow, AuthRequest, Deny, IAuthorizer
from wsrelay.plugins import authorizerFactories


def request(*headers: tuple[str, str]) -> AuthRequest:
    """
    @return: A request for C{/chat?room=1} from 10.1.2.3 with C{headers}.
    """
    return AuthRequest("GET", "/chat", "room=1", headers, {}, "10.1.2.3", "chat")


class HTTPAuthorizerTests(TestCase):
    """
    L{wsrelay.auth.httpauth.HTTPAuthorizer} asking a real server.
    """

    def setUp(self) -> None:
        self.server: AuthServer = startAuthServer(self)

    def build(self, path: str = "/auth", **options: str) -> Any:
        """
        @return: An authorizer asking the server's C{path}, closed at the
            end of the test.
        """
        options.setdefault("auth_url", self.server.url + path)
        context = AuthorizerContext(reactor, "chat", "/")
        authorizer = authorizerFactories()["http"].build(options, context)
        self.addCleanup(authorizer.close)
        return authorizer

    async def test_allows(self) -> None:
        """
        A 2xx answer allows, with the fields named in C{auth_headers} (and
        all of those names to remove from the client's request, also the
        one the answer lacks); the server got the client's fields (but the
        hop-by-hop ones, and those by which a client claims to be another),
        C{X-Original-URI}, C{X-Original-Method} and C{X-Forwarded-For}.
        """
        self.server.answer = (200, [("X-User", "bob"), ("X-Other", "no")], b"")
        authorizer = self.build(auth_headers="X-User X-Absent")
        self.assertTrue(verifyObject(IAuthorizer, authorizer))
        answer = await authorizer.authorize(
            request(
                ("Authorization", "Bearer t"),
                ("Connection", "Upgrade"),
                ("Upgrade", "websocket"),
                ("X-Forwarded-For", "6.6.6.6"),
                ("X_Forwarded_For", "6.6.6.7"),
                ("True-Client-IP", "6.6.6.8"),
                ("Forwarded", "for=6.6.6.9"),
                ("X-Original-URL", "/admin"),
            )
        )
        self.assertEqual(
            answer, Allow((("X-User", "bob"),), removed=("X-User", "X-Absent"))
        )
        [seen] = self.server.requests
        self.assertEqual(seen["method"], "GET")
        self.assertEqual(seen["path"], "/auth")
        fields = seen["headers"]
        self.assertEqual(fields["authorization"], ["Bearer t"])
        self.assertEqual(fields["x-original-uri"], ["/chat?room=1"])
        self.assertEqual(fields["x-original-method"], ["GET"])
        self.assertEqual(fields["x-forwarded-for"], ["10.1.2.3"])
        self.assertNotIn("upgrade", fields)
        self.assertNotEqual(fields.get("connection"), ["Upgrade"])
        for claimed in ("x_forwarded_for", "true-client-ip", "forwarded"):
            self.assertNotIn(claimed, fields)
        self.assertNotIn("x-original-url", fields)

    async def test_relaysRefusals(self) -> None:
        """
        401 and 403 become a L{Deny} with the server's fields (but those
        the relay writes itself) and body.
        """
        authorizer = self.build()
        for status in (401, 403):
            fields = [("WWW-Authenticate", 'Basic realm="x"'), ("X-Why", "no")]
            self.server.answer = (status, fields, b"go away\n")
            answer = await authorizer.authorize(request())
            self.assertIsInstance(answer, Deny)
            self.assertEqual((answer.status, answer.body), (status, b"go away\n"))
            names = [n.lower() for n, _ in answer.headers]
            self.assertIn(("X-Why", "no"), answer.headers)
            self.assertIn("www-authenticate", names)
            for name in ("content-length", "connection", "date", "server"):
                self.assertNotIn(name, names)

    async def test_otherStatus(self) -> None:
        """
        Any other status (a redirect, 404, 500) is an error: the gate turns
        it into 503.
        """
        authorizer = self.build()
        for status in (302, 404, 500):
            self.server.answer = (status, [], b"")
            with self.assertRaises(BadAnswer):
                await authorizer.authorize(request())

    async def test_bodyBound(self) -> None:
        """
        An answer with a body over L{MAX_BODY} bytes is an error.
        """
        self.server.answer = (403, [], b"x" * (MAX_BODY + 1))
        with self.assertRaises(BadAnswer):
            await self.build().authorize(request())

    async def test_persistent(self) -> None:
        """
        Requests reuse one connection to the auth server.
        """
        authorizer = self.build()
        for _ in range(3):
            await authorizer.authorize(request())
        self.assertEqual(len({r["client"] for r in self.server.requests}), 1)

    async def test_cancel(self) -> None:
        """
        Cancelling a pending authorization (the gate's timeout) aborts the
        request.
        """
        self.server.answer = None
        d = self.build().authorize(request())
        await self.server.waitForRequest()
        d.cancel()
        with self.assertRaises(ResponseNeverReceived) as raised:
            await d
        self.assertTrue(raised.exception.reasons[0].check(CancelledError))
        await self.server.waitForLost()

    def test_badOptions(self) -> None:
        """
        A bad option raises L{ValueError} whose message starts with its key.
        """
        cases: Mapping[str, dict[str, str]] = {
            "auth_url: required": {},
            "auth_url: expected an http:// or https:// URL": {"auth_url": "ftp://x/"},
            "auth_headers: not a header name to set": {
                "auth_url": "http://x/",
                "auth_headers": "X-User Host",
            },
        }
        factory = authorizerFactories()["http"]
        for message, options in cases.items():
            with self.assertRaises(ValueError) as raised:
                factory.build(options, AuthorizerContext(reactor, "r", "/"))
            self.assertTrue(str(raised.exception).startswith(message), raised.exception)
