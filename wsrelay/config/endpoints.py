# -*- test-case-name: tests.test_config -*-
"""
Checking and completing Twisted server endpoint strings.
"""

from __future__ import annotations

from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure

from wsrelay.config.errors import _BadValue, _expected
from wsrelay.config.parse import _Context


class _ListenRecorder:
    """
    The reactor endpoint strings are parsed with, instead of a real one
    (which the relay must not install while it reads its configuration):
    Twisted's endpoint parsers only keep their reactor, and the C{listen}
    of a TCP or TLS endpoint calls L{listenTCP} or L{listenSSL}, which open
    nothing and record where the listener would listen (L{listenUNIX} only
    opens nothing).

    @ivar interface: The interface given to the last L{listenTCP} or
        L{listenSSL} call, or L{None} when there was none.
    """

    def __init__(self) -> None:
        self.interface: str | None = None

    def listenTCP(
        self, port: int, factory: object, backlog: int = 50, interface: str = ""
    ) -> None:
        """
        Record C{interface} (see L{IReactorTCP.listenTCP}).
        """
        self.interface = interface

    def listenSSL(
        self,
        port: int,
        factory: object,
        contextFactory: object,
        backlog: int = 50,
        interface: str = "",
    ) -> None:
        """
        Record C{interface} (see L{IReactorSSL.listenSSL}).
        """
        self.interface = interface

    def listenUNIX(
        self,
        address: str,
        factory: object,
        backlog: int = 50,
        mode: int = 0o666,
        wantPID: int = 0,
    ) -> None:
        """
        Record nothing: a UNIX socket has no interface (see
        L{IReactorUNIX.listenUNIX}).
        """


def _checkServerEndpoint(description: str) -> str:
    """
    Check a server endpoint string the way C{strports} will parse it.

    @return: C{description}.
    """
    try:
        serverFromString(_ListenRecorder(), description)
    except Exception as e:
        reason = str(e) or type(e).__name__
        raise _BadValue(
            f"not a valid Twisted server endpoint string: {description!r} ({reason})"
        ) from None
    return description


#: Where C{tcp:}, C{tcp6:} and C{ssl:} take their interface as a positional
#: argument, counting the type as argument 0 (C{tcp:PORT:INTERFACE}, and
#: see C{twisted.internet.endpoints}' parsers for the others).
_INTERFACE_POSITION = {"tcp": 2, "tcp6": 3, "ssl": 5}

#: The loopback interface, quoted for an endpoint string, per listener type.
_LOOPBACK = {"tcp": "127.0.0.1", "ssl": "127.0.0.1", "tcp6": "\\:\\:1"}

#: Listener types that never listen on a network interface of their own.
_NOT_NETWORK = ("unix", "systemd")


def _endpointArguments(description: str) -> tuple[list[str], dict[str, str]]:
    """
    Split a server endpoint string into its arguments with the quoting
    rules of Twisted's C{serverFromString}: C{:} separates arguments, the
    first C{=} of one separates its name from its value, and a backslash
    takes the next character as it is.

    @return: The positional arguments, the type first, and the keyword
        arguments.
    @raise ValueError: When C{description} ends with a lone backslash.
    """
    args: list[str] = []
    kwargs: dict[str, str] = {}
    name: str | None = None
    current: list[str] = []
    characters = iter(description)
    for character in characters:
        if character == "\\":
            escaped = next(characters, None)
            if escaped is None:
                raise ValueError("ends with a lone backslash")
            current.append(escaped)
        elif character == "=" and name is None:
            name = "".join(current)
            current = []
        elif character == ":":
            if name is None:
                args.append("".join(current))
            else:
                kwargs[name] = "".join(current)
            name = None
            current = []
        else:
            current.append(character)
    if name is None:
        args.append("".join(current))
    else:
        kwargs[name] = "".join(current)
    return args, kwargs


def _parseAdminEndpoint(value: str, context: _Context) -> str:
    """
    Parse C{admin}: a server endpoint string that, without an interface,
    listens on loopback rather than on every interface (C{/status} needs
    no token).

    A C{tcp:}, C{tcp6:} or C{ssl:} listener (also behind C{haproxy:})
    without an interface gets C{interface=} loopback; C{unix:} and
    C{systemd:} ones are kept as written, and any other type must name
    its interface: the relay cannot tell where it would listen.
    """
    description = _parseEndpoint(value, context)
    args, kwargs = _endpointArguments(description)
    offset = 1 if args[0].lower() == "haproxy" and len(args) > 1 else 0
    kind = args[offset].lower()
    if kind in _NOT_NETWORK:
        return description
    if "interface" in kwargs:
        return description
    if kind not in _INTERFACE_POSITION:
        raise _BadValue(
            f"cannot tell which interface {description!r} listens on; add"
            " interface=127.0.0.1 (or the address to serve the admin API on),"
            " or use a tcp:, tcp6:, ssl: or unix: endpoint"
        )
    if len(args) > offset + _INTERFACE_POSITION[kind]:
        return description
    safe = f"{description}:interface={_LOOPBACK[kind]}"
    try:
        interface = _listensOn(safe)
    except Exception as e:
        interface = str(e) or type(e).__name__
    if interface not in ("127.0.0.1", "::1"):
        raise _BadValue(
            f"{description!r} cannot be made to listen on loopback"
            f" ({interface}); add interface=127.0.0.1 (or the address to"
            " serve the admin API on)"
        )
    return safe


def _listensOn(description: str) -> str | None:
    """
    @return: The interface a TCP or TLS server endpoint string listens on
        (C{""} or C{"::"} for every one), or L{None} for another kind of
        listener.
    @raise Exception: Whatever Twisted raises when it cannot make the
        listener.
    """
    reactor = _ListenRecorder()
    failures: list[Failure] = []
    serverFromString(reactor, description).listen(Factory()).addErrback(failures.append)
    for failure in failures:
        failure.raiseException()
    return reactor.interface


def _parseListen(value: str, context: _Context) -> tuple[str, ...]:
    items = value.split()
    if not items:
        raise _BadValue(_expected("one or more server endpoint strings", value))
    for i, item in enumerate(items):
        _checkServerEndpoint(item)
        if item in items[:i]:
            raise _BadValue(f"endpoint {item!r} is listed twice")
    return tuple(items)


#: The listener types several worker processes can share (SO_REUSEPORT).
_SHAREABLE = ("tcp", "tcp6", "ssl")


def _shareable(description: str) -> bool:
    """
    @return: Whether worker processes can share a listener described so.
    """
    kind = description.removeprefix("haproxy:").split(":", 1)[0]
    return kind in _SHAREABLE


def _parseEndpoint(value: str, context: _Context) -> str:
    if len(value.split()) != 1:
        raise _BadValue(_expected("one server endpoint string", value))
    return _checkServerEndpoint(value)
