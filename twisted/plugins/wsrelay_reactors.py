"""
wsrelay's reactors, for C{twistd -r NAME} (C{twistd --help-reactors}
lists them).  C{twistd wsrelay} installs C{wsrelay} unless C{-r} chose
another.
"""

from twisted.application.reactors import Reactor

wsrelay = Reactor(
    "wsrelay",
    "wsrelay.reactor",
    "epoll(7) without the per-event log context (wsrelay's default)",
)
uvloop = Reactor(
    "uvloop",
    "wsrelay.uvloopreactor",
    "asyncio reactor on a uvloop event loop (pip install uvloop)",
)
