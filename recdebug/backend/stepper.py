"""Stepper: live execution of one loop, one iteration per call, its States kept in buffers on the device.

Each State has a buffer [T+1, batch, ...] on the execution device; entry t is its value after t steps. A step
runs the loop's unit once as a plain RETURNN net (``stepnet``) reading entry t and writes entry t+1, so
``step_back`` is exact (nothing is recomputed) and ``set_state`` edits entry t before continuing. Only what is
shown is fetched: per step a few flags (which sequences are active, whether a State went NaN/Inf).
"""
from __future__ import annotations

import numpy as np

from ..language.dims import batch_dim, dim_named, sorted_dims
from .engine import Engine, build_apart, default_params, resolve_device
from .feeding import checked_numbers, reference_labels, value_and_order
from ..language.errors import DimError, LoopError, RecDebugError, RunError
from ..language.state import State
from ..emission.stepnet import build_step_net
from ..records.protocol import ViewKey
from .stepcore import InnerStepsBase, LoopStepper, StepBuffers, building, valid_frames
from .stepcore import StepperBeams  # noqa: F401  (public)
from .stepsearch import register_layer_classes, add_beam
from ..language.tensor import Tensor


def _to_order(data, em, dims_wanted) -> "tf.Tensor":
    """A RETURNN Data's placeholder with axes in the order of the rd dims ``dims_wanted``."""
    import tensorflow as tf

    have = [em.rd_dim(t) for t in data.dim_tags]
    perm = [have.index(d) for d in dims_wanted]
    return tf.transpose(data.placeholder, perm) if perm != sorted(perm) else data.placeholder


class StepEngine(Engine):
    """The single-step build of one top-level loop of the language: its step net (``stepnet``) on the shared
    State buffers and step op (``stepcore``)."""

    def __init__(self, g, loop, device: str, seed: int, batch: int, max_steps: int, choice=None, forced=None):
        """``batch``: entries of the step net's batch (with ``choice``, a search: sequences * beam size).
        ``forced``: the rd.choice op fed its reference labels instead (teacher forcing)."""
        self.loop, self.batch, self.max_steps = loop, batch, max_steps
        self.choice = choice  # the rd.choice op searched over, or None
        self.forced = forced
        if choice is not None:
            register_layer_classes()
        self.device_tensors = {}  # key -> tf.Tensor of a "recdebug_tensor" layer (State buffer entries, step index)
        with building(self.device_tensors):
            super().__init__(g, optimize=False, device=device, seed=seed)

    def prepare(self) -> dict:
        import tensorflow as tf

        em, loop = self.emitted, self.loop
        self.buffers = {}  # State -> (rd dims in buffer order, unit layer name)
        shapes, shared = {}, set()
        for state, name in loop.state_layers.items():
            dims = sorted_dims(state.dims)  # (a dynamic dim besides the batch: its size is this feed's)
            shapes[state] = ([self.batch if d.is_batch else d.size for d in dims], state.dtype)
            if batch_dim not in state.dims:  # shared by the batch: kept for each entry alike
                shapes[state] = ([self.batch] + shapes[state][0], state.dtype)
                shared.add(state)
            self.buffers[state] = (dims, name)
        self.core = StepBuffers(shapes, self.batch, self.max_steps, self.choice.attrs["beam_size"]
                                if self.choice is not None else None,
                                ends=loop.end_cond is not None and self.forced is None, lengths=False, shared=shared)
        self.extra_variables = self.core.variables
        self.device_tensors.update(self.core.tensors)
        self.t_ph = self.core.t
        states = {name: ([em.dims.get(d) if not d.is_batch else _returnn_batch() for d in dims], state.dtype,
                         self.core.read_key(state), em.dims.get(state.sparse_dim))
                  for state, (dims, name) in self.buffers.items()}
        self.step_net = build_step_net(em, loop, states, "index")
        self.after_choice = set()
        if self.choice is not None:
            self.after_choice = add_beam(self.step_net, self.choice, "search")
        if self.forced is not None:  # the reference label of step t in place of the choice
            self.labels_ph = tf.compat.v1.placeholder(tf.int32, [self.batch, None], name="reference_labels")
            self.label_lens_ph = tf.compat.v1.placeholder(tf.int32, [self.batch], name="reference_lengths")
            self.device_tensors["reference"] = tf.gather(self.labels_ph, self.t_ph, axis=1)
            self.step_net.net[self.step_net.layer_names[self.forced.name]] = {
                "class": "recdebug_tensor", "key": "reference", "shape": [_returnn_batch()], "dtype": "int32",
                "is_output_layer": True}
        for state in loop.state_layers:
            self.step_net.net[loop.init[state].op.name]["is_output_layer"] = True
        return self.step_net.net

    def finish(self) -> None:
        em, loop, net = self.emitted, self.loop, self.network
        init = {state: _to_order(net.get_layer(loop.init[state].op.name).output, em, dims)
                for state, (dims, name) in self.buffers.items()}
        self.core.finish(init=init, **self.step_args(net))

    def step_args(self, net) -> dict:
        """What ``StepBuffers.step_updates`` takes, from a build of the step net's layers (this build's, or
        an in-graph loop's)."""
        em, loop = self.emitted, self.loop
        flat = self.step_net.layer_names
        chooser = net.get_layer(flat[self.choice.name]) if self.choice is not None else None
        new = {state: _to_order(net.get_layer(flat[name]).output, em, dims)
               for state, (dims, name) in self.buffers.items()}
        reordered = {s for s, (_, name) in self.buffers.items() if flat[name] not in self.after_choice}
        end = lengths = None
        if self.forced is not None:  # teacher forcing: the loop runs over the reference labels, ignoring `end`
            lengths = self.label_lens_ph
        elif loop.unstacked and not loop.bounded:
            lengths = em.dims[loop.rec_axis].dyn_size_ext.placeholder
        elif loop.end_cond is not None:
            end = self._end_flags(net)
        return dict(new=new, reordered=reordered, end=end, chooser=chooser,
                    end_reordered=end is not None and flat["end"] not in self.after_choice,
                    include_eos=loop.include_eos, lengths=lengths, valid=self._valid_frames(new))

    def tensors_at(self, t) -> dict:
        """What the step net's ``recdebug_tensor`` layers read at step ``t`` (a tensor)."""
        import tensorflow as tf

        out = self.core.reads(t)
        if self.forced is not None:
            out["reference"] = tf.gather(self.labels_ph, t, axis=1)
        return out

    @property
    def net_dict(self) -> dict:
        return self.step_net.net

    def loop_network(self):
        """A network for an in-graph loop's build of the step net's layers, on this build's data."""
        from returnn.tf.network import TFNetwork

        net = self.network
        return TFNetwork(config=self.returnn_config, extern_data=net.extern_data, train_flag=net.train_flag,
                         eval_flag=False, search_flag=self.search)

    def _valid_frames(self, new: dict) -> dict:
        """State -> where its value has valid frames along its dynamic dims besides the batch (their lengths, per
        entry), broadcast against one step's value in the buffer's order."""
        import tensorflow as tf

        valid = {}
        for state, (dims, name) in self.buffers.items():
            axes = []
            for i, d in enumerate(dims):
                size = self.emitted.dims[d].dyn_size_ext if d.is_dynamic and not d.is_batch else None
                if size is not None and size.placeholder is not None and size.batch_ndim == 1:
                    axes.append((i, size.placeholder, tf.shape(new[state])[i]))
            if axes:
                valid[state] = valid_frames(axes, len(dims), self.batch)
        return valid

    def _end_flags(self, net):
        import tensorflow as tf

        out = net.get_layer(self.step_net.layer_names["end"]).output
        flags = _to_order(out, self.emitted, tuple(self.emitted.rd_dim(tg) for tg in out.dim_tags))
        return tf.reshape(tf.broadcast_to(flags, [self.batch]) if out.batch_ndim == 0 else flags, [self.batch])


def _returnn_batch():
    from returnn.tensor import batch_dim

    return batch_dim


def _searched_choice(g, loop):
    """The rd.choice of a loop (live stepping then runs the beam search), after checking it can be stepped."""
    choices = [y for y in g.choices if loop.contains(y.scope)]
    if not choices:
        return None
    y = choices[0]
    if len(choices) > 1:
        raise RunError(f"{loop.describe()} has {len(choices)} rd.choice calls: live stepping searches over one",
                       hint="use g.trace(..., search=True)")
    if y.scope is not loop or loop.children:
        raise RunError(f"{loop.describe()}: live stepping of a search needs rd.choice directly in the loop and "
                       f"no inner loops", hint="use g.trace(..., search=True) and Trace.beams(label)")
    return y


def _repeat_for_beam(g, inputs: dict, seq_lens: dict, k: int) -> tuple[dict, dict]:
    """Each sequence's inputs and lengths repeated k times along the batch (one copy per hypothesis)."""
    out = {}
    for name, value in inputs.items():
        if name not in g.inputs:
            out[name] = value  # feed_dict names it
            continue
        arr, order = value_and_order(value, g.inputs[name])
        if batch_dim in order and np.ndim(arr) == len(order):
            arr = np.repeat(np.asarray(arr), k, axis=list(order).index(batch_dim))
        out[name] = (arr, order)
    lens = {d: np.repeat(np.asarray(n), k) if np.ndim(n) == 1 else n for d, n in seq_lens.items()}
    return out, lens


def _batch_and_steps(g, loop, inputs: dict, seq_lens: dict, params=None, seed: int = 0,
                     targets=None) -> tuple[int, int]:
    """The batch size and the most steps the loop can take, from the feeds (before anything is built)."""
    batch, axis_size = None, None
    for name, inp in g.inputs.items():
        if name not in inputs:
            raise RunError(f"missing input {name!r}: pass it as stepper({{name: array}})")
        value, order = value_and_order(inputs[name], inp)
        shape = np.shape(value)
        if batch_dim in order and len(shape) == len(order):
            batch = shape[list(order).index(batch_dim)]
        axis = loop.unstack_axis if loop.bounded and loop.unstacked else loop.axis
        if loop.unstacked and axis in order and len(shape) == len(order):
            axis_size = shape[list(order).index(axis)]
    if batch is None:
        raise RunError("stepping needs an input with the batch dim")
    bounds = [n for n in (axis_size, loop.max_seq_len) if isinstance(n, int)]
    if hasattr(loop.max_seq_len, "op"):  # a bound per sequence, computed before the loop: its largest value
        # (with the stepper's parameters; a label of an earlier loop is its reference label or, without
        # targets, the searched one)
        res = g.run(inputs, seq_lens, params=params, seed=seed, targets=targets,
                    search=bool(g.choices) and not targets)
        bounds.append(max(int(np.max(res.numpy(loop.max_seq_len))), 0))
    return batch, min(bounds)


class Stepper(LoopStepper):
    """Live stepping of one top-level loop (default: the first): ``step``, ``step_back``, ``run_until``..."""

    _remake_hint = "make a new stepper: g.stepper(...)"
    _search_hint = "a loop with rd.choice searches when stepped without targets"

    def __init__(self, g, inputs: dict, seq_lens: dict | None = None, device=None, seed: int = 0, params=None,
                 loop=None, targets: dict | None = None):
        if g.scope is not g.top:
            raise RunError("the graph still has an open loop: create the stepper after the `with rd.Loop()` block")
        top_loops = g.top.children
        if not top_loops:
            raise LoopError("the graph has no loop to step through")
        loop = loop or top_loops[0]
        if loop not in top_loops:
            raise LoopError(f"{loop.describe()} is nested: step its enclosing loop and use stepper.descend()")
        self.graph, self.loop = g, loop
        choice = _searched_choice(g, loop)
        # with targets, the rd.choice takes the reference labels (teacher forcing); else it searches
        self.forced = choice if choice is not None and targets else None
        self.choice = choice if self.forced is None else None  # the rd.choice this stepper searches with
        self.searching = self.choice is not None
        self.beam = self.choice.op.attrs["beam_size"] if self.choice is not None else 1
        self.has_end, self.include_eos = loop.end_cond is not None, loop.include_eos
        seq_lens = seq_lens or {}
        batch, steps = _batch_and_steps(g, loop, inputs, seq_lens, params, seed, targets)
        if self.forced is not None:
            labels, label_lens = reference_labels(self.forced, targets, seq_lens, batch)
            steps = labels.shape[1]
        if self.choice is not None:  # hypothesis k of sequence b is entry b*K+k of the step net's batch
            inputs, seq_lens = _repeat_for_beam(g, inputs, seq_lens, self.beam)
        self.device = resolve_device(device)
        self.engine = build_apart(lambda: StepEngine(g, loop, self.device, seed, batch * self.beam, steps,
                                                     choice=self.choice.op if self.choice is not None else None,
                                                     forced=self.forced.op if self.forced is not None else None))
        self._start()
        self._top_prefix = self.engine.step_net.prefix
        g._steppers.add(self)
        try:
            self.engine.set_params(default_params(g, params), seed)
            self._feed, self._lens, _ = self.engine.feed_dict(inputs, seq_lens)
            self._lens = {d: n[::self.beam] for d, n in self._lens.items()}
            self.lengths = None
            if self.forced is not None:
                self._feed[self.engine.labels_ph] = labels
                self._feed[self.engine.label_lens_ph] = self._lens[loop.axis] = self.lengths = label_lens
            elif loop.unstacked and not loop.bounded:
                self.lengths = self._lens.get(loop.axis, np.full(batch, steps))
            self.batch, self.max_steps = batch, steps
            self.reset()
        except BaseException:
            self.close("it could not be made")  # its build, now (the error's traceback keeps the stepper)
            raise

    def __repr__(self):
        return f"Stepper({self.loop.name!r}, {self.status})"

    def _loop_text(self) -> str:
        return self.loop.describe()

    # --- values ---
    def _state(self, state) -> State:
        buffers = self._live_engine().buffers
        if isinstance(state, str):
            for s in buffers:
                if s.path(self.graph) == state or s.path(self.graph).replace("/", ".") == state:
                    return s
            raise RecDebugError(f"no State {state!r} in {self.loop.describe()}; it has "
                                f"{sorted(s.path(self.graph) for s in buffers)}")
        if state not in buffers:
            raise RecDebugError(f"{state!r} is not carried by {self.loop.describe()}")
        return state

    @property
    def states(self) -> list:
        return list(self._live_engine().buffers)

    def value(self, x, order=None, at: int | None = None) -> np.ndarray:
        """After k steps: a State's value after iteration k-1 (before any step: its initial value), or an
        in-loop tensor's value in iteration k-1. ``at``: that k for an earlier step (default: now, ``t``)."""
        e = self._live_engine()
        k = self._at(at)
        if isinstance(x, (State, str)):
            state = self._state(x)
            arr = self._buffer(state, k)
            dims = e.buffers[state][0]
            if state in e.core.shared:  # one value for the batch (the buffer keeps it for each entry)
                arr = arr[0]
        elif isinstance(x, Tensor):
            if x.scope is not self.loop:
                raise RecDebugError(f"{x!r} is not computed in {self.loop.describe()}",
                                    hint="for an inner loop's values use stepper.descend()")
            if k == 0:
                raise RecDebugError(f"{x!r}: no iteration has run yet; call step() first")
            out = e.network.get_layer(e.step_net.layer_names[x.op.name]).output
            arr = self._layer(out.placeholder, k - 1)
            dims = tuple(e.emitted.rd_dim(tg) for tg in out.dim_tags)
        else:
            raise RecDebugError(f"Stepper.value expects a State or an rd.Tensor, got {type(x).__name__}")
        if self.choice is not None and any(d.is_batch for d in dims):
            arr, dims = self._per_hypothesis(arr, dims)
        if order is None and self.choice is not None and self.beam_dim in dims:
            order = sorted_dims(dims)
            order = order[:1] + (self.beam_dim,) + tuple(d for d in order[1:] if d is not self.beam_dim)
        return _ordered(arr, dims, order, x)

    def set_state(self, state, value, order=None) -> "Stepper":
        """Replace a State's current value (entry t); the next step continues from it.
        With search the value has a beam axis after the batch: one value per hypothesis."""
        state = self._state(state)
        e = self._live_engine()
        dims = e.buffers[state][0]
        shared = state in e.core.shared
        if self.choice is not None and not shared:
            dims = dims[:1] + (self.beam_dim,) + dims[1:]
        value = checked_numbers(f"set_state({state.path(self.graph)!r})", value, state.dtype)
        if order is not None:
            order = tuple(dim_named(d, dims, f"set_state({state.path(self.graph)!r}): order") for d in order)
            if sorted(order, key=id) != sorted(dims, key=id):
                raise DimError(f"set_state: order {tuple(order)} is not a permutation of {dims}")
            value = value.transpose([list(order).index(d) for d in dims])
        expected = tuple(self.beam if d is self.beam_dim else self._size(d) for d in dims) if shared else \
            (self.batch,) + tuple(self.beam if d is self.beam_dim else self._size(d) for d in dims[1:])
        if value.shape != expected:
            dynamic = [f"{d.name} has {self._size(d)} frames here, its longest sequence" for d in dims[1:]
                       if d.is_dynamic and d is not self.beam_dim]
            raise RunError(f"set_state({state.path(self.graph)!r}): shape {value.shape}, expected {expected} "
                           f"(order {tuple(d.name for d in dims)}" + "".join(f"; {x}" for x in dynamic) + ")")
        if shared:  # one value for the batch, kept for each entry of the step net's batch
            value = np.broadcast_to(value, (self.batch * self.beam,) + value.shape)
        elif self.choice is not None:
            value = value.reshape((self.batch * self.beam,) + value.shape[2:])
        return self._set_buffer(state, value)

    # --- beam search ---
    @property
    def beam_dim(self):
        """With search: the dim of the hypotheses (size: the beam size) in values of this stepper."""
        return self.choice.op.attrs["beam"] if self.choice is not None else None

    def _per_hypothesis(self, arr: np.ndarray, dims: tuple) -> tuple[np.ndarray, tuple]:
        """Entries b*K+k of the step net's batch as [batch, beam, ...]."""
        axis = next(i for i, d in enumerate(dims) if d.is_batch)
        arr = np.moveaxis(arr, axis, 0)
        rest = dims[:axis] + dims[axis + 1:]
        return arr.reshape((self.batch, self.beam) + arr.shape[1:]), (dims[axis], self.beam_dim) + rest

    def before_choice(self, x: Tensor) -> bool:
        """With search: whether an in-loop tensor is computed before the choice. Its values (``value(x)``) are
        then per hypothesis of the previous step: hypothesis k of step t computed it in slot
        ``beams().backpointers[t, b, k]``. The States and the tensors after the choice are per new hypothesis."""
        e = self._live_engine()
        if self.choice is None or not isinstance(x, Tensor) or x.scope is not self.loop:
            return False
        return e.step_net.layer_names[x.op.name] not in e.after_choice

    def descend(self, inner=None) -> "InnerSteps":
        """The inner loop (default: the first) of the iteration that ran last, to step through its iterations."""
        e = self._live_engine()
        children = self.loop.children
        if not children:
            raise LoopError(f"{self.loop.describe()} has no inner loop")
        inner = inner or children[0]
        if inner not in children:
            raise LoopError(f"{inner.describe()} is not directly inside {self.loop.describe()}")
        if self.t == 0:
            raise RecDebugError("no outer iteration has run yet; call step() first")
        fd = self._fed(self.t - 1)
        exports = {sub: name for key, name in e.step_net.inner_exports.items()
                   for rec, _, sub in [key.partition("/")] if rec == inner.name}
        outs = {sub: e.network.get_layer(name).output for sub, name in exports.items()}
        init_names = {s: e.step_net.layer_names[inner.init[s].op.name] for s in inner.state_layers}
        inits = {s: e.network.get_layer(n).output for s, n in init_names.items()}
        any_out = next(iter(outs.values()))
        axis_tag = next(tg for tg in any_out.dim_tags if e.emitted.rd_dim(tg) is inner.rec_axis)  # (a static dim's:
        # its steps)
        fetch = ({k: o.placeholder for k, o in outs.items()}, {s: o.placeholder for s, o in inits.items()},
                 axis_tag.dyn_size_ext.placeholder)
        values, init_values, lens = e.session.run(fetch, feed_dict=fd)
        dims = {k: tuple(e.emitted.rd_dim(tg) for tg in o.dim_tags) for k, o in outs.items()}
        init_dims = {s: tuple(e.emitted.rd_dim(tg) for tg in o.dim_tags) for s, o in inits.items()}
        return InnerSteps(self, inner, self.t - 1, values, dims, init_values, init_dims, np.asarray(lens))

    def close(self, why: str | None = None, hint: str | None = None):
        if self.closed is None:
            self.graph._steppers.discard(self)
        super().close(why, hint)

    # --- what the debugger asks (by key: a State's path, or "<loop>/<layer>") ---
    def _keys(self) -> dict:
        def key(x, state: bool) -> ViewKey:
            have = [d for d in sorted_dims(x.dims) if not d.is_batch]
            dims = sorted(have, key=lambda d: not d.is_dynamic)  # an axis of its own first: its padding last
            sparse = x.sparse_dim.name if getattr(x, "sparse_dim", None) is not None else None
            frames = self._lens.get(dims[0]) if dims and dims[0].is_dynamic else None
            return ViewKey(x, state, [(d.name, self._size(d)) for d in dims], x.dtype in ("int32", "int64", "bool"),
                           sparse, perm=[have.index(d) for d in dims] if dims != have else None, frames=frames,
                           shared=batch_dim not in x.dims)

        keys = {s.path(self.graph): key(s, True) for s in self.states}
        keys.update({f"{self.loop.name}/{op.name}": key(op.out, False) for op in self.loop.ops})
        return keys

    def _size(self, d) -> int:
        """A dim's size in this stepper's values: a dynamic one's is its longest sequence in the feed."""
        if not d.is_dynamic:
            return int(d.size)
        if d in self._lens:
            return int(np.max(self._lens[d], initial=0))
        e = self._live_engine()
        for state, (dims, _) in e.buffers.items():  # a dim computed before the loop: a State's buffer has it
            if d in dims:
                return int(self._buffer(state, 0).shape[dims.index(d)])
        raise RecDebugError(f"{d!r}: its size in this stepper is not known (no input and no State has it)")

    @property
    def _axis_name(self) -> str:
        return self.loop.axis.name

    def hierarchy_nodes(self) -> list:
        from ..records.hierarchy import hierarchy_nodes

        return hierarchy_nodes(self._live_engine().emitted)

    def net_dict_text(self) -> str:
        from ..records.hierarchy import net_text

        return net_text(self._live_engine().emitted)


class InnerSteps(InnerStepsBase):
    """The iterations of an inner loop of the language within one outer iteration (``Stepper.descend``)."""

    def __init__(self, outer: Stepper, loop, outer_step: int, values, dims, init_values, init_dims, lens):
        super().__init__(outer, loop.name, outer_step, lens)
        self.loop = loop
        self._values, self._dims = values, dims
        self._init, self._init_dims = init_values, init_dims

    def value(self, x, order=None) -> np.ndarray:
        """As Stepper.value, for the inner loop's States and tensors."""
        if isinstance(x, State):
            if x not in self.loop.state_layers:
                raise RecDebugError(f"{x!r} is not carried by {self.loop.describe()}")
            if self.t == 0:
                arr, dims = self._init[x], self._init_dims[x]
                return _ordered(arr, dims, order, x)
            key = self.loop.state_layers[x]
        elif isinstance(x, Tensor) and x.scope is self.loop:
            if self.t == 0:
                raise RecDebugError(f"{x!r}: no inner iteration has run yet; call step() first")
            key = x.op.name
        else:
            raise RecDebugError(f"{x!r} is not a State or tensor of {self.loop.describe()}")
        arr, dims = self._values[key], self._dims[key]
        axis = dims.index(self.loop.rec_axis)  # (the loop's axis, or a static dim's steps)
        arr = np.take(arr, self.t - 1, axis=axis)
        return _ordered(arr, dims[:axis] + dims[axis + 1:], order, x)


def _ordered(arr, dims, order, what):
    """``arr`` (axes ``dims``) with its axes in ``order`` (dims or their names; default: canonical order)."""
    order = tuple(dim_named(d, dims, f"order of {what!r}") for d in order) if order is not None \
        else sorted_dims(dims)
    if sorted(order, key=id) != sorted(dims, key=id):
        raise DimError(f"order {order} is not a permutation of the dims of {what!r}")
    return arr.transpose([list(dims).index(d) for d in order])
