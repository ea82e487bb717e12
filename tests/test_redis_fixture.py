"""
Tests for L{tests.support.redis}: the real C{redis-server} the Redis tests
start, each on its own port and directory.
"""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from tests.support.redis import ReplyError, startRedis


class RedisServerTests(TestCase):
    """
    L{tests.support.redis.startRedis} starts a server that answers, with a
    password or TLS, and restarts it empty on the same port.
    """

    async def test_answers(self) -> None:
        """
        The server answers commands on its own port, never 6379, with
        persistence off.
        """
        server = await startRedis(self)
        self.assertNotEqual(server.port, 6379)
        self.assertEqual(server.call("PING"), b"PONG")
        self.assertEqual(server.call("CONFIG", "GET", "save"), [b"save", b""])

    async def test_password(self) -> None:
        """
        With a password, the server refuses commands without it, and
        L{RedisServer.call} authenticates.
        """
        server = await startRedis(self, password="sesame")
        self.assertEqual(server.call("PING"), b"PONG")
        self.assertIn(":sesame@", server.url)
        server.password = None
        reply = server.call("PING")
        self.assertIsInstance(reply, ReplyError)
        self.assertIn("NOAUTH", str(reply))

    async def test_tls(self) -> None:
        """
        With TLS, the server speaks TLS only, with a certificate its CA
        verifies for 127.0.0.1.
        """
        server = await startRedis(self, tls=True)
        self.assertTrue(server.url.startswith("rediss://127.0.0.1:"))
        self.assertEqual(server.call("PING"), b"PONG")

    async def test_restart(self) -> None:
        """
        A restart kills the server and starts it empty on the same port.
        """
        server = await startRedis(self)
        port = server.port
        server.call("SET", "k", "v")
        await server.restart()
        self.assertEqual(server.port, port)
        self.assertIsNone(server.call("GET", "k"))
