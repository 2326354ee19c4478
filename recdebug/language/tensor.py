"""Tensor: a value of the graph with a set of named dims; arithmetic broadcasts by dim."""
from __future__ import annotations

import numbers

from .dims import Dim, batch_dim, dims_str, sorted_dims
from .errors import DimError, RecDebugError, user_line
from .graph import current_graph

_ARITH = {"add": "+", "sub": "-", "mul": "*", "truediv": "/"}
_COMPARE = {"equal": "==", "not_equal": "!=", "less": "<", "less_equal": "<=", "greater": ">",
            "greater_equal": ">="}
_LOGICAL = {"logical_and": "&", "logical_or": "|"}
_SWAPPED = {"less": "greater", "less_equal": "greater_equal", "greater": "less", "greater_equal": "less_equal",
            "equal": "equal", "not_equal": "not_equal"}


class Tensor:
    """A value in the graph: ``dims`` is a set, order never matters."""

    def __init__(self, op, dims, dtype: str = "float32", sparse_dim: Dim | None = None):
        self.op = op
        self.dims = frozenset(dims)
        self.dtype = dtype
        self.sparse_dim = sparse_dim

    @property
    def scope(self):
        return self.op.scope

    @property
    def graph(self):
        return self.op.scope.graph

    @property
    def name(self) -> str:
        path = [s.name for s in reversed(list(self.scope.ancestors())) if s.is_loop]
        return "/".join(path + [self.op.name])

    def feature_dim(self, what: str = "this op") -> Dim:
        """The one static dim of this tensor (what Linear, split and concat work on)."""
        static = [d for d in self.dims if not d.is_batch and d.size is not None]
        if self.sparse_dim is not None and not static:
            return self.sparse_dim
        if len(static) != 1:
            raise DimError(f"{what} needs a single feature dim, but {self!r} has {len(static)} static dims",
                           hint="pass the dim explicitly")
        return static[0]

    def __repr__(self):
        extra = f", sparse_dim={self.sparse_dim.short()}" if self.sparse_dim is not None else ""
        dtype = "" if self.dtype == "float32" else f", {self.dtype}"
        return f"Tensor({self.name!r}, {dims_str(self.dims)}{dtype}{extra})"

    __hash__ = object.__hash__

    # arithmetic and comparisons: RETURNN's rule, one operand's dims must contain the other's
    def __add__(self, other):
        return binary(self, other, "add")

    def __radd__(self, other):
        return binary(other, self, "add")

    def __sub__(self, other):
        return binary(self, other, "sub")

    def __rsub__(self, other):
        return binary(other, self, "sub")

    def __mul__(self, other):
        return binary(self, other, "mul")

    def __rmul__(self, other):
        return binary(other, self, "mul")

    def __truediv__(self, other):
        return binary(self, other, "truediv")

    def __rtruediv__(self, other):
        return binary(other, self, "truediv")

    def __neg__(self):
        return binary(self, -1.0, "mul")

    def __eq__(self, other):
        return binary(self, other, "equal")

    def __ne__(self, other):
        return binary(self, other, "not_equal")

    def __lt__(self, other):
        return binary(self, other, "less")

    def __le__(self, other):
        return binary(self, other, "less_equal")

    def __gt__(self, other):
        return binary(self, other, "greater")

    def __ge__(self, other):
        return binary(self, other, "greater_equal")

    def __and__(self, other):
        return binary(self, other, "logical_and")

    def __or__(self, other):
        return binary(self, other, "logical_or")

    def __bool__(self):
        raise RecDebugError(f"{self!r} has no Python truth value: it is only known when the graph runs",
                            hint="use loop.end(cond) for a data-dependent stop")


def broadcast_dims(a: Tensor, b: Tensor, what: str) -> frozenset:
    if a.dims <= b.dims:
        return b.dims
    if b.dims <= a.dims:
        return a.dims
    raise DimError(
        f"{what}: dims {dims_str(a.dims)} and {dims_str(b.dims)} do not broadcast "
        f"(one operand's dims must contain the other's)",
        hint="reduce or select so that one side's dims are a subset of the other's",
    )


def binary(a, b, kind: str):
    """``a <kind> b`` where at least one side is a Tensor and the other may be a Python number."""
    line = user_line()
    symbol = {**_ARITH, **_COMPARE, **_LOGICAL}[kind]
    if not isinstance(a, Tensor):
        if not isinstance(a, numbers.Number):
            return _not_a_value(a, symbol)
        if kind in _COMPARE:
            return binary(b, a, _SWAPPED[kind])
        a, b, scalar_first = b, a, True
    else:
        scalar_first = False
    dtype = "bool" if kind in _COMPARE else a.dtype
    if isinstance(b, Tensor):
        dims = broadcast_dims(a, b, f"{a!r} {symbol} {b!r}")
        if kind in _ARITH and a.dtype != b.dtype:
            raise DimError(f"{a!r} {symbol} {b!r}: dtypes {a.dtype} and {b.dtype} differ", line=line)
        return a.graph.add_op(kind, [a, b], dims, dtype=dtype, line=line)
    if not isinstance(b, numbers.Number):
        return _not_a_value(b, symbol)
    return a.graph.add_op(kind, [a], a.dims, dtype=dtype, line=line,
                          attrs={"scalar": b, "scalar_first": scalar_first})


def _not_a_value(x, symbol: str):
    """NotImplemented for an operand that is no Tensor or number (Python then tries the other side's operator);
    for a State (``h + x`` without ``.get()``, ``x == h`` included), the error that says to read it with get()."""
    from .state import State, used_as_value

    if isinstance(x, State):
        raise used_as_value(x, symbol)
    return NotImplemented


class Input(Tensor):
    """An input of the graph, fed by name at run time: ``rd.Input("x", {batch, time, feat})``.

    ``dims`` may be a set (the array's axes are then in canonical order: batch, then dims by creation) or an
    ordered tuple/list giving the array's axis order.
    """

    def __init__(self, name: str, dims, dtype: str = "float32", sparse_dim: Dim | None = None):
        g = current_graph("rd.Input")
        line = user_line()
        if g.scope is not g.top:
            raise RecDebugError(f"rd.Input({name!r}) must be created at the top level, not inside a loop",
                                line=line)
        if name in g.inputs:
            raise RecDebugError(f"there is already an input named {name!r}", line=line)
        dims_list = list(dims)
        if len(set(dims_list)) != len(dims_list):
            raise DimError(f"rd.Input({name!r}): a dim appears twice", line=line)
        self.order = tuple(dims_list) if isinstance(dims, (tuple, list)) else sorted_dims(dims_list)
        node = g.add_op("input", [], dims_list, dtype=dtype, sparse_dim=sparse_dim, name=name, line=line).op
        super().__init__(node, dims_list, dtype=dtype, sparse_dim=sparse_dim)
        node.out = self
        self.input_name = name
        g.inputs[name] = self


__all__ = ["Tensor", "Input", "batch_dim"]
