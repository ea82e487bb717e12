# -*- test-case-name: tests.test_limits,tests.test_edge,tests.test_descriptors -*-
"""
Admission: whether a client's request may go on (allowed origins, the
relay's abuse limits, the open-file limit), who the client is (its
address after C{trusted_proxies}) and what the relay tells a backend of
it (the forwarding header fields).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet.tcp import Server
from twisted.logger import Logger

from wsrelay.connector import tooMany
from wsrelay.descriptors import RESERVED
from wsrelay.proxyprotocol import withoutAddress
from wsrelay.stats import TokenBucket
from wsrelay.ws.frontend import Refused
from wsrelay.ws.handshake import (
    CLAIMED,
    FORWARDING,
    NOT_FORWARDED,
    Head,
    endToEnd,
    endToEndLines,
    forwardedNode,
    quotedString,
)

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from wsrelay.config import RelayConfig
    from wsrelay.descriptors import Limit, Shortage
    from wsrelay.routing import Route, RouteTable
    from wsrelay.ws.frontend import FrontendProtocol


#: Per-address handshake buckets kept before idle ones are forgotten.
MAX_BUCKETS = 10000

#: What C{forwardedHeaders} drops of an untrusted peer's fields, besides
#: the hop-by-hop ones.
_UNTRUSTED = FORWARDING | CLAIMED

#: Every name C{forwardedHeaders} drops of an untrusted peer's fields but
#: those C{Connection} lists: a head that has no other is forwarded none.
_ALL_UNTRUSTED = NOT_FORWARDED | _UNTRUSTED


#: What a transport's C{getPeer} is when L{peerHost} may read its peer's
#: host without calling it.
_TCP_PEER = Server.getPeer


def peerHost(frontend: FrontendProtocol) -> str:
    """
    @param frontend: A connected client's leg.
    @return: Its peer's host, C{"unix"} for a peer without one; asked of
        the transport once per connection (Twisted makes a new address
        object each time), then read from C{frontend.peerAddress}.
    """
    host = frontend.peerAddress
    if host is None:
        transport: Any = frontend.transport
        # The client is connected while its request is handled.
        assert transport is not None
        if getattr(type(transport), "getPeer", None) is _TCP_PEER:
            # Twisted's TCP server transport (or the relay's, which is one:
            # wsrelay.ws.accepting) makes its address (an attrs class,
            # with validators) of the address accept gave, which it keeps:
            # the host is that one's first item.  (Not Twisted's Unix
            # server transport, a subclass that answers otherwise.)
            name = transport.client[0]
        else:
            name = getattr(transport.getPeer(), "host", None)
        host = frontend.peerAddress = str(name or "unix")
    return host


def originAllowed(head: Head | None, origins: Sequence[str]) -> bool:
    """
    @return: Whether the request's C{Origin} is one of C{origins}, where
        C{scheme://*.domain} stands for any subdomain of C{domain}.
    """
    origin = (head.get("origin") if head is not None else None) or ""
    origin = origin.strip().lower()
    if not origin:
        return False
    for allowed in origins:
        if origin == allowed:
            return True
        scheme, _, host = allowed.partition("://*.")
        if host and origin.startswith(scheme + "://") and origin.endswith("." + host):
            return True
    return False


class Admission:
    """
    Decides which clients the relay serves (L{wsrelay.ws.frontend.Admitter})
    and counts them.

    @ivar clientConnections: Client connections open now.
    @ivar admission: The relay-wide bucket of new handshakes.
    @ivar shortage: Counts and logs refusals for want of descriptors,
        shared with the upstream connector.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        config: RelayConfig,
        routes: RouteTable,
        channelCount: Callable[[], int],
        descriptors: Limit | None,
        shortage: Shortage,
    ) -> None:
        """
        @param routes: The routes in force (their open upstreams count
            against the open-file limit).
        @param channelCount: Gives the number of fan-out channels (each
            holds a descriptor).
        @param descriptors: The process's open-file limit; L{None}: no such
            check.
        """
        self._clock = clock
        self._routes = routes
        self._channelCount = channelCount
        self.descriptors = descriptors
        self.shortage = shortage
        self.clientConnections = 0
        self._perAddress: dict[str, int] = {}
        self._buckets: dict[str, TokenBucket] = {}
        self.configure(config)

    def configure(self, config: RelayConfig) -> None:
        """
        Apply C{config}'s limits and trusted proxies to requests from now
        on.
        """
        self.config = config
        self._trusted = [ipaddress.ip_network(n) for n in config.trustedProxies]
        self.admission = TokenBucket(self._clock, config.maxHandshakesPerSecond)

    def clientArrived(self, frontend: FrontendProtocol) -> None:
        """
        A client connected.  When even half of the descriptors kept for the
        relay (L{wsrelay.descriptors.RESERVED}) are taken, it is dropped at once:
        clients that hold their connections without finishing a handshake
        would otherwise take the last descriptors, and then the kernel's
        C{accept} fails, which Twisted logs for every connection.
        """
        self.clientConnections += 1
        # (Without an open-file limit, the default, nothing to count.)
        if self.descriptors is not None and not self._descriptorsLeft(None):
            self.shortage.occurred("no descriptor left to answer new clients")
            assert frontend.transport is not None
            frontend.transport.abortConnection()

    def clientLeft(self, frontend: FrontendProtocol) -> None:
        """
        A client's connection is gone.
        """
        self.clientConnections -= 1
        address = frontend.countedAddress
        if address is not None:
            frontend.countedAddress = None
            left = self._perAddress[address] - 1
            if left:
                self._perAddress[address] = left
            else:
                del self._perAddress[address]

    def admit(self, frontend: FrontendProtocol, route: Route) -> Refused | None:
        """
        Apply the abuse limits to a routed, valid upgrade request.

        @return: The refusal to answer with, or L{None} to go on.
        """
        config = self.config
        origins = route.config.allowedOrigins
        if origins and not originAllowed(frontend.head, origins):
            return Refused(403, "Forbidden", body=b"origin not allowed\n")
        if self._trusted:
            address = self.clientAddress(frontend)
        else:
            # (clientAddress without trusted_proxies, inline.)
            address = frontend.peerAddress or peerHost(frontend)
        if config.handshakeRatePerIp > 0:
            bucket = self._buckets.get(address)
            if bucket is None:
                if len(self._buckets) >= MAX_BUCKETS:
                    self._buckets = {
                        a: b for a, b in self._buckets.items() if not b.full()
                    }
                bucket = TokenBucket(self._clock, config.handshakeRatePerIp)
                self._buckets[address] = bucket
            if not bucket.take():
                return tooMany(429, "Too Many Requests", b"handshake rate exceeded\n")
        if config.maxConnections and self.clientConnections > config.maxConnections:
            return tooMany(503, "Service Unavailable", b"too many connections\n")
        if self.descriptors is not None and not self._descriptorsLeft(route):
            self.shortage.occurred("the open-file limit leaves no room for more")
            return tooMany(
                503, "Service Unavailable", b"relay at capacity, retry shortly\n"
            )
        count = self._perAddress.get(address, 0)
        if config.maxConnectionsPerIp and count >= config.maxConnectionsPerIp:
            return tooMany(
                429, "Too Many Requests", b"too many connections from this address\n"
            )
        admission = self.admission
        # (A rate of 0, the default, allows everything: not asked.)
        if admission.rate > 0 and not admission.take():
            return tooMany(
                503, "Service Unavailable", b"too many new connections, retry shortly\n"
            )
        self._perAddress[address] = count + 1
        frontend.countedAddress = address
        return None

    def _descriptorsLeft(self, route: Route | None) -> bool:
        """
        @param route: The route of a client that has been accepted (so is
            counted in C{clientConnections}), or L{None} for a client that
            was just accepted, whose route is not known yet.
        @return: With a route, whether the open-file limit leaves room for
            this client and, for a proxy route, its upstream; without,
            whether it leaves room to read this client's request and answer
            it (half of L{wsrelay.descriptors.RESERVED} more).
        """
        limit = self.descriptors
        if limit is None:
            return True
        budget = limit.budget
        if route is None:
            budget += RESERVED // 2
        clients = self.clientConnections
        if 2 * clients + self._channelCount() < budget:
            # Far from the limit: no need to count the upstreams.
            return True
        upstreams = sum(b.connections for r in self._routes.routes for b in r.backends)
        more = 1 if route is not None and route.config.mode == "proxy" else 0
        return clients + upstreams + more <= budget

    def clientAddress(self, frontend: FrontendProtocol) -> str:
        """
        The client's address: the peer's, or the last untrusted one in
        C{X-Forwarded-For} when the peer is a trusted proxy (and not a
        load balancer's socket left by a PROXY header without an address:
        L{withoutAddress}).
        """
        # (Read once, by peerHost; then the leg has it.)
        peer = frontend.peerAddress or peerHost(frontend)
        if (
            not self._trusted
            or frontend.head is None
            or withoutAddress(frontend.transport)
        ):
            return peer
        chain = [
            a.strip()
            for a in (frontend.head.get("x-forwarded-for") or "").split(",")
            if a.strip()
        ]
        address = peer
        while self._isTrusted(address) and chain:
            address = chain.pop()
        return address

    def _isTrusted(self, address: str) -> bool:
        if not self._trusted:
            # Without trusted_proxies, no address is parsed (every handshake
            # asks).
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self._trusted)

    def forwardedHeaders(
        self, frontend: FrontendProtocol, head: Head
    ) -> list[tuple[str, str]]:
        """
        The header fields of an upstream request: the client's end-to-end
        fields and the relay's forwarding ones (the table under
        C{trusted_proxies} in docs/configuration.md).  A client's
        C{X-Forwarded-For}, C{X-Forwarded-Proto}, C{X-Forwarded-Host},
        C{X-Real-IP} and C{Forwarded} are dropped and the relay writes its
        own; from a peer in C{trusted_proxies}, as nginx's realip and
        C{$proxy_add_x_forwarded_for} do, its C{X-Forwarded-For} and
        C{Forwarded} are kept with the peer appended, and its
        C{X-Forwarded-Proto} and C{X-Forwarded-Host} are believed.  The
        fields in L{CLAIMED} are dropped from an untrusted peer and passed
        on from a trusted one; a field whose name holds C{_} is dropped
        from any client.

        @return: The fields, in order.
        """
        peer = peerHost(frontend)
        trusted = self._isTrusted(peer) and not withoutAddress(frontend.transport)
        # CGI, WSGI and PHP read X_Forwarded_For as X-Forwarded-For: nginx
        # drops such names (underscores_in_headers off).
        headers = endToEnd(
            head, FORWARDING if trusted else _UNTRUSTED, underscores=False
        )
        proto = "https" if frontend.secure else "http"
        host = head.get("host")
        element = f"for={forwardedNode(peer)};proto={proto}"
        if host:
            element += ";host=" + quotedString(host)
        chain = forwarded = None
        if trusted:
            chain = head.get("x-forwarded-for")
            forwarded = head.get("forwarded")
            proto = head.get("x-forwarded-proto") or proto
            host = head.get("x-forwarded-host") or host
        headers.append(("X-Forwarded-For", f"{chain}, {peer}" if chain else peer))
        headers.append(("X-Forwarded-Proto", proto))
        if host:
            headers.append(("X-Forwarded-Host", host))
        headers.append(
            ("X-Real-IP", peer if not trusted else self.clientAddress(frontend))
        )
        headers.append(
            ("Forwarded", f"{forwarded}, {element}" if forwarded else element)
        )
        return headers

    def forwardedLines(self, frontend: FrontendProtocol, head: Head) -> str | None:
        """
        L{forwardedHeaders}' fields for a peer the relay does not trust (the
        common case), written as the lines of the upstream request's head
        (L{fieldLines}) in one piece, without a list of pairs between.

        @return: The lines, each ended with CRLF; or L{None} for a peer in
            C{trusted_proxies}, whose fields L{forwardedHeaders} makes.
        """
        peer = frontend.peerAddress or peerHost(frontend)
        if (
            self._trusted
            and self._isTrusted(peer)
            and not withoutAddress(frontend.transport)
        ):
            return None
        # What the head says, the same for every head of its shape (written
        # once for them, Head.parts).
        parts = head.parts
        written = None if parts is None else parts.forwarding
        if written is None:
            fields = head.fields
            if fields.keys() <= _ALL_UNTRUSTED:
                # (A client that sent the handshake's fields only.)
                kept = ""
            else:
                kept = endToEndLines(head, _UNTRUSTED)
            hosts = fields.get("host")
            host = ", ".join(hosts) if hosts else None
            if host:
                written = (
                    kept,
                    f"X-Forwarded-Host: {host}\r\n",
                    f";host={quotedString(host)}",
                )
            else:
                written = (kept, "", "")
            if parts is not None:
                parts.forwarding = written
        kept, hostLine, hostParameter = written
        proto = "https" if frontend.secure else "http"
        node = forwardedNode(peer)
        return (
            f"{kept}X-Forwarded-For: {peer}\r\nX-Forwarded-Proto: {proto}\r\n"
            f"{hostLine}X-Real-IP: {peer}\r\n"
            f"Forwarded: for={node};proto={proto}{hostParameter}\r\n"
        )
