"""
wsrelay's reactor, for C{twistd -r wsrelay} (C{twistd --help-reactors}
lists it).  C{twistd wsrelay} installs it unless C{-r} chose another.
"""

from twisted.application.reactors import Reactor

wsrelay = Reactor(
    "wsrelay",
    "wsrelay.reactor",
    "epoll(7) without the per-event log context (wsrelay's default)",
)
