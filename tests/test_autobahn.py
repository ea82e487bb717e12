"""
The adjustment wsrelay makes to Autobahn.
"""

from __future__ import annotations

import pprint

import autobahn.twisted.websocket
import autobahn.websocket.protocol
from autobahn import util
from twisted.trial.unittest import SynchronousTestCase

import wsrelay.legs  # noqa: F401 (installs the adjustment)
from wsrelay._autobahn import LazyCall, LazyFormat


class LazyFormatTests(SynchronousTestCase):
    """
    Autobahn's debug formatting happens only when a line is rendered.
    """

    def test_installed(self) -> None:
        """
        Importing the relay's legs makes Autobahn's C{pformat}, C{hltype}
        and C{hlval} lazy, and they render as the originals do.
        """
        self.assertIs(autobahn.websocket.protocol.pformat, LazyFormat)
        method = self.test_installed
        for module in (autobahn.websocket.protocol, autobahn.twisted.websocket):
            hltype = module.hltype(method)  # type: ignore[attr-defined]
            hlval = module.hlval(42, color="green")  # type: ignore[attr-defined]
            self.assertIsInstance(hltype, LazyCall)
            self.assertEqual(str(hltype), util.hltype(method))
            self.assertEqual(f"{hlval}", util.hlval(42, color="green"))

    def test_rendersLikePformat(self) -> None:
        """
        As a string, in a format string or as a repr, it is what
        C{pformat} gives; it is a C{str}, so it may stand for one.
        """
        value = [("openHandshakeTimeout", 5, "Factory")] * 4
        lazy = LazyFormat(value)
        expected = pprint.pformat(value)
        self.assertEqual(
            (str(lazy), f"{lazy}", "{a}".format_map({"a": lazy}), repr(lazy)),
            (expected,) * 4,
        )
        self.assertIsInstance(lazy, str)

    def test_lazy(self) -> None:
        """
        Nothing is formatted until asked for.
        """

        class Loud:
            def __repr__(self) -> str:
                raise AssertionError("formatted")

        LazyFormat([Loud()])
