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
