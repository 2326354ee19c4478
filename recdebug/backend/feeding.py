"""Feeding a build: the user's inputs checked with errors that name the input at fault, then turned into RETURNN's
placeholders. The language's net: every input checked against its Input (numbers its dtype holds, its axis order,
static sizes, lengths, labels in their vocabulary), the reference labels of teacher forcing (``Feeding``). A
config's network: arrays by extern_data name, checked against its extern data (``feed_extern_data``)."""
from __future__ import annotations

import itertools

import numpy as np

from ..language.dims import Dim, dim_named, sorted_dims
from ..language.errors import DimError, FeedError, RunError


class Feeding:
    """Mixed into the Engine: its feed dict from the user's inputs and lengths."""

    def feed_targets(self, fd: dict, targets: dict, seq_lens: dict, batch: int) -> None:
        """Teacher forcing: the reference labels of every rd.choice (not used when searching)."""
        if self.search:
            return
        for y in self.graph.choices:
            labels, lens = reference_labels(y, targets, seq_lens, batch)
            a = y.op.attrs
            data = self.network.extern_data.data[a["target_key"]]
            fd[data.placeholder] = labels
            fd[self.emitted.dims[a["label_time"]].dyn_size_ext.placeholder] = lens

    def feed_dict(self, inputs: dict, seq_lens: dict) -> tuple[dict, dict, dict]:
        """(feed_dict, lengths per dynamic dim, fed arrays) with checks that name the input at fault."""
        g, em = self.graph, self.emitted
        checked = check_feeds(g, inputs, seq_lens)
        sizes: dict = {}
        lens: dict = {}
        fd = {}
        arrays = {}
        for name, inp in g.inputs.items():
            arr, order = checked[name]
            for d, n in zip(order, arr.shape):
                if d.size is None:
                    if sizes.setdefault(d, n) != n:
                        raise RunError(f"input {name!r}: dim {d.name!r} has size {n} here, {sizes[d]} elsewhere")
            arrays[name] = (arr.astype(inp.dtype), tuple(order))
        for d, n in sizes.items():
            if d.is_batch:
                continue
            given = seq_lens.get(d)
            if given is None:
                given = np.full([sizes[_batch()]], n, dtype=np.int32)
            given = checked_numbers(f"seq_lens[{d.name!r}]", given, "int32", (_batch(),)).astype(np.int32)
            if given.shape != (sizes[_batch()],):
                raise RunError(f"seq_lens[{d.name!r}]: expected one length per sequence ({sizes[_batch()]}), "
                               f"got shape {given.shape}")
            if given.min() < 1 or given.max() > n:
                raise RunError(f"seq_lens[{d.name!r}]: lengths must be in 1..{n} (the axis size), got {given}")
            lens[d] = given
            fd[em.dims[d].dyn_size_ext.placeholder] = given
        for d in seq_lens:
            if d not in sizes and not any(d is y for y in g.choices):
                dynamic = ", ".join(x.name for x in sorted_dims(sizes) if not x.is_batch) or "none"
                raise RunError(f"seq_lens: {d!r} is not a dynamic dim of any input; the inputs' dynamic dims are: "
                               f"{dynamic}")
        for name, inp in g.inputs.items():
            arr, order = arrays[name]
            for i, d in enumerate(order):  # frames after the longest sequence: RETURNN's axis ends there
                if d in lens and arr.shape[i] > int(lens[d].max()):
                    arr = arr.take(np.arange(int(lens[d].max())), axis=i)
            if inp.sparse_dim is not None:
                arr = valid_labels(name, arr, order, inp.sparse_dim, lens)
            arrays[name] = (arr, order)
            data = self.network.extern_data.data[inp.op.name]  # the extern data key (a reserved name is renamed)
            fd[data.placeholder] = arr.transpose([list(order).index(em.rd_dim(t)) for t in data.dim_tags])
        return fd, lens, arrays


def valid_labels(name: str, arr: np.ndarray, order: tuple, sparse_dim, lens: dict) -> np.ndarray:
    """Labels of the input ``name`` checked in 0..size-1 on valid frames; padding frames (whatever they hold) set
    to 0, so that an embedding never reads an index out of range there."""
    valid = np.ones(arr.shape, bool)
    b_axis = order.index(_batch()) if _batch() in order else None
    for i, d in enumerate(order):
        if d in lens and b_axis is not None:
            steps = np.arange(arr.shape[i]).reshape([-1 if j == i else 1 for j in range(arr.ndim)])
            valid &= steps < np.asarray(lens[d]).reshape([-1 if j == b_axis else 1 for j in range(arr.ndim)])
    bad = valid & ((arr < 0) | (arr >= sparse_dim.size))
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        where = ", ".join(f"{d.name}={i}" for d, i in zip(order, idx))
        raise RunError(f"input {name!r}: label {arr[idx]} at {where} is outside the vocabulary "
                       f"{sparse_dim.name!r} (0..{sparse_dim.size - 1}); {int(bad.sum())} valid frame(s) hold "
                       f"such labels", hint="labels are 0..size-1; padding frames may hold anything")
    return np.where(valid, arr, 0).astype(arr.dtype)


def check_feeds(g, inputs: dict, seq_lens: dict | None = None) -> dict:
    """Every input of ``g`` fed, and nothing else; ``{name: (array, its axis order)}``, each checked (against the
    lengths in ``seq_lens`` too)."""
    unknown = set(inputs) - set(g.inputs)
    if unknown:
        raise RunError(f"unknown input(s) {sorted(unknown)}; the graph's inputs are {sorted(g.inputs)}")
    missing = [n for n in g.inputs if n not in inputs]
    if missing:
        raise RunError(f"missing input(s) {missing}: pass them as run({{name: array}})")
    return {name: value_and_order(inputs[name], inp, seq_lens) for name, inp in g.inputs.items()}


def value_and_order(value, inp, seq_lens: dict | None = None) -> tuple:
    """A fed input: (array, its axis order) from an array (the Input's own order) or an (array, order) pair,
    checked against the Input (numbers its dtype holds, one axis per dim, static sizes, as many sequences as
    ``seq_lens`` gives lengths for its dynamic dims, no empty axis)."""
    name, order = inp.input_name, inp.order
    whose = "the Input's axis order"
    if isinstance(value, tuple) and len(value) == 2 and _is_order(value[1]):
        value, order = value[0], tuple(dim_named(d, inp.dims, f"input {name!r}: order") for d in value[1])
        whose = "the axis order given with it"
        if set(order) != set(inp.dims) or len(order) != len(inp.dims):
            raise DimError(f"input {name!r}: order {_order_text(order)} is not a permutation of its dims "
                           f"{_order_text(inp.order)}")
    arr = checked_numbers(f"input {name!r}", value, inp.dtype, order)
    if arr.ndim != len(order):
        raise RunError(f"input {name!r}: expected {len(order)} axes {_order_text(order)}, got shape {arr.shape}")
    counts = _length_counts(order, seq_lens or {})

    def misfit(why: str) -> FeedError:
        fits = _fitting_order(arr.shape, order, counts)
        return FeedError(f"input {name!r}: the array of shape {arr.shape} does not fit {whose} "
                         f"{_order_text(order, sizes=True)}: {why}", name,
                         _order_text(fits) if fits else "(the dims of its axes, in order)")

    for d, n in zip(order, arr.shape):
        if d.size is not None and n != d.size:
            raise misfit(f"axis {d.name!r} has size {n}, the dim says {d.size}")
    if counts and _batch() in order:
        n = arr.shape[order.index(_batch())]
        for d, count in counts.items():
            if count != n:
                raise misfit(f"its batch axis holds {n} sequences, seq_lens[{d.name!r}] has {count} lengths")
    for d, n in zip(order, arr.shape):
        if n == 0:
            raise RunError(f"input {name!r}: axis {d.name!r} has size 0 (shape {arr.shape})",
                           hint="feed at least one sequence" if d.is_batch else
                           "feed at least one frame; shorter sequences get their lengths in seq_lens")
    return arr, order


def _order_text(order, sizes: bool = False) -> str:
    """``(batch, time, feat)``; with ``sizes``: ``(batch, time, feat:4)``."""
    return "(" + ", ".join(d.short() if sizes else d.name for d in order) + ")"


def _length_counts(order, seq_lens: dict) -> dict:
    """{dynamic dim of ``order``: how many lengths ``seq_lens`` gives it}, for those given as one list."""
    counts = {}
    for d in order:
        try:
            shape = np.shape(seq_lens[d]) if d in seq_lens and d.is_dynamic else ()
        except ValueError:  # a ragged list: checked_numbers says so later
            shape = ()
        if len(shape) == 1:
            counts[d] = shape[0]
    return counts


def _fitting_order(shape: tuple, order: tuple, counts: dict) -> tuple | None:
    """Another order of the dims that an array of ``shape`` fits (static sizes, as many sequences as lengths), if
    there is one: what the array most likely holds."""
    if len(order) > 6:
        return None
    batch_size = next(iter(counts.values()), None)
    for other in itertools.permutations(order):
        if other != tuple(order) and all(
                (d.size is None or d.size == n) and not (d.is_batch and batch_size not in (None, n))
                for d, n in zip(other, shape)):
            return other
    return None


def _is_order(x) -> bool:
    return isinstance(x, (tuple, list)) and len(x) > 0 and all(isinstance(d, (Dim, str)) for d in x)


def checked_numbers(what: str, value, dtype: str, order=None) -> np.ndarray:
    """``value`` as a numpy array that ``dtype`` holds without change, else a RunError naming ``what``: ragged
    lists, strings, objects and complex numbers are refused, and for an int dtype fractions and values outside
    its range. ``order``: the dims of the axes, to say where a bad value is."""
    try:
        arr = np.asarray(value)
    except ValueError:  # numpy refuses nested lists of different lengths
        arr = None
    if arr is None or arr.dtype == object:
        raise RunError(f"{what}: not an array of numbers (a ragged list, with rows of different lengths?)",
                       hint="pad the rows to one length (and give the lengths in seq_lens)")
    if arr.dtype.kind == "c":
        raise RunError(f"{what}: complex values ({arr.dtype}); recdebug computes with real numbers",
                       hint="pass the real part (.real) or the magnitude (np.abs) explicitly")
    if arr.dtype.kind not in "biuf":
        raise RunError(f"{what}: expected numbers, got {arr.dtype} values")
    target = np.dtype(dtype)
    if target.kind in "iu" and arr.size:
        bad = None
        if arr.dtype.kind == "f":
            bad = ~np.isfinite(arr) | (arr != np.round(arr))
            if bad.any():
                raise RunError(f"{what}: {dtype} values expected, got {_first(arr, bad, order)}",
                               hint=f"pass whole numbers (e.g. an array of dtype {dtype})")
        info = np.iinfo(target)
        bad = (arr < info.min) | (arr > info.max)
        if bad.any():
            raise RunError(f"{what}: {_first(arr, bad, order)} is outside the range of {dtype}")
    return arr


def _first(arr: np.ndarray, bad: np.ndarray, order=None) -> str:
    """The first value where ``bad`` holds, and where it is (by dim name when ``order`` names the axes)."""
    idx = tuple(int(i) for i in np.argwhere(bad)[0]) if arr.ndim else ()
    value = arr[idx].item()
    if not idx:
        return f"{value!r}"
    if order is not None and len(order) == arr.ndim:
        return f"{value!r} at " + ", ".join(f"{d.name}={i}" for d, i in zip(order, idx))
    return f"{value!r} at index {idx}"


def reference_labels(y, targets: dict, seq_lens: dict, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Teacher forcing: the reference labels of the rd.choice ``y`` [batch, steps] and their lengths, checked."""
    labels = targets.get(y, targets.get(y.name, targets.get(y.op.name)))
    if labels is None:
        raise RunError(f"{y!r} is an rd.choice: pass its reference labels with targets={{label: array}} "
                       f"(batch, steps), or run with search=True")
    labels = checked_numbers(f"targets[{y.name!r}]", labels, "int32").astype(np.int32)
    if labels.ndim != 2 or labels.shape[0] != batch or labels.shape[1] < 1:
        raise RunError(f"targets[{y.name!r}]: expected shape (batch={batch}, steps), got {labels.shape}")
    vocab = y.op.attrs["vocab"].size
    if labels.min() < 0 or labels.max() >= vocab:
        raise RunError(f"targets[{y.name!r}]: labels must be in 0..{vocab - 1}")
    lens = checked_numbers(f"seq_lens[{y.name!r}]", seq_lens.get(y, np.full(batch, labels.shape[1])),
                           "int32", (_batch(),)).astype(np.int32)
    if lens.shape != (batch,) or lens.min() < 1 or lens.max() > labels.shape[1]:
        raise RunError(f"seq_lens[{y.name!r}]: one length in 1..{labels.shape[1]} per sequence, got {lens}")
    return labels, lens


def _batch_size(arrays: dict) -> int:
    """The batch size of the fed arrays ({name: (array, dims order)})."""
    return next((a.shape[o.index(_batch())] for a, o in arrays.values() if _batch() in o), 1)


def _batch():
    from ..language.dims import batch_dim

    return batch_dim


def extern_sizes(network) -> dict:
    """The length placeholders of a network's extern data: key -> {axis: tensor}, taken right after the build
    (the dims are shared by every build of a config; each build's own placeholders are kept here)."""
    out = {}
    for key, d in network.extern_data.data.items():
        for i, tag in enumerate(d.dim_tags):
            if not tag.is_batch_dim() and tag.dimension is None and tag.dyn_size_ext is not None \
                    and tag.dyn_size_ext.placeholder is not None:
                out.setdefault(key, {})[i] = tag.dyn_size_ext.placeholder
    return out


def feed_extern_data(network, inputs: dict, seq_lens: dict, need=None, sizes=None) -> dict:
    """The feed dict for a RETURNN network's extern data: arrays by extern_data name, in the order of RETURNN's
    placeholder (batch-major: ``(batch, time, feature)``; sparse: ``(batch, time)``), lengths by name."""
    if not isinstance(inputs, dict):
        raise RunError("inputs: expected a dict {extern_data name: array}, e.g. {'data': x}")
    data = network.extern_data.data
    unknown = [k for k in list(inputs) + list(seq_lens) if k not in data]
    if unknown:
        raise RunError(f"no extern_data {unknown[0]!r}; the config has {sorted(data)}")
    need = [k for k in data if k in inputs] if need is None else need
    fd = {}
    for key in need:
        if key not in inputs:
            raise RunError(f"missing input {key!r}: pass it as {{{key!r}: array}}")
        d = data[key]
        arr = np.asarray(inputs[key])
        if arr.dtype.kind not in "biuf":
            raise RunError(f"input {key!r}: expected numbers, got an array of {arr.dtype}")
        if arr.ndim != d.batch_ndim:
            order = ", ".join("batch" if t.is_batch_dim() else (t.description or "?") for t in d.dim_tags)
            raise RunError(f"input {key!r}: expected {d.batch_ndim} axes ({order}), got shape {arr.shape}")
        for i, tag in enumerate(d.dim_tags):
            if tag.dimension is not None and arr.shape[i] != tag.dimension:
                raise RunError(f"input {key!r}: axis {i} ({tag.description}) has size {arr.shape[i]}, expected "
                               f"{tag.dimension}")
        if d.sparse or d.dtype.startswith("int"):
            if arr.dtype.kind == "f" and not np.all(np.isfinite(arr) & (arr == np.round(arr))):
                raise RunError(f"input {key!r}: labels must be whole numbers")
        fd[d.placeholder] = arr.astype(d.dtype)
        batch = arr.shape[d.batch_dim_axis] if d.batch_dim_axis is not None else None
        for i, tag in enumerate(d.dim_tags):
            if tag.is_batch_dim() or tag.dimension is not None:
                continue
            lens = seq_lens.get(key)
            lens = np.full([batch], arr.shape[i], np.int32) if lens is None else np.asarray(lens)
            if lens.shape != (batch,) or lens.dtype.kind not in "iu" and not np.all(lens == np.round(lens)):
                raise RunError(f"seq_lens[{key!r}]: expected {batch} whole numbers (one per sequence), got "
                               f"shape {lens.shape}")
            if lens.min(initial=1) < 1 or lens.max(initial=0) > arr.shape[i]:
                raise RunError(f"seq_lens[{key!r}]: lengths must be 1..{arr.shape[i]} (the padded axis), got "
                               f"{lens.tolist()}")
            if d.sparse:
                valid = np.arange(arr.shape[i])[None, :] < lens[:, None]
                bad = valid & ((arr < 0) | (arr >= d.dim))
                if bad.any():
                    b, t = (int(v) for v in np.argwhere(bad)[0])
                    raise RunError(f"input {key!r}: label {arr[b, t]} at sequence {b}, frame {t} is not in 0.."
                                   f"{d.dim - 1}")
            size = (sizes or {}).get(key, {}).get(i)
            fd[size if size is not None else tag.dyn_size_ext.placeholder] = lens.astype(np.int32)
    return fd
