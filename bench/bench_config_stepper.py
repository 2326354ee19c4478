"""Benchmark for a RETURNN config's live stepper (``rd.from_returnn(...).stepper``), measured side by side with
RETURNN's own run of the same model.

Three configs: tests/returnn_demos/demo-tf-attention.config (an encoder of BLSTMs, an attention decoder fed its
reference labels: teacher forcing), an attention decoder that searches (a choice layer with beam 4, an end layer),
and the same with the attention of RETURNN's published attention setups (weight feedback from the accumulated
attention weights: a State over the encoder's frames). Per config, rounds interleaved: ``m.run`` (RETURNN's
forward, or its beam search), ``m.trace`` (every layer of the unit at every step; teacher forcing only), making a
stepper (``m.stepper(...)``: its build) and a full pass of a made one (``reset()`` and ``run_to(T)``); the ratios
are to ``m.run`` in the same round. Then the stepper's single-step latency.
Usage: python bench/bench_config_stepper.py [--repeats 5] [--batch 8] [--enc 100] [--dec 40]
"""
from __future__ import annotations

import argparse
import pathlib
import statistics
import time as clock

import numpy as np

import recdebug as rd
from timing import timed_side_by_side

DEMOS = pathlib.Path(__file__).resolve().parent.parent / "tests" / "returnn_demos"

SEARCH_NET = {  # an attention decoder that picks its own labels
    "encoder": {"class": "linear", "activation": "tanh", "from": "data", "n_out": 128},
    "enc_ctx": {"class": "linear", "activation": "tanh", "from": "encoder", "n_out": 128},
    "output": {"class": "rec", "from": [], "max_seq_len": "max_len_from('base:encoder')", "include_eos": True,
               "unit": {
                   "embed": {"class": "linear", "activation": None, "from": "output", "n_out": 64},
                   "s": {"class": "rnn_cell", "unit": "LSTMBlock", "from": ["prev:c", "prev:embed"], "n_out": 128},
                   "c_in": {"class": "linear", "activation": "tanh", "from": ["s", "prev:embed"], "n_out": 128},
                   "c": {"class": "dot_attention", "from": "c_in", "base": "base:encoder", "base_ctx": "base:enc_ctx",
                         "n_out": 128},
                   "prob": {"class": "softmax", "from": ["s", "c"], "target": "classes"},
                   "output": {"class": "choice", "from": "prob", "target": "classes", "beam_size": 4,
                              "length_normalization": False},
                   "end": {"class": "compare", "from": "output", "value": 0}}},
}
SEARCH_DATA = {"data": {"dim": 32}, "classes": {"dim": 50, "sparse": True, "available_for_inference": False}}
# the attention of RETURNN's published attention setups: weight feedback from the accumulated attention weights, a
# State over the encoder's frames
ACCUM_UNIT = {
    "s_transformed": {"class": "linear", "activation": None, "with_bias": False, "from": "s", "n_out": 128},
    "weight_feedback": {"class": "linear", "activation": None, "with_bias": False, "from": "prev:accum_att_weights",
                        "n_out": 128},
    "energy_in": {"class": "combine", "kind": "add", "from": ["base:enc_ctx", "weight_feedback", "s_transformed"],
                  "n_out": 128},
    "energy_tanh": {"class": "activation", "activation": "tanh", "from": "energy_in"},
    "energy": {"class": "linear", "activation": None, "with_bias": False, "from": "energy_tanh", "n_out": 1},
    "att_weights": {"class": "softmax_over_spatial", "from": "energy"},
    "accum_att_weights": {"class": "combine", "kind": "add", "from": ["prev:accum_att_weights", "att_weights"],
                          "initial_output": 0},
    "c": {"class": "generic_attention", "weights": "att_weights", "base": "base:encoder"},
}
ACCUM_NET = dict(SEARCH_NET, output=dict(SEARCH_NET["output"], unit={
    **{k: v for k, v in SEARCH_NET["output"]["unit"].items() if k != "c"}, **ACCUM_UNIT}))


def step_latency(make, n: int) -> float:
    """Median seconds of one ``step()`` over ``n`` steps of a fresh stepper."""
    st = make()
    times = []
    for _ in range(n):
        if st.finished:
            break
        t0 = clock.perf_counter()
        st.step()
        times.append(clock.perf_counter() - t0)
    st.close()
    return statistics.median(times)


def full_pass(st):
    st.reset()
    st.run_to(st.T)


def made(make):
    make().close()


def row(name, res):
    median, best, ratio = res
    print(f"  {name:<34} {median * 1e3:9.1f} ms  (best {best * 1e3:8.1f})  {ratio:6.2f}x run")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--enc", type=int, default=100, help="encoder frames")
    ap.add_argument("--dec", type=int, default=40, help="decoder steps (teacher forcing)")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    b = args.batch

    m = rd.from_returnn(DEMOS / "demo-tf-attention.config", device="cpu")
    x = rng.standard_normal((b, args.enc, 12)).astype(np.float32)
    y = rng.integers(0, 12, (b, args.dec)).astype(np.int32)
    lens = {"data": np.linspace(args.enc // 2, args.enc, b).astype(np.int32),
            "classes": np.linspace(args.dec // 2, args.dec, b).astype(np.int32)}
    feed = {"data": x, "classes": y}
    st = m.stepper(feed, lens)
    m.run(feed, lens), m.trace(feed, lens), full_pass(st)  # builds, once
    res = timed_side_by_side({"run": lambda: m.run(feed, lens), "trace": lambda: m.trace(feed, lens),
                              "m.stepper(...) (its build)": lambda: made(lambda: m.stepper(feed, lens)),
                              "stepper full pass": lambda: full_pass(st)}, args.repeats)
    st.close()
    print(f"demo-tf-attention.config, teacher forcing: batch {b}, {args.enc} encoder frames, {args.dec} steps")
    for name, r in res.items():
        row(name, r)
    print(f"  {'single step':<34} {step_latency(lambda: m.stepper(feed, lens), args.dec) * 1e3:9.2f} ms")

    xs = rng.standard_normal((b, args.enc, 32)).astype(np.float32)
    slens = {"data": np.linspace(args.enc // 2, args.enc, b).astype(np.int32)}
    for title, net in (("attention decoder", SEARCH_NET),
                       ("attention decoder with accumulated weights (a State over the encoder's frames)", ACCUM_NET)):
        ms = rd.from_returnn(net, extern_data=SEARCH_DATA, device="cpu")
        make = (lambda: ms.stepper({"data": xs}, slens, search=True))
        st = make()
        ms.run({"data": xs}, slens, search=True), full_pass(st)
        res = timed_side_by_side({"run (RETURNN's search)": lambda: ms.run({"data": xs}, slens, search=True),
                                  "m.stepper(..., search=True)": lambda: made(make),
                                  "stepper full pass (search)": lambda: full_pass(st)}, args.repeats)
        st.close()
        print(f"{title}, beam 4 search: batch {b}, {args.enc} encoder frames, at most {args.enc} steps")
        for name, r in res.items():
            row(name, r)
        print(f"  {'single step (search)':<34} {step_latency(make, 40) * 1e3:9.2f} ms")


if __name__ == "__main__":
    main()
