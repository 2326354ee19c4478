"""run_to / run_until in the graph: many steps in one session call, exactly as single steps would have taken them.

Each case is checked three ways: against numpy (an independent computation of the loop), against the same stepper
moved one step per call, and on where it stops (the step a single-stepper stops at, for NaN at the first and the
last step, in a padding frame, in an ended sequence, and in a search). Ragged lengths, garbage in the padding."""
import numpy as np
import pytest

import recdebug as rd
from test_design_examples import lstm_loop, lstm_reference
from test_from_returnn import search_model
from test_loop_semantics import while_loop_graph, while_reference
from test_search import beam_search_feedback, build_feedback, check_steps, params_feedback

batch = rd.batch_dim
LENS = np.array([9, 4, 1, 7, 9], dtype=np.int32)
T = int(LENS.max())


def kept(st) -> tuple:
    """What a stepper keeps of every step run so far, besides its buffers."""
    searched = (st._labels, st._backpointers, st._scores, st._hyp_ended) if st.searching else ()
    return (st._active, st._end, [sorted(repr(k) for k, v in d.items() if v) for d in st._nonfinite]) + searched


def assert_same_steps(a, b, states):
    """Two steppers of the same build at the same step hold the same values at every step and kept the same."""
    assert a.t == b.t and a.ended == b.ended and a.finished == b.finished
    for got, want in zip(kept(a), kept(b)):  # (a stepper that stepped back keeps later steps until it steps on)
        assert len(got) >= a.t and len(want) >= a.t
        for x, y in zip(got[:a.t], want[:a.t]):
            np.testing.assert_array_equal(x, y)
    for state in states:
        for i in range(a.t + 1):
            np.testing.assert_allclose(a.value(state, at=i), b.value(state, at=i), atol=1e-6, rtol=0,
                                       err_msg=f"{state} after {i} steps")


def in_graph(st) -> bool:
    return st._step_loop() is not None and getattr(st, "loop_error", None) is None


def single_steps(st, n):
    for _ in range(n):
        st.step()
    return st


@pytest.fixture
def lstm_case(rng):
    g, time, dim, x, lstm, h, out, loop = lstm_loop(dim_size=6)
    x_np = rng.standard_normal((5, T, 3)).astype(np.float32)
    x_np[np.arange(T)[None, :] >= LENS[:, None]] = 1e3  # garbage in the padding frames
    p = g.run({"x": x_np[:, :1]}).params()  # the stepper's parameters (seed 0)
    return g, time, lstm, x_np, p


def new_stepper(case, x_np=None):
    g, time, lstm, x, p = case
    return g.stepper({"x": x if x_np is None else x_np}, seq_lens={time: LENS})


def test_run_to_equals_numpy_and_single_stepping_and_step_back_is_exact(lstm_case):
    g, time, lstm, x_np, p = lstm_case
    st, ref = new_stepper(lstm_case), new_stepper(lstm_case)
    st.run_to(4)
    assert in_graph(st) and st.t == 4, getattr(st, "loop_error", None)
    st.run_to(T)
    single_steps(ref, T)
    assert st.finished and st.ended == {b: int(n) for b, n in enumerate(LENS)}
    assert_same_steps(st, ref, (lstm.h, lstm.c))
    with np.errstate(over="ignore"):  # (the garbage frames saturate the gates)
        hs, cs = lstm_reference(x_np.astype(np.float64), p)  # numpy, every sequence run over every frame
    for i in range(1, T + 1):
        for b, n in enumerate(LENS):  # an ended sequence keeps its last valid value
            k = min(i, n) - 1
            np.testing.assert_allclose(st.value(lstm.h, at=i)[b], hs[b, k], atol=1e-5, rtol=0)
            np.testing.assert_allclose(st.value(lstm.c, at=i)[b], cs[b, k], atol=1e-5, rtol=0)
    st.step_back(3)
    single_steps(ref.run_to(T - 3), 0)
    assert_same_steps(st, ref, (lstm.h, lstm.c))
    st.set_state(lstm.h, np.zeros((5, 6), np.float32))  # an edit, then in the graph again
    ref.set_state(lstm.h, np.zeros((5, 6), np.float32))
    st.run_to(T)
    single_steps(ref, 3)
    assert_same_steps(st, ref, (lstm.h, lstm.c))


# (sequence, step) of a NaN in the input: the first step, the last step of the longest sequence, the last step of
# a shorter one, a padding frame (no breakpoint: that sequence has ended)
@pytest.mark.parametrize("where,stops", [((1, 0), 1), ((0, T - 1), T), ((3, 6), 7), ((2, 5), None)])
@pytest.mark.parametrize("which", ["any", "c"])
def test_run_until_nan_stops_where_single_steps_stop(lstm_case, where, stops, which):
    g, time, lstm, x_np, p = lstm_case
    x_np = x_np.copy()
    x_np[where] = np.nan
    st, ref = new_stepper(lstm_case, x_np), new_stepper(lstm_case, x_np)
    breakpoint = rd.on_nan() if which == "any" else rd.on_nan(lstm.c)
    hit = st.run_until(breakpoint)
    assert in_graph(st)
    assert ref.run_until(lambda s: breakpoint(s)) == hit  # asked after every step
    assert hit == (stops is not None) and st.t == (stops or T)
    assert_same_steps(st, ref, (lstm.h, lstm.c))
    if hit:
        assert st.breakpoint.startswith("NaN/Inf in lstm/c") and st.breakpoint.endswith(f"at t={stops - 1}")
        assert ref.breakpoint == f"condition met at t={stops - 1}"
        assert np.isnan(st.value(lstm.c)[where[0]]).any()
        st.step_back()
        assert not np.isnan(st.value(lstm.c)).any()
        assert st.run_until(rd.on_nan()) and st.t == stops  # the same breakpoint again, from one step before
    else:
        assert st.finished and st.breakpoint is None


def test_run_until_a_bound_on_a_state_stops_where_the_python_predicate_stops(lstm_case):
    g, time, lstm, x_np, p = lstm_case
    x_np = x_np * 2
    with np.errstate(over="ignore"):  # (the garbage frames saturate the gates)
        hs, cs = lstm_reference(x_np.astype(np.float64), p)
    valid = np.arange(T)[None, :] < LENS[:, None]
    peak = np.where(valid[..., None], cs, 0).max(axis=(0, 2))  # per step, the largest c of a running sequence
    bound = float(np.median(peak))
    first = int(np.argmax(peak > bound))
    for kwargs, python in [({"above": bound}, lambda v: (v > np.float32(bound)).any()),
                           ({"below": -bound, "above": 50.0},
                            lambda v: (v < np.float32(-bound)).any() or (v > 50).any())]:
        st, ref = new_stepper(lstm_case, x_np), new_stepper(lstm_case, x_np)
        hit = st.run_until(rd.on_state(lstm.c, **kwargs))
        assert ref.run_until(rd.on_state(lstm.c, python, "python")) == hit and in_graph(st)
        assert_same_steps(st, ref, (lstm.h, lstm.c))
        if "below" not in kwargs:
            assert hit and st.t == first + 1
            assert st.breakpoint == f"a value > {np.float32(bound):.7g} in lstm/c at t={first}"
            assert len(st.breakpoint.split()[3]) <= 9  # (a computed bound reads in float32's digits, not float64's)
    st = new_stepper(lstm_case, x_np)
    assert st.run_until(rd.on_state(lstm.c, above=1e9), max_steps=3) is False and st.t == 3
    assert st.run_until(rd.on_state(lstm.c, above=1e9)) is False and st.finished
    with pytest.raises(rd.RunError, match="takes a predicate or bounds"):
        rd.on_state(lstm.c)


@pytest.mark.parametrize("include_eos", [True, False])
def test_a_while_loop_run_in_the_graph_ends_where_its_sequences_end(rng, include_eos):
    g, hid, loop, out, final = while_loop_graph(include_eos, max_seq_len=12)
    step_np = np.abs(rng.standard_normal((5, 3))).astype(np.float32) * np.array([[0.05], [0.4], [0.2], [1], [0.1]],
                                                                                 np.float32)
    frames, lens = while_reference(step_np, include_eos, 12)
    st, ref = g.stepper({"step": step_np}), g.stepper({"step": step_np})
    st.run_to(st.T)
    while not ref.finished:
        ref.step()
    assert in_graph(st) and st.finished
    assert st.ended == {b: int(n) for b, n in enumerate(lens)}
    state = st.states[0]
    assert_same_steps(st, ref, (state,))
    for b, n in enumerate(lens):
        if n:
            np.testing.assert_allclose(st.value(state)[b], frames[b][n - 1], atol=1e-6)


def test_a_live_search_run_in_the_graph_is_numpys_beam_search(rng):
    g, loop, y, labels, (h, c) = build_feedback(beam_size=3)
    p = params_feedback(rng)
    enc = rng.standard_normal((4, 4)).astype(np.float32)
    expected, _ = beam_search_feedback(p, enc, 3)
    st, ref = g.stepper({"enc": enc}, params=p), g.stepper({"enc": enc}, params=p)
    st.run_to(2)
    st.run_to(st.T)
    single_steps(ref, ref.T)
    assert in_graph(st) and st.finished and st.t == len(expected)
    check_steps(st, expected, (h, c))
    assert_same_steps(st, ref, (h, c))
    st.step_back(2)
    check_steps(st.step(2), expected, (h, c))
    # a bound in a search: on every hypothesis' value
    bound = float(np.median([np.abs(ref.value(c, at=i)).max() for i in range(1, ref.t + 1)]))
    st.reset()
    ref.reset()
    hit = st.run_until(rd.on_state(c, above=bound, below=-bound))
    assert ref.run_until(rd.on_state(c, lambda v: (np.abs(v) > np.float32(bound)).any())) == hit
    assert_same_steps(st, ref, (h, c))


@pytest.mark.parametrize("beam,accum", [(4, False), (3, True)])
def test_a_configs_live_search_run_in_the_graph_equals_returnns_search(rng, beam, accum):
    m, x, lens = search_model(rng, beam, accum)
    res = m.run({"data": x}, seq_lens={"data": lens}, search=True)  # RETURNN's own beam search
    st = m.stepper({"data": x}, seq_lens={"data": lens}, search=True)
    ref = m.stepper({"data": x}, seq_lens={"data": lens}, search=True)
    st.run_to(st.T)
    while not ref.finished:
        ref.step()
    assert in_graph(st) and st.finished
    for b in range(5):
        best = st.beams().hypotheses(b)[0]
        assert best["labels"] == res.numpy("output")[b, :int(res.lens("output")[b])].tolist(), b
        np.testing.assert_allclose(best["score"], res.scores("output")[b][0], atol=1e-5, rtol=0)
    assert_same_steps(st, ref, st.states)
    st.step_back(1)
    ref.step_back(1)
    assert st.run_until(rd.on_nan()) is False and ref.run_until(lambda s: rd.on_nan()(s)) is False
    assert_same_steps(st, ref, st.states)


@pytest.mark.parametrize("sequence", [None, 2])
def test_run_until_a_label_is_chosen_stops_where_single_steps_stop(rng, sequence):
    g, loop, y, labels, (h, c) = build_feedback(beam_size=3)
    p = params_feedback(rng)
    enc = rng.standard_normal((4, 4)).astype(np.float32)
    expected, _ = beam_search_feedback(p, enc, 3)
    for label in range(6):
        want = next((t + 1 for t, picks in enumerate(expected) for b, chosen in enumerate(picks)
                     if (sequence is None or b == sequence) and any(pick[2] == label for pick in chosen)), None)
        st, ref = g.stepper({"enc": enc}, params=p), g.stepper({"enc": enc}, params=p)
        hit = st.run_until(rd.on_label(label, sequence))
        assert ref.run_until(lambda s: rd.on_label(label, sequence)(s)) == hit == (want is not None)
        assert in_graph(st) and st.t == (want or len(expected)), (label, st.t, want)
        assert_same_steps(st, ref, (h, c))
        if hit:
            where = "" if sequence is None else f" in sequence {sequence}"
            assert st.breakpoint == f"label {label} chosen{where} at t={want - 1}"
    with pytest.raises(rd.RunError, match="expected a label number"):
        rd.on_label("a")
