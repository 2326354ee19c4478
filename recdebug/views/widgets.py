"""The debugger: the controller (sequence and layer selection, the views in sync with the cursor) over its panels
(``panels``) and its source (``sources``: a recorded trace or a live stepper), with its parts each in a module of
its own: its control widgets (``controls``), the cursor and stepping (``cursor``), the search's beam tree and
hypothesis (``search_control``), what is marked on the views (``marks``: unit selection, differences, gradient
norms, the shared scale) and the status line and picture (``status``).

State lives in traitlets on the Python side; the browser only draws it. Every control is a method here
(``step``, ``seek``, ``select_sequence``, ``select_layer``, ``show_diff``...) that a test can call and then
assert on traitlet values. Names (States, layers, dims, breakpoint texts, a trace file's keys and device) may
hold markup: the panels set them as textContent, and the one HTML widget built from them, the status line,
escapes them.
"""
from __future__ import annotations

import html

import ipywidgets as w
import numpy as np
import traitlets as tl

from ..language.errors import RecDebugError
from .alignment import AlignmentPanel
from .controls import Controls
from .cursor import Cursor
from .marks import Marks
from .panels import BeamTreeView, HeatmapView, HierarchyView
from .search_control import SearchControl
from .sources import LiveSource, RecordedSource
from .status import StatusLine


class Debugger(Controls, Cursor, SearchControl, Marks, StatusLine, AlignmentPanel, w.VBox):
    """``rd.debugger(trace_or_stepper)``: step through a loop's hidden states."""

    t = tl.Int(0)  # steps done: the cursor shows step t-1
    T = tl.Int(0)
    sequence = tl.Int(0)
    selected_layer = tl.Unicode("")
    status = tl.Unicode("")
    breakpoint = tl.Unicode("")
    diff_summary = tl.Unicode("")

    def __init__(self, source, other=None, layers=(), reveal=None, shared_scale=False, vocab=None):
        layers = _check_arguments(source, other, layers)
        vocab = _check_vocab(vocab)
        try:
            self._build(source, other, layers, reveal, shared_scale, vocab)
        except BaseException:
            self.close()  # what was built so far, now: not a complaint from Widget.__del__ later
            raise

    def _build(self, source, other, layers, reveal, shared_scale, vocab):
        from ..records.trace import Trace

        self.stepper, self.trace = (None, source) if isinstance(source, Trace) else (source, None)
        self.source = RecordedSource(source) if self.trace is not None else LiveSource(source)
        # reveal: draw the steps up to the cursor only (a live stepper always: later steps are not run yet)
        self.reveal = bool(self.stepper is not None if reveal is None else reveal)
        self.shared_scale, self.vocab = bool(shared_scale), vocab
        self._updating = False
        self._edits_seen = len(source.edits) if self.trace is None else 0
        self.beams = self.source.beams()
        self.beam_tree = BeamTreeView() if self.beams is not None else None
        self.hypothesis = None  # (step, slot) of the hypothesis shown, with search
        self.views: dict = {}  # key -> HeatmapView
        self._build_views()
        # the picked layer's view: hidden until a layer is picked in the hierarchy
        self.picked = HeatmapView("", title="", reveal=self.reveal, recorded=self.source.recorded,
                                  layout=w.Layout(display="none"))
        self._build_alignment()
        self.hierarchy = HierarchyView(nodes=self.source.nodes())
        self.hierarchy.observe(self._from_browser(lambda ch: self.select_layer(ch["new"])), "selected")
        self.net_text = w.HTML(value=_pre(self.source.net_text()), layout=w.Layout(width="100%"))
        raw = w.Accordion(children=[self.net_text], titles=("raw net dict",))
        raw.selected_index = None
        self._controls()
        beam_box = [] if self.beam_tree is None else [w.HTML("<b>beam search</b>"), self.beam_tree]
        super().__init__(children=[
            w.HBox([self.b_reset, self.b_back, self.b_step, self.b_run, self.seq, self.threshold],
                   layout=w.Layout(flex_flow="row wrap", align_items="center")),
            self.slider, self.status_html, self.legend, *beam_box,
            # side by side when there is room, else the hierarchy below the views
            w.HBox([w.VBox(list(self.views.values()) + [self.picked, self.alignment],
                           layout=w.Layout(flex="2 1 460px", min_width="0", max_width="100%")),
                    w.VBox([w.HTML("<b>RecLayer hierarchy</b>"), self.hierarchy, raw],
                           layout=w.Layout(flex="1 1 300px", min_width="0", max_width="100%"))],
                   layout=w.Layout(width="100%", flex_flow="row wrap")),
        ])
        self.observe(self._on_t, "t")
        self.observe(self._on_sequence, "sequence")
        if self.beam_tree is not None:
            self._send_beams()
            self.beam_tree.observe(self._from_browser(
                lambda ch: ch["new"][0] >= 0 and self.select_hypothesis(*ch["new"])), "selected")
        for layer in layers:
            if not self._layer_exists(layer):
                raise RecDebugError(f"rd.debugger(..., layers=): no layer {layer!r} in this loop",
                                    hint=f"layers with values per step: {self.source.stepped_layers()[:12]}")
            self.select_layer(layer)
        self.T = self.source.steps(self.beams)
        self.slider.max = max(self.T - 1, 0)
        self._refresh_all()
        if other is not None:
            self.show_diff(other)
        if self.stepper is not None:
            self._driving = False  # True while this debugger moves the stepper itself
            self.t = self.stepper.t
            self.stepper.watch(self._follow)
        else:  # a recorded trace: every step is there; the cursor starts on t=0
            self.slider.min = self._first - 1
            self.t = self._first

    # --- what the views show ---
    def _build_views(self):
        for key in self.source.state_keys():
            self.views[key] = HeatmapView(key, title=f"State {key}", reveal=self.reveal,
                                          recorded=self.source.recorded, **self._describe(key))
            self._watch_brush(self.views[key])

    @property
    def batch(self) -> int:
        return self.source.batch

    def _length(self, b: int) -> int:
        if self.beams is not None and self.hypothesis is not None:
            return self.beams.hypothesis(b, self.hypothesis[1], self.hypothesis[0])["length"]
        if self.beams is not None:  # a live search before its first step
            return self.T
        return self.source.length(b, self.T)

    def _key_length(self, key: str, b: int, length: int | None = None) -> int:
        """The valid steps of ``key``'s view for sequence b (``length``: ``_length(b)``, when known): a value shared
        by the batch steps while any sequence does, so it has no padding after the shown one's end."""
        if self.source.shared(key):
            return self.T
        return self._length(b) if length is None else length

    def _array(self, key: str, b: int) -> np.ndarray:
        """[T, U] float32 values of ``key`` for sequence ``b`` (with search: along the selected hypothesis)."""
        return self.source.rows(key, b, self.beams, self.hypothesis)

    def select_sequence(self, b: int):
        if not 0 <= b < self.batch:
            raise RecDebugError(f"sequence {b} is out of range (batch of {self.batch})")
        self.sequence = b

    def select_layer(self, path: str):
        """Show a layer's values per step in the extra view (a layer inside the loop, or one with its axis)."""
        if not path:
            return
        ok = self._layer_has_steps(path)
        self.selected_layer = path
        if self.hierarchy.selected != path:
            self.hierarchy.selected = path
        self.picked.layout.display = None
        if not ok:
            with self.picked.hold_sync():
                self.picked.show(np.zeros((0, 0), np.float32), 0, 0, title=f"{path}: no per-step values to show")
                self.picked.unit_label = ""
            return
        self.picked.key = path
        if not getattr(self, "_picked_watched", False):
            self._watch_brush(self.picked)
            self._picked_watched = True
        with self.picked.hold_sync():
            self.picked.highlight, self.picked.units_text = [], ""
            for name, value in self._describe(path).items():
                setattr(self.picked, name, value)
            self._send(self.picked, title=f"layer {path}")
            self.picked.cursor = self.t - 1
        self._refresh_alignment()

    def _layer_exists(self, path: str) -> bool:
        return any(n["path"] == path for n in self.hierarchy.nodes) or self._layer_has_steps(path)

    def _layer_has_steps(self, path: str) -> bool:
        return self.source.has_steps(path)

    def close(self):
        """Close this widget and every widget inside it (their comms and registry entries). Also right for a
        debugger whose construction failed half-way: it closes what was built."""
        for child in self.children:
            _close_tree(child)
        parts = [v for v in vars(self).values() if isinstance(v, w.Widget)]
        for view in [*getattr(self, "views", {}).values(), *parts]:
            _close_tree(view)
        if "layout" in self._trait_values:  # never made (a failed construction): not made now to close it
            self.layout.close()
        super().close()

    # --- syncing ---
    def _send(self, view: HeatmapView, title=None):
        b = self.sequence
        arr = self._array(view.key, b)
        known = self.source.known(self.T)
        n = self.source.valid_units(view.key, b)
        if n is not None:  # a value with an axis of its own: this sequence's valid frames only
            dims = self.source.describe(view.key)[0]
            total = int(np.prod([size for _, size in dims]))
            view.unit_label = "×".join(name for name, _ in dims) + f" ({n} of {total} units: sequence {b}'s " \
                                                                    "valid frames)"
        length = self._key_length(view.key, b)
        if self.stepper is not None and self.beams is not None and title is None:
            view.update(arr, length, known)  # a live search: mostly the new step's row
        else:
            view.show(arr, length, known, title)

    def _refresh_all(self):
        for view in self.views.values():
            self._send(view)
            self._send_grads(view)
        if self.selected_layer and self._layer_has_steps(self.selected_layer):
            self._send(self.picked)
        self._send_diffs()
        self._on_t({"new": self.t})

    def _on_sequence(self, change):
        if self.seq.value != change["new"]:
            self.seq.value = change["new"]
        if self.beam_tree is not None:
            self._send_beams()
        self._refresh_all()

    def _on_t(self, change):
        t = change["new"]
        if self.stepper is not None and self.beams is not None:
            self._refresh_live_beams()
        elif self.stepper is not None:  # a live step: send only the new rows
            if self._edits_seen != len(self.stepper.edits):  # rows already sent may have changed
                self._edits_seen = len(self.stepper.edits)
                for view in self._active_views():
                    self._send(view)
            length = self._length(self.sequence)
            for view in self._active_views():
                rows, n = self.source.all_rows(view.key), self.source.valid_units(view.key, self.sequence)
                with view.hold_sync():  # the new rows, the steps known and where the sequence ended: one message
                    if view.known < t:  # (a value with an axis of its own: its valid frames only)
                        view.set_rows({k: rows[k, self.sequence].reshape(-1)[:n] for k in range(view.known, t)},
                                      known=t)
                    view.length = self._key_length(view.key, self.sequence, length)
        self._place_cursor(t)

    def _place_cursor(self, t: int):
        for view in self._active_views():
            view.cursor = t - 1
        if self.slider.value != t - 1:
            self.slider.value = t - 1
        self._share_scale()
        self._refresh_status()
        self._refresh_alignment()

    def _active_views(self):
        return list(self.views.values()) + ([self.picked] if self.selected_layer and
                                            self._layer_has_steps(self.selected_layer) else [])


def _pre(text: str) -> str:
    """Text (which may hold markup: names) as a scrolling preformatted box."""
    return (f"<pre class='rd-net' style='max-height:420px;overflow:auto;font-size:11px;line-height:1.3;"
            f"margin:0;white-space:pre'>{html.escape(text, quote=False)}</pre>")


def _check_vocab(vocab):
    """``vocab``: the names of the labels, a list (every label view) or {State key or dim name: list}."""
    if vocab is None:
        return None
    if isinstance(vocab, dict):
        out = {}
        for k, names in vocab.items():
            if not isinstance(k, str) or isinstance(names, str) or not all(isinstance(n, str) for n in names):
                raise RecDebugError("rd.debugger(..., vocab=) maps a State key or a dim name to a list of label "
                                    f"names, got {k!r}: {names!r}", hint='e.g. vocab={"vocab": ["<eos>", "a", "b"]}')
            out[k] = list(names)
        return out
    if isinstance(vocab, str) or not all(isinstance(n, str) for n in vocab):
        raise RecDebugError(f"rd.debugger(..., vocab=) is a list of label names, got {vocab!r}",
                            hint='e.g. vocab=["<eos>", "a", "b"]: label i is named vocab[i]')
    return list(vocab)


def _check_arguments(source, other, layers) -> list:
    """The arguments of rd.debugger checked before any widget is built; ``layers`` as a list of paths."""
    from ..records.protocol import SteppingControls
    from ..records.trace import Trace

    if not isinstance(source, (Trace, SteppingControls)):
        raise RecDebugError(f"rd.debugger expects an rd.Trace or a stepper (g.stepper, m.stepper), got "
                            f"{type(source).__name__}")
    if other is not None and not isinstance(other, Trace):
        raise RecDebugError(f"rd.debugger(..., other=) is a trace to compare with, got {type(other).__name__}",
                            hint="pass an rd.Trace of the same graph (g.trace(...) or rd.Trace.load(path))")
    if other is not None and not isinstance(source, Trace):
        raise RecDebugError("rd.debugger(..., other=) compares two traces, but the debugger is on a stepper",
                            hint="open it on a trace: rd.debugger(g.trace(...), other=...)")
    layers = [layers] if isinstance(layers, str) else layers
    try:
        layers = list(layers)
    except TypeError:
        raise RecDebugError(f"rd.debugger(..., layers=) is a list of layer paths, got {type(layers).__name__}",
                            hint='e.g. layers=["loop/tanh"]: the paths the hierarchy view lists') from None
    wrong = next((p for p in layers if not isinstance(p, str)), None)
    if wrong is not None:
        raise RecDebugError(f"rd.debugger(..., layers=) is a list of layer paths, got {wrong!r} in it",
                            hint='e.g. layers=["loop/tanh"]: the paths the hierarchy view lists')
    return layers


def _close_tree(widget):
    for child in getattr(widget, "children", ()):
        _close_tree(child)
    for part in ("layout", "style"):
        sub = getattr(widget, part, None)
        if isinstance(sub, w.Widget):
            sub.close()
    widget.close()


def debugger(source, other=None, layers=(), reveal=None, shared_scale=False, vocab=None) -> Debugger:
    """The debugger widget for a Trace (browse every step) or a Stepper (step live on the device).

    ``other``: a trace to compare with; ``layers``: layer paths to show at once; ``reveal``: draw the steps up to
    the cursor only (default: on for a stepper, off for a trace); ``shared_scale``: one colour range for all
    State views; ``vocab``: label names (a list, or {State key or dim name: list}) for the legend of label views.
    """
    return Debugger(source, other=other, layers=layers, reveal=reveal, shared_scale=shared_scale, vocab=vocab)
