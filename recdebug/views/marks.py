"""What the debugger marks on its views besides the values: a unit selection (dragging over steps), where another
trace differs (``show_diff``), the norm of a trace's gradients per step, and one colour range for every State
view (``shared_scale``)."""
from __future__ import annotations

import numpy as np

from ..language.errors import RecDebugError
from .panels import HeatmapView
from .sources import RecordedSource


class Marks:
    """Mixed into the Debugger: unit selection, differences, gradient norms, the shared colour scale."""

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
            o = RecordedSource(self.other).rows(view.key, b, None, None)  # in the same order, valid frames only
            if o.shape != a.shape:
                continue
            valid = np.arange(a.shape[0])[:, None] < self._key_length(view.key, b)
            mask = (~(np.abs(a - o) <= 1e-5) & ~(np.isnan(a) & np.isnan(o)) & valid).astype(np.uint8)
            steps = np.nonzero(mask.any(axis=1))[0]
            with view.hold_sync():
                view.diff = mask.tobytes()
                view.diff_first = int(steps[0]) if len(steps) else -1

    def _send_grads(self, view: HeatmapView):
        """A trace with grad_of: the norm of dLoss/d(the State's value) per step of the shown sequence."""
        if self.trace is None or view.key + ".grad" not in self.trace.entries or self.beams is not None:
            return
        e = self.trace.entries[view.key + ".grad"]
        axis = self.source.axis
        rest = [d for d in e.dims if d not in (axis, "batch")]
        order = [axis, "batch"] + rest
        g = (self.trace.numpy(e.key, order=order) * self.trace.mask(e.key, order=order))[:, self.sequence]
        norms = np.sqrt((g.reshape(g.shape[0], -1).astype(np.float64) ** 2).sum(axis=1)).astype(np.float32)
        view.grad_norms = norms.tobytes()

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
