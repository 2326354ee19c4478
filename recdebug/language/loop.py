"""Loop: ``with rd.Loop() as loop:`` runs its body once per step; becomes one RETURNN rec layer."""
from __future__ import annotations

from .dims import Dim, batch_dim, dim_named, dims_str
from .errors import DimError, LoopError, user_line
from .graph import Scope, check_usable, current_graph
from .state import State, used_as_value, value_in
from .tensor import Tensor


class Loop(Scope):
    """A recurrent loop over an unstacked axis (``unstack``) or until a condition (``end``)."""

    def __init__(self, include_eos: bool = False, max_seq_len=None, name: str | None = None):
        """``max_seq_len``: the most steps (an int), or per sequence (an int32 Tensor {batch} computed before)."""
        self.include_eos = include_eos
        self.max_seq_len = max_seq_len
        self._name_hint = name or "loop"
        self.name = None
        self.entered = False
        self.closed = False
        self.line = user_line()
        self.unstacked: list[Tensor] = []  # unstack results, in order
        self._axis: Dim | None = None
        self._axis_from_unstack = False
        self.end_cond: Tensor | None = None
        self.unstack_axis: Dim | None = None  # a bounded loop's unstacked dim (its own axis is a new dim)
        self.end_line = None
        self._index: Tensor | None = None
        self.init: dict = {}  # carried State -> its value before the loop (a Tensor of the parent scope)
        self.entry_source: dict = {}  # State read but not assigned here -> value in the parent scope
        self.state_layers: dict = {}  # carried State -> layer name in the unit
        self.exports: dict = {}  # in-loop Tensor -> True (stacked or last: is_output_layer)
        self.len_name = self.last_index_name = self.nonempty_name = None
        self.state_finals: dict = {}  # carried State -> name of its gathered last frame in the parent scope

    @property
    def is_loop(self) -> bool:
        return True

    def describe(self) -> str:
        where = f" (line {self.line.lineno})" if self.line else ""
        return f"loop {self.name!r}{where}"

    def __repr__(self):
        return f"Loop({self.name!r}, axis={self._axis!r})"

    # --- the with-block ---
    def __enter__(self):
        if self.entered:
            raise LoopError("a Loop can be entered only once; create a new rd.Loop()", line=user_line())
        g = current_graph("rd.Loop")
        self.line = user_line()
        Scope.__init__(self, g, g.scope)
        self.entered = True
        self.name = self.parent.unique_name(self._name_hint)
        self.parent.children.append(self)
        g.loops.append(self)
        g.scope = self
        return self

    def __exit__(self, exc_type, exc, tb):
        self.graph.scope = self.parent
        self.closed = True
        if exc_type is not None:
            return False
        self._finish()
        return False

    def _finish(self):
        g, parent = self.graph, self.parent
        if not self.unstacked and self.end_cond is None:
            raise LoopError(f"{self.describe()} has neither loop.unstack(...) nor loop.end(...): it would never stop",
                            line=self.line, hint="iterate over an input with loop.unstack(x), or stop with loop.end(cond)")
        if not self.unstacked and self.max_seq_len is None:
            raise LoopError(f"{self.describe()} is a while loop (loop.end) without max_seq_len",
                            line=self.line, hint="give rd.Loop(max_seq_len=N) as a bound on the number of steps")
        if isinstance(self.max_seq_len, Tensor):
            bound = self.max_seq_len
            if bound.dtype != "int32" or not bound.dims <= {batch_dim}:
                raise DimError(f"{self.describe()}: max_seq_len {bound!r} must be int32 with dims {{batch}} or none",
                               line=self.line)
            check_usable(bound, parent, self.line)
        elif self.max_seq_len is not None and (not isinstance(self.max_seq_len, int) or self.max_seq_len < 1):
            raise LoopError(f"{self.describe()}: max_seq_len must be a positive int or an int32 rd.Tensor, got "
                            f"{self.max_seq_len!r}", line=self.line)
        if self.bounded and self.unstacked:
            if self.axis.size is not None:
                raise LoopError(f"{self.describe()}: loop.end or a tensor max_seq_len with an unstack over the static "
                                f"dim {self.axis!r} is not supported", line=self.end_line or self.line,
                                hint="unstack a dynamic dim, or drop loop.end")
            # each sequence stops at its end condition or after its frames: the loop's axis is a new dim
            self.unstack_axis, self._axis = self._axis, Dim(f"{self.name}_time")
        for op in parent.ops:
            if op.attrs.get("loop") is self and op.kind == "stack":
                v = op.attrs["value"]
                if self._axis in v.dims:
                    raise DimError(f"{self.name}.stack({v!r}): the value already has the loop's axis "
                                   f"{self._axis!r}, the result would have it twice", line=op.line,
                                   hint="reduce over it inside the loop first, or iterate with a while loop and "
                                        f"rd.gather(x, loop.index, {self._axis.name}): its loop.axis is a new dim")
                op.out.dims = v.dims | {self._axis}
        if not self.ops:
            raise LoopError(f"{self.describe()} computes nothing", line=self.line)
        for state in self.assigned:
            self.init[state] = value_in(g, parent, state)
        for state in self.entries:
            if state not in self.assigned:
                self.entry_source[state] = value_in(g, parent, state)
        same_steps = bool(self.unstacked) and self.axis.size is not None and self.end_cond is None
        for state in self.assigned:
            if batch_dim not in state.dims and self.parent.is_loop and not same_steps:
                raise LoopError(f"State {state.path(g)!r} is shared by the batch (it has no batch dim) and assigned in "
                                f"{self.describe()}, a loop inside another loop whose steps differ per sequence: "
                                f"RETURNN runs such an inner loop for every sequence, also those whose outer loop has "
                                f"ended, and a shared value would count their steps", line=self.assign_lines[state],
                                hint="give the State the batch dim (rd.State({rd.batch_dim, ...})), or assign it in "
                                     "the outer loop (an inner loop over a static dim may assign it: every sequence "
                                     "takes its steps)")
        for state in self.assigned:
            self.state_layers[state] = self.unique_name(state.path(g).replace("/", "."))
        self.len_name = parent.unique_name(f"{self.name}.len")
        self.nonempty_name = parent.unique_name(f"{self.name}.nonempty")
        self.last_index_name = parent.unique_name(f"{self.name}.last_index")
        for state in self.assigned:
            self.state_finals[state] = parent.unique_name(state.path(g).replace("/", ".") + ".last")
            final = g.add_op("state_final", [], state.dims, dtype=state.dtype, sparse_dim=state.sparse_dim,
                             attrs={"state": state, "loop": self, "after_loop": self}, scope=parent,
                             name=state.path(g).replace("/", ".") + ".final", line=self.line)
            parent.state_values[state] = final
        self.exports.update({v: True for v in self.assigned.values() if v.scope is self})

    # --- in-loop API ---
    def _check_open(self, what: str, line):
        g = current_graph(f"loop.{what}")
        if g.scope is self:
            return g
        if g.scope is g.top:
            raise LoopError(f"loop.{what} called outside any loop", line=line,
                            hint=f"call loop.{what}(...) inside the `with rd.Loop() as loop:` block")
        raise LoopError(f"loop.{what} of {self.describe()} called inside {g.scope.describe()}", line=line,
                        hint=f"call loop.{what}(...) directly in the block of the loop it belongs to")

    @property
    def axis(self) -> Dim:
        """The loop's time dim: the unstacked dim, or a new dynamic dim for a while loop."""
        if self._axis is None:
            self._axis = Dim(f"{self._name_hint}_time" if self.name is None else f"{self.name}_time")
        return self._axis

    @property
    def index(self) -> Tensor:
        """The step counter t of each sequence (int32 {batch}; its sparse dim is the loop's axis:
        ``rd.gather(x, loop.index)`` reads frame t)."""
        g = self._check_open("index", user_line())
        if self._index is None:
            self._index = g.add_op("index", [], {batch_dim}, dtype="int32", sparse_dim=self.axis, name="index")
        return self._index

    @property
    def bounded(self) -> bool:
        """Whether each sequence stops at a bound of its own (its frames, a tensor max_seq_len) besides ``end``:
        RETURNN runs such a loop as a while loop whose end flag also says when a sequence's bound is reached."""
        return (bool(self.unstacked) and self.end_cond is not None) or isinstance(self.max_seq_len, Tensor)

    @property
    def rec_axis(self) -> Dim:
        """The dim RETURNN's rec layer iterates over: the loop's axis, or for a static axis (RETURNN iterates over
        dynamic dims only) a dynamic dim whose lengths all equal its size."""
        if self.axis.size is None:
            return self.axis
        if getattr(self, "_rec_axis", None) is None:
            self._rec_axis = Dim(f"{self.axis.name}_steps")
        return self._rec_axis

    def set_include_eos(self, include_eos: bool) -> None:
        self.include_eos = include_eos

    def unstack(self, x: Tensor, axis: Dim | str | None = None) -> Tensor:
        """The frame of ``x`` at the current step; all unstacks of a loop share one axis. ``axis``: a dim of x or
        its name (default: the loop's axis, or x's one dynamic dim)."""
        line = user_line()
        g = self._check_open("unstack", line)
        if isinstance(x, State):
            raise used_as_value(x, "loop.unstack")
        if not isinstance(x, Tensor):
            raise LoopError(f"loop.unstack expects an rd.Tensor, got {type(x).__name__}", line=line)
        if self.contains(x.scope):
            raise LoopError(f"loop.unstack of {x!r}, which is computed inside the same loop", line=line,
                            hint="unstack an input or a value computed before the loop")
        check_usable(x, self, line)
        if axis is not None:
            axis = dim_named(axis, x.dims, f"loop.unstack of {x!r}")
        else:
            dynamic = [d for d in x.dims if d.is_dynamic]
            if self._axis_from_unstack and self._axis in x.dims:
                axis = self._axis
            elif len(dynamic) == 1:
                axis = dynamic[0]
            else:
                raise DimError(f"loop.unstack({x!r}): cannot tell which dim to iterate over", line=line,
                               hint="pass it: loop.unstack(x, axis=time)")
        if axis not in x.dims:
            raise DimError(f"loop.unstack: {x!r} has no dim {axis!r}", line=line)
        if axis.is_batch:
            raise DimError("loop.unstack over the batch dim: a loop iterates over a time or feature dim", line=line)
        if self._axis is not None and self._axis is not axis:
            raise LoopError(f"loop.unstack over {axis!r}, but this loop iterates over {self._axis!r}", line=line,
                            hint="all unstacks of one loop share its axis; use another loop for another axis")
        self._axis, self._axis_from_unstack = axis, True
        t = g.add_op("unstack", [x], x.dims - {axis}, dtype=x.dtype, sparse_dim=x.sparse_dim,
                     attrs={"axis": axis, "first": not self.unstacked}, line=line)
        self.unstacked.append(t)
        return t

    def _own_value(self, v, what: str, line) -> Tensor:
        if isinstance(v, State):
            raise used_as_value(v, f"loop.{what}")
        if not isinstance(v, Tensor):
            raise LoopError(f"loop.{what} expects an rd.Tensor, got {type(v).__name__}", line=line)
        if v.scope is self:
            return v
        if v.scope.contains(self):  # from outside: constant over the loop, copy it in
            return self.graph.add_op("copy", [v], v.dims, dtype=v.dtype, sparse_dim=v.sparse_dim, line=line)
        raise LoopError(f"loop.{what} of {v!r}, a value from {v.scope.describe()}", line=line,
                        hint=f"call {what} in the loop that computes the value; "
                             f"use that loop's stack/last result here")

    def stack(self, v: Tensor) -> Tensor:
        """``v`` at every step, with the loop's axis as one more dim (frames past a sequence's length: padding)."""
        line = user_line()
        self._check_open("stack", line)
        v = self._own_value(v, "stack", line)
        self.exports[v] = True
        return self.graph.add_op("stack", [], v.dims | {self.axis}, dtype=v.dtype, sparse_dim=v.sparse_dim,
                                 attrs={"value": v, "loop": self, "after_loop": self}, scope=self.parent,
                                 line=line)

    def last(self, v: Tensor) -> Tensor:
        """``v`` at each sequence's last step (t = len[b] - 1)."""
        line = user_line()
        self._check_open("last", line)
        v = self._own_value(v, "last", line)
        # the axis of an inner while loop: its length differs from step to step (RETURNN keeps one length per step
        # and sequence, which the value at the last step no longer has)
        inner = [lp for lp in self.graph.loops if lp is not self and self.contains(lp) and lp.axis in v.dims
                 and (lp.bounded or not lp.unstacked)]
        if inner:
            raise LoopError(f"loop.last of {v!r}, which has the axis of the inner {inner[0].describe()}: the inner "
                            f"loop's length at the last step cannot be taken out of the loop", line=line,
                            hint=f"stack it instead ({self.name}.stack(...)), or reduce over the inner axis inside "
                                 f"the loop first (e.g. rd.reduce_sum(v, inner.axis)) and take loop.last of that")
        self.exports[v] = True
        return self.graph.add_op("last", [], v.dims, dtype=v.dtype, sparse_dim=v.sparse_dim,
                                 attrs={"value": v, "loop": self, "after_loop": self}, scope=self.parent,
                                 line=line)

    def end(self, cond: Tensor, include_eos: bool | None = None) -> None:
        """Stop each sequence at the first step where ``cond`` (bool, {batch}) is true."""
        line = user_line()
        self._check_open("end", line)
        if self.end_cond is not None:
            raise LoopError(f"loop.end called twice in {self.describe()} (first at line "
                            f"{self.end_line.lineno if self.end_line else '?'})", line=line,
                            hint="combine the conditions: loop.end(a | b)")
        if isinstance(cond, State):
            raise used_as_value(cond, "loop.end")
        if not isinstance(cond, Tensor) or cond.dtype != "bool":
            raise DimError(f"loop.end expects a bool rd.Tensor (a comparison), got {cond!r}", line=line)
        if any(not d.is_batch for d in cond.dims):
            raise DimError(f"loop.end condition must have dims {{batch}}, got {dims_str(cond.dims)}", line=line,
                           hint="reduce the other dims first, e.g. rd.reduce_max")
        check_usable(cond, self, line)
        if cond.scope is not self:
            cond = self.graph.add_op("copy", [cond], cond.dims, dtype="bool", line=line)
        self.end_cond, self.end_line = cond, line
        if include_eos is not None:
            self.include_eos = include_eos
