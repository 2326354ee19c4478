"""A RETURNN config's rec layer recorded as RETURNN runs it: ``m.trace`` (every layer of the unit at every step,
each unit layer made an output layer so that RETURNN stacks it) and ``m.trace(search=True)`` (RETURNN's own beam
search, each unit layer's value for every hypothesis at every step as RETURNN accumulated it, with the choice's
scores and backpointers). Both give a ``Trace`` whose keys are the config's layer paths (``"output/s"``) and whose
dims are labelled by RETURNN's dim tags."""
from __future__ import annotations

import numpy as np

from ..records.trace import DimInfo, Entry, Trace
from .recording import best_lengths, layer_outputs, moved_out, search_steps


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


def _finish(build, entries: dict, labels: _Labels, lens: dict, beams=None) -> Trace:
    model, rec = build.model, build.rec
    states = {f"{rec}/{s}" for s in build.network.layers[rec].cell.prev_layers_needed}
    moved, in_loop = moved_out(build.network, {f"{rec}/{n}" for n in model.net[rec]["unit"]})
    if beams:  # a search: every layer in the loop
        moved, in_loop = [], sorted(f"{rec}/{n}" for n in model.net[rec]["unit"])
    tr = Trace(entries, labels.dims, lens, moved_out=moved, in_loop=in_loop, device=model.device, dim_labels={})
    tr._saved = {"hierarchy": model.hierarchy(rec, set(moved), set(in_loop), states), "net_text": model.net_text(),
                 "beams": beams or {}}
    return tr


def _entry(build, states: set, path: str, arr, dims: tuple, axis: str) -> Entry:
    name = path.split("/", 1)[1]
    in_loop = axis in dims
    kind = "search" if path.endswith((".scores", ".backpointers")) else \
        "state" if name in states and in_loop else "layer" if in_loop else "value"
    line = build.model.line(path.split(".", 1)[0] if kind == "search" else path)
    return Entry(path, np.asarray(arr), dims, kind, (axis,) if in_loop else (), line or None)


def config_trace(build, inputs: dict, seq_lens: dict, extra=None, loss=None) -> Trace:
    """Every layer of the unit at every step, as RETURNN's rec layer computed it (teacher-forced); ``extra``: key ->
    [batch, steps, ...] gradients of each State's value, recorded as ``<key>.grad``; ``loss``: their loss (a scalar
    tensor), its value kept as ``tr.loss``."""
    rec, unit = build.rec, build.model.net[build.rec]["unit"]
    fd = build.feed_dict(inputs, seq_lens)
    rec_layer = build.network.layers[rec]
    time_tag, states = rec_layer.output.get_time_dim_tag(), set(rec_layer.cell.prev_layers_needed)
    labels = _Labels(rec)
    # (a layer RETURNN builds only when searching is left out)
    fetch, dims_of, _ = layer_outputs(build.network, {f"{rec}/{n}": f"{rec}/{n}" for n in unit},
                                      lambda tag: labels(tag, time_tag), skip_missing=True)
    values, lens, grads, loss_value = build.run_session(
        (fetch, build.rec_lens, dict(extra or {}), loss if loss is not None else []), feed_dict=fd)
    entries = {path: _entry(build, states, path, arr, dims_of[path], labels.axis) for path, arr in values.items()}
    for key, grad in grads.items():  # [batch, steps (as fed), ...]: the rec layer's steps
        grad = np.asarray(grad)[:, :int(np.max(lens))]
        dims = ("batch", labels.axis) + tuple(d for d in entries[key].dims if d not in ("batch", labels.axis))
        entries[key + ".grad"] = Entry(key + ".grad", grad, dims, "grad", (labels.axis,), None)
    tr = _finish(build, entries, labels, {labels.axis: (np.asarray(lens), ("batch",))})
    if loss is not None:
        tr.loss = float(loss_value)
    return tr


def config_search_trace(build, inputs: dict, seq_lens: dict) -> Trace:
    """RETURNN's beam search of the rec layer: each unit layer's value for every hypothesis at every step
    ([time, batch, beam, ...]) before RETURNN resolved the final best ones, the choice's scores and backpointers;
    the time axis' lengths are those of each sequence's best hypothesis."""
    from ..emission.stepnet import readers_of
    from ..emission.confignet import layer_refs

    rec, unit, choice = build.rec, build.model.net[build.rec]["unit"], build.choice
    fd = build.feed_dict(inputs, seq_lens)
    cell = build.network.layers[rec].cell
    k = int(unit[choice].get("beam_size") or 1)
    labels = _Labels(rec, beam=k)
    key = f"{rec}/{choice}"
    with build.tf_graph.as_default():
        fetch, dims_of = search_steps(cell, {f"{rec}/{n}": n for n in unit if n in cell.net.layers}, {key: choice}, k,
                                      labels, labels.axis, "batch", "beam")
    values = build.run_session(fetch, feed_dict=fd)
    states = set(cell.prev_layers_needed)
    entries = {path: _entry(build, states, path, arr, dims_of[path], labels.axis) for path, arr in values.items()}
    unstacked = bool(build.model.net[rec].get("from"))
    beams = {key: {"end": f"{rec}/end" if f"{rec}/end" in entries else None, "lens_axis": None,
                   "include_eos": bool(build.model.net[rec].get("include_eos")) or unstacked,
                   "length_normalization": bool(unit[choice].get("length_normalization", True))}}
    tr = _finish(build, entries, labels, {}, beams)
    after = readers_of(unit, set(unit), {choice}, refs=lambda d: [r.partition("/")[0] for r in layer_refs(d)
                                                                   if not r.startswith(("prev:", "base:"))])
    tr.after_choice = {f"{rec}/{n}" for n in after}
    tr._lens[labels.axis] = (best_lengths(tr, key), ("batch",))  # a sequence's steps: its best hypothesis'
    return tr


PERTURB = "recdebug_perturb_"  # the extern data keys of the perturbations


def config_grad_trace(model, rec: str, inputs: dict, seq_lens: dict, loss) -> Trace:
    """``m.trace(..., grad_of=loss)``: the trace, and per step the gradient of ``loss`` with respect to each float
    State's value. Each such State X of the unit gets a perturbation added to its value at every step (X becomes
    X.unperturbed + frame t of an extern input fed as zeros); the gradient with respect to that input's frame t is
    exactly dLoss/dX_t, as for the language's ``g.trace(..., grad_of=)``."""
    from ..language.errors import RecDebugError

    if not isinstance(loss, str) or not loss:
        raise RecDebugError(f"trace(grad_of=...) of a config: \"objective\" or a layer's name, got {loss!r}")
    source = model._build("templates", rec)
    states = {}
    for name in source.prev_needed:
        tmpl = source.templates[name].copy_as_batch_major()
        shape = tuple(tmpl.batch_shape[1:])
        if tmpl.dtype.startswith("float") and tmpl.batch_dim_axis == 0 and None not in shape:
            states[name] = shape
    if not states:
        raise RecDebugError(f"trace(grad_of=...): the unit of {rec!r} has no float State (a layer read with prev:) "
                            "with static dims besides the batch")
    key = ("trace_grad", rec, loss)
    if key not in model._builds:
        from .engine import build_apart

        model._builds[key] = build_apart(lambda: _grad_build(model, rec, states, loss))
    build = model._builds[key]
    data = build.network.extern_data.data
    steps = max([np.shape(v)[data[k].time_dim_axis] for k, v in inputs.items()
                 if k in data and data[k].time_dim_axis is not None] + [1])
    batch = next(np.shape(v)[0] for v in inputs.values())
    fed = dict(inputs)
    for name, shape in states.items():
        fed[PERTURB + name] = np.zeros((batch, steps) + shape, np.float32)
    return config_trace(build, fed, seq_lens, extra=build.grads, loss=build.objective)


def _grad_build(model, rec: str, states: dict, loss):
    from .grads import mean_over_frames, perturbation_grads
    from .returnn_model import ModelBuild

    class GradBuild(ModelBuild):
        def prepare(self, net: dict) -> dict:
            unit = net[rec]["unit"]
            for name in states:
                layer = unit.pop(name)
                unit[name + ".unperturbed"] = dict(layer)
                unit[name + ".perturbation"] = {"class": "gather", "from": f"base:data:{PERTURB}{name}",
                                                "axis": "T", "position": ":i"}
                unit[name] = {"class": "combine", "kind": "add", "from": [name + ".unperturbed",
                                                                          name + ".perturbation"],
                              "is_output_layer": True}
                if "initial_output" in layer:
                    unit[name]["initial_output"] = layer["initial_output"]
            return net

        def before_construct(self):
            from returnn.tf.util.data import Data

            for name, shape in states.items():  # as RETURNN makes its extern data: [batch, time, ...]
                self.network.extern_data.data[PERTURB + name] = Data(
                    name=PERTURB + name, shape=(None,) + tuple(shape), dtype="float32", auto_create_placeholders=True)

        def after_construct(self):
            import tensorflow as tf

            from ..language.errors import RecDebugError

            if loss == "objective":
                objective = self.network.get_objective()
                if not isinstance(objective, tf.Tensor):
                    raise RecDebugError("trace(grad_of=\"objective\"): the network has no loss",
                                        hint="give a layer a loss, or grad_of=<a layer's name>")
            else:
                objective = mean_over_frames(self.network.get_layer(loss).output)
            self.objective = objective
            data = self.network.extern_data.data
            self.grads = perturbation_grads(objective, {f"{rec}/{name}": data[PERTURB + name].placeholder
                                                        for name in states})

    return GradBuild(model, "trace_grad", rec)
