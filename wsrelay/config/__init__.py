# -*- test-case-name: tests.test_config -*-
"""
Reading and validating wsrelay's INI configuration file.

The file has one C{[relay]} section, one or more C{[route:NAME]} sections
and an optional C{[demo]} section; C{docs/configuration.md} describes every
key.  Each kind of section has a L{SectionSchema} in L{SCHEMAS}, where
every key it knows is one L{KeySpec} row: the row names the key, the field
of the frozen value class it fills, a short type for the documentation, the
function that parses it and one line saying what it means.  The field's
default on the value class is the key's default; a field without a default
is a required key.

A route is a L{RouteConfig}: a L{ProxyRouteConfig} or a
L{FanoutRouteConfig}, as its C{mode} says, both with the fields of
L{BaseRouteConfig}; a key whose field only one of them has is refused in a
route of the other mode.

L{loadConfig} and L{parseConfig} raise nothing but L{ConfigError}, whose
message is one line naming the file, and where known the section and key::

    relay.ini: [route:chat] balancer: unknown balancer 'foo'; installed: ...

The package's modules: L{wsrelay.config.errors} (L{ConfigError}),
L{wsrelay.config.values} (the value classes), L{wsrelay.config.parse} (value
parsers), L{wsrelay.config.endpoints} (endpoint strings),
L{wsrelay.config.schema} (the key table) and L{wsrelay.config.reader} (the
INI reader).  Everything public is imported here:
C{from wsrelay.config import X}.
"""

from wsrelay.config.endpoints import _endpointArguments
from wsrelay.config.errors import ConfigError
from wsrelay.config.parse import (
    DEFAULT_AUTHORIZERS,
    DEFAULT_BALANCERS,
    DEFAULT_CHECKERS,
    DEFAULT_SOURCES,
)
from wsrelay.config.reader import loadConfig, parseConfig
from wsrelay.config.schema import (
    DEMO_KEYS,
    FANOUT_KEYS,
    KEYS,
    PROXY_KEYS,
    RELAY_KEYS,
    REQUIRED,
    ROUTE_KEYS,
    SCHEMAS,
    SECTION_KEYS,
    KeySpec,
    SectionSchema,
)
from wsrelay.config.values import (
    DEFAULT_SOURCE,
    NO_HEALTH,
    ROUTE_CLASSES,
    BackendConfig,
    BaseRouteConfig,
    DemoConfig,
    FanoutRouteConfig,
    ProxyRouteConfig,
    RelayConfig,
    RouteConfig,
    redactURL,
)

__all__ = [
    "DEFAULT_AUTHORIZERS",
    "DEFAULT_BALANCERS",
    "DEFAULT_SOURCE",
    "DEFAULT_CHECKERS",
    "DEFAULT_SOURCES",
    "DEMO_KEYS",
    "FANOUT_KEYS",
    "KEYS",
    "NO_HEALTH",
    "PROXY_KEYS",
    "RELAY_KEYS",
    "REQUIRED",
    "ROUTE_CLASSES",
    "ROUTE_KEYS",
    "SCHEMAS",
    "SECTION_KEYS",
    "BackendConfig",
    "BaseRouteConfig",
    "ConfigError",
    "DemoConfig",
    "FanoutRouteConfig",
    "KeySpec",
    "ProxyRouteConfig",
    "RelayConfig",
    "RouteConfig",
    "SectionSchema",
    "_endpointArguments",
    "loadConfig",
    "parseConfig",
    "redactURL",
]
