"""Live beam search in the stepper: the K hypotheses of a sequence are K entries of the step net's batch.

RETURNN's beam machinery (SearchBeam, the choice layer's beam reordering) only runs inside a rec layer, and the
step net runs one iteration as a plain net. So the step net carries the hypotheses itself:

- every input is repeated K times along the batch: entry ``b * K + k`` is hypothesis k of sequence b;
- the choice layer becomes a top-k over (the hypothesis' score + the label's log-probability) across the K * V
  candidates of each sequence, ties going to the lower (slot, label), as RETURNN's choice layer picks them;
- a layer after the choice that reads a value computed before it reads that value through the backpointers
  (a gather along the batch), as RETURNN reorders such values to the new beam;
- the States are written per new hypothesis, reordered the same way.

An ended hypothesis extends only by label 0, at no cost, and keeps its States; with a config's length normalization
its score grows as RETURNN's choice layer makes it grow (``length_normalization``).
"""
from __future__ import annotations

from ..emission.stepnet import REF_KEYS, StepNet, readers_of

ENDED_OTHER_LABELS = -1e30  # the log-probability of any label but 0 after a hypothesis has ended
_registered = False


def register_layer_classes():
    global _registered
    if _registered:
        return
    import tensorflow as tf
    from returnn.tensor import Tensor as Data
    from returnn.tf.layers.base import LayerBase
    from returnn.tf.layers.basic import register_layer_class

    class BeamTopKLayer(LayerBase):
        """Replaces the choice layer: labels [batch * beam] of the new hypotheses; keeps the backpointers
        (``flat_src``: the entry each new hypothesis extends; ``src_slot``: [batch, beam]) and the new scores."""

        layer_class = "recdebug_beam_topk"

        def __init__(self, beam_size, key, length_normalization=None, **kwargs):
            super().__init__(**kwargs)
            from .stepcore import device_tensor

            k = beam_size
            logp = self.sources[0].output.copy_as_batch_major().placeholder  # [batch * beam, vocab]
            prev_scores, prev_ended = device_tensor(key + "/scores"), device_tensor(key + "/ended")
            if length_normalization is not None:  # RETURNN's choice layer: an ended hypothesis' score keeps
                # score/length, which at step t means score * ((t+1)/t)**exponent (divided by the steps at the end)
                t = tf.cast(device_tensor("index"), prev_scores.dtype)
                grow = tf.pow((t + 1.0) / tf.maximum(t, 1.0), float(length_normalization))
                prev_scores = tf.where(tf.logical_and(prev_ended, t > 0), prev_scores * grow, prev_scores)
            vocab = tf.shape(logp)[1]
            only_eos = tf.where(tf.equal(tf.range(vocab), 0), 0.0, ENDED_OTHER_LABELS)
            local = tf.where(prev_ended[:, None], tf.cast(only_eos, logp.dtype)[None, :], logp)
            total = tf.reshape(prev_scores[:, None] + local, [-1, k * vocab])  # [batch, beam * vocab]
            scores, index = tf.nn.top_k(total, k=k, sorted=True)
            self.src_slot = index // vocab  # [batch, beam]
            labels = index % vocab
            self.flat_src = tf.reshape(self.src_slot + tf.range(tf.shape(total)[0])[:, None] * k, [-1])
            self.new_scores = tf.reshape(scores, [-1])
            self.output.placeholder = tf.reshape(labels, [-1])

        @classmethod
        def get_out_data_from_opts(cls, name, sources, **kwargs):
            src = sources[0].output.copy_template().copy_as_batch_major()
            dims = list(src.dim_tags)
            vocab = dims.pop(src.feature_dim_axis)
            return Data(name=f"{name}_output", dims=dims, dtype="int32", sparse_dim=vocab, batch=src.batch)

    class BeamReorderLayer(LayerBase):
        """A value computed before the choice, per new hypothesis: gathered along the batch by the backpointers."""

        layer_class = "recdebug_beam_reorder"

        def __init__(self, choice, **kwargs):
            super().__init__(**kwargs)
            x = self.sources[0].output
            if x.batch_dim_axis is None:
                self.output.placeholder = x.placeholder
            else:
                self.output.placeholder = tf.gather(x.placeholder, choice.flat_src, axis=x.batch_dim_axis)

        @classmethod
        def transform_config_dict(cls, d, network, get_layer):
            super().transform_config_dict(d, network=network, get_layer=get_layer)
            d["choice"] = get_layer(d["choice"])

        @classmethod
        def get_out_data_from_opts(cls, name, sources, **kwargs):
            return sources[0].output.copy_template(name=f"{name}_output")

    register_layer_class(BeamTopKLayer)
    register_layer_class(BeamReorderLayer)
    _registered = True


def add_beam(step: StepNet, choice_op, key: str) -> set:
    """Rewrite the step net for a search: the choice layer becomes a top-k, and every layer after it reads the
    values computed before it through the backpointers. Returns the flat names of the layers after the choice
    (their values are per new hypothesis; the others are per hypothesis of the previous step)."""
    net = step.net
    choice = step.layer_names[choice_op.name]
    net[choice] = {"class": "recdebug_beam_topk", "from": step.layer_names[choice_op.attrs["log_prob_name"]],
                   "beam_size": choice_op.attrs["beam_size"], "key": key, "is_output_layer": True}
    in_step = set(step.layer_names.values()) | set(step.prev_layers.values())
    after = readers_of(net, in_step, {choice})
    for name in after - {choice}:
        layer = net[name]
        for ref_key in REF_KEYS:
            if ref_key in layer:
                layer[ref_key] = _reordered(layer[ref_key], in_step - after, choice, net)
    return after


def _reordered(value, before: set, choice: str, net: dict):
    if isinstance(value, list):
        return [(_reordered(v[0], before, choice, net), v[1]) if isinstance(v, tuple)
                else _reordered(v, before, choice, net) for v in value]
    if not isinstance(value, str) or value.partition("/")[0] not in before:
        return value
    name = value + ".beam"
    net.setdefault(name, {"class": "recdebug_beam_reorder", "from": value, "choice": choice})
    return name
