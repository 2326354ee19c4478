"""g.train: RETURNN's own trainer on the emitted net, checked against numpy (the loss it reports, the update it
makes), on a task it must learn, with Ctrl-C, and with run/trace/stepper using what was learned."""
import os
import subprocess
import sys

import numpy as np
import pytest

import recdebug as rd

batch = rd.batch_dim


def rnn_tagger(hid_size=3):
    """A tanh RNN tagger: h_t = tanh(W x_t + U h_{t-1} + b); logits_t = V h_t + c; per-frame cross entropy."""
    time, feat, hid, classes = rd.Dim("time"), rd.Dim("feat", 2), rd.Dim("hid", hid_size), rd.Dim("classes", 2)
    with rd.Graph() as g:
        x = rd.Input("x", {batch, time, feat})
        y = rd.Input("y", {batch, time}, dtype="int32", sparse_dim=classes)
        lin_x, lin_h, lin_out = rd.Linear(hid), rd.Linear(hid), rd.Linear(classes)
        h = rd.State({batch, hid})
        with rd.Loop() as loop:
            h.assign(rd.tanh(lin_x(loop.unstack(x)) + lin_h(h.get())))
            logits = loop.stack(lin_out(h.get()))
        loss = rd.cross_entropy(logits, y)
    return g, time, loss, logits


def numpy_loss(p: dict, x, y, lens) -> float:
    """The mean cross entropy over the valid frames, computed in numpy (padding frames never read)."""
    return numpy_loss_perturbed(p, x, y, lens)


def ragged_data(rng, n=6, T=5):
    x = rng.standard_normal((n, T, 2)).astype(np.float32)
    y = rng.integers(0, 2, (n, T)).astype(np.int32)
    lens = rng.integers(1, T + 1, n).astype(np.int32)
    lens[0] = T
    pad = np.arange(T)[None, :] >= lens[:, None]
    x[pad] = 1e3  # garbage in the padding frames: must count for nothing
    y[pad] = 1
    return x, y, lens


def test_the_reported_loss_and_the_first_adam_step_agree_with_numpy(rng):
    g, time, loss, logits = rnn_tagger()
    x, y, lens = ragged_data(rng)
    before = g.run({"x": x, "y": y}, seq_lens={time: lens}).params()
    lr = 0.01
    hist = g.train({"x": x, "y": y}, seq_lens={time: lens}, loss=loss, steps=1, learning_rate=lr,
                   batch_size=len(x), progress=False)  # one step on all the sequences
    assert hist.steps == 1 and not hist.interrupted
    np.testing.assert_allclose(hist.losses[0], numpy_loss({k: v.astype(np.float64) for k, v in before.items()},
                                                          x, y, lens), rtol=1e-5)
    after = g.trained_params
    # Adam's first step moves every parameter by learning_rate against the sign of its gradient: the gradient's
    # sign from central finite differences of the numpy loss
    p64 = {k: v.astype(np.float64) for k, v in before.items()}
    checked = 0
    for name, value in p64.items():
        for i in np.ndindex(value.shape):
            eps = 1e-5
            plus, minus = {**p64, name: value.copy()}, {**p64, name: value.copy()}
            plus[name][i] += eps
            minus[name][i] -= eps
            grad = (numpy_loss(plus, x, y, lens) - numpy_loss(minus, x, y, lens)) / (2 * eps)
            if abs(grad) > 1e-4:
                np.testing.assert_allclose(after[name][i] - before[name][i], -lr * np.sign(grad), rtol=1e-3,
                                           err_msg=f"{name}{i}")
                checked += 1
    assert checked > 20


def test_an_lstm_learns_running_parity_and_run_trace_stepper_use_what_it_learned(rng):
    g, time, classes, lstm, logits, loss = parity_lstm(feat_size=2, hid_size=12)
    hid = lstm.out_dim
    n, T = 64, 16
    x_np = rng.integers(0, 2, (n, T, 2)).astype(np.float32)
    y_np = (np.cumsum(x_np[:, :, 0], axis=1) % 2).astype(np.int32)  # the parity of the ones so far
    lens = rng.integers(4, T + 1, n).astype(np.int32)
    valid = np.arange(T)[None, :] < lens[:, None]
    x_np[~valid], y_np[~valid] = 7.0, 1
    hist = g.train({"x": x_np, "y": y_np}, seq_lens={time: lens}, loss=loss, steps=250, learning_rate=1e-2,
                   batch_size=16, seed=0, progress=False)
    assert hist.losses[-1] < hist.losses[0] / 2 and hist.losses[0] == pytest.approx(np.log(2), abs=0.05)
    res = g.run({"x": x_np, "y": y_np}, seq_lens={time: lens})
    for name, value in g.trained_params.items():
        np.testing.assert_array_equal(res.param(name), value)
    pred = res.numpy(logits, order=(batch, time, classes)).argmax(-1)
    assert (pred == y_np)[valid].mean() >= 0.95
    tr = g.trace({"x": x_np[:4], "y": y_np[:4]}, seq_lens={time: lens[:4]})
    st = g.stepper({"x": x_np[:4], "y": y_np[:4]}, seq_lens={time: lens[:4]})
    st.run_to(3)
    np.testing.assert_allclose(st.value(lstm.h), tr.numpy(lstm.h, order=(time, batch, hid))[2], atol=1e-5)
    np.testing.assert_allclose(tr.numpy(logits, order=(batch, time, classes))[valid[:4]],
                               res.numpy(logits, order=(batch, time, classes))[:4][valid[:4]], atol=1e-5)


def test_ctrl_c_stops_training_and_keeps_what_was_learned():
    code = """
import os, signal, sys, threading
sys.path.insert(0, %r)
import numpy as np
from test_train import rnn_tagger, ragged_data
g, time, loss, logits = rnn_tagger()
x, y, lens = ragged_data(np.random.default_rng(0), n=8)
g.train({"x": x, "y": y}, seq_lens={time: lens}, loss=loss, steps=1, progress=False)  # built and warm
first = {k: v.copy() for k, v in g.trained_params.items()}
threading.Timer(2.0, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
hist = g.train({"x": x, "y": y}, seq_lens={time: lens}, loss=loss, steps=10**7, learning_rate=1e-3,
               batch_size=4, progress=False)
res = g.run({"x": x, "y": y}, seq_lens={time: lens})
print("RESULT", hist.interrupted, hist.steps > 10, hist.steps < 10**7,
      all(np.array_equal(res.param(k), v) for k, v in g.trained_params.items()),
      any(not np.array_equal(first[k], v) for k, v in g.trained_params.items()))
""" % os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "RESULT True True True True True" in proc.stdout, proc.stdout[-2000:]


def test_bad_training_arguments_get_clear_errors(rng):
    g, time, loss, logits = rnn_tagger()
    x, y, lens = ragged_data(rng)
    feeds = {"x": x, "y": y}
    with pytest.raises(rd.RecDebugError, match="expects an rd.Tensor"):
        g.train(feeds, seq_lens={time: lens}, loss="loss")
    with pytest.raises(rd.RecDebugError, match="steps must be"):
        g.train(feeds, seq_lens={time: lens}, loss=loss, steps=-1)
    with pytest.raises(rd.RecDebugError, match="batch_size must be"):
        g.train(feeds, seq_lens={time: lens}, loss=loss, batch_size=0.5)
    with pytest.raises(rd.RecDebugError, match="after the loop"):
        g.train(feeds, seq_lens={time: lens}, loss=g.loops[0].ops[-1].out)
    with pytest.raises(rd.RunError, match="one length per sequence"):
        g.train(feeds, seq_lens={time: lens[:3]}, loss=loss)


def parity_lstm(feat_size=3, hid_size=8):
    """An LSTM tagger: per frame, 2 classes from the LSTM's h; per-frame cross entropy."""
    time, feat, hid = rd.Dim("time"), rd.Dim("feat", feat_size), rd.Dim("hid", hid_size)
    classes = rd.Dim("classes", 2)
    with rd.Graph() as g:
        x = rd.Input("x", {batch, time, feat})
        y = rd.Input("y", {batch, time}, dtype="int32", sparse_dim=classes)
        lstm, lin_out = rd.LSTM(hid), rd.Linear(classes)
        with rd.Loop() as loop:
            logits = loop.stack(lin_out(lstm(loop.unstack(x))))
        loss = rd.cross_entropy(logits, y)
    return g, time, classes, lstm, logits, loss


def parity_data(rng, n=16, T=10):
    x = rng.integers(0, 2, (n, T, 3)).astype(np.float32)
    lens = rng.integers(3, T + 1, n).astype(np.int32)
    y = (np.cumsum(x[:, :, 0], axis=1) % 2).astype(np.int32)
    pad = np.arange(T)[None, :] >= lens[:, None]
    x[pad], y[pad] = -5.0, 1
    return x, y, lens


def mean_ce(res, logits, classes, time, y, lens) -> float:
    """The mean cross entropy over the valid frames, in numpy, from a run's logits."""
    z = res.numpy(logits, order=(batch, time, classes)).astype(np.float64)
    y = y[:, :z.shape[1]]  # the run's axis ends at the longest sequence
    logp = z - z.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    valid = np.arange(y.shape[1])[None, :] < lens[:, None]
    return float(-np.take_along_axis(logp, y[..., None], -1)[..., 0][valid].mean())


def test_save_then_load_into_a_fresh_graph_and_returnns_command_line_trains_on(rng, tmp_path, shell):
    g, time, classes, lstm, logits, loss = parity_lstm()
    x, y, lens = parity_data(rng)
    feeds = {"x": x, "y": y}
    g.train(feeds, seq_lens={time: lens}, loss=loss, steps=20, learning_rate=1e-2, batch_size=8, progress=False)
    trained = g.run(feeds, seq_lens={time: lens})
    config = g.save(tmp_path / "model", inputs=feeds, seq_lens={time: lens})
    assert (tmp_path / "model" / "model.001.index").exists()
    text = open(config).read()
    assert "network = {" in text and "extern_data = {" in text and "'loss': 'as_is'" in text

    g2, time2, classes2, lstm2, logits2, loss2 = parity_lstm()  # built again, as a later session would
    for source in ({"params": str(tmp_path / "model")}, {}):
        if not source:
            g2.load(tmp_path / "model")
        res = g2.run(feeds, seq_lens={time2: lens}, **source)
        np.testing.assert_array_equal(res.numpy(logits2, order=(batch, time2, classes2)),
                                      trained.numpy(logits, order=(batch, time, classes)))
    tr = g2.trace(feeds, seq_lens={time2: lens})
    valid = np.arange(x.shape[1])[None, :lens.max()] < lens[:, None]
    np.testing.assert_allclose(tr.numpy(logits2, order=(batch, time2, classes2))[valid],
                               trained.numpy(logits, order=(batch, time, classes))[valid], atol=1e-5)

    # RETURNN's own command line: load the config and the checkpoint, train one more epoch on the saved data
    env = dict(os.environ, DISABLE_CUDA="1")
    proc = subprocess.run([sys.executable, "-m", "returnn", config, "++num_epochs", "2"], cwd=tmp_path / "model",
                          capture_output=True, text=True, timeout=600, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "loading weights from" in out and "model.001" in out and "start training at epoch 2" in out
    score = float(out.split("epoch 2 score: ")[1].split()[0])
    # its one step (all 16 sequences: max_seqs 32) scored the saved parameters: the same mean loss per valid
    # frame as numpy computes from recdebug's run
    assert score == pytest.approx(mean_ce(trained, logits, classes, time, y, lens), rel=1e-4)
    assert (tmp_path / "model" / "model.002.index").exists()
    after = g2.load(tmp_path / "model")  # the newest checkpoint: epoch 2
    assert any(not np.array_equal(after[k], g.trained_params[k]) for k in after)

    # %%recloop --params DIR
    shell.run_cell("%load_ext recdebug")
    shell.user_ns.update(x_save=x, y_save=y, lens_save=lens, rd=rd, time=time2,
                         **{"feat": rd.Dim("feat", 3), "hid": rd.Dim("hid", 8), "classes": rd.Dim("classes", 2)})
    r = shell.run_cell(f"%%recloop --params {tmp_path / 'model'} --feed x=x_save --feed y=y_save "
                       f"--lens time=lens_save -o saved\n" + '''
x = rd.Input("x", {rd.batch_dim, time, feat})
y = rd.Input("y", {rd.batch_dim, time}, dtype="int32", sparse_dim=classes)
lstm, lin_out = rd.LSTM(hid), rd.Linear(classes)
with rd.Loop() as loop:
    logits = loop.stack(lin_out(lstm(loop.unstack(x))))
''')
    assert r.success, r.error_in_exec
    saved = shell.user_ns["saved"]
    for name, value in after.items():
        np.testing.assert_array_equal(saved.param(name), value)
    saved.close()
    with pytest.raises(rd.RecDebugError, match="no RETURNN checkpoint"):
        g2.load(tmp_path)


def numpy_loss_perturbed(p: dict, x, y, lens, b0=None, t0=None, delta=None) -> float:
    """numpy_loss with ``delta`` added to sequence b0's h right after step t0 (before the output layer reads it)."""
    total, frames = 0.0, 0
    for b in range(x.shape[0]):
        h = np.zeros(p["linear_1/weight"].shape[1])
        for t in range(lens[b]):
            h = np.tanh(x[b, t] @ p["linear/weight"] + p["linear/bias"] + h @ p["linear_1/weight"] + p["linear_1/bias"])
            if b == b0 and t == t0:
                h = h + delta
            z = h @ p["linear_2/weight"] + p["linear_2/bias"]
            total += np.log(np.exp(z - z.max()).sum()) + z.max() - z[y[b, t]]
            frames += 1
    return total / frames


def test_gradients_through_time_agree_with_finite_differences(rng):
    """g.trace(grad_of=loss) records dLoss/dh_t per step: central differences of the numpy loss, perturbing h of one
    sequence right after step t, agree at 1e-3 relative; padding steps get none."""
    g, time, loss, logits = rnn_tagger()
    x, y, lens = ragged_data(rng)
    tr = g.trace({"x": x, "y": y}, seq_lens={time: lens}, grad_of=loss)
    p = {k: v.astype(np.float64) for k, v in g.run({"x": x, "y": y}, seq_lens={time: lens}).params().items()}
    h = g.states[0]
    grad = tr.grad(h)  # (batch, time, hid)
    assert grad.shape == (6, 5, 3)
    assert tr.loss == pytest.approx(numpy_loss(p, x, y, lens), rel=1e-5)
    eps = 1e-5
    for b in range(3):
        for t in range(lens[b]):
            for u in range(3):
                d = np.zeros(3)
                d[u] = eps
                fd = (numpy_loss_perturbed(p, x, y, lens, b, t, d) - numpy_loss_perturbed(p, x, y, lens, b, t, -d)) \
                    / (2 * eps)
                assert grad[b, t, u] == pytest.approx(fd, rel=1e-3, abs=1e-7), (b, t, u)
        assert np.all(grad[b, lens[b]:] == 0)
    with pytest.raises(rd.RecDebugError, match="grad_of"):
        g.trace({"x": x, "y": y}, seq_lens={time: lens}, grad_of=g.loops[0].ops[-1].out)  # inside the loop


def test_the_debugger_draws_the_gradient_norm_per_step_beside_the_state(rng):
    g, time, loss, logits = rnn_tagger()
    x, y, lens = ragged_data(rng)
    tr = g.trace({"x": x, "y": y}, seq_lens={time: lens}, grad_of=loss)
    d = rd.debugger(tr)
    view = d.views["loop/h"]
    for b in (0, 2):
        d.select_sequence(b)
        norms = np.frombuffer(view.grad_norms, np.float32)
        np.testing.assert_allclose(norms, np.linalg.norm(tr.grad(g.states[0])[b], axis=-1), rtol=1e-5)
    assert rd.debugger(g.trace({"x": x, "y": y}, seq_lens={time: lens})).views["loop/h"].grad_norms == b""


def test_unit_selection_in_the_trace_and_by_brushing_the_heatmap(rng):
    g, time, loss, logits = rnn_tagger(hid_size=6)
    x, y, lens = ragged_data(rng)
    tr = g.trace({"x": x, "y": y}, seq_lens={time: lens})
    h = g.states[0]
    values = tr.numpy(h, order=(batch, time, next(d for d in h.dims if d is not batch)))
    for b, (t0, t1, thr) in [(0, (1, 3, 0.2)), (0, (0, 4, -0.1)), (2, (0, lens[2] - 1, 0.0))]:
        window = values[b, t0:t1 + 1]
        expected = [u for u in range(6) if (window[:, u] >= thr).all()] if thr >= 0 else \
            [u for u in range(6) if (window[:, u] <= thr).all()]
        assert tr.units_matching(h, t0, t1, thr, sequence=b) == expected
    with pytest.raises(rd.RecDebugError, match="padding"):
        tr.units_matching(h, 0, lens[1], 0.1, sequence=1)
    d = rd.debugger(tr)
    view = d.views["loop/h"]
    d.threshold.value = 0.2
    view.brush = [3, 1]  # what a drag over t=3..1 in the page sends
    assert view.highlight == tr.units_matching(h, 1, 3, 0.2) and "at every t=1…3" in view.units_text
    d.select_sequence(2)
    assert d.select_units("loop/h", 0, 10, -0.1) == tr.units_matching(h, 0, lens[2] - 1, -0.1, sequence=2)


def test_a_decoder_trained_with_teacher_forcing_then_searches_the_reversed_input(rng):
    """An encoder LSTM and a decoder with rd.choice: trained on reference labels (targets=, the per-step cross
    entropy of the choice's logits against the label it was fed), then beam search reverses unseen inputs."""
    src_t, vocab, emb, hid = rd.Dim("src_t"), rd.Dim("vocab", 6), rd.Dim("emb", 8), rd.Dim("hid", 32)
    with rd.Graph() as g:
        src = rd.Input("src", {batch, src_t}, dtype="int32", sparse_dim=vocab)
        embed, enc = rd.Embedding(vocab, emb), rd.LSTM(hid)
        with rd.Loop() as enc_loop:
            enc(embed(enc_loop.unstack(src)))
        dec_emb, lin_h, lin_out = rd.Embedding(vocab, emb), rd.Linear(hid), rd.Linear(vocab)
        label = rd.State({batch}, initial=0, dtype="int32", sparse_dim=vocab)
        h = rd.State({batch, hid}, initial=enc.h.get())
        with rd.Loop(max_seq_len=8) as loop:
            h.assign(rd.tanh(lin_h(rd.concat(dec_emb(label.get()), h.get()))))
            logits = lin_out(h.get())
            y = rd.choice(logits, beam_size=4)
            label.assign(y)
            loop.end(y == 0, include_eos=True)
            ce = loop.stack(rd.cross_entropy(logits, y))  # with targets: y is the reference label
            out = loop.stack(y)

    def reversed_task(n, T=5):
        s = rng.integers(1, 6, (n, T)).astype(np.int32)
        n_ = rng.integers(2, T + 1, n).astype(np.int32)
        t = np.zeros((n, T + 1), np.int32)  # the reversed frames, then EOS (0)
        for b in range(n):
            t[b, :n_[b]] = s[b, :n_[b]][::-1]
        s[np.arange(T)[None, :] >= n_[:, None]] = 5  # garbage in the padding
        return s, n_, t

    src_np, lens, tgt = reversed_task(256)
    hist = g.train({"src": src_np}, seq_lens={src_t: lens, y: lens + 1}, targets={y: tgt}, loss=ce, steps=400,
                   learning_rate=1e-2, batch_size=32, seed=0, progress=False)
    assert hist.losses[0] == pytest.approx(np.log(6), abs=0.1) and hist.losses[-1] < 0.05
    test_src, test_lens, test_tgt = reversed_task(16)
    res = g.run({"src": test_src}, seq_lens={src_t: test_lens}, search=True)
    got, n_out = res.numpy(out), res.lens(loop.axis)
    right = sum(got[b, :n_out[b]].tolist() == test_tgt[b, :test_lens[b] + 1].tolist() for b in range(16))
    assert right >= 14


@pytest.mark.parametrize("readout", ["last", "stack"])
def test_gradients_through_time_when_the_value_leaves_the_loop(rng, readout):
    """The State's new value read after the loop (loop.last, or loop.stack then a per-frame loss): the gradient
    includes that path (finite differences of the numpy loss)."""
    time, feat, hid, cls = rd.Dim("time"), rd.Dim("feat", 2), rd.Dim("hid", 3), rd.Dim("cls", 2)
    with rd.Graph() as g:
        x = rd.Input("x", {batch, time, feat})
        y = rd.Input("y", {batch} if readout == "last" else {batch, time}, dtype="int32", sparse_dim=cls)
        lin, out = rd.Linear(hid), rd.Linear(cls)
        h = rd.State({batch, hid})
        with rd.Loop() as loop:
            h_ = rd.tanh(lin(loop.unstack(x)) + h.get())
            h.assign(h_)
            read = loop.last(h_) if readout == "last" else loop.stack(h_)
        loss = rd.cross_entropy(out(read), y)
    x_np = rng.standard_normal((3, 4, 2)).astype(np.float32)
    lens = np.array([4, 3, 2], np.int32)
    y_np = rng.integers(0, 2, (3,) if readout == "last" else (3, 4)).astype(np.int32)
    tr = g.trace({"x": x_np, "y": y_np}, seq_lens={time: lens}, grad_of=loss)
    p = {k: v.astype(np.float64) for k, v in g.run({"x": x_np, "y": y_np}, seq_lens={time: lens}).params().items()}

    def numpy_loss(b0, t0, delta):
        total, n = 0.0, 0
        for b in range(3):
            hb = np.zeros(3)
            for t in range(lens[b]):
                hb = np.tanh(x_np[b, t] @ p["linear/weight"] + p["linear/bias"] + hb)
                if (b, t) == (b0, t0):
                    hb = hb + delta
                if readout == "stack" or t == lens[b] - 1:
                    z = hb @ p["linear_1/weight"] + p["linear_1/bias"]
                    label = y_np[b] if readout == "last" else y_np[b, t]
                    total += np.log(np.exp(z).sum()) - z[label]
                    n += 1
        return total / n

    grad = tr.grad(h)
    for b in range(3):
        for t in range(lens[b]):
            for u in range(3):
                d = np.zeros(3)
                d[u] = 1e-5
                fd = (numpy_loss(b, t, d) - numpy_loss(b, t, -d)) / 2e-5
                assert grad[b, t, u] == pytest.approx(fd, rel=1e-3, abs=1e-7), (b, t, u)


def test_training_from_the_same_parameters_and_seed_gives_the_same_result_whatever_ran_before(rng):
    g, time, loss, logits = rnn_tagger()
    x, y, lens = ragged_data(rng, n=8)
    feeds = {"x": x, "y": y}
    start = g.run(feeds, seq_lens={time: lens}).params()
    g.train(feeds, seq_lens={time: lens}, loss=loss, steps=5, batch_size=4, params=start, progress=False)
    first = dict(g.trained_params)
    g.train(feeds, seq_lens={time: lens}, loss=loss, steps=5, batch_size=4, params=start, progress=False)
    for name, value in g.trained_params.items():
        np.testing.assert_array_equal(value, first[name])


def test_a_trace_with_gradients_saves_and_loads_them(rng, tmp_path):
    g, time, loss, logits = rnn_tagger()
    x, y, lens = ragged_data(rng)
    tr = g.trace({"x": x, "y": y}, seq_lens={time: lens}, grad_of=loss)
    tr.save(tmp_path / "grads.npz")
    back = rd.Trace.load(tmp_path / "grads.npz")
    np.testing.assert_array_equal(back.grad("loop/h"), tr.grad(g.states[0]))
    assert back.entries["loop/h.grad"].kind == "grad"
    d = rd.debugger(back)
    np.testing.assert_allclose(np.frombuffer(d.views["loop/h"].grad_norms, np.float32),
                               np.linalg.norm(tr.grad(g.states[0])[0], axis=-1), rtol=1e-6)


def test_a_config_saved_before_the_layers_still_finds_the_rec_layer_extension():
    """A config of a nested loop saved by an earlier recdebug runs ``import recdebug.returnn_ext``: it still
    installs the extension (RETURNN's RecLayer then makes templates for an inner rec layer's sub-layers)."""
    from returnn.tf.layers.rec import RecLayer

    namespace = {}
    exec("import recdebug.returnn_ext\nrecdebug.returnn_ext.install()", namespace)
    assert "get_sub_layer_out_data_from_opts" in vars(RecLayer)
