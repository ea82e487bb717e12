"""
Tests for C{python -m bench --repeat}: the scenarios and targets run over
several passes, and each target's ratios to nginx judged on their median.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from bench.report import repeatLines
from bench.run import parseArguments
from bench.scenarios import Cell


def storm(nginx: float, wsrelay: float, cpu: float = 200) -> list[Cell]:
    """
    @return: One pass of the storm: nginx's cell and wsrelay's, at the
        rates given, nginx's CPU per handshake 100 µs.
    """
    return [
        Cell("storm", "nginx", rate=nginx, unit="hs/s", cpuPerOp=100),
        Cell("storm", "wsrelay", rate=wsrelay, unit="hs/s", cpuPerOp=cpu),
    ]


class RepeatTests(SynchronousTestCase):
    """
    C{--repeat N} and the lines that sum its passes up.
    """

    def test_option(self) -> None:
        """
        C{--repeat} defaults to one pass and takes any count from one up.
        """
        self.assertEqual(parseArguments([]).repeat, 1)
        self.assertEqual(parseArguments(["--repeat", "5"]).repeat, 5)
        with self.assertRaises(SystemExit):
            parseArguments(["--repeat", "0"])

    def test_onePass(self) -> None:
        """
        A single pass has no summary: its table says it all.
        """
        self.assertEqual(repeatLines([storm(5000, 4000)]), [])

    def test_withoutNginx(self) -> None:
        """
        Passes without nginx have no ratios, and no summary.
        """
        direct = [Cell("storm", "direct", rate=6000, unit="hs/s")]
        self.assertEqual(repeatLines([direct, direct]), [])

    def test_medians(self) -> None:
        """
        Each target's ratio to nginx is taken within a pass, then its
        median and range over the passes are given, for the rate and the
        CPU per operation; nginx gets no line of its own.
        """
        passes = [
            storm(5000, 4000, 200),
            storm(4000, 4000, 210),
            storm(6000, 3000, 250),
        ]
        self.assertEqual(
            repeatLines(passes),
            [
                "over 3 passes, ratios to nginx in the same pass, median (range):",
                "storm, wsrelay: rate 0.80× (0.50–1.00, 3 passes); "
                "proxy µs/op 2.10× (2.00–2.50, 3 passes)",
            ],
        )

    def test_missing(self) -> None:
        """
        A pass where a target or nginx has no figure (it failed, or the
        scenario is not its) adds no ratio, and a target with none in any
        pass gets no line.
        """
        passes = [
            storm(5000, 4000),
            [Cell("storm", "nginx", note="failed"), Cell("storm", "wsrelay", rate=1)],
            [*storm(4000, 4000), Cell("fanout-light", "twisted", note="n/a")],
        ]
        lines = repeatLines(passes)
        self.assertEqual(
            lines[1],
            "storm, wsrelay: rate 0.90× (0.80–1.00, 2 passes); "
            "proxy µs/op 2.00× (2.00–2.00, 2 passes)",
        )
        self.assertEqual(len(lines), 2)
