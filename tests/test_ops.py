"""The ops loop code needs (softmax, log, abs, where, reduce_mean, gather, concat, dropout, LSTM, cross_entropy),
each inside a loop over ragged lengths with garbage in the padding frames, against numpy (1e-5, float32)."""
import numpy as np
import pytest

import recdebug as rd
from conftest import ATOL, assert_frames_close

batch = rd.batch_dim
LENS = [5, 1, 3]


@pytest.fixture
def rng():
    return np.random.default_rng(99)


def _input(rng, feat_size=4, t=5):
    x = rng.standard_normal((3, t, feat_size)).astype(np.float32)
    for b, n in enumerate(LENS):
        x[b, n:] = 1e4  # garbage: any read of padding shows
    return x


def _np_softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def test_elementwise_ops_in_a_loop(rng):
    time, feat = rd.Dim("time"), rd.Dim("feat", 4)
    with rd.Graph() as g:
        x = rd.Input("x", {batch, time, feat})
        with rd.Loop() as loop:
            x_t = loop.unstack(x)
            sm = loop.stack(rd.softmax(x_t, feat))
            lsm = loop.stack(rd.log_softmax(x_t))
            lg = loop.stack(rd.log(rd.abs(x_t) + 0.5))
            wh = loop.stack(rd.where(x_t > 0.0, x_t, -2.0))
            wh2 = loop.stack(rd.where(rd.reduce_max(x_t, feat) > 1.0, 1.0, rd.reduce_min(x_t, feat)))
            mean = loop.stack(rd.reduce_mean(x_t, feat))
            both = loop.stack(rd.concat(x_t, x_t * 2.0))
    x_np = _input(rng)
    res = g.run({"x": x_np}, seq_lens={time: LENS})
    x64 = x_np.astype(np.float64)
    assert_frames_close(res.numpy(sm), _np_softmax(x64, -1), LENS)
    assert_frames_close(res.numpy(lsm), np.log(_np_softmax(x64, -1)), LENS)
    assert_frames_close(res.numpy(lg), np.log(np.abs(x64) + 0.5), LENS)
    assert_frames_close(res.numpy(wh), np.where(x64 > 0, x64, -2.0), LENS)
    assert_frames_close(res.numpy(wh2), np.where(x64.max(-1) > 1.0, 1.0, x64.min(-1)), LENS)
    assert_frames_close(res.numpy(mean), x64.mean(-1), LENS)
    assert_frames_close(res.numpy(both), np.concatenate([x64, 2 * x64], -1), LENS)
    assert both.feature_dim().size == 8


def test_softmax_and_mean_over_a_dynamic_axis_exclude_padding(rng):
    """Attention over encoder frames: the weights of padding frames are 0, the mean is over valid frames."""
    enc_t, hid = rd.Dim("enc_time"), rd.Dim("hid", 3)
    with rd.Graph() as g:
        enc = rd.Input("enc", {batch, enc_t, hid})
        q = rd.State({batch, hid})
        with rd.Loop(max_seq_len=3) as loop:
            w = rd.softmax(rd.reduce_sum(enc * q.get(), hid), enc_t)
            ctx = rd.reduce_sum(enc * w, enc_t)
            q.assign(rd.tanh(ctx + rd.reduce_mean(enc, enc_t)))
            loop.end(loop.index >= 2, include_eos=True)
            weights = loop.stack(w)
            lw = loop.stack(rd.log_softmax(rd.reduce_sum(enc * q.get(), hid), enc_t))
    enc_np = _input(rng, 3)
    res = g.run({"enc": enc_np}, seq_lens={enc_t: LENS})
    got_w, got_lw = (res.numpy(v, order=(batch, loop.axis, enc_t)) for v in (weights, lw))
    qv = np.zeros((3, 3))
    for t in range(3):
        for b, n in enumerate(LENS):
            e = enc_np[b, :n].astype(np.float64)
            w_ref = _np_softmax(e @ qv[b], 0)
            np.testing.assert_allclose(got_w[b, t, :n], w_ref, atol=ATOL)
            np.testing.assert_allclose(got_w[b, t, n:], 0.0)
            qv[b] = np.tanh(w_ref @ e + e.mean(0))
            np.testing.assert_allclose(got_lw[b, t, :n], np.log(_np_softmax(e @ qv[b], 0)), atol=ATOL)


def test_gather_by_the_loop_index_reads_each_frame(rng):
    """A while loop that reads its input with rd.gather(x, loop.index): the index is clipped to the frames."""
    time, feat = rd.Dim("time"), rd.Dim("feat", 4)
    with rd.Graph() as g:
        x = rd.Input("x", {batch, time, feat})
        acc = rd.State({batch, feat})
        with rd.Loop(max_seq_len=6) as loop:
            frame = rd.gather(x, loop.index, time)
            acc.assign(acc.get() + frame)
            loop.end(loop.index >= 5, include_eos=True)
            frames = loop.stack(frame)
            assert loop.index.sparse_dim is loop.axis
    x_np = _input(rng)
    res = g.run({"x": x_np}, seq_lens={time: LENS})
    got = res.numpy(frames, order=(batch, loop.axis, feat))
    for b, n in enumerate(LENS):
        np.testing.assert_allclose(got[b], x_np[b, np.minimum(np.arange(6), n - 1)], atol=ATOL)


def test_gather_with_an_explicit_dim_and_a_sparse_label(rng):
    time, vocab, emb = rd.Dim("time"), rd.Dim("vocab", 6), rd.Dim("emb", 2)
    with rd.Graph() as g:
        table = rd.Input("table", {batch, vocab, emb})
        y = rd.Input("y", {batch, time}, dtype="int32", sparse_dim=vocab)
        with rd.Loop() as loop:
            out = loop.stack(rd.gather(table, loop.unstack(y)))
    table_np = rng.standard_normal((3, 6, 2)).astype(np.float32)
    y_np = rng.integers(0, 6, (3, 5)).astype(np.int32)
    res = g.run({"table": table_np, "y": y_np}, seq_lens={time: LENS})
    ref = np.stack([table_np[b, y_np[b]] for b in range(3)])
    assert_frames_close(res.numpy(out), ref, LENS)


def test_dropout_only_with_the_train_flag(rng):
    time, feat = rd.Dim("time"), rd.Dim("feat", 50)
    with rd.Graph() as g:
        x = rd.Input("x", {batch, time, feat})
        with rd.Loop() as loop:
            out = loop.stack(rd.dropout(loop.unstack(x), 0.25))
    x_np = np.abs(rng.standard_normal((3, 40, 50))).astype(np.float32) + 0.1
    np.testing.assert_array_equal(g.run({"x": x_np}).numpy(out), x_np)
    got = g.run({"x": x_np}, train=True).numpy(out)
    dropped = got == 0.0
    np.testing.assert_allclose(got[~dropped], x_np[~dropped] / 0.75, rtol=1e-6)
    assert 0.2 < dropped.mean() < 0.3
    assert 0.15 < dropped[:, :, 0].mean() < 0.35 and 0.15 < dropped[:, 0, :].mean() < 0.35  # no shared mask


def _np_lstm(p, x, lens, prefix="lstm"):
    w_ff, b_ff = p[f"{prefix}/ff_linear/weight"], p[f"{prefix}/ff_linear/bias"]
    w_rec, b_rec = p[f"{prefix}/rec_linear/weight"], p[f"{prefix}/rec_linear/bias"]
    n = w_rec.shape[0]
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    hs = np.zeros(x.shape[:2] + (n,))
    for b, length in enumerate(lens):
        h, c = np.zeros(n), np.zeros(n)
        for t in range(length):
            z = x[b, t] @ w_ff + b_ff + h @ w_rec + b_rec
            x_in, g_in, g_forget, g_out = np.split(z, 4)
            c = c * sig(g_forget) + np.tanh(x_in) * sig(g_in)
            h = np.tanh(c) * sig(g_out)
            hs[b, t] = h
    return hs


def test_lstm_and_cross_entropy(rng):
    time, feat, hid, classes = rd.Dim("time"), rd.Dim("feat", 4), rd.Dim("hid", 3), rd.Dim("classes", 5)
    with rd.Graph() as g:
        x = rd.Input("x", {batch, time, feat})
        y = rd.Input("y", {batch, time}, dtype="int32", sparse_dim=classes)
        lstm, lin_out = rd.LSTM(hid), rd.Linear(classes)
        with rd.Loop() as loop:
            logits = loop.stack(lin_out(lstm(loop.unstack(x))))
            hs = loop.stack(lstm.h.get())
        loss = rd.cross_entropy(logits, y)
    assert loss.dims == {batch, time}
    x_np = _input(rng)
    y_np = rng.integers(0, 5, (3, 5)).astype(np.int32)
    res0 = g.run({"x": x_np, "y": y_np}, seq_lens={time: LENS})
    assert sorted(res0.params()) == ["linear/bias", "linear/weight", "lstm/ff_linear/bias", "lstm/ff_linear/weight",
                                     "lstm/rec_linear/bias", "lstm/rec_linear/weight"]
    assert res0.param(lstm.ff_linear.weight).shape == (4, 12) and res0.param(lstm.rec_linear.weight).shape == (3, 12)
    p = {k: (rng.standard_normal(v.shape) * 0.5).astype(np.float32) for k, v in res0.params().items()}
    res = g.run({"x": x_np, "y": y_np}, seq_lens={time: LENS}, params=p)
    p64 = {k: v.astype(np.float64) for k, v in p.items()}
    h_ref = _np_lstm(p64, x_np.astype(np.float64), LENS)
    assert_frames_close(res.numpy(hs), h_ref, LENS)
    logits_ref = h_ref @ p64["linear/weight"] + p64["linear/bias"]
    ce_ref = -np.log(np.take_along_axis(_np_softmax(logits_ref, -1), y_np[..., None], -1))[..., 0]
    assert_frames_close(res.numpy(loss), ce_ref, LENS)
    tr = g.trace({"x": x_np, "y": y_np}, seq_lens={time: LENS}, params=p)
    assert_frames_close(tr.numpy(lstm.h, order=(batch, time, hid)), h_ref, LENS)


def test_op_misuse_names_the_line():
    time, feat, other = rd.Dim("time"), rd.Dim("feat", 4), rd.Dim("other", 2)
    with rd.Graph():
        x = rd.Input("x", {batch, time, feat})
        y = rd.Input("y", {batch, other})
        with pytest.raises(rd.DimError, match="no dim") as e:
            rd.softmax(x, other)
        assert "rd.softmax(x, other)" in e.value.line.code
        with pytest.raises(rd.DimError, match="bool"):
            rd.where(x, x, 0.0)
        with pytest.raises(rd.DimError, match="do not broadcast"):
            rd.where(rd.reduce_max(x, feat) > 0.0, x, y)
        with pytest.raises(rd.DimError, match="int32"):
            rd.gather(x, x, time)
        with pytest.raises(rd.DimError, match="rate"):
            rd.dropout(x, 1.5)
        with pytest.raises(rd.DimError, match="sparse_dim"):
            rd.cross_entropy(x, x)


def test_dims_given_by_name(rng):
    """Each dim argument by its name (the one dim of the operand so called) gives what the Dim object gives."""
    time, feat, win = rd.Dim("time"), rd.Dim("feat", 4), rd.Dim("win", 3)
    with rd.Graph() as g:
        x = rd.Input("x", {batch, time, feat})
        w = rd.Input("w", (batch, win, feat))
        with rd.Loop() as loop:
            x_t = loop.unstack(x, axis="time")
            sm = loop.stack(rd.log_softmax(x_t, "feat"))
            top = loop.stack(rd.reduce_max(x_t, "feat"))
            first, second = (loop.stack(part) for part in rd.split(x_t, 2, "feat"))
        over_time = rd.softmax(x, "time")
        total = rd.reduce_sum(x, "time")
        with rd.Loop() as by_win:
            w_sum = by_win.last(rd.reduce_sum(by_win.unstack(w, axis="win"), "feat"))
        with rd.Loop(max_seq_len=3) as loop2:
            frames = loop2.stack(rd.gather(w, loop2.index, "win"))
            loop2.end(loop2.index >= 2, include_eos=True)
    x_np, w_np = _input(rng), rng.standard_normal((3, 3, 4)).astype(np.float32)
    res = g.run({"x": x_np, "w": w_np}, seq_lens={time: LENS})
    x64, w64 = x_np.astype(np.float64), w_np.astype(np.float64)
    assert_frames_close(res.numpy(sm), np.log(_np_softmax(x64, -1)), LENS)
    assert_frames_close(res.numpy(top), x64.max(-1), LENS)
    assert_frames_close(res.numpy(first), x64[..., :2], LENS)
    assert_frames_close(res.numpy(second), x64[..., 2:], LENS)
    got_sm, got_total = res.numpy(over_time, order=(batch, time, feat)), res.numpy(total, order=(batch, feat))
    for b, n in enumerate(LENS):
        np.testing.assert_allclose(got_sm[b, :n], _np_softmax(x64[b, :n], 0), atol=ATOL)
        np.testing.assert_allclose(got_total[b], x64[b, :n].sum(0), atol=ATOL)
    np.testing.assert_allclose(res.numpy(w_sum), w64[:, -1].sum(-1), atol=ATOL)
    np.testing.assert_allclose(res.numpy(frames, order=(batch, loop2.axis, feat)), w64, atol=ATOL)


def test_where_of_a_label_and_a_label_number_is_a_label(rng):
    """rd.where(cond, y, 0) with y labels of vocab and 0 a label of it: labels, which an embedding reads, in run and
    stepper against numpy; a number outside the vocab gives plain ints."""
    time, vocab, emb = rd.Dim("time"), rd.Dim("vocab", 5), rd.Dim("emb", 3)
    with rd.Graph() as g:
        y = rd.Input("y", {batch, time}, dtype="int32", sparse_dim=vocab)
        embed = rd.Embedding(vocab, emb)
        with rd.Loop() as loop:
            y_t = loop.unstack(y)
            masked = rd.where(y_t >= 3, y_t, 0)
            out = loop.stack(embed(masked))
            assert masked.sparse_dim is vocab and rd.where(y_t >= 3, 0, y_t).sparse_dim is vocab
            assert rd.where(y_t >= 3, y_t, 7).sparse_dim is None  # 7 is no label of vocab
    y_np = rng.integers(0, 5, (3, 5)).astype(np.int32)
    y_np[1, 1:], y_np[2, 3:] = 99, -7  # garbage in the padding frames
    for optimize in (True, False):
        res = g.run({"y": y_np}, seq_lens={time: LENS}, optimize=optimize)
        table = res.param(embed.weight).astype(np.float64)
        assert_frames_close(res.numpy(out), table[np.where(y_np >= 3, y_np, 0).clip(0, 4)], LENS)
    st = g.stepper({"y": y_np}, seq_lens={time: LENS})
    st.step(2)
    np.testing.assert_array_equal(st.value(masked)[[0, 2]], np.where(y_np[[0, 2], 1] >= 3, y_np[[0, 2], 1], 0))
