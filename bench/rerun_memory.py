"""Memory over re-runs of one ``%%recloop`` cell in a real IPython shell: does re-running leak?

Each re-run builds a new graph, runs, traces and steps it, and shows the debugger; the previous run is closed.
Prints RSS after each block of re-runs, the growth per re-run during warm-up and after it, and how many
TensorFlow graphs and Steppers are still alive. Usage: python bench/rerun_memory.py [--reruns 200] [--live]
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import io
import time as clock

from timing import rss_bytes

CELL = """
x = rd.Input("x", {batch, time, hid})
h = rd.State({batch, hid})
lin = rd.Linear(hid)
with rd.Loop() as loop:
    h.assign(rd.tanh(lin(loop.unstack(x)) + h.get()))
    out = loop.stack(h.get())
"""


def shell():
    """A real IPython shell with the extension loaded (not a kernel: no browser, the widgets stay in Python)."""
    from IPython.core.interactiveshell import InteractiveShell

    ip = InteractiveShell.instance()
    run_cell(ip, "%load_ext recdebug")
    run_cell(ip, "import numpy as np, recdebug as rd\nbatch, time, hid = rd.batch_dim, rd.Dim('time'), rd.Dim('hidden', 4)")
    return ip


def run_cell(ip, code: str) -> None:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        result = ip.run_cell(code)
    if not result.success:
        raise RuntimeError(f"cell failed: {result.error_before_exec or result.error_in_exec}")


def alive() -> tuple[int, int]:
    """(TensorFlow graphs, Steppers) reachable in this process."""
    import tensorflow as tf

    from recdebug.backend.stepper import Stepper

    objects = gc.get_objects()
    return sum(isinstance(o, tf.Graph) for o in objects), sum(isinstance(o, Stepper) for o in objects)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reruns", type=int, default=200, help="re-runs measured after the warm-up (default 200)")
    ap.add_argument("--warmup", type=int, default=20, help="re-runs before the measurement (default 20)")
    ap.add_argument("--every", type=int, default=25, help="print a row every this many re-runs (default 25)")
    ap.add_argument("--live", action="store_true", help="re-run the cell with --live (the debugger on the stepper)")
    args = ap.parse_args()
    ip = shell()
    cell = "%%recloop" + (" --live" if args.live else "") + "\n" + CELL
    gc.collect()
    start = rss_bytes() / 2**20
    t0 = clock.perf_counter()
    for _ in range(args.warmup):
        run_cell(ip, cell)
    gc.collect()
    warm = rss_bytes() / 2**20
    graphs, steppers = alive()
    print(f"cell: %%recloop{' --live' if args.live else ''}, {args.warmup} warm-up re-runs, then {args.reruns}")
    print(f"{'re-runs':>8} {'RSS MB':>8} {'growth MB':>10} {'MB/re-run':>10} {'tf.Graphs':>10} {'Steppers':>9}")
    print(f"{0:>8} {start:8.1f} {'':>10} {'':>10} {'':>10} {'':>9}  (before warm-up)")
    per = (warm - start) / max(args.warmup, 1)
    print(f"{args.warmup:>8} {warm:8.1f} {warm - start:10.1f} {per:10.3f} {graphs:>10} {steppers:>9}  (warm-up)")
    for i in range(1, args.reruns + 1):
        run_cell(ip, cell)
        if i % args.every == 0 or i == args.reruns:
            gc.collect()
            rss = rss_bytes() / 2**20
            graphs, steppers = alive()
            print(f"{args.warmup + i:>8} {rss:8.1f} {rss - warm:10.1f} {(rss - warm) / i:10.3f} {graphs:>10} "
                  f"{steppers:>9}", flush=True)
    print(f"after warm-up: {args.reruns} re-runs grew RSS by {rss - warm:.1f} MB "
          f"({(rss - warm) / args.reruns:.3f} MB per re-run); {clock.perf_counter() - t0:.0f} s in all")


if __name__ == "__main__":
    main()
