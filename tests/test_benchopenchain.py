"""
C{bench/openchain.py}, the passthrough open chain in isolation, and the
reading of valgrind's counts in C{bench/instructions.py}: each step runs on
the relay's objects as they are now, so that the tools behind issue 16's
instruction counts cannot rot between the sessions that use them.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from bench import instructions, openchain


class ChainTests(SynchronousTestCase):
    """
    L{openchain.Chain}: each connection goes as far as its step.
    """

    def test_head(self) -> None:
        """
        Up to C{head}, the client's head is read and the upstream's connect
        asked for, and nothing is answered yet.
        """
        chain = openchain.Chain(openchain.STEPS.index("head"))
        leg, transport, upstream = chain.one()
        self.assertEqual(len(chain.reactor.tcpClients), 1)
        self.assertEqual(transport.out, [])
        self.assertIsNone(upstream)

    def test_upstream(self) -> None:
        """
        Up to C{upstream}, the upstream leg wrote its request to the
        backend, and the client is not answered yet.
        """
        chain = openchain.Chain(openchain.STEPS.index("upstream"))
        leg, transport, upstream = chain.one()
        request = b"".join(upstream.transport.out)
        self.assertTrue(request.startswith(b"GET /base HTTP/1.1\r\n"), request)
        self.assertEqual(transport.out, [])

    def test_open(self) -> None:
        """
        The whole chain answers the client with a 101 and starts the pipe;
        L{openchain.Chain.check} says so, and a round of timing keeps every
        connection it opened until it is measured.
        """
        chain = openchain.Chain(openchain.STEPS.index("open"))
        leg, transport, upstream = chain.one()
        self.assertTrue(transport.out[-1].startswith(b"HTTP/1.1 101 "))
        self.assertIsNotNone(leg.session.pipe)
        chain.check()
        [perConnection] = chain.time(5, 1)
        self.assertGreater(perConnection, 0)
        self.assertEqual(len(chain.relay.registry.sessions), 0)


class InstructionsTests(SynchronousTestCase):
    """
    Reading valgrind's output.
    """

    def test_refs(self) -> None:
        """
        Cachegrind's summary line gives the instruction count, its commas
        dropped.
        """
        stderr = b"==1== \n==1== I   refs:      2,499,124,589\n"
        match = instructions._REFS.search(stderr)
        assert match is not None
        self.assertEqual(int(match.group(1).replace(b",", b"")), 2499124589)
