"""Emission of one op: the RETURNN layer dict that computes it (its class, options and dims), with the dtype and
batch handling RETURNN's layers need."""
from __future__ import annotations

from returnn.tensor import batch_dim as returnn_batch_dim

from ..language.dims import batch_dim
from ..language.graph import Scope
from .analysis import _ARITH, _COMPARE, _EVAL_SYMBOL


class LayerDicts:
    """Mixed into the emitter (``netdict._Emitter``)."""

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
            if scope in self.window_loops:  # the frame of this step along the static dim
                return {"class": "gather", "from": src[0], "axis": self.dim(a["axis"]), "position": ":i"}
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
            ran = loop.nonempty_name if batch_dim in state.dims else self.shared_steps(loop)[1]
            return {"class": "switch", "condition": ran, "true_from": loop.state_finals[state],
                    "false_from": self.ref(loop.init[state], scope)}
        if k == "stack":
            loop = a["loop"]
            if loop in self.static_ranges:  # back from the rec layer's dynamic steps to the static dim
                return {"class": "gather", "from": f"{loop.name}/{a['value'].op.name}",
                        "axis": self.dim(loop.rec_axis), "position": self.static_ranges[loop]}
            return {"class": "copy", "from": f"{loop.name}/{self.perturbed.get(id(a['value']), a['value'].op.name)}"}
        if k == "last":
            return self.gather_last(a["loop"], self.perturbed.get(id(a["value"]), a["value"].op.name),
                                    shared=batch_dim not in op.out.dims)
        raise NotImplementedError(f"no RETURNN layer for op kind {k!r}")

    def unit_value(self, loop, name: str):
        """The State or Tensor of ``loop`` that recdebug emitted the unit layer ``name`` for (None: a helper)."""
        for state, layer in loop.state_layers.items():
            if layer == name:
                return state
        base = name[:-len(".per_sequence")] if name.endswith(".per_sequence") else name
        return next((op.out for op in loop.ops if base in (op.name, self.perturbed.get(id(op.out)))), None)

    def unit_dtype(self, loop, unit: dict, name: str) -> str:
        """The dtype of the unit layer ``name`` that recdebug emitted for an op or a State of ``loop``."""
        value = self.unit_value(loop, name)
        if value is not None:
            return value.dtype
        dtype = unit[name].get("dtype") or unit[name].get("out_type", {}).get("dtype")
        if dtype is None:
            raise AssertionError(f"no dtype known for the unit layer {name!r}")
        return dtype

    def with_batch(self, layers: dict, name: str, dtype: str, out: str | None = None, output: bool = True) -> str:
        """A layer of ``layers`` (named ``out``, default ``<name>.per_sequence``) that is the layer ``name`` broadcast
        over the batch (the same values per sequence); ``output``: an output layer (a loop stacks it)."""
        const = (out or name) + ".batch_zero"
        out = out or name + ".per_sequence"
        layers[const] = {"class": "constant", "value": False if dtype == "bool" else 0, "dtype": dtype,
                         "shape": [returnn_batch_dim], "with_batch_dim": True}
        layers[out] = {"class": "combine", "kind": "logical_or" if dtype == "bool" else "add", "from": [name, const],
                       "allow_broadcast_all_sources": True}
        if output:
            layers[out]["is_output_layer"] = True
        return out

    def gather_last(self, loop, layer_name: str, shared: bool = False) -> dict:
        """The last frame of a stacked unit layer: per sequence, or for a value shared by the batch the loop's
        last step (its longest sequence's)."""
        if shared:  # (a valid step: RETURNN's clipping would clip it per sequence and add the batch dim)
            return {"class": "gather", "from": f"{loop.name}/{layer_name}", "axis": self.dim(loop.rec_axis),
                    "position": self.shared_steps(loop)[0]}
        return {"class": "gather", "from": f"{loop.name}/{layer_name}", "axis": self.dim(loop.rec_axis),
                "position": loop.last_index_name, "clip_to_valid": True}

    def shared_steps(self, loop) -> tuple:
        """Names of two layers beside ``loop`` (made by emit_loop): its last step (scalar) and whether it ran any."""
        if loop not in self.shared_last:
            self.shared_last[loop] = tuple(self.fresh_name(loop.parent, f"{loop.name}.{n}")
                                           for n in ("last_step", "ran"))
        return self.shared_last[loop]

    def step_zero(self, loop, unit: dict, dtype: str) -> str:
        """A layer of ``loop``'s unit: a zero (False) of ``dtype`` computed from the step index."""
        key = (id(loop), dtype)
        name = self.step_zeros.get(key)
        if name is None:
            name = self.step_zeros[key] = self.fresh_name(loop, f"step.zero.{dtype}")
            unit[name] = {"class": "eval", "from": ":i", "eval": f"tf.zeros_like(source(0), dtype=tf.{dtype})",
                          "out_type": {"dtype": dtype}}
        return name
