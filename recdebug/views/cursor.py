"""Where the debugger's cursor is and how it moves: stepping a live stepper (and following it when code elsewhere
moves it), or browsing a trace's recorded steps; running to the end or to a breakpoint."""
from __future__ import annotations

import html

import numpy as np

from ..language.errors import RecDebugError


class Cursor:
    """Mixed into the Debugger: ``step``, ``step_back``, ``reset``, ``seek``, ``run``; ``t`` is the steps done,
    the cursor shows step t-1."""

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
