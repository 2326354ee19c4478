"""The debugger's panels, each an anywidget whose browser module is in ``extension/`` (loaded by text, no CDN):
the State heatmap, the emitted hierarchy and the beam tree. They draw what they are given; the debugger decides
what that is. Names (States, layers, dims) may hold markup: the modules set them as textContent."""
from __future__ import annotations

import pathlib
import sys

import anywidget
import numpy as np
import traitlets as tl

EXTENSION = pathlib.Path(__file__).resolve().parents[2] / "extension"
if not (EXTENSION / "heatmap.js").exists():  # installed without the source tree: setup.py's data_files
    EXTENSION = pathlib.Path(sys.prefix) / "share" / "recdebug" / "extension"


def _module(name: str) -> str:
    """The text of an ES module in extension/. Given as text, not as a path: anywidget would keep every
    instance alive to hot-reload the file, which a notebook that re-runs cells must not pay for."""
    return (EXTENSION / name).read_text()


class HeatmapView(anywidget.AnyWidget):
    """One state view: heatmap units x t for one sequence with axes and a colour bar (a legend for labels),
    cursor, hover, readout, norm over time.

    What the page draws follows from the synced traits alone, so that a view drawn at any moment (the widget
    shown late, shown again, the page reloaded) draws the same: ``values`` as last sent whole, with ``rows`` (the
    rows changed since, each with its step) written over it. A live step sends the few changed rows; once they
    are many, the whole array goes out again and ``rows`` starts empty."""

    _esm = _module("heatmap.js")
    title = tl.Unicode("").tag(sync=True)
    values = tl.Bytes(b"").tag(sync=True)  # float32 [T][U], time-major, as last sent whole
    rows = tl.Bytes(b"").tag(sync=True)  # the rows changed since: records of int32 step, then float32 [U]
    shape = tl.List(tl.Int(), [0, 0]).tag(sync=True)
    length = tl.Int(0).tag(sync=True)  # valid steps of this sequence; later ones are padding
    known = tl.Int(0).tag(sync=True)  # steps computed so far (a live stepper fills rows as it goes)
    cursor = tl.Int(-1).tag(sync=True)  # the step shown (-1: before the first step)
    recorded = tl.Bool(False).tag(sync=True)  # a recorded trace: every step is there, the cursor is where one looks
    diff = tl.Bytes(b"").tag(sync=True)  # uint8 [T][U]: 1 where another run differs
    diff_first = tl.Int(-1).tag(sync=True)
    unit_label = tl.Unicode("").tag(sync=True)  # what the rows are: "hidden (5 units)"
    axis_label = tl.Unicode("t").tag(sync=True)  # what the columns are: "t (loop steps)"
    scale = tl.Float(0.0).tag(sync=True)  # the colour bar's range: +-scale (0: this view's own max |value|)
    categorical = tl.Bool(False).tag(sync=True)  # labels (ints): one colour each and a legend
    labels = tl.List(tl.Unicode()).tag(sync=True)  # the vocabulary: the name of label i, if given
    value_word = tl.Unicode("label").tag(sync=True)  # what one int is called: "label" (a sparse dim's) or "value"
    reveal = tl.Bool(False).tag(sync=True)  # draw the steps up to the cursor only
    grad_norms = tl.Bytes(b"").tag(sync=True)  # float32 [T]: |dLoss/dvalue| per step (a trace with grad_of)
    brush = tl.List(tl.Int(), []).tag(sync=True)  # [t0, t1]: a step range brushed in the heatmap (from the page)
    highlight = tl.List(tl.Int(), []).tag(sync=True)  # units selected over the brushed range
    units_text = tl.Unicode("").tag(sync=True)  # what the selection says

    def __init__(self, key: str, **kwargs):
        super().__init__(**kwargs)
        self.key = key
        self._array = np.zeros((0, 0), np.float32)
        self._changed: dict = {}  # step -> row: what ``rows`` holds

    def show(self, array: np.ndarray, length: int, known: int, title: str | None = None):
        """Send a whole [T, U] array (once per sequence or layer)."""
        array = np.array(array, dtype=np.float32, order="C")
        self._array, self._changed = array, {}
        with self.hold_sync():
            if title is not None:
                self.title = title
            self.shape = list(array.shape)
            self.values = array.tobytes()
            self.rows = b""
            self.length = int(length)
            self.known = int(known)
            self.diff, self.diff_first = b"", -1

    def set_rows(self, rows: dict, known: int | None = None):
        """Send the rows {step: [U] values} that changed (live steps): a few hundred bytes each instead of the
        whole array, until so many have changed that the whole array is as cheap."""
        for t, row in rows.items():
            self._array[t] = np.asarray(row, dtype=np.float32).reshape(-1)
            self._changed[int(t)] = self._array[t].copy()
        with self.hold_sync():
            # K rows at most before the whole array goes out: about K/2 + T/K rows a step, least at K = sqrt(2T)
            if len(self._changed) > max(8, int(np.sqrt(2 * self._array.shape[0]))):
                self._changed = {}
                self.values = self._array.tobytes()
                self.rows = b""
            else:
                self.rows = b"".join(np.int32(t).tobytes() + row.tobytes() for t, row in self._changed.items())
            if known is not None:
                self.known = int(known)

    def update(self, array: np.ndarray, length: int, known: int):
        """Bring the view to ``array``: only the rows that differ (or all of it when its shape changed)."""
        array = np.asarray(array, dtype=np.float32)
        old = self._array
        if old.shape != array.shape:
            return self.show(array, length, known)
        same = (old == array) | (np.isnan(old) & np.isnan(array))
        changed = np.nonzero(~same.all(axis=1))[0]
        with self.hold_sync():
            if len(changed):
                self.set_rows({int(t): array[t] for t in changed})
            self.length = int(length)
            self.known = int(known)

    def drawn(self) -> np.ndarray:
        """[T, U]: the values a view drawn now shows, read from the synced traits as the browser reads them."""
        T, U = self.shape
        out = np.frombuffer(self.values, np.float32).reshape(T, U).copy() if T * U else np.zeros((T, U), np.float32)
        record = np.dtype([("t", "<i4"), ("row", "<f4", (U,))])
        for t, row in np.frombuffer(self.rows, record) if self.rows else ():
            out[t] = row
        return out

    def value_at(self, t: int, unit: int) -> float:
        """The exact value the hover shows at (t, unit)."""
        return float(self._array[t, unit])

    def readout(self) -> np.ndarray | None:
        """The values at the cursor (what the readout shows)."""
        return None if self.cursor < 0 else self._array[self.cursor].copy()


class HierarchyView(anywidget.AnyWidget):
    """The emitted net dict as a tree; clicking a layer sets ``selected``."""

    _esm = _module("tree.js")
    nodes = tl.List(tl.Dict()).tag(sync=True)
    selected = tl.Unicode("").tag(sync=True)


class BeamTreeView(anywidget.AnyWidget):
    """The hypotheses of a beam search over time; clicking one sets ``selected`` = [step, beam slot]."""

    _esm = _module("beamtree.js")
    nodes = tl.List(tl.Dict()).tag(sync=True)
    selected = tl.List(tl.Int(), [0, 0]).tag(sync=True)
    path = tl.List(tl.List(tl.Int())).tag(sync=True)  # the selected hypothesis: [step, slot] up to where it ended
    best = tl.List(tl.List(tl.Int())).tag(sync=True)  # the best hypothesis of the sequence, up to where it ended
