"""The stepper protocol: what every live stepper (a loop of the language's, a RETURNN config's rec layer) offers
the debugger, the magics and the user, in plain Python: moving (``step``, ``step_back``, ``run_to``,
``run_until``), its status in recdebug's one step numbering, watchers told of every move, and the breakpoints
``on_nonfinite`` / ``on_nan`` / ``on_state``. The back end's steppers implement it; the views read only it."""
from __future__ import annotations

import weakref

import numpy as np

from ..language.errors import RecDebugError, RunError


class ViewKey:
    """What the views know of a State or layer of a stepper: the user's object (``value`` takes it), its dims
    besides batch and beam as [(name, size)] in the order ``value`` gives, whether it holds ints, its sparse dim's
    name; ``layer``: it is among the layers with a value per step that the hierarchy picks (a config's State is
    a layer of its unit too). A value with an axis of its own besides the batch (an encoder's) has it first, its
    size that of the stepper's longest sequence, and ``frames``: each sequence's valid frames along it.
    ``shared``: it has no batch dim (one value for every sequence: ``value`` gives it without one)."""

    def __init__(self, obj, state: bool, dims, ints: bool, sparse=None, layer: bool | None = None, perm=None,
                 frames=None, shared: bool = False):
        self.shared = shared
        self.obj, self.state, self.dims, self.ints, self.sparse = obj, state, tuple(dims), ints, sparse
        self.layer = not state if layer is None else layer
        self.perm = perm  # value's axes after batch (and beam) in the order of ``dims`` (None: as they are)
        self.frames = frames  # per sequence: the valid frames along the first of ``dims`` (None: all valid)


class SteppingControls:
    """What every live stepper shares (rd.Stepper, and a RETURNN config's stepper): the status line, moving back
    and to a step, running to a breakpoint, and telling its watchers (debuggers) of each move.

    A stepper gives ``t`` (steps run), ``T`` (steps at most), ``batch``, ``beam`` and ``choice`` (None unless it
    searches), ``ended`` ({sequence: its steps}), ``edits`` (the step of every set_state/reset), ``device``,
    ``breakpoint``, ``closed``, ``step``, ``reset``, ``_live_engine`` (which raises once the stepper is closed), and
    the keys the views read values by (``_keys()``: key -> ViewKey, States first), ``value``, ``before_choice``,
    ``_loop_text()`` and ``_axis_name``."""

    # --- what the views read, by key (a State's or a layer's path), from the front end's ``_keys()`` ---
    def _keys(self) -> dict:
        """key (a State's or a layer's path) -> ViewKey, States first (a front end gives them)."""
        raise NotImplementedError

    def _all_keys(self) -> dict:
        if getattr(self, "_key_cache", None) is None:
            self._key_cache = self._keys()
        return self._key_cache

    def view_key_of(self, x) -> str:
        """The key (as the views name it) of a State or in-loop value given as the front end's own object."""
        found = next((k for k, v in self._all_keys().items() if v.obj is x), None)
        if found is None:
            raise RecDebugError(f"no State or layer {x!r} in {self._loop_text()}")
        return found

    def _key(self, key: str) -> "ViewKey":
        found = self._all_keys().get(key)
        if found is None:
            raise RecDebugError(f"no State or layer {key!r} in {self._loop_text()}")
        return found

    def view_keys(self) -> list:
        """The keys of the States, one heatmap each."""
        return [k for k, v in self._all_keys().items() if v.state]

    def layer_keys(self) -> list:
        """The keys of every value with a value per step (the hierarchy's layers that can be picked)."""
        return [k for k, v in self._all_keys().items() if v.layer]

    def describe_key(self, key: str) -> tuple:
        """(dims as [(name, size)] besides batch and beam, whether it holds ints, its sparse dim's name or None,
        the loop axis' name)."""
        v = self._key(key)
        return list(v.dims), v.ints, v.sparse, self._axis_name

    def key_value(self, key: str, at: int) -> np.ndarray:
        """After ``at`` steps: a State's value, or a layer's value in iteration at-1 (zeros before any step),
        [batch(, beam), ...] with its dims in the order ``describe_key`` gives."""
        v = self._key(key)
        if not v.state and self.t == 0:
            shape = (self.batch,) + ((self.beam,) if self.searching else ()) + tuple(n for _, n in v.dims)
            return np.zeros(shape, np.float32)
        arr = self.value(v.obj, at=at if v.state else max(1, at))
        lead = 2 if self.searching else 1
        if v.shared:  # one value for the batch: the same for each sequence (and hypothesis)
            arr = np.broadcast_to(arr, (self.batch,) + ((self.beam,) if self.searching else ()) + arr.shape)
        return arr.transpose(list(range(lead)) + [lead + i for i in v.perm]) if v.perm is not None else arr

    def valid_units(self, key: str, b: int) -> int | None:
        """How many of the flattened units of ``key`` hold sequence b's valid frames (a value with an axis of its
        own besides the batch, first in ``describe_key``'s order: the rest is padding); None: all of them."""
        v = self._key(key)
        return None if v.frames is None else int(v.frames[b]) * int(np.prod([n for _, n in v.dims[1:]]))

    def key_shared(self, key: str) -> bool:
        """Whether it has no batch dim: one value for every sequence (``key_value`` gives it for each alike)."""
        return self._key(key).shared

    def key_before_choice(self, key: str) -> bool:
        """Searching: whether it is computed before the choice (one value per previous hypothesis)."""
        v = self._key(key)
        return self.searching and not v.state and self.before_choice(v.obj)

    def beams(self):
        """Searching: the hypotheses of the steps run so far (a ``Beams``)."""
        raise NotImplementedError

    def hierarchy_nodes(self) -> list:
        """The emitted net as the hierarchy view draws it."""
        raise NotImplementedError

    def net_dict_text(self) -> str:
        """The net dict, as text."""
        raise NotImplementedError

    @property
    def status(self) -> str:
        parts = [steps_text(self.t, self.T), self.device]
        parts += [ended_text(b, n) for b, n in sorted(self.ended.items())]
        if self.breakpoint:
            parts.append(f"breakpoint: {self.breakpoint}")
        if self.closed is not None:
            parts.append(f"closed: {self.closed}")
        return " · ".join(parts)

    def step_back(self, n: int = 1) -> "SteppingControls":
        """Go back ``n`` iterations; the States are exactly what they were then."""
        self._live_engine()
        n = count_steps(n, "step_back", "step(n) goes forward")
        self.t = max(0, self.t - n)
        self.breakpoint = None
        self._moved()
        return self

    def run_to(self, t: int) -> "SteppingControls":
        """Step forward or back to step ``t`` (0..T)."""
        self._live_engine()
        t = count_steps(t, "run_to", f"give a step in 0..{self.T}")
        if t < self.t:
            return self.step_back(self.t - t)
        return self.step(t - self.t)

    def run_until(self, predicate, max_steps: int | None = None) -> bool:
        """Step until ``predicate(stepper)`` is true (True) or the loop ends (False)."""
        self._live_engine()
        self.breakpoint = None
        self._quiet += 1  # watchers hear of the run once, at its end
        try:
            for _ in range(max_steps if max_steps is not None else self.T + 1):
                if self.finished:
                    return False
                self.step()
                if predicate(self):
                    describe = getattr(predicate, "describe", None)
                    self.breakpoint = describe(self) if describe else f"condition met at t={self.t - 1}"
                    return True
            return False
        finally:
            self._quiet -= 1
            self._moved()

    # --- watchers ---
    def watch(self, callback) -> None:
        """Call ``callback()`` after every move or edit of this stepper (step, step_back, run_to, run_until once
        at its end, set_state, reset, close). A bound method is held weakly: a debugger that is gone is not kept
        alive by its stepper."""
        if hasattr(callback, "__self__"):
            self._watchers.append(weakref.WeakMethod(callback))
        else:  # a plain function: kept as it is
            self._watchers.append(lambda: callback)

    def _moved(self):
        if self._quiet:
            return
        self._watchers = [ref for ref in self._watchers if ref() is not None]
        for ref in list(self._watchers):
            callback = ref()
            if callback is not None:
                callback()


def steps_text(t: int, T: int) -> str:
    """Where a stepper or debugger stands, in the one step numbering recdebug uses: t=k is iteration k of the loop
    (loop.index == k), counted from 0; after ``t`` steps the last one run is t-1."""
    if t <= 0:
        return f"before t=0 (0 of {T} steps run)"
    return f"at t={t - 1} ({t} of {T} steps run)"


def ended_text(b: int, n: int) -> str:
    """Sequence ``b`` ran ``n`` steps (t=0..n-1); later steps are padding."""
    return f"sequence {b} ended after t={n - 1} ({n} steps)" if n > 0 else f"sequence {b} ended before t=0 (0 steps)"


def ended_sequences(t: int, T: int, batch: int, lens=None, hyp_ended=None, end_flags=(),
                    include_eos: bool = False) -> dict:
    """{sequence: its steps} of the sequences that have ended after ``t`` of at most ``T`` steps: searching, when
    every hypothesis had ended (``hyp_ended``: per step [batch, beam]); else by their lengths (``lens``); else at the
    first step whose end flag is set (``end_flags``: per step [batch]; that step counts with ``include_eos``). A
    sequence still running after T steps ends there."""
    if hyp_ended is None and lens is not None:
        return {b: int(n) for b, n in enumerate(lens) if n <= t}
    out = {}
    for b in range(batch):
        if hyp_ended is not None:
            step = next((s for s in range(t) if hyp_ended[s][b].all()), None)
            n = None if step is None else step + 1
        else:
            step = next((s for s, flags in enumerate(end_flags[:t]) if flags[b]), None)
            n = None if step is None else step + 1 if include_eos else step
        if n is not None:
            out[b] = n
        elif t >= T:
            out[b] = T
    return out


def count_steps(n, what: str, hint: str) -> int:
    """A number of steps (or a step): a non-negative integer, else a clear error."""
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)):
        raise RunError(f"{what}({n!r}): expected a whole number of steps, got {type(n).__name__}", hint=hint)
    if n < 0:
        raise RunError(f"{what}({n}): the number must not be negative", hint=hint)
    return int(n)


class on_nonfinite:
    """Breakpoint: stop at the first step after which a State (or the given one) holds NaN or Inf (in a sequence
    still running). A live stepper tests it in the graph."""

    def __init__(self, state=None):
        self.state = state

    def __call__(self, st) -> bool:
        bad = st.nonfinite_at(st.t - 1)
        return bool(bad) if self.state is None else st._state(self.state) in bad

    def watch(self, st) -> dict:
        """What the stepper's in-graph loop tests: NaN/Inf in every State, or in one."""
        return {"nonfinite": True if self.state is None else [st._state(self.state)]}

    def describe(self, st) -> str:
        bad = st.nonfinite_at(st.t - 1)
        names = ", ".join(s.path(st.graph) for s in bad)
        return f"NaN/Inf in {names} at t={st.t - 1}"


on_nan = on_nonfinite


class on_state:
    """Breakpoint on a State's values (numpy, canonical order, every entry): ``predicate(values)`` is true, or
    (without a predicate) some value is greater than ``above`` or less than ``below``. A live stepper tests the
    bounds in the graph; a predicate is asked after every step."""

    def __init__(self, state, predicate=None, text: str | None = None, *, above=None, below=None):
        if (predicate is None) == (above is None and below is None):
            raise RunError("rd.on_state(state, ...) takes a predicate or bounds (above=..., below=...), one of them",
                           hint="rd.on_state(h, above=0.99, below=-0.99) stops where some |value| > 0.99")
        self.state, self.predicate, self.text, self.above, self.below = state, predicate, text, above, below

    def __call__(self, st) -> bool:
        values = st.value(self.state)
        if self.predicate is not None:
            return bool(self.predicate(values))
        values = np.asarray(values, np.float32)  # as the graph compares them
        return bool((self.above is not None and (values > np.float32(self.above)).any()) or
                    (self.below is not None and (values < np.float32(self.below)).any()))

    def watch(self, st) -> dict | None:
        """What the stepper's in-graph loop tests (None: the predicate is Python's, asked after every step)."""
        if self.predicate is not None:
            return None
        key = st._state(self.state)
        return {bound: {key: float(value)} for bound, value in (("above", self.above), ("below", self.below))
                if value is not None}

    def describe(self, st) -> str:
        name = self.state if isinstance(self.state, str) else st._state(self.state).path(st.graph)
        if self.text is None and self.predicate is None:
            bounds = [f"{sign} {float(np.float32(value)):.7g}"  # (as the graph compares: in float32)
                      for sign, value in ((">", self.above), ("<", self.below)) if value is not None]
            return f"a value {' or '.join(bounds)} in {name} at t={st.t - 1}"
        return f"{self.text or 'condition'} on {name} at t={st.t - 1}"


class on_label:
    """Breakpoint of a search: stop after the first step where some hypothesis (of any sequence, or of sequence
    ``sequence``) chose ``label``. A live stepper tests it in the graph."""

    def __init__(self, label: int, sequence: int | None = None):
        if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)):
            raise RunError(f"rd.on_label({label!r}): expected a label number", hint="rd.on_label(0) stops at <eos>")
        self.label, self.sequence = int(label), sequence

    def __call__(self, st) -> bool:
        chosen = st.beams().labels[st.t - 1]  # [batch, beam]
        return bool(((chosen if self.sequence is None else chosen[self.sequence]) == self.label).any())

    def watch(self, st) -> dict:
        return {"label": (self.label, self.sequence)}

    def describe(self, st) -> str:
        where = "" if self.sequence is None else f" in sequence {self.sequence}"
        return f"label {self.label} chosen{where} at t={st.t - 1}"
