"""Saving a graph as a RETURNN config with a RETURNN checkpoint beside it, and loading parameters back.

``g.save(dir)`` writes ``dir/returnn.config`` (a Python config RETURNN's command line reads: the dims, extern_data,
the net dict, the optimizer, and, when given the data, a training dataset) and ``dir/model.001`` (RETURNN's own
checkpoint, written by the network's saver: the same variable names RETURNN gives the parameters when it builds
the config). ``g.load(dir)`` and ``params=dir`` read the newest checkpoint there (RETURNN's command line training
on writes ``model.002``...) back into parameters by path.
"""
from __future__ import annotations

import json
import os
import re

import numpy as np

from ..language.errors import RecDebugError, RunError

CONFIG = "returnn.config"
MODEL = "model"
DATA = "train_data.npz"


def checkpoint_of(path) -> str:
    """The newest RETURNN checkpoint (prefix) in ``path``: a directory of g.save, or a checkpoint prefix."""
    path = os.fspath(path)
    if os.path.isdir(path):
        epochs = []
        for name in os.listdir(path):
            m = re.fullmatch(re.escape(MODEL) + r"\.(\d+)\.index", name)
            if m:
                epochs.append(int(m.group(1)))
        if not epochs:
            raise RecDebugError(f"{path}: no RETURNN checkpoint ({MODEL}.NNN.index) in this directory",
                                hint="write one with g.save(dir), or pass a checkpoint prefix")
        return os.path.join(path, f"{MODEL}.{max(epochs):03d}")
    if os.path.exists(path + ".index"):
        return path
    raise RecDebugError(f"{path}: neither a directory of g.save nor a RETURNN checkpoint (no {path}.index)")


def load_params(g, path) -> dict:
    """The parameters of ``g`` from the newest checkpoint in ``path``, by path; every one must be there."""
    import tensorflow as tf

    prefix = checkpoint_of(path)
    reader = tf.train.load_checkpoint(prefix)
    shapes = reader.get_variable_to_shape_map()
    params = {p.path(g): p for p in _graph_params(g)}
    missing = [name for name in params if name not in shapes]
    if missing:
        raise RecDebugError(f"{prefix}: the checkpoint has no parameter {missing[0]!r} of this graph",
                            hint=f"it has {sorted(k for k in shapes if 'global_step' not in k)[:12]}")
    out = {}
    for name, p in params.items():
        value = reader.get_tensor(name)
        expected = tuple(d.size for d in p.dims)
        if value.shape != expected:
            raise RecDebugError(f"{prefix}: parameter {name!r} has shape {value.shape} there, this graph's has "
                                f"{expected}")
        out[name] = value.astype(np.float32)
    return out


def _graph_params(g) -> list:
    return [op.attrs["param"] for op in g.top.ops if op.kind == "param"]


# --- the config ---

class _Dims:
    """Python names for the RETURNN dims a net dict uses: one variable per dim object."""

    def __init__(self):
        self.names: dict = {}  # id(dim) -> name
        self.lines: list = []

    def name(self, dim) -> str:
        from returnn.tensor import batch_dim

        if dim is batch_dim:
            return "batch_dim"
        if id(dim) not in self.names:
            base = re.sub(r"\W+", "_", (dim.name or "dim")).strip("_").lower() or "dim"
            name, i = f"{base}_dim", 2
            while name in self.names.values():
                name, i = f"{base}_dim_{i}", i + 1
            self.names[id(dim)] = name
            kind = "Spatial" if dim.dimension is None else "Feature"
            self.lines.append(f"{name} = Dim({dim.dimension!r}, name={dim.name!r}, kind=Dim.Types.{kind})")
        return self.names[id(dim)]


def _py(value, dims: _Dims, indent: int = 0) -> str:
    """``value`` (a net dict, extern_data) as Python source, dims by their variable names."""
    from returnn.tensor import Dim

    pad, inner = " " * indent, " " * (indent + 4)
    if isinstance(value, Dim):
        return dims.name(value)
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = [f"{inner}{_py(k, dims)}: {_py(v, dims, indent + 4)}," for k, v in value.items()]
        return "{\n" + "\n".join(items) + f"\n{pad}}}"
    if isinstance(value, (list, tuple)):
        parts = [_py(v, dims, indent + 4) for v in value]
        text = ", ".join(parts)
        if isinstance(value, tuple):
            text += "," if len(parts) == 1 else ""
            return f"({text})"
        return f"[{text}]"
    if value is None or isinstance(value, (bool, int, float, str)):
        return repr(value)
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return repr(value.item())
    raise RunError(f"g.save: cannot write {type(value).__name__} {value!r} into a RETURNN config")


def config_text(net: dict, extern_data: dict, optimizer: dict, learning_rate: float, max_seqs: int,
                data_keys: dict | None, nested: bool) -> str:
    dims = _Dims()
    extern = _py(extern_data, dims)
    network = _py(net, dims)
    lines = [
        "#!rnn.py",
        "# A RETURNN config written by recdebug's g.save: the loop as RETURNN's net dict, its inputs as",
        "# extern_data, and the parameters in the checkpoint model.001 beside this file. RETURNN's command line",
        "# trains on from that checkpoint, e.g.:  python -m returnn returnn.config ++num_epochs 2",
        "import os",
        "",
        "from returnn.tensor import Dim, batch_dim",
        "",
    ]
    if nested:
        lines += ["# recdebug's small extension of RETURNN: a nested rec layer's sub-layer read from the enclosing loop",
                  "import recdebug.backend.returnn_ext", "recdebug.backend.returnn_ext.install()", ""]
    lines += [
        "_here = os.path.dirname(os.path.abspath(__file__))",
        "use_tensorflow = True",
        "behavior_version = 21",
        "task = 'train'",
        f"model = os.path.join(_here, {MODEL!r})",
        "num_epochs = 1  # the checkpoint is epoch 1: a larger num_epochs trains on from it",
        f"optimizer = {_py(optimizer, dims)}",
        f"learning_rate = {learning_rate!r}",
        f"max_seqs = {max_seqs!r}",
        "batch_size = 100000  # frames per batch: max_seqs limits it",
        "log_verbosity = 3",
        "",
        "# the dims",
        *dims.lines,
        "",
        f"extern_data = {extern}",
        "",
        f"network = {network}",
    ]
    if data_keys:
        lines += [
            "",
            f"# the training data given to g.save: {DATA} beside this file, one entry per sequence",
            "import numpy as _np",
            "",
            "def _sequences():",
            f"    data = _np.load(os.path.join(_here, {DATA!r}))",
            "    n = len(data['__lens__' + next(iter(" + repr(sorted(data_keys)) + "))])",
            "    out = []",
            "    for b in range(n):",
            "        out.append({key: data[key][b][:int(data['__lens__' + key][b])] for key in "
            + repr(sorted(data_keys)) + "})",
            "    return out",
            "",
            "train = {'class': 'StaticDataset', 'data': _sequences(), 'output_dim': "
            + repr(data_keys) + "}",
        ]
    return "\n".join(lines) + "\n"


def data_arrays(g, inputs: dict, seq_lens: dict) -> tuple[dict, dict]:
    """(arrays for train_data.npz, StaticDataset's output_dim): each input batch first, then its time axis, cut
    per sequence to its length when the dataset is read."""
    from ..language.dims import batch_dim
    from .feeding import check_feeds

    checked = check_feeds(g, inputs)
    out, output_dim = {}, {}
    for name, (arr, order) in checked.items():
        inp = g.inputs[name]
        dyn = [d for d in order if d.is_dynamic]
        if batch_dim not in order or len(dyn) > 1:
            raise RunError(f"g.save(data=...): input {name!r} must have the batch dim and at most one dynamic dim")
        rest = [d for d in order if not d.is_batch and not d.is_dynamic]
        target = [batch_dim] + dyn + rest
        arr = arr.transpose([list(order).index(d) for d in target]).astype(inp.dtype)
        n = arr.shape[0]
        if dyn:
            lens = np.asarray(seq_lens.get(dyn[0], np.full(n, arr.shape[1])), np.int32)
        else:
            lens = np.ones(n, np.int32)
            arr = arr[:, None]
        out[name], out["__lens__" + name] = arr, lens
        if inp.sparse_dim is not None:
            output_dim[name] = [inp.sparse_dim.size, 1 if dyn else 0]
        else:
            size = int(np.prod([d.size for d in rest])) if rest else 1
            output_dim[name] = [size, 1 + len(rest) if dyn else len(rest)]
    return out, output_dim


def save_graph(g, path, loss=None, inputs=None, seq_lens=None, learning_rate: float = 1e-3, batch_size: int = 32,
               optimizer=None, seed: int = 0):
    """Write ``path/returnn.config`` and ``path/model.001`` (see the module text)."""
    from .engine import build_apart, default_params, resolve_device
    from .train import TrainEngine

    os.makedirs(path, exist_ok=True)
    loss = loss if loss is not None else getattr(g, "trained_loss", None)
    optimizer = dict(optimizer or getattr(g, "trained_optimizer", None) or {"class": "adam"})
    if loss is None:
        raise RecDebugError("g.save needs the loss the config trains with: g.save(dir, loss=...) (after g.train "
                            "it is the loss trained with)")
    engine = build_apart(lambda: TrainEngine(g, loss, True, resolve_device("cpu"), seed, optimizer))
    try:
        engine.set_params(default_params(g, None), seed)
        import tensorflow as tf

        with engine.tf_graph.as_default():
            engine.network.save_params_to_file(os.path.join(os.path.abspath(path), f"{MODEL}.001"),
                                               engine.session)
        net = dict(engine.prepare())
        data_keys = None
        if inputs is not None:
            arrays, data_keys = data_arrays(g, inputs, dict(seq_lens or {}))
            np.savez(os.path.join(path, DATA), **arrays)
        nested = any(loop.children for loop in g.top.children)
        text = config_text(net, engine.emitted.extern_data, optimizer, float(learning_rate), int(batch_size),
                           data_keys, nested)
        with open(os.path.join(path, CONFIG), "w") as f:
            f.write(text)
        with open(os.path.join(path, "recdebug.json"), "w") as f:
            json.dump({"params": sorted(p.path(g) for p in _graph_params(g)), "checkpoint": f"{MODEL}.001"}, f,
                      indent=1)
        del tf
    finally:
        engine.close()
    return os.path.join(path, CONFIG)
