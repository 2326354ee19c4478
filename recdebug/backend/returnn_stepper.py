"""Live stepping of a RETURNN config's rec layer (``ReturnnModel.stepper``), one iteration per call.

The unit of the rec layer becomes a plain RETURNN net that runs one iteration: each layer keeps its options; its
references are rewritten (``prev:X`` reads X's value of the previous step, fed from the stepper's buffers;
``data:source`` and ``data:KEY`` gather frame t; ``:i`` is t; ``base:`` loses one level). An ``rnn_cell`` layer gets
its cell state the same way, through RETURNN's ``state`` option. The parameters are those of the model's own build
(from its checkpoint). Each step feeds step t's States and writes step t+1's, so that ``step_back`` is exact and
``set_state`` edits a State before continuing; the buffers are numpy arrays (the models debugged this way are small).

A ``choice`` layer takes the reference label of step t (teacher forcing, the targets given by extern_data name),
or with ``search=True`` runs the beam search: the K hypotheses of a sequence are K entries of the batch, the choice
is a top-k over (score + log-probability) of each sequence's K * V candidates, as in ``stepsearch``.
"""
from __future__ import annotations

import contextlib
import io
import os
import weakref

import numpy as np

from ..language.errors import RecDebugError, RunError
from .returnn_model import NOT_REFS, ModelBuild, behavior_version, extern_sizes, feed_extern_data, layer_refs
from ..emission.stepnet import readers_of
from ..records.protocol import SteppingControls, count_steps, ended_sequences
from .stepsearch import ENDED_OTHER_LABELS
from ..records.trace import Beams

PREFIX = "step."
DROPPED_KEYS = ("initial_output", "is_output_layer", "loss", "loss_opts", "loss_scale", "collocate_with",
                "only_on_search", "only_on_eval", "register_as_extern_data")


class ConfigState:
    """A layer of the unit read with ``prev:``: the stepper keeps its value of every step."""

    def __init__(self, key: str, name: str, shape: tuple, dtype: str, dims: list, sparse: str | None):
        self.key, self.name, self.shape, self.dtype, self.dims, self.sparse = key, name, shape, dtype, dims, sparse

    def path(self, graph=None) -> str:
        return self.key

    def __repr__(self):
        return f"ConfigState({self.key!r}, shape={self.shape}, dtype={self.dtype})"


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


class StepBuild:
    """The flat step net of one rec layer, in its own graph and session, its parameters copied from ``source``
    (the model's build of the unit with every layer in the loop)."""

    def __init__(self, model, rec: str, source: ModelBuild, states: dict, cell_states: dict, search_choice,
                 forced: dict, beam: int, batch: int):
        import tensorflow as tf
        from returnn.tf.network import TFNetwork

        from .stepper import _device_tensors, _register_layer_class
        from .stepsearch import register_layer_classes

        _register_layer_class()
        register_layer_classes()
        _register_config_topk()
        self.model, self.rec = model, rec
        net = model.net
        unit = net[rec]["unit"]
        top = {}
        for name, layer in net.items():
            if name == rec or not isinstance(layer, dict) or _depends_on(net, name, rec):
                continue
            top[name] = {k: v for k, v in layer.items() if k not in ("loss", "loss_opts", "loss_scale",
                                                                      "is_output_layer")}
        time_axis = "T"
        flat = _FlatNet(top, net[rec], time_axis)
        names = set(unit)
        self.tf_graph = tf.Graph()
        self.device_tensors = {}
        with self.tf_graph.as_default():
            self.t_ph = tf.compat.v1.placeholder(tf.int32, [], name="recdebug_step")
            self.device_tensors["index"] = self.t_ph
            self.state_ph = {}
            for name, st in states.items():
                ph = tf.compat.v1.placeholder(st.dtype, [None] + list(st.shape), name=f"state_{len(self.state_ph)}")
                self.state_ph[name] = ph
                self.device_tensors[f"state/{name}"] = ph
                top[f"{PREFIX}{name}.at_step"] = {"class": "recdebug_tensor", "key": f"state/{name}",
                                                  "shape": st.dims, "dtype": st.dtype, "sparse_dim": st.sparse_tag}
            self.cell_ph = {}
            for name, parts in cell_states.items():
                for i, (shape, dtype, tags) in enumerate(parts):
                    ph = tf.compat.v1.placeholder(dtype, [None] + list(shape), name=f"cell_state_{name}_{i}")
                    self.cell_ph[(name, i)] = ph
                    self.device_tensors[f"cell/{name}/{i}"] = ph
                    top[f"{PREFIX}{name}.state{i}"] = {"class": "recdebug_tensor", "key": f"cell/{name}/{i}",
                                                       "shape": tags, "dtype": dtype}
            if search_choice is not None:
                self.scores_ph = tf.compat.v1.placeholder(tf.float32, [None], name="scores")
                self.ended_ph = tf.compat.v1.placeholder(tf.bool, [None], name="ended")
                self.device_tensors["search/scores"] = self.scores_ph
                self.device_tensors["search/ended"] = self.ended_ph
            for name, layer in unit.items():
                d = {k: v for k, v in layer.items() if k not in DROPPED_KEYS}
                if layer.get("class") == "choice":
                    if name == search_choice:
                        src = _rewrite(layer.get("from"), names, set(states), flat)
                        src = src[0] if isinstance(src, list) and len(src) == 1 else src
                        if layer.get("input_type", "prob") == "prob":
                            top[f"{PREFIX}{name}.log_prob"] = {"class": "activation", "activation": "safe_log",
                                                               "from": src}
                            src = f"{PREFIX}{name}.log_prob"
                        top[PREFIX + name] = {"class": "recdebug_config_beam_topk", "from": src, "beam_size": beam,
                                              "key": "search", "is_output_layer": True}
                        continue
                    top[PREFIX + name] = {"class": "copy", "from": flat.data_layer(forced[name]),
                                          "is_output_layer": True}
                    continue
                out = {}
                for k, v in d.items():
                    out[k] = v if k in NOT_REFS else _rewrite(v, names, set(states), flat)
                if out.pop("target", None) is not None:  # inside a unit the target gives the dim: give it here
                    if "n_out" not in out and "out_dim" not in out and name in source.templates:
                        out["n_out"] = source.templates[name].dim
                if name in cell_states:
                    parts = cell_states[name]
                    refs = [f"{PREFIX}{name}.state{i}" for i in range(len(parts))]
                    out["state"] = refs[0] if source.cell_structure[name] is None else \
                        source.cell_structure[name](refs)
                out["is_output_layer"] = True
                top[PREFIX + name] = out
            self.after_choice = set()
            if search_choice is not None:
                in_step = {PREFIX + n for n in unit} | {f"{PREFIX}{n}.at_step" for n in states}
                self.after_choice = readers_of(top, in_step, {PREFIX + search_choice},
                                               refs=lambda d: [r.partition("/")[0] for r in layer_refs(d)])
                for lname in self.after_choice - {PREFIX + search_choice}:
                    layer = top[lname]
                    for k in list(layer):
                        if k not in NOT_REFS:
                            layer[k] = _reorder(layer[k], self.after_choice, PREFIX + search_choice, top, unit)
            self.net_dict = top
            token = _device_tensors.set(self.device_tensors)
            try:
                with behavior_version(model.behavior_version):
                    self.train_flag = tf.compat.v1.placeholder_with_default(False, shape=(), name="train_flag")
                    self.network = TFNetwork(config=model.config, train_flag=self.train_flag, eval_flag=True,
                                             search_flag=False)
                    try:
                        with contextlib.redirect_stdout(io.StringIO()):  # RETURNN prints a failed layer at length
                            self.network.construct_from_dict(top)
                        self.sizes = extern_sizes(self.network)
                    except Exception as e:
                        raise RecDebugError(
                            f"stepping {rec!r}: RETURNN could not build its unit as one step: {type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''}",
                            hint="m.trace(...) records every step of the rec layer as RETURNN runs it") from (e if os.environ.get("RECDEBUG_DEBUG") else None)
            finally:
                _device_tensors.reset(token)
            self.session = tf.compat.v1.Session(graph=self.tf_graph,
                                                config=tf.compat.v1.ConfigProto(allow_soft_placement=True))
            self.network.initialize_params(self.session)
        self._copy_params(source, unit)
        self.outputs = {}
        for name in unit:
            layer = self.network.layers.get(PREFIX + name)
            if layer is not None:
                self.outputs[name] = layer.output.copy_as_batch_major().placeholder
        self.cell_out = {}
        for name in cell_states:
            from tensorflow.python.util import nest

            self.cell_out[name] = nest.flatten(self.network.layers[PREFIX + name].rec_vars_outputs["state"])
        self.chooser = self.network.layers[PREFIX + search_choice] if search_choice is not None else None

    def _copy_params(self, source: ModelBuild, unit: dict):
        """Every parameter of the step net gets its value from the model's build (the checkpoint's values)."""
        values = {}
        for name, layer in self.network.layers.items():
            if not layer.params:
                continue
            if name.startswith(PREFIX) and name[len(PREFIX):] in unit:
                src = source.loop_layers.get(name[len(PREFIX):])
            else:
                src = source.network.layers.get(name)
            if src is None or set(src.params) != set(layer.params):
                raise RecDebugError(f"stepping: the parameters of layer {name!r} do not match the model's "
                                    f"({sorted(layer.params)} vs {sorted(src.params) if src else 'no layer'})")
            for key, var in layer.params.items():
                values[var] = source.session.run(src.params[key])
        for var, value in values.items():
            var.load(value, self.session)

    def close(self):
        if self.session is not None:
            self.session.close()
            self.session = None


def _register_config_topk():
    """The search's top-k for a config's choice layer: its labels in the layout of a gathered input's labels
    (version 1), so that a config's layers reading them (a linear layer used as an embedding) take their own
    default dtype, as they do reading the choice layer inside RETURNN's loop."""
    from returnn.tf.layers.basic import get_layer_class, register_layer_class

    try:
        get_layer_class("recdebug_config_beam_topk")
        return
    except Exception:
        pass
    base = get_layer_class("recdebug_beam_topk")

    class ConfigBeamTopKLayer(base):
        layer_class = "recdebug_config_beam_topk"

        @classmethod
        def get_out_data_from_opts(cls, **kwargs):
            out = base.get_out_data_from_opts(**kwargs)
            return out.copy_template().__class__(name=out.name, dims=out.dims, dtype=out.dtype,
                                                 sparse_dim=out.sparse_dim, batch=out.batch, version=1)

    register_layer_class(ConfigBeamTopKLayer)


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


class ReturnnStepper(SteppingControls):
    """Live stepping of a RETURNN config's rec layer; the same controls as ``rd.Stepper``."""

    def __init__(self, model, rec: str, inputs: dict, seq_lens: dict, search: bool = False, beam_size=None):
        from .engine import build_apart

        self.model, self.rec, self.device = model, rec, model.device
        unit = model.net[rec]["unit"]
        rec_dict = model.net[rec]
        self.loop_name = rec
        self.search = bool(search)
        if self.search and "end" not in unit and not rec_dict.get("from"):
            raise RecDebugError(f"rec layer {rec!r} has no end layer: a search needs one in the unit (RETURNN ends each "
                                "hypothesis where it is true)", hint='e.g. "end": {"class": "compare", "from": '
                                                                     '"output", "value": 0}')
        source = model._build("templates_search" if self.search else "templates", rec)
        self._analyze(source, unit)
        choices = [n for n, layer in unit.items() if layer.get("class") == "choice"]
        if self.search and not choices:
            raise RecDebugError(f"rec layer {rec!r} has no choice layer: there is no search to step",
                                hint="step it without search=True (teacher forcing)")
        if self.search and len(choices) > 1:
            raise RecDebugError(f"rec layer {rec!r} has {len(choices)} choice layers {choices}: live stepping "
                                "searches over one")
        self.choice = choices[0] if self.search else None
        self.beam = 1
        if self.search:
            self.beam = int(beam_size or unit[self.choice].get("beam_size") or 1)
            if self.beam < 1:
                raise RecDebugError(f"beam_size must be at least 1, got {self.beam}")
        forced = {}
        for name in choices:
            if name == self.choice:
                continue
            target = unit[name].get("target") or rec_dict.get("target")
            target = target[0] if isinstance(target, (list, tuple)) else target
            if not isinstance(target, str):
                raise RecDebugError(f"choice layer {rec}/{name} has no target to take its labels from (teacher "
                                    "forcing)", hint="step it with search=True")
            forced[name] = target
        self.forced = forced
        self.include_eos = bool(rec_dict.get("include_eos", False))
        self.has_end = "end" in unit
        self.unstacked = bool(rec_dict.get("from")) if "from" in rec_dict else False
        # how many steps: the rec layer's own time axis (teacher forcing, or over its input), or max_seq_len
        fd = source.feed_dict(inputs, seq_lens)
        batch = None
        for ph, value in fd.items():
            if ph.op.type == "Placeholder" and np.ndim(value) >= 1 and ph in _data_placeholders(source.network):
                batch = np.shape(value)[_data_placeholders(source.network)[ph]]
                break
        if batch is None:
            raise RunError("stepping needs at least one input with the batch axis", hint="m.stepper({'data': x})")
        self.batch = int(batch)
        if self.search:
            self._lens = None
            self.max_steps = self._max_seq_len(source, fd)
            if self.unstacked:
                src = rec_dict["from"] if isinstance(rec_dict["from"], str) else rec_dict["from"][0]
                key = src[len("data:"):] if src.startswith("data:") else ("data" if src == "data" else None)
                lens = next(iter(source.sizes.get(key, {}).values()), None) if key else source.layer_lens.get(src)
                self._lens = np.asarray(source.session.run(lens, feed_dict=fd))
                self.max_steps = int(min(self.max_steps, self._lens.max()))
        else:
            self._lens = np.asarray(source.session.run(source.rec_lens, feed_dict=fd))
            self.max_steps = int(self._lens.max())
        self._by_lengths = self._lens is not None and (not self.search or self.unstacked)
        if self.search:  # hypothesis k of sequence b is entry b*K+k
            inputs = {k: np.repeat(np.asarray(v), self.beam, axis=0) for k, v in inputs.items()}
            seq_lens = {k: np.repeat(np.asarray(v), self.beam) for k, v in seq_lens.items()}
        self.engine = build_apart(lambda: StepBuild(model, rec, source, self._states, self._cells, self.choice,
                                                    forced, self.beam, self.batch * self.beam))
        self._release = weakref.finalize(self, self.engine.close)
        self._release.atexit = False
        self._feed = feed_extern_data(self.engine.network, {k: v for k, v in inputs.items()
                                                            if k in self.engine.network.extern_data.data},
                                      {k: v for k, v in seq_lens.items()
                                       if k in self.engine.network.extern_data.data}, sizes=self.engine.sizes)
        self._top_cache = None
        self.closed = None
        self._closed_hint = ""
        self._watchers, self._quiet = [], 0
        self.breakpoint = None
        self.edits = []
        self.reset()

    # --- what the unit holds ---
    def _analyze(self, source: ModelBuild, unit: dict):
        rec = self.rec
        for name, layer in unit.items():
            if layer.get("class") == "rec" and isinstance(layer.get("unit"), dict):
                raise RecDebugError(f"stepping: layer {rec}/{name} is a rec layer inside the unit (a nested loop); "
                                    "the stepper runs one loop level", hint="m.trace(...) records it")
        self._states, self._cells = {}, {}
        self._order = [n for n in unit]
        for name in source.prev_needed:
            tmpl = source.templates[name].copy_as_batch_major()
            shape = tuple(tmpl.batch_shape[1:])
            if tmpl.batch_dim_axis is None or any(s is None for s in shape):
                raise RecDebugError(
                    f"stepping: {rec}/{name} (read with prev:) has the shape {tmpl}; the stepper keeps States with "
                    "the batch axis and static dims only", hint="m.trace(...) records it")
            st = ConfigState(f"{rec}/{name}", name, shape, tmpl.dtype, list(tmpl.dim_tags),
                             tmpl.sparse_dim.description if tmpl.sparse_dim is not None else None)
            st.sparse_tag = tmpl.sparse_dim
            st.initial = _initial_value(unit[name], rec, name)
            self._states[name] = st
        for name, layer in source.loop_layers.items():
            extra = getattr(layer, "rec_vars_outputs", {}) or {}
            if not extra or unit[name].get("class") == "choice":  # a search's scores: the stepper keeps them
                continue
            if unit[name].get("class") != "rnn_cell" or set(extra) != {"state"}:
                raise RecDebugError(
                    f"stepping: layer {rec}/{name} (class {unit[name].get('class')!r}) keeps a hidden state of its "
                    f"own across steps ({sorted(extra)}); the stepper cannot run it one step at a time",
                    hint="m.trace(...) records every step of it as RETURNN runs it")
            init = unit[name].get("initial_state")
            if init not in (None, 0, "zeros"):
                raise RecDebugError(f"stepping: rnn_cell layer {rec}/{name} has initial_state={init!r}; the stepper "
                                    "starts cell states at zeros only", hint="m.trace(...) records it")
            from tensorflow.python.util import nest
            from returnn.tensor import Dim, batch_dim

            parts = []
            for i, t in enumerate(nest.flatten(extra["state"])):
                shape = tuple(int(s) for s in t.shape.as_list()[1:])
                tags = [batch_dim] + [Dim(s, name=f"{name}:cell_state{i}:{j}", kind=Dim.Types.Feature)
                                      for j, s in enumerate(shape)]
                parts.append((shape, t.dtype.name, tags))
            self._cells[name] = parts

    def _max_seq_len(self, source: ModelBuild, fd: dict) -> int:
        """The search's bound on steps: the rec layer's max_seq_len (a number, or RETURNN's
        ``max_len_from('base:x')`` expression, evaluated the same way)."""
        m = self.model.net[self.rec].get("max_seq_len")
        if isinstance(m, (int, np.integer)):
            return int(m)
        if isinstance(m, str):
            def max_len_from(src: str) -> int:
                name = src[len("base:"):] if src.startswith("base:") else src
                key = name[len("data:"):] if name.startswith("data:") else None
                lens = next(iter(source.sizes.get(key, {}).values()), None) if key else source.layer_lens.get(name)
                if lens is None:
                    raise RecDebugError(f"max_len_from({src!r}): no layer with lengths named {name!r}")
                return int(np.max(source.session.run(lens, feed_dict=fd)))
            try:
                return int(eval(m, {"max_len_from": max_len_from, "__builtins__": {"min": min, "max": max,
                                                                                    "int": int}}))
            except Exception as e:
                raise RecDebugError(f"stepping: cannot evaluate max_seq_len {m!r} of {self.rec!r}: {e}") from None
        raise RecDebugError(f"stepping a search of {self.rec!r} needs its max_seq_len (a number, or "
                            "\"max_len_from('base:...')\")")

    # --- the same properties as rd.Stepper ---
    @property
    def T(self) -> int:
        return int(self._lens.max()) if self._by_lengths else self.max_steps

    @property
    def finished(self) -> bool:
        return self.t >= self.T or ((self.has_end or self.search) and not self._by_lengths
                                    and len(self.ended) == self.batch)

    @property
    def ended(self) -> dict:
        return ended_sequences(self.t, self.T, self.batch, lens=self._lens if self._by_lengths else None,
                               hyp_ended=self._hyp_ended if self.search else None, end_flags=self._end,
                               include_eos=self.include_eos)

    def __repr__(self):
        return f"ReturnnStepper({self.rec!r}, {self.status})"

    @property
    def states(self) -> list:
        return list(self._states.values())

    def _live_engine(self) -> StepBuild:
        if self.closed is not None:
            raise RecDebugError(f"this stepper is closed: {self.closed}; its TensorFlow session is gone",
                                hint=self._closed_hint or "make a new stepper: m.stepper(...)")
        return self.engine

    def _state(self, x) -> ConfigState:
        if isinstance(x, ConfigState):
            return x
        for st in self._states.values():
            if x in (st.key, st.name):
                return st
        raise RecDebugError(f"no State {x!r} in {self.rec!r}; the layers read with prev: are "
                            f"{sorted(s.key for s in self._states.values())}")

    # --- moving ---
    def reset(self):
        e = self._live_engine()
        n = self.batch * self.beam
        self._buf = {name: np.zeros((self.T + 1, n) + st.shape, st.dtype) for name, st in self._states.items()}
        for name, st in self._states.items():
            self._buf[name][0] = st.initial
        self._cell_buf = {name: [np.zeros((self.T + 1, n) + shape, dtype) for shape, dtype, _ in parts]
                          for name, parts in self._cells.items()}
        self._vals = {}
        self._ended_buf = np.zeros((self.T + 1, n), bool)
        self._scores_buf = np.zeros((self.T + 1, n), np.float32)
        if self.search:  # one hypothesis to start from
            first = np.array([0.0] + [ENDED_OTHER_LABELS] * (self.beam - 1), np.float32)
            self._scores_buf[0] = np.tile(first, self.batch)
        if self._top_cache is None:  # the layers outside the loop, computed once
            tops = {}
            for name, layer in e.network.layers.items():
                if name.startswith(PREFIX) or "/" in name or ":" in name or layer.output.placeholder is None:
                    continue
                if layer.layer_class in ("data",):
                    continue
                tops[layer.output.placeholder] = layer.output.placeholder
            values = e.session.run(list(tops), feed_dict=self._feed) if tops else []
            self._top_cache = dict(zip(tops, values))
        self.t = 0
        self.edits.append(0)
        self._active, self._end, self._nonfinite = [], [], []
        self._labels, self._backpointers, self._scores, self._hyp_ended = [], [], [], []
        self.breakpoint = None
        self._moved()
        return self

    def step(self, n: int = 1):
        e = self._live_engine()
        n = count_steps(n, "step", "step_back(n) goes back")
        for _ in range(n):
            if self.finished:
                break
            self._one_step(e)
        self._moved()
        return self

    def _one_step(self, e: StepBuild):
        t, K = self.t, self.beam
        fd = dict(self._feed)
        fd.update(self._top_cache)
        fd[e.t_ph] = t
        for name, ph in e.state_ph.items():
            fd[ph] = self._buf[name][t]
        for (name, i), ph in e.cell_ph.items():
            fd[ph] = self._cell_buf[name][i][t]
        fetch = {"out": e.outputs, "cell": e.cell_out}
        if self.search:
            fd[e.scores_ph] = self._scores_buf[t]
            fd[e.ended_ph] = self._ended_buf[t]
            fetch["labels"] = e.chooser.output.placeholder
            fetch["src"] = e.chooser.flat_src
            fetch["slot"] = e.chooser.src_slot
            fetch["scores"] = e.chooser.new_scores
        out = e.session.run(fetch, feed_dict=fd)
        src = out.get("src")
        n = self.batch * K
        entries = np.arange(n)
        lens = None if self._lens is None else np.repeat(self._lens, K)
        end, include_eos = None, self.include_eos
        if self.forced or (self._lens is not None and not self.search):
            active = t < lens
        elif self.unstacked and self.search:
            active = t < lens
            end, include_eos = (t + 1 == lens), True
        else:
            active = np.ones(n, bool)
            if self.has_end:
                end = np.asarray(out["out"]["end"]).reshape(-1).astype(bool)
                if end.size == 1:
                    end = np.broadcast_to(end, (n,)).copy()
        if self.forced:
            end = None
        ended_t = self._ended_buf[t]
        if self.search or end is not None:
            if src is not None:
                ended_t = ended_t[src]
                if end is not None and self.has_end and PREFIX + "end" not in e.after_choice and not self.unstacked:
                    end = end[src]
            active = active & ~ended_t
            if end is not None and not include_eos:
                active = active & ~end
        gather = src if src is not None else entries
        nonfinite = {}
        for name, st in self._states.items():
            new = np.asarray(out["out"][name]).reshape((n,) + st.shape)
            old = self._buf[name][t][gather]
            if src is not None and PREFIX + name not in e.after_choice:
                new = new[src]
            mask = active.reshape((n,) + (1,) * len(st.shape))
            frozen = np.where(mask, new, old).astype(st.dtype)
            self._buf[name][t + 1] = frozen
            if st.dtype.startswith("float"):
                nonfinite[st.key] = bool((~np.isfinite(frozen) & mask).any())
        for name, parts in self._cells.items():
            for i, new in enumerate(out["cell"][name]):
                new = np.asarray(new)
                old = self._cell_buf[name][i][t][gather]
                if src is not None and PREFIX + name not in e.after_choice:
                    new = new[src]
                mask = active.reshape((n,) + (1,) * (new.ndim - 1))
                self._cell_buf[name][i][t + 1] = np.where(mask, new, old)
        for name, value in out["out"].items():
            value = np.asarray(value)
            if name not in self._vals:
                self._vals[name] = np.zeros((self.T,) + value.shape, value.dtype)
            if self._vals[name].shape[1:] != value.shape:  # a layer of varying shape: keep the step's own
                self._vals[name] = np.zeros((self.T,) + value.shape, value.dtype)
            self._vals[name][t] = value
        for kept in (self._active, self._end, self._nonfinite, self._labels, self._backpointers, self._scores,
                     self._hyp_ended):
            del kept[t:]
        self._active.append(active.reshape(self.batch, K)[:, 0] if K > 1 else active)
        self._end.append(end if end is not None else np.zeros(n, bool))
        self._nonfinite.append(nonfinite)
        if self.search or end is not None:
            self._ended_buf[t + 1] = ended_t | (end if end is not None else False)
        if self.search:
            self._scores_buf[t + 1] = out["scores"]
            self._labels.append(np.asarray(out["labels"]).reshape(self.batch, K))
            self._backpointers.append(np.asarray(out["slot"]))
            self._scores.append(np.asarray(out["scores"]).reshape(self.batch, K))
            self._end[-1] = (end if end is not None else np.zeros(n, bool)).reshape(self.batch, K)
            prev = self._hyp_ended[-1] if self._hyp_ended else np.zeros((self.batch, K), bool)
            self._hyp_ended.append(np.take_along_axis(prev, out["slot"], axis=1) | self._end[-1])
        self.t = t + 1

    def nonfinite_at(self, step: int) -> list:
        self._live_engine()
        return [self._state(k) for k, bad in self._nonfinite[step].items() if bad]

    # --- values ---
    def value(self, x, at: int | None = None) -> np.ndarray:
        """After k steps (default: now): a State's value (``"output/s"`` or its ConfigState), or a unit layer's
        value in iteration k-1; batch first (with search: [batch, beam, ...]), as RETURNN's batch-major layout."""
        self._live_engine()
        k = self.t if at is None else at
        if not 0 <= k <= self.t:
            raise RecDebugError(f"value at step {k}: only steps 0..{self.t} have run")
        key = x.key if isinstance(x, ConfigState) else x
        name = key[len(self.rec) + 1:] if isinstance(key, str) and key.startswith(self.rec + "/") else key
        if name in self._states:
            arr = self._buf[name][k]
        elif name in self.engine.outputs:
            if k == 0:
                raise RecDebugError(f"{key!r}: no iteration has run yet; call step() first")
            arr = self._vals[name][k - 1]
        else:
            raise RecDebugError(f"no layer {key!r} in the unit of {self.rec!r}; it has "
                                f"{sorted(f'{self.rec}/{n}' for n in self.engine.outputs)}")
        if self.search:
            arr = arr.reshape((self.batch, self.beam) + arr.shape[1:])
        return arr.copy()

    def set_state(self, state, value) -> "ReturnnStepper":
        """Replace a State's current value (step t; batch first, with search [batch, beam, ...])."""
        st = self._state(state)
        self._live_engine()
        value = np.asarray(value)
        expected = (self.batch,) + ((self.beam,) if self.search else ()) + st.shape
        if value.shape != expected:
            raise RunError(f"set_state({st.key!r}): shape {value.shape}, expected {expected}")
        if value.dtype.kind not in "biuf" or (value.dtype.kind == "f" and st.dtype.startswith("int")):
            raise RunError(f"set_state({st.key!r}): expected {st.dtype} values, got {value.dtype}")
        self._buf[st.name][self.t] = value.reshape((self.batch * self.beam,) + st.shape).astype(st.dtype)
        self.edits.append(self.t)
        self.breakpoint = None
        self._moved()
        return self

    def beams(self) -> Beams:
        self._live_engine()
        if not self.search:
            raise RecDebugError(f"{self.rec!r} is stepped without search: there are no beams",
                                hint="m.stepper(..., search=True)")
        t, b, k = self.t, self.batch, self.beam
        stack = (lambda rows, dtype: np.stack(rows[:t]) if t else np.zeros((0, b, k), dtype))
        return Beams(stack(self._labels, np.int32), stack(self._scores, np.float32),
                     stack(self._backpointers, np.int32), stack(self._end, bool),
                     bool(self.include_eos or self._by_lengths), self._lens if self._by_lengths else None)

    def close(self, why: str | None = None, hint: str | None = None):
        if self.closed is None:
            self.closed = why or "its close() was called"
            self._closed_hint = hint or "make a new stepper: m.stepper(...)"
        self._release()
        self._feed, self._top_cache = {}, None
        self._moved()

    # --- what the debugger asks ---
    def view_keys(self) -> list:
        return [st.key for st in self._states.values()]

    def layer_keys(self) -> list:
        return [f"{self.rec}/{n}" for n in self._order if n in self.engine.outputs]

    def describe_key(self, key: str) -> tuple:
        """(unit dims [(name, size)], whether it holds labels, its sparse dim's name, the loop axis' name)."""
        name = key[len(self.rec) + 1:]
        if name in self._states:
            st = self._states[name]
            dims = [(t.description or "dim", int(t.dimension)) for t in st.dims if not t.is_batch_dim()]
            return dims, st.dtype.startswith(("int", "uint", "bool")), st.sparse, "time"
        data = self.engine.network.layers[PREFIX + name].output.copy_as_batch_major()
        dims = [((t.description or f"{name}:{i}").replace(PREFIX, "", 1), int(t.dimension or 0))
                for i, t in enumerate(data.dim_tags[1:])]
        sparse = data.sparse_dim.description if data.sparse_dim is not None else None
        return dims, data.dtype.startswith(("int", "uint", "bool")), sparse, "time"

    def key_value(self, key: str, at: int) -> np.ndarray:
        """After ``at`` steps: a State's value, or a layer's value in iteration at-1 (zeros before any step)."""
        name = key[len(self.rec) + 1:]
        if name in self._states:
            return self.value(key, at=at)
        if self.t == 0:
            dims, _, _, _ = self.describe_key(key)
            shape = (self.batch,) + ((self.beam,) if self.search else ()) + tuple(size for _, size in dims)
            return np.zeros(shape, np.float32)
        return self.value(key, at=max(1, at))

    def key_before_choice(self, key: str) -> bool:
        name = key[len(self.rec) + 1:]
        return self.search and name not in self._states and PREFIX + name not in self.engine.after_choice

    def hierarchy_nodes(self) -> list:
        return self.model.hierarchy(self.rec, states={st.key for st in self._states.values()},
                                    in_loop={f"{self.rec}/{n}" for n in self._order})

    def net_dict_text(self) -> str:
        return self.model.net_text()


def _initial_value(layer: dict, rec: str, name: str):
    init = layer.get("initial_output", None)
    if init in (None, 0, "zeros", 0.0):
        return 0
    if init in ("ones", 1, 1.0):
        return 1
    if isinstance(init, (int, float)) and not isinstance(init, bool):
        return init
    raise RecDebugError(f"stepping: {rec}/{name} has initial_output={init!r}; the stepper starts States at a number, "
                        "'zeros' or 'ones'", hint="m.trace(...) records it")


def _data_placeholders(network) -> dict:
    """The extern data placeholders -> their batch axis."""
    return {d.placeholder: d.batch_dim_axis for d in network.extern_data.data.values()
            if d.placeholder is not None and d.batch_dim_axis is not None}
