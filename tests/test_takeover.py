"""
Upgrading a running relay without refusing a connection: C{twistd wsrelay
--takeover} receives the listening sockets of the relay on the
C{control_socket}, serves on them and tells the old relay to drain and
exit, as users run it (real processes, real sockets, C{websockets}
clients).
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import stat
import subprocess
import tempfile

from twisted.trial.unittest import TestCase

from tests.support import TIMEOUT, startBackend
from tests.support.processes import TWISTD, alive, twistd
from tests.support.takeover import Relay, Stream, held
from tests.support.tls import makeCertificates, websocketsContext
from tests.support.waiting import pollUntil

#: Connections the stream must complete before the upgrade starts, and
#: after the old relay has exited.
BEFORE = 10
AFTER = 25


def freePort() -> int:
    """
    @return: A loopback port the OS chose, free now: for configurations
        whose listener a new relay must find by address (port 0 would be
        another port).
    """
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return int(port)


class Upgrade:
    """
    A configuration file in a folder of its own, with a control socket, a
    route to a backend, and the relays started on it.
    """

    def __init__(self, testCase: TestCase, backendURL: str) -> None:
        self.testCase = testCase
        self.directory = tempfile.mkdtemp()
        self.config = os.path.join(self.directory, "relay.ini")
        self.control = os.path.join(self.directory, "control.sock")
        self.backendURL = backendURL

    def write(self, relay: str) -> None:
        """
        Write the configuration: C{relay} are the C{[relay]} section's lines
        besides the control socket.
        """
        with open(self.config, "w") as f:
            f.write(
                f"[relay]\ncontrol_socket = control.sock\n{relay}\n"
                f"[route:echo]\npath = /\nbackends = {self.backendURL}\n"
            )

    def start(self, *args: str) -> Relay:
        """
        Start C{twistd wsrelay} on the configuration.
        """
        return Relay(self.testCase, self.config, *args)

    def takeOver(
        self, old: Relay, stream: Stream, workers: int = 1
    ) -> tuple[Relay, int]:
        """
        With C{stream} going, start a relay with C{--takeover}, and wait
        until the old one has exited and more connections were made.

        @return: The new relay, and the old one's exit status.
        """
        stream.waitDone(BEFORE)
        new = self.start("--takeover")
        status = old.process.wait(TIMEOUT * 3)
        told = new.waitFor(lambda e: "told to stop" in str(e.get("log_format")))
        self.testCase.assertEqual(told[0]["pid"], old.process.pid)
        stream.waitDone(stream.done + AFTER)
        stream.stop()
        new.listening(workers)
        return new, status

    def refusedStart(self, *args: str) -> str:
        """
        Run C{twistd wsrelay} on the configuration, expecting it to refuse
        to start.

        @return: Its last line on standard error, if any.
        """
        result = subprocess.run(
            twistd("--config", self.config, *args),
            capture_output=True,
            text=True,
            timeout=TIMEOUT * 3,
        )
        self.testCase.assertEqual(result.returncode, 1, result.stderr)
        self.testCase.assertNotIn("Traceback", result.stderr + result.stdout)
        lines = result.stderr.strip().splitlines()
        return lines[-1] if lines else ""


class TakeoverTests(TestCase):
    """
    One relay process takes over from another.
    """

    def setUp(self) -> None:
        self.backend = startBackend(self)
        self.upgrade = Upgrade(self, self.backend.url)

    def test_noneRefused(self) -> None:
        """
        Across a takeover, a new connection every 20 ms completes its
        handshake and an echo, none refused or failed (a connection the old
        relay accepted as it was told to stop gets its 101, and then 1001
        like the old relay's other clients); the old relay's open
        connections are closed with 1001 (as SIGTERM closes them), it
        exits with 0, and the control socket (mode 0600) is the new
        relay's: a third relay without C{--takeover} is refused in one
        line.
        """
        self.upgrade.write("listen = tcp:0:interface=127.0.0.1\ndrain_timeout = 5")
        old = self.upgrade.start()
        (port,) = old.listening()
        url = f"ws://127.0.0.1:{port}/"
        closes = held(url, 3)
        stream = Stream(url)
        new, status = self.upgrade.takeOver(old, stream)
        self.assertEqual(stream.failures, [])
        self.assertEqual(status, 0)
        self.assertEqual([f.result(TIMEOUT) for f in closes], [1001] * 3)
        self.assertEqual(new.listening(), [port])
        mode = os.stat(self.upgrade.control).st_mode
        self.assertTrue(stat.S_ISSOCK(mode))
        self.assertEqual(stat.S_IMODE(mode), 0o600)
        line = self.upgrade.refusedStart()
        self.assertEqual(
            line,
            f"wsrelay: {self.upgrade.config}: [relay] control_socket: a relay is"
            f" running on control socket {self.upgrade.control}: stop it, or start"
            " this one with --takeover",
        )
        self.assertTrue(alive(new.process.pid))

    def test_takeoverAgain(self) -> None:
        """
        The relay that took over can be taken over in turn, and the admin
        listener moves with the clients' listener (with the same endpoint
        string: each keeps its own); a listener the old relay lacked
        listens anew.
        """
        admin = "admin = tcp:0:interface=127.0.0.1"
        self.upgrade.write(f"listen = tcp:0:interface=127.0.0.1\n{admin}")
        first = self.upgrade.start()
        ports = first.listening(listeners=2)
        stream = Stream(f"ws://127.0.0.1:{ports[0]}/")
        second, _ = self.upgrade.takeOver(first, stream)
        self.upgrade.write(
            f"listen = tcp:0:interface=127.0.0.1 tcp:0:interface=127.0.0.2\n{admin}"
        )
        stream = Stream(f"ws://127.0.0.1:{ports[0]}/")
        third, status = self.upgrade.takeOver(second, stream)
        self.assertEqual(stream.failures, [])
        self.assertEqual(status, 0)
        client, added, adminPort = third.listening(listeners=3)
        self.assertEqual([client, adminPort], ports)
        stream = Stream(f"ws://127.0.0.2:{added}/")
        stream.waitDone(1)
        stream.stop()
        self.assertEqual(stream.failures, [])

    def test_newRelayFails(self) -> None:
        """
        A relay that cannot serve every listener of its configuration (here
        a new one on a busy port) exits with status 1 without telling the
        old relay to stop: the old relay serves on, and keeps its control
        socket.
        """
        self.upgrade.write("listen = tcp:0:interface=127.0.0.1")
        old = self.upgrade.start()
        (port,) = old.listening()
        busy = socket.socket()
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        self.upgrade.write(
            f"listen = tcp:0:interface=127.0.0.1 tcp:{taken}:interface=127.0.0.1"
        )
        self.upgrade.refusedStart("--takeover")
        self.assertIsNone(old.process.poll())
        stream = Stream(f"ws://127.0.0.1:{port}/")
        stream.waitDone(BEFORE)
        stream.stop()
        self.assertEqual(stream.failures, [])
        self.assertIn("a relay is running", self.upgrade.refusedStart())

    def test_nothingToTakeOver(self) -> None:
        """
        C{--takeover} with no relay on the control socket is refused in one
        line, as is C{--takeover} without a control socket.
        """
        self.upgrade.write("listen = tcp:0:interface=127.0.0.1")
        line = self.upgrade.refusedStart("--takeover")
        self.assertTrue(
            line.startswith(
                f"wsrelay: {self.upgrade.config}: [relay] control_socket: --takeover:"
                f" no relay handed its sockets over on {self.upgrade.control}: "
            ),
            line,
        )
        with open(self.upgrade.config) as f:
            text = f.read().replace("control_socket = control.sock\n", "")
        with open(self.upgrade.config, "w") as f:
            f.write(text)
        line = self.upgrade.refusedStart("--takeover")
        self.assertEqual(
            line,
            f"wsrelay: {self.upgrade.config}: [relay] --takeover needs a control"
            " socket",
        )

    def test_staleSocket(self) -> None:
        """
        A socket file left by a relay that died is replaced: the relay
        starts and its control socket answers.
        """
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(self.upgrade.control)
        stale.close()
        self.upgrade.write("listen = tcp:0:interface=127.0.0.1")
        relay = self.upgrade.start()
        relay.listening()
        c = socket.socket(socket.AF_UNIX)
        self.addCleanup(c.close)
        c.settimeout(TIMEOUT)
        c.connect(self.upgrade.control)
        c.sendall(b"nonsense\n")
        self.assertEqual(c.recv(100), b"error unknown command\n")


class WorkersTakeoverTests(TestCase):
    """
    With C{workers = N}, worker 0 holds every worker's listening socket and
    hands them all over.
    """

    def test_workers(self) -> None:
        """
        A relay of two workers takes over from one of two workers with no
        connection refused; the old workers' clients are closed with 1001
        and every old process ends.
        """
        backend = startBackend(self)
        upgrade = Upgrade(self, backend.url)
        upgrade.write("listen = tcp:0:interface=127.0.0.1\nworkers = 2")
        old = upgrade.start()
        (port,) = old.listening(workers=2)
        oldWorker = old.waitFor(lambda e: "worker {worker} started" in str(e))[0]
        self.assertTrue(alive(oldWorker["pid"]))
        url = f"ws://127.0.0.1:{port}/"
        closes = held(url, 6)
        stream = Stream(url)
        new, status = upgrade.takeOver(old, stream, workers=2)
        self.assertEqual(stream.failures, [])
        self.assertEqual(status, 0)
        self.assertEqual([f.result(TIMEOUT) for f in closes], [1001] * 6)
        self.assertFalse(alive(oldWorker["pid"]))
        # Worker 0 waited for worker 1, which finished its handshakes first.
        self.assertTrue(
            [
                e
                for e in old.events()
                if e.get("worker") == 1 and "SIGUSR2" in str(e.get("log_format"))
            ]
        )
        # The new relay's worker 1 served some of the stream.
        new.waitFor(lambda e: e.get("worker") == 1 and e.get("event") == "access")

    def test_fewerWorkers(self) -> None:
        """
        A relay of one process takes over from one of two workers: it serves
        both sockets (a connection the kernel gives to either is served),
        with no connection refused.
        """
        backend = startBackend(self)
        upgrade = Upgrade(self, backend.url)
        upgrade.write("listen = tcp:0:interface=127.0.0.1\nworkers = 2")
        old = upgrade.start()
        (port,) = old.listening(workers=2)
        stream = Stream(f"ws://127.0.0.1:{port}/")
        upgrade.write("listen = tcp:0:interface=127.0.0.1")
        new, status = upgrade.takeOver(old, stream)
        self.assertEqual(stream.failures, [])
        self.assertEqual(status, 0)
        # Connections from many client ports reach both sockets: all served.
        stream = Stream(f"ws://127.0.0.1:{port}/")
        stream.waitDone(AFTER)
        stream.stop()
        self.assertEqual(stream.failures, [])


class TLSTakeoverTests(TestCase):
    """
    An C{ssl:} listener's socket is plain TCP: the TLS context is the new
    relay's own.
    """

    def test_newCertificate(self) -> None:
        """
        A relay whose C{ssl:} listener names another certificate (so another
        endpoint string) takes the socket with the same address over, with no
        connection refused, and presents its own certificate.
        """
        backend = startBackend(self)
        upgrade = Upgrade(self, backend.url)
        first = makeCertificates(_folder(upgrade, "a"), ["127.0.0.1"])
        second = makeCertificates(_folder(upgrade, "b"), ["127.0.0.1"], "second CA")
        port = freePort()

        def listen(paths: dict[str, str]) -> str:
            return (
                f"listen = ssl:{port}:interface=127.0.0.1"
                f":privateKey={paths['key']}:certKey={paths['cert']}"
            )

        upgrade.write(listen(first))
        old = upgrade.start()
        old.listening()
        context = websocketsContext(first["ca"])
        context.load_verify_locations(second["ca"])
        url = f"wss://127.0.0.1:{port}/"
        closes = held(url, 2, context)
        stream = Stream(url, context)
        upgrade.write(listen(second))
        new, status = upgrade.takeOver(old, stream)
        self.assertEqual(stream.failures, [])
        self.assertEqual(status, 0)
        self.assertEqual([f.result(TIMEOUT) for f in closes], [1001] * 2)
        self.assertEqual(new.listening(), [port])
        self.assertEqual(
            stream.certificates, {_der(first["cert"]), _der(second["cert"])}
        )


def _folder(upgrade: Upgrade, name: str) -> str:
    path = os.path.join(upgrade.directory, name)
    os.mkdir(path)
    return path


def _der(path: str) -> bytes:
    with open(path) as f:
        return ssl.PEM_cert_to_DER_cert(f.read())


#: The example of docs/operations.md that systemd runs.
CTL = os.path.join(
    os.path.dirname(os.path.dirname(__file__)), "examples", "systemd", "wsrelay-ctl"
)


class SystemdExampleTests(TestCase):
    """
    C{examples/systemd/wsrelay-ctl}, which the example unit runs for
    C{ExecStart} and C{ExecReload}, starts a relay and upgrades it in place.
    """

    def ctl(self, command: str) -> int:
        """
        Run C{wsrelay-ctl command} as systemd would.

        @return: The PID the script wrote for C{PIDFile=}.
        """
        result = subprocess.run(
            ["sh", CTL, command],
            env={**os.environ, **self.env},
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            timeout=TIMEOUT * 6,
        )
        self.assertEqual(result.returncode, 0, _tail(self.log.name))
        with open(self.env["WSRELAY_PIDFILE"]) as f:
            pid = int(f.read())
        self.addCleanup(_kill, pid)
        return pid

    def test_startAndUpgrade(self) -> None:
        """
        C{start} writes the PID of a relay that serves; C{upgrade} writes
        the PID of a new relay that took over, with no connection refused,
        and the old relay exits.
        """
        backend = startBackend(self)
        upgrade = Upgrade(self, backend.url)
        port = freePort()
        upgrade.write(f"listen = tcp:{port}:interface=127.0.0.1")
        self.log = open(os.path.join(upgrade.directory, "ctl.log"), "w")
        self.addCleanup(self.log.close)
        self.env = {
            "WSRELAY_CONFIG": upgrade.config,
            "WSRELAY_PIDFILE": os.path.join(upgrade.directory, "wsrelay.pid"),
            "WSRELAY_TWISTD": TWISTD,
        }
        old = self.ctl("start")
        self.assertTrue(alive(old))
        stream = Stream(f"ws://127.0.0.1:{port}/")
        stream.waitDone(BEFORE)
        new = self.ctl("upgrade")
        self.assertNotEqual(new, old)
        self.assertTrue(alive(new))
        stream.waitDone(stream.done + AFTER)
        stream.stop()
        self.assertEqual(stream.failures, [])
        pollUntil(lambda: not alive(old), "the old relay exited", TIMEOUT * 3)


def _kill(pid: int) -> None:
    if alive(pid):
        os.kill(pid, signal.SIGKILL)


def _tail(path: str) -> str:
    with open(path, errors="replace") as f:
        return f.read()[-3000:]
