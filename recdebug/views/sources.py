"""What the debugger shows, read from its source: a recorded trace (every step there) or a live stepper (the
steps run so far, through the stepper protocol). Both answer the same questions, so the debugger's controller
never asks which one it has: its States, a value's rows for one sequence (along a searched hypothesis), where a
sequence ends, the hierarchy and the net dict."""
from __future__ import annotations

import numpy as np


class RecordedSource:
    """A trace: every step is recorded; the cursor is the step looked at."""

    recorded = True

    def __init__(self, trace):
        self.trace = trace
        self.axis = trace._default_axis()

    @property
    def device(self) -> str:
        return self.trace.device

    @property
    def batch(self) -> int:
        return int(self.trace.lens(self.axis).shape[-1])

    def beams(self):
        """The search's hypotheses, if the trace searched."""
        key = next((k[:-len(".backpointers")] for k in self.trace.entries if k.endswith(".backpointers")), None)
        return None if key is None else self.trace.beams(key)

    def nodes(self) -> list:
        return self.trace.hierarchy  # a loaded trace has them from its file

    def net_text(self) -> str:
        return self.trace.net_text or "(this trace file does not keep the net dict)"

    def state_keys(self) -> list:
        return [e.key for e in self.trace.entries.values() if e.kind == "state" and e.loop_axes == (self.axis,)]

    def _unit_dims(self, e) -> list:
        """The dims of an entry's units, an axis of its own with lengths (an encoder's) first: its padding last."""
        rest = [d for d in e.dims if d not in (self.axis, "batch", "beam")]
        own = [d for d in rest if d in self.trace._lens and self.trace._lens[d][1] == ("batch",)][:1]
        return own + [d for d in rest if d not in own]

    def describe(self, key: str) -> tuple:
        """(dims [(name, size)] besides the loop's axis, batch and beam; whether it holds ints; its sparse dim's
        name; the loop axis' name)."""
        e = self.trace.entries[key]
        dims = [(d, int(e.array.shape[e.dims.index(d)])) for d in self._unit_dims(e)]
        return dims, e.array.dtype.kind in "iub", None, self.axis

    def valid_units(self, key: str, b: int) -> int | None:
        """How many of the units of ``key`` hold sequence b's valid frames (None: all)."""
        e = self.trace.entries[key]
        dims = self._unit_dims(e)
        if not dims or dims[0] not in self.trace._lens or self.trace._lens[dims[0]][1] != ("batch",):
            return None
        rest = int(np.prod([e.array.shape[e.dims.index(d)] for d in dims[1:]]))
        return int(self.trace._lens[dims[0]][0][b]) * rest

    def shared(self, key: str) -> bool:
        """Whether ``key`` has no batch dim: one value for every sequence."""
        return "batch" not in self.trace.entries[key].dims

    def steps(self, beams) -> int:
        if beams is not None:  # every step the search ran, not only the best hypothesis' length
            return beams.shape[0]
        return int(self.trace.lens(self.axis).max())

    def length(self, b: int, T: int) -> int:
        return int(self.trace.lens(self.axis)[b])

    def known(self, T: int) -> int:
        return T

    def rows(self, key: str, b: int, beams, hypothesis) -> np.ndarray:
        """[T, U] float32 values of ``key`` for sequence ``b`` (searching: along ``hypothesis``, (step, slot))."""
        tr, axis = self.trace, self.axis
        e = tr.entries[key]
        rest, n = self._unit_dims(e), self.valid_units(key, b)
        if "beam" in e.dims and hypothesis is not None:
            values = tr.numpy(key, order=[axis, "batch", "beam"] + rest)[:, b]
            path = beams.path(hypothesis[0], b, hypothesis[1])
            before = tr.before_choice(key)
            rows = [values[t, beams.backpointers[t, b, slot]] if before else values[t, slot]
                    for t, slot in enumerate(path)]
            rows += [np.zeros_like(rows[0])] * (values.shape[0] - len(rows))
            return np.stack(rows).reshape(values.shape[0], -1)[:, :n].astype(np.float32)
        rest = [d for d in e.dims if d not in (axis, "batch")] if "beam" in e.dims else rest
        if "batch" not in e.dims:  # one value for the batch: the same for each sequence
            arr = tr.numpy(key, order=[axis] + rest)
            return arr.reshape(arr.shape[0], -1)[:, :n].astype(np.float32)
        arr = tr.numpy(key, order=[axis, "batch"] + rest)
        return arr[:, b].reshape(arr.shape[0], -1)[:, :n].astype(np.float32)

    def has_steps(self, path: str) -> bool:
        e = self.trace.entries.get(path)
        return e is not None and (e.loop_axes == (self.axis,) or (e.kind == "value" and self.axis in e.dims))

    def stepped_layers(self) -> list:
        return sorted(k for k in self.trace.entries if self.has_steps(k))


class LiveSource:
    """A live stepper: the steps run so far, fetched once each, only for the values shown."""

    recorded = False

    def __init__(self, stepper):
        self.stepper = stepper
        self._rows: dict = {}  # key -> [T, batch(, beam), U] values of the steps fetched so far
        self._known: dict = {}  # key -> steps fetched
        self._edits: dict = {}  # key -> the stepper's edits when last fetched

    @property
    def device(self) -> str:
        return self.stepper.device

    @property
    def batch(self) -> int:
        return self.stepper.batch

    def beams(self):
        """A live search: the hypotheses of the steps run so far."""
        return self.stepper.beams() if self.stepper.choice is not None else None

    def nodes(self) -> list:
        return self.stepper.hierarchy_nodes()

    def net_text(self) -> str:
        return self.stepper.net_dict_text()

    def state_keys(self) -> list:
        return self.stepper.view_keys()

    def describe(self, key: str) -> tuple:
        return self.stepper.describe_key(key)

    def shared(self, key: str) -> bool:
        return self.stepper.key_shared(key)

    def steps(self, beams) -> int:
        return self.stepper.T

    def length(self, b: int, T: int) -> int:
        return self.stepper.ended.get(b, T)

    def known(self, T: int) -> int:
        return self.stepper.t

    def rows(self, key: str, b: int, beams, hypothesis) -> np.ndarray:
        """[T, U] float32 values of ``key`` for sequence ``b`` (searching: along ``hypothesis``, (step, slot));
        zeros for the steps not run yet."""
        rows, n = self.all_rows(key), self.valid_units(key, b)
        if beams is None:
            return rows[:, b].reshape(rows.shape[0], -1)[:, :n]
        out = np.zeros((rows.shape[0], rows.shape[-1]), np.float32)
        if hypothesis is not None:
            before = self.stepper.key_before_choice(key)
            for t, slot in enumerate(beams.path(hypothesis[0], b, hypothesis[1])):
                out[t] = rows[t, b, beams.backpointers[t, b, slot] if before else slot]
        return out[:, :n]

    def valid_units(self, key: str, b: int) -> int | None:
        """How many of the units of ``key`` hold sequence b's valid frames (None: all)."""
        return self.stepper.valid_units(key, b)

    def all_rows(self, key: str) -> np.ndarray:
        """[T, batch, U] (searching: [T, batch, beam, U]) values of the steps run so far."""
        st = self.stepper
        per_entry = (st.batch, -1) if st.choice is None else (st.batch, st.beam, -1)
        if key not in self._rows:
            sample = st.key_value(key, st.t)
            self._rows[key] = np.zeros((st.T,) + sample.reshape(per_entry).shape, np.float32)
            self._known[key], self._edits[key] = 0, len(st.edits)
        known = self._known[key]
        if self._edits[key] != len(st.edits):  # set_state(at t) or reset: row t-1 on may have changed
            known = min([known] + [max(0, t - 1) for t in st.edits[self._edits[key]:]])
            self._edits[key] = len(st.edits)
        for k in range(known, st.t):  # the steps run since: one fetch per step
            self._rows[key][k] = st.key_value(key, k + 1).reshape(per_entry)
        self._known[key] = max(known, st.t)
        return self._rows[key]

    def has_steps(self, path: str) -> bool:
        return path in self.stepper.layer_keys()

    def stepped_layers(self) -> list:
        return self.stepper.layer_keys()
