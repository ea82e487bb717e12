"""
The relay at the edge: request paths normalized before routing, forwarded
headers that a client cannot forge, the PROXY protocol, and strict HTTP
in the opening handshake.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.support import TIMEOUT, client, inThread, startBackend, startRelay
from tests.test_proxy import rawExchange, rawRequest
from wsrelay.routing import PathAboveRoot, normalizePath


class NormalizePathTests(SynchronousTestCase):
    """
    L{normalizePath} resolves dot segments, percent-encoded dots included,
    and merges slashes; nothing else changes.
    """

    def test_dotSegments(self) -> None:
        """
        C{.} and C{..} segments are removed with what they climb out of,
        as RFC 3986 5.2.4 does; a path ending in a dot segment ends with
        C{/}.
        """
        for path, expected in [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a/b/", "/a/b/"),
            ("/src/../echo", "/echo"),
            ("/a/./b", "/a/b"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/a/./..", "/"),
            ("/a/b/../../c", "/c"),
            ("/a/...", "/a/..."),
            ("/a/..b/.c", "/a/..b/.c"),
        ]:
            self.assertEqual(normalizePath(path), expected, path)

    def test_encodedDots(self) -> None:
        """
        A segment made of dots, some or all of them percent-encoded in
        either case, is a dot segment; other percent-encoding stays as
        sent, double-encoded dots included.
        """
        for path, expected in [
            ("/a/%2e%2e/b", "/b"),
            ("/a/%2E%2e/b", "/b"),
            ("/a/.%2e/b", "/b"),
            ("/a/%2E./b", "/b"),
            ("/a/%2e/b", "/a/b"),
            ("/a/%252e%252e/b", "/a/%252e%252e/b"),
            ("/a%2Fb/%41/..", "/a%2Fb/"),
            ("/a/b%2e/c", "/a/b%2e/c"),
        ]:
            self.assertEqual(normalizePath(path), expected, path)

    def test_mergeSlashes(self) -> None:
        """
        Runs of C{/} are one C{/}, as with nginx's C{merge_slashes on}.
        """
        for path, expected in [
            ("//", "/"),
            ("//a///b", "/a/b"),
            ("/a//", "/a/"),
            ("/a//..", "/"),
        ]:
            self.assertEqual(normalizePath(path), expected, path)

    def test_aboveRoot(self) -> None:
        """
        A path whose C{..} would climb above C{/} raises L{PathAboveRoot}.
        """
        for path in [
            "/..",
            "/../a",
            "/a/../..",
            "/public/../../../forbidden/admin",
            "/public/%2e%2e/%2E%2e/forbidden",
            "/a/./../.%2e/b",
        ]:
            self.assertRaises(PathAboveRoot, normalizePath, path)


class PathRoutingTests(TestCase):
    """
    The relay routes on the normalized path and forwards it; a path that
    climbs above C{/} is answered 400.
    """

    async def relay(self) -> tuple[object, int]:
        """
        A backend that says which path it was asked for, behind three
        routes: C{/public} and C{/echo} to sub-paths of it, and C{/src},
        which allows one origin only.

        @return: The backend and the relay's port.
        """
        b = startBackend(self)
        base = f"ws://127.0.0.1:{b.port}"
        _, port = await startRelay(
            self,
            "[relay]\n"
            f"[route:public]\npath = /public\nbackends = {base}/app/public/\n"
            f"[route:echo]\npath = /echo\nbackends = {base}/app/echo/\n"
            f"[route:src]\npath = /src\nbackends = {base}/app/src/\n"
            "allowed_origins = https://only.example\n",
        )
        return b, port

    async def backendPath(self, port: int, path: str) -> str:
        """
        @return: The path (and query) the backend saw for a client that
            asked the relay for C{path}.
        """

        def run() -> str:
            with client(port, path) as c:
                c.send("path")
                return str(c.recv(TIMEOUT))

        return str(await inThread(run))

    async def test_routedOnNormalizedPath(self) -> None:
        """
        C{/src/../echo} is C{/echo}'s: its route rules (here C{/src}'s
        C{allowed_origins}, which would answer 403) are not chosen on the
        raw path, and the backend sees the normalized path with the query
        as sent.
        """
        _, port = await self.relay()
        self.assertEqual(
            await self.backendPath(port, "/src/../echo/./a/%2e%2e/b?q=/../%2e"),
            "/app/echo/b?q=/../%2e",
        )

    async def test_forwardedNormalized(self) -> None:
        """
        The backend sees the path without dot segments or repeated
        slashes; other percent-encoding is as the client sent it.
        """
        _, port = await self.relay()
        for path, expected in [
            ("/public/x/../y", "/app/public/y"),
            ("/public/x/.%2E/y/", "/app/public/y/"),
            ("/echo//a///b", "/app/echo/a/b"),
            ("/echo/a%2Fb/%41", "/app/echo/a%2Fb/%41"),
        ]:
            self.assertEqual(await self.backendPath(port, path), expected, path)

    async def test_aboveRoot(self) -> None:
        """
        A path that climbs above C{/}, with plain or percent-encoded dots,
        is answered 400 and reaches no backend.
        """
        b, port = await self.relay()
        for path in [
            "/public/../../../forbidden/admin",
            "/public/%2e%2e/%2E%2e/%2e%2e/forbidden/admin",
            "/public/./.%2e/..",
        ]:
            answer = await inThread(rawExchange, port, rawRequest(port, path))
            self.assertTrue(answer.startswith(b"HTTP/1.1 400 "), (path, answer))
        self.assertEqual(b.connections, 0)  # type: ignore[attr-defined]

    async def test_leavingRoute(self) -> None:
        """
        A path that climbs out of its route's prefix is routed on where it
        lands: C{/public/..} is C{/}, which no route takes (404).
        """
        _, port = await self.relay()
        answer = await inThread(rawExchange, port, rawRequest(port, "/public/.."))
        self.assertTrue(answer.startswith(b"HTTP/1.1 404 "), answer)
