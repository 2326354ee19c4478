"""Feeding inputs: a fed array is checked against its Input's axis order before its lengths, and a dim may be
given by its name wherever a dim is taken (seq_lens, order=, lens)."""
import numpy as np
import pytest

import recdebug as rd
from recdebug.language.errors import FeedError

batch = rd.batch_dim
SOURCE = open(__file__).read().splitlines()


def build():
    time, feat, hid = rd.Dim("time"), rd.Dim("feat", 4), rd.Dim("hid", 3)
    with rd.Graph() as g:
        x = rd.Input("x", {batch, time, feat})
        h = rd.State({batch, hid})
        lin = rd.Linear(hid)
        with rd.Loop() as loop:
            h.assign(rd.tanh(lin(loop.unstack(x)) + h.get()))
            out = loop.stack(h.get())
    return g, time, lin, h, out


def reference(x_btf, w, b):
    """The loop in numpy: h_t = tanh(x_t w + b + h_{t-1}), (batch, time, hid)."""
    h, steps = np.zeros((x_btf.shape[0], w.shape[1])), []
    for t in range(x_btf.shape[1]):
        h = np.tanh(x_btf[:, t] @ w + b + h)
        steps.append(h)
    return np.stack(steps, 1)


def marked_line(marker):
    return next(i + 1 for i, text in enumerate(SOURCE) if text.rstrip().endswith(f"# feed: {marker}"))


@pytest.mark.parametrize("call", ["run", "trace", "stepper"])
def test_an_array_in_another_order_is_blamed_on_the_feed_not_on_the_lengths(call):
    g, time, *_ = build()
    x_tbf = np.ones((5, 2, 4), np.float32)  # (time, batch, feat): 2 sequences of 5 frames
    with pytest.raises(FeedError) as e:
        getattr(g, call)({"x": x_tbf}, seq_lens={time: [5, 3]})  # feed: transposed
    err = e.value
    assert isinstance(err, rd.RunError) and err.line.lineno == marked_line("transposed")
    first = str(err).splitlines()[0]
    assert first == ("input 'x': the array of shape (5, 2, 4) does not fit the Input's axis order "
                     "(batch, time, feat:4): its batch axis holds 5 sequences, seq_lens['time'] has 2 lengths")
    assert 'give its own order with it: {"x": (array, (time, batch, feat))}' in str(err)
    g.close()


def test_a_static_size_that_does_not_fit_names_the_array_the_order_and_the_order_it_fits(rng):
    g, time, lin, h, out = build()
    x_bft = rng.standard_normal((2, 4, 5)).astype(np.float32)  # (batch, feat, time)
    with pytest.raises(FeedError) as e:
        g.run({"x": x_bft})
    assert str(e.value).splitlines()[0] == ("input 'x': the array of shape (2, 4, 5) does not fit the Input's axis "
                                            "order (batch, time, feat:4): axis 'feat' has size 5, the dim says 4")
    assert '{"x": (array, (batch, feat, time))}' in str(e.value)
    feat = next(d for d in g.inputs["x"].dims if d.name == "feat")
    res = g.run({"x": (x_bft, (batch, feat, time))}, seq_lens={time: [5, 2]})  # as the error says
    ref = reference(x_bft.transpose(0, 2, 1), res.param(lin.weight), res.param(lin.bias))
    got = res.numpy(out)
    np.testing.assert_allclose(got[0], ref[0], atol=1e-5)
    np.testing.assert_allclose(got[1, :2], ref[1, :2], atol=1e-5)
    g.close()


def test_a_dim_is_taken_by_its_name_in_seq_lens_order_and_lens(rng):
    g, time, lin, h, out = build()
    x_np = rng.standard_normal((3, 5, 4)).astype(np.float32)
    lens = np.array([5, 2, 4], np.int32)
    res = g.run({"x": x_np}, seq_lens={"time": lens})
    np.testing.assert_array_equal(res.lens("time"), lens)
    got = res.numpy(out, order=("hid", "batch", "time"))
    ref = reference(x_np, res.param(lin.weight), res.param(lin.bias))
    for b, n in enumerate(lens):
        np.testing.assert_allclose(got[:, b, :n].T, ref[b, :n], atol=1e-5)
    tr = g.trace({"x": x_np}, seq_lens={"time": lens})
    np.testing.assert_array_equal(tr.lens("time"), lens)
    st = g.stepper({"x": x_np}, seq_lens={"time": lens})
    st.run_to(5)
    np.testing.assert_allclose(st.value(h)[0], ref[0, 4], atol=1e-5)
    np.testing.assert_allclose(st.value(h, at=2)[1], ref[1, 1], atol=1e-5)
    g.close()


def test_an_unknown_or_ambiguous_dim_name_is_refused_with_the_dims_by_name():
    g, time, lin, h, out = build()
    x_np = np.ones((2, 3, 4), np.float32)
    with pytest.raises(rd.DimError, match="seq_lens .*: no dim is named 'tiem'; the dims there are: time"):
        g.run({"x": x_np}, seq_lens={"tiem": [3, 1]})
    res = g.run({"x": x_np})
    with pytest.raises(rd.DimError, match=r"no dim is named 'feat'; the dims there are: batch, time, hid:3"):
        res.numpy(out, order=("batch", "time", "feat"))
    g.close()
    t1, t2, feat = rd.Dim("time"), rd.Dim("time"), rd.Dim("feat", 2)
    with rd.Graph() as g:
        a = rd.Input("a", {batch, t1, feat})
        b = rd.Input("b", {batch, t2, feat})
        with rd.Loop() as loop:
            loop.stack(loop.unstack(a) * 2.0)
    with pytest.raises(rd.DimError, match="2 dims are named 'time'.*the dims there are: time, time") as e:
        g.run({"a": np.ones((1, 2, 2)), "b": np.ones((1, 3, 2))}, seq_lens={"time": [2]})
    assert "give the rd.Dim object itself" in str(e.value)
