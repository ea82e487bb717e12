# -*- test-case-name: tests.test_plugins -*-
"""
Finding plugins as Twisted's loader does (a dropin unchanged since its
C{dropin.cache} entry is not imported), but skipping broken ones, each
reported once in one warning line: a dropin that does not import (by
module; it is imported here, not by Twisted, which would log a traceback),
a plugin that fails C{verifyObject} (by name), and one whose name is taken
by a plugin found earlier or is not a non-empty C{str} (by place).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import twisted.plugins
from twisted.logger import Logger
from twisted.plugin import IPlugin, getCache
from twisted.python.modules import getModule
from zope.interface.exceptions import Invalid
from zope.interface.interface import InterfaceClass
from zope.interface.verify import verifyObject

from wsrelay.dropins import PluginError as PluginError  # re-exported
from wsrelay.interfaces import IBalancerFactory, IHealthCheckerFactory, ISourceFactory

log = Logger()


@dataclass(frozen=True)
class PluginScan:
    """
    The outcome of one search for the plugins of an interface.

    @ivar found: The usable plugins by name, in the order found (that of
        C{twisted.plugins.__path__}, then of file names).
    @ivar broken: Why each plugin or dropin was skipped, in one line, by
        module name (it does not import), by plugin name (it does not
        provide C{interface}) or by place C{MODULE.ATTRIBUTE} (its name is
        taken or not a non-empty C{str}).
    """

    interface: InterfaceClass
    found: Mapping[str, Any]
    broken: Mapping[str, str]


_lastScans: dict[InterfaceClass, PluginScan] = {}
_warned: set[tuple[str, str]] = set()


def extendPluginPath(directories: Sequence[str]) -> None:
    """
    Make Twisted search each directory too: a folder of dropins, or one
    holding C{twisted/plugins/} (Twisted searches C{twisted.plugins.__path__},
    not C{sys.path}).
    """
    for d in directories:
        nested = os.path.join(d, "twisted", "plugins")
        folder = nested if os.path.isdir(nested) else d
        if folder not in twisted.plugins.__path__:
            twisted.plugins.__path__.append(folder)


def _describe(e: BaseException) -> str:
    """
    @return: The exception's type and the first line of its message.
    """
    return ": ".join([type(e).__name__, *str(e).strip().splitlines()[:1]])


def _candidates() -> tuple[list[tuple[str, Any]], dict[str, str]]:
    """
    @return: The objects of every dropin that may be plugins (from the
        cache, or imported), each with its place; and why each dropin that
        does not import was skipped, by module name.
    """
    found: list[tuple[str, Any]] = []
    broken: dict[str, str] = {}
    caches: dict[Any, tuple[float, Mapping[str, Any]]] = {}
    stale = False
    for module in getModule(twisted.plugins.__name__).iterModules():
        cache = module.filePath.sibling("dropin.cache")
        if cache not in caches:
            try:
                with cache.open("r") as f:
                    caches[cache] = cache.getModificationTime(), pickle.load(f)
            except Exception:
                caches[cache] = 0.0, {}
        written, entries = caches[cache]
        entry = entries.get(module.name.rpartition(".")[2])
        if entry is not None and module.filePath.getModificationTime() < written:
            found.extend((f"{module.name}.{p.name}", p) for p in entry.plugins)
            continue
        stale = True
        try:
            dropin = module.load()
        except Exception as e:
            broken[module.name] = (
                f"cannot import {module.filePath.path}: {_describe(e)}"
            )
            continue
        for attribute, value in vars(dropin).items():
            if IPlugin.providedBy(value):
                found.append((f"{module.name}.{attribute}", value))
    if stale and not broken:
        # Refresh the caches; every dropin not cached is imported already.
        getCache(twisted.plugins)
    return found, broken


def scanPlugins(interface: InterfaceClass) -> PluginScan:
    """
    Find every plugin providing C{interface}, skipping broken ones, without
    logging; remember the result for L{brokenPlugins}.
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
            problems = getattr(e, "exceptions", None) or [e]
            details = (str(getattr(p, "_str_details", p)).strip() for p in problems)
            why = "; ".join(d.rstrip(".") for d in details)
            broken[label] = f"{where} does not provide {interface.__name__}: {why}"
        else:
            if label == where:
                broken[where] = f"its name is not a non-empty str: {name!r}"
            elif label in found:
                taken = f"its name {label!r} is taken by {origins[label]}"
                broken[where] = taken + ", found first"
            else:
                found[label] = plugin
                origins[label] = where
    scan = _lastScans[interface] = PluginScan(interface, found, broken)
    return scan


def findPlugins(interface: InterfaceClass) -> dict[str, Any]:
    """
    @return: Every usable plugin providing C{interface}, by name; each
        broken one is warned about once per process.
    """
    scan = scanPlugins(interface)
    for plugin, reason in scan.broken.items():
        if (plugin, reason) not in _warned:
            _warned.add((plugin, reason))
            log.warn("plugin {plugin} skipped: {reason}", plugin=plugin, reason=reason)
    return dict(scan.found)


def brokenPlugins(interface: InterfaceClass) -> dict[str, str]:
    """
    @return: L{PluginScan.broken} of the last search for C{interface}
        (searching now if there was none).  A dropin that does not import
        is listed for every interface: its plugins cannot be known.
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
    Log in one line the balancers, health checkers and fan-out sources
    found, and the broken plugins skipped (each also warned about on its
    own).
    """
    balancers = findPlugins(IBalancerFactory)
    checkers = findPlugins(IHealthCheckerFactory)
    sources = findPlugins(ISourceFactory)
    broken = {
        *brokenPlugins(IBalancerFactory),
        *brokenPlugins(IHealthCheckerFactory),
        *brokenPlugins(ISourceFactory),
    }
    log.info(
        "plugins: balancers {balancers}; health checkers {checkers};"
        " sources {sources}; broken {broken}",
        balancers=", ".join(sorted(balancers)) or "none",
        checkers=", ".join(sorted(checkers)) or "none",
        sources=", ".join(sorted(sources)) or "none",
        broken=", ".join(sorted(broken)) or "none",
    )
