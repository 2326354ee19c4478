"""Graph.run and Result: feeding by dim order, lengths, parameters, devices, and clear errors."""
import numpy as np
import pytest

import recdebug as rd
from recdebug.backend.engine import gpu_available

batch = rd.batch_dim


def build():
    time, feat, hid = rd.Dim("time"), rd.Dim("feat", 2), rd.Dim("hid", 3)
    with rd.Graph() as g:
        x = rd.Input("x", (time, feat, batch))  # an ordered tuple: the array's axis order
        lin = rd.Linear(hid)
        with rd.Loop() as loop:
            y = lin(loop.unstack(x))
            out = loop.stack(y)
    return g, time, feat, hid, x, lin, y, out


def test_inputs_are_fed_in_their_declared_order_and_outputs_come_in_the_asked_order(rng):
    g, time, feat, hid, x, lin, y, out = build()
    x_tfb = rng.standard_normal((4, 2, 3)).astype(np.float32)  # (time, feat, batch)
    res = g.run({"x": x_tfb}, seq_lens={time: [4, 2, 3]})
    w, b = res.param(lin.weight), res.param(lin.bias)
    ref = np.einsum("tfb,fh->bth", x_tfb, w) + b
    got = res.numpy(out, order=(batch, time, hid))
    for s, n in enumerate([4, 2, 3]):
        np.testing.assert_allclose(got[s, :n], ref[s, :n], atol=1e-5)
    np.testing.assert_allclose(res.numpy(out, order=(hid, time, batch)), got.transpose(2, 1, 0))
    np.testing.assert_array_equal(res.numpy(x, order=(batch, time, feat)), x_tfb.transpose(2, 0, 1))


def test_an_array_can_come_with_its_own_order(rng):
    g, time, feat, hid, x, lin, y, out = build()
    x_btf = rng.standard_normal((3, 4, 2)).astype(np.float32)
    a = g.run({"x": (x_btf, (batch, time, feat))}).numpy(out)
    b = g.run({"x": x_btf.transpose(1, 2, 0)}).numpy(out)
    np.testing.assert_array_equal(a, b)


def test_a_tuple_of_rows_is_an_array_not_an_array_with_its_order(rng):
    g, time, feat, hid, x, lin, y, out = build()
    x_tfb = rng.standard_normal((2, 2, 3)).astype(np.float32)  # (time, feat, batch): two rows along time
    rows = g.run({"x": (x_tfb[0], x_tfb[1])}).numpy(out)
    np.testing.assert_array_equal(rows, g.run({"x": x_tfb}).numpy(out))


def test_given_parameters_are_used_and_read_back():
    g, time, feat, hid, x, lin, y, out = build()
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    res = g.run({"x": np.ones((1, 2, 1), np.float32)}, params={lin.weight: w, "linear/bias": np.ones(3)})
    np.testing.assert_array_equal(res.param(lin.weight), w)
    np.testing.assert_allclose(res.numpy(out)[0, 0], w.sum(0) + 1)


def test_the_same_seed_gives_the_same_parameters_and_another_seed_others():
    g, *_ = build()
    feed = {"x": np.ones((1, 2, 1), np.float32)}
    a, b, c = g.run(feed, seed=1), g.run(feed, seed=1), g.run(feed, seed=2)
    np.testing.assert_array_equal(a.param("linear/weight"), b.param("linear/weight"))
    assert not np.allclose(a.param("linear/weight"), c.param("linear/weight"))


@pytest.mark.parametrize("feeds,seq_lens,message", [
    ({}, {}, "missing input"),
    ({"x": np.ones((2, 3, 1)), "z": np.ones(1)}, {}, "unknown input"),
    ({"x": np.ones((2, 5, 1))}, {}, "'feat' has size 5"),
    ({"x": np.ones((2, 2))}, {}, "expected 3 axes"),
    ({"x": np.ones((3, 2, 2))}, "time", "lengths must be in 1..3"),
])
def test_bad_feeds_get_a_clear_error(feeds, seq_lens, message):
    g, time, *_ = build()
    if seq_lens == "time":
        seq_lens = {time: [4, 1]}
    with pytest.raises(rd.RunError, match=message):
        g.run(feeds, seq_lens=seq_lens)


def test_results_refuse_in_loop_values_and_bad_orders():
    g, time, feat, hid, x, lin, y, out = build()
    res = g.run({"x": np.ones((2, 2, 1), np.float32)})
    with pytest.raises(rd.RunError, match="inside a loop"):
        res.numpy(y)
    with pytest.raises(rd.DimError, match="not a permutation"):
        res.numpy(out, order=(batch, hid))


def test_bad_parameters_get_a_clear_error():
    g, time, feat, hid, x, lin, y, out = build()
    feed = {"x": np.ones((1, 2, 1), np.float32)}
    with pytest.raises(rd.RunError, match="expected \\(2, 3\\)"):
        g.run(feed, params={lin.weight: np.ones((3, 2))})
    with pytest.raises(rd.RunError, match="no parameter 'nope/weight'"):
        g.run(feed, params={"nope/weight": np.ones(1)})


def test_device_choice():
    g, *_ = build()
    feed = {"x": np.ones((1, 2, 1), np.float32)}
    assert g.run(feed, device="cpu").device == "cpu"
    assert g.run(feed).device == ("gpu" if gpu_available() else "cpu")
    if not gpu_available():
        with pytest.raises(rd.RunError, match="no GPU"):
            g.run(feed, device="gpu")
    with pytest.raises(rd.RunError, match="device must be"):
        g.run(feed, device="tpu")


def test_running_with_a_loop_still_open_is_an_error():
    time, hid = rd.Dim("time"), rd.Dim("hid", 2)
    with rd.Graph() as g:
        x = rd.Input("x", {batch, time, hid})
        with rd.Loop() as loop:
            loop.stack(loop.unstack(x) * 2.0)
            with pytest.raises(rd.RunError, match="open loop"):
                g.run({"x": np.ones((1, 1, 2))})


def test_frames_after_the_longest_sequence_are_cut_not_a_shape_error(rng):
    """Arrays padded past the longest sequence (a fixed size of 10, sequences of at most 7 frames), with a
    per-frame loss that gathers the labels: run, trace and the stepper agree with numpy on the valid frames."""
    time, feat, classes = rd.Dim("time"), rd.Dim("feat", 2), rd.Dim("classes", 2)
    with rd.Graph() as g:
        x = rd.Input("x", {batch, time, feat})
        y = rd.Input("y", {batch, time}, dtype="int32", sparse_dim=classes)
        s = rd.State({batch, classes})
        lin = rd.Linear(classes)
        with rd.Loop() as loop:
            s.assign(rd.tanh(lin(loop.unstack(x)) + s.get()))
            z = loop.stack(s.get())
        ce = rd.cross_entropy(z, y)
    x_np = rng.standard_normal((3, 10, 2)).astype(np.float32)
    y_np = rng.integers(0, 2, (3, 10)).astype(np.int32)
    lens = np.array([7, 2, 5], np.int32)
    res = g.run({"x": x_np, "y": y_np}, seq_lens={time: lens})
    w, b = res.param(lin.weight), res.param(lin.bias)
    got = res.numpy(ce, order=(batch, time))
    assert got.shape == (3, 7)
    tr = g.trace({"x": x_np, "y": y_np}, seq_lens={time: lens})
    st = g.stepper({"x": x_np, "y": y_np}, seq_lens={time: lens})
    st.run_to(7)
    for k in range(3):
        h = np.zeros(2)
        for t in range(lens[k]):
            h = np.tanh(x_np[k, t] @ w + b + h)
            logp = h - np.log(np.exp(h).sum())
            assert got[k, t] == pytest.approx(-logp[y_np[k, t]], abs=1e-5)
            np.testing.assert_allclose(tr.numpy(s, order=(batch, time, classes))[k, t], h, atol=1e-5)
            np.testing.assert_allclose(st.value(s, at=t + 1)[k], h, atol=1e-5)
