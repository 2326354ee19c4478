"""The debugger's controls and what its views are told: the buttons, slider, sequence box and unit threshold
(each wired to a method of the controller; an error from the page goes to the status line), and each view's axis
labels and label names."""
from __future__ import annotations

import html

import ipywidgets as w
import numpy as np

from ..language.errors import RecDebugError
from .status import _convention


class Controls:
    """Mixed into the Debugger: its control widgets and the description of each view."""

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
        if self.source.shared(key):  # no batch dim: every sequence shows the same rows
            unit_label += ", shared by the batch"
        labels = []
        if ints and self.vocab is not None:
            labels = self.vocab if isinstance(self.vocab, list) else \
                self.vocab.get(key, self.vocab.get(sparse, []) if sparse else [])
        return {"unit_label": unit_label, "axis_label": f"t ({axis_name})", "categorical": ints,
                "labels": list(labels), "value_word": "label" if sparse else "value"}  # (a counter: values)
