"""
L{bench.soak}'s accounting of the clients' closes: which are errors, and
the line that breaks them down by code.
"""

from __future__ import annotations

import argparse

from twisted.trial.unittest import SynchronousTestCase

from bench import soak, soakplot

#: Access events as the relay logs them: a C{/close} session dropped
#: without a close frame, one closed with 1014, a C{/reconnect} session
#: (whose route name is not C{close}) with no close code.
LOG = (
    "2026-12-02T11:49:36+0000 [wsrelay.proxy.session.ProxySession#info] 127.0.0.1"
    " close 127.0.0.1:46485 2.703s in 137/2192685 out 113/1808565"
    " close None by backend\n"
    "2026-12-02T11:49:36+0000 [wsrelay.proxy.session.ProxySession#info] 127.0.0.1"
    " close 127.0.0.1:46485 0.968s in 83/1328239 out 82/1312236"
    " close 1014 by backend\n"
    "2026-12-02T11:49:37+0000 [wsrelay.proxy.session.ProxySession#info] 127.0.0.1"
    " reconnect 127.0.0.1:46485 1.000s in 1/1 out 1/1 close None by backend\n"
)


class SoakClosesTests(SynchronousTestCase):
    """
    A 1006 on C{/close} is an error unless the relay logged that it dropped
    that many sessions mid-frame; the closes line gives every code.
    """

    def test_droppedMidFrame(self) -> None:
        """
        Only the C{/close} sessions the relay ended without a close code,
        its backend gone, are counted as dropped mid-frame.
        """
        self.assertEqual(soak.droppedMidFrame(LOG), 1)
        self.assertEqual(soak.droppedMidFrame(""), 0)

    def test_errorsExcuseDropped(self) -> None:
        """
        Up to C{dropped} closes 1006 are not errors; more 1006 than that,
        and any other code but the allowed one, are.
        """
        counts = soak.RouteCounts(closes={1014: 10, 1006: 3, 1011: 1})
        self.assertEqual(counts.errors(1014), 4)
        self.assertEqual(counts.errors(1014, dropped=2), 2)
        self.assertEqual(counts.errors(1014, dropped=5), 1)

    def test_closesLine(self) -> None:
        """
        The line gives each route's close codes, most frequent first, and
        the sessions dropped mid-frame; the soak table's reader skips it.
        """
        options = argparse.Namespace(interval=0.05)
        routes = [
            soak.Route("close", "ws://x/close", options, 1014),
            soak.Route("reconnect", "ws://x/reconnect", options, None),
            soak.Route("feed", "ws://x/feed", options, None),
        ]
        routes[0].counts.closes.update({1006: 2, 1014: 12})
        line = soak.closesLine(routes, 2)
        self.assertEqual(
            line,
            "closes: close {1014: 12, 1006: 2}; reconnect {}; feed {};"
            " dropped mid-frame on close 2",
        )
        width = len(soak.HEADER.split())
        row = " 56.0" + " 0" * (width - 2)
        table = f"{soak.HEADER}\nstart{row}\n{line}\n    1{row}\n"
        parsed = soakplot.parseSoak(table)
        self.assertEqual(parsed.minutes, [0.0, 1.0])
