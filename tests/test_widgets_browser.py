"""The debugger in a real browser: JupyterLab on localhost, Debian's chromium driven by Playwright.

Checks that the widget renders, that clicking step advances the step shown and moves the heatmap cursor, that
hovering the heatmap shows a value, and that the hierarchy lists the rec layer and its unit layers; and that names
and trace files holding markup are shown as text, their script never run. Screenshots go to out/test-artifacts/ (or $RECDEBUG_TEST_OUT).
"""
import json
import os
import pathlib
import socket
import subprocess
import sys
import time
import urllib.request

import nbformat
import pytest

CHROMIUM = "/usr/bin/chromium"
ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = pathlib.Path(os.environ.get("RECDEBUG_TEST_OUT", ROOT / "out" / "test-artifacts"))

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed")

NOTEBOOK_CODE = '''
import numpy as np
import recdebug as rd

batch, time = rd.batch_dim, rd.Dim("time")
feat, hid = rd.Dim("feat", 3), rd.Dim("hidden", 5)

class Lstm(rd.Module):
    def __init__(self, dim):
        super().__init__()
        self.h = rd.State({batch, dim})
        self.c = rd.State({batch, dim})
        self.ff_linear = rd.Linear(dim * 4)
        self.rec_linear = rd.Linear(dim * 4)

    def forward(self, x):
        x_in, g_in, g_forget, g_out = rd.split(self.ff_linear(x) + self.rec_linear(self.h.get()), 4)
        c = self.c.get() * rd.sigmoid(g_forget) + rd.tanh(x_in) * rd.sigmoid(g_in)
        self.c.assign(c)
        h = rd.tanh(c) * rd.sigmoid(g_out)
        self.h.assign(h)
        return h

with rd.Graph() as g:
    x = rd.Input("x", {batch, time, feat})
    lstm = Lstm(hid)
    with rd.Loop() as loop:
        out = loop.stack(lstm(loop.unstack(x)))

x_np = np.random.default_rng(0).standard_normal((3, 12, 3)).astype(np.float32)
tr = g.trace({"x": x_np}, seq_lens={time: np.array([12, 7, 4])})
dbg = rd.debugger(tr)
dbg
'''


BEAM_CODE = '''
import numpy as np
import recdebug as rd

batch = rd.batch_dim
hid, vocab, emb = rd.Dim("hid", 4), rd.Dim("vocab", 6), rd.Dim("emb", 3)
with rd.Graph() as g:
    enc = rd.Input("enc", {batch, hid})
    embed, lin_h, lin_out = rd.Embedding(vocab, emb), rd.Linear(hid), rd.Linear(vocab)
    label = rd.State({batch}, initial=0, dtype="int32", sparse_dim=vocab)
    h = rd.State({batch, hid}, initial=enc)
    with rd.Loop(max_seq_len=6) as loop:
        h.assign(rd.tanh(lin_h(rd.concat(embed(label.get()), h.get()))))
        y = rd.choice(lin_out(h.get()), beam_size=3)
        label.assign(y)
        loop.end(y == 0, include_eos=True)
enc_np = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
tr = g.trace({"enc": enc_np}, search=True, seed=8)   # weights where the beams differ
rd.debugger(tr)
'''

LIVE_BEAM_CODE = '''
rd.debugger(g.stepper({"enc": enc_np}, seed=8))   # the same search, stepped live
'''


HOSTILE_SETUP = f'''
import sys
sys.path.insert(0, {str(ROOT / "tests")!r})
%load_ext recdebug
from hostile_names import *   # names and texts with markup in them: IMG, SCRIPT
g, h = hostile_graph()
x_np, lens_np = inputs(nan_at=2), LENS
live = rd.debugger(g.stepper({{"x": inputs()}}, seq_lens={{time: LENS}}))
live.run(rd.on_state(h, lambda v: np.abs(v).max() > 0, text=SCRIPT + IMG))
live
'''

HOSTILE_TRACE_FILE = '''
path = hostile_trace_file(g.trace({"x": x_np}, seq_lens={time: LENS}), "hostile.npz")
rd.debugger(rd.Trace.load(path))
'''

HOSTILE_RECLOOP = '''%%recloop --live --break nan --feed x=x_np --lens time=lens_np
x = rd.Input("x", {batch, time, feat})
s = rd.State({batch, hid}, name=IMG)
with rd.Loop() as loop:
    s.assign(rd.tanh(rd.Linear(hid)(loop.unstack(x)) + s.get()))
'''


VIEW_CELLS = [NOTEBOOK_CODE.replace("dbg = rd.debugger(tr)\ndbg", "rd.debugger(tr)"), """
st = g.stepper({"x": x_np}, seq_lens={time: np.array([12, 7, 4])})
live = rd.debugger(st)
live
""", """
st.run_to(3)   # from code: the live debugger above follows
""", """
live           # the same widget shown again: it starts from the rows sent so far
"""]


TRAIN_CODE = '''
import numpy as np
import recdebug as rd

batch, time = rd.batch_dim, rd.Dim("time")
feat, hid, classes = rd.Dim("feat", 2), rd.Dim("hid", 8), rd.Dim("classes", 2)
with rd.Graph() as g:
    x = rd.Input("x", {batch, time, feat})
    y = rd.Input("y", {batch, time}, dtype="int32", sparse_dim=classes)
    lstm, lin_out = rd.LSTM(hid), rd.Linear(classes)
    with rd.Loop() as loop:
        logits = loop.stack(lin_out(lstm(loop.unstack(x))))
    loss = rd.cross_entropy(logits, y)
x_np = np.random.default_rng(0).integers(0, 2, (32, 8, 2)).astype(np.float32)
y_np = (x_np[:, :, 0] > 0).astype(np.int32)
hist = g.train({"x": x_np, "y": y_np}, seq_lens={time: np.full(32, 8)}, loss=loss, steps=60, learning_rate=1e-2,
               batch_size=8)
'''


CONFIG_CODE = f"""
%load_ext recdebug
import numpy as np
x = np.random.default_rng(0).standard_normal((3, 9, 9)).astype(np.float32)
lens = np.array([9, 5, 2])
%recdebug {str(pathlib.Path(__file__).resolve().parent / "returnn_demos" / "demo-tf-rec-explicit-lstm.config")!r} --feed data=x --lens data=lens --live -o dbg
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url, token):
    req = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    base = tmp_path_factory.mktemp("lab")
    root = base / "root"
    root.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_code_cell(NOTEBOOK_CODE))
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, root / "debugger.ipynb")
    beams = nbformat.v4.new_notebook()
    beams.cells.append(nbformat.v4.new_code_cell(BEAM_CODE))
    beams.cells.append(nbformat.v4.new_code_cell(LIVE_BEAM_CODE))
    beams.metadata["kernelspec"] = nb.metadata["kernelspec"]
    nbformat.write(beams, root / "beams.ipynb")
    hostile = nbformat.v4.new_notebook()
    for code in (HOSTILE_SETUP, HOSTILE_TRACE_FILE, HOSTILE_RECLOOP):
        hostile.cells.append(nbformat.v4.new_code_cell(code))
    hostile.metadata["kernelspec"] = nb.metadata["kernelspec"]
    nbformat.write(hostile, root / "hostile.ipynb")
    train = nbformat.v4.new_notebook()
    train.cells.append(nbformat.v4.new_code_cell(TRAIN_CODE))
    train.metadata["kernelspec"] = nb.metadata["kernelspec"]
    nbformat.write(train, root / "train.ipynb")
    config = nbformat.v4.new_notebook()
    config.cells.append(nbformat.v4.new_code_cell(CONFIG_CODE))
    config.metadata["kernelspec"] = nb.metadata["kernelspec"]
    nbformat.write(config, root / "config.ipynb")
    view = nbformat.v4.new_notebook()
    view.cells += [nbformat.v4.new_code_cell(code) for code in VIEW_CELLS]
    view.metadata["kernelspec"] = nb.metadata["kernelspec"]
    nbformat.write(view, root / "view.ipynb")
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(base / "config"), JUPYTER_RUNTIME_DIR=str(base / "runtime"),
               IPYTHONDIR=str(base / "ipython"), JUPYTER_DATA_DIR=str(base / "data"))
    settings = base / "config" / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    kernels = base / "data" / "kernels" / "python3"
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3", "language": "python"}))
    port, token = free_port(), "recdebug-test-token"
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--IdentityProvider.token={token}",
           "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
           f"--ServerApp.root_dir={root}", "--LabApp.news_url=None", "--allow-root"]
    log = open(base / "server.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"jupyter lab exited: {(base / 'server.log').read_text()[-2000:]}")
        try:
            get_json(f"{url}/api/status", token)
            break
        except OSError:
            if time.time() > deadline:
                proc.kill()
                raise
            time.sleep(0.5)
    yield url, token
    try:
        req = urllib.request.Request(f"{url}/api/shutdown", method="POST",
                                     headers={"Authorization": f"token {token}"})
        urllib.request.urlopen(req, timeout=10)
        proc.wait(timeout=30)
    except Exception:
        proc.kill()
    finally:
        log.close()


@pytest.fixture
def page(tmp_path):
    """A page of Debian's chromium, headless, with a fresh profile and no network but localhost."""
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=90_000)
    OUT.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost , EXCLUDE 127.0.0.1"],
            viewport={"width": 1500, "height": 1100})
        try:
            yield ctx.new_page()
        finally:
            ctx.close()


def open_and_run_all(page, url, token, path, app="lab"):
    """Open a notebook in JupyterLab (app="lab") or Notebook 7 ("notebook"), wait for its kernel, run all cells."""
    if app == "lab":
        page.goto(f"{url}/lab/tree/{path}?token={token}&reset")  # reset: no tabs restored from earlier pages
        page.locator(".jp-NotebookPanel:visible .jp-Notebook").wait_for()
    else:
        page.goto(f"{url}/notebooks/{path}?token={token}")
        page.locator(".jp-Notebook").first.wait_for()
    wait_for_kernel(page, url, token, path=path)
    page.get_by_role("menuitem", name="Run").click()
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()


def wait_for_kernel(page, url, token, path="debugger.ipynb", timeout=90):
    deadline = time.time() + timeout
    while time.time() < deadline:
        sessions = get_json(f"{url}/api/sessions", token)
        ready = [s for s in sessions if s["path"].endswith(path) and s["kernel"]["execution_state"] == "idle"
                 and s["kernel"]["connections"] > 0]
        if ready:
            return
        page.wait_for_timeout(500)
    raise TimeoutError("the notebook's kernel did not become idle")


def test_debugger_renders_steps_hovers_and_lists_the_hierarchy(lab, page):
    from playwright.sync_api import expect

    url, token = lab
    open_and_run_all(page, url, token, "debugger.ipynb")
    heatmaps = page.locator(".rd-heatmap")
    expect(heatmaps.first).to_be_visible()
    assert heatmaps.count() >= 2  # lstm.h and lstm.c (plus the picked-layer view)
    status = page.locator(".rd-status")
    expect(status).to_contain_text("at t=0 (recorded trace: all 12 steps, t=0…11)")  # a trace: on its first step
    first = heatmaps.first
    assert first.get_attribute("data-cursor") == "0"

    page.get_by_role("button", name="step ▶").click()
    expect(status).to_contain_text("at t=1 (recorded trace: all 12 steps, t=0…11)")
    expect(first).to_have_attribute("data-cursor", "1")
    x1 = float(first.get_attribute("data-cursor-x"))
    page.get_by_role("button", name="step ▶").click()
    expect(status).to_contain_text("at t=2 (recorded trace: all 12 steps, t=0…11)")
    expect(first).to_have_attribute("data-cursor", "2")
    assert float(first.get_attribute("data-cursor-x")) > x1  # the cursor line moved right

    overlay = first.locator(".rd-overlay")
    box = overlay.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.5)
    expect(first.locator(".rd-tooltip")).to_contain_text("value=")
    text = first.locator(".rd-tooltip").inner_text()
    assert text.startswith("t=") and "unit=" in text

    tree = page.locator(".rd-tree")
    expect(tree.locator('li[data-path="loop"]')).to_be_visible()
    for layer in ("loop/lstm.h", "loop/lstm.c", "loop/lstm.rec_linear"):
        expect(tree.locator(f'li[data-path="{layer}"]')).to_have_count(1)
    tree.locator('li[data-path="loop/lstm.tanh"] > .rd-node-name').click()
    expect(page.locator(".rd-heatmap .rd-title", has_text="layer loop/lstm.tanh")).to_be_visible()
    page.locator(".rd-status").scroll_into_view_if_needed()
    page.wait_for_timeout(300)
    page.screenshot(path=str(OUT / "debugger-jupyterlab.png"))


def test_debugger_renders_in_notebook_7(lab, page):
    from playwright.sync_api import expect

    url, token = lab
    open_and_run_all(page, url, token, "debugger.ipynb", app="notebook")
    first = page.locator(".rd-heatmap").first
    expect(first).to_be_visible()
    page.get_by_role("button", name="step ▶").click()
    expect(page.locator(".rd-status")).to_contain_text("at t=1 (recorded trace: all 12 steps, t=0…11)")
    expect(first).to_have_attribute("data-cursor", "1")
    expect(page.locator('.rd-tree li[data-path="loop"]')).to_be_visible()
    page.locator(".rd-status").scroll_into_view_if_needed()
    page.screenshot(path=str(OUT / "debugger-notebook7.png"))


def test_beam_tree_renders_and_selects_a_hypothesis(lab, page):
    from playwright.sync_api import expect

    url, token = lab
    open_and_run_all(page, url, token, "beams.ipynb")
    tree = page.locator(".rd-beamtree").first
    expect(tree).to_be_visible()
    nodes = tree.locator(".rd-beam-node")
    assert nodes.count() % 3 == 0 and nodes.count() >= 3  # steps x 3 beam slots
    expect(tree.locator(".rd-beam-node title").first).to_contain_text("score")
    tree.locator('.rd-beam-node[data-t="1"][data-k="2"]').click()
    expect(page.locator(".rd-status").first).to_contain_text("hypothesis 2 at t=1")
    expect(tree.locator(".rd-beam-legend")).to_contain_text("best hypothesis")
    assert tree.locator("line.rd-beam-best").count() >= 1  # the best path stays drawn beside the selected one
    assert tree.locator("line.rd-beam-selected").count() == 1
    assert tree.locator("svg text", has_text="beam 2").count() == 1
    page.locator(".rd-status").first.scroll_into_view_if_needed()
    page.screenshot(path=str(OUT / "debugger-beam-tree.png"))

    live = page.locator(".rd-beamtree").nth(1)  # the live search: the tree grows with each step
    expect(live).to_be_attached()
    assert live.locator(".rd-beam-node").count() == 0
    step = page.get_by_role("button", name="step ▶").nth(1)
    step.scroll_into_view_if_needed()
    step.click()
    expect(live.locator(".rd-beam-node")).to_have_count(3)
    step.click()
    expect(live.locator(".rd-beam-node")).to_have_count(6)
    status = page.locator(".rd-status").nth(1)
    expect(status).to_contain_text("at t=1 (2 of 6 steps run)")
    expect(status).to_contain_text("at t=1:")  # the best hypothesis after the second step is shown
    # h along the selected hypothesis arrived as row patches: hover step 0 of the live debugger's h view
    heat = page.locator(".rd-heatmap", has=page.locator(".rd-title", has_text="State h")).first  # "loop/h" in the trace
    overlay = heat.locator(".rd-overlay")
    overlay.scroll_into_view_if_needed()
    box = overlay.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.5 / 6, box["y"] + box["height"] * 0.1)
    tip = heat.locator(".rd-tooltip")
    expect(tip).to_contain_text("t=0 unit=0 value=")
    value = float(tip.inner_text().split("value=")[1])
    assert value != 0.0 and abs(value) < 1.0  # a tanh value, not an empty row
    live.locator('.rd-beam-node[data-t="0"][data-k="1"]').click()
    expect(status).to_contain_text("hypothesis 1 at t=0")
    live.scroll_into_view_if_needed()
    page.screenshot(path=str(OUT / "debugger-live-beam-tree.png"))


def test_markup_in_names_and_trace_files_is_shown_as_text_and_never_runs(lab, page):
    """A State named by name= / a module attribute / a dim, an on_state text, a trace file's keys and device, and
    a %%recloop --live --break nan cell, all holding <img onerror> or <script>: stepped, hovered, layers picked;
    the markup shows as literal text and its script never runs."""
    from playwright.sync_api import expect

    sys.path.insert(0, str(ROOT / "tests"))
    from hostile_names import IMG, SCRIPT

    url, token = lab
    open_and_run_all(page, url, token, "hostile.ipynb")
    cells = page.locator(".jp-NotebookPanel:visible .jp-CodeCell")
    expect(page.locator(".rd-status")).to_have_count(3)
    live, from_file, magic = (cells.nth(i) for i in range(3))
    expect(live.locator(".rd-status")).to_contain_text(
        f"at t=0 (1 of 6 steps run) · cpu · breakpoint: {SCRIPT + IMG} on {IMG} at t=0")
    expect(from_file.locator(".rd-status")).to_contain_text(f"at t=0 (recorded trace: all 6 steps, t=0…5) · {SCRIPT}")
    expect(magic.locator(".rd-status")).to_contain_text(f"at t=2 (3 of 6 steps run) · cpu · breakpoint: NaN/Inf in {IMG} at t=2")

    def step_hover_pick(cell, layer, shot):
        step = cell.get_by_role("button", name="step ▶")
        step.scroll_into_view_if_needed()
        before = cell.locator(".rd-status").inner_text()
        step.click()
        expect(cell.locator(".rd-status")).not_to_have_text(before)
        overlay = cell.locator(".rd-heatmap .rd-overlay").first
        overlay.scroll_into_view_if_needed()
        overlay.hover()
        expect(cell.locator(".rd-tooltip").first).to_contain_text("value=")
        node = cell.locator(f"li.rd-node[data-path='{layer}'] > .rd-node-name")
        node.scroll_into_view_if_needed()
        node.click()
        expect(cell.locator(".rd-heatmap .rd-title", has_text=f"layer {layer}")).to_have_count(1)
        cell.locator(".rd-status").scroll_into_view_if_needed()
        page.wait_for_timeout(300)
        page.screenshot(path=str(OUT / shot))

    step_hover_pick(live, "loop/cell.tanh", "debugger-hostile-live.png")
    expect(live.locator(".rd-title", has_text=f"State {IMG}")).to_have_count(1)
    expect(live.locator(".rd-title", has_text=f"State cell/{SCRIPT}")).to_have_count(1)
    expect(live.locator(".rd-node-dims", has_text=f"{{batch, {IMG}:4}}").first).to_be_attached()

    run = from_file.get_by_role("button", name="run ▶▶")
    run.scroll_into_view_if_needed()
    run.click()
    expect(from_file.locator(".rd-status")).to_contain_text(
        f"at t=2 (recorded trace: all 6 steps, t=0…5) · {SCRIPT} · breakpoint: NaN/Inf in loop/")
    from_file.get_by_role("button", name="◀ back").click()
    expect(from_file.locator(".rd-status")).to_contain_text("at t=1 (recorded trace: all 6 steps, t=0…5)")
    step_hover_pick(from_file, f"loop/{IMG}plain", "debugger-hostile-trace-file.png")
    expect(from_file.locator(".rd-title", has_text=f"State loop/cell.{SCRIPT}")).to_have_count(1)
    expect(from_file.locator(".rd-node-name", has_text=f"{IMG}plain").first).to_be_attached()

    step_hover_pick(magic, "loop/tanh", "debugger-hostile-recloop.png")
    expect(magic.locator(".rd-title", has_text=f"State {IMG}")).to_have_count(1)

    page.wait_for_timeout(500)  # an image's onerror fires after its load fails
    assert page.evaluate("() => window.__rd_pwned") is None
    assert page.locator('img[src="x"]').count() == 0
    assert page.evaluate("() => [...document.scripts].filter(s => s.text.includes('__rd_pwned')).length") == 0


def _heat_pixels(heatmap):
    """The heatmap canvas' pixels (RGBA), as the browser drew them."""
    return heatmap.locator(".rd-heat").evaluate(
        "c => Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)")


def test_view_at_1000px_in_the_dark_theme_reads_and_follows_its_stepper(lab, page):
    """JupyterLab 1000 px wide, dark theme: controls not cut, hierarchy rows on one line, light text; the live
    debugger follows st.run_to from another cell; shown again, it draws the same rows; padding says so; the
    hover value sits at the pointer."""
    from playwright.sync_api import expect

    url, token = lab
    page.set_viewport_size({"width": 1000, "height": 1000})
    set_theme(url, token, "JupyterLab Dark")
    try:
        open_and_run_all(page, url, token, "view.ipynb")
        _check_view(page)
    finally:
        set_theme(url, token, "JupyterLab Light")


def set_theme(url, token, theme):
    """JupyterLab's theme, through its settings API (the pages opened afterwards have it)."""
    body = json.dumps({"raw": json.dumps({"theme": theme})}).encode()
    req = urllib.request.Request(f"{url}/lab/api/settings/@jupyterlab/apputils-extension:themes", data=body,
                                 method="PUT", headers={"Authorization": f"token {token}",
                                                        "Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=10).close()


def _check_view(page):
    from playwright.sync_api import expect

    trace_dbg, live, again = (page.locator(".jp-CodeCell").nth(i) for i in (0, 1, 3))
    expect(again.locator(".jp-InputPrompt")).to_contain_text("[4]", timeout=300_000)  # every cell has run
    expect(live.locator(".rd-status")).to_contain_text("at t=2 (3 of 12 steps run)")  # followed run_to(3)
    expect(again.locator(".rd-status")).to_contain_text("at t=2 (3 of 12 steps run)")
    first, second = (c.locator(".rd-heatmap").first for c in (live, again))
    expect(first).to_have_attribute("data-cursor", "2")
    expect(second).to_have_attribute("data-cursor", "2")
    a, b = _heat_pixels(first), _heat_pixels(second)
    assert a == b  # the second view drew the rows that reached the first as patches
    assert all(a[4 * k + 3] == 255 and a[4 * k:4 * k + 3] != [255, 255, 255] for k in range(3))  # steps 0-2 drawn
    assert a[4 * 3 + 3] == 0  # t=3 not run yet: empty

    assert page.locator("body[data-jp-theme-light='false']").count() == 1  # the dark theme is on
    trace_dbg.locator(".rd-status").scroll_into_view_if_needed()
    # buttons whole, not cut ("◀ b..."), and every hierarchy row on one line
    for button in trace_dbg.locator("button.widget-button").all():
        assert button.evaluate("b => b.scrollWidth <= b.clientWidth + 1"), button.inner_text()
    rows = trace_dbg.locator(".rd-tree li.rd-node").all()
    trace_dbg.locator(".jp-OutputArea-output").first.evaluate("e => e.scrollIntoView({block: 'start'})")
    page.wait_for_timeout(300)
    page.screenshot(path=str(OUT / "debugger-dark-1000.png"))
    wrapped = [r.get_attribute("data-path") for r in rows if not r.evaluate("""li => {
        const n = li.querySelector(':scope > .rd-node-name'), d = li.querySelector(':scope > .rd-node-dims');
        return !d || Math.abs(d.getBoundingClientRect().top - n.getBoundingClientRect().top) < 4; }""")]
    assert rows and not wrapped, wrapped
    expect(trace_dbg.locator(".rd-helpers-toggle")).to_contain_text("helper layers")
    assert trace_dbg.locator('.rd-tree li[data-path="loop.len"]').count() == 0  # a helper: hidden
    color = trace_dbg.locator(".rd-heatmap .rd-title").first.evaluate("e => getComputedStyle(e).color")
    rgb = [int(float(v)) for v in color[color.index("(") + 1:color.index(")")].split(",")[:3]]
    assert sum(rgb) / 3 > 150, color  # light text on the dark theme

    seq = trace_dbg.locator(".widget-text input").first  # sequence 2: 4 steps
    seq.fill("2")
    seq.press("Enter")
    trace_dbg.get_by_role("button", name="run ▶▶").click()
    heat = trace_dbg.locator(".rd-heatmap").first
    expect(heat).to_have_attribute("data-cursor", "11")
    expect(heat.locator(".rd-readout")).to_have_text("t=11: padding (this sequence has 4 steps, t=0…3)")
    overlay = heat.locator(".rd-overlay")
    overlay.scroll_into_view_if_needed()
    box = overlay.bounding_box()
    x, y = box["x"] + 48 + 2, box["y"] + 10  # over t=0, unit 0
    page.mouse.move(x, y)
    tip = heat.locator(".rd-tooltip")
    expect(tip).to_be_visible()
    expect(tip).to_contain_text("t=0 unit=0 value=")
    tb = tip.bounding_box()
    assert abs(tb["x"] - x) < 60 and abs(tb["y"] - y) < 60  # at the pointer, not in a line below
    page.mouse.move(x + (box["width"] - 48 - 70) * 0.95, y)  # t=11: padding for this sequence
    expect(tip).to_contain_text("value=padding")
    # unit selection: drag over t=0..2 (sequence 2 has 4 steps)
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + (box["width"] - 48 - 70) * 2.5 / 12, y, steps=4)
    page.mouse.up()
    expect(heat.locator(".rd-units")).to_contain_text("at every t=0…2")
    trace_dbg.locator(".jp-OutputArea-output").first.evaluate("e => e.scrollIntoView({block: 'start'})")
    page.mouse.move(x, y)  # the tooltip again, where the pointer now is
    page.wait_for_timeout(300)
    page.screenshot(path=str(OUT / "debugger-dark-1000-padding.png"))


def test_exported_html_shows_a_picture_of_the_debugger_offline(page, tmp_path):
    """A notebook executed headless and exported to HTML (as `make demo-headless` does, no widget manager, no
    network): where the debugger was, a picture of it, not an empty box."""
    from nbclient import NotebookClient
    from nbconvert import HTMLExporter

    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_code_cell(NOTEBOOK_CODE))
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    # as `make demo-headless` runs it: no widget state kept (a state would make the export draw a widget box that
    # needs the widget manager from a CDN, and recdebug's own modules besides)
    NotebookClient(nb, timeout=300, kernel_name="python3", store_widget_state=False).execute()
    outputs = nb.cells[0].outputs
    assert any("image/png" in o.get("data", {}) for o in outputs)
    html_text, _ = HTMLExporter().from_notebook_node(nb)
    assert "data:image/png;base64," in html_text
    path = tmp_path / "exported.html"
    path.write_text(html_text)
    page.goto(path.as_uri())
    img = page.locator(".jp-OutputArea-output img").first
    img.wait_for()
    size = img.evaluate("i => [i.complete, i.naturalWidth, i.naturalHeight]")
    assert size[0] and size[1] > 400 and size[2] > 100, size
    img.scroll_into_view_if_needed()
    page.screenshot(path=str(OUT / "exported-html-offline.png"))


def test_training_shows_a_progress_bar_with_the_running_loss(lab, page):
    """g.train in JupyterLab: tqdm's widget bar, at 60/60 with the last loss, no red stderr box."""
    from playwright.sync_api import expect

    url, token = lab
    open_and_run_all(page, url, token, "train.ipynb")
    cell = page.locator(".jp-CodeCell").first
    expect(cell.locator(".jp-InputPrompt")).to_contain_text("[1]", timeout=300_000)
    bar = cell.locator(".widget-hprogress, .widget-progress").first
    expect(bar).to_be_visible()
    expect(cell.locator(".jp-OutputArea-output").first).to_contain_text("60/60")
    expect(cell.locator(".jp-OutputArea-output").first).to_contain_text("loss=")
    assert cell.locator("[data-mime-type='application/vnd.jupyter.stderr']").count() == 0
    cell.locator(".jp-OutputArea-output").first.scroll_into_view_if_needed()
    page.screenshot(path=str(OUT / "training-progress.png"))


def test_a_returnn_configs_rec_layer_steps_live_with_its_own_names_and_lines(lab, page):
    """%recdebug on RETURNN's 12AX demo config: the States c and output (read with prev:) as heatmaps, stepping
    live, and the hierarchy with the config's layer names, classes and lines."""
    from playwright.sync_api import expect

    url, token = lab
    open_and_run_all(page, url, token, "config.ipynb")
    heatmaps = page.locator(".rd-heatmap:visible")
    expect(heatmaps.first).to_be_visible(timeout=180_000)
    assert heatmaps.count() == 2
    expect(page.locator(".rd-heatmap .rd-title", has_text="State lstm/c")).to_be_visible()
    status = page.locator(".rd-status")
    expect(status).to_contain_text("before t=0 (0 of 9 steps run)")
    for _ in range(3):
        page.get_by_role("button", name="step ▶").click()
    expect(status).to_contain_text("at t=2 (3 of 9 steps run)")
    expect(heatmaps.first).to_have_attribute("data-cursor", "2")
    tree = page.locator(".rd-tree")
    for layer, cls in (("lstm", "rec"), ("lstm/c", "eval"), ("lstm/input_gate", "linear"), ("output", "softmax")):
        expect(tree.locator(f'li[data-path="{layer}"]')).to_have_count(1)
        expect(tree.locator(f'li[data-path="{layer}"]')).to_contain_text(cls)
    tree.locator('li[data-path="lstm/c"] > .rd-node-name').click()  # picked: its line in the config
    expect(tree.locator('li[data-path="lstm/c"] .rd-node-info')).to_contain_text("demo-tf-rec-explicit-lstm.config:30")
    expect(page.locator(".rd-heatmap .rd-title", has_text="layer lstm/c")).to_be_visible()
    tree.locator('li[data-path="lstm/cell_in"] > .rd-node-name').click()
    expect(page.locator(".rd-heatmap .rd-title", has_text="layer lstm/cell_in")).to_be_visible()
    assert page.locator("[data-mime-type='application/vnd.jupyter.stderr']").count() == 0
    page.locator(".rd-status").scroll_into_view_if_needed()
    page.wait_for_timeout(300)
    page.screenshot(path=str(OUT / "debugger-returnn-config.png"))


def test_a_returnn_configs_debugger_at_1000px_in_the_dark_theme(lab, page):
    """The same %recdebug line, JupyterLab 1000 px wide and dark: the controls whole, the config's hierarchy rows on
    one line, and a layer's config line readable."""
    from playwright.sync_api import expect

    url, token = lab
    page.set_viewport_size({"width": 1000, "height": 1000})
    set_theme(url, token, "JupyterLab Dark")
    try:
        open_and_run_all(page, url, token, "config.ipynb")
        expect(page.locator(".rd-heatmap:visible").first).to_be_visible(timeout=180_000)
        assert page.locator("body[data-jp-theme-light='false']").count() == 1
        page.get_by_role("button", name="step ▶").click()
        expect(page.locator(".rd-status")).to_contain_text("at t=0 (1 of 9 steps run)")
        for name in ("reset", "◀ back", "step ▶", "run ▶▶"):
            button = page.get_by_role("button", name=name)
            assert button.evaluate("b => b.scrollWidth <= b.clientWidth + 1"), name  # the label is whole
        tree = page.locator(".rd-tree")
        row = tree.locator('li[data-path="lstm/input_gate"]')
        assert row.evaluate("li => li.firstElementChild.getBoundingClientRect().height < 24")  # one line
        tree.locator('li[data-path="lstm/c"] > .rd-node-name').click()
        info = tree.locator('li[data-path="lstm/c"] .rd-node-info')
        expect(info).to_contain_text("demo-tf-rec-explicit-lstm.config:30")
        page.locator(".rd-status").scroll_into_view_if_needed()
        page.wait_for_timeout(300)
        page.screenshot(path=str(OUT / "debugger-returnn-config-dark-1000.png"))
    finally:
        set_theme(url, token, "JupyterLab Light")
