"""The map a trace is read with: which in-loop values are recorded (captured), which are derived from others
instead of recorded, each State's entry, and the perturbation inputs of gradients through time."""
from __future__ import annotations

import fnmatch

from ..language.dims import batch_dim
from ..language.graph import Scope
from .analysis import _EXACT_IN_NUMPY, _derivation_ring


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

    def capture_loop(self, loop, unit: dict, layers: dict, beams: bool, searching: bool) -> list:
        """Mark the unit's layers a trace records (made output layers, so that RETURNN stacks them) and note those
        it derives; returns the (path, unit layer) pairs recorded. ``beams``: a search trace (every hypothesis)."""
        loops = tuple(reversed([s for s in loop.ancestors() if s.is_loop]))
        if beams:  # the scores of every hypothesis at every step, recorded like a layer
            for y in (op for op in loop.ops if op.kind == "choice"):
                unit[f"{y.name}.scores"] = {"class": "choice_get_beam_scores", "from": y.name, "is_output_layer": True}
                self.out.search_layers[self.path(loop, y.name)] = f"{y.name}.scores"
        own = [(op.name, "layer", op.out.dims) for op in loop.ops]
        own += [(name, "state", state.dims) for state, name in loop.state_layers.items()]
        captured = []
        needed = set()  # a search trace always records what its beams are made of: the labels and the end flags
        if beams:
            needed = {op.name for op in loop.ops if op.kind == "choice"}
            needed |= {loop.end_cond.op.name} if loop.end_cond is not None and loop.end_cond.scope is loop else set()
        for name, kind, dims in own:
            path = self.path(loop, name)
            if self.captures(path) or name in needed:
                self.out.trace_info[path] = (kind, dims, loops)
                how = None if beams else self.derived(loop, name)
                if how is None:
                    captured.append((path, name))
                else:
                    self.out.trace_derived[path] = how
        # values derived from each other in a ring (States that swap their values): one of them is recorded
        own_paths = {self.path(loop, name): name for name, _, _ in own}
        while True:
            ring = _derivation_ring({p: h for p, h in self.out.trace_derived.items() if p in own_paths})
            if ring is None:
                break
            del self.out.trace_derived[ring]
            captured.append((ring, own_paths[ring]))
        for i, (path, name) in enumerate(captured):
            op = next((o for o in loop.ops if o.name == name), None)
            if op is None or batch_dim in op.out.dims or searching:  # (searching: its beamed copy has the batch)
                unit[name]["is_output_layer"] = True
            else:
                # RETURNN cannot stack a loop value without the batch dim: record it per sequence, read one back
                captured[i] = (path, self.with_batch(unit, name, op.out.dtype))
                # kept in the loop: RETURNN fails to accumulate a value without the batch dim that it moved out
                layers[loop.name]["optimize_move_layers_out"] = False
        return captured

    def emit_perturbations(self, loop, unit: dict) -> None:
        """Each perturbed State's new value plus a perturbation fed as zeros, read by everything that reads the
        value (in this step and, through the State, in the next): the gradient of a loss with respect to the
        perturbation at step t is exactly the gradient with respect to the State's value of step t."""
        for state, (v, name) in self.perturbed_states.get(loop, {}).items():
            key = "grad." + loop.state_layers[state]
            dims = sorted(state.dims, key=lambda d: d.order)
            self.out.extern_data[key] = {"dim_tags": [self.dim(dims[0]), self.dim(loop.rec_axis)]
                                         + [self.dim(d) for d in dims[1:]], "dtype": "float32",
                                         "available_for_inference": True}
            unit[name + ".delta"] = {"class": "gather", "from": "base:data:" + key,
                                     "axis": self.dim(loop.rec_axis), "position": ":i"}
            unit[name] = {"class": "combine", "kind": "add", "from": [v.op.name, name + ".delta"]}
            self.out.perturb[self.path(loop, loop.state_layers[state])] = (key, state, loop)

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
