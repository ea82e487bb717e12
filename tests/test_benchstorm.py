"""
Tests for the benchmark's storm: its runs interleaved across the targets
(L{bench.scenarios.Bench.storms}), each target's rate judged against
nginx's run by run (L{bench.report.stormRunLine}), and the storm client's
CPU per handshake (L{bench.report.clientLine}).
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from bench import targets
from bench.report import clientLine, stormRunLine, table
from bench.scenarios import PRESETS, Bench, Cell
from tests.support.benchsmoke import needPicows


def run(number: int, rate: float) -> dict[str, Any]:
    """
    @return: One storm run's figures, as L{Bench.storms} keeps them, at a
        rate of C{rate} handshakes a second.
    """
    return {"run": number, "opened": int(rate), "seconds": 1.0}


def storm(target: str, *rates: float) -> Cell:
    """
    @return: A storm cell whose runs, numbered from 1, had these rates.
    """
    return Cell(
        "storm",
        target,
        rate=sorted(rates)[len(rates) // 2],
        unit="hs/s",
        rounds=[run(n, r) for n, r in enumerate(rates, 1)],
    )


class RunLineTests(SynchronousTestCase):
    """
    L{stormRunLine} pairs each target's runs with nginx's.
    """

    def test_paired(self) -> None:
        """
        Each run's rate is divided by nginx's in the run of the same
        number, and the line gives their median and range per target.
        """
        cells = [
            storm("nginx", 5000, 4000, 6000),
            storm("haproxy", 6000, 4400, 6000),
            storm("wsrelay", 4000, 4000, 4800),
        ]
        self.assertEqual(
            stormRunLine(cells),
            "storm rate, each run's over nginx's run of the same number (the "
            "runs interleaved), median (range): haproxy 1.10× (1.00–1.20, 3 "
            "runs), wsrelay 0.80× (0.80–1.00, 3 runs)",
        )

    def test_unpaired(self) -> None:
        """
        A run that nginx does not have (it failed there, or ended) adds no
        ratio.
        """
        cells = [
            storm("nginx", 5000, 4000),
            Cell("storm", "wsrelay", rounds=[run(1, 4000), run(2, 4000), run(3, 1)]),
        ]
        line = stormRunLine(cells)
        assert line is not None
        self.assertTrue(line.endswith("wsrelay 0.90× (0.80–1.00, 2 runs)"), line)

    def test_none(self) -> None:
        """
        There is no line without nginx, or with a single run, and the table
        then has none either.
        """
        self.assertIsNone(stormRunLine([storm("wsrelay", 4000, 4000)]))
        single = [storm("nginx", 5000), storm("wsrelay", 4000)]
        self.assertIsNone(stormRunLine(single))
        self.assertNotIn("storm rate, each run", table(single))

    def test_inTable(self) -> None:
        """
        The line is printed under the table.
        """
        cells = [storm("nginx", 5000, 5000), storm("wsrelay", 4000, 4500)]
        self.assertIn("\nstorm rate, each run's over nginx's", table(cells))


class ClientLineTests(SynchronousTestCase):
    """
    L{clientLine} gives the storm client's CPU per handshake in front of
    each target.
    """

    def test_perHandshake(self) -> None:
        """
        Each target's figure is the median over its runs of the client's
        CPU over the open phase per connection opened, with its ratio to
        the figure in front of nginx; a run without the figure (or that
        opened nothing) adds none, and the table prints the line.
        """
        nginx = storm("nginx", 1000, 1000, 1000)
        for r, cpu in zip(nginx.rounds, (0.050, 0.040, 0.045), strict=True):
            r["loadCPU"] = cpu
        wsrelay = storm("wsrelay", 1000, 1000, 1000)
        wsrelay.rounds[0]["loadCPU"] = 0.036
        wsrelay.rounds[1]["loadCPU"] = 0.040
        wsrelay.rounds.append({"run": 4, "opened": 0, "seconds": 1, "loadCPU": 1})
        line = (
            "storm open, the storm client's µs per handshake: nginx 45.0, "
            "wsrelay 38.0 (0.84×)"
        )
        self.assertEqual(clientLine([nginx, wsrelay]), line)
        self.assertIn("\n" + line, table([nginx, wsrelay]))

    def test_none(self) -> None:
        """
        Without the figure in any storm run there is no line.
        """
        self.assertIsNone(clientLine([storm("nginx", 1000), storm("wsrelay", 900)]))


class Staged(Bench):
    """
    A bench whose storm runs are staged: each run's figures are made up,
    and C{unavailable} and C{failing} targets raise as a target that is
    not installed, or that fails, does.
    """

    unavailable = "haproxy"
    failing = "twisted"

    def _stormRun(self, target: str) -> dict[str, Any]:
        if target == self.unavailable:
            raise targets.TargetUnavailable("n/a (haproxy not installed)")
        if target == self.failing:
            raise targets.TargetFailed("twisted exited with 1")
        return {
            "opened": 20,
            "seconds": 0.01,
            "failed": 0,
            "errors": [],
            "loadCPU": 0.005,
            "proxied": False,
            "loadWait": 0.0,
            "window": 0.01,
        }


class InterleavedTests(SynchronousTestCase):
    """
    L{Bench.storms} interleaves its targets' runs.
    """

    def bench(self, cls: type[Bench], runs: int) -> Bench:
        """
        @return: A bench of class C{cls} with the smoke preset and C{runs}
            storm runs per target, in a temporary folder.
        """
        work = tempfile.TemporaryDirectory()
        self.addCleanup(work.cleanup)
        preset = replace(PRESETS["smoke"], stormRuns=runs)
        return cls(preset, Path(work.name), stormConnections=preset.stormConnections)

    def test_order(self) -> None:
        """
        Every target's first run comes before any target's second; a
        target that is not available or fails is not run again, and its
        cell says why.
        """
        order: list[tuple[str, int]] = []
        chosen = ["direct", "haproxy", "twisted", "nginx"]
        cells = self.bench(Staged, 3).storms(
            chosen, lambda target, number, seconds, note: order.append((target, number))
        )
        self.assertEqual(
            order,
            [
                ("direct", 1),
                ("haproxy", 1),
                ("twisted", 1),
                ("nginx", 1),
                ("direct", 2),
                ("nginx", 2),
                ("direct", 3),
                ("nginx", 3),
            ],
        )
        self.assertEqual([c.target for c in cells], chosen)
        direct, haproxy, twisted, nginx = cells
        self.assertEqual([r["run"] for r in direct.rounds], [1, 2, 3])
        self.assertEqual(direct.rate, 2000)
        # Staged runs carry no backend figure: the cell has none either.
        self.assertIsNone(direct.sideCPU)
        self.assertEqual(
            (haproxy.note, haproxy.failed), ("n/a (haproxy not installed)", False)
        )
        self.assertEqual(
            (twisted.note, twisted.failed), ("error: twisted exited with 1", True)
        )

    def test_backendCPU(self) -> None:
        """
        A storm cell's backend CPU (the table's C{backend/source CPU s}) is
        the median of its runs' figures for the backend over the open
        phase.
        """
        backend = iter([0.03, 0.01, 0.02])

        class Measured(Staged):
            def _stormRun(self, target: str) -> dict[str, Any]:
                return {**super()._stormRun(target), "sideCPU": next(backend)}

        [direct] = self.bench(Measured, 3).storms(["direct"])
        self.assertEqual(direct.sideCPU, 0.02)
        self.assertIn("| 0.02 |", table([direct]))

    def test_real(self) -> None:
        """
        Against real targets, two runs each: every run opens every
        connection, and each cell keeps its runs' numbers.
        """
        needPicows()
        bench = self.bench(Bench, 2)
        order: list[tuple[str, int]] = []
        cells = bench.storms(
            ["direct", "wsrelay"],
            lambda target, number, seconds, note: order.append((target, number)),
        )
        self.assertEqual(
            order, [("direct", 1), ("wsrelay", 1), ("direct", 2), ("wsrelay", 2)]
        )
        for cell in cells:
            self.assertIsNone(cell.note, cell.target)
            self.assertEqual([r["run"] for r in cell.rounds], [1, 2])
            self.assertEqual([r["opened"] for r in cell.rounds], [20, 20])
            # The backend worked for every target's handshakes.
            self.assertGreater(cell.sideCPU or 0, 0, cell.target)
        self.assertGreater(cells[1].cpuPerOp or 0, 0)
