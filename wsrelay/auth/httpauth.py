# -*- test-case-name: tests.test_auth_http -*-
"""
The C{http} authorizer, as nginx's C{auth_request}: a C{GET} to
C{auth_url} with the client's header fields, C{X-Original-URI},
C{X-Original-Method} and C{X-Forwarded-For}.  A 2xx answer allows (the
fields named in C{auth_headers} go to the upstream request); 401 and 403
are relayed to the client with their header fields and body; anything
else is an error (the client gets 503).

Requests go through L{twisted.web.client.Agent} with a persistent
L{HTTPConnectionPool}: connections to the auth server are reused.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http_headers import Headers
from zope.interface import implementer

from wsrelay.interfaces import (
    Allow,
    AuthRequest,
    Deny,
    IAuthorizer,
    IAuthorizerContext,
)
from wsrelay.ws.handshake import CLAIMED, FORWARDING, NOT_FORWARDED

#: A header field name (RFC 9110 5.1: a token), without C{_}.
_NAME = re.compile(r"[!#$%&'*+.^`|~0-9A-Za-z-]+\Z")

#: The client's fields that the auth request does not carry: hop-by-hop,
#: the handshake's own, those the authorizer writes itself, and those by
#: which a client would claim to be another (C{X-Forwarded-*},
#: C{Forwarded}, C{True-Client-IP}...: the auth server gets the client's
#: address as C{trusted_proxies} resolve it, in C{X-Forwarded-For}).
_DROPPED = (
    NOT_FORWARDED
    | FORWARDING
    | CLAIMED
    | {"x-original-uri", "x-original-method", "x-real-ip"}
)

#: Fields of the auth server's refusal that the relay writes itself.
_FRAMING = frozenset(
    {"connection", "content-length", "date", "keep-alive", "server"}
    | {"transfer-encoding", "trailer", "upgrade", "te", "proxy-connection"}
)

#: The largest body of the auth server's answer read, in bytes.
MAX_BODY = 65536

#: Seconds an idle connection to the auth server is kept.
IDLE_TIMEOUT = 60


class BadAnswer(Exception):
    """
    The auth server answered with neither 2xx nor 401 or 403, or too large
    a body.
    """


class _Body(Protocol):
    """
    Reads a response body into C{finished}, which fails when it has more
    than L{MAX_BODY} bytes (those are not kept).
    """

    def __init__(self, finished: Deferred[bytes]) -> None:
        self.finished = finished
        self.parts: list[bytes] = []
        self.size = 0

    def dataReceived(self, data: bytes) -> None:
        self.size += len(data)
        if self.size <= MAX_BODY:
            self.parts.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.finished.called:
            return
        if not reason.check(ResponseDone):
            self.finished.errback(reason)
        elif self.size > MAX_BODY:
            # Read to its end (within auth_timeout), so that the connection
            # can be used again.
            self.finished.errback(BadAnswer(f"body over {MAX_BODY} bytes"))
        else:
            self.finished.callback(b"".join(self.parts))


def readBody(response: Any) -> Deferred[bytes]:
    """
    @return: A L{Deferred} firing with C{response}'s body; cancelling it
        aborts the connection.
    """
    protocol: _Body

    def cancel(d: Deferred[bytes]) -> None:
        transport: Any = protocol.transport
        if transport is not None:
            transport.stopProducing()

    finished: Deferred[bytes] = Deferred(cancel)
    protocol = _Body(finished)
    response.deliverBody(protocol)
    return finished


@implementer(IAuthorizer)
class HTTPAuthorizer:
    """
    Asks an HTTP server about a route's requests (C{auth = http}).

    @ivar pool: The persistent connections to the auth server.
    """

    def __init__(self, options: Mapping[str, str], context: IAuthorizerContext):
        """
        @raise ValueError: When an option is invalid; the message starts
            with its key.
        """
        url = options.get("auth_url")
        if url is None:
            raise ValueError("auth_url: required")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"auth_url: expected an http:// or https:// URL: {url!r}")
        self._url = url.encode("ascii", "replace")
        names = options.get("auth_headers", "").split()
        for name in names:
            if not _NAME.match(name) or name.lower() in NOT_FORWARDED:
                raise ValueError(f"auth_headers: not a header name to set: {name!r}")
        self._copied = tuple(names)
        self.pool = HTTPConnectionPool(context.reactor, persistent=True)
        self.pool.cachedConnectionTimeout = IDLE_TIMEOUT
        self._agent = Agent(context.reactor, pool=self.pool)

    def authorize(self, request: AuthRequest) -> Deferred[Allow | Deny]:
        """
        Ask the auth server.
        """
        headers = Headers()
        for name, value in request.headers:
            # CGI, WSGI and PHP read X_Forwarded_For as X-Forwarded-For:
            # nginx drops such names, as the relay does upstream.
            if name.lower() not in _DROPPED and "_" not in name:
                headers.addRawHeader(name, value)
        uri = request.path + ("?" + request.query if request.query else "")
        headers.setRawHeaders("X-Original-URI", [uri])
        headers.setRawHeaders("X-Original-Method", [request.method])
        headers.setRawHeaders("X-Forwarded-For", [request.peer])
        d = self._agent.request(b"GET", self._url, headers)
        return d.addCallback(self._answer)

    def _answer(self, response: Any) -> Deferred[Allow | Deny]:
        """
        @return: What the auth server's answer means, once its body is read.
        """
        code = response.code

        def read(body: bytes) -> Allow | Deny:
            fields = [
                (name.decode("latin-1"), value.decode("latin-1"))
                for name, values in response.headers.getAllRawHeaders()
                for value in values
            ]
            if 200 <= code < 300:
                return Allow(
                    tuple(
                        (n, v)
                        for wanted in self._copied
                        for n, v in fields
                        if n.lower() == wanted.lower()
                    ),
                    removed=self._copied,
                )
            if code in (401, 403):
                kept = tuple((n, v) for n, v in fields if n.lower() not in _FRAMING)
                return Deny(code, kept, body)
            raise BadAnswer(f"auth_url answered {code}")

        return readBody(response).addCallback(read)

    def close(self) -> Deferred[None]:
        """
        Close the connections kept to the auth server.
        """
        closed: Deferred[None] = self.pool.closeCachedConnections()
        return closed
