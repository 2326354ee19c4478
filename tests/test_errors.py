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
