"""Stepper: live stepping equals the trace at every step; exact step_back; what-if with set_state; breakpoints."""
import numpy as np
import pytest

import recdebug as rd
from conftest import ATOL
from test_design_examples import lstm_loop, sigmoid
from test_loop_semantics import while_loop_graph, while_reference

batch = rd.batch_dim
LENS = np.array([6, 3, 1, 5], dtype=np.int32)


@pytest.fixture
def lstm_case(rng):
    g, time, dim, x, lstm, h, out, loop = lstm_loop()
    x_np = rng.standard_normal((4, 6, 3)).astype(np.float32)
    return g, time, dim, lstm, h, loop, x_np


def test_stepper_values_equal_the_trace_at_every_step(lstm_case):
    g, time, dim, lstm, h, loop, x_np = lstm_case
    tr = g.trace({"x": x_np}, seq_lens={time: LENS})
    st = g.stepper({"x": x_np}, seq_lens={time: LENS})
    assert st.t == 0 and st.device == "cpu" and st.T == 6
    np.testing.assert_array_equal(st.value(lstm.h), np.zeros((4, 4)))  # before any step: the initial value
    in_loop = [op.out for op in loop.ops if op.out.dtype == "float32"]
    for t in range(6):
        st.step()
        assert st.t == t + 1
        active = LENS > t
        for state in (lstm.h, lstm.c):
            ref = tr.numpy(state, order=(time, batch, dim))[t]
            np.testing.assert_allclose(st.value(state, order=(batch, dim))[active], ref[active], atol=ATOL)
        for x in in_loop:
            order = (time,) + tuple(d for d in rd.language.dims.sorted_dims(x.dims))
            ref = tr.numpy(x, order=order)[t]
            np.testing.assert_allclose(st.value(x)[active], ref[active], atol=ATOL, err_msg=x.name)
    assert st.finished and st.ended == {0: 6, 1: 3, 2: 1, 3: 5}
    final = st.value(lstm.h)
    for b, n in enumerate(LENS):  # an ended sequence keeps its last value
        np.testing.assert_allclose(final[b], tr.numpy(lstm.h, order=(batch, time, dim))[b, n - 1], atol=ATOL)


def test_step_back_gives_exactly_the_earlier_values(lstm_case):
    g, time, dim, lstm, h, loop, x_np = lstm_case
    st = g.stepper({"x": x_np}, seq_lens={time: LENS})
    seen = []
    for _ in range(5):
        st.step()
        seen.append((st.value(lstm.h), st.value(lstm.c), st.value(h)))
    for t in (3, 1, 4, 2):
        st.run_to(t)
        assert st.t == t
        for a, b in zip((st.value(lstm.h), st.value(lstm.c), st.value(h)), seen[t - 1]):
            np.testing.assert_array_equal(a, b)
    st.reset()
    assert st.t == 0 and not st.value(lstm.c).any()


def test_set_state_then_continue_equals_numpy_from_the_edited_state(lstm_case, rng):
    g, time, dim, lstm, h, loop, x_np = lstm_case
    lens = np.full(4, 6, dtype=np.int32)
    st = g.stepper({"x": x_np}, seq_lens={time: lens})
    st.run_to(2)
    edited_c = rng.standard_normal((4, 4)).astype(np.float32)
    st.set_state(lstm.c, edited_c.T, order=(dim, batch))
    np.testing.assert_array_equal(st.value(lstm.c), edited_c)
    p = st.engine.params()
    hh, cc = st.value(lstm.h).astype(np.float64), edited_c.astype(np.float64)
    for t in range(2, 6):
        z = x_np[:, t] @ p["lstm/ff_linear/weight"] + p["lstm/ff_linear/bias"] \
            + hh @ p["lstm/rec_linear/weight"] + p["lstm/rec_linear/bias"]
        x_in, g_in, g_f, g_o = np.split(z, 4, axis=-1)
        cc = cc * sigmoid(g_f) + np.tanh(x_in) * sigmoid(g_in)
        hh = np.tanh(cc) * sigmoid(g_o)
        st.step()
        np.testing.assert_allclose(st.value(lstm.h), hh, atol=ATOL)
        np.testing.assert_allclose(st.value(lstm.c), cc, atol=ATOL)
    with pytest.raises(rd.RunError, match="expected \\(4, 4\\)"):
        st.set_state(lstm.c, np.zeros((3, 4)))


def test_value_and_set_state_take_dim_names_in_order(lstm_case, rng):
    g, time, dim, lstm, h, loop, x_np = lstm_case
    lens = np.full(4, 6, dtype=np.int32)
    st = g.stepper({"x": x_np}, seq_lens={time: lens})
    st.run_to(3)
    np.testing.assert_array_equal(st.value(lstm.c, order=("dim", "batch")), st.value(lstm.c, order=(dim, batch)))
    edited_c = rng.standard_normal((4, 4)).astype(np.float32)
    st.set_state(lstm.c, edited_c.T, order=("dim", "batch"))
    np.testing.assert_array_equal(st.value(lstm.c), edited_c)
    p = {k: v.astype(np.float64) for k, v in st.engine.params().items()}
    z = x_np[:, 3] @ p["lstm/ff_linear/weight"] + p["lstm/ff_linear/bias"] \
        + st.value(lstm.h).astype(np.float64) @ p["lstm/rec_linear/weight"] + p["lstm/rec_linear/bias"]
    x_in, g_in, g_f, g_o = np.split(z, 4, axis=-1)
    c_ref = edited_c * sigmoid(g_f) + np.tanh(x_in) * sigmoid(g_in)
    st.step()
    np.testing.assert_allclose(st.value(lstm.c, order=("dim", "batch")), c_ref.T, atol=ATOL)
    np.testing.assert_allclose(st.value(lstm.h, order=("batch", "dim")), np.tanh(c_ref) * sigmoid(g_o), atol=ATOL)
    with pytest.raises(rd.DimError, match="no dim is named 'time'; the dims there are: batch, dim:4"):
        st.value(lstm.c, order=("time", "batch"))
    with pytest.raises(rd.DimError, match="no dim is named 'hid'; the dims there are: batch, dim:4"):
        st.set_state(lstm.c, edited_c, order=("batch", "hid"))


def test_nan_breakpoint_stops_at_the_first_step_with_a_nan(lstm_case):
    g, time, dim, lstm, h, loop, x_np = lstm_case
    x_np = x_np.copy()
    x_np[1, 2, 0] = np.nan  # sequence 1, step 2
    st = g.stepper({"x": x_np}, seq_lens={time: LENS})
    assert st.run_until(rd.on_nan()) is True
    assert st.t == 3  # iteration 2 has run
    assert st.breakpoint.startswith("NaN/Inf in ") and "at t=2" in st.breakpoint
    assert np.isnan(st.value(lstm.c)[1]).any() and not np.isnan(st.value(lstm.c)[0]).any()
    assert "breakpoint: NaN/Inf" in st.status
    st.step_back()
    assert not np.isnan(st.value(lstm.c)).any()


def test_state_predicate_breakpoint(lstm_case):
    g, time, dim, lstm, h, loop, x_np = lstm_case
    st = g.stepper({"x": x_np * 3}, seq_lens={time: LENS})
    tr = g.trace({"x": x_np * 3}, seq_lens={time: LENS})
    c = np.abs(tr.numpy(lstm.c, order=(time, batch, dim)))
    threshold = float(np.median(c[:, 0].max(-1)))
    first = int(np.argmax(c[:, 0].max(-1) > threshold))
    hit = st.run_until(rd.on_state(lstm.c, lambda v: np.abs(v[0]).max() > threshold, "|c| > threshold"))
    assert hit and st.t == first + 1 and "|c| > threshold" in st.breakpoint
    assert st.run_until(lambda s: False) is False and st.finished


@pytest.mark.parametrize("include_eos", [True, False])
def test_while_loop_stepping_stops_per_sequence_as_end_says(include_eos):
    g, hid, loop, out, final = while_loop_graph(include_eos)
    step_np = np.array([[0.3, 0.3, 0.3], [1.0, 1.0, 1.0], [0.05, 0.05, 0.0], [0.45, 0.0, 0.0]], np.float32)
    frames, lens = while_reference(step_np, include_eos, 8)
    st = g.stepper({"step": step_np})
    h_state = g.states[0]
    seen = {}
    while not st.finished:
        st.step()
        seen.update({b: n for b, n in st.ended.items() if b not in seen})
        assert all(st.t >= n for n in st.ended.values())
    assert seen == {b: int(n) for b, n in enumerate(lens)}
    final_np = st.value(h_state)
    for b in range(4):
        np.testing.assert_allclose(final_np[b], frames[b][-1] if frames[b] else 0.0, atol=ATOL)


def test_stepper_errors(lstm_case):
    g, time, dim, lstm, h, loop, x_np = lstm_case
    st = g.stepper({"x": x_np}, seq_lens={time: LENS})
    with pytest.raises(rd.RecDebugError, match="no iteration has run"):
        st.value(h)
    with pytest.raises(rd.RunError, match="no GPU"):
        if not rd.backend.engine.gpu_available():
            g.stepper({"x": x_np}, device="gpu")
        else:
            raise rd.RunError("no GPU (skipped: a GPU is present)")


def test_nested_loop_stepping_and_descending_into_the_inner_loop(rng):
    from test_design_examples import MyNestedRec

    time, dim = rd.Dim("time"), rd.Dim("dim", 4)
    with rd.Graph() as g:
        x = rd.Input("x", {batch, time, dim})
        rec = MyNestedRec(dim, max_inner=6)
        with rd.Loop() as loop:
            out = loop.stack(rec(loop.unstack(x)))
    inner = loop.children[0]
    x_np = (rng.standard_normal((4, 6, 4)) * 0.3).astype(np.float32)
    feed, lens = {"x": x_np}, {time: LENS}
    tr = g.trace(feed, seq_lens=lens)
    st = g.stepper(feed, seq_lens=lens)
    outer_h = tr.numpy(rec.h, order=(time, batch, dim))
    sub_h = tr.numpy(rec.sub.h, order=(time, inner.axis, batch, dim))
    inner_lens = tr.lens(inner.axis)
    for t in range(4):
        st.step()
        active = LENS > t
        np.testing.assert_allclose(st.value(rec.h)[active], outer_h[t][active], atol=ATOL)
        steps = st.descend()
        assert steps.outer_step == t and steps.T == inner_lens[t][active].max()
        np.testing.assert_array_equal(steps.lens[active], inner_lens[t][active])
        np.testing.assert_array_equal(steps.value(rec.sub.h), np.zeros((4, 4)))  # restarts in every outer step
        for k in range(steps.T):
            steps.step()
            ok = active & (inner_lens[t] > k)
            np.testing.assert_allclose(steps.value(rec.sub.h)[ok], sub_h[t, k][ok], atol=ATOL)
            np.testing.assert_allclose(steps.value(rec.sub.h, order=("dim", "batch"))[:, ok], sub_h[t, k][ok].T,
                                       atol=ATOL)
        assert steps.finished and "inner loop at t=" in steps.status
    with pytest.raises(rd.LoopError, match="nested"):
        g.stepper(feed, seq_lens=lens, loop=inner)
