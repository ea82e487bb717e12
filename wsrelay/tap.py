# -*- test-case-name: tests.test_tap -*-
"""
The C{twistd wsrelay} command line.
"""

from __future__ import annotations

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
    config = loadConfig(path, {})
    if config.pluginPath:
        extendPluginPath(config.pluginPath)
    factories = balancerFactories()
    return loadConfig(path, {name: tuple(f.options) for name, f in factories.items()})


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
