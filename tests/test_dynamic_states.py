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
