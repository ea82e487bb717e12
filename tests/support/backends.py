"""
Backends on loopback: a C{websockets} server in a thread that echoes
and obeys commands sent as text (L{script}), stopped with the test.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Response
from websockets.sync.server import ServerConnection, serve

from tests.support.waiting import CLOSING, TIMEOUT, Changes
from wsrelay.ws.connecting import PlainTCPEndpoint

_P = TypeVar("_P", bound=Protocol)


def listenRecording(
    protocol: Callable[[], _P], accepted: list[_P]
) -> Deferred[IListeningPort]:
    """
    A plain TCP backend on this process's reactor: listen on 127.0.0.1, on
    a port the system chooses.

    @param protocol: Makes the protocol of each connection accepted.
    @param accepted: Each protocol made is appended to it.
    @return: Fires with the listening port.
    """

    def build(addr: object) -> _P:
        p = protocol()
        accepted.append(p)
        return p

    factory = Factory()
    factory.buildProtocol = build  # type: ignore[method-assign,assignment]
    return TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)


def plainEndpoint(port: IListeningPort) -> PlainTCPEndpoint:
    """
    @return: The relay's endpoint for a backend listening on C{port}
        (L{listenRecording}), with a 5 second timeout.
    """
    return PlainTCPEndpoint(
        reactor,  # type: ignore[arg-type]
        "127.0.0.1",
        port.getHost().port,  # type: ignore[attr-defined]
        5,
    )


def script(connection: ServerConnection) -> None:
    """
    A backend that echoes, and obeys commands sent as text: C{sink} (count
    messages from then on instead of echoing them), C{count} (send that
    count), C{stall} (stop reading until the backend's C{stall} event),
    C{close CODE REASON}, C{vanish}, C{headers} (sends the request's
    headers back as lines), C{path} (sends the request path), C{extensions}
    (sends the C{Sec-WebSocket-Extensions} of its own 101, or nothing),
    C{flood N SIZE} (sends N binary messages of SIZE bytes).
    """
    sinking = False
    received = 0
    try:
        for message in connection:
            if message == "stall":
                stall = getattr(connection, "stall", None)
                if stall is not None:
                    stall.wait(TIMEOUT)
                continue
            if sinking and message != "count":
                received += 1
                continue
            if message == "sink":
                sinking = True
                continue
            if message == "count":
                connection.send(str(received))
                continue
            if isinstance(message, str) and message.startswith("close "):
                _, code, *reason = message.split(" ", 2)
                connection.close(int(code), reason[0] if reason else "")
                return
            if message == "vanish":
                connection.socket.shutdown(2)
                connection.socket.close()
                return
            if message == "headers":
                connection.send(
                    "\n".join(
                        f"{k}: {v}" for k, v in connection.request.headers.raw_items()
                    )
                )
            elif message == "path":
                connection.send(connection.request.path)
            elif message == "extensions":
                response = connection.response
                answer = response.headers.get("Sec-WebSocket-Extensions")
                connection.send(answer or "")
            elif isinstance(message, str) and message.startswith("flood "):
                _, n, size = message.split()
                for i in range(int(n)):
                    connection.send(i.to_bytes(4, "big") * (int(size) // 4))
            else:
                connection.send(message)
    except ConnectionClosed:
        pass


class Backend:
    """
    A C{websockets} server in a thread.

    @ivar closes: The close frames received, as C{(code, reason)}.
    @ivar requested: Set when the first handshake request arrives (before
        C{gate} holds it).
    @ivar compression: C{websockets}' C{compression}: L{None} declines
        permessage-deflate, C{"deflate"} accepts it.
    @ivar url: Its C{ws://} URL; an IPv6 C{host} (C{::1}) in brackets.
    """

    def __init__(
        self,
        handler: Callable[[ServerConnection], None] = script,
        subprotocols: list[str] | None = None,
        refuse: tuple[int, list[tuple[str, str]], bytes] | None = None,
        gate: threading.Event | None = None,
        compression: str | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.closes: list[tuple[int | None, str | None]] = []
        self.connections = 0
        self.refuse = refuse

        self.stall = threading.Event()
        self.requested = threading.Event()
        self._changes = Changes()

        def handle(connection: ServerConnection) -> None:
            self.connections += 1
            connection.stall = self.stall  # type: ignore[attr-defined]
            try:
                handler(connection)
            finally:
                rcvd = connection.protocol.close_rcvd
                if rcvd is not None:
                    self.closes.append((rcvd.code, rcvd.reason))
                    self._changes.changedInThread()

        def processRequest(connection: ServerConnection, request: Any) -> Any:
            self.requested.set()
            if gate is not None:
                gate.wait(TIMEOUT)
            if self.refuse is None:
                return None
            status, headers, body = self.refuse
            return Response(status, "Refused", Headers(headers), body)

        self.server = serve(
            handle,
            host,
            0,
            subprotocols=subprotocols,  # type: ignore[arg-type]
            process_request=processRequest,
            compression=compression,
            max_size=None,
            family=socket.AF_INET6 if ":" in host else socket.AF_INET,
        )
        self.port = self.server.socket.getsockname()[1]
        self.url = f"ws://{f'[{host}]' if ':' in host else host}:{self.port}/"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def whenClosed(self, count: int = 1, timeout: float = CLOSING) -> Deferred[None]:
        """
        @return: A L{Deferred} that fires once C{count} close frames are
            in L{closes} (a connection's is recorded when its handler is
            done, once its TCP connection ended), failing after C{timeout}
            seconds.
        """
        return self._changes.until(lambda: len(self.closes) >= count, timeout)

    def stop(self) -> None:
        """
        Stop serving and close its connections.
        """
        self.server.shutdown()
        self._thread.join(TIMEOUT)


def startBackend(testCase: Any, **kwargs: Any) -> Backend:
    """
    Start a L{Backend} stopped at the end of C{testCase}.
    """
    backend = Backend(**kwargs)
    testCase.addCleanup(backend.stop)
    return backend
