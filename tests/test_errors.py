"""Every misuse listed in DESIGN.md raises the named error class, and the message names the user's line."""
import numpy as np
import pytest

import recdebug as rd

batch = rd.batch_dim
time, hid, other = rd.Dim("time"), rd.Dim("hid", 3), rd.Dim("other", 2)
SOURCE = open(__file__).read().splitlines()


def line_of(marker):
    """The line number of the one source line carrying ``# misuse: <marker>``."""
    hits = [i + 1 for i, text in enumerate(SOURCE) if text.rstrip().endswith(f"# misuse: {marker}")]
    assert len(hits) == 1, marker
    return hits[0]


def check(excinfo, marker, cls):
    err = excinfo.value
    assert type(err) is cls
    assert isinstance(err, rd.RecDebugError)
    lineno = line_of(marker)
    assert err.line is not None and err.line.lineno == lineno and err.line.filename == __file__
    code = SOURCE[lineno - 1].split("# misuse:")[0].strip()
    assert f"line {lineno}: {code}" in str(err)


def test_unstack_of_value_from_the_same_loop():
    with pytest.raises(rd.LoopError) as e:
        with rd.Graph():
            x = rd.Input("x", {batch, time, hid})
            with rd.Loop() as loop:
                y = rd.tanh(loop.unstack(x))
                loop.unstack(y)  # misuse: unstack-inside
    check(e, "unstack-inside", rd.LoopError)


def test_inner_loop_value_used_outside_without_stack_or_last():
    with pytest.raises(rd.LoopError) as e:
        with rd.Graph():
            x = rd.Input("x", {batch, time, hid})
            with rd.Loop() as loop:
                y = rd.tanh(loop.unstack(x))
            rd.relu(y)  # misuse: escape
    check(e, "escape", rd.LoopError)
    assert "stack" in str(e.value)


def test_inner_loop_value_used_in_the_outer_loop():
    with pytest.raises(rd.LoopError) as e:
        with rd.Graph():
            x = rd.Input("x", {batch, time, hid})
            with rd.Loop(max_seq_len=3) as outer:
                with rd.Loop() as inner:
                    y = rd.tanh(inner.unstack(x))
                z = y * 2.0  # misuse: escape-nested
                outer.end(rd.reduce_max(z, hid) > 0)
    check(e, "escape-nested", rd.LoopError)


def test_stack_of_a_value_from_another_loop():
    with pytest.raises(rd.LoopError) as e:
        with rd.Graph():
            x = rd.Input("x", {batch, time, hid})
            with rd.Loop() as first:
                y = rd.tanh(first.unstack(x))
                first.stack(y)
            with rd.Loop() as second:
                second.unstack(x)
                second.stack(y)  # misuse: stack-other
    check(e, "stack-other", rd.LoopError)


def test_last_of_an_inner_loop_value_in_the_outer_loop():
    with pytest.raises(rd.LoopError) as e:
        with rd.Graph():
            x = rd.Input("x", {batch, time, hid})
            with rd.Loop() as outer:
                x_t = outer.unstack(x)
                with rd.Loop(max_seq_len=2) as inner:
                    y = x_t * 2.0
                    inner.end(rd.reduce_max(y, hid) > 0)
                outer.last(y)  # misuse: last-other
    check(e, "last-other", rd.LoopError)


def test_assign_twice_in_one_iteration():
    with pytest.raises(rd.LoopError) as e:
        with rd.Graph():
            x = rd.Input("x", {batch, time, hid})
            h = rd.State({batch, hid})
            with rd.Loop() as loop:
                x_t = loop.unstack(x)
                h.assign(x_t)
                h.assign(x_t + h.get())  # misuse: assign-twice
    check(e, "assign-twice", rd.LoopError)
    assert "twice" in str(e.value)


def test_assign_with_other_dims():
    with pytest.raises(rd.DimError) as e:
        with rd.Graph():
            x = rd.Input("x", {batch, time, other})
            h = rd.State({batch, hid})
            with rd.Loop() as loop:
                h.assign(loop.unstack(x))  # misuse: assign-dims
    check(e, "assign-dims", rd.DimError)


def test_end_twice():
    with pytest.raises(rd.LoopError) as e:
        with rd.Graph():
            h = rd.State({batch, hid})
            with rd.Loop(max_seq_len=4) as loop:
                h.assign(h.get() + 1.0)
                loop.end(rd.reduce_max(h.get(), hid) > 2.0)
                loop.end(rd.reduce_max(h.get(), hid) > 3.0)  # misuse: end-twice
    check(e, "end-twice", rd.LoopError)


def test_ops_on_mismatching_dims():
    with pytest.raises(rd.DimError) as e:
        with rd.Graph():
            a = rd.Input("a", {batch, hid})
            b = rd.Input("b", {batch, other})
            a + b  # misuse: dims
    check(e, "dims", rd.DimError)
    assert "hid" in str(e.value) and "other" in str(e.value)


@pytest.mark.parametrize("method", ["stack", "last", "unstack"])
def test_loop_methods_outside_any_loop(method):
    with pytest.raises(rd.LoopError) as e:
        with rd.Graph():
            x = rd.Input("x", {batch, time, hid})
            with rd.Loop() as loop:
                x_t = loop.unstack(x)
                x_t * 1.0
            getattr(loop, method)(x)  # misuse: outside
    check(e, "outside", rd.LoopError)
    assert "outside any loop" in str(e.value)


def test_loop_without_unstack_or_end():
    with pytest.raises(rd.LoopError) as e:
        with rd.Graph():
            h = rd.State({batch, hid})
            with rd.Loop(max_seq_len=3):  # misuse: no-end
                h.assign(h.get() + 1.0)
    check(e, "no-end", rd.LoopError)


def test_while_loop_without_max_seq_len():
    with pytest.raises(rd.LoopError) as e:
        with rd.Graph():
            h = rd.State({batch, hid})
            with rd.Loop() as loop:  # misuse: no-max
                h.assign(h.get() + 1.0)
                loop.end(rd.reduce_max(h.get(), hid) > 2.0)
    check(e, "no-max", rd.LoopError)
    assert "max_seq_len" in str(e.value)


def test_stacked_value_used_inside_its_own_loop():
    with pytest.raises(rd.LoopError) as e:
        with rd.Graph():
            x = rd.Input("x", {batch, time, hid})
            with rd.Loop() as loop:
                out = loop.stack(loop.unstack(x) * 2.0)
                rd.reduce_sum(out, time)  # misuse: stacked-inside
    check(e, "stacked-inside", rd.LoopError)


def test_graph_is_usable_after_an_error():
    """An error inside a loop body closes the loop; the next graph builds and runs normally."""
    with pytest.raises(rd.DimError):
        with rd.Graph():
            a = rd.Input("a", {batch, hid})
            with rd.Loop(max_seq_len=2):
                a + rd.zeros({batch, other})
    with rd.Graph() as g:
        a = rd.Input("a", {batch, hid})
        b = a * 3.0
    np.testing.assert_allclose(g.run({"a": np.ones((2, 3), np.float32)}).numpy(b), 3.0)


# --- bad data and arguments at run time: a RunError (or DimError) naming what is wrong and the caller's line ---

vocab = rd.Dim("vocab", 5)


@pytest.fixture(scope="module")
def labelled():
    """A loop over a float input x {batch, time, hid} and labels y {batch, time} (sparse over vocab)."""
    with rd.Graph() as g:
        x = rd.Input("x", {batch, time, hid})
        y = rd.Input("y", {batch, time}, dtype="int32", sparse_dim=vocab)
        h = rd.State({batch, hid}, initial=0)
        emb = rd.Embedding(vocab, hid)
        with rd.Loop() as loop:
            h.assign(rd.tanh(loop.unstack(x) + emb(loop.unstack(y)) + h.get()))
            loop.stack(h.get())
    feeds = {"x": np.ones((2, 3, 3), np.float32), "y": np.ones((2, 3), np.int32)}
    yield g, h, feeds
    g.close()


def test_an_empty_batch_is_refused(labelled):
    g, h, feeds = labelled
    with pytest.raises(rd.RunError) as e:
        g.run({"x": np.ones((0, 3, 3)), "y": np.ones((0, 3), int)})  # misuse: empty-batch
    check(e, "empty-batch", rd.RunError)
    assert "input 'x': axis 'batch' has size 0" in str(e.value)


def test_an_axis_of_size_zero_is_refused(labelled):
    g, h, feeds = labelled
    with pytest.raises(rd.RunError) as e:
        g.run({"x": np.ones((2, 0, 3)), "y": np.ones((2, 0), int)})  # misuse: no-frames
    check(e, "no-frames", rd.RunError)
    assert "input 'x': axis 'time' has size 0" in str(e.value)


def test_a_ragged_list_is_refused(labelled):
    g, h, feeds = labelled
    ragged = [[[1.0, 2.0, 3.0]], [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]]
    with pytest.raises(rd.RunError) as e:
        g.run({"x": ragged, "y": feeds["y"]})  # misuse: ragged
    check(e, "ragged", rd.RunError)
    assert "input 'x': not an array of numbers (a ragged list" in str(e.value)


@pytest.mark.parametrize("label", [5, -1])
def test_labels_outside_the_vocabulary_name_the_input_and_frame(labelled, label):
    g, h, feeds = labelled
    y = np.array([[1, 2, 3], [4, label, 0]])
    with pytest.raises(rd.RunError) as e:
        g.run({"x": feeds["x"], "y": y}, seq_lens={time: [3, 2]})  # misuse: bad-label
    check(e, "bad-label", rd.RunError)
    assert f"input 'y': label {label} at batch=1, time=1 is outside the vocabulary 'vocab' (0..4)" in str(e.value)


def test_fractional_lengths_are_refused(labelled):
    g, h, feeds = labelled
    with pytest.raises(rd.RunError) as e:
        g.run(feeds, seq_lens={time: [3, 2.7]})  # misuse: fractional-length
    check(e, "fractional-length", rd.RunError)
    assert "seq_lens['time']: int32 values expected, got 2.7 at batch=1" in str(e.value)


def test_fractional_labels_are_refused_and_whole_float_labels_taken(labelled):
    g, h, feeds = labelled
    with pytest.raises(rd.RunError) as e:
        g.run({"x": feeds["x"], "y": feeds["y"] * 1.5})  # misuse: fractional-label
    check(e, "fractional-label", rd.RunError)
    assert "input 'y': int32 values expected, got 1.5 at batch=0, time=0" in str(e.value)
    as_float = g.trace({"x": feeds["x"], "y": feeds["y"].astype(np.float64)}, capture=["h"])
    np.testing.assert_array_equal(as_float.numpy(h), g.trace(feeds, capture=["h"]).numpy(h))


@pytest.mark.parametrize("value,message", [
    (np.ones((2, 3, 3)) * 1j, "input 'x': complex values (complex128)"),
    (np.full((2, 3, 3), "1.5"), "input 'x': expected numbers, got <U3 values"),
])
def test_complex_and_string_inputs_are_refused(labelled, value, message):
    g, h, feeds = labelled
    with pytest.raises(rd.RunError) as e:
        g.run({"x": value, "y": feeds["y"]})  # misuse: not-real
    check(e, "not-real", rd.RunError)
    assert message in str(e.value)


def test_a_capture_pattern_that_matches_nothing_is_refused(labelled):
    g, h, feeds = labelled
    with pytest.raises(rd.RunError) as e:
        g.trace(feeds, capture=["h", "hh*"])  # misuse: capture
    check(e, "capture", rd.RunError)
    assert "capture pattern 'hh*' matches no layer or State inside a loop; they are: loop/" in str(e.value)


def test_a_diff_against_a_trace_of_another_batch_size_is_refused(labelled):
    g, h, feeds = labelled
    tr = g.trace(feeds, capture=["h"])
    three = g.trace({"x": np.ones((3, 3, 3)), "y": np.ones((3, 3), int)}, capture=["h"])
    with pytest.raises(rd.DimError) as e:
        tr.diff(three)  # misuse: diff-batch
    check(e, "diff-batch", rd.DimError)
    assert "this trace has a batch of 2 sequence(s), the other 3" in str(e.value)
    widget = rd.debugger(tr)
    with pytest.raises(rd.DimError) as e:
        widget.show_diff(three)  # misuse: show-diff-batch
    check(e, "show-diff-batch", rd.DimError)
    widget.show_diff(tr)  # the widget still compares traces that fit
    assert widget.diff_summary == "no differences"
    widget.close()


def test_an_array_fed_in_another_order_is_an_rd_feed_error(labelled):
    g, h, feeds = labelled
    assert "FeedError" in rd.__all__
    with pytest.raises(rd.FeedError) as e:
        g.run({"x": np.ones((3, 2, 2)), "y": np.ones((2, 2), int)})  # misuse: feed-order
    check(e, "feed-order", rd.FeedError)
    assert "input 'x': the array of shape (3, 2, 2) does not fit the Input's axis order" in str(e.value)
    assert '{"x": (array, (hid, batch, time))}' in str(e.value)


@pytest.fixture(scope="module")
def stepper(labelled):
    g, h, feeds = labelled
    return g.stepper(feeds)


@pytest.mark.parametrize("t", [2.5, "2", True])
def test_run_to_something_other_than_a_whole_step_is_refused(stepper, t):
    with pytest.raises(rd.RunError) as e:
        stepper.run_to(t)  # misuse: run-to
    check(e, "run-to", rd.RunError)
    assert "expected a whole number of steps" in str(e.value)


def test_set_state_with_strings_is_refused(labelled, stepper):
    g, h, feeds = labelled
    with pytest.raises(rd.RunError) as e:
        stepper.set_state(h, np.full((2, 3), "a"))  # misuse: set-state
    check(e, "set-state", rd.RunError)
    assert "set_state('h'): expected numbers, got <U1 values" in str(e.value)


def test_numpy_ints_are_dim_sizes_and_other_sizes_are_refused():
    z = rd.Dim("z", np.int64(4))
    assert z.size == 4 and type(z.size) is int and (rd.Dim("w", np.int32(2)) * np.int64(3)).size == 6
    with pytest.raises(rd.DimError) as e:
        rd.Dim("z", 2.5)  # misuse: dim-size
    check(e, "dim-size", rd.DimError)
    assert "size must be a positive whole number or None" in str(e.value)
    with pytest.raises(rd.DimError):
        rd.Dim("z", True)


# --- a State used as a value, a State never assigned ---

STATE_MISUSES = {
    "tensor-plus-state": lambda x_t, h: x_t + h,  # misuse: tensor-plus-state
    "state-times-number": lambda x_t, h: h * 2.0,  # misuse: state-times-number
    "number-minus-state": lambda x_t, h: 1.0 - h,  # misuse: number-minus-state
    "state-below-tensor": lambda x_t, h: h < x_t,  # misuse: state-below-tensor
    "tensor-equals-state": lambda x_t, h: x_t == h,  # misuse: tensor-equals-state
    "stack-of-state": lambda x_t, h: loop_of(x_t).stack(h),  # misuse: stack-of-state
    "end-on-state": lambda x_t, h: loop_of(x_t).end(h),  # misuse: end-on-state
    "tanh-of-state": lambda x_t, h: rd.tanh(h),  # misuse: tanh-of-state
    "softmax-of-state": lambda x_t, h: rd.softmax(h, hid),  # misuse: softmax-of-state
    "reduce-of-state": lambda x_t, h: rd.reduce_sum(h, hid),  # misuse: reduce-of-state
    "concat-with-state": lambda x_t, h: rd.concat(x_t, h),  # misuse: concat-with-state
    "where-of-state": lambda x_t, h: rd.where(x_t > 0.0, h, 0.0),  # misuse: where-of-state
    "gather-by-state": lambda x_t, h: rd.gather(x_t, h, hid),  # misuse: gather-by-state
    "linear-of-state": lambda x_t, h: rd.Linear(hid)(h),  # misuse: linear-of-state
    "lstm-of-state": lambda x_t, h: rd.LSTM(hid)(h),  # misuse: lstm-of-state
    "embedding-of-state": lambda x_t, h: rd.Embedding(vocab, hid)(h),  # misuse: embedding-of-state
}


def loop_of(t):
    return t.scope


@pytest.mark.parametrize("marker", sorted(STATE_MISUSES))
def test_a_state_used_as_a_value_says_to_read_it_with_get(marker):
    with rd.Graph():
        x = rd.Input("x", {batch, time, hid})
        h = rd.State({batch, hid})
        with rd.Loop() as loop:
            x_t = loop.unstack(x)
            with pytest.raises(rd.LoopError) as e:
                STATE_MISUSES[marker](x_t, h)
            h.assign(x_t)
    check(e, marker, rd.LoopError)
    assert "h is a State: use h.get() to read its value" in str(e.value)


def test_a_state_read_in_a_loop_and_never_assigned_warns_naming_its_line():
    assert "RecDebugWarning" in rd.__all__
    with pytest.warns(rd.RecDebugWarning) as caught:
        with rd.Graph():
            x = rd.Input("x", {batch, time, hid})
            h = rd.State({batch, hid})  # misuse: never-assigned
            with rd.Loop() as loop:
                loop.stack(loop.unstack(x) + h.get())
    assert len(caught) == 1
    warning = caught[0]
    lineno = line_of("never-assigned")
    assert warning.filename == __file__ and warning.lineno == lineno
    assert str(warning.message).startswith(f"State 'h' (created at {__file__}, line {lineno}: h = rd.State(")
    assert "never assigned: every get() gives its initial value" in str(warning.message)


def test_a_state_assigned_in_or_only_outside_loops_does_not_warn():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with rd.Graph():
            x = rd.Input("x", {batch, time, hid})
            h, c = rd.State({batch, hid}), rd.State({batch, hid})
            c.assign(rd.reduce_max(x, time))  # assigned before the loop only: read as a constant in it
            with rd.Loop() as loop:
                h.assign(loop.unstack(x) + h.get() + c.get())
                loop.stack(h.get())


# --- a dim given by its name: a name no dim of the operand has, or several have ---

NAMED_DIM_MISUSES = {  # (the name given, the call); x: {batch, time, hid}; both: {batch, time, another "time"}
    "reduce-unknown": ("hidden", lambda x, both, loop: rd.reduce_sum(x, "hidden")),  # misuse: reduce-unknown
    "softmax-ambiguous": ("time", lambda x, both, loop: rd.softmax(both, "time")),  # misuse: softmax-ambiguous
    "gather-unknown": ("win", lambda x, both, loop: rd.gather(x, loop.index, "win")),  # misuse: gather-unknown
    "split-unknown": ("other", lambda x, both, loop: rd.split(x, 3, "other")),  # misuse: split-unknown
    "unstack-ambiguous": ("time", lambda x, both, loop: loop.unstack(both, axis="time")),  # misuse: unstack-ambiguous
}


@pytest.mark.parametrize("marker", sorted(NAMED_DIM_MISUSES))
def test_a_dim_name_that_names_no_dim_or_several_is_refused_with_the_dims_by_name(marker):
    name, misuse = NAMED_DIM_MISUSES[marker]
    with rd.Graph():
        x = rd.Input("x", {batch, time, hid})
        both = rd.Input("both", {batch, time, rd.Dim("time")})
        with rd.Loop(max_seq_len=3) as loop:
            with pytest.raises(rd.DimError) as e:
                misuse(x, both, loop)
            loop.end(loop.index >= 2)
    check(e, marker, rd.DimError)
    op = marker.split("-")[0]
    assert str(e.value).startswith("loop.unstack" if op == "unstack" else f"rd.{op}")
    if marker.endswith("unknown"):
        assert f"no dim is named {name!r}; the dims there are: batch, time, hid:3" in str(e.value)
    else:
        assert f"2 dims are named {name!r}" in str(e.value) and "the dims there are: batch, time, time" in str(e.value)
        assert "give the rd.Dim object itself instead of its name" in str(e.value)
