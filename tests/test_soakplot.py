"""
L{bench.soakplot}: reading a soak's table, the last hour's slope, the PNG.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from bench import soakplot

HEADER = (
    "  min  rss_MB  fds  cpu_s  open  joined   left  echo_sent  echoed  lost"
    "  ticks  gaps  dup  reord  1014  other_closes  refused  kills  errors"
    "  load  lag_ms"
)


def table(rss: list[float], errors: int = 0) -> str:
    """
    @return: A soak's output whose C{rss_MB} column is C{rss}, minute 0
        being C{start}, with an C{end} line after the clients left.
    """
    lines = [
        "machine: 2 CPUs (test), Python 3.11.7",
        "relay: pid 1, port 2, log /x; 20 clients per route, kill every 10s"
        " (down 2s), for 3.0 minutes",
        HEADER,
    ]
    for i, r in enumerate(rss):
        label = "start" if i == 0 else str(i)
        lines.append(
            f"{label:>5} {r:7.1f}  111   1.0    60     1      1          1"
            f"       1     0      1     0    0      0     0             0"
            f"        0      0 {errors:7d}   1.0      10"
        )
    lines.append(
        "  end     1.0   11   1.0     0     1      1          1       1     0"
        "      1     0    0      0     0             0        0      0"
        f" {errors:7d}   1.0       0"
    )
    lines.append("relay exit status 0; errors 0")
    return "\n".join(lines) + "\n"


class SoakPlotTests(SynchronousTestCase):
    """
    The figures and the drawing of a soak's memory.
    """

    def test_parse(self) -> None:
        """
        The minutes (C{start} as 0) and C{rss_MB} of every line but C{end}
        are read, with the last C{errors} and the settings line.
        """
        soak = soakplot.parseSoak(table([50.0, 51.5, 52.0, 52.0], errors=3))
        self.assertEqual(soak.minutes, [0.0, 1.0, 2.0, 3.0])
        self.assertEqual(soak.rss, [50.0, 51.5, 52.0, 52.0])
        self.assertEqual(soak.errors, 3)
        self.assertIn("for 3.0 minutes", soak.title)

    def test_noTable(self) -> None:
        """
        Text without a soak table is a L{ValueError}.
        """
        self.assertRaises(ValueError, soakplot.parseSoak, "nothing here\n")

    def test_lastHourSlope(self) -> None:
        """
        The slope is fitted over the last C{window} minutes only: a rise
        that levelled off before them does not count.
        """
        rss = [50.0 + min(m, 60) * 0.5 + (m % 2) * 0.1 for m in range(121)]
        soak = soakplot.parseSoak(table(rss))
        text, perHour, _ = soakplot.summary(soak, 60)
        self.assertAlmostEqual(perHour, 0.0, places=6)
        self.assertIn("minutes 60-120 (61 points)", text)
        _, whole, _ = soakplot.summary(soak, 1000)
        self.assertGreater(whole, 10)

    def test_slope(self) -> None:
        """
        The least-squares slope and intercept of points on a line.
        """
        self.assertEqual(soakplot.slope([0, 1, 2], [1, 3, 5]), (2.0, 1.0))
        self.assertRaises(ValueError, soakplot.slope, [1], [1])

    def test_png(self) -> None:
        """
        With matplotlib, the command writes a PNG beside the log.
        """
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise self.skipTest(
                "matplotlib is not installed (make .venv/.stamp-test)"
            ) from None
        folder = self.mktemp()
        os.makedirs(folder)
        log = os.path.join(folder, "soak.log")
        with open(log, "w") as f:
            f.write(table([50.0, 51.0, 51.5, 51.5]))
        self.assertEqual(soakplot.main([log]), 0)
        with open(os.path.join(folder, "soak.png"), "rb") as f:
            self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")
