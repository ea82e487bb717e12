"""
Read a process tree's CPU time and resident memory from C{/proc}.

CPU time (user + system, summed over every thread of a process) is what the
benchmark reports per message: on a shared, noisy machine it is steadier than
wall-clock rates.  It is read from C{/proc/PID/task/TID/schedstat}, whose
first field is the time the thread has run, in nanoseconds: the same total
that the kernel splits into C{utime} and C{stime} in C{/proc/PID/stat}, where
it is rounded to clock ticks (10 ms), too coarse for a source that sends a
few hundred messages.  Without schedstat it falls back to C{/proc/PID/stat}.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_HAVE_SCHEDSTAT = os.path.exists("/proc/self/schedstat")


def _statFields(pid: int) -> list[str] | None:
    """
    The fields of C{/proc/PID/stat} after the command name, or L{None} if the
    process is gone.  Field 3 of proc(5) (the state) is index 0 here.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # The command name is in parentheses and may itself hold spaces or ")".
    return data[data.rindex(b")") + 2 :].decode("ascii").split()


def processTree(pid: int) -> list[int]:
    """
    A process and all its descendants (nginx's master and its worker, say).

    @param pid: The root of the tree.
    @return: The process IDs, the root first.
    """
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _statFields(int(entry))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    tree = [pid]
    for parent in tree:
        tree.extend(children.get(parent, ()))
    return tree


def _schedstat(pid: int, index: int) -> int | None:
    """
    A schedstat field summed over the live threads of a process: 0 is the
    time they have run, 1 the time they have waited, runnable, for a CPU.

    @return: Nanoseconds, or L{None} if the process is gone or the kernel
        keeps no schedstat.
    """
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                    total += int(f.read().split()[index])
            except FileNotFoundError:
                pass  # A thread that ended meanwhile.
    except OSError:
        return None
    return total


def cpuSeconds(pids: Iterable[int]) -> float:
    """
    User plus system CPU seconds used so far by the given processes.

    @param pids: Process IDs; those that have exited count as zero.
    @return: The sum, in seconds.
    """
    total = 0.0
    for pid in pids:
        ns = _schedstat(pid, 0) if _HAVE_SCHEDSTAT else None
        if ns is not None:
            total += ns / 1e9
            continue
        fields = _statFields(pid)
        if fields is not None:
            # proc(5) fields 14 (utime) and 15 (stime).
            total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


def systemSeconds(pids: Iterable[int]) -> float:
    """
    System CPU seconds used so far by the given processes: the kernel's
    share of L{cpuSeconds} (system calls, and the loopback TCP work that
    runs in their context), from C{/proc/PID/stat}'s C{stime}, so in clock
    ticks (10 ms): read it over a phase of a second or more.

    @param pids: Process IDs; those that have exited count as zero.
    @return: The sum, in seconds.
    """
    total = 0
    for pid in pids:
        fields = _statFields(pid)
        if fields is not None:
            # proc(5) field 15 (stime).
            total += int(fields[12])
    return total / CLOCK_TICKS


def waitSeconds(pids: Iterable[int]) -> float:
    """
    Seconds the given processes have spent runnable but waiting for a CPU
    (taken by other processes): on a shared machine, the interference
    that CPU time per message does not show.

    @return: The sum, or 0 where the kernel keeps no schedstat.
    """
    if not _HAVE_SCHEDSTAT:
        return 0.0
    return sum(_schedstat(pid, 1) or 0 for pid in pids) / 1e9


def residentBytes(pids: Iterable[int]) -> int:
    """
    The resident set size of the given processes, summed.

    @param pids: Process IDs; those that have exited count as zero.
    @return: Bytes.
    """
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm", "rb") as f:
                total += int(f.read().split()[1]) * PAGE_SIZE
        except OSError:
            pass
    return total
