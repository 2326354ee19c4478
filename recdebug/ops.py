"""Functional ops on Tensors; each becomes one RETURNN layer (split: one per part)."""
from __future__ import annotations

from .dims import Dim, batch_dim, dims_str
from .errors import DimError, user_line
from .graph import current_graph
from .tensor import Tensor


def _check_tensor(x, what):
    if not isinstance(x, Tensor):
        raise DimError(f"{what} expects an rd.Tensor, got {type(x).__name__}")
    return x


def _activation(x: Tensor, fn: str) -> Tensor:
    _check_tensor(x, f"rd.{fn}")
    return x.graph.add_op("activation", [x], x.dims, attrs={"activation": fn}, hint=fn)


def tanh(x: Tensor) -> Tensor:
    return _activation(x, "tanh")


def sigmoid(x: Tensor) -> Tensor:
    return _activation(x, "sigmoid")


def relu(x: Tensor) -> Tensor:
    return _activation(x, "relu")


def exp(x: Tensor) -> Tensor:
    return _activation(x, "exp")


def split(x: Tensor, n: int, dim: Dim | None = None) -> tuple:
    """Split ``x`` into ``n`` equal parts along its feature dim (``dim * n`` gives back parts of ``dim``)."""
    _check_tensor(x, "rd.split")
    line = user_line()
    dim = dim or x.feature_dim("rd.split")
    if dim not in x.dims:
        raise DimError(f"rd.split: {x!r} has no dim {dim!r}", line=line)
    try:
        part = dim.divided(n)
    except ValueError as e:
        raise DimError(f"rd.split: {e}", line=line) from None
    whole = x.graph.add_op("split", [x], x.dims, attrs={"dim": dim, "part": part, "n": n}, line=line)
    rest = x.dims - {dim}
    return tuple(
        x.graph.add_op("split_part", [whole], rest | {part}, attrs={"index": i}, line=line) for i in range(n)
    )


def concat(*xs: Tensor, out_dim: Dim | None = None) -> Tensor:
    """Concatenate along each tensor's feature dim; all other dims must be equal."""
    line = user_line()
    if len(xs) < 2:
        raise DimError("rd.concat needs at least two tensors", line=line)
    for x in xs:
        _check_tensor(x, "rd.concat")
    feats = [x.feature_dim("rd.concat") for x in xs]
    rests = [x.dims - {f} for x, f in zip(xs, feats)]
    for x, r in zip(xs[1:], rests[1:]):
        if r != rests[0]:
            raise DimError(f"rd.concat: {xs[0]!r} and {x!r} differ in dims other than the feature dim "
                           f"({dims_str(rests[0])} vs {dims_str(r)})", line=line)
    if len(set(feats)) != len(feats):
        raise DimError("rd.concat: the same feature dim appears twice", line=line)
    total = sum(f.size for f in feats)
    if out_dim is None:
        out_dim = Dim("+".join(f.name for f in feats), total)
    elif out_dim.size != total:
        raise DimError(f"rd.concat: out_dim {out_dim!r} has size {out_dim.size}, parts add up to {total}",
                       line=line)
    return xs[0].graph.add_op("concat", xs, rests[0] | {out_dim}, attrs={"dims": feats, "out_dim": out_dim},
                              line=line)


def zeros(dims, dtype: str = "float32") -> Tensor:
    """A tensor of zeros with the given dims (static dims and batch only)."""
    return constant(0, dims, dtype=dtype)


def constant(value, dims, dtype: str = "float32") -> Tensor:
    """A tensor filled with ``value`` with the given dims (static dims and batch only)."""
    line = user_line()
    dims = set(dims)
    bad = [d for d in dims if d.is_dynamic]
    if bad:
        raise DimError(f"rd.constant: dynamic dim {bad[0]!r} has no size here", line=line)
    g = current_graph("rd.zeros")
    return g.add_op("constant", [], dims, dtype=dtype, attrs={"value": value}, line=line)


def _reduce(x: Tensor, dim: Dim, mode: str) -> Tensor:
    _check_tensor(x, f"rd.reduce_{mode}")
    line = user_line()
    if dim not in x.dims:
        raise DimError(f"rd.reduce_{mode}: {x!r} has no dim {dim!r}", line=line)
    if dim is batch_dim:
        raise DimError(f"rd.reduce_{mode}: reducing over the batch dim is not supported", line=line)
    return x.graph.add_op("reduce", [x], x.dims - {dim}, dtype=x.dtype, attrs={"mode": mode, "dim": dim},
                          line=line)


def reduce_sum(x: Tensor, dim: Dim) -> Tensor:
    return _reduce(x, dim, "sum")


def reduce_max(x: Tensor, dim: Dim) -> Tensor:
    return _reduce(x, dim, "max")


def cast(x: Tensor, dtype: str) -> Tensor:
    _check_tensor(x, "rd.cast")
    return x.graph.add_op("cast", [x], x.dims, dtype=dtype, attrs={"dtype": dtype})


def choice(x: Tensor, beam_size: int = 4, input_type: str = "logits") -> Tensor:
    """Pick the next label inside a loop: beam search with ``run(search=True)``, else the reference label.

    ``x``: scores over a vocab dim ({batch, vocab}), as ``input_type`` "logits", "log_prob" or "prob". Returns an
    int32 label {batch} with sparse dim vocab. RETURNN's choice layer reorders every State with the beams.
    Without search, feed the reference labels with ``run(..., targets={label: array})`` (teacher forcing).
    """
    from .errors import LoopError

    _check_tensor(x, "rd.choice")
    line = user_line()
    g = x.graph
    if not g.scope.is_loop:
        raise LoopError("rd.choice is used inside a loop (it picks one label per step)", line=line)
    if input_type not in ("logits", "log_prob", "prob"):
        raise DimError(f"rd.choice: input_type must be 'logits', 'log_prob' or 'prob', got {input_type!r}", line=line)
    vocab = x.feature_dim("rd.choice")
    scope = g.scope
    label_time = Dim(f"{scope.name}_labels")
    y = g.add_op("choice", [x], x.dims - {vocab}, dtype="int32", sparse_dim=vocab, line=line,
                 attrs={"beam_size": int(beam_size), "input_type": input_type, "vocab": vocab,
                        "label_time": label_time, "beam": Dim("beam", int(beam_size))})
    y.op.attrs["log_prob_name"] = scope.unique_name(y.op.name + ".log_prob")
    y.op.attrs["target_key"] = "target." + y.name.replace("/", ".")
    g.choices.append(y)
    return y
