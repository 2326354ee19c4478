"""Functional ops on Tensors; each becomes one RETURNN layer (split: one per part)."""
from __future__ import annotations

from .dims import Dim, batch_dim, dim_named, dims_str
from .errors import DimError, user_line
from .graph import current_graph
from .state import State, used_as_value
from .tensor import Tensor


def _no_states(what: str, *values) -> None:
    """A State given where a value is needed (``rd.tanh(h)``): the error that says to read it with get()."""
    for v in values:
        if isinstance(v, State):
            raise used_as_value(v, what)


def _check_tensor(x, what):
    _no_states(what, x)
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


def log(x: Tensor) -> Tensor:
    return _activation(x, "log")


def abs(x: Tensor) -> Tensor:  # noqa: A001  (rd.abs, as numpy's)
    return _activation(x, "abs")


def _softmax(x: Tensor, dim: Dim | str | None, log_space: bool) -> Tensor:
    what = "rd.log_softmax" if log_space else "rd.softmax"
    _check_tensor(x, what)
    line = user_line()
    dim = dim_named(dim, x.dims, f"{what} of {x!r}") if dim is not None else x.feature_dim(what)
    if dim not in x.dims or dim.is_batch:
        raise DimError(f"{what}: {x!r} has no dim {dim!r} to normalize over", line=line)
    if x.dtype != "float32":
        raise DimError(f"{what} needs float32 values, got {x.dtype}", line=line)
    return x.graph.add_op("softmax", [x], x.dims, attrs={"dim": dim, "log": log_space}, line=line,
                          hint="log_softmax" if log_space else "softmax")


def softmax(x: Tensor, dim: Dim | str | None = None) -> Tensor:
    """exp(x) normalized over ``dim`` (a dim of x or its name; default: the feature dim); over a dynamic dim,
    padding frames get 0."""
    return _softmax(x, dim, log_space=False)


def log_softmax(x: Tensor, dim: Dim | str | None = None) -> Tensor:
    """log(softmax(x, dim)), computed stably."""
    return _softmax(x, dim, log_space=True)


def where(cond: Tensor, a, b) -> Tensor:
    """``a`` where ``cond`` is true, else ``b`` (Tensors or numbers); dims broadcast as for arithmetic."""
    import numbers

    line = user_line()
    _no_states("rd.where", cond, a, b)
    if not isinstance(cond, Tensor) or cond.dtype != "bool":
        raise DimError(f"rd.where expects a bool rd.Tensor (a comparison) as condition, got {cond!r}", line=line)
    tensors = [cond] + [v for v in (a, b) if isinstance(v, Tensor)]
    for v in (a, b):
        if not isinstance(v, (Tensor, numbers.Number)) or isinstance(v, bool):
            raise DimError(f"rd.where: values must be rd.Tensors or numbers, got {type(v).__name__}", line=line)
    values = [v for v in (a, b) if isinstance(v, Tensor)]
    if values:
        dtype = values[0].dtype
    else:
        dtype = "int32" if all(isinstance(v, numbers.Integral) for v in (a, b)) else "float32"
    if any(v.dtype != dtype for v in values):
        raise DimError(f"rd.where: the values have dtypes {values[0].dtype} and {values[1].dtype}", line=line)
    dims = max((t.dims for t in tensors), key=len)
    if any(not t.dims <= dims for t in tensors):
        raise DimError("rd.where: dims " + ", ".join(dims_str(t.dims) for t in tensors) + " do not broadcast "
                       "(one operand's dims must contain the others')", line=line)
    attrs = {"true_value": None if isinstance(a, Tensor) else a, "false_value": None if isinstance(b, Tensor) else b}
    sparse = {v.sparse_dim for v in values}
    sparse = sparse.pop() if len(sparse) == 1 and len(values) == 2 else None
    if sparse is None:  # labels of different sparse dims (or a number): plain int values
        tensors = [cond] + [_sparse(v, None, line) for v in values]
        label = values[0].sparse_dim if len(values) == 1 else None
        number = a if not isinstance(a, Tensor) else b
        if label is not None and isinstance(number, numbers.Integral) and 0 <= number < label.size:
            # labels beside a number that is a label of theirs (rd.where(done, 0, y)): labels again
            out = cond.graph.add_op("where", tensors, dims, dtype=dtype, attrs=attrs, line=line)
            return _sparse(out, label, line)
    return cond.graph.add_op("where", tensors, dims, dtype=dtype, sparse_dim=sparse, attrs=attrs, line=line)


def _sparse(x: Tensor, sparse_dim, line) -> Tensor:
    """``x`` as labels of ``sparse_dim`` (None: plain numbers); the values stay the same."""
    if x.sparse_dim is sparse_dim:
        return x
    return x.graph.add_op("sparse", [x], x.dims, dtype=x.dtype, sparse_dim=sparse_dim, attrs={"sparse_dim": sparse_dim},
                          line=line)


def gather(x: Tensor, index: Tensor, dim: Dim | str | None = None) -> Tensor:
    """``x`` at position ``index`` (int32) along ``dim`` (a dim of x or its name; default: the index's sparse dim);
    the index is clipped to the valid range, for a dynamic dim to each sequence's frames. ``rd.gather(x,
    loop.index)`` reads frame t."""
    line = user_line()
    _check_tensor(x, "rd.gather")
    _no_states("rd.gather", index)
    if not isinstance(index, Tensor) or index.dtype != "int32":
        raise DimError(f"rd.gather expects an int32 rd.Tensor as index, got {index!r}", line=line)
    dim = dim_named(dim, x.dims, f"rd.gather of {x!r}") if dim is not None else index.sparse_dim
    if dim is None:
        raise DimError("rd.gather: which dim does the index select on?", line=line, hint="pass dim=...")
    if dim not in x.dims or dim.is_batch:
        raise DimError(f"rd.gather: {x!r} has no dim {dim!r}", line=line)
    if dim in index.dims:
        raise DimError(f"rd.gather: the index {index!r} has the gathered dim {dim!r} itself", line=line)
    # the axis of an inner while loop, in a value stacked out of an enclosing loop: its length differs per outer
    # step and sequence, and RETURNN's gather along it mixes the outer steps with the sequences (wrong values)
    inner = next((lp for lp in x.graph.loops if lp.axis is dim and lp.parent.is_loop
                  and (lp.bounded or not lp.unstacked)), None)
    if inner is not None:
        outer = [s for s in inner.parent.ancestors() if s.is_loop and s.axis in x.dims]
        if outer:
            raise DimError(f"rd.gather along the axis of the inner {inner.describe()} of {x!r}, which also has the "
                           f"axis of {outer[0].describe()}: the inner loop's length differs from one outer step to "
                           f"the next, and RETURNN cannot gather along it there", line=line,
                           hint=f"gather inside {outer[0].name} (on the inner loop's stacked value, before stacking "
                                f"it over {outer[0].name}), then stack the result")
    rest = x.dims - {dim}
    return x.graph.add_op("gather", [x, index], rest | index.dims, dtype=x.dtype, sparse_dim=x.sparse_dim,
                          attrs={"dim": dim}, line=line)


def dropout(x: Tensor, rate: float, dims=None) -> Tensor:
    """Zero each value with probability ``rate`` and scale the rest by 1/(1-rate), only when run with
    ``train=True`` (else the identity)."""
    line = user_line()
    _check_tensor(x, "rd.dropout")
    if not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
        raise DimError(f"rd.dropout: rate must be a number in [0, 1), got {rate!r}", line=line)
    if x.dtype != "float32":
        raise DimError(f"rd.dropout needs float32 values, got {x.dtype}", line=line)
    return x.graph.add_op("dropout", [x], x.dims, attrs={"rate": float(rate)}, line=line)


def cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Per frame: -log softmax(logits)[label] over the labels' sparse dim (the logits' other dims remain)."""
    line = user_line()
    _check_tensor(logits, "rd.cross_entropy")
    _no_states("rd.cross_entropy", labels)
    if not isinstance(labels, Tensor) or labels.sparse_dim is None:
        raise DimError(f"rd.cross_entropy expects labels with a sparse_dim (the classes), got {labels!r}", line=line)
    vocab = labels.sparse_dim
    if vocab not in logits.dims:
        raise DimError(f"rd.cross_entropy: the logits {logits!r} have no dim {vocab!r} of the labels", line=line)
    if not labels.dims <= logits.dims - {vocab}:
        raise DimError(f"rd.cross_entropy: the labels' dims {dims_str(labels.dims)} are not among the logits' "
                       f"other dims {dims_str(logits.dims - {vocab})}", line=line)
    return -gather(log_softmax(logits, vocab), labels, vocab)


def split(x: Tensor, n: int, dim: Dim | str | None = None) -> tuple:
    """Split ``x`` into ``n`` equal parts along its feature dim, or along ``dim`` (a dim of x or its name);
    ``dim * n`` gives back parts of ``dim``."""
    _check_tensor(x, "rd.split")
    line = user_line()
    dim = dim_named(dim, x.dims, f"rd.split of {x!r}") if dim is not None else x.feature_dim("rd.split")
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
    if len({x.dtype for x in xs}) > 1:
        raise DimError("rd.concat: the tensors have different dtypes (" + ", ".join(x.dtype for x in xs) + ")",
                       line=line, hint="rd.cast them to one dtype first")
    total = sum(f.size for f in feats)
    if out_dim is None:
        out_dim = Dim("+".join(f.name for f in feats), total)
    elif out_dim.size != total:
        raise DimError(f"rd.concat: out_dim {out_dim!r} has size {out_dim.size}, parts add up to {total}",
                       line=line)
    return xs[0].graph.add_op("concat", xs, rests[0] | {out_dim}, dtype=xs[0].dtype,
                              attrs={"dims": feats, "out_dim": out_dim}, line=line)


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
    if not isinstance(value, (bool, int, float)):
        raise DimError(f"rd.constant fills its dims with one number, got {type(value).__name__} {value!r}", line=line,
                       hint="for given values per unit use an rd.Parameter, or an input")
    g = current_graph("rd.zeros")
    return g.add_op("constant", [], dims, dtype=dtype, attrs={"value": value}, line=line)


def _reduce(x: Tensor, dim: Dim | str, mode: str) -> Tensor:
    """``x`` reduced over ``dim`` (a dim of x or its name)."""
    _check_tensor(x, f"rd.reduce_{mode}")
    line = user_line()
    dim = dim_named(dim, x.dims, f"rd.reduce_{mode} of {x!r}")
    if dim not in x.dims:
        raise DimError(f"rd.reduce_{mode}: {x!r} has no dim {dim!r}", line=line)
    if dim is batch_dim:
        raise DimError(f"rd.reduce_{mode}: reducing over the batch dim is not supported", line=line)
    return x.graph.add_op("reduce", [x], x.dims - {dim}, dtype=x.dtype, attrs={"mode": mode, "dim": dim},
                          line=line)


def reduce_sum(x: Tensor, dim: Dim | str) -> Tensor:
    return _reduce(x, dim, "sum")


def reduce_max(x: Tensor, dim: Dim | str) -> Tensor:
    return _reduce(x, dim, "max")


def reduce_min(x: Tensor, dim: Dim | str) -> Tensor:
    return _reduce(x, dim, "min")


def reduce_mean(x: Tensor, dim: Dim | str) -> Tensor:
    """The mean over ``dim``; over a dynamic dim, of each sequence's frames only (padding excluded)."""
    return _reduce(x, dim, "mean")


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
