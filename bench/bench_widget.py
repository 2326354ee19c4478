"""Benchmark for the debugger widget, in a real IPython kernel (messages measured as the frontend gets them).

A trace with T=5000 steps and a 512-unit State (batch 2). Prints: the first payload against the raw bytes of the
displayed arrays, and per step click the time handled in Python (until its messages are sent) and the bytes
sent; the same for a live stepper on the bench LSTM (hidden 256). Usage: python bench/bench_widget.py
"""
from __future__ import annotations

import json
import statistics
import sys
import textwrap

from jupyter_client.manager import start_new_kernel

SETUP = textwrap.dedent('''
    import numpy as np, recdebug as rd, time as _clock
    from IPython.display import display
    batch, time = rd.batch_dim, rd.Dim("time")
    feat, hid = rd.Dim("feat", 16), rd.Dim("hidden", 512)
    with rd.Graph() as g:
        x = rd.Input("x", {batch, time, feat})
        h = rd.State({batch, hid})
        lin_x, lin_h = rd.Linear(hid), rd.Linear(hid)
        with rd.Loop() as loop:
            h.assign(rd.tanh(lin_x(loop.unstack(x)) + lin_h(h.get())))
            out = loop.stack(h.get())
    x_np = np.random.default_rng(0).standard_normal((2, 5000, 16)).astype(np.float32)
    tr = g.trace({"x": x_np}, seq_lens={time: np.array([5000, 3000])}, capture=["h"])
''')

SETUP_STEPPER = textwrap.dedent('''
    class Lstm(rd.Module):
        def __init__(self, dim):
            super().__init__()
            self.h, self.c = rd.State({batch, dim}), rd.State({batch, dim})
            self.ff_linear, self.rec_linear = rd.Linear(dim * 4), rd.Linear(dim * 4)
        def forward(self, x):
            x_in, g_in, g_f, g_out = rd.split(self.ff_linear(x) + self.rec_linear(self.h.get()), 4)
            c = self.c.get() * rd.sigmoid(g_f) + rd.tanh(x_in) * rd.sigmoid(g_in)
            self.c.assign(c)
            h = rd.tanh(c) * rd.sigmoid(g_out)
            self.h.assign(h)
            return h
    t2, f2, h2 = rd.Dim("time2"), rd.Dim("feat2", 64), rd.Dim("hidden2", 256)
    with rd.Graph() as g2:
        x2 = rd.Input("x2", {batch, t2, f2})
        with rd.Loop() as loop2:
            loop2.stack(Lstm(h2)(loop2.unstack(x2)))
    st = g2.stepper({"x2": np.random.default_rng(1).standard_normal((8, 500, 64)).astype(np.float32)})
''')


def message_bytes(msg) -> int:
    return len(json.dumps(msg["content"])) + sum(len(b) for b in msg.get("buffers", []))


def run(kc, code, timeout=600):
    """Execute ``code``; return (stdout text, comm messages it caused)."""
    msg_id = kc.execute(code)
    out, comms = [], []
    while True:
        msg = kc.get_iopub_msg(timeout=timeout)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind = msg["msg_type"]
        if kind in ("comm_open", "comm_msg"):
            comms.append(msg)
        elif kind == "stream":
            out.append(msg["content"]["text"])
        elif kind == "error":
            raise RuntimeError("\n".join(msg["content"]["traceback"]))
        elif kind == "status" and msg["content"]["execution_state"] == "idle":
            return "".join(out), comms


def step_stats(kc, target: str, n: int):
    times, sizes = [], []
    for _ in range(n):
        out, comms = run(kc, f"_t0 = _clock.perf_counter(); {target}.step(); "
                             f"print(_clock.perf_counter() - _t0)")
        times.append(float(out.strip()))
        sizes.append(sum(message_bytes(m) for m in comms))
    return times, sizes


def main():
    km, kc = start_new_kernel(kernel_name="python3")
    try:
        run(kc, SETUP)
        _, comms = run(kc, "dbg = rd.debugger(tr); display(dbg)")
        first = sum(message_bytes(m) for m in comms)
        raw_out, _ = run(kc, "print(sum(len(v.values) for v in dbg.views.values()))")
        raw = int(raw_out)
        run(kc, "dbg.step()")  # warm
        times, sizes = step_stats(kc, "dbg", 30)
        run(kc, SETUP_STEPPER)
        _, comms2 = run(kc, "dbg2 = rd.debugger(st); display(dbg2)")
        run(kc, "dbg2.step()")
        s_times, s_sizes = step_stats(kc, "dbg2", 30)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    print("debugger widget bench (real kernel; bytes = JSON content + binary buffers of comm messages)")
    print(f"{'what':52s} {'value':>12s} {'target':>10s}")
    print(f"{'trace T=5000, 512 units, batch 2: first payload':52s} {first / 1e6:10.2f}MB")
    print(f"{'  raw bytes of the displayed arrays':52s} {raw / 1e6:10.2f}MB")
    print(f"{'  first payload / raw bytes':52s} {first / raw:12.3f} {'<= 1.1':>10s}")
    print(f"{'  step click handled in Python, median (ms)':52s} {statistics.median(times) * 1e3:12.2f} "
          f"{'<= 10':>10s}")
    print(f"{'  step click handled in Python, max (ms)':52s} {max(times) * 1e3:12.2f}")
    print(f"{'  bytes sent per step, max':52s} {max(sizes):12d} {'<= 2048':>10s}")
    print(f"{'live stepper, LSTM hidden 256, batch 8: step (ms)':52s} {statistics.median(s_times) * 1e3:12.2f}")
    # a live view's synced state holds every row run (a view drawn late or after a reload reads it): the rows changed
    # since the last whole array go out with each step, and the whole array once they are sqrt(2T)
    print(f"{'  bytes sent per step, mean (rows since the last whole)':52s} {statistics.mean(s_sizes):12.0f}")
    print(f"{'  bytes sent per step, max (a whole array)':52s} {max(s_sizes):12d}")


if __name__ == "__main__":
    sys.exit(main())
