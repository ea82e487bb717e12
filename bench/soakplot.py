"""
The resident memory of a soak (C{bench/soak.py}'s output) as a PNG, and
the least-squares slope of its last hour.

    .venv/bin/python -m bench.soakplot soak.log             # soak.png beside it
    .venv/bin/python -m bench.soakplot soak.log --png out.png --window 60

It reads the table the soak prints (the C{min} and C{rss_MB} columns; the
C{start} line is minute 0, the C{end} line is left out: it comes after
the clients left), prints the figures and the slope of C{rss_MB} over the
last C{--window} minutes in MB/hour (a soak that levels off has a slope
near 0; docs/reliability.md asks for under 1 MB/hour over the last hour
of a 2-hour soak), and draws the curve with that fit.  Drawing needs
matplotlib (C{make .venv/.stamp-test} installs it; it is not a dependency
of the relay); without it, or with C{--no-png}, only the figures are
printed.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class Soak:
    """
    What a soak's table says of the relay's memory.

    @ivar minutes: The minutes of the lines, 0 for C{start}.
    @ivar rss: The resident memory at each, in MB.
    @ivar errors: The C{errors} column of the last line.
    @ivar title: The soak's C{relay:} line, if any.
    """

    minutes: list[float]
    rss: list[float]
    errors: int | None = None
    title: str = ""


def parseSoak(text: str) -> Soak:
    """
    Read a soak's table.

    @raise ValueError: When the text has no table.
    """
    columns: list[str] | None = None
    soak = Soak([], [])
    for line in text.splitlines():
        words = line.split()
        if not words:
            continue
        if words[:2] == ["min", "rss_MB"]:
            columns = words
            continue
        if words[0] == "relay:" and not soak.title:
            soak.title = line.strip()
        if columns is None or len(words) != len(columns):
            continue
        label = words[0]
        if label == "start":
            minute = 0.0
        else:
            try:
                minute = float(label)
            except ValueError:
                continue
        row = dict(zip(columns, words, strict=True))
        soak.minutes.append(minute)
        soak.rss.append(float(row["rss_MB"]))
        if "errors" in row:
            soak.errors = int(row["errors"])
    if columns is None or not soak.minutes:
        raise ValueError("no soak table (a line starting 'min  rss_MB') found")
    return soak


def slope(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """
    The least-squares line through C{(xs, ys)}.

    @return: Its slope and intercept.
    @raise ValueError: With fewer than two distinct C{xs}.
    """
    n = len(xs)
    if n < 2:
        raise ValueError("a slope needs two points or more")
    mx = sum(xs) / n
    my = sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        raise ValueError("a slope needs two distinct minutes or more")
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    b = sxy / sxx
    return b, my - b * mx


def lastWindow(soak: Soak, window: float) -> tuple[list[float], list[float]]:
    """
    @return: The minutes and memory of the last C{window} minutes (the
        points with a minute at or after the last minute less C{window}).
    """
    last = soak.minutes[-1]
    pairs = [
        (m, r)
        for m, r in zip(soak.minutes, soak.rss, strict=True)
        if m >= last - window
    ]
    return [m for m, _ in pairs], [r for _, r in pairs]


def summary(soak: Soak, window: float) -> tuple[str, float, float]:
    """
    @return: The text of the figures, and the slope (MB per hour) and
        intercept (MB) of the fit over the last C{window} minutes.
    """
    xs, ys = lastWindow(soak, window)
    perMinute, intercept = slope(xs, ys)
    allPerMinute, _ = slope(soak.minutes, soak.rss)
    lines = [
        f"points: {len(soak.minutes)}, minutes 0 to {soak.minutes[-1]:g}",
        f"rss_MB: {soak.rss[0]:.1f} at the start, {soak.rss[-1]:.1f} at the last"
        f" minute, {min(soak.rss):.1f} to {max(soak.rss):.1f}",
        f"least-squares slope over minutes {xs[0]:g}-{xs[-1]:g}"
        f" ({len(xs)} points): {perMinute * 60:+.2f} MB/hour",
        f"least-squares slope over the whole run: {allPerMinute * 60:+.2f} MB/hour",
    ]
    if soak.errors is not None:
        lines.append(f"errors: {soak.errors}")
    return "\n".join(lines), perMinute * 60, intercept


def draw(soak: Soak, window: float, path: str) -> None:
    """
    Write the PNG: memory over minutes, the fit over the last C{window}
    minutes.

    @raise ImportError: Without matplotlib.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, perHour, intercept = summary(soak, window)
    xs, _ = lastWindow(soak, window)
    figure, axes = plt.subplots(figsize=(9, 4.5), dpi=100)
    axes.plot(soak.minutes, soak.rss, color="#1f77b4", linewidth=1.2, label="rss_MB")
    fit = [intercept + perHour / 60 * x for x in (xs[0], xs[-1])]
    axes.plot(
        (xs[0], xs[-1]),
        fit,
        color="#d62728",
        linewidth=2,
        label=f"least squares, minutes {xs[0]:g}-{xs[-1]:g}: {perHour:+.2f} MB/hour",
    )
    axes.set_xlabel("minutes")
    axes.set_ylabel("relay resident memory (MB)")
    axes.set_ylim(0, max(soak.rss) * 1.1)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="lower right")
    # The soak's settings, after the relay's pid, port and log.
    settings = soak.title.rpartition("; ")[2]
    axes.set_title(f"wsrelay soak: {settings}" if settings else "wsrelay soak")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run from the command line.
    """
    parser = argparse.ArgumentParser(
        prog="python -m bench.soakplot", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("log", help="the soak's output")
    parser.add_argument(
        "--png", help="the PNG to write (default: the log's name with .png)"
    )
    parser.add_argument(
        "--window",
        type=float,
        default=60,
        help="minutes at the end the slope is fitted over (default 60)",
    )
    parser.add_argument("--no-png", action="store_true", help="only the figures")
    options = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        with open(options.log, errors="replace") as f:
            soak = parseSoak(f.read())
        text, _, _ = summary(soak, options.window)
    except (OSError, ValueError) as e:
        print(f"{options.log}: {e}", file=sys.stderr)
        return 1
    print(text)
    if options.no_png:
        return 0
    path = options.png or os.path.splitext(options.log)[0] + ".png"
    try:
        draw(soak, options.window, path)
    except ImportError:
        print(
            "matplotlib is not installed, no PNG: make .venv/.stamp-test"
            " (or pip install matplotlib)",
            file=sys.stderr,
        )
        return 1
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
