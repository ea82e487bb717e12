# -*- test-case-name: tests.test_plugins -*-
"""
Finding balancer and health-checker plugins.

Twisted's plugin loader only logs a dropin that fails to import; this module
also reports by name a plugin that does not provide its interface, and
refuses two plugins with the same name.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, cast

import twisted.plugins
from twisted.logger import Logger
from twisted.plugin import getPlugins
from zope.interface.exceptions import Invalid
from zope.interface.interface import InterfaceClass
from zope.interface.verify import verifyObject

from wsrelay.interfaces import IBalancerFactory, IHealthCheckerFactory

log = Logger()


class PluginError(Exception):
    """
    A plugin cannot be used; the message says which and why.
    """


def extendPluginPath(directories: Sequence[str]) -> None:
    """
    Make Twisted look for plugins in each C{directory} too.

    Each directory is a C{twisted/plugins}-style folder of dropins (or a
    folder holding C{twisted/plugins/}); Twisted finds plugins through
    C{twisted.plugins.__path__}, not C{sys.path}.
    """
    for d in directories:
        nested = os.path.join(d, "twisted", "plugins")
        folder = nested if os.path.isdir(nested) else d
        if folder not in twisted.plugins.__path__:
            twisted.plugins.__path__.append(folder)


def findPlugins(interface: InterfaceClass) -> dict[str, Any]:
    """
    Find every plugin providing C{interface}, by name.

    @raise PluginError: When a plugin does not implement C{interface}
        correctly or two plugins share a name.
    """
    found: dict[str, Any] = {}
    # getPlugins is typed for interfaces named statically, not an
    # InterfaceClass value.
    plugin: Any
    for plugin in getPlugins(cast("type[Any]", interface)):
        label = getattr(plugin, "name", None) or repr(plugin)
        try:
            verifyObject(interface, plugin)
        except Invalid as e:
            first = str(e).strip().splitlines()[0]
            raise PluginError(
                f"plugin {label!r} does not implement {interface.__name__}: {first}"
            ) from None
        if label in found:
            raise PluginError(f"two {interface.__name__} plugins are named {label!r}")
        found[label] = plugin
    return found


def balancerFactories() -> dict[str, Any]:
    """
    @return: The installed balancer factories by name.
    """
    return findPlugins(IBalancerFactory)


def healthCheckerFactories() -> dict[str, Any]:
    """
    @return: The installed health-checker factories by name.
    """
    return findPlugins(IHealthCheckerFactory)
