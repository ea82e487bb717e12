"""
The results table: one row per scenario and target, in Markdown, each
comparable figure followed by its ratio to nginx's in the same run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from bench.scenarios import Cell, median

SATURATED = 90.0
"""
Load-side CPU use (percent of CPU 0) from which a row is marked: there the
load generators, not the target, may be what limits the rate.
"""

COLUMNS = (
    "scenario",
    "target",
    "rate",
    "p50 ms",
    "p99 ms",
    "proxy µs/op",
    "proxy CPU s",
    "backend/source CPU s",
    "lost",
    "proxy KiB/conn",
    "load CPU %",
    "wait % proxy/load",
)


def _ratio(value: float | None, base: float | None) -> str:
    """
    C{" (0.71×)"}: a figure's ratio to nginx's, or nothing.
    """
    if value is None or not base:
        return ""
    return f" ({value / base:.2f}×)"


def _number(value: float) -> str:
    """
    Three significant digits, thousands separated.
    """
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _figure(
    value: float | None,
    base: float | None,
    scale: float = 1.0,
    suffix: str = "",
    compare: bool = True,
) -> str:
    """
    A figure scaled for display, with its unit and ratio to nginx's.
    """
    if value is None:
        return "—"
    text = _number(value * scale) + suffix
    return text + (_ratio(value, base) if compare else "")


def row(cell: Cell, nginx: Cell | None, marks: dict[str, int]) -> list[str]:
    """
    One line of the table.

    @param nginx: nginx's cell in the same scenario, for the ratios.
    @param marks: Footnote numbers by note text, added to as notes appear.
    """
    compare = nginx is not None and nginx is not cell and nginx.rate is not None

    def base(get: Callable[[Cell], float | None]) -> float | None:
        return get(nginx) if compare and nginx is not None else None

    if cell.rate is None:
        rest = ["—"] * (len(COLUMNS) - 3)
        return [cell.scenario, cell.target, cell.note or "—", *rest]
    target = cell.target
    if cell.note:
        number = marks.setdefault(cell.note, len(marks) + 1)
        target += f" [{number}]"
    lost = "—"
    if cell.lost is not None and cell.expected:
        lost = f"{cell.lost:,} ({cell.lost / cell.expected:.1%})"
    load = _figure(cell.loadPercent, None, compare=False)
    if cell.loadPercent is not None and cell.loadPercent >= SATURATED:
        load += " *"
    wait = "—"
    if cell.loadWait is not None:
        proxy = "—" if cell.proxyWait is None else f"{cell.proxyWait:.0f}"
        wait = f"{proxy}/{cell.loadWait:.0f}"
    return [
        cell.scenario,
        target,
        _figure(cell.rate, base(lambda c: c.rate), suffix=" " + cell.unit),
        _figure(cell.p50, None, 1e3),
        _figure(cell.p99, base(lambda c: c.p99), 1e3),
        _figure(cell.cpuPerOp, base(lambda c: c.cpuPerOp)),
        _figure(cell.proxyCPU, None),
        _figure(cell.sideCPU, base(lambda c: c.sideCPU)),
        lost,
        _figure(cell.memPerConn, base(lambda c: c.memPerConn), 1 / 1024),
        load,
        wait,
    ]


def closeLine(cells: Sequence[Cell]) -> str | None:
    """
    The storm's second figure, which the table has no column for: each
    proxy's CPU per connection closed over the close phase, with its ratio
    to nginx's, and how many closing handshakes went unanswered where some
    did.

    @return: One line, or L{None} if no storm cell has the figure.
    """
    storms = [c for c in cells if c.scenario == "storm"]
    nginx = next((c for c in storms if c.target == "nginx"), None)
    base = nginx.closeCPUPerConn if nginx is not None else None
    figures = []
    for cell in storms:
        if cell.closeCPUPerConn is None:
            continue
        text = f"{cell.target} " + _figure(
            cell.closeCPUPerConn, None if cell is nginx else base
        )
        opened = sum(r.get("opened", 0) for r in cell.rounds)
        unanswered = opened - sum(r.get("answered", 0) for r in cell.rounds)
        if unanswered:
            text += f" [{unanswered:,} of {opened:,} closes unanswered]"
        figures.append(text)
    if not figures:
        return None
    return (
        "storm close, proxy µs per connection closed (the storm's client closing "
        "every connection with a closing handshake, read over that phase): "
        + ", ".join(figures)
    )


def clientLine(cells: Sequence[Cell]) -> str | None:
    """
    The storm client's CPU per handshake over the open phase, median of
    the runs, with its ratio to its CPU in front of nginx: the table's
    C{load CPU %} gives it only as a share of the wall clock.  What a
    proxy makes its client spend (each write that wakes it, for one) is
    part of what the proxy costs, as its backend's CPU is.

    @return: One line, or L{None} if no storm cell has the figure.
    """
    figures: dict[str, float] = {}
    for cell in cells:
        if cell.scenario != "storm":
            continue
        per = [
            r["loadCPU"] / r["opened"] * 1e6
            for r in cell.rounds
            if r.get("opened") and "loadCPU" in r
        ]
        if per:
            figures[cell.target] = median(per)
    if not figures:
        return None
    base = figures.get("nginx")
    return "storm open, the storm client's µs per handshake: " + ", ".join(
        f"{target} " + _figure(value, None if target == "nginx" else base)
        for target, value in figures.items()
    )


def stormRunLine(cells: Sequence[Cell]) -> str | None:
    """
    The storm's rate judged run by run: each target's rate in a run over
    nginx's in the run of the same number (the runs are interleaved, see
    L{bench.scenarios.Bench.storms}), their median and range.  nginx's rate
    is the load side's speed more than its own, and that moves between
    runs; a ratio within a run does not move with it.

    @return: One line, or L{None} without nginx or with fewer than two
        runs to pair.
    """
    storms = [c for c in cells if c.scenario == "storm"]
    nginx = next((c for c in storms if c.target == "nginx"), None)
    if nginx is None:
        return None
    nginxRates = _runRates(nginx)
    figures = []
    for cell in storms:
        if cell is nginx:
            continue
        ratios = [
            rate / nginxRates[number]
            for number, rate in _runRates(cell).items()
            if nginxRates.get(number)
        ]
        if len(ratios) > 1:
            figures.append(f"{cell.target} {_spread(ratios, 'runs')}")
    if not figures:
        return None
    return (
        "storm rate, each run's over nginx's run of the same number (the runs "
        "interleaved), median (range): " + ", ".join(figures)
    )


def _runRates(cell: Cell) -> dict[int, float]:
    """
    @return: A storm cell's rates by the number of their run, for the runs
        that have a number and a duration.
    """
    return {
        r["run"]: r["opened"] / r["seconds"]
        for r in cell.rounds
        if "run" in r and r.get("seconds")
    }


def systemLines(cells: Sequence[Cell]) -> list[str]:
    """
    How each scenario's CPU per operation splits between the kernel and the
    proxy's own code: each proxy's system microseconds per message,
    delivery or handshake, of its C{cpuPerOp}, and their share.  Where a
    proxy's gap to nginx is in user time, it is the proxy's code, not the
    system calls; where its system time alone reaches nginx's whole CPU,
    the gap is the kernel's.

    @return: One line per scenario that has the figure, in the cells'
        order.
    """
    byScenario: dict[str, list[str]] = {}
    for cell in cells:
        if cell.systemPerOp is not None and cell.cpuPerOp:
            byScenario.setdefault(cell.scenario, []).append(
                f"{cell.target} {_systemFigure(cell.systemPerOp)} of "
                f"{_systemFigure(cell.cpuPerOp)} "
                f"({cell.systemPerOp / cell.cpuPerOp:.0%})"
            )
    lines = []
    for scenario, figures in byScenario.items():
        op = _OPS.get(scenario.split("-")[0], "operation")
        phase = f"{scenario} open" if scenario == "storm" else scenario
        lines.append(
            f"{phase}, proxy system µs per {op}, of its CPU per {op} "
            "(/proc stime, in 10 ms ticks): " + ", ".join(figures)
        )
    return lines


#: What one operation of a scenario is, by the scenario's first word.
_OPS = {"echo": "message", "fanout": "delivery", "storm": "handshake"}


def _systemFigure(value: float) -> str:
    """
    A microsecond figure with three significant digits at most (fan-out's
    are under one).
    """
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def table(cells: Sequence[Cell]) -> str:
    """
    The whole table in Markdown, followed by its numbered notes.
    """
    byKey = {(c.scenario, c.target): c for c in cells}
    marks: dict[str, int] = {}
    lines = [
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    for cell in cells:
        nginx = byKey.get((cell.scenario, "nginx"))
        lines.append("| " + " | ".join(row(cell, nginx, marks)) + " |")
    lines.append(
        "\nwait % proxy/load: time the proxy, and the load-side processes summed, "
        "were ready to run but waited for a CPU held by other processes (schedstat)."
    )
    extras = (stormRunLine(cells), *systemLines(cells), clientLine(cells))
    for extra in (*extras, closeLine(cells)):
        if extra is not None:
            lines.append("\n" + extra)
    for note, number in marks.items():
        lines.append(f"\n[{number}] {note}")
    if any(c.loadPercent is not None and c.loadPercent >= SATURATED for c in cells):
        lines.append(
            f"\n\\* load side at {SATURATED:.0f}% of its CPU or more: the load "
            "generators may limit this row's rate."
        )
    return "\n".join(lines)


def repeatLines(passes: Sequence[Sequence[Cell]]) -> list[str]:
    """
    Over repeated passes of the same scenarios and targets (C{--repeat}),
    each target's ratios to nginx in the same pass, for the rate and the
    proxy's CPU per operation: their median and range.  One pass's ratio
    moves with nginx's own figure from pass to pass (the storm's rate by a
    third within an hour on the shared machine), so a target is judged on
    the median.

    @param passes: Each pass's cells, in the order they ran.
    @return: A title, then one line per scenario and target but nginx
        with a ratio; nothing for a single pass, or without nginx.
    """
    if len(passes) < 2:
        return []
    ratios: dict[tuple[str, str], tuple[list[float], list[float]]] = {}
    for cells in passes:
        byKey = {(c.scenario, c.target): c for c in cells}
        for cell in cells:
            nginx = byKey.get((cell.scenario, "nginx"))
            if cell.target == "nginx" or nginx is None:
                continue
            rates, cpus = ratios.setdefault((cell.scenario, cell.target), ([], []))
            if cell.rate is not None and nginx.rate:
                rates.append(cell.rate / nginx.rate)
            if cell.cpuPerOp is not None and nginx.cpuPerOp:
                cpus.append(cell.cpuPerOp / nginx.cpuPerOp)
    lines = []
    for (scenario, target), (rates, cpus) in ratios.items():
        figures = [
            f"{what} {_spread(values, 'passes')}"
            for what, values in (("rate", rates), ("proxy µs/op", cpus))
            if values
        ]
        if figures:
            lines.append(f"{scenario}, {target}: " + "; ".join(figures))
    if not lines:
        return []
    return [
        f"over {len(passes)} passes, ratios to nginx in the same pass, median (range):",
        *lines,
    ]


def _spread(ratios: Sequence[float], of: str) -> str:
    """
    @return: Ratios as their median and range, and how many there are of
        C{of} (runs, passes): C{0.80× (0.50–1.00, 3 passes)}.
    """
    return (
        f"{median(ratios):.2f}× ({min(ratios):.2f}–{max(ratios):.2f}, "
        f"{len(ratios)} {of})"
    )
