# -*- test-case-name: tests.test_fanout,tests.test_fanout_units,tests.test_inmemory -*-
"""
Fan-out: one upstream connection to a source, shared by every client of a
channel.

The modules: L{wsrelay.fanout.channel} (a L{Channel} holds the upstream,
frames each message from the source once and writes the same bytes to
every member), L{wsrelay.fanout.members} (a L{FanoutSession} is one
client's membership, with its own small queue for the time its connection
cannot keep up) and L{wsrelay.fanout.source} (how the channel reads its
source and keeps connecting to it).  Payloads are never decoded here.

Modules of this package import each other's module, never this package.
"""

from wsrelay.fanout.channel import (
    CONNECTING,
    IDLE,
    STOPPED,
    UP,
    WAITING,
    Channel,
    channelKey,
)
from wsrelay.fanout.members import FanoutSession

__all__ = [
    "CONNECTING",
    "IDLE",
    "STOPPED",
    "UP",
    "WAITING",
    "Channel",
    "FanoutSession",
    "channelKey",
]
