"""Trace: every in-loop value at every step, as numpy arrays with named dims; save/load without pickle; diff."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import tracefile
from ..language.errors import DimError, RecDebugError
from .hierarchy import hierarchy_nodes, net_text as net_dict_text


_PLOT: list = []  # the views' plot of a trace: records import no views, the views give it (connect_plot)


def connect_plot(plot) -> None:
    """``plot(trace, sequence=, keys=, t=, **kwargs)`` -> a matplotlib Figure: what ``Trace.plot`` draws with."""
    _PLOT[:] = [plot]


@dataclass(frozen=True)
class DimInfo:
    """A dim of a trace: ``label`` is unique in the trace; ``size`` None for dynamic dims."""

    label: str
    name: str
    size: int | None
    is_batch: bool = False
    order: int = 0  # creation order of the Dim: the default axis order, as in Result.numpy


class Entry:
    """One recorded value: an array, its dims (labels, in the array's axis order), and what it is.

    ``kind``: "layer" (in a loop, per step), "state" (a State's assigned value per step), "value" (top level).
    ``loop_axes``: labels of the loop axes, outermost first. A derived entry computes its array when asked
    (e.g. a State read before its assign: the previous step's value), so it takes no memory of its own.
    """

    def __init__(self, key: str, array, dims: tuple, kind: str, loop_axes: tuple = (), line: str | None = None,
                 derive=None):
        self.key, self.dims, self.kind, self.loop_axes, self.line = key, tuple(dims), kind, tuple(loop_axes), line
        self._array, self._derive = array, derive

    @property
    def array(self) -> np.ndarray:
        return self._array if self._derive is None else self._derive()

    @array.setter
    def array(self, value: np.ndarray):
        self._array, self._derive = value, None

    @property
    def is_derived(self) -> bool:
        return self._derive is not None

    def __repr__(self):
        return f"Entry({self.key!r}, dims={self.dims}, kind={self.kind!r})"


class SearchRecords:
    """Mixed into ``Trace``: what a trace of a search (``search=True``) holds of its beams."""

    def before_choice(self, x) -> bool:
        """With search: whether an in-loop value is computed before the choice of its step. Its values are then
        per hypothesis of the previous step: hypothesis k of step t reads slot ``backpointers[t, b, k]``. The
        values computed from the choice (a State assigned the label, say) are per new hypothesis."""
        key = self.key(x)
        return bool(self.entries[key].loop_axes) and key not in self.after_choice

    def beams(self, choice) -> "BeamSteps":
        """The beam search of an rd.choice (a trace made with ``search=True``), step by step."""
        key = self.key(choice)
        if key + ".backpointers" not in self.entries:
            raise RecDebugError(f"{key!r} has no beams in this trace: trace with search=True")
        end_key, include_eos, lens_axis, normalized = self._beam_setup(key, choice)
        lens = None if lens_axis is None else np.asarray(self.lens(lens_axis))
        beams = BeamSteps(self, key, end_key, include_eos, lens)
        if normalized and beams.shape[0]:  # the search ran to its end: its final scores as RETURNN gives them
            beams.normalize_final()
        return beams

    def _beam_setup(self, key: str, choice=None) -> tuple:
        """How the hypotheses of a choice end: (key of the loop's end flag or None, include_eos, label of the
        axis whose lengths end them (a search over unstacked frames) or None, whether the final scores are length
        normalized (a config's choice layer)). From the choice's loop, else from the file."""
        if getattr(choice, "scope", None) is None and self.emitted is not None:
            choice = next((t for t in self.emitted.layer_of if self._lookup.get(id(t)) == key), None)
        loop = getattr(choice, "scope", None)
        if loop is None:
            saved = self._saved.get("beams", {}).get(key)
            if not saved:
                return None, True, None, False
            return saved["end"], saved["include_eos"], saved["lens_axis"], saved.get("length_normalization", False)
        end_key = self._lookup.get(id(loop.end_cond)) if loop.end_cond is not None else None
        by_frames = loop.unstacked and not loop.bounded  # the hypotheses of a sequence end with its frames
        return end_key, bool(loop.include_eos or by_frames), self.label(loop.axis) if by_frames else None, False


class Trace(SearchRecords):
    """What one run of the real RecLayer recorded. Values are addressed by Tensor, State or layer path."""

    def __init__(self, entries: dict, dims: dict, lens: dict, moved_out=(), in_loop=(), device: str = "cpu",
                 lookup=None, dim_labels=None):
        self.entries = entries  # key -> Entry
        self.dims = dims  # label -> DimInfo
        self._lens = lens  # loop axis label -> (array, dims labels)
        self.moved_out = list(moved_out)
        self.in_loop = list(in_loop)
        self.device = device
        self._lookup = lookup or {}  # id(Tensor or State) -> key (only in the process that traced)
        self.emitted = None  # the net dict and its maps (only in the process that traced)
        self._dim_labels = dim_labels or {}  # id(Dim) -> label
        self.after_choice: set = set()  # with search: keys of values computed from the choice in their own step
        self._saved: dict = {}  # a loaded trace: what the file kept of the emitted net and the beam searches

    def units_matching(self, state, t0: int, t1: int, threshold: float, sequence: int = 0) -> list:
        """Unit selection (as LSTMVis does): the units of ``state`` (flattened, in the order of its dims after the
        batch) whose value is at least ``threshold`` at every step t0..t1 (inclusive) of ``sequence``; a negative
        threshold selects the units at most that value. Steps must be valid frames of the sequence."""
        key = self.key(state)
        e = self.entries[key]
        axis = e.loop_axes[-1] if e.loop_axes else None
        if axis is None:
            raise RecDebugError(f"units_matching: {key!r} has no values per step")
        if not (isinstance(t0, (int, np.integer)) and isinstance(t1, (int, np.integer)) and 0 <= t0 <= t1):
            raise RecDebugError(f"units_matching: need steps 0 <= t0 <= t1, got t0={t0!r}, t1={t1!r}")
        n = int(np.asarray(self.lens(axis))[sequence])
        if t1 >= n:
            raise RecDebugError(f"units_matching: sequence {sequence} has {n} steps (t=0..{n - 1}), t1={t1} is "
                                "padding")
        rest = [d for d in e.dims if d not in (axis, "batch")]
        values = self.numpy(key, order=[axis, "batch"] + rest)[t0:t1 + 1, sequence]
        values = values.reshape(values.shape[0], -1)
        hit = (values >= threshold) if threshold >= 0 else (values <= threshold)
        return [int(u) for u in np.nonzero(hit.all(axis=0))[0]]

    def grad(self, state, order=None) -> np.ndarray:
        """With ``g.trace(..., grad_of=loss)``: dLoss/d(the State's value) at every step, axes in ``order``
        (default: batch, the loop's axis, the State's other dims)."""
        key = self.key(state) + ".grad"
        if key not in self.entries:
            raise RecDebugError(f"the trace has no gradient of {self.key(state)!r}",
                                hint="trace with g.trace(..., grad_of=loss): States of a loop over an input's axis")
        return self.numpy(key, order=order)

    # --- addressing ---
    def key(self, x) -> str:
        if isinstance(x, str):
            if x not in self.entries:
                raise RecDebugError(f"the trace has no value {x!r}; it has {sorted(self.entries)}")
            return x
        key = self._lookup.get(id(x))
        if key is None:
            raise RecDebugError(f"{x!r} was not recorded by this trace",
                                hint="trace it: g.trace(..., capture=None) records every in-loop layer")
        return key

    def label(self, d) -> str:
        if isinstance(d, str):
            if d not in self.dims:
                raise DimError(f"the trace has no dim {d!r}; it has {sorted(self.dims)}")
            return d
        label = self._dim_labels.get(id(d))
        if label is None:
            raise DimError(f"{d!r} is not a dim of this trace")
        return label

    @property
    def states(self) -> dict:
        """State name -> key of its per-step values."""
        return {e.key.rsplit("/", 1)[-1]: e.key for e in self.entries.values() if e.kind == "state"}

    @property
    def hierarchy(self) -> list:
        """The emitted RecLayer hierarchy as the debugger's tree shows it: one dict per layer (path, class, from,
        dims, params, moved out, source line...). Empty for a file of the first format."""
        if self.emitted is not None:
            return hierarchy_nodes(self.emitted, set(self.moved_out), set(self.in_loop))
        return self._saved.get("hierarchy", [])

    @property
    def net_text(self) -> str:
        """The emitted RETURNN net dict, as text."""
        if self.emitted is not None:
            return net_dict_text(self.emitted)
        return self._saved.get("net_text", "")

    def plot(self, sequence: int = 0, keys=None, t: int | None = None, **kwargs):
        """A static matplotlib rendering (where widgets cannot run): heatmap and norm per State."""
        if not _PLOT:
            raise RecDebugError("Trace.plot needs recdebug's views, which are not loaded",
                                hint="import recdebug (import recdebug as rd) first")
        return _PLOT[0](self, sequence=sequence, keys=keys, t=t, **kwargs)

    def keys(self):
        return list(self.entries)

    def dims_of(self, x) -> tuple:
        return self.entries[self.key(x)].dims

    # --- values ---
    def numpy(self, x, order=None) -> np.ndarray:
        """The recorded value of ``x`` (the loop axes are dims of it), axes in ``order`` (dims or labels)."""
        e = self.entries[self.key(x)]
        return e.array.transpose(self._perm(e, order))

    def _perm(self, e: Entry, order) -> list:
        if order is None:  # as Result.numpy: batch first, then dims by creation
            return sorted(range(len(e.dims)), key=lambda i: self.dims[e.dims[i]].order)
        labels = [self.label(d) for d in order]
        if sorted(labels) != sorted(e.dims):
            raise DimError(f"order {labels} is not a permutation of the dims {list(e.dims)} of {e.key!r}")
        return [e.dims.index(lab) for lab in labels]

    @property
    def batch_size(self) -> int | None:
        """The number of sequences recorded (None when no value has the batch dim)."""
        batch = next((lab for lab, info in self.dims.items() if info.is_batch), None)
        for arr, dims in self._lens.values():
            if batch in dims:
                return int(np.shape(arr)[list(dims).index(batch)])
        for e in self.entries.values():
            if batch in e.dims and not e.is_derived:
                return int(e.array.shape[e.dims.index(batch)])
        return None

    def lens(self, axis) -> np.ndarray:
        """Per-sequence lengths of a loop axis (for an inner loop: one per outer step and sequence)."""
        label = self.label(axis)
        if label not in self._lens:
            raise RecDebugError(f"{label!r} is not a loop axis of this trace")
        return self._lens[label][0]

    def mask(self, x, order=None) -> np.ndarray:
        """True on the valid frames of ``x``, False on padding (t >= the sequence's length on any loop axis, or on
        any axis of its dims with lengths: a stacked value's)."""
        e = self.entries[self.key(x)]
        valid = np.ones(e.array.shape, dtype=bool)
        for axis in dict.fromkeys(e.loop_axes + tuple(d for d in e.dims if d in self._lens)):
            lens, lens_dims = self._lens[axis]
            if any(lab not in e.dims for lab in lens_dims):
                continue
            steps = np.arange(e.array.shape[e.dims.index(axis)])
            shape = [1] * len(e.dims)
            shape[e.dims.index(axis)] = len(steps)
            lens_b = _broadcast_to_dims(lens, lens_dims, e.dims)
            valid &= steps.reshape(shape) < lens_b
        return valid.transpose(self._perm(e, order))

    def at(self, step: int, axis=None) -> dict:
        """Every value recorded for one step of a loop axis (default: the first top-level loop's): key -> array."""
        label = self.label(axis) if axis is not None else self._default_axis()
        out = {}
        for e in self.entries.values():
            if label in e.dims:
                i = e.dims.index(label)
                if step >= e.array.shape[i]:
                    raise RecDebugError(f"step {step} is past the end ({e.array.shape[i]} steps) of {label!r}")
                out[e.key] = np.take(e.array, step, axis=i)
        return out

    def _default_axis(self) -> str:
        for e in self.entries.values():
            if e.loop_axes:
                return e.loop_axes[0]
        raise RecDebugError("this trace has no loop values")

    @property
    def nbytes(self) -> int:
        """Memory held by the recorded arrays (shared and derived values counted once, or not at all)."""
        held = {id(e._array): e._array.nbytes for e in self.entries.values() if not e.is_derived}
        return sum(held.values())

    def __repr__(self):
        axes = sorted({e.loop_axes[0] for e in self.entries.values() if e.loop_axes})
        return (f"Trace({len(self.entries)} values, loop axes {axes}, {self.nbytes / 1e6:.2f} MB, "
                f"device={self.device!r})")

    # --- files ---
    def save(self, path) -> None:
        """Write an .npz file that ``Trace.load`` reads back without pickle: the values, their dims and lengths,
        and what the debugger shows of the emitted net (hierarchy, source lines, net dict)."""
        tracefile.save(self, path)

    @classmethod
    def load(cls, path, max_bytes: int = tracefile.MAX_LOAD_BYTES) -> "Trace":
        """Read a file of ``save``. Every part is checked first: an invalid file raises one RecDebugError.
        ``max_bytes``: the memory its arrays may take (judged from the zip's header before reading them)."""
        meta, arrays = tracefile.load(path, max_bytes)
        entries = {m["key"]: Entry(m["key"], arrays[m["array"]], tuple(m["dims"]), m["kind"], tuple(m["loop_axes"]),
                                   m["line"]) for m in meta["entries"]}
        lens = {m["axis"]: (arrays[m["array"]], tuple(m["dims"])) for m in meta["lens"]}
        dims = {d["label"]: DimInfo(**d) for d in meta["dims"]}
        trace = cls(entries, dims, lens, meta["moved_out"], meta["in_loop"], meta["device"])
        trace.after_choice = set(meta["after_choice"])
        trace._saved = {"hierarchy": meta.get("hierarchy", []), "net_text": meta.get("net_text", ""),
                        "beams": {m["choice"]: m for m in meta.get("beams", [])}}
        return trace

    # --- comparing ---
    def diff(self, other: "Trace", atol: float = 1e-5) -> "TraceDiff":
        """Where two traces of the same graph differ by more than ``atol`` on valid frames."""
        mine, theirs = self.batch_size, other.batch_size
        if mine != theirs:
            raise DimError(f"diff: this trace has a batch of {mine} sequence(s), the other {theirs}",
                           hint="compare traces of the same inputs (run both with the same batch)")
        found = {}
        for key, e in self.entries.items():
            o = other.entries.get(key)
            if o is None or not e.loop_axes or e.array.dtype.kind not in "fiu":
                continue
            a = e.array.astype(np.float64)
            b = o.array.transpose([o.dims.index(d) for d in e.dims]).astype(np.float64)
            if a.shape != b.shape:
                found[key] = DiffAt(key, None, None, float("inf"), "shapes differ")
                continue
            bad = self.mask(key, order=e.dims) & ~(np.abs(a - b) <= atol)  # NaN on one side counts as different
            bad &= ~(np.isnan(a) & np.isnan(b))
            if bad.any():
                axis = e.dims.index(e.loop_axes[0])
                steps = np.nonzero(bad.any(axis=tuple(i for i in range(bad.ndim) if i != axis)))[0]
                first = int(steps[0])
                at_step = np.take(bad, first, axis=axis)
                units = [tuple(int(i) for i in idx) for idx in np.argwhere(at_step)]
                worst = float(np.nanmax(np.where(bad, np.abs(a - b), 0.0)))
                found[key] = DiffAt(key, first, units, worst, None,
                                    tuple(d for d in e.dims if d != e.loop_axes[0]))
        return TraceDiff(found, atol)


@dataclass
class DiffAt:
    key: str
    step: int | None  # the first step (on the outermost loop axis) that differs
    units: list | None  # indices (in the remaining axes, trace order) that differ at that step
    max_abs: float
    note: str | None = None
    unit_dims: tuple = ()  # the dims (labels) that ``units`` index, in order


class TraceDiff:
    """The result of ``Trace.diff``: per key, the first differing step and units."""

    def __init__(self, entries: dict, atol: float):
        self.entries = entries
        self.atol = atol

    @property
    def first(self) -> DiffAt | None:
        """The earliest difference over all keys (None when the traces agree)."""
        with_step = [d for d in self.entries.values() if d.step is not None]
        if not with_step:
            return next(iter(self.entries.values()), None)
        return min(with_step, key=lambda d: (d.step, d.key))

    def __bool__(self):
        return bool(self.entries)

    def __repr__(self):
        if not self.entries:
            return f"TraceDiff(equal within {self.atol})"
        f = self.first
        return f"TraceDiff({len(self.entries)} values differ; first: {f.key!r} at step {f.step})"


def _broadcast_to_dims(arr: np.ndarray, arr_dims: tuple, target_dims: tuple) -> np.ndarray:
    """Reshape ``arr`` (dims ``arr_dims``) so that it broadcasts against an array with ``target_dims``."""
    order = sorted(range(len(arr_dims)), key=lambda i: target_dims.index(arr_dims[i]))
    arr = arr.transpose(order)
    shape = [1] * len(target_dims)
    for i in order:
        shape[target_dims.index(arr_dims[i])] = arr.shape[order.index(i)]
    return arr.reshape(shape)


class Beams:
    """The hypotheses of a beam search, step by step, from per-step arrays [steps, batch, beam].

    Hypothesis k after step t extends hypothesis ``backpointers[t, b, k]`` of step t-1 by ``labels[t, b, k]``;
    ``scores`` are its accumulated log-probabilities. ``ends[t, b, k]``: the loop's end flag of hypothesis k at
    step t; ``ended[t, b, k]``: it has ended at or before step t (through its backpointers), ``end_step`` the
    step at which it ended (-1: not ended).
    """

    def __init__(self, labels, scores, backpointers, ends, include_eos: bool, lens=None):
        """``lens``: per sequence, its steps (a search over an unstacked axis); later steps are padding."""
        self.labels, self.scores, self.backpointers = labels, scores, backpointers
        self.lens = None if lens is None else np.asarray(lens)
        steps, batch, beam = labels.shape
        ends = np.zeros_like(labels, bool) if ends is None else ends.astype(bool)
        self.ended = np.zeros_like(ends)
        self.end_step = np.full((steps, batch, beam), -1)
        for t in range(steps):
            if t:
                prev_ended = np.take_along_axis(self.ended[t - 1], self.backpointers[t], axis=1)
                prev_end = np.take_along_axis(self.end_step[t - 1], self.backpointers[t], axis=1)
            else:
                prev_ended, prev_end = np.zeros((batch, beam), bool), np.full((batch, beam), -1)
            self.ended[t] = prev_ended | ends[t]
            self.end_step[t] = np.where(prev_ended, prev_end, np.where(ends[t], t, -1))
        self.include_eos = include_eos
        # a finished search with RETURNN's length normalization: its final scores are divided by its steps
        self.final_divisor: float | None = None

    @property
    def shape(self):
        return self.labels.shape

    def normalize_final(self):
        """As RETURNN ends a search with length normalization: the final scores divided by its steps (the longest
        hypothesis, with its end)."""
        batch, beam = self.shape[1:]
        longest = max(self.hypothesis(b, k)["length"] for b in range(batch) for k in range(beam))
        self.final_divisor = float(longest + (0 if self.include_eos else 1))

    def last_step(self, b: int) -> int:
        """The last step of sequence b (steps after it are padding)."""
        last = self.shape[0] - 1
        return last if self.lens is None else min(last, int(self.lens[b]) - 1)

    def path(self, t: int, b: int, k: int) -> list:
        """The beam slots (one per step 0..t) that hypothesis k of step t went through."""
        slots = [k]
        for step in range(t, 0, -1):
            slots.append(int(self.backpointers[step, b, slots[-1]]))
        return slots[::-1]

    def hypothesis(self, b: int, k: int, t: int | None = None) -> dict:
        """Hypothesis k after step t (default: the sequence's last step): labels, score, length, end step."""
        t = self.last_step(b) if t is None else t
        slots = self.path(t, b, k)
        end = int(self.end_step[t, b, k])
        length = (t + 1) if end < 0 else (end + 1 if self.include_eos else end)
        labels = [int(self.labels[s, b, slot]) for s, slot in enumerate(slots)][:length]
        score = float(self.scores[t, b, k])
        if self.final_divisor and t == self.shape[0] - 1:
            score /= self.final_divisor
        return {"labels": labels, "score": score, "length": length, "end_step": end, "slots": slots}

    def best(self, b: int, t: int | None = None) -> int:
        """The beam slot of the best hypothesis of sequence b after step t (default: its last step)."""
        t = self.last_step(b) if t is None else t
        return int(np.argmax(self.scores[t, b]))

    def hypotheses(self, b: int, t: int | None = None) -> list:
        """Every hypothesis of sequence b after step t (default: its last), best first (backtracked)."""
        t = self.last_step(b) if t is None else t
        order = np.argsort(-self.scores[t, b], kind="stable")
        return [dict(self.hypothesis(b, int(k), t), slot=int(k)) for k in order]


class BeamSteps(Beams):
    """The hypotheses of a traced beam search (``Trace.beams(choice)``), as RETURNN recorded them."""

    def __init__(self, trace: "Trace", key: str, end_key: str | None, include_eos: bool, lens=None):
        order = [trace.entries[key].loop_axes[0], "batch", "beam"]
        self.trace, self.key, self._order = trace, key, order
        labels = trace.numpy(key, order=order)
        ends = trace.numpy(end_key, order=order) if end_key else None
        if lens is not None:  # an unstacked axis: hypotheses end at their sequence's last frame
            steps = np.arange(labels.shape[0])[:, None, None]
            ends = np.broadcast_to(steps == np.asarray(lens)[None, :, None] - 1, labels.shape)
        super().__init__(labels, trace.numpy(key + ".scores", order=order),
                         trace.numpy(key + ".backpointers", order=order), ends, include_eos, lens)

    def state(self, key, t: int, b: int, k: int) -> np.ndarray:
        """The value of a State or in-loop layer at step t in hypothesis k (a value computed before the choice
        through the hypothesis' backpointer)."""
        e = self.trace.entries[self.trace.key(key)]
        rest = [d for d in e.dims if d not in self._order]
        values = self.trace.numpy(key, order=self._order + rest)
        slot = int(self.backpointers[t, b, k]) if self.trace.before_choice(key) else k
        return values[t, b, slot]
