"""Closing: a closed stepper says why (every method, the live debugger); a dropped stepper frees its build; quiet."""
import functools
import gc
import os
import pathlib
import subprocess
import sys
import textwrap
import weakref

import numpy as np
import pytest

import recdebug as rd
from test_design_examples import lstm_loop

LENS = np.array([6, 3, 1, 5], dtype=np.int32)


@pytest.fixture
def case(rng):
    g, time, dim, x, lstm, h, out, loop = lstm_loop()
    x_np = rng.standard_normal((4, 6, 3)).astype(np.float32)
    return g, time, lstm, h, x_np


def every_method(st, lstm, h) -> dict:
    """One call of each public Stepper method."""
    return {
        "step": lambda: st.step(), "step_back": lambda: st.step_back(), "run_to": lambda: st.run_to(1),
        "run_until": lambda: st.run_until(rd.on_nan()), "reset": lambda: st.reset(),
        "value": lambda: st.value(lstm.h), "value of a tensor": lambda: st.value(h),
        "set_state": lambda: st.set_state(lstm.c, np.zeros((4, 4), np.float32)), "states": lambda: st.states,
        "beams": lambda: st.beams(), "descend": lambda: st.descend(), "nonfinite_at": lambda: st.nonfinite_at(0),
        "before_choice": lambda: st.before_choice(h),
    }


@pytest.mark.parametrize("close, why", [
    (lambda g, st: g.close(), "its graph was closed (g.close())"),
    (lambda g, st: st.close(), "its close() was called"),
])
def test_every_method_of_a_closed_stepper_says_it_was_closed_and_why(case, close, why):
    g, time, lstm, h, x_np = case
    st = g.stepper({"x": x_np}, seq_lens={time: LENS})
    st.step(2)
    close(g, st)
    for name, call in every_method(st, lstm, h).items():
        with pytest.raises(rd.RecDebugError) as info:
            call()
        text = str(info.value)
        assert f"this stepper is closed: {why}" in text and "g.stepper(...)" in text, name
        assert "Session" not in text, name  # not TensorFlow's "Attempted to use a closed Session"
    assert st.t == 2 and st.closed == why and f"closed: {why}" in repr(st)
    st.close()  # again: nothing happens
    g.close()
    again = g.stepper({"x": x_np}, seq_lens={time: LENS})  # the graph makes a new stepper as before
    assert again.step(2).t == 2 and again.value(lstm.h).shape == (4, 4)


def test_the_live_debugger_on_a_closed_stepper_says_so_in_its_status(case):
    g, time, lstm, h, x_np = case
    st = g.stepper({"x": x_np}, seq_lens={time: LENS})
    d = rd.debugger(st)
    d.b_step.click()
    assert d.t == 1
    g.close()
    for act in (d.b_step.click, d.b_back.click, d.b_run.click, d.b_reset.click, lambda: setattr(d.slider, "value", 3),
                lambda: setattr(d.slider, "value", 1), lambda: setattr(d.seq, "value", 1)):
        act()  # a control in the page: no exception
        assert "closed: its graph was closed (g.close())" in d.status, d.status
        assert "closed" in d.status_html.value and d.t == 1
    with pytest.raises(rd.RecDebugError, match="this stepper is closed"):
        d.step()  # called from code, it raises
    d.close()
    with pytest.raises(rd.RecDebugError, match="this stepper is closed"):
        rd.debugger(st)


def test_a_dropped_stepper_and_its_tensorflow_graph_are_freed(case):
    g, time, lstm, h, x_np = case
    g.run({"x": x_np}, seq_lens={time: LENS})
    st = g.stepper({"x": x_np}, seq_lens={time: LENS})
    st.step(3)
    stepper, tf_graph = weakref.ref(st), weakref.ref(st.engine.tf_graph)
    del st
    gc.collect()
    assert stepper() is None and tf_graph() is None
    assert g.run({"x": x_np}, seq_lens={time: LENS}) is not None  # the graph's other builds still work


def test_a_closed_stepper_that_is_kept_holds_no_tensorflow_graph(case):
    g, time, lstm, h, x_np = case
    st = g.stepper({"x": x_np}, seq_lens={time: LENS})
    tf_graph = weakref.ref(st.engine.tf_graph)
    g.close()
    gc.collect()
    assert tf_graph() is None and st.closed is not None


def test_a_stepper_that_fails_after_its_build_frees_the_build(case):
    import tensorflow as tf

    g, time, lstm, h, x_np = case
    gc.collect()
    graphs = sum(isinstance(o, tf.Graph) for o in gc.get_objects())
    with pytest.raises(rd.RunError, match="no parameter"):
        g.stepper({"x": x_np}, seq_lens={time: LENS}, params={"nothing/here": np.zeros(3)})
    gc.collect()
    assert sum(isinstance(o, tf.Graph) for o in gc.get_objects()) == graphs


def test_an_error_raised_in_a_build_names_the_callers_line():
    """Builds run in a helper thread (whose stack has no user line): their errors name the caller's line."""
    with pytest.raises(rd.RunError) as info:
        rd.backend.engine.build_apart(functools.partial(rd.backend.engine.resolve_device, "tpu"))
    assert info.value.line.filename == __file__ and "build_apart(" in info.value.line.code


def test_closing_and_freeing_print_nothing_at_gc_and_at_exit(tmp_path):
    """Steppers closed, dropped, or alive at exit with a live debugger: no "Exception ignored" from any of them."""
    script = tmp_path / "closing.py"
    script.write_text(textwrap.dedent("""
        import gc
        import numpy as np
        import recdebug as rd
        from test_design_examples import lstm_loop

        g, time, dim, x, lstm, h, out, loop = lstm_loop()
        x_np = np.ones((2, 3, 3), np.float32)
        kept = g.stepper({"x": x_np})
        kept.step()
        debugger = rd.debugger(kept)
        dropped = g.stepper({"x": x_np})
        dropped.step()
        del dropped
        gc.collect()
        closed = g.stepper({"x": x_np})
        closed.close()
        other, *_ = lstm_loop()
        other_stepper = other.stepper({"x": x_np})
        other.close()
        gc.collect()
        print("done")
    """))
    tests = pathlib.Path(__file__).resolve().parent
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tests,
                         env={**os.environ, "PYTHONPATH": str(tests)})
    assert out.returncode == 0 and "done" in out.stdout, out.stderr[-3000:]
    assert "Exception ignored" not in out.stderr and "Traceback" not in out.stderr, out.stderr[-3000:]
