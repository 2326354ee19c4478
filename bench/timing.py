"""Shared by the bench scripts (run as ``python bench/<script>.py``, so this folder is on sys.path)."""
from __future__ import annotations

import statistics
import time as clock


def timed(fn, repeats):
    """(median, best) seconds over ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        t0 = clock.perf_counter()
        fn()
        times.append(clock.perf_counter() - t0)
    return statistics.median(times), min(times)


def rss_bytes() -> int:
    """This process' resident memory."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0
