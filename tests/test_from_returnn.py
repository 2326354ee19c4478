"""rd.from_returnn on RETURNN's own demo configs, trained briefly with RETURNN's command line.

Each in-loop layer that recdebug's trace records is checked against a numpy computation of the same unit from the
checkpoint's weights (read with TensorFlow's checkpoint reader, not through a RETURNN network), on ragged lengths
with garbage in the padding frames; the layer after the loop against RETURNN's own forward task (its command
line); the live stepper against the trace at every step.
"""
import copy

import numpy as np
import pytest

import recdebug as rd
from returnn_cli import DEMOS, evaluate, forward, train

ATOL = 1e-5
LSTM_CONFIG, ATT_CONFIG = "demo-tf-rec-explicit-lstm.config", "demo-tf-attention.config"


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def weights(ckpt) -> dict:
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(ckpt))
    return {k: reader.get_tensor(k).astype(np.float64) for k in reader.get_variable_to_shape_map()
            if "Adam" not in k and k != "global_step"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("returnn_demos")
    lstm = train(LSTM_CONFIG, root / "lstm", '{"class": "Task12AXDataset", "num_seqs": 200}',
                 '{"class": "Task12AXDataset", "num_seqs": 20, "fixed_random_seed": 42}')
    att = train(ATT_CONFIG, root / "att", '{"class": "TaskXmlModelingDataset", "num_seqs": 200}',
                '{"class": "TaskXmlModelingDataset", "num_seqs": 20, "fixed_random_seed": 42}')
    return {"lstm": lstm, "att": att, "root": root}


def lstm_feed(rng):
    lens = np.array([7, 1, 4, 2, 6])
    x = rng.standard_normal((5, 7, 9)).astype(np.float32)
    pad = np.arange(7)[None, :] >= lens[:, None]
    x[pad] = rng.uniform(-1e3, 1e3, size=(pad.sum(), 9))  # garbage in the padding frames
    return x, lens


def numpy_explicit_lstm(w, x, lens) -> dict:
    """The unit of demo-tf-rec-explicit-lstm.config: input = [prev:output, data:source], four gates, c, output."""
    B, T, _ = x.shape
    out = {k: np.zeros((B, T, 19 if k == "input" else 10)) for k in
           ("input", "input_gate", "forget_gate", "output_gate", "cell_in", "c", "output")}
    for b in range(B):
        h, c = np.zeros(10), np.zeros(10)
        for t in range(lens[b]):
            inp = np.concatenate([h, x[b, t]])
            lin = {g: inp @ w[f"lstm/rec/{g}/W"] + w[f"lstm/rec/{g}/b"]
                   for g in ("input_gate", "forget_gate", "output_gate", "cell_in")}
            ig, fg, og = sigmoid(lin["input_gate"]), sigmoid(lin["forget_gate"]), sigmoid(lin["output_gate"])
            ci = np.tanh(lin["cell_in"])
            c = ig * ci + fg * c
            h = og * c
            for k, v in (("input", inp), ("input_gate", ig), ("forget_gate", fg), ("output_gate", og),
                         ("cell_in", ci), ("c", c), ("output", h)):
                out[k][b, t] = v
    return out


def assert_frames(got, ref, lens, what, atol=ATOL):
    for b, n in enumerate(lens):
        np.testing.assert_allclose(got[b, :n], ref[b, :n], atol=atol, rtol=0, err_msg=f"{what}, sequence {b}")


def test_explicit_lstm_trace_equals_numpy_and_returnn_forward(trained, rng, tmp_path):
    x, lens = lstm_feed(rng)
    m = rd.from_returnn(DEMOS / LSTM_CONFIG, checkpoint=trained["lstm"])
    assert m.rec_layers == ["lstm"]
    tr = m.trace({"data": x}, seq_lens={"data": lens})
    np.testing.assert_array_equal(tr.lens("lstm:time"), lens)
    ref = numpy_explicit_lstm(weights(trained["lstm"]), x.astype(np.float64), lens)
    for name, want in ref.items():
        e = tr.entries[f"lstm/{name}"]
        assert e.kind == ("state" if name in ("c", "output") else "layer"), name
        rest = [d for d in e.dims if d not in ("batch", "lstm:time")]
        assert_frames(tr.numpy(f"lstm/{name}", order=["batch", "lstm:time"] + rest), want, lens, name)
    # the layer after the loop: recdebug's run and the trace's output through it, against RETURNN's forward task
    w = weights(trained["lstm"])
    probs = softmax(ref["output"] @ w["output/W"] + w["output/b"])
    res = m.run({"data": x}, seq_lens={"data": lens})
    assert_frames(res.numpy("output"), probs, lens, "run: output")
    fwd = forward(LSTM_CONFIG, trained["lstm"], tmp_path / "fwd",
                  [{"data": x[b, :n], "classes": np.zeros(n, np.int32)} for b, n in enumerate(lens)],
                  {"data": [9, 2], "classes": [2, 1]})
    for b, n in enumerate(lens):
        assert fwd[b].shape == (n, 2)
        np.testing.assert_allclose(fwd[b], probs[b, :n], atol=ATOL, rtol=0, err_msg=f"RETURNN forward, seq {b}")


def test_explicit_lstm_stepper_equals_trace_at_every_step(trained, rng):
    x, lens = lstm_feed(rng)
    m = rd.from_returnn(DEMOS / LSTM_CONFIG, checkpoint=trained["lstm"])
    tr = m.trace({"data": x}, seq_lens={"data": lens})
    st = m.stepper({"data": x}, seq_lens={"data": lens})
    assert [s.key for s in st.states] == ["lstm/c", "lstm/output"]
    assert st.T == 7
    np.testing.assert_array_equal(st.value("lstm/c"), 0)  # before t=0: the initial value
    layers = [k for k in tr.keys() if tr.entries[k].loop_axes]
    for t in range(st.T):
        st.step()
        for key in layers:
            e = tr.entries[key]
            rest = [d for d in e.dims if d not in ("batch", "lstm:time")]
            want = tr.numpy(key, order=["lstm:time", "batch"] + rest)[t]
            got = st.value(key)
            valid = t < lens
            np.testing.assert_allclose(got[valid], want[valid], atol=ATOL, rtol=0, err_msg=f"{key} at t={t}")
    assert st.finished and st.ended == {b: int(n) for b, n in enumerate(lens)}
    # a State keeps its last value after its sequence ended
    np.testing.assert_allclose(st.value("lstm/c")[1], tr.numpy("lstm/c", order=["batch", "lstm:time", "input_gate:feature-dense"])[1, 0], atol=ATOL)


def test_explicit_lstm_stepper_back_and_edit(trained, rng):
    x, lens = lstm_feed(rng)
    m = rd.from_returnn(DEMOS / LSTM_CONFIG, checkpoint=trained["lstm"])
    w = weights(trained["lstm"])
    st = m.stepper({"data": x}, seq_lens={"data": lens})
    st.step(3)
    c3 = st.value("lstm/c")
    st.step(2).step_back(2)
    np.testing.assert_array_equal(st.value("lstm/c"), c3)  # exact: nothing recomputed
    st.set_state("lstm/c", np.zeros_like(c3))
    st.set_state("lstm/output", np.ones_like(c3))
    st.step()
    # numpy of one step from the edited States
    valid = 3 < lens  # the sequences still running at t=3 (the others hold garbage there)
    inp = np.concatenate([np.ones((5, 10)), np.where(valid[:, None], x[:, 3], 0).astype(np.float64)], axis=1)
    g = {k: inp @ w[f"lstm/rec/{k}/W"] + w[f"lstm/rec/{k}/b"] for k in ("input_gate", "cell_in", "output_gate")}
    c = sigmoid(g["input_gate"]) * np.tanh(g["cell_in"])
    np.testing.assert_allclose(st.value("lstm/c")[valid], c[valid], atol=ATOL)
    np.testing.assert_allclose(st.value("lstm/output")[valid], (sigmoid(g["output_gate"]) * c)[valid], atol=ATOL)
    np.testing.assert_array_equal(st.value("lstm/c")[~valid], 0)  # ended sequences keep their (edited) value
    with pytest.raises(rd.RunError, match="shape"):
        st.set_state("lstm/c", np.zeros((5, 3)))
    with pytest.raises(rd.RecDebugError, match="no layer 'lstm/nothing' in the unit of 'lstm'; it has"):
        st.value("lstm/nothing")


def att_feed(rng):
    x_lens, y_lens = np.array([6, 2, 4, 1]), np.array([5, 3, 1, 2])
    x = rng.standard_normal((4, 6, 12)).astype(np.float32)
    pad = np.arange(6)[None, :] >= x_lens[:, None]
    x[pad] = rng.uniform(-1e3, 1e3, size=(pad.sum(), 12))
    y = rng.integers(0, 12, (4, 5)).astype(np.int32)
    return {"data": x, "classes": y}, {"data": x_lens, "classes": y_lens}


def numpy_attention_decoder(w, enc, ctx, x_lens, y, y_lens) -> dict:
    """The decoder unit of demo-tf-attention.config, the encoder's outputs given: orth_embed of the target label,
    s an LSTMBlock cell on [prev:c, prev:orth_embed], c_in, c = dot attention over the valid encoder frames,
    output = softmax over [prev:s, c]."""
    B, T = y.shape
    out = {"orth_embed": np.zeros((B, T, 10)), "s": np.zeros((B, T, 20)), "c_in": np.zeros((B, T, 20)),
           "c": np.zeros((B, T, 20)), "output": np.zeros((B, T, 12))}
    p = "output/rec/"
    for b in range(B):
        h, cell, c_prev, emb_prev = np.zeros(20), np.zeros(20), np.zeros(20), np.zeros(10)
        for t in range(y_lens[b]):
            emb = w[p + "orth_embed/W"][y[b, t]] + w[p + "orth_embed/b"]
            gates = np.concatenate([c_prev, emb_prev, h]) @ w[p + "s/rec/lstm_cell/kernel"] + \
                w[p + "s/rec/lstm_cell/bias"]
            i, ci, f, o = np.split(gates, 4)
            cell = sigmoid(f + 1.0) * cell + sigmoid(i) * np.tanh(ci)
            h_new = sigmoid(o) * np.tanh(cell)
            c_in = np.tanh(np.concatenate([h_new, emb_prev]) @ w[p + "c_in/W"] + w[p + "c_in/b"])
            n = x_lens[b]
            att = softmax(ctx[b, :n] @ c_in)
            c = att @ enc[b, :n]
            probs = softmax(np.concatenate([h, c]) @ w[p + "output/W"] + w[p + "output/b"])
            for k, v in (("orth_embed", emb), ("s", h_new), ("c_in", c_in), ("c", c), ("output", probs)):
                out[k][b, t] = v
            h, c_prev, emb_prev = h_new, c, emb
    return out


def test_attention_trace_equals_numpy_and_returnn_forward(trained, rng, tmp_path):
    inputs, lens = att_feed(rng)
    m = rd.from_returnn(DEMOS / ATT_CONFIG, checkpoint=trained["att"])
    assert m.rec_layers == ["output"]
    tr = m.trace(inputs, seq_lens=lens)
    y_lens = lens["classes"]
    np.testing.assert_array_equal(tr.lens("output:time"), y_lens)
    assert {e.key for e in tr.entries.values() if e.kind == "state"} == {"output/s", "output/c", "output/orth_embed"}
    res = m.run(inputs, seq_lens=lens)  # the encoder: RETURNN's forward of the layers before the loop
    enc, ctx = res.numpy("encoder").astype(np.float64), res.numpy("enc_ctx").astype(np.float64)
    ref = numpy_attention_decoder(weights(trained["att"]), enc, ctx, lens["data"], inputs["classes"], y_lens)
    for name, want in ref.items():
        e = tr.entries[f"output/{name}"]
        rest = [d for d in e.dims if d not in ("batch", "output:time")]
        assert_frames(tr.numpy(f"output/{name}", order=["batch", "output:time"] + rest), want, y_lens, name)
    # RETURNN's eval task (its forward task cannot build this config: the targets the decoder reads are not
    # available to it): the loss per sequence, cross-entropy of the decoder's output
    scores = evaluate(ATT_CONFIG, trained["att"], tmp_path / "eval",
                      [{"data": inputs["data"][b, :lens["data"][b]], "classes": inputs["classes"][b, :n]}
                       for b, n in enumerate(y_lens)], {"data": [12, 2], "classes": [12, 1]})
    for b, n in enumerate(y_lens):  # RETURNN's score of a sequence: the mean cross-entropy over its frames
        ce = -np.log(ref["output"][b, np.arange(n), inputs["classes"][b, :n]])
        assert scores[b] == pytest.approx(ce.mean(), abs=1e-5), (b, scores[b], ce.mean())


def test_attention_stepper_equals_trace_at_every_step(trained, rng):
    inputs, lens = att_feed(rng)
    m = rd.from_returnn(DEMOS / ATT_CONFIG, checkpoint=trained["att"])
    tr = m.trace(inputs, seq_lens=lens)
    st = m.stepper(inputs, seq_lens=lens)
    y_lens = lens["classes"]
    assert st.T == 5
    for t in range(st.T):
        st.step()
        for key in tr.keys():
            e = tr.entries[key]
            rest = [d for d in e.dims if d not in ("batch", "output:time")]
            want = tr.numpy(key, order=["output:time", "batch"] + rest)[t]
            valid = t < y_lens
            np.testing.assert_allclose(st.value(key)[valid], want[valid], atol=ATOL, rtol=0,
                                       err_msg=f"{key} at t={t}")
    assert st.finished


def test_model_errors_name_what_to_do(trained, rng, tmp_path):
    with pytest.raises(rd.RecDebugError, match="no config file"):
        rd.from_returnn(tmp_path / "missing.config")
    with pytest.raises(rd.RecDebugError, match="no RETURNN checkpoint"):
        rd.from_returnn(DEMOS / LSTM_CONFIG, checkpoint=tmp_path / "model.007")
    with pytest.raises(rd.RecDebugError, match="extern_data"):
        rd.from_returnn({"out": {"class": "copy", "from": "data"}})
    m = rd.from_returnn(DEMOS / LSTM_CONFIG, checkpoint=trained["lstm"])
    x, lens = lstm_feed(rng)
    with pytest.raises(rd.RunError, match="no extern_data 'x'"):
        m.trace({"x": x}, seq_lens={"data": lens})
    with pytest.raises(rd.RunError, match="axis 2 .* has size 4, expected 9"):
        m.trace({"data": x[..., :4]}, seq_lens={"data": lens})
    with pytest.raises(rd.RunError, match="lengths must be 1..7"):
        m.trace({"data": x}, seq_lens={"data": lens + 1})
    with pytest.raises(rd.RecDebugError, match="no rec layer 'nope'"):
        m.trace({"data": x}, seq_lens={"data": lens}, rec="nope")
    # a layer that keeps a hidden state of its own (a rec layer with an LSTM unit inside the unit): stepping is
    # refused with its name, the trace still works
    net = {"loop": {"class": "rec", "from": "data", "unit": {
        "inner": {"class": "rec", "unit": "lstm", "n_out": 4, "from": ["data:source", "prev:output"]},
        "output": {"class": "linear", "activation": "tanh", "n_out": 3, "from": "inner"}}}}
    m2 = rd.from_returnn(net, extern_data={"data": {"dim": 9}})
    tr = m2.trace({"data": x}, seq_lens={"data": lens})
    assert tr.numpy("loop/output", order=["batch", "loop:time", tr.dims_of("loop/output")[-1]]).shape == (5, 7, 3)
    with pytest.raises(rd.RecDebugError, match=r"(?s)loop/inner \(class .rec.\) keeps a hidden state.*m.trace"):
        m2.stepper({"data": x}, seq_lens={"data": lens})


def test_debugger_shows_the_configs_layers_and_lines(trained, rng):
    inputs, lens = att_feed(rng)
    m = rd.from_returnn(DEMOS / ATT_CONFIG, checkpoint=trained["att"])
    text = (DEMOS / ATT_CONFIG).read_text().splitlines()
    tr = m.trace(inputs, seq_lens=lens)
    d = rd.debugger(tr)
    assert sorted(d.views) == ["output/c", "output/orth_embed", "output/s"]  # the layers read with prev:
    nodes = {n["path"]: n for n in d.hierarchy.nodes}
    for path, cls in (("output", "rec"), ("output/s", "rnn_cell"), ("output/c", "dot_attention"),
                      ("output/output", "softmax"), ("encoder", "linear"), ("lstm0_fw", "rec")):
        node = nodes[path]
        assert node["cls"] == cls
        file, line = node["line"].split(":")
        assert file == ATT_CONFIG
        name = path.rsplit("/", 1)[-1]
        assert f'"{name}"' in text[int(line) - 1] or f"'{name}'" in text[int(line) - 1], (path, text[int(line) - 1])
    assert nodes["output/orth_embed"]["moved_out"] and nodes["output/s"]["in_loop"]
    assert "dot_attention" in d.net_text.value
    d.close()
    st = m.stepper(inputs, seq_lens=lens)
    d = rd.debugger(st)
    assert sorted(d.views) == ["output/c", "output/orth_embed", "output/s"]
    d.step()
    d.step()
    b = d.sequence
    np.testing.assert_array_equal(d.views["output/s"]._array[:2], np.stack([st.value("output/s", at=k)[b]
                                                                           for k in (1, 2)]))
    d.select_layer("output/c_in")
    np.testing.assert_array_equal(d.picked._array[:2], np.stack([st.value("output/c_in", at=k)[b] for k in (1, 2)]))
    st.step()  # driven from elsewhere: the debugger follows
    assert d.t == 3 and "3 of 5 steps" in d.status
    d.close()
    st.close()
    st = m.stepper(inputs, seq_lens=lens)  # a layer picked before the first step: empty until it runs
    d = rd.debugger(st, layers=["output/c_in"])
    d.step()
    np.testing.assert_array_equal(d.picked._array[0], st.value("output/c_in")[d.sequence])
    d.close()
    st.close()


SEARCH_NET = {  # an attention decoder that picks its own labels: a choice layer, an end layer, max_seq_len
    "encoder": {"class": "linear", "activation": "tanh", "from": "data", "n_out": 16},
    "enc_ctx": {"class": "linear", "activation": "tanh", "from": "encoder", "n_out": 16},
    "output": {"class": "rec", "from": [], "max_seq_len": "max_len_from('base:encoder') * 2", "include_eos": True,
               "unit": {
                   "embed": {"class": "linear", "activation": None, "from": "output", "n_out": 8},
                   "s": {"class": "rnn_cell", "unit": "LSTMBlock", "from": ["prev:c", "prev:embed"], "n_out": 16},
                   "c_in": {"class": "linear", "activation": "tanh", "from": ["s", "prev:embed"], "n_out": 16},
                   "c": {"class": "dot_attention", "from": "c_in", "base": "base:encoder", "base_ctx": "base:enc_ctx",
                         "n_out": 16},
                   "prob": {"class": "softmax", "from": ["s", "c"], "target": "classes"},
                   "output": {"class": "choice", "from": "prob", "target": "classes", "beam_size": 4,
                              "length_normalization": False},
                   "end": {"class": "compare", "from": "output", "value": 5}}},
}
SEARCH_DATA = {"data": {"dim": 5}, "classes": {"dim": 6, "sparse": True, "available_for_inference": False}}
ACCUM_ATTENTION = {  # SEARCH_NET's attention as the published setups write it: weight feedback from a State over the
    # encoder's axis, the accumulated attention weights
    "s_transformed": {"class": "linear", "activation": None, "with_bias": False, "from": "s", "n_out": 16},
    "weight_feedback": {"class": "linear", "activation": None, "with_bias": False, "from": "prev:accum_att_weights",
                        "n_out": 16},
    "energy_in": {"class": "combine", "kind": "add", "from": ["base:enc_ctx", "weight_feedback", "s_transformed"],
                  "n_out": 16},
    "energy_tanh": {"class": "activation", "activation": "tanh", "from": "energy_in"},
    "energy": {"class": "linear", "activation": None, "with_bias": False, "from": "energy_tanh", "n_out": 1},
    "att_weights": {"class": "softmax_over_spatial", "from": "energy"},
    "accum_att_weights": {"class": "combine", "kind": "add", "from": ["prev:accum_att_weights", "att_weights"],
                          "initial_output": 0},
    "c": {"class": "generic_attention", "weights": "att_weights", "base": "base:encoder"},
}


PUBLISHED = {  # ACCUM_ATTENTION as the 2018 published setups write it: the encoder max-pooled in time (its axis a
    # computed one), inverse fertility scaling the accumulated weights, the energy read from the LSTM's whole state of
    # the step before (get_last_hidden_state of prev:s)
    "top": {"encoder0": {"class": "linear", "activation": "tanh", "from": "data", "n_out": 16},
            "encoder": {"class": "pool", "mode": "max", "padding": "same", "pool_size": (2,), "from": "encoder0"},
            "inv_fertility": {"class": "linear", "activation": "sigmoid", "with_bias": False, "from": "encoder",
                              "n_out": 1}},
    "unit": {"prev_s_state": {"class": "get_last_hidden_state", "from": "prev:s", "n_out": 32},
             "s_transformed": {"class": "linear", "activation": None, "with_bias": False, "from": "prev_s_state",
                               "n_out": 16},
             "accum_att_weights": {"class": "eval", "from": ["prev:accum_att_weights", "att_weights",
                                                             "base:inv_fertility"],
                                   "eval": "source(0) + source(1) * source(2) * 0.5",
                                   "out_type": {"dim": 1, "shape": (None, 1)}}},
}


def search_model(rng, beam: int, accum: bool | str = False, length_normalization: bool = False):
    """SEARCH_NET with the given beam size (``accum``: its attention with accumulated weights, ACCUM_ATTENTION;
    ``"published"``: as the published setups have it, PUBLISHED), and its input: ragged lengths, garbage in the
    padding frames."""
    net = {k: dict(v) for k, v in SEARCH_NET.items()}
    net["output"]["unit"] = {k: dict(v) for k, v in net["output"]["unit"].items()}
    net["output"]["unit"]["output"]["beam_size"] = beam
    if length_normalization:  # RETURNN's default, which the published setups keep
        del net["output"]["unit"]["output"]["length_normalization"]
    if accum:
        del net["output"]["unit"]["c"]
        net["output"]["unit"].update(ACCUM_ATTENTION)
    if accum == "published":
        del net["encoder"]
        net = {**PUBLISHED["top"], **net}
        net["output"]["unit"].update(PUBLISHED["unit"])
    x = rng.standard_normal((5, 4, 5)).astype(np.float32)
    lens = np.array([4, 2, 3, 1, 4])
    x[np.arange(4)[None, :] >= lens[:, None]] = 1e3
    return rd.from_returnn(net, extern_data=SEARCH_DATA), x, lens


@pytest.mark.parametrize("beam,accum,norm", [(4, False, False), (1, False, False), (4, True, False),
                                             (1, True, False), (4, "published", False), (1, "published", False),
                                             (4, False, True), (4, "published", True)])
def test_live_search_equals_returnns_own_search(rng, beam, accum, norm):
    """``norm``: the choice with RETURNN's length normalization: ended hypotheses' scores grow with the steps during
    the search, and the final ones are divided by the steps, as RETURNN's search does."""
    m, x, lens = search_model(rng, beam, accum, norm)
    res = m.run({"data": x}, seq_lens={"data": lens}, search=True)  # RETURNN's own beam search
    st = m.stepper({"data": x}, seq_lens={"data": lens}, search=True)
    assert st.beam == beam and st.T == (4 if accum == "published" else 8)  # max_len_from('base:encoder') * 2
    st.run_until(lambda s: False)
    assert st.finished
    beams = st.beams()
    got_lens = []
    for b in range(5):
        hyps = beams.hypotheses(b)
        best = hyps[0]
        n = int(res.lens("output")[b])
        got_lens.append(best["length"])
        assert best["labels"] == res.numpy("output")[b, :n].tolist(), b
        np.testing.assert_allclose(sorted((h["score"] for h in hyps), reverse=True), res.scores("output")[b],
                                   atol=ATOL, rtol=0, err_msg=f"final beam of sequence {b}")
    np.testing.assert_array_equal(got_lens, res.lens("output"))
    assert len(set(got_lens)) > 1 or accum == "published"  # hypotheses ended at different steps (the pooled
    # encoder's bound, 4 steps, ends them all)
    if beam > 1:
        d = rd.debugger(st)
        assert d.beam_tree is not None and len(d.beam_tree.nodes) == beams.shape[0] * beam
        d.close()
    st.close()


@pytest.mark.parametrize("beam,accum,norm", [(4, False, False), (1, False, False), (4, True, False),
                                             (4, "published", False), (4, False, True)])
def test_a_configs_search_trace_is_returnns_search_and_the_live_search_steps_through_it(rng, tmp_path, beam, accum,
                                                                                        norm):
    """m.trace(search=True): every hypothesis of every step as RETURNN's own search computed it. Checked against
    RETURNN's final beam (its decide layer), against RETURNN's loop fed the best hypotheses as targets, and the
    live search against it at every step, for every hypothesis not ended before the step (``accum``: with a State
    over the encoder's axis, its valid frames; ``norm``: RETURNN's length normalization, the final scores divided
    by the steps, also from the trace's file)."""
    m, x, lens = search_model(rng, beam, accum, norm)
    res = m.run({"data": x}, seq_lens={"data": lens}, search=True)
    tr = m.trace({"data": x}, seq_lens={"data": lens}, search=True)
    tr.save(tmp_path / "search.npz")
    for bm in (rd.Trace.load(tmp_path / "search.npz").beams("output/output"), tr.beams("output/output")):
        assert bm.shape[1:] == (5, beam)
        best = []
        for b in range(5):
            hyps = bm.hypotheses(b)
            n = int(res.lens("output")[b])
            assert hyps[0]["labels"] == res.numpy("output")[b, :n].tolist(), b
            np.testing.assert_allclose([h["score"] for h in hyps], res.scores("output")[b], atol=ATOL, rtol=0)
            best.append(hyps[0])
    np.testing.assert_array_equal(tr.lens("output:time"), res.lens("output"))

    # RETURNN's loop without search, fed the best hypotheses' labels: the same States along each of them
    y_lens = np.array([h["length"] for h in best])
    y = np.full((5, y_lens.max()), 99, np.int32) % 6  # padding labels: garbage
    for b, h in enumerate(best):
        y[b, :len(h["labels"])] = h["labels"]
    forced = m.trace({"data": x, "classes": y}, seq_lens={"data": lens, "classes": y_lens})
    for key in ("output/c", "output/embed", "output/s"):
        feat = next(d for d in forced.entries[key].dims if d not in ("batch", "output:time"))
        ref = forced.numpy(key, order=("batch", "output:time", feat))
        for b, h in enumerate(best):
            for t in range(h["length"]):
                np.testing.assert_allclose(bm.state(key, t, b, h["slots"][t]), ref[b, t], atol=ATOL, rtol=0,
                                           err_msg=f"{key} at t={t} along the best hypothesis of sequence {b}")

    # the live search: the same beams and every unit layer's values, step by step
    st = m.stepper({"data": x}, seq_lens={"data": lens}, search=True)
    st.run_until(lambda s: False)
    live = st.beams()
    steps = live.shape[0]
    np.testing.assert_array_equal(live.labels, bm.labels[:steps])
    np.testing.assert_array_equal(live.backpointers, bm.backpointers[:steps])
    np.testing.assert_allclose(live.scores, bm.scores[:steps], atol=ATOL, rtol=0)
    order = ["output:time", "batch", "beam"]
    states = {"output/c", "output/embed", "output/output", "output/accum_att_weights"} | \
        ({"output/s"} if accum == "published" else set())  # (read with prev: by get_last_hidden_state)
    enc = "time:var:extern_data:data"
    for key in ("output/s", "output/c_in", "output/c", "output/prob", "output/output", "output/embed") + \
            (("output/accum_att_weights", "output/att_weights") if accum else ()):
        rest = [d for d in tr.entries[key].dims if d not in order]
        if enc in rest:  # the live value's axes: batch first, then as the unit's template has them
            rest = [d for d in rest if d != enc] + [enc] if st.value(key).shape[-1] == x.shape[1] else [enc] + \
                [d for d in rest if d != enc]
        arr = tr.numpy(key, order=order + rest)
        before = key not in tr.after_choice
        assert before == st.key_before_choice(key) or key in states, key
        for t in range(steps):
            got, bp = st.value(key, at=t + 1), bm.backpointers[t]
            for b in range(5):
                for k in range(beam):
                    if t and bm.ended[t - 1, b, bp[b, k]]:
                        continue  # ended before this step: RETURNN's values there are its own padding
                    slot = bp[b, k] if before else k
                    value = got[b, k] if key in states else got[b, slot]  # a State: per new hypothesis
                    want = arr[t, b, slot]
                    if enc in rest:  # the encoder's valid frames
                        axis = rest.index(enc)
                        value, want = (np.take(a, np.arange(lens[b]), axis=axis) for a in (value, want))
                    np.testing.assert_allclose(value, want, atol=ATOL, rtol=0,
                                               err_msg=f"{key} at t={t}, sequence {b}, hypothesis {k}")
    st.close()
    d = rd.debugger(tr)
    assert "recorded trace" in d.status and f"labels {best[d.sequence]['labels']}" in d.status
    if beam > 1:
        assert len(d.beam_tree.nodes) == bm.shape[0] * beam
    d.close()


def test_a_configs_model_trains_as_returnns_trainer_and_saves_checkpoints_returnn_reads(rng, tmp_path):
    """m.train: one update of the whole batch from the same parameters gives RETURNN's command line's parameters
    (plain SGD, so that every gradient shows in them); m.save writes a checkpoint RETURNN's forward reads, equal to
    m.run; training lowers the config's loss, and a new stepper steps the trained model."""
    import tensorflow as tf
    from returnn_cli import returnn

    cfg = tmp_path / "lstm.config"
    cfg.write_text((DEMOS / LSTM_CONFIG).read_text() + '\noptimizer = {"class": "GradientDescent"}\nlearning_rate = 0.5\n'
                   'gradient_noise = 0.0\nlearning_rate_control = "constant"\n')
    m = rd.from_returnn(cfg)
    x, lens = lstm_feed(rng)
    y = rng.integers(0, 2, x.shape[:2]).astype(np.int32)
    feed, seq_lens = {"data": x, "classes": y}, {"data": lens, "classes": lens}
    start = m.save(tmp_path / "start" / "model.001")
    hist = m.train(feed, seq_lens, steps=1, batch_size=len(lens), progress=False)
    ours = m.save(tmp_path / "ours" / "model.001")

    data = tmp_path / "train_data.config"
    np.savez(tmp_path / "train.npz", **{f"{k}_{b}": v[b, :n] for b, n in enumerate(lens) for k, v in feed.items()})
    data.write_text("#!rnn.py\nimport numpy as _np\n"
                    f"_d = _np.load({str(tmp_path / 'train.npz')!r})\n"
                    "train = {'class': 'StaticDataset', 'output_dim': {'data': [9, 2], 'classes': [2, 1]}, 'data': "
                    f"[{{_k: _d['%s_%d' % (_k, _i)] for _k in ('data', 'classes')}} for _i in range({len(lens)})]}}\n"
                    "dev = None\n")
    returnn(cfg, data, "++task", "train", "++num_epochs", 1, "++model", tmp_path / "returnn" / "model",
            "++import_model_train_epoch1", start, "++batch_size", 100000, "++max_seqs", 100, "++log_verbosity", 2,
            cwd=tmp_path)
    theirs, mine, before = (tf.train.load_checkpoint(str(p)) for p in (tmp_path / "returnn" / "model.001", ours, start))
    names = [n for n in mine.get_variable_to_shape_map() if "/W" in n or "/b" in n]
    assert len(names) == 10  # five linear layers of the unit and the softmax: weights and biases
    for name in names:
        assert np.abs(mine.get_tensor(name) - before.get_tensor(name)).max() > 1e-4, name  # it moved
        np.testing.assert_allclose(mine.get_tensor(name), theirs.get_tensor(name), atol=1e-5, rtol=0, err_msg=name)

    # RETURNN's own forward from the saved checkpoint: m.run's values
    res = m.run({"data": x}, seq_lens={"data": lens})
    got = forward(str(cfg), ours, tmp_path / "fwd", [{"data": x[b, :n]} for b, n in enumerate(lens)],
                  {"data": [9, 2]})
    for b, n in enumerate(lens):
        np.testing.assert_allclose(res.numpy("output")[b, :n], got[b], atol=ATOL, rtol=0)
    more = m.train(feed, seq_lens, steps=30, batch_size=2, progress=False)
    assert more.steps == 30 and np.mean(more.losses[-5:]) < hist.losses[0]
    st = m.stepper({"data": x}, seq_lens={"data": lens})
    st.run_to(st.T)
    tr = m.trace({"data": x}, seq_lens={"data": lens})
    c = tr.numpy("lstm/c", order=["lstm:time", "batch", tr.dims_of("lstm/c")[-1]])
    for t in range(st.T):
        live = st.value("lstm/c", at=t + 1)
        for b, n in enumerate(lens):
            if t < n:
                np.testing.assert_allclose(live[b], c[t, b], atol=ATOL, rtol=0)
    st.close()


def numpy_lstm_losses(w, x, y, lens, dc, dh) -> tuple[float, float]:
    """The explicit LSTM demo with ``dc``/``dh`` added to c and output at every step (float64): the config's
    objective (its softmax's cross entropy, summed over the valid frames) and the mean of the rec layer's output."""
    ce, total = 0.0, 0.0
    for b, n in enumerate(lens):
        h, c = np.zeros(10), np.zeros(10)
        for t in range(n):
            inp = np.concatenate([h, x[b, t]])
            lin = {g: inp @ w[f"lstm/rec/{g}/W"] + w[f"lstm/rec/{g}/b"]
                   for g in ("input_gate", "forget_gate", "output_gate", "cell_in")}
            c = sigmoid(lin["input_gate"]) * np.tanh(lin["cell_in"]) + sigmoid(lin["forget_gate"]) * c + dc[b, t]
            h = sigmoid(lin["output_gate"]) * c + dh[b, t]
            ce -= np.log(softmax(h @ w["output/W"] + w["output/b"])[y[b, t]])
            total += h.sum()
    return ce, total / (lens.sum() * 10)


def test_a_configs_trace_records_gradients_through_time_as_numpy_differentiates(trained, rng):
    """m.trace(grad_of=...): dLoss/dc_t and dLoss/doutput_t at every valid step equal central differences of the
    loop computed in numpy (float64), for the config's objective and for the mean of a layer; padding steps hold
    zeros; the debugger draws their norms."""
    m = rd.from_returnn(DEMOS / LSTM_CONFIG, checkpoint=trained["lstm"])
    w = weights(trained["lstm"])
    x, lens = lstm_feed(rng)
    y = rng.integers(0, 2, x.shape[:2]).astype(np.int32)
    feed, seq_lens = {"data": x, "classes": y}, {"data": lens, "classes": lens}
    x64, zero, eps = x.astype(np.float64), np.zeros(x.shape[:2] + (10,)), 1e-5
    for grad_of, which in (("objective", 0), ("lstm", 1)):
        tr = m.trace(feed, seq_lens=seq_lens, grad_of=grad_of)
        assert tr.loss == pytest.approx(numpy_lstm_losses(w, x64, y, lens, zero, zero)[which], rel=1e-5)
        for state in ("c", "output"):
            got = tr.grad(f"lstm/{state}", order=["batch", "lstm:time", tr.dims_of(f"lstm/{state}.grad")[-1]])
            want = np.zeros_like(zero)
            for b, n in enumerate(lens):
                for t in range(n):
                    for u in range(10):
                        d = np.zeros_like(zero)
                        d[b, t, u] = eps
                        plus = numpy_lstm_losses(w, x64, y, lens, *((d, zero) if state == "c" else (zero, d)))
                        minus = numpy_lstm_losses(w, x64, y, lens, *((-d, zero) if state == "c" else (zero, -d)))
                        want[b, t, u] = (plus[which] - minus[which]) / (2 * eps)
            assert np.abs(want).max() > 1e-3
            np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4, err_msg=f"{grad_of}: d/d {state}")
    d = rd.debugger(tr)
    norms = np.frombuffer(d.views["lstm/c"].grad_norms, np.float32)
    got = tr.grad("lstm/c", order=["batch", "lstm:time", tr.dims_of("lstm/c.grad")[-1]])[d.sequence]
    np.testing.assert_allclose(norms[:lens[d.sequence]], np.linalg.norm(got, axis=1)[:lens[d.sequence]], rtol=1e-5)
    d.close()
    with pytest.raises(rd.RecDebugError, match="grad_of"):
        m.trace(feed, seq_lens=seq_lens, grad_of=3)


def test_explicit_rnn_demo_and_trace_files(rng, tmp_path):
    """demo-tf-rec-explicit-rnn.config (a tanh RNN whose output reads prev:output), trained briefly with RETURNN's
    command line: trace against numpy from the checkpoint's weights, stepper against the trace, and the trace saved
    and loaded with what the debugger shows."""
    ckpt = train("demo-tf-rec-explicit-rnn.config", tmp_path / "rnn", '{"class": "Task12AXDataset", "num_seqs": 100}',
                 '{"class": "Task12AXDataset", "num_seqs": 10, "fixed_random_seed": 42}')
    m = rd.from_returnn(DEMOS / "demo-tf-rec-explicit-rnn.config", checkpoint=ckpt)
    x, lens = lstm_feed(rng)
    tr = m.trace({"data": x}, seq_lens={"data": lens})
    w = weights(ckpt)
    h = np.zeros((5, 20))
    ref = np.zeros((5, 7, 20))
    for t in range(7):
        h_new = np.tanh(np.concatenate([h, x[:, t].astype(np.float64)], axis=1) @ w["rnn/rec/output/W"]
                        + w["rnn/rec/output/b"])
        h = np.where((t < lens)[:, None], h_new, h)
        ref[:, t] = h
    feat = tr.dims_of("rnn/output")[-1]
    assert_frames(tr.numpy("rnn/output", order=["batch", "rnn:time", feat]), ref, lens, "rnn/output")
    st = m.stepper({"data": x}, seq_lens={"data": lens})
    st.run_until(lambda s: False)
    got = np.stack([st.value("rnn/output", at=t + 1) for t in range(7)], axis=1)
    assert_frames(got, tr.numpy("rnn/output", order=["batch", "rnn:time", feat]), lens, "stepper")
    path = tmp_path / "rnn.npz"
    tr.save(path)
    loaded = rd.Trace.load(path)
    np.testing.assert_array_equal(loaded.numpy("rnn/output"), tr.numpy("rnn/output"))
    assert loaded.hierarchy == tr.hierarchy and loaded.net_text == tr.net_text
    d = rd.debugger(loaded)
    assert list(d.views) == ["rnn/output"]
    assert any(n["path"] == "rnn/output" and n["line"].startswith("demo-tf-rec-explicit-rnn.config:")
               for n in d.hierarchy.nodes)
    d.close()


def test_enc_dec_demo_trace_against_returnns_eval_and_refused_stepping(rng, tmp_path):
    """demo-tf-enc-dec.config: its decoder's unit holds a rec layer with a native LSTM unit (a layer with a hidden
    state of its own) and a choice layer. The trace records it (teacher-forced over classes0, the targets with EOS
    appended by a layer of the config); its softmax gives RETURNN's own per-sequence loss; stepping is refused by
    name."""
    ckpt = train("demo-tf-enc-dec.config", tmp_path / "encdec",
                 '{"class": "TaskNumberBaseConvertDataset", "num_seqs": 100}',
                 '{"class": "TaskNumberBaseConvertDataset", "num_seqs": 10, "fixed_random_seed": 42}')
    m = rd.from_returnn(DEMOS / "demo-tf-enc-dec.config", checkpoint=ckpt)
    x = rng.integers(0, 8, (4, 6)).astype(np.int32)
    x_lens = np.array([6, 3, 4, 1])
    y = rng.integers(0, 2, (4, 9)).astype(np.int32)
    y_lens = np.array([9, 5, 7, 2])
    x[np.arange(6)[None, :] >= x_lens[:, None]] = 7  # (labels: the padding must still be valid labels)
    tr = m.trace({"data": x, "classes": y}, seq_lens={"data": x_lens, "classes": y_lens})
    np.testing.assert_array_equal(tr.lens("output:time"), y_lens + 1)  # one step more: the EOS label 2
    prob = tr.numpy("output/prob", order=["batch", "output:time", tr.dims_of("output/prob")[-1]])
    scores = evaluate("demo-tf-enc-dec.config", ckpt, tmp_path / "eval",
                      [{"data": x[b, :x_lens[b]], "classes": y[b, :n]} for b, n in enumerate(y_lens)],
                      {"data": [8, 1], "classes": [2, 1]}, loss="output/prob")
    for b, n in enumerate(y_lens):
        target = np.concatenate([y[b, :n], [2]])
        ce = -np.log(prob[b, np.arange(n + 1), target].astype(np.float64))
        assert scores[b] == pytest.approx(ce.mean(), abs=1e-5), b
    with pytest.raises(rd.RecDebugError, match=r"(?s)output/s \(class 'rec'\) keeps a hidden state.*m.trace"):
        m.stepper({"data": x, "classes": y}, seq_lens={"data": x_lens, "classes": y_lens})


def test_builds_in_any_order_feed_their_own_lengths(rng):
    """The dims of a config are shared by every build of it: run, trace, stepper and run again, each with other
    lengths, read their own (run after trace once failed to feed its lengths)."""
    m = rd.from_returnn(DEMOS / LSTM_CONFIG)
    x, lens = lstm_feed(rng)
    first = m.run({"data": x}, seq_lens={"data": lens}).numpy("output")
    tr = m.trace({"data": x}, seq_lens={"data": lens})
    st = m.stepper({"data": x[:3]}, seq_lens={"data": lens[:3]})
    again = m.run({"data": x}, seq_lens={"data": lens})
    np.testing.assert_array_equal(again.lens("output"), lens)
    assert_frames(again.numpy("output"), first, lens, "run again")
    np.testing.assert_array_equal(m.trace({"data": x[:2]}, seq_lens={"data": lens[:2]}).lens("lstm:time"), lens[:2])
    assert st.T == 7 and st.run_to(7).ended == {0: 7, 1: 1, 2: 4}
    np.testing.assert_array_equal(tr.lens("lstm:time"), lens)
    st.close()


def test_search_without_end_layer_is_refused_clearly(rng):
    net = {k: dict(v) for k, v in SEARCH_NET.items()}
    net["output"]["unit"] = {k: dict(v) for k, v in net["output"]["unit"].items() if k != "end"}
    m = rd.from_returnn(net, extern_data=SEARCH_DATA)
    x = rng.standard_normal((2, 4, 5)).astype(np.float32)
    with pytest.raises(rd.RecDebugError, match="no end layer: a search needs one"):
        m.stepper({"data": x}, seq_lens={"data": np.array([4, 2])}, search=True)
    with pytest.raises(rd.RecDebugError, match="no choice layer"):
        rd.from_returnn(DEMOS / LSTM_CONFIG).stepper({"data": np.zeros((1, 3, 9), np.float32)}, search=True)


def test_live_greedy_search_equals_numpy(rng):
    """Beam 1 against numpy of the decoder (from the model's own parameters): at each step the most probable label,
    fed back through its embedding, until the end label 5 (included) or max_len_from(encoder) * 2 steps; ragged
    input lengths with garbage in the padding frames. The live stepper's best hypothesis, and m.run(search=True)'s
    labels, lengths and final score (RETURNN's own search, read by the run both front ends share)."""
    import tensorflow as tf

    net = {k: dict(v) for k, v in SEARCH_NET.items()}
    net["output"]["unit"] = {k: dict(v) for k, v in net["output"]["unit"].items()}
    net["output"]["unit"]["output"]["beam_size"] = 1
    m = rd.from_returnn(net, extern_data=SEARCH_DATA)
    x = rng.standard_normal((5, 4, 5)).astype(np.float32)
    lens = np.array([4, 2, 3, 1, 4])
    x[np.arange(4)[None, :] >= lens[:, None]] = 1e3
    st = m.stepper({"data": x}, seq_lens={"data": lens}, search=True)
    st.run_until(lambda s: False)
    res = m.run({"data": x}, seq_lens={"data": lens}, search=True)
    b_ = m._build("templates_search", "output")
    with b_.tf_graph.as_default():
        w = {v.name.split(":")[0]: b_.session.run(v).astype(np.float64) for v in tf.compat.v1.global_variables()}
    p = "output/rec/"
    beams = st.beams()
    for b in range(5):
        n = lens[b]
        enc = np.tanh(x[b, :n].astype(np.float64) @ w["encoder/W"] + w["encoder/b"])
        ctx = np.tanh(enc @ w["enc_ctx/W"] + w["enc_ctx/b"])
        h, cell, c, emb = np.zeros(16), np.zeros(16), np.zeros(16), np.zeros(8)
        labels, score = [], 0.0
        for t in range(8):  # max_len_from('base:encoder') * 2: the longest input has 4 frames
            gates = np.concatenate([c, emb, h]) @ w[p + "s/rec/lstm_cell/kernel"] + w[p + "s/rec/lstm_cell/bias"]
            i, ci, f, o = np.split(gates, 4)
            cell = sigmoid(f + 1.0) * cell + sigmoid(i) * np.tanh(ci)
            h = sigmoid(o) * np.tanh(cell)
            c_in = np.tanh(np.concatenate([h, emb]) @ w[p + "c_in/W"] + w[p + "c_in/b"])
            c = softmax(ctx @ c_in) @ enc
            probs = softmax(np.concatenate([h, c]) @ w[p + "prob/W"] + w[p + "prob/b"])
            y = int(np.argmax(probs))
            labels.append(y)
            score += np.log(probs[y])
            emb = w[p + "embed/W"][y] + w[p + "embed/b"]
            if y == 5:
                break
        hyp = beams.hypotheses(b)[0]
        assert hyp["labels"] == labels, (b, hyp["labels"], labels)
        assert hyp["score"] == pytest.approx(score, abs=1e-4), b
        assert res.lens("output")[b] == len(labels), b
        assert res.numpy("output")[b, :len(labels)].tolist() == labels, b
        assert res.scores("output")[b, 0] == pytest.approx(score, abs=1e-4), b
    st.close()


NESTED_NET = {  # an outer loop over "data" whose unit runs an inner loop over the encoded "mem" at every step
    "enc": {"class": "linear", "activation": "tanh", "n_out": 3, "from": "data:mem"},
    "loop": {"class": "rec", "from": "data", "unit": {
        "x_t": {"class": "linear", "activation": None, "n_out": 3, "from": "data:source"},
        "inner": {"class": "rec", "from": "base:enc", "unit": {
            "h": {"class": "linear", "activation": "tanh", "n_out": 3, "from": ["data:source", "prev:h", "base:x_t"]},
            "output": {"class": "copy", "from": "h"}}},
        "pooled": {"class": "reduce", "mode": "mean", "axis": "stag:extern_data:mem", "from": "inner"},
        "s": {"class": "linear", "activation": "tanh", "n_out": 4, "from": ["pooled", "prev:s"]},
        "output": {"class": "copy", "from": "s"}}},
    "output": {"class": "copy", "from": "loop"},
}


def numpy_nested(w, x, lens, mem, mem_lens):
    """NESTED_NET in numpy: per outer step t, h runs over the valid frames of enc; s reads their mean."""
    B, T, _ = x.shape
    enc = np.tanh(mem @ w["enc/W"] + w["enc/b"])
    s_all, h_all = np.zeros((B, T, 4)), np.zeros((B, T, mem.shape[1], 3))
    for b in range(B):
        s = np.zeros(4)
        for t in range(lens[b]):
            x_t = x[b, t] @ w["loop/rec/x_t/W"] + w["loop/rec/x_t/b"]
            h = np.zeros(3)
            for j in range(mem_lens[b]):
                h = np.tanh(np.concatenate([enc[b, j], h, x_t]) @ w["loop/rec/inner/rec/h/W"]
                            + w["loop/rec/inner/rec/h/b"])
                h_all[b, t, j] = h
            s = np.tanh(np.concatenate([h_all[b, t, :mem_lens[b]].mean(axis=0), s]) @ w["loop/rec/s/W"]
                        + w["loop/rec/s/b"])
            s_all[b, t] = s
    return s_all, h_all


def nested_inputs(rng, lens, mem_lens) -> tuple:
    """NESTED_NET's "data" [batch, max(lens), 2] and "mem" [batch, max(mem_lens), 3], with garbage up to 1e3 in their
    padding frames."""
    x = rng.standard_normal((len(lens), max(lens), 2)).astype(np.float32)
    mem = rng.standard_normal((len(lens), max(mem_lens), 3)).astype(np.float32)
    for arr, n in ((x, lens), (mem, mem_lens)):
        pad = np.arange(arr.shape[1])[None, :] >= n[:, None]
        arr[pad] = rng.uniform(-1e3, 1e3, size=(pad.sum(), arr.shape[2]))
    return x, mem


def test_a_configs_nested_rec_layer_is_stepped_and_descended_into_as_numpy_computes_it(tmp_path, rng):
    m = rd.from_returnn(NESTED_NET, extern_data={"data": {"dim": 2}, "mem": {"dim": 3}})
    lens, mem_lens = np.array([5, 2, 4]), np.array([3, 4, 1])
    x, mem = nested_inputs(rng, lens, mem_lens)
    feed, feed_lens = {"data": x, "mem": mem}, {"data": lens, "mem": mem_lens}
    want_s, want_h = numpy_nested(weights(m.save(tmp_path / "model")), x, lens, mem, mem_lens)

    tr = m.trace(feed, feed_lens)
    got = tr.numpy("loop/s", order=["batch", "loop:time", tr.dims_of("loop/s")[-1]])
    for b in range(3):
        np.testing.assert_allclose(got[b, :lens[b]], want_s[b, :lens[b]], atol=ATOL)

    st = m.stepper(feed, feed_lens)
    assert st.view_keys() == ["loop/s"] and "loop/inner" in st.layer_keys()  # (its value over m's frames)
    with pytest.raises(rd.RecDebugError, match="call step"):
        st.descend()
    for t in range(1, 6):
        st.step()
        valid = lens >= t
        np.testing.assert_allclose(st.value("loop/s")[valid], want_s[valid, t - 1], atol=ATOL)
        inner = st.descend("loop/inner")
        assert inner.T == 4 and inner.lens.tolist() == mem_lens.tolist() and inner.states == ["loop/inner/h"]
        np.testing.assert_array_equal(inner.value("loop/inner/h"), np.zeros((3, 3)))  # its initial value
        for j in range(1, 5):
            inner.step()
            ok = valid & (mem_lens >= j)
            np.testing.assert_allclose(inner.value("h")[ok], want_h[ok, t - 1, j - 1], atol=ATOL)
        assert inner.finished and inner.ended == {0: 3, 1: 4, 2: 1}
        inner.run_to(1)
        np.testing.assert_allclose(inner.value("loop/inner/output")[valid], want_h[valid, t - 1, 0], atol=ATOL)
    with pytest.raises(rd.RecDebugError, match="no nested rec layer 'x_t'"):
        st.descend("x_t")
    d = rd.debugger(st)  # the outer loop's States and layers; the nested loop is in the hierarchy
    assert sorted(d.views) == ["loop/s"]
    b = d.sequence
    np.testing.assert_allclose(d.views["loop/s"]._array[:5], want_s[b], atol=ATOL)
    d.select_layer("loop/pooled")
    np.testing.assert_allclose(d.picked._array[:5], want_h[b, :, :mem_lens[b]].mean(axis=1), atol=ATOL)
    assert {"loop/inner", "loop/inner/h"} <= {n["path"] for n in d.hierarchy.nodes}
    d.select_layer("loop/inner")  # the nested loop's output at each outer step: m's valid frames x its units
    assert d.picked._array.shape == (5, mem_lens[b] * 3)
    np.testing.assert_allclose(d.picked._array.reshape(5, -1, 3), want_h[b, :, :mem_lens[b]], atol=ATOL)
    d.close()
    st.close()


def test_a_configs_nested_unit_with_a_layer_without_the_batch_axis_is_descended_into(tmp_path, rng):
    """A constant in the nested unit (no batch axis, the same at every inner step) is read as its one value, and the
    layers that use it step as numpy computes them; ragged lengths with garbage in the padding frames."""
    net = copy.deepcopy(NESTED_NET)
    inner_unit = net["loop"]["unit"]["inner"]["unit"]
    inner_unit["k"] = {"class": "constant", "value": 0.5}
    inner_unit["output"] = {"class": "combine", "kind": "add", "from": ["h", "k"]}  # the inner loop's output: h + k
    m = rd.from_returnn(net, extern_data={"data": {"dim": 2}, "mem": {"dim": 3}})
    lens, mem_lens = np.array([4, 1, 3]), np.array([2, 3, 3])
    x, mem = nested_inputs(rng, lens, mem_lens)
    w = weights(m.save(tmp_path / "model"))
    _, want_h = numpy_nested(w, x, lens, mem, mem_lens)  # (h reads neither k nor s)
    want_s = np.zeros((3, 4, 4))
    for b in range(3):
        s = np.zeros(4)
        for t in range(lens[b]):
            pooled = want_h[b, t, :mem_lens[b]].mean(axis=0) + 0.5
            s = want_s[b, t] = np.tanh(np.concatenate([pooled, s]) @ w["loop/rec/s/W"] + w["loop/rec/s/b"])

    st = m.stepper({"data": x, "mem": mem}, {"data": lens, "mem": mem_lens})
    for t in range(1, 5):
        st.step()
        valid = lens >= t
        np.testing.assert_allclose(st.value("loop/s")[valid], want_s[valid, t - 1], atol=ATOL)
        inner = st.descend("loop/inner")
        with pytest.raises(rd.RecDebugError, match="call step"):
            inner.value("k")
        for j in range(1, 4):
            inner.step()
            assert np.ndim(inner.value("loop/inner/k")) == 0 and inner.value("loop/inner/k") == np.float32(0.5)
            ok = valid & (mem_lens >= j)
            np.testing.assert_allclose(inner.value("h")[ok], want_h[ok, t - 1, j - 1], atol=ATOL)
            np.testing.assert_allclose(inner.value("output")[ok], want_h[ok, t - 1, j - 1] + 0.5, atol=ATOL)
    st.close()


COVERAGE_NET = {  # an outer loop over "data" attending over "m" with weight feedback from the accumulated weights
    "enc_ctx": {"class": "linear", "activation": None, "with_bias": False, "n_out": 4, "from": "data:m"},
    "loop": {"class": "rec", "from": "data", "unit": {
        "x_proj": {"class": "linear", "activation": None, "with_bias": False, "n_out": 4, "from": "data:source"},
        "weight_feedback": {"class": "linear", "activation": None, "with_bias": False, "n_out": 4,
                            "from": "prev:accum_att_weights"},
        "energy_in": {"class": "combine", "kind": "add", "from": ["base:enc_ctx", "x_proj", "weight_feedback"],
                      "n_out": 4},
        "energy_tanh": {"class": "activation", "activation": "tanh", "from": "energy_in"},
        "energy": {"class": "linear", "activation": None, "with_bias": False, "n_out": 1, "from": "energy_tanh"},
        "att_weights": {"class": "softmax_over_spatial", "from": "energy"},
        "accum_att_weights": {"class": "combine", "kind": "add", "from": ["prev:accum_att_weights", "att_weights"],
                              "initial_output": 0},
        "output": {"class": "generic_attention", "weights": "att_weights", "base": "base:data:m"}}},
    "output": {"class": "copy", "from": "loop"},
}


def numpy_coverage_config(w, x, lens, mem, mem_lens, edit=None):
    """COVERAGE_NET in numpy: the accumulated weights after each step [batch, steps, frames of m] (valid frames);
    ``edit``: (step, weights [batch, frames]) set before that step."""
    B, T, _ = x.shape
    out = np.zeros((B, T, mem.shape[1]))
    for b in range(B):
        n = mem_lens[b]
        ctx, acc = mem[b, :n] @ w["enc_ctx/W"], np.zeros(n)
        for t in range(lens[b]):
            if edit is not None and t == edit[0]:
                acc = edit[1][b, :n].astype(np.float64)
            energy_in = ctx + x[b, t] @ w["loop/rec/x_proj/W"] + acc[:, None] @ w["loop/rec/weight_feedback/W"]
            energy = (np.tanh(energy_in) @ w["loop/rec/energy/W"])[:, 0]
            att = np.exp(energy - energy.max())
            acc = acc + att / att.sum()
            out[b, t, :n] = acc
    return out


def test_a_configs_state_over_the_encoders_axis_steps_as_numpy_computes_it(tmp_path, rng):
    m = rd.from_returnn(COVERAGE_NET, extern_data={"data": {"dim": 2}, "m": {"dim": 3}})
    lens, mem_lens = np.array([4, 2, 3]), np.array([5, 3, 1])
    x = rng.standard_normal((3, 4, 2)).astype(np.float32)
    mem = rng.standard_normal((3, 5, 3)).astype(np.float32)
    for arr, n in ((x, lens), (mem, mem_lens)):  # garbage in the padding frames
        pad = np.arange(arr.shape[1])[None, :] >= n[:, None]
        arr[pad] = rng.uniform(-1e3, 1e3, size=(pad.sum(), arr.shape[2]))
    feed, feed_lens = {"data": x, "m": mem}, {"data": lens, "m": mem_lens}
    w = weights(m.save(tmp_path / "model"))
    want = numpy_coverage_config(w, x, lens, mem, mem_lens)
    key = "loop/accum_att_weights"

    st = m.stepper(feed, feed_lens)
    assert st.view_keys() == [key] and st.value(key).shape == (3, 1, 5)  # batch first, as the unit has it
    for t in range(1, 5):
        st.step()
        for b in range(3):
            if t <= lens[b]:
                np.testing.assert_allclose(st.value(key)[b, 0, :mem_lens[b]], want[b, t - 1, :mem_lens[b]],
                                           atol=ATOL)
    st.run_to(1)
    edited = rng.uniform(0, 2, size=(3, 1, 5)).astype(np.float32)
    with pytest.raises(rd.RunError, match=r"expected \(3, 1, 5\).*has 5 frames here, its longest sequence"):
        st.set_state(key, edited[..., :3])
    st.set_state(key, edited)
    st.run_to(4)
    after = numpy_coverage_config(w, x, lens, mem, mem_lens, edit=(1, edited[:, 0]))
    for b in range(3):
        np.testing.assert_allclose(st.value(key)[b, 0, :mem_lens[b]], after[b, lens[b] - 1, :mem_lens[b]],
                                   atol=ATOL)

    d = rd.debugger(st)  # each sequence's valid frames of m, no padding
    for b in range(3):
        d.select_sequence(b)
        assert d.views[key]._array.shape == (4, mem_lens[b])
        n = lens[b]
        np.testing.assert_allclose(d.views[key]._array[0], edited[b, 0, :mem_lens[b]], atol=ATOL)  # set at t=1
        np.testing.assert_allclose(d.views[key]._array[n - 1], after[b, n - 1, :mem_lens[b]], atol=ATOL)
    d.select_layer("loop/att_weights")
    assert d.picked._array.shape == (4, mem_lens[2])
    d.close()
    st.close()

    tr = m.trace(feed, feed_lens)
    got = tr.numpy(key, order=["batch", "loop:time", "time:var:extern_data:m", tr.dims_of(key)[2]])[..., 0]
    for b in range(3):
        np.testing.assert_allclose(got[b, :lens[b], :mem_lens[b]], want[b, :lens[b], :mem_lens[b]], atol=ATOL)


COUNTER_NET = {  # a State without the batch axis: a step counter, one value for every sequence
    "loop": {"class": "rec", "from": "data", "unit": {
        "half": {"class": "constant", "value": 0.5},
        "count": {"class": "combine", "kind": "add", "from": ["prev:count", "half"], "initial_output": 0},
        "h": {"class": "linear", "activation": "tanh", "n_out": 3, "from": ["data:source", "prev:h"]},
        "scaled": {"class": "combine", "kind": "mul", "from": ["h", "count"]},
        "output": {"class": "copy", "from": "scaled"}}},
    "output": {"class": "copy", "from": "loop"},
}


def test_a_configs_state_without_the_batch_axis_steps_as_numpy_computes_it(tmp_path, rng):
    """A State read with prev: that has no batch axis (a step counter) is one value for every sequence: the
    stepper keeps it, steps it one call per step and in the graph, edits it, and the views read it for each
    sequence alike; against numpy, ragged lengths with garbage in the padding frames."""
    m = rd.from_returnn(COUNTER_NET, extern_data={"data": {"dim": 2}})
    lens = np.array([5, 2, 4])
    x = rng.standard_normal((3, 5, 2)).astype(np.float32)
    pad = np.arange(5)[None, :] >= lens[:, None]
    x[pad] = rng.uniform(-1e3, 1e3, size=(pad.sum(), 2))
    w = weights(m.save(tmp_path / "model"))
    hs = np.zeros((3, 6, 3))  # hs[:, t]: h after t steps (a sequence that ended keeps its last)
    for t in range(5):
        new = np.tanh(np.concatenate([x[:, t], hs[:, t]], axis=1) @ w["loop/rec/h/W"] + w["loop/rec/h/b"])
        hs[:, t + 1] = np.where((t < lens)[:, None], new, hs[:, t])
    counts = 0.5 * np.arange(6)  # the counter steps while any sequence does

    tr = m.trace({"data": x}, {"data": lens})
    np.testing.assert_array_equal(tr.numpy("loop/count"), counts[1:])
    for in_graph in (False, True):
        st = m.stepper({"data": x}, {"data": lens})
        assert st.view_keys() == ["loop/count", "loop/h"] and st.key_shared("loop/count")
        if in_graph:
            st.run_to(5)
        else:
            for _ in range(5):
                st.step()
        assert st.finished and st.ended == {0: 5, 1: 2, 2: 4}
        for t in range(6):
            np.testing.assert_array_equal(st.value("loop/count", at=t), np.float32(counts[t]))
            np.testing.assert_array_equal(st.key_value("loop/count", t), np.full(3, counts[t], np.float32))
            np.testing.assert_allclose(st.value("loop/h", at=t), hs[:, t], atol=ATOL)
        for t in range(1, 6):  # a layer's value in iteration t-1, for the sequences still running
            valid = lens >= t
            np.testing.assert_allclose(st.value("loop/scaled", at=t)[valid], hs[valid, t] * counts[t], atol=ATOL)
        np.testing.assert_array_equal(st.value("loop/half", at=3), np.float32(0.5))  # a constant of the unit
        st.close()
    st = m.stepper({"data": x}, {"data": lens})
    st.run_to(2)
    st.set_state("loop/count", np.float32(10))
    st.step()
    assert st.value("loop/count") == np.float32(10.5)
    valid = lens >= 3
    np.testing.assert_allclose(st.value("loop/scaled")[valid], hs[valid, 3] * 10.5, atol=ATOL * 10)
    with pytest.raises(rd.RunError, match=r"expected \(\) \(one value for every sequence"):
        st.set_state("loop/count", np.zeros(3, np.float32))
    d = rd.debugger(st)
    d.select_sequence(1)  # (ended after 2 steps: the counter still draws, as it is one value for every sequence)
    view = d.views["loop/count"]
    assert "shared by the batch" in view.unit_label
    drawn = np.frombuffer(view.values, np.float32).reshape(view.shape)[:3, 0]
    np.testing.assert_array_equal(drawn, np.float32([0.5, 10.0, 10.5]))  # after each iteration; t=1 edited
    st.close()


def test_a_checkpoint_without_a_layers_parameters_is_said_in_the_configs_terms(tmp_path, rng):
    """A layer nothing reads has no parameters in a checkpoint RETURNN trained (it never built it): run and search
    leave it out, as RETURNN's own forward and search do. A layer that is needed and missing is one clear error
    naming its parameters, and with pretraining in the config, why that may be."""
    net = {k: dict(v) for k, v in SEARCH_NET.items()}
    ckpt = rd.from_returnn(net, extern_data=SEARCH_DATA).save(tmp_path / "model")
    x, lens = rng.standard_normal((2, 4, 5)).astype(np.float32), np.array([4, 2])
    with pytest.raises(rd.RunError, match=r"missing input 'classes': the network reads it"):  # not searching
        rd.from_returnn(net, extern_data=SEARCH_DATA, checkpoint=ckpt).run({"data": x}, {"data": lens})
    feed = {"data": x, "classes": np.array([[1, 2, 5], [3, 5, 0]])}
    feed_lens = {"data": lens, "classes": np.array([3, 2])}
    plain = rd.from_returnn(net, extern_data=SEARCH_DATA, checkpoint=ckpt).run(feed, feed_lens)
    extra = dict(net, unused={"class": "linear", "activation": None, "from": "encoder", "n_out": 3})
    m = rd.from_returnn(extra, extern_data=SEARCH_DATA, checkpoint=ckpt)
    res = m.run(feed, feed_lens)
    np.testing.assert_array_equal(res.numpy("output"), plain.numpy("output"))
    np.testing.assert_array_equal(res.numpy("enc_ctx"), plain.numpy("enc_ctx"))
    assert "unused" not in res.keys()
    assert m.run({"data": x}, {"data": lens}, search=True).numpy("output").shape[0] == 2

    needed = dict(extra, enc_ctx={"class": "linear", "activation": "tanh", "from": "unused", "n_out": 16})
    with pytest.raises(rd.RecDebugError, match=r"has no values for unused/W, unused/b: parameters of the layers "
                                               r"unused") as e:
        rd.from_returnn(needed, extern_data=SEARCH_DATA, checkpoint=ckpt).run(feed, feed_lens)
    assert "pretrain" not in str(e.value)
    config = {"network": needed, "extern_data": SEARCH_DATA, "pretrain": "default"}
    with pytest.raises(rd.RecDebugError, match=r"(?s)has no values for unused/W.*a checkpoint of a pretrain epoch"):
        rd.from_returnn(config, checkpoint=ckpt).trace(feed, feed_lens, rec="output")


BROKEN = '''#!rnn.py
extern_data = {"data": {"dim": 5}}
network = {
    "encoder": {"class": "linear", "activation": "%s", "from": "data", "n_out": 4},
    "output": {"class": "rec", "from": "encoder", "unit": {
        "s": {"class": "linear", "activation": "tanh", "from": ["data:source", "prev:s"], "n_out": 4},
        "bad": {"class": "linear", "activation": "%s", "from": "s", "n_out": 3},
        "output": {"class": "copy", "from": "s"}}},
}
'''


@pytest.mark.parametrize("where,line", [("encoder", 4), ("output/bad", 7)])
def test_what_fails_inside_returnn_is_one_error_naming_the_layer_and_the_configs_line(tmp_path, rng, where, line):
    """A layer RETURNN cannot build (here an activation it does not know), at the top or inside the unit: run,
    trace and the stepper each raise one RecDebugError naming the layer and its line in the config file (a unit
    layer no output reads is not built by run, as RETURNN's forward does not build it)."""
    path = tmp_path / "broken.config"
    path.write_text(BROKEN % ("no_such_activation" if where == "encoder" else "tanh",
                              "no_such_activation" if where == "output/bad" else "tanh"))
    m = rd.from_returnn(path)
    x, lens = rng.standard_normal((2, 3, 5)).astype(np.float32), np.array([3, 2])
    calls = {"run": lambda: m.run({"data": x}, {"data": lens}), "trace": lambda: m.trace({"data": x}, {"data": lens}),
             "stepper": lambda: m.stepper({"data": x}, {"data": lens})}
    if where == "output/bad":
        assert calls.pop("run")().numpy("output").shape == (2, 3, 4)
    for what, call in calls.items():
        with pytest.raises(rd.RecDebugError, match=rf"layer '{where}' \(broken.config:{line}\) failed: .*"
                                                   r"no_such_activation") as e:
            call()
        assert e.value.__cause__ is None and "Traceback" not in str(e.value), what


def _unit_with(**changes):
    """SEARCH_NET's unit with layers replaced (None: removed)."""
    net = {k: dict(v) for k, v in SEARCH_NET.items()}
    unit = {k: dict(v) for k, v in net["output"]["unit"].items()}
    for name, layer in changes.items():
        if layer is None:
            unit.pop(name)
        else:
            unit[name] = layer
    net["output"] = dict(net["output"], unit=unit)
    return net


ANALYSIS_BREAKS = {  # each step of the stepper's analysis of a unit, broken: (net, search, what the error says)
    "initial_output": (_unit_with(embed={"class": "linear", "activation": None, "from": "output", "n_out": 8,
                                         "initial_output": "apply(0)"}), True,
                       r"output/embed has initial_output='apply\(0\)'; the stepper starts States at a number"),
    "initial_state": (_unit_with(s={"class": "rnn_cell", "unit": "LSTMBlock", "from": ["prev:c", "prev:embed"],
                                    "n_out": 16, "initial_state": "var"}), True,
                      r"rnn_cell layer output/s has initial_state='var'; the stepper starts cell states at zeros"),
    "hidden_state": (_unit_with(s={"class": "rec", "unit": "nativelstm2", "from": ["prev:c", "prev:embed"],
                                   "n_out": 16}), True, r"layer output/s \(class 'rec'\) keeps a hidden state"),
    "no_end": (_unit_with(end=None), True, r"rec layer 'output' has no end layer: a search needs one"),
    "two_choices": (_unit_with(other={"class": "choice", "from": "prob", "target": "classes", "beam_size": 2}), True,
                    r"rec layer 'output' has 2 choice layers \['output', 'other'\]: live stepping searches over one"),
    "choice_without_target": (_unit_with(output={"class": "choice", "from": "prob", "beam_size": 4}), False,
                              r"choice layer output/output has no target to take its labels from"),
    "step_net": (_unit_with(c_in={"class": "linear", "activation": "no_such_activation", "from": ["s", "prev:embed"],
                                  "n_out": 16}), True,
                 r"RETURNN could not build the network: layer 'output/c_in' failed"),
}


@pytest.mark.parametrize("what", sorted(ANALYSIS_BREAKS))
def test_each_step_of_a_configs_stepper_analysis_broken_is_one_clear_error(rng, what):
    """Whatever the stepper cannot run, or RETURNN cannot build, is one RecDebugError naming the layer and saying
    what works instead, never RETURNN's or TensorFlow's own exception."""
    net, search, message = ANALYSIS_BREAKS[what]
    m = rd.from_returnn(net, extern_data=SEARCH_DATA)
    x, lens = rng.standard_normal((2, 4, 5)).astype(np.float32), np.array([4, 2])
    feed, feed_lens = {"data": x}, {"data": lens}
    if not search:
        feed, feed_lens = dict(feed, classes=np.array([[1, 2], [3, 5]])), dict(feed_lens, classes=np.array([2, 1]))
    with pytest.raises(rd.RecDebugError, match=message) as e:
        m.stepper(feed, feed_lens, search=search)
    assert type(e.value).__module__.startswith("recdebug") and (e.value.__cause__ is None), what
