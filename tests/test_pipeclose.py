"""
The end of a passthrough session (L{wsrelay.proxy.pipe.Pipe}): the close
handshake's clock, shared by the relay's pipes.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.support.passthrough import PipeLeg, PipeSession
from wsrelay.deadlines import Deadlines
from wsrelay.proxy.pipe import Pipe
from wsrelay.ws.framing import closeFrame


class ClientFactory:
    """
    Stands for the client leg's factory: its deadlines.
    """

    def __init__(self, deadlines: Deadlines) -> None:
        self.deadlines = deadlines


class CloseClockTests(SynchronousTestCase):
    """
    C{close_timeout} is timed in the queue of the client leg's factory's
    L{Deadlines}: every pipe closing at the same time shares one timer.
    """

    def pipes(self, count: int) -> tuple[list[Pipe], Deadlines, Clock]:
        """
        Pipes between fake legs with a C{close_timeout} of 5 seconds, each
        client leg's factory with the same deadlines on the pipes' clock.
        """
        clock = Clock()
        deadlines = Deadlines(clock)
        pipes = []
        for _ in range(count):
            f, up = PipeLeg(), PipeLeg()
            f.factory = ClientFactory(deadlines)  # type: ignore[attr-defined]
            pipes.append(Pipe(PipeSession(clock, 5.0), f, up))  # type: ignore[arg-type]
        return pipes, deadlines, clock

    def test_oneTimer(self) -> None:
        """
        Three clients' close frames start three deadlines and one timer;
        each pipe that ends (both legs gone) cancels its own, and the last
        cancels the timer.
        """
        pipes, deadlines, clock = self.pipes(3)
        for pipe in pipes:
            pipe.fromClient.dataReceived(closeFrame(1000, b"", mask=True))
        self.assertEqual(deadlines.queue(5.0).__len__(), 3)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        for n, pipe in enumerate(pipes):
            for leg in (pipe.upstream, pipe.frontend):
                leg.transport = None
                pipe.legClosed(leg)
            self.assertEqual(deadlines.pending(), 2 - n)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_timeout(self) -> None:
        """
        Pipes whose backends never answer are dropped, both legs, when
        their C{close_timeout} passes, each at its own time.
        """
        pipes, deadlines, clock = self.pipes(2)
        pipes[0].fromClient.dataReceived(closeFrame(1000, b"", mask=True))
        clock.advance(1)
        pipes[1].fromClient.dataReceived(closeFrame(1000, b"", mask=True))
        clock.advance(3.9)
        self.assertFalse(pipes[0].frontend.transport.lost)
        clock.advance(0.1)
        self.assertTrue(pipes[0].frontend.transport.lost)
        self.assertTrue(pipes[0].upstream.transport.lost)
        self.assertFalse(pipes[1].upstream.transport.lost)
        clock.advance(1)
        self.assertTrue(pipes[1].frontend.transport.lost)
        self.assertTrue(pipes[1].upstream.transport.lost)
        self.assertEqual(deadlines.pending(), 0)

    def test_otherClock(self) -> None:
        """
        A factory whose deadlines run on another clock is not used: the
        pipe times C{close_timeout} on its own clock.
        """
        pipes, _, clock = self.pipes(1)
        pipes[0].frontend.factory = ClientFactory(Deadlines(Clock()))  # type: ignore[attr-defined]
        pipes[0].fromClient.dataReceived(closeFrame(1000, b"", mask=True))
        clock.advance(5)
        self.assertTrue(pipes[0].upstream.transport.lost)
