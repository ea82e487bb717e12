# -*- test-case-name: tests.test_plainleg,tests.test_passthrough -*-
"""
The upstream leg of a passthrough route: a plain Twisted protocol, not
Autobahn's.

On the passthrough data path nothing parses a frame after the 101 but the
pipe (L{wsrelay.proxy.pipe}), so the upstream leg only writes the request
head, reads the backend's answer (L{ResponseReader}, as the Autobahn leg
does for a plain 101) and then hands its bytes to the pipe's direction.
Building Autobahn's per-connection state for that (its set-up, its parser
around the handshake, its close machinery) was some tenth of the relay's
CPU per proxied handshake in the storm benchmark.

A L{PlainUpstream} has the attributes the session, the pipe and its
directions, the registry's traffic counts and the backend's totals read
of an upstream leg, with the same meaning:

  - the handshake's results: C{responseHeaders}, C{extensionsAnswer},
    C{websocket_protocol_in_use} (L{wsrelay.proxy.opening.clientAnswer});
  - C{listener} and C{target} (L{wsrelay.proxy.session.ProxySession.attach});
  - C{state}, C{current_frame}, C{closeRelayed}, C{receivingFragment},
    C{data}, C{dataPath} (L{wsrelay.proxy.pairing.startPipe});
  - the counters C{bytesIn}, C{messagesIn}, C{bytesOut}, C{messagesOut}
    (the directions, the keepalive, L{wsrelay.routing.Backend.count});
  - C{localCloseCode}, C{remoteCloseCode}, C{transport}, C{writer}
    (the pipe);
  - C{forgetHandshake} (L{wsrelay.proxy.pairing.pairLegs}) and C{closeWith}
    (a session that closes before its pipe started).

The message data path keeps Autobahn's leg (L{wsrelay.ws.upstream}).
"""

from __future__ import annotations

import os
from binascii import b2a_base64
from typing import TYPE_CHECKING, Any

from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.protocol import Protocol, connectionDone

from wsrelay.ws._autobahn import FIRED, dropConnector
from wsrelay.ws.accept import acceptKey
from wsrelay.ws.framing import closeFrame
from wsrelay.ws.handshake import RequestLines, buildRequest
from wsrelay.ws.legs import LegProducer
from wsrelay.ws.response import FORGOTTEN, ResponseReader, UpstreamError
from wsrelay.ws.writes import directWrite, sendNow

if TYPE_CHECKING:
    from collections.abc import Callable

    from twisted.internet.defer import Deferred
    from twisted.python.failure import Failure

#: The states of L{PlainUpstream.state}, Autobahn's values (the session and
#: the pipe compare them with Autobahn's legs').
CONNECTING = WebSocketProtocol.STATE_CONNECTING
OPEN = WebSocketProtocol.STATE_OPEN
CLOSED = WebSocketProtocol.STATE_CLOSED


class KeyPool:
    """
    Fresh C{Sec-WebSocket-Key} values: 16 random bytes each, in base64,
    cut from a pool of C{os.urandom} read a few kilobytes at a time, not
    one system call for each key.

    Each 16 bytes of a pool make one key and are never used again.  A
    forked child forgets the pool it inherited (L{forget}, on
    C{os.register_at_fork}), so that parent and child never send the same
    keys.

    @ivar size: How many bytes each refill reads.
    """

    def __init__(
        self, size: int = 4096, random: Callable[[int], bytes] = os.urandom
    ) -> None:
        """
        @param size: How many bytes each refill reads.
        @param random: What reads them.
        """
        self.size = size
        self._random = random
        self._pool = b""
        self._offset = 0

    def forget(self) -> None:
        """
        Drop what is left of the pool: the next key is cut from a new one.
        """
        self._pool = b""
        self._offset = 0

    def newKey(self) -> bytes:
        """
        @return: A fresh key: the base64 of 16 bytes never used before.
        """
        offset = self._offset
        end = offset + 16
        pool = self._pool
        if end > len(pool):
            pool = self._pool = self._random(self.size)
            offset, end = 0, 16
        self._offset = end
        return b2a_base64(pool[offset:end], newline=False)


#: The keys of this process's upstream legs.
KEYS = KeyPool()
os.register_at_fork(after_in_child=KEYS.forget)


class PlainUpstream(ResponseReader, LegProducer, Protocol):
    """
    One connection to a backend of a passthrough route.

    The request's parts (C{resource}, C{hostHeader}, C{requestHeaders},
    C{offered}, C{extensions}) and C{opened} are set before it connects
    (L{wsrelay.ws.connecting.connectUpstream}).

    @ivar opened: Fires with this leg when the backend accepted, fails
        with L{UpstreamError} or L{UpstreamRefused
        <wsrelay.ws.response.UpstreamRefused>}.
    @ivar dataPath: What reads the bytes received once the pipe started;
        until then they wait in C{data}.
    """

    resource = "/"
    hostHeader = ""
    requestHeaders: list[tuple[str, str]] | RequestLines = FORGOTTEN
    #: (Once the leg let it go: L{forgetHandshake}.)
    opened: Deferred[Any] = FIRED
    #: The C{Sec-WebSocket-Key} sent (L{connectionMade}).
    requestKey = ""
    websocket_protocol_in_use: str | None = None
    state = CONNECTING
    data = b""
    current_frame = None
    closeRelayed = False
    receivingFragment = False
    dataPath: Any = None
    target: Any = None
    listener: Any = None
    bytesIn = 0
    messagesIn = 0
    bytesOut = 0
    messagesOut = 0
    localCloseCode: int | None = None
    remoteCloseCode: int | None = None
    wasClean = False
    _directWrite: Any = None
    #: What settles the leg's attempt when it opens, instead of firing
    #: C{opened} (L{wsrelay.ws.connecting._Attempt.legOpened}), or L{None}.
    _settle: Callable[[PlainUpstream], None] | None = None

    #: What only the opening handshake reads (L{forgetHandshake}).
    _REQUEST = (*ResponseReader._REQUEST, "requestKey")

    def connectionMade(self) -> None:
        """
        Send the client's request, rewritten for this backend, with no
        Nagle delay on the connection (as Autobahn's legs), at once when
        nothing is queued.  Its C{Sec-WebSocket-Key} is the client's when
        the request carries it (L{RequestLines.key
        <wsrelay.ws.handshake.RequestLines>}), as a proxy that passes the
        request through sends it: the backend's accept value is then the
        one the client's 101 carries, worked out once (L{acceptKey}).
        """
        transport: Any = self.transport
        try:
            transport.setTcpNoDelay(True)
        except Exception:  # noqa: S110 - not a TCP socket (TLS, tests)
            pass
        headers = self.requestHeaders
        # The client's key, sent on (RequestLines.key); else one of the leg's own.
        key = getattr(headers, "key", None)
        if key is None:
            key = KEYS.newKey().decode()
        self.requestKey = key
        # Sent at once on a plain TCP connection: through Twisted's write,
        # the request would wait a reactor turn for the socket to be
        # writable, at two more changes of its registration.  (Not through
        # L{writer}, made later: made now, it would cost the held leg's
        # dictionary a size up.)
        sendNow(transport, buildRequest(self.resource, self.hostHeader, key, headers))

    def dataReceived(self, data: bytes) -> None:
        """
        Bytes from the backend: to the pipe's direction once it started,
        else to the handshake (or kept until the pipe starts).
        """
        path = self.dataPath
        if path is not None:
            path.dataReceived(data)
            return
        self.data += data
        if self.state == CONNECTING:
            self.processHandshake()

    # The handshake's hooks (ResponseReader).

    def failHandshake(self, reason: str) -> None:
        """
        The backend's answer is not a valid handshake: fail the attempt
        and drop the connection.
        """
        if not self.opened.called:
            self.opened.errback(UpstreamError(reason))
        self.abortHandshake()

    def abortHandshake(self) -> None:
        """
        Drop the connection.
        """
        self.state = CLOSED
        transport: Any = self.transport
        if transport is not None:
            transport.abortConnection()

    def _expectedAccept(self) -> bytes:
        """
        @return: The accept value that is right for the key sent, through
            L{acceptKey}, which keeps it for the client's 101 when the key
            is the client's.
        """
        return acceptKey(self.requestKey).encode()

    def notPlain(self) -> None:
        """
        A 101 that is not plain (L{ResponseReader._plainAccept}) is one
        Autobahn's leg would fail too: a wrong key, a second C{Upgrade} or
        C{Sec-WebSocket-Accept}, another HTTP version, an extension this
        leg did not offer.
        """
        self.failHandshake("bad response: not a valid 101")

    def _open(self, end: int, chosen: str) -> None:
        """
        The backend accepted: what follows the head waits in C{data} for
        the pipe.
        """
        rest = self.data[end + 4 :]
        if rest:
            self.data = rest
        else:
            # (Back to the class's b"" and None: stored, they would only
            # be dropped again as the pipe starts, L{compactLegs}.)
            del self.data
        if chosen:
            self.websocket_protocol_in_use = chosen
        self.state = OPEN
        settle = self._settle
        if settle is None:
            self.opened.callback(self)
            return
        # Nothing but the attempt's caller waits for C{opened} to succeed:
        # the attempt settles with this leg itself, and C{opened} is let go
        # unfired (it reads as FIRED from now on).
        del self._settle, self.opened
        settle(self)

    # What the session and the pipe use.

    def writer(self) -> Callable[[bytes], None]:
        """
        @return: The leg's L{directWrite} to its transport, made once.
        """
        write: Callable[[bytes], None] | None = self._directWrite
        if write is None:
            write = self._directWrite = directWrite(self.transport)
        return write

    def forgetHandshake(self, compacting: bool = True) -> None:
        """
        Let the request's and the response's texts go once open, and
        C{opened} once fired (as L{forgetRequest} and
        L{wsrelay.ws._autobahn.forgetOpened} do, in one pass): each then
        reads as its class default.  Deleted one at a time, not through
        the leg's C{__dict__}, which asking for would make (see
        L{wsrelay.ws.connecting._Attempt.buildProtocol}).
        """
        try:
            # What L{connectUpstream <wsrelay.ws.connecting.connectUpstream>}
            # and L{connectionMade} set on every leg.
            del (
                self.resource,
                self.hostHeader,
                self.requestHeaders,
                self.offered,
                self.extensions,
                self.requestKey,
            )
        except AttributeError:
            # A leg made otherwise (tests): whichever it holds.
            for name in self._REQUEST:
                try:
                    delattr(self, name)
                except AttributeError:
                    pass
        if self.responseHeaders is not FORGOTTEN:
            # (Only a 101 with fields for the client sets them, each time
            # a list of its own.)
            del self.responseHeaders
        opened = self.opened
        if opened is not FIRED and opened.called:
            del self.opened

    def closeWith(self, code: int, reason: bytes) -> None:
        """
        Close the connection with C{code}: a close frame (masked, as a
        client's), then the end of the connection.  Only a session whose
        pipe never started closes a plain leg this way (the pipe has its
        own close handshake).
        """
        transport: Any = self.transport
        if self.state == OPEN and transport is not None:
            self.localCloseCode = code
            transport.write(closeFrame(code, reason, True))
            transport.loseConnection()
        self.state = CLOSED

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        The connection is gone: during the handshake that fails it (or
        relays the refusal whose body ended with it); after, the listener
        hears of it.  Then the leg lets go of what refers back to it.
        """
        self.state = CLOSED
        if not self.opened.called:
            if self._refused is not None:
                self._collectRefusal(final=True)
            else:
                self.opened.errback(
                    UpstreamError("connection closed during the handshake")
                )
        elif self.listener is not None:
            self.listener.legClosed(self)
        # What letGo does, each reference deleted rather than popped from
        # the leg's __dict__, which asking for would make (as the leg lets
        # go of the handshake, forgetHandshake); none of these is stored at
        # its class default.
        if self.listener is not None:
            del self.listener
        if self.target is not None:
            del self.target
        if self.dataPath is not None:
            del self.dataPath
        if self.opened is not FIRED:
            del self.opened
        dropConnector(self.transport)
