"""The README's examples run as written: its notebook cells in an IPython shell, its script as a script."""
import contextlib
import io
import os
import pathlib
import re

import numpy as np

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_cells_and_script_run_as_written(shell, tmp_path):
    blocks = python_blocks()
    setup, cell, after, script = blocks[0], blocks[1], blocks[2], next(b for b in blocks if "rd.Graph()" in b)
    assert cell.startswith("%%recloop") and "x_np" in setup and "lens_np" in setup
    saved = dict(shell.user_ns)
    cwd = os.getcwd()
    os.chdir(tmp_path)  # the script saves a figure
    try:
        for code in (setup, cell, after):
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                r = shell.run_cell(code)
            assert r.success, (code, r.error_before_exec or r.error_in_exec)
        ns = shell.user_ns
        res = ns["res"]
        assert res.numpy(ns["out"], order=(ns["batch"], ns["time"], ns["hid"])).shape == (3, 7, 4)
        assert res.lens(ns["loop"].axis).tolist() == [7, 4, 2]
        # the script: in a fresh namespace with only what the README's first cell defines
        script_ns = {k: ns[k] for k in ("np", "rd", "batch", "time", "feat", "hid", "x_np", "lens_np")}
        exec(compile(script, "README script", "exec"), script_ns)
        assert (tmp_path / "trace.png").stat().st_size > 1000
        # the training block, after the first cell's names
        training = next(b for b in python_blocks() if "g.train(" in b)
        train_ns = {k: ns[k] for k in ("np", "rd", "batch", "time", "feat", "hid", "x_np", "lens_np")}
        exec(compile(training, "README training", "exec"), train_ns)
        hist = train_ns["hist"]
        assert hist.steps == 50 and hist.losses[-1] < hist.losses[0]
        assert train_ns["tr"].grad(train_ns["lstm"].h).shape == (3, 7, 4)
        assert (tmp_path / "model" / "returnn.config").exists() and (tmp_path / "model" / "model.001.index").exists()
        h = script_ns["res"].numpy(script_ns["out"], order=(ns["batch"], ns["time"], ns["hid"]))
        w, b = script_ns["res"].param("linear/weight"), script_ns["res"].param("linear/bias")
        ref, state = [], np.zeros((3, 4), np.float32)
        for t in range(7):  # the script's loop in numpy
            state = np.tanh(ns["x_np"][:, t] @ w + b + state)
            ref.append(state)
        ref = np.stack(ref, axis=1)
        for seq, n in enumerate(ns["lens_np"]):
            np.testing.assert_allclose(h[seq, :n], ref[seq, :n], atol=1e-5)
    finally:
        os.chdir(cwd)
        shell.user_ns.clear()
        shell.user_ns.update(saved)


def test_readme_returnn_config_example_runs_as_written(tmp_path):
    """The README's "Your own RETURNN config" example: its RETURNN command line, then its Python block."""
    import shlex
    import subprocess
    import sys

    import recdebug as rd
    from test_from_returnn import numpy_explicit_lstm, weights

    text = README.read_text()
    section = text[text.index("### Your own RETURNN config"):text.index("### Reading the debugger")]
    command = re.search(r"```sh\n(.*?)```", section, re.S).group(1).replace("\\\n", " ")
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    root = README.parent
    args = [a.replace("tests/returnn_demos", str(root / "tests" / "returnn_demos")) for a in shlex.split(command)]
    assert args[:3] == ["python", "-m", "returnn"]
    env = dict(os.environ, DISABLE_CUDA="1")
    proc = subprocess.run([sys.executable] + args[1:] + ["++log_verbosity", "2"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        ns = {"np": np, "rd": rd}
        exec(compile(code.replace("tests/returnn_demos", str(root / "tests" / "returnn_demos")), "README config",
                     "exec"), ns)
    finally:
        os.chdir(cwd)
    tr, x, lens = ns["tr"], ns["x"], ns["lens"]
    assert tr.numpy("lstm/c").shape == (3, 7, 10)
    ref = numpy_explicit_lstm(weights(tmp_path / "lstm" / "model.001"), x.astype(np.float64), lens)
    got = tr.numpy("lstm/c", order=["batch", "lstm:time", tr.dims_of("lstm/c")[-1]])
    for b, n in enumerate(lens):
        np.testing.assert_allclose(got[b, :n], ref["c"][b, :n], atol=1e-5)
    assert ns["res"].numpy("output").shape == (3, 7, 2)
    ns["st"].close()
