"""
C{twistd wsrelay --config FILE --check}: the whole configuration read and
checked as a start would, C{configuration OK} or the one-line error, exit
status 0 or 1, and nothing listened on (as C{nginx -t}, C{haproxy -c}).
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from tests.support.processes import twistd
from tests.support.tls import makeCertificates


class CheckTests(SynchronousTestCase):
    """
    C{--check} as users run it: a subprocess and a config file.
    """

    def setUp(self) -> None:
        self.directory = tempfile.mkdtemp()

    def check(self, text: str) -> subprocess.CompletedProcess[str]:
        """
        Run C{--check} on a config file holding C{text}.
        """
        self.path = os.path.join(self.directory, "relay.ini")
        with open(self.path, "w") as f:
            f.write(text)
        return subprocess.run(
            twistd("--config", self.path, "--check"),
            capture_output=True,
            text=True,
            timeout=60,
        )

    def test_ok(self) -> None:
        """
        A good configuration: C{configuration OK} alone on standard
        output, status 0; its listener's port, held by another socket, is
        not listened on (a start would fail on it).
        """
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = self.check(
            f"[relay]\nlisten = tcp:{port}:interface=127.0.0.1\n"
            "admin = tcp:0\n"
            "[route:a]\npath = /\nbackends = ws://127.0.0.1:1/\n"
            "[route:f]\npath = /feed\nmode = fanout\n"
            "backends = ws://127.0.0.1:1/\n"
        )
        self.assertEqual((done.returncode, done.stdout), (0, "configuration OK\n"))
        self.assertNotIn("Traceback", done.stderr)

    def test_shippedConfig(self) -> None:
        """
        The configuration C{make run} serves is OK.
        """
        done = subprocess.run(
            twistd("--config", "conf/relay.ini", "--check"),
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual((done.returncode, done.stdout), (0, "configuration OK\n"))

    def assertRefused(
        self, done: subprocess.CompletedProcess[str], *words: str
    ) -> None:
        """
        C{done} exited with status 1 and one line on standard error naming
        the file and C{words}; nothing on standard output.
        """
        self.assertEqual(done.returncode, 1, done.stdout + done.stderr)
        self.assertEqual(done.stdout, "")
        [line] = done.stderr.splitlines()
        self.assertTrue(line.startswith(f"wsrelay: {self.path}: "), line)
        for word in words:
            self.assertIn(word, line)

    def test_badValue(self) -> None:
        """
        A bad value: the one-line error naming section and key.
        """
        done = self.check(
            "[relay]\nlisten = tcp:0\nmax_message_size = lots\n"
            "[route:a]\npath = /\nbackends = ws://127.0.0.1:1/\n"
        )
        self.assertRefused(done, "[relay] max_message_size", "'lots'")

    def test_plugin(self) -> None:
        """
        Plugins are loaded and their options checked: an unknown balancer,
        and a source's bad option, are errors.
        """
        done = self.check(
            "[relay]\nlisten = tcp:0\n"
            "[route:a]\npath = /\nbackends = ws://127.0.0.1:1/\nbalancer = hash\n"
        )
        self.assertRefused(done, "[route:a] balancer", "unknown balancer 'hash'")
        done = self.check(
            "[relay]\nlisten = tcp:0\n"
            "[route:f]\npath = /\nmode = fanout\nsource = redis\n"
            "redis = redis://127.0.0.1:1/0\nstream = s\nhistory = none\n"
        )
        self.assertRefused(done, "[route:f]", "history")

    def test_files(self) -> None:
        """
        Certificate and key files are read: a listener's missing
        certificate, and a route's missing CA file, are errors; readable
        ones are OK.
        """
        missing = os.path.join(self.directory, "nope.pem")
        done = self.check(
            f"[relay]\nlisten = ssl:0:privateKey={missing}:certKey={missing}\n"
            "[route:a]\npath = /\nbackends = ws://127.0.0.1:1/\n"
        )
        self.assertRefused(done, "[relay] listen", "nope.pem")
        done = self.check(
            "[relay]\nlisten = tcp:0\n"
            f"[route:a]\npath = /\nbackends = wss://127.0.0.1:1/\nca_file = {missing}\n"
        )
        self.assertRefused(done, "[route:a] ca_file")
        certs = makeCertificates(self.directory, ["127.0.0.1"])
        done = self.check(
            f"[relay]\nlisten = ssl:0:privateKey={certs['key']}"
            f":certKey={certs['cert']}\n"
            "[route:a]\npath = /\nbackends = ws://127.0.0.1:1/\n"
        )
        self.assertEqual((done.returncode, done.stdout), (0, "configuration OK\n"))
