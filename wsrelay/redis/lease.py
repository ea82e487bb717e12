# -*- test-case-name: tests.test_redis_lease -*-
"""
A lease in Redis: which relay of a route feeds its stream (the ingest).

The relays of a route compete for one key with C{SET key token NX PX ms}
(in a script, L{ACQUIRE}, that instead extends the lease when the key still
holds the relay's own token: a holder that lost only its connection takes
it back at once rather than waiting out its own lease; safe, as tokens are
unique and writes fenced by the token); the one whose C{SET} succeeds holds
the lease for C{ms} milliseconds and
renews it every third of that with a compare-and-extend script (extend only
while the key still holds its own token; run by its id, and by its body
when Redis answers C{NOSCRIPT}: see L{evalSha}).  A lease, not a lock: the holder
stops ingesting the moment a renewal fails, is refused (the key expired or
holds another token), or is late (its answer has not come back by the time
the lease would have expired, timed on the holder's clock from when the
previous acquisition or renewal was sent: Redis starts its own expiry later
than that, so the holder always gives up first).  A clean stop releases the
lease with a compare-and-delete, so that an old holder never deletes a new
holder's lease; a stop while a C{SET} is unanswered queues that release
right behind the C{SET} on its connection, and waits (at most
L{RELEASE_TIMEOUT}) for its answer before the connection is closed.
Relays that do not hold it try again every third of the lease.

The holder's times (when a command was sent, its deadline, its next
renewal) are those of the clock it is given, in production the reactor,
whose C{seconds()} and timers run on the wall clock (C{time.time}, in
Twisted 26.10), not a monotonic one: reading a monotonic clock here would
not help, as the timers would still fire by the wall clock.  A step of the
system clock thus moves the holder's timers.  Forward: renewals and the
deadline come early; a lease given up early is taken back at once
(L{ACQUIRE} extends the relay's own key).  Backward: the deadline comes
late, and the holder may believe it holds a lease that Redis expired; its
writes stay safe (each batch checks the key first: see
L{wsrelay.redis.ingest}), but until a write or its renewal (late too) is
refused it may still pass clients' messages to its backends.  Keep the clock slewed
(NTP), not stepped.

The lease keeps its connection to itself: what the holder writes must go
out on the connection the lease was taken on (see L{Lease.connection}), so
that losing that connection loses the lease at once.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from wsrelay.redis.protocol import Argument, RedisError, RedisProtocol, Reply

#: Take the lease: extend it if the key still holds our token (this relay
#: held it and lost only its connection), else set it if free.  Answers 1
#: when the lease is ours, 0 when another's.
ACQUIRE = b"""\
if redis.call('get', KEYS[1]) == ARGV[1] then
  redis.call('pexpire', KEYS[1], ARGV[2])
  return 1
end
if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
return 0"""

#: Extend the lease only while it is still ours.
RENEW = b"""\
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
else
  return 0
end"""

#: Delete the lease only while it is still ours.
RELEASE = b"""\
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
else
  return 0
end"""


#: Seconds a stop waits for its release to be answered.
RELEASE_TIMEOUT = 2.0


def scriptId(script: bytes) -> bytes:
    """
    @return: The SHA-1 a script is known by in Redis (C{EVALSHA}).
    """
    return hashlib.sha1(script).hexdigest().encode("ascii")


def evalSha(
    connection: RedisProtocol, script: bytes, *args: Argument
) -> Deferred[Reply]:
    """
    Run C{script} by its id (C{EVALSHA}); if Redis does not know it
    (C{NOSCRIPT}: flushed, or evicted), run it once more by its body
    (C{EVAL}, which also loads it again).  A script refused for
    C{NOSCRIPT} did not run, so nothing it writes is written twice.

    @return: The script's answer.
    """

    def unknown(f: Failure) -> Deferred[Reply]:
        if isinstance(f.value, RedisError) and f.value.code == "NOSCRIPT":
            return connection.execute("EVAL", script, *args)
        return fail(f)

    d = connection.execute("EVALSHA", scriptId(script), *args)
    return d.addErrback(unknown)


def newToken() -> bytes:
    """
    @return: A lease value unique to this process and this lease:
        C{host:pid:random}.
    """
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(8)}".encode()


class Lease:
    """
    One relay's side of a route's lease (see the module's docstring).

    @ivar held: Whether this relay holds the lease.
    @ivar connection: While L{held}, the connection the lease was taken on.
    @ivar acquired: Times the lease was taken.
    @ivar lost: Times it was lost (not counting clean stops).
    @ivar refusals: Attempts answered that found the lease another's.
    @ivar token: This relay's value for the key.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        connect: Callable[[], Deferred[RedisProtocol]],
        key: bytes,
        length: float,
        name: str,
        onAcquired: Callable[[RedisProtocol], None],
        onLost: Callable[[], None],
        token: bytes | None = None,
    ) -> None:
        """
        @param clock: Times the renewals and their deadlines.
        @param connect: Gives a connection to Redis when there is one
            (L{wsrelay.redis.client.RedisClient.connection}).
        @param key: The lease's key.
        @param length: Seconds the lease lasts unless renewed.
        @param name: Whose lease it is, for logs (a channel's name).
        @param onAcquired: Called with the connection when the lease is
            taken.
        @param onLost: Called when the lease is lost or released: stop
            ingesting at once.
        @param token: This relay's value (L{newToken} by default).
        """
        self._clock = clock
        self._connect = connect
        self.key = key
        self.length = length
        self._ms = max(1, int(length * 1000))
        self._name = name
        self._onAcquired = onAcquired
        self._onLost = onLost
        self.token = token if token is not None else newToken()
        self.held = False
        self.connection: RedisProtocol | None = None
        self.acquired = 0
        self.lost = 0
        self.refusals = 0
        self._running = False
        #: Bumped on each acquisition and loss: a late answer to an older
        #: command finds another generation and is ignored.
        self._generation = 0
        #: The next attempt or renewal, and the lease's deadline.
        self._timers = _Timers(clock)
        #: Waiting for a connection to try on (cancelled on stop).
        self._waiting: Deferred[Any] | None = None
        #: Whether an attempt is under way (waiting, or its C{SET} sent).
        self._trying = False
        self._scripts: RedisProtocol | None = None
        self._lastError: str | None = None
        #: While a C{SET} is unanswered, the connection it went out on.
        self._inFlight: RedisProtocol | None = None
        #: Times stopped: a C{SET} sent before a stop was released by it.
        self._stops = 0

    def start(self) -> None:
        """
        Start trying to take the lease.
        """
        if self._running:
            return
        self._running = True
        self._attempt()

    def stop(self) -> Deferred[None]:
        """
        Stop trying; if this relay holds the lease, stop ingesting
        (C{onLost}) and release it.

        @return: A L{Deferred} that fires once the release was answered or
            failed.
        """
        self._running = False
        self._stops += 1
        self._timers.cancel()
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.cancel()
        if self.held:
            connection = self.connection
            self._drop()
            self.log.info("{name}: released the ingest lease", name=self._name)
        else:
            # A SET under way may take the lease: release it right behind
            # the SET, on the same connection, before that is closed.
            connection, self._inFlight = self._inFlight, None
            if connection is None:
                return succeed(None)
        assert connection is not None
        d = connection.execute("EVAL", RELEASE, 1, self.key, self.token)
        d.addTimeout(RELEASE_TIMEOUT, self._clock)
        return d.addBoth(lambda _: None)

    # Taking the lease

    def _attempt(self) -> None:
        """
        Try to take the lease once, when connected; then again every third
        of the lease until taken.
        """
        self._timers.next = None
        if not self._running or self.held or self._trying:
            return
        self._trying = True
        waiting = self._waiting = self._connect()
        waiting.addCallback(self._take).addErrback(self._failed)

    def _take(self, connection: RedisProtocol) -> Deferred[None]:
        """
        On a connection: load the scripts if this connection has not yet,
        and C{SET NX PX}.  (A command sent is never cancelled: its answer
        is waited for, and thrown away when stopped meanwhile.)
        """
        self._waiting = None
        if self._scripts is not connection:
            self._scripts = connection
            connection.execute("SCRIPT", "LOAD", RENEW).addErrback(lambda _: None)
        sent = self._clock.seconds()
        self._inFlight = connection
        d = connection.execute("EVAL", ACQUIRE, 1, self.key, self.token, self._ms)
        return d.addBoth(self._answered, connection).addCallback(
            self._taken, connection, sent, self._stops
        )

    def _answered(self, result: Any, connection: RedisProtocol) -> Any:
        """
        The C{SET} is answered (or failed): no release to queue behind it.
        """
        if self._inFlight is connection:
            self._inFlight = None
        return result

    def _taken(
        self, reply: Reply, connection: RedisProtocol, sent: float, stops: int
    ) -> None:
        """
        The answer to L{ACQUIRE}: the lease is ours (1), or another's.
        """
        self._trying = False
        if stops != self._stops:
            # Stopped meanwhile: the release went out behind the SET.  When
            # started again since, try anew (after that release).
            if self._running:
                self._timers.later(self._attempt, 0)
            return
        if self._lastError is not None:
            self._lastError = None
        if reply != 1:
            self.refusals += 1
            self._timers.later(self._attempt, self.length / 3)
            return
        self.held = True
        self.connection = connection
        self.acquired += 1
        self._generation += 1
        generation = self._generation
        self.log.info(
            "{name}: took the ingest lease ({token})",
            name=self._name,
            token=self.token.decode("utf-8", "replace"),
        )
        self._extended(sent)
        self._onAcquired(connection)
        # Last: if the connection were lost already, the ingest would hear
        # of the loss after hearing of the lease, not before.
        connection.whenLost().addCallback(
            lambda _: self._lose(generation, "the connection to Redis was lost")
        )

    def _failed(self, f: Failure) -> None:
        """
        An attempt failed (no connection, an error reply): try again later.
        """
        self._trying = False
        self._waiting = None
        if f.check(CancelledError) or not self._running:
            return
        error = " ".join(f.getErrorMessage().split())
        if error != self._lastError:
            self._lastError = error
            self.log.warn(
                "{name}: cannot take the ingest lease: {error}",
                name=self._name,
                error=error,
            )
        self._timers.later(self._attempt, self.length / 3)

    # Keeping it

    def _extended(self, sent: float) -> None:
        """
        The lease now lasts until C{sent} plus its length: renew at a third
        of it, and give it up if no renewal is answered by then.
        """
        expiry = sent + self.length
        now = self._clock.seconds()
        generation = self._generation
        self._timers.until(
            max(0.0, expiry - now),
            self._lose,
            generation,
            "no renewal was answered before the lease would have expired",
        )
        self._timers.later(self._renew, max(0.0, sent + self.length / 3 - now))

    def _renew(self) -> None:
        """
        Extend the lease if it is still ours (compare-and-extend).
        """
        self._timers.next = None
        connection = self.connection
        if not self.held or connection is None:
            return
        generation = self._generation
        sent = self._clock.seconds()
        d = evalSha(connection, RENEW, 1, self.key, self.token, self._ms)
        d.addCallbacks(
            self._renewed,
            self._renewFailed,
            callbackArgs=(generation, sent),
            errbackArgs=(generation,),
        )

    def _renewed(self, reply: Reply, generation: int, sent: float) -> None:
        """
        A renewal answered: extended (1), or refused (0: not ours).
        """
        if generation != self._generation:
            return
        if reply != 1:
            self._lose(generation, "it expired or another relay holds it")
            return
        self._extended(sent)

    def _renewFailed(self, f: Failure, generation: int) -> None:
        """
        A renewal failed (an error reply, the connection lost).
        """
        self._lose(generation, " ".join(f.getErrorMessage().split()))

    def lose(self, why: str) -> None:
        """
        Give the lease up at once: the holder learnt that it is no longer
        its own (a write refused for want of it).
        """
        self._lose(self._generation, why)

    def _lose(self, generation: int, why: str) -> None:
        """
        The lease is no longer this relay's (or may not be): stop
        ingesting at once, and try to take it again.
        """
        if generation != self._generation or not self.held:
            return
        self.lost += 1
        self.log.warn(
            "{name}: lost the ingest lease: {why}; ingest stopped",
            name=self._name,
            why=why,
        )
        self._drop()
        if self._running:
            self._timers.later(self._attempt, 0)

    def _drop(self) -> None:
        """
        Let go of the lease here and tell the ingest.
        """
        self.held = False
        self.connection = None
        # Load the scripts again on the next attempt (in case they were
        # flushed: a refused renewal may have been NOSCRIPT).
        self._scripts = None
        self._generation += 1
        self._timers.cancel()
        self._onLost()


class _Timers:
    """
    A L{Lease}'s two timers: the next attempt or renewal, and the
    deadline by which a renewal must have been answered.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self.next: IDelayedCall | None = None
        self.deadline: IDelayedCall | None = None

    def later(self, f: Callable[[], None], delay: float) -> None:
        """
        Call C{f} after C{delay} seconds instead of what was due next.
        """
        if self.next is not None and self.next.active():
            self.next.cancel()
        self.next = self._clock.callLater(delay, f)

    def until(self, delay: float, f: Callable[..., None], *args: Any) -> None:
        """
        Call C{f(*args)} after C{delay} seconds instead of the deadline set
        before.
        """
        if self.deadline is not None and self.deadline.active():
            self.deadline.cancel()
        self.deadline = self._clock.callLater(delay, f, *args)

    def cancel(self) -> None:
        """
        Cancel the next attempt or renewal, and the deadline.
        """
        for call in (self.next, self.deadline):
            if call is not None and call.active():
                call.cancel()
        self.next = self.deadline = None
