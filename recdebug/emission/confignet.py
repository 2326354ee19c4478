"""A RETURNN config's net dict read as data: the layer names its options refer to, the config lines that define
its layers, the net each kind of build builds (``net_to_build``), and its rec layer's unit as a plain net of one
step (for the live stepper, ``returnn_stepper``).

In the step net each unit layer keeps its options; its references are rewritten: ``prev:X`` reads X's value of the
previous step from a ``recdebug_tensor`` (the stepper's buffer), ``data:source`` and ``data:KEY`` gather frame t,
``:i`` is t, ``base:`` loses one level; an ``rnn_cell`` layer gets its cell state through RETURNN's ``state``
option. A searched choice layer becomes the stepper's top-k; a choice that is not searched takes the reference
label of step t (teacher forcing); a layer after the choice reads a value from before it through the backpointers.
"""
from __future__ import annotations

import copy
import re

from ..language.errors import RecDebugError
from .stepnet import readers_of

PREFIX = "step."
DROPPED_KEYS = ("initial_output", "is_output_layer", "loss", "loss_opts", "loss_scale", "collocate_with",
                "only_on_search", "only_on_eval", "register_as_extern_data")


def _refs(value, out: list):
    """The layer references among a layer dict's option values (strings; lists, tuples and dicts walked)."""
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _refs(v, out)
    elif isinstance(value, dict):
        for v in value.values():
            _refs(v, out)
    return out


# Options of a layer dict that never name a layer (their strings are kinds, modes, axes, code...).
NOT_REFS = frozenset({
    "class", "activation", "eval", "unit", "target", "loss", "loss_opts", "kind", "mode", "axis", "axes", "dtype",
    "out_type", "n_out", "out_dim", "shape", "padding", "input_type", "unit_opts", "name_scope", "reuse_params",
    "register_as_extern_data", "set_axes", "set_dim_tags", "max_seq_len", "direction", "red1", "red2", "var1",
    "var2", "eval_locals", "init", "forward_weights_init", "recurrent_weights_init", "bias_init", "weights_init",
    "L2", "dropout", "is_output_layer", "only_on_search", "only_on_eval", "beam_size", "length_normalization",
    "search", "cheating", "include_eos", "optimize_move_layers_out", "value", "scale", "num_heads",
    "total_key_dim", "filter_size", "strides", "dilation_rate", "with_bias", "keep_dims", "add_var2_if_empty",
    "initial_output", "collocate_with", "window_size", "filter", "tags",
})


def layer_refs(layer: dict) -> list:
    """Every reference string in a layer dict's options that may name a layer."""
    out = []
    for key, value in layer.items():
        if key not in NOT_REFS:
            _refs(value, out)
    return out


def config_lines(text: str | None, net: dict) -> dict:
    """path -> 1-based line of the config text that defines the layer (its quoted name followed by a colon),
    searched in order, each unit's layers after its rec layer's line."""
    if not text:
        return {}
    lines = text.splitlines()
    start = next((i for i, s in enumerate(lines) if re.match(r"\s*network\s*=", s)), 0)
    out = {}

    def find(name, after):
        pat = re.compile(r"""["']""" + re.escape(name) + r"""["']\s*:""")
        for i in range(after, len(lines)):
            if pat.search(lines[i]):
                return i
        return None

    def visit(layers: dict, prefix: str, after: int):
        for name, layer in layers.items():
            i = find(name, after)
            if i is None:
                continue
            out[prefix + name] = i + 1
            if isinstance(layer, dict) and isinstance(layer.get("unit"), dict):
                visit(layer["unit"], prefix + name + "/", i + 1)

    visit(net, "", start)
    return out


def net_to_build(net: dict, kind: str, rec: str | None, rec_layers: list, skip=()) -> tuple:
    """The config's net as a build of ``kind`` builds it (a copy; the config's own stays as it is): the layers it
    fetches made output layers, a search's best hypotheses as decide layers. Returns (the net, {searched rec layer:
    its best hypothesis' layer}, the choice layer a search trace follows or None).

    kind: "run", "search" (RETURNN's own search), "save" (every parameter), "trace" / "trace_grad" (every unit layer
    at every step), "trace_search" (every unit layer of every hypothesis), "templates" / "templates_search" (every
    unit layer kept in the loop, for the stepper to read). ``skip``: top-level layers a run leaves out."""
    net = copy.deepcopy(net)
    searched, choice = {}, None
    if kind in ("run", "search", "save"):  # every top-level layer (RETURNN builds the output layers and what they read)
        for name, layer in net.items():
            if isinstance(layer, dict) and name not in skip:
                layer["is_output_layer"] = True
    if kind == "save":  # every layer of each unit too (RETURNN builds a unit's layers only as its outputs need)
        for name in rec_layers:
            for sub, layer in net[name]["unit"].items():
                if sub != "end" and isinstance(layer, dict):  # (see "trace" below)
                    layer["is_output_layer"] = True
    if kind == "search":
        for name in rec_layers:
            if any(isinstance(x, dict) and x.get("class") == "choice" for x in net[name]["unit"].values()):
                # the best by the scores the search ends with (a choice layer's length_normalization included)
                net[f"{name}.best"] = {"class": "decide", "from": name, "is_output_layer": True,
                                       "length_normalization": False}
                searched[name] = f"{name}.best"
    if kind == "trace_search":
        unit = net[rec]["unit"]
        choice = _search_choice(rec, unit)
        for layer in unit.values():
            layer["is_output_layer"] = True
        unit[choice + ".scores"] = {"class": "choice_get_beam_scores", "from": choice, "is_output_layer": True}
        net[rec]["is_output_layer"] = True
        net[rec]["optimize_move_layers_out"] = False  # every layer in the loop: one value per hypothesis
    if kind in ("trace", "trace_grad", "templates", "templates_search"):
        net[rec]["is_output_layer"] = True
        for name, layer in net[rec]["unit"].items():
            # (the end layer of a loop over its targets is not built: RETURNN then misses its prev:end)
            if name != "end":
                layer["is_output_layer"] = True
        if kind.startswith("templates"):  # every layer in the loop: its in-loop template, its state
            net[rec]["optimize_move_layers_out"] = False
    return net, searched, choice


def _search_choice(rec: str, unit: dict) -> str:
    """The one choice layer of a unit, searched over."""
    choices = [n for n, layer in unit.items() if isinstance(layer, dict) and layer.get("class") == "choice"]
    if len(choices) != 1:
        raise RecDebugError(f"rec layer {rec!r} has {len(choices) or 'no'} choice layers {choices}: a search "
                            "trace follows one" if choices else f"rec layer {rec!r} has no choice layer: there is "
                            "no search to trace", hint="m.trace(...) without search=True")
    return choices[0]


def config_step_net(net: dict, rec: str, states: dict, cells: dict, search_choice, forced: dict, beam: int,
                    target_dims: dict, cell_structure: dict) -> tuple[dict, set]:
    """The unit of ``net[rec]`` as a flat net of one step, and the names of its layers after the searched choice.

    ``states``: unit layer read with ``prev:`` -> (key of its recdebug_tensor, its dims, dtype, sparse dim, the
    top-level layers that have its dynamic dims);
    ``cells``: rnn_cell layer -> [(key, dims, dtype)] of its cell state's parts, ``cell_structure`` how they nest
    (None: one part); ``forced``: choice layer -> the data key of its reference labels; ``target_dims``: the dim a
    layer's ``target`` gives it inside the unit."""
    unit = net[rec]["unit"]
    top = {}
    for name, layer in net.items():
        if name == rec or not isinstance(layer, dict) or _depends_on(net, name, rec):
            continue
        top[name] = {k: v for k, v in layer.items() if k not in ("loss", "loss_opts", "loss_scale", "is_output_layer")}
    flat = _FlatNet(top, net[rec], "T")
    names = set(unit)
    for name, (key, dims, dtype, sparse, dims_from) in states.items():
        top[f"{PREFIX}{name}.at_step"] = {"class": "recdebug_tensor", "key": key, "shape": dims, "dtype": dtype,
                                          "sparse_dim": sparse}
        if dims_from:  # layers of the step net with its dynamic dims (an encoder's computed axis)
            top[f"{PREFIX}{name}.at_step"]["dims_from"] = list(dims_from)
    for name, parts in cells.items():
        for i, (key, dims, dtype) in enumerate(parts):
            top[f"{PREFIX}{name}.state{i}"] = {"class": "recdebug_tensor", "key": key, "shape": dims, "dtype": dtype}
    for name, layer in unit.items():
        d = {k: v for k, v in layer.items() if k not in DROPPED_KEYS}
        if layer.get("class") == "choice":
            if name == search_choice:
                src = _rewrite(layer.get("from"), names, set(states), flat)
                src = src[0] if isinstance(src, list) and len(src) == 1 else src
                if layer.get("input_type", "prob") == "prob":
                    top[f"{PREFIX}{name}.log_prob"] = {"class": "activation", "activation": "safe_log", "from": src}
                    src = f"{PREFIX}{name}.log_prob"
                top[PREFIX + name] = {"class": "recdebug_config_beam_topk", "from": src, "beam_size": beam,
                                      "key": "search", "is_output_layer": True}
                if layer.get("length_normalization", True):  # (RETURNN's default)
                    top[PREFIX + name]["length_normalization"] = float(
                        layer.get("length_normalization_exponent", 1.0))
                continue
            top[PREFIX + name] = {"class": "copy", "from": flat.data_layer(forced[name]), "is_output_layer": True}
            continue
        src = layer.get("from")
        src = src[0] if isinstance(src, (list, tuple)) and len(src) == 1 else src
        if layer.get("class") == "get_last_hidden_state" and isinstance(src, str) and src.startswith("prev:") \
                and src[len("prev:"):] in cells:  # an rnn_cell's state of the step before: the stepper's buffers
            parts = [f"{PREFIX}{src[len('prev:'):]}.state{i}" for i in range(len(cells[src[len("prev:"):]]))]
            key = layer.get("key", "*")
            if isinstance(key, str) and key not in ("*", "flat"):
                key = ("c", "h").index(key) if key in ("c", "h") else key
            top[PREFIX + name] = {"class": "copy", "from": parts if key in ("*", "flat") else [parts[key]],
                                  "is_output_layer": True}
            continue
        out = {k: v if k in NOT_REFS else _rewrite(v, names, set(states), flat) for k, v in d.items()}
        if isinstance(out.get("unit"), dict):  # a nested rec layer: what its unit reads of this unit, and of the top
            out["unit"] = _inner_unit(out["unit"], 1, lambda ref: _rewrite(ref, names, set(states), flat))
        if out.pop("target", None) is not None:  # inside a unit the target gives the dim: give it here
            if "n_out" not in out and "out_dim" not in out and name in target_dims:
                out["n_out"] = target_dims[name]
        if name in cells:
            refs = [f"{PREFIX}{name}.state{i}" for i in range(len(cells[name]))]
            out["state"] = refs[0] if cell_structure[name] is None else cell_structure[name](refs)
        out["is_output_layer"] = True
        top[PREFIX + name] = out
    after = set()
    if search_choice is not None:
        in_step = {PREFIX + n for n in unit} | {f"{PREFIX}{n}.at_step" for n in states}
        after = readers_of(top, in_step, {PREFIX + search_choice},
                           refs=lambda d: [r.partition("/")[0] for r in layer_refs(d)])
        for lname in after - {PREFIX + search_choice}:
            layer = top[lname]
            for k in list(layer):
                if k not in NOT_REFS:
                    layer[k] = _reorder(layer[k], after, PREFIX + search_choice, top, unit)
    return top, after


def _inner_unit(unit: dict, depth: int, rewrite) -> dict:
    """A nested rec layer's unit (``depth`` levels below the stepped unit) for the step net: a reference that
    reaches the stepped unit (``depth`` times ``base:``) is rewritten as the unit's own references are; one that
    reaches past it loses one ``base:`` (the step net is the top level). Every layer is made an output layer, so
    that RETURNN keeps its value at every inner step (``descend``)."""
    def ref(value):
        if isinstance(value, (list, tuple)):
            out = [ref(v) for v in value]
            return tuple(out) if isinstance(value, tuple) else out
        if isinstance(value, dict):
            return {k: ref(v) for k, v in value.items()}
        if not isinstance(value, str) or not value.startswith("base:" * depth):
            return value
        rest = value[len("base:") * depth:]
        if rest.startswith("base:"):
            return "base:" * depth + rest[len("base:"):]
        return "base:" * depth + rewrite(rest)

    out = {}
    for name, layer in unit.items():
        d = {k: v if k in NOT_REFS else ref(v) for k, v in layer.items()}
        if isinstance(d.get("unit"), dict):
            d["unit"] = _inner_unit(d["unit"], depth + 1, rewrite)
        d["is_output_layer"] = True
        out[name] = d
    return out


def _rewrite(value, names: dict, states: set, step):
    """A reference string of a unit layer, rewritten for the flat step net."""
    if isinstance(value, (list, tuple)):
        out = [_rewrite(v, names, states, step) for v in value]
        return tuple(out) if isinstance(value, tuple) else out
    if isinstance(value, dict):
        return {k: _rewrite(v, names, states, step) for k, v in value.items()}
    if not isinstance(value, str):
        return value
    if value.startswith("prev:"):
        name = value[len("prev:"):]
        if name not in states:
            raise RecDebugError(f"stepping: prev:{name} names no layer of the unit")
        return f"{PREFIX}{name}.at_step"
    if value.startswith("base:"):
        rest = value[len("base:"):]
        if rest.startswith("base:"):
            raise RecDebugError(f"stepping: {value!r} reaches past the top level")
        return rest
    if value == ":i":
        return step.index_layer
    if value in ("data", "data:source"):
        return step.source_layer()
    if value.startswith("data:"):
        return step.data_layer(value[len("data:"):])
    name, sep, sub = value.partition("/")
    if name in names:
        return PREFIX + name + sep + sub
    return value


class _FlatNet:
    """The flat net being made: extra layers added on demand (frame t of a data key, the unit's source)."""

    def __init__(self, top: dict, rec: dict, time_axis: str):
        self.net, self.rec, self.time_axis = top, rec, time_axis
        self.index_layer = PREFIX + "index"
        self.net[self.index_layer] = {"class": "recdebug_tensor", "key": "index", "shape": [], "dtype": "int32"}

    def source_layer(self) -> str:
        name = PREFIX + "source"
        if name not in self.net:
            src = self.rec.get("from", "data")
            src = [src] if isinstance(src, str) else list(src)
            if not src:
                raise RecDebugError("stepping: the unit reads data:source, but the rec layer has no 'from'")
            if len(src) > 1:
                self.net[name + ".concat"] = {"class": "copy", "from": src}
                src = [name + ".concat"]
            self.net[name] = {"class": "gather", "from": src[0], "axis": self.time_axis, "position": self.index_layer}
        return name

    def data_layer(self, key: str) -> str:
        name = f"{PREFIX}data.{key}"
        if name not in self.net:
            self.net[name] = {"class": "gather", "from": f"data:{key}", "axis": "T", "position": self.index_layer}
        return name


def _depends_on(net: dict, name: str, target: str, seen=None) -> bool:
    seen = set() if seen is None else seen
    if name in seen or name not in net or not isinstance(net[name], dict):
        return False
    seen.add(name)
    for ref in layer_refs(net[name]):
        ref = ref.split(":")[-1] if ref.startswith("base:") else ref
        head = ref.partition("/")[0]
        if head == target or _depends_on(net, head, target, seen):
            return True
    return False


def _reorder(value, after: set, choice: str, net: dict, unit: dict):
    """In a layer after the choice: a reference to a unit layer computed before it (or a State of the previous
    hypotheses) reads it through the backpointers."""
    if isinstance(value, (list, tuple)):
        out = [_reorder(v, after, choice, net, unit) for v in value]
        return tuple(out) if isinstance(value, tuple) else out
    if isinstance(value, dict):
        return {k: _reorder(v, after, choice, net, unit) for k, v in value.items()}
    if not isinstance(value, str) or not value.startswith(PREFIX) or value.partition("/")[0] in after:
        return value
    head = value.partition("/")[0]
    if head not in net or head == PREFIX + "index":
        return value
    name = value + ".beam"
    net.setdefault(name, {"class": "recdebug_beam_reorder", "from": value, "choice": choice})
    return name
