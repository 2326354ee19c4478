"""Emission: the graph of ops -> a RETURNN net dict, plus the maps the debugger and errors need. The emitter walks
the graph's scopes here; what it writes for an op (``layer_dicts``), a loop (``loops``), a search (``search``) and
the trace's map (``tracemap``) is each in a module of its own."""
from __future__ import annotations

from dataclasses import dataclass, field

from . import _tf_env  # noqa: F401  (before TensorFlow is imported)

from returnn.tensor import Dim as ReturnnDim
from returnn.tensor import batch_dim as returnn_batch_dim

from ..language.dims import Dim, batch_dim
from ..language.graph import Graph, Scope
from .analysis import derived_from  # noqa: F401  (the back end reads it from here)
from .layer_dicts import LayerDicts
from .loops import LoopEmission
from .search import SearchEmission
from .tracemap import TraceMap


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


class _Emitter(LoopEmission, SearchEmission, TraceMap, LayerDicts):
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
        self.window_loops: set = set()  # Loops over a static dim inside another loop: emitted as while loops
        self.bound_names: dict = {}  # bounded Loop -> its scalar layer of the most steps (max_seq_len_via)
        # loop.index op -> its layer of zeros {batch} (the index is one per sequence); unstack op of a while loop
        # -> its position layer (the step, per sequence)
        self.index_zeros: dict = {}
        self.step_zeros: dict = {}  # (id(loop), dtype) -> its layer of a zero computed from the step
        self.shared_last: dict = {}  # Loop -> (its last step, whether it ran a step): for values shared by the batch
        self.longest: dict = {}  # searching Loop -> its layer of the hypothesis that ran the most steps

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
            if self.search and self.searched(op) and batch_dim not in op.out.dims:
                layer = self.one_of_the_hypotheses(op, scope, layers, layer)  # one value shared by the batch
            if scope.parent is None:
                layer["is_output_layer"] = True
                self.out.fetch[op.out] = op.name
                if self.searched(op) and batch_dim in op.out.dims:  # with search, one entry per hypothesis: the
                    # best one is the result
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

    def fresh_name(self, scope: Scope, base: str) -> str:
        taken = self.taken.setdefault(id(scope), set(scope.names))
        name, i = base, 2
        while name in taken:
            name, i = f"{base}_{i}", i + 1
        taken.add(name)
        return name


# The op kinds whose layer RETURNN moves out of a loop when its inputs are: all but those reading the step
# (index, unstack, choice, a carried State, an inner loop); dropout too (it draws one mask for every step then)


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


