"""Emission: the graph of ops -> a RETURNN net dict, plus the maps the debugger and errors need."""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from . import _tf_env  # noqa: F401  (before TensorFlow is imported)

from returnn.tensor import Dim as ReturnnDim
from returnn.tensor import batch_dim as returnn_batch_dim

from ..language.dims import Dim, batch_dim
from ..language.graph import Graph, Scope
from .stepnet import REF_KEYS, layer_refs as _refs, readers_of

_ARITH = ("add", "sub", "mul", "truediv")
_EXACT_IN_NUMPY = ("add", "sub", "mul")  # correctly rounded in float32 by numpy as by TensorFlow
_COMPARE = ("equal", "not_equal", "less", "less_equal", "greater", "greater_equal")
_EVAL_SYMBOL = {"add": "+", "sub": "-", "mul": "*", "truediv": "/"}


@dataclass
class Emitted:
    """A net dict and its maps; one per build, since RETURNN attaches run-time sizes to its Dim objects."""

    net: dict
    extern_data: dict
    dims: dict  # rd.Dim -> RETURNN Dim
    layer_of: dict = field(default_factory=dict)  # Tensor -> layer path ("loop/h")
    lines: dict = field(default_factory=dict)  # layer path -> SourceLine of the user's code
    fetch: dict = field(default_factory=dict)  # top-level Tensor -> layer name
    rec_paths: dict = field(default_factory=dict)  # Loop -> path of its rec layer
    state_layers: dict = field(default_factory=dict)  # State -> paths of its state layers (one per owning loop)
    decided: dict = field(default_factory=dict)  # top-level Tensor -> its best-hypothesis layer (with rd.choice)
    trace_fetch: dict = field(default_factory=dict)  # in-loop layer path -> top-level layer with all its steps
    trace_info: dict = field(default_factory=dict)  # in-loop layer path -> (kind, dims, loops outermost first)
    search_layers: dict = field(default_factory=dict)  # choice layer path -> its per-step beam scores layer
    # Values a trace derives instead of recording them again (path -> how), see _Emitter.derived():
    trace_derived: dict = field(default_factory=dict)
    after_choice: set = field(default_factory=set)  # in-loop layer paths computed from an rd.choice in their step
    trace_unbatched: set = field(default_factory=set)  # in-loop layer paths without the batch dim, recorded with it
    # In a searching loop: layer path -> the unit layer read for it, with the search's beam (see give_beam)
    beam_alias: dict = field(default_factory=dict)
    # With perturb: State layer path -> (extern data key of its zero perturbation [batch, axis, ...], State, Loop)
    perturb: dict = field(default_factory=dict)

    def rd_dim(self, returnn_dim) -> Dim | None:
        if returnn_dim.is_batch_dim():
            from ..language.dims import batch_dim

            return batch_dim
        for d, rdim in self.dims.items():
            if rdim == returnn_dim:
                return d
        return None


class _Emitter:
    def __init__(self, g: Graph, optimize: bool, capture=None, search: bool = False, perturb: bool = False):
        self.g = g
        self.search = search
        self.perturb = perturb
        self.perturbed: dict = {}  # id(Tensor) -> the layer of its value plus a perturbation (see perturbations)
        self.perturbed_states: dict = {}  # Loop -> perturbations(loop)
        self.optimize = optimize
        self.capture = capture
        self.taken: dict = {}  # id(scope) -> layer names in use (trace exports are named against it)
        self.dims: dict = {}
        self.out = Emitted(net={}, extern_data={}, dims=self.dims)
        self.collocate: dict = {}  # (id(loop), layer name) -> names of inner rec layers that use it
        self.static_inputs: dict = {}  # unstack op over a static dim -> its input with the loop's dynamic steps
        self.static_ranges: dict = {}  # Loop over a static dim -> layer of positions 0..size-1 along that dim
        self.bound_names: dict = {}  # bounded Loop -> its scalar layer of the most steps (max_seq_len_via)
        # loop.index op -> its layer of zeros {batch} (the index is one per sequence); unstack op of a while loop
        # -> its position layer (the step, per sequence)
        self.index_zeros: dict = {}
        self.step_zeros: dict = {}  # (id(loop), dtype) -> its layer of a zero computed from the step

    def dim(self, d: Dim):
        if d.is_batch:
            return returnn_batch_dim
        if d not in self.dims:
            kind = ReturnnDim.Types.Spatial if d.size is None else ReturnnDim.Types.Feature
            self.dims[d] = ReturnnDim(d.size, name=d.name, kind=kind)
        return self.dims[d]

    def ref(self, t, frm: Scope) -> str:
        """How a layer in scope ``frm`` names the layer of tensor ``t`` (``base:`` per level up)."""
        assert t.scope.contains(frm), (t, frm)
        base = f"data:{t.op.name}" if t.op.kind == "input" else self.perturbed.get(id(t), t.op.name)
        if t.scope.is_loop and frm is not t.scope:
            # An enclosing loop's layer used by an inner loop must stay in that enclosing loop: RETURNN's nested
            # rec layer looks it up there, and would not find it if it had been moved out.
            child = next(s for s in frm.ancestors() if s.parent is t.scope)
            self.collocate.setdefault((id(t.scope), t.op.name), set()).add(child.name)
        return "base:" * (frm.depth - t.scope.depth) + base

    def path(self, scope: Scope, name: str) -> str:
        parts = [s.name for s in reversed(list(scope.ancestors())) if s.is_loop]
        return "/".join(parts + [name])

    def emit_scope(self, scope: Scope, layers: dict):
        for loop in scope.children:
            if loop.axis.size is not None:
                self.static_axis(loop, layers)
        for op in scope.ops:
            if op.kind == "input":
                inp = op.out
                ed = {"dim_tags": [self.dim(d) for d in inp.order], "dtype": inp.dtype,
                      "available_for_inference": True}
                if inp.sparse_dim is not None:
                    ed["sparse_dim"] = self.dim(inp.sparse_dim)
                self.out.extern_data[op.name] = ed
                self.out.layer_of[op.out] = f"data:{op.name}"
                continue
            if op.kind == "choice":
                self.emit_choice_input(op, scope, layers)
            if op.kind == "index":
                self.index_zeros[op] = self.fresh_name(scope, op.name + ".zeros")
                layers[self.index_zeros[op]] = {"class": "constant", "value": 0, "dtype": "int32",
                                                "shape": [returnn_batch_dim], "with_batch_dim": True}
            if op.kind == "unstack" and scope.is_loop and scope.bounded:
                # the frame of step t of each sequence: a position with the batch dim (one without it fails to
                # broadcast against the lengths once RETURNN moves the gather out of the loop)
                zeros = self.fresh_name(scope, op.name + ".zeros")
                layers[zeros] = {"class": "constant", "value": 0, "dtype": "int32", "shape": [returnn_batch_dim],
                                 "with_batch_dim": True}
                self.index_zeros[op] = self.fresh_name(scope, op.name + ".position")
                layers[self.index_zeros[op]] = {"class": "combine", "kind": "add", "from": [":i", zeros]}
            layer = self.layer(op, scope)
            if scope.parent is None:
                layer["is_output_layer"] = True
                self.out.fetch[op.out] = op.name
                if self.searched(op):  # with search, one entry per hypothesis: the best one is the result
                    name = self.fresh_name(scope, op.name + ".best")
                    layers[name] = {"class": "decide", "from": op.name, "length_normalization": False,
                                    "is_output_layer": True}
                    self.out.decided[op.out] = name
            layers[op.name] = layer
            self.out.layer_of[op.out] = self.path(scope, op.name)
            if op.line is not None:
                self.out.lines[self.path(scope, op.name)] = op.line
        captured = []
        for loop in scope.children:
            searching = self.search and any(op.kind == "choice" for op in loop.ops)  # as Engine._beam_fetches
            for key, name in self.emit_loop(loop, layers):
                if searching and scope.parent is None:
                    continue  # a searching loop's trace reads RETURNN's per-step accumulators (Engine.trace)
                export = self.fresh_name(scope, "trace." + key.replace("/", "."))
                layers[export] = {"class": "copy", "from": f"{loop.name}/{name}", "is_output_layer": True}
                if scope.parent is None:
                    self.out.trace_fetch[key] = export
                else:  # keep it next to the inner loop: RETURNN cannot stack it after moving it out
                    layers[export]["collocate_with"] = [loop.name]
                    captured.append((key, export))
        return captured

    def searched(self, op) -> bool:
        """Whether a top-level op is the result of a loop that contains an rd.choice."""
        loop = op.attrs.get("after_loop")
        return loop is not None and any(loop.contains(y.scope) for y in self.g.choices)

    def emit_choice_input(self, op, scope: Scope, layers: dict):
        """The log-probabilities RETURNN's choice layer takes, and the extern data of its reference labels."""
        a = op.attrs
        src = self.ref(op.inputs[0], scope)
        if a["input_type"] == "logits":
            layers[a["log_prob_name"]] = {"class": "activation", "activation": "log_softmax", "from": src}
        elif a["input_type"] == "prob":
            layers[a["log_prob_name"]] = {"class": "activation", "activation": "safe_log", "from": src}
        else:
            layers[a["log_prob_name"]] = {"class": "copy", "from": src}
        self.out.extern_data[a["target_key"]] = {
            "dim_tags": [returnn_batch_dim, self.dim(a["label_time"])], "sparse_dim": self.dim(a["vocab"]),
            "dtype": "int32", "available_for_inference": False}

    def fresh_name(self, scope: Scope, base: str) -> str:
        taken = self.taken.setdefault(id(scope), set(scope.names))
        name, i = base, 2
        while name in taken:
            name, i = f"{base}_{i}", i + 1
        taken.add(name)
        return name

    def captures(self, path: str) -> bool:
        if self.capture is None:
            return False
        if self.capture == "all":
            return True
        name = path.rsplit("/", 1)[-1]
        return any(fnmatch.fnmatchcase(path, p) or fnmatch.fnmatchcase(name, p) for p in self.capture)

    def emit_loop(self, loop, layers: dict) -> list:
        """Emit the rec layer of ``loop`` into ``layers``; returns the (path, unit layer) pairs to trace."""
        unit: dict = {}
        perturbed = self.perturbed_states.get(loop, {})
        exported = self.emit_scope(loop, unit)
        for state, (v, name) in perturbed.items():
            # the State's new value plus a perturbation fed as zeros, read by everything that reads the value (in
            # this step and, through the State, in the next): the gradient of a loss with respect to the
            # perturbation at step t is exactly the gradient with respect to the State's value of step t
            key = "grad." + loop.state_layers[state]
            dims = sorted(state.dims, key=lambda d: d.order)
            self.out.extern_data[key] = {"dim_tags": [self.dim(dims[0]), self.dim(loop.rec_axis)]
                                         + [self.dim(d) for d in dims[1:]], "dtype": "float32",
                                         "available_for_inference": True}
            unit[name + ".delta"] = {"class": "gather", "from": "base:data:" + key,
                                     "axis": self.dim(loop.rec_axis), "position": ":i"}
            unit[name] = {"class": "combine", "kind": "add", "from": [v.op.name, name + ".delta"]}
            self.out.perturb[self.path(loop, loop.state_layers[state])] = (key, state, loop)
        for (scope_id, name), recs in self.collocate.items():
            if scope_id == id(loop):
                unit[name]["collocate_with"] = sorted(recs)
        for state, name in loop.state_layers.items():
            v = loop.assigned[state]
            layer = {"class": "copy", "from": self.ref(v, loop), "is_output_layer": True}
            # the value plus zeros of the State's dims: RETURNN guesses the dims of a State's previous value from
            # the value, which may lack some (e.g. no batch dim when only States feed it). A label State gets the
            # zeros added to plain ints before they are marked as labels, when its value is made of ints or not
            # computed in the loop's own step (RETURNN would not stack it); a label picked in the step (rd.choice,
            # a frame of labels) is taken as it is.
            labels = state.sparse_dim is not None
            made_labels = labels and v.op.kind == "sparse" and v.scope is loop
            outside = labels and not made_labels and (v.scope is not loop or v.op.kind == "state_entry")
            if not labels or made_labels or outside:
                zeros = self.fresh_name(loop, name + ".zeros")
                dims = sorted(state.dims, key=lambda d: d.order)
                unit[zeros + ".const"] = {
                    "class": "constant", "value": False if state.dtype == "bool" else 0, "dtype": state.dtype,
                    "shape": [self.dim(d) for d in dims], "with_batch_dim": True}
                # zeros of this step: RETURNN takes a layer that depends on no step of its loop for the same at
                # every step and may not stack it (a State assigned a value from outside its loop)
                unit[zeros] = {"class": "combine", "kind": "logical_or" if state.dtype == "bool" else "add",
                               "from": [zeros + ".const", self.step_zero(loop, unit, state.dtype)]}
                source = self.ref(v.op.inputs[0] if made_labels else v, loop)
                if outside:
                    ints = self.fresh_name(loop, name + ".ints")
                    unit[ints] = {"class": "reinterpret_data", "from": [source], "set_sparse": False}
                    source = ints
                layer = {"class": "combine", "kind": "logical_or" if state.dtype == "bool" else "add",
                         "from": [source, zeros], "is_output_layer": True}
                if labels:
                    dense = self.fresh_name(loop, name + ".dense")
                    unit[dense], layer = layer, {
                        "class": "reinterpret_data", "from": [dense], "set_sparse": True,
                        "set_sparse_dim": self.dim(state.sparse_dim), "is_output_layer": True}
            layer["initial_output"] = self.initial(loop, state)
            unit[name] = layer
            self.out.lines[self.path(loop, name)] = loop.assign_lines[state]
            self.out.state_layers.setdefault(state, []).append(self.path(loop, name))
        for v in loop.exports:
            unit[self.perturbed.get(id(v), v.op.name)]["is_output_layer"] = True
        if loop.bounded:
            unit["end.bound"] = {"class": "compare", "kind": "greater_equal",
                                 "from": [":i", "base:" + self.bounds(loop, layers)]}
        if loop.end_cond is not None and loop.bounded:
            unit["end"] = {"class": "combine", "kind": "logical_or",
                           "from": [self.ref(loop.end_cond, loop), "end.bound"]}
        elif loop.bounded:
            unit["end"] = {"class": "copy", "from": "end.bound"}
        elif loop.end_cond is not None:
            unit["end"] = {"class": "copy", "from": self.ref(loop.end_cond, loop)}
            if not loop.end_cond.dims:  # RETURNN needs one end flag per sequence
                unit["end.batch"] = {"class": "constant", "value": False, "dtype": "bool",
                                     "shape": [returnn_batch_dim], "with_batch_dim": True}
                unit["end"] = {"class": "combine", "kind": "logical_or",
                               "from": [self.ref(loop.end_cond, loop), "end.batch"]}
        choices = [op.name for op in loop.ops if op.kind == "choice"]
        if choices:  # values per new hypothesis (the rest are per hypothesis of the previous step)
            after = readers_of(unit, set(unit), set(choices))
            self.out.after_choice |= {self.path(loop, name) for name in after}
        if choices:  # the rec layer's own output: the labels it searches over
            unit["output"] = {"class": "copy", "from": choices[0]}
        elif any(reads_inner_loop(loop, loop.assigned[state]) for state in loop.state_layers):
            # RETURNN works out the unit's shapes starting from "output": starting from a State that other States
            # and an inner loop depend on, it fails (a dependency loop); starting from a State made from an inner
            # loop's result, it finds them all
            unit["output"] = {"class": "copy", "from": next(
                name for state, name in loop.state_layers.items() if reads_inner_loop(loop, loop.assigned[state]))}
        else:  # a State, or a value without other dynamic dims (RETURNN loses the loop's lengths of an output
            # with another dynamic dim)
            plain = [v.op.name for v in loop.exports if not any(d.is_dynamic and not d.is_batch for d in v.dims)]
            if loop.state_layers or plain or not loop.exports:
                unit["output"] = {"class": "copy", "from": (list(loop.state_layers.values()) + plain
                                                            + [loop.ops[-1].name])[0]}
            else:  # zeros carried from step to step (a layer RETURNN keeps in the loop)
                zeros = self.fresh_name(loop, "output.zeros")
                unit[zeros] = {"class": "constant", "value": 0, "dtype": "int32", "shape": [returnn_batch_dim],
                               "with_batch_dim": True}
                unit["output"] = {"class": "combine", "kind": "add", "from": ["prev:output", zeros],
                                  "initial_output": 0}
        # A loop with loops inside stays unoptimized itself (its inner loops are still optimized): when RETURNN
        # moves an outer layer out, it may need to stack an inner loop's sub-layer, which it cannot do reliably.
        # An inner loop over an input stays unoptimized: a frame layer moved out of it reads the outer loop's frame;
        # a traced inner loop too: the outer loop cannot stack a traced value that RETURNN moved out of it.
        # A while loop over an input's frames too: RETURNN moves the frame's gather out but not its position.
        # A search trace reads every layer's values per hypothesis from the loop's step accumulators: it keeps
        # every layer in the loop (a moved-out layer has no such accumulator).
        beams = self.search and self.capture is not None and any(op.kind == "choice" for op in loop.ops)
        # A searching loop keeps every layer in it: RETURNN's search fails on a layer it moved out of the loop
        # that reads one still in it (it accumulates that one without the search's beam context).
        rec = {"class": "rec", "from": [], "axis": self.dim(loop.rec_axis), "unit": unit,
               "optimize_move_layers_out": self.optimize and not loop.children and not beams
               and not (self.search and choices)
               and not moving_out_fails(loop) and not (loop.parent.is_loop and (loop.unstacked or self.capture))
               and not (loop.bounded and loop.unstacked)}
        if loop.bounded:
            rec["max_seq_len_via"] = self.bound_names[loop]
            rec["include_eos"] = bool(loop.include_eos)
        elif loop.unstacked:
            first = loop.unstacked[0].op.inputs[0]
            rec["from"] = self.static_inputs.get(loop.unstacked[0].op) or self.ref(first, loop.parent)
            if choices:  # else RETURNN's search takes a sequence's end one frame late and scores a padding frame
                rec["include_eos"] = True
        else:
            rec["max_seq_len"] = loop.max_seq_len
            rec["include_eos"] = bool(loop.include_eos)
        layers[loop.name] = rec
        self.out.rec_paths[loop] = self.path(loop.parent, loop.name)
        self.out.lines[self.path(loop.parent, loop.name)] = loop.line
        layers[loop.len_name] = {"class": "length", "from": loop.name, "axis": self.dim(loop.rec_axis)}
        if not loop.parent.is_loop:  # fetched by every run (the loop's lengths)
            layers[loop.len_name]["is_output_layer"] = True
        layers[loop.last_index_name] = {"class": "eval", "from": loop.len_name, "eval": "source(0) - 1"}
        if loop.state_finals:
            layers[loop.nonempty_name] = {"class": "compare", "kind": "greater", "from": loop.len_name, "value": 0}
        for state, name in loop.state_finals.items():
            layers[name] = self.gather_last(loop, loop.state_layers[state])
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
            if op is None or batch_dim in op.out.dims:
                unit[name]["is_output_layer"] = True
            else:
                # RETURNN cannot stack a loop value without the batch dim: record it per sequence, read one back
                captured[i] = (path, self.with_batch(unit, name, op.out.dtype))
                self.out.trace_unbatched.add(path)
                # kept in the loop: RETURNN fails to accumulate a value without the batch dim that it moved out
                layers[loop.name]["optimize_move_layers_out"] = False
        if choices and self.search:
            captured = self.give_beam(loop, unit, layers, captured)
        return captured + exported

    def give_beam(self, loop, unit: dict, layers: dict, captured: list) -> list:
        """In a searching loop, RETURNN accumulates a layer read after the loop (stacked, a State's final value, a
        trace) per hypothesis, with the end flags' lengths: it fails on one without the search's beam. Each such
        layer is read through a copy given the beam by adding a zero of every hypothesis (prev:output, the labels of
        the previous step). Returns ``captured`` with the copies' names."""
        # the layers whose values are per hypothesis: RETURNN gives the search's beam to a layer that reads a choice
        # (the loop's output is one), or the previous value of a layer that has the beam; the others (a State no
        # label reaches, the step index) are the same for every hypothesis
        beamed = {"output"} | {op.name for op in loop.ops if op.kind == "choice"}
        while True:
            carried = {n for n in unit if any(str(r).startswith("prev:") and str(r)[5:] in beamed
                                              for r in _refs(unit[n]))}
            grown = readers_of(unit, set(unit), beamed | carried)
            if grown <= beamed:
                break
            beamed |= grown
        alias = {}
        for name in list(unit):
            if not unit[name].get("is_output_layer") or name in beamed:
                continue
            dtype = self.unit_dtype(loop, unit, name)
            zero = self.fresh_name(loop, name + ".beam_zero")
            unit[zero] = {"class": "eval", "from": "prev:output", "out_type": {"dtype": dtype},
                          "eval": f"tf.zeros_like(source(0), dtype=tf.{dtype})"}
            alias[name] = self.fresh_name(loop, name + ".beam")
            unit[alias[name]] = {"class": "combine", "kind": "logical_or" if dtype == "bool" else "add",
                                 "from": [name, zero], "allow_broadcast_all_sources": True, "is_output_layer": True}
            unit[name].pop("is_output_layer")  # read from outside through the beamed one only
            self.out.beam_alias[self.path(loop, name)] = alias[name]
        if not alias:
            return captured
        unit["output"]["initial_output"] = 0  # read as prev:output at step 0 by the beam zeros
        prefix = loop.name + "/"

        def beamed_ref(ref):
            name = ref[len(prefix):] if isinstance(ref, str) and ref.startswith(prefix) else None
            return prefix + alias[name] if name in alias else ref

        for layer in layers.values():  # stack, last and State finals after the loop read the beamed value
            for key in REF_KEYS:
                if key in layer:
                    value = layer[key]
                    layer[key] = [beamed_ref(v) for v in value] if isinstance(value, list) else beamed_ref(value)
        return [(path, alias.get(name, name)) for path, name in captured]

    def unit_dtype(self, loop, unit: dict, name: str) -> str:
        """The dtype of the unit layer ``name`` that recdebug emitted for an op or a State of ``loop``."""
        for state, layer in loop.state_layers.items():
            if layer == name:
                return state.dtype
        base = name[:-len(".per_sequence")] if name.endswith(".per_sequence") else name
        for op in loop.ops:
            if base in (op.name, self.perturbed.get(id(op.out))):
                return op.out.dtype
        dtype = unit[name].get("dtype") or unit[name].get("out_type", {}).get("dtype")
        if dtype is None:
            raise AssertionError(f"no dtype known for the unit layer {name!r}")
        return dtype

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

    def step_zero(self, loop, unit: dict, dtype: str) -> str:
        """A layer of ``loop``'s unit: a zero (False) of ``dtype`` computed from the step index."""
        key = (id(loop), dtype)
        name = self.step_zeros.get(key)
        if name is None:
            name = self.step_zeros[key] = self.fresh_name(loop, f"step.zero.{dtype}")
            unit[name] = {"class": "eval", "from": ":i", "eval": f"tf.zeros_like(source(0), dtype=tf.{dtype})",
                          "out_type": {"dtype": dtype}}
        return name

    def with_batch(self, unit: dict, name: str, dtype: str) -> str:
        """A layer of ``unit`` that is the layer ``name`` broadcast over the batch (same values per sequence)."""
        const = name + ".batch_zero"
        unit[const] = {"class": "constant", "value": False if dtype == "bool" else 0, "dtype": dtype,
                       "shape": [returnn_batch_dim], "with_batch_dim": True}
        unit[name + ".per_sequence"] = {"class": "combine", "kind": "logical_or" if dtype == "bool" else "add",
                                        "from": [name, const], "is_output_layer": True}
        return name + ".per_sequence"

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

    def initial(self, loop, state):
        """The layer RETURNN's ``initial_output`` of a carried State reads: its first value (RETURNN also takes the
        State's dims and dtype from it, which a plain number would not give).

        For a loop inside a loop whose value before the inner loop is the State's initial number, that is the
        top-level initial layer; else the value in the enclosing unit (a loop with loops inside is never
        optimized, so the inner unit always finds that layer there).
        """
        init = loop.init[state]
        while init.op.kind == "state_entry" and init.scope.is_loop and state not in init.scope.assigned:
            init = init.scope.entry_source[state]  # an enclosing loop that only passes the value through
        if init.op.kind == "state_entry" and init.scope.parent is None:
            return self.ref(init, loop)
        return self.ref(loop.init[state], loop)

    def bounds(self, loop, layers: dict) -> str:
        """A bounded loop's per-sequence bound, as layers of the enclosing scope: ``<loop>.steps_max`` (the most
        steps, RETURNN's max_seq_len) and the step from which the loop's end flag is set (returned)."""
        parent = loop.parent
        parts = []
        if loop.unstacked:
            x = loop.unstacked[0].op
            name = self.fresh_name(parent, f"{loop.name}.frames")
            layers[name] = {"class": "length", "from": self.ref(x.inputs[0], parent), "axis": self.dim(x.attrs["axis"])}
            parts.append(name)
        if hasattr(loop.max_seq_len, "op"):
            parts.append(self.ref(loop.max_seq_len, parent))
        limit = self.fresh_name(parent, f"{loop.name}.steps_limit")
        with_batch = {"class": "constant", "value": 2**31 - 1, "dtype": "int32", "shape": [returnn_batch_dim],
                      "with_batch_dim": True}
        layers[limit + ".batch"] = with_batch  # a bound without the batch dim holds for every sequence
        bound = {"class": "combine", "kind": "minimum", "from": parts + [limit + ".batch"]}
        if isinstance(loop.max_seq_len, int):
            bound = {"class": "eval", "from": [limit + ".min"], "eval": f"tf.minimum(source(0), {loop.max_seq_len})"}
            layers[limit + ".min"] = {"class": "combine", "kind": "minimum", "from": parts + [limit + ".batch"]}
        layers[limit] = bound
        self.bound_names[loop] = self.fresh_name(parent, f"{loop.name}.steps_max")
        layers[self.bound_names[loop]] = {"class": "reduce", "mode": "max", "from": limit, "axis": "B"}
        stop = self.fresh_name(parent, f"{loop.name}.stop_at")
        # with include_eos the frame where the end flag is set is kept: set it on the last step, else after it
        layers[stop] = {"class": "eval", "from": limit, "eval": "source(0) - 1"} if loop.include_eos else \
            {"class": "copy", "from": limit}
        return stop

    def static_axis(self, loop, layers: dict) -> None:
        """A loop over a static dim: its inputs with that dim replaced by a dynamic dim of the same size (every
        sequence that long), which RETURNN's rec layer can iterate over; ``stack`` gathers the static dim back."""
        axis, steps = loop.axis, loop.rec_axis
        top = self.out.net  # the steps' dim is made once, at the top level (also for a loop inside a loop)
        length = self.fresh_name(self.g.top, f"{loop.name}.steps")
        top[length] = {"class": "constant", "value": axis.size, "dtype": "int32", "shape": [returnn_batch_dim],
                       "with_batch_dim": True}
        steps_range = self.fresh_name(self.g.top, f"{loop.name}.steps_range")
        top[steps_range] = {"class": "range_from_length", "from": length, "out_spatial_dim": self.dim(steps)}
        steps_range = "base:" * loop.parent.depth + steps_range
        for t in loop.unstacked:
            name = self.fresh_name(loop.parent, f"{loop.name}.{t.op.name}.frames")
            layers[name] = {"class": "gather", "from": self.ref(t.op.inputs[0], loop.parent), "axis": self.dim(axis),
                            "position": steps_range}
            self.static_inputs[t.op] = name
        self.static_ranges[loop] = self.fresh_name(loop.parent, f"{loop.name}.positions")
        layers[self.static_ranges[loop]] = {"class": "range", "limit": axis.size, "out_spatial_dim": self.dim(axis),
                                            "dtype": "int32"}

    def gather_last(self, loop, layer_name: str) -> dict:
        return {"class": "gather", "from": f"{loop.name}/{layer_name}", "axis": self.dim(loop.rec_axis),
                "position": loop.last_index_name, "clip_to_valid": True}

    def layer(self, op, scope: Scope) -> dict:
        k, a = op.kind, op.attrs
        src = [self.ref(t, scope) for t in op.inputs]
        if k in _ARITH and len(src) == 2:  # (each source may lack some dims of the other: moved out of the loop,
            # both may, e.g. a State read after the loop's steps and an input with a dim of its own)
            return {"class": "combine", "kind": k, "from": src, "allow_broadcast_all_sources": True}
        if k in _ARITH:
            expr = f"{a['scalar']!r} {_EVAL_SYMBOL[k]} source(0)" if a["scalar_first"] else \
                f"source(0) {_EVAL_SYMBOL[k]} {a['scalar']!r}"
            return {"class": "eval", "from": src, "eval": expr}
        if k in _COMPARE:
            if len(src) == 2:
                return {"class": "compare", "kind": k, "from": src, "allow_broadcast_all_sources": True}
            return {"class": "compare", "kind": k, "from": src, "value": a["scalar"]}
        if k in ("logical_and", "logical_or"):
            return {"class": "combine", "kind": k, "from": src, "allow_broadcast_all_sources": True}
        if k == "activation":
            return {"class": "activation", "activation": a["activation"], "from": src}
        if k == "param":
            param = a["param"]
            module_path = param.path(self.g).rsplit("/", 1)[0]
            return {"class": "variable", "shape": [self.dim(d) for d in param.dims], "dtype": param.dtype,
                    "name_scope": "/" + module_path, "param_name": param.attr}
        if k == "dot":
            red_x, red_w = a["reduce"]
            return {"class": "dot", "from": src, "red1": self.dim(red_x), "red2": self.dim(red_w),
                    "var1": "auto", "var2": "auto"}
        if k == "split":
            return {"class": "split", "from": src, "axis": self.dim(a["dim"]),
                    "out_dims": [self.dim(a["part"])] * a["n"]}
        if k == "split_part":
            return {"class": "copy", "from": f"{src[0]}/{a['index']}"}
        if k == "concat":
            return {"class": "concat", "from": [(s, self.dim(d)) for s, d in zip(src, a["dims"])],
                    "out_dim": self.dim(a["out_dim"])}
        if k == "constant":
            dims = op.out.dims
            shape = [self.dim(d) for d in sorted(dims, key=lambda d: d.order)]
            return {"class": "constant", "value": a["value"], "shape": shape, "dtype": op.out.dtype,
                    "with_batch_dim": any(d.is_batch for d in dims)}
        if k == "softmax":
            return {"class": "softmax_over_spatial", "from": src, "axis": self.dim(a["dim"]), "log_space": a["log"]}
        if k == "where":
            # tf.where over the sources made alike (RETURNN's switch layer hides its inputs from the loop's shape
            # inference, which then fails on States that read each other through it)
            sources, dtype = [src[0]], op.out.dtype

            def branch(number, at):
                if number is not None:
                    return f"tf.constant({number!r}, dtype=tf.{dtype})"
                sources.append(src[at])
                return f"source({len(sources) - 1})"

            true = branch(a["true_value"], 1)
            false = branch(a["false_value"], len(sources))
            layer = {"class": "eval", "from": sources, "eval": f"tf.where(source(0), {true}, {false})",
                     "out_type": {"dtype": dtype}}
            if len(sources) > 1:  # (a branch's template may lack a dim of the condition, e.g. while searching)
                layer["allow_broadcast_all_sources"] = True
            return layer
        if k == "gather":
            return {"class": "gather", "from": src[0], "position": src[1], "axis": self.dim(a["dim"]),
                    "clip_to_valid": True}
        if k == "dropout":
            return {"class": "dropout", "from": src, "dropout": a["rate"], "dropout_noise_shape": {"*": None}}
        if k == "reduce":
            return {"class": "reduce", "mode": a["mode"], "from": src, "axis": self.dim(a["dim"])}
        if k == "sparse":
            if a["sparse_dim"] is None:
                return {"class": "reinterpret_data", "from": src, "set_sparse": False}
            return {"class": "reinterpret_data", "from": src, "set_sparse": True,
                    "set_sparse_dim": self.dim(a["sparse_dim"])}
        if k == "cast":
            return {"class": "cast", "from": src, "dtype": a["dtype"]}
        if k == "copy":
            return {"class": "copy", "from": src}
        if k == "embed":
            return {"class": "gather", "from": src[0], "position": src[1], "axis": self.dim(a["vocab"])}
        if k == "index":  # one per sequence: RETURNN cannot accumulate a loop value without the batch dim
            return {"class": "combine", "kind": "add", "from": [":i", self.index_zeros[op]]}
        if k == "choice":
            return {"class": "choice", "from": a["log_prob_name"], "input_type": "log_prob",
                    "beam_size": a["beam_size"], "target": a["target_key"], "length_normalization": False}
        if k == "unstack":
            if scope.bounded:  # a while loop: frame t of the input, clipped to its frames
                return {"class": "gather", "from": src[0], "axis": self.dim(a["axis"]),
                        "position": self.index_zeros[op], "clip_to_valid": True}
            if a["first"]:
                return {"class": "copy", "from": "data:source"}
            if op in self.static_inputs:
                return {"class": "gather", "from": "base:" + self.static_inputs[op], "axis": self.dim(scope.rec_axis),
                        "position": ":i"}
            return {"class": "gather", "from": src[0], "axis": self.dim(a["axis"]), "position": ":i"}
        if k == "state_entry":
            return self.state_entry(op, scope)
        if k == "state_final":  # the last frame, or for an empty sequence the value before the loop
            loop, state = a["loop"], a["state"]
            return {"class": "switch", "condition": loop.nonempty_name, "true_from": loop.state_finals[state],
                    "false_from": self.ref(loop.init[state], scope)}
        if k == "stack":
            loop = a["loop"]
            if loop in self.static_ranges:  # back from the rec layer's dynamic steps to the static dim
                return {"class": "gather", "from": f"{loop.name}/{a['value'].op.name}",
                        "axis": self.dim(loop.rec_axis), "position": self.static_ranges[loop]}
            return {"class": "copy", "from": f"{loop.name}/{self.perturbed.get(id(a['value']), a['value'].op.name)}"}
        if k == "last":
            return self.gather_last(a["loop"], self.perturbed.get(id(a["value"]), a["value"].op.name))
        raise NotImplementedError(f"no RETURNN layer for op kind {k!r}")

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


# The op kinds whose layer RETURNN moves out of a loop when its inputs are: all but those reading the step
# (index, unstack, choice, a carried State, an inner loop); dropout too (it draws one mask for every step then)
_PURE = frozenset({
    "dropout", "add", "sub", "mul", "truediv", "equal", "not_equal", "less", "less_equal", "greater", "greater_equal",
    "logical_and", "logical_or", "activation", "softmax", "where", "gather", "reduce", "cast", "concat", "split",
    "split_part", "dot", "embed", "constant", "sparse", "copy"})


def reads_inner_loop(loop, v) -> bool:
    """Whether ``v`` (a value of ``loop``'s step) is made from a result of a loop inside ``loop``."""
    seen, todo = set(), [v.op]
    while todo:
        op = todo.pop()
        if op in seen or op.scope is not loop:
            continue
        seen.add(op)
        if op.attrs.get("loop") not in (None, loop):  # a stack, last or State after an inner loop
            return True
        todo.extend(x.op for x in op.inputs)
    return False


def _derivation_ring(derived: dict):
    """A path of ``derived`` (path -> how) that derives, through others, from itself; None when there is none."""
    for start in derived:
        seen, todo = set(), [start]
        while todo:
            for src in derived_from(derived[todo.pop()]):
                if src == start:
                    return start
                if src in derived and src not in seen:
                    seen.add(src)
                    todo.append(src)
    return None


def moving_out_fails(loop) -> bool:
    """Whether RETURNN's optimization would fail on this loop, which then runs unoptimized (same results):
    it cannot read back per step a stacked or last value that is the same at every step (it moves it out without
    the loop's axis), and its concat does not broadcast a value from outside the loop once moved out."""
    invariant: set = set()
    for op in loop.ops:  # in creation order: inputs first
        if op.kind in _PURE and all(not loop.contains(x.scope) or x.op in invariant for x in op.inputs):
            invariant.add(op)
    if any(v.op in invariant for v in loop.exports):
        return True
    return any(op.kind == "concat" and any(not loop.contains(x.scope) or x.op in invariant for x in op.inputs)
               for op in loop.ops)


def emit(g: Graph, optimize: bool = True, capture=None, search: bool = False, perturb: bool = False) -> Emitted:
    """The RETURNN net dict of ``g`` (``optimize``: let RETURNN move layers out of loops).

    ``capture``: None, "all", or name patterns of in-loop layers whose every step is exposed at the top level.
    ``search``: the net runs beam search (a trace then reads every hypothesis of every step, see Engine.trace).
    """
    e = _Emitter(g, optimize, capture, search, perturb)
    if perturb:  # before anything refers to the values they perturb (stack and last after the loop too)
        e.perturbed_states = {loop: e.perturbations(loop) for loop in g.top.children}
    e.emit_scope(g.top, e.out.net)
    return e.out


def derived_from(how) -> tuple:
    """The trace entries a derived value is computed from."""
    if how[0] in ("same", "part", "shifted"):
        return (how[1],)
    if how[0] == "combine":
        return tuple(how[2])
    return ()
