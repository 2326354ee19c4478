"""The README's and the docs/ pages' examples run as written, and show what numpy computes.

Convention: every ```python block of README.md and of each docs/*.md page runs as written, the blocks of one page
in order in one namespace, as notebook cells in the test IPython shell (so `%%recloop` cells run too), in a fresh
temporary working folder in which `tests/` is this repository's (pages name files as seen from the repository's
root). README.md runs from an empty namespace. Every docs page starts where the README's first cell leaves off:
the test runs that cell first (`np`, `rd`, `batch`, `time`, `feat`, `hid`, `x_np`, `lens_np`, the magic loaded).
```sh blocks do not run, except the RETURNN command line of docs/returnn-configs.md, which its own test runs
before that page's Python block (the block opens the checkpoint the command trains). A page's numbers are then
checked against numpy (CHECKS).
"""
import contextlib
import io
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
CONFIG_PAGE = DOCS / "returnn-configs.md"


def blocks(page: pathlib.Path, lang: str = "python") -> list:
    return re.findall(rf"```{lang}\n(.*?)```", page.read_text(), re.S)


def pages() -> list:
    return sorted(DOCS.glob("*.md"))


@contextlib.contextmanager
def page_namespace(shell, tmp_path):
    """The shell's namespace, emptied of the page's names afterwards; the working folder ``tmp_path``."""
    import recdebug as rd
    from recdebug.notebook.cell import RecloopResult

    saved = dict(shell.user_ns)
    cwd = os.getcwd()
    (tmp_path / "tests").symlink_to(ROOT / "tests")
    os.chdir(tmp_path)
    try:
        yield shell.user_ns
    finally:
        os.chdir(cwd)
        for value in list(shell.user_ns.values()):
            if isinstance(value, (rd.Graph, RecloopResult)):
                value.close()
        shell.user_ns.clear()
        shell.user_ns.update(saved)


def run_blocks(shell, codes: list, where: str) -> None:
    for i, code in enumerate(codes, 1):
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            r = shell.run_cell(code)
        assert r.success, f"{where}, block {i} failed:\n{code}\n{out.getvalue()[-3000:]}"


def run_page(shell, page: pathlib.Path) -> None:
    """The README's first cell (for a docs page), then the page's Python blocks."""
    if page != README:
        run_blocks(shell, blocks(README)[:1], "README.md (first cell)")
    run_blocks(shell, blocks(page), page.name)


def valid_close(got, ref, lens, atol=1e-5):
    for b, n in enumerate(lens):
        np.testing.assert_allclose(got[b, :n], ref[b, :n], atol=atol, rtol=0, err_msg=f"sequence {b}")


def simple_rnn(x, w, b, h0=None):
    """h_t = tanh(x_t @ w + b + h_{t-1}) over every frame of x (batch, time, feat), padding frames included."""
    h = np.zeros((x.shape[0], w.shape[1])) if h0 is None else h0
    out = []
    for t in range(x.shape[1]):
        h = np.tanh(x[:, t] @ w + b + h)
        out.append(h)
    return np.stack(out, axis=1)


def check_readme(ns, tmp_path):
    res, out, batch, time, hid = ns["res"], ns["out"], ns["batch"], ns["time"], ns["hid"]
    got = res.numpy(out, order=(batch, time, hid))
    assert got.shape == (3, 7, 4)
    assert res.lens(ns["loop"].axis).tolist() == [7, 4, 2]
    p = res.params()
    lin_x, lin_h = sorted({k.rsplit("/", 1)[0] for k in p}, key=lambda m: -p[m + "/weight"].shape[0])
    h, ref = np.zeros((3, 4)), []
    for t in range(7):  # h_t = tanh(lin_h(lin_x(x_t) + h_{t-1}))
        h = np.tanh((ns["x_np"][:, t] @ p[lin_x + "/weight"] + p[lin_x + "/bias"] + h) @ p[lin_h + "/weight"]
                    + p[lin_h + "/bias"])
        ref.append(h)
    valid_close(got, np.stack(ref, axis=1), ns["lens_np"])


def check_language(ns, tmp_path):
    res, out, batch, time, hid = ns["res"], ns["out"], ns["batch"], ns["time"], ns["hid"]
    x_np, lens = ns["x_np"], ns["lens_np"]
    assert (tmp_path / "trace.png").stat().st_size > 1000
    w, b = res.param("linear/weight"), res.param("linear/bias")
    ref = simple_rnn(x_np.astype(np.float64), w, b)
    got = res.numpy(out, order=(batch, time, hid))
    valid_close(got, ref, lens)
    # what the page says of padding frames: not zero; here the recurrence carried on over x_np's padding frames
    y = ns["y"]
    assert np.abs(y[1, 4:]).min() > 0
    np.testing.assert_allclose(y[1, 4:], ref[1, 4:], atol=1e-5)
    padded = np.where((np.arange(7)[None, :] < lens[:, None])[:, :, None], x_np, 0)
    y0 = res_with(ns, padded)
    assert np.abs(y0[1, 4:]).min() > 0 and np.abs(y0[2, 2:]).min() > 0
    assert [len(v) for v in ns["valid"]] == [7, 4, 2]
    mask = ns["tr"].mask(ns["out"], order=(batch, time, hid))
    assert (mask[:, :, 0] == (np.arange(7)[None, :] < lens[:, None])).all()
    shared = ns["shared"]  # a State shared by the batch: one counter, every step the loop ran
    np.testing.assert_array_equal(shared.numpy(ns["steps"]), np.arange(1, lens.max() + 1))
    assert int(shared.numpy(ns["after"])) == lens.max()


def res_with(ns, x):
    """The page's loop run on ``x`` (the same lengths): its stacked output (batch, time, hid)."""
    res = ns["g"].run({"x": x.astype(np.float32)}, seq_lens={ns["time"]: ns["lens_np"]})
    return res.numpy(ns["out"], order=(ns["batch"], ns["time"], ns["hid"]))


def check_magic(ns, tmp_path):
    res = ns["res"]
    assert res.stepper.t == 3
    assert sorted(res.params()) == ["linear/bias", "linear/weight"]
    got = res.trace.numpy(ns["h"], order=(ns["batch"], ns["time"], ns["hid"]))
    ref = simple_rnn(ns["x_np"].astype(np.float64), res.param("linear/weight"), res.param("linear/bias"))
    valid_close(got, ref, ns["lens_np"])


def check_debugger(ns, tmp_path):
    tr, st, h = ns["tr"], ns["st"], ns["h"]
    assert st.t == 0 and ns["dbg"].stepper is st
    ref = tr.numpy(h, order=(ns["batch"], ns["time"], ns["hid"]))
    st.run_to(3)  # the stepper the page made gives the trace's values on valid frames
    got = st.value(h, order=(ns["batch"], ns["hid"]))
    np.testing.assert_allclose(got[:2], ref[:2, 2], atol=1e-5)
    np.testing.assert_allclose(got[2], ref[2, 1], atol=1e-5)  # sequence 2 ended after t=1: its State stays


def check_training(ns, tmp_path):
    hist = ns["hist"]
    assert hist.steps == 50 and hist.losses[-1] < hist.losses[0]
    assert ns["tr"].grad(ns["lstm"].h).shape == (3, 7, 4)
    assert (tmp_path / "model" / "returnn.config").exists() and (tmp_path / "model" / "model.001.index").exists()


CHECKS = {"README.md": check_readme, "language.md": check_language, "magic.md": check_magic,
          "debugger.md": check_debugger, "training.md": check_training}


def test_readme_cells_run_as_written(shell, tmp_path):
    codes = blocks(README)
    assert "x_np" in codes[0] and "lens_np" in codes[0] and codes[1].startswith("%%recloop")
    with page_namespace(shell, tmp_path) as ns:
        run_page(shell, README)
        check_readme(ns, tmp_path)


@pytest.mark.parametrize("name", [p.name for p in pages() if p != CONFIG_PAGE])
def test_docs_page_runs_as_written(shell, tmp_path, name):
    page = DOCS / name
    with page_namespace(shell, tmp_path) as ns:
        run_page(shell, page)
        if name in CHECKS:
            CHECKS[name](ns, tmp_path)


def test_checked_pages_have_python_blocks():
    for name in CHECKS:
        assert blocks(README if name == "README.md" else DOCS / name), name


def test_readme_links_every_docs_page_and_links_resolve():
    text = README.read_text()
    for page in pages():
        assert f"(docs/{page.name}" in text, f"README.md does not link {page.name}"
    for page in [README] + pages():
        for target in re.findall(r"(?<!!)\[[^\]]*\]\(([^)#\s]+\.md)(?:#([^)\s]+))?\)", page.read_text()):
            path, anchor = page.parent / target[0], target[1]
            assert path.exists(), f"{page.name} links {target[0]}, which does not exist"
            if anchor:
                slugs = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
                         for h in re.findall(r"^#+ (.*)$", path.read_text(), re.M)}
                assert anchor in slugs, f"{page.name} links {target[0]}#{anchor}, a heading it lacks"
        for image in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", page.read_text()):
            assert (page.parent / image).is_file(), f"{page.name} shows {image}, which does not exist"


def test_readme_returnn_config_example_runs_as_written(shell, tmp_path):
    """docs/returnn-configs.md: its RETURNN command line, then its Python block, against numpy of the LSTM."""
    import shlex

    from test_from_returnn import numpy_explicit_lstm, weights

    (command,) = [c.replace("\\\n", " ") for c in blocks(CONFIG_PAGE, "sh")]
    args = shlex.split(command)
    assert args[:3] == ["python", "-m", "returnn"]
    with page_namespace(shell, tmp_path) as ns:
        env = dict(os.environ, DISABLE_CUDA="1")
        proc = subprocess.run([sys.executable] + args[1:] + ["++log_verbosity", "2"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        run_page(shell, CONFIG_PAGE)
        tr, x, lens = ns["tr"], ns["x"], ns["lens"]
        assert tr.numpy("lstm/c").shape == (3, 7, 10)
        ref = numpy_explicit_lstm(weights(tmp_path / "lstm" / "model.001"), x.astype(np.float64), lens)
        got = tr.numpy("lstm/c", order=["batch", "lstm:time", tr.dims_of("lstm/c")[-1]])
        valid_close(got, ref["c"], lens)
        assert ns["res"].numpy("output").shape == (3, 7, 2)
        ns["st"].close()
