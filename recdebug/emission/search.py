"""Emission of a search: the choice layer, the beam a value carries, the label input of a searched loop."""
from __future__ import annotations

from returnn.tensor import batch_dim as returnn_batch_dim

from ..language.graph import Scope
from .stepnet import REF_KEYS, layer_refs as _refs, readers_of


class SearchEmission:
    """Mixed into the emitter (``netdict._Emitter``)."""

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
            if getattr(self.unit_value(loop, name), "sparse_dim", None) is None:  # (not prev:output's labels')
                unit[zero]["out_type"]["sparse"] = False
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

    def one_of_the_hypotheses(self, op, scope: Scope, layers: dict, layer: dict) -> dict:
        """A value shared by the batch read after a searching loop: RETURNN has it per hypothesis (through its beamed
        copy, the same in each); it is read from the hypothesis that ran the most steps (valid at every step)."""
        loop = op.attrs["after_loop"]
        per_hypothesis = self.fresh_name(scope, op.name + ".hypotheses")
        layers[per_hypothesis] = layer
        if op.kind == "stack":  # over the loop's axis as the results have it: each sequence's best hypothesis
            best = self.fresh_name(scope, op.name + ".best_hypotheses")
            layers[best] = {"class": "decide", "from": per_hypothesis, "length_normalization": False}
            lengths = self.fresh_name(scope, op.name + ".lengths")
            layers[lengths] = {"class": "length", "from": best, "axis": self.dim(loop.axis)}
            longest = self.fresh_name(scope, op.name + ".longest")
            layers[longest] = {"class": "reduce", "mode": "argmax", "from": lengths, "axis": "B"}
            return {"class": "gather", "from": best, "axis": "B", "position": longest}
        if loop not in self.longest:  # its value after the loop's last step (of any hypothesis)
            self.longest[loop] = self.fresh_name(scope, loop.name + ".longest")
            layers[self.longest[loop]] = {"class": "reduce", "mode": "argmax", "from": loop.len_name, "axis": "B"}
        return {"class": "gather", "from": per_hypothesis, "axis": "B", "position": self.longest[loop]}

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
