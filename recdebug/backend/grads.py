"""Gradients through time: ``g.trace(..., grad_of=loss)``.

Each float State of a top-level loop over an input's axis gets a perturbation added to its value at every step,
fed as zeros; the gradient of the loss with respect to that perturbation at step t is exactly the gradient with
respect to the State's value of step t (dLoss/dh_t). The loss is the mean of the loss value over its valid frames
(as g.train optimizes it). The trace holds them as ``<State key>.grad`` entries (kind "grad", the State's dims);
``Trace.grad(state)`` reads them and the debugger draws their norm per step beside the State.
"""
from __future__ import annotations

import numpy as np

from .engine import Engine, build_apart, resolve_device
from ..language.errors import RecDebugError, user_line


class GradEngine(Engine):
    """A trace build whose States carry zero perturbations, and the gradients of the loss with respect to them."""

    perturb = True

    def __init__(self, g, loss, optimize: bool, device: str, seed: int):
        self.loss_tensor = loss
        super().__init__(g, optimize, device, seed, capture="all")

    def train_flag(self):
        # a tensor fed False, as RETURNN's engine feeds it: the rec layer's loop keeps what the gradients need (with
        # a plain False it is built without back-propagation), and dropout stays off
        import tensorflow as tf

        return tf.compat.v1.placeholder_with_default(False, shape=(), name="train_flag")

    def finish(self) -> None:
        self.objective = mean_over_frames(self.network.get_layer(self.emitted.layer_of[self.loss_tensor]).output)
        data = self.network.extern_data.data
        grads = perturbation_grads(self.objective, {path: data[key].placeholder
                                                    for path, (key, _, _) in self.emitted.perturb.items()})
        self.grads = {path: (grads[path], data[key].placeholder, key, state, loop)
                      for path, (key, state, loop) in self.emitted.perturb.items()}

    def extra_trace(self, fd: dict, lens: dict) -> dict:
        fetch = {"loss": self.objective}
        for path, (grad, ph, key, state, loop) in self.grads.items():
            data = self.network.extern_data.data[key]
            steps = int(np.max(lens[loop.axis])) if loop.axis in lens else None
            batch = next(v.shape[0] for p, v in fd.items() if hasattr(v, "shape") and v.ndim >= 1)
            if steps is None:
                raise RecDebugError(f"grad_of: the lengths of {loop.axis!r} are unknown before the run")
            shape = [batch, steps] + [d.dimension for d in data.dim_tags[2:]]
            fd[ph] = np.zeros(shape, np.float32)
            fetch[path] = grad
        return fetch

    def extra_entries(self, values: dict, label) -> dict:
        from ..language.dims import batch_dim, sorted_dims
        from ..records.trace import Entry

        out = {}
        self.loss_value = float(values.get("loss", np.nan))
        for path, (grad, ph, key, state, loop) in self.grads.items():
            dims = sorted_dims(state.dims)
            order = (dims[0], loop.axis) + tuple(dims[1:])
            assert order[0] is batch_dim
            out[path + ".grad"] = Entry(path + ".grad", values[path], tuple(label(d) for d in order), "grad",
                                        (label(loop.axis),), None)
        return out


def perturbation_grads(objective, perturbations: dict) -> dict:
    """key -> the gradient of ``objective`` with respect to the perturbation placeholder ``perturbations[key]``
    (zeros where the objective does not depend on it): a State's gradient at every step, for both front ends."""
    import tensorflow as tf

    keys = list(perturbations)
    grads = tf.gradients(objective, [perturbations[k] for k in keys])
    return {k: g if g is not None else tf.zeros_like(perturbations[k]) for k, g in zip(keys, grads)}


def mean_over_frames(out):
    """The mean of a RETURNN output's values over its valid frames (padding frames count for nothing)."""
    import tensorflow as tf

    x = out.placeholder
    mask = tf.ones_like(x, dtype=tf.bool)
    for i, tag in enumerate(out.dim_tags):
        if tag.is_dynamic() and not tag.is_batch_dim():
            mask = tf.logical_and(mask, out.get_sequence_mask_broadcast(axis=i))
    frames = tf.reduce_sum(tf.cast(mask, tf.float32))
    return tf.reduce_sum(tf.where(mask, x, tf.zeros_like(x))) / tf.maximum(frames, 1.0)


def grad_trace(g, inputs: dict, seq_lens: dict, loss, device=None, optimize=True, seed=0, params=None,
               max_bytes=None, targets=None):
    from .feeding import check_feeds
    from .tracing import DEFAULT_TRACE_BYTES
    from ..language.tensor import Tensor

    line = user_line()
    if not isinstance(loss, Tensor) or loss.graph is not g or loss.scope is not g.top or loss.dtype != "float32":
        raise RecDebugError("trace(grad_of=...) expects a float32 rd.Tensor of this graph computed after its loops "
                            f"(e.g. rd.cross_entropy(logits, labels)), got {loss!r}", line=line)
    if not any(loop.parent is g.top and loop.unstacked and not loop.bounded and loop.axis.size is None
               for loop in g.loops):
        raise RecDebugError("trace(grad_of=...): gradients through time are recorded for the States of a loop over "
                            "an input's dynamic axis (loop.unstack); this graph has none", line=line)
    check_feeds(g, inputs)
    device = resolve_device(device)
    key = ("grad", bool(optimize), device, seed, len(g.ops), id(loss))
    engine = g._engines.get(key)
    if engine is None:
        engine = g._engines[key] = build_apart(lambda: GradEngine(g, loss, bool(optimize), device, seed))
    engine.set_params(params or {}, seed)
    trace = engine.trace(inputs, seq_lens, DEFAULT_TRACE_BYTES if max_bytes is None else max_bytes, targets)
    trace.loss = engine.loss_value
    return trace
