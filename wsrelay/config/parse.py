# -*- test-case-name: tests.test_config -*-
"""
Value parsers: each takes a value as written and a L{_Context}, and returns
the field's value or raises L{_BadValue} with the problem.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from wsrelay.auth import HTTP_OPTIONS, JWT_OPTIONS, NO_AUTH
from wsrelay.config.errors import _BadValue, _expected
from wsrelay.config.values import (
    _PRINTABLE_ASCII,
    NO_HEALTH,
    BackendConfig,
    _maxconnProblem,
    _normaliseHost,
    _weightProblem,
    redactURL,
)
from wsrelay.redis import OPTIONS as REDIS_OPTIONS

DEFAULT_BALANCERS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "round_robin": (),
        "least_connections": (),
        "random_two": (),
        "first": (),
        "consistent_hash": ("hash_on",),
    }
)
"""
The balancer names (and the route keys each declares) assumed when
L{loadConfig} is not told which balancer plugins are installed.
"""

DEFAULT_CHECKERS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "tcp": (),
        "websocket": ("health_path",),
        "http": ("health_path", "health_status"),
    }
)
"""
The health-checker names (and the route keys each declares) assumed when
L{loadConfig} is not told which checker plugins are installed.
"""

DEFAULT_SOURCES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "websocket": (),
        "redis": REDIS_OPTIONS,
    }
)
"""
The fan-out source names (and the route keys each declares) assumed when
L{loadConfig} is not told which source plugins are installed.
"""

DEFAULT_AUTHORIZERS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "jwt": JWT_OPTIONS,
        "http": HTTP_OPTIONS,
    }
)
"""
The authorizer names (and the route keys each declares) assumed when
L{loadConfig} is not told which authorizer plugins are installed.
"""


@dataclass(frozen=True)
class _Context:
    """
    What value parsers may need besides the value.

    @ivar directory: The directory of the configuration file.
    @ivar balancers: Installed balancer names and the keys they declare.
    @ivar checkers: Installed health-checker names and their keys.
    @ivar sources: Installed fan-out source names and their keys.
    @ivar authorizers: Installed authorizer names and their keys.
    """

    directory: str
    balancers: Mapping[str, tuple[str, ...]]
    checkers: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: DEFAULT_CHECKERS
    )
    sources: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: DEFAULT_SOURCES
    )
    authorizers: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: DEFAULT_AUTHORIZERS
    )


_Parser = Callable[[str, _Context], Any]
_DIGITS = re.compile(r"[0-9]+\Z")
_DECIMAL = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)\Z")
_MAX_INT = 2**63 - 1


def _wholeNumber(minimum: int, unit: str = "bytes") -> _Parser:
    """
    @return: A parser of whole numbers of C{unit} of at least C{minimum}.
    """
    what = f"a whole number of {unit} >= {minimum}"

    def parse(value: str, context: _Context) -> int:
        if not _DIGITS.match(value):
            raise _BadValue(_expected(what, value))
        number = int(value) if len(value.lstrip("0")) < 20 else _MAX_INT + 1
        if number > _MAX_INT:
            raise _BadValue(_expected(f"{what} and <= {_MAX_INT}", value))
        if number < minimum:
            raise _BadValue(_expected(what, value))
        return number

    return parse


def _seconds(zeroAllowed: bool, meaning: str = "") -> _Parser:
    """
    @return: A parser of durations in seconds (C{"0.5"}, C{"10"}): positive,
        or also zero when C{zeroAllowed}; C{meaning} explains zero.
    """
    what = "a number of seconds " + (">= 0" if zeroAllowed else "> 0") + meaning

    def parse(value: str, context: _Context) -> float:
        if not _DECIMAL.match(value):
            raise _BadValue(_expected(what, value))
        number = float(value)
        if not math.isfinite(number) or (number == 0 and not zeroAllowed):
            raise _BadValue(_expected(what, value))
        return number

    return parse


def _milliseconds(meaning: str = "") -> _Parser:
    """
    @return: A parser of durations in milliseconds (C{"0"}, C{"2.5"}), zero
        or more; C{meaning} explains zero.
    """
    what = "a number of milliseconds >= 0" + meaning

    def parse(value: str, context: _Context) -> float:
        if not _DECIMAL.match(value):
            raise _BadValue(_expected(what, value))
        number = float(value)
        if not math.isfinite(number):
            raise _BadValue(_expected(what, value))
        return number

    return parse


def _rate(value: str, context: _Context) -> float:
    if not _DECIMAL.match(value):
        raise _BadValue(_expected("a number >= 0 (0 = no limit)", value))
    return float(value)


def _choice(*words: str) -> _Parser:
    """
    @return: A parser accepting one of C{words}.
    """
    what = "one of " + ", ".join(repr(w) for w in words)

    def parse(value: str, context: _Context) -> str:
        if value not in words:
            raise _BadValue(_expected(what, value))
        return value

    return parse


def _parseAdminHosts(value: str, context: _Context) -> tuple[str, ...]:
    hosts = []
    for item in re.split(r"[\s,]+", value.lower()):
        if not item:
            continue
        host = _normaliseHost(item)
        if host is None:
            raise _BadValue(_expected("host names without port", item))
        hosts.append(host)
    return tuple(hosts)


def _parseWorkers(value: str, context: _Context) -> int:
    if value == "auto":
        return os.cpu_count() or 1
    number: int = _wholeNumber(1, "processes")(value, context)
    return number


def _parseTrustedProxies(value: str, context: _Context) -> tuple[str, ...]:
    networks = []
    for item in re.split(r"[\s,]+", value):
        if not item:
            continue
        try:
            network = ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise _BadValue(_expected("IP addresses or CIDR networks", item)) from None
        networks.append(str(network))
    return tuple(networks)


def _parsePluginPath(value: str, context: _Context) -> tuple[str, ...]:
    directories = []
    for item in value.split():
        directory = os.path.join(context.directory, os.path.expanduser(item))
        directory = os.path.abspath(directory)
        if not os.path.isdir(directory):
            raise _BadValue(
                _expected("an existing directory", item) + f" ({directory!r})"
            )
        directories.append(directory)
    return tuple(directories)


def _parseFile(value: str, context: _Context) -> str:
    path = os.path.abspath(os.path.join(context.directory, os.path.expanduser(value)))
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        raise _BadValue(_expected("a readable file", value) + f" ({path!r})")
    return path


def _parseSocketPath(value: str, context: _Context) -> str:
    if not value.strip():
        raise _BadValue(_expected("the path of a Unix socket", value))
    path = os.path.abspath(os.path.join(context.directory, os.path.expanduser(value)))
    if len(os.fsencode(path)) > 107:
        raise _BadValue(_expected("a Unix socket path of at most 107 bytes", value))
    if not os.path.isdir(os.path.dirname(path)):
        raise _BadValue(_expected("a path in an existing directory", value))
    return path


def _parseOrigins(value: str, context: _Context) -> tuple[str, ...]:
    origins = []
    for item in re.split(r"[\s,]+", value):
        if not item:
            continue
        parts = urlsplit(item)
        if (
            parts.scheme not in ("http", "https")
            or not parts.netloc
            or parts.path not in ("", "/")
            or parts.query
            or parts.fragment
        ):
            raise _BadValue(_expected("origins such as https://app.example.com", item))
        origins.append(f"{parts.scheme}://{parts.netloc}".lower())
    if not origins:
        raise _BadValue(_expected("one or more origins", value))
    return tuple(origins)


def _onOff(value: str, context: _Context) -> bool:
    if value not in ("on", "off"):
        raise _BadValue(_expected("on or off", value))
    return value == "on"


def _parseRoutePath(value: str, context: _Context) -> str:
    if (
        not value.startswith("/")
        or not _PRINTABLE_ASCII.match(value)
        or "?" in value
        or "#" in value
    ):
        raise _BadValue(
            _expected("a path starting with '/' (no query, no fragment)", value)
        )
    return value.rstrip("/") or "/"


def _parseRouteHost(value: str, context: _Context) -> str:
    host = value.lower()
    if host.startswith("[") and host.endswith("]") and ":" in host:
        host = host[1:-1]
    normalised = _normaliseHost(host)
    if normalised is None:
        raise _BadValue(_expected("a host name or IP address without port", value))
    return normalised


_OPTION_TOKEN = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)\Z", re.DOTALL)
_BACKEND_OPTIONS = ("name", "weight", "maxconn")


def _parseBackends(value: str, context: _Context) -> tuple[BackendConfig, ...]:
    items: list[tuple[str, dict[str, str]]] = []
    for token in value.split():
        option = _OPTION_TOKEN.match(token)
        if option is None:
            items.append((token, {}))
            continue
        name = option.group(1).lower()
        if not items:
            raise _BadValue(f"option {name!r} comes before any backend URL")
        url, options = items[-1]
        if name not in _BACKEND_OPTIONS:
            raise _BadValue(
                f"unknown backend option {name!r} after {redactURL(url)};"
                " known options: " + ", ".join(_BACKEND_OPTIONS)
            )
        if name in options:
            raise _BadValue(f"option {name!r} given twice for {redactURL(url)}")
        options[name] = option.group(2)
    if not items:
        raise _BadValue(_expected("one or more ws:// or wss:// URLs", value))
    backends: list[BackendConfig] = []
    for url, options in items:
        weight = options.get("weight", "1")
        if not _DIGITS.match(weight) or len(weight.lstrip("0")) > 4:
            raise _BadValue(_weightProblem(url, weight))
        maxconn = options.get("maxconn")
        if maxconn is not None and (
            not _DIGITS.match(maxconn) or len(maxconn.lstrip("0")) > 7
        ):
            raise _BadValue(_maxconnProblem(url, maxconn))
        backend = BackendConfig.fromURL(
            url,
            options.get("name"),
            int(weight),
            None if maxconn is None else int(maxconn),
        )
        if any(b.name == backend.name for b in backends):
            raise _BadValue(
                f"two backends are named {backend.name!r}; give one a name= option"
            )
        backends.append(backend)
    return tuple(backends)


def _installed(names: Iterable[str]) -> str:
    """
    @return: C{"; installed: "} and the installed plugins' names.
    """
    return "; installed: " + (", ".join(sorted(names)) or "none")


def _parseBalancer(value: str, context: _Context) -> str:
    if value not in context.balancers:
        raise _BadValue(f"unknown balancer {value!r}" + _installed(context.balancers))
    return value


def _parseSource(value: str, context: _Context) -> str:
    if value not in context.sources:
        raise _BadValue(f"unknown source {value!r}" + _installed(context.sources))
    return value


def _parseAuth(value: str, context: _Context) -> str:
    if value != NO_AUTH and value not in context.authorizers:
        raise _BadValue(
            f"unknown authorizer {value!r}; {NO_AUTH!r} turns authorization off"
            + _installed(context.authorizers)
        )
    return value


def _parseLines(value: str, context: _Context) -> tuple[str, ...]:
    return tuple(line.strip() for line in value.splitlines() if line.strip())


def _parseHealth(value: str, context: _Context) -> str:
    if value != NO_HEALTH and value not in context.checkers:
        raise _BadValue(
            f"unknown health checker {value!r}; {NO_HEALTH!r} turns checks off"
            + _installed(context.checkers)
        )
    return value


_JSON_FIELD = re.compile(r"json:(.+)\Z", re.DOTALL)
_PARAMETER = re.compile(r"[A-Za-z0-9_.~-]+\Z")


def _parseResume(value: str, context: _Context) -> str | None:
    """
    C{json:FIELD} (any non-empty field name), C{envelope}, or C{off}.
    """
    if value == "off":
        return None
    if value == "envelope" or _JSON_FIELD.match(value):
        return value
    raise _BadValue(_expected("json:FIELD, envelope or off", value))


def _parseParameter(value: str, context: _Context) -> str:
    """
    A query parameter name: letters, digits and C{_.~-} (no escaping).
    """
    if not _PARAMETER.match(value):
        raise _BadValue(
            _expected("a query parameter name of letters, digits, '_.~-'", value)
        )
    return value
