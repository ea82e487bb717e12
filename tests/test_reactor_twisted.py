"""
Twisted's own reactor tests, run against L{wsrelay.reactor.RelayReactor}.

Each of Twisted's C{ReactorBuilder} test classes makes one test case class
per reactor in its C{_reactors}; these subclasses list wsrelay's reactor
only.  They are the parts of Twisted's suite that need nothing beyond the
test extras: system events, descriptor sets, timed calls and threads.
Twisted's TCP, UNIX, UDP and TLS reactor tests need PyHamcrest; with it
installed, run them as in docs/operations.md ("Reactor").
"""

from __future__ import annotations

from typing import Any

from twisted.internet.test.test_core import SystemEventTestsBuilder
from twisted.internet.test.test_fdset import ReactorFDSetTestsBuilder
from twisted.internet.test.test_threads import ThreadTestsBuilder
from twisted.internet.test.test_time import TimeTestsBuilder

#: The reactors these tests run against.
RELAY = ["wsrelay.reactor.RelayReactor"]


class RelaySystemEventTests(SystemEventTestsBuilder):
    """
    Startup and shutdown events, running and stopping.
    """

    _reactors = RELAY


class RelayFDSetTests(ReactorFDSetTestsBuilder):
    """
    Adding and removing readers and writers, and lost descriptors.
    """

    _reactors = RELAY

    def test_lostFileDescriptor(self) -> None:
        """
        Twisted skips this test for L{EPollReactor} (by its class name): a
        closed descriptor leaves the epoll set without an event, so the
        reactor never learns of it.  L{RelayReactor} watches descriptors
        as L{EPollReactor} does.
        """

    test_lostFileDescriptor.skip = (  # type: ignore[attr-defined]
        "epoll cannot detect a lost descriptor (Twisted skips it for EPollReactor)"
    )


class RelayThreadTests(ThreadTestsBuilder):
    """
    Calls from threads, the thread pool and C{callFromThread}.
    """

    _reactors = RELAY


class RelayTimeTests(TimeTestsBuilder):
    """
    Timed calls.
    """

    _reactors = RELAY


_cases: dict[str, Any] = {}
for _builder in (
    RelaySystemEventTests,
    RelayFDSetTests,
    RelayThreadTests,
    RelayTimeTests,
):
    _cases.update(_builder.makeTestCaseClasses())
globals().update(_cases)
del _builder
