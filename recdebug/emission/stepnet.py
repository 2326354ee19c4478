"""The single-step net: one loop's unit as a plain RETURNN net, its State reads coming from the device.

The unit's layer dicts are kept as emitted; only their references are rewritten: ``prev:<state>`` reads the
State's value at step t from a buffer on the device, ``data:source`` gathers the input frame at t, ``:i`` is t,
and ``base:`` references lose one level because the unit now sits at the top. Inner loops stay rec layers.
"""
from __future__ import annotations

from dataclasses import dataclass, field

REF_KEYS = ("from", "initial_output", "position", "condition", "true_from", "false_from")
SKIP_UNIT_LAYERS = ("output",)


@dataclass
class StepNet:
    net: dict
    prefix: str
    layer_names: dict  # unit layer name -> flat layer name
    prev_layers: dict = field(default_factory=dict)  # state layer name (in the unit) -> flat layer reading it
    index_layer: str = ""
    inner_exports: dict = field(default_factory=dict)  # inner layer path (from the unit) -> flat layer name


def layer_refs(layer: dict) -> list:
    """The layer names a layer dict reads in its own net (the part before any "/")."""
    out = []
    for key in REF_KEYS:
        value = layer.get(key)
        for v in value if isinstance(value, list) else [value]:
            v = v[0] if isinstance(v, tuple) else v
            if isinstance(v, str):
                out.append(v.partition("/")[0])
    return out


def readers_of(net: dict, names, sources: set, refs=None) -> set:
    """The layers among ``names`` that read one of ``sources`` in the same step, directly or through others
    (``sources`` included): with a choice as source, the layers whose values are per new hypothesis. ``refs``: the
    layer names a layer dict reads (default: ``layer_refs``, the options recdebug's own layers use)."""
    refs = refs or layer_refs
    reads = {name: [r for r in refs(net[name]) if r in names] for name in names if name in net}
    after = set(sources)
    changed = True
    while changed:
        changed = False
        for name, refs in reads.items():
            if name not in after and any(r in after for r in refs):
                after.add(name)
                changed = True
    return after


def _rewrite(value, depth: int, step: "StepNet"):
    """Rewrite one reference string found at ``depth`` (0: the stepped unit, 1: an inner unit...)."""
    if not isinstance(value, str):
        return value
    rest, k = value, 0
    while rest.startswith("base:"):
        rest, k = rest[len("base:"):], k + 1
    target = depth - k
    if target < 0:  # the top level: one "base:" fewer now
        return "base:" * (k - 1) + rest
    if target > 0:  # inside an inner unit: unchanged
        return value
    if depth == 0 and rest.startswith("prev:"):
        return step.prev_layers[rest[len("prev:"):]]
    if depth == 0 and rest == ":i":
        return step.index_layer
    if depth == 0 and rest == "data:source":
        return step.prefix + "source"
    name, sep, sub = rest.partition("/")
    return "base:" * k + step.layer_names.get(name, name) + sep + sub


def _rewrite_layer(layer: dict, depth: int, step: StepNet) -> dict:
    out = {}
    for key, value in layer.items():
        if key in REF_KEYS:
            if isinstance(value, list):
                value = [(_rewrite(v[0], depth, step), v[1]) if isinstance(v, tuple) else _rewrite(v, depth, step)
                         for v in value]
            else:
                value = _rewrite(value, depth, step)
        elif key == "collocate_with":
            value = [step.layer_names.get(v, v) for v in value] if depth == 0 else value
        elif key == "unit" and isinstance(value, dict):
            value = {name: _rewrite_layer(sub, depth + 1, step) for name, sub in value.items()}
        out[key] = value
    return out


def build_step_net(em, loop, states: dict, index_key: str) -> StepNet:
    """The flat net for stepping ``loop`` (a top-level Loop) of the emitted net ``em``.

    ``states``: state layer name (in the unit) -> (RETURNN dims in the buffer's order, dtype, key of the device
    tensor holding its value at step t, RETURNN sparse dim or None); ``index_key``: key of the device tensor holding t.
    """
    top = {name: {k: v for k, v in layer.items() if k != "is_output_layer"} for name, layer in em.net.items()
           if name != loop.name}
    unit = em.net[loop.name]["unit"]
    prefix, i = "step.", 2
    while any(name.startswith(prefix) for name in top):
        prefix, i = f"step{i}.", i + 1
    names = {name: prefix + name for name in unit if name not in SKIP_UNIT_LAYERS}
    step = StepNet(net=top, prefix=prefix, layer_names=names)
    step.index_layer = prefix + "index.step"
    top[step.index_layer] = {"class": "recdebug_tensor", "key": index_key, "shape": [], "dtype": "int32"}
    for state_name, (shape, dtype, key, sparse_dim) in states.items():
        flat = f"{prefix}{state_name}.at_step"
        step.prev_layers[state_name] = flat
        top[flat] = {"class": "recdebug_tensor", "key": key, "shape": shape, "dtype": dtype, "sparse_dim": sparse_dim}
    rec = em.net[loop.name]
    if rec.get("from"):
        top[prefix + "source"] = {"class": "gather", "from": rec["from"], "axis": rec["axis"],
                                  "position": step.index_layer}
    for name, layer in unit.items():
        if name in SKIP_UNIT_LAYERS:
            continue
        flat = _rewrite_layer({k: v for k, v in layer.items() if k != "initial_output"}, 0, step)
        flat["is_output_layer"] = True
        top[names[name]] = flat
        if layer.get("class") == "rec":  # an inner loop: expose every layer of it, stacked over its steps
            for sub in layer["unit"]:
                if sub in ("output", "end") or sub.endswith(".batch"):
                    continue
                export = f"{names[name]}/{sub}"
                flat_export = f"{prefix}inner.{name}.{sub}"
                flat["unit"][sub]["is_output_layer"] = True
                top[flat_export] = {"class": "copy", "from": export, "is_output_layer": True}
                step.inner_exports[f"{name}/{sub}"] = flat_export
    return step
