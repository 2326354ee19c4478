"""Ctrl-C during a long g.run / g.trace: KeyboardInterrupt comes at once, and the graph still runs correctly.

SIGINT is sent in a subprocess (a test process must not interrupt itself), 0.5 s into a run that takes many
seconds (T = 20000 steps of a 512-unit loop: about 15 s on 2 CPU cores)."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np

# the start of each child script: SIGINT during a call, and how long until it stopped
DELAY = r'''
import os, signal, threading, time as clock


def delay_of_interrupt(call):
    """Seconds from SIGINT (0.5 s into ``call``) to its KeyboardInterrupt; None when ``call`` ended first."""
    sent = []

    def send():
        sent.append(clock.monotonic())
        os.kill(os.getpid(), signal.SIGINT)

    timer = threading.Timer(0.5, send)
    timer.start()
    try:
        call()
    except KeyboardInterrupt:
        return clock.monotonic() - sent[0]
    timer.cancel()
    return None

'''

# a 512-unit loop of the language, and numpy's States of it: the start of each child script of the language
RNN = r'''
import json
import numpy as np
import recdebug as rd

batch, time, feat, hid = rd.batch_dim, rd.Dim("time"), rd.Dim("feat", 8), rd.Dim("hid", 512)
with rd.Graph() as g:
    x = rd.Input("x", {batch, time, feat})
    h = rd.State({batch, hid}, initial=0)
    lin_x, lin_h = rd.Linear(hid), rd.Linear(hid)
    with rd.Loop() as loop:
        h.assign(rd.tanh(lin_x(loop.unstack(x)) + lin_h(h.get())))
        last = loop.last(h.get())


def numpy_states(x_np, result, steps):
    """h after 0..steps steps, in numpy, with the parameters of ``result`` (a run)."""
    p = {name: result.param(m) for name, m in [("wx", lin_x.weight), ("bx", lin_x.bias), ("wh", lin_h.weight),
                                                ("bh", lin_h.bias)]}
    states = [np.zeros((x_np.shape[0], 512))]
    for t in range(steps):
        states.append(np.tanh(x_np[:, t] @ p["wx"] + p["bx"] + states[-1] @ p["wh"] + p["bh"]))
    return states

'''

CHILD = DELAY + RNN + r'''
small = {"x": np.random.default_rng(0).standard_normal((2, 3, 8)).astype(np.float32)}
long = {"x": np.zeros((1, 20000, 8), np.float32)}


before = g.run(small)
trace_before = g.trace(small, capture=["h"])
out = {"run": delay_of_interrupt(lambda: g.run(long)),
       "trace": delay_of_interrupt(lambda: g.trace(long, capture=["h"]))}
after = g.run(small)
trace_after = g.trace(small, capture=["h"])
out["run_same"] = bool(np.array_equal(before.numpy(last), after.numpy(last)))
out["trace_same"] = bool(np.array_equal(trace_before.numpy(h), trace_after.numpy(h)))
state = numpy_states(small["x"], after, 3)[-1]
out["max_err"] = float(np.abs(after.numpy(last, order=(batch, hid)) - state).max())
print("RESULT " + json.dumps(out), flush=True)
'''


def child_result(tmp_path, text: str, name: str) -> dict:
    """Runs a child script (SIGINT must not hit the test process) and returns what it printed after RESULT."""
    script = tmp_path / f"{name}.py"
    script.write_text(text)
    root = pathlib.Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(root))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env,
                          cwd=root)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


def test_ctrl_c_interrupts_run_and_trace_at_once_and_the_graph_stays_usable(tmp_path):
    out = child_result(tmp_path, CHILD, "interrupt_child")
    for what in ("run", "trace"):
        assert out[what] is not None, f"g.{what} ended before the interrupt: make the loop longer"
        assert out[what] < 1.0, f"KeyboardInterrupt came {out[what]:.2f} s after SIGINT during g.{what}"
    assert out["run_same"] and out["trace_same"]
    np.testing.assert_array_less(out["max_err"], 1e-5)


CONFIG_CHILD = DELAY + r'''
import json, sys
import numpy as np
import recdebug as rd
sys.path.insert(0, "tests")
from returnn_cli import DEMOS

m = rd.from_returnn(DEMOS / "demo-tf-rec-explicit-lstm.config")
rng = np.random.default_rng(0)
small = {"data": rng.standard_normal((2, 4, 9)).astype(np.float32)}
long = {"data": np.zeros((1, 200000, 9), np.float32)}
before, trace_before = m.run(small).numpy("output"), m.trace(small).numpy("lstm/c")
out = {"run": delay_of_interrupt(lambda: m.run(long)), "trace": delay_of_interrupt(lambda: m.trace(long))}
out["run_same"] = bool(np.array_equal(before, m.run(small).numpy("output")))
out["trace_same"] = bool(np.array_equal(trace_before, m.trace(small).numpy("lstm/c")))
print("RESULT " + json.dumps(out), flush=True)
'''


def test_ctrl_c_interrupts_a_configs_run_and_trace_and_the_model_stays_usable(tmp_path):
    """The config's builds share the language's session handling: Ctrl-C during m.run / m.trace of a long input
    stops within a second, and the model then gives the same values as before."""
    out = child_result(tmp_path, CONFIG_CHILD, "interrupt_config_child")
    for what in ("run", "trace"):
        assert out[what] is not None, f"m.{what} ended before the interrupt: make the input longer"
        assert out[what] < 1.0, f"KeyboardInterrupt came {out[what]:.2f} s after SIGINT during m.{what}"
    assert out["run_same"] and out["trace_same"]


STEPPER_CHILD = DELAY + RNN + r'''
x_np = np.random.default_rng(0).standard_normal((1, 20000, 8)).astype(np.float32) * 0.1
st = g.stepper({"x": x_np})
st.step(2)  # the in-graph loop built before the interrupt is timed
out = {"run_to": delay_of_interrupt(lambda: st.run_to(st.T))}
out["t"] = stopped = st.t
ref = numpy_states(x_np, g.run({"x": x_np[:, :1]}), stopped + 3)
err = [float(np.abs(st.value(h) - ref[stopped]).max())]
st.step_back(2)
err.append(float(np.abs(st.value(h) - ref[stopped - 2]).max()))
st.step()
st.run_to(stopped + 3)  # in the graph again
err.append(float(np.abs(st.value(h) - ref[stopped + 3]).max()))
out["max_err"], out["t_after"] = max(err), st.t
print("RESULT " + json.dumps(out), flush=True)
'''


def test_ctrl_c_interrupts_a_long_run_to_and_the_stepper_stays_usable(tmp_path):
    """run_to runs in the graph in calls of about a quarter of a second: Ctrl-C stops it within a second, at a
    step whose States equal numpy's, and stepping back and on (in the graph again) stays exact."""
    out = child_result(tmp_path, STEPPER_CHILD, "interrupt_stepper_child")
    assert out["run_to"] is not None, "run_to ended before the interrupt: make the loop longer"
    assert out["run_to"] < 1.0, f"KeyboardInterrupt came {out['run_to']:.2f} s after SIGINT during run_to"
    assert 2 < out["t"] < 20000 and out["t_after"] == out["t"] + 3
    np.testing.assert_array_less(out["max_err"], 1e-5)
