"""The semantics section of DESIGN.md: while loops, State scoping, shared parameters, names."""
import numpy as np
import pytest

import recdebug as rd
from conftest import ATOL, assert_frames_close

batch = rd.batch_dim
B = 4


def while_loop_graph(include_eos, max_seq_len=8, set_later=False):
    hid = rd.Dim("hid", 3)
    with rd.Graph() as g:
        step = rd.Input("step", {batch, hid})
        h = rd.State({batch, hid}, initial=0)
        with rd.Loop(max_seq_len=max_seq_len, include_eos=None if set_later else include_eos) as loop:
            if set_later:
                loop.set_include_eos(include_eos)
            h_ = h.get() + step
            h.assign(h_)
            loop.end(rd.reduce_sum(h_, hid) > 2.0)
            out = loop.stack(h_)
        final = h.get()
    return g, hid, loop, out, final


def while_reference(step_np, include_eos, max_seq_len):
    """Per sequence: accumulate until the sum exceeds 2; that frame is kept iff include_eos."""
    frames, lens = [], []
    for b in range(step_np.shape[0]):
        h, seq = np.zeros(step_np.shape[1]), []
        for _ in range(max_seq_len):
            h = h + step_np[b]
            stop = h.sum() > 2.0
            if stop and not include_eos:
                break
            seq.append(h.copy())
            if stop:
                break
        frames.append(seq)
        lens.append(len(seq))
    return frames, np.array(lens)


@pytest.mark.parametrize("include_eos,set_later", [(True, False), (False, False), (True, True)])
@pytest.mark.parametrize("optimize", [True, False])
def test_while_loop_end_and_include_eos(include_eos, set_later, optimize):
    g, hid, loop, out, final = while_loop_graph(include_eos, set_later=set_later)
    step_np = np.array([[0.3, 0.3, 0.3], [1.0, 1.0, 1.0], [0.05, 0.05, 0.0], [0.45, 0.0, 0.0]], np.float32)
    res = g.run({"step": step_np}, optimize=optimize)
    frames, lens = while_reference(step_np, include_eos, 8)
    np.testing.assert_array_equal(res.lens(loop.axis), lens)
    got = res.numpy(out, order=(batch, loop.axis, hid))
    assert got.shape[1] == lens.max()
    for b in range(B):
        np.testing.assert_allclose(got[b, :lens[b]], np.array(frames[b]).reshape(-1, 3), atol=ATOL)
        # an empty sequence (ends at t=0 without its eos frame) keeps the value from before the loop
        np.testing.assert_allclose(res.numpy(final)[b], frames[b][-1] if frames[b] else 0.0, atol=ATOL)
    assert lens[2] == 8  # this sequence never meets the condition: max_seq_len stops it
    assert lens[1] == (1 if include_eos else 0)


def test_loop_index_counts_steps():
    time, hid = rd.Dim("time"), rd.Dim("hid", 2)
    with rd.Graph() as g:
        x = rd.Input("x", {batch, time, hid})
        with rd.Loop() as loop:
            x_t = loop.unstack(x)
            y = x_t * rd.cast(loop.index, "float32")
            out = loop.stack(y)
    x_np = np.ones((2, 5, 2), np.float32)
    res = g.run({"x": x_np}, seq_lens={time: [5, 3]})
    assert_frames_close(res.numpy(out), np.broadcast_to(np.arange(5.0)[None, :, None], (2, 5, 2)), [5, 3])


@pytest.mark.parametrize("optimize", [True, False])
def test_while_loop_ending_on_the_step_counter(optimize):
    hid = rd.Dim("hid", 2)
    with rd.Graph() as g:
        start = rd.Input("start", {batch, hid})
        h = rd.State({batch, hid}, initial=start)
        with rd.Loop(max_seq_len=10) as loop:
            h.assign(h.get() * 2.0)
            loop.end(loop.index >= 2, include_eos=True)
            out = loop.stack(h.get())
    start_np = np.array([[1.0, 2.0], [3.0, -1.0]], np.float32)
    res = g.run({"start": start_np}, optimize=optimize)
    np.testing.assert_array_equal(res.lens(loop.axis), [3, 3])
    np.testing.assert_allclose(res.numpy(out, order=(batch, loop.axis, hid)), start_np[:, None] * np.array([2.0, 4.0, 8.0])[None, :, None])


def test_state_layers_are_mapped():
    time, hid = rd.Dim("time"), rd.Dim("hid", 2)
    with rd.Graph() as g:
        x = rd.Input("x", {batch, time, hid})
        h = rd.State({batch, hid})
        with rd.Loop() as loop:
            h.assign(h.get() + loop.unstack(x))
    assert g.emitted().state_layers[h] == ["loop/h"]


def test_sequential_loops_continue_from_each_other(rng):
    time, hid = rd.Dim("time"), rd.Dim("hid", 3)
    with rd.Graph() as g:
        x = rd.Input("x", {batch, time, hid})
        h = rd.State({batch, hid}, initial=1.0)
        with rd.Loop() as first:
            h.assign(h.get() + first.unstack(x))
        after_first = h.get()
        with rd.Loop() as second:
            h.assign(h.get() * 2.0 + second.unstack(x))
            out2 = second.stack(h.get())
        after_second = h.get()
    lens = np.array([3, 5, 1, 2], np.int32)
    x_np = rng.standard_normal((B, 5, 3)).astype(np.float32)
    res = g.run({"x": x_np}, seq_lens={time: lens})
    ref1 = np.stack([1.0 + x_np[b, :lens[b]].sum(0) for b in range(B)])
    np.testing.assert_allclose(res.numpy(after_first), ref1, atol=ATOL)
    ref2 = []
    for b in range(B):
        v, seq = ref1[b], []
        for t in range(5):
            v = v * 2.0 + x_np[b, t]
            seq.append(v)
        ref2.append(seq)
    ref2 = np.array(ref2)
    assert_frames_close(res.numpy(out2), ref2, lens)
    np.testing.assert_allclose(res.numpy(after_second), ref2[np.arange(B), lens - 1], atol=ATOL)


def test_state_with_tensor_initial_and_get_after_assign(rng):
    time, hid = rd.Dim("time"), rd.Dim("hid", 3)
    with rd.Graph() as g:
        x = rd.Input("x", {batch, time, hid})
        h0 = rd.Input("h0", {batch, hid})
        h = rd.State({batch, hid}, initial=h0)
        with rd.Loop() as loop:
            h.assign(h.get() + loop.unstack(x))
            after_assign = h.get()  # the new value, not the previous one
            out = loop.stack(after_assign * 1.0)
    lens = np.array([4, 2, 4, 1], np.int32)
    x_np = rng.standard_normal((B, 4, 3)).astype(np.float32)
    h0_np = rng.standard_normal((B, 3)).astype(np.float32)
    res = g.run({"x": x_np, "h0": h0_np}, seq_lens={time: lens})
    assert_frames_close(res.numpy(out), h0_np[:, None] + np.cumsum(x_np, axis=1), lens)


def test_module_called_twice_shares_parameters(rng):
    time, hid = rd.Dim("time"), rd.Dim("hid", 3)
    with rd.Graph() as g:
        x = rd.Input("x", {batch, time, hid})
        lin = rd.Linear(hid)
        h = rd.State({batch, hid})
        with rd.Loop() as loop:
            h.assign(rd.tanh(lin(loop.unstack(x)) + lin(h.get())))
            out = loop.stack(h.get())
    net = g.net_dict()
    assert [k for k, v in net.items() if v["class"] == "variable"] == ["linear.weight", "linear.bias"]
    lens = np.array([5, 3, 2, 5], np.int32)
    x_np = rng.standard_normal((B, 5, 3)).astype(np.float32)
    res = g.run({"x": x_np}, seq_lens={time: lens})
    assert sorted(res.params()) == ["linear/bias", "linear/weight"]
    w, bias = res.param(lin.weight), res.param(lin.bias)
    hh, ref = np.zeros((B, 3)), []
    for t in range(5):
        hh = np.tanh(x_np[:, t] @ w + bias + hh @ w + bias)
        ref.append(hh)
    assert_frames_close(res.numpy(out), np.stack(ref, 1), lens)


class Inner(rd.Module):
    def __init__(self, dim):
        super().__init__()
        self.proj = rd.Linear(dim)
        self.layers = [rd.Linear(dim), rd.Linear(dim)]
        self.h = rd.State({batch, dim})

    def forward(self, x):
        y = self.layers[1](self.layers[0](self.proj(x)))
        self.h.assign(y + self.h.get())
        return y


class Outer(rd.Module):
    def __init__(self, dim):
        super().__init__()
        self.encoder = Inner(dim)
        self.decoder = Inner(dim)

    def forward(self, x):
        return self.decoder(self.encoder(x))


def test_parameter_names_follow_the_module_hierarchy_exactly():
    time, hid = rd.Dim("time"), rd.Dim("hid", 2)
    with rd.Graph() as g:
        x = rd.Input("x", {batch, time, hid})
        model = Outer(hid)
        with rd.Loop() as loop:
            out = loop.stack(model(loop.unstack(x)))
    expected = sorted(f"outer/{part}/{lin}/{p}" for part in ("encoder", "decoder")
                      for lin in ("proj", "layers/0", "layers/1") for p in ("weight", "bias"))
    res = g.run({"x": np.zeros((1, 2, 2), np.float32)})
    assert sorted(res.params()) == expected
    engine = next(iter(g._engines.values()))
    tf_names = sorted(v.name[:-2] for v in engine.network.get_params_list())  # TensorFlow's own variable names
    assert tf_names == expected
    assert res.param(model.encoder.layers[1].weight).shape == (2, 2)
