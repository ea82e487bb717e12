"""
The adjustment wsrelay makes to Autobahn.
"""

from __future__ import annotations

import pprint

import autobahn.websocket.protocol
from twisted.trial.unittest import SynchronousTestCase

import wsrelay.legs  # noqa: F401 (installs the adjustment)
from wsrelay._autobahn import LazyFormat


class LazyFormatTests(SynchronousTestCase):
    """
    Autobahn's debug formatting happens only when a line is rendered.
    """

    def test_installed(self) -> None:
        """
        Importing the relay's legs makes Autobahn's C{pformat} lazy.
        """
        self.assertIs(autobahn.websocket.protocol.pformat, LazyFormat)

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
