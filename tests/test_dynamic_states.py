"""States over a dynamic axis besides the batch (an encoder's: coverage, accumulated attention) in the live stepper:
values at every step against numpy, set_state in the State's own axis order with its size checked, NaN checks
and the debugger's views that leave out the padding frames of the State's own axis."""
import numpy as np
import pytest

import recdebug as rd
from conftest import ATOL

batch = rd.batch_dim
TIME_LENS, ENC_LENS = np.array([4, 2, 3]), np.array([5, 3, 1])


def coverage_graph(add_scores: bool = False):
    """Attention with a coverage State over the encoder's axis: scores = m . x_t - cov, a = softmax over enc,
    cov += a (``add_scores``: cov += the scores, which carry the encoder's padding frames into the State)."""
    time, enc, feat = rd.Dim("time"), rd.Dim("enc"), rd.Dim("feat", 3)
    g = rd.Graph()
    with g:
        x = rd.Input("x", [batch, time, feat])
        m = rd.Input("m", [batch, enc, feat])
        cov = rd.State({batch, enc}, initial=0.0)
        with rd.Loop() as loop:
            x_t = loop.unstack(x)
            scores = rd.reduce_sum(m * x_t, feat) - cov.get()
            att = rd.softmax(scores, enc)
            cov.assign(cov.get() + (scores if add_scores else att))
            loop.stack(att)
    return g, time, enc, cov, att


def numpy_coverage(x, m, time_lens, enc_lens, edit=None):
    """cov after each step [batch, steps, enc] (valid frames); ``edit``: (step, cov) set before that step."""
    B, T, _ = x.shape
    out = np.zeros((B, T, m.shape[1]))
    for b in range(B):
        n = enc_lens[b]
        cov = np.zeros(n)
        for t in range(time_lens[b]):
            if edit is not None and t == edit[0]:
                cov = edit[1][b, :n].astype(np.float64)
            scores = m[b, :n] @ x[b, t] - cov
            att = np.exp(scores - scores.max())
            cov = cov + att / att.sum()
            out[b, t, :n] = cov
    return out


def feeds(rng, nan_padding: bool = False):
    x = rng.standard_normal((3, 4, 3)).astype(np.float32)
    m = rng.standard_normal((3, 5, 3)).astype(np.float32)
    for arr, lens in ((x, TIME_LENS), (m, ENC_LENS)):  # garbage in the padding frames
        pad = np.arange(arr.shape[1])[None, :] >= lens[:, None]
        arr[pad] = np.nan if nan_padding and arr is m else rng.uniform(-1e3, 1e3, size=(pad.sum(), 3))
    return x, m


def test_a_state_over_the_encoders_axis_steps_as_numpy_computes_it(rng):
    g, time, enc, cov, att = coverage_graph()
    x, m = feeds(rng)
    lens = {time: TIME_LENS, enc: ENC_LENS}
    want = numpy_coverage(x, m, TIME_LENS, ENC_LENS)
    st = g.stepper({"x": x, "m": m}, lens)
    np.testing.assert_array_equal(st.value(cov), np.zeros((3, 5)))  # its size: the longest sequence's frames
    for t in range(1, 5):
        st.step()
        for b in range(3):
            if t <= TIME_LENS[b]:
                np.testing.assert_allclose(st.value(cov)[b, :ENC_LENS[b]], want[b, t - 1, :ENC_LENS[b]], atol=ATOL)
                np.testing.assert_allclose(st.value(att)[b, :ENC_LENS[b]].sum(), 1.0, atol=ATOL)
    st.step_back(2)  # exact: the buffer keeps every step
    np.testing.assert_allclose(st.value(cov)[0], want[0, 1], atol=ATOL)
    tr = g.trace({"x": x, "m": m}, lens)  # the trace, independently built, agrees and masks enc's padding
    mask = tr.mask(cov, order=(batch, time, enc))
    assert mask[2, 0].tolist() == [True, False, False, False, False]
    np.testing.assert_allclose(np.where(mask, tr.numpy(cov, order=(batch, time, enc)), 0), want, atol=ATOL)
    st.close()


def test_set_state_of_a_state_over_the_encoders_axis_takes_its_own_order_and_size(rng):
    g, time, enc, cov, att = coverage_graph()
    x, m = feeds(rng)
    lens = {time: TIME_LENS, enc: ENC_LENS}
    st = g.stepper({"x": x, "m": m}, lens)
    st.step(2)
    edited = rng.uniform(0, 2, size=(3, 5)).astype(np.float32)
    with pytest.raises(rd.RunError, match=r"expected \(3, 5\).*enc has 5 frames here, its longest sequence"):
        st.set_state(cov, edited[:, :4])
    st.set_state(cov, edited.T, order=(enc, batch))  # in the order given
    np.testing.assert_array_equal(st.value(cov), edited)
    st.run_to(4)
    want = numpy_coverage(x, m, TIME_LENS, ENC_LENS, edit=(2, edited))
    for b in range(3):
        if TIME_LENS[b] > 2:
            np.testing.assert_allclose(st.value(cov)[b, :ENC_LENS[b]], want[b, TIME_LENS[b] - 1, :ENC_LENS[b]],
                                       atol=ATOL)
    st.close()


def test_nan_in_the_padding_frames_of_a_states_own_axis_is_no_breakpoint(rng):
    g, time, enc, cov, att = coverage_graph(add_scores=True)
    x, m = feeds(rng, nan_padding=True)
    st = g.stepper({"x": x, "m": m}, {time: TIME_LENS, enc: ENC_LENS})
    assert st.run_until(rd.on_nan()) is False and st.finished  # NaN only in the padding frames of enc
    assert np.isnan(st.value(cov)[2, 1:]).all() and np.isfinite(st.value(cov)[2, :1]).all()
    assert all(st.nonfinite_at(k) == [] for k in range(st.T))
    m[1, 1, 0] = np.nan  # a valid frame of sequence 1
    st2 = g.stepper({"x": x, "m": m}, {time: TIME_LENS, enc: ENC_LENS})
    assert st2.run_until(rd.on_nan()) is True and st2.t == 1 and st2.nonfinite_at(0) == [cov]
    st.close()
    st2.close()


def test_the_debugger_shows_each_sequences_valid_frames_of_the_states_own_axis(rng):
    g, time, enc, cov, att = coverage_graph()
    x, m = feeds(rng)
    lens = {time: TIME_LENS, enc: ENC_LENS}
    want = numpy_coverage(x, m, TIME_LENS, ENC_LENS)
    st = g.stepper({"x": x, "m": m}, lens)
    d = rd.debugger(st)
    key = cov.path(g)
    d.step()
    d.step()
    for b in (0, 1, 2):
        d.select_sequence(b)
        view = d.views[key]
        assert view._array.shape == (4, ENC_LENS[b])  # steps x this sequence's frames: no padding
        assert f"({ENC_LENS[b]} of 5 units: sequence {b}'s valid frames)" in view.unit_label
        np.testing.assert_allclose(view._array[:min(2, TIME_LENS[b])], want[b, :min(2, TIME_LENS[b]), :ENC_LENS[b]],
                                   atol=ATOL)
    d.step()  # a live step sends the new row: this sequence's frames only
    np.testing.assert_allclose(d.views[key]._array[2], want[2, 2, :1], atol=ATOL)
    d.close()
    tr = g.trace({"x": x, "m": m}, lens)
    d = rd.debugger(tr)
    d.select_sequence(1)
    view = d.views[tr.key(cov)]
    assert view._array.shape == (4, 3)
    np.testing.assert_allclose(view._array[:2], want[1, :2, :3], atol=ATOL)
    d.close()
    st.close()


def drawn(fig) -> np.ndarray:
    """The matrix an alignment figure draws (masked: padding and steps not run)."""
    return fig.axes[0].images[0].get_array()


def test_the_alignment_of_attention_weights_is_drawn_from_a_trace_a_stepper_and_in_the_debugger(rng):
    g, time, enc, cov, att = coverage_graph()
    x, m = feeds(rng)
    lens = {time: TIME_LENS, enc: ENC_LENS}
    want = numpy_coverage(x, m, TIME_LENS, ENC_LENS)
    weights = np.diff(np.concatenate([np.zeros((3, 1, 5)), want], axis=1), axis=1)  # each step's attention
    tr = g.trace({"x": x, "m": m}, lens)
    for b in range(3):  # loop steps down, the sequence's valid frames across, padding steps masked
        got = drawn(rd.plot_alignment(tr, att, sequence=b))
        assert got.shape == (4, ENC_LENS[b])
        np.testing.assert_allclose(got[:TIME_LENS[b]], weights[b, :TIME_LENS[b], :ENC_LENS[b]], atol=ATOL)
        assert got.mask[TIME_LENS[b]:].all() and not got.mask[:TIME_LENS[b]].any()
    st = g.stepper({"x": x, "m": m}, lens)
    st.step(2)
    key = next(k for k in st.layer_keys() if k.endswith("softmax"))
    fig = rd.plot_alignment(st, key, sequence=0)
    got = drawn(fig)
    np.testing.assert_allclose(got[:2], weights[0, :2], atol=ATOL)
    assert got.mask[2:].all()  # not run yet
    outlines = [r.get_y() + 0.5 for r in fig.axes[0].patches if not r.get_fill()]
    assert outlines == [1.0, 1.0]  # the cursor row, black on a white edge
    with pytest.raises(rd.RecDebugError, match="one value per frame of an axis of its own"):
        rd.plot_alignment(st, key.rsplit("/", 1)[0] + "/unstack")

    d = rd.debugger(st)  # the coverage State's alignment, then the picked attention weights'
    assert d.alignment_key == cov.path(g) and d.alignment.layout.display is None
    d.select_layer(key)
    d.select_sequence(1)
    assert d.alignment_key == key
    np.testing.assert_allclose(drawn(d.alignment_figure())[:2], weights[1, :2, :3], atol=ATOL)
    before = len(d.alignment.value)
    d.step()
    assert len(d.alignment.value) != before  # redrawn with the new step
    assert d.picture()[:4] == b"\x89PNG"
    d.close()
    st.close()


def test_a_searchs_alignment_follows_the_shown_hypothesis_with_its_labels(rng):
    """With search, the rows follow the hypothesis through its backpointers and are labelled with its labels."""
    from test_search import VOCAB

    enc_t, hid, vocab, emb = rd.Dim("enc_time"), rd.Dim("hid", 4), rd.Dim("vocab", VOCAB), rd.Dim("emb", 3)
    with rd.Graph() as g:
        enc = rd.Input("enc", {batch, enc_t, hid})
        embed, lin_h, lin_out, lin_q = rd.Embedding(vocab, emb), rd.Linear(hid), rd.Linear(vocab), rd.Linear(hid)
        label = rd.State({batch}, initial=0, dtype="int32", sparse_dim=vocab)
        h = rd.State({batch, hid})
        with rd.Loop(max_seq_len=6) as loop:
            energy = rd.reduce_sum(enc * lin_q(h.get()), hid)
            w = rd.softmax(energy, enc_t)
            h.assign(rd.tanh(lin_h(rd.concat(embed(label.get()), rd.reduce_sum(enc * w, enc_t)))))
            y = rd.choice(lin_out(h.get()), beam_size=3)
            label.assign(y)
            loop.end(y == 0, include_eos=True)
    enc_np = rng.standard_normal((2, 5, 4)).astype(np.float32)
    tr = g.trace({"enc": enc_np}, seq_lens={enc_t: [5, 3]}, search=True)
    beams = tr.beams(y)
    names = [f"w{i}" for i in range(VOCAB)]
    fig = rd.plot_alignment(tr, w, sequence=1, vocab=names)
    best = beams.hypotheses(1)[0]
    got = drawn(fig)
    values = tr.numpy(w, order=[tr.label(loop.axis), batch, tr.label(beams_dim(tr, w)), enc_t])
    for t in range(best["length"]):  # per step, the slot the best hypothesis went through (w: before the choice)
        slot = int(beams.backpointers[t, 1, best["slots"][t]])
        np.testing.assert_allclose(got[t], values[t, 1, slot, :3], atol=ATOL)
    ticks = [tk.get_text() for tk in fig.axes[0].get_yticklabels()]
    assert ticks[:best["length"]] == [f"t={t}: {lab} w{lab}" for t, lab in enumerate(best["labels"])]


def beams_dim(tr, x):
    return next(d for d in tr.entries[tr.key(x)].dims if d.startswith("beam") or "beam" in d)


def test_the_alignment_is_drawn_over_the_loop_that_computes_it_in_a_trace_of_two_loops(rng):
    """An encoder loop, then a decoder loop attending over the encoder's steps: the alignment's rows are the
    decoder's steps (not the encoder's, which the trace holds first), in a trace and in a stepper of the decoder,
    given the tensor itself."""
    time, out_t, feat, hid = rd.Dim("time"), rd.Dim("out_t"), rd.Dim("feat", 3), rd.Dim("hid", 4)
    with rd.Graph() as g:
        x = rd.Input("x", [batch, time, feat])
        y = rd.Input("y", [batch, out_t, hid])
        h = rd.State({batch, hid}, initial=0.0)
        with rd.Loop() as encoder:
            h.assign(rd.tanh(rd.Linear(hid)(encoder.unstack(x)) + h.get()))
            enc = encoder.stack(h.get())
        with rd.Loop() as decoder:
            att = rd.softmax(rd.reduce_sum(enc * decoder.unstack(y), hid), time)
            decoder.stack(att)
    x_np = rng.standard_normal((2, 5, 3)).astype(np.float32)
    y_np = rng.standard_normal((2, 3, 4)).astype(np.float32)
    lens = {time: np.array([5, 4]), out_t: np.array([3, 2])}
    tr = g.trace({"x": x_np, "y": y_np}, lens)
    fig = rd.plot_alignment(tr, att, sequence=1)
    got = drawn(fig)
    assert got.shape == (3, 4)  # 3 decoder steps (sequence 1 has 2) x its 4 encoder frames
    want = tr.numpy(att, order=(out_t, batch, time))[:, 1, :4]
    np.testing.assert_allclose(got[:2], want[:2], atol=ATOL)
    assert got.mask[2].all() and fig.axes[0].get_ylabel() == "t (loop step)" and fig.axes[0].get_xlabel() == "time"
    st = g.stepper({"x": x_np, "y": y_np}, lens, loop=decoder)
    st.step(2)
    np.testing.assert_allclose(drawn(rd.plot_alignment(st, att, sequence=1))[:2], want[:2], atol=ATOL)
    st.close()
