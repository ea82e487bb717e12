"""
Helpers shared by the test modules: no test module imports another, they
all import from here.

The names most tests use are re-exported here (C{from tests.support import
TIMEOUT, client, ...}); the others live in the module of their concern:

  - L{tests.support.waiting}: L{TIMEOUT}, C{waitFor} (poll a condition on
    the reactor, with back-off and a deadline).
  - L{tests.support.backends}: C{websockets} backends in a thread.
  - L{tests.support.clients}: C{websockets} and raw-socket clients.
  - L{tests.support.relays}: a relay started from a config text, and
    readings of its transports and sessions.
  - L{tests.support.frames}, L{tests.support.wire}: WebSocket frames and
    handshakes written and read by hand, and a raw backend.
  - L{tests.support.scanning}: the passthrough scanner driven directly.
  - L{tests.support.inflate}: compression bombs and memory tracing.
  - L{tests.support.memory}: the in-memory network (L{twisted.test.iosim},
    one L{twisted.internet.task.Clock}) of client, relay and backend.
  - L{tests.support.fanout}: a fan-out source on loopback, and many
    clients of a relay.
  - L{tests.support.tls}: certificates and TLS contexts.
  - L{tests.support.processes}: C{twistd} command lines;
    L{tests.support.faultbackend}: killable backend processes (also a
    program).
  - L{tests.support.dashboard}: the admin dashboard read by Chromium.
  - L{tests.support.takeover}: relays upgraded in place (C{--takeover})
    and a stream of new connections held across the upgrade.
"""

from __future__ import annotations

from tests.support.backends import Backend, script, startBackend
from tests.support.clients import client, inThread
from tests.support.relays import noDelay, startRelay
from tests.support.waiting import TIMEOUT

__all__ = [
    "TIMEOUT",
    "Backend",
    "client",
    "inThread",
    "noDelay",
    "script",
    "startBackend",
    "startRelay",
]
