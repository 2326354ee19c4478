"""Benchmark for step-by-step execution: run() vs trace() vs the live stepper, measured side by side.

The bench LSTM (input 64, hidden 256, batch 8, T=500) written with the recdebug API. Prints times and ratios to
run(): the traces, a full stepper pass in the graph (reset + run_to(T)) and one call per step (reset + T x step()),
run_until(rd.on_nan()) to a NaN planted at step 450 (scaled with T), the latency of one step, and the trace's
memory against the raw size of the floats it captured, and the system time and page faults of run and trace (a
trace's cost over run is mostly the kernel's: fresh pages for the values it records).
Usage: python bench/bench_stepping.py [--steps 2000] [--hidden 1024] [--system-memory]
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import io
import os
import time as clock

import numpy as np

import recdebug as rd
from timing import rss_bytes, timed_side_by_side

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


def kernel_time(fn, repeats: int) -> tuple:
    """(system CPU seconds, minor page faults) per call of ``fn``: the kernel's share, mostly the fresh pages of
    memory that the call's results are written into."""
    import resource

    fn()
    before = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(repeats):
        fn()
    after = resource.getrusage(resource.RUSAGE_SELF)
    return (after.ru_stime - before.ru_stime) / repeats, (after.ru_minflt - before.ru_minflt) / repeats


def bench_lstm(hidden=256):
    """The bench LSTM graph (input 64, hidden 256): (graph, its loop, the stacked output, the module, time dim)."""
    time, feat, hid = rd.Dim("time"), rd.Dim("feat", 64), rd.Dim("hidden", hidden)
    with rd.Graph() as g:
        x = rd.Input("x", {batch, time, feat})
        lstm = Lstm(hid)
        with rd.Loop() as loop:
            out = loop.stack(lstm(loop.unstack(x)))
    return g, loop, out, lstm, time


CELL = """
x = rd.Input("x", {batch, time, feat})
lstm = rd.LSTM(hid)
with rd.Loop() as loop:
    out = loop.stack(lstm(loop.unstack(x)))
"""


def warm_cell(x_np, hidden: int, repeats: int, run_of_built):
    """A %%recloop cell of the bench LSTM (rd.LSTM; the debugger on its trace) run again and again in a warm IPython
    shell, side by side with a run of a built graph: (median s, best s, ratio)."""
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.run_cell("%load_ext recdebug")
    shell.user_ns.update({"rd": rd, "np": np, "batch": batch, "time": rd.Dim("time"), "feat": rd.Dim("feat", 64),
                          "hid": rd.Dim("hidden", hidden), "x_np": x_np})

    def cell():  # (a shell without a front end prints what it displays: not into the table)
        with contextlib.redirect_stdout(io.StringIO()):
            assert shell.run_cell("%%recloop --feed x=x_np\n" + CELL).success

    cell()  # warm: imports, RETURNN's first build
    return timed_side_by_side({"run()": run_of_built, "cell": cell}, repeats)["cell"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--device", default=None)
    ap.add_argument("--system-memory", action="store_true",
                    help="without TensorFlow's pooled CPU allocator, which recdebug turns on "
                         "(TF_CPU_ALLOCATOR_USE_BFC)")
    args = ap.parse_args()
    if args.system_memory:  # (read when TensorFlow makes its CPU device, at the first run)
        os.environ["TF_CPU_ALLOCATOR_USE_BFC"] = "false"
    g, loop, out, lstm, time = bench_lstm(args.hidden)
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

    nan_at = args.steps * 9 // 10  # step 450 of 500
    x_nan = x_np.copy()
    x_nan[3, nan_at, 5] = np.nan
    st_nan = g.stepper({"x": x_nan}, seq_lens=lens, device=args.device)

    def full_pass():
        st.reset()
        st.run_to(args.steps)
        assert st.finished

    def single_steps():
        st.reset()
        for _ in range(args.steps):
            st.step()
        assert st.finished

    def run_until_nan():
        st_nan.reset()
        assert st_nan.run_until(rd.on_nan()) and st_nan.t == nan_at + 1

    g.trace(feed, seq_lens=lens, device=args.device, capture=["lstm.h", "lstm.c"])
    full_pass()
    run_until_nan()  # the in-graph loops built before timing
    rounds = timed_side_by_side({
        "run()": lambda: g.run(feed, seq_lens=lens, device=args.device),
        "trace() of all in-loop layers": lambda: g.trace(feed, seq_lens=lens, device=args.device),
        "trace(capture=['lstm.h', 'lstm.c'])": lambda: g.trace(feed, seq_lens=lens, device=args.device,
                                                               capture=["lstm.h", "lstm.c"]),
        "full pass in the graph (run_to(T))": full_pass,
        f"run_until(on_nan) to step {nan_at}": run_until_nan,
    }, args.repeats)
    rounds.update({k: v for k, v in timed_side_by_side({
        "run()": lambda: g.run(feed, seq_lens=lens, device=args.device),
        "full pass, one call per step": single_steps}, max(1, args.repeats // 2)).items() if k != "run()"})
    kernel = {what: kernel_time(fn, args.repeats) for what, fn in (
        ("run()", lambda: g.run(feed, seq_lens=lens, device=args.device)),
        ("trace()", lambda: g.trace(feed, seq_lens=lens, device=args.device)))}
    st.reset()
    latencies = []
    for _ in range(min(200, args.steps)):
        t0 = clock.perf_counter()
        st.step()
        latencies.append(clock.perf_counter() - t0)
    one_step = float(np.median(latencies))

    del tr
    gc.collect()
    before = rss_bytes()
    tr = g.trace(feed, seq_lens=lens, device=args.device)
    gc.collect()
    grown = rss_bytes() - before
    captured = sum(e.array.nbytes for e in tr.entries.values() if e.loop_axes)  # every in-loop value, raw
    held = tr.nbytes  # what the trace keeps (values shared or derived are not stored twice)
    np.testing.assert_allclose(tr.numpy(out), g.run(feed, seq_lens=lens, device=args.device).numpy(out), atol=1e-5)

    print(f"bench LSTM: input 64, hidden {args.hidden}, batch 8, T={args.steps}, device {tr.device}, "
          f"median of {args.repeats} (one call per step: {max(1, args.repeats // 2)})")
    print(f"{'what':38s} {'median s':>9s} {'best s':>8s} {'ratio to run':>13s} {'target':>7s}   (ratio: median "
          f"of the per-round ratios, run and the others measured in turn)")
    targets = {"trace() of all in-loop layers": "<= 1.1", "full pass in the graph (run_to(T))": "<= 1.5",
               f"run_until(on_nan) to step {nan_at}": "<= 1.5"}
    for what, (med, best, ratio) in rounds.items():
        print(f"{what:38s} {med:9.4f} {best:8.4f} {ratio:13.2f} {targets.get(what, ''):>7s}")
    print(f"{'one step() (ms)':38s} {one_step * 1e3:9.3f} {'':8s} {'':13s} {'<= 2':>7s}")
    med, best, ratio = warm_cell(x_np, args.hidden, args.repeats,
                                 lambda: g.run(feed, seq_lens=lens, device=args.device))
    print(f"{'%%recloop cell run again (s)':38s} {med:9.4f} {best:8.4f} {ratio:13.2f} {'<= 0.5s':>7s}")
    for what, (system, faults) in kernel.items():  # where a trace's time over run's goes: fresh memory
        print(f"{'system time per call (ms): ' + what:38s} {system * 1e3:9.1f}   page faults per call {faults:.0f}")
    print(f"{'first call incl. build: run()':38s} {build_run:9.4f}")
    print(f"{'first call incl. build: trace()':38s} {build_trace:9.4f}")
    print(f"{'stepper build':38s} {build_step:9.4f}")
    derived = sum(e.is_derived or any(e.array is o.array for o in tr.entries.values() if o is not e)
                  for e in tr.entries.values())
    print(f"trace memory: {len(tr.entries)} values ({derived} shared or derived), captured in-loop floats "
          f"{captured / 1e6:.1f} MB, arrays held {held / 1e6:.1f} MB, RSS growth {grown / 1e6:.1f} MB")
    print(f"{'trace arrays held / captured floats':38s} {held / captured:9.3f} {'<= 1.1':>7s}")
    print(f"{'RSS growth / captured floats':38s} {grown / captured:9.3f} {'<= 1.1':>7s}")


if __name__ == "__main__":
    main()
