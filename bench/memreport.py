"""
Read the relay's memory reports (C{wsrelay/memory.py}, written by
C{python -m bench.soak --memory-reports DIR}): one line per report, and
the difference between two tracemalloc snapshots.

    .venv/bin/python -m bench.memreport DIR
    .venv/bin/python -m bench.memreport DIR --diff min-002 end --top 25

Each line: the resident memory (C{VmRSS}, and its anonymous part), the
C{pymalloc} arenas and the bytes of their live blocks, glibc's heap
(C{arena}: taken with C{brk}; C{inuse} and C{free} within it; C{mmap}:
blocks mapped on their own), the objects the collector tracks (all but
the frozen ones), the collector's counts and the collections of each
generation so far, and C{tracemalloc}'s traced bytes when it traced.  A
report made with a full collection has a second line (C{after}) and the
garbage it found.  Memory that stays in the arenas or the heap as free
space is the allocators' to reuse, not objects the relay keeps.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tracemalloc
from collections.abc import Sequence
from typing import Any

MB = 2**20


def reports(folder: str) -> list[dict[str, Any]]:
    """
    @return: The reports in C{folder}, in the order they were written.
    """
    found = []
    for path in glob.glob(os.path.join(folder, "*.json")):
        with open(path) as f:
            found.append(json.load(f))
    return sorted(found, key=lambda r: r["time"])


def line(label: str, when: str, figures: dict[str, Any]) -> str:
    """
    @return: One report's figures at one moment, on one line.
    """
    process = figures["process"]
    pymalloc = figures["pymalloc"]
    heap = figures.get("malloc") or {}
    gc = figures["gc"]
    traced = figures.get("tracemalloc", {}).get("current", 0)
    return (
        f"{label:>10} {when:6} rss {process['VmRSS'] / MB:6.1f}"
        f" anon {process.get('RssAnon', 0) / MB:6.1f}"
        f" | arenas {pymalloc.get('arenas', 0):3d}"
        f" blocks {pymalloc.get('blockBytes', 0) / MB:6.1f}"
        f" | heap {heap.get('arena', 0) / MB:6.1f}"
        f" inuse {heap.get('uordblks', 0) / MB:6.1f}"
        f" free {heap.get('fordblks', 0) / MB:5.1f}"
        f" mmap {heap.get('hblkhd', 0) / MB:5.1f}"
        f" | objects {figures['objects']:7d} {figures.get('generations', '')}"
        f" counts {gc['count']}"
        f" collections {[s['collections'] for s in gc['stats']]}"
        + (f" | traced {traced / MB:6.1f}" if traced else "")
    )


def table(found: list[dict[str, Any]], types: int) -> str:
    """
    @return: The lines of the reports, with the garbage of full
        collections and the C{types} most numerous types of each.
    """
    lines = []
    for r in found:
        lines.append(line(r["label"], "before", r["before"]))
        if types:
            lines.append(f"{'':17}types: {list(r['before']['types'].items())[:types]}")
        if "after" in r:
            lines.append(line(r["label"], "after", r["after"]))
            collected = r["collected"]
            kinds = list(collected["types"].items())[: max(types, 10)]
            lines.append(
                f"{'':17}garbage: {collected['unreachable']} objects"
                f" (by generation {collected.get('byGeneration')}), {kinds}"
            )
    return "\n".join(lines)


def diff(folder: str, first: str, second: str, top: int) -> str:
    """
    @return: The C{top} tracebacks whose traced memory grew most between
        the snapshots of reports C{first} and C{second}.
    """
    old = tracemalloc.Snapshot.load(os.path.join(folder, first + ".tracemalloc"))
    new = tracemalloc.Snapshot.load(os.path.join(folder, second + ".tracemalloc"))
    stats = new.compare_to(old, "traceback")
    total = sum(s.size_diff for s in stats)
    lines = [f"traced memory {first} -> {second}: {total / MB:+.2f} MB"]
    for s in stats[:top]:
        lines.append(
            f"{s.size_diff / 1024:+10.1f} KiB {s.count_diff:+7d} blocks"
            f" (now {s.size / 1024:.1f} KiB)"
        )
        for frame in s.traceback.format()[-8:]:
            lines.append("      " + frame)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run from the command line.
    """
    parser = argparse.ArgumentParser(
        prog="python -m bench.memreport", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("folder", help="the reports' folder")
    parser.add_argument(
        "--types", type=int, default=0, help="list the N most numerous types"
    )
    parser.add_argument(
        "--diff",
        nargs=2,
        metavar=("FIRST", "SECOND"),
        help="compare the tracemalloc snapshots of two reports (labels)",
    )
    parser.add_argument(
        "--top", type=int, default=15, help="tracebacks in the comparison (15)"
    )
    options = parser.parse_args(sys.argv[1:] if argv is None else argv)
    found = reports(options.folder)
    if not found:
        print(f"{options.folder}: no reports", file=sys.stderr)
        return 1
    print(table(found, options.types))
    if options.diff:
        try:
            print(diff(options.folder, *options.diff, options.top))
        except OSError as e:
            print(f"no snapshot: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
