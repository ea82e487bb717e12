# -*- test-case-name: tests.test_reactor -*-
"""
Twisted's asyncio reactor on a uvloop event loop (C{twistd -r uvloop}).

Importing this module fails when uvloop is not installed, so that
C{twistd --help-reactors} lists the reactor as not available, with the
reason.  uvloop is not a dependency of wsrelay: C{pip install uvloop}.
"""

from __future__ import annotations

import uvloop  # type: ignore[import-not-found,unused-ignore]
from twisted.internet.asyncioreactor import AsyncioSelectorReactor
from twisted.internet.main import installReactor

__all__ = ["install"]


def install() -> None:
    """
    Install L{AsyncioSelectorReactor} on a new uvloop event loop as the
    global reactor; the loop is asyncio's current one too, so that asyncio
    code finds it.

    @raise twisted.internet.error.ReactorAlreadyInstalledError: If a
        reactor is installed already.
    """
    import asyncio

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    installReactor(AsyncioSelectorReactor(loop))
