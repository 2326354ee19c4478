"""The debugger widget driven through its Python methods and traitlets, on real traces from RETURNN."""
import gc
import sys

import numpy as np
import pytest
from ipywidgets.widgets import widget as ipywidget

import recdebug as rd
from recdebug.views.widgets import HeatmapView
from test_design_examples import lstm_loop

batch = rd.batch_dim
LENS = np.array([6, 3, 1, 5], dtype=np.int32)


@pytest.fixture
def case(rng):
    g, time, dim, x, lstm, h, out, loop = lstm_loop()
    x_np = rng.standard_normal((4, 6, 3)).astype(np.float32)
    tr = g.trace({"x": x_np}, seq_lens={time: LENS})
    return g, time, dim, lstm, loop, x_np, tr


def test_controls_move_the_step_and_every_view_follows(case):
    g, time, dim, lstm, loop, x_np, tr = case
    d = rd.debugger(tr)
    # a recorded trace: every step is there and the cursor starts on t=0, where one looks first
    assert set(d.views) == {"loop/lstm.h", "loop/lstm.c"} and d.T == 6 and d.t == 1
    assert d.status == "at t=0 (recorded trace: all 6 steps, t=0…5) · cpu"
    assert "every step is recorded" in d.legend.value and "not run yet" not in d.legend.value
    assert all(v.recorded and v.known == 6 and v.cursor == 0 for v in d.views.values())
    assert d.slider.min == 0 and d.slider.value == 0
    d.step()
    assert d.t == 2 and d.slider.value == 1  # the slider shows the cursor: t=1
    assert all(v.cursor == 1 for v in d.views.values())
    h = tr.numpy(lstm.h, order=(batch, time, dim))
    np.testing.assert_array_equal(d.views["loop/lstm.h"].readout(), h[0, 1])
    d.step_back()
    assert d.t == 1 and d.views["loop/lstm.c"].cursor == 0
    d.slider.value = 4  # the time slider: the cursor to t=4
    assert d.t == 5 and d.views["loop/lstm.h"].cursor == 4
    d.slider.value = 0  # the first step
    assert d.t == 1 and d.views["loop/lstm.h"].cursor == 0
    d.seek(0)  # a trace has no step before t=0 to look at
    assert d.t == 1
    d.run()
    assert d.t == 6 and d.breakpoint == "" and d.status.startswith(
        "at t=5 (recorded trace: all 6 steps, t=0…5) · cpu · sequence 0 ended after t=5 (6 steps)")
    d.reset()
    assert d.t == 1 and all(v.cursor == 0 for v in d.views.values())
    d.b_step.click()
    assert d.t == 2
    d.b_run.click()
    d.b_back.click()
    assert d.t == 5
    d.b_reset.click()
    assert d.t == 1


def test_sequence_selection_sends_that_sequences_values(case):
    g, time, dim, lstm, loop, x_np, tr = case
    d = rd.debugger(tr)
    c = tr.numpy(lstm.c, order=(batch, time, dim))
    d.seq.value = 1
    view = d.views["loop/lstm.c"]
    assert d.sequence == 1 and view.length == 3 and view.shape == [6, 4]
    np.testing.assert_array_equal(np.frombuffer(view.values, np.float32).reshape(6, 4), c[1])
    assert len(view.values) == 6 * 4 * 4  # one float32 buffer, exactly the raw bytes
    d.seek(4)
    assert "sequence 1 ended after t=2 (3 steps)" in d.status
    assert view.value_at(2, 3) == pytest.approx(float(c[1, 2, 3]))  # what hovering shows
    with pytest.raises(rd.RecDebugError):
        d.select_sequence(4)


def test_selecting_a_layer_in_the_hierarchy_shows_its_values(case):
    g, time, dim, lstm, loop, x_np, tr = case
    d = rd.debugger(tr)
    paths = {n["path"]: n for n in d.hierarchy.nodes}
    assert paths["loop"]["cls"] == "rec" and paths["loop"]["children"]
    unit = [n for n in d.hierarchy.nodes if n["parent"] == "loop"]
    assert {n["path"] for n in unit} >= {"loop/lstm.h", "loop/lstm.c", "loop/lstm.rec_linear", "loop/unstack"}
    assert paths["loop/lstm.ff_linear"]["moved_out"] and not paths["loop/lstm.rec_linear"]["moved_out"]
    assert paths["loop/lstm.rec_linear"]["params"] == "lstm.rec_linear.bias (16)"
    assert "self.rec_linear(self.h.get())" in paths["loop/lstm.rec_linear"]["line"]
    assert paths["loop/lstm.rec_linear"]["dims"] == "{batch, dim*4:16}"
    d.hierarchy.selected = "loop/lstm.sigmoid"  # a click in the tree
    assert d.selected_layer == "loop/lstm.sigmoid"
    assert d.picked.shape == [6, 4] and d.picked.title == "layer loop/lstm.sigmoid"
    sig = tr.numpy("loop/lstm.sigmoid", order=(batch, time, dim))
    np.testing.assert_array_equal(np.frombuffer(d.picked.values, np.float32).reshape(6, 4), sig[0])
    d.step(2)
    assert d.picked.cursor == 2
    d.select_layer("lstm.ff_linear.weight")
    assert "no per-step values" in d.picked.title
    assert '"class": "rec"' in d.net_text.value


def test_breakpoint_status_on_a_nan(case):
    g, time, dim, lstm, loop, x_np, tr = case
    x_bad = x_np.copy()
    x_bad[1, 2, 0] = np.nan
    d = rd.debugger(g.trace({"x": x_bad}, seq_lens={time: LENS}))
    assert d.run() is True
    assert d.t == 3 and d.breakpoint == "NaN/Inf in loop/lstm.c at t=2"
    assert "breakpoint: NaN/Inf in loop/lstm.c at t=2" in d.status


def test_run_reads_each_state_once_not_once_per_step(case):
    g, time, dim, lstm, loop, x_np, tr = case
    d = rd.debugger(tr)
    calls = []
    mask = tr.mask
    tr.mask = lambda *a, **k: calls.append(a) or mask(*a, **k)  # the padding mask: O(T) work per call
    assert d.run() is False and d.t == 6
    assert len(calls) == len(d.views)  # one pass over each State for all steps, whatever T is
    x_bad = x_np.copy()
    x_bad[3, 4, 1] = np.nan  # sequence 3 has 5 frames
    x_bad[1, 2, 0] = np.nan  # sequence 1 has 3 frames: t=2 is valid
    x_bad[2, 1, 0] = np.nan  # sequence 2 has 1 frame: t=1 is padding, not a breakpoint
    d = rd.debugger(g.trace({"x": x_bad}, seq_lens={time: LENS}))
    d.seek(1)
    assert d.run() is True and d.t == 3 and d.breakpoint == "NaN/Inf in loop/lstm.c at t=2"
    assert d.run() is True and d.t == 5 and d.breakpoint == "NaN/Inf in loop/lstm.c at t=4"
    assert d.run() is False and d.t == 6 and d.breakpoint == ""


def test_run_stops_where_a_predicate_holds(case):
    g, time, dim, lstm, loop, x_np, tr = case
    d = rd.debugger(tr)
    assert d.run(lambda dbg, t: t == 3) is True and d.t == 4 and d.breakpoint == "condition at t=3"


def _bad_arguments(case):
    g, time, dim, lstm, loop, x_np, tr = case
    st = g.stepper({"x": x_np}, seq_lens={time: LENS})
    return [((42,), r"expects an rd.Trace or a stepper \(g.stepper, m.stepper\), got int"),
            ((tr, 42), "other=.*a trace to compare with, got int"),
            ((st, tr), "other=.*compares two traces, but the debugger is on a stepper"),
            ((tr, None, 5), "layers=.*a list of layer paths, got int"),
            ((tr, None, [3]), "layers=.*got 3 in it"),
            ((tr, None, ["loop/nope"]), "no layer 'loop/nope' in this loop"),
            ((rd.Trace({}, {}, {}),), "this trace has no loop values")]


def test_a_debugger_that_cannot_be_built_raises_and_closes_quietly(case, capfd, monkeypatch):
    monkeypatch.setattr(sys, "unraisablehook", sys.__unraisablehook__)  # as in a notebook: errors in __del__ print
    cases = _bad_arguments(case)
    gc.collect()
    capfd.readouterr()
    open_widgets = len(ipywidget._instances)
    for args, message in cases:
        with pytest.raises(rd.RecDebugError, match=message):
            rd.debugger(*args)
        gc.collect()
        out, err = capfd.readouterr()
        assert "Exception ignored" not in out + err and "Traceback" not in err, (args, err)
        assert len(ipywidget._instances) == open_widgets  # what was built half-way is closed


def test_layers_argument_takes_one_path_or_a_list(case):
    g, time, dim, lstm, loop, x_np, tr = case
    assert rd.debugger(tr, layers="loop/lstm.tanh").picked.title == "layer loop/lstm.tanh"
    assert rd.debugger(tr, layers=["loop/lstm.tanh"]).selected_layer == "loop/lstm.tanh"


def test_diff_marks_the_first_step_and_units(case):
    g, time, dim, lstm, loop, x_np, tr = case
    x2 = x_np.copy()
    x2[0, 3, 1] += 1.0
    d = rd.debugger(tr, other=g.trace({"x": x2}, seq_lens={time: LENS}))
    view = d.views["loop/lstm.c"]
    mask = np.frombuffer(view.diff, np.uint8).reshape(6, 4)
    assert view.diff_first == 3 and not mask[:3].any() and mask[3].all()
    assert "first difference: loop/lstm.add at t=3" in d.diff_summary
    d.select_sequence(1)  # another sequence: no difference there
    assert d.views["loop/lstm.c"].diff_first == -1


def test_live_stepper_debugger_sends_one_row_per_step(case):
    g, time, dim, lstm, loop, x_np, tr = case
    st = g.stepper({"x": x_np}, seq_lens={time: LENS})
    d = rd.debugger(st)
    view = d.views["lstm/c"]
    assert view.known == 0 and d.T == 6
    d.step()
    d.step()
    assert st.t == 2 and view.known == 2 and view.cursor == 1
    np.testing.assert_allclose(view.readout(), st.value(lstm.c)[0], atol=1e-6)
    assert len(view.rows) == 2 * (4 + 4 * 4)  # the rows since the first drawing (each its step, then its values)
    assert not np.frombuffer(view.values, np.float32).any()  # the first drawing, not sent again
    np.testing.assert_allclose(view.drawn()[:2], [st.value(lstm.c, at=k)[0] for k in (1, 2)], atol=1e-6)
    d.step_back()
    assert st.t == 1 and view.cursor == 0
    c = tr.numpy(lstm.c, order=(batch, time, dim))
    d.run()
    assert st.t == 6
    np.testing.assert_allclose(view.drawn(), c[0], atol=1e-5)  # what the browser draws: every step
    d.select_layer("loop/lstm.tanh")
    assert d.picked.shape == [6, 4]


def test_live_stepper_debugger_shows_the_steps_after_an_edit(case):
    g, time, dim, lstm, loop, x_np, tr = case
    st = g.stepper({"x": x_np}, seq_lens={time: LENS})
    d = rd.debugger(st)
    view = d.views["lstm/c"]
    d.step(4)
    d.step_back(2)
    st.set_state(lstm.c, np.full((4, 4), 3.0, np.float32))  # from code, while the widget is shown
    d.step(2)
    assert st.t == 4
    rows = view.drawn()
    np.testing.assert_allclose(rows[0], tr.numpy(lstm.c, order=(batch, time, dim))[0, 0], atol=1e-5)
    np.testing.assert_allclose(rows[1], 3.0)  # the edited value after step 1
    for k in (2, 3):  # after the edit: the recomputed steps, not the ones shown before
        np.testing.assert_allclose(rows[k], st.value(lstm.c, at=k + 1)[0], atol=1e-6)
        assert not np.allclose(rows[k], tr.numpy(lstm.c, order=(batch, time, dim))[0, k], atol=1e-3)
    d.reset()
    assert d.t == 0 and view.known == 0


def test_static_plot(case):
    g, time, dim, lstm, loop, x_np, tr = case
    fig = tr.plot(sequence=1, t=2)
    assert len(fig.axes) == 4 and "loop/lstm.c" in fig.axes[0].get_title()


def test_live_debugger_follows_its_stepper_driven_from_code(case):
    """Moved or edited from code in another cell, the stepper tells its debugger, which shows the new step
    (not the old one until the next click)."""
    g, time, dim, lstm, loop, x_np, tr = case
    st = g.stepper({"x": x_np}, seq_lens={time: LENS})
    d = rd.debugger(st)
    view = d.views["lstm/c"]
    c = tr.numpy(lstm.c, order=(batch, time, dim))
    st.run_to(4)
    assert d.t == 4 and d.slider.value == 3 and view.cursor == 3 and view.known == 4
    assert d.status.startswith("at t=3 (4 of 6 steps run)")
    np.testing.assert_allclose(view.drawn()[:4], c[0, :4], atol=1e-5)
    st.set_state(lstm.c, np.full((4, 4), 3.0, np.float32))  # an edit at the same step
    np.testing.assert_allclose(view.readout(), 3.0)
    st.step_back(2)
    assert d.t == 2 and view.cursor == 1
    calls = []
    st.watch(lambda: calls.append(st.t))
    assert st.run_until(rd.on_nan()) is False and d.t == 6 and calls == [6]  # a run tells its watchers once
    st.reset()
    assert d.t == 0 and view.known == 0 and view.cursor == -1
    st.close()
    assert "stepper closed: its close() was called" in d.status


def _synced(view) -> np.ndarray:
    """What a view drawn from the widget's synced state shows (as the browser reads it after a reload)."""
    state = view.get_state()
    T, U = state["shape"]
    out = np.frombuffer(bytes(state["values"]), np.float32).reshape(T, U).copy()
    rows = bytes(state["rows"])
    for at in range(0, len(rows), 4 + 4 * U):
        out[int(np.frombuffer(rows[at:at + 4], np.int32)[0])] = np.frombuffer(rows[at + 4:at + 4 + 4 * U], np.float32)
    return out


def test_a_view_drawn_late_reads_every_step_from_the_synced_state(case):
    """Steps run before the widget is shown (or before a page reload) are in the synced state, not only in
    messages sent to views that existed then: `values` with `rows` over it is what the stepper holds."""
    g, time, dim, lstm, loop, x_np, tr = case
    st = g.stepper({"x": x_np}, seq_lens={time: LENS})
    d = rd.debugger(st)
    view = d.views["lstm/c"]
    st.step(3)  # from code, before any view is drawn
    assert len(view.rows) == 3 * (4 + 4 * 4)  # the three rows, each with its step
    drawn = _synced(view)
    for k in range(3):
        np.testing.assert_allclose(drawn[k], st.value(lstm.c, at=k + 1)[0], atol=1e-6)
    assert not drawn[3:].any() and view.known == 3
    st.run_to(6)
    np.testing.assert_allclose(_synced(view), tr.numpy(lstm.c, order=(batch, time, dim))[0], atol=1e-5)
    many = HeatmapView("x")  # once many rows changed, the whole array goes out and `rows` starts empty
    many.show(np.zeros((20, 2), np.float32), 20, 0)
    for k in range(9):
        many.set_rows({k: [k, -k]}, known=k + 1)
        assert (many.rows == b"") == (k == 8)
    np.testing.assert_array_equal(_synced(many)[:9], [[k, -k] for k in range(9)])
    first = np.zeros((6, 4), np.float32)
    view.show(first, 6, 0)  # the values of the first drawing again: a change from what the browser has now
    assert view.values == first.tobytes() and view.rows == b"" and view.known == 0


def test_a_live_view_greys_the_steps_after_its_sequence_ended(case):
    """Stepping on after the shown sequence ended: its length reaches the view, so the later steps are padding."""
    g, time, dim, lstm, loop, x_np, tr = case
    st = g.stepper({"x": x_np}, seq_lens={time: LENS})
    d = rd.debugger(st)
    d.select_sequence(1)  # 3 steps
    view = d.views["lstm/h"]
    st.step(2)
    assert view.length == 6  # not ended yet
    st.step(3)
    assert view.length == 3 and "sequence 1 ended after t=2 (3 steps)" in d.status
    d.run()
    assert view.length == 3 and view.known == 6 and d.views["lstm/c"].length == 3
    st.step_back(4)  # before the end again
    assert view.length == 6


def test_views_name_their_axes_share_a_scale_and_draw_labels_as_categories(case):
    g, time, dim, lstm, loop, x_np, tr = case
    d = rd.debugger(tr)
    v = d.views["loop/lstm.c"]
    assert v.unit_label == "dim (4 units)" and v.axis_label == "t (time)" and not v.categorical and v.scale == 0
    assert not v.reveal and d.picked.layout.display == "none"  # no empty box until a layer is picked
    d.select_layer("loop/lstm.tanh")
    assert d.picked.layout.display is None and d.picked.unit_label == "dim (4 units)"
    shared = rd.debugger(tr, shared_scale=True, reveal=True)
    h, c = (tr.numpy(s, order=(batch, time, dim))[0] for s in (lstm.h, lstm.c))
    assert all(view.reveal for view in shared.views.values())
    assert [view.scale for view in shared.views.values()] == [pytest.approx(float(max(abs(h).max(), abs(c).max())))] * 2
    shared.select_sequence(2)  # one valid step: the range of that step only
    h, c = (tr.numpy(s, order=(batch, time, dim))[2, :1] for s in (lstm.h, lstm.c))
    assert shared.views["loop/lstm.h"].scale == pytest.approx(float(max(abs(h).max(), abs(c).max())))
    assert rd.debugger(g.stepper({"x": x_np}, seq_lens={time: LENS})).views["lstm/h"].reveal  # live: on

    vocab = rd.Dim("vocab", 4)
    with rd.Graph() as g2:
        x = rd.Input("x", {batch, time, dim})
        n = rd.State({batch}, initial=0, dtype="int32", sparse_dim=vocab)
        with rd.Loop() as lp:
            lp.unstack(x)
            n.assign(rd.where(n.get() >= 3, n.get() * 0, n.get() + 1))
    x2 = np.zeros((2, 5, 4), np.float32)
    names = ["zero", "one", "two", "three"]
    for dbg in (rd.debugger(g2.trace({"x": x2}, seq_lens={time: [5, 2]}), vocab=names),
                rd.debugger(g2.stepper({"x": x2}, seq_lens={time: [5, 2]}), vocab={"vocab": names})):
        view = next(iter(dbg.views.values()))
        assert view.categorical and view.labels == names and view.unit_label == "one value"
        dbg.run()
        np.testing.assert_array_equal(view._array[:, 0], [1, 2, 3, 0, 1])
    with pytest.raises(rd.RecDebugError, match="vocab"):
        rd.debugger(tr, vocab="abc")


def _picture_colors(d) -> set:
    """The colours that fill an area (100 pixels or more) of the debugger's picture: not the shades of
    antialiased text."""
    import base64
    import io

    import matplotlib.image

    bundle = d._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle and "text/plain" in bundle
    img = matplotlib.image.imread(io.BytesIO(base64.b64decode(bundle["image/png"])), format="png")
    assert img.shape[0] > 100 and img.shape[1] > 400
    colors, counts = np.unique((img[..., :3] * 255).round().astype(int).reshape(-1, 3), axis=0, return_counts=True)
    return {tuple(int(v) for v in c) for c, n in zip(colors, counts) if n >= 100}


def test_the_display_bundle_holds_a_picture_of_the_view_now(case):
    """Beside the widget, a PNG of what it shows (for exported notebooks): padding grey where the sequence shown
    has padding, NaN green where a State is NaN, each only then."""
    g, time, dim, lstm, loop, x_np, tr = case
    grey, green = (190, 190, 190), (0, 200, 90)
    d = rd.debugger(tr)
    colors = _picture_colors(d)  # sequence 0: 6 of 6 steps
    assert grey not in colors and green not in colors and (255, 255, 255) in colors
    hatch = lambda cs: any(140 <= c[0] == c[1] == c[2] <= 160 for c in cs)  # noqa: E731 (its grey lines)
    assert not hatch(colors)
    live = rd.debugger(g.stepper({"x": x_np}, seq_lens={time: LENS}))
    live.step(2)
    assert hatch(_picture_colors(live))  # steps not run yet are hatched, as in the widget
    d.select_sequence(1)  # 3 of 6 steps
    assert grey in _picture_colors(d)
    x_bad = x_np.copy()
    x_bad[0, 2, 0] = np.nan
    bad = rd.debugger(g.trace({"x": x_bad}, seq_lens={time: LENS}))
    assert green in _picture_colors(bad)


def test_picture_colours_follow_the_heatmaps_mapping():
    from recdebug.views.plot import view_rgba

    values = np.array([[1.0, -1.0, 0.0], [np.nan, np.inf, 0.5], [2.0, 2.0, 2.0], [3.0, 3.0, 3.0]], np.float32)
    rgba = view_rgba(values, length=2, shown=3, scale=1.0, categorical=False)  # [units, steps, 4]
    assert rgba.shape == (3, 4, 4)
    assert tuple(rgba[0, 0]) == (255, 0, 0, 255) and tuple(rgba[1, 0]) == (0, 0, 255, 255)  # +scale red, -scale blue
    assert tuple(rgba[2, 0]) == (255, 255, 255, 255)  # 0: white
    assert tuple(rgba[0, 1]) == (0, 200, 90, 255) and tuple(rgba[1, 1]) == (255, 0, 255, 255)  # NaN, Inf
    assert tuple(rgba[2, 1]) == (255, 128, 128, 255)  # half the scale
    assert (rgba[:, 2, :3] == 190).all() and (rgba[:, 2, 3] == 255).all()  # padding: grey
    assert (rgba[:, 3, 3] == 0).all()  # not shown yet: transparent
    labels = view_rgba(np.array([[0], [1], [3]], np.float32), 3, 3, 1.0, categorical=True)
    assert [tuple(c) for c in labels[0, :, :3]] == [(31, 119, 180), (255, 127, 14), (214, 39, 40)]


def test_the_pictures_colour_bar_runs_from_zero_for_values_never_negative_and_is_symmetric_otherwise():
    """STYLE.md: signed values on a diverging map centred on 0, non-negative ones (coverage, probabilities) on a
    sequential one; the negative in the padding step does not count."""
    from recdebug.views.plot import draw_views

    def bar_range(values, length):
        view = dict(title="v", unit_label="unit", axis_label="t", values=np.asarray(values, np.float32),
                    length=length, known=len(values), cursor=0, scale=0, categorical=False, labels=None,
                    reveal=False)
        fig = draw_views([view], "status")
        return tuple(round(float(x), 6) for x in fig.axes[1].get_ylim())

    assert bar_range([[0.5, 2.0], [0.0, 1.0], [-7.0, 3.0]], length=2) == (0.0, 2.0)  # t=2 is padding
    assert bar_range([[0.5, 2.0], [-1.0, 1.0]], length=2) == (-2.0, 2.0)
