"""The debugger: the controller (cursor, sequence and hypothesis selection, stepping, following its stepper)
over its panels (``panels``) and its source (``sources``: a recorded trace or a live stepper).

State lives in traitlets on the Python side; the browser only draws it. Every control is a method here
(``step``, ``seek``, ``select_sequence``, ``select_layer``, ``show_diff``...) that a test can call and then
assert on traitlet values. Names (States, layers, dims, breakpoint texts, a trace file's keys and device) may
hold markup: the panels set them as textContent, and the one HTML widget built from them, the status line,
escapes them.
"""
from __future__ import annotations

import base64
import html
import logging

import ipywidgets as w
import numpy as np
import traitlets as tl

from ..language.errors import RecDebugError
from .panels import BeamTreeView, HeatmapView, HierarchyView
from .sources import LiveSource, RecordedSource


class Debugger(w.VBox):
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
            w.HBox([w.VBox(list(self.views.values()) + [self.picked],
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

    # --- beam search ---
    def _send_beams(self):
        """The beam tree of the current sequence; the best hypothesis of the last step selected."""
        bs, b = self.beams, self.sequence
        steps, _, beam = bs.shape
        nodes = [{"t": t, "k": k, "label": int(bs.labels[t, b, k]), "score": float(bs.scores[t, b, k]),
                  "src": int(bs.backpointers[t, b, k]), "ended": bool(bs.ended[t, b, k])}
                 for t in range(steps) for k in range(beam)]
        self.beam_tree.nodes = nodes
        if steps:
            last = min(steps - 1, bs.last_step(b))
            k = bs.best(b, last)
            self.beam_tree.best = self._drawn_path(last, k)
            self.select_hypothesis(last, k)
            return
        self.hypothesis, self._hyp_text = None, ""  # a live search before its first step
        with self.beam_tree.hold_sync():
            self.beam_tree.best = []
            self.beam_tree.path = []
            self.beam_tree.selected = [-1, -1]
        for view in self._active_views():
            self._send(view)

    def _drawn_path(self, t: int, k: int) -> list:
        """[step, slot] pairs of hypothesis k of step t, up to the step where it ended (the tree draws no
        EOS carried on after that)."""
        b = self.sequence
        slots = self.beams.path(t, b, k)
        end = self.beams.hypothesis(b, k, t)["end_step"]
        return [[s, slot] for s, slot in enumerate(slots) if end < 0 or s <= end]

    def _refresh_live_beams(self):
        """A live search moved (a step, a step back, an edit): new hypotheses, the best one shown."""
        st = self.stepper
        if self.beams.shape[0] == st.t and self._edits_seen == len(st.edits):
            return
        self._edits_seen = len(st.edits)
        self.beams = st.beams()
        self._send_beams()

    def select_hypothesis(self, t: int, k: int):
        """Show hypothesis k of step t: its path in the tree and its States along that path."""
        if self.beams is None:
            raise RecDebugError("select_hypothesis needs a search: a trace made with search=True, or a stepper of a "
                                "loop with rd.choice")
        b = self.sequence
        steps, _, beam = self.beams.shape
        if not (0 <= t < steps and 0 <= k < beam):
            raise RecDebugError(f"no hypothesis {k} of step {t}: {steps} steps of beam size {beam} so far")
        self.hypothesis = (int(t), int(k))
        if self.beam_tree.selected != [int(t), int(k)]:
            self.beam_tree.selected = [int(t), int(k)]
        self.beam_tree.path = self._drawn_path(int(t), int(k))
        hyp = self.beams.hypothesis(b, int(k), int(t))
        if self.trace is not None:
            self.breakpoint = ""
        self.diff_summary = ""
        ended = f", ended at t={hyp['end_step']}" if hyp["end_step"] >= 0 else ""
        self._hyp_text = f"drawn along hypothesis {k} at t={t}: labels {hyp['labels']}, score {hyp['score']:.4f}{ended}"
        for view in self._active_views():
            self._send(view)
        self._place_cursor(self.t)

    def _build_views(self):
        for key in self.source.state_keys():
            self.views[key] = HeatmapView(key, title=f"State {key}", reveal=self.reveal,
                                          recorded=self.source.recorded, **self._describe(key))
            self._watch_brush(self.views[key])

    def _watch_brush(self, view: HeatmapView):
        def brushed(change):
            if len(change["new"]) == 2:
                self.select_units(view.key, *change["new"])
        view.observe(self._from_browser(brushed), "brush")

    def select_units(self, key: str, t0: int, t1: int, threshold: float | None = None) -> list:
        """Unit selection in a view (what dragging over steps t0..t1 of its heatmap does): the units whose value
        is at least ``threshold`` (default: the threshold box; at most it, if negative) at every valid step of the
        range, highlighted and listed in that view."""
        view = self.picked if key == self.picked.key and key not in self.views else self.views.get(key)
        if view is None:
            raise RecDebugError(f"select_units: no view {key!r}; the views are {sorted(self.views)}")
        threshold = float(self.threshold.value if threshold is None else threshold)
        t0, t1 = sorted((int(t0), int(t1)))
        last = min(view.length, view.known) - 1
        t0, t1 = max(t0, 0), min(t1, last)
        if t0 > t1:
            units, text = [], "no valid step in the brushed range"
        else:
            values = view._array[t0:t1 + 1]
            hit = (values >= threshold) if threshold >= 0 else (values <= threshold)
            units = [int(u) for u in np.nonzero(hit.all(axis=0))[0]]
            sign = ">=" if threshold >= 0 else "<="
            shown = ", ".join(map(str, units[:40])) + (f" ... ({len(units)} in all)" if len(units) > 40 else "")
            text = f"units {sign} {threshold:g} at every t={t0}…{t1}: {shown or 'none'}"
        with view.hold_sync():
            view.brush = [t0, t1]  # the range the selection frames (also when it was made from code)
            view.highlight = units
            view.units_text = text
        return units

    def _describe(self, key: str) -> dict:
        """What a view's axes say (its unit dims and the loop's axis), and whether it holds labels."""
        dims, ints, sparse, axis_name = self.source.describe(key)
        n = int(np.prod([size for _, size in dims])) if dims else 1
        if not dims:
            unit_label = "one value"
        elif len(dims) == 1:
            unit_label = f"{dims[0][0]} ({n} unit{'s' if n != 1 else ''})"
        else:
            unit_label = "×".join(name for name, _ in dims) + f" ({n} units, flattened)"
        labels = []
        if ints and self.vocab is not None:
            labels = self.vocab if isinstance(self.vocab, list) else \
                self.vocab.get(key, self.vocab.get(sparse, []) if sparse else [])
        return {"unit_label": unit_label, "axis_label": f"t ({axis_name})", "categorical": ints,
                "labels": list(labels)}

    @property
    def batch(self) -> int:
        return self.source.batch

    def _length(self, b: int) -> int:
        if self.beams is not None and self.hypothesis is not None:
            return self.beams.hypothesis(b, self.hypothesis[1], self.hypothesis[0])["length"]
        if self.beams is not None:  # a live search before its first step
            return self.T
        return self.source.length(b, self.T)

    def _array(self, key: str, b: int) -> np.ndarray:
        """[T, U] float32 values of ``key`` for sequence ``b`` (with search: along the selected hypothesis)."""
        return self.source.rows(key, b, self.beams, self.hypothesis)

    # --- controls ---
    def _controls(self):
        button = w.Layout(width="auto", min_width="64px")
        self.b_reset = w.Button(description="reset", layout=button,
                                tooltip="back to before t=0 (the initial values)" if self.trace is None else
                                "the cursor back to t=0")
        self.b_back = w.Button(description="◀ back", tooltip="one step back", layout=button)
        self.b_step = w.Button(description="step ▶", tooltip="run one step", layout=button)
        self.b_run = w.Button(description="run ▶▶", tooltip="run to the end, or to the next breakpoint (NaN/Inf)",
                              layout=button)
        self.b_reset.on_click(self._from_browser(lambda _: self.reset()))
        self.b_back.on_click(self._from_browser(lambda _: self.step_back()))
        self.b_step.on_click(self._from_browser(lambda _: self.step()))
        self.b_run.on_click(self._from_browser(lambda _: self.run()))
        # the slider shows the cursor's t (the last step run; -1: none yet), as every view does
        self.slider = w.IntSlider(value=-1, min=-1, max=1, description="t", continuous_update=False,
                                  layout=w.Layout(width="100%", max_width="900px"))
        self.slider.observe(self._from_browser(lambda ch: self.seek(ch["new"] + 1)), "value")
        self.seq = w.BoundedIntText(value=0, min=0, max=max(0, self.batch - 1), description="sequence",
                                    layout=w.Layout(width="170px"), style={"description_width": "initial"})
        # unit selection: drag over steps in a heatmap to list the units at least this value throughout them
        self.threshold = w.FloatText(value=0.3, step=0.05, description="unit threshold",
                                     tooltip="drag over a step range in a heatmap: the units at least this value "
                                             "(at most, if negative) at every step of it are highlighted and listed",
                                     layout=w.Layout(width="190px"), style={"description_width": "initial"})
        self.seq.observe(self._from_browser(lambda ch: self.select_sequence(ch["new"])), "value")
        self.status_html = w.HTML()
        self.legend = w.HTML(_convention(self.trace is not None, self.reveal))

    def _from_browser(self, callback):
        """``callback`` for a control in the page: a recdebug error (e.g. the stepper was closed since) goes to
        the status line instead of a traceback nobody sees next to the widget."""
        def shown(*args):
            try:
                callback(*args)
            except RecDebugError as e:
                self.status = " · ".join(part for part in (e.message, e.hint) if part)
                self.status_html.value = f"<span class='rd-status rd-error'>{html.escape(self.status)}</span>"
        return shown

    def step(self, n: int = 1):
        self.seek(self.t + n)

    def step_back(self, n: int = 1):
        self.seek(self.t - n)

    @property
    def _first(self) -> int:
        """The lowest ``t``: 0 for a stepper (no step run yet); 1 for a trace (its cursor is on a recorded step)."""
        return 1 if self.trace is not None and self.T > 0 else 0

    def reset(self):
        """Back to the start: a stepper to before t=0 (its initial values), a trace's cursor to t=0."""
        if self.stepper is not None:
            self._drive(self.stepper.reset)
        self.breakpoint = ""
        if self.t == self._first:  # no move, but the values may have changed
            self._on_t({"new": self.t})
        self.seek(self._first)

    def seek(self, t: int):
        """Move to ``t`` steps done: the cursor on t-1 (a stepper computes the steps it has not run yet; a trace's
        cursor stays on its recorded steps)."""
        t = max(self._first, min(int(t), self.T))
        if self.stepper is not None:
            if t != self.stepper.t:
                self._drive(lambda: self.stepper.run_to(t))
            t = self.stepper.t
        self.t = t

    def _drive(self, move):
        """Move the stepper from here: this debugger follows by itself, not through the stepper's call back."""
        self._driving = True
        try:
            return move()
        finally:
            self._driving = False

    def _follow(self):
        """The stepper moved or was edited by code elsewhere (another cell): show where it is now."""
        if self._driving:
            return
        try:
            if self.stepper.closed is not None:
                self._refresh_status()
            elif self.stepper.t != self.t:
                self.t = self.stepper.t
            else:  # the same step, other values (set_state, reset at t=0)
                self._on_t({"new": self.t})
            if self.stepper.closed is None:
                self.breakpoint = self.stepper.breakpoint or ""
                self._refresh_status()
        except RecDebugError as e:
            self.status = " · ".join(part for part in (e.message, e.hint) if part)
            self.status_html.value = f"<span class='rd-status rd-error'>{html.escape(self.status)}</span>"

    def run(self, predicate=None):
        """Run to the end, or to the first later step where a breakpoint holds (default: NaN/Inf in a State)."""
        if self.stepper is not None:
            from ..records.protocol import on_nonfinite

            hit = self._drive(lambda: self.stepper.run_until(predicate or on_nonfinite()))
            self.breakpoint = self.stepper.breakpoint or "" if hit else ""
            self.t = self.stepper.t
            self._refresh_status()
            return hit
        if predicate is None:
            t, key = self._first_nonfinite(self.t)
            found = t is not None and f"NaN/Inf in {key} at t={t}"
        else:
            t = next((t for t in range(self.t, self.T) if predicate(self, t)), None)
            found = t is not None and f"condition at t={t}"
        if found:
            self.breakpoint = found
            self.t = t + 1
            self._refresh_status()
            return True
        self.breakpoint = ""
        self.t = self.T
        return False

    def _first_nonfinite(self, start: int) -> tuple:
        """(t, key): the first step from ``start`` on where a State holds NaN/Inf on a valid frame (the first
        such State in view order), or (None, ""). One pass over each State's array, not one per step."""
        tr = self.trace
        axis = self.source.axis
        found = (None, "")
        for key in self.views:
            e = tr.entries[key]
            at = e.dims.index(axis)
            bad = ~np.isfinite(e.array) & tr.mask(key, order=e.dims)
            steps = np.nonzero(bad.any(axis=tuple(i for i in range(bad.ndim) if i != at))[start:self.T])[0]
            if len(steps) and (found[0] is None or start + steps[0] < found[0]):
                found = (start + int(steps[0]), key)
        return found

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

    def _layer_exists(self, path: str) -> bool:
        return any(n["path"] == path for n in self.hierarchy.nodes) or self._layer_has_steps(path)

    def _layer_has_steps(self, path: str) -> bool:
        return self.source.has_steps(path)

    def show_diff(self, other):
        """Mark where ``other`` (a Trace of the same graph) differs: first step and units, per view."""
        if self.trace is None:
            raise RecDebugError("show_diff compares two traces: open the debugger on a Trace")
        self._diff = self.trace.diff(other)  # before keeping ``other``: a trace that cannot be compared is refused
        self.other = other
        first = self._diff.first
        if first is None:
            self.diff_summary = "no differences"
        elif first.step is None:
            self.diff_summary = f"{first.key}: {first.note}"
        else:
            self.diff_summary = f"first difference: {first.key} at t={first.step}, units {first.units[:5]} " \
                                f"(max |diff| {first.max_abs:.3g})"
        self._send_diffs()
        self._refresh_status()

    def _send_diffs(self):
        if getattr(self, "other", None) is None:
            return
        b = self.sequence
        for view in list(self.views.values()) + [self.picked]:
            found = self._diff.entries.get(view.key)
            if found is None or view.key not in self.other.entries:
                continue
            a = self._array(view.key, b)
            o_entry = self.other.entries[view.key]
            axis = self.source.axis
            rest = [d for d in o_entry.dims if d not in (axis, "batch")]
            o = self.other.numpy(view.key, order=[axis, "batch"] + rest)[:, b].reshape(a.shape[0], -1)
            valid = np.arange(a.shape[0])[:, None] < self._length(b)
            mask = (~(np.abs(a - o) <= 1e-5) & ~(np.isnan(a) & np.isnan(o)) & valid).astype(np.uint8)
            steps = np.nonzero(mask.any(axis=1))[0]
            with view.hold_sync():
                view.diff = mask.tobytes()
                view.diff_first = int(steps[0]) if len(steps) else -1

    # --- a picture for where widgets cannot run ---
    def picture(self) -> bytes:
        """A PNG of what the debugger shows now: the status line and each view with its cursor and colours."""
        from .plot import draw_views, png

        views = [v for v in self._active_views() if v.shape[0] > 0 and v.shape[1] > 0]
        return png(draw_views([{
            "title": v.title, "unit_label": v.unit_label, "axis_label": v.axis_label, "values": v._array,
            "length": v.length, "known": v.known, "cursor": v.cursor, "scale": v.scale,
            "categorical": v.categorical, "labels": list(v.labels), "reveal": v.reveal} for v in views],
            self.status))

    def _repr_mimebundle_(self, **kwargs):
        """The widget, and beside it a PNG of its view now: exported notebooks (nbconvert, GitHub, nbviewer)
        show the picture where no widget manager runs; JupyterLab shows the widget."""
        bundle = super()._repr_mimebundle_(**kwargs)
        try:
            bundle["image/png"] = base64.b64encode(self.picture()).decode("ascii")
        except Exception as e:  # the widget still shows; the picture is only for exports
            logging.getLogger("recdebug").warning("the debugger's picture for exported notebooks failed: %s", e)
        return bundle

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
        if self.stepper is not None and self.beams is not None and title is None:
            view.update(arr, self._length(b), known)  # a live search: mostly the new step's row
        else:
            view.show(arr, self._length(b), known, title)

    def _send_grads(self, view: HeatmapView):
        """A trace with grad_of: the norm of dLoss/d(the State's value) per step of the shown sequence."""
        if self.trace is None or view.key + ".grad" not in self.trace.entries or self.beams is not None:
            return
        e = self.trace.entries[view.key + ".grad"]
        axis = self.source.axis
        rest = [d for d in e.dims if d not in (axis, "batch")]
        g = self.trace.numpy(e.key, order=[axis, "batch"] + rest)[:, self.sequence]
        norms = np.sqrt((g.reshape(g.shape[0], -1).astype(np.float64) ** 2).sum(axis=1)).astype(np.float32)
        view.grad_norms = norms.tobytes()

    def _refresh_all(self):
        for view in self.views.values():
            self._send(view)
            self._send_grads(view)
        if self.selected_layer and self._layer_has_steps(self.selected_layer):
            self._send(self.picked)
        self._send_diffs()
        self._on_t({"new": self.t})

    def _share_scale(self):
        """With shared_scale: one colour range for every State view (the largest |value| among their valid
        steps computed so far), so that their colours compare."""
        if not self.shared_scale:
            return
        m = 0.0
        views = [v for v in self.views.values() if not v.categorical]
        for view in views:
            a = view._array[:min(view.length, view.known)]
            finite = np.abs(a[np.isfinite(a)])
            if finite.size:
                m = max(m, float(finite.max()))
        for view in views:
            view.scale = m or 1.0

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
                rows = self.source.all_rows(view.key)
                with view.hold_sync():  # the new rows, the steps known and where the sequence ended: one message
                    if view.known < t:
                        view.set_rows({k: rows[k, self.sequence] for k in range(view.known, t)}, known=t)
                    view.length = length
        self._place_cursor(t)

    def _place_cursor(self, t: int):
        for view in self._active_views():
            view.cursor = t - 1
        if self.slider.value != t - 1:
            self.slider.value = t - 1
        self._share_scale()
        self._refresh_status()

    def _active_views(self):
        return list(self.views.values()) + ([self.picked] if self.selected_layer and
                                            self._layer_has_steps(self.selected_layer) else [])

    def _refresh_status(self):
        from ..records.protocol import ended_text, steps_text

        parts = [steps_text(self.t, self.T) if self.trace is None else recorded_text(self.t, self.T)]
        parts.append(self.source.device)
        b = self.sequence
        if self.beams is None:
            n = self._length(b)
            if n <= self.t:
                parts.append(ended_text(b, n))
        elif self.stepper is not None and b in self.stepper.ended:
            parts.append(f"sequence {b}: search ended after t={self.stepper.ended[b] - 1}")
        if self.breakpoint:
            parts.append(f"breakpoint: {self.breakpoint}")
        if self.diff_summary:
            parts.append(f"diff: {self.diff_summary}")
        if getattr(self, "_hyp_text", ""):
            parts.append(self._hyp_text)
        if self.stepper is not None and self.stepper.closed is not None:
            parts.append(f"stepper closed: {self.stepper.closed}")
        self.status = " · ".join(parts)
        self.status_html.value = f"<span class='rd-status'>{html.escape(self.status)}</span>"


def recorded_text(t: int, T: int) -> str:
    """Where a trace's cursor is: every step is recorded, the cursor is the step looked at."""
    if T <= 0:
        return "no step recorded (the loop ran 0 steps)"
    return f"at t={t - 1} (recorded trace: all {T} steps, t=0…{T - 1})"


def _convention(recorded: bool, reveal: bool) -> str:
    """The legend under the status line: the step numbering, and what the cursor, grey and hatching mean here."""
    parts = ["t=k is iteration k of the loop (loop.index == k), counted from 0"]
    if recorded:
        parts.append("every step is recorded; the cursor line marks the step you look at")
    else:
        parts.append("the cursor line marks the last step run")
    parts.append("grey: padding (the sequence had ended)")
    if not recorded:
        parts.append("hatched: not run yet")
    elif reveal:
        parts.append("hatched: after the cursor (reveal=True)")
    return ("<span class='rd-convention' style='opacity:0.75;font-size:11px;line-height:1.3;display:block'>"
            + html.escape(" · ".join(parts)) + "</span>")


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
