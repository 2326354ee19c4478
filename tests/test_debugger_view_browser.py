"""What the debugger draws in chromium is what the stepper or trace holds: read off the page (hover values, pixel
colours of the heatmap, the status and legend text) and compared with ``st.value`` and the trace, for a widget
displayed after its steps were run, after the page is reloaded, for a sequence that ended, and for a recorded
trace. Screenshots at 1400 px (light) and 1000 px (dark) go to out/test-artifacts/."""
import io
import json

import numpy as np
import pytest
from test_widgets_browser import BEAM_CODE, CHROMIUM, OUT, lab, page, set_theme, wait_for_kernel  # noqa: F401

pytestmark = pytest.mark.skipif(not __import__("os").path.exists(CHROMIUM),
                                reason="Debian's chromium is not installed")

SETUP = '''
import json
import numpy as np
import recdebug as rd

batch, time = rd.batch_dim, rd.Dim("time")
feat, hid = rd.Dim("feat", 3), rd.Dim("hidden", 4)
with rd.Graph() as g:
    x = rd.Input("x", {batch, time, feat})
    h = rd.State({batch, hid}, initial=0)
    with rd.Loop() as loop:
        h.assign(rd.tanh(rd.Linear(hid)(loop.unstack(x)) + h.get()))
x_np = np.random.default_rng(1).standard_normal((2, 9, 3)).astype(np.float32)
x_np[0, 3:] = 1e6  # garbage in the padding frames of sequence 0
lens = np.array([3, 9])
st = g.stepper({"x": x_np}, seq_lens={time: lens})
d = rd.debugger(st)
st.step(3)  # before the widget is displayed
res = g.run({"x": x_np}, seq_lens={time: lens})  # the same seeded parameters
w, b = res.param("linear/weight").astype(np.float64), res.param("linear/bias").astype(np.float64)
h_np, ref = np.zeros((2, 4)), []
for t in range(9):  # the loop in numpy; sequence 0's frames 3..8 are padding
    h_np = np.tanh(x_np[:, t].astype(np.float64) @ w + b + h_np)
    ref.append(h_np)
print("REF " + json.dumps(np.stack(ref, axis=1).tolist()))  # (batch, time, hidden)
'''
SHOW_LATE = "d"
TRACE = '''
rd.debugger(g.trace({"x": x_np}, seq_lens={time: lens}))
'''


LEFT, RIGHT, AXIS_H = 48, 70, 30  # the heatmap's gutters (extension/heatmap.js)
PAD = (190, 190, 190)


def write_notebook(url, token, path, cells):
    """A notebook written through the server's contents API."""
    import urllib.request

    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    body = json.dumps({"type": "notebook", "format": "json", "content": json.loads(nbformat.writes(nb))}).encode()
    req = urllib.request.Request(f"{url}/api/contents/{path}", data=body, method="PUT",
                                 headers={"Authorization": f"token {token}", "Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=10).close()


def run_all(page, url, token, path, cells):
    from playwright.sync_api import expect

    page.goto(f"{url}/lab/tree/{path}?token={token}&reset")
    page.locator(".jp-NotebookPanel:visible .jp-Notebook").wait_for()
    wait_for_kernel(page, url, token, path=path)
    page.get_by_role("menuitem", name="Run").click()
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
    last = page.locator(".jp-CodeCell").nth(cells - 1)
    expect(last.locator(".jp-InputPrompt")).to_contain_text(f"[{cells}]", timeout=300_000)


def printed(cell, tag):
    text = cell.locator(".jp-OutputArea-output").first.inner_text()
    line = next(s for s in text.splitlines() if s.startswith(tag + " "))
    return np.array(json.loads(line[len(tag) + 1:]), np.float64)


def hover(page, heat, t, u, T, U):
    """The tooltip's text with the pointer over step t, unit u of a heatmap."""
    from playwright.sync_api import expect

    overlay = heat.locator(".rd-overlay")
    overlay.scroll_into_view_if_needed()
    box = overlay.bounding_box()
    pw, H = box["width"] - LEFT - RIGHT, box["height"] - AXIS_H
    page.mouse.move(box["x"] + LEFT + (t + 0.5) * pw / T, box["y"] + (u + 0.5) * H / U)
    tip = heat.locator(".rd-tooltip")
    expect(tip).to_contain_text(f"t={t} unit={u} value=")
    return tip.inner_text().split("value=", 1)[1]


def pixel(heat, t, u):
    """The heatmap canvas' colour (RGBA) at step t, unit u, as the browser drew it."""
    return heat.locator(".rd-heat").evaluate(
        f"c => Array.from(c.getContext('2d').getImageData({t}, {u}, 1, 1).data)")


def diverging(v, scale):
    """extension/heatmap.js's colour of a value: blue (-scale), white (0), red (+scale)."""
    x = max(-1.0, min(1.0, v / scale))
    if x >= 0:
        return [255, round(255 * (1 - x)), round(255 * (1 - x))]
    return [round(255 * (1 + x)), round(255 * (1 + x)), 255]


def column_on_screen(page, heat, t, T):
    """The pixels (RGB) of the middle of step t's column on the page, heatmap and overlay together."""
    from PIL import Image

    overlay = heat.locator(".rd-overlay")
    box = overlay.bounding_box()
    pw, H = box["width"] - LEFT - RIGHT, box["height"] - AXIS_H
    x0 = box["x"] + LEFT + t * pw / T
    clip = {"x": x0 + 2, "y": box["y"] + 3, "width": max(4.0, pw / T - 4), "height": H - 6}
    page.mouse.move(box["x"] + 2, box["y"] + box["height"] + 40)  # no tooltip over it
    img = Image.open(io.BytesIO(page.screenshot(clip=clip))).convert("RGB")
    return np.asarray(img).reshape(-1, 3)


def check_values(page, heat, expected, T):
    """Hover and pixel colour of each step of ``expected`` ([steps, units], numpy in float64) against the numbers:
    the hover's 6 significant digits within 1e-5 of numpy, the colour within 1 of the colour scale's."""
    scale = float(heat.get_attribute("data-scale"))
    for k, row in enumerate(expected):
        for u, v in enumerate(row):
            assert float(hover(page, heat, k, u, T, len(row))) == pytest.approx(v, rel=1e-5, abs=1e-5), (k, u)
            rgba = pixel(heat, k, u)
            assert rgba[3] == 255 and np.abs(np.array(rgba[:3]) - diverging(v, scale)).max() <= 1, (k, u, rgba)


def open_late(page, url, token, name):
    """The live debugger of SETUP displayed after st.step(3): (the setup cell, the displayed cell, its first
    heatmap, h at t=0..2 of sequence 0 as numpy computes it)."""
    from playwright.sync_api import expect

    write_notebook(url, token, name, [SETUP, SHOW_LATE])
    page.set_viewport_size({"width": 1400, "height": 1000})
    run_all(page, url, token, name, 2)
    setup, shown = page.locator(".jp-CodeCell").nth(0), page.locator(".jp-CodeCell").nth(1)
    heat = shown.locator(".rd-heatmap").first
    expect(shown.locator(".rd-status")).to_contain_text("at t=2 (3 of 9 steps run)")
    expect(heat).to_have_attribute("data-cursor", "2")
    return setup, shown, heat, printed(setup, "REF")[0, :3]


def test_steps_run_before_the_widget_is_displayed_are_drawn_with_their_values_also_after_a_reload(lab, page):
    """d = rd.debugger(st); st.step(3); d: t=0..2 hover and colour as st.value has them, before and after the
    page is reloaded (the view then starts from the kernel's synced state)."""
    from playwright.sync_api import expect

    url, token = lab
    setup, shown, heat, expected = open_late(page, url, token, "late.ipynb")
    check_values(page, heat, expected, 9)
    expect(shown.locator(".rd-readout").first).to_contain_text("t=2: min")
    shown.locator(".rd-status").scroll_into_view_if_needed()
    page.screenshot(path=str(OUT / "debugger-live-late-1400.png"))
    # docs/images/debugger.png, the README's picture, is a copy of this one
    shown.locator(".jp-OutputArea-output").first.screenshot(path=str(OUT / "debugger-widget.png"))

    page.keyboard.press("Control+s")  # the outputs stay in the file; the page reloads from the kernel's state
    page.wait_for_timeout(1500)
    page.reload()
    page.locator(".jp-NotebookPanel:visible .jp-Notebook").wait_for()
    heat = page.locator(".jp-CodeCell").nth(1).locator(".rd-heatmap").first
    expect(heat).to_have_attribute("data-cursor", "2", timeout=120_000)
    check_values(page, heat, expected, 9)


def test_steps_after_the_shown_sequence_ended_are_grey_padding(lab, page):
    """The widget's own run button steps past the end of sequence 0 (3 steps): the later steps are padding in the
    hover, the pixel colour, the readout and the status, and the steps before keep the stepper's values."""
    from playwright.sync_api import expect

    url, token = lab
    setup, shown, heat, expected = open_late(page, url, token, "ended.ipynb")
    shown.get_by_role("button", name="run ▶▶").click()
    status = shown.locator(".rd-status")
    expect(status).to_contain_text("at t=8 (9 of 9 steps run)")
    expect(status).to_contain_text("sequence 0 ended after t=2 (3 steps)")
    expect(heat.locator(".rd-readout")).to_have_text("t=8: padding (this sequence has 3 steps, t=0…2)")
    for t in (3, 5, 8):
        assert hover(page, heat, t, 1, 9, 4) == "padding"
        assert pixel(heat, t, 1) == [*PAD, 255]
    check_values(page, heat, expected, 9)


def test_steps_not_run_yet_are_hatched_unlike_a_value_of_zero(lab, page):
    """Steps not run yet have a look of their own (hatched: lines and gaps, neither a colour of the scale nor the
    padding grey), the legend says so, and hovering one says "not run yet"."""
    from playwright.sync_api import expect

    url, token = lab
    setup, shown, heat, expected = open_late(page, url, token, "hatched.ipynb")
    legend = shown.locator(".rd-convention")
    expect(legend).to_contain_text("hatched: not run yet")
    expect(legend).to_contain_text("the cursor line marks the last step run")
    assert "black" not in legend.inner_text()
    assert hover(page, heat, 5, 0, 9, 4) == "not run yet"
    assert pixel(heat, 5, 0)[3] == 0  # no colour of the scale under the hatching
    hatched = column_on_screen(page, heat, 5, 9)
    light = hatched.min(axis=1) > 235
    assert light.any() and (~light).any(), "a not-run step is hatched: lines and gaps, not one flat colour"
    assert not (np.abs(hatched - PAD).max(axis=1) <= 3).all()  # and not padding's grey
    expect(heat.locator(".rd-readout")).to_contain_text("t=2: min")


def test_a_recorded_trace_says_every_step_is_recorded_and_draws_each(lab, page):
    """A trace's debugger: status, legend and readout speak of the step looked at, every column is drawn with the
    trace's values, and nothing is hatched as not run; a search trace's status describes no step but the
    cursor's as where one is."""
    from playwright.sync_api import expect

    url, token = lab
    set_theme(url, token, "JupyterLab Dark")
    try:
        write_notebook(url, token, "trace.ipynb", [SETUP, TRACE, BEAM_CODE])
        page.set_viewport_size({"width": 1000, "height": 1000})
        run_all(page, url, token, "trace.ipynb", 3)
        cell = page.locator(".jp-CodeCell").nth(1)
        values = printed(page.locator(".jp-CodeCell").nth(0), "REF")  # numpy: [batch, time, hidden]
        status, legend = cell.locator(".rd-status"), cell.locator(".rd-convention")
        expect(status).to_contain_text("at t=0 (recorded trace: all 9 steps, t=0…8)")
        assert "run" not in status.inner_text().split("·")[0]
        expect(legend).to_contain_text("every step is recorded; the cursor line marks the step you look at")
        assert "not run" not in legend.inner_text() and "hatched" not in legend.inner_text()
        heat = cell.locator(".rd-heatmap").first
        expect(heat).to_have_attribute("data-cursor", "0")
        expect(heat.locator(".rd-readout")).to_contain_text("t=0: min")
        assert heat.get_attribute("data-shown") == "9"
        seq = cell.locator(".widget-text input").first
        before = heat.locator(".rd-readout").inner_text()
        seq.fill("1")
        seq.press("Enter")
        expect(heat.locator(".rd-readout")).not_to_have_text(before)  # sequence 1 has arrived
        check_values(page, heat, values[1], 9)  # every step, the cursor on t=0
        before = heat.locator(".rd-readout").inner_text()
        seq.fill("0")
        seq.press("Enter")
        expect(heat.locator(".rd-readout")).not_to_have_text(before)  # sequence 0 is drawn again (not only asked for)
        expect(heat).to_have_attribute("data-cursor", "0")
        check_values(page, heat, values[0, :3], 9)  # its valid steps; the garbage frames after them are padding
        for t in (3, 8):
            assert hover(page, heat, t, 2, 9, 4) == "padding" and pixel(heat, t, 2) == [*PAD, 255]
        cell.locator(".jp-OutputArea-output").first.evaluate("e => e.scrollIntoView({block: 'start'})")
        page.wait_for_timeout(300)
        page.screenshot(path=str(OUT / "debugger-trace-dark-1000.png"))

        search = page.locator(".jp-CodeCell").nth(2).locator(".rd-status")
        expect(search).to_contain_text("at t=0 (recorded trace: all")
        assert "before t=0" not in search.inner_text() and "drawn along hypothesis" in search.inner_text()
    finally:
        set_theme(url, token, "JupyterLab Light")


WIDE = '''
import numpy as np
import recdebug as rd

batch, time = rd.batch_dim, rd.Dim("time")
feat, hid = rd.Dim("feat", 6), rd.Dim("hidden", 32)
with rd.Graph() as g:
    x = rd.Input("x", {batch, time, feat})
    lstm = rd.LSTM(hid)
    with rd.Loop() as loop:
        out = loop.stack(lstm(loop.unstack(x)))
x_np = np.random.default_rng(2).standard_normal((2, 40, 6)).astype(np.float32)
rd.debugger(g.trace({"x": x_np}, seq_lens={time: np.array([40, 25])}))
'''


@pytest.mark.parametrize("width,theme", [(1400, "JupyterLab Light"), (1000, "JupyterLab Dark")])
def test_a_wide_state_and_its_hierarchy_fit_the_view(lab, page, width, theme):
    """A 32-unit LSTM at 1400 px light and 1000 px dark: every hierarchy row ends inside the tree (long dims end in
    an ellipsis, the whole row in its tooltip), and the tooltip at the right edge of a heatmap stays off its
    colour bar."""
    from playwright.sync_api import expect

    url, token = lab
    set_theme(url, token, theme)
    try:
        write_notebook(url, token, f"wide-{width}.ipynb", [WIDE])
        page.set_viewport_size({"width": width, "height": 1000})
        run_all(page, url, token, f"wide-{width}.ipynb", 1)
        cell = page.locator(".jp-CodeCell").first
        heat = cell.locator(".rd-heatmap").first
        expect(heat).to_have_attribute("data-cursor", "0")
        tree = cell.locator(".rd-tree")
        right = tree.evaluate("e => e.getBoundingClientRect().right")
        rows = tree.locator("li.rd-node").all()
        assert len(rows) > 10
        for row in rows:
            box = row.evaluate("li => { const r = li.getBoundingClientRect(), n = li.querySelector(':scope > "
                               ".rd-node-name').getBoundingClientRect(); return [r.right, n.height]; }")
            assert box[0] <= right + 1 and box[1] < 24, (row.get_attribute("data-path"), box, right)
        cut = tree.locator('li[data-path="loop/lstm.rec_linear"]')
        assert "{batch, hidden*4:128}" in cut.get_attribute("title")  # the whole row, where it is cut
        overlay = heat.locator(".rd-overlay")
        overlay.scroll_into_view_if_needed()
        box = overlay.bounding_box()
        page.mouse.move(box["x"] + box["width"] - RIGHT - 2, box["y"] + 4)  # t=39, unit 0: by the colour bar
        tip = heat.locator(".rd-tooltip")
        expect(tip).to_contain_text("t=39 unit=0 value=")
        assert tip.bounding_box()["x"] + tip.bounding_box()["width"] <= box["x"] + box["width"] - RIGHT + 1
        cell.locator(".jp-OutputArea-output").first.evaluate("e => e.scrollIntoView({block: 'start'})")
        page.wait_for_timeout(300)
        light = "light" if "Light" in theme else "dark"
        page.screenshot(path=str(OUT / f"debugger-lstm32-{light}-{width}.png"))
    finally:
        set_theme(url, token, "JupyterLab Light")


COVERAGE = '''
import json
import numpy as np
import recdebug as rd

batch, time, enc, feat = rd.batch_dim, rd.Dim("time"), rd.Dim("enc"), rd.Dim("feat", 3)
with rd.Graph() as g:
    x = rd.Input("x", [batch, time, feat])
    m = rd.Input("m", [batch, enc, feat])
    cov = rd.State({batch, enc}, initial=0.0)
    with rd.Loop() as loop:
        att = rd.softmax(rd.reduce_sum(m * loop.unstack(x), feat) - cov.get(), enc)
        cov.assign(cov.get() + att)
rng = np.random.default_rng(3)
x_np, m_np = rng.standard_normal((2, 6, 3)).astype(np.float32), rng.standard_normal((2, 7, 3)).astype(np.float32)
t_lens, e_lens = np.array([6, 6]), np.array([7, 3])
m_np[1, 3:] = 1e3  # garbage in sequence 1's padding frames of enc
st = g.stepper({"x": x_np, "m": m_np}, {time: t_lens, enc: e_lens})
d = rd.debugger(st)
st.step(4)
d.select_sequence(1)
ref, c = [], np.zeros(3)
for t in range(4):  # numpy: sequence 1's valid frames of enc
    s = m_np[1, :3].astype(np.float64) @ x_np[1, t] - c
    c = c + np.exp(s - s.max()) / np.exp(s - s.max()).sum()
    ref.append(c)
print("REF " + json.dumps(np.stack(ref).tolist()))
'''


@pytest.mark.parametrize("width,theme", [(1400, "JupyterLab Light"), (1000, "JupyterLab Dark")])
def test_a_state_over_an_encoders_axis_shows_the_sequences_valid_frames_only(lab, page, width, theme):
    """A coverage State over enc: the shown sequence's 3 valid frames of enc are the heatmap's units (its 4
    padding frames, garbage in the input, are not drawn), hover and colour as numpy computes them, and the unit
    label says so."""
    from playwright.sync_api import expect

    url, token = lab
    set_theme(url, token, theme)
    try:
        write_notebook(url, token, f"coverage-{width}.ipynb", [COVERAGE, "d"])
        page.set_viewport_size({"width": width, "height": 1000})
        run_all(page, url, token, f"coverage-{width}.ipynb", 2)
        cell = page.locator(".jp-CodeCell").nth(1)
        expected = printed(page.locator(".jp-CodeCell").nth(0), "REF")  # [4 steps, 3 frames]
        heat = cell.locator(".rd-heatmap").first
        expect(cell.locator(".rd-status")).to_contain_text("at t=3 (4 of 6 steps run)")
        expect(heat).to_contain_text("enc (3 of 7 units: sequence 1's valid frames)")
        check_values(page, heat, expected, 6)
        assert heat.get_attribute("data-signed") == "0"  # coverage is never negative: white (0) to red, from 0 up
        shape = heat.locator(".rd-heat").evaluate("c => [c.width, c.height]")
        assert shape == [6, 3], shape  # steps x valid frames
        alignment = cell.locator(".rd-alignment")  # the coverage's alignment: steps down, frames across
        expect(alignment).to_be_visible()
        size = alignment.evaluate("img => [img.naturalWidth, img.naturalHeight, img.src]")
        assert size[0] > 300 and size[1] > 150, size
        cell.get_by_role("button", name="step ▶").click()  # redrawn with the new step
        expect(cell.locator(".rd-status")).to_contain_text("at t=4 (5 of 6 steps run)")
        expect(alignment).not_to_have_attribute("src", size[2])
        cell.locator(".jp-OutputArea-output").first.screenshot(path=str(OUT / f"debugger-coverage-{width}.png"))
    finally:
        set_theme(url, token, "JupyterLab Light")


SHARED = '''
import json
import numpy as np
import recdebug as rd

batch, time, feat = rd.batch_dim, rd.Dim("time"), rd.Dim("feat", 2)
with rd.Graph() as g:
    x = rd.Input("x", {batch, time, feat})
    i = rd.State(set(), initial=0, dtype="int32")  # one step counter for the batch
    h = rd.State({batch, feat}, initial=0.0)
    with rd.Loop() as loop:
        i.assign(i.get() + 1)
        h.assign(h.get() + loop.unstack(x) * rd.cast(i.get(), "float32"))
x_np = np.random.default_rng(2).standard_normal((2, 5, 2)).astype(np.float32)
lens = np.array([5, 2])
x_np[1, 2:] = 1e3  # garbage in sequence 1's padding frames
st = g.stepper({"x": x_np}, seq_lens={time: lens})
d = rd.debugger(st)
st.step(4)
d.select_sequence(1)  # ended after 2 steps; the shared counter went on
'''


@pytest.mark.parametrize("width,theme", [(1000, "JupyterLab Dark")])
def test_a_state_shared_by_the_batch_draws_one_row_the_same_for_every_sequence(lab, page, width, theme):
    """A State without the batch dim: one row labelled "shared by the batch", its hover values the counter's 1..4
    also for a sequence that ended after 2 steps (no padding grey there), while the batched State beside it is
    padding after that sequence's end."""
    from playwright.sync_api import expect

    url, token = lab
    set_theme(url, token, theme)
    try:
        write_notebook(url, token, "shared.ipynb", [SHARED, "d"])
        page.set_viewport_size({"width": width, "height": 1000})
        run_all(page, url, token, "shared.ipynb", 2)
        cell = page.locator(".jp-CodeCell").nth(1)
        expect(cell.locator(".rd-status")).to_contain_text("at t=3 (4 of 5 steps run)")
        counter, h = cell.locator(".rd-heatmap").nth(0), cell.locator(".rd-heatmap").nth(1)
        expect(counter).to_contain_text("one value, shared by the batch")
        for t in range(4):
            assert float(hover(page, counter, t, 0, 5, 1)) == t + 1
            assert pixel(counter, t, 0)[:3] != list(PAD)
        assert hover(page, h, 3, 0, 5, 2) == "padding"  # the batched State: sequence 1 ended after t=1
        expect(counter.locator(".rd-readout")).to_have_text("t=3: value 4")  # an int, written as one: no label
        expect(counter.locator(".rd-legend")).to_contain_text("values:")  # (not labels of a vocabulary)
        assert counter.get_attribute("data-signed") == "0"  # a counter from 1 up: white (0) to red
        cell.locator(".jp-OutputArea-output").first.screenshot(path=str(OUT / f"debugger-shared-{width}.png"))
    finally:
        set_theme(url, token, "JupyterLab Light")
