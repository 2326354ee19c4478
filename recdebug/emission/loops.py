"""Emission of a loop: the rec layer and its unit (States as layers read with ``prev:``, initial values, the end
condition and bounds, stacks and lasts read from outside)."""
from __future__ import annotations

from returnn.tensor import batch_dim as returnn_batch_dim

from ..language.dims import batch_dim
from .analysis import moving_out_fails, read_by_inner_loop, reads_inner_loop
from .stepnet import readers_of


class LoopEmission:
    """Mixed into the emitter (``netdict._Emitter``)."""

    def emit_loop(self, loop, layers: dict) -> list:
        """Emit the rec layer of ``loop`` into ``layers``; returns the (path, unit layer) pairs to trace."""
        unit: dict = {}
        exported = self.emit_scope(loop, unit)
        self.emit_perturbations(loop, unit)
        for (scope_id, name), recs in self.collocate.items():
            if scope_id == id(loop):
                unit[name]["collocate_with"] = sorted(recs)
        # a State shared by the batch is carried without the batch dim, except in RETURNN's own search: its template
        # construction fails on one there (a dependency loop on the choice), so it is carried per hypothesis, each
        # the same, and read back once after the loop (``one_of_the_hypotheses``) and in a trace
        searching = self.search and any(op.kind == "choice" for op in loop.ops)
        for state, name in loop.state_layers.items():
            unit[name] = self.state_layer(loop, state, name, unit, layers, searching)
            self.out.lines[self.path(loop, name)] = loop.assign_lines[state]
            self.out.state_layers.setdefault(state, []).append(self.path(loop, name))
        for v in loop.exports:
            unit[self.perturbed.get(id(v), v.op.name)]["is_output_layer"] = True
        self.end_layers(loop, unit, layers)
        choices = [op.name for op in loop.ops if op.kind == "choice"]
        if choices:  # values per new hypothesis (the rest are per hypothesis of the previous step)
            after = readers_of(unit, set(unit), set(choices))
            self.out.after_choice |= {self.path(loop, name) for name in after}
        unit["output"] = self.unit_output(loop, unit, choices)
        # A search trace reads every layer's values per hypothesis from the loop's step accumulators: it keeps
        # every layer in the loop (a moved-out layer has no such accumulator).
        beams = self.search and self.capture is not None and any(op.kind == "choice" for op in loop.ops)
        layers[loop.name] = self.rec_layer(loop, unit, bool(choices), beams)
        self.after_loop(loop, layers)
        captured = self.capture_loop(loop, unit, layers, beams, searching)
        if choices and self.search:
            captured = self.give_beam(loop, unit, layers, captured)
        return captured + exported

    def state_layer(self, loop, state, name: str, unit: dict, layers: dict, searching: bool) -> dict:
        """The unit layer that carries ``state`` from step to step: its new value, with its initial value."""
        v = loop.assigned[state]
        batched = batch_dim in state.dims or searching
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
            shape = [self.dim(d) for d in sorted(state.dims, key=lambda d: d.order)]
            if batched and batch_dim not in state.dims:  # (a shared State, searching: per hypothesis)
                shape = [returnn_batch_dim] + shape
            unit[zeros + ".const"] = {"class": "constant", "value": False if state.dtype == "bool" else 0,
                                      "dtype": state.dtype, "shape": shape, "with_batch_dim": batched}
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
        if batched and batch_dim not in state.dims:  # (searching) its initial value per hypothesis too
            layer["initial_output"] = "base:" + self.with_batch(
                layers, layer["initial_output"][len("base:"):], state.dtype,
                out=self.fresh_name(loop.parent, name + ".initial_per_sequence"), output=False)
        return layer

    def end_layers(self, loop, unit: dict, layers: dict) -> None:
        """The unit's ``end`` flag: the loop's end condition, its bound, or both."""
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

    def unit_output(self, loop, unit: dict, choices: list) -> dict:
        """The unit's ``output`` layer, where RETURNN starts to work out the unit's shapes."""
        if choices:  # the rec layer's own output: the labels it searches over
            return {"class": "copy", "from": choices[0]}
        if any(reads_inner_loop(loop, loop.assigned[state]) for state in loop.state_layers):
            # RETURNN works out the unit's shapes starting from "output": starting from a State that other States
            # and an inner loop depend on, it fails (a dependency loop); starting from a State made from an inner
            # loop's result, it finds them all; where an inner loop reads a State shared by the batch (no batch dim:
            # its end condition, say), starting from that one works and the first fails
            shared = [name for state, name in loop.state_layers.items()
                      if batch_dim not in state.dims and read_by_inner_loop(loop, state)]
            return {"class": "copy", "from": (shared + [
                name for state, name in loop.state_layers.items() if reads_inner_loop(loop, loop.assigned[state])])[0]}
        # a State, or a value without other dynamic dims (RETURNN loses the loop's lengths of an output with another
        # dynamic dim)
        plain = [v.op.name for v in loop.exports if not any(d.is_dynamic and not d.is_batch for d in v.dims)]
        if loop.state_layers or plain or not loop.exports:
            # (a State shared by the batch first: RETURNN failed to work out a unit starting from a batched State
            # that reads a shared one)
            states = sorted(loop.state_layers, key=lambda s: batch_dim in s.dims)
            return {"class": "copy", "from": ([loop.state_layers[s] for s in states] + plain + [loop.ops[-1].name])[0]}
        # zeros carried from step to step (a layer RETURNN keeps in the loop)
        zeros = self.fresh_name(loop, "output.zeros")
        unit[zeros] = {"class": "constant", "value": 0, "dtype": "int32", "shape": [returnn_batch_dim],
                       "with_batch_dim": True}
        return {"class": "combine", "kind": "add", "from": ["prev:output", zeros], "initial_output": 0}

    def rec_layer(self, loop, unit: dict, choices: bool, beams: bool) -> dict:
        """The rec layer: its unit, what it iterates over (an input's frames, a bound, a step count), and whether
        RETURNN may move layers out of its loop."""
        # A loop with loops inside stays unoptimized itself (its inner loops are still optimized): when RETURNN
        # moves an outer layer out, it may need to stack an inner loop's sub-layer, which it cannot do reliably.
        # An inner loop over an input stays unoptimized: a frame layer moved out of it reads the outer loop's frame;
        # a traced inner loop too: the outer loop cannot stack a traced value that RETURNN moved out of it.
        # A while loop over an input's frames too: RETURNN moves the frame's gather out but not its position.
        # A searching loop keeps every layer in it: RETURNN's search fails on a layer it moved out of the loop
        # that reads one still in it (it accumulates that one without the search's beam context).
        rec = {"class": "rec", "from": [], "axis": self.dim(loop.rec_axis), "unit": unit,
               "optimize_move_layers_out": self.optimize and not loop.children and not beams
               and not (self.search and choices)
               and not moving_out_fails(loop) and not (loop.parent.is_loop and (loop.unstacked or self.capture))
               and not (loop.bounded and loop.unstacked)}
        if loop in self.window_loops:  # a while loop of the static dim's size, every sequence that long
            rec["max_seq_len"] = loop.axis.size
            rec["include_eos"] = True
            unit["end.step"] = {"class": "compare", "kind": "greater_equal", "from": ":i", "value": loop.axis.size - 1}
            unit["end.batch"] = {"class": "constant", "value": False, "dtype": "bool", "shape": [returnn_batch_dim],
                                 "with_batch_dim": True}
            unit["end"] = {"class": "combine", "kind": "logical_or", "from": ["end.step", "end.batch"]}
        elif loop.bounded:
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
        return rec

    def after_loop(self, loop, layers: dict) -> None:
        """Beside the rec layer: its lengths, its last step, and each State's final value."""
        self.out.rec_paths[loop] = self.path(loop.parent, loop.name)
        self.out.lines[self.path(loop.parent, loop.name)] = loop.line
        layers[loop.len_name] = {"class": "length", "from": loop.name, "axis": self.dim(loop.rec_axis)}
        if not loop.parent.is_loop:  # fetched by every run (the loop's lengths)
            layers[loop.len_name]["is_output_layer"] = True
        layers[loop.last_index_name] = {"class": "eval", "from": loop.len_name, "eval": "source(0) - 1"}
        if loop.state_finals:
            layers[loop.nonempty_name] = {"class": "compare", "kind": "greater", "from": loop.len_name, "value": 0}
        for state, name in loop.state_finals.items():
            layers[name] = self.gather_last(loop, loop.state_layers[state], shared=batch_dim not in state.dims)
        if loop in self.shared_last:  # a value shared by the batch: the loop's last step is its longest sequence's
            index, ran = self.shared_last[loop]
            steps = self.fresh_name(loop.parent, f"{loop.name}.steps_run")
            layers[steps] = {"class": "reduce", "mode": "max", "from": loop.len_name, "axis": "B"}
            layers[index] = {"class": "eval", "from": steps, "eval": "tf.maximum(source(0) - 1, 0)"}
            layers[ran] = {"class": "compare", "kind": "greater", "from": steps, "value": 0}

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
        self.static_ranges[loop] = self.fresh_name(loop.parent, f"{loop.name}.positions")
        layers[self.static_ranges[loop]] = {"class": "range", "limit": axis.size, "out_spatial_dim": self.dim(axis),
                                            "dtype": "int32"}
        if loop.parent.is_loop:
            # inside another loop a rec layer over those frames mixes up the static dim and its steps: a while
            # loop of axis.size steps instead, each reading its frame (rd.gather(x, inner.index, win) as the
            # user would write it)
            self.window_loops.add(loop)
            return
        top = self.out.net  # the steps' dim is made once, at the top level
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
