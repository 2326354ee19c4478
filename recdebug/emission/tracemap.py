"""The map a trace is read with: which in-loop values are recorded (captured), which are derived from others
instead of recorded, each State's entry, and the perturbation inputs of gradients through time."""
from __future__ import annotations

import fnmatch

from ..language.graph import Scope
from .analysis import _EXACT_IN_NUMPY


class TraceMap:
    """Mixed into the emitter (``netdict._Emitter``)."""

    def derived(self, loop, name: str):
        """How a trace gets a layer's steps from other recorded values without recording it (None: record it).

        ("same", path): a State's layer holds exactly the value assigned to it;
        ("shifted", state path, initial layer): a State read before its assign is the previous step's value;
        ("input", name): the first unstacked frame of a top-level input is that input;
        ("part", path, dim, i, n): part i of n of a split along dim is a slice (a view) of the split value;
        ("combine", kind, operand paths): a float32 add/sub/mul of recorded values, computed by numpy when read.
        Only within a top-level loop, where the initial values and the inputs are known at the top level.
        """
        if loop.parent.parent is not None:
            return None
        for state, state_name in loop.state_layers.items():
            v = loop.assigned[state]
            if name == state_name and v.scope is loop and self.captures(self.path(loop, v.op.name)):
                if v is loop.entries.get(state):  # assigned its own previous value: record it (no cycle)
                    return None
                return ("same", self.path(loop, v.op.name))
            entry = loop.entries.get(state)
            if entry is not None and entry.op.name == name and self.captures(self.path(loop, state_name)):
                return ("shifted", self.path(loop, state_name), loop.init[state].op.name)
        op = next((o for o in loop.ops if o.name == name), None)
        if op is None:
            return None
        if op.kind == "unstack" and op.attrs["first"] and op.inputs[0].op.kind == "input" and not loop.bounded:
            return ("input", op.inputs[0].input_name)
        src = op.inputs[0] if op.inputs else None
        if op.kind in ("split", "copy") and src.scope is loop and self.captures(self.path(loop, src.op.name)):
            return ("same", self.path(loop, src.op.name))
        if op.kind == "split_part" and self.captures(self.path(loop, src.op.name)):
            whole = src.op
            return ("part", self.path(loop, whole.name), whole.attrs["dim"], op.attrs["index"], whole.attrs["n"])
        if op.kind in _EXACT_IN_NUMPY and len(op.inputs) == 2 and not any(op.out is v for v in loop.assigned.values()):
            # a float32 sum, difference or product: numpy does the same IEEE operation on the recorded operands
            # (not for a value a State takes: the States' earlier values are derived from it)
            operands = []
            for x in op.inputs:
                if x.dtype != "float32":
                    return None
                if x.scope is loop and self.captures(self.path(loop, x.op.name)):
                    operands.append(self.path(loop, x.op.name))
                elif x.scope.parent is None and x.op.kind != "input":
                    operands.append(x.op.name)
                else:
                    return None
            if not any(x.scope is loop for x in op.inputs):  # the same at every step: recorded, spread over them
                return None
            return ("combine", op.kind, tuple(operands))
        return None

    def state_entry(self, op, scope: Scope) -> dict:
        state = op.attrs["state"]
        if scope.parent is None:  # the top level starts at the initial value
            if "zeros" in op.attrs:
                kind = "logical_or" if state.dtype == "bool" else "add"
                return {"class": "combine", "kind": kind,
                        "from": [self.ref(state.initial, scope), self.ref(op.attrs["zeros"], scope)]}
            if hasattr(state.initial, "op"):
                return {"class": "copy", "from": self.ref(state.initial, scope)}
            dims = sorted(state.dims, key=lambda d: d.order)
            layer = {"class": "constant", "value": state.initial, "dtype": state.dtype,
                     "shape": [self.dim(d) for d in dims], "with_batch_dim": any(d.is_batch for d in dims)}
            if state.sparse_dim is not None:
                layer["sparse_dim"] = self.dim(state.sparse_dim)
            return layer
        if state in scope.assigned:  # carried by this loop: the previous iteration's value
            return {"class": "copy", "from": "prev:" + scope.state_layers[state]}
        return {"class": "copy", "from": self.ref(scope.entry_source[state], scope)}

    def captures(self, path: str) -> bool:
        if self.capture is None:
            return False
        if self.capture == "all":
            return True
        name = path.rsplit("/", 1)[-1]
        return any(fnmatch.fnmatchcase(path, p) or fnmatch.fnmatchcase(name, p) for p in self.capture)

    def perturbations(self, loop) -> dict:
        """State -> (its new value, the layer of that value plus a perturbation): gradients through time are taken
        for the float States of a top-level loop over an input's axis whose new value the step computes."""
        if loop.parent is not self.g.top or not loop.unstacked or loop.bounded or loop.axis.size is not None:
            return {}
        out = {}
        for state in loop.state_layers:
            v = loop.assigned[state]
            if state.dtype == "float32" and v.scope is loop and v.op.kind not in ("state_entry", "unstack") \
                    and all(v is not w for w, _ in out.values()):
                out[state] = (v, self.fresh_name(loop, v.op.name + ".perturbed"))
                self.perturbed[id(v)] = out[state][1]
        return out
