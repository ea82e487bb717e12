# -*- test-case-name: tests.test_tap -*-
"""
The C{twistd wsrelay} command line.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
from types import FrameType
from typing import TYPE_CHECKING, Any

from twisted.application.service import IService, MultiService, Service
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.runtime import platform

from wsrelay.config import ConfigError
from wsrelay.descriptors import raiseLimit
from wsrelay.memory import installReporter
from wsrelay.routes import readConfig
from wsrelay.workers import ControlService, RelayAnswers, WorkerSpec

if TYPE_CHECKING:
    from wsrelay.config import RelayConfig
    from wsrelay.service import RelayService
    from wsrelay.takeover import Handover

__all__ = [
    "DEFAULT_REACTOR",
    "Options",
    "ProcessControl",
    "StartRefused",
    "installReactor",
    "makeService",
    "readConfig",
]

#: The short name of the reactor C{twistd wsrelay} installs when the
#: command line does not choose one with C{twistd -r NAME wsrelay ...}
#: (L{wsrelay.reactor}).
DEFAULT_REACTOR = "wsrelay"


def installReactor(installed: bool | None = None) -> str | None:
    """
    Install wsrelay's reactor (L{DEFAULT_REACTOR}) unless one is installed
    already: C{twistd -r NAME} installs its reactor as it reads the
    option, before the subcommand's options are read.  Off Linux (no
    epoll) Twisted's default stays.

    @param installed: Whether a reactor is installed; by default, whether
        C{twisted.internet.reactor} was imported.
    @return: L{DEFAULT_REACTOR} if it was installed now, else L{None}.
    """
    if installed is None:
        installed = "twisted.internet.reactor" in sys.modules
    if installed or not platform.isLinux():
        return None
    from wsrelay.reactor import install

    install()
    return DEFAULT_REACTOR


class StartRefused(SystemExit):
    """
    The relay cannot start; the message is one line saying why (for a
    configuration error: file, section, key and reason).

    A L{SystemExit}, not a L{usage.UsageError}: twistd prints the whole
    usage text before a usage error's message, nine lines that bury the
    one that matters, while a L{SystemExit} raised from
    L{Options.postOptions} reaches Python, which writes its message alone
    to standard error and exits with status 1.
    """

    def __init__(self, message: str) -> None:
        super().__init__(f"wsrelay: {message}")


class Options(usage.Options):
    """
    Options for C{twistd wsrelay}.
    """

    synopsis = "[options]"
    longdesc = "WebSocket reverse proxy and fan-out relay."
    optFlags = [
        [
            "check",
            None,
            "Read and check the configuration as a start would (plugins,"
            " options, certificate and key files, endpoints), print"
            " 'configuration OK' or the error, and exit 0 or 1, listening on"
            " nothing.",
        ],
        [
            "takeover",
            None,
            "Take the listening sockets over from the relay running on the"
            " configuration's control_socket, serve on them, then tell that"
            " relay to drain and exit (an upgrade that refuses no connection).",
        ],
    ]
    optParameters = [
        ["config", "c", "conf/relay.ini", "The configuration file (INI)."],
        [
            "worker",
            None,
            None,
            "Internal, set by worker 0 (workers > 1): run as worker INDEX:PORTS.",
        ],
    ]

    def postOptions(self) -> None:
        """
        Install wsrelay's reactor unless C{twistd -r NAME} chose one
        (L{installReactor}); read and check the configuration now, raise
        the limit of open files (L{raiseLimit}) and check that
        C{max_connections} fits in it, and build the relay (which builds
        each route's plugins, checking their options), so that an error is
        one line and twistd exits non-zero before it starts anything.  With
        C{control_socket}, check that no relay runs on it, or with
        C{--takeover} take that relay's listening sockets
        (L{wsrelay.takeover.receive}).

        @raise StartRefused: With the one-line error.
        """
        # First: nothing below may import the global reactor before it.
        installReactor()
        from wsrelay.service import RelayService

        path = os.path.abspath(self["config"])
        worker = None
        if self["worker"] is not None:
            try:
                worker = WorkerSpec.parse(self["worker"])
            except ValueError as e:
                raise StartRefused(f"--worker: {e}") from None
        self["workerSpec"] = worker
        handover = None
        try:
            config = self["relayConfig"] = readConfig(path)
            descriptors = raiseLimit(config.maxConnections)
            problem = descriptors.problem(config.maxConnections)
            if problem is not None:
                raise ConfigError(path, problem, "relay", "max_connections")
            if not self["check"] and worker is None:
                handover = self._controlSocket(config)
            self["relay"] = RelayService(
                config, worker=worker, descriptors=descriptors, handover=handover
            )
        except ConfigError as e:
            if handover is not None:
                handover.abandon()
            raise StartRefused(str(e)) from None
        if self["check"]:
            # As nginx -t and haproxy -c: nothing was opened or started.
            print("configuration OK")
            raise SystemExit(0)

    def _controlSocket(self, config: RelayConfig) -> Handover | None:
        """
        With C{--takeover}, take the listening sockets of the relay on the
        control socket; without, check that no relay runs there.

        @return: The sockets taken over, or L{None}.
        @raise ConfigError: When the relay cannot start (a relay runs on the
            control socket, or none hands its sockets over).
        """
        from wsrelay.control import checkControlSocket
        from wsrelay.takeover import TakeoverError, receive

        path = config.controlSocket
        if path is None:
            if self["takeover"]:
                raise ConfigError(
                    config.path, "--takeover needs a control socket", "relay"
                )
            return None
        if not self["takeover"]:
            problem = checkControlSocket(path)
            if problem is not None:
                raise ConfigError(config.path, problem, "relay", "control_socket")
            return None
        try:
            return receive(path)
        except TakeoverError as e:
            raise ConfigError(
                config.path,
                f"--takeover: no relay handed its sockets over on {path}: {e}",
                "relay",
                "control_socket",
            ) from None


#: The cyclic garbage collector's thresholds for a relay process
#: (L{gc.set_threshold}).  Python's (700, 10, 10) suit a program whose
#: objects die young; a relay's connections live long, so with them every
#: young collection scans objects that survive it.  In the storm benchmark
#: the collector took a third of the relay's CPU (py-spy C{--native}); with
#: these, CPU per handshake fell by a quarter and the resident memory per
#: connection stayed the same (BENCHMARKS.md).  The price is cyclic
#: garbage waiting longer: the young generation holds up to 50,000
#: objects before it is collected, and what outlived a young collection
#: waits for 20 of them (or 200) before its generation is collected.  A
#: closed connection therefore leaves no reference cycle of its own
#: (L{wsrelay.ws.legs.RelayLeg.letGo}): when each left about 80 objects, a
#: soak's memory rose 28 MB over 38 minutes (docs/reliability.md,
#: "Memory: where it goes and its bounds").
GC_THRESHOLDS = (50_000, 20, 10)


def tuneGC(collector: Any = gc) -> None:
    """
    Set a relay process's garbage collector up for long-lived connections:
    the objects made at start-up (modules, the configuration) are frozen
    out of every later collection, and the thresholds are
    L{GC_THRESHOLDS}.

    @param collector: The L{gc} module, or a test's stand-in.
    """
    collector.freeze()
    collector.set_threshold(*GC_THRESHOLDS)


class ProcessControl(Service):
    """
    Signals, the process's exit status and its garbage collector: SIGHUP
    reloads the configuration; SIGTERM stops gracefully and exits with 0; a
    relay that could not start exits with 1; once the reactor runs, the
    collector is tuned for long-lived connections (L{tuneGC}).

    The reactor stops on SIGTERM either way, and the relay's
    C{stopService} closes every connection with 1001 first; but twistd then
    raises the signal again, so the process would die of it (status -15),
    which service managers report as a failure.  And a listener that cannot
    listen stops the reactor, after which twistd would exit with 0.
    """

    log = Logger()

    def __init__(self, reactor: Any, relay: RelayService) -> None:
        self._reactor = reactor
        self._relay = relay

    def startService(self) -> None:
        """
        Take over SIGHUP now, before the relay listens (a reload asked for
        that early waits for the reactor to run), and SIGTERM once the
        reactor has installed its own handlers.
        """
        super().startService()
        signal.signal(signal.SIGHUP, self._reload)
        self._reactor.callWhenRunning(self._install)
        self._reactor.addSystemEventTrigger("after", "shutdown", self._exit)

    def _install(self) -> None:
        signal.signal(signal.SIGTERM, self._stop)
        # From worker 0 when another relay took over (RelayService.handOff).
        signal.signal(signal.SIGUSR2, self._handOff)
        tuneGC()
        installReporter(self._reactor)

    def _stop(self, number: int, frame: FrameType | None) -> None:
        self.log.info("SIGTERM: closing connections and stopping")
        self._reactor.callFromThread(self._reactor.stop)

    def _handOff(self, number: int, frame: FrameType | None) -> None:
        self.log.info("SIGUSR2: another relay took over; stopping")
        self._reactor.callFromThread(self._relay.handOff)

    def _reload(self, number: int, frame: FrameType | None) -> None:
        self.log.info("SIGHUP: reloading the configuration")
        self._reactor.callFromThread(self._reloadNow)

    def _reloadNow(self) -> None:
        # A rejected file is logged by the relay; the old one stays.
        self._relay.reload().addErrback(lambda f: None)

    def _exit(self) -> None:
        if self._relay.startFailed:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1)


def makeService(options: Any) -> IService:
    """
    Make the relay service for C{twistd}.
    """
    from twisted.internet import reactor

    top = MultiService()
    relay = options["relay"]
    # First, so that SIGHUP is ours before the relay listens: until then
    # its default action would kill the process.
    ProcessControl(reactor, relay).setServiceParent(top)
    relay.setServiceParent(top)
    if options["workerSpec"] is not None:
        from wsrelay.admin import metricsText, status

        answers = RelayAnswers(relay, status, metricsText)
        ControlService(answers, reactor).setServiceParent(top)
    return top
