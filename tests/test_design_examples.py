"""Each loop of the design text, built and run on RETURNN, against an independent numpy loop."""
import numpy as np
import pytest

import recdebug as rd
from conftest import ATOL, assert_frames_close, random_params

batch = rd.batch_dim
B, T = 4, 7
LENS = np.array([7, 4, 1, 5], dtype=np.int32)


def sigmoid(v):
    return 1 / (1 + np.exp(-v))


def last_frames(seq, lens):
    return seq[np.arange(len(lens)), lens - 1]


def run_with_random_params(g, feeds, seq_lens, rng, optimize=True, scale=0.5):
    """Run once to learn the parameter names, then with random non-zero parameters (biases included)."""
    params = random_params(g.run(feeds, seq_lens=seq_lens, optimize=optimize), rng, scale=scale)
    return g.run(feeds, seq_lens=seq_lens, optimize=optimize, params=params), params


@pytest.mark.parametrize("optimize", [True, False])
def test_first_loop_of_design_text(rng, optimize):
    time, dim = rd.Dim("time"), rd.Dim("dim", 5)
    with rd.Graph() as g:
        x = rd.Input("x", {batch, time, dim})
        h = rd.State({batch, dim}, initial=0)
        with rd.Loop() as loop:
            x_t = loop.unstack(x)
            x_lin = rd.Linear(dim)(x_t)
            h_prev = h.get()
            h_ = rd.Linear(dim)(x_lin + h_prev)
            h.assign(h_)
            out = loop.stack(h_)
            h_last = loop.last(h_)
        final = h.get()
    x_np = rng.standard_normal((B, T, 5)).astype(np.float32)
    # a linear recurrence: small weights keep it from growing past float32's absolute precision
    res, p = run_with_random_params(g, {"x": x_np}, {time: LENS}, rng, optimize, scale=0.2)
    assert sorted(p) == ["linear/bias", "linear/weight", "linear_1/bias", "linear_1/weight"]
    hh, ref = np.zeros((B, 5)), []
    for t in range(T):
        x_lin_np = x_np[:, t] @ p["linear/weight"] + p["linear/bias"]
        hh = (x_lin_np + hh) @ p["linear_1/weight"] + p["linear_1/bias"]
        ref.append(hh)
    ref = np.stack(ref, 1)
    assert_frames_close(res.numpy(out, order=(batch, time, dim)), ref, LENS)
    np.testing.assert_allclose(res.numpy(h_last, order=(batch, dim)), last_frames(ref, LENS), atol=ATOL)
    np.testing.assert_allclose(res.numpy(final, order=(batch, dim)), last_frames(ref, LENS), atol=ATOL)
    np.testing.assert_array_equal(res.lens(time), LENS)


class MyRec(rd.Module):
    def __init__(self, dim):
        super().__init__()
        self.x_linear = rd.Linear(dim)
        self.h_linear = rd.Linear(dim)
        self.h = rd.State({batch, dim}, initial=0)

    def forward(self, x):
        x_lin = self.x_linear(x)
        h_prev = self.h.get()
        h = self.h_linear(x_lin + h_prev)
        self.h.assign(h)
        return h


@pytest.mark.parametrize("optimize", [True, False])
def test_my_rec_module(rng, optimize):
    time, feat, dim = rd.Dim("time"), rd.Dim("feat", 3), rd.Dim("dim", 4)
    with rd.Graph() as g:
        x = rd.Input("x", {batch, time, feat})
        rec = MyRec(dim)
        with rd.Loop() as loop:
            x_t = loop.unstack(x)
            h_ = rec(x_t)
            h = loop.last(h_)
            out = loop.stack(h_)
        final = rec.h.get()
    x_np = rng.standard_normal((B, T, 3)).astype(np.float32)
    res, p = run_with_random_params(g, {"x": x_np}, {time: LENS}, rng, optimize, scale=0.2)
    assert sorted(p) == ["my_rec/h_linear/bias", "my_rec/h_linear/weight", "my_rec/x_linear/bias",
                         "my_rec/x_linear/weight"]
    assert p["my_rec/x_linear/weight"].shape == (3, 4)
    hh, ref = np.zeros((B, 4)), []
    for t in range(T):
        x_lin = x_np[:, t] @ p["my_rec/x_linear/weight"] + p["my_rec/x_linear/bias"]
        hh = (x_lin + hh) @ p["my_rec/h_linear/weight"] + p["my_rec/h_linear/bias"]
        ref.append(hh)
    ref = np.stack(ref, 1)
    assert_frames_close(res.numpy(out, order=(batch, time, dim)), ref, LENS)
    np.testing.assert_allclose(res.numpy(h, order=(batch, dim)), last_frames(ref, LENS), atol=ATOL)
    np.testing.assert_allclose(res.numpy(final, order=(batch, dim)), last_frames(ref, LENS), atol=ATOL)


class MySubRec(rd.Module):
    def __init__(self, dim):
        super().__init__()
        self.h = rd.State({batch, dim})

    def forward(self, a):
        h = self.h.get() + a
        self.h.assign(h)
        return h


class MyNestedRec(rd.Module):
    """The design text's MyRec with ``sub`` as a nested loop; the inner loop ends when a unit exceeds 1."""

    def __init__(self, dim, max_inner):
        super().__init__()
        self.sub = MySubRec(dim)
        self.h = rd.State({batch, dim})
        self.dim, self.max_inner = dim, max_inner

    def forward(self, x):
        a = self.h.get() + x
        with rd.Loop(max_seq_len=self.max_inner) as loop:
            y = self.sub(a)
            loop.end(rd.reduce_max(y, self.dim) > 1.0, include_eos=True)
            y = loop.last(y)
        self.h.assign(y)
        return y


def nested_reference(x_np, max_inner):
    """The same loops in numpy: sub.h restarts at 0 in every outer step; h carries over."""
    b_, t_, d_ = x_np.shape
    h, out, inner_lens = np.zeros((b_, d_)), [], []
    for t in range(t_):
        a = h + x_np[:, t]
        sub_h, y = np.zeros((b_, d_)), np.zeros((b_, d_))
        done, n = np.zeros(b_, bool), np.zeros(b_, int)
        for _ in range(max_inner):
            sub_h = sub_h + a
            y = np.where(done[:, None], y, sub_h)
            n += ~done
            done |= sub_h.max(-1) > 1.0
            if done.all():
                break
        h = y
        out.append(h)
        inner_lens.append(n)
    return np.stack(out, 1), np.stack(inner_lens, 1)


@pytest.mark.parametrize("optimize", [True, False])
def test_nested_loops_with_module_state(rng, optimize):
    time, dim = rd.Dim("time"), rd.Dim("dim", 4)
    with rd.Graph() as g:
        x = rd.Input("x", {batch, time, dim})
        rec = MyNestedRec(dim, max_inner=6)
        with rd.Loop() as loop:
            x_t = loop.unstack(x)
            y = rec(x_t)
            out = loop.stack(y)
        final = rec.h.get()
    x_np = (rng.standard_normal((B, T, 4)) * 0.3).astype(np.float32)
    res = g.run({"x": x_np}, seq_lens={time: LENS}, optimize=optimize)
    ref, inner_lens = nested_reference(x_np, 6)
    assert inner_lens.min() >= 1 and inner_lens.max() > 1  # the inner loop really iterates
    assert_frames_close(res.numpy(out, order=(batch, time, dim)), ref, LENS)
    np.testing.assert_allclose(res.numpy(final, order=(batch, dim)), last_frames(ref, LENS), atol=ATOL)
    net = g.net_dict(optimize=optimize)
    outer_unit = net["loop"]["unit"]
    assert outer_unit["loop"]["class"] == "rec" and "unit" in outer_unit["loop"]


@pytest.mark.parametrize("optimize", [True, False])
def test_nested_loop_over_an_inner_axis(rng, optimize):
    """The inner loop unstacks a second dynamic axis of the outer frame; its state restarts every outer step."""
    time, sub, dim = rd.Dim("time"), rd.Dim("sub"), rd.Dim("dim", 3)
    with rd.Graph() as g:
        x = rd.Input("x", {batch, time, sub, dim})
        lin = rd.Linear(dim)
        h, s = rd.State({batch, dim}), rd.State({batch, dim})
        with rd.Loop() as outer:
            x_t = outer.unstack(x, axis=time)
            with rd.Loop() as inner:
                x_ts = inner.unstack(x_t)
                s.assign(rd.tanh(lin(x_ts) + s.get() + h.get()))
            h.assign(s.get())
            out = outer.stack(h.get())
    s_lens = np.array([2, 3, 1, 3], dtype=np.int32)
    x_np = rng.standard_normal((B, T, 3, 3)).astype(np.float32)
    res = g.run({"x": x_np}, seq_lens={time: LENS, sub: s_lens}, optimize=optimize)
    w, bias = res.param(lin.weight), res.param(lin.bias)
    hh, ref = np.zeros((B, 3)), []
    for t in range(T):
        ss = np.zeros((B, 3))
        for b in range(B):
            for k in range(s_lens[b]):
                ss[b] = np.tanh(x_np[b, t, k] @ w + bias + ss[b] + hh[b])
        hh = ss
        ref.append(hh)
    assert_frames_close(res.numpy(out, order=(batch, time, dim)), np.stack(ref, 1), LENS)


class Lstm(rd.Module):
    def __init__(self, dim):
        super().__init__()
        self.h = rd.State({batch, dim})
        self.c = rd.State({batch, dim})
        self.ff_linear = rd.Linear(dim * 4)
        self.rec_linear = rd.Linear(dim * 4)

    def forward(self, x):
        x_ = self.ff_linear(x)
        h_ = self.rec_linear(self.h.get())
        x_in, g_in, g_forget, g_out = rd.split(x_ + h_, 4)
        c = self.c.get() * rd.sigmoid(g_forget) + rd.tanh(x_in) * rd.sigmoid(g_in)
        self.c.assign(c)
        h = rd.tanh(c) * rd.sigmoid(g_out)
        self.h.assign(h)
        return h


def lstm_loop(dim_size=4):
    """The design text's Lstm over an input {batch, time, feat:3}: (g, time, dim, x, lstm, h, out, loop)."""
    time, feat, dim = rd.Dim("time"), rd.Dim("feat", 3), rd.Dim("dim", dim_size)
    with rd.Graph() as g:
        x = rd.Input("x", {batch, time, feat})
        lstm = Lstm(dim)
        with rd.Loop() as loop:
            h = lstm(loop.unstack(x))
            out = loop.stack(h)
    return g, time, dim, x, lstm, h, out, loop


def lstm_reference(x_np, p, prefix="lstm"):
    b_, t_, _ = x_np.shape
    n = p[f"{prefix}/ff_linear/bias"].shape[0] // 4
    h, c, hs, cs = np.zeros((b_, n)), np.zeros((b_, n)), [], []
    for t in range(t_):
        z = x_np[:, t] @ p[f"{prefix}/ff_linear/weight"] + p[f"{prefix}/ff_linear/bias"] \
            + h @ p[f"{prefix}/rec_linear/weight"] + p[f"{prefix}/rec_linear/bias"]
        x_in, g_in, g_f, g_o = np.split(z, 4, axis=-1)
        c = c * sigmoid(g_f) + np.tanh(x_in) * sigmoid(g_in)
        h = np.tanh(c) * sigmoid(g_o)
        hs.append(h)
        cs.append(c)
    return np.stack(hs, 1), np.stack(cs, 1)


@pytest.mark.parametrize("optimize", [True, False])
def test_lstm_single_step_in_a_loop(rng, optimize):
    g, time, dim, x, lstm, h, out, loop = lstm_loop(dim_size=5)
    with g:
        c_final = lstm.c.get()
    x_np = rng.standard_normal((B, T, 3)).astype(np.float32)
    res, p = run_with_random_params(g, {"x": x_np}, {time: LENS}, rng, optimize)
    assert p["lstm/ff_linear/weight"].shape == (3, 20) and p["lstm/rec_linear/weight"].shape == (5, 20)
    hs, cs = lstm_reference(x_np, p)
    assert_frames_close(res.numpy(out, order=(batch, time, dim)), hs, LENS)
    np.testing.assert_allclose(res.numpy(c_final, order=(batch, dim)), last_frames(cs, LENS), atol=ATOL)


def test_optimize_on_and_off_agree(rng):
    g, time, dim, x, lstm, h, out, loop = lstm_loop(dim_size=5)
    x_np = rng.standard_normal((B, T, 3)).astype(np.float32)
    on = g.run({"x": x_np}, seq_lens={time: LENS}, optimize=True)
    off = g.run({"x": x_np}, seq_lens={time: LENS}, optimize=False)
    for name, value in on.params().items():
        np.testing.assert_array_equal(value, off.params()[name])
    assert_frames_close(on.numpy(out), off.numpy(out), LENS, atol=1e-6)
