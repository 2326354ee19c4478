"""The alignment view: a value over the loop's steps and another dynamic axis (attention weights, coverage) as a
matrix, loop steps down and the other axis' frames across, the shown sequence's valid frames only, the cursor's row
marked and each row labelled with the label chosen at that step (vocab names where given). With a search, the rows
follow the shown hypothesis through its backpointers. The same picture in the debugger (``d.alignment``), in its
PNG, and from a trace or stepper in one call (``rd.plot_alignment``)."""
from __future__ import annotations

import numpy as np

from ..language.errors import RecDebugError


def alignment_rows(source, key: str, b: int, beams=None, hypothesis=None) -> np.ndarray:
    """[steps, frames]: ``key``'s value at each step over sequence b's valid frames of its own axis (a debugger
    source: a recorded trace or a live stepper)."""
    dims = source.describe(key)[0]
    n = source.valid_units(key, b)
    if n is None or int(np.prod([size for _, size in dims[1:]])) != 1:
        shown = " × ".join(f"{name} ({size})" for name, size in dims) or "one value"
        raise RecDebugError(f"alignment of {key!r}: it needs one value per frame of an axis of its own besides the "
                            f"batch (attention weights, coverage); {key!r} has {shown}",
                            hint="pick a value over the loop's steps and an encoder's frames")
    return np.asarray(source.rows(key, b, beams, hypothesis), np.float32)


def step_labels(source, b: int, beams=None, hypothesis=None, labels=None) -> list | None:
    """The label chosen at each step: along the shown hypothesis of a search, else the values of ``labels`` (the
    key of a value with one label per step, e.g. the loop's choice), else None."""
    if beams is not None and hypothesis is not None:
        t, slot = hypothesis
        return [int(beams.labels[s, b, k]) for s, k in enumerate(beams.path(t, b, slot))]
    if labels is None:
        return None
    rows = np.asarray(source.rows(labels, b, None, None))
    if rows.ndim != 2 or rows.shape[1] != 1:
        raise RecDebugError(f"alignment labels {labels!r}: expected one label per step, got {rows.shape[1:]} values")
    return [int(v) for v in rows[:, 0]]


def row_text(label: int, vocab) -> str:
    if vocab is None:
        return str(label)
    names = vocab if isinstance(vocab, list) else None
    return f"{label} {names[label]}" if names is not None and 0 <= label < len(names) else str(label)


def draw_alignment(ax, matrix: np.ndarray, length: int, known: int, cursor: int, labels=None, vocab=None,
                   title: str = "", frames: str = "frame"):
    """Draw an alignment on a matplotlib Axes: rows = steps (the first ``min(length, known)`` valid, the rest
    grey), columns = frames, white (0) to red (the largest value, as the heatmaps draw non-negative values), the
    cursor's row outlined."""
    import matplotlib

    from .plot import value_cmap

    T, F = matrix.shape
    valid = min(length, known)
    shown = np.ma.masked_all((T, F))
    shown[:valid] = matrix[:valid]  # (padding: grey; steps not run yet: hatched)
    finite = matrix[:valid][np.isfinite(matrix[:valid])]
    top = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    cmap = value_cmap(False).with_extremes(bad="#bebebe")
    ax.imshow(shown, aspect="auto", cmap=cmap, vmin=0.0, vmax=top, interpolation="nearest",
              extent=(-0.5, F - 0.5, T - 0.5, -0.5))
    if valid < min(length, T):
        ax.add_patch(matplotlib.patches.Rectangle((-0.5, valid - 0.5), F, min(length, T) - valid, facecolor="white",
                                                  edgecolor="#909090", hatch="///", linewidth=0))
    if 0 <= cursor < T:  # black on a white edge, as the heatmaps' cursor: seen on white and on red
        for colour, width in (("white", 3.5), ("black", 1.8)):
            ax.add_patch(matplotlib.patches.Rectangle((-0.5, cursor - 0.5), F, 1, fill=False, edgecolor=colour,
                                                      linewidth=width))
    ax.set_xlabel(frames, fontsize=8)
    ax.set_ylabel("t (loop step)", fontsize=8)
    ax.set_yticks(range(T))
    names = [f"t={t}" + (f": {row_text(labels[t], vocab)}" if labels is not None and t < min(len(labels), length)
                         else "") for t in range(T)]  # (no label on a padding step)
    ax.set_yticklabels(names, fontsize=7)
    ax.tick_params(labelsize=7)
    if F <= 40:
        ax.set_xticks(range(F))
    else:
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_title(title, fontsize=9, loc="left")
    return top


def alignment_figure(matrix, length: int, known: int, cursor: int, labels=None, vocab=None, title: str = "",
                     frames: str = "frame", width: float = 6.0, figure=None):
    """A matplotlib Figure of one alignment, with its colour bar (default: not pyplot's, so nothing is displayed
    by itself; ``figure``: draw on that one)."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    from .plot import value_cmap

    T, F = np.shape(matrix)
    fig = figure if figure is not None else Figure(figsize=(width, min(9.0, 1.5 + 0.28 * max(T, 2))), dpi=80)
    ax = fig.add_axes((0.22, 0.2, 0.62, 0.68))
    top = draw_alignment(ax, np.asarray(matrix, np.float32), length, known, cursor, labels, vocab, title, frames)
    bar = fig.colorbar(ScalarMappable(Normalize(0.0, top), cmap=value_cmap(False)),
                       cax=fig.add_axes((0.87, 0.2, 0.03, 0.68)))
    bar.ax.tick_params(labelsize=7)
    return fig


def plot_alignment(source, key: str, sequence: int = 0, labels: str | None = None, vocab=None,
                   t: int | None = None, hypothesis=None):
    """``rd.plot_alignment(trace_or_stepper, "loop/att_weights")``: the alignment of a value over the loop's steps
    and an encoder's frames for one sequence, as a matplotlib Figure. ``labels``: the key of the label chosen at
    each step (a search's are its best hypothesis' by default); ``vocab``: their names; ``t``: the step to mark
    (default: a stepper's last step run); ``hypothesis``: (step, slot) of a search's hypothesis to follow."""
    import matplotlib.pyplot as plt  # (a figure of pyplot's: a notebook has its inline display set up)

    from ..records.trace import Trace
    from .sources import LiveSource, RecordedSource

    if isinstance(source, Trace):
        key = source.key(key)
        src = RecordedSource(source)
        loops = source.entries[key].loop_axes
        if not loops:
            raise RecDebugError(f"alignment of {key!r}: it is not computed in a loop")
        src.axis = loops[0]  # the loop that computes it (a trace may hold an encoder's loop before it)
        labels = source.key(labels) if labels is not None else None
    else:
        src = LiveSource(source)
        key, labels = (x if x is None or isinstance(x, str) else source.view_key_of(x) for x in (key, labels))
    if not 0 <= sequence < src.batch:
        raise RecDebugError(f"sequence {sequence} is out of range (batch of {src.batch})")
    beams = src.beams()
    steps = src.steps(beams)
    if beams is not None and hypothesis is None and beams.shape[0]:
        last = min(beams.shape[0] - 1, beams.last_step(sequence))
        hypothesis = (last, beams.best(sequence, last))
    length = src.length(sequence, steps) if beams is None else \
        (beams.hypothesis(sequence, hypothesis[1], hypothesis[0])["length"] if hypothesis is not None else steps)
    known = src.known(steps)
    cursor = (-1 if isinstance(source, Trace) else known - 1) if t is None else int(t)  # a stepper: its last step
    matrix = alignment_rows(src, key, sequence, beams, hypothesis)
    frames = src.describe(key)[0][0][0]
    T = matrix.shape[0]
    shown = plt.figure(figsize=(6.0, min(9.0, 1.5 + 0.28 * max(T, 2))), dpi=80)
    plt.close(shown)  # shown once, as the value a notebook cell ends with, not again by pyplot's inline backend
    return alignment_figure(matrix, length, known, cursor, step_labels(src, sequence, beams, hypothesis, labels),
                            vocab, f"{key}: sequence {sequence}", frames, figure=shown)


class AlignmentPanel:
    """Mixed into the Debugger: the alignment of the picked layer (attention weights), else of the first State
    with an axis of its own (coverage), as a picture under the views, redrawn as the cursor, the sequence or the
    hypothesis changes."""

    def _build_alignment(self):
        import ipywidgets as w

        self.alignment = w.Image(format="png", layout=w.Layout(display="none", max_width="100%"))
        self.alignment.add_class("rd-alignment")
        self.alignment_key = ""

    def _alignment_of(self) -> str:
        """The key the alignment shows ("" for none)."""
        keys = ([self.selected_layer] if self.selected_layer and self._layer_has_steps(self.selected_layer) else [])
        for key in keys + list(self.views):
            dims = self.source.describe(key)[0]
            if dims and self.source.valid_units(key, self.sequence) is not None and \
                    int(np.prod([size for _, size in dims[1:]])) == 1:
                return key
        return ""

    def alignment_figure(self, key: str | None = None):
        """The alignment as the debugger shows it now (a matplotlib Figure), or None without one."""
        key = self._alignment_of() if key is None else key
        if not key:
            return None
        b, T = self.sequence, self.T
        labels = None
        if self.beams is None:  # a label per step: the loop's label State (one sparse value: the label written at
            labels = next((k for k in self.views  # that step), else none
                           if self.source.describe(k)[2] is not None and not self.source.describe(k)[0]), None)
        vocab = self.vocab if isinstance(self.vocab, list) else None
        return alignment_figure(alignment_rows(self.source, key, b, self.beams, self.hypothesis), self._length(b),
                                self.source.known(T), self.t - 1,
                                step_labels(self.source, b, self.beams, self.hypothesis, labels), vocab,
                                f"alignment of {key}: sequence {b}", self.source.describe(key)[0][0][0])

    def _refresh_alignment(self):
        from .plot import png

        key = self._alignment_of()
        self.alignment_key = key
        if not key:
            self.alignment.layout.display = "none"
            return
        self.alignment.value = png(self.alignment_figure(key))
        self.alignment.layout.display = None
