"""
Running out of file descriptors is the relay's problem, not the backend's:
the limit is raised at start, what it leaves room for is logged, a
C{max_connections} that cannot fit stops the start, and clients beyond
the limit get 503 with C{Retry-After} while the backends stay up and the
open connections go on.

The relay runs as users run it (C{twistd -n wsrelay}) with a low
C{RLIMIT_NOFILE} set in the child before it runs (L{RelayProcess}); what
happens when a connect itself fails for want of a descriptor is shown in
memory, where the failure can be had at will.
"""

from __future__ import annotations

import asyncio
import errno
import os
import resource
import socket
import subprocess
import tempfile
import time
from collections.abc import Coroutine
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.error import (
    ConnectBindError,
    ConnectError,
    ConnectionRefusedError,
    DNSLookupError,
    getConnectError,
)
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogEvent, Logger, formatEvent
from twisted.plugins.wsrelay_health import tcp
from twisted.trial.unittest import SynchronousTestCase
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidStatus

from tests.support.faultbackend import (
    TWISTD,
    BackendProcess,
    RelayProcess,
    openClient,
    waitUntil,
)
from wsrelay import descriptors
from wsrelay.config import ConfigError, loadConfig, parseConfig
from wsrelay.descriptors import (
    Limit,
    Shortage,
    isLocalError,
    isShortageError,
    raiseLimit,
)
from wsrelay.health.monitor import HealthMonitor
from wsrelay.routing import ConnectionInfo
from wsrelay.service import RelayService
from wsrelay.ws.frontend import Refused

#: The hard limit of open files of this process: a child's cannot be higher.
HARD = resource.getrlimit(resource.RLIMIT_NOFILE)[1]

#: The line the relay logs when it refuses clients for want of descriptors.
SHORTAGE = "new clients with 503"


class FakeRLimit:
    """
    Stands in for the L{resource} module: a soft and a hard limit of open
    files, and the calls that set them.
    """

    RLIMIT_NOFILE = resource.RLIMIT_NOFILE
    RLIM_INFINITY = resource.RLIM_INFINITY

    def __init__(self, soft: int, hard: int) -> None:
        self.limits = (soft, hard)
        self.set: list[tuple[int, int]] = []

    def getrlimit(self, which: int) -> tuple[int, int]:
        """
        @return: The soft and hard limits.
        """
        assert which == self.RLIMIT_NOFILE
        return self.limits

    def setrlimit(self, which: int, limits: tuple[int, int]) -> None:
        """
        Set the soft and hard limits, and remember the call.
        """
        assert which == self.RLIMIT_NOFILE
        self.set.append(limits)
        self.limits = limits


class LimitTests(SynchronousTestCase):
    """
    L{raiseLimit}, L{Limit} and L{isLocalError}.
    """

    def test_raised(self) -> None:
        """
        The soft limit is raised to L{descriptors.DEFAULT_SOFT} when the
        hard one allows; the capacity is what is left after
        L{descriptors.RESERVED}, two descriptors per proxied connection.
        """
        rlimit = FakeRLimit(1024, 65536)
        limit = raiseLimit(0, rlimit)
        self.assertEqual(rlimit.set, [(65536, 65536)])
        self.assertEqual(limit, Limit(1024, 65536, 65536))
        self.assertEqual(limit.budget, 65536 - descriptors.RESERVED)
        self.assertEqual(limit.capacity, (65536 - descriptors.RESERVED) // 2)

    def test_notToAHugeHardLimit(self) -> None:
        """
        With a hard limit of 2**30 (some containers'), the soft limit goes
        to L{descriptors.DEFAULT_SOFT}, or to what C{max_connections}
        needs when that is more, as HAProxy computes its C{maxsock}; not
        to the hard limit.
        """
        rlimit = FakeRLimit(1024, 2**30)
        self.assertEqual(raiseLimit(0, rlimit), Limit(1024, 65536, 2**30))
        self.assertEqual(rlimit.set, [(65536, 2**30)])
        rlimit = FakeRLimit(1024, 2**30)
        limit = raiseLimit(100_000, rlimit)
        self.assertEqual(rlimit.set, [(200_064, 2**30)])
        self.assertIsNone(limit.problem(100_000))

    def test_cappedByHard(self) -> None:
        """
        A hard limit below what is wanted is as far as the soft one goes;
        then the problem says so.
        """
        rlimit = FakeRLimit(1024, 4096)
        limit = raiseLimit(3000, rlimit)
        self.assertEqual(rlimit.set, [(4096, 4096)])
        self.assertIsNotNone(limit.problem(3000))

    def test_neverLowered(self) -> None:
        """
        A soft limit already at the hard one, or above what is wanted, is
        left alone.
        """
        rlimit = FakeRLimit(4096, 4096)
        self.assertEqual(raiseLimit(100, rlimit), Limit(4096, 4096, 4096))
        self.assertEqual(rlimit.set, [])
        rlimit = FakeRLimit(100_000, 2**30)
        self.assertEqual(raiseLimit(100, rlimit), Limit(100_000, 100_000, 2**30))
        self.assertEqual(rlimit.set, [])

    def test_noHardLimit(self) -> None:
        """
        Without a hard limit, the soft one is raised the same way (not to
        infinity, which some systems refuse).
        """
        rlimit = FakeRLimit(256, resource.RLIM_INFINITY)
        limit = raiseLimit(1000, rlimit)
        self.assertEqual(rlimit.set, [(65536, resource.RLIM_INFINITY)])
        self.assertEqual(limit.soft, 65536)
        rlimit = FakeRLimit(256, resource.RLIM_INFINITY)
        raiseLimit(50_000, rlimit)
        self.assertEqual(rlimit.set, [(100_064, resource.RLIM_INFINITY)])

    def test_problem(self) -> None:
        """
        A C{max_connections} fits when its descriptors and the relay's own
        are within the soft limit; otherwise the problem says the numbers
        and what to do.
        """
        limit = Limit(1024, 4096, 4096)
        self.assertIsNone(limit.problem(0))
        self.assertIsNone(limit.problem((4096 - descriptors.RESERVED) // 2))
        problem = limit.problem(3000)
        assert problem is not None
        self.assertIn("3000 connections need 6064 open files", problem)
        self.assertIn("hard limit 4096", problem)
        self.assertIn("ulimit -Hn", problem)

    def test_isLocalError(self) -> None:
        """
        Out of descriptors (the process's or the system's) or of buffers is
        local, however Twisted reports it; a backend that refuses or does
        not answer is not, and neither (by itself) is C{EADDRNOTAVAIL} or a
        failed name lookup.
        """
        for local in [
            ConnectBindError(errno.EMFILE, "Too many open files"),
            getConnectError((errno.ENOBUFS, os.strerror(errno.ENOBUFS))),
            OSError(errno.ENFILE, os.strerror(errno.ENFILE)),
        ]:
            self.assertTrue(isLocalError(local), local)
        for remote in [
            getConnectError((errno.EADDRNOTAVAIL, os.strerror(errno.EADDRNOTAVAIL))),
            DNSLookupError("not found"),
            ConnectionRefusedError(errno.ECONNREFUSED, "refused"),
            getConnectError((errno.EHOSTUNREACH, "unreachable")),
            ConnectError(string="anything"),
            TimeoutError(),
            None,
        ]:
            self.assertFalse(isLocalError(remote), remote)
        self.assertTrue(
            isShortageError(getConnectError((errno.EADDRNOTAVAIL, "no address")))
        )
        self.assertTrue(isShortageError(DNSLookupError("not found")))
        self.assertFalse(isShortageError(ConnectBindError(errno.EMFILE, "files")))


class _FailingEndpoint:
    """
    A client endpoint whose connects fail at once with C{error}.
    """

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.attempts = 0

    def connect(self, factory: object) -> Deferred[Any]:
        """
        @return: A failed L{Deferred}, as a real endpoint's when the connect
            fails at once.
        """
        self.attempts += 1
        return fail(self.error)


class ShortageTests(SynchronousTestCase):
    """
    A connect that fails for want of a local resource, in memory.
    """

    def setUp(self) -> None:
        self.events: list[LogEvent] = []
        self.patch(Shortage, "log", Logger(observer=self.events.append))
        self.clock = Clock()
        config = parseConfig(
            "[relay]\nlisten = tcp:0\n[route:a]\npath = /\nhealth = none\n"
            "backends = ws://127.0.0.1:1/ name=one ws://127.0.0.1:2/ name=two\n",
            "relay.ini",
        )
        self.relay = RelayService(config, MemoryReactorClock(), self.clock)
        (self.route,) = self.relay.routes.routes

    def openUpstream(self) -> Refused:
        """
        @return: How the relay refuses a client whose upstream it opens.
        """
        d = Deferred.fromCoroutine(
            self.relay.connector.openUpstream(
                self.route,
                ConnectionInfo("127.0.0.1", "/", "", ()),
                lambda backend: ("/", []),
                (),
                None,
                self.clock.seconds() + 10,
            )
        )
        refused = self.failureResultOf(d, Refused).value
        assert isinstance(refused, Refused)
        return refused

    def test_notTheBackends(self) -> None:
        """
        When every connect fails with C{EMFILE}, the client gets 503 with
        C{Retry-After} (not 502), no backend counts a failure or goes down,
        and the condition is logged once per interval, not per client.
        """
        endpoints = []
        for backend in self.route.backends:
            backend.endpoint = _FailingEndpoint(
                ConnectBindError(errno.EMFILE, "Too many open files")
            )
            endpoints.append(backend.endpoint)
        for _ in range(20):
            refused = self.openUpstream()
            self.assertEqual(refused.code, 503)
            self.assertIn(("Retry-After", "1"), refused.headers)
        # One connect per client: out of descriptors, the next backend
        # would fail the same way.
        self.assertEqual(sum(e.attempts for e in endpoints), 20)
        for backend in self.route.backends:
            self.assertEqual((backend.healthy, backend.failures), (True, 0))
        self.assertEqual(len(self.events), 1)
        self.assertEqual(self.events[0]["refused"], 1)
        self.assertIn("Too many open files", self.events[0]["why"])
        self.clock.advance(Shortage.interval)
        # The clients refused since the first report.
        self.assertEqual(len(self.events), 2)
        self.assertEqual(self.events[1]["suppressed"], 19)
        self.assertIn("Too many open files", self.events[1]["why"])
        self.openUpstream()
        self.assertEqual(len(self.events), 3)
        self.assertEqual(self.events[2]["refused"], 1)
        self.assertEqual(self.relay.connector.shortage.refused, 21)

    def test_lastBurstReported(self) -> None:
        """
        Refusals after the last report are reported at the end of the
        interval, even when none follows; a stopping relay reports them at
        once and leaves no timer behind.
        """
        shortage = Shortage(self.clock, Limit(1024, 1024, 4096))
        for _ in range(5):
            shortage.occurred("no descriptor")
        self.assertEqual(len(self.events), 1)
        self.clock.advance(Shortage.interval - 0.5)
        self.assertEqual(len(self.events), 1)
        self.clock.advance(0.5)
        self.assertEqual(len(self.events), 2)
        self.assertEqual(
            (self.events[1]["suppressed"], self.events[1]["soft"]), (4, 1024)
        )
        self.assertIn("refused 4 more new clients", formatEvent(self.events[1]))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        for _ in range(3):
            self.relay.connector.shortage.occurred("no descriptor")
        self.successResultOf(self.relay.stopService())
        self.assertEqual(self.events[-1]["suppressed"], 2)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(shortage.refused, 5)

    def test_realFailureStillCounts(self) -> None:
        """
        A backend that refuses the connection is still a backend failure
        (502); the other's local failure is not counted, and the client is
        told to come back (503).
        """
        one, two = self.route.backends
        one.endpoint = _FailingEndpoint(
            ConnectionRefusedError(errno.ECONNREFUSED, "refused")
        )
        two.endpoint = _FailingEndpoint(
            ConnectBindError(errno.ENFILE, "Too many open files in system")
        )
        refused = self.openUpstream()
        self.assertEqual(refused.code, 503)
        self.assertEqual((one.failures, two.failures), (1, 0))
        two.endpoint = _FailingEndpoint(
            ConnectionRefusedError(errno.ECONNREFUSED, "refused")
        )
        self.clock.advance(Shortage.interval)
        self.assertEqual(self.openUpstream().code, 502)

    def test_shortageErrors(self) -> None:
        """
        C{EADDRNOTAVAIL} (a C{ws://[::1]} backend on a host without IPv6)
        and a failed name lookup are the backend's failures while the relay
        has descriptors to spare: 502, and each backend counts one.  While
        it is short of them (no socket can be opened), they are the
        relay's: 503 with C{Retry-After}, nothing counted, and no other
        backend tried.
        """
        one, two = self.route.backends
        for error in [
            getConnectError((errno.EADDRNOTAVAIL, "no local address")),
            DNSLookupError("address 'backend.example' not found"),
        ]:
            one.failures = two.failures = 0
            one.endpoint = _FailingEndpoint(error)
            two.endpoint = _FailingEndpoint(error)
            self.relay.connector.shortage = Shortage(
                self.clock, None, canOpen=lambda: True
            )
            self.assertEqual(self.openUpstream().code, 502, error)
            self.assertEqual((one.failures, two.failures), (1, 1), error)
            self.relay.connector.shortage = Shortage(
                self.clock, None, canOpen=lambda: False
            )
            refused = self.openUpstream()
            self.assertEqual(refused.code, 503, error)
            self.assertIn(("Retry-After", "1"), refused.headers)
            self.assertEqual((one.failures, two.failures), (1, 1), error)
            self.assertEqual(one.endpoint.attempts + two.endpoint.attempts, 3)

    def test_shortAfterExhaustion(self) -> None:
        """
        After a connect failed with C{EMFILE}, the relay counts as short of
        descriptors for L{Shortage.interval}: a failed name lookup in that
        time is not the backend's; after it, it is.
        """
        one, two = self.route.backends
        for backend in (one, two):
            backend.endpoint = _FailingEndpoint(
                ConnectBindError(errno.EMFILE, "Too many open files")
            )
        self.relay.connector.shortage = Shortage(self.clock, None, canOpen=lambda: True)
        self.assertEqual(self.openUpstream().code, 503)
        for backend in (one, two):
            backend.endpoint = _FailingEndpoint(DNSLookupError("lookup failed"))
        self.clock.advance(Shortage.interval / 2)
        self.assertEqual(self.openUpstream().code, 503)
        self.assertEqual((one.failures, two.failures), (0, 0))
        self.clock.advance(Shortage.interval / 2)
        self.assertEqual(self.openUpstream().code, 502)
        self.assertEqual((one.failures, two.failures), (1, 1))

    def test_canOpen(self) -> None:
        """
        L{descriptors.canOpen} says whether a socket can be opened: yes
        here, no when the soft limit leaves no descriptor free.
        """
        self.assertTrue(descriptors.canOpen())
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1, hard))
        spare = []
        try:
            while True:
                spare.append(os.open(os.devnull, os.O_RDONLY))
        except OSError as e:
            self.assertEqual(e.errno, errno.EMFILE)
        try:
            self.assertFalse(descriptors.canOpen())
        finally:
            for fd in spare:
                os.close(fd)

    def test_healthCheck(self) -> None:
        """
        An active check that cannot even make its socket records nothing:
        the backend neither fails nor passes.
        """
        (backend, _) = self.route.backends
        backend.endpoint = _FailingEndpoint(
            ConnectBindError(errno.EMFILE, "Too many open files")
        )
        monitor = HealthMonitor(
            "a", (backend,), tcp.build({}, None), self.clock, 2, 1, 1, 1
        )
        self.successResultOf(monitor.check(backend))
        self.assertEqual((backend.healthy, backend.failures), (True, 0))
        self.assertIsNone(backend.lastCheck)


class ReloadTests(SynchronousTestCase):
    """
    A reload checks C{max_connections} against the limit too.
    """

    def test_reloadRejected(self) -> None:
        """
        A reloaded file whose C{max_connections} does not fit in the limit
        is rejected, naming the key; the running configuration stays.
        """
        path = os.path.join(tempfile.mkdtemp(), "relay.ini")
        text = (
            "[relay]\nlisten = tcp:0\nmax_connections = {}\n"
            "[route:a]\npath = /\nbackends = ws://127.0.0.1:1/\n"
        )
        with open(path, "w") as f:
            f.write(text.format(32))
        relay = RelayService(
            loadConfig(path), MemoryReactorClock(), descriptors=Limit(128, 128, 128)
        )
        with open(path, "w") as f:
            f.write(text.format(33))
        error = self.failureResultOf(relay.reload(), ConfigError).value
        assert isinstance(error, ConfigError)
        self.assertEqual((error.section, error.key), ("relay", "max_connections"))
        self.assertEqual(relay.config.maxConnections, 32)


def closedByPeer(s: socket.socket) -> bool:
    """
    @return: Whether the peer closed or reset the non-blocking socket C{s}.
    """
    try:
        return s.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


#: A relay with one proxy route to an echo backend (its URL in C{{url}}).
PROXY = "[relay]\n[route:echo]\npath = /echo\nbackends = {url} name=echo\n"


class ProcessTests(SynchronousTestCase):
    """
    C{twistd wsrelay} started with a low limit of open files.
    """

    def runScenario(self, scenario: Coroutine[Any, Any, None]) -> None:
        """
        Run C{scenario} in a new event loop.
        """
        asyncio.run(scenario)

    async def relayTo(
        self, openFiles: tuple[int, int], settings: str = ""
    ) -> tuple[RelayProcess, BackendProcess]:
        """
        Start an echo backend and a relay to it with C{openFiles} as its
        soft and hard C{RLIMIT_NOFILE}.

        @param settings: More lines of the C{[relay]} section.
        """
        backend = BackendProcess("echo")
        await backend.start()
        text = PROXY.format(url=backend.url).replace(
            "[relay]\n", "[relay]\n" + settings
        )
        relay = RelayProcess(text, openFiles)
        try:
            await relay.start()
        except BaseException:
            await backend.stop()
            raise
        return relay, backend

    async def finish(
        self,
        relay: RelayProcess,
        backend: BackendProcess,
        clients: list[ClientConnection],
    ) -> None:
        """
        Close C{clients}, then stop the relay and the backend.
        """
        for c in clients:
            await c.close()
        await relay.stop()
        await backend.stop()

    async def refusal(self, url: str) -> Any:
        """
        @return: The response of the relay's refusal of a client to C{url}
            (the test fails if the client is relayed).
        """
        with self.assertRaises(InvalidStatus) as refused:
            await openClient(url)
        return refused.exception.response

    async def echoed(self, clients: list[ClientConnection]) -> None:
        """
        Each client gets the echo of a message of its own.
        """
        for i, c in enumerate(clients):
            await c.send(f"m{i}")
        for i, c in enumerate(clients):
            self.assertEqual(await asyncio.wait_for(c.recv(), 10), f"m{i}")

    def test_raised(self) -> None:
        """
        Started with a soft limit of 64 and a hard one of 1024, the relay
        raises its soft limit to 1024, logs what that leaves room for, and
        holds more connections than 64 descriptors would allow.
        """
        if HARD < 1024:
            self.skipTest(f"the hard limit of open files here is {HARD}")

        async def scenario() -> None:
            relay, backend = await self.relayTo((64, 1024))
            clients: list[ClientConnection] = []
            try:
                capacity = (1024 - descriptors.RESERVED) // 2
                self.assertIn(
                    f"open files: limit 1024 (raised from 64; hard limit 1024):"
                    f" room for about {capacity} proxied connections",
                    relay.logText(),
                )
                url = f"ws://127.0.0.1:{relay.port}/echo"
                for _ in range(40):
                    clients.append(await openClient(url))
                await self.echoed(clients)
                self.assertGreater(relay.descriptors(), 64)
            finally:
                await self.finish(relay, backend, clients)

        self.runScenario(scenario())

    def test_beyondCapacity(self) -> None:
        """
        With a hard limit of 128 too, the relay takes as many clients as
        its limit leaves room for; every client beyond gets 503 with
        C{Retry-After}, the condition is logged once (not per client), the
        backend is not counted as failing, the open connections go on, and
        a client that comes once one left is relayed again.
        """

        async def scenario() -> None:
            relay, backend = await self.relayTo((128, 128))
            clients: list[ClientConnection] = []
            try:
                capacity = (128 - descriptors.RESERVED) // 2
                url = f"ws://127.0.0.1:{relay.port}/echo"
                for _ in range(capacity):
                    clients.append(await openClient(url))
                await self.echoed(clients)
                started = time.monotonic()
                for _ in range(10):
                    response = await self.refusal(url)
                    self.assertEqual(response.status_code, 503)
                    self.assertEqual(response.headers["Retry-After"], "1")
                elapsed = time.monotonic() - started
                await self.echoed(clients)
                await clients.pop().close()
                clients.append(await openClient(url))
                await self.echoed(clients)
                log = relay.logText()
                reports = [line for line in log.splitlines() if SHORTAGE in line]
                self.assertGreaterEqual(len(reports), 1, log[-3000:])
                # Per interval: the first refusal, and one line counting the rest.
                self.assertLessEqual(
                    len(reports), 2 * (1 + int(elapsed // Shortage.interval)), reports
                )
                self.assertNotIn("backend echo failed", log)
                self.assertNotIn("is down", log)
                self.assertNotIn("Too many open files", log)
            finally:
                await self.finish(relay, backend, clients)

        self.runScenario(scenario())

    def test_silentClients(self) -> None:
        """
        Clients that connect and send nothing cannot take the last
        descriptors: beyond half of the relay's reserve they are dropped
        as they come, so the kernel's C{accept} never fails (Twisted would
        log each connection it then closes), the open connections go on,
        and once the silent ones left, new clients get 503 again.
        """

        async def scenario() -> None:
            # Silent clients are not dropped for their silence in the test.
            relay, backend = await self.relayTo((128, 128), "handshake_timeout = 120\n")
            clients: list[ClientConnection] = []
            silent: list[socket.socket] = []
            try:
                capacity = (128 - descriptors.RESERVED) // 2
                url = f"ws://127.0.0.1:{relay.port}/echo"
                for _ in range(capacity):
                    clients.append(await openClient(url))
                before = relay.descriptors()
                # Room to be read and answered: the budget and half the
                # reserve, less what the proxied connections hold.
                budget = 128 - descriptors.RESERVED
                room = budget + descriptors.RESERVED // 2 - 2 * capacity
                # A client dropped as it comes is reset (the relay aborts
                # it); that can reach the client before its connect
                # returned, and then counts as dropped.
                reset = 0
                for _ in range(room + 20):
                    try:
                        s = socket.create_connection(("127.0.0.1", relay.port), 10)
                    except ConnectionResetError:
                        reset += 1
                        continue
                    s.setblocking(False)
                    silent.append(s)

                def dropped() -> list[bool]:
                    return [closedByPeer(s) for s in silent]

                await waitUntil(
                    lambda: reset + sum(dropped()) >= 20, "silent clients dropped"
                )
                self.assertEqual(dropped().count(False), room)
                await self.echoed(clients)
                for s in silent:
                    s.close()
                await waitUntil(
                    lambda: relay.descriptors() <= before, "silent clients gone"
                )
                self.assertEqual((await self.refusal(url)).status_code, 503)
                log = relay.logText()
                self.assertNotIn("EMFILE", log)
                self.assertNotIn("Could not accept", log)
                self.assertLessEqual(log.count(SHORTAGE), 4, log[-3000:])
            finally:
                for s in silent:
                    s.close()
                await self.finish(relay, backend, clients)

        self.runScenario(scenario())

    def test_maxConnectionsCannotFit(self) -> None:
        """
        A C{max_connections} that the hard limit cannot hold stops the
        start: status 1 and one line naming the key and the numbers.
        """
        directory = tempfile.mkdtemp()
        path = os.path.join(directory, "relay.ini")
        with open(path, "w") as f:
            f.write(
                "[relay]\nlisten = tcp:0:interface=127.0.0.1\n"
                "max_connections = 1000\n"
                "[route:a]\npath = /\nbackends = ws://127.0.0.1:1/\n"
            )

        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (128, 256))

        done = subprocess.run(
            [TWISTD, "--pidfile=", "-n", "wsrelay", "--config", path],
            capture_output=True,
            text=True,
            timeout=60,
            preexec_fn=limit,
        )
        self.assertEqual(done.returncode, 1, done.stdout + done.stderr)
        self.assertEqual(done.stdout, "")
        self.assertEqual(
            done.stderr.splitlines(),
            [
                f"wsrelay: {path}: [relay] max_connections: 1000 connections need"
                " 2064 open files (2 each and 64 for the relay), but the limit is"
                " 256 (hard limit 256): raise the hard limit (ulimit -Hn,"
                " LimitNOFILE= for systemd) or lower max_connections"
            ],
        )
