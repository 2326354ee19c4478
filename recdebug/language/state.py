"""State: a variable with one value per sequence (or, without the batch dim, one value shared by every sequence: a
step counter, a bound), carried over iterations by the loop that assigns it."""
from __future__ import annotations

import sys

from .dims import Dim, batch_dim, dims_str
from .errors import DimError, LoopError, user_line, _PACKAGE_DIR
from .graph import Graph, Scope, check_usable, current_graph
from .tensor import Tensor


class State:
    """``State({batch, hid}, initial=0)``: ``get()`` reads, ``assign(v)`` sets the value for the next iteration."""

    def __init__(self, dims, initial=0, dtype: str = "float32", sparse_dim: Dim | None = None,
                 name: str | None = None):
        self.dims = frozenset(dims)
        self.line = user_line()
        dynamic = [d for d in self.dims if d.is_dynamic]
        if batch_dim not in self.dims and dynamic:
            raise DimError(f"State{dims_str(self.dims)}: without the batch dim a State holds one value shared by "
                           f"every sequence, but {dynamic[0]!r} has a length per sequence", line=self.line,
                           hint="add the batch dim (rd.State({rd.batch_dim, ...})), or give a shared State static "
                                "dims only")
        self.initial = initial
        self.dtype = dtype
        self.sparse_dim = sparse_dim
        self._name = name
        self._paths: dict = {}  # id(graph) -> path
        if isinstance(initial, Tensor) and not initial.dims <= self.dims:
            raise DimError(f"State{dims_str(self.dims)}: initial value {initial!r} has other dims", line=self.line)

    def set_path(self, g: Graph, path: str) -> None:
        self._paths.setdefault(id(g), path)

    def path(self, g: Graph) -> str:
        if id(g) not in self._paths and getattr(self, "_rd_owner", None) is not None:
            from .module import name_module, owner_root

            name_module(g, owner_root(self))  # a module's State is named by its attribute path
        if id(g) not in self._paths:
            base = self._name or _variable_name(self) or "state"
            taken = {s.path(g) for s in g.states if s is not self and id(g) in s._paths}
            path, i = base, 2
            while path in taken:
                path, i = f"{base}_{i}", i + 1
            self._paths[id(g)] = path
        return self._paths[id(g)]

    def _register(self, g: Graph) -> None:
        if not any(s is self for s in g.states):
            g.states.append(self)
            self.path(g)

    def get(self) -> Tensor:
        """The current value: inside a loop before ``assign``, the previous iteration's value."""
        g = current_graph("State.get()")
        self._register(g)
        return value_in(g, g.scope, self)

    def assign(self, value: Tensor) -> None:
        """Set the value; inside a loop, the value the next iteration's ``get()`` returns."""
        g = current_graph("State.assign()")
        line = user_line()
        self._register(g)
        scope = g.scope
        if isinstance(value, State):
            raise used_as_value(value, f"{self.path(g).rsplit('/', 1)[-1]}.assign")
        if not isinstance(value, Tensor):
            raise DimError(f"State {self.path(g)!r}: assign expects an rd.Tensor, got {type(value).__name__}",
                           line=line)
        if value.dims != self.dims:
            shared = batch_dim in value.dims and batch_dim not in self.dims
            raise DimError(f"State {self.path(g)!r} has dims {dims_str(self.dims)}, assigned a value with dims "
                           f"{dims_str(value.dims)}", line=line,
                           hint="a State without the batch dim holds one value shared by every sequence; for a value "
                                "per sequence (one that depends on the input or on a chosen label) give it the batch "
                                "dim: rd.State({rd.batch_dim, ...})" if shared else
                           "assign a value with exactly the State's dims (reduce or broadcast first)")
        if value.dtype != self.dtype:
            raise DimError(f"State {self.path(g)!r} has dtype {self.dtype}, assigned {value.dtype}", line=line)
        check_usable(value, scope, line)
        if scope.is_loop and self in scope.assigned:
            first = scope.assign_lines[self]
            raise LoopError(f"State {self.path(g)!r} is assigned twice in one iteration of {scope.describe()} "
                            f"(first at line {first.lineno if first else '?'})", line=line,
                            hint="compute the new value fully, then assign once per iteration")
        if value.sparse_dim is not self.sparse_dim:  # the same numbers, labels of the State's sparse dim (or none)
            from .ops import _sparse

            value = _sparse(value, self.sparse_dim, line)
        scope.assigned[self] = value
        scope.assign_lines[self] = line
        scope.state_values[self] = value

    def __repr__(self):
        return f"State({dims_str(self.dims)}, initial={self.initial!r})"


def _refused(symbol: str):
    """An operator of State: a State is not a value, so it raises the error that says to read it with get()."""
    def operator(self, *_):
        raise used_as_value(self, symbol)
    return operator


# a State is not a value: its operators are the error that says to read it with get()
for _name, _symbol in {"add": "+", "sub": "-", "mul": "*", "truediv": "/", "and": "&", "or": "|"}.items():
    setattr(State, f"__{_name}__", _refused(_symbol))
    setattr(State, f"__r{_name}__", _refused(_symbol))
for _name, _symbol in {"neg": "-", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}.items():
    setattr(State, f"__{_name}__", _refused(_symbol))


def used_as_value(state: State, where: str) -> LoopError:
    """The error for a State used where a value is needed (``h + x``, ``loop.stack(h)``): read it with get().
    ``where``: the operator or function it was given to."""
    name = _variable_name(state) or next(iter(state._paths.values()), "state").rsplit("/", 1)[-1]
    return LoopError(f"{name} is a State: use {name}.get() to read its value ({where} takes values, not States)",
                     hint=f"{name}.get() is its value at this point (in a loop: the previous step's, until "
                          f"{name}.assign(v) sets the next one)")


def value_in(g: Graph, scope: Scope, state: State) -> Tensor:
    """The state's current value in ``scope``; before anything set it there, its value at the scope's start."""
    if state not in scope.state_values:
        attrs = {"state": state}
        if scope.parent is None and isinstance(state.initial, Tensor) and state.initial.dims != state.dims:
            # an initial value with fewer dims is broadcast to the State's dims (added to zeros of those dims)
            attrs["zeros"] = g.add_op("constant", [], state.dims, dtype=state.initial.dtype, attrs={"value": 0},
                                      scope=scope, line=state.line, hint="zeros")
        entry = g.add_op("state_entry", [], state.dims, dtype=state.dtype, sparse_dim=state.sparse_dim,
                         attrs=attrs,
                         name=state.path(g).replace("/", ".") + (".initial" if scope.parent is None else ".prev"),
                         scope=scope, line=state.line if scope.parent is None else None)
        scope.entries[state] = entry
        scope.state_values[state] = entry
    return scope.state_values[state]


def _variable_name(obj) -> str | None:
    """The name the user's code binds ``obj`` to, if any (for States made outside a module)."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame = frame.f_back
    for ns in (frame.f_locals, frame.f_globals) if frame is not None else ():
        for k, v in ns.items():
            if v is obj and not k.startswith("_"):
                return k
    return None
