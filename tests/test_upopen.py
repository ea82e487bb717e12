"""
Tests for the passthrough open from the session's making to the pipe
(L{wsrelay.proxy.session.openPlain}, L{wsrelay.connector.Connector.open}
with a C{then}): the outcomes reach the client's leg through the first
attempt's own callback, and passive health hears of an opened connection
only when it ends a run of failures.
"""

from __future__ import annotations

from typing import Any
from unittest import skipUnless

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import NotConnectingError
from twisted.trial.unittest import SynchronousTestCase

from tests.support.memory import BACKEND_A, BACKEND_B, RELAY_ADDRESS, Network
from tests.support.objects import PROBES_DICT, dictMade
from wsrelay.proxy.opening import UpstreamOpener
from wsrelay.routing import Backend
from wsrelay.ws import connecting
from wsrelay.ws._autobahn import FIRED
from wsrelay.ws.plainleg import CLOSED, PlainUpstream


def _config(more: str = "") -> str:
    """
    @return: A configuration with the passthrough route C{/chat} to
        backends A and B, the first tried first, and C{more}.
    """
    return (
        "[relay]\nlisten = tcp:0\nping_interval = 0\n"
        "[route:chat]\npath = /chat\ndata_path = passthrough\nbalancer = first\n"
        f"{more}"
        f"backends = ws://{BACKEND_A[0]}:{BACKEND_A[1]}/base name=a\n"
        f"    ws://{BACKEND_B[0]}:{BACKEND_B[1]}/base name=b\n"
    )


def _opened(case: SynchronousTestCase) -> Any:
    """
    Open a plain client through the passthrough route to the first
    backend that accepts it.

    @return: Its session, which has its pipe.
    """
    network = Network(case, _config())
    client = network.connectClient()
    network.flush()
    network.acceptUpstream()
    network.flush()
    case.assertTrue(client.opened, client.raw)
    (session,) = network.relay.sessions
    case.assertIsNotNone(session.pipe)
    return session


class PlainOpenTests(SynchronousTestCase):
    """
    A plain client's session opens (or is refused) through the opening's
    first callback, whichever attempt settles it.
    """

    def test_firstAttempt(self) -> None:
        """
        The first backend accepts: the client gets its 101 and the session
        its pipe, to that backend.
        """
        session = _opened(self)
        self.assertEqual(session.lastBackend, "a")

    def test_laterAttempt(self) -> None:
        """
        The first backend refuses the connection: the next one is tried
        (L{Connector._tryAll}), and its open reaches the client's leg just
        the same.
        """
        network = Network(self, _config())
        client = network.connectClient()
        network.flush()
        network.failUpstream()
        network.flush()
        self.assertFalse(client.opened)
        self.assertEqual(network.pendingConnects(), [BACKEND_B])
        network.acceptUpstream()
        network.flush()
        self.assertTrue(client.opened, client.raw)
        (session,) = network.relay.sessions
        self.assertIsNotNone(session.pipe)
        self.assertEqual(session.lastBackend, "b")

    def test_refused(self) -> None:
        """
        No backend can be reached: the client is refused with a 502, and no
        session is left.
        """
        network = Network(self, _config())
        client = network.connectClient()
        network.flush()
        network.failUpstream()
        network.flush()
        network.failUpstream()
        network.flush()
        self.assertFalse(client.opened)
        self.assertTrue(b"".join(client.raw).startswith(b"HTTP/1.1 502 "), client.raw)
        self.assertEqual(list(network.relay.sessions), [])


class PassiveSuccessTests(SynchronousTestCase):
    """
    The route's monitor hears of an opened connection only when the
    backend has a run of failures to end.
    """

    def test_onlyAfterFailures(self) -> None:
        """
        A connection to a backend with no failures in a row does not call
        the monitor's C{succeeded}; one after a failure does, which ends
        the run.
        """
        network = Network(self, _config("fall = 3\n"))
        route = network.relay.routes.routes[0]
        a = route.backends[0]
        heard: list[Backend] = []
        succeeded = route.monitor.succeeded

        def recording(backend: Backend) -> Any:
            heard.append(backend)
            return succeeded(backend)

        self.patch(route.monitor, "succeeded", recording)
        network.openSession()
        self.assertEqual((heard, a.failuresInRow), ([], 0))

        client = network.connectClient()
        network.flush()
        network.failUpstream()
        network.flush()
        self.assertEqual(a.failuresInRow, 1)
        network.acceptUpstream()
        network.flush()
        self.assertTrue(client.opened)
        self.assertEqual(heard, [])

        client = network.connectClient()
        network.flush()
        network.acceptUpstream()
        network.flush()
        self.assertTrue(client.opened)
        self.assertEqual((heard, a.failuresInRow), ([a], 0))
        self.assertTrue(a.healthy)


class HeldLegTests(SynchronousTestCase):
    """
    A plain upstream leg keeps its attributes without a C{__dict__} from
    its making to the end of its connection.
    """

    @skipUnless(PROBES_DICT, "probes CPython 3.11's object layout")
    def test_closedWithoutDictionary(self) -> None:
        """
        Once its backend is gone, the leg has let go of its session, its
        client's leg, its pipe's direction and its C{opened} (each reads as
        its class default), and its C{__dict__} was never made.  (Through a
        subclass of its own: see
        L{tests.test_plainaccept.HeldLegTests.test_plainUpstreamRightSized}.)
        """

        class Fresh(PlainUpstream):
            pass

        self.patch(connecting, "PlainUpstream", Fresh)
        network = Network(self, _config())
        client = network.connectClient()
        network.flush()
        _, pump = network.acceptUpstream()
        network.flush()
        self.assertTrue(client.opened)
        (session,) = network.relay.sessions
        up = session.upstream
        self.assertIsInstance(up, Fresh)
        self.assertIsNotNone(up.dataPath)
        network.vanish(pump)
        network.flush()
        self.assertEqual(up.state, CLOSED)
        self.assertEqual((up.listener, up.target, up.dataPath), (None, None, None))
        self.assertIs(up.opened, FIRED)
        self.assertFalse(dictMade(up))


class DirectSettleTests(SynchronousTestCase):
    """
    On a plain client's first attempt, the plain leg settles its attempt
    itself as it opens (L{connecting._Attempt.legOpened}): the opening's
    L{Deferred} does not fire then, but still fails and is cancelled as
    ever.
    """

    def _keepOpenings(self) -> list[Deferred[Any]]:
        """
        @return: The L{Deferred}s L{UpstreamOpener.start} returns from now
            on, as they are returned.
        """
        kept: list[Deferred[Any]] = []
        start = UpstreamOpener.start

        def keeping(opener: UpstreamOpener, *args: Any) -> Deferred[Any]:
            d = start(opener, *args)
            kept.append(d)
            return d

        self.patch(UpstreamOpener, "start", keeping)
        return kept

    def test_openedUnfired(self) -> None:
        """
        The client gets its 101 and its pipe while the opening's
        L{Deferred} never fires; the leg holds neither it nor what settled
        it.
        """
        openings = self._keepOpenings()
        session = _opened(self)
        (opening,) = openings
        self.assertNoResult(opening)
        up = session.upstream
        self.assertIs(up.opened, FIRED)
        self.assertIsNone(up._settle)

    def test_timeoutStillFails(self) -> None:
        """
        An attempt whose backend never answers still times out: the
        opening fails, and the client is refused with a 504.
        """
        openings = self._keepOpenings()
        network = Network(
            self,
            "[relay]\nlisten = tcp:0\nping_interval = 0\nconnect_timeout = 2\n"
            "handshake_timeout = 3\n"
            "[route:chat]\npath = /chat\ndata_path = passthrough\n"
            f"backends = ws://{BACKEND_A[0]}:{BACKEND_A[1]}/base\n",
        )
        client = network.connectClient()
        network.flush()
        network.advance(2.5)
        network.flush()
        self.assertFalse(client.opened)
        self.assertTrue(b"".join(client.raw).startswith(b"HTTP/1.1 504 "), client.raw)
        (opening,) = openings
        self.assertIsNone(self.successResultOf(opening))
        self.assertEqual(list(network.relay.sessions), [])

    def test_faultBeforeAttach(self) -> None:
        """
        A fault in the connector's own bookkeeping as the first attempt's
        leg opens does not leave the client unanswered: it gets a 500, the
        opened upstream is closed, the session ends, and a later timeout or
        cancel of the settled attempt does not reach Twisted's connector
        (which raises once it is connected).
        """
        network = Network(self, _config())
        route = network.relay.routes.routes[0]
        route.backends[0].failuresInRow = 1

        def broken(backend: Backend) -> None:
            raise RuntimeError("monitor broke")

        self.patch(route.monitor, "succeeded", broken)
        client = network.connectClient()
        network.flush()
        host, port, factory, connector = network._nextConnect()

        def stopConnecting() -> None:
            raise NotConnectingError("we're not trying to connect")

        connector.stopConnecting = stopConnecting
        address = IPv4Address("TCP", host, port)
        upstream = factory.buildProtocol(address)
        backend = network.backends[(host, port)].buildProtocol(RELAY_ADDRESS)
        network.pair(backend, upstream, address, RELAY_ADDRESS)
        network.flush()
        self.assertTrue(b"".join(client.raw).startswith(b"HTTP/1.1 500 "), client.raw)
        self.assertEqual(upstream.state, CLOSED)
        self.assertEqual(list(network.relay.sessions), [])
        network.advance(60)
        network.flush()
        self.assertEqual(list(network.relay.sessions), [])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
