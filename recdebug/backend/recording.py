"""What a trace reads of a built RETURNN network, the same for both front ends: layer outputs with their dims
labelled, a search's per-step values of every hypothesis (RETURNN's step accumulators), its backpointers and
scores, the lengths of each sequence's best hypothesis, and which layers RETURNN moved out of their loop. The
language's ``Tracing`` and a config's ``returnn_trace`` differ only in how they name keys and dims."""
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


def beam_steps(cell, name: str, k: int):
    """A unit layer's value for every hypothesis at every step of a search, as RETURNN accumulated it before it
    resolved the final best ones: (tensor [steps, *before, batch, beam, *after], the in-loop layer's dim tags, the
    position of its batch among them), or None when RETURNN accumulated nothing for it."""
    import tensorflow as tf

    ta = cell.final_acc_tas_dict.get(f"output_{name}")
    if ta is None:
        return None
    # the axes as accumulated: the layer's own output in the loop (its template may order them otherwise, e.g. a
    # value stacked by another loop, time-major there, batch-major here)
    out = (cell.net.layers.get(name) or cell.layer_data_templates[name]).output
    b = out.batch_dim_axis
    if b is None:
        return None
    steps = ta.stack()  # [steps, batch * beam, ...] in the in-loop layer's axis order
    if out.beam is None:  # one value per sequence (a frame of an input): the same for each hypothesis
        steps = tf.repeat(tf.expand_dims(steps, 2 + b), k, axis=2 + b)
    else:
        shape = tf.shape(steps)
        steps = tf.reshape(steps, tf.concat([shape[:1 + b], [-1, k], shape[2 + b:]], 0))
    return steps, out.dim_tags, b


def beam_dims(tags, b: int, dim_of, axis, batch, beam) -> tuple:
    """The dims of ``beam_steps``' tensor: the loop's axis, the layer's dims with the beam after the batch."""
    rest = [dim_of(t) for i, t in enumerate(tags) if i != b]
    return (axis,) + tuple(rest[:b]) + (batch, beam) + tuple(rest[b:])


def choice_steps(cell, name: str, k: int) -> tuple:
    """A choice layer's backpointers and its beam's scores at every step, [steps, batch, beam] each (the unit
    has the choice's scores as the layer ``<choice>.scores``)."""
    import tensorflow as tf

    acc = cell.final_acc_tas_dict
    scores = acc[f"output_{name}.scores"].stack()
    return acc[f"choice_{name}"].stack(), tf.reshape(scores, [tf.shape(scores)[0], -1, k])


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
