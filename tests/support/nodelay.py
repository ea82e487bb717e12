"""
The check both lean transports' tests make of C{TCP_NODELAY}.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase


def assertNoDelayKept(
    case: SynchronousTestCase, transport: Any, calls: list[bool]
) -> None:
    """
    C{transport}'s socket has C{TCP_NODELAY} from its making: turning it on
    again makes no call to Twisted's C{setTcpNoDelay} (recorded in C{calls}),
    and turning it off and on does, each time.
    """
    case.assertTrue(transport.getTcpNoDelay())
    transport.setTcpNoDelay(True)
    case.assertEqual(calls, [])
    transport.setTcpNoDelay(False)
    case.assertFalse(transport.getTcpNoDelay())
    transport.setTcpNoDelay(True)
    case.assertTrue(transport.getTcpNoDelay())
    case.assertEqual(calls, [False, True])
