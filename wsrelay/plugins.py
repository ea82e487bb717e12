# -*- test-case-name: tests.test_plugins -*-
"""
Finding balancer and health-checker plugins.

Plugins are found with Twisted's plugin loader (its C{dropin.cache} keeps
start-up cheap), with three differences that keep a broken third-party
plugin from stopping the relay:

  - a dropin that fails to import is reported in one line naming the
    dropin and the exception, instead of Twisted's logged traceback;
  - a plugin that does not provide its interface (as
    L{zope.interface.verify.verifyObject} checks it) is reported by name;
  - a plugin whose name is already taken by an earlier one (in the order
    of C{twisted.plugins.__path__}) is reported by module and attribute.

Each problem is logged once as a warning and remembered (see
L{brokenPlugins}); the plugin is skipped and the others are used.

Twisted's loader logs a failed import with C{log.err()}, which prints a
traceback wherever logs go.  While L{scanPlugins} runs the loader, the
C{log} that L{twisted.plugin} uses is swapped (with L{MonkeyPatcher}) for a
stand-in that keeps the exception instead.  C{twistd} itself imports the
dropins on C{sys.path} when it lists its subcommands, before wsrelay runs,
so a broken one there still gets Twisted's traceback once from C{twistd};
the dropins of C{plugin_path} are imported by wsrelay alone.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import twisted.plugin
import twisted.plugins
import twisted.python.log
from twisted.logger import Logger
from twisted.plugin import CachedDropin, getCache
from twisted.python.modules import getModule
from twisted.python.monkey import MonkeyPatcher
from zope.interface.exceptions import Invalid
from zope.interface.interface import InterfaceClass
from zope.interface.verify import verifyObject

from wsrelay.interfaces import IBalancerFactory, IHealthCheckerFactory

log = Logger()

UNKNOWN_DROPIN = "<unknown dropin>"
"""
The key of an import failure that could not be traced to a dropin file.
"""


class PluginError(Exception):
    """
    A plugin cannot be used; the message says which and why.

    L{findPlugins} no longer raises it (it skips and reports broken
    plugins); it is kept for callers that catch it.
    """


@dataclass(frozen=True)
class PluginScan:
    """
    The outcome of one search for the plugins of an interface.

    @ivar interface: The interface searched for.
    @ivar found: The usable plugins by name, in the order found.
    @ivar broken: One line saying what is wrong, for each plugin or dropin
        skipped, keyed by:
          - the dropin module's full name (C{twisted.plugins.NAME}) when
            the dropin could not be imported;
          - the plugin's name when it does not provide the interface (or
            its place, as below, when it has no usable name);
          - the plugin's place, C{twisted.plugins.NAME.ATTRIBUTE}, when its
            name is taken by a plugin found earlier (in the order of
            C{twisted.plugins.__path__}, then of file names) or is not a
            non-empty C{str}.
    """

    interface: InterfaceClass
    found: Mapping[str, Any]
    broken: Mapping[str, str]


_lastScans: dict[InterfaceClass, PluginScan] = {}
_warned: set[tuple[str, str]] = set()


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


class _QuietLog:
    """
    Stands in for C{twisted.python.log} inside L{twisted.plugin} during a
    scan: keeps the exceptions of dropins that fail to import, which
    Twisted would log with a traceback, and passes anything else on.
    """

    def __init__(self, failures: list[BaseException]) -> None:
        """
        @param failures: Receives each exception of a failed import.
        """
        self._failures = failures

    def err(self, _stuff: object = None, _why: str | None = None, **kw: Any) -> None:
        """
        Keep the exception being handled when called bare, as
        L{twisted.plugin} does for a failed import; log anything else.
        """
        exception = sys.exc_info()[1]
        if _stuff is None and _why is None and exception is not None:
            self._failures.append(exception)
            return
        twisted.python.log.err(_stuff, _why, **kw)

    def msg(self, *message: object, **kw: Any) -> None:
        """
        Log as usual.
        """
        twisted.python.log.msg(*message, **kw)


def _describe(exception: BaseException) -> str:
    """
    @return: The exception's type and the first line of its message.
    """
    lines = str(exception).strip().splitlines()
    name = type(exception).__name__
    return f"{name}: {lines[0]}" if lines else name


def _culprit(exception: BaseException, files: Mapping[str, str]) -> str:
    """
    Find the dropin whose import raised C{exception}.

    @param files: Dropin module names by absolute file path.
    @return: The outermost dropin in the traceback; the file of a
        C{SyntaxError} in a dropin itself (its code never ran); or
        L{UNKNOWN_DROPIN}.
    """
    for frame in traceback.extract_tb(exception.__traceback__):
        name = files.get(os.path.abspath(frame.filename))
        if name is not None:
            return name
    if isinstance(exception, SyntaxError) and exception.filename:
        return files.get(os.path.abspath(exception.filename), UNKNOWN_DROPIN)
    return UNKNOWN_DROPIN


def _invalidDetails(e: Invalid) -> str:
    """
    @return: What C{verifyObject} found wrong, without the object's repr,
        in one line.
    """
    problems = getattr(e, "exceptions", None) or [e]
    details = (str(getattr(p, "_str_details", p)).strip() for p in problems)
    return "; ".join(d.rstrip(".") for d in details)


def scanPlugins(interface: InterfaceClass) -> PluginScan:
    """
    Find every plugin providing C{interface}, skipping broken ones.

    Logs nothing: L{findPlugins} warns about the problems.  The result is
    remembered for L{brokenPlugins}.

    @param interface: An interface extending L{twisted.plugin.IPlugin}.
    @return: The plugins found and the problems met.
    """
    modules = list(getModule(twisted.plugins.__name__).iterModules())
    files = {os.path.abspath(m.filePath.path): m.name for m in modules}
    failures: list[BaseException] = []
    quiet = MonkeyPatcher((twisted.plugin, "log", _QuietLog(failures)))
    dropins: dict[str, CachedDropin] = quiet.runWithPatches(getCache, twisted.plugins)

    broken: dict[str, str] = {}
    paths = {name: path for path, name in files.items()}
    for exception in failures:
        culprit = _culprit(exception, files)
        path = paths.get(culprit, "a dropin")
        broken[culprit] = f"cannot import {path}: {_describe(exception)}"

    found: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for module in modules:
        dropin = dropins.get(module.name.rpartition(".")[2])
        if dropin is None:
            continue
        for cached in dropin.plugins:
            where = f"{dropin.moduleName}.{cached.name}"
            try:
                plugin = interface(cached, None)
            except Exception as e:
                # A dropin changed since it was cached and now fails to
                # import was reported above already.
                broken.setdefault(
                    dropin.moduleName, f"cannot load {where}: {_describe(e)}"
                )
                continue
            if plugin is None:
                continue
            name: object = getattr(plugin, "name", None)
            label = name if isinstance(name, str) and name else where
            try:
                verifyObject(interface, plugin)
            except Invalid as e:
                broken[label] = (
                    f"{where} does not provide {interface.__name__}: "
                    f"{_invalidDetails(e)}"
                )
                continue
            if label == where:
                broken[where] = f"its name is not a non-empty str: {name!r}"
            elif label in found:
                broken[where] = (
                    f"its name {label!r} is taken by {origins[label]}, found first"
                )
            else:
                found[label] = plugin
                origins[label] = where

    scan = PluginScan(interface, found, broken)
    _lastScans[interface] = scan
    return scan


def findPlugins(interface: InterfaceClass) -> dict[str, Any]:
    """
    Find every usable plugin providing C{interface}, by name.

    Each broken plugin is skipped and logged as one warning, once per
    process (finding plugins again does not repeat it); see
    L{scanPlugins}.
    """
    scan = scanPlugins(interface)
    for plugin, reason in scan.broken.items():
        if (plugin, reason) not in _warned:
            _warned.add((plugin, reason))
            log.warn("plugin {plugin} skipped: {reason}", plugin=plugin, reason=reason)
    return dict(scan.found)


def brokenPlugins(interface: InterfaceClass) -> dict[str, str]:
    """
    The plugins of C{interface} skipped as broken, as of the last search
    (searching now if there was none).

    @return: A one-line reason for each plugin or dropin skipped, keyed
        as L{PluginScan.broken} says: by plugin name, or by module (and
        attribute).  A dropin that fails to import is listed for every
        interface, as its plugins cannot be known.
    """
    scan = _lastScans.get(interface)
    if scan is None:
        findPlugins(interface)
        scan = _lastScans[interface]
    return dict(scan.broken)


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


def logPlugins() -> None:
    """
    Log in one line the balancer and health-checker plugins found, and the
    broken ones skipped (each also warned about on its own).
    """
    balancers = findPlugins(IBalancerFactory)
    checkers = findPlugins(IHealthCheckerFactory)
    broken = {
        *brokenPlugins(IBalancerFactory),
        *brokenPlugins(IHealthCheckerFactory),
    }
    log.info(
        "plugins: balancers {balancers}; health checkers {checkers}; broken {broken}",
        balancers=", ".join(sorted(balancers)) or "none",
        checkers=", ".join(sorted(checkers)) or "none",
        broken=", ".join(sorted(broken)) or "none",
    )
