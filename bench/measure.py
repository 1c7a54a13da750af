"""Measuring helpers for `make bench`: CPU time per process, percentiles, machine facts.

CPU time comes from ``/proc/<pid>/task/*/schedstat`` (the first field: nanoseconds spent
on a CPU by that thread), summed over every thread of the process, so the bench can say
how much CPU each side of a pairing spent per operation: the Python runner reads its
own pid, the Python server's, and each ``erl`` node's (its ``beam.smp`` and all its
scheduler, dirty and I/O threads). Threads that ended between two readings are lost;
the processes measured here keep their threads for the whole run.
"""

from __future__ import annotations

import asyncio
import os
import platform
import statistics
from collections.abc import Iterable, Sequence
from typing import Any


def cpu_ns(pid: int) -> int | None:
    """Total on-CPU nanoseconds of every thread of ``pid``; None where /proc cannot tell."""
    base = f"/proc/{pid}/task"
    total = 0
    try:
        tids = os.listdir(base)
    except OSError:
        return None
    for tid in tids:
        try:
            with open(f"{base}/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # the thread ended meanwhile
    return total


def cpu_snapshot(pids: Iterable[int]) -> dict[int, int | None]:
    return {pid: cpu_ns(pid) for pid in pids}


def cpu_delta(before: dict[int, int | None], after: dict[int, int | None], pid: int) -> int | None:
    a, b = before.get(pid), after.get(pid)
    return None if a is None or b is None else b - a


PIN_MODES = ("auto", "none", "split", "same")
"""CPU placement of the processes: ``none`` (the kernel decides), ``split`` (clients -- the
runner and the Erlang client node -- on one CPU, servers on another), ``same`` (all on one
CPU), ``auto`` (:data:`AUTO_PLACEMENT`).

Why it matters: on this kind of (virtual) machine a loopback round trip between processes
on two CPUs costs 3-6x the wall time and about twice the CPU of one between processes on
the same CPU (waking an idle CPU), and the kernel moves processes between the two at will,
so unpinned ping-pong batches are bimodal and the share of slow batches differs from
pairing to pairing and run to run."""

AUTO_PLACEMENT = {"pingpong": "same", "stream": "split", "stream_10k": "split", "burst": "split", "scale": "none"}
"""``auto``: round trips on one CPU (serial CPU work, stable from batch to batch); streams on
two (sender and receiver work in parallel); the scale part as the kernel places it."""

ALL_CPUS = frozenset(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else frozenset()


def placement(mode: str) -> dict[str, set[int]]:
    """Role ("client"/"server") -> CPU set for a pin mode (``none``: every CPU)."""
    cpus = sorted(ALL_CPUS)
    if mode == "none" or not cpus:
        return {"client": set(cpus), "server": set(cpus)}
    if mode == "split" and len(cpus) >= 2:
        return {"client": {cpus[0]}, "server": {cpus[1]}}
    return {"client": {cpus[0]}, "server": {cpus[0]}}


def pin_process(pid: int, cpus: set[int]) -> None:
    """Pin every thread of ``pid`` (threads created later inherit their creator's mask)."""
    if not cpus:
        return
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except (ProcessLookupError, PermissionError):
            continue


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    n = len(sorted_values)
    return sorted_values[max(1, min(n, round(p * n))) - 1]


def median(values: Iterable[float]) -> float:
    return statistics.median(values)


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else [0.0, 0.0, 0.0]


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def process_name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def summarize(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Median over repetitions of every numeric field (samples with an error are skipped)."""
    good = [s for s in samples if "error" not in s]
    out: dict[str, Any] = {"repetitions": len(good)}
    if len(good) != len(samples):
        out["errors"] = [s["error"] for s in samples if "error" in s]
    if not good:
        return out
    for key, value in good[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = statistics.median(s[key] for s in good if key in s)
        elif isinstance(value, str):
            out[key] = value
    return out


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "event_loop": event_loop_name(),
        "cpu_source": "/proc/<pid>/task/*/schedstat" if cpu_ns(os.getpid()) is not None else "unavailable",
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


def event_loop_name() -> str:
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    return f"uvloop {uvloop.__version__}"


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (as pyfabric's blocking facade does), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()
