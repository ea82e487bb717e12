# -*- test-case-name: tests.test_edge -*-
"""
The PROXY protocol (versions 1 and 2) on listeners written C{haproxy:...}.

Twisted's own C{haproxy:} endpoint (L{twisted.protocols.haproxy}) drops a
connection that starts with C{PROXY UNKNOWN\\r\\n} (its parser wants
something after C{UNKNOWN}), believes any text as an address
(C{PROXY TCP4 999.1.1.1 ...} gives a peer of C{999.1.1.1}), and drops a
connection whose first read is shorter than a header's start.  The relay
listens through L{ProxyProtocolEndpoint} instead: a header that says
nothing of the client (C{UNKNOWN}, C{LOCAL}, C{UNSPEC}) leaves the socket's
own addresses, and a header with an address that is not one refuses the
connection.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from typing import Any, cast

from autobahn.twisted.util import peer2str
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.endpoints import (
    SSL4ServerEndpoint,
    TCP4ServerEndpoint,
    serverFromString,
)
from twisted.internet.interfaces import IAddress, IStreamServerEndpoint, ITransport
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from wsrelay.ws._autobahn import setPeer

#: The start of a version 2 header.
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"

#: The start of a version 1 header.
V1_START = b"PROXY "

#: The longest version 1 header, CRLF included.
V1_MAX = 107

#: The longest version 2 header accepted, its 16-byte start and TLVs
#: included (the format allows 65,551 bytes; HAProxy and cloud load
#: balancers send a few hundred at most).
V2_MAX = 4096

#: The prefix of a listener's endpoint string that asks for the protocol.
PREFIX = "haproxy:"

_Addresses = tuple[IAddress | None, IAddress | None]


class BadProxyHeader(ValueError):
    """
    A connection did not start with a valid PROXY protocol header.
    """


def _port(text: bytes) -> int:
    """
    @return: A port number written in decimal.
    @raise BadProxyHeader: When it is not one.
    """
    if not (text.isdigit() and len(text) <= 5 and int(text) <= 65535):
        raise BadProxyHeader(f"bad port {text[:8]!r}")
    return int(text)


def parseV1(line: bytes) -> _Addresses:
    """
    Parse a version 1 header line (without its CRLF).

    @return: The source and destination addresses, or L{None} for both
        when the header is C{PROXY UNKNOWN} (whatever follows it).
    @raise BadProxyHeader: When it is not a valid header.
    """
    fields = line.split(b" ")
    if fields[:2] == [b"PROXY", b"UNKNOWN"]:
        return None, None
    if len(fields) != 6 or fields[0] != b"PROXY":
        raise BadProxyHeader(f"bad header {line[:60]!r}")
    family: Any
    kind: Any
    if fields[1] == b"TCP4":
        family, kind = ipaddress.IPv4Address, IPv4Address
    elif fields[1] == b"TCP6":
        family, kind = ipaddress.IPv6Address, IPv6Address
    else:
        raise BadProxyHeader(f"bad protocol {fields[1][:8]!r}")
    if b"%" in fields[2] or b"%" in fields[3]:
        # Python's IPv6Address takes anything after a % as a scope id, and
        # the address goes into forwarding headers.
        raise BadProxyHeader(f"scope id in address in {line[:60]!r}")
    try:
        source, destination = (str(family(f.decode("ascii"))) for f in fields[2:4])
    except (UnicodeDecodeError, ValueError) as e:
        raise BadProxyHeader(f"bad address in {line[:60]!r}") from e
    return (
        kind("TCP", source, _port(fields[4])),
        kind("TCP", destination, _port(fields[5])),
    )


def parseV2(header: bytes) -> _Addresses:
    """
    Parse a complete version 2 header.

    @return: The source and destination addresses; L{None} for both for a
        C{LOCAL} command, an C{UNSPEC} family or a Unix socket's addresses.
    @raise BadProxyHeader: When it is not a valid header, or one for
        another transport than a stream.
    """
    command, family = header[12], header[13]
    if command >> 4 != 2 or command & 0x0F > 1:
        raise BadProxyHeader(f"bad version or command {command:#x}")
    body = header[16:]
    kind: Any
    if command & 0x0F == 0 or family in (0x00, 0x31):
        # LOCAL (the proxy's own connection), or nothing said of the client.
        return None, None
    if family == 0x11 and len(body) >= 12:
        size, af, kind = 4, socket.AF_INET, IPv4Address
    elif family == 0x21 and len(body) >= 36:
        size, af, kind = 16, socket.AF_INET6, IPv6Address
    else:
        raise BadProxyHeader(f"bad family {family:#x} or length {len(body)}")
    source = socket.inet_ntop(af, body[:size])
    destination = socket.inet_ntop(af, body[size : 2 * size])
    sport, dport = struct.unpack("!HH", body[2 * size : 2 * size + 4])
    return kind("TCP", source, sport), kind("TCP", destination, dport)


def headerLength(data: bytes | bytearray) -> int | None:
    """
    @return: The length of the PROXY header at the start of C{data}, or
        L{None} when C{data} may be the start of one.
    @raise BadProxyHeader: When C{data} cannot start with one.
    """
    if data[:12] == V2_SIGNATURE[: len(data)]:
        if len(data) < 16:
            return None
        length = 16 + int(struct.unpack("!H", data[14:16])[0])
        if length > V2_MAX:
            raise BadProxyHeader(f"version 2 header of {length} bytes")
        return length
    if data[:6] == V1_START[: len(data)]:
        end = data.find(b"\r\n", 0, V1_MAX)
        if end >= 0:
            return end + 2
        if len(data) >= V1_MAX:
            raise BadProxyHeader("version 1 header without CRLF")
        return None
    raise BadProxyHeader(f"no PROXY header: {data[:16]!r}")


class ProxyProtocolWrapper(ProtocolWrapper):
    """
    Reads the PROXY header at the start of a connection, then hands what
    follows to the wrapped protocol, whose transport's C{getPeer} and
    C{getHost} are the header's addresses (the socket's own when the
    header gives none).
    """

    log = Logger()
    _buffer: bytearray | None = None
    _read = False
    _source: IAddress | None = None
    _destination: IAddress | None = None

    def dataReceived(self, data: bytes) -> None:
        """
        Collect the header; pass on everything after it.
        """
        if self._read:
            self.wrappedProtocol.dataReceived(data)
            return
        buffer = self._buffer
        if buffer is None:
            # Appending to a bytearray: a header that comes a byte at a
            # time is not copied whole at each read.
            buffer = self._buffer = bytearray()
        buffer += data
        try:
            length = headerLength(buffer)
            if length is None or len(buffer) < length:
                return
            if buffer.startswith(V2_SIGNATURE):
                addresses = parseV2(bytes(buffer[:length]))
            else:
                addresses = parseV1(bytes(buffer[: length - 2]))
        except BadProxyHeader as e:
            self._buffer = None
            self.refused(str(e))
            return
        self._source, self._destination = addresses
        self._buffer = None
        self._read = True
        if self._source is not None:
            self._tellPeer()
        if len(buffer) > length:
            self.wrappedProtocol.dataReceived(bytes(buffer[length:]))

    def _tellPeer(self) -> None:
        """
        Give the wrapped protocol (under TLS, for C{haproxy:ssl:...}) the
        header's source as its Autobahn C{peer}: it took the socket's (the
        load balancer's) when the connection was made, before the header
        was read, and names it in its log lines.
        """
        protocol = self.wrappedProtocol
        while isinstance(protocol, ProtocolWrapper):
            protocol = protocol.wrappedProtocol
        if hasattr(protocol, "peer"):
            # makeConnection made the wrapper provide its transport's
            # interfaces, ITransport among them.
            setPeer(protocol, peer2str(cast(ITransport, self)))

    def refused(self, reason: str) -> None:
        """
        The connection did not start with a valid header: close it, and
        say so (within the listener's L{wsrelay.logs.ErrorBudget}).
        """
        assert self.transport is not None
        # A relay's listener: the warning counts against its budget.
        wrapped = self.factory.wrappedFactory
        if isinstance(wrapped, TLSMemoryBIOFactory):
            # haproxy:ssl:...: the relay's factory is under TLS.
            wrapped = wrapped.wrappedFactory
        budget = getattr(wrapped, "protocolErrors", None)
        if budget is None or budget.allow():
            self.log.warn(
                "PROXY protocol: connection from {peer} refused: {reason}",
                peer=getattr(self.transport.getPeer(), "host", None),
                reason=reason,
            )
        self.transport.loseConnection()

    def getPeer(self) -> IAddress:
        """
        @return: The client's address as the header gave it, or the
            socket's peer.
        """
        if self._source is not None:
            return self._source
        assert self.transport is not None
        return self.transport.getPeer()

    def getHost(self) -> IAddress:
        """
        @return: The address the client connected to as the header gave it,
            or the socket's own.
        """
        if self._destination is not None:
            return self._destination
        assert self.transport is not None
        return self.transport.getHost()


def withoutAddress(transport: Any) -> bool:
    """
    @param transport: A client connection's transport.
    @return: Whether it came through a PROXY header that gave no client
        address (C{UNKNOWN}, C{LOCAL}, C{UNSPEC}): its peer is then the
        load balancer's socket, which says nothing of who sent the
        request, and must not be trusted for forwarding fields.
    """
    while isinstance(transport, ProtocolWrapper):
        if isinstance(transport, ProxyProtocolWrapper):
            return transport._read and transport._source is None
        # TLS over the PROXY protocol (haproxy:ssl:...).
        transport = transport.transport
    return False


class ProxyProtocolFactory(WrappingFactory):
    """
    Wraps each connection of a factory in a L{ProxyProtocolWrapper}.
    """

    protocol = ProxyProtocolWrapper

    def logPrefix(self) -> str:
        """
        The wrapped factory's log prefix, saying that the PROXY protocol
        is on.
        """
        return f"{self.wrappedFactory.__class__.__name__} (PROXY)"


@implementer(IStreamServerEndpoint)
class ProxyProtocolEndpoint:
    """
    A server endpoint whose connections start with a PROXY header.
    """

    def __init__(self, wrapped: IStreamServerEndpoint, tlsContext: Any = None) -> None:
        """
        @param wrapped: The endpoint to listen on.
        @param tlsContext: For TLS after the header (C{haproxy:ssl:...}),
            the server's context factory, with C{wrapped} a TCP endpoint:
            the header comes in clear before the TLS handshake, so it must
            be read under TLS, not inside it.
        """
        self._wrapped = wrapped
        self._tlsContext = tlsContext

    def listen(self, protocolFactory: Any) -> Any:
        """
        Listen on the wrapped endpoint, with C{protocolFactory} wrapped (in
        TLS, then in the PROXY protocol).
        """
        if self._tlsContext is not None:
            protocolFactory = TLSMemoryBIOFactory(
                self._tlsContext, False, protocolFactory
            )
        return self._wrapped.listen(ProxyProtocolFactory(protocolFactory))


def listenerEndpoint(reactor: Any, description: str) -> IStreamServerEndpoint:
    """
    @return: The server endpoint for a listener's endpoint string; one
        starting with C{haproxy:} speaks the PROXY protocol through
        L{ProxyProtocolEndpoint} rather than Twisted's, and reads the
        header before TLS for C{haproxy:ssl:...}.
    """
    if description.startswith(PREFIX):
        wrapped = serverFromString(reactor, description[len(PREFIX) :])
        if isinstance(wrapped, SSL4ServerEndpoint):
            # Twisted's SSL endpoint would put TLS outside the PROXY parser;
            # listen on the same TCP port and wrap in the other order.
            tcp = TCP4ServerEndpoint(
                reactor, wrapped._port, wrapped._backlog, wrapped._interface
            )
            return ProxyProtocolEndpoint(tcp, wrapped._sslContextFactory)
        return ProxyProtocolEndpoint(wrapped)
    endpoint: IStreamServerEndpoint = serverFromString(reactor, description)
    return endpoint
