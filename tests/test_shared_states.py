"""States without the batch dim: one value shared by every sequence (a step counter, a bound, a shared accumulator),
in run (optimize on and off), trace, the live stepper, the debugger and search, against numpy; ragged lengths
with garbage in the padding frames."""
import numpy as np
import pytest

import recdebug as rd

batch = rd.batch_dim
ATOL = 1e-5
LENS = np.array([5, 2, 3, 1])


def counter_loop():
    """A for loop over x with a shared int counter i and a shared static-dim accumulator acc, read by a batched
    State h: h += x_t * i + acc."""
    time, feat = rd.Dim("time"), rd.Dim("feat", 2)
    with rd.Graph() as g:
        x = rd.Input("x", [batch, time, feat])
        i = rd.State(set(), initial=0, dtype="int32")
        acc = rd.State({feat}, initial=rd.constant(0.5, {feat}))
        h = rd.State({batch, feat}, initial=0.0)
        with rd.Loop() as loop:
            x_t = loop.unstack(x)
            i.assign(i.get() + 1)
            acc.assign(acc.get() * 0.5 + 1.0)
            h.assign(h.get() + x_t * rd.cast(i.get(), "float32") + acc.get())
            counts, hs, accs = loop.stack(i.get()), loop.stack(h.get()), loop.stack(acc.get())
            acc_last = loop.last(acc.get())
        i_after = i.get()
    return g, dict(x=x, i=i, acc=acc, h=h, counts=counts, hs=hs, accs=accs, acc_last=acc_last, i_after=i_after,
                   time=time, feat=feat)


def data(rng):
    x = rng.standard_normal((4, 5, 2)).astype(np.float32)
    x[np.arange(5)[None, :] >= LENS[:, None]] = 1e3  # garbage in the padding frames
    return x


def reference(x):
    """numpy: the shared values step while any sequence does (T = 5 steps); h per sequence, its own frames."""
    T = int(LENS.max())
    i = np.arange(1, T + 1)
    acc, accs = np.array([0.5, 0.5]), []
    for _ in range(T):
        acc = acc * 0.5 + 1.0
        accs.append(acc)
    accs = np.stack(accs)
    hs = np.zeros((4, T, 2))
    for b in range(4):
        h = np.zeros(2)
        for t in range(LENS[b]):
            h = h + x[b, t].astype(np.float64) * i[t] + accs[t]
            hs[b, t] = h
    return i, accs, hs


@pytest.mark.parametrize("optimize", [True, False])
def test_a_shared_counter_and_accumulator_run_as_numpy_computes_them(rng, optimize):
    g, v = counter_loop()
    x = data(rng)
    i_ref, accs_ref, hs_ref = reference(x)
    res = g.run({"x": x}, seq_lens={v["time"]: LENS}, optimize=optimize)
    np.testing.assert_array_equal(res.numpy(v["counts"]), i_ref)  # {time}: one value per step, no batch
    np.testing.assert_allclose(res.numpy(v["accs"], order=(v["time"], v["feat"])), accs_ref, atol=ATOL)
    assert int(res.numpy(v["i_after"])) == 5  # after the loop: the value of its last step (its longest sequence's)
    np.testing.assert_allclose(res.numpy(v["acc_last"]), accs_ref[-1], atol=ATOL)
    got = res.numpy(v["hs"], order=(batch, v["time"], v["feat"]))
    for b in range(4):
        np.testing.assert_allclose(got[b, :LENS[b]], hs_ref[b, :LENS[b]], atol=ATOL, rtol=1e-6)


def test_a_shared_state_is_traced_and_stepped_as_numpy_computes_it(rng):
    g, v = counter_loop()
    x = data(rng)
    i_ref, accs_ref, hs_ref = reference(x)
    lens = {v["time"]: LENS}
    tr = g.trace({"x": x}, seq_lens=lens)
    np.testing.assert_array_equal(tr.numpy(v["i"]), i_ref)
    np.testing.assert_allclose(tr.numpy(v["acc"], order=(v["time"], v["feat"])), accs_ref, atol=ATOL)
    st = g.stepper({"x": x}, seq_lens=lens)
    assert int(st.value(v["i"])) == 0 and st.value(v["i"]).shape == ()
    np.testing.assert_allclose(st.value(v["acc"]), [0.5, 0.5])
    for t in range(5):
        st.step()
        assert int(st.value(v["i"])) == i_ref[t]
        np.testing.assert_allclose(st.value(v["acc"]), accs_ref[t], atol=ATOL)
        h = st.value(v["h"], order=(batch, v["feat"]))
        for b in range(4):
            if LENS[b]:
                np.testing.assert_allclose(h[b], hs_ref[b, min(t, LENS[b] - 1)], atol=ATOL, rtol=1e-6)
    assert st.finished
    st.step_back(3)  # t=2: i=2
    assert int(st.value(v["i"])) == 2
    st.set_state(v["i"], np.array(10, np.int32))  # the shared shape: one number
    with pytest.raises(rd.RunError, match=r"shape \(4,\), expected \(\)"):
        st.set_state(v["i"], np.zeros(4, np.int32))
    st.step()  # t=2 with i = 11 for every sequence still running (sequence 0, 2)
    h_prev = {b: hs_ref[b, 1] for b in (0, 2)}
    h = st.value(v["h"], order=(batch, v["feat"]))
    for b in (0, 2):
        np.testing.assert_allclose(h[b], h_prev[b] + x[b, 2] * 11 + accs_ref[2], atol=1e-4, rtol=1e-6)
    np.testing.assert_allclose(h[1], hs_ref[1, 1], atol=ATOL, rtol=1e-6)  # ended: kept
    assert int(st.value(v["i"])) == 11

    d = rd.debugger(st)  # one row, the same for every sequence, and said so
    view = d.views[v["i"].path(g)]
    assert view.unit_label == "one value, shared by the batch"
    d.select_sequence(1)  # ended after 2 steps; the shared counter went on
    rows = np.frombuffer(view.values, np.float32).reshape(5, 1)
    np.testing.assert_array_equal(rows[:3, 0], [1, 10, 11])  # (t=1's value is the one set_state wrote)
    assert view.length == 5 and view.known == 3  # no padding: the loop ran those steps
    d.close()
    d = rd.debugger(tr)
    d.select_sequence(3)  # a sequence of one step: the shared values are still every step's
    view = d.views[tr.key(v["i"])]
    np.testing.assert_array_equal(np.frombuffer(view.values, np.float32), i_ref)
    assert view.length == 5
    d.close()
    st.close()


@pytest.mark.parametrize("include_eos", [True, False])
def test_a_shared_counter_ends_a_while_loop_for_every_sequence_at_once(rng, include_eos):
    """loop.end(i >= 4): every sequence ends at the same step; a batched State runs along. Without include_eos the
    step that ends the loop is not kept, and neither is what it wrote: the counter's final value is 3."""
    hid = rd.Dim("hid", 3)
    with rd.Graph() as g:
        h0 = rd.Input("h0", [batch, hid])
        i = rd.State(set(), initial=0, dtype="int32")
        h = rd.State({batch, hid}, initial=h0)
        with rd.Loop(max_seq_len=10) as loop:
            i.assign(i.get() + 1)
            h.assign(rd.tanh(h.get() * 2.0 - rd.cast(i.get(), "float32")))
            loop.end(i.get() >= 4, include_eos=include_eos)
            hs = loop.stack(h.get())
        i_after = i.get()
    n = 4 if include_eos else 3
    h0_np = rng.standard_normal((3, 3)).astype(np.float32)
    ref, hh = [], h0_np.astype(np.float64)
    for t in range(n):
        hh = np.tanh(hh * 2.0 - (t + 1))
        ref.append(hh)
    ref = np.stack(ref, 1)
    for optimize in (True, False):
        res = g.run({"h0": h0_np}, optimize=optimize)
        np.testing.assert_array_equal(res.lens(loop.axis), [n, n, n])
        np.testing.assert_allclose(res.numpy(hs, order=(batch, loop.axis, hid)), ref, atol=ATOL)
        assert int(res.numpy(i_after)) == n
    st = g.stepper({"h0": h0_np})
    st.run_until(lambda s: False)
    assert st.finished and st.t == 4 and int(st.value(i)) == n
    np.testing.assert_allclose(st.value(h, order=(batch, hid)), ref[:, -1], atol=ATOL)


def decoder(beam_size, before=False):
    """A decoder whose step reads a shared counter n (the step, for every hypothesis); ``before``: added to the
    hidden State before the Linear (RETURNN's search could not work out such a unit with n without the batch dim:
    recdebug carries it per hypothesis there)."""
    hid, vocab, emb = rd.Dim("hid", 4), rd.Dim("vocab", 5), rd.Dim("emb", 3)
    with rd.Graph() as g:
        enc = rd.Input("enc", {batch, hid})
        embed, lin_h, lin_out = rd.Embedding(vocab, emb), rd.Linear(hid), rd.Linear(vocab)
        label = rd.State({batch}, initial=0, dtype="int32", sparse_dim=vocab)
        n = rd.State(set(), initial=0, dtype="int32")
        h = rd.State({batch, hid}, initial=enc)
        with rd.Loop(max_seq_len=6) as loop:
            n.assign(n.get() + 1)
            shift = rd.cast(n.get(), "float32") * 0.3
            h_ = rd.tanh(lin_h(rd.concat(embed(label.get()), h.get() - shift))) if before else \
                rd.tanh(lin_h(rd.concat(embed(label.get()), h.get())) - shift)
            h.assign(h_)
            y = rd.choice(lin_out(h_), beam_size=beam_size)
            label.assign(y)
            loop.end(y == 0, include_eos=True)
            labels, ns = loop.stack(y), loop.stack(n.get())
        n_after = n.get()
    return g, loop, n, labels, ns, n_after


@pytest.mark.parametrize("beam,before", [(3, False), (1, False), (3, True), (1, True)])
def test_a_shared_counter_in_a_live_search_is_the_same_for_every_hypothesis(rng, beam, before):
    """The live search ends with RETURNN's own search's hypotheses and scores (beam 3) and with numpy's greedy
    decoding (beam 1); the counter is the steps run, for every hypothesis."""
    g, loop, n, labels, ns, n_after = decoder(beam, before)
    p = {"embedding/weight": rng.standard_normal((5, 3)), "linear/weight": rng.standard_normal((7, 4)),
         "linear/bias": rng.standard_normal(4) * 0.3, "linear_1/weight": rng.standard_normal((4, 5)) * 1.5,
         "linear_1/bias": rng.standard_normal(5) * 0.5}
    p = {k: v.astype(np.float32) for k, v in p.items()}
    enc_np = rng.standard_normal((3, 4)).astype(np.float32)
    res = g.run({"enc": enc_np}, params=p, search=True)  # RETURNN's own beam search
    st = g.stepper({"enc": enc_np}, params=p)  # (a loop with rd.choice: its beam search)
    st.run_until(lambda s: False)
    assert st.finished and int(st.value(n)) == st.t  # one counter for every hypothesis: the steps run
    beams = st.beams()
    for b in range(3):
        hyps = beams.hypotheses(b)
        k = int(res.lens(loop.axis)[b])
        assert hyps[0]["labels"] == res.numpy(labels, order=(batch, loop.axis))[b, :k].tolist(), b
        np.testing.assert_allclose([h["score"] for h in hyps], res.search_scores[loop][b], atol=ATOL)
        if beam == 1:  # numpy's greedy decoding, the counter the step
            lab, hh, seq = 0, enc_np[b].astype(np.float64), []
            for t in range(6):
                if before:
                    hh = np.tanh(np.concatenate([p["embedding/weight"][lab], hh - (t + 1) * 0.3]) @ p["linear/weight"]
                                 + p["linear/bias"])
                else:
                    hh = np.tanh(np.concatenate([p["embedding/weight"][lab], hh]) @ p["linear/weight"]
                                 + p["linear/bias"] - (t + 1) * 0.3)
                lab = int(np.argmax(hh @ p["linear_1/weight"] + p["linear_1/bias"]))
                seq.append(lab)
                if lab == 0:
                    break
            assert hyps[0]["labels"] == seq, b
    # RETURNN's search ran the steps the live one did; its shared values are one per step, not per hypothesis
    assert int(res.numpy(n_after)) == st.t
    np.testing.assert_array_equal(res.numpy(ns), np.arange(1, res.numpy(ns).shape[0] + 1))
    assert res.numpy(ns).shape[0] == int(res.lens(loop.axis).max())
    d = rd.debugger(st)
    assert d.views[n.path(g)].unit_label == "one value, shared by the batch"
    d.close()
    st.close()
    tr = g.trace({"enc": enc_np}, params=p, search=True)  # RETURNN's search, every step recorded
    np.testing.assert_array_equal(tr.numpy(n), np.arange(1, st.t + 1))
    d = rd.debugger(tr)
    rows = np.frombuffer(d.views[tr.key(n)].values, np.float32)
    np.testing.assert_array_equal(rows, np.arange(1, st.t + 1))
    d.close()


def test_a_shared_state_refuses_a_dynamic_dim_and_a_per_sequence_value_with_a_hint():
    time, enc = rd.Dim("time"), rd.Dim("enc")
    with rd.Graph():
        with pytest.raises(rd.DimError, match="length per sequence") as e:
            rd.State({enc}, initial=0.0)
        assert e.value.line is not None
        with pytest.raises(rd.DimError, match="one number"):
            rd.constant([0.5, -1.0], {rd.Dim("feat", 2)})
        x = rd.Input("x", [batch, time])
        i = rd.State(set(), initial=0.0)
        with rd.Loop() as loop:
            with pytest.raises(rd.DimError, match="shared by every sequence") as e:
                i.assign(loop.unstack(x))
            assert "rd.State({rd.batch_dim, ...})" in e.value.hint
            i.assign(i.get() + 1.0)
    vocab = rd.Dim("vocab", 4)
    with rd.Graph():  # in a search: a value that depends on the chosen label is per hypothesis
        ctx = rd.Input("ctx", [batch, vocab])
        n = rd.State(set(), initial=0, dtype="int32")
        with rd.Loop(max_seq_len=3) as loop:
            y = rd.choice(ctx, beam_size=2)
            with pytest.raises(rd.DimError, match=r"State 'n' has dims \{\}, assigned a value with dims") as e:
                n.assign(n.get() + y)
            assert "chosen label" in e.value.hint and "n.assign(n.get() + y)" in e.value.line.code
            n.assign(n.get() + 1)
            loop.end(y == 0)


def test_a_shared_state_assigned_in_an_inner_loop_of_ragged_steps_is_refused_and_in_a_window_loop_runs(rng):
    """An inner while loop (or one over a dynamic dim) runs for every sequence, also those whose outer loop ended:
    refused at the assign's line. An inner loop over a static dim takes the same steps for every sequence: a shared
    counter there counts every window step of every outer step the loop ran."""
    time, win, feat = rd.Dim("time"), rd.Dim("win", 3), rd.Dim("feat", 2)
    with rd.Graph():
        x = rd.Input("x", [batch, time, feat])
        n = rd.State(set(), initial=0, dtype="int32")
        with rd.Loop() as outer:
            outer.unstack(x)
            with pytest.raises(rd.LoopError, match="shared by the batch .* inside another loop") as e:
                with rd.Loop(max_seq_len=3) as inner:
                    n.assign(n.get() + 1)
                    inner.end(inner.index >= 1)
            assert "n.assign" in e.value.line.code
    with rd.Graph() as g:
        x = rd.Input("x", [batch, time, win, feat])
        n = rd.State(set(), initial=0, dtype="int32")
        h = rd.State({batch, feat}, initial=0.0)
        with rd.Loop() as outer:
            x_t = outer.unstack(x)
            with rd.Loop() as inner:
                n.assign(n.get() + 1)
                h.assign(h.get() + inner.unstack(x_t, axis=win) * rd.cast(n.get(), "float32"))
            n.assign(n.get())  # the outer loop owns them too: carried over its steps
            h.assign(h.get())
            counts = outer.stack(n.get())
        after, h_after = n.get(), h.get()
    x_np = rng.standard_normal((3, 4, 3, 2)).astype(np.float32)
    lens = np.array([4, 2, 3])
    x_np[np.arange(4)[None, :] >= lens[:, None]] = 1e3
    ref = np.zeros((3, 2))
    for b in range(3):
        for t in range(lens[b]):
            for w in range(3):
                ref[b] = ref[b] + x_np[b, t, w] * (3 * t + w + 1)
    for optimize in (True, False):
        res = g.run({"x": x_np}, seq_lens={time: lens}, optimize=optimize)
        np.testing.assert_array_equal(res.numpy(counts), [3, 6, 9, 12])
        assert int(res.numpy(after)) == 12
        np.testing.assert_allclose(res.numpy(h_after, order=(batch, feat)), ref, rtol=1e-5, atol=1e-3)
