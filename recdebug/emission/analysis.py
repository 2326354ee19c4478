"""What emission asks of the graph before it writes a layer: which ops RETURNN computes exactly as numpy, which a
loop may move out, whether a value reads an inner loop's result, how derived trace values depend on each other.
Plain Python over the language's objects."""
from __future__ import annotations

_ARITH = ("add", "sub", "mul", "truediv")
_EXACT_IN_NUMPY = ("add", "sub", "mul")  # correctly rounded in float32 by numpy as by TensorFlow
_COMPARE = ("equal", "not_equal", "less", "less_equal", "greater", "greater_equal")
_EVAL_SYMBOL = {"add": "+", "sub": "-", "mul": "*", "truediv": "/"}
_PURE = frozenset({
    "dropout", "add", "sub", "mul", "truediv", "equal", "not_equal", "less", "less_equal", "greater", "greater_equal",
    "logical_and", "logical_or", "activation", "softmax", "where", "gather", "reduce", "cast", "concat", "split",
    "split_part", "dot", "embed", "constant", "sparse", "copy"})


def reads_inner_loop(loop, v) -> bool:
    """Whether ``v`` (a value of ``loop``'s step) is made from a result of a loop inside ``loop``."""
    seen, todo = set(), [v.op]
    while todo:
        op = todo.pop()
        if op in seen or op.scope is not loop:
            continue
        seen.add(op)
        if op.attrs.get("loop") not in (None, loop):  # a stack, last or State after an inner loop
            return True
        todo.extend(x.op for x in op.inputs)
    return False


def read_by_inner_loop(loop, state) -> bool:
    """Whether a loop inside ``loop`` reads ``state``'s value of ``loop``'s step (or one made from it)."""
    entry = loop.entries.get(state)
    if entry is None:
        return False
    made = {id(entry)}
    for op in loop.ops:  # (in the order they were written: inputs first)
        if any(id(x) in made for x in op.inputs):
            made.add(id(op.out))
    read = [x for child in loop.children for op in _all_ops(child) for x in op.inputs]
    read += [child.max_seq_len for child in loop.children if hasattr(child.max_seq_len, "op")]  # (a tensor bound)
    return any(id(x) in made for x in read)


def _all_ops(loop) -> list:
    return list(loop.ops) + [op for child in loop.children for op in _all_ops(child)]


def _derivation_ring(derived: dict):
    """A path of ``derived`` (path -> how) that derives, through others, from itself; None when there is none."""
    for start in derived:
        seen, todo = set(), [start]
        while todo:
            for src in derived_from(derived[todo.pop()]):
                if src == start:
                    return start
                if src in derived and src not in seen:
                    seen.add(src)
                    todo.append(src)
    return None


def moving_out_fails(loop) -> bool:
    """Whether RETURNN's optimization would fail on this loop, which then runs unoptimized (same results):
    it cannot read back per step a stacked or last value that is the same at every step (it moves it out without
    the loop's axis), and its concat does not broadcast a value from outside the loop once moved out."""
    invariant: set = set()
    for op in loop.ops:  # in creation order: inputs first
        if op.kind in _PURE and all(not loop.contains(x.scope) or x.op in invariant for x in op.inputs):
            invariant.add(op)
    if any(v.op in invariant for v in loop.exports):
        return True
    return any(op.kind == "concat" and any(not loop.contains(x.scope) or x.op in invariant for x in op.inputs)
               for op in loop.ops)


def derived_from(how) -> tuple:
    """The trace entries a derived value is computed from."""
    if how[0] in ("same", "part", "shifted"):
        return (how[1],)
    if how[0] == "combine":
        return tuple(how[2])
    return ()
