"""What the debugger says and exports: its status line (where the cursor is, which sequence ended, breakpoint,
diff, hypothesis), the legend of its conventions, and a PNG of the views for exported notebooks."""
from __future__ import annotations

import base64
import html
import logging


class StatusLine:
    """Mixed into the Debugger: the status line and the picture."""

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

    def picture(self) -> bytes:
        """A PNG of what the debugger shows now: the status line and each view with its cursor and colours."""
        from .plot import draw_views, png

        views = [v for v in self._active_views() if v.shape[0] > 0 and v.shape[1] > 0]
        figures = [draw_views([{
            "title": v.title, "unit_label": v.unit_label, "axis_label": v.axis_label, "values": v._array,
            "length": v.length, "known": v.known, "cursor": v.cursor, "scale": v.scale,
            "categorical": v.categorical, "labels": list(v.labels), "value_word": v.value_word,
            "reveal": v.reveal} for v in views],
            self.status)]
        alignment = self.alignment_figure()
        if alignment is not None:
            figures.append(alignment)
        return png(figures[0]) if len(figures) == 1 else stacked_png(figures)

    def _repr_mimebundle_(self, **kwargs):
        """The widget, and beside it a PNG of its view now: exported notebooks (nbconvert, GitHub, nbviewer)
        show the picture where no widget manager runs; JupyterLab shows the widget."""
        bundle = super()._repr_mimebundle_(**kwargs)
        try:
            bundle["image/png"] = base64.b64encode(self.picture()).decode("ascii")
        except Exception as e:  # the widget still shows; the picture is only for exports
            logging.getLogger("recdebug").warning("the debugger's picture for exported notebooks failed: %s", e)
        return bundle


def stacked_png(figures) -> bytes:
    """Figures one below the other (left-aligned, white between), as one PNG."""
    import io

    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.image import imsave

    images = []
    for fig in figures:
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        images.append(np.asarray(canvas.buffer_rgba()))
    width = max(im.shape[1] for im in images)
    out = np.full((sum(im.shape[0] for im in images), width, 4), 255, np.uint8)
    y = 0
    for im in images:
        out[y:y + im.shape[0], :im.shape[1]] = im
        y += im.shape[0]
    buf = io.BytesIO()
    imsave(buf, out, format="png", pil_kwargs={"compress_level": 1})
    return buf.getvalue()


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
