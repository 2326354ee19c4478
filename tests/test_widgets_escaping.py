"""Names holding markup (States, module attributes, dims, breakpoint texts, a trace file's keys and device) reach
the debugger as text: every HTML value of its widgets has only the debugger's own tags, with the names escaped.
The canvas views (anywidget) get the names as plain trait strings, which their modules set as textContent; the
real browser check of both is in test_widgets_browser.py."""
from html.parser import HTMLParser

import ipywidgets as w
import numpy as np
import pytest

import recdebug as rd
from hostile_names import HOSTILE, IMG, LENS, SCRIPT, hostile_graph, hostile_trace_file, inputs, time

OWN_TAGS = {"span", "b", "pre"}  # what the debugger's HTML widgets use; names arrive as text inside them


class _Markup(HTMLParser):
    def __init__(self, text):
        super().__init__()
        self.tags, self.attrs, self.text = [], [], []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += [name for name, _ in attrs]

    def handle_data(self, data):
        self.text.append(data)


def html_values(widget) -> list:
    """Every string of ``widget`` and the widgets inside it that the browser parses as HTML."""
    out = []
    if isinstance(widget, (w.HTML, w.HTMLMath)):
        out.append(widget.value)
    if getattr(widget, "description_allow_html", False):
        out.append(widget.description)
    for child in getattr(widget, "children", ()):
        out += html_values(child)
    return out


def shown_text(d) -> str:
    """The debugger's HTML values as the browser shows them: markup parsed, checked to be the debugger's own."""
    texts = []
    for value in html_values(d):
        parsed = _Markup(value)
        assert set(parsed.tags) <= OWN_TAGS and set(parsed.attrs) <= {"class", "style"}, value
        texts.append("".join(parsed.text))
    return "\n".join(texts)


def test_live_debugger_shows_markup_in_names_and_breakpoint_texts_as_text():
    g, h = hostile_graph()
    st = g.stepper({"x": inputs()}, seq_lens={time: LENS})
    d = rd.debugger(st)
    assert {f"State {IMG}", f"State cell/{SCRIPT}"} <= {v.title for v in d.views.values()}  # textContent
    assert d.run(rd.on_state(h, lambda v: np.abs(v).max() > 0, text=SCRIPT + IMG)) is True
    assert SCRIPT + IMG in d.breakpoint and all(s in shown_text(d) for s in HOSTILE)
    d.step()
    d.select_layer("loop/cell.tanh")
    assert d.picked.title == "layer loop/cell.tanh"
    dims = {n["dims"] for n in d.hierarchy.nodes}
    assert f"{{batch, {IMG}:4}}" in dims  # the tree view sets it as textContent
    d.close()


def test_live_debugger_nan_breakpoint_names_the_states_as_text():
    g, h = hostile_graph()
    d = rd.debugger(g.stepper({"x": inputs(nan_at=2)}, seq_lens={time: LENS}))
    assert d.run() is True and d.t == 3
    text = shown_text(d)
    assert f"breakpoint: NaN/Inf in cell/{SCRIPT}, {IMG}, plain at t=2" in text
    d.close()


def test_trace_file_with_markup_in_keys_and_device_is_shown_as_text(tmp_path):
    g, h = hostile_graph()
    path = hostile_trace_file(g.trace({"x": inputs(nan_at=2)}, seq_lens={time: LENS}), tmp_path / "hostile.npz")
    other_path = hostile_trace_file(g.trace({"x": inputs()}, seq_lens={time: LENS}), tmp_path / "other.npz")
    tr = rd.Trace.load(path)
    d = rd.debugger(tr, other=rd.Trace.load(other_path), layers=[f"loop/{IMG}"])
    assert f"State loop/{IMG}" in {v.title for v in d.views.values()} and d.picked.title == f"layer loop/{IMG}"
    assert any(IMG in n["path"] for n in d.hierarchy.nodes)
    assert d.run() is True
    text = shown_text(d)
    assert f"at t=2 (recorded trace: all 6 steps, t=0…5) · {SCRIPT}" in text  # the device, from the file
    assert "breakpoint: NaN/Inf in loop/" in text and "diff: first difference: loop/" in text
    assert all(s in text for s in HOSTILE)
    d.select_layer(f"loop/cell.{SCRIPT}")
    assert d.picked.title == f"layer loop/cell.{SCRIPT}"
    shown_text(d)
    d.close()


@pytest.mark.parametrize("value", HOSTILE)
def test_status_html_escapes_every_part(value):
    g, h = hostile_graph()
    d = rd.debugger(g.trace({"x": inputs()}, seq_lens={time: LENS}))
    d.breakpoint, d.diff_summary = value, value
    d.step()
    assert shown_text(d).count(value) == 2
    d.close()
