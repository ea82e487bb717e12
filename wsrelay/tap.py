# -*- test-case-name: tests.test_tap -*-
"""
The C{twistd wsrelay} command line.
"""

from __future__ import annotations

import configparser
import os
from typing import Any

from twisted.application.service import IService, MultiService
from twisted.python import usage

from wsrelay.config import ConfigError, RelayConfig, loadConfig
from wsrelay.plugins import PluginError, balancerFactories, extendPluginPath


def readConfig(path: str) -> RelayConfig:
    """
    Read a configuration file, with the installed balancers' option keys
    (after extending the plugin path it names).

    @raise ConfigError: With the one-line message naming file, section and
        key.
    @raise PluginError: When an installed plugin is broken.
    """
    extendPluginPath(_pluginPath(path))
    factories = balancerFactories()
    return loadConfig(path, {name: tuple(f.options) for name, f in factories.items()})


def _pluginPath(path: str) -> list[str]:
    """
    Read only C{plugin_path} from C{[relay]}: the balancers it holds must
    be known before the whole file can be checked.  Anything wrong with the
    file is left for L{loadConfig} to report.
    """
    parser = configparser.ConfigParser(
        interpolation=None, inline_comment_prefixes=(";", "#")
    )
    try:
        parser.read(path, encoding="utf-8")
        raw = parser.get("relay", "plugin_path", fallback="")
    except (configparser.Error, UnicodeDecodeError):
        return []
    base = os.path.dirname(path)
    return [os.path.join(base, os.path.expanduser(d)) for d in raw.split()]


class Options(usage.Options):
    """
    Options for C{twistd wsrelay}.
    """

    synopsis = "[options]"
    longdesc = "WebSocket reverse proxy and fan-out relay."
    optParameters = [
        ["config", "c", "conf/relay.ini", "The configuration file (INI)."],
    ]

    def postOptions(self) -> None:
        """
        Read and check the configuration now, so that an error is one line
        and twistd exits non-zero before it starts anything.
        """
        path = os.path.abspath(self["config"])
        try:
            self["relayConfig"] = readConfig(path)
        except (ConfigError, PluginError) as e:
            raise usage.UsageError(str(e)) from None


def makeService(options: Any) -> IService:
    """
    Make the relay service for C{twistd}.
    """
    from wsrelay.service import RelayService

    top = MultiService()
    RelayService(options["relayConfig"]).setServiceParent(top)
    return top
