"""Loops as RETURNN users write them (ported from returnn_common's and RETURNN's loop tests), each checked against
an independent numpy loop on ragged lengths with garbage in the padding frames (1e-5, float32)."""
import numpy as np
import pytest

import recdebug as rd
from conftest import ATOL, assert_frames_close

batch = rd.batch_dim


@pytest.fixture
def rng():
    return np.random.default_rng(2024)


def garbage_padding(x, lens, rng):
    """``x`` [batch, time, ...] with random large values in the frames t >= lens[b]."""
    x = x.copy()
    for b, n in enumerate(lens):
        x[b, n:] = rng.standard_normal(x[b, n:].shape) * 1e3
    return x


# --- 1. beam search over an unstacked input with ragged lengths ---

def _frame_decoder(beam_size):
    time, feat, vocab, emb, hid = rd.Dim("time"), rd.Dim("feat", 3), rd.Dim("vocab", 5), rd.Dim("emb", 2), \
        rd.Dim("hid", 4)
    with rd.Graph() as g:
        x = rd.Input("x", {batch, time, feat})
        embed, lin_h, lin_out = rd.Embedding(vocab, emb), rd.Linear(hid), rd.Linear(vocab)
        label = rd.State({batch}, initial=0, dtype="int32", sparse_dim=vocab)
        h = rd.State({batch, hid})
        with rd.Loop() as loop:
            frame = loop.unstack(x)
            h_ = rd.tanh(lin_h(rd.concat(embed(label.get()), h.get(), frame)))
            h.assign(h_)
            y = rd.choice(lin_out(h_), beam_size=beam_size)
            label.assign(y)
            labels = loop.stack(y)
    g.frame = frame
    return g, time, loop, y, labels, h


def _frame_beam_search(p, x, lens, k):
    """numpy beam search over exactly lens[b] frames (no EOS): per sequence the hypotheses (score, labels, last
    state) best first; ties go to the lower (slot, label), as RETURNN's choice layer."""
    out = []
    for b, n in enumerate(lens):
        hyps = [(0.0, [], 0, np.zeros(4))]
        for t in range(n):
            cands = []
            for i, (score, seq, label, h) in enumerate(hyps):
                feats = np.concatenate([p["embedding/weight"][label], h, x[b, t]])
                h_new = np.tanh(feats @ p["linear/weight"] + p["linear/bias"])
                logits = h_new @ p["linear_1/weight"] + p["linear_1/bias"]
                logp = logits - logits.max() - np.log(np.exp(logits - logits.max()).sum())
                cands += [(score + logp[v], i, v, h_new) for v in range(len(logp))]
            cands.sort(key=lambda c: (-c[0], c[1], c[2]))
            hyps = [(sc, hyps[i][1] + [v], v, h_new) for sc, i, v, h_new in cands[:k]]
        out.append(hyps)
    return out


def _decoder_params(rng):
    p = {"embedding/weight": rng.standard_normal((5, 2)), "linear/weight": rng.standard_normal((9, 4)),
         "linear/bias": rng.standard_normal(4) * 0.3, "linear_1/weight": rng.standard_normal((4, 5)) * 1.5,
         "linear_1/bias": rng.standard_normal(5) * 0.5}
    return {name: v.astype(np.float32) for name, v in p.items()}


def test_beam_search_over_ragged_frames_scores_exactly_the_valid_frames(rng):
    lens = [4, 1, 2, 3, 1, 2]
    g, time, loop, y, labels, h = _frame_decoder(beam_size=3)
    p = _decoder_params(rng)
    x = garbage_padding(rng.standard_normal((6, 4, 3)).astype(np.float32), lens, rng)
    expected = _frame_beam_search({k: v.astype(np.float64) for k, v in p.items()}, x.astype(np.float64), lens, 3)

    res = g.run({"x": x}, seq_lens={time: lens}, params=p, search=True)
    got, scores = res.numpy(labels), res.scores(loop)
    np.testing.assert_array_equal(res.lens(time), lens)
    for b, n in enumerate(lens):
        assert got[b, :n].tolist() == expected[b][0][1], f"sequence {b}"
        np.testing.assert_allclose(scores[b], [hy[0] for hy in expected[b]], rtol=1e-5, atol=1e-5)

    tr = g.trace({"x": x}, seq_lens={time: lens}, params=p, search=True)
    traced = tr.beams(y)
    # the input frame is the same for every hypothesis of a sequence
    frames = tr.numpy(g.frame, order=(loop.axis, batch, tr.label("beam"), tr.dims_of(g.frame)[-1]))
    for b, n in enumerate(lens):
        for k in range(3):
            np.testing.assert_array_equal(frames[:n, b, k], x[b, :n])
    st = g.stepper({"x": x}, seq_lens={time: lens}, params=p)
    st.run_to(st.T)
    for beams in (traced, st.beams()):
        for b in range(6):
            hyps = beams.hypotheses(b)
            assert [hy["labels"] for hy in hyps] == [hy[1] for hy in expected[b]], f"sequence {b}"
            np.testing.assert_allclose([hy["score"] for hy in hyps], [hy[0] for hy in expected[b]],
                                       rtol=1e-5, atol=1e-5)
            best = hyps[0]["slot"]
            np.testing.assert_allclose(beams.state(h, lens[b] - 1, b, best), expected[b][0][3], atol=ATOL)


# --- 2, 3, 5. while loops: a counter State {batch}, a State without batch, lengths without a stacked output ---

def _counter_loop(stack: bool):
    with rd.Graph() as g:
        stop = rd.Input("stop", {batch}, dtype="int32")
        cnt = rd.State({batch}, initial=0.0)
        with rd.Loop(max_seq_len=10) as loop:
            cnt.assign(cnt.get() + 1.0)
            loop.end(loop.index >= stop)
            out = loop.stack(cnt.get() + 1.0) if stack else None
        final = cnt.get()
    return g, loop, out, final


def test_a_counter_state_stacked_in_a_while_loop_keeps_its_batch_axis():
    stop = np.array([2, 5, 0, 12], np.int32)
    g, loop, out, final = _counter_loop(stack=True)
    res = g.run({"stop": stop})
    lens = np.minimum(stop, 10)  # ends at the first t >= stop (that frame not kept), at most 10 steps
    np.testing.assert_array_equal(res.lens(loop.axis), lens)
    got = res.numpy(out, order=(batch, loop.axis))
    assert got.shape == (4, lens.max())
    ref = np.arange(1, 11, dtype=np.float32)[None, :] + 1.0  # after iteration t the counter is t+1
    assert_frames_close(got, np.broadcast_to(ref, (4, 10)), lens)
    np.testing.assert_allclose(res.numpy(final), lens.astype(np.float32))


def test_while_loop_lengths_without_any_stacked_output():
    stop = np.array([3, 1, 7], np.int32)
    g, loop, _, final = _counter_loop(stack=False)
    res = g.run({"stop": stop})
    np.testing.assert_array_equal(res.lens(loop.axis), stop)
    np.testing.assert_allclose(res.numpy(final), stop.astype(np.float32))


# --- 4. an int32 State with a number as initial ---

def test_int32_state_with_a_number_initial_counts_per_frame(rng):
    time, feat = rd.Dim("time"), rd.Dim("feat", 3)
    with rd.Graph() as g:
        x = rd.Input("x", {batch, time, feat})
        s = rd.State({batch, feat}, initial=0, dtype="int32")
        with rd.Loop() as loop:
            s.assign(s.get() + rd.cast(loop.unstack(x) > 0.0, "int32") + 1)
            seen = loop.stack(s.get())
        final = s.get()
    lens = [4, 1, 3]
    x_np = garbage_padding(rng.standard_normal((3, 4, 3)).astype(np.float32), lens, rng)
    res = g.run({"x": x_np}, seq_lens={time: lens})
    ref = np.cumsum((x_np > 0).astype(np.int32) + 1, axis=1)
    assert res.numpy(seen).dtype == np.int32
    assert_frames_close(res.numpy(seen), ref, lens, atol=0)
    np.testing.assert_array_equal(res.numpy(final), ref[np.arange(3), np.array(lens) - 1])
    tr = g.trace({"x": x_np}, seq_lens={time: lens})
    assert_frames_close(tr.numpy(s, order=(batch, time, feat)), ref, lens, atol=0)


# --- 6. inputs with RETURNN's reserved names ---

@pytest.mark.parametrize("name", ["data", "data_x", "output", "end", "source"])
def test_inputs_with_returnns_reserved_names_are_fed_by_their_own_name(rng, name):
    time, feat = rd.Dim("time"), rd.Dim("feat", 3)
    with rd.Graph() as g:
        x = rd.Input(name, {batch, time, feat})
        h = rd.State({batch, feat})
        with rd.Loop() as loop:
            h.assign(rd.tanh(loop.unstack(x) + h.get()))
            out = loop.stack(h.get())
    lens = [3, 2]
    x_np = garbage_padding(rng.standard_normal((2, 3, 3)).astype(np.float32), lens, rng)
    ref = np.zeros((2, 3, 3))
    for b in range(2):
        v = np.zeros(3)
        for t in range(3):
            v = np.tanh(x_np[b, t] + v)
            ref[b, t] = v
    assert_frames_close(g.run({name: x_np}, seq_lens={time: lens}).numpy(out), ref, lens)
    assert_frames_close(g.trace({name: x_np}, seq_lens={time: lens}).numpy(h), ref, lens)
    st = g.stepper({name: x_np}, seq_lens={time: lens})
    st.step(2)
    np.testing.assert_allclose(st.value(h)[0], ref[0, 1], atol=ATOL)


# --- 7. a module used through containers that are never called ---

def test_a_module_used_through_uncalled_containers_keeps_its_attribute_path(rng):
    time, feat, hid = rd.Dim("time"), rd.Dim("feat", 3), rd.Dim("hid", 2)

    class Encoder(rd.Module):
        def __init__(self):
            super().__init__()
            self.lin = rd.Linear(hid)
            self.h = rd.State({batch, hid})

    class Model(rd.Module):
        def __init__(self):
            super().__init__()
            self.encoder = Encoder()

    model = Model()
    with rd.Graph() as g:
        x = rd.Input("x", {batch, time, feat})
        with rd.Loop() as loop:
            model.encoder.h.assign(rd.tanh(model.encoder.lin(loop.unstack(x)) + model.encoder.h.get()))
            out = loop.stack(model.encoder.h.get())
    res = g.run({"x": rng.standard_normal((2, 3, 3)).astype(np.float32)})
    assert sorted(res.params()) == ["model/encoder/lin/bias", "model/encoder/lin/weight"]
    assert model.encoder.h.path(g) == "model/encoder/h"


# --- 8. stepping by a negative or non-integer count ---

def test_stepping_by_a_negative_count_is_an_error_and_leaves_the_stepper_usable(rng):
    time, feat = rd.Dim("time"), rd.Dim("feat", 2)
    with rd.Graph() as g:
        x = rd.Input("x", {batch, time, feat})
        h = rd.State({batch, feat})
        with rd.Loop() as loop:
            h.assign(h.get() + loop.unstack(x))
    x_np = rng.standard_normal((2, 5, 2)).astype(np.float32)
    st = g.stepper({"x": x_np})
    st.step(2)
    for call in (lambda: st.step_back(-3), lambda: st.step(-1), lambda: st.run_to(-1), lambda: st.run_to(2.5)):
        with pytest.raises(rd.RecDebugError):
            call()
        assert st.t == 2
    np.testing.assert_allclose(st.value(h), x_np[:, :2].sum(axis=1), atol=ATOL)
    assert st.run_until(lambda s: s.t == 4) and st.t == 4
    np.testing.assert_allclose(st.value(h), x_np[:, :4].sum(axis=1), atol=ATOL)


# --- 9. the trace debugger along a hypothesis: States assigned before and after rd.choice ---

def test_trace_debugger_follows_a_hypothesis_for_states_before_and_after_the_choice(rng):
    from test_search import beam_search, build, params

    g, loop, y, labels = build(beam_size=3)
    p = params(rng)
    enc = rng.standard_normal((3, 4)).astype(np.float32)
    steps, finals = beam_search({k: v.astype(np.float64) for k, v in p.items()}, enc.astype(np.float64), 3)
    tr = g.trace({"enc": enc}, params=p, search=True)
    d = rd.debugger(tr)
    label_state, h_state = g.states
    label_key, h_key = tr.key(label_state), tr.key(h_state)
    assert not tr.before_choice(label_key) and tr.before_choice(h_key)
    for b in range(3):
        d.sequence = b
        t_last, k = d.hypothesis
        n_steps = len(steps)
        # numpy: backtrack the best final hypothesis through the picks of every step
        slot, path = 0, []
        for t in range(n_steps - 1, -1, -1):
            path.append(slot)
            slot = steps[t][b][slot][1]
        path.reverse()
        rows = {key: np.frombuffer(d.views[key].values, np.float32).reshape(d.T, -1) for key in (label_key, h_key)}
        h_ref = enc[b].astype(np.float64)
        for t, s in enumerate(path):
            score, src, label, h_new, src_ended = steps[t][b][s]
            if src_ended:
                break
            h_ref = h_new
            assert rows[label_key][t, 0] == label, f"sequence {b} step {t}"
            np.testing.assert_allclose(rows[h_key][t], h_ref, atol=ATOL, err_msg=f"sequence {b} step {t}")
        assert finals[b][0][1] == d.beams.hypothesis(b, k, t_last)["labels"]
    d.close()


# --- 10. iterating over a static dim ---

def _np_decay(x, steps):
    """s_t = 0.5 s_{t-1} + x_t along axis 1 of x (the first ``steps`` frames)."""
    s, out = np.zeros(x.shape[:1] + x.shape[2:]), np.zeros_like(x, dtype=np.float64)
    for t in range(steps):
        s = s * 0.5 + x[:, t]
        out[:, t] = s
    return out


@pytest.mark.parametrize("optimize", [True, False])
def test_a_loop_over_a_static_dim(rng, optimize):
    win, feat = rd.Dim("win", 3), rd.Dim("feat", 2)
    with rd.Graph() as g:
        x = rd.Input("x", {batch, win, feat})
        s = rd.State({batch, feat})
        with rd.Loop() as loop:
            s.assign(s.get() * 0.5 + loop.unstack(x, axis=win))
            out = loop.stack(s.get())
        total = rd.reduce_sum(out, win)
    assert loop.axis is win and out.dims == {batch, win, feat}
    x_np = rng.standard_normal((4, 3, 2)).astype(np.float32)
    ref = _np_decay(x_np.astype(np.float64), 3)
    res = g.run({"x": x_np}, optimize=optimize)
    np.testing.assert_allclose(res.numpy(out, order=(batch, win, feat)), ref, atol=ATOL)
    np.testing.assert_allclose(res.numpy(total), ref.sum(1), atol=ATOL)
    tr = g.trace({"x": x_np}, optimize=optimize)
    np.testing.assert_allclose(tr.numpy(s, order=(batch, win, feat)), ref, atol=ATOL)
    np.testing.assert_array_equal(tr.lens(win), [3] * 4)
    st = g.stepper({"x": x_np})
    assert st.T == 3
    for t in range(3):
        st.step()
        np.testing.assert_allclose(st.value(s), ref[:, t], atol=ATOL)


def test_a_static_dim_in_a_nested_loop_runs_as_written_and_as_the_while_loop_it_becomes(rng):
    """inner.unstack(x_t, axis=win) inside a loop, as the user writes it, and the while loop over the window's
    positions that recdebug emits for it, written by hand: both as numpy computes them."""
    time, win, feat = rd.Dim("time"), rd.Dim("win", 3), rd.Dim("feat", 2)
    lens = [4, 2]
    x_np = rng.standard_normal((2, 4, 3, 2)).astype(np.float32)
    x_np[1, 2:] = 1e3
    per_frame = np.stack([_np_decay(x_np[:, t].astype(np.float64), 3)[:, 2] for t in range(4)], axis=1)
    for written in (True, False):
        with rd.Graph() as g:
            x = rd.Input("x", {batch, time, win, feat})
            acc = rd.State({batch, feat})
            with rd.Loop() as outer:
                x_t = outer.unstack(x)
                s = rd.State({batch, feat})
                if written:
                    with rd.Loop() as inner:
                        s.assign(s.get() * 0.5 + inner.unstack(x_t, axis=win))
                else:
                    with rd.Loop(max_seq_len=3) as inner:
                        s.assign(s.get() * 0.5 + rd.gather(x_t, inner.index, win))
                        inner.end(inner.index >= 2, include_eos=True)
                acc.assign(acc.get() + s.get())
                out = outer.stack(acc.get())
        for optimize in (True, False):
            got = g.run({"x": x_np}, seq_lens={time: lens}, optimize=optimize).numpy(out)
            assert_frames_close(got, np.cumsum(per_frame, axis=1), lens)


# --- 11. unstack and end in one loop ---

@pytest.mark.parametrize("include_eos", [False, True])
def test_unstack_and_end_in_one_loop(rng, include_eos):
    """An input loop that can stop early: sequence b stops at the first frame whose values are all negative (kept iff
    include_eos) or after its frames."""
    time, feat = rd.Dim("time"), rd.Dim("feat", 2)
    with rd.Graph() as g:
        x = rd.Input("x", {batch, time, feat})
        h = rd.State({batch, feat})
        with rd.Loop() as loop:
            x_t = loop.unstack(x)
            h.assign(h.get() + x_t)
            loop.end(rd.reduce_max(x_t, feat) < 0.0, include_eos=include_eos)
            out = loop.stack(h.get())
        final = h.get()
    assert loop.axis is not time and out.dims == {batch, loop.axis, feat}
    lens = [5, 4, 1, 4, 2]
    x_np = np.abs(rng.standard_normal((5, 5, 2))).astype(np.float32)
    x_np[1, 1] = -1.0  # stops at t=1
    x_np[2, 0] = -1.0  # stops at t=0 (its only frame)
    x_np[3, 3] = -2.0  # stops at its last frame
    x_np[4, 3] = -1.0  # a stop in the padding: never seen
    for b, n in enumerate(lens):
        x_np[b, n:, 1] = 1e3
    stops = {1: 1, 2: 0, 3: 3}
    expected = [stops[b] + include_eos if b in stops else n for b, n in enumerate(lens)]
    ref = np.cumsum(x_np.astype(np.float64), axis=1)
    for optimize in (True, False):
        res = g.run({"x": x_np}, seq_lens={time: lens}, optimize=optimize)
        np.testing.assert_array_equal(res.lens(loop.axis), expected)
        assert_frames_close(res.numpy(out, order=(batch, loop.axis, feat)), ref, expected)
        final_ref = np.stack([ref[b, n - 1] if n else np.zeros(2) for b, n in enumerate(expected)])
        np.testing.assert_allclose(res.numpy(final), final_ref, atol=ATOL)
    tr = g.trace({"x": x_np}, seq_lens={time: lens})
    np.testing.assert_array_equal(tr.lens(loop.axis), expected)
    assert_frames_close(tr.numpy(h, order=(batch, loop.axis, feat)), ref, expected)
    assert_frames_close(tr.numpy(x_t, order=(batch, loop.axis, feat)), x_np, expected)
    st = g.stepper({"x": x_np}, seq_lens={time: lens})
    st.run_to(st.T)
    assert st.ended == dict(enumerate(expected))
    np.testing.assert_allclose(st.value(h), final_ref, atol=ATOL)


# --- 12. max_seq_len as a tensor ---

@pytest.mark.parametrize("include_eos", [False, True])
def test_max_seq_len_per_sequence_from_a_tensor(rng, include_eos):
    """A decoder bounded by twice each sequence's input length (and stopped earlier by its end condition)."""
    time, feat = rd.Dim("time"), rd.Dim("feat", 2)
    with rd.Graph() as g:
        x = rd.Input("x", {batch, time, feat})
        stop = rd.Input("stop", {batch}, dtype="int32")
        h = rd.State({batch, feat})
        with rd.Loop(max_seq_len=rd.reduce_sum(rd.cast(rd.reduce_max(x, feat) > -1e9, "int32"), time) * 2) as loop:
            h.assign(h.get() * 0.5 + 1.0)
            loop.end(loop.index >= stop, include_eos=include_eos)
            out = loop.stack(h.get())
    lens = np.array([3, 1, 2, 4])
    x_np = rng.standard_normal((4, 4, 2)).astype(np.float32)
    stop_np = np.array([100, 100, 1, 5], np.int32)
    res = g.run({"x": x_np, "stop": stop_np}, seq_lens={time: lens})
    expected = np.minimum(2 * lens, stop_np + include_eos)
    np.testing.assert_array_equal(res.lens(loop.axis), expected)
    ref = np.broadcast_to(_np_decay(np.ones((1, 8, 2)), 8), (4, 8, 2))
    assert_frames_close(res.numpy(out, order=(batch, loop.axis, feat)), ref, expected)
    st = g.stepper({"x": x_np, "stop": stop_np}, seq_lens={time: lens})
    st.run_to(st.T)
    assert st.T == 8 and st.ended == dict(enumerate(expected.tolist()))
    np.testing.assert_allclose(st.value(h), ref[np.arange(4), expected - 1], atol=ATOL)


def test_max_seq_len_that_is_not_an_int32_tensor_names_the_line():
    time = rd.Dim("time")
    with rd.Graph():
        x = rd.Input("x", {batch, time})
        with pytest.raises(rd.DimError, match="max_seq_len"):
            with rd.Loop(max_seq_len=x) as loop:
                loop.end(loop.index >= 3)


# --- found by the generative test ---

def test_label_states_take_labels_without_a_sparse_dim_and_keep_their_own(rng):
    """A State with a sparse dim assigned rd.where of a number and its own labels (RETURNN refused the mix), and a
    plain int State assigned those labels; live stepping reads the labels back from its buffers."""
    time, feat, vocab = rd.Dim("time"), rd.Dim("feat", 3), rd.Dim("vocab", 5)
    with rd.Graph() as g:
        x = rd.Input("x", {batch, time, feat})
        lab = rd.Input("lab", {batch, time}, dtype="int32", sparse_dim=vocab)
        s1 = rd.State({batch}, initial=1, dtype="int32", sparse_dim=vocab)
        s2 = rd.State({batch}, initial=2, dtype="int32")
        with rd.Loop() as loop:
            x_t = loop.unstack(x)
            keep = rd.where(rd.reduce_sum(x_t, feat) > 0.0, loop.unstack(lab), s1.get())
            s1.assign(rd.where(rd.reduce_max(x_t, feat) > 1.5, 0, keep))
            s2.assign(s1.get())
            out = loop.stack(s2.get())
    lens = [4, 2, 3]
    x_np = rng.standard_normal((3, 4, 3)).astype(np.float32)
    lab_np = rng.integers(0, 5, (3, 4)).astype(np.int32)
    ref = np.zeros((3, 4), np.int32)
    for b in range(3):
        v = 1
        for t in range(4):
            v = lab_np[b, t] if x_np[b, t].sum() > 0 else v
            v = 0 if x_np[b, t].max() > 1.5 else v
            ref[b, t] = v
    assert_frames_close(g.run({"x": x_np, "lab": lab_np}, seq_lens={time: lens}).numpy(out), ref, lens, atol=0)
    assert_frames_close(g.trace({"x": x_np, "lab": lab_np}, seq_lens={time: lens}).numpy(s1, order=(batch, time)),
                        ref, lens, atol=0)
    st = g.stepper({"x": x_np, "lab": lab_np}, seq_lens={time: lens})
    st.run_to(st.T)
    np.testing.assert_array_equal(st.value(s2), ref[np.arange(3), np.array(lens) - 1])


def test_a_state_assigned_its_own_value_is_traced():
    hid = rd.Dim("hid", 4)
    with rd.Graph() as g:
        ctx = rd.Input("ctx", {batch, hid})
        s = rd.State({batch}, initial=3, dtype="int32")
        with rd.Loop(max_seq_len=4, include_eos=True) as loop:
            s.assign(s.get())
            loop.end(rd.reduce_max(ctx, hid) > 0.0)
    ctx_np = np.array([[1.0, 0, 0, 0], [-1.0, -1, -1, -1]], np.float32)
    tr = g.trace({"ctx": ctx_np}, optimize=False)
    np.testing.assert_array_equal(tr.lens(loop.axis), [1, 4])
    np.testing.assert_array_equal(tr.numpy(s, order=(batch, loop.axis))[1], [3, 3, 3, 3])


def test_a_while_loop_ending_on_its_index_is_traced_with_the_index_per_step():
    """loop.index is one value per sequence; RETURNN could not record it (no batch dim) nor read it back after
    moving a rd.gather by it out of the loop."""
    time, feat = rd.Dim("time"), rd.Dim("feat", 3)
    with rd.Graph() as g:
        x = rd.Input("x", {batch, time, feat})
        stop = rd.Input("stop", {batch}, dtype="int32")
        with rd.Loop(max_seq_len=4) as loop:
            step = loop.index
            frame_min = rd.reduce_min(rd.gather(x, step, time), feat)
            loop.end(loop.index >= stop)
            out = loop.stack(frame_min)
    x_np = np.random.default_rng(3).standard_normal((2, 4, 3)).astype(np.float32)
    stop_np = np.array([1, 3], np.int32)
    for optimize in (True, False):
        res = g.run({"x": x_np, "stop": stop_np}, seq_lens={time: [4, 2]}, optimize=optimize)
        np.testing.assert_array_equal(res.lens(loop.axis), stop_np)
        ref = x_np[:, [0, 1, 1]].min(-1)
        ref[0] = x_np[0, :3].min(-1)
        assert_frames_close(res.numpy(out), ref, stop_np)
        tr = g.trace({"x": x_np, "stop": stop_np}, seq_lens={time: [4, 2]}, optimize=optimize)
        index = tr.numpy(step, order=(batch, loop.axis))
        assert_frames_close(index, np.tile(np.arange(3), (2, 1)), stop_np, atol=0)


def test_a_state_initial_with_fewer_dims_is_broadcast(rng):
    time, feat, hid = rd.Dim("time"), rd.Dim("feat", 3), rd.Dim("hid", 4)
    with rd.Graph() as g:
        x = rd.Input("x", {batch, time, feat})
        ctx = rd.Input("ctx", {batch, hid})
        s = rd.State({batch, hid}, initial=rd.reduce_mean(ctx, hid))
        with rd.Loop() as loop:
            s.assign(s.get() * 0.5 + rd.reduce_sum(loop.unstack(x), feat))
            out = loop.stack(s.get())
    lens = [3, 2]
    x_np = rng.standard_normal((2, 3, 3)).astype(np.float32)
    ctx_np = rng.standard_normal((2, 4)).astype(np.float32)
    v, ref = ctx_np.mean(1).astype(np.float64), []
    for t in range(3):
        v = v * 0.5 + x_np[:, t].sum(1)
        ref.append(v)
    ref = np.broadcast_to(np.stack(ref, 1)[..., None], (2, 3, 4))
    assert_frames_close(g.run({"x": x_np, "ctx": ctx_np}, seq_lens={time: lens}).numpy(out), ref, lens)
    st = g.stepper({"x": x_np, "ctx": ctx_np}, seq_lens={time: lens})
    np.testing.assert_allclose(st.value(s), np.broadcast_to(ctx_np.mean(1)[:, None], (2, 4)), atol=ATOL)


@pytest.mark.parametrize("optimize", [True, False])
def test_values_that_are_the_same_at_every_step(rng, optimize):
    """Stacked, last and concatenated values computed only from values outside the loop."""
    time, feat, hid = rd.Dim("time"), rd.Dim("feat", 3), rd.Dim("hid", 4)
    with rd.Graph() as g:
        x = rd.Input("x", {batch, time, feat})
        ctx = rd.Input("ctx", {batch, hid})
        h = rd.State({batch, feat})
        with rd.Loop() as loop:
            x_t = loop.unstack(x)
            h.assign(h.get() + x_t)
            const = loop.stack(rd.tanh(ctx))
            last = loop.last(rd.tanh(ctx) * 2.0)
            both = loop.stack(rd.concat(rd.tanh(ctx), x_t))
    lens = [3, 1]
    x_np = rng.standard_normal((2, 3, 3)).astype(np.float32)
    ctx_np = rng.standard_normal((2, 4)).astype(np.float32)
    res = g.run({"x": x_np, "ctx": ctx_np}, seq_lens={time: lens}, optimize=optimize)
    t_ctx = np.tanh(ctx_np.astype(np.float64))
    assert_frames_close(res.numpy(const), np.broadcast_to(t_ctx[:, None], (2, 3, 4)), lens)
    np.testing.assert_allclose(res.numpy(last), 2 * t_ctx, atol=ATOL)
    ref = np.concatenate([np.broadcast_to(t_ctx[:, None], (2, 3, 4)), x_np], -1)
    assert_frames_close(res.numpy(both), ref, lens)
    g.trace({"x": x_np, "ctx": ctx_np}, seq_lens={time: lens}, optimize=optimize)


def test_a_while_loop_in_which_every_sequence_ends_at_step_0_gets_a_clear_error():
    hid = rd.Dim("hid", 4)
    with rd.Graph() as g:
        ctx = rd.Input("ctx", {batch, hid})
        s = rd.State({batch, hid}, initial=0.5)
        with rd.Loop(max_seq_len=3) as loop:
            s.assign(rd.tanh(s.get()))
            loop.end(rd.reduce_max(ctx, hid) > -100.0)
            loop.stack(s.get())
    with pytest.raises(rd.RunError, match="ended at step 0 for every sequence") as e:
        g.run({"ctx": np.ones((2, 4), np.float32)}, optimize=False)
    assert "g.run(" in e.value.line.code
    res = g.run({"ctx": np.array([[1.0] * 4, [-1e3] * 4], np.float32)})  # the graph is still usable
    np.testing.assert_array_equal(res.lens(loop.axis), [0, 3])
