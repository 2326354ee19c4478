"""Benchmark for beam search: run(search=True) vs trace(search=True) vs a full live stepper pass, side by side.

A label-synchronous decoder (embedding 64 of the previous label, hidden 256, vocab 1000, beam 8, batch 8, at
most 50 steps; the bias of label 0 is pushed down so that the search runs to the step limit). Prints times and
ratios to run(search=True), and checks that the three agree on the best hypotheses.
Usage: python bench/bench_search.py [--repeats 5] [--beam 8]
"""
from __future__ import annotations

import argparse
import time as clock

import numpy as np

import recdebug as rd
from timing import timed

batch = rd.batch_dim


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--beam", type=int, default=8)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--device", default=None)
    args = ap.parse_args()
    hid, vocab, emb = rd.Dim("hid", 256), rd.Dim("vocab", 1000), rd.Dim("emb", 64)
    with rd.Graph() as g:
        enc = rd.Input("enc", {batch, hid})
        embed, lin_h, lin_out = rd.Embedding(vocab, emb), rd.Linear(hid), rd.Linear(vocab)
        label = rd.State({batch}, initial=0, dtype="int32", sparse_dim=vocab)
        h = rd.State({batch, hid}, initial=enc)
        with rd.Loop(max_seq_len=args.steps) as loop:
            h_ = rd.tanh(lin_h(rd.concat(embed(label.get()), h.get())))
            h.assign(h_)
            y = rd.choice(lin_out(h_), beam_size=args.beam)
            label.assign(y)
            loop.end(y == 0, include_eos=True)
            labels = loop.stack(y)
    rng = np.random.default_rng(0)
    enc_np = rng.standard_normal((8, 256)).astype(np.float32)
    bias = np.zeros(1000, np.float32)
    bias[0] = -20.0  # EOS (almost) never wins: every search runs args.steps steps
    params = {"linear_1/bias": bias}
    feed = {"enc": enc_np}
    kw = dict(device=args.device, params=params)

    t0 = clock.perf_counter()
    res = g.run(feed, search=True, **kw)
    build_run = clock.perf_counter() - t0
    t0 = clock.perf_counter()
    tr = g.trace(feed, search=True, **kw)
    build_trace = clock.perf_counter() - t0
    t0 = clock.perf_counter()
    st = g.stepper(feed, **kw)
    build_step = clock.perf_counter() - t0

    def full_pass():
        st.reset()
        st.step(args.steps)
        assert st.finished

    full_pass()  # (the first steps build the step ops: "stepper build" above does not include them)
    t_run = timed(lambda: g.run(feed, search=True, **kw), args.repeats)
    t_trace = timed(lambda: g.trace(feed, search=True, **kw), args.repeats)
    t_step = timed(full_pass, args.repeats)

    traced, live = tr.beams(y), st.beams()
    best = res.numpy(labels)
    agree = all(live.hypotheses(b)[0]["labels"] == traced.hypotheses(b)[0]["labels"] ==
                best[b, :res.lens(loop.axis)[b]].tolist() for b in range(8))
    print(f"bench decoder: emb 64, hidden 256, vocab 1000, beam {args.beam}, batch 8, {args.steps} steps, "
          f"device {tr.device}, median of {args.repeats}, the stepper warmed up by one full pass")
    print(f"{'what':40s} {'median s':>9s} {'best s':>8s} {'median/run':>11s} {'best/run':>9s}")
    for what, (med, best_t) in [("run(search=True)", t_run), ("trace(search=True), every hypothesis", t_trace),
                                ("live stepper: reset + every step", t_step)]:
        print(f"{what:40s} {med:9.4f} {best_t:8.4f} {med / t_run[0]:11.2f} {best_t / t_run[1]:9.2f}")
    print(f"{'per live step (ms)':40s} {1000 * t_step[0] / args.steps:9.2f}")
    print(f"{'first call incl. build: run()':40s} {build_run:9.4f}")
    print(f"{'first call incl. build: trace()':40s} {build_trace:9.4f}")
    print(f"{'stepper build':40s} {build_step:9.4f}")
    print(f"best hypotheses agree (run, trace, live stepper): {agree}")


if __name__ == "__main__":
    main()
