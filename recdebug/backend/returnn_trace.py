"""A RETURNN config's rec layer recorded as RETURNN runs it: ``m.trace`` (every layer of the unit at every step,
each unit layer made an output layer so that RETURNN stacks it) and ``m.trace(search=True)`` (RETURNN's own beam
search, each unit layer's value for every hypothesis at every step as RETURNN accumulated it, with the choice's
scores and backpointers). Both give a ``Trace`` whose keys are the config's layer paths (``"output/s"``) and whose
dims are labelled by RETURNN's dim tags."""
from __future__ import annotations

import numpy as np

from ..records.trace import DimInfo, Entry, Trace


class _Labels:
    """Trace dim labels: batch, the rec layer's time axis ``<rec>:time``, the beam, and one per other dim tag."""

    def __init__(self, rec: str, beam: int | None = None):
        self.axis = f"{rec}:time"
        self.dims = {"batch": DimInfo("batch", "batch", None, True, 0),
                     self.axis: DimInfo(self.axis, "time", None, False, 1)}
        if beam is not None:
            self.dims["beam"] = DimInfo("beam", "beam", beam, False, 2)
        self._tags: dict = {}

    def __call__(self, tag, time_tag=None) -> str:
        if tag.is_batch_dim():
            return "batch"
        if time_tag is not None and tag == time_tag:
            return self.axis
        for lab, t in self._tags.items():
            if t == tag:
                return lab
        base = (tag.description or "dim").replace("/", ":")
        lab, i = base, 2
        while lab in self.dims:
            lab, i = f"{base}.{i}", i + 1
        self._tags[lab] = tag
        self.dims[lab] = DimInfo(lab, base, tag.dimension, False, len(self.dims))
        return lab


def _finish(build, entries: dict, labels: _Labels, lens: dict, moved=(), in_loop=(), beams=None) -> Trace:
    model, rec = build.model, build.rec
    states = {f"{rec}/{s}" for s in build.network.layers[rec].cell.prev_layers_needed}
    tr = Trace(entries, labels.dims, lens, moved_out=list(moved), in_loop=list(in_loop), device=model.device,
               dim_labels={})
    tr._saved = {"hierarchy": model.hierarchy(rec, set(moved), set(in_loop), states), "net_text": model.net_text(),
                 "beams": beams or {}}
    return tr


def config_trace(build, inputs: dict, seq_lens: dict) -> Trace:
    """Every layer of the unit at every step, as RETURNN's rec layer computed it (teacher-forced)."""
    rec, unit = build.rec, build.model.net[build.rec]["unit"]
    fd = build.feed_dict(inputs, seq_lens)
    rec_layer = build.network.layers[rec]
    time_tag, cell = rec_layer.output.get_time_dim_tag(), rec_layer.cell
    states = set(cell.prev_layers_needed)
    labels = _Labels(rec)
    fetch, dims_of = {}, {}
    for name in unit:
        path = f"{rec}/{name}"
        try:
            layer = build.network.get_layer(path)
        except Exception:  # e.g. a layer RETURNN builds only when searching
            continue
        fetch[path] = layer.output.placeholder
        dims_of[path] = tuple(labels(tag, time_tag) for tag in layer.output.dim_tags)
    values, lens = build.run_session((fetch, build.rec_lens), feed_dict=fd)
    entries = {}
    for path, arr in values.items():
        in_loop = labels.axis in dims_of[path]
        kind = "state" if path.split("/", 1)[1] in states and in_loop else ("layer" if in_loop else "value")
        entries[path] = Entry(path, np.asarray(arr), dims_of[path], kind, (labels.axis,) if in_loop else (),
                              build.model.line(path) or None)
    moved = [f"{rec}/{n}" for n in list(cell.input_layers_moved_out or []) + list(cell.output_layers_moved_out or [])]
    return _finish(build, entries, labels, {labels.axis: (np.asarray(lens), ("batch",))}, moved,
                   [f"{rec}/{n}" for n in (cell.layers_in_loop or [])])


def config_search_trace(build, inputs: dict, seq_lens: dict) -> Trace:
    """RETURNN's beam search of the rec layer: each unit layer's value for every hypothesis at every step
    ([time, batch, beam, ...]) before RETURNN resolved the final best ones, the choice's scores and backpointers;
    the time axis' lengths are those of each sequence's best hypothesis."""
    import tensorflow as tf

    from ..emission.stepnet import readers_of
    from ..emission.confignet import layer_refs

    rec, unit, choice = build.rec, build.model.net[build.rec]["unit"], build.choice
    fd = build.feed_dict(inputs, seq_lens)
    cell = build.network.layers[rec].cell
    acc = cell.final_acc_tas_dict
    k = int(unit[choice].get("beam_size") or 1)
    labels = _Labels(rec, beam=k)
    fetch, dims_of = {}, {}
    with build.tf_graph.as_default():
        for name in list(unit) + [choice + ".scores"]:
            ta, layer = acc.get(f"output_{name}"), cell.net.layers.get(name)
            if ta is None or layer is None or layer.output.batch_dim_axis is None:
                continue
            out, b = layer.output, layer.output.batch_dim_axis
            rest = [labels(t) for i, t in enumerate(out.dim_tags) if i != b]
            steps = ta.stack()  # [T, batch * beam, ...] in the in-loop layer's axis order
            if out.beam is None:  # one value per sequence (a frame of an input): the same for each hypothesis
                steps = tf.repeat(tf.expand_dims(steps, 2 + b), k, axis=2 + b)
            else:
                shape = tf.shape(steps)
                steps = tf.reshape(steps, tf.concat([shape[:1 + b], [-1, k], shape[2 + b:]], 0))
            fetch[f"{rec}/{name}"] = steps
            dims_of[f"{rec}/{name}"] = (labels.axis,) + tuple(rest[:b]) + ("batch", "beam") + tuple(rest[b:])
        fetch[f"{rec}/{choice}.backpointers"] = acc[f"choice_{choice}"].stack()  # [T, batch, beam]
    values = build.run_session(fetch, feed_dict=fd)
    key = f"{rec}/{choice}"
    dims_of[key + ".scores"] = dims_of[key + ".backpointers"] = (labels.axis, "batch", "beam")
    states = set(cell.prev_layers_needed)
    entries = {}
    for path, arr in values.items():
        name = path.split("/", 1)[1]
        kind = "search" if path.endswith((".scores", ".backpointers")) else "state" if name in states else "layer"
        entries[path] = Entry(path, np.asarray(arr), dims_of[path], kind, (labels.axis,),
                              build.model.line(path.split(".", 1)[0] if kind == "search" else path) or None)
    unstacked = bool(build.model.net[rec].get("from"))
    beams = {key: {"end": f"{rec}/end" if f"{rec}/end" in entries else None, "lens_axis": None,
                   "include_eos": bool(build.model.net[rec].get("include_eos")) or unstacked}}
    tr = _finish(build, entries, labels, {}, (), [f"{rec}/{n}" for n in unit], beams)
    after = readers_of(unit, set(unit), {choice}, refs=lambda d: [r.partition("/")[0] for r in layer_refs(d)
                                                                   if not r.startswith(("prev:", "base:"))])
    tr.after_choice = {f"{rec}/{n}" for n in after}
    found = tr.beams(key)  # a sequence's steps: those of its best hypothesis
    best = found.scores[-1].argmax(axis=1)
    tr._lens[labels.axis] = (np.array([found.hypothesis(b, int(j))["length"] for b, j in enumerate(best)],
                                      np.int32), ("batch",))
    return tr
