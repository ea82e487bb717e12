"""
What the tests of the upstream request's forwarding fields share
(C{tests.test_forwarding_quick}, C{tests.test_heads}): a relay's
configuration with one passthrough route, its backend, and stand-ins for
a client's leg and transport.
"""

from __future__ import annotations

from wsrelay.config.reader import parseConfig
from wsrelay.config.values import RelayConfig
from wsrelay.ws.handshake import Head

_CONFIG = """\
[relay]
listen = tcp:0:interface=127.0.0.1
{trusted}

[route:echo]
path = /
mode = proxy
backends = ws://127.0.0.1:9001/
"""


def _config(trusted: str = "") -> RelayConfig:
    """
    @param trusted: The C{trusted_proxies} value, none if empty.
    @return: A relay's configuration with one passthrough route.
    """
    line = f"trusted_proxies = {trusted}" if trusted else ""
    return parseConfig(_CONFIG.format(trusted=line), "t.ini")


class _Transport:
    """
    A client's transport that is neither TLS nor the PROXY protocol.
    """


class _Frontend:
    """
    What an upstream request reads of a client's leg.
    """

    def __init__(
        self,
        head: Head,
        peer: str,
        transport: object,
        secure: bool,
        remainder: str,
        query: str,
        deflate: bool,
    ) -> None:
        self.head = head
        self.peerAddress = peer
        self.transport = transport
        self.secure = secure
        self.remainder = remainder
        self.query = query
        self._deflate = deflate

    def relaysDeflate(self) -> bool:
        return self._deflate


#: The backend of L{_CONFIG}.
_BACKEND = _config().routes[0].backends[0]
