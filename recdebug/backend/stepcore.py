"""The one live-stepping machinery of both front ends: State buffers on the device and the step that runs a loop's
unit once, for a loop of the language (``stepper.StepEngine``) and for a RETURNN config's rec layer
(``returnn_stepper.ConfigStepEngine``).

A front end turns its loop into a plain RETURNN net that runs one iteration (its "step net"): the value of every
State at step t is read from a ``recdebug_tensor`` layer (``StepBuffers.read_key``), the step index from another.
``StepBuffers`` holds, per State, a buffer [T+1, entries, ...] of which entry t is the value after t steps;
``finish`` adds the step op, which runs the step net on entry t and writes entry t+1 (a sequence that is not
active keeps its values), and the ops that start the buffers and edit entry t. With a search the K hypotheses of a
sequence are K entries of the step net's batch; the step net's choice layer is a top-k (``stepsearch``) and the
buffers hold the hypotheses' scores and which have ended.
"""
from __future__ import annotations

import weakref
from contextvars import ContextVar

import numpy as np

from ..language.errors import RecDebugError
from ..records.protocol import SteppingControls, count_steps, ended_sequences, ended_text, steps_text
from ..records.trace import Beams
from .stepsearch import ENDED_OTHER_LABELS

# While a step net is built: key -> the tf.Tensor a "recdebug_tensor" layer outputs (that build's own)
_device_tensors: ContextVar = ContextVar("recdebug_device_tensors", default=None)
_layer_registered = False


def device_tensor(key: str):
    """The tensor given under ``key`` to the step net being built."""
    return _device_tensors.get()[key]


def register_layer_class():
    """A RETURNN layer whose output is a given TensorFlow tensor (a State buffer entry, the step index)."""
    global _layer_registered
    if _layer_registered:
        return
    import tensorflow as tf
    from returnn.tf.layers.base import LayerBase
    from returnn.tf.layers.basic import ConstantLayer, register_layer_class as register

    class DeviceTensorLayer(LayerBase):
        layer_class = "recdebug_tensor"

        def __init__(self, key, shape, dtype, sparse_dim=None, dims_from=(), **kwargs):
            super().__init__(**kwargs)
            value = device_tensor(key)
            perm = [_index_of(shape, tag) for tag in self.output.dim_tags]
            self.output.placeholder = tf.transpose(value, perm) if perm != sorted(perm) else value

        @classmethod
        def transform_config_dict(cls, d, network, get_layer):
            d.setdefault("from", [])
            super().transform_config_dict(d, network=network, get_layer=get_layer)
            d["dims_from"] = [get_layer(name) for name in d.get("dims_from", ())]

        @classmethod
        def get_out_data_from_opts(cls, name, shape, dtype, sparse_dim=None, network=None, dims_from=(), **kwargs):
            out = ConstantLayer.get_out_data_from_opts(
                name=name, value=0, shape=shape, dtype=dtype, with_batch_dim=any(d.is_batch_dim() for d in shape),
                sparse_dim=sparse_dim)
            for i, tag in enumerate(out.dim_tags):  # a dynamic axis: as this net's extern data or layers have it
                if tag.is_dynamic() and not tag.is_batch_dim() and network is not None:
                    have = [t for d in network.extern_data.data.values() for t in d.dim_tags] + \
                        [t for layer in dims_from for t in layer.output.dim_tags]
                    found = [t for t in have
                             if t == tag and t.dyn_size_ext is not None and t.dyn_size_ext.placeholder is not None]
                    if found and found[0] is not tag:
                        out = out.copy_template_replace_dim_tag(i, found[0])
            return out

    register(DeviceTensorLayer)
    _layer_registered = True


def _index_of(tags, tag) -> int:
    for i, t in enumerate(tags):
        if t == tag or (t.is_batch_dim() and tag.is_batch_dim()):
            return i
    raise RecDebugError(f"internal: dim {tag} not among {tags}")


class building:
    """While a step net is built: its ``recdebug_tensor`` layers take their tensors from ``tensors``."""

    def __init__(self, tensors: dict):
        self.tensors = tensors

    def __enter__(self):
        self.token = _device_tensors.set(self.tensors)

    def __exit__(self, *exc):
        _device_tensors.reset(self.token)


class StepBuffers:
    """The device side of a live stepper, made inside the step build's graph before its net is built.

    ``states``: key -> (shape of one step's value, batch first, dtype). ``beam``: with a search, the hypotheses per
    sequence (the batch is then sequences * beam). ``ends``: whether sequences end by a flag (an end layer, or a
    search), so that the buffers keep which have ended. ``lengths``: whether the loop runs a given number of steps
    per entry (fed to ``lengths_ph``)."""

    def __init__(self, states: dict, batch: int, max_steps: int, beam: int | None, ends: bool, lengths: bool,
                 shared=()):
        """``shared``: keys of States without the batch dim (one value for every sequence): their buffers hold it
        for each entry alike, the step net reads entry 0, and every step writes it (no sequence freezes it)."""
        import tensorflow as tf

        register_layer_class()
        self.batch, self.max_steps, self.beam = batch, max_steps, beam
        self.t = tf.compat.v1.placeholder(tf.int32, [], name="recdebug_step")
        self.tensors = {"index": self.t}  # key -> tensor of a "recdebug_tensor" layer
        self.vars, self.shapes, self.variables = {}, {}, []
        self._keys = {}
        for key, (shape, dtype) in states.items():
            if None in shape:  # an axis whose size the feed gives (an encoder's): allocated by reset, as the
                # initial value is
                var = tf.Variable(tf.zeros([0] * (len(shape) + 1), dtype=dtype), trainable=False,
                                  shape=tf.TensorShape(None), validate_shape=False, name=f"buffer_{len(self.vars)}")
            else:
                var = tf.Variable(tf.zeros([max_steps + 1] + list(shape), dtype=dtype), trainable=False,
                                  name=f"buffer_{len(self.vars)}")
            self._keys[key] = f"state/{len(self.vars)}"
            self.vars[key], self.shapes[key] = var, (tuple(shape), dtype)
            self.variables.append(var)
        self.shared = set(shared)
        self.ended = self.scores = self.lengths_ph = None
        if ends or beam is not None:
            self.ended = tf.Variable(tf.zeros([max_steps + 1, batch], dtype=tf.bool), trainable=False, name="ended")
            self.variables.append(self.ended)
        if beam is not None:  # hypotheses' scores, per step; hypothesis k of sequence b is entry b*K+k
            self.scores = tf.Variable(tf.zeros([max_steps + 1, batch]), trainable=False, name="scores")
            self.variables.append(self.scores)
        if lengths:
            self.lengths_ph = tf.compat.v1.placeholder(tf.int32, [batch], name="recdebug_lengths")
        self.tensors.update(self.reads(self.t))

    def reads(self, t) -> dict:
        """What the step net's ``recdebug_tensor`` layers read at step ``t`` (a tensor): every buffer's entry t."""
        import tensorflow as tf

        out = {"index": t}
        for key, var in self.vars.items():
            shape = self.shapes[key][0]
            read = tf.gather(var, t)
            out[self._keys[key]] = tf.ensure_shape(read[0], list(shape[1:])) if key in self.shared else \
                tf.ensure_shape(read, list(shape))
        if self.scores is not None:
            out["search/scores"] = tf.gather(self.scores, t)
            out["search/ended"] = tf.gather(self.ended, t)
        return out

    def set_op(self, key) -> tuple:
        """(placeholder, op) that writes a State's entry t (made when first asked for: most steppers never edit)."""
        if key not in self._set_ops:
            import tensorflow as tf

            var, (shape, dtype) = self.vars[key], self.shapes[key]
            with self.t.graph.as_default():
                value = tf.compat.v1.placeholder(dtype, list(shape))
                op = tf.compat.v1.scatter_update(var, tf.expand_dims(self.t, 0), tf.expand_dims(value, 0))
            self._set_ops[key] = (value, op)
        return self._set_ops[key]

    def read_key(self, key) -> str:
        """The key of the ``recdebug_tensor`` that reads a State's value at step t."""
        return self._keys[key]

    def finish(self, new: dict, init: dict, reordered: set, **step):
        """The ops, once the step net is built: the step op (``step_updates`` at the fed step), the ops that start
        the buffers and the reads of entry t. ``init``: key -> a State's initial value (broadcast to one step's
        shape), a tensor in the buffer's order."""
        import tensorflow as tf

        self.state_at, self._set_ops = {key: tf.gather(var, self.t) for key, var in self.vars.items()}, {}
        self.user_keys = [key for key in self.vars if key not in step.get("hidden", ())]  # the user's States
        updates, fetch, _ = self.step_updates(self.t, new, reordered, **step)
        with tf.control_dependencies([v for v in fetch.values() if not isinstance(v, dict)] +
                                     list(fetch["nonfinite"].values())):
            self.step_op = tf.group(*updates)
        self.step_fetch = fetch
        self.init_ops = []
        for key, var in self.vars.items():
            shape, dtype = self.shapes[key]
            first = init[key] if init[key].dtype.base_dtype == tf.as_dtype(dtype) else tf.cast(init[key], dtype)
            if None in shape:  # the buffer made anew, sized as the initial value (which has every axis of the
                size = tf.shape(first)  # State: an axis' size is that of this feed)
                rest = tf.zeros(tf.concat([[self.max_steps], size], 0), dtype)
                self.init_ops.append(tf.compat.v1.assign(var, tf.concat([tf.expand_dims(first, 0), rest], 0),
                                                         validate_shape=False))
                continue
            first = tf.broadcast_to(first, [self.batch] + list(shape[1:]))
            self.init_ops.append(tf.compat.v1.scatter_update(var, [0], tf.expand_dims(first, 0)))
        if self.ended is not None:
            self.init_ops.append(tf.compat.v1.scatter_update(self.ended, [0], tf.zeros([1, self.batch], tf.bool)))
        if self.scores is not None:
            first = tf.constant([0.0] + [ENDED_OTHER_LABELS] * (self.beam - 1))  # one hypothesis to start from
            self.init_ops.append(tf.compat.v1.scatter_update(
                self.scores, [0], tf.reshape(tf.tile(first, [self.batch // self.beam]), [1, self.batch])))

    def step_updates(self, t, new: dict, reordered: set, end=None, chooser=None, end_reordered=False,
                     include_eos=False, lengths=None, hidden=(), valid=None) -> tuple:
        """(the writes of entry t+1, what the host keeps of the step, key -> the value written) for one step of the
        step net built at step ``t`` (a tensor: the fed step, or an in-graph loop's).

        ``new``: key -> the State's value after the step, a tensor in the buffer's order. ``reordered``: with a
        search, the keys whose new value was computed before the choice, per hypothesis of the previous step (taken
        through the backpointers). ``end``: the end flags [batch] of a loop that ends by a flag (None: it runs its
        lengths, or to its bound); ``end_reordered``: they were computed before the choice. ``chooser``: the step
        net's top-k layer (``stepsearch``). ``lengths``: the steps of each entry, a tensor of the build (default:
        ``lengths_ph``, if made). ``hidden``: keys of buffers that are no State of the user's (a cell's own state):
        not checked for NaN. ``valid``: key -> where a State with an axis of its own besides the batch has valid
        frames (a bool tensor that broadcasts against one step's value): its padding frames are not checked for
        NaN."""
        import tensorflow as tf

        batch = self.batch
        src = chooser.flat_src if chooser is not None else None  # per new hypothesis, the entry it extends
        lengths = self.lengths_ph if lengths is None else lengths
        if lengths is not None:
            active = tf.less(t, lengths)
            end = None
            if src is not None:  # a search over an unstacked axis: a sequence's hypotheses end with its frames
                end, include_eos = tf.equal(t + 1, lengths), True
        else:
            active = tf.ones([batch], tf.bool)
        if self.ended is not None and (src is not None or end is not None):
            ended_t = tf.gather(self.ended, t)
            if src is not None:
                ended_t = tf.gather(ended_t, src)
                if end is not None and end_reordered:
                    end = tf.gather(end, src)
            active = tf.logical_and(active, tf.logical_not(ended_t))
            if end is not None and not include_eos:
                active = tf.logical_and(active, tf.logical_not(end))
        updates, nonfinite, written = [], {}, {}
        next_row, masks = tf.reshape(t + 1, [1]), {}
        for key, var in self.vars.items():
            shape, dtype = self.shapes[key]
            old = tf.gather(var, t)
            value = new[key]
            if key in self.shared:  # the same for every entry, written at every step some entry takes (the step
                # where the last one ends without keeping that frame writes nothing, as no sequence keeps it)
                mask = tf.broadcast_to(tf.reduce_any(active), [batch] + [1] * (len(shape) - 1))
                frozen = tf.where(mask, tf.broadcast_to(value, [batch] + list(shape[1:])), old)
            else:
                if src is not None:
                    old = tf.gather(old, src)
                    if key in reordered:
                        value = tf.gather(value, src)
                if len(shape) not in masks:  # active, broadcast over one step's value (tf.where broadcasts it)
                    masks[len(shape)] = tf.reshape(active, [-1] + [1] * (len(shape) - 1))
                mask = masks[len(shape)]
                frozen = tf.where(mask, value, old)
            updates.append(tf.compat.v1.scatter_update(var, next_row, tf.expand_dims(frozen, 0)))
            written[key] = frozen
            if dtype.startswith("float") and key not in hidden:
                bad = tf.logical_and(tf.logical_not(tf.math.is_finite(frozen)), mask)
                if key in (valid or {}):
                    bad = tf.logical_and(bad, valid[key])
                nonfinite[key] = tf.reduce_any(bad)
        fetch = {"active": active, "nonfinite": nonfinite}
        if self.ended is not None and (src is not None or end is not None):
            now_ended = ended_t if end is None else tf.logical_or(ended_t, end)
            updates.append(tf.compat.v1.scatter_update(self.ended, next_row, tf.expand_dims(now_ended, 0)))
        if end is not None or src is not None:
            fetch["end"] = end if end is not None else tf.zeros([batch], tf.bool)
        if chooser is not None:
            updates.append(tf.compat.v1.scatter_update(self.scores, next_row, tf.expand_dims(chooser.new_scores, 0)))
            fetch["labels"] = chooser.output.placeholder
            fetch["backpointers"] = chooser.src_slot
            fetch["scores"] = chooser.new_scores
        return updates, fetch, written


class LoopStepper(SteppingControls):
    """The stepping both front ends share, on a build with ``StepBuffers`` (``engine.core``): reset, step, the
    end of each sequence, the search's hypotheses, reading and editing the buffers. A front end's stepper sets
    ``engine`` (with ``session``, ``core``, ``network``, ``close()``), ``_feed``, ``batch``, ``beam`` (1 without a
    search), ``searching``, ``max_steps``, ``lengths`` (per sequence, or None for a loop that ends by a flag or
    its bound), ``has_end``, ``include_eos``, ``device``, and calls ``_start()``; it answers the user's values in
    its own terms (rd dims, or a config's layer paths)."""

    _remake_hint = "make a new stepper"
    _top_prefix = "step."  # the step net's layers of the loop: the others are computed once per stepper

    def _start(self):
        self.closed: str | None = None  # why the stepper was closed, once it is
        self._closed_hint = ""
        self._watchers: list = []  # weak references to callbacks told of every move and edit (debuggers)
        self._quiet = 0  # > 0 while a run tells its watchers once, at its end
        self.breakpoint: str | None = None  # why the last run_until stopped
        self.edits: list = []  # the step of every set_state/reset: values of later steps were recomputed
        self._top = None  # the values of the step net's layers outside the loop, computed once
        self._top_step = None  # those the step op reads
        # a stepper dropped without close() frees its build when it is collected (not at exit: TensorFlow may be
        # half torn down by then)
        self._release = weakref.finalize(self, self.engine.close)
        self._release.atexit = False

    # --- where it stands ---
    @property
    def T(self) -> int:
        """The number of steps of the longest sequence (a loop over an axis, teacher forcing), or the loop's
        bound (a loop that ends by a flag)."""
        return int(self.lengths.max()) if self.lengths is not None else self.max_steps

    @property
    def finished(self) -> bool:
        """At the end of the loop: T steps done, or (a loop that ends by a flag) every sequence has ended."""
        return self.t >= self.T or ((self.has_end or self.searching) and self.lengths is None
                                    and len(self.ended) == self.batch)

    @property
    def ended(self) -> dict:
        """Sequence index -> its length (the step at which it ended), for the sequences that ended by now.
        With search: the number of steps after which every hypothesis of the sequence had ended."""
        return ended_sequences(self.t, self.T, self.batch, lens=self.lengths,
                               hyp_ended=self._hyp_ended if self.searching else None, end_flags=self._end,
                               include_eos=self.include_eos)

    def _live_engine(self):
        """The build while the stepper is open; once it is closed, an error saying why."""
        if self.closed is not None:
            raise RecDebugError(f"this stepper is closed: {self.closed}; its TensorFlow session is gone",
                                hint=self._closed_hint)
        return self.engine

    def _fed(self, t: int, step: bool = False) -> dict:
        """The feed of a call at step ``t``; ``step``: of the step op (the values outside the loop it reads only: a
        value not fed is computed again from the inputs, the same)."""
        fd = dict(self._feed)
        fd.update((self._top_step if step else self._top) or {})
        fd[self.engine.core.t] = t
        return fd

    # --- moving ---
    def reset(self):
        """Back to t=0 with every State at its initial value (undoes set_state at t=0 too)."""
        e = self._live_engine()
        if self._top is None:
            # per sequence (an encoder's output): not parameters or constants, which are there already
            tops = [layer.output.placeholder for name, layer in e.network.layers.items()
                    if not name.startswith(self._top_prefix) and "/" not in name and ":" not in name
                    and layer.layer_class not in ("data", "recdebug_tensor") and layer.output.placeholder is not None
                    and layer.output.batch_dim_axis is not None]
            _, values = e.session.run((e.core.init_ops, tops), feed_dict=self._feed)
            self._top = dict(zip(tops, values))
            read = read_by((e.core.step_op, e.core.step_fetch), tops)  # (a State's initial value is read by reset)
            self._top_step = {x: v for x, v in self._top.items() if x in read}
        else:
            e.session.run(e.core.init_ops, feed_dict=self._feed)
        self.t = 0
        self.edits.append(0)
        self._active, self._end, self._nonfinite = [], [], []
        self._labels, self._backpointers, self._scores, self._hyp_ended = [], [], [], []
        self.breakpoint = None
        self._moved()
        return self

    def step(self, n: int = 1):
        """Run ``n`` iterations (stops at the end of the loop); more than one run in the graph, in few calls."""
        e = self._live_engine()
        n = count_steps(n, "step", "step_back(n) goes back")
        if n > 1 and not self.finished and self._step_loop() is not None:
            self._run_steps(self.t + n, None)
            self._moved()
            return self
        for _ in range(n):
            if self.finished:
                break
            _, out = e.session.run((e.core.step_op, e.core.step_fetch), feed_dict=self._fed(self.t, step=True))
            self._drop_after(self.t)
            self._record(out)
        self._moved()
        return self

    def run_until(self, predicate, max_steps: int | None = None) -> bool:
        """Step until ``predicate(stepper)`` is true (True) or the loop ends (False). A breakpoint the loop can test
        itself (``rd.on_nonfinite``, ``rd.on_state`` with a bound, ``rd.on_label``) runs in the graph, in few calls;
        any other predicate is asked after every step."""
        self._live_engine()
        watch = getattr(predicate, "watch", None)
        spec = watch(self) if watch is not None else None
        loop = self._step_loop() if spec is not None else None
        if loop is None or not loop.watchable(spec):
            return super().run_until(predicate, max_steps)
        self.breakpoint = None
        try:
            limit = max_steps if max_steps is not None else self.T + 1
            hit = not self.finished and limit > 0 and self._run_steps(self.t + limit, spec)
            if hit:
                self.breakpoint = predicate.describe(self)
            return hit
        finally:
            self._moved()

    def _step_loop(self):
        """The in-graph loop of this stepper's build (made when first needed), or None where it cannot be made
        (``loop_error`` says why; stepping then runs one call per step)."""
        if getattr(self, "_loop", None) is None and getattr(self, "loop_error", None) is None:
            from .engine import build_apart
            from .steploop import StepLoop

            try:
                self._loop = build_apart(lambda: StepLoop(self.engine, self._top_prefix))
            except Exception as e:  # a unit RETURNN cannot build inside a while loop: stepped one call per step
                self.loop_error = f"{type(e).__name__}: {e}"
        return getattr(self, "_loop", None)

    def _run_steps(self, stop: int, watch) -> bool:
        """Steps to ``stop`` (at most; the end of the loop stops it) in the graph, in calls of about a quarter of a
        second each (the host stops between them: Ctrl-C); True when the breakpoint ``watch`` held."""
        import time

        e, loop = self.engine, self._loop
        until_ended = (self.has_end or self.searching) and self.lengths is None
        stop = min(stop, self.T)
        chunk = getattr(self, "_chunk", 32)
        while self.t < stop and not self.finished:
            n = min(stop - self.t, chunk)
            fd = self._fed(self.t)
            fd.update(loop.feed(self.t, self.t + n, until_ended, watch))
            began = time.perf_counter()
            end, hit, history = e.session.run((loop.end, loop.hit, loop.read), feed_dict=fd)
            took = time.perf_counter() - began
            start = self.t
            self._drop_after(start)
            try:
                for i in range(int(end) - start):
                    out = {name: values[i] for name, values in history.items()}
                    flags = out.pop("nonfinite", ())
                    out["nonfinite"] = dict(zip(loop.nonfinite_keys, flags))
                    self._record(out)
            except KeyboardInterrupt:  # keep what was recorded whole
                self._drop_after(self.t)
                raise
            if took > 0:
                self._chunk = chunk = int(min(4096, max(8, (end - start) * 0.25 / took)))
            if hit:
                return True
        return False

    def _drop_after(self, t: int):
        """Forget what was kept of the steps from ``t`` on (they are recomputed); after an interrupted record, of
        the step that was not kept whole."""
        kept = (self._active, self._end, self._nonfinite, self._labels, self._backpointers, self._scores,
                self._hyp_ended)
        self.t = min([t] + [len(k) for k in kept[:7 if self.searching else 3]])
        for k in kept:
            del k[self.t:]

    def _record(self, out: dict):
        """Keep what the host needs of the step just run (the step's fetch) and count it."""
        self._active.append(out["active"])
        self._end.append(out.get("end", np.zeros(self.batch * self.beam, dtype=bool)))
        self._nonfinite.append({s: bool(v) for s, v in out["nonfinite"].items()})
        if self.searching:  # per sequence and hypothesis: [batch, beam]
            k = self.beam
            self._labels.append(out["labels"].reshape(self.batch, k))
            self._backpointers.append(out["backpointers"])
            self._scores.append(out["scores"].reshape(self.batch, k))
            self._end[-1] = out["end"].reshape(self.batch, k)
            prev = self._hyp_ended[-1] if self._hyp_ended else np.zeros((self.batch, k), bool)
            self._hyp_ended.append(np.take_along_axis(prev, out["backpointers"], axis=1) | self._end[-1])
        self.t += 1

    # --- the buffers ---
    def _buffer(self, key, at: int) -> np.ndarray:
        """A State's buffer entry ``at`` (its value after that many steps), [entries, ...]."""
        e = self._live_engine()
        fd = dict(self._feed)
        fd[e.core.t] = at
        return e.session.run(e.core.state_at[key], feed_dict=fd)

    def _layer(self, placeholder, at: int) -> np.ndarray:
        """A tensor of the step net in iteration ``at`` (recomputed from the buffers' entry ``at``)."""
        return self._live_engine().session.run(placeholder, feed_dict=self._fed(at))

    def _set_buffer(self, key, value: np.ndarray):
        """Write a State's entry t (its current value), [entries, ...] in the buffer's order."""
        e = self._live_engine()
        ph, op = e.core.set_op(key)
        e.session.run(op, feed_dict={ph: value.astype(e.core.shapes[key][1]), e.core.t: self.t})
        self.edits.append(self.t)
        self.breakpoint = None
        self._moved()
        return self

    def _at(self, at) -> int:
        k = self.t if at is None else at
        if not 0 <= k <= self.t:
            raise RecDebugError(f"value at step {k}: only steps 0..{self.t} have run")
        return k

    def nonfinite_at(self, step: int) -> list:
        """The States that held NaN/Inf (in an active sequence) after iteration ``step``."""
        self._live_engine()
        return [s for s, bad in self._nonfinite[step].items() if bad]

    def beams(self) -> "StepperBeams":
        """The search so far: labels, scores, backpointers [steps run, batch, beam]; backtracking with
        ``hypothesis(b, k)`` / ``hypotheses(b)``; ``state(s, t, b, k)``: a State of hypothesis k after step t."""
        self._live_engine()
        if not self.searching:
            raise RecDebugError(f"{self._loop_text()} is stepped without a search: there are no beams to show",
                                hint=self._search_hint)
        return StepperBeams(self)

    def close(self, why: str | None = None, hint: str | None = None):
        """Free this stepper's TensorFlow session and graph; after this every method says it was closed.
        ``why`` and ``hint``: what that error says (default: close() was called; make a new stepper)."""
        if self.closed is None:
            self.closed = why or "its close() was called"
            self._closed_hint = hint or self._remake_hint
        self._release()
        # the feed is keyed by the build's placeholders
        self.engine, self._feed, self._top, self._top_step = None, {}, None, None
        self._moved()


class InnerStepsBase:
    """The iterations of an inner loop within one outer iteration, already run on the device and fetched: moving
    through them (``step``, ``step_back``, ``run_to``) and where it stands. ``lens``: per sequence, how many inner
    iterations it ran."""

    def __init__(self, outer: LoopStepper, name: str, outer_step: int, lens):
        self.outer, self.name, self.outer_step, self.lens = outer, name, outer_step, np.asarray(lens)
        self.t = 0

    @property
    def T(self) -> int:
        return int(self.lens.max()) if self.lens.size else 0

    @property
    def finished(self) -> bool:
        return self.t >= self.T

    @property
    def ended(self) -> dict:
        return {b: int(n) for b, n in enumerate(self.lens) if n <= self.t}

    @property
    def status(self) -> str:
        parts = [f"outer loop at t={self.outer_step}", "inner loop " + steps_text(self.t, self.T)]
        return " · ".join(parts + [ended_text(b, n) for b, n in sorted(self.ended.items())])

    def __repr__(self):
        return f"InnerSteps({self.name!r}, {self.status})"

    def step(self, n: int = 1):
        self.t = min(self.T, self.t + count_steps(n, "step", "step_back(n) goes back"))
        return self

    def step_back(self, n: int = 1):
        self.t = max(0, self.t - count_steps(n, "step_back", "step(n) goes forward"))
        return self

    def run_to(self, t: int):
        self.t = min(self.T, count_steps(t, "run_to", f"give a step in 0..{self.T}"))
        return self


class StepperBeams(Beams):
    """The hypotheses of a live search after the steps run so far (``stepper.beams()``)."""

    def __init__(self, stepper: LoopStepper):
        self.stepper = stepper
        k, t, b = stepper.beam, stepper.t, stepper.batch
        stack = (lambda rows, dtype: np.stack(rows[:t]) if t else np.zeros((0, b, k), dtype))
        super().__init__(stack(stepper._labels, np.int32), stack(stepper._scores, np.float32),
                         stack(stepper._backpointers, np.int32), stack(stepper._end, bool),
                         bool(stepper.include_eos or stepper.lengths is not None), stepper.lengths)
        if getattr(stepper, "length_normalization", None) and stepper.finished and t:
            self.normalize_final()

    def state(self, state, t: int, b: int, k: int) -> np.ndarray:
        """The value of a State in hypothesis k of sequence b after step t."""
        return self.stepper.value(state, at=t + 1)[b, k]


def read_by(fetches, tensors) -> set:
    """Those of ``tensors`` that running ``fetches`` (ops and tensors, in dicts, lists and tuples) reads, directly or
    through other ops."""
    wanted, found, seen, stack = set(tensors), set(), set(), []

    def add(x):
        if isinstance(x, dict):
            for v in x.values():
                add(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                add(v)
        else:
            stack.append(getattr(x, "op", x))

    add(fetches)
    while stack:
        op = stack.pop()
        if op in seen:
            continue
        seen.add(op)
        for x in op.inputs:
            if x in wanted:
                found.add(x)
            else:
                stack.append(x.op)
        stack.extend(op.control_inputs)
    return found


def valid_frames(axes, ndim: int, batch=-1):
    """Where a value of ``ndim`` axes, the batch first, has valid frames along its dynamic axes: for each (axis,
    its lengths [batch], its frames) the sequence mask, broadcast against the value (size 1 along its other axes);
    None without a dynamic axis. Both front ends' steppers keep a State's padding frames as they were with it."""
    import tensorflow as tf

    mask = None
    for i, lens, frames in axes:
        frames_i = tf.reshape(tf.sequence_mask(lens, frames), [batch] + [1] * (i - 1) + [frames] + [1] * (ndim - i - 1))
        mask = frames_i if mask is None else tf.logical_and(mask, frames_i)
    return mask
