# -*- test-case-name: tests.test_plugins -*-
"""
Finding plugins as L{twisted.plugin.getPlugins} does, from the same
C{dropin.cache}, but skipping broken ones, each warned about once in one
line: a dropin that does not import (by module: it is imported here, where
Twisted would log a traceback), a plugin that fails C{verifyObject} (by
name), one whose name is taken or not a non-empty C{str} (by place).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Sequence
from functools import partial
from typing import Any, TypeVar, cast

import twisted.plugins
from twisted.logger import Logger
from twisted.plugin import IPlugin, getCache
from twisted.python.modules import getModule
from zope.interface.exceptions import Invalid
from zope.interface.verify import verifyObject

from wsrelay.interfaces import (
    IAuthorizerFactory,
    IBalancerFactory,
    IHealthCheckerFactory,
    ISourceFactory,
)

#: The kinds of plugin, as L{logPlugins} names them.
KINDS = {
    "balancers": IBalancerFactory,
    "health checkers": IHealthCheckerFactory,
    "sources": ISourceFactory,
    "authorizers": IAuthorizerFactory,
}

T = TypeVar("T")
log = Logger()
_broken: dict[object, dict[str, str]] = {}
_warned: set[tuple[str, str]] = set()


def extendPluginPath(directories: Sequence[str]) -> None:
    """
    Make Twisted search each directory too: a folder of dropins, or one
    holding C{twisted/plugins/}.
    """
    for d in directories:
        nested = os.path.join(d, "twisted", "plugins")
        folder = nested if os.path.isdir(nested) else d
        if folder not in twisted.plugins.__path__:
            twisted.plugins.__path__.append(folder)


def _why(e: BaseException) -> str:
    """@return: The exception's type and the first line of its message."""
    return ": ".join([type(e).__name__, *str(e).strip().splitlines()[:1]])


def _candidates(broken: dict[str, str]) -> list[tuple[str, Any]]:
    """
    @return: The objects of every dropin that may be plugins, with their
        places: from C{dropin.cache}, or imported where Twisted would (no
        entry, or an older one), putting a dropin that fails in C{broken}.
    """
    found, caches, stale = [], {}, False
    for module in getModule("twisted.plugins").iterModules():
        path = module.filePath.sibling("dropin.cache")
        if path not in caches:
            try:
                with path.open() as f:
                    caches[path] = path.getModificationTime(), pickle.load(f)
            except Exception:
                caches[path] = 0.0, {}
        written, entries = caches[path]
        entry = entries.get(module.name.rpartition(".")[2])
        if entry is not None and module.filePath.getModificationTime() < written:
            found += [(f"{module.name}.{p.name}", p) for p in entry.plugins]
            continue
        stale = True
        try:
            values = vars(module.load()).items()
        except Exception as e:
            why = f"cannot import {module.filePath.path}: {_why(e)}"
            broken[module.name] = why
            continue
        found += [(f"{module.name}.{k}", v) for k, v in values if IPlugin.providedBy(v)]
    if stale and not broken:
        getCache(twisted.plugins)
    return found


def findPlugins(interface: type[T]) -> dict[str, T]:
    """
    @return: Every usable plugin providing C{interface}, by name, in the
        order found; each broken one is warned about once per process.
    """
    found: dict[str, tuple[T, str]] = {}
    broken = _broken[interface] = {}
    for where, candidate in _candidates(broken):
        try:
            plugin = cast(Any, interface)(candidate, None)
            name = getattr(plugin, "name", None)
            label = name if isinstance(name, str) and name else where
            if plugin is not None:
                verifyObject(cast(Any, interface), plugin)
        except Invalid as e:
            problems = getattr(e, "exceptions", None) or [e]
            details = (getattr(p, "_str_details", p) for p in problems)
            why = "; ".join(str(d).strip().rstrip(".") for d in details)
            broken[label] = f"{where} does not provide {interface.__name__}: {why}"
        except Exception as e:  # a cached dropin that no longer imports
            why = f"cannot load {where}: {_why(e)}"
            broken.setdefault(where.rpartition(".")[0], why)
        else:
            if plugin is None:
                continue
            if label == where:
                broken[where] = f"its name is not a non-empty str: {name!r}"
            elif label in found:
                broken[where] = (
                    f"its name {label!r} is taken by {found[label][1]}, found first"
                )
            else:
                found[label] = plugin, where
    for item in sorted(broken.items() - _warned):
        _warned.add(item)
        log.warn("plugin {plugin} skipped: {reason}", plugin=item[0], reason=item[1])
    return {name: plugin for name, (plugin, _) in found.items()}


def brokenPlugins(interface: object) -> dict[str, str]:
    """
    @return: Why each plugin or dropin was skipped in the last search for
        C{interface} (searching now if there was none), by module, name or
        place.  A dropin that does not import is listed for every kind.
    """
    if interface not in _broken:
        findPlugins(cast(Any, interface))
    return dict(_broken[interface])


#: The installed balancer factories by name.
balancerFactories = partial(findPlugins, IBalancerFactory)
#: The installed health-checker factories by name.
healthCheckerFactories = partial(findPlugins, IHealthCheckerFactory)
#: The installed authorizer factories by name.
authorizerFactories = partial(findPlugins, IAuthorizerFactory)


def logPlugins() -> None:
    """
    Log in one line the plugins of each kind found, and the broken ones.
    """
    found = {kind: sorted(findPlugins(i)) for kind, i in KINDS.items()}
    broken = sorted({p for i in KINDS.values() for p in _broken[i]})
    log.info(
        "plugins: {found}; broken {broken}",
        found="; ".join(f"{k} {', '.join(n) or 'none'}" for k, n in found.items()),
        broken=", ".join(broken) or "none",
    )
