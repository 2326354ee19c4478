"""Benchmark for step-by-step execution: run() vs trace() vs a full Stepper pass, measured side by side.

The bench LSTM (input 64, hidden 256, batch 8, T=500) written with the recdebug API. Prints times and ratios to
run(), and the trace's memory against the raw size of the floats it captured. Usage: python bench/bench_stepping.py
"""
from __future__ import annotations

import argparse
import gc
import time as clock

import numpy as np

import recdebug as rd
from timing import rss_bytes, timed, timed_side_by_side

batch = rd.batch_dim


class Lstm(rd.Module):
    def __init__(self, dim):
        super().__init__()
        self.h = rd.State({batch, dim})
        self.c = rd.State({batch, dim})
        self.ff_linear = rd.Linear(dim * 4)
        self.rec_linear = rd.Linear(dim * 4)

    def forward(self, x):
        x_in, g_in, g_forget, g_out = rd.split(self.ff_linear(x) + self.rec_linear(self.h.get()), 4)
        c = self.c.get() * rd.sigmoid(g_forget) + rd.tanh(x_in) * rd.sigmoid(g_in)
        self.c.assign(c)
        h = rd.tanh(c) * rd.sigmoid(g_out)
        self.h.assign(h)
        return h


def bench_lstm():
    """The bench LSTM graph (input 64, hidden 256): (graph, its loop, the stacked output, the module, time dim)."""
    time, feat, hid = rd.Dim("time"), rd.Dim("feat", 64), rd.Dim("hidden", 256)
    with rd.Graph() as g:
        x = rd.Input("x", {batch, time, feat})
        lstm = Lstm(hid)
        with rd.Loop() as loop:
            out = loop.stack(lstm(loop.unstack(x)))
    return g, loop, out, lstm, time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--device", default=None)
    args = ap.parse_args()
    g, loop, out, lstm, time = bench_lstm()
    rng = np.random.default_rng(0)
    x_np = rng.standard_normal((8, args.steps, 64)).astype(np.float32)
    feed, lens = {"x": x_np}, {time: np.full(8, args.steps, np.int32)}

    t0 = clock.perf_counter()
    g.run(feed, seq_lens=lens, device=args.device)
    build_run = clock.perf_counter() - t0
    t0 = clock.perf_counter()
    tr = g.trace(feed, seq_lens=lens, device=args.device)
    build_trace = clock.perf_counter() - t0
    t0 = clock.perf_counter()
    st = g.stepper(feed, seq_lens=lens, device=args.device)
    build_step = clock.perf_counter() - t0

    def full_pass():
        st.reset()
        st.step(args.steps)
        assert st.finished

    g.trace(feed, seq_lens=lens, device=args.device, capture=["lstm.h", "lstm.c"])
    rounds = timed_side_by_side({
        "run()": lambda: g.run(feed, seq_lens=lens, device=args.device),
        "trace() of all in-loop layers": lambda: g.trace(feed, seq_lens=lens, device=args.device),
        "trace(capture=['lstm.h', 'lstm.c'])": lambda: g.trace(feed, seq_lens=lens, device=args.device,
                                                               capture=["lstm.h", "lstm.c"]),
    }, args.repeats)
    t_run = rounds["run()"][:2]
    t_step = timed(full_pass, max(1, args.repeats // 2))

    del tr
    gc.collect()
    before = rss_bytes()
    tr = g.trace(feed, seq_lens=lens, device=args.device)
    gc.collect()
    grown = rss_bytes() - before
    captured = sum(e.array.nbytes for e in tr.entries.values() if e.loop_axes)  # every in-loop value, raw
    held = tr.nbytes  # what the trace keeps (values shared or derived are not stored twice)
    np.testing.assert_allclose(tr.numpy(out), g.run(feed, seq_lens=lens, device=args.device).numpy(out), atol=1e-5)

    print(f"bench LSTM: input 64, hidden 256, batch 8, T={args.steps}, device {tr.device}, "
          f"median of {args.repeats} (stepper: {max(1, args.repeats // 2)})")
    print(f"{'what':36s} {'median s':>9s} {'best s':>8s} {'ratio to run':>13s} {'target':>7s}   (ratio: median "
          f"of the per-round ratios, run and traces measured in turn)")
    targets = {"trace() of all in-loop layers": "<= 1.3"}
    for what, (med, best, ratio) in rounds.items():
        print(f"{what:36s} {med:9.4f} {best:8.4f} {ratio:13.2f} {targets.get(what, ''):>7s}")
    med, best = t_step
    print(f"{'full stepper pass (reset + T steps)':36s} {med:9.4f} {best:8.4f} {med / t_run[0]:13.2f} {'<= 10':>7s}")
    print(f"{'first call incl. build: run()':36s} {build_run:9.4f}")
    print(f"{'first call incl. build: trace()':36s} {build_trace:9.4f}")
    print(f"{'stepper build':36s} {build_step:9.4f}")
    derived = sum(e.is_derived or any(e.array is o.array for o in tr.entries.values() if o is not e)
                  for e in tr.entries.values())
    print(f"trace memory: {len(tr.entries)} values ({derived} shared or derived), captured in-loop floats "
          f"{captured / 1e6:.1f} MB, arrays held {held / 1e6:.1f} MB, RSS growth {grown / 1e6:.1f} MB")
    print(f"{'trace arrays held / captured floats':36s} {held / captured:9.3f} {'<= 1.1':>7s}")
    print(f"{'RSS growth / captured floats':36s} {grown / captured:9.3f} {'<= 1.1':>7s}")


if __name__ == "__main__":
    main()
