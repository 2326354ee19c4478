"""Many steps in one session call: the step net's layers built once more inside a ``tf.while_loop`` on the same
State buffers, for ``run_to`` and ``run_until`` (``stepcore.LoopStepper``).

The loop's build shares everything else with the single-step build: the buffers, the parameters (RETURNN finds
them by name), the data and the layers computed once per stepper (their values are fed, as for a single step).
Each iteration does what one step does (``StepBuffers.step_updates``) and also writes what the host keeps of every
step (which entries are active, end flags, NaN/Inf per State, a search's choices) into history buffers, read back
with the call. A breakpoint the loop can test itself (``on_nonfinite``, ``on_state`` with a bound, ``on_label``)
stops it after the step where it holds; a call runs at most ``stop - start`` steps, so that the host can stop
between calls (Ctrl-C) and the stepper stays usable.
"""
from __future__ import annotations

import contextlib

from .stepcore import building


@contextlib.contextmanager
def _batch_of(net):
    """RETURNN's global batch dim on ``net``'s batch while the loop's layers are made (it holds the last build's)."""
    from returnn.tensor import batch_dim

    before = batch_dim.batch
    batch_dim.batch = net.extern_data.get_batch_info()
    try:
        yield
    finally:
        batch_dim.batch = before


class StepLoop:
    """The in-graph loop of one step build (``engine``: a front end's step engine, with ``core``, ``network``,
    ``net_dict``, ``step_args(net)``, ``tensors_at(t)`` and ``loop_network()``). ``prefix``: the names of the
    step net's layers that run in the loop; the others are computed once per stepper."""

    def __init__(self, engine, prefix: str):
        import tensorflow as tf

        core, net = engine.core, engine.network
        self.core = core
        single = core.step_fetch
        self.nonfinite_keys = list(single["nonfinite"])
        self.user_keys = core.user_keys
        construction = getattr(engine, "construction", contextlib.nullcontext)
        with engine.scope(), _batch_of(net):
            known = set(tf.compat.v1.global_variables())
            self.start = tf.compat.v1.placeholder(tf.int32, [], name="recdebug_loop_start")
            self.stop = tf.compat.v1.placeholder(tf.int32, [], name="recdebug_loop_stop")
            self.until_ended = tf.compat.v1.placeholder_with_default(False, [], name="recdebug_until_ended")
            self.watch_nonfinite = tf.compat.v1.placeholder_with_default(
                tf.zeros([len(self.nonfinite_keys)], tf.bool), [len(self.nonfinite_keys)], name="watch_nonfinite")
            self.above = {key: tf.compat.v1.placeholder_with_default(float("inf"), [], name=f"above_{i}")
                          for i, key in enumerate(self.user_keys)}
            self.below = {key: tf.compat.v1.placeholder_with_default(float("-inf"), [], name=f"below_{i}")
                          for i, key in enumerate(self.user_keys)}
            self.bounded = tf.compat.v1.placeholder_with_default(False, [], name="bounded")  # a bound is watched
            self.watch_label = tf.compat.v1.placeholder_with_default(-1, [], name="watch_label")
            self.watch_sequence = tf.compat.v1.placeholder_with_default(-1, [], name="watch_sequence")
            kept = {name: x for name, x in single.items() if name != "nonfinite"}
            if self.nonfinite_keys:
                kept["nonfinite"] = tf.stack([single["nonfinite"][k] for k in self.nonfinite_keys])
            shapes = {"backpointers": [core.batch // (core.beam or 1), core.beam or 1],
                      "nonfinite": [len(self.nonfinite_keys)]}  # the others: one per entry
            self.history = {name: tf.Variable(tf.zeros([core.max_steps] + shapes.get(name, [core.batch]), x.dtype),
                                              trainable=False, name=f"history_{name}") for name, x in kept.items()}
            loop_net = engine.loop_network()
            for name, layer in net.layers.items():  # computed once: the single-step build's, fed as there
                if not name.startswith(prefix):
                    loop_net.layers[name] = layer
            inside = [name for name in net.layers if name.startswith(prefix) and "/" not in name]

            def cond(t, hit):
                go = tf.logical_and(tf.less(t, self.stop), tf.logical_not(hit))
                if core.ended is not None:
                    all_ended = tf.reduce_all(tf.gather(core.ended, t))
                    go = tf.logical_and(go, tf.logical_not(tf.logical_and(self.until_ended, all_ended)))
                return go

            def body(t, hit):
                with building(engine.tensors_at(t)), construction():
                    for name in inside:
                        loop_net.construct_layer(engine.net_dict, name)
                updates, fetch, written = core.step_updates(t, **engine.step_args(loop_net))
                row = tf.reshape(t, [1])
                if self.nonfinite_keys:
                    fetch["nonfinite"] = tf.stack([fetch["nonfinite"][k] for k in self.nonfinite_keys])
                    hit = tf.reduce_any(tf.logical_and(fetch["nonfinite"], self.watch_nonfinite))
                else:
                    hit = tf.constant(False)
                    fetch.pop("nonfinite")
                if "labels" in fetch:  # a search: a hypothesis (of every sequence, or of one) chose the label
                    chosen = tf.reshape(tf.equal(fetch["labels"], self.watch_label), [core.batch // core.beam, -1])
                    rows = tf.logical_or(tf.less(self.watch_sequence, 0),
                                         tf.equal(tf.range(core.batch // core.beam), self.watch_sequence))
                    hit = tf.logical_or(hit, tf.reduce_any(tf.logical_and(chosen, rows[:, None])))
                def beyond_a_bound():  # (only while a bound is watched: no pass over the States otherwise)
                    out = tf.constant(False)
                    for key in self.user_keys:
                        value = tf.cast(written[key], tf.float32)
                        out = tf.logical_or(out, tf.logical_or(tf.reduce_any(value > self.above[key]),
                                                               tf.reduce_any(value < self.below[key])))
                    return out

                if self.user_keys:
                    hit = tf.logical_or(hit, tf.cond(self.bounded, beyond_a_bound, lambda: tf.constant(False)))
                updates += [tf.compat.v1.scatter_update(self.history[name], row, tf.expand_dims(x, 0))
                            for name, x in fetch.items()]
                with tf.control_dependencies(updates):
                    return tf.identity(t + 1), tf.identity(hit)

            self.end, self.hit = tf.while_loop(cond, body, [self.start, tf.constant(False)], back_prop=False,
                                               parallel_iterations=1, name="recdebug_steps")
            with tf.control_dependencies([self.end, self.hit]):
                steps = tf.range(self.start, self.end)
                self.read = {name: tf.gather(var, steps) for name, var in self.history.items()}
            made = [v for v in tf.compat.v1.global_variables() if v not in known]
            unknown = [v.name for v in made if all(v is not h for h in self.history.values())]
            if unknown:  # a layer made variables of its own (not shared by name): they would hold other values
                raise RuntimeError(f"the loop's build made variables {unknown[:3]}")
            engine.session.run(tf.compat.v1.variables_initializer(list(self.history.values())))

    def feed(self, start: int, stop: int, until_ended: bool, watch: dict | None) -> dict:
        """The loop's own placeholders: steps start..stop (at most), and the breakpoint's bounds."""
        fd = {self.start: start, self.stop: stop, self.until_ended: until_ended}
        watch = watch or {}
        nonfinite = watch.get("nonfinite")
        if nonfinite is not None:
            fd[self.watch_nonfinite] = [nonfinite is True or k in nonfinite for k in self.nonfinite_keys]
        for key, bound in watch.get("above", {}).items():
            fd[self.above[key]] = bound
        for key, bound in watch.get("below", {}).items():
            fd[self.below[key]] = bound
        fd[self.bounded] = bool(watch.get("above") or watch.get("below"))
        if "label" in watch:
            label, sequence = watch["label"]
            fd[self.watch_label] = label
            fd[self.watch_sequence] = -1 if sequence is None else sequence
        return fd

    def watchable(self, watch: dict) -> bool:
        """Whether the loop can test the breakpoint ``watch`` itself."""
        keys = set(watch.get("above", {})) | set(watch.get("below", {}))
        nonfinite = watch.get("nonfinite")
        return keys <= set(self.user_keys) and (nonfinite in (None, True) or set(nonfinite) <= set(
            self.nonfinite_keys)) and ("label" not in watch or "labels" in self.history)
