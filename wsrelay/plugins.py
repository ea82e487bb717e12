# -*- test-case-name: tests.test_plugins -*-
"""
Finding balancer and health-checker plugins, and reporting broken ones.

The search follows Twisted's plugin loader, with its C{dropin.cache}: a
dropin not changed since it was cached is not imported.  The dropins that
are not cached are imported here first, so that one that fails is
reported in one line naming it (Twisted's loader would log a traceback).
A broken plugin is skipped, logged once as a warning and remembered (see
L{brokenPlugins}); the others are used:

  - a dropin that fails to import, by module name;
  - a plugin that does not provide its interface (as
    L{zope.interface.verify.verifyObject} checks it), by its name;
  - a plugin whose name is taken by one found earlier (in the order of
    C{twisted.plugins.__path__}, then of file names), or is not a
    non-empty C{str}, by module and attribute.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import twisted.plugins
from twisted.logger import Logger
from twisted.plugin import CachedDropin, IPlugin, getCache
from twisted.python.filepath import FilePath
from twisted.python.modules import getModule
from zope.interface.exceptions import Invalid
from zope.interface.interface import InterfaceClass
from zope.interface.verify import verifyObject

from wsrelay.dropins import PluginError
from wsrelay.interfaces import IBalancerFactory, IHealthCheckerFactory

__all__ = [
    "PluginError",
    "PluginScan",
    "balancerFactories",
    "brokenPlugins",
    "extendPluginPath",
    "findPlugins",
    "healthCheckerFactories",
    "logPlugins",
    "scanPlugins",
]

log = Logger()


@dataclass(frozen=True)
class PluginScan:
    """
    The outcome of one search for the plugins of an interface.

    @ivar interface: The interface searched for.
    @ivar found: The usable plugins by name, in the order found.
    @ivar broken: One line saying what is wrong, for each plugin or dropin
        skipped, keyed by the dropin's module name (it does not import), by
        the plugin's name (it does not provide the interface), or by its
        place C{twisted.plugins.MODULE.ATTRIBUTE} (its name is taken or not
        a non-empty C{str}).
    """

    interface: InterfaceClass
    found: Mapping[str, Any]
    broken: Mapping[str, str]


_lastScans: dict[InterfaceClass, PluginScan] = {}
_warned: set[tuple[str, str]] = set()


def extendPluginPath(directories: Sequence[str]) -> None:
    """
    Make Twisted look for plugins in each directory too: a
    C{twisted/plugins}-style folder of dropins, or a folder holding
    C{twisted/plugins/} (Twisted searches C{twisted.plugins.__path__}, not
    C{sys.path}).
    """
    for d in directories:
        nested = os.path.join(d, "twisted", "plugins")
        folder = nested if os.path.isdir(nested) else d
        if folder not in twisted.plugins.__path__:
            twisted.plugins.__path__.append(folder)


def _describe(exception: BaseException) -> str:
    """
    @return: The exception's type and the first line of its message.
    """
    lines = str(exception).strip().splitlines()
    return ": ".join([type(exception).__name__, *lines[:1]])


def _readCache(folder: FilePath[str]) -> tuple[float, Mapping[str, CachedDropin]]:
    """
    @return: When the folder's C{dropin.cache} was written, and its entries
        by module name; C{0} and none when it cannot be read.
    """
    cache = folder.child("dropin.cache")
    try:
        with cache.open("r") as f:
            return cache.getModificationTime(), pickle.load(f)
    except Exception:
        return 0.0, {}


def _candidates() -> tuple[list[tuple[str, Any]], dict[str, str]]:
    """
    Read or import every dropin, as L{twisted.plugin.getCache} would.

    @return: The objects that may be plugins (cached or imported), each
        with its place, in the order found; and a one-line reason for each
        dropin that does not import, by module name.
    """
    found: list[tuple[str, Any]] = []
    broken: dict[str, str] = {}
    caches: dict[FilePath[str], tuple[float, Mapping[str, CachedDropin]]] = {}
    stale = False
    for module in getModule(twisted.plugins.__name__).iterModules():
        folder = module.filePath.parent()
        if folder not in caches:
            caches[folder] = _readCache(folder)
        written, entries = caches[folder]
        entry = entries.get(module.name.rpartition(".")[2])
        if entry is not None and module.filePath.getModificationTime() < written:
            found.extend((f"{module.name}.{p.name}", p) for p in entry.plugins)
            continue
        stale = True
        try:
            dropin = module.load()
        except Exception as e:
            path = module.filePath.path
            broken[module.name] = f"cannot import {path}: {_describe(e)}"
            continue
        for attribute, value in vars(dropin).items():
            if IPlugin.providedBy(value):
                found.append((f"{module.name}.{attribute}", value))
    if stale and not broken:
        # Every dropin imports: refresh the cache, importing nothing more.
        getCache(twisted.plugins)
    return found, broken


def _invalidDetails(e: Invalid) -> str:
    """
    @return: What C{verifyObject} found wrong, in one line.
    """
    problems = getattr(e, "exceptions", None) or [e]
    details = (str(getattr(p, "_str_details", p)).strip() for p in problems)
    return "; ".join(d.rstrip(".") for d in details)


def scanPlugins(interface: InterfaceClass) -> PluginScan:
    """
    Find every plugin providing C{interface}, skipping broken ones; log
    nothing (L{findPlugins} does), and remember the result for
    L{brokenPlugins}.
    """
    candidates, broken = _candidates()
    found: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for where, candidate in candidates:
        try:
            plugin = interface(candidate, None)
        except Exception as e:
            # A cached dropin that no longer imports.
            module = where.rpartition(".")[0]
            broken.setdefault(module, f"cannot load {where}: {_describe(e)}")
            continue
        if plugin is None:
            continue
        name: object = getattr(plugin, "name", None)
        label = name if isinstance(name, str) and name else where
        try:
            verifyObject(interface, plugin)
        except Invalid as e:
            broken[label] = (
                f"{where} does not provide {interface.__name__}: {_invalidDetails(e)}"
            )
        else:
            if label == where:
                broken[where] = f"its name is not a non-empty str: {name!r}"
            elif label in found:
                broken[where] = f"its name {label!r} is taken by {origins[label]}, found first"
            else:
                found[label] = plugin
                origins[label] = where
    scan = _lastScans[interface] = PluginScan(interface, found, broken)
    return scan


def findPlugins(interface: InterfaceClass) -> dict[str, Any]:
    """
    Find every usable plugin providing C{interface}, by name; warn about
    each broken one once per process.
    """
    scan = scanPlugins(interface)
    for plugin, reason in scan.broken.items():
        if (plugin, reason) not in _warned:
            _warned.add((plugin, reason))
            log.warn("plugin {plugin} skipped: {reason}", plugin=plugin, reason=reason)
    return dict(scan.found)


def brokenPlugins(interface: InterfaceClass) -> dict[str, str]:
    """
    @return: The plugins of C{interface} skipped as broken in the last
        search (searching now if there was none), keyed as
        L{PluginScan.broken} says.  A dropin that does not import is
        listed for every interface: its plugins cannot be known.
    """
    if interface not in _lastScans:
        findPlugins(interface)
    return dict(_lastScans[interface].broken)


def balancerFactories() -> dict[str, IBalancerFactory]:
    """
    @return: The installed balancer factories by name.
    """
    return cast("dict[str, IBalancerFactory]", findPlugins(IBalancerFactory))


def healthCheckerFactories() -> dict[str, IHealthCheckerFactory]:
    """
    @return: The installed health-checker factories by name.
    """
    return cast("dict[str, IHealthCheckerFactory]", findPlugins(IHealthCheckerFactory))


def logPlugins() -> None:
    """
    Log in one line the balancers and health checkers found, and the
    broken plugins skipped (each also warned about on its own).
    """
    balancers = findPlugins(IBalancerFactory)
    checkers = findPlugins(IHealthCheckerFactory)
    broken = {*brokenPlugins(IBalancerFactory), *brokenPlugins(IHealthCheckerFactory)}
    log.info(
        "plugins: balancers {balancers}; health checkers {checkers}; broken {broken}",
        balancers=", ".join(sorted(balancers)) or "none",
        checkers=", ".join(sorted(checkers)) or "none",
        broken=", ".join(sorted(broken)) or "none",
    )
