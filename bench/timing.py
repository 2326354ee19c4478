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


def timed_side_by_side(fns: dict, repeats: int) -> dict:
    """Each function once per round, in turn, for ``repeats`` rounds, so that drift of the machine hits all of
    them alike. Returns name -> (median s, best s, median of the per-round ratios to the first function)."""
    import time as clock

    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = clock.perf_counter()
            fn()
            times[name].append(clock.perf_counter() - t0)
    base = next(iter(times.values()))
    return {name: (statistics.median(ts), min(ts), statistics.median(t / b for t, b in zip(ts, base)))
            for name, ts in times.items()}
