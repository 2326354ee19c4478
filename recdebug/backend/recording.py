"""What a run or a trace reads of a built RETURNN network, the same for both front ends: the top-level layers' outputs
with their dims labelled, their lengths and a search's final scores (``TopLevel``: the one run of both), a
search's per-step values of every hypothesis (RETURNN's step accumulators), its backpointers and scores, the lengths
of each sequence's best hypothesis, and which layers RETURNN moved out of their loop. The language's ``Engine`` and
``Tracing`` and a config's ``ModelBuild`` and ``returnn_trace`` differ only in how they name keys and dims."""
from __future__ import annotations

import numpy as np


def layer_outputs(network, paths: dict, dim_of, skip_missing: bool = False) -> tuple[dict, dict, dict]:
    """``paths``: key -> layer path. (key -> output tensor, key -> its dims as ``dim_of(tag)`` names them,
    dim -> (its lengths tensor, their dims)) for every dynamic dim the outputs have besides the batch.
    ``skip_missing``: leave out layers the network did not build (a config's layer built only when searching)."""
    fetch, dims_of, sizes = {}, {}, {}
    for key, path in paths.items():
        try:
            out = network.get_layer(path).output
        except Exception:
            if skip_missing:
                continue
            raise
        dims = tuple(dim_of(tag) for tag in out.dim_tags)
        fetch[key], dims_of[key] = out.placeholder, dims
        for tag, d in zip(out.dim_tags, dims):
            size = tag.dyn_size_ext
            if tag.is_batch_dim() or tag.dimension is not None or d in sizes or size is None:
                continue
            sizes[d] = (size.placeholder, tuple(dim_of(s) for s in size.dim_tags))
    return fetch, dims_of, sizes


class TopLevel:
    """What a run fetches of a build (a config's: made once per build; the language's: per call, as what is fed
    decides which lengths it fetches): each key's layer output and its dims as ``dim_of`` names them, the lengths
    of their dynamic dims besides the batch (those ``keep(dim)`` keeps), and for each key of ``searches`` the final
    beam's scores [batch, beam] of that searching rec layer. ``run`` is the run of both front ends: (key -> array,
    dim -> lengths, key -> scores)."""

    def __init__(self, network, paths: dict, dim_of, searches=None, keep=None):
        self.fetch, self.dims, sizes = layer_outputs(network, paths, dim_of)
        self.sizes = {d: size for d, size in sizes.items() if keep is None or keep(d)}
        self.more_sizes: dict = {}  # lengths a front end fetches besides its values' (a loop's that stacked nothing)
        self.scores = {key: network.get_layer(path).get_search_choices().beam_scores
                       for key, path in (searches or {}).items()}

    def run(self, build, feed_dict: dict, more=()) -> tuple:
        """One session call of ``build`` (``Build.run_session``); ``more``: further fetches, their values after."""
        lens = {d: tensor for d, (tensor, _) in {**self.sizes, **self.more_sizes}.items()}
        return build.run_session((self.fetch, lens, self.scores) + tuple(more), feed_dict=feed_dict)


def search_steps(cell, names: dict, choices: dict, k: int, dim_of, axis, batch, beam) -> tuple[dict, dict]:
    """A search of beam ``k`` recorded at every step, as RETURNN accumulated it before it resolved the final best
    hypotheses: (key -> tensor, key -> its dims as ``dim_of`` names them, with ``axis``, ``batch`` and ``beam``).
    ``names``: key -> unit layer, its value for every hypothesis [steps, *before, batch, beam, *after] (left out
    when RETURNN accumulated nothing for it); ``choices``: key -> choice layer, its backpointers and its beam's
    scores [steps, batch, beam] as ``<key>.backpointers`` and ``<key>.scores`` (the unit has the choice's scores as
    the layer ``<choice>.scores``)."""
    import tensorflow as tf

    acc = cell.final_acc_tas_dict
    fetch, dims = {}, {}
    for key, name in names.items():
        ta = acc.get(f"output_{name}")
        if ta is None:
            continue
        # the axes as accumulated: the layer's own output in the loop (its template may order them otherwise, e.g.
        # a value stacked by another loop, time-major there, batch-major here)
        out = (cell.net.layers.get(name) or cell.layer_data_templates[name]).output
        b = out.batch_dim_axis
        if b is None:
            continue
        steps = ta.stack()  # [steps, batch * beam, ...] in the in-loop layer's axis order
        if out.beam is None:  # one value per sequence (a frame of an input): the same for each hypothesis
            steps = tf.repeat(tf.expand_dims(steps, 2 + b), k, axis=2 + b)
        else:
            shape = tf.shape(steps)
            steps = tf.reshape(steps, tf.concat([shape[:1 + b], [-1, k], shape[2 + b:]], 0))
        rest = [dim_of(t) for i, t in enumerate(out.dim_tags) if i != b]
        fetch[key], dims[key] = steps, (axis,) + tuple(rest[:b]) + (batch, beam) + tuple(rest[b:])
    for key, name in choices.items():
        scores = acc[f"output_{name}.scores"].stack()
        fetch[key + ".backpointers"] = acc[f"choice_{name}"].stack()
        fetch[key + ".scores"] = tf.reshape(scores, [tf.shape(scores)[0], -1, k])
        dims[key + ".backpointers"] = dims[key + ".scores"] = (axis, batch, beam)
    return fetch, dims


def best_lengths(trace, key: str) -> np.ndarray:
    """Per sequence: the length of its best hypothesis in a search trace (the choice's key)."""
    found = trace.beams(key)
    best = found.scores[-1].argmax(axis=1)
    return np.array([found.hypothesis(b, int(j))["length"] for b, j in enumerate(best)], np.int32)


def rec_layers(network) -> dict:
    """Rec layer path -> the constructed RETURNN RecLayer with a unit subnetwork (nested ones from their enclosing
    loop's cell)."""
    from returnn.tf.layers.rec import RecLayer, _SubnetworkRecCell

    found = {}

    def visit(layers: dict, prefix: str):
        for name, layer in layers.items():
            if isinstance(layer, RecLayer) and isinstance(layer.cell, _SubnetworkRecCell) \
                    and prefix + name not in found:
                found[prefix + name] = layer
                cell = layer.cell
                for net in (cell.net, cell.input_layers_net, cell.output_layers_net):
                    if net is not None:
                        visit(net.layers, prefix + name + "/")

    visit(network.layers, "")
    return found


def moved_out(network, ours) -> tuple[list, list]:
    """(in-loop layers RETURNN moved out of their loop, layers it kept inside), as layer paths among ``ours``."""
    moved, kept = set(), set()
    for path, rec in rec_layers(network).items():
        cell = rec.cell
        for name in list(cell.input_layers_moved_out or []) + list(cell.output_layers_moved_out or []):
            moved.add(f"{path}/{name}")
        kept.update(f"{path}/{name}" for name in cell.layers_in_loop or [])
    return sorted(moved & set(ours)), sorted((kept - moved) & set(ours))
