# -*- test-case-name: tests.test_proxy,tests.test_units -*-
"""
Opening a proxy session's upstream: what the session asks of a backend for
its client (the request target and header fields of the upstream's opening
handshake), what a balancer may know of the client (L{ConnectionInfo}),
and the client's answer when no upstream could be had (L{Refused}).
"""

from __future__ import annotations

from http.cookies import CookieError, SimpleCookie
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from wsrelay.routing import ConnectionInfo, joinPath
from wsrelay.ws.handshake import RequestLines
from wsrelay.ws.screening import Refused
from wsrelay.ws.upstream import (
    END_TO_END,
    NO_EXTENSIONS,
    RELAY_DEFLATE,
    RequestHeaders,
    UpstreamRefused,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from twisted.internet.interfaces import IReactorTime
    from twisted.python.failure import Failure

    from wsrelay.roles import Upstreams
    from wsrelay.routing import Backend, Route
    from wsrelay.ws.frontend import ClientAddresses, FrontendProtocol
    from wsrelay.ws.handshake import Head
    from wsrelay.ws.upstream import UpstreamProtocol


def connectionInfo(
    frontend: FrontendProtocol, addresses: ClientAddresses
) -> ConnectionInfo:
    """
    @param frontend: The client's leg, its request screened.
    @param addresses: Says who the client is.
    @return: What a balancer may know of this connection.
    """
    f = frontend
    assert f.head is not None
    cookies: dict[str, str] = {}
    raw = f.head.get("cookie")
    if raw:
        try:
            jar: SimpleCookie = SimpleCookie(raw.replace(", ", "; "))
            cookies = {k: m.value for k, m in jar.items()}
        except CookieError:
            pass
    return ConnectionInfo(
        addresses.clientAddress(f),
        f.path,
        f.query,
        f.head.headers,
        cookies,
    )


class LazyConnectionInfo(ConnectionInfo):
    """
    A L{ConnectionInfo} whose fields are read from the client's leg only
    when something reads one: most balancers (round robin, least
    connections, random) never do, and reading them (the client's address,
    the cookies parsed, a frozen dataclass made) is a few microseconds of
    every proxied handshake.  For whoever reads it, it is the
    L{ConnectionInfo} L{connectionInfo} makes: its fields, equality, hash
    and C{repr} are that one's.
    """

    @classmethod
    def of(
        cls, frontend: FrontendProtocol, addresses: ClientAddresses
    ) -> LazyConnectionInfo:
        """
        @return: What a balancer may know of C{frontend}'s connection
            (L{connectionInfo}), read when first needed.
        """
        info = cls.__new__(cls)
        object.__setattr__(info, "_source", (frontend, addresses))
        return info

    def built(self) -> ConnectionInfo:
        """
        @return: The plain L{ConnectionInfo}, made on the first call; the
            fields are this object's attributes from then on.
        """
        fields = self.__dict__
        plain: ConnectionInfo | None = fields.get("_plain")
        if plain is None:
            source = fields.pop("_source", None)
            if source is None:
                # Made with its fields (dataclasses.replace does).
                plain = ConnectionInfo(**fields)
            else:
                plain = connectionInfo(*source)
                fields.update(vars(plain))
            fields["_plain"] = plain
        return plain

    def __getattr__(self, name: str) -> Any:
        # Only for what the instance does not have yet: the fields, read
        # all at once on the first.
        if name.startswith("_") or "_source" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.built(), name)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, LazyConnectionInfo):
            other = other.built()
        return self.built() == other

    def __hash__(self) -> int:
        return hash(self.built())

    def __repr__(self) -> str:
        return repr(self.built())


def target(backend: Backend, frontend: FrontendProtocol) -> str:
    """
    @return: The request target for C{backend}: its URL's path with the
        client's path after the route's prefix, and its URL's query and the
        client's joined with C{&}.
    """
    config = backend.config
    resource = joinPath(config.path, frontend.remainder)
    query, more = config.query, frontend.query
    if more:
        query = f"{query}&{more}" if query else more
    return f"{resource}?{query}" if query else resource


def upstreamRequest(
    frontend: FrontendProtocol,
    addresses: ClientAddresses,
    dataPath: str,
    backend: Backend,
) -> tuple[str, RequestHeaders | RequestLines]:
    """
    @param frontend: The client's leg, its request screened.
    @param addresses: Says what the backend is told of the client; when
        it can write the fields of a client it does not trust as lines
        (L{wsrelay.admission.Admission.forwardedLines}), a passthrough
        request's are a L{RequestLines}.
    @param dataPath: The route's C{data_path}.
    @param backend: The backend the upstream goes to.
    @return: The request target and the header fields for C{backend},
        which say how the upstream leg treats extensions: on the
        passthrough data path the client's C{Sec-WebSocket-Extensions}
        fields go to the backend as they are, and its answer comes back
        to the client (L{END_TO_END}); on the message path the leg offers
        permessage-deflate itself when the client's leg uses it
        (L{RELAY_DEFLATE}).
    """
    f = frontend
    head = f.head
    assert head is not None
    resource = target(backend, f)
    if dataPath == "passthrough":
        quick = getattr(addresses, "forwardedLines", None)
        lines: str | None = quick(f, head) if quick is not None else None
        if lines is not None:
            return resource, passthroughLines(head, lines)
    headers = RequestHeaders(addresses.forwardedHeaders(f, head))
    protocols = head.get("sec-websocket-protocol")
    if protocols:
        headers.append(("Sec-WebSocket-Protocol", protocols))
    if dataPath == "passthrough":
        headers.plain = True
        headers.key = clientKey(head)
        offers = (
            [
                (n, v)
                for (n, v) in head.headers
                if n.lower() == "sec-websocket-extensions"
            ]
            # (The fields by name are made already: screening read them.)
            if "sec-websocket-extensions" in head.fields
            else None
        )
        if offers:
            headers.extend(offers)
            headers.extensions = END_TO_END
    elif f.relaysDeflate():
        headers.extensions = RELAY_DEFLATE
    return resource, headers


def clientKey(head: Head) -> str | None:
    """
    @return: The client's C{Sec-WebSocket-Key}, which a plain upstream leg
        sends on to the backend, as a proxy that passes the request through
        does (its request was checked: it has exactly one).
    """
    keys = head.fields.get("sec-websocket-key")
    return keys[0].strip() if keys else None


def passthroughLines(head: Head, forwarded: str) -> RequestLines:
    """
    @param head: The client's request.
    @param forwarded: Its end-to-end and forwarding fields as lines.
    @return: A passthrough request's fields for C{head} as lines: those,
        and the client's C{Sec-WebSocket-Protocol} and
        C{Sec-WebSocket-Extensions}, as L{upstreamRequest} lists them; and
        the client's C{Sec-WebSocket-Key}, which the leg sends on
        (L{RequestLines.key <RequestLines>}).
    """
    fields = head.fields
    # (clientKey, inline.)
    keys = fields.get("sec-websocket-key")
    key = keys[0].strip() if keys else None
    # What the head says but for its key, the same for every head of its
    # shape (written once for them, Head.parts).
    parts = head.parts
    written = None if parts is None else parts.passthrough
    if written is None:
        protocols = fields.get("sec-websocket-protocol")
        lines = (
            f"Sec-WebSocket-Protocol: {', '.join(protocols)}\r\n" if protocols else ""
        )
        if "sec-websocket-extensions" not in fields:
            written = (lines, NO_EXTENSIONS)
        else:
            # The offers as sent (names too), in order; the length first,
            # which most names fail.
            lines += "".join(
                [
                    f"{n}: {v}\r\n"
                    for (n, v) in head.headers
                    if len(n) == 24 and n.lower() == "sec-websocket-extensions"
                ]
            )
            written = (lines, END_TO_END)
        if parts is not None:
            parts.passthrough = written
    lines, extensions = written
    return RequestLines(forwarded + lines if lines else forwarded, extensions, key)


def clientAnswer(up: UpstreamProtocol) -> tuple[str | None, dict[str, list[str]]]:
    """
    @param up: An open upstream.
    @return: The subprotocol and the header fields of the client's 101:
        the backend's own, and on the passthrough data path its answer to
        the client's extension offer.
    """
    headers: dict[str, list[str]] = {}
    for name, value in up.responseHeaders:
        if not value.isascii():
            # Read as ISO-8859-1, a character per byte (parseHead); the 101
            # is written in UTF-8, as Autobahn writes it.  The backend's
            # head was checked to be UTF-8 (ResponseReader), so this gives
            # the client the backend's bytes.
            value = value.encode("iso-8859-1").decode("utf-8")
        headers.setdefault(name, []).append(value)
    if up.extensionsAnswer:
        # Passthrough: the backend's answer to the client's offer.
        headers["Sec-WebSocket-Extensions"] = list(up.extensionsAnswer)
    return up.websocket_protocol_in_use, headers


class UpstreamOpener:
    """
    Opens the upstreams of one proxy session, each within the handshake's
    budget, and counts them against their backends.
    """

    log = Logger()
    _opening: Deferred[tuple[Backend, UpstreamProtocol]] | None = None

    def __init__(
        self,
        route: Route,
        frontend: FrontendProtocol,
        upstreams: Upstreams,
        addresses: ClientAddresses,
        clock: IReactorTime,
        handshakeTimeout: float,
    ) -> None:
        """
        @param route: The session's route (a proxy route).
        @param frontend: The client's leg, its request screened.
        @param upstreams: Opens the upstream.
        @param addresses: Says who the client is, and what the backend is
            told of it.
        @param clock: Times the handshake's budget.
        @param handshakeTimeout: The budget, in seconds.
        """
        self._route = route
        self._frontend = frontend
        self._upstreams = upstreams
        self._addresses = addresses
        self._clock = clock
        self._handshakeTimeout = handshakeTimeout

    def open(self, avoid: Backend | None) -> Deferred[tuple[Backend, UpstreamProtocol]]:
        """
        Open an upstream within C{handshake_timeout}, to a backend other
        than C{avoid} if the route has one.

        @return: A L{Deferred} that fires with the backend and the open
            upstream, or fails (L{refusal} says what to tell the client).
        """
        return self.start(avoid).addBoth(self._settled)

    def start(
        self,
        avoid: Backend | None,
        then: Callable[..., object] | None = None,
        thenArgs: tuple[object, ...] = (),
    ) -> Deferred[Any]:
        """
        L{open}, for a caller that ends the opening itself, with no
        callback of the opener's on the handshake's path: L{opened} ends
        it once the upstream opened, L{settled} otherwise.

        @param then: The caller's callback for either outcome, with
            C{thenArgs}, called as the L{Deferred}'s first (L{Upstreams.open
            <wsrelay.roles.Upstreams.open>}).
        """
        opening = self._opening = self._upstreams.open(
            self._route,
            LazyConnectionInfo.of(self._frontend, self._addresses),
            self.request,
            tuple(self._frontend.websocket_protocols),
            avoid,
            self._clock.seconds() + self._handshakeTimeout,
            then,
            thenArgs,
        )
        return opening

    def settled(self) -> None:
        """
        The upstream L{start} is opening failed, or is open (L{opened}
        says so too): there is nothing left to cancel.
        """
        self._opening = None

    def _settled(self, result: Any) -> Any:
        self._opening = None
        return result

    def cancel(self) -> None:
        """
        Stop opening an upstream, if one is being opened: the L{Deferred}
        L{open} gave fails with L{CancelledError
        <twisted.internet.defer.CancelledError>}.
        """
        opening, self._opening = self._opening, None
        if opening is not None:
            opening.cancel()

    def request(self, backend: Backend) -> tuple[str, RequestHeaders | RequestLines]:
        """
        @return: The request target and the header fields for C{backend}
            (L{upstreamRequest}).
        """
        config = self._route.config
        dataPath = config.dataPath if config.mode == "proxy" else "message"
        return upstreamRequest(self._frontend, self._addresses, dataPath, backend)

    def refusal(self, f: Failure) -> Refused:
        """
        Turn a failure to open the upstream into the client's answer.
        """
        e = f.value
        if isinstance(e, Refused):
            return e
        if isinstance(e, UpstreamRefused):
            return Refused(e.status, e.reason, e.headers, e.body)
        self.log.failure(
            "opening upstream for route {route}", f, route=self._route.name
        )
        return Refused(500, "Internal Server Error")

    def opened(self, backend: Backend) -> None:
        """
        An upstream to C{backend} is the session's now: count it.  The
        opening is over, with nothing left to cancel (as L{settled} says,
        which a caller of L{start} need not call then).
        """
        self._opening = None
        backend.connections += 1
        backend.totalConnections += 1
        listener = self._route.loadListener
        if listener is not None:
            listener.connectionOpened(backend)

    def closed(self, backend: Backend, up: UpstreamProtocol) -> None:
        """
        The session's upstream C{up} to C{backend} closed: count it no more,
        and give its slot to the oldest waiter of the route's queue.
        """
        backend.count(up)
        backend.connections -= 1
        listener = self._route.loadListener
        if listener is not None:
            listener.connectionClosed(backend)
        self._route.queue.slotFreed()
