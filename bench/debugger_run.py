"""Benchmark: ``Debugger.run()`` on a trace (run to the end, looking for NaN/Inf in every State) against T.

One trace per T (an RNN with two 8-unit States, batch 2, the second sequence 3/4 as long), the debugger on each,
then ``seek(0)`` and ``run()`` on each in turn, round after round, so that drift of the machine hits every T alike.
Prints the median time per T and the time per step: a flat time/T column means the work is linear in T.
Usage: python bench/debugger_run.py [repeats]
"""
from __future__ import annotations

import os
import sys

os.environ.setdefault("DISABLE_CUDA", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

import recdebug as rd
from timing import timed_side_by_side

STEPS = (2000, 5000, 20000)


def trace_of(T: int) -> rd.Trace:
    batch, time = rd.batch_dim, rd.Dim("time")
    feat, hid = rd.Dim("feat", 4), rd.Dim("hidden", 8)
    with rd.Graph() as g:
        x = rd.Input("x", {batch, time, feat})
        h, c = rd.State({batch, hid}), rd.State({batch, hid})
        lin_x, lin_h = rd.Linear(hid), rd.Linear(hid)
        with rd.Loop() as loop:
            h.assign(rd.tanh(lin_x(loop.unstack(x)) + lin_h(h.get())))
            c.assign(c.get() + h.get())
            loop.stack(h.get())
    x_np = np.random.default_rng(0).standard_normal((2, T, 4)).astype(np.float32)
    return g.trace({"x": x_np}, seq_lens={time: np.array([T, 3 * T // 4])})


def main(repeats: int = 5):
    debuggers = {T: rd.debugger(trace_of(T)) for T in STEPS}

    def run_from_start(d):
        def go():
            d.seek(0)
            d.run()
            assert d.t == d.T
        return go

    stats = timed_side_by_side({T: run_from_start(d) for T, d in debuggers.items()}, repeats)
    print(f"Debugger.run() on a trace, to the end (2 States x 8 units, batch 2; median of {repeats} rounds)")
    print(f"{'T':>8s} {'run() s':>10s} {'best s':>10s} {'us per step':>12s} {'vs T=' + str(STEPS[0]):>10s}")
    for T, (median, best, ratio) in stats.items():
        print(f"{T:8d} {median:10.4f} {best:10.4f} {median / T * 1e6:12.2f} {ratio:10.2f}")
    for d in debuggers.values():
        d.close()


if __name__ == "__main__":
    sys.exit(main(*(int(a) for a in sys.argv[1:2])))
