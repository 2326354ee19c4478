"""Live stepping of a RETURNN config's rec layer (``ReturnnModel.stepper``), one iteration per call.

The unit of the rec layer becomes a plain RETURNN net that runs one iteration (``emission.confignet``); its
parameters are those of the model's own build (from its checkpoint). The States' buffers and the step are those of
the language's stepper (``stepcore``): each step reads entry t of every State's buffer on the device and writes
entry t+1, so that ``step_back`` is exact and ``set_state`` edits a State before continuing. A choice layer takes
the reference label of step t (teacher forcing, the targets given by extern_data name), or with ``search=True``
runs the beam search: the K hypotheses of a sequence are K entries of the batch, as in ``stepsearch``.
"""
from __future__ import annotations

import contextlib
import io
import os

import numpy as np

from ..emission.confignet import PREFIX, config_step_net
from ..language.errors import RecDebugError, RunError
from .build import Build
from .feeding import extern_sizes, feed_extern_data
from .returnn_model import ModelBuild, behavior_version, returnn_error
from ..records.protocol import ViewKey
from .stepcore import InnerStepsBase, LoopStepper, StepBuffers, building, valid_frames


class ConfigState:
    """A layer of the unit read with ``prev:``: the stepper keeps its value of every step."""

    def __init__(self, key: str, name: str, shape: tuple, dtype: str, dims: list, sparse: str | None,
                 shared: bool = False):
        """``dims``: its dim tags, batch first; ``shared``: it has no batch dim (one value for every sequence; the
        stepper's buffer keeps it for each alike), and ``dims`` are its own."""
        self.key, self.name, self.shape, self.dtype, self.dims, self.sparse = key, name, shape, dtype, dims, sparse
        self.shared = shared

    @property
    def unit_dims(self) -> list:
        """Its dim tags besides the batch."""
        return list(self.dims) if self.shared else list(self.dims[1:])

    def path(self, graph=None) -> str:
        return self.key

    def __repr__(self):
        return f"ConfigState({self.key!r}, shape={self.shape}, dtype={self.dtype})"


class ConfigStepEngine(Build):
    """The step net of one rec layer of a config on the shared State buffers and step op (``stepcore``), in its
    own graph and session, its parameters copied from ``source`` (the model's build of the unit with every layer in
    the loop). ``lengths``: the rec layer runs a given number of steps per entry (else, searching, until its end
    layer says so or its bound)."""

    def __init__(self, model, rec: str, source: ModelBuild, states: dict, cell_states: dict, search_choice,
                 forced: dict, beam: int, batch: int, max_steps: int, lengths: bool):
        import tensorflow as tf
        from returnn.tf.network import TFNetwork

        from .stepsearch import register_layer_classes

        register_layer_classes()
        _register_config_topk()
        self.model, self.rec = model, rec
        net = model.net
        unit = net[rec]["unit"]
        self.device, self.device_tensors = model.device, {}
        with self.scope():
            shapes = {st: ((batch,) + st.shape, st.dtype) for st in states.values()}
            shapes.update({(name, i): ((batch,) + shape, dtype) for name, parts in cell_states.items()
                           for i, (shape, dtype, _) in enumerate(parts)})
            self.core = StepBuffers(shapes, batch, max_steps, beam if search_choice is not None else None,
                                    ends=search_choice is not None, lengths=lengths,
                                    shared={st for st in states.values() if st.shared})
            self.device_tensors.update(self.core.tensors)
            # (an axis of its own, an extern data's: its dim as the config has it, not the model build's variant)
            reads = {name: (self.core.read_key(st), [t.get_same_base() for t in st.dims], st.dtype, st.sparse_tag,
                            _dims_from(source, net, st)) for name, st in states.items()}
            cells = {name: [(self.core.read_key((name, i)), tags, dtype) for i, (_, dtype, tags) in enumerate(parts)]
                     for name, parts in cell_states.items()}
            top, self.after_choice = config_step_net(
                net, rec, reads, cells, search_choice, forced, beam,
                {n: source.templates[n].dim for n in unit if n in source.templates}, source.cell_structure)
            self.net_dict = top
            with building(self.device_tensors), behavior_version(model.behavior_version):
                self.train_flag = tf.compat.v1.placeholder_with_default(False, shape=(), name="train_flag")
                self.network = TFNetwork(config=model.config, train_flag=self.train_flag, eval_flag=True,
                                         search_flag=False)
                printed = io.StringIO()  # RETURNN prints a failed layer's name and options at length
                try:
                    with contextlib.redirect_stdout(printed):
                        self.network.construct_from_dict(top)
                    self.sizes = extern_sizes(self.network)
                except Exception as e:
                    raise returnn_error(
                        model, e, printed.getvalue(), f"stepping {rec!r}: RETURNN could not build its unit as one step",
                        "m.trace(...) records every step of the rec layer as RETURNN runs it", prefix=PREFIX, rec=rec
                    ) from (e if os.environ.get("RECDEBUG_DEBUG") else None)
            self.outputs = {}  # unit layer -> its value, batch first
            for name in unit:
                layer = self.network.layers.get(PREFIX + name)
                if layer is not None:  # (one without the batch axis, a constant say, as it is)
                    self.outputs[name] = _batch_major(layer.output)
            self._finish(states, cell_states, search_choice, batch, bool(net[rec].get("include_eos", False)))
        self.extra_variables, self._source = self.core.variables, source
        self.open()
        self.restore()

    def _finish(self, states: dict, cell_states: dict, search_choice, batch: int, include_eos: bool):
        """The step op: each State's new value is its layer's, each cell state the rnn_cell's own."""
        import tensorflow as tf

        self._step_spec = (states, cell_states, search_choice, batch, include_eos)
        init = {}
        for st in states.values():
            init[st] = tf.constant(st.initial)
            if None in st.shape:  # an axis of its own (an encoder's): sized by its longest sequence in the feed
                sizes = [tf.reduce_max(self.lengths_of(tag)) if tag.dimension is None else tag.dimension
                         for tag in st.unit_dims]
                init[st] = tf.fill(tf.stack([batch] + sizes), tf.constant(st.initial, st.dtype))
        init.update({(name, i): tf.constant(0) for name, parts in cell_states.items() for i in range(len(parts))})
        self.core.finish(init=init, **self.step_args(self.network))

    def step_args(self, net) -> dict:
        """What ``StepBuffers.step_updates`` takes, from a build of the step net's layers (this build's, or
        an in-graph loop's)."""
        import tensorflow as tf
        from tensorflow.python.util import nest

        states, cell_states, search_choice, batch, include_eos = self._step_spec
        new, reordered, valid = {}, set(), {}
        for name, st in states.items():
            if None in st.shape:
                valid[st] = self._valid_frames(st)
            value = _batch_major(net.layers[PREFIX + name].output).placeholder
            new[st] = value if None in st.shape or st.shared else tf.reshape(value, (batch,) + st.shape)
            if PREFIX + name not in self.after_choice:
                reordered.add(st)
        for name, parts in cell_states.items():
            for i, value in enumerate(nest.flatten(net.layers[PREFIX + name].rec_vars_outputs["state"])):
                new[(name, i)] = value
                if PREFIX + name not in self.after_choice:
                    reordered.add((name, i))
        chooser = net.layers[PREFIX + search_choice] if search_choice is not None else None
        end = None
        if chooser is not None and self.core.lengths_ph is None and "end" in self.outputs:
            flags = net.layers[PREFIX + "end"].output.copy_as_batch_major().placeholder
            end = tf.broadcast_to(tf.reshape(tf.cast(flags, tf.bool), [-1]), [batch])
        return dict(new=new, reordered=reordered, end=end, chooser=chooser,
                    end_reordered=PREFIX + "end" not in self.after_choice, include_eos=include_eos,
                    hidden=set(new) - set(states.values()), valid=valid)

    def tensors_at(self, t) -> dict:
        """What the step net's ``recdebug_tensor`` layers read at step ``t`` (a tensor)."""
        return self.core.reads(t)

    def loop_network(self):
        """A network for an in-graph loop's build of the step net's layers, on this build's data."""
        from returnn.tf.network import TFNetwork

        return TFNetwork(config=self.model.config, extern_data=self.network.extern_data, train_flag=self.train_flag,
                         eval_flag=True, search_flag=False)

    def construction(self):
        """Where RETURNN builds this step net's layers: under the config's behavior version."""
        return behavior_version(self.model.behavior_version)

    def lengths_of(self, tag):
        """The lengths tensor of a dynamic dim in the step net: an extern data's (this build's placeholder; the
        dims are shared by every build of a config), else the dim's own."""
        for key, d in self.network.extern_data.data.items():
            for i, other in enumerate(d.dim_tags):
                if other == tag and i in self.sizes.get(key, {}):
                    return self.sizes[key][i]
        # a computed axis (an encoder's after pooling): as a layer of this build has it
        tags = [tag] + [t for name, layer in self.network.layers.items() if "/" not in name
                        for t in layer.output.dim_tags if t == tag]
        for t in tags:
            size = t.dyn_size_ext.raw_tensor if t.dyn_size_ext is not None else None
            if size is not None and size.graph is self.tf_graph:
                return size
        raise RecDebugError(f"stepping: no lengths known for the axis {tag.description!r}")

    def _valid_frames(self, st):
        """Where a State with an axis of its own has valid frames: a bool tensor [batch, ...] with 1 for its static
        dims, broadcast against one step's value."""
        import tensorflow as tf

        lens = {i: self.lengths_of(tag) for i, tag in enumerate(st.unit_dims, start=1) if tag.dimension is None}
        return valid_frames([(i, n, tf.reduce_max(n)) for i, n in lens.items()], len(st.dims))

    def restore(self):
        """Every parameter of the step net gets its value from the model's build (the checkpoint's values), all in
        one session call each way."""
        source, unit = self._source, self.model.net[self.rec]["unit"]
        pairs = []  # (this build's variable, the model build's)
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
            pairs += [(var, src.params[key]) for key, var in layer.params.items()]
        values = source.session.run([theirs for _, theirs in pairs])
        # each variable's initializer fed its value (as Variable.load does), all in one call and no new ops
        self.session.run([ours.initializer for ours, _ in pairs],
                         feed_dict={ours.initializer.inputs[1]: value for (ours, _), value in zip(pairs, values)})


def _target(layer: dict, rec_dict: dict):
    target = layer.get("target") or rec_dict.get("target")
    return target[0] if isinstance(target, (list, tuple)) else target


def _check_choices(rec: str, unit: dict, rec_dict: dict, search: bool) -> list:
    """The unit's choice layers, checked: one to search over, and each with a target (RETURNN's choice layer needs
    one; teacher forcing takes its labels from it)."""
    choices = [n for n, layer in unit.items() if isinstance(layer, dict) and layer.get("class") == "choice"]
    if search and not choices:
        raise RecDebugError(f"rec layer {rec!r} has no choice layer: there is no search to step",
                            hint="step it without search=True (teacher forcing)")
    if search and len(choices) > 1:
        raise RecDebugError(f"rec layer {rec!r} has {len(choices)} choice layers {choices}: live stepping "
                            "searches over one", hint="m.trace(..., search=True) records RETURNN's own search")
    for name in choices:
        if not isinstance(_target(unit[name], rec_dict), str):
            raise RecDebugError(f"choice layer {rec}/{name} has no target to take its labels from (RETURNN's choice "
                                "layer needs one, also to search)", hint='give it one: "target": "classes"')
    return choices


def _dims_from(source, net: dict, st) -> list:
    """The top-level layers whose output has a State's dynamic dims (an encoder's computed axis, e.g. after
    pooling), so that the step net's buffer read takes that build's own dim."""
    found = []
    for tag in st.unit_dims:
        if tag.dimension is not None:
            continue
        for name, layer in source.network.layers.items():
            if "/" not in name and name in net and net[name].get("class") != "rec" and \
                    any(t == tag for t in layer.output.dim_tags):
                found.append(name)
                break
    return found


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


class ConfigLoop:
    """What a config's rec layer holds for the stepper, read from the model's build with every unit layer in the
    loop (``source``): its States (the layers read with ``prev:``), the cell states of its rnn_cell layers, its
    choice layers (the one searched, the others teacher-forced from their targets) and how it ends. What the
    stepper cannot run one step at a time is refused, naming the layer."""

    def __init__(self, model, rec: str, source: ModelBuild, search: bool, beam_size):
        self.model, self.rec = model, rec
        unit, rec_dict = model.net[rec]["unit"], model.net[rec]
        self._analyze(source, unit, search)
        choices = _check_choices(rec, unit, rec_dict, search)
        self.search, self.choice, self.beam = search, choices[0] if search else None, 1
        if search:
            self.beam = int(beam_size or unit[self.choice].get("beam_size") or 1)
            if self.beam < 1:
                raise RecDebugError(f"beam_size must be at least 1, got {self.beam}")
        self.forced = {}
        for name in choices:
            if name != self.choice:
                self.forced[name] = _target(unit[name], rec_dict)
        self.include_eos = bool(rec_dict.get("include_eos", False))
        self.has_end = "end" in unit
        self.unstacked = bool(rec_dict.get("from")) if "from" in rec_dict else False

    def steps(self, source: ModelBuild, inputs: dict, seq_lens: dict) -> tuple:
        """(batch size, the most steps, per sequence lengths or None): the rec layer's own time axis (teacher
        forcing, or over its input), or its max_seq_len (a search)."""
        fd = source.feed_dict(inputs, seq_lens)
        batch = None
        for ph, value in fd.items():
            if ph.op.type == "Placeholder" and np.ndim(value) >= 1 and ph in _data_placeholders(source.network):
                batch = np.shape(value)[_data_placeholders(source.network)[ph]]
                break
        if batch is None:
            raise RunError("stepping needs at least one input with the batch axis", hint="m.stepper({'data': x})")
        if not self.search:
            lens = np.asarray(source.session.run(source.rec_lens, feed_dict=fd))
            return int(batch), int(lens.max()), lens
        lens, steps = None, self._max_seq_len(source, fd)
        if self.unstacked:
            rec_from = self.model.net[self.rec]["from"]
            src = rec_from if isinstance(rec_from, str) else rec_from[0]
            key = src[len("data:"):] if src.startswith("data:") else ("data" if src == "data" else None)
            found = next(iter(source.sizes.get(key, {}).values()), None) if key else source.layer_lens.get(src)
            lens = np.asarray(source.session.run(found, feed_dict=fd))
            steps = int(min(steps, lens.max()))
        return int(batch), steps, lens

    def _analyze(self, source: ModelBuild, unit: dict, search: bool):
        rec = self.rec
        self.inner = [n for n, layer in unit.items()  # nested rec layers: run whole in a step (descend)
                      if layer.get("class") == "rec" and isinstance(layer.get("unit"), dict)]
        self.states, self.cells = {}, {}
        self.order = [n for n in unit]
        for name in source.prev_needed:
            tmpl = source.templates[name]
            b = tmpl.batch_dim_axis
            if b is None and (search or None in tmpl.batch_shape):
                raise RecDebugError(
                    f"stepping: {rec}/{name} (read with prev:) has the shape {tmpl}; the stepper keeps a State "
                    "without the batch axis only for a loop without search, and only with static dims",
                    hint="m.trace(...) records it")
            if b is None:  # one value for every sequence
                tags, shape = list(tmpl.dim_tags), tuple(tmpl.batch_shape)
            else:  # batch first (read off the template: RETURNN cannot copy a search's template with an encoder's axis)
                tags = [tmpl.dim_tags[b]] + [t for i, t in enumerate(tmpl.dim_tags) if i != b]
                shape = tuple(n for i, n in enumerate(tmpl.batch_shape) if i != b)
            st = ConfigState(f"{rec}/{name}", name, shape, tmpl.dtype, tags,
                             tmpl.sparse_dim.description if tmpl.sparse_dim is not None else None, shared=b is None)
            st.sparse_tag = tmpl.sparse_dim
            st.initial = _initial_value(unit[name], rec, name)
            self.states[name] = st
        for name, layer in source.loop_layers.items():
            extra = getattr(layer, "rec_vars_outputs", {}) or {}
            if not extra or unit[name].get("class") == "choice" or name in self.inner:  # (a search's scores: the
                continue  # stepper keeps them; a nested loop starts afresh in every step)
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
            self.cells[name] = parts

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


class ReturnnStepper(LoopStepper):
    """Live stepping of a RETURNN config's rec layer: the stepper of ``stepcore``, as ``rd.Stepper``; values by
    the config's layer paths, batch first."""

    graph = None
    _remake_hint = "make a new stepper: m.stepper(...)"
    _search_hint = "m.stepper(..., search=True)"
    _top_prefix = PREFIX

    def __init__(self, model, rec: str, inputs: dict, seq_lens: dict, search: bool = False, beam_size=None):
        from .engine import build_apart

        self.model, self.rec, self.device, self.loop_name = model, rec, model.device, rec
        self.search = self.searching = bool(search)
        unit, rec_dict = model.net[rec]["unit"], model.net[rec]
        if self.search and "end" not in unit and not rec_dict.get("from"):  # (before a build that would fail)
            raise RecDebugError(f"rec layer {rec!r} has no end layer: a search needs one in the unit (RETURNN ends each "
                                "hypothesis where it is true)", hint='e.g. "end": {"class": "compare", "from": '
                                                                     '"output", "value": 0}')
        _check_choices(rec, unit, rec_dict, self.search)  # (before a build that would fail less clearly)
        source = model._build("templates_search" if self.search else "templates", rec)
        loop = ConfigLoop(model, rec, source, self.search, beam_size)
        self._states, self._cells, self._order, self._inner = loop.states, loop.cells, loop.order, loop.inner
        self.choice, self.forced, self.beam = loop.choice, loop.forced, loop.beam
        # RETURNN's length normalization of the searched choice (its default): the final scores divided by the steps
        self.length_normalization = self.search and bool(unit[self.choice].get("length_normalization", True))
        self.include_eos, self.has_end, self.unstacked = loop.include_eos, loop.has_end, loop.unstacked
        self.batch, self.max_steps, self._lens = loop.steps(source, inputs, seq_lens)
        self.lengths = self._lens if self._lens is not None and (not self.search or self.unstacked) else None
        if self.search:  # hypothesis k of sequence b is entry b*K+k
            inputs = {k: np.repeat(np.asarray(v), self.beam, axis=0) for k, v in inputs.items()}
            seq_lens = {k: np.repeat(np.asarray(v), self.beam) for k, v in seq_lens.items()}
        self.engine = build_apart(lambda: ConfigStepEngine(model, rec, source, self._states, self._cells, self.choice,
                                                           self.forced, self.beam, self.batch * self.beam,
                                                           self.max_steps, lengths=self.lengths is not None))
        self._start()
        try:
            self._outputs = dict(self.engine.outputs)  # unit layer -> its value's template, batch first
            self.after_choice = set(self.engine.after_choice)
            data = self.engine.network.extern_data.data
            self._feed = feed_extern_data(self.engine.network, {k: v for k, v in inputs.items() if k in data},
                                          {k: v for k, v in seq_lens.items() if k in data}, sizes=self.engine.sizes)
            if self.lengths is not None:
                self._feed[self.engine.core.lengths_ph] = np.repeat(self.lengths, self.beam).astype(np.int32)
            self.reset()
        except BaseException:
            self.close("it could not be made")
            raise

    def __repr__(self):
        return f"ReturnnStepper({self.rec!r}, {self.status})"

    def _loop_text(self) -> str:
        return repr(self.rec)

    @property
    def states(self) -> list:
        return list(self._states.values())

    def _state(self, x) -> ConfigState:
        if isinstance(x, ConfigState):
            return x
        for st in self._states.values():
            if x in (st.key, st.name):
                return st
        raise RecDebugError(f"no State {x!r} in {self.rec!r}; the layers read with prev: are "
                            f"{sorted(s.key for s in self._states.values())}")

    # --- values ---
    def value(self, x, at: int | None = None) -> np.ndarray:
        """After k steps (default: now): a State's value (``"output/s"`` or its ConfigState), or a unit layer's
        value in iteration k-1; batch first (with search: [batch, beam, ...]), as RETURNN's batch-major layout; one
        without the batch axis (a step counter, say) as it is: one value for every sequence."""
        self._live_engine()
        k = self._at(at)
        key = x.key if isinstance(x, ConfigState) else x
        name = key[len(self.rec) + 1:] if isinstance(key, str) and key.startswith(self.rec + "/") else key
        if name in self._states:
            arr = self._buffer(self._states[name], k)
            if self._states[name].shared:  # one value for every sequence (the buffer keeps it for each)
                return arr[0]
        elif name in self._outputs:
            if k == 0:
                raise RecDebugError(f"{key!r}: no iteration has run yet; call step() first")
            arr = self._layer(self._outputs[name].placeholder, k - 1)
            if self._outputs[name].batch_dim_axis is None:  # one value for every sequence
                return arr
        else:
            raise RecDebugError(f"no layer {key!r} in the unit of {self.rec!r}; it has "
                                f"{sorted(f'{self.rec}/{n}' for n in self._outputs)}")
        if self.search:
            arr = arr.reshape((self.batch, self.beam) + arr.shape[1:])
        return arr

    def set_state(self, state, value) -> "ReturnnStepper":
        """Replace a State's current value (step t; batch first, with search [batch, beam, ...]; a State without
        the batch axis: its one value for every sequence)."""
        st = self._state(state)
        self._live_engine()
        value = np.asarray(value)
        shape = self._shape(st)
        expected = shape if st.shared else (self.batch,) + ((self.beam,) if self.search else ()) + shape
        if value.shape != expected:
            dynamic = "".join(f"; {t.description} has {n} frames here, its longest sequence"
                              for t, n, s in zip(st.unit_dims, shape, st.shape) if s is None)
            raise RunError(f"set_state({st.key!r}): shape {value.shape}, expected {expected} "
                           f"({'one value for every sequence' if st.shared else 'batch first'}{dynamic})")
        if value.dtype.kind not in "biuf" or (value.dtype.kind == "f" and st.dtype.startswith("int")):
            raise RunError(f"set_state({st.key!r}): expected {st.dtype} values, got {value.dtype}")
        if st.shared:  # kept for each entry alike
            value = np.broadcast_to(value, (self.batch * self.beam,) + shape)
        return self._set_buffer(st, value.reshape((self.batch * self.beam,) + shape))

    def _shape(self, st) -> tuple:
        """A State's shape besides the batch in this stepper (an axis of its own: its longest sequence's frames)."""
        return st.shape if None not in st.shape else tuple(self._buffer(st, 0).shape[1:])

    def _frames(self, tag):
        """Per sequence: its frames along a dynamic dim (None: its lengths are not known in the step net)."""
        if getattr(self, "_frame_lens", None) is None:
            self._frame_lens = {}
        if tag not in self._frame_lens:
            try:
                self._frame_lens[tag] = np.asarray(self._layer(self.engine.lengths_of(tag), 0))[::self.beam]
            except RecDebugError:
                self._frame_lens[tag] = None
        return self._frame_lens[tag]

    def descend(self, inner: str | None = None) -> "ConfigInnerSteps":
        """A rec layer inside the unit (default: the first; ``"inner"`` or ``"<rec>/inner"``) as it ran in the
        iteration that ran last, to step through its iterations: ``value("<rec>/inner/h")``."""
        e = self._live_engine()
        if not self._inner:
            raise RecDebugError(f"the unit of {self.rec!r} has no rec layer with a unit of its own (a nested loop)")
        name = self._inner[0] if inner is None else str(inner).split("/")[-1]
        if name not in self._inner:
            raise RecDebugError(f"no nested rec layer {inner!r} in the unit of {self.rec!r}; it has "
                                f"{[f'{self.rec}/{n}' for n in self._inner]}")
        if self.t == 0:
            raise RecDebugError("no outer iteration has run yet; call step() first")
        unit = self.model.net[self.rec]["unit"][name]["unit"]
        outs = {n: _batch_major(e.network.get_layer(f"{PREFIX}{name}/{n}").output) for n in unit}
        time_tag = e.network.layers[PREFIX + name].output.get_time_dim_tag()
        # each layer's axis of the inner steps: none for a value the same at every inner step (moved out of it)
        steps_axis = {n: o.dim_tags.index(time_tag) if time_tag in o.dim_tags else None for n, o in outs.items()}
        shared = {n for n, o in outs.items() if o.batch_dim_axis is None}
        values, lens = self._layer(({n: o.placeholder for n, o in outs.items()}, e.lengths_of(time_tag)), self.t - 1)
        states = {n: _initial_value(unit[n], f"{self.rec}/{name}", n)
                  for n in e.network.layers[PREFIX + name].cell.prev_layers_needed if n in unit}
        return ConfigInnerSteps(self, f"{self.rec}/{name}", self.t - 1, values, states, lens, steps_axis, shared)

    # --- what the debugger asks ---
    _axis_name = "time"

    def _keys(self) -> dict:
        keys = {}
        for name in self._order:  # (a State is a layer of the unit too)
            st, data = self._states.get(name), self._outputs.get(name)
            shared = st.shared if st is not None else data is not None and data.batch_dim_axis is None
            tags = st.unit_dims if st is not None else \
                (data.dim_tags if shared else data.dim_tags[1:]) if data is not None else None
            own = [t for t in tags or () if t.dimension is None]
            if tags is None or len(own) > 1 or (own and self._frames(own[0]) is None):
                continue  # (a nested rec layer's value, with its own steps: descend)
            frames = self._frames(own[0]) if own else None
            order = sorted(range(len(tags)), key=lambda i: tags[i].dimension is not None)  # its own axis first
            dims = [((tags[i].description or f"{name}:{i}").replace(PREFIX, "", 1),
                     int(tags[i].dimension if tags[i].dimension is not None else np.max(frames, initial=0)))
                    for i in order]
            source = st if st is not None else data
            sparse = source.sparse if st is not None else \
                data.sparse_dim.description if data.sparse_dim is not None else None
            keys[st.key if st is not None else f"{self.rec}/{name}"] = ViewKey(
                st.key if st is not None else f"{self.rec}/{name}", st is not None, dims,
                source.dtype.startswith(("int", "uint", "bool")), sparse, layer=data is not None,
                perm=order if order != sorted(order) else None, frames=frames, shared=shared)
        return keys

    def before_choice(self, key: str) -> bool:
        """With search: whether a unit layer is computed before the choice (per hypothesis of the last step)."""
        return self.search and PREFIX + key[len(self.rec) + 1:] not in self.after_choice

    def hierarchy_nodes(self) -> list:
        return self.model.hierarchy(self.rec, states={st.key for st in self._states.values()},
                                    in_loop={f"{self.rec}/{n}" for n in self._order})

    def net_dict_text(self) -> str:
        return self.model.net_text()


class ConfigInnerSteps(InnerStepsBase):
    """The iterations of a config's nested rec layer within one iteration of its outer one
    (``ReturnnStepper.descend``): ``value("<rec>/<inner>/<layer>")`` after ``t`` inner steps, batch first."""

    def __init__(self, outer: ReturnnStepper, name: str, outer_step: int, values: dict, states: dict, lens,
                 steps_axis: dict, shared: set):
        super().__init__(outer, name, outer_step, np.asarray(lens)[::outer.beam])
        self._values, self._initial = values, states  # unit layer -> its values, batch first; State -> initial
        self._steps_axis, self._shared = steps_axis, shared  # layer -> its axis of the steps; layers without batch

    @property
    def states(self) -> list:
        """The keys of the nested unit's States (its layers read with prev:)."""
        return [f"{self.name}/{n}" for n in self._initial]

    def value(self, key: str) -> np.ndarray:
        """A layer's value after ``t`` inner steps: [entries, ...], one value for every sequence when it has no
        batch axis (a constant); a State's initial value at t=0."""
        n = str(key)[len(self.name) + 1:] if str(key).startswith(self.name + "/") else str(key)
        if n not in self._values:
            raise RecDebugError(f"no layer {key!r} in the unit of {self.name!r}; it has "
                                f"{sorted(f'{self.name}/{x}' for x in self._values)}")
        arr, axis = np.asarray(self._values[n]), self._steps_axis[n]
        if self.t == 0:
            if n not in self._initial:
                raise RecDebugError(f"{key!r}: no inner iteration has run yet; call step() first")
            arr = np.full(arr.shape if axis is None else arr.shape[:axis] + arr.shape[axis + 1:], self._initial[n],
                          arr.dtype)
        elif axis is not None:
            arr = np.take(arr, self.t - 1, axis=axis)
        st = self.outer
        return arr.reshape((st.batch, st.beam) + arr.shape[1:]) if st.searching and n not in self._shared else arr


def _batch_major(data):
    """A layer's output with the batch axis first; one without a batch axis as it is."""
    return data.copy_as_batch_major() if data.batch_dim_axis is not None else data


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
