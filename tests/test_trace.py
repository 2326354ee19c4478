"""trace(): one run of the real RecLayer, every in-loop value per step, against run() and numpy."""
import numpy as np
import pytest

import recdebug as rd
from conftest import ATOL, assert_frames_close, random_params
from test_design_examples import (Lstm, MyNestedRec, lstm_loop, lstm_reference, nested_reference,
                                  run_with_random_params)

batch = rd.batch_dim
LENS = np.array([6, 3, 1, 5], dtype=np.int32)


@pytest.fixture
def lstm_graph():
    return lstm_loop()


def test_trace_equals_run_and_numpy(lstm_graph, rng):
    g, time, dim, x, lstm, h, out, loop = lstm_graph
    x_np = rng.standard_normal((4, 6, 3)).astype(np.float32)
    res, p = run_with_random_params(g, {"x": x_np}, {time: LENS}, rng)
    tr = g.trace({"x": x_np}, seq_lens={time: LENS}, params=p)
    hs, cs = lstm_reference(x_np, p)
    assert_frames_close(tr.numpy(lstm.h, order=(batch, time, dim)), hs, LENS)  # a State, per step
    assert_frames_close(tr.numpy(lstm.c, order=(batch, time, dim)), cs, LENS)
    assert_frames_close(tr.numpy(h, order=(batch, time, dim)), hs, LENS)  # an in-loop tensor, per step
    assert_frames_close(tr.numpy(out, order=(batch, time, dim)), res.numpy(out, order=(batch, time, dim)), LENS,
                        atol=0)
    np.testing.assert_array_equal(tr.lens(time), LENS)
    assert set(tr.states) == {"lstm.h", "lstm.c"}
    assert tr.device == "cpu"


def test_the_mask_of_a_stacked_value_marks_its_padding_frames(lstm_graph, rng):
    """A stacked value's padding frames (what RETURNN computed past each sequence's end) are False in its mask,
    as a State's are."""
    g, time, dim, x, lstm, h, out, loop = lstm_graph
    tr = g.trace({"x": rng.standard_normal((4, 6, 3))}, seq_lens={time: LENS})
    valid = np.arange(6)[None, :, None] < LENS[:, None, None]  # (batch, time, 1)
    for value in (out, lstm.h):
        mask = tr.mask(value, order=(batch, time, dim))
        np.testing.assert_array_equal(mask, np.broadcast_to(valid, mask.shape))


def test_every_in_loop_layer_is_recorded_with_the_loop_axis(lstm_graph, rng):
    g, time, dim, x, lstm, h, out, loop = lstm_graph
    tr = g.trace({"x": rng.standard_normal((4, 6, 3))}, seq_lens={time: LENS})
    in_loop = [k for k, e in tr.entries.items() if e.kind in ("layer", "state")]
    expected = {op.name for op in loop.ops} | {"lstm.h", "lstm.c"}
    assert {k.split("/", 1)[1] for k in in_loop} == expected
    for k in in_loop:
        assert tr.entries[k].loop_axes == ("time",) and "time" in tr.entries[k].dims
    gates = tr.numpy("loop/lstm.split_part_2", order=(batch, time, dim))  # the forget gate pre-activation
    assert gates.shape == (4, 6, 4)


def test_moved_out_layers_are_reported_as_returnn_says(lstm_graph, rng):
    g, time, dim, x, lstm, h, out, loop = lstm_graph
    feed = {"x": rng.standard_normal((4, 6, 3))}
    tr = g.trace(feed, seq_lens={time: LENS}, optimize=True)
    engine = [e for e in g._engines.values() if e.capture == "all" and e.optimize][0]
    cell = engine.network.get_layer("loop").cell
    said = {f"loop/{n}" for n in cell.input_layers_moved_out + cell.output_layers_moved_out}
    assert set(tr.moved_out) == said & set(tr.entries)
    assert "loop/lstm.ff_linear" in tr.moved_out  # depends on the input frame only
    assert "loop/lstm.rec_linear" in tr.in_loop  # depends on the previous h
    off = g.trace(feed, seq_lens={time: LENS}, optimize=False)
    assert off.moved_out == []


def test_optimize_on_and_off_traces_agree(lstm_graph, rng):
    g, time, dim, x, lstm, h, out, loop = lstm_graph
    feed = {"x": rng.standard_normal((4, 6, 3))}
    on = g.trace(feed, seq_lens={time: LENS}, optimize=True)
    off = g.trace(feed, seq_lens={time: LENS}, optimize=False)
    assert set(on.entries) == set(off.entries)
    d = on.diff(off, atol=1e-6)
    assert not d and d.first is None


def test_nested_loop_trace_has_both_axes(rng):
    time, dim = rd.Dim("time"), rd.Dim("dim", 4)
    with rd.Graph() as g:
        x = rd.Input("x", {batch, time, dim})
        rec = MyNestedRec(dim, max_inner=6)
        with rd.Loop() as loop:
            out = loop.stack(rec(loop.unstack(x)))
    x_np = (rng.standard_normal((4, 6, 4)) * 0.3).astype(np.float32)
    ref, inner_lens = nested_reference(x_np, 6)
    for optimize in (True, False):
        tr = g.trace({"x": x_np}, seq_lens={time: LENS}, optimize=optimize)
        inner = g.loops[1]
        sub_h = tr.numpy(rec.sub.h, order=(batch, time, inner.axis, dim))  # per (outer step, inner step)
        lens = tr.lens(inner.axis)
        assert tr.dims_of(rec.sub.h) and lens.shape == (6, 4)  # (outer step, sequence)
        for b in range(4):
            for t in range(LENS[b]):
                assert lens[t, b] == inner_lens[b, t]
                a = (ref[b, t - 1] if t else 0) + x_np[b, t]
                expected = np.cumsum(np.repeat(a[None], inner_lens[b, t], 0), axis=0)
                np.testing.assert_allclose(sub_h[b, t, :inner_lens[b, t]], expected, atol=ATOL)
        mask = tr.mask(rec.sub.h, order=(batch, time, inner.axis, dim))
        assert mask[0, 0, :inner_lens[0, 0]].all() and not mask[0, 0, inner_lens[0, 0]:].any()
        assert_frames_close(tr.numpy(rec.h, order=(batch, time, dim)), ref, LENS)


def test_capture_filter_and_memory_budget(lstm_graph, rng):
    g, time, dim, x, lstm, h, out, loop = lstm_graph
    feed = {"x": rng.standard_normal((4, 6, 3))}
    tr = g.trace(feed, seq_lens={time: LENS}, capture=["lstm.h", "lstm.c"])
    assert sorted(k for k, e in tr.entries.items() if e.loop_axes) == ["loop/lstm.c", "loop/lstm.h"]
    with pytest.raises(rd.RecDebugError) as e:
        g.trace(feed, seq_lens={time: LENS}, max_bytes=1000)
    message = str(e.value)
    assert "MB" in message and "capture=" in message and "max_bytes" in message
    g.trace(feed, seq_lens={time: LENS}, capture="lstm.h", max_bytes=4 * 6 * 4 * 4)  # exactly fits


def test_save_load_at_and_diff(lstm_graph, rng, tmp_path):
    g, time, dim, x, lstm, h, out, loop = lstm_graph
    tr = g.trace({"x": rng.standard_normal((4, 6, 3))}, seq_lens={time: LENS})
    path = tmp_path / "trace.npz"
    tr.save(path)
    back = rd.Trace.load(path)
    assert set(back.entries) == set(tr.entries) and back.moved_out == tr.moved_out
    np.testing.assert_array_equal(back.numpy("loop/lstm.h", order=("batch", "time", "dim")),
                                  tr.numpy(lstm.h, order=(batch, time, dim)))
    np.testing.assert_array_equal(back.lens("time"), LENS)
    assert not tr.diff(back)
    at2 = tr.at(2)
    np.testing.assert_array_equal(at2["loop/lstm.h"], np.take(tr.entries["loop/lstm.h"].array, 2,
                                                              axis=tr.entries["loop/lstm.h"].dims.index("time")))
    arr = back.entries["loop/lstm.c"].array
    dims = back.entries["loop/lstm.c"].dims
    index = [0] * arr.ndim
    index[dims.index("time")], index[dims.index("batch")], index[dims.index("dim")] = 3, 0, 2
    arr[tuple(index)] += 0.5  # a change at step 3, sequence 0, unit 2
    d = tr.diff(back)
    assert d.first.key == "loop/lstm.c" and d.first.step == 3
    assert d.first.unit_dims == ("batch", "dim") and d.first.units == [(0, 2)] and abs(d.first.max_abs - 0.5) < 1e-6
    index[dims.index("batch")] = 2  # sequence 2 has length 1: step 3 is padding, never compared
    arr2 = tr.entries["loop/lstm.c"].array.copy()
    arr2[tuple(index)] += 9.0
    back.entries["loop/lstm.c"].array = arr2
    assert not tr.diff(back)


def test_derived_values_equal_recorded_ones(rng):
    """Values a trace derives instead of recording them are exactly what a recording of them holds: a State's
    layer, its read before the assign, the input frame, split parts, and float32 sums/products (numpy does the
    same IEEE operation as TensorFlow)."""
    time, feat, dim = rd.Dim("time"), rd.Dim("feat", 3), rd.Dim("dim", 4)
    with rd.Graph() as g:
        x = rd.Input("x", {batch, time, feat})
        h0 = rd.Input("h0", {batch, dim})
        lstm = Lstm(dim)
        lstm.h.initial = h0  # a tensor initial value, per sequence
        with rd.Loop() as loop:
            out = loop.stack(lstm(loop.unstack(x)))
    feed = {"x": rng.standard_normal((4, 6, 3)), "h0": rng.standard_normal((4, 4))}
    p = random_params(g.run(feed, seq_lens={time: LENS}), rng)
    full = g.trace(feed, seq_lens={time: LENS}, params=p)
    derived = sorted(k for k, e in full.entries.items() if e.is_derived)
    assert {"loop/lstm.c.prev", "loop/lstm.h.prev", "loop/lstm.ff_linear", "loop/lstm.add",
            "loop/lstm.mul"} <= set(derived)
    for state in (lstm.h, lstm.c):  # a State's value is recorded: its earlier values are derived from it
        assert not full.entries["loop/" + loop.assigned[state].op.name].is_derived
    assigned = "loop/" + loop.assigned[lstm.h].op.name
    assert full.entries["loop/lstm.h"].array is full.entries[assigned].array
    for key in derived:
        name = key.split("/", 1)[1]
        recorded = g.trace(feed, seq_lens={time: LENS}, capture=[name], params=p)
        assert not recorded.entries[key].is_derived
        order = ("batch", "time") + tuple(d for d in full.dims_of(key) if d not in ("batch", "time"))
        a, b = full.numpy(key, order=order), recorded.numpy(key, order=order)
        for s, n in enumerate(LENS):
            np.testing.assert_array_equal(a[s, :n], b[s, :n], err_msg=key)
    np.testing.assert_allclose(full.numpy("loop/lstm.h.prev", order=("time", "batch", "dim"))[0], feed["h0"],
                               atol=1e-6)


def test_a_dropped_trace_frees_its_arrays_at_once(lstm_graph, rng):
    """A trace holds large arrays: dropping the last reference frees them without waiting for Python's cycle
    collector (no derived value refers back to the trace's entries)."""
    import gc
    import weakref

    g, time, dim, x, lstm, h, out, loop = lstm_graph
    x_np = rng.standard_normal((4, 6, 3)).astype(np.float32)
    tr = g.trace({"x": x_np}, seq_lens={time: LENS})
    assert any(e.is_derived for e in tr.entries.values())  # (a State read before its assign among them)
    gone = [weakref.ref(e) for e in tr.entries.values()]
    gc.disable()
    try:
        del tr
        assert [r for r in gone if r() is not None] == []
    finally:
        gc.enable()


@pytest.mark.parametrize("user", [None, "false"])
def test_recdebug_pools_tensorflows_cpu_memory_unless_the_user_said_otherwise(user):
    """TensorFlow's pooled CPU allocator is set before TensorFlow makes its CPU device (a trace writes into reused
    memory, not fresh pages); a value the user set is kept."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TF_CPU_ALLOCATOR_USE_BFC"}
    if user is not None:
        env["TF_CPU_ALLOCATOR_USE_BFC"] = user
    code = ("import os, recdebug, tensorflow\n"
            "print(os.environ.get('TF_CPU_ALLOCATOR_USE_BFC'))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == (user or "true")
