"""Headless demo: the design text's first loop, its RETURNN net dict, and a run on random data.

Run with ``python -m recdebug.notebook.demo``.
"""
from __future__ import annotations

import pprint

import numpy as np

import recdebug as rd


def build():
    batch, time, dim = rd.batch_dim, rd.Dim("time"), rd.Dim("dim", 4)
    with rd.Graph() as g:
        x = rd.Input("x", {batch, time, dim})
        h = rd.State({batch, dim}, initial=0)
        with rd.Loop() as loop:
            x_t = loop.unstack(x)
            x_lin = rd.Linear(dim)(x_t)
            h_ = rd.tanh(rd.Linear(dim)(x_lin + h.get()))
            h.assign(h_)
            out = loop.stack(h_)
            h_last = loop.last(h_)
    return g, (batch, time, dim), x, out, h_last, h


def numpy_loop(x_np, p):
    """The same loop written directly in numpy, from the parameters RETURNN used."""
    h, outs = np.zeros((x_np.shape[0], x_np.shape[2])), []
    for t in range(x_np.shape[1]):
        x_lin = x_np[:, t] @ p["linear/weight"] + p["linear/bias"]
        h = np.tanh((x_lin + h) @ p["linear_1/weight"] + p["linear_1/bias"])
        outs.append(h)
    return np.stack(outs, 1)


def main():
    np.set_printoptions(precision=4, suppress=True)
    g, (batch, time, dim), x, out, h_last, h = build()
    print("== The emitted RETURNN net dict ==")
    pprint.pprint(g.net_dict(), width=110)
    rng = np.random.default_rng(0)
    lens = np.array([6, 3, 5], dtype=np.int32)
    x_np = rng.standard_normal((3, 6, 4)).astype(np.float32)
    res = g.run({"x": x_np}, seq_lens={time: lens})
    print(f"\n== Run on RETURNN ({res.device}) ==")
    print("sequence lengths:", lens)
    for name, shape in [(n, v.shape) for n, v in res.params().items()]:
        print(f"param {name}: {shape}")
    stacked = res.numpy(out, order=(batch, time, dim))
    print(f"out {out}: shape {stacked.shape} (batch, time, dim)")
    print("out, sequence 1 (3 valid frames, the rest is padding):")
    print(stacked[1, :3])
    print(f"h_last {h_last}:")
    print(res.numpy(h_last, order=(batch, dim)))
    ref = numpy_loop(x_np, res.params())
    diff = max(np.abs(stacked[b, :n] - ref[b, :n]).max() for b, n in enumerate(lens))
    print(f"max |RETURNN - numpy| over valid frames: {diff:.2e}")


if __name__ == "__main__":
    main()
