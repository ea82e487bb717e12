# -*- test-case-name: tests.test_config -*-
"""
Reading an INI file into a L{RelayConfig}: errors name the file, the section
and the key.
"""

from __future__ import annotations

import configparser
import dataclasses
import os
import re
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from wsrelay.auth import NO_AUTH
from wsrelay.config.endpoints import _shareable
from wsrelay.config.errors import ConfigError, _BadValue
from wsrelay.config.parse import (
    DEFAULT_AUTHORIZERS,
    DEFAULT_BALANCERS,
    DEFAULT_CHECKERS,
    DEFAULT_SOURCES,
    _Context,
    _installed,
)
from wsrelay.config.schema import (
    DEMO,
    RELAY,
    ROUTE,
    KeySpec,
)
from wsrelay.config.values import (
    _DEFAULT_BALANCER,
    DEFAULT_SOURCE,
    NO_HEALTH,
    ROUTE_CLASSES,
    DemoConfig,
    RelayConfig,
    RouteConfig,
)

_ROUTE_NAME = re.compile(r"[A-Za-z0-9_.-]+\Z")
_SECTIONS = "[relay], [route:NAME] and [demo]"
# Never the name of a section: a header is one line.  So [DEFAULT] is an
# ordinary (and unknown) section instead of defaults for all the others.
_NO_DEFAULT_SECTION = "\n"


def _readINI(text: str, filename: str) -> configparser.ConfigParser:
    """
    Parse INI syntax.

    @raise ConfigError: On a syntax error, a duplicate section or key.
    """
    parser = configparser.ConfigParser(
        interpolation=None,
        inline_comment_prefixes=(";", "#"),
        strict=True,
        empty_lines_in_values=False,
        default_section=_NO_DEFAULT_SECTION,
    )
    try:
        parser.read_string(text, source=filename)
    except configparser.MissingSectionHeaderError as e:
        raise ConfigError(
            filename,
            f"line {e.lineno}: expected a section header such as [relay], "
            f"got {e.line.strip()!r}",
        ) from None
    except configparser.ParsingError as e:
        lineno = e.errors[0][0]
        line = text.split("\n")[lineno - 1].strip()
        raise ConfigError(
            filename,
            f"line {lineno}: expected 'key = value', a [section] or a comment, "
            f"got {line!r}",
        ) from None
    except configparser.DuplicateSectionError as e:
        raise ConfigError(
            filename, f"section given twice (line {e.lineno})", e.section
        ) from None
    except configparser.DuplicateOptionError as e:
        raise ConfigError(
            filename, f"key given twice (line {e.lineno})", e.section, e.option
        ) from None
    except configparser.Error as e:
        raise ConfigError(filename, e.message) from None
    return parser


def _parseSection(
    filename: str,
    section: str,
    specs: tuple[KeySpec, ...],
    items: list[tuple[str, str]],
    context: _Context,
    extraKeys: Sequence[str] = (),
    hint: Callable[[str], str] = lambda key: "",
) -> tuple[dict[str, Any], dict[str, str]]:
    """
    Parse the keys of one section.

    @param specs: The keys the section knows.
    @param items: The section's keys and values, in the order of the file.
    @param extraKeys: Further keys accepted and returned as written.
    @param hint: Makes a remark on an unknown key (C{"; ..."} or C{""}).

    @return: The field values by attribute, and the extra keys' values.
    @raise ConfigError: On an unknown key, a bad value or a missing key.
    """
    byKey = {s.key: s for s in specs}
    values: dict[str, Any] = {}
    extra: dict[str, str] = {}
    for key, value in items:
        spec = byKey.get(key)
        if spec is None:
            if key in extraKeys:
                extra[key] = value
                continue
            known = ", ".join(sorted({*byKey, *extraKeys}))
            raise ConfigError(
                filename, f"unknown key; known keys: {known}{hint(key)}", section, key
            )
        try:
            values[spec.attribute] = spec.parse(value, context)
        except _BadValue as e:
            raise ConfigError(filename, str(e), section, key) from None
    for spec in specs:
        if spec.required and spec.attribute not in values:
            raise ConfigError(filename, "required key missing", section, spec.key)
    return values, extra


def _parseRoute(
    filename: str, section: str, items: list[tuple[str, str]], context: _Context
) -> RouteConfig:
    """
    Parse one C{[route:NAME]} section.
    """
    name = section[len("route:") :]
    if not _ROUTE_NAME.match(name):
        raise ConfigError(
            filename,
            f"unknown section; a route is [route:NAME] with a NAME of letters, "
            f"digits, '_', '.' and '-', got {name!r}",
            section,
        )
    given = dict(items).get("balancer")
    chosen = _DEFAULT_BALANCER if given is None else given
    if chosen not in context.balancers:
        if given is None:
            problem = f"the default balancer {chosen!r} is not installed"
        else:
            problem = f"unknown balancer {chosen!r}"
        raise ConfigError(
            filename, problem + _installed(context.balancers), section, "balancer"
        )
    balancerKeys = context.balancers[chosen]
    health = dict(items).get("health", NO_HEALTH)
    checkerKeys = context.checkers.get(health, ())
    source, sourceKeys = _chosenSource(filename, section, items, context)
    auth = dict(items).get("auth", NO_AUTH)
    authKeys = context.authorizers.get(auth, ())
    for kind, plugin, keys in (
        ("balancer", chosen, balancerKeys),
        ("health", health, checkerKeys),
        ("source", source, sourceKeys),
        ("auth", auth, authKeys),
    ):
        for key in keys:
            if key in ROUTE.byKey:
                problem = f"{plugin}: its option {key!r} is a built-in route key"
                raise ConfigError(filename, problem, section, kind)

    def hint(key: str) -> str:
        for kind, plugins in (
            ("balancer", context.balancers),
            ("health checker", context.checkers),
            ("source", context.sources),
            ("authorizer", context.authorizers),
        ):
            owners = sorted(n for n, keys in plugins.items() if key in keys)
            if owners:
                return f"; {key} is an option of {kind} {', '.join(owners)}"
        return ""

    specs = ROUTE.keys
    if source is not None and source != DEFAULT_SOURCE:
        # Only the websocket source always reads the backends; another
        # source that needs them says so (its build raises ValueError).
        specs = tuple(
            dataclasses.replace(s, default=()) if s.key == "backends" else s
            for s in specs
        )
    values, extra = _parseSection(
        filename,
        section,
        specs,
        items,
        context,
        (*balancerKeys, *checkerKeys, *sourceKeys, *authKeys),
        hint,
    )
    values.setdefault("backends", ())
    mode = values.pop("mode", ROUTE.byKey["mode"].default)
    for key, _ in items:
        spec = ROUTE.byKey.get(key)
        if spec is not None and spec.mode not in (None, mode):
            raise ConfigError(
                filename, f"only used with mode = {spec.mode}", section, key
            )
    if values.get("failover") == "reconnect":
        # A passthrough stream cannot be moved to another backend.
        values.setdefault("dataPath", "message")
    if (
        values.get("dataPath") == "passthrough"
        and values.get("failover") == "reconnect"
    ):
        raise ConfigError(
            filename,
            "failover = reconnect needs data_path = message (a passthrough"
            " stream cannot be moved to another backend)",
            section,
            "data_path",
        )
    if values.get("backoffCap", 30.0) < values.get("backoffBase", 0.5):
        raise ConfigError(
            filename,
            "backoff_cap must not be less than backoff_base",
            section,
            "backoff_cap",
        )
    if mode == "fanout":
        values["sourceOptions"] = MappingProxyType(
            {k: extra[k] for k in sourceKeys if k in extra}
        )
    return ROUTE_CLASSES[mode](
        name=name,
        options=MappingProxyType({k: extra[k] for k in balancerKeys if k in extra}),
        healthOptions=MappingProxyType(
            {k: extra[k] for k in checkerKeys if k in extra}
        ),
        authOptions=MappingProxyType({k: extra[k] for k in authKeys if k in extra}),
        **values,
    )


def _chosenSource(
    filename: str, section: str, items: list[tuple[str, str]], context: _Context
) -> tuple[str | None, tuple[str, ...]]:
    """
    @return: The source plugin a fan-out route chooses (L{None} for a
        proxy route) and the keys it declares, which the route then takes.
    @raise ConfigError: When the default source is not installed (an
        unknown C{source} is reported by its parser).
    """
    given = dict(items)
    if given.get("mode") != "fanout":
        return None, ()
    source = given.get("source", DEFAULT_SOURCE)
    if source not in context.sources and "source" not in given:
        raise ConfigError(
            filename,
            f"the default source {source!r} is not installed"
            + _installed(context.sources),
            section,
            "source",
        )
    return source, context.sources.get(source, ())


def _installedPlugins(
    plugins: Mapping[str, Sequence[str]] | None,
    default: Mapping[str, tuple[str, ...]],
) -> Mapping[str, tuple[str, ...]]:
    """
    @return: C{plugins} with each key list as a tuple of lower-case keys
        (as configparser reads them), or C{default}.
    """
    if plugins is None:
        return default
    result = {}
    for name, keys in plugins.items():
        if isinstance(keys, str):
            keys = (keys,)
        result[name] = tuple(k.lower() for k in keys)
    return result


def parseConfig(
    text: str,
    path: str,
    balancers: Mapping[str, Sequence[str]] | None = None,
    checkers: Mapping[str, Sequence[str]] | None = None,
    sources: Mapping[str, Sequence[str]] | None = None,
    authorizers: Mapping[str, Sequence[str]] | None = None,
) -> RelayConfig:
    """
    Parse and check a configuration file's text.

    @param text: The text of the file.
    @param path: The file's path, as the user gave it: errors name it, and
        relative C{plugin_path} entries are relative to its directory.
    @param balancers: The installed balancer names and the route keys each
        declares, or L{None} for L{DEFAULT_BALANCERS}.
    @param checkers: The same for health checkers, or L{None} for
        L{DEFAULT_CHECKERS}.
    @param sources: The same for fan-out sources, or L{None} for
        L{DEFAULT_SOURCES}.
    @param authorizers: The same for authorizers, or L{None} for
        L{DEFAULT_AUTHORIZERS}.

    @return: The configuration.
    @raise ConfigError: When anything is wrong; nothing else is raised.
    """
    absolute = os.path.abspath(path)
    context = _Context(
        os.path.dirname(absolute),
        _installedPlugins(balancers, DEFAULT_BALANCERS),
        _installedPlugins(checkers, DEFAULT_CHECKERS),
        _installedPlugins(sources, DEFAULT_SOURCES),
        _installedPlugins(authorizers, DEFAULT_AUTHORIZERS),
    )
    parser = _readINI(text, path)
    relay: dict[str, Any] | None = None
    demo: DemoConfig | None = None
    routes: list[RouteConfig] = []
    for section in parser.sections():
        items = parser.items(section, raw=True)
        if section == "relay":
            relay = _parseSection(path, section, RELAY.keys, items, context)[0]
        elif section == "demo":
            values = _parseSection(path, section, DEMO.keys, items, context)[0]
            demo = DemoConfig(**values)
        elif section.startswith("route:"):
            route = _parseRoute(path, section, items, context)
            for other in routes:
                if (other.host, other.path) == (route.host, route.path):
                    where = "" if route.host is None else f" on host {route.host!r}"
                    raise ConfigError(
                        path,
                        f"duplicate route: path {route.path!r}{where} is also "
                        f"routed by [{other.section}]",
                        section,
                        "path",
                    )
            routes.append(route)
        else:
            raise ConfigError(
                path, f"unknown section; the sections are {_SECTIONS}", section
            )
    if relay is None:
        raise ConfigError(path, "missing [relay] section")
    if relay.get("workers", 1) > 1:
        for description in relay["listen"]:
            if not _shareable(description):
                raise ConfigError(
                    path,
                    f"workers > 1 needs tcp:, tcp6: or ssl: listeners;"
                    f" {description!r} cannot be shared by processes",
                    "relay",
                    "workers",
                )
    if relay.get("controlSocket") is not None:
        admin = relay.get("admin")
        for description in (*relay["listen"], *([] if admin is None else [admin])):
            if not _shareable(description):
                raise ConfigError(
                    path,
                    f"control_socket needs tcp:, tcp6: or ssl: listeners;"
                    f" {description!r} cannot be handed over",
                    "relay",
                    "control_socket",
                )
    if not routes:
        raise ConfigError(path, "no [route:NAME] section; at least one is required")
    return RelayConfig(
        path=absolute,
        routes=tuple(routes),
        demo=DemoConfig() if demo is None else demo,
        **relay,
    )


def loadConfig(
    path: str,
    balancers: Mapping[str, Sequence[str]] | None = None,
    checkers: Mapping[str, Sequence[str]] | None = None,
    sources: Mapping[str, Sequence[str]] | None = None,
    authorizers: Mapping[str, Sequence[str]] | None = None,
) -> RelayConfig:
    """
    Read, parse and check a configuration file.

    @param path: The file's path, as the user gave it (errors name it this
        way; L{RelayConfig.path} is made absolute).
    @param balancers: See L{parseConfig}.
    @param checkers: See L{parseConfig}.
    @param sources: See L{parseConfig}.
    @param authorizers: See L{parseConfig}.

    @return: The configuration.
    @raise ConfigError: When the file cannot be read (missing, unreadable,
        not UTF-8) or anything in it is wrong; nothing else is raised.
    """
    try:
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        line = e.object[: e.start].count(b"\n") + 1
        raise ConfigError(
            path, f"not UTF-8 text: byte {e.object[e.start]:#04x} on line {line}"
        ) from None
    except OSError as e:
        raise ConfigError(path, f"cannot read the file: {e.strerror or e}") from None
    except ValueError as e:
        raise ConfigError(path, f"cannot read the file: {e}") from None
    return parseConfig(text, path, balancers, checkers, sources, authorizers)
