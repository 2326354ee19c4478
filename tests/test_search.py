"""rd.choice in a decoder loop: beam search (run(search=True)) and teacher forcing, against numpy."""
import numpy as np
import pytest

import recdebug as rd

batch = rd.batch_dim
MAX_LEN, VOCAB = 7, 6


def build(beam_size, include_eos=True, input_type="logits"):
    """The design text's decoder. ``input_type``: what rd.choice is given, computed from the logits in the loop:
    "logits", "prob" (a softmax) or "log_prob" (logits minus their max: unnormalized log-probabilities)."""
    hid, vocab, emb = rd.Dim("hid", 4), rd.Dim("vocab", VOCAB), rd.Dim("emb", 3)
    with rd.Graph() as g:
        enc = rd.Input("enc", {batch, hid})
        embed, lin_h, lin_out = rd.Embedding(vocab, emb), rd.Linear(hid), rd.Linear(vocab)
        label = rd.State({batch}, initial=0, dtype="int32", sparse_dim=vocab)
        h = rd.State({batch, hid}, initial=enc)
        with rd.Loop(max_seq_len=MAX_LEN) as loop:
            h_ = rd.tanh(lin_h(rd.concat(embed(label.get()), h.get())))
            h.assign(h_)
            scores = lin_out(h_)
            if input_type != "logits":
                scores = scores - rd.reduce_max(scores, vocab)
                if input_type == "prob":
                    scores = rd.exp(scores) / rd.reduce_sum(rd.exp(scores), vocab)
            y = rd.choice(scores, beam_size=beam_size, input_type=input_type)
            label.assign(y)
            loop.end(y == 0, include_eos=include_eos)
            labels = loop.stack(y)
    return g, loop, y, labels


def params(rng):
    p = {"embedding/weight": rng.standard_normal((VOCAB, 3)), "linear/weight": rng.standard_normal((7, 4)),
         "linear/bias": rng.standard_normal(4) * 0.3, "linear_1/weight": rng.standard_normal((4, VOCAB)) * 1.5,
         "linear_1/bias": rng.standard_normal(VOCAB) * 0.5}
    return {k: v.astype(np.float32) for k, v in p.items()}


def step(p, label, h):
    """One decoder step in numpy: the new state and the log-probabilities of the next label."""
    h_new = np.tanh(np.concatenate([p["embedding/weight"][label], h]) @ p["linear/weight"] + p["linear/bias"])
    logits = (h_new @ p["linear_1/weight"] + p["linear_1/bias"]).astype(np.float64)
    logp = logits - logits.max() - np.log(np.exp(logits - logits.max()).sum())
    return h_new, logp


def greedy(p, enc, include_eos=True):
    out = []
    for b in range(enc.shape[0]):
        label, h, seq = 0, enc[b], []
        for _ in range(MAX_LEN):
            h, logp = step(p, label, h)
            label = int(np.argmax(logp))
            if label == 0:
                if include_eos:
                    seq.append(label)
                break
            seq.append(label)
        out.append(seq)
    return out


def beam_search(p, enc, k):
    """Beam search as RETURNN's choice layer does it (no length normalization): every hypothesis extends by
    every label; an ended one only by label 0 at no cost; the k best (score, then position) survive; the loop
    runs until every hypothesis of every sequence has ended.

    Returns (steps, finals): per step and sequence the k picks (score, source, label, state, source ended), and
    per sequence the final hypotheses (score, labels) best first.
    """
    steps = []
    hyps_all = [[(0.0, 0, enc[b], [], False)] for b in range(enc.shape[0])]  # score, label, state, labels, ended
    for _ in range(MAX_LEN):
        picks = []
        for b, hyps in enumerate(hyps_all):
            cands = []
            for i, (score, label, h, seq, ended) in enumerate(hyps):
                if ended:
                    local, h_new = np.full(VOCAB, -1e30), None
                    local[0] = 0.0
                else:
                    h_new, local = step(p, label, h)
                for v in range(VOCAB):
                    cands.append((score + local[v], i * VOCAB + v, i, v, h_new))
            cands.sort(key=lambda c: (-c[0], c[1]))
            chosen = cands[:k]
            picks.append([(sc, i, v, h_new, hyps[i][4]) for sc, _, i, v, h_new in chosen])
            hyps_all[b] = [(sc, v, h_new if h_new is not None else hyps[i][2],
                            hyps[i][3] + ([] if hyps[i][4] else [v]), hyps[i][4] or v == 0)
                           for sc, _, i, v, h_new in chosen]
        steps.append(picks)
        if all(hy[4] for hyps in hyps_all for hy in hyps):
            break
    finals = [[(hy[0], hy[3]) for hy in hyps] for hyps in hyps_all]
    return steps, finals


@pytest.fixture
def rng():
    return np.random.default_rng(7)


@pytest.mark.parametrize("include_eos", [True, False])
def test_beam_size_1_equals_greedy_decoding(rng, include_eos):
    g, loop, y, labels = build(beam_size=1, include_eos=include_eos)
    p = params(rng)
    enc = rng.standard_normal((6, 4)).astype(np.float32)
    res = g.run({"enc": enc}, params=p, search=True)
    got, lens = res.numpy(labels), res.lens(loop.axis)
    expected = greedy(p, enc, include_eos)
    assert any(len(seq) < MAX_LEN - 1 for seq in expected)  # some sequences end by EOS
    for b, seq in enumerate(expected):
        assert lens[b] == len(seq) and got[b, :lens[b]].tolist() == seq


@pytest.mark.parametrize("k", [3, 4])
def test_beam_search_finds_the_numpy_best_hypothesis_and_score(rng, k):
    g, loop, y, labels = build(beam_size=k)
    p = params(rng)
    enc = rng.standard_normal((5, 4)).astype(np.float32)
    res = g.run({"enc": enc}, params=p, search=True)
    got, lens, scores = res.numpy(labels), res.lens(loop.axis), res.scores(loop)
    _, expected = beam_search(p, enc, k)
    assert scores.shape == (5, k)
    for b, hyps in enumerate(expected):
        best = max(hyps, key=lambda hy: hy[0])
        assert got[b, :lens[b]].tolist() == best[1]
        np.testing.assert_allclose(scores[b].max(), best[0], rtol=1e-4)
        np.testing.assert_allclose(np.sort(scores[b])[::-1], [hy[0] for hy in hyps], rtol=1e-4)
    assert any(len(max(h, key=lambda hy: hy[0])[1]) < MAX_LEN for h in expected)  # some end by EOS


def test_without_search_the_reference_labels_are_fed(rng):
    g, loop, y, labels = build(beam_size=3)
    ref = np.array([[2, 3, 0, 0], [5, 0, 0, 0]], np.int32)
    enc = rng.standard_normal((2, 4)).astype(np.float32)
    res = g.run({"enc": enc}, targets={y: ref}, seq_lens={y: [3, 2]})
    np.testing.assert_array_equal(res.lens(loop.axis), [3, 2])
    got = res.numpy(labels)
    assert got[0, :3].tolist() == [2, 3, 0] and got[1, :2].tolist() == [5, 0]
    p = params(rng)  # the trace of a teacher-forced run: the loop's steps, each fed the previous reference label
    tr = g.trace({"enc": enc}, params=p, targets={y: ref}, seq_lens={y: [3, 2]})
    h_state = g.states[1]
    values = tr.numpy(h_state, order=(loop.axis, batch, next(d for d in h_state.dims if not d.is_batch)))
    np.testing.assert_array_equal(tr.lens(loop.axis), [3, 2])
    for b, n in enumerate([3, 2]):
        h, prev = enc[b], 0
        for t in range(n):
            h, _ = step(p, prev, h)
            np.testing.assert_allclose(values[t, b], h, atol=1e-5)
            prev = ref[b, t]
    with pytest.raises(rd.RunError, match="targets="):
        g.run({"enc": enc})


def test_stepping_with_reference_labels(rng):
    """Teacher forcing, stepped live: each step takes the next reference label; a sequence runs its labels."""
    g, loop, y, labels = build(beam_size=3)
    p = params(rng)
    enc = rng.standard_normal((2, 4)).astype(np.float32)
    ref = np.array([[2, 3, 4, 1], [5, 1, 0, 0]], np.int32)
    st = g.stepper({"enc": enc}, params=p, targets={y: ref}, seq_lens={y: [4, 2]})
    assert st.T == 4 and st.beam == 1 and st.choice is None
    st.run_to(st.T)
    assert st.ended == {0: 4, 1: 2}
    label_state, h_state = g.states
    for b, n in enumerate([4, 2]):
        h, prev = enc[b], 0
        for t in range(n):
            h, _ = step(p, prev, h)
            np.testing.assert_allclose(st.value(h_state, at=t + 1)[b], h, atol=1e-5)
            assert st.value(label_state, at=t + 1)[b] == ref[b, t]
            prev = ref[b, t]
        np.testing.assert_allclose(st.value(h_state)[b], h, atol=1e-5)  # kept after the sequence's end
    with pytest.raises(rd.RunError, match="labels must be in"):
        g.stepper({"enc": enc}, targets={y: ref + 10})
    with pytest.raises(rd.RunError, match="expected shape"):
        g.stepper({"enc": enc}, targets={y: ref[:1]})


def test_freeing_a_teacher_forced_build_prints_nothing(rng, capfd):
    """Re-running a cell frees the previous build: TensorFlow's report on an accumulator RETURNN never reads (in
    a teacher-forced rec layer) does not reach the notebook."""
    import gc

    g, loop, y, labels = build(beam_size=2)
    enc = rng.standard_normal((2, 4)).astype(np.float32)
    g.run({"enc": enc}, targets={y: np.array([[2, 0], [1, 0]])})
    capfd.readouterr()
    g.close()
    gc.collect()
    assert "never used" not in capfd.readouterr().err


def test_choice_outside_a_loop_is_an_error():
    vocab = rd.Dim("vocab", 4)
    with pytest.raises(rd.LoopError, match="inside a loop"):
        with rd.Graph():
            x = rd.Input("x", {batch, vocab})
            rd.choice(x)


def test_the_trace_of_a_search_has_every_hypothesis_of_every_step(rng):
    g, loop, y, labels = build(beam_size=3)
    p = params(rng)
    enc = rng.standard_normal((3, 4)).astype(np.float32)
    tr = g.trace({"enc": enc}, params=p, search=True)
    beams = tr.beams(y)
    expected, _ = beam_search(p, enc, 3)
    assert beams.shape == (len(expected), 3, 3)
    h_state = g.states[1]
    for t, picks in enumerate(expected):
        for b, chosen in enumerate(picks):
            for kk, (score, src, label, h_new, src_ended) in enumerate(chosen):
                assert beams.labels[t, b, kk] == label and beams.backpointers[t, b, kk] == src
                np.testing.assert_allclose(beams.scores[t, b, kk], score, rtol=1e-4)
                if not src_ended:  # the state this hypothesis computed at step t
                    np.testing.assert_allclose(beams.state(h_state, t, b, kk), h_new, atol=1e-5)
    res = g.run({"enc": enc}, params=p, search=True)
    for b in range(3):  # backtracking the final hypotheses gives the decided best one
        hyps = [beams.hypothesis(b, kk) for kk in range(3)]
        best = max(hyps, key=lambda hy: hy["score"])
        assert best["labels"] == res.numpy(labels)[b, :res.lens(loop.axis)[b]].tolist()
        assert best["length"] == res.lens(loop.axis)[b]
        assert all(hy["labels"][-1] == 0 or hy["length"] == beams.shape[0] for hy in hyps)


def test_debugger_shows_the_beam_tree_and_the_states_of_a_hypothesis(rng):
    g, loop, y, labels = build(beam_size=3)
    p = params(rng)
    enc = rng.standard_normal((2, 4)).astype(np.float32)
    tr = g.trace({"enc": enc}, params=p, search=True)
    beams = tr.beams(y)
    d = rd.debugger(tr)
    steps = beams.shape[0]
    assert d.T == steps and len(d.beam_tree.nodes) == steps * 3
    best = int(np.argmax(beams.scores[-1, 0]))
    assert d.beam_tree.selected == [steps - 1, best]
    end = beams.hypothesis(0, best, steps - 1)["end_step"]  # the tree draws the path up to where it ended
    drawn = beams.path(steps - 1, 0, best)[:end + 1 if end >= 0 else steps]
    assert [slot for _, slot in d.beam_tree.path] == drawn and d.beam_tree.best == d.beam_tree.path
    assert [t for t, _ in d.beam_tree.best] == list(range(len(drawn)))
    node = next(n for n in d.beam_tree.nodes if n["t"] == 1 and n["k"] == 2)
    assert node["src"] == beams.backpointers[1, 0, 2] and node["label"] == beams.labels[1, 0, 2]
    d.beam_tree.selected = [2, 1]  # a click in the tree
    assert d.hypothesis == (2, 1) and "hypothesis 1 at t=2" in d.status
    assert [slot for _, slot in d.beam_tree.best] == drawn  # the best path stays drawn
    h_state = g.states[1]
    view = np.frombuffer(d.views["loop/h"].values, np.float32).reshape(steps, 4)
    for t, slot in enumerate(beams.path(2, 0, 1)):
        np.testing.assert_array_equal(view[t], beams.state(h_state, t, 0, slot))


def test_magic_search_option(rng, shell):
    ip = shell
    ip.run_cell("%load_ext recdebug")
    ip.run_cell("import numpy as np, recdebug as rd\nbatch = rd.batch_dim\n"
                "hid, vocab, emb = rd.Dim('hid', 4), rd.Dim('vocab', 6), rd.Dim('emb', 3)")
    body = """
enc = rd.Input("enc", {batch, hid})
embed, lin_h, lin_out = rd.Embedding(vocab, emb), rd.Linear(hid), rd.Linear(vocab)
label = rd.State({batch}, initial=0, dtype="int32", sparse_dim=vocab)
h = rd.State({batch, hid}, initial=enc)
with rd.Loop(max_seq_len=5) as loop:
    h.assign(rd.tanh(lin_h(rd.concat(embed(label.get()), h.get()))))
    y = rd.choice(lin_out(h.get()), beam_size=2)
    label.assign(y)
    loop.end(y == 0, include_eos=True)
    labels = loop.stack(y)
"""
    r = ip.run_cell("%%recloop --search -o sres\n" + body)
    assert r.success, r.error_in_exec
    assert ip.user_ns["sres"].widget.beam_tree is not None and ip.user_ns["sres"].widget.trace is not None
    assert ip.user_ns["sres"].stepper.beam == 2
    r = ip.run_cell("%%recloop --search --live -o lres\n" + body)
    assert r.success, r.error_in_exec
    d = ip.user_ns["lres"].widget
    assert d.stepper is not None and d.t == 0 and d.beam_tree.nodes == []
    d.step()
    assert len(d.beam_tree.nodes) == 2
    ip.run_cell("ref = np.zeros((sres.feeds['enc'].shape[0], 5), np.int32)")
    r = ip.run_cell("%%recloop --targets choice=ref --live -o tres\n" + body)
    assert r.success, r.error_in_exec
    d = ip.user_ns["tres"].widget
    assert d.stepper.forced is not None and d.beam_tree is None and d.T == 5
    d.run()
    assert d.t == 5 and (ip.user_ns["tres"].stepper.value("label") == 0).all()
    for name in ("sres", "lres", "tres"):
        ip.user_ns[name].close()
    r = ip.run_cell("%%recloop\n" + body)
    assert "--search" in "\n".join(r.error_in_exec._render_traceback_())


# --- live stepping of a search ---

def build_feedback(beam_size, include_eos=True):
    """A decoder whose State c is computed after the choice from the chosen label, the new h and the old c: the
    step must reorder values computed before the choice (h, c) to the new hypotheses, as RETURNN does."""
    hid, vocab, emb, ctx = rd.Dim("hid", 4), rd.Dim("vocab", VOCAB), rd.Dim("emb", 3), rd.Dim("ctx", 4)
    with rd.Graph() as g:
        enc = rd.Input("enc", {batch, hid})
        embed, lin_h, lin_out, lin_c = rd.Embedding(vocab, emb), rd.Linear(hid), rd.Linear(vocab), rd.Linear(ctx)
        label = rd.State({batch}, initial=0, dtype="int32", sparse_dim=vocab)
        h = rd.State({batch, hid}, initial=enc)
        c = rd.State({batch, ctx}, initial=0.0)
        with rd.Loop(max_seq_len=MAX_LEN) as loop:
            h_ = rd.tanh(lin_h(rd.concat(embed(label.get()), h.get(), c.get())))
            h.assign(h_)
            y = rd.choice(lin_out(h_), beam_size=beam_size)
            c.assign(rd.tanh(lin_c(rd.concat(embed(y), h_))) + c.get())
            label.assign(y)
            loop.end(y == 0, include_eos=include_eos)
            labels = loop.stack(y)
    return g, loop, y, labels, (h, c)


def params_feedback(rng):
    p = params(rng)
    p["linear/weight"] = rng.standard_normal((11, 4)).astype(np.float32)
    p["linear_2/weight"] = rng.standard_normal((7, 4)).astype(np.float32)
    p["linear_2/bias"] = (rng.standard_normal(4) * 0.3).astype(np.float32)
    return p


def beam_search_feedback(p, enc, k, edit=None):
    """Numpy beam search of build_feedback. Hypothesis: (score, label, h, c, labels, ended). ``edit``:
    (step, b, slot, new h) replaces h of one hypothesis before that step. Returns per step and sequence the k
    picks (score, source, label, h, c) and per sequence the final hypotheses (score, labels), best first."""
    E, Wh, bh = p["embedding/weight"], p["linear/weight"], p["linear/bias"]
    Wo, bo, Wc, bc = p["linear_1/weight"], p["linear_1/bias"], p["linear_2/weight"], p["linear_2/bias"]
    hyps_all = [[(0.0, 0, enc[b], np.zeros(4, np.float32), [], False)] for b in range(enc.shape[0])]
    steps = []
    for t in range(MAX_LEN):
        if edit is not None and edit[0] == t:
            _, b, slot, h_edit = edit
            sc, lab, _, c, seq, ended = hyps_all[b][slot]
            hyps_all[b][slot] = (sc, lab, h_edit, c, seq, ended)
        picks = []
        for b, hyps in enumerate(hyps_all):
            cands = []
            for i, (score, label, h, c, seq, ended) in enumerate(hyps):
                if ended:
                    local = np.full(VOCAB, -1e30)
                    local[0] = 0.0
                    h_new = None
                else:
                    h_new = np.tanh(np.concatenate([E[label], h, c]) @ Wh + bh)
                    logits = (h_new @ Wo + bo).astype(np.float64)
                    local = logits - logits.max() - np.log(np.exp(logits - logits.max()).sum())
                for v in range(VOCAB):
                    cands.append((score + local[v], i * VOCAB + v, i, v, h_new))
            cands.sort(key=lambda cand: (-cand[0], cand[1]))
            new = []
            for sc, _, i, v, h_new in cands[:k]:
                _, _, h, c, seq, ended = hyps[i]
                if ended:  # an ended hypothesis keeps its States
                    new.append((sc, v, h, c, seq, True))
                else:
                    c_new = np.tanh(np.concatenate([E[v], h_new]) @ Wc + bc) + c
                    new.append((sc, v, h_new, c_new, seq + [v], v == 0))
            picks.append([(sc, i, v, hy[2], hy[3]) for (sc, _, i, v, _), hy in zip(cands[:k], new)])
            hyps_all[b] = new
        steps.append(picks)
        if all(hy[5] for hyps in hyps_all for hy in hyps):
            break
    finals = [sorted([(hy[0], hy[4]) for hy in hyps], key=lambda f: -f[0]) for hyps in hyps_all]
    return steps, finals


def check_steps(st, expected, states, states_from=0, atol=1e-5):
    """Every step's labels, backpointers, scores and (from step ``states_from`` on) the States of every
    hypothesis, against numpy."""
    bs = st.beams()
    assert bs.shape[0] == len(expected)
    for t, picks in enumerate(expected):
        for b, chosen in enumerate(picks):
            for k, (score, src, label, *values) in enumerate(chosen):
                assert (bs.labels[t, b, k], bs.backpointers[t, b, k]) == (label, src), (t, b, k)
                np.testing.assert_allclose(bs.scores[t, b, k], score, rtol=1e-4)
                for state, value in zip(states if t >= states_from else (), values):
                    np.testing.assert_allclose(bs.state(state, t, b, k), value, atol=atol)


@pytest.mark.parametrize("k", [1, 3])
def test_live_search_steps_like_numpy_beam_search(rng, k):
    g, loop, y, labels, (h, c) = build_feedback(beam_size=k)
    p = params_feedback(rng)
    enc = rng.standard_normal((4, 4)).astype(np.float32)
    expected, finals = beam_search_feedback(p, enc, k)
    st = g.stepper({"enc": enc}, params=p)
    assert st.beam == k and st.batch == 4
    st.step()
    hid = next(d for d in h.dims if not d.is_batch)
    assert st.value(h).shape == (4, k, 4) and st.value(h, order=(st.beam_dim, hid, batch)).shape == (k, 4, 4)
    st.run_to(st.T)
    assert st.finished and st.t == len(expected)
    check_steps(st, expected, (h, c))
    res = g.run({"enc": enc}, params=p, search=True)  # RETURNN's own search agrees on the result
    bs = st.beams()
    for b in range(4):
        hyps = bs.hypotheses(b)
        assert [hy["labels"] for hy in hyps] == [f[1] for f in finals[b]]
        np.testing.assert_allclose([hy["score"] for hy in hyps], [f[0] for f in finals[b]], rtol=1e-4)
        assert res.numpy(labels)[b, :res.lens(loop.axis)[b]].tolist() == hyps[0]["labels"]
    assert sorted(st.ended) == [0, 1, 2, 3]


def test_live_search_greedy_without_eos(rng):
    g, loop, y, labels = build(beam_size=1, include_eos=False)
    p = params(rng)
    enc = rng.standard_normal((6, 4)).astype(np.float32)
    st = g.stepper({"enc": enc}, params=p)
    st.run_to(st.T)
    bs = st.beams()
    expected = greedy(p, enc, include_eos=False)
    assert any(len(seq) < MAX_LEN - 1 for seq in expected)
    for b, seq in enumerate(expected):
        assert bs.hypothesis(b, 0)["labels"] == seq


def test_live_search_step_back_and_edit_a_hypothesis(rng):
    g, loop, y, labels, (h, c) = build_feedback(beam_size=3)
    p = params_feedback(rng)
    enc = rng.standard_normal((2, 4)).astype(np.float32)
    st = g.stepper({"enc": enc}, params=p)
    st.run_to(4)
    before = st.beams()
    st.step_back(2).step(2)
    again = st.beams()
    np.testing.assert_array_equal(before.labels, again.labels)
    np.testing.assert_array_equal(before.scores, again.scores)
    st.run_to(2)
    value = st.value(h)
    value[1, 2] = np.array([0.9, -0.9, 0.5, -0.5], np.float32)
    st.set_state(h, value)
    st.run_to(st.T)
    expected, finals = beam_search_feedback(p, enc, 3, edit=(2, 1, 2, value[1, 2]))
    check_steps(st, expected, (h, c), states_from=2)
    bs = st.beams()
    unedited, _ = beam_search_feedback(p, enc, 3)
    scores = lambda steps: [[ch[0] for ch in picks[1]] for picks in steps[2:]]  # noqa: E731
    assert not np.allclose(scores(unedited)[:2], scores(expected)[:2])  # the edit changed what the search does
    assert [hy["labels"] for hy in bs.hypotheses(1)] == [f[1] for f in finals[1]]
    with pytest.raises(rd.RunError, match="expected"):
        st.set_state(h, value[:, 0])


def test_live_search_needs_the_choice_in_the_stepped_loop():
    hid, vocab = rd.Dim("hid", 4), rd.Dim("vocab", VOCAB)
    with rd.Graph() as g:
        x = rd.Input("x", {batch, rd.Dim("time"), hid})
        lin = rd.Linear(vocab)
        with rd.Loop() as outer:
            x_t = outer.unstack(x)
            s = rd.State({batch}, initial=0, dtype="int32", sparse_dim=vocab)
            with rd.Loop(max_seq_len=3) as inner:
                s.assign(rd.choice(lin(x_t), beam_size=2))
                inner.end(s.get() == 0)
    with pytest.raises(rd.RunError, match="no inner loops"):
        g.stepper({"x": np.zeros((2, 3, 4), np.float32)})


def test_debugger_on_a_live_search_grows_the_beam_tree(rng):
    g, loop, y, labels, (h, c) = build_feedback(beam_size=3)
    p = params_feedback(rng)
    enc = rng.standard_normal((2, 4)).astype(np.float32)
    expected, _ = beam_search_feedback(p, enc, 3)
    st = g.stepper({"enc": enc}, params=p)
    d = rd.debugger(st)
    assert d.beam_tree.nodes == [] and d.hypothesis is None and d.T == MAX_LEN
    d.step()
    d.step()
    d.step()
    assert len(d.beam_tree.nodes) == 9
    best = int(np.argmax([ch[0] for ch in expected[2][0]]))
    assert d.beam_tree.selected == [2, best] and f"hypothesis {best} at t=2" in d.status
    path = st.beams().path(2, 0, best)
    assert [slot for _, slot in d.beam_tree.path] == path
    node = next(n for n in d.beam_tree.nodes if n["t"] == 2 and n["k"] == 1)
    assert (node["label"], node["src"]) == (expected[2][0][1][2], expected[2][0][1][1])
    view = d.views["h"]._array  # what the browser holds: the last full array and the row patches since
    for t, slot in enumerate(path):  # the States of the selected hypothesis along its path, as numpy has them
        np.testing.assert_allclose(view[t], expected[t][0][slot][3], atol=1e-5)
    np.testing.assert_array_equal(view[3:], 0)  # not computed yet
    d.select_layer("loop/tanh")  # computed before the choice: the row of the hypothesis each step extended
    picked = d.picked._array
    np.testing.assert_allclose(picked[:3], view[:3], atol=1e-6)
    d.beam_tree.selected = [1, 2]  # a click in the tree
    assert d.hypothesis == (1, 2) and "hypothesis 2 at t=1" in d.status
    view = d.views["h"]._array  # what the browser holds: the last full array and the row patches since
    for t, slot in enumerate(st.beams().path(1, 0, 2)):
        np.testing.assert_allclose(view[t], expected[t][0][slot][3], atol=1e-5)
    d.step_back()
    assert len(d.beam_tree.nodes) == 6 and d.beam_tree.selected[0] == 1
    d.reset()
    assert d.beam_tree.nodes == [] and d.t == 0
    d.run()
    assert d.t == len(expected) and "search ended" in d.status
    d.close()


def test_live_search_over_an_unstacked_axis_agrees_with_the_trace(rng):
    """A choice per input frame: the hypotheses of a sequence end with its frames."""
    time, feat, vocab, emb, hid = rd.Dim("time"), rd.Dim("feat", 3), rd.Dim("vocab", 5), rd.Dim("emb", 2), \
        rd.Dim("hid", 4)
    with rd.Graph() as g:
        x = rd.Input("x", {batch, time, feat})
        embed, lin_h, lin_out = rd.Embedding(vocab, emb), rd.Linear(hid), rd.Linear(vocab)
        label = rd.State({batch}, initial=0, dtype="int32", sparse_dim=vocab)
        h = rd.State({batch, hid})
        with rd.Loop() as loop:
            h_ = rd.tanh(lin_h(rd.concat(embed(label.get()), h.get(), loop.unstack(x))))
            h.assign(h_)
            y = rd.choice(lin_out(h_), beam_size=3)
            label.assign(y)
    x_np = rng.standard_normal((3, 6, 3)).astype(np.float32)
    lens = [6, 4, 2]
    tr = g.trace({"x": x_np}, seq_lens={time: lens}, search=True)
    st = g.stepper({"x": x_np}, seq_lens={time: lens})
    st.run_to(st.T)
    traced, live = tr.beams(y), st.beams()
    assert st.ended == {0: 6, 1: 4, 2: 2} and live.shape == traced.shape == (6, 3, 3)
    for b, n in enumerate(lens):  # frames after a sequence's end are padding
        np.testing.assert_array_equal(live.labels[:n, b], traced.labels[:n, b])
        np.testing.assert_array_equal(live.backpointers[:n, b], traced.backpointers[:n, b])
        np.testing.assert_allclose(live.scores[:n, b], traced.scores[:n, b], rtol=1e-5)
        for k in range(3):
            assert live.hypothesis(b, k)["labels"] == traced.hypothesis(b, k)["labels"]
            assert len(live.hypothesis(b, k)["labels"]) == n
            np.testing.assert_allclose(live.state(h, n - 1, b, k), traced.state(h, n - 1, b, k), atol=1e-5)


@pytest.mark.parametrize("coverage", [False, True])
def test_live_search_of_an_attention_decoder_agrees_with_returnn(rng, coverage):
    """Values over the encoder's dynamic axis inside the searched loop (attention): the live search, which runs
    its own top-k and reordering, finds RETURNN's hypotheses with RETURNN's scores. ``coverage``: a State over the
    encoder's axis too (the attention weights so far), each hypothesis its own copy, reordered by the
    backpointers as RETURNN's search reorders it."""
    enc_t, hid, vocab, emb = rd.Dim("enc_time"), rd.Dim("hid", 4), rd.Dim("vocab", VOCAB), rd.Dim("emb", 3)
    with rd.Graph() as g:
        enc = rd.Input("enc", {batch, enc_t, hid})
        embed, lin_h, lin_out, lin_q = rd.Embedding(vocab, emb), rd.Linear(hid), rd.Linear(vocab), rd.Linear(hid)
        label = rd.State({batch}, initial=0, dtype="int32", sparse_dim=vocab)
        h = rd.State({batch, hid})
        cov = rd.State({batch, enc_t}, initial=0.0)
        with rd.Loop(max_seq_len=MAX_LEN) as loop:
            energy = rd.reduce_sum(enc * lin_q(h.get()), hid)
            if coverage:
                energy = energy - 2.0 * cov.get()
            w = rd.exp(energy - rd.reduce_max(energy, enc_t))
            w = w / rd.reduce_sum(w, enc_t)
            if coverage:
                cov.assign(cov.get() + w)
            h_ = rd.tanh(lin_h(rd.concat(embed(label.get()), rd.reduce_sum(enc * w, enc_t))))
            h.assign(h_)
            y = rd.choice(lin_out(h_), beam_size=3)
            label.assign(y)
            loop.end(y == 0, include_eos=True)
    enc_np = rng.standard_normal((3, 5, 4)).astype(np.float32)
    lens = {enc_t: [5, 3, 2]}
    traced = g.trace({"enc": enc_np}, seq_lens=lens, search=True).beams(y)
    st = g.stepper({"enc": enc_np}, seq_lens=lens)
    st.run_to(st.T)
    live = st.beams()
    assert live.shape == traced.shape
    for b in range(3):
        got, want = live.hypotheses(b), traced.hypotheses(b)
        assert [hy["labels"] for hy in got] == [hy["labels"] for hy in want]
        np.testing.assert_allclose([hy["score"] for hy in got], [hy["score"] for hy in want], rtol=1e-5)
        for k in range(3):
            if not live.ended[0, b, k]:
                np.testing.assert_allclose(live.state(h, 0, b, k), traced.state(h, 0, b, k), atol=1e-6)
        if coverage:  # along every hypothesis of the final beam, every step to its end: the encoder's valid frames
            n = lens[enc_t][b]
            for hy in want:
                for t, slot in enumerate(hy["slots"][:hy["length"]]):
                    np.testing.assert_allclose(live.state(cov, t, b, slot)[:n], traced.state(cov, t, b, slot)[:n],
                                               atol=1e-5, err_msg=f"cov of sequence {b} at t={t}")
    weights = st.value(w, at=1)  # attention weights per hypothesis of step 0: the encoder frames of each sequence
    assert weights.shape == (3, 3, 5)
    for b, n in enumerate(lens[enc_t]):
        np.testing.assert_allclose(weights[b, 0, :n].sum(), 1.0, rtol=1e-5)


@pytest.mark.parametrize("input_type", ["prob", "log_prob"])
def test_choice_input_types_search_alike_in_returnn_and_live(rng, input_type):
    """rd.choice given probabilities or (unnormalized) log-probabilities: RETURNN's search (traced, recording only
    h: the beams are recorded anyway) and the live search agree."""
    g, loop, y, labels = build(beam_size=3, input_type=input_type)
    p = params(rng)
    enc_np = rng.standard_normal((3, 4)).astype(np.float32)
    tr = g.trace({"enc": enc_np}, params=p, search=True, capture=["h"])
    traced = tr.beams(y)
    assert "loop/tanh" not in tr.entries
    st = g.stepper({"enc": enc_np}, params=p)
    st.run_to(st.T)
    live = st.beams()
    assert live.shape == traced.shape
    np.testing.assert_array_equal(live.labels, traced.labels)
    np.testing.assert_array_equal(live.backpointers, traced.backpointers)
    np.testing.assert_allclose(live.scores, traced.scores, rtol=1e-5, atol=1e-5)
    for b in range(3):
        assert [hy["labels"] for hy in live.hypotheses(b)] == [hy["labels"] for hy in traced.hypotheses(b)]


def test_a_search_trace_also_records_the_loops_without_search(rng):
    """An encoder loop before the searching decoder: trace(search=True) records the encoder's steps too (as numpy
    computes them from the run's parameters, padding frames with garbage), and the decoder's beams."""
    src_t, hid, vocab, emb = rd.Dim("src_t"), rd.Dim("hid", 4), rd.Dim("vocab", 5), rd.Dim("emb", 3)
    with rd.Graph() as g:
        src = rd.Input("src", {batch, src_t, hid})
        e = rd.State({batch, hid})
        lin_e = rd.Linear(hid)
        with rd.Loop() as enc_loop:
            e.assign(rd.tanh(lin_e(enc_loop.unstack(src)) + e.get()))
        embed, lin_h, lin_out = rd.Embedding(vocab, emb), rd.Linear(hid), rd.Linear(vocab)
        label = rd.State({batch}, initial=0, dtype="int32", sparse_dim=vocab)
        h = rd.State({batch, hid}, initial=e.get())
        with rd.Loop(max_seq_len=5) as loop:
            h.assign(rd.tanh(lin_h(rd.concat(embed(label.get()), h.get()))))
            y = rd.choice(lin_out(h.get()), beam_size=3)
            label.assign(y)
            loop.end(y == 0, include_eos=True)
            out = loop.stack(y)
    src_np = rng.standard_normal((3, 4, 4)).astype(np.float32)
    lens = np.array([4, 2, 3], np.int32)
    src_np[1, 2:] = 1e3
    src_np[2, 3:] = -1e3
    tr = g.trace({"src": src_np}, seq_lens={src_t: lens}, search=True)
    res = g.run({"src": src_np}, seq_lens={src_t: lens}, search=True)
    w, b = res.param(lin_e.weight), res.param(lin_e.bias)
    got = tr.numpy(e, order=(batch, src_t, hid))
    for k in range(3):
        state = np.zeros(4)
        for t in range(lens[k]):
            state = np.tanh(src_np[k, t] @ w + b + state)
            np.testing.assert_allclose(got[k, t], state, atol=1e-5)
    beams = tr.beams(y)
    for k in range(3):
        best = beams.hypotheses(k)[0]
        assert best["labels"] == res.numpy(out)[k, :res.lens(loop.axis)[k]].tolist()


def test_a_state_no_label_reaches_has_each_hypothesis_length(rng):
    """A State that no searched label reaches (and the step index) is the same for every hypothesis, but each
    hypothesis ends at its own step: its final value is the one after the best hypothesis' last step. Beam 3, run,
    trace and live stepping, against numpy (labels from the numpy beam search, the State's recurrence by hand)."""
    hid, vocab, emb = rd.Dim("hid", 4), rd.Dim("vocab", VOCAB), rd.Dim("emb", 3)
    with rd.Graph() as g:
        enc = rd.Input("enc", {batch, hid})
        c0 = rd.Input("c0", {batch})
        embed, lin_h, lin_out = rd.Embedding(vocab, emb), rd.Linear(hid), rd.Linear(vocab)
        label = rd.State({batch}, initial=0, dtype="int32", sparse_dim=vocab)
        h = rd.State({batch, hid}, initial=enc)
        c = rd.State({batch}, initial=c0)
        with rd.Loop(max_seq_len=MAX_LEN) as loop:
            h_ = rd.tanh(lin_h(rd.concat(embed(label.get()), h.get())))
            h.assign(h_)
            c.assign(c.get() * 0.5 + 1.0)  # no label reaches it
            y = rd.choice(lin_out(h_), beam_size=3)
            label.assign(y)
            loop.end(y == 0, include_eos=True)
            labels = loop.stack(y)
            steps = loop.stack(rd.cast(loop.index, "float32") * 2.0)
        c_final = c.get()
    p = params(rng)
    enc_np = rng.standard_normal((5, 4)).astype(np.float32)
    c0_np = rng.standard_normal(5).astype(np.float32)

    def c_after(n):  # c after n steps, per sequence
        out = c0_np.astype(np.float64)
        for _ in range(n):
            out = out * 0.5 + 1.0
        return out

    _, finals = beam_search(p, enc_np, 3)
    best = [max(hyps, key=lambda hy: hy[0])[1] for hyps in finals]
    assert len({len(seq) for seq in best}) > 1  # the hypotheses end at different steps
    feed = {"enc": enc_np, "c0": c0_np}
    res = g.run(feed, params=p, search=True)
    lens = res.lens(loop.axis)
    assert [res.numpy(labels)[b, :lens[b]].tolist() for b in range(5)] == best
    np.testing.assert_allclose(res.numpy(c_final), [c_after(len(seq))[b] for b, seq in enumerate(best)], rtol=1e-5)
    for b, seq in enumerate(best):  # padding frames are not compared
        np.testing.assert_array_equal(res.numpy(steps)[b, :len(seq)], 2.0 * np.arange(len(seq)))
    tr = g.trace(feed, params=p, search=True)
    np.testing.assert_allclose(tr.numpy(c_final), res.numpy(c_final), rtol=1e-6)
    beams = tr.beams(y)
    for t in range(beams.shape[0]):  # every hypothesis of every step has the State's value of that step
        for b in range(5):
            for kk in range(3):
                np.testing.assert_allclose(beams.state(c, t, b, kk), c_after(t + 1)[b], rtol=1e-5)
    st = g.stepper(feed, params=p)
    for t in range(4):  # live: a hypothesis that ended keeps its States (the value after its last step)
        st.step()
        live = st.beams()
        for b in range(5):
            for kk in range(3):
                end = live.hypothesis(b, kk, t)["end_step"]
                np.testing.assert_allclose(st.value(c)[b, kk], c_after(t + 1 if end < 0 else end + 1)[b], rtol=1e-5)
    assert any(live.hypothesis(b, kk, 3)["end_step"] in (0, 1, 2) for b in range(5) for kk in range(3))
