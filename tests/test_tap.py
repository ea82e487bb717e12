"""
C{twistd wsrelay} as users run it: a subprocess, a config file, signals.
"""

from __future__ import annotations

import errno
import gc
import json
import os
import signal
import socket
import subprocess
import tempfile
from typing import Any, cast

from twisted.application.service import MultiService
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from websockets.exceptions import InvalidStatus
from websockets.sync.client import unix_connect

from tests.support import TIMEOUT, Backend
from tests.support.processes import twistd
from tests.support.waiting import pollUntil
from wsrelay import tap


def accepts(path: str) -> bool:
    """
    @return: Whether a UNIX socket at C{path} accepts connections.
    """
    probe = socket.socket(socket.AF_UNIX)
    try:
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


class CommandLineTests(TestCase):
    """
    Errors are one line; the relay serves and stops cleanly.
    """

    def setUp(self) -> None:
        self.directory = tempfile.mkdtemp()

    def write(self, text: str) -> str:
        path = os.path.join(self.directory, "relay.ini")
        with open(path, "w") as f:
            f.write(text)
        return path

    def listening(self, process: subprocess.Popen[bytes], sock: str) -> bool:
        """
        @return: Whether the relay C{process} accepts connections on the
            UNIX socket C{sock}.
        @raise AssertionError: If the process has exited.
        """
        self.assertIsNone(process.poll(), "twistd exited early")
        return accepts(sock)

    def test_badConfig(self) -> None:
        """
        A bad value makes twistd exit with status 1 and one line, naming
        file, section and key: no traceback, and not twistd's usage text
        before it.
        """
        path = self.write(
            "[relay]\nlisten = tcp:0\nmax_message_size = lots\n"
            "[route:a]\npath = /\nbackends = ws://127.0.0.1:1/\n"
        )
        done = subprocess.run(
            twistd("--config", path), capture_output=True, text=True, timeout=60
        )
        self.assertEqual(done.returncode, 1, done.stdout + done.stderr)
        self.assertEqual(done.stdout, "")
        [line] = done.stderr.splitlines()
        self.assertEqual(
            line,
            f"wsrelay: {path}: [relay] max_message_size: expected a whole number"
            " of bytes >= 1, got 'lots'",
        )

    def test_missingFile(self) -> None:
        """
        A missing file is one line too, with the operating system's reason.
        """
        missing = os.path.join(self.directory, "nope.ini")
        done = subprocess.run(
            twistd("--config", missing), capture_output=True, text=True, timeout=60
        )
        self.assertEqual(done.returncode, 1, done.stdout + done.stderr)
        self.assertEqual(done.stdout, "")
        self.assertEqual(
            done.stderr.splitlines(),
            [f"wsrelay: {missing}: cannot read the file: {os.strerror(errno.ENOENT)}"],
        )

    def test_help(self) -> None:
        """
        C{twistd wsrelay --help} still shows the options, and exits with 0.
        """
        done = subprocess.run(
            twistd("--help"), capture_output=True, text=True, timeout=60
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("--config=", done.stdout)

    def test_busyPort(self) -> None:
        """
        A port that is taken: twistd exits with status 1 and one line
        naming the endpoint, no traceback.
        """
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        path = self.write(
            f"[relay]\nlisten = tcp:{port}:interface=127.0.0.1\n"
            "[route:a]\npath = /\nbackends = ws://127.0.0.1:1/\n"
        )
        done = subprocess.run(
            twistd("--config", path), capture_output=True, text=True, timeout=60
        )
        output = done.stdout + done.stderr
        self.assertEqual(done.returncode, 1, output)
        self.assertNotIn("Traceback", output)
        lines = [line for line in output.splitlines() if "cannot listen" in line]
        self.assertEqual(len(lines), 1, output)
        self.assertIn(f"tcp:{port}:interface=127.0.0.1", lines[0])

    def test_servesAndStops(self) -> None:
        """
        C{twistd -n wsrelay} relays to a backend, and SIGTERM closes the
        client with 1001 and ends the process with status 0.
        """
        backend = Backend()
        self.addCleanup(backend.stop)
        sock = os.path.join(self.directory, "relay.sock")
        path = self.write(
            f"[relay]\nlisten = unix:{sock}\n"
            f"[route:a]\npath = /\nbackends = {backend.url}\n"
        )
        log = open(os.path.join(self.directory, "twistd.log"), "w+")
        self.addCleanup(log.close)
        process = subprocess.Popen(
            twistd("--config", path), stdout=log, stderr=subprocess.STDOUT
        )
        self.addCleanup(lambda: process.poll() is None and process.kill())
        # The socket file appears at bind(), a moment before listen().
        pollUntil(lambda: self.listening(process, sock), "relay listening", TIMEOUT * 3)
        with unix_connect(sock, "ws://relay/x", open_timeout=TIMEOUT) as c:
            c.send("hello")
            self.assertEqual(c.recv(TIMEOUT), "hello")
            process.send_signal(signal.SIGTERM)
            try:
                while True:
                    c.recv(TIMEOUT)
            except Exception:
                pass
            rcvd = c.protocol.close_rcvd
        self.assertEqual(process.wait(TIMEOUT * 3), 0)
        self.assertIsNotNone(rcvd)
        assert rcvd is not None
        self.assertEqual(rcvd.code, 1001)
        log.seek(0)
        self.assertIn("native acceleration", log.read())

    def test_sighupAndJSONLogs(self) -> None:
        """
        SIGHUP makes the relay read its file again (a route added then
        serves), with C{--logger=wsrelay.logs.jsonStdout} every event is a
        JSON line, and a connection's access event carries its fields.
        """
        backend = Backend()
        self.addCleanup(backend.stop)
        sock = os.path.join(self.directory, "relay.sock")
        text = (
            f"[relay]\nlisten = unix:{sock}\n"
            f"[route:a]\npath = /a\nbackends = {backend.url}\n"
        )
        path = self.write(text)
        log = open(os.path.join(self.directory, "twistd.log"), "w+")
        self.addCleanup(log.close)
        process = subprocess.Popen(
            twistd("--config", path, jsonLogs=True),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.addCleanup(lambda: process.poll() is None and process.kill())
        pollUntil(lambda: self.listening(process, sock), "relay listening", TIMEOUT * 3)
        self.write(text + f"[route:b]\npath = /b\nbackends = {backend.url}\n")
        process.send_signal(signal.SIGHUP)

        def reloaded() -> bool:
            try:
                with unix_connect(sock, "ws://relay/b", open_timeout=TIMEOUT) as c:
                    c.send("hello")
                    self.assertEqual(c.recv(TIMEOUT), "hello")
                    return True
            except InvalidStatus as e:
                self.assertEqual(e.response.status_code, 404)
                return False

        pollUntil(reloaded, "relay reloaded", TIMEOUT * 3)
        process.send_signal(signal.SIGTERM)
        self.assertEqual(process.wait(TIMEOUT * 3), 0)
        log.seek(0)
        events = [json.loads(line) for line in log.read().splitlines() if line]
        # (The 404s before the reload have access events too.)
        [access] = [
            e for e in events if e.get("event") == "access" and "status" not in e
        ]
        self.assertEqual(
            (access["route"], access["messagesIn"], access["closedBy"]),
            ("b", 1, "client"),
        )
        self.assertTrue(any("reloaded" in e.get("log_format", "") for e in events))


class GarbageCollectorTests(SynchronousTestCase):
    """
    A relay process tunes the garbage collector for long-lived connections
    once its reactor runs (L{tap.tuneGC}).
    """

    def test_tuneGC(self) -> None:
        """
        The objects made so far are frozen out of later collections and
        the thresholds are L{tap.GC_THRESHOLDS}, whose young generation is
        much larger than Python's.
        """
        calls: list[tuple[str, tuple[int, ...]]] = []

        class Collector:
            def freeze(self) -> None:
                calls.append(("freeze", ()))

            def set_threshold(self, *thresholds: int) -> None:
                calls.append(("set_threshold", thresholds))

        tap.tuneGC(Collector())
        self.assertEqual(calls, [("freeze", ()), ("set_threshold", tap.GC_THRESHOLDS)])
        self.assertGreater(tap.GC_THRESHOLDS[0], 10 * gc.get_threshold()[0])

    def test_whenRunning(self) -> None:
        """
        L{tap.ProcessControl} tunes the collector when the reactor runs,
        with its signal handlers, not before.
        """
        tuned: list[bool] = []
        self.patch(tap, "tuneGC", lambda: tuned.append(True))
        self.patch(signal, "signal", lambda number, handler: None)
        reactor = MemoryReactorClock()
        tap.ProcessControl(reactor, cast(Any, None)).startService()
        self.assertEqual(tuned, [])
        reactor.run()
        self.assertEqual(tuned, [True])

    def test_sighupBeforeListening(self) -> None:
        """
        L{tap.ProcessControl} takes SIGHUP as it starts, before the relay
        listens (SIGHUP's default action would kill a process that a
        reload reached early), and SIGTERM (and SIGUSR2, a worker's stop
        when another relay took over) only once the reactor runs (the
        reactor installs its own on start); L{tap.makeService} starts it
        before the relay.
        """
        installed: list[int] = []
        self.patch(tap, "tuneGC", lambda: None)
        self.patch(tap, "installReporter", lambda reactor: None)
        self.patch(signal, "signal", lambda number, handler: installed.append(number))
        reactor = MemoryReactorClock()
        tap.ProcessControl(reactor, cast(Any, None)).startService()
        self.assertEqual(installed, [signal.SIGHUP])
        reactor.run()
        self.assertEqual(installed, [signal.SIGHUP, signal.SIGTERM, signal.SIGUSR2])
        options = {"relay": MultiService(), "workerSpec": None}
        top = tap.makeService(options)
        self.assertIsInstance(list(cast(MultiService, top))[0], tap.ProcessControl)
