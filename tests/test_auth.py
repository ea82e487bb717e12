"""
Authorization before the upgrade: the gate (L{wsrelay.auth.gate}) on its
own with a clock, and relays whose routes name an authorizer (C{auth =
jwt}, C{auth = http}), with real backends and C{websockets} clients.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from typing import Any

import jwt
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.support import TIMEOUT, client, inThread, startBackend, startRelay
from tests.support.authserver import startAuthServer
from tests.support.clients import closeOf, rawRequest
from tests.support.fanout import Clients, Source, feed, sourceUp
from tests.support.waiting import waitFor
from wsrelay.auth.gate import (
    EXPIRED,
    UNAVAILABLE,
    authorize,
    closeAtExpiry,
    withHeaders,
)
from wsrelay.config import ConfigError
from wsrelay.interfaces import Allow, AuthRequest, Deny
from wsrelay.ws.handshake import Head
from wsrelay.ws.screening import Refused

SECRET = b"an-hs256-secret-of-32-bytes-or-more!"

REQUEST = AuthRequest("GET", "/chat", "", (("X-User", "mallory"),), {}, "1.2.3.4", "r")


class Answering:
    """
    An authorizer that answers what it is given, and counts cancellations.
    """

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.cancelled = 0

    def authorize(self, request: AuthRequest) -> Any:
        if isinstance(self.answer, Exception):
            raise self.answer
        if self.answer is Deferred:

            def cancel(d: Deferred[Any]) -> None:
                self.cancelled += 1

            return Deferred(cancel)
        return self.answer


class GateTests(SynchronousTestCase):
    """
    L{authorize} turns an authorizer's answer into an L{Allow} or the
    client's L{Refused}, and never allows by an error.
    """

    def ask(self, answer: Any, clock: Clock | None = None) -> Deferred[Allow]:
        """
        @return: What L{authorize} makes of C{answer}.
        """
        authorizer = Answering(answer)
        return authorize(authorizer, REQUEST, 5, clock or Clock(), "test")

    def refusal(self, answer: Any) -> Refused:
        """
        @return: The refusal C{answer} gives the client.
        """
        f = self.failureResultOf(self.ask(answer), Refused)
        assert isinstance(f.value, Refused)
        return f.value

    def test_allow(self) -> None:
        """
        An L{Allow}, at once or through a L{Deferred}, goes on.
        """
        allow = Allow((("X-User", "alice"),), 12.0)
        self.assertIs(self.successResultOf(self.ask(allow)), allow)
        self.assertIs(self.successResultOf(self.ask(succeed(allow))), allow)

    def test_deny(self) -> None:
        """
        A L{Deny} is the client's response, as it is but for the fields
        the relay writes itself.
        """
        deny = Deny(
            401, (("WWW-Authenticate", "Bearer"), ("Content-Length", "9")), b"x"
        )
        refused = self.refusal(deny)
        self.assertEqual(refused.code, 401)
        self.assertEqual(refused.reason, "Unauthorized")
        self.assertEqual(refused.headers, [("WWW-Authenticate", "Bearer")])
        self.assertEqual(refused.body, b"x")

    def test_errors(self) -> None:
        """
        An exception, a failed L{Deferred}, or an answer that cannot be
        used refuses with 503, logged.
        """
        bad = [
            RuntimeError("boom"),
            fail(RuntimeError("boom")),
            None,
            True,
            Allow((("X-Forwarded-For", "1.1.1.1"),)),
            Allow((("Host", "evil"),)),
            Allow((("X_User", "a"),)),
            Allow((("X-User", "a\r\nX-Admin: 1"),)),
            Allow((("Bad Name", "a"),)),
            Deny(200),
            Deny(403, (("X-A", "b\nc"),)),
        ]
        for answer in bad:
            self.assertIs(self.refusal(answer), UNAVAILABLE, answer)
        self.assertEqual(UNAVAILABLE.code, 503)
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_timeout(self) -> None:
        """
        An authorizer that does not answer within the timeout is cancelled,
        and the client gets 503.
        """
        clock = Clock()
        authorizer = Answering(Deferred)
        d = authorize(authorizer, REQUEST, 5, clock, "slow")
        clock.advance(4.9)
        self.assertNoResult(d)
        clock.advance(0.1)
        self.assertIs(self.failureResultOf(d, Refused).value, UNAVAILABLE)
        self.assertEqual(authorizer.cancelled, 1)

    def test_withHeaders(self) -> None:
        """
        An allow's fields replace the client's of the same names, in any
        case, and keep the others.
        """
        head = Head(
            "GET / HTTP/1.1", (("x-user", "mallory"), ("A", "1"), ("X-USER", "m"))
        )
        new = withHeaders(head, (("X-User", "alice"),))
        self.assertEqual(new.headers, (("A", "1"), ("X-User", "alice")))
        self.assertIs(withHeaders(head, ()), head)

    def test_closeAtExpiry(self) -> None:
        """
        At its expiry the session is shut down with 1008; a session that
        ends before is not, and its timer is cancelled.
        """

        class Session:
            done: Deferred[None]

            def __init__(self) -> None:
                self.done = Deferred()
                self.closes: list[tuple[int, bytes]] = []

            def shutdown(self, code: int = 1001, reason: bytes = b"") -> None:
                self.closes.append((code, reason))

        clock = Clock()
        clock.advance(1000)
        session, ended = Session(), Session()
        closeAtExpiry(session, 1010, clock)  # type: ignore[arg-type]
        call = closeAtExpiry(ended, 1010, clock)  # type: ignore[arg-type]
        ended.done.callback(None)
        self.assertFalse(call.active())
        clock.advance(9.9)
        self.assertEqual(session.closes, [])
        clock.advance(0.1)
        self.assertEqual(session.closes, [(1008, EXPIRED)])
        self.assertEqual(ended.closes, [])


def status(port: int, path: str, **kwargs: Any) -> InvalidStatus:
    """
    @return: The refusal a client of C{path} gets (in a thread).
    @raise AssertionError: When it connects.
    """
    try:
        client(port, path, **kwargs).close()
    except InvalidStatus as e:
        return e
    raise AssertionError("connected")


class RelayTests(TestCase):
    """
    A relay asks the route's authorizer before any backend is contacted.
    """

    def setUp(self) -> None:
        self.backend = startBackend(self)
        directory = tempfile.mkdtemp()
        self.keyFile = os.path.join(directory, "secret")
        with open(self.keyFile, "wb") as f:
            f.write(SECRET)

    async def relay(self, options: str, clock: Any = None, extra: str = "") -> Any:
        """
        Start a relay whose proxy route C{/chat} goes to the echo backend
        with C{options}.

        @return: The relay and its port.
        """
        return await startRelay(
            self,
            "[relay]\n[route:chat]\npath = /chat\n"
            f"backends = {self.backend.url}\n{options}{extra}",
            clock,
        )

    def jwtOptions(self, extra: str = "") -> str:
        """
        @return: The keys of C{auth = jwt} with the test's secret.
        """
        return (
            f"auth = jwt\njwt_key_file = {self.keyFile}\njwt_algorithms = HS256\n"
            "jwt_headers = sub:X-User\n" + extra
        )

    def token(self, **claims: Any) -> dict[str, str]:
        """
        @return: An C{Authorization} field with a token for alice.
        """
        claims = {"sub": "alice", "exp": int(time.time()) + 600, **claims}
        return {"Authorization": "Bearer " + jwt.encode(claims, SECRET, "HS256")}

    async def test_jwtAllowed(self) -> None:
        """
        A client with a valid token reaches the backend, whose request has
        the claim's header in place of the client's own.
        """
        relay, port = await self.relay(self.jwtOptions())

        def run() -> str:
            headers = {**self.token(), "X-User": "mallory"}
            with client(port, "/chat", additional_headers=headers) as c:
                c.send("headers")
                return str(c.recv(TIMEOUT))

        lines = (await inThread(run)).lower().splitlines()
        self.assertIn("x-user: alice", lines)
        self.assertNotIn("x-user: mallory", lines)

    async def test_jwtClaimMissing(self) -> None:
        """
        A field C{jwt_headers} names never comes from the client, also when
        the token lacks its claim: the client cannot give itself a role.
        """
        options = self.jwtOptions().replace("sub:X-User", "sub:X-User role:X-Role")
        relay, port = await self.relay(options)

        def run() -> str:
            headers = {**self.token(), "X-Role": "admin"}
            with client(port, "/chat", additional_headers=headers) as c:
                c.send("headers")
                return str(c.recv(TIMEOUT))

        lines = (await inThread(run)).lower().splitlines()
        self.assertFalse([line for line in lines if line.startswith("x-role")], lines)

    async def test_jwtDenied(self) -> None:
        """
        A client without a token, or with a bad one, gets 401 with
        C{WWW-Authenticate: Bearer}, and the backend sees no connection.
        """
        relay, port = await self.relay(self.jwtOptions())
        for headers in ({}, self.token(exp=int(time.time()) - 60)):
            e = await inThread(status, port, "/chat", additional_headers=headers)
            self.assertEqual(e.response.status_code, 401)
            challenge = e.response.headers["WWW-Authenticate"]
            self.assertTrue(challenge.startswith("Bearer"), challenge)
        self.assertEqual(self.backend.connections, 0)

    async def test_httpRelayed(self) -> None:
        """
        The C{http} authorizer's 403 reaches the client with its header
        fields and body; its 200 lets the client on with C{auth_headers}.
        """
        server = startAuthServer(self)
        options = f"auth = http\nauth_url = {server.url}/auth\nauth_headers = X-User\n"
        relay, port = await self.relay(options)
        self.addCleanup(relay.routes.routes[0].authorizer.close)
        server.answer = (403, [("X-Why", "banned")], b"banned\n")
        e = await inThread(status, port, "/chat?room=9")
        self.assertEqual(e.response.status_code, 403)
        self.assertEqual(e.response.headers["X-Why"], "banned")
        self.assertEqual(e.response.body, b"banned\n")
        self.assertEqual(self.backend.connections, 0)
        self.assertEqual(
            server.requests[0]["headers"]["x-original-uri"], ["/chat?room=9"]
        )
        server.answer = (204, [("X-User", "bob")], b"")

        def run() -> str:
            with client(port, "/chat") as c:
                c.send("headers")
                return str(c.recv(TIMEOUT))

        self.assertIn("x-user: bob", (await inThread(run)).lower().splitlines())

    async def test_httpClosedOnReload(self) -> None:
        """
        The authorizer a reload replaces, and the one in force when the
        relay stops, are closed (the C{http} one closes its idle
        connections to the auth server); a client after the reload is
        asked about by the new one.
        """
        server = startAuthServer(self)
        server.answer = (204, [], b"")
        relay, port = await self.relay(f"auth = http\nauth_url = {server.url}/a\n")
        closed: list[object] = []

        def recording(authorizer: Any) -> None:
            close = authorizer.close

            def closing() -> Any:
                closed.append(authorizer)
                return close()

            authorizer.close = closing

        old = relay.routes.routes[0].authorizer
        recording(old)
        await inThread(lambda: client(port, "/chat", legacy=True).close())
        await relay.reload()
        new = relay.routes.routes[0].authorizer
        self.assertIsNot(new, old)
        self.assertEqual(closed, [old])
        recording(new)
        await inThread(lambda: client(port, "/chat", legacy=True).close())
        self.assertEqual(len(server.requests), 2)
        await relay.stopService()
        self.assertEqual(closed, [old, new])

    async def test_timeout(self) -> None:
        """
        An auth server that does not answer within C{auth_timeout} (on the
        relay's clock) gets the client 503.
        """
        server = startAuthServer(self)
        server.answer = None
        clock = Clock()
        clock.advance(time.time())
        options = f"auth = http\nauth_url = {server.url}/auth\nauth_timeout = 2\n"
        relay, port = await self.relay(options, clock)
        self.addCleanup(relay.routes.routes[0].authorizer.close)
        refused = inThread(status, port, "/chat")
        await server.waitForRequest()
        clock.advance(2)
        e = await refused
        self.assertEqual(e.response.status_code, 503)
        self.assertEqual(self.backend.connections, 0)
        await server.waitForLost()
        self.flushLoggedErrors()

    async def test_clientLeft(self) -> None:
        """
        A client that leaves while its authorizer decides withdraws the
        question: the request to the auth server is aborted (long before
        C{auth_timeout}), no backend is contacted, nothing is logged.
        """
        server = startAuthServer(self)
        server.answer = None
        options = f"auth = http\nauth_url = {server.url}/auth\nauth_timeout = 600\n"
        relay, port = await self.relay(options)
        self.addCleanup(relay.routes.routes[0].authorizer.close)
        sock = await inThread(socket.create_connection, ("127.0.0.1", port), TIMEOUT)
        request = rawRequest(port, "/chat")
        await inThread(sock.sendall, request)
        await server.waitForRequest()
        sock.close()
        await waitFor(lambda: relay.admission.clientConnections == 0)
        await server.waitForLost()
        self.assertEqual(self.backend.connections, 0)
        self.assertEqual(relay.sessions, set())
        # Nothing was written to the gone client (no error logged).
        self.assertEqual(self.flushLoggedErrors(), [])

    async def test_expiryClose(self) -> None:
        """
        With C{jwt_expiry = close} the connection is closed with 1008 when
        the token expires (on the relay's clock).
        """
        clock = Clock()
        clock.advance(time.time())
        options = self.jwtOptions("jwt_expiry = close\n")
        relay, port = await self.relay(options, clock, "")
        expires = int(time.time()) + 600
        c = await inThread(
            client, port, "/chat", additional_headers=self.token(exp=expires)
        )
        self.addCleanup(inThread, c.close)
        await inThread(c.send, "hi")
        self.assertEqual(await inThread(c.recv, TIMEOUT), "hi")
        clock.advance(expires - clock.seconds() - 1)
        await inThread(c.send, "still")
        self.assertEqual(await inThread(c.recv, TIMEOUT), "still")
        clock.advance(1)

        def closed() -> tuple[int | None, str | None]:
            try:
                c.recv(TIMEOUT)
            except ConnectionClosed:
                pass
            return closeOf(c)

        self.assertEqual(await inThread(closed), (1008, "token expired"))

    async def test_reloadRereadsKey(self) -> None:
        """
        A reload (SIGHUP) reads the key file again: a token signed with the
        new secret is allowed from then on, and one with the old is not.
        """
        relay, port = await self.relay(self.jwtOptions())
        newSecret = b"the-rotated-secret-of-32-bytes-long!"
        with open(self.keyFile, "wb") as f:
            f.write(newSecret)
        await relay.reload()
        claims = {"sub": "bob", "exp": int(time.time()) + 600}
        token = "Bearer " + jwt.encode(claims, newSecret, "HS256")

        def run() -> str:
            with client(
                port, "/chat", additional_headers={"Authorization": token}
            ) as c:
                c.send("headers")
                return str(c.recv(TIMEOUT))

        self.assertIn("x-user: bob", (await inThread(run)).lower().splitlines())
        old = self.token()
        e = await inThread(status, port, "/chat", additional_headers=old)
        self.assertEqual(e.response.status_code, 401)

    async def test_badOptions(self) -> None:
        """
        An option the authorizer rejects stops the relay from starting,
        with one line naming the route's C{auth} key; a reload with one is
        rejected and the running authorizer stays.
        """
        with self.assertRaises(ConfigError) as raised:
            await self.relay(self.jwtOptions().replace("HS256", "HS256 none"))
        message = str(raised.exception)
        self.assertIn("[route:chat] auth: jwt: jwt_algorithms: 'none'", message)
        self.assertEqual(message.splitlines(), [message])
        relay, port = await self.relay(self.jwtOptions())
        os.remove(self.keyFile)
        with self.assertRaises(ConfigError) as raised:
            await relay.reload()
        self.assertIn("auth: jwt: jwt_key_file: cannot read", str(raised.exception))

        def run() -> str:
            with client(port, "/chat", additional_headers=self.token()) as c:
                c.send("still")
                return str(c.recv(TIMEOUT))

        self.assertEqual(await inThread(run), "still")

    async def test_fanout(self) -> None:
        """
        A fan-out route asks its authorizer too: a denied client does not
        start the lazy channel's upstream.
        """
        relay, port = await startRelay(
            self,
            "[relay]\n[route:feed]\npath = /feed\nmode = fanout\nconnect = lazy\n"
            f"backends = {self.backend.url}\n" + self.jwtOptions(),
        )
        e = await inThread(status, port, "/feed")
        self.assertEqual(e.response.status_code, 401)
        self.assertEqual(self.backend.connections, 0)
        c = await inThread(client, port, "/feed", additional_headers=self.token())
        await inThread(c.close)
        # The lazy channel's source connects after the client joined.
        await waitFor(lambda: self.backend.connections == 1)

    async def test_fanoutQueryToken(self) -> None:
        """
        In a fan-out route with C{channel = path} and tokens in the query,
        clients with different tokens for the same path share one channel
        and one source connection, which is asked for the path without any
        token; a client without a valid one is refused.
        """
        source = Source(self)
        relay, port = await startRelay(
            self,
            feed(
                source,
                "channel = path\nconnect = lazy\n"
                + self.jwtOptions("jwt_from = query:access_token\n"),
            ),
        )
        clients = Clients(self, port)
        tokens = [
            jwt.encode({"sub": who, "exp": int(time.time()) + 600}, SECRET, "HS256")
            for who in ("alice", "bob")
        ]
        paths = [f"access_token={tokens[0]}&x=1", f"x=1&access_token={tokens[1]}"]
        joined = [
            *await inThread(clients.add, 1, "/ticker/AAPL?" + paths[0]),
            *await inThread(clients.add, 1, "/ticker/AAPL?" + paths[1]),
        ]
        e = await inThread(status, port, "/ticker/AAPL?x=1&access_token=forged")
        self.assertEqual(e.response.status_code, 401)
        channel = await sourceUp(source, relay, "/AAPL?x=1")
        self.assertEqual(len(channel.members), 2)
        self.assertEqual(list(relay.channels), [("ticker", "/AAPL?x=1")])
        self.assertEqual(source.paths, ["/feed/AAPL?x=1"])
        await inThread(source.send, 1)
        await waitFor(lambda: clients.received(joined, 1))
