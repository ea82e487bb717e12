# -*- test-case-name: tests.test_reclaim -*-
"""
Memory reports, for soaks and for finding where a relay's memory goes.

With the environment variable C{WSRELAY_MEMORY_REPORT} set to a folder, a
relay process writes a report there each time it gets C{SIGUSR2}: one JSON
file with its resident memory, the garbage collector's counts and
statistics, the tracked objects by type, the C{pymalloc} arenas and the C
allocator's heap (glibc's C{mallinfo2}), which together tell Python
objects that are alive from memory the allocators keep.  When
C{tracemalloc} is tracing (C{WSRELAY_MEMORY_TRACE=25} starts it once the
relay runs; C{PYTHONTRACEMALLOC=25} from the interpreter's start, imports
included) a snapshot is dumped beside it (after the collection, when
there is one), for C{bench/memreport.py} to compare.

The label of the report and whether a full collection follows come from
the file C{request} in that folder, read at each signal: its first line is
the label, and the word C{collect} after it asks for a full collection
(its garbage is counted by type, then the same figures are taken again);
the word C{types} lists every type rather than the most numerous (each
with the bytes of its objects, C{sys.getsizeof}, as always).  Without the
file, reports are numbered and nothing is collected.

Not for production: taking the objects by type walks every tracked object
(a few milliseconds per ten thousand).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import json
import os
import re
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from collections.abc import Mapping
from typing import Any

from twisted.logger import Logger

#: The environment variable naming the reports' folder.
ENVIRONMENT = "WSRELAY_MEMORY_REPORT"

#: The environment variable that makes the reporter trace allocations
#: (C{tracemalloc}) with that many frames, from the moment it is installed.
TRACE_ENVIRONMENT = "WSRELAY_MEMORY_TRACE"

#: How many object types a report lists (the most numerous).
TOP_TYPES = 40

_MALLINFO_FIELDS = (
    "arena",
    "ordblks",
    "smblks",
    "hblks",
    "hblkhd",
    "usmblks",
    "fsmblks",
    "uordblks",
    "fordblks",
    "keepcost",
)


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in _MALLINFO_FIELDS]


def _libc() -> Any:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def mallocInfo(libc: Any = None) -> dict[str, int] | None:
    """
    @return: glibc's C{mallinfo2} figures, in bytes: C{arena} (the heap
        the main arena took with C{brk}), C{hblkhd} (blocks given their own
        C{mmap}), C{uordblks} (in use) and C{fordblks} (free but kept), or
        L{None} where there is no C{mallinfo2} (another C library, glibc
        before 2.33).
    """
    libc = _libc() if libc is None else libc
    function = getattr(libc, "mallinfo2", None)
    if function is None:
        return None
    function.restype = _MallInfo2
    info = function()
    return {name: int(getattr(info, name)) for name in _MALLINFO_FIELDS}


def procStatus(pid: int | str = "self") -> dict[str, int]:
    """
    @return: C{VmRSS}, C{VmHWM}, C{RssAnon} and C{RssFile} of a process, in
        bytes (those the kernel reports).
    """
    wanted = {"VmRSS", "VmHWM", "RssAnon", "RssFile"}
    found: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in wanted:
                found[name] = int(value.split()[0]) * 1024
    return found


_PYMALLOC = {
    "arenas": re.compile(r"^# arenas allocated current\s*=\s*([\d,]+)"),
    "arenaBytes": re.compile(r"^(\d+) arenas \* \d+ bytes/arena\s*=\s*([\d,]+)"),
    "blockBytes": re.compile(r"^# bytes in allocated blocks\s*=\s*([\d,]+)"),
    "freeBlockBytes": re.compile(r"^# bytes in available blocks\s*=\s*([\d,]+)"),
    "freePoolBytes": re.compile(r"^\d+ unused pools \* \d+ bytes\s*=\s*([\d,]+)"),
}


def parsePymalloc(text: str) -> dict[str, int]:
    """
    @return: From the text of C{sys._debugmallocstats()}: the arenas
        C{pymalloc} holds (C{arenas}, C{arenaBytes}), the bytes of its live
        blocks (C{blockBytes}) and those free in its pools and arenas.
    """
    found: dict[str, int] = {}
    for line in text.splitlines():
        for name, pattern in _PYMALLOC.items():
            match = pattern.match(line.strip())
            if match:
                found[name] = int(match.groups()[-1].replace(",", ""))
    return found


def pymallocStats() -> dict[str, int]:
    """
    @return: L{parsePymalloc} of this process's C{pymalloc} statistics,
        which the interpreter writes to the C{stderr} descriptor: it is
        pointed at a temporary file meanwhile.
    """
    sys.stderr.flush()
    with tempfile.TemporaryFile("w+") as f:
        saved = os.dup(2)
        try:
            os.dup2(f.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        f.seek(0)
        return parsePymalloc(f.read())


def objectTypes(
    objects: list[Any] | None = None, sizes: Counter[str] | None = None
) -> Counter[str]:
    """
    @param sizes: If given, the bytes of the objects (C{sys.getsizeof}: the
        object itself, not what it refers to) are added to it by type name.
    @return: The objects the collector tracks (C{objects}, or all but the
        frozen ones), counted by type name (with its module when it is not
        a builtin).
    """
    if objects is None:
        objects = gc.get_objects()
    counts: Counter[str] = Counter()
    for o in objects:
        t = type(o)
        module = t.__module__
        if not isinstance(module, str):
            # A class whose __module__ is a descriptor of its instances.
            module = "?"
        name = t.__qualname__ if module == "builtins" else module + "." + t.__qualname__
        counts[name] += 1
        if sizes is not None:
            sizes[name] += sys.getsizeof(o, 0)
    return counts


def figures(everyType: bool = False) -> dict[str, Any]:
    """
    @param everyType: Whether to list every type of object, rather than the
        L{TOP_TYPES} most numerous.
    @return: What a report holds at one moment, without collecting.
    """
    figures: dict[str, Any] = {"process": procStatus()}
    figures["gc"] = {
        "count": gc.get_count(),
        "threshold": gc.get_threshold(),
        "frozen": gc.get_freeze_count(),
        "garbage": len(gc.garbage),
        "stats": gc.get_stats(),
    }
    figures["pymalloc"] = pymallocStats()
    figures["malloc"] = mallocInfo()
    sizes: Counter[str] = Counter()
    types = objectTypes(sizes=sizes)
    figures["objects"] = sum(types.values())
    figures["generations"] = [len(gc.get_objects(g)) for g in range(3)]
    figures["types"] = dict(types.most_common(None if everyType else TOP_TYPES))
    figures["typeBytes"] = {name: sizes[name] for name in figures["types"]}
    if tracemalloc.is_tracing():
        current, peak = tracemalloc.get_traced_memory()
        figures["tracemalloc"] = {"current": current, "peak": peak}
    return figures


def fullCollection() -> dict[str, Any]:
    """
    Collect the generations one after the other, youngest first, counting
    what was garbage in each, and by type: garbage found only by the
    collection of an older generation had waited there (it outlived a
    younger collection while still in use).

    @return: How many objects were unreachable, how many of them each
        generation's collection found, and the most numerous types.
    """
    flags = gc.get_debug()
    before = len(gc.garbage)
    gc.set_debug(flags | gc.DEBUG_SAVEALL)
    try:
        found = [gc.collect(generation) for generation in range(3)]
        garbage = gc.garbage[before:]
        types = objectTypes(garbage)
        del gc.garbage[before:]
        del garbage
    finally:
        gc.set_debug(flags)
    # Now collect them for good.
    gc.collect()
    return {
        "unreachable": sum(found),
        "byGeneration": found,
        "types": dict(types.most_common(TOP_TYPES)),
    }


class MemoryReporter:
    """
    Writes memory reports into a folder (see the module's docstring).

    @ivar written: How many reports were written.
    """

    log = Logger()

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.written = 0

    def request(self) -> tuple[str, bool, bool]:
        """
        @return: The next report's label, whether to collect and whether to
            list every type, from the folder's C{request} file.
        """
        label = f"report-{self.written + 1}"
        try:
            with open(os.path.join(self.folder, "request")) as f:
                words = f.readline().split()
        except OSError:
            return label, False, False
        if words:
            label = re.sub(r"[^\w.-]", "_", words[0])
        return label, "collect" in words[1:], "types" in words[1:]

    def report(self) -> str:
        """
        Write a report.

        @return: The path of its JSON file.
        """
        label, collect, everyType = self.request()
        report: dict[str, Any] = {
            "label": label,
            "time": time.time(),
            "pid": os.getpid(),
            "before": figures(everyType),
        }
        if collect:
            report["collected"] = fullCollection()
            report["after"] = figures(everyType)
        if tracemalloc.is_tracing():
            # After the collection, if any: what is alive.
            snapshot = tracemalloc.take_snapshot()
            snapshot.dump(os.path.join(self.folder, label + ".tracemalloc"))
            del snapshot
        path = os.path.join(self.folder, label + ".json")
        with open(path + ".tmp", "w") as f:
            json.dump(report, f, indent=1)
        os.replace(path + ".tmp", path)
        self.written += 1
        self.log.info(
            "memory report {path}: resident {rss} bytes",
            path=path,
            rss=report["before"]["process"].get("VmRSS"),
        )
        return path


def installReporter(
    reactor: Any, environ: Mapping[str, str] = os.environ
) -> MemoryReporter | None:
    """
    Write a report at each C{SIGUSR2} when C{WSRELAY_MEMORY_REPORT} names a
    folder (made if need be).

    @return: The reporter, or L{None} when the variable is not set.
    """
    import signal

    folder = environ.get(ENVIRONMENT)
    if not folder:
        return None
    os.makedirs(folder, exist_ok=True)
    reporter = MemoryReporter(folder)
    frames = environ.get(TRACE_ENVIRONMENT, "")
    if frames.isdigit() and int(frames) > 0 and not tracemalloc.is_tracing():
        # From now on: start-up's imports are not traced (and not slowed).
        tracemalloc.start(int(frames))

    def requested(number: int, frame: Any) -> None:
        reactor.callFromThread(reporter.report)

    signal.signal(signal.SIGUSR2, requested)
    MemoryReporter.log.info(
        "memory reports into {folder} on SIGUSR2", folder=os.path.abspath(folder)
    )
    return reporter
