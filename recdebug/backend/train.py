"""Training a graph with RETURNN's own machinery: ``g.train(...)``.

The emitted net gets one more layer, RETURNN's ``as_is`` loss on the user's loss value (RETURNN flattens it over
the valid frames, so padding frames count for nothing, and normalizes it per frame); RETURNN's ``Updater`` makes
the optimizer step (Adam by default) from the network's objective, exactly as RETURNN's engine does for a config.
Each training step is one minibatch of sequences, drawn epoch by epoch in a seeded order. Afterwards the graph
keeps the trained parameters: ``run``, ``trace``, ``stepper`` and the debugger use them unless given ``params=``.
"""
from __future__ import annotations

import time

import numpy as np

from ..language.dims import batch_dim
from .engine import Engine, build_apart, resolve_device
from .feeding import check_feeds
from ..language.errors import RecDebugError, RunError, user_line


class History:
    """What ``g.train`` did: ``losses`` (the mean loss per valid frame of each step's minibatch), ``steps`` run,
    ``interrupted`` (Ctrl-C stopped it; what was learned is kept), ``seconds``, ``step_seconds`` (each step's
    time: its minibatch fed and RETURNN's update run)."""

    def __init__(self, losses: list, interrupted: bool, seconds: float, batch_size: int, step_seconds=()):
        self.losses = losses
        self.step_seconds = list(step_seconds)
        self.steps = len(losses)
        self.interrupted = interrupted
        self.seconds = seconds
        self.batch_size = batch_size

    def __len__(self):
        return self.steps

    def __repr__(self):
        if not self.losses:
            return "History(no step run)"
        stop = ", interrupted" if self.interrupted else ""
        return (f"History({self.steps} steps of {self.batch_size} sequences, loss {self.losses[0]:.4g} -> "
                f"{self.losses[-1]:.4g}, {self.seconds:.1f} s{stop})")


class TrainEngine(Engine):
    """A build for training: the net with RETURNN's loss layer on ``loss``, and RETURNN's updater."""

    LOSS_LAYER = "train.loss"

    def __init__(self, g, loss, optimize: bool, device: str, seed: int, optimizer: dict):
        self.loss_tensor, self.optimizer = loss, dict(optimizer)
        super().__init__(g, optimize, device, seed, train=True)

    def config_options(self) -> dict:
        return {"optimizer": self.optimizer}

    def prepare(self) -> dict:
        net = dict(self.emitted.net)
        name = self.emitted.layer_of[self.loss_tensor]
        net[self.LOSS_LAYER] = {"class": "copy", "from": name, "loss": "as_is",
                                "loss_opts": {"use_normalized_loss": True}}
        return net

    def finish(self) -> None:
        import tensorflow as tf
        from returnn.tf.updater import Updater

        self.updater = Updater(config=self.network.get_config(), network=self.network, initial_learning_rate=0.0)
        self.updater.set_trainable_vars(self.network.get_trainable_params())
        self.train_op = self.updater.get_optim_op()
        self.objective = self.network.get_objective()  # the mean loss per valid frame (normalized)
        self.extra_variables = [self.updater.learning_rate_var, self.network.global_train_step_var] + [
            v for v in tf.compat.v1.global_variables() if v not in self.network.get_params_list()
            and v is not self.updater.learning_rate_var and v is not self.network.global_train_step_var]

    def train_step(self, fd: dict) -> float:
        _, loss = self.session.run((self.train_op, self.objective), feed_dict=fd)
        return float(loss)


def _check_loss(g, loss):
    from ..language.tensor import Tensor

    line = user_line()
    if not isinstance(loss, Tensor) or loss.graph is not g:
        raise RecDebugError(f"train(loss=...) expects an rd.Tensor of this graph, got {type(loss).__name__}",
                            hint="e.g. loss = rd.cross_entropy(logits, labels) after the loop", line=line)
    if loss.scope is not g.top:
        raise RecDebugError("train(loss=...): the loss must be a value after the loop (stack the per-step values "
                            "with loop.stack, then compute the loss)", line=line)
    if loss.dtype != "float32" or batch_dim not in loss.dims:
        raise RecDebugError(f"train(loss=...): the loss must be float32 with the batch dim (a value per sequence "
                            f"or per frame), got {loss!r}", line=line)


def _number(value, what: str, kind, low, high=None):
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if kind is int:
        ok = ok and float(value) == int(value)
    if not ok or not (value >= low) or (high is not None and value > high):
        limits = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise RecDebugError(f"train: {what} must be a number {limits}, got {value!r}", line=user_line())
    return kind(value)


def _minibatch(checked: dict, seq_lens: dict, targets: dict, idx: np.ndarray) -> tuple[dict, dict, dict]:
    """The sequences ``idx`` of the whole data (the feed cuts each dynamic axis to the minibatch's longest one)."""
    lens = {d: np.asarray(n)[idx] for d, n in seq_lens.items()}
    inputs = {name: (arr.take(idx, axis=list(order).index(batch_dim)), tuple(order))
              for name, (arr, order) in checked.items()}
    tg = {}
    for key, labels in targets.items():
        labels = np.asarray(labels)[idx]
        n = lens.get(key)
        tg[key] = labels[:, :int(n.max())] if n is not None else labels
    return inputs, lens, tg


def _minibatch_arrays(inputs: dict, seq_lens: dict, idx: np.ndarray) -> tuple[dict, dict]:
    """The sequences ``idx`` of arrays by name (batch first), each time axis cut to the minibatch's longest."""
    lens = {k: np.asarray(n)[idx] for k, n in seq_lens.items()}
    out = {}
    for k, v in inputs.items():
        arr = np.asarray(v)[idx]
        if k in lens and arr.ndim >= 2:
            arr = arr[:, :int(lens[k].max())]
        out[k] = arr
    return out, lens


def train_graph(g, inputs: dict, seq_lens: dict | None, loss, steps: int, learning_rate: float, batch_size: int,
                seed: int, optimize: bool = True, device=None, params=None, targets=None, optimizer=None,
                progress: bool = True) -> History:
    _check_loss(g, loss)
    steps = _number(steps, "steps", int, 0)
    learning_rate = _number(learning_rate, "learning_rate", float, 0.0)
    batch_size = _number(batch_size, "batch_size", int, 1)
    checked = check_feeds(g, inputs)
    seq_lens, targets = dict(seq_lens or {}), dict(targets or {})
    total = {arr.shape[list(order).index(batch_dim)] for arr, order in checked.values() if batch_dim in order}
    if len(total) != 1:
        raise RunError(f"train: the inputs disagree on the number of sequences: {sorted(total)}")
    (n_seq,) = total
    for d, n in seq_lens.items():
        if np.shape(n) != (n_seq,):
            raise RunError(f"train: seq_lens[{getattr(d, 'name', d)!r}] has shape {np.shape(n)}, expected one length "
                           f"per sequence ({n_seq})")
    device = resolve_device(device)
    optimizer = optimizer or {"class": "adam"}
    key = ("train", bool(optimize), device, len(g.ops), id(loss), repr(sorted(optimizer.items())))
    engine = g._engines.get(key)
    if engine is None:
        engine = g._engines[key] = build_apart(lambda: TrainEngine(g, loss, bool(optimize), device, seed, optimizer))
    from .engine import default_params

    start = default_params(g, params)
    engine.set_params(start, seed)
    session = engine.live_session()
    # every call starts its optimizer afresh (Adam's moments, the step count), as RETURNN's command line does for
    # a run: the same parameters, data and seed train to the same result, whatever ran before
    session.run(engine._init_extra)
    engine.updater.set_learning_rate(learning_rate, session=session)

    def step(idx: np.ndarray) -> float:
        mb_inputs, mb_lens, mb_targets = _minibatch(checked, seq_lens, targets, idx)
        fd, lens, arrays = engine.feed_dict(mb_inputs, mb_lens)
        engine.feed_targets(fd, mb_targets, mb_lens, len(idx))
        return engine.train_step(fd)

    def keep():
        g.trained_params = engine.params()
        g.trained_loss, g.trained_optimizer = loss, optimizer

    return train_steps(step, n_seq, steps, batch_size, seed, progress, keep)


def train_steps(step, n_seq: int, steps: int, batch_size: int, seed: int, progress: bool, keep) -> History:
    """The training loop both front ends share: ``steps`` calls of ``step(idx)`` (one update on the sequences
    ``idx``, its loss back), minibatches drawn epoch by epoch in a seeded order; Ctrl-C stops after the running
    step; ``keep()`` then keeps what was learned."""
    from tqdm.auto import tqdm

    rng = np.random.default_rng(seed)
    order: list = []
    losses: list = []
    step_seconds: list = []
    interrupted = False
    t0 = time.perf_counter()
    bar = tqdm(total=steps, desc="training", unit="step", disable=not progress or steps == 0)
    try:
        for _ in range(steps):
            t_step = time.perf_counter()
            if len(order) < min(batch_size, n_seq):  # a new epoch: every sequence once, in a seeded order
                order = list(rng.permutation(n_seq))
            idx = np.array(sorted(order[:batch_size]))
            del order[:batch_size]
            value = step(idx)
            step_seconds.append(time.perf_counter() - t_step)
            losses.append(value)
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4f}", refresh=False)
            if not np.isfinite(value):
                raise RunError(f"train: the loss became {value} at step {len(losses) - 1}",
                               hint="lower the learning_rate, or check the loss for log(0)")
    except KeyboardInterrupt:  # Ctrl-C: stop after the step that was running, keep what was learned
        interrupted = True
    finally:
        bar.close()
        keep()
    return History(losses, interrupted, time.perf_counter() - t0, batch_size, step_seconds)
