# -*- test-case-name: tests.test_redis_client -*-
"""
A connection to Redis kept up from a URL: C{redis://[[user]:password@]host
[:port][/db]}, or C{rediss://} for TLS verified against the system's trust
store or a CA file.  A L{twisted.application.internet.ClientService}
connects, authenticates and selects the database (a connection that fails
either is a failed attempt), and reconnects with backoff after a loss.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import unquote, urlsplit

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
    ITransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from wsrelay.redis.protocol import RedisProtocol
from wsrelay.tls import BadCAFile, loadTrust, tlsEndpoint

#: Redis's port when a URL names none.
DEFAULT_PORT = 6379

#: Seconds a connection attempt may take to connect, and then to log in.
CONNECT_TIMEOUT = 10.0


class BadRedisSetting(ValueError):
    """
    A Redis URL, password file or CA file that cannot be used; its message
    is one line naming the cause.
    """


@dataclass(frozen=True)
class RedisAddress:
    """
    Where a Redis server is and how to log in to it.

    @ivar host: Its host name or address.
    @ivar port: Its port.
    @ivar db: The database selected after connecting.
    @ivar tls: Whether to speak TLS (C{rediss://}), verifying the server's
        certificate for C{host}.
    @ivar username: The ACL user to authenticate as, or L{None}.
    @ivar password: The password, or L{None} for none.
    """

    host: str
    port: int
    db: int = 0
    tls: bool = False
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)

    @property
    def display(self) -> str:
        """
        The address for logs, without the password.
        """
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{self.host}:{self.port}/{self.db}"


def parseRedisURL(url: str) -> RedisAddress:
    """
    @return: The address a C{redis://} or C{rediss://} URL names.
    @raise BadRedisSetting: When it is not such a URL.
    """
    # Never echo the URL nor urlsplit's errors: the URL may hold a password.
    encode = "; percent-encode the password"
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        raise BadRedisSetting("cannot parse the URL" + encode) from None
    if parts.scheme not in ("redis", "rediss"):
        raise BadRedisSetting("scheme must be redis or rediss")
    if "@" in parts.path or "@" in parts.query or "@" in parts.fragment:
        # A password holding /, ? or # ends the host part early.
        raise BadRedisSetting("cannot parse the URL" + encode)
    try:
        port = parts.port
    except ValueError:
        raise BadRedisSetting("cannot parse the URL: bad port" + encode) from None
    if not parts.hostname:
        raise BadRedisSetting("the URL has no host" + encode)
    path = parts.path.strip("/")
    try:
        db = int(path) if path else 0
    except ValueError:
        db = -1
    if db < 0:
        raise BadRedisSetting("the URL's database is not a number")
    if parts.query or parts.fragment:
        raise BadRedisSetting("the URL has a query or fragment" + encode)
    return RedisAddress(
        host=parts.hostname,
        port=port if port is not None else DEFAULT_PORT,
        db=db,
        tls=parts.scheme == "rediss",
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


def readPasswordFile(path: str) -> str:
    """
    @return: The password in the file C{path}: its first line, without
        the line end.
    @raise BadRedisSetting: When it cannot be read or is empty.
    """
    try:
        with open(path, encoding="utf-8") as f:
            password = f.readline().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise BadRedisSetting(f"cannot read {path}: {reason}") from None
    if not password:
        raise BadRedisSetting(f"{path} is empty")
    return password


def redisEndpoint(
    reactor: Any, address: RedisAddress, caFile: str | None = None
) -> IStreamClientEndpoint:
    """
    @param caFile: A PEM file of the CAs a C{rediss://} server's
        certificate is checked against, instead of the system's.
    @return: An endpoint that reaches C{address}, over verified TLS for
        C{rediss://}.
    @raise BadRedisSetting: When C{caFile} holds no usable certificate.
    """
    if not address.tls:
        return HostnameEndpoint(
            reactor, address.host, address.port, int(CONNECT_TIMEOUT)
        )
    trust = None
    if caFile is not None:
        try:
            trust = loadTrust(caFile)
        except (OSError, BadCAFile) as e:
            raise BadRedisSetting(str(e)) from None
    return tlsEndpoint(
        reactor, address.host, address.port, CONNECT_TIMEOUT, trust=trust
    )


def redisBackoff(
    base: float = 0.1, cap: float = 10.0, rng: random.Random | None = None
) -> Callable[[int], float]:
    """
    @return: The wait before a reconnection attempt: exponential from
        C{base} to C{cap}, with up to half of it as jitter.
    """
    chance = rng if rng is not None else random.Random()
    policy = backoffPolicy(initialDelay=base, maxDelay=cap, factor=2.0, jitter=_none)

    def wait(attempt: int) -> float:
        top = policy(attempt)
        return top / 2 + chance.uniform(0, top / 2)

    return wait


def _none() -> float:
    return 0.0


class RedisClient:
    """
    A connection to one Redis server kept up: L{connection} gives the
    current one (after connecting, authenticating and selecting the
    database), reconnecting with backoff after a loss or a failed
    attempt.

    @ivar attempts: Connection attempts that failed (connect, TLS, or
        authentication), for the metrics.
    @ivar lastError: The last attempt's failure, one line, or L{None}.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        address: RedisAddress,
        endpoint: IStreamClientEndpoint,
        name: str,
        retryPolicy: Callable[[int], float] | None = None,
    ) -> None:
        """
        @param endpoint: Reaches the server (see L{redisEndpoint}).
        @param name: Who uses it, for logs (a channel's name).
        """
        self._reactor = reactor
        self.address = address
        self._endpoint = endpoint
        self._name = name
        self._policy = retryPolicy if retryPolicy is not None else redisBackoff()
        self._service: ClientService | None = None
        self.attempts = 0
        self.lastError: str | None = None

    def start(self) -> None:
        """
        Start connecting.
        """
        if self._service is not None:
            return
        self._service = ClientService(
            _Endpoint(self),
            Factory.forProtocol(_Handle),
            self._policy,
            clock=self._reactor,
        )
        self._service.startService()

    def stop(self) -> Deferred[None]:
        """
        Stop connecting and close the connection.

        @return: A L{Deferred} that fires once it is closed.
        """
        service, self._service = self._service, None
        if service is None:
            return Deferred.fromCoroutine(_nothing())
        return service.stopService()

    def connection(
        self, failAfterFailures: int | None = None
    ) -> Deferred[RedisProtocol]:
        """
        @param failAfterFailures: Fail after this many failed attempts in
            a row (see L{ClientService.whenConnected}); wait for ever by
            default.
        @return: A L{Deferred} firing with the current connection, when
            there is one; cancel it to stop waiting.
        """
        if self._service is None:
            raise RuntimeError("the Redis client is stopped")
        d: Deferred[Any] = self._service.whenConnected(failAfterFailures)
        return d.addCallback(lambda handle: handle.transport.redis)

    async def _connect(self, factory: IProtocolFactory) -> IProtocol:
        """
        One attempt of the service: connect and log in; only then hand
        the service its protocol (a L{_Handle}).

        The service's own C{prepareConnection} is not used for the login:
        a connection that closes while it runs or after it failed reaches
        the service in a state that has no transition for it
        (C{NoTransition}, Twisted 26.10).
        """
        address = self.address
        connection = RedisProtocol()
        try:
            await connectProtocol(self._endpoint, connection)
        except CancelledError:
            raise
        except Exception as e:
            self._report(f"{address.display}: {_oneLine(e)}")
            raise
        # A server that accepts but does not answer (stopped) would hold
        # the attempt for ever.
        deadline = self._reactor.callLater(
            CONNECT_TIMEOUT, connection.timedOut, CONNECT_TIMEOUT
        )
        try:
            await self._login(connection)
        except BaseException as e:
            if not isinstance(e, CancelledError):
                self._report(f"{address.display}: {_oneLine(e)}")
            assert connection.transport is not None
            connection.transport.abortConnection()  # type: ignore[attr-defined]
            raise
        finally:
            if deadline.active():
                deadline.cancel()
        if self.lastError is not None:
            self.log.info(
                "{name}: connected to Redis at {address}",
                name=self._name,
                address=address.display,
            )
        self.lastError = None
        handle = factory.buildProtocol(None)  # type: ignore[arg-type]
        assert handle is not None
        handle.makeConnection(cast(ITransport, _HandleTransport(connection)))
        connection.whenLost().addCallback(
            lambda _: handle.connectionLost(Failure(ConnectionDone()))
        )
        return handle

    async def _login(self, connection: RedisProtocol) -> None:
        """
        Authenticate and select the database on a new connection.
        """
        address = self.address
        if address.password is not None:
            if address.username is not None:
                await connection.execute("AUTH", address.username, address.password)
            else:
                await connection.execute("AUTH", address.password)
        if address.db:
            await connection.execute("SELECT", address.db)
        # A round trip whatever the URL: over TLS, the handshake (and so
        # the certificate's verification) is done only then.
        await connection.execute("PING")

    def _report(self, error: str) -> None:
        """
        Count a failed attempt, and log its cause when it changed.
        """
        self.attempts += 1
        if error != self.lastError:
            self.log.warn(
                "{name}: cannot use Redis at {error}", name=self._name, error=error
            )
        self.lastError = error


@implementer(IStreamClientEndpoint)
class _Endpoint:
    """
    The service's endpoint: counts and logs failed attempts.
    """

    def __init__(self, client: RedisClient) -> None:
        self._client = client

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        """
        One connection attempt.
        """
        return Deferred.fromCoroutine(self._client._connect(protocolFactory))


class _HandleTransport:
    """
    What the service sees of a Redis connection: it only ever closes it.

    @ivar redis: The connection.
    """

    def __init__(self, redis: RedisProtocol) -> None:
        self.redis = redis

    def loseConnection(self) -> None:
        """
        Close the Redis connection.
        """
        transport = self.redis.transport
        if transport is not None:
            transport.loseConnection()


class _Handle(Protocol):
    """
    Stands for a logged-in Redis connection (its transport's C{redis}) to
    the service, which learns through it when the connection is lost.
    """


def _oneLine(e: BaseException) -> str:
    """
    @return: An error's message on one line.
    """
    text = str(e) or type(e).__name__
    return " ".join(text.split())


async def _nothing() -> None:
    return None
