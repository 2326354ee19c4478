"""Property-based test: random loop PROGRAMS (Python source text) built with recdebug, run by g.run, g.trace and
g.stepper, and interpreted in numpy (tests/refinterp.py). All four must agree on every valid frame (1e-5 abs +
1e-5 rel for float32, exact for int32/bool), with optimize=True and optimize=False.

A failing program is shrunk by hypothesis and printed as code that can be pasted and run (the "program:" note).

    RECDEBUG_GEN_EXAMPLES=1000 pytest tests/test_generative.py     # more programs (default: DEFAULT_EXAMPLES)
    RECDEBUG_GEN_SEED=7 ...                                        # other fixed seeds (default: 0)
    RECDEBUG_GEN_SHARDS=24 ...                                     # other splits into tests (default: 12)
    RECDEBUG_GEN_FAILURES=/tmp/fails ...                           # each failing program as a script there
"""
from __future__ import annotations

import linecache
import math
import os
import re
import time as _time

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, note, reject, settings, seed
from hypothesis import strategies as st

import recdebug as rd
from refinterp import IllConditioned, interpret, param_shapes

batch = rd.batch_dim

# Features recdebug is still landing: programs use them only when their name is NOT in this set.
# Empty it (or remove a name) once the feature works in recdebug.
# Features recdebug is still landing: programs use them only when their name is NOT in this set.
PENDING: set = set()
ENABLED = {"static_unstack", "unstack_end", "tensor_max_seq_len", "shared_state", "window_loop"} - PENDING

# recdebug bugs this generator found and that are not fixed yet (a minimal program for each: BUG_PROGRAMS below, run
# as strict xfail tests). While a name is in this set, the generator avoids what triggers it, so that the test looks
# further. Remove the name once the bug is fixed (its test then passes).
KNOWN_BUGS: set = set()
# What recdebug refuses with a clear error (RETURNN or TensorFlow cannot do it): the generator avoids it, and its
# program in BUG_PROGRAMS checks the refusal.
REFUSED: dict = {
    "all_empty": rd.RunError,  # a while loop in which every sequence ends at step 0 (TensorFlow cannot stack it)
    "last_inner_stack": rd.LoopError,  # loop.last(<a value with an inner while loop's axis>)
    "stack_own_axis": rd.DimError,  # loop.stack(<a value with the loop's own axis>): that axis twice
    # rd.gather along an inner while loop's axis of a value that also has an enclosing loop's axis (RETURNN's gather
    # mixed the outer steps with the sequences there: found by the generator, now refused)
    "gather_ragged_axis": rd.DimError,
}
AVOIDED = KNOWN_BUGS | set(REFUSED)

DEFAULT_EXAMPLES = 300
MAX_EXAMPLES = int(os.environ.get("RECDEBUG_GEN_EXAMPLES", DEFAULT_EXAMPLES))
SEED = os.environ.get("RECDEBUG_GEN_SEED")
RTOL = ATOL = 1e-5

# --- the dims every program declares (symbol -> code name, size; None: dynamic) ---
DIMS = {"B": ("batch", None), "T": ("time", None), "E": ("enc_t", None), "F": ("feat", 3), "H": ("hid", 4),
        "V": ("vocab", 5), "W": ("win", 3)}
HEADER = '''batch = rd.batch_dim
time, enc_t = rd.Dim("time"), rd.Dim("enc_t")
feat, hid, vocab, win = rd.Dim("feat", 3), rd.Dim("hid", 4), rd.Dim("vocab", 5), rd.Dim("win", 3)
'''
# inputs by name: (declaration, dims symbols in array order, dtype)
INPUTS = {
    "x": ('rd.Input("x", {batch, time, feat})', ("B", "T", "F"), "float32"),
    "xt": ('rd.Input("xt", (time, batch, feat))', ("T", "B", "F"), "float32"),
    "enc": ('rd.Input("enc", {batch, enc_t, hid})', ("B", "E", "H"), "float32"),
    "ctx": ('rd.Input("ctx", {batch, hid})', ("B", "H"), "float32"),
    "lab": ('rd.Input("lab", {batch, time}, dtype="int32", sparse_dim=vocab)', ("B", "T"), "int32"),
    "stop": ('rd.Input("stop", {batch}, dtype="int32")', ("B",), "int32"),
    "bound": ('rd.Input("bound", {batch}, dtype="int32")', ("B",), "int32"),
    "xs": ('rd.Input("xs", (win, batch, hid))', ("W", "B", "H"), "float32"),
}
MODULES = {
    "Acc": '''class Acc(rd.Module):
    """A module that owns a State and a Linear."""
    def __init__(self, dim, initial):
        super().__init__()
        self.lin = rd.Linear(dim)
        self.s = rd.State({batch, dim}, initial=initial)

    def forward(self, v):
        s = rd.tanh(self.lin(v) + self.s.get() * 0.5)
        self.s.assign(s)
        return s
''',
    "Counter": '''class Counter(rd.Module):
    """A module that owns an int32 State: how often its condition held."""
    def __init__(self):
        super().__init__()
        self.n = rd.State({batch}, initial=0, dtype="int32")

    def forward(self, cond):
        n = self.n.get() + rd.cast(cond, "int32")
        self.n.assign(n)
        return n
''',
}
THRESHOLDS = (-0.6, -0.3, -0.1, 0.0, 0.15, 0.4, 0.7)


class Val:
    """A value of the generated program: its variable name, dims (symbols), dtype and a magnitude bound."""

    def __init__(self, code, dims, dtype="float32", mag=1.0, lo=0, hi=0, label=False, loop=None, variant=None):
        self.code, self.dims, self.dtype, self.mag = code, frozenset(dims), dtype, float(mag)
        self.variant = variant  # in a loop: changes from step to step (depends on a frame, State or the index)
        self.lo, self.hi = lo, hi  # int32: the range of values
        self.label = label  # int32 {batch} with sparse dim vocab (values 0..4)
        self.loop = loop  # the Lp it is computed in (None: top level)

    @property
    def static(self):
        return [d for d in self.dims if d != "B" and DIMS.get(d, (None, None))[1] is not None]

    @property
    def dynamic(self):
        return [d for d in self.dims if d != "B" and DIMS.get(d, (None, 0))[1] is None]

    def __repr__(self):
        return f"Val({self.code}, {sorted(self.dims)}, {self.dtype})"


class Lp:
    """A loop of the generated program."""

    def __init__(self, name, kind, parent, axis_sym, min_len1):
        self.name, self.kind, self.parent = name, kind, parent
        self.axis_sym = axis_sym  # symbol of loop.axis
        self.min_len1 = min_len1  # every sequence runs at least one step
        self.used_modules: set = set()  # stateful modules called in this body (each once)
        self.assigned: set = set()
        self.max_steps = 5


class Gen:
    """Draws a program with hypothesis and writes it as source text."""

    def __init__(self, data, search=False, tracing=True):
        self.data, self.search, self.tracing = data, search, tracing
        self.force_var = False  # in-loop ops from step values only (for one value)
        self.by_code: dict = {}  # variable name -> Val
        self.lines: list[str] = []
        self.decls: list[str] = []  # top-level declarations for the block being written
        self.inputs: dict = {}  # name -> Val
        self.classes: set = set()
        self.n = 0
        self.pools: list[list] = [[]]  # visible values, per scope (top level first)
        self.loops: list[Lp] = []
        self.stack: list[Lp] = []  # the open loops
        self.linears: dict = {}  # (in symbol, out symbol) -> [names]
        self.embeddings: list = []
        self.lstms: list = []  # (name, out symbol): rd.LSTM modules
        self.accs: list = []  # (name, dim symbol)
        self.acc_inputs: dict = {}  # module name -> the static dim of its first input (its Linear is built for it)
        self.counters: list = []
        self.states: list = []  # StateInfo
        self.extra_dims: dict = {}  # concat out dims: symbol -> (code, size)
        self.ops = 0

    # --- drawing ---
    def draw(self, strategy, label=None):
        return self.data.draw(strategy, label=label)

    def coin(self, p_true=0.5):
        return self.draw(st.integers(0, 99)) < p_true * 100

    def pick(self, seq):
        seq = list(seq)
        return seq[self.draw(st.integers(0, len(seq) - 1))]

    # --- writing ---
    @property
    def depth(self):
        return len(self.stack) + 1

    def emit(self, line):
        self.lines.append("    " * self.depth + line)

    def fresh(self, prefix="v"):
        self.n += 1
        return f"{prefix}{self.n}"

    def add(self, val):
        val.loop = self.stack[-1] if self.stack else None
        if val.variant is None:
            val.variant = bool(self.stack)
        self.pools[-1].append(val)
        self.by_code[val.code] = val
        return val

    def let(self, expr, dims, dtype="float32", mag=1.0, **kw):
        name = self.fresh()
        self.emit(f"{name} = {expr}")
        self.ops += 1
        if self.stack and kw.get("variant") is None:  # whether it changes from step to step of this loop
            here = self.stack[-1]
            kw["variant"] = any(k in expr for k in (".unstack(", ".index", ".get()")) or any(
                v is not None and v.loop is here and v.variant for v in map(self.by_code.get, re.findall(r"\w+", expr)))
        return self.add(Val(name, dims, dtype, mag, **kw))

    def lines_of(self, v) -> str:
        """The line that made ``v``."""
        return next((line for line in reversed(self.lines) if line.strip().startswith(f"{v.code} = ")), "")

    def visible(self, pred=lambda v: True):
        """The values usable here (not those with an open loop's own axis: a loop over time sees frames)."""
        axes = {lp.axis_sym for lp in self.stack}
        return [v for pool in self.pools for v in pool if not (v.dims & axes) and pred(v)]

    @property
    def var_only(self):
        """Whether in-loop ops must depend on the loop's own step values (KNOWN_BUGS "trace_invariant")."""
        return bool(self.stack) and (self.force_var or (self.tracing and "trace_invariant" in AVOIDED))

    def here(self, v):
        return v.loop is (self.stack[-1] if self.stack else None) and bool(v.variant)

    def main(self, pred=lambda v: True):
        """Candidates for an op's main operand: in a loop (while avoiding loop-invariant values) its own step
        values only, so that the op's result changes from step to step too."""
        cands = self.visible(pred)
        return [v for v in cands if self.here(v)] if self.var_only else cands

    def dimcode(self, sym):
        if sym in DIMS:
            return DIMS[sym][0]
        if sym in self.extra_dims:
            return self.extra_dims[sym][0]
        lp = next(lp for lp in self.loops if lp.axis_sym == sym)
        return f"{lp.name}.axis"

    def size(self, sym):
        if sym in DIMS:
            return DIMS[sym][1]
        if sym in self.extra_dims:
            return self.extra_dims[sym][1]
        return None

    def is_static(self, sym):
        return sym != "B" and self.size(sym) is not None

    def static_dims(self, v):
        return [d for d in v.dims if self.is_static(d)]

    def ragged_in(self, d, v) -> bool:
        """Whether ``d`` is an inner while loop's axis and ``v`` also has the axis of a loop enclosing it."""
        lp = next((lq for lq in self.loops if lq.axis_sym == d), None)
        if lp is None or lp.parent is None or lp.kind != "while":
            return False
        outer = lp.parent
        while outer is not None:
            if outer.axis_sym in v.dims:
                return True
            outer = outer.parent
        return False

    def dyn_dims(self, v):
        return [d for d in v.dims if d != "B" and not self.is_static(d)]

    def input(self, name):
        if name not in self.inputs:
            decl, dims, dtype = INPUTS[name]
            self.inputs[name] = Val(name, dims, dtype, mag=3.0, lo=0, hi=4, label=(name == "lab"))
        return self.inputs[name]

    # --- values ---
    def squash(self, v, limit=3.0):
        """``v`` itself if its magnitude is at most ``limit``, else tanh(v)."""
        if v.dtype != "float32" or v.mag <= limit or (self.var_only and not self.here(v)):
            return v
        return self.let(f"rd.tanh({v.code})", v.dims, mag=1.0)

    def float_val(self, pred=lambda v: True):
        cands = self.main(lambda v: v.dtype == "float32" and "B" in v.dims and pred(v))
        return self.pick(cands) if cands else None

    def linear(self, v, out):
        """A Linear from v's feature dim to ``out``: reuse one made for the same dims, or declare a new one."""
        feats = self.static_dims(v)
        assert len(feats) == 1, v
        key = (feats[0], out)
        names = self.linears.setdefault(key, [])
        if names and self.coin(0.4):
            name = self.pick(names)
        else:
            name = self.fresh("lin")
            self.decls.append(f"{name} = rd.Linear({self.dimcode(out)})")
            names.append(name)
        n_in = self.size(feats[0])
        v = self.squash(v, 2.0)
        dims = (v.dims - {feats[0]}) | {out}
        return self.let(f"{name}({v.code})", dims, mag=0.5 * math.sqrt(n_in) * 1.5 * v.mag + 1.5)

    def make_float(self, dims):
        """A float value with exactly ``dims`` (symbols), from what is visible."""
        dims = frozenset(dims)
        same = self.main(lambda v: v.dtype == "float32" and v.dims == dims)
        if same and self.coin(0.7):
            return self.pick(same)
        statics = [d for d in dims if self.is_static(d)]
        if len(statics) == 1:
            src = self.main(lambda v: v.dtype == "float32" and "B" in v.dims and len(self.static_dims(v)) == 1
                               and v.dims - set(self.static_dims(v)) == dims - {statics[0]})
            if src:
                return self.linear(self.pick(src), statics[0])
        if dims == frozenset({"B"}):
            src = self.float_val(lambda v: len(v.dims) == 2 and len(self.static_dims(v)) == 1)
            if src is not None:
                mode = self.pick(["sum", "max", "min", "mean"])
                d = self.static_dims(src)[0]
                return self.let(f"rd.reduce_{mode}({src.code}, {self.dimcode(d)})", dims,
                                mag=src.mag * (self.size(d) if mode == "sum" else 1))
        # something with fewer dims, broadcast by adding a top-level value with all of them
        base = self.float_val(lambda v: v.dims < dims)
        if base is None and self.stack:
            # in a loop: from an int step value (a counter, at least the loop's index)
            lp = self.stack[-1]
            ints = self.main(lambda v: v.dtype == "int32" and v.dims <= dims)
            iv = self.pick(ints) if ints else self.let(f"{lp.name}.index", (), "int32", lo=0, hi=lp.max_steps - 1)
            base = self.let(f"rd.cast({iv.code}, \"float32\") * 0.5", iv.dims,
                            mag=0.5 * max(abs(iv.lo), abs(iv.hi), 1))
        if base is None:
            raise _NoWay(dims)
        top = self.top_value(dims)
        return self.let(f"{base.code} + {top.code}", dims, mag=base.mag + top.mag)

    def top_value(self, dims):
        """A float top-level value with exactly ``dims``, made from the inputs (declared before the block)."""
        dims = frozenset(dims)
        have = [v for v in self.pools[0] if v.dtype == "float32" and v.dims == dims]
        if have:
            return have[0]
        ctx = self.input("ctx")
        name = self.fresh("top")
        if dims == {"B"}:
            expr, mag = f"rd.reduce_mean({ctx.code}, hid)", 3.0
        elif dims == {"B", "H"}:
            return ctx
        elif len(dims) == 2 and all(self.is_static(d) for d in dims - {"B"}):
            (d,) = dims - {"B"}
            lin = self.fresh("lin")
            self.decls.append(f"{lin} = rd.Linear({self.dimcode(d)})")
            expr, mag = f"{lin}({ctx.code})", 4.0
        else:
            raise _NoWay(dims)
        self.decls.append(f"{name} = {expr}")
        val = Val(name, dims, mag=mag, variant=False)
        self.pools[0].append(val)
        return val

    def make_bool(self, dims=frozenset({"B"}), allow_scalar=False):
        """A bool value with exactly ``dims`` (or no dims, if allowed): a comparison of a float with a threshold
        or another value, or of ints."""
        dims = frozenset(dims)
        ints = self.main(lambda v: v.dtype == "int32" and (v.dims == dims or (not v.dims and dims)))
        if ints and self.coin(0.3):
            v = self.pick(ints)
            k = self.draw(st.integers(v.lo, max(v.lo, v.hi)))
            op = self.pick([">=", ">", "==", "!=", "<"])
            if v.dims != dims:  # the step counter: compare with an int of the batch, or keep no dims
                other = self.visible(lambda w: w.dtype == "int32" and w.dims == dims)
                if other:
                    return self.let(f"{v.code} {op} {self.pick(other).code}", dims, "bool")
                if not allow_scalar:
                    v = None
            if v is not None:
                return self.let(f"{v.code} {op} {k}", v.dims, "bool")
        a = self.make_float(dims)
        others = self.visible(lambda w: w.dtype == "float32" and w.dims <= dims and w is not a and "B" in w.dims)
        op = self.pick(["<", ">", "<=", ">="])
        if others and self.coin(0.35):
            return self.let(f"{a.code} {op} {self.pick(others).code}", dims, "bool")
        return self.let(f"{a.code} {op} {self.pick(THRESHOLDS)}", dims, "bool")

    def int_label(self):
        """An int32 {batch} value in 0..4 (a label), from comparisons (argmax-like) or a label in scope."""
        labels = self.main(lambda v: v.dtype == "int32" and v.dims == {"B"} and 0 <= v.lo and v.hi <= 4)
        if labels and self.coin(0.4):
            return self.pick(labels)
        c1 = self.make_bool()
        if self.coin(0.5):
            return self.let(f"rd.cast({c1.code}, \"int32\")", {"B"}, "int32", lo=0, hi=1)
        c2 = self.make_bool()
        return self.let(f"rd.cast({c1.code}, \"int32\") + rd.cast({c2.code}, \"int32\") * 2", {"B"}, "int32",
                        lo=0, hi=3)

    # --- one random op on the visible values ---
    def random_op(self):
        ops = ["unary", "unary", "arith", "arith", "scalar", "where", "reduce", "softmax", "linear", "concat",
               "cast", "gather", "log", "exp", "split", "int"]
        if self.main(lambda v: v.label):
            ops.append("embed")
        if self.stack and self.lstms:
            ops.append("lstm")
        if self.stack and self.accs:
            ops.append("acc")
        if self.stack and self.counters:
            ops.append("counter")
        kind = self.pick(ops)
        try:
            return getattr(self, "op_" + kind)()
        except _NoWay:
            return None

    def op_unary(self):
        a = self.float_val()
        if a is None:
            raise _NoWay()
        fn = self.pick(["tanh", "sigmoid", "relu", "abs", "dropout"])
        if fn == "dropout":
            return self.let(f"rd.dropout({a.code}, 0.3)", a.dims, mag=a.mag)
        return self.let(f"rd.{fn}({a.code})", a.dims, mag=1.0 if fn in ("tanh", "sigmoid") else a.mag)

    def op_exp(self):
        a = self.float_val()
        if a is None:
            raise _NoWay()
        a = self.squash(a, 2.0)
        return self.let(f"rd.exp({a.code})", a.dims, mag=math.exp(a.mag))

    def op_log(self):
        a = self.float_val()
        if a is None:
            raise _NoWay()
        if self.coin(0.5):
            c = self.pick([0.5, 1.0])
            return self.let(f"rd.log(rd.abs({a.code}) + {c})", a.dims, mag=max(0.7, math.log(a.mag + c)))
        return self.let(f"rd.log(rd.sigmoid({a.code}) + 0.5)", a.dims, mag=1.0)

    def op_arith(self):
        a = self.float_val()
        if a is None:
            raise _NoWay()
        subs = self.visible(lambda v: v.dtype == "float32" and v.dims <= a.dims and "B" in v.dims)
        b = self.pick(subs)
        op = self.pick(["+", "-", "*", "/"])
        if op == "/" and self.var_only and not self.here(b):  # rd.abs(b) + 1.0 would not change in the loop
            op = "+"
        if op == "*":
            a, b = self.squash(a), self.squash(b)
        first, second = (a, b) if self.coin(0.7) else (b, a)
        if op == "/":
            return self.let(f"{a.code} / (rd.abs({b.code}) + 1.0)", a.dims, mag=a.mag)
        mag = a.mag * b.mag if op == "*" else a.mag + b.mag
        return self.let(f"{first.code} {op} {second.code}", a.dims, mag=mag)

    def op_scalar(self):
        a = self.float_val()
        if a is None:
            raise _NoWay()
        c = self.pick([0.5, 2.0, -1.5, 0.25])
        form = self.pick(["{a} * {c}", "{c} * {a}", "{a} + {c}", "{c} - {a}", "{a} - {c}", "{c} / (rd.abs({a}) + 1.0)",
                          "-{a}"])
        return self.let(form.format(a=a.code, c=c), a.dims, mag=a.mag * 2 + 1.5)

    def op_where(self):
        a = self.float_val()
        if a is None:
            raise _NoWay()
        cond_dims = self.pick([d for d in [a.dims, frozenset({"B"})] if d <= a.dims])
        cond = self.make_bool(cond_dims)
        if self.coin(0.3):
            cond2 = self.make_bool(cond_dims)
            cond = self.let(f"{cond.code} {self.pick(['&', '|'])} {cond2.code}", cond_dims, "bool")
        others = self.visible(lambda v: v.dtype == "float32" and v.dims <= a.dims and "B" in v.dims)
        form = self.draw(st.integers(0, 2))
        if form == 0:
            b = self.pick(others)
            return self.let(f"rd.where({cond.code}, {a.code}, {b.code})", a.dims, mag=max(a.mag, b.mag))
        c = self.pick([0.0, -1.0, 0.5])
        if form == 1:
            return self.let(f"rd.where({cond.code}, {a.code}, {c})", a.dims, mag=max(a.mag, 1.0))
        return self.let(f"rd.where({cond.code}, {c}, {a.code})", a.dims, mag=max(a.mag, 1.0))

    def op_reduce(self):
        a = self.float_val(lambda v: len(v.dims) >= 2) if self.coin(0.8) else None
        if a is None:
            a = self.pick(self.main(lambda v: v.dtype == "int32" and len(v.dims) >= 2) or [None])
        if a is None:
            raise _NoWay()
        d = self.pick(sorted(a.dims - {"B"}))
        mode = self.pick(["sum", "max", "min", "mean"])
        n = self.size(d) or 5
        if a.dtype == "int32":
            if mode == "mean":
                mode = "max"
            lo, hi = (a.lo * n, a.hi * n) if mode == "sum" else (a.lo, a.hi)
            return self.let(f"rd.reduce_{mode}({a.code}, {self.dimcode(d)})", a.dims - {d}, "int32", lo=lo, hi=hi)
        return self.let(f"rd.reduce_{mode}({a.code}, {self.dimcode(d)})", a.dims - {d},
                        mag=a.mag * (n if mode == "sum" else 1))

    def op_softmax(self):
        a = self.float_val(lambda v: len(v.dims) >= 2)
        if a is None:
            raise _NoWay()
        d = self.pick(sorted(a.dims - {"B"}))
        fn = self.pick(["softmax", "log_softmax"])
        a = self.squash(a, 4.0)
        return self.let(f"rd.{fn}({a.code}, {self.dimcode(d)})", a.dims,
                        mag=1.0 if fn == "softmax" else 2 * a.mag + 2)

    def op_linear(self):
        a = self.float_val(lambda v: len(self.static_dims(v)) == 1)
        if a is None:
            raise _NoWay()
        return self.linear(a, self.pick(["H", "F", "H", "V"]))

    def op_split(self):
        a = self.float_val(lambda v: len(self.static_dims(v)) == 1)
        if a is None:
            raise _NoWay()
        name = self.fresh("lin")
        feat = self.static_dims(a)[0]
        self.decls.append(f"{name} = rd.Linear(hid * 2)")
        whole = self.let(f"{name}({self.squash(a, 2.0).code})", (a.dims - {feat}) | {"H2"}, mag=3.0)
        self.pools[-1].remove(whole)  # its dim hid * 2 is only split here
        p1, p2 = self.fresh(), self.fresh()
        self.emit(f"{p1}, {p2} = rd.split({whole.code}, 2)")
        dims = (a.dims - {feat}) | {"H"}
        self.add(Val(p1, dims, mag=3.0))
        return self.add(Val(p2, dims, mag=3.0))

    def op_concat(self):
        a = self.float_val(lambda v: len(self.static_dims(v)) == 1)
        if a is None:
            raise _NoWay()
        fa = self.static_dims(a)[0]
        rest = a.dims - {fa}
        bs = self.main(lambda v: v.dtype == "float32" and len(self.static_dims(v)) == 1
                          and v.dims - set(self.static_dims(v)) == rest)
        b = self.pick(bs)
        fb = self.static_dims(b)[0]
        sym = f"C{self.n + 1}"
        size = self.size(fa) + self.size(fb)
        if self.coin(0.5):
            code = self.fresh("cat")
            self.decls.append(f'{code} = rd.Dim("{code}", {size})')
            self.extra_dims[sym] = (code, size)
            v = self.let(f"rd.concat({a.code}, {b.code}, out_dim={code})", rest | {sym}, mag=max(a.mag, b.mag))
            if self.coin(0.5):
                return v
            return self.op_after_concat(v, sym)
        # without out_dim: a Linear back to a known dim right away
        out = self.pick(["H", "F"])
        name = self.fresh("lin")
        self.decls.append(f"{name} = rd.Linear({self.dimcode(out)})")
        a, b = self.squash(a, 2.0), self.squash(b, 2.0)
        return self.let(f"{name}(rd.concat({a.code}, {b.code}))", rest | {out},
                        mag=0.75 * math.sqrt(size) * max(a.mag, b.mag) + 1.5)

    def op_after_concat(self, v, sym):
        if self.coin(0.5):
            return self.let(f"rd.softmax({v.code}, {self.dimcode(sym)})", v.dims, mag=1.0)
        return self.let(f"rd.reduce_max({v.code}, {self.dimcode(sym)})", v.dims - {sym}, mag=v.mag)

    def op_cast(self):
        if self.coin(0.5):
            b = self.make_bool(self.pick([frozenset({"B"}), frozenset({"B", "H"}), frozenset({"B", "F"})]))
            return self.let(f"rd.cast({b.code}, \"float32\")", b.dims, mag=1.0)
        ints = self.main(lambda v: v.dtype == "int32")
        if not ints:
            raise _NoWay()
        v = self.pick(ints)
        mag = max(abs(v.lo), abs(v.hi), 1)
        if not v.dims:  # loop.index: keep the batch with something of the batch
            other = self.float_val(lambda w: w.dims == {"B"}) or self.make_float({"B"})
            return self.let(f"rd.cast({v.code}, \"float32\") * 0.5 + {self.squash(other).code}", {"B"},
                            mag=mag * 0.5 + 3)
        return self.let(f"rd.cast({v.code}, \"float32\") * 0.5", v.dims, mag=mag * 0.5)

    def op_int(self):
        """int32 arithmetic: a counter-like value."""
        ints = self.main(lambda v: v.dtype == "int32" and "B" in v.dims)
        if ints and self.coin(0.6):
            v = self.pick(ints)
            form = self.draw(st.integers(0, 3))
            if form == 0:
                b = self.make_bool(v.dims if self.coin(0.5) else frozenset({"B"}))
                return self.let(f"{v.code} + rd.cast({b.code}, \"int32\")", v.dims | b.dims, "int32", lo=v.lo,
                                hi=v.hi + 1)
            if form == 1:
                k = self.pick([1, 2, -1])
                return self.let(f"{v.code} + {k}", v.dims, "int32", lo=v.lo + min(k, 0), hi=v.hi + max(k, 0))
            if form == 2:
                return self.let(f"{v.code} * 2", v.dims, "int32", lo=2 * v.lo, hi=2 * v.hi)
            b = self.make_bool(v.dims)
            k = self.pick([0, 3])
            return self.let(f"rd.where({b.code}, {v.code}, {k})", v.dims, "int32", lo=min(v.lo, k),
                            hi=max(v.hi, k), label=v.label and 0 <= k <= 4)
        return self.int_label()

    def op_gather(self):
        form = self.draw(st.integers(0, 2))
        if form == 0:  # along a static dim by an int index (clipped to 0..size-1)
            a = self.float_val(lambda v: len(self.static_dims(v)) >= 1)
            if a is None:
                raise _NoWay()
            d = self.pick(self.static_dims(a))
            idx = self.visible(lambda v: v.dtype == "int32" and v.dims <= {"B"})
            i = self.pick(idx) if idx and self.coin(0.7) else self.int_label()
            return self.let(f"rd.gather({a.code}, {i.code}, {self.dimcode(d)})", (a.dims - {d}) | i.dims, mag=a.mag)
        if form == 1:  # along a dynamic dim (clipped to each sequence's frames)
            a = self.float_val(lambda v: bool(self.dyn_dims(v)))
            if a is None:
                raise _NoWay()
            dims = self.dyn_dims(a)
            if "gather_ragged_axis" in AVOIDED:  # (see REFUSED)
                dims = [d for d in dims if not self.ragged_in(d, a)]
            if not dims:
                raise _NoWay()
            d = self.pick(dims)
            idx = self.visible(lambda v: v.dtype == "int32" and v.dims <= {"B"})
            if not idx:
                raise _NoWay()
            i = self.pick(idx)
            return self.let(f"rd.gather({a.code}, {i.code}, {self.dimcode(d)})", (a.dims - {d}) | i.dims, mag=a.mag)
        # a label: gather a {batch, vocab} value at it (the dim from the label's sparse dim)
        labels = self.visible(lambda v: v.label)
        a = self.float_val(lambda v: v.dims == {"B", "V"})
        if not labels or a is None:
            raise _NoWay()
        lab = self.pick(labels)
        return self.let(f"rd.gather({a.code}, {lab.code})", {"B"}, mag=a.mag)

    def op_embed(self):
        lab = self.pick(self.main(lambda v: v.label))
        if self.embeddings and self.coin(0.5):
            name = self.pick(self.embeddings)
        else:
            name = self.fresh("emb")
            self.decls.append(f"{name} = rd.Embedding(vocab, hid)")
            self.embeddings.append(name)
        return self.let(f"{name}({lab.code})", lab.dims | {"H"}, mag=2.0)

    def op_lstm(self):
        lp = self.stack[-1]
        free = [n for n in self.lstms if n not in self.busy_modules()]
        if not free:
            raise _NoWay()
        name = self.pick(free)
        want = self.acc_inputs.get(name)  # a second call takes the same input dim (recdebug refuses another)
        a = self.float_val(lambda v: v.dims in ({"B", "F"}, {"B", "H"}) and (want is None or want in v.dims))
        if a is None:
            raise _NoWay()
        self.acc_inputs[name] = "F" if "F" in a.dims else "H"
        lp.used_modules.add(name)
        return self.let(f"{name}({self.squash(a, 2.0).code})", {"B", "H"}, mag=1.0)

    def op_acc(self):
        lp = self.stack[-1]
        free = [(n, d) for n, d in self.accs if n not in self.busy_modules()]
        if not free:
            raise _NoWay()
        name, d = self.pick(free)
        want = self.acc_inputs.get(name)  # a second call takes the same input dim (recdebug refuses another)
        a = self.float_val(lambda v: len(self.static_dims(v)) == 1 and v.dims - set(self.static_dims(v)) == {"B"}
                           and (want is None or list(self.static_dims(v))[0] == want))
        if a is None:
            raise _NoWay()
        self.acc_inputs[name] = list(self.static_dims(a))[0]
        lp.used_modules.add(name)
        return self.let(f"{name}({self.squash(a, 2.0).code})", {"B", d}, mag=1.0)

    def op_counter(self):
        lp = self.stack[-1]
        free = [n for n in self.counters if n not in self.busy_modules()]
        if not free:
            raise _NoWay()
        name = self.pick(free)
        cond = self.make_bool()
        lp.used_modules.add(name)
        return self.let(f"{name}({cond.code})", {"B"}, "int32", lo=0, hi=lp.max_steps + 1)

    def busy_modules(self):
        """Stateful modules already called in an open loop (a second call would assign their States twice)."""
        return set().union(*[lp.used_modules for lp in self.stack]) if self.stack else set()

    # --- States ---
    def new_state(self, kind=None, shared_ok=True):
        """Declare a State (top level) of a random kind; returns its StateInfo. ``shared_ok``: it may be one
        shared by the batch (no batch dim; for a top-level loop)."""
        kinds = ["hid", "hid", "feat", "scalar", "count", "label", "count_feat"]
        if self.tracing and "trace_sparse_state" in AVOIDED:
            kinds.remove("label")
        if shared_ok and "shared_state" in ENABLED:
            kinds += ["shared_count", "shared_float"]
        kind = kind or self.pick(kinds)
        name = self.fresh("s")
        if kind == "shared_count":
            init = self.pick([0, 1, 2])
            self.decls.append(f'{name} = rd.State(set(), initial={init}, dtype="int32")')
            info = StateInfo(name, set(), "int32", lo=init, hi=init)
            info.shared = True
        elif kind == "shared_float":
            dims = self.pick([set(), {"F"}])
            dcode = "{feat}" if dims else "set()"
            self.decls.append(f"{name} = rd.State({dcode}, initial={self.pick(['0', '0.5', '-1.0'])})")
            info = StateInfo(name, dims, "float32")
            info.shared = True
        elif kind in ("hid", "feat", "scalar"):
            dims = {"hid": {"B", "H"}, "feat": {"B", "F"}, "scalar": {"B"}}[kind]
            dcode = "{" + ", ".join(["batch"] + [self.dimcode(d) for d in sorted(dims - {"B"})]) + "}"
            init = self.pick(["0", "0.5", "-1.0", "tensor"]) if "H" in dims or dims == {"B"} else \
                self.pick(["0", "0.5", "-1.0"])
            if init == "tensor":
                ctx = self.input("ctx")
                if dims == {"B"} or self.coin(0.5):
                    init = self.top_value_B()  # broadcast to the State's dims
                else:
                    init = ctx.code
            self.decls.append(f"{name} = rd.State({dcode}, initial={init})")
            info = StateInfo(name, dims, "float32")
        elif kind in ("count", "count_feat"):
            dims = {"B"} if kind == "count" else {"B", "F"}
            dcode = "{batch}" if kind == "count" else "{batch, feat}"
            init = self.pick([0, 1, 2])
            self.decls.append(f'{name} = rd.State({dcode}, initial={init}, dtype="int32")')
            info = StateInfo(name, dims, "int32", lo=init, hi=init)
        else:
            init = self.pick([0, 1, 4])
            self.decls.append(f'{name} = rd.State({{batch}}, initial={init}, dtype="int32", sparse_dim=vocab)')
            info = StateInfo(name, {"B"}, "int32", label=True, lo=init, hi=init)
        self.states.append(info)
        return info

    def top_value_B(self):
        """A top-level float {batch} Tensor (for an initial value that broadcasts), declared now."""
        return self.top_value({"B"}).code

    def read_state(self, info):
        v = self.let(f"{info.name}.get()", info.dims, info.dtype, mag=info.mag, lo=info.lo, hi=info.hi,
                     label=info.label)
        return v

    def assign_state(self, info, prev):
        """Assign ``info`` once in the current loop, from the visible values (squashed: bounded)."""
        lp = self.stack[-1]
        if info.shared:  # one value for the batch: from shared values only
            base = prev.code if prev is not None else f"{info.name}.get()"
            if info.dtype == "int32":
                k = self.pick([1, 1, 2])
                new = self.let(f"{base} + {k}", info.dims, "int32", lo=info.lo, hi=info.hi + k * lp.max_steps)
            else:
                others = self.visible(lambda v: "B" not in v.dims and v.dims <= info.dims and v.dtype == "float32"
                                      and v.code != base)
                other = self.pick(others).code if others and self.coin(0.5) else self.pick(["0.25", "-0.5"])
                form = self.draw(st.integers(0, 1))
                expr = f"rd.tanh({base} + {other})" if form == 0 else f"{base} * 0.5 + rd.tanh({other} + 0.1)" \
                    if other[0].isalpha() else f"{base} * 0.5 + {other}"
                new = self.let(expr, info.dims, mag=2.0)
        elif info.dtype == "float32" and info.force_add is not None:
            base = prev if prev is not None else self.read_state(info)
            v = self.let(f"{base.code} + {info.force_add.code}", info.dims, mag=base.mag + info.force_add.mag)
            info.force_add = None
            new = self.let(f"rd.tanh({v.code})", info.dims, mag=1.0)
        elif info.dtype == "float32":
            v = self.make_float(info.dims)
            form = self.draw(st.integers(0, 2))
            if form == 0 or prev is None:
                expr = f"rd.tanh({v.code})"
            elif form == 1:
                expr = f"{prev.code} * 0.5 + rd.tanh({v.code})"
            else:
                expr = f"rd.sigmoid({v.code}) - {prev.code} * 0.25"
            new = self.let(expr, info.dims, mag=2.5)
        elif info.label:
            lab = self.int_label()
            if self.coin(0.3):
                lab = self.let(f"rd.where({self.make_bool().code}, {lab.code}, {self.pick([0, 2, 4])})", {"B"},
                               "int32", lo=0, hi=4)
            new = lab
        else:
            b = self.make_bool(info.dims if self.coin(0.5) else frozenset({"B"}))
            base = prev.code if prev is not None else f"{info.name}.get()"
            new = self.let(f"{base} + rd.cast({b.code}, \"int32\")", info.dims, "int32", lo=info.lo,
                           hi=info.hi + lp.max_steps)
        self.emit(f"{info.name}.assign({new.code})")
        lp.assigned.add(info.name)
        info.lo, info.hi = min(info.lo, new.lo), max(info.hi, new.hi)
        info.mag = max(info.mag, new.mag)
        if info.label:
            info.lo, info.hi = 0, 4
        return new

    # --- loops ---
    def open_loop(self, kind, axis_sym, min_len1, header):
        name = self.fresh("loop")
        lp = Lp(name, kind, self.stack[-1] if self.stack else None, axis_sym or f"A{self.n}", min_len1)
        self.emit(f"with {header} as {name}:")
        self.loops.append(lp)
        self.stack.append(lp)
        self.pools.append([])
        return lp

    def close_loop(self):
        lp = self.stack.pop()
        self.pools.pop()
        return lp

    def loop_body(self, lp, states, n_ops, inner=None):
        """Read the States, a few random ops, an optional inner loop, assign, stack and last."""
        prevs = {}
        for i, info in enumerate(states):
            if i == 0 or self.coin(0.85):
                prevs[info.name] = self.read_state(info)
        for _ in range(n_ops):
            self.random_op()
        if inner is not None:
            inner()
            for _ in range(self.draw(st.integers(0, 2))):
                self.random_op()
        for info in states:
            if info.assign_in is lp:
                new = self.assign_state(info, prevs.get(info.name))
                if self.coin(0.25):  # get() after assign: the new value
                    self.read_state(info)
        for _ in range(self.draw(st.integers(1, 2))):
            own = self.main(lambda v: "B" in v.dims and v.loop is lp)
            if not own and not self.var_only:
                own = self.visible(lambda v: "B" in v.dims)
            if own:
                self.stack_or_last(lp, self.pick(own))

    def stack_or_last(self, lp, v):
        inner_while = lp.parent is not None and lp.kind == "while"
        inner_axes = {lq.axis_sym for lq in self.loops if lq.parent is not None and lq.kind == "while"}
        use_stack = self.coin(0.7) and not (inner_while and self.tracing and "trace_inner_while_stack" in AVOIDED)
        if "last_inner_stack" in AVOIDED and v.dims & inner_axes:
            use_stack = True  # (see REFUSED)
        if lp.axis_sym in v.dims:  # (a value with the loop's own axis: refused, it would have that axis twice)
            if use_stack and v.dims & inner_axes:
                return
            use_stack = False
        if use_stack:
            name = self.fresh("out")
            self.emit(f"{name} = {lp.name}.stack({v.code})")
            out = Val(name, v.dims | {lp.axis_sym}, v.dtype, v.mag, v.lo, v.hi)
        else:
            name = self.fresh("last")
            self.emit(f"{name} = {lp.name}.last({v.code})")
            out = Val(name, v.dims, v.dtype, v.mag, v.lo, v.hi, label=v.label and lp.min_len1)
        out.loop = lp.parent
        out.min_len1 = lp.min_len1
        lp.results.append(out)

    def flush_decls(self, at):
        """Insert the declarations made while writing a block before its first line (index ``at``)."""
        ind = "    " * (len(self.stack) + 1)
        self.lines[at:at] = [ind + d for d in self.decls]
        self.decls = []


class StateInfo:
    def __init__(self, name, dims, dtype, label=False, lo=0, hi=0):
        self.name, self.dims, self.dtype, self.label = name, frozenset(dims), dtype, label
        self.lo, self.hi, self.mag = lo, hi, 1.5
        self.shared = False  # no batch dim: one value for every sequence
        self.assign_in = None
        self.force_add = None  # a value the next assign must add


class _NoWay(Exception):
    """The drawn op cannot be built from the visible values."""


# --- blocks: one top-level loop (or loops) each ---

def _frame_source(gen, lp, kind):
    """The per-step input of a loop: unstack (dynamic or static dim) or gather by loop.index."""
    if kind == "unstack":
        x = gen.input(gen.pick(["x", "x", "xt"]))
        gen.let(f"{lp.name}.unstack({x.code})", {"B", "F"}, mag=3.0)
        if gen.coin(0.3):
            lab = gen.input("lab")
            gen.let(f"{lp.name}.unstack({lab.code})", {"B"}, "int32", lo=0, hi=4, label=True)
    elif kind == "static":
        xs = gen.input("xs")
        gen.let(f"{lp.name}.unstack({xs.code}, axis=win)", {"B", "H"}, mag=3.0)
    elif kind == "while" and gen.coin(0.5):
        x = gen.input("x")
        gen.let(f"rd.gather({x.code}, {lp.name}.index, time)", {"B", "F"}, mag=3.0)
    if gen.coin(0.4):
        gen.let(f"{lp.name}.index", (), "int32", lo=0, hi=lp.max_steps - 1)


def _end_cond(gen, lp):
    """loop.end(...): on the step counter against an input, a counter, or a float value."""
    form = gen.draw(st.integers(0, 4))
    idx = f"{lp.name}.index"
    counters = gen.visible(lambda v: v.dtype == "int32" and not v.dims and v.loop is lp and ".get()" in
                           gen.lines_of(v))  # a shared counter read in this step: every sequence ends at once
    if form == 4 and not counters:
        form = 1
    if form == 4:
        c = gen.pick(counters)
        cond = f"{c.code} >= {gen.draw(st.integers(c.lo + 1, max(c.lo + 1, c.lo + lp.max_steps)))}"
    elif form == 0:
        stop = gen.input("stop")
        cond = f"{idx} >= {stop.code}"
    elif form == 1:
        cond = f"{idx} >= {gen.draw(st.integers(1 if 'all_empty' in AVOIDED else 0, lp.max_steps))}"
    elif form == 2:
        cond = gen.make_bool(allow_scalar=True).code
    else:
        b = gen.make_bool()
        stop = gen.input("stop")
        cond = f"({idx} >= {stop.code}) | {b.code}"
    eos = gen.coin(0.5)
    if form >= 2 and "all_empty" in AVOIDED:
        cond = f"({cond}) & ({idx} >= 1)"  # rarely ends every sequence at step 0
    how = gen.draw(st.integers(0, 2))
    if how == 0:
        gen.emit(f"{lp.name}.end({cond}, include_eos={eos})")
    elif how == 1:
        gen.emit(f"{lp.name}.set_include_eos({eos})")
        gen.emit(f"{lp.name}.end({cond})")
    else:
        gen.emit(f"{lp.name}.end({cond})")
        eos = None  # given to the constructor
    return eos


def write_loop(gen, kind, states, nested=False, n_ops=None):
    """One loop (kind: unstack, static, while, unstack_end, bounded) with its body; returns the Lp."""
    max_steps = gen.draw(st.integers(1, 4))
    eos_ctor = gen.coin(0.5)
    if kind in ("unstack", "static"):
        header = "rd.Loop()"
    elif kind == "unstack_end":
        header = "rd.Loop()" if gen.coin(0.5) else f"rd.Loop(include_eos={eos_ctor})"
    elif kind == "bounded":
        bound = gen.input("bound")
        header = f"rd.Loop(max_seq_len={bound.code}, include_eos={eos_ctor})"
    else:
        header = f"rd.Loop(max_seq_len={max_steps}, include_eos={eos_ctor})"
    axis = {"unstack": "T", "static": "W"}.get(kind)
    lp = gen.open_loop(kind, axis, min_len1=kind in ("unstack", "static"), header=header)
    lp.results = []
    lp.max_steps = {"unstack": 5, "static": 3, "bounded": 5, "unstack_end": 5}.get(kind, max_steps)
    _frame_source(gen, lp, "unstack" if kind in ("unstack", "unstack_end") else kind)
    for info in states:
        if info.assign_in is None:
            info.assign_in = lp
    inner = None
    if nested:
        def inner():
            # the first inner State is a float one: it takes a value of the outer step (the inner loop then
            # depends on the outer loop's step, see KNOWN_BUGS "inner_invariant")
            inner_states = [gen.new_state(gen.pick(["hid", "feat", "scalar"]))]
            inner_states += [gen.new_state(shared_ok=False) for _ in range(gen.draw(st.integers(0, 1)))]
            ilp = write_inner_loop(gen, inner_states)
            # the outer loop uses what the inner one left: its results and States' final values
            for r in ilp.results:
                if ilp.min_len1:  # a last of a loop that ran no step is undefined
                    gen.add(r)
            for info in inner_states:
                if gen.coin(0.6):
                    gen.read_state(info)
            if gen.coin(0.3):  # the outer loop owns an inner State too: carried over outer steps
                info = gen.pick(inner_states)
                if info.dtype == "float32":
                    gen.emit(f"{info.name}.assign({info.name}.get() * 0.5)")
                else:
                    gen.emit(f"{info.name}.assign({info.name}.get())")
    gen.loop_body(lp, states, n_ops if n_ops is not None else gen.draw(st.integers(1, 3)), inner)
    eos = None
    if kind in ("while", "unstack_end", "bounded") or (kind == "while"):
        eos = _end_cond(gen, lp)
    if kind in ("while", "bounded", "unstack_end"):
        lp.min_len1 = (eos is True) or (eos is None and eos_ctor and "include_eos=True" in header)
    gen.close_loop()
    for r in lp.results:
        r.min_len1 = lp.min_len1
        if "last" in r.code and not lp.min_len1:
            r.label = False
    return lp


def write_inner_loop(gen, states):
    """An inner loop: a while loop, or an unstack over enc_t of the encoder input."""
    outer_unstacks = gen.stack[-1].kind in ("unstack", "static", "unstack_end")
    kinds = ["while", "unstack_enc"] + (["window"] if "window_loop" in ENABLED else [])
    kind = "while" if outer_unstacks and "nested_unstack" in AVOIDED else gen.pick(kinds)
    max_steps = gen.draw(st.integers(1, 3))
    if "inner_invariant" in AVOIDED:  # a value of the outer step, for the inner loop to depend on
        gen.force_var = True
        try:
            states[0].force_add = gen.make_float({"B"})
        finally:
            gen.force_var = False
    if kind == "while":
        header = f"rd.Loop(max_seq_len={max_steps}, include_eos={gen.coin(0.5)})"
        lp = gen.open_loop("while", None, False, header)
        lp.max_steps = max_steps
        if gen.coin(0.4):
            gen.let(f"{lp.name}.index", (), "int32", lo=0, hi=max_steps - 1)
    elif kind == "window":  # over a static dim inside the loop: every sequence takes its 3 steps
        lp = gen.open_loop("static", "W", True, "rd.Loop()")
        xs = gen.input("xs")
        gen.let(f"{lp.name}.unstack({xs.code}, axis=win)", {"B", "H"}, mag=3.0)
        lp.max_steps = 3
    else:
        lp = gen.open_loop("unstack", "E", True, "rd.Loop()")
        enc = gen.input("enc")
        gen.let(f"{lp.name}.unstack({enc.code})", {"B", "H"}, mag=3.0)
        lp.max_steps = 3
    lp.results = []
    for info in states:
        info.assign_in = lp
    # the inner loop's own modules: an Acc sometimes
    gen.loop_body(lp, states, gen.draw(st.integers(1, 3)))
    if kind == "while":
        idx = f"{lp.name}.index"
        form = gen.draw(st.integers(0, 1))
        first = 1 if "all_empty" in AVOIDED else 0
        cond = f"{idx} >= {gen.draw(st.integers(first, max_steps))}" if form == 0 else \
            gen.make_bool(allow_scalar=True).code
        if form == 1 and first:  # rarely ends every sequence at step 0 (KNOWN_BUGS all_empty)
            cond = f"({cond}) & ({idx} >= 1)"
        gen.emit(f"{lp.name}.end({cond})")
        lp.min_len1 = "include_eos=True" in lp_header(gen, lp)
    gen.close_loop()
    for r in lp.results:
        r.loop = lp.parent
        if "last" in r.code and not lp.min_len1:
            r.label = False
    return lp


def lp_header(gen, lp):
    return next(line for line in gen.lines if line.strip().endswith(f"as {lp.name}:"))


def top_ops(gen, results):
    """Top-level ops on a loop's results: a reduce or softmax over the loop's axis, a where, arithmetic."""
    for r in results:
        if r.dtype != "float32" or not gen.coin(0.4):
            continue
        dyn = [d for d in r.dims if d != "B" and not gen.is_static(d)]
        if not dyn or not getattr(r, "min_len1", False):
            continue
        d = gen.pick(dyn)
        form = gen.draw(st.integers(0, 2))
        if form == 0:
            gen.let(f"rd.reduce_{gen.pick(['sum', 'max', 'mean', 'min'])}({r.code}, {gen.dimcode(d)})", r.dims - {d},
                    mag=r.mag * 5)
        elif form == 1:
            gen.let(f"rd.softmax({gen.squash(r, 4.0).code}, {gen.dimcode(d)})", r.dims, mag=1.0)
        else:
            gen.let(f"rd.where({r.code} > 0.1, {r.code}, -{r.code})", r.dims, mag=r.mag)


def write_block(gen, kinds_allowed):
    """A block: one loop, a nested pair, or sequential loops that share States."""
    at = len(gen.lines)
    shape = gen.pick(["single", "single", "nested", "sequential"])
    kind = gen.pick(kinds_allowed)
    if shape == "single":
        states = [gen.new_state() for _ in range(gen.draw(st.integers(1, 2)))]
        add_modules(gen)
        lp = write_loop(gen, kind, states)
        results = lp.results
    elif shape == "nested":
        states = [gen.new_state() for _ in range(gen.draw(st.integers(1, 2)))]
        kind = "unstack" if kind == "static" else kind  # static unstack is for top-level loops only
        lp = write_loop(gen, kind, states, nested=True, n_ops=gen.draw(st.integers(0, 2)))
        results = lp.results
    else:
        states = [gen.new_state() for _ in range(gen.draw(st.integers(1, 2)))]
        add_modules(gen)
        lp1 = write_loop(gen, kind, states, n_ops=gen.draw(st.integers(1, 3)))
        for r in lp1.results:
            if lp1.min_len1:
                gen.add(r)
        for info in states:
            info.assign_in = None
        if gen.coin(0.3):  # the top level assigns a State between the loops
            info = gen.pick([s for s in states if s.dtype == "float32"] or states)
            if info.dtype == "float32":
                gen.emit(f"{info.name}.assign({info.name}.get() * 0.5 + 0.25)")
            elif not info.label:
                gen.emit(f"{info.name}.assign({info.name}.get() + 1)")
                info.hi += 1
        kind2 = gen.pick([k for k in kinds_allowed if k != "static"] or ["unstack"])
        lp2 = write_loop(gen, kind2, states, n_ops=gen.draw(st.integers(1, 3)))
        results = lp1.results + lp2.results
    for r in results:
        if r not in gen.pools[0] and getattr(r, "min_len1", False):
            gen.add(r)
    # the final values of the States after the loops
    for info in states:
        if gen.coin(0.5):
            gen.read_state(info)
    top_ops(gen, results)
    gen.flush_decls(at)


def add_modules(gen):
    """Stateful modules for the next loop: an rd.LSTM, an Acc (own State and Linear), a Counter."""
    if gen.coin(0.25):
        name = gen.fresh("lstm")
        gen.decls.append(f"{name} = rd.LSTM(hid)")
        gen.lstms.append(name)
    if gen.coin(0.2):
        gen.classes.add("Acc")
        name = gen.fresh("acc")
        d = gen.pick(["H", "F"])
        gen.decls.append(f"{name} = Acc({gen.dimcode(d)}, {gen.pick(['0.0', '0.5'])})")
        gen.accs.append((name, d))
    if gen.coin(0.2):
        gen.classes.add("Counter")
        name = gen.fresh("counter")
        gen.decls.append(f"{name} = Counter()")
        gen.counters.append(name)


def write_decoder(gen):
    """A greedy decoder (rd.choice with beam_size=1, run with search=True), the design text's."""
    at = len(gen.lines)
    max_steps = gen.draw(st.integers(1, 5))
    over_frames = gen.coin(0.3)
    lab = gen.new_state("label")
    lab.lo = lab.hi = 0
    gen.decls[-1] = f'{lab.name} = rd.State({{batch}}, initial={gen.pick([0, 1, 3])}, dtype="int32", sparse_dim=vocab)'
    h = gen.new_state("hid")
    emb = gen.fresh("emb")
    gen.decls.append(f"{emb} = rd.Embedding(vocab, hid)")
    lin_out = gen.fresh("lin")
    gen.decls.append(f"{lin_out} = rd.Linear(vocab)")
    eos = gen.coin(0.5)
    header = "rd.Loop()" if over_frames else f"rd.Loop(max_seq_len={max_steps})"
    lp = gen.open_loop("unstack" if over_frames else "while", "T" if over_frames else None, over_frames or eos,
                       header)
    lp.results = []
    lp.max_steps = 5 if over_frames else max_steps
    if over_frames:
        _frame_source(gen, lp, "unstack")
    e = gen.let(f"{emb}({lab.name}.get())", {"B", "H"}, mag=2.0)
    hp = gen.read_state(h)
    counter = gen.new_state("shared_count") if "shared_state" in ENABLED and gen.coin(0.3) else None
    if counter is not None:  # one step counter for every hypothesis, read by the hidden State
        n = gen.read_state(counter)
        hp = gen.let(f"{hp.code} + rd.cast({n.code}, \"float32\") * 0.1", {"B", "H"}, mag=hp.mag + 0.6)
    lin = gen.fresh("lin")
    gen.decls.append(f"{lin} = rd.Linear(hid)")
    frame = [v for v in gen.pools[-1] if v.dims == {"B", "F"}]
    # the hidden State reads the label (mostly) or not: then it is the same for every hypothesis, while its
    # length (and with it its final value) is each hypothesis' own
    parts = ([e.code] if gen.coin(0.7) else []) + [hp.code] + [f.code for f in frame[:1]]
    joined = f"rd.concat({', '.join(parts)})" if len(parts) > 1 else parts[0]
    h_new = gen.let(f"rd.tanh({lin}({joined}))", {"B", "H"}, mag=1.0)
    gen.emit(f"{h.name}.assign({h_new.code})")
    for _ in range(gen.draw(st.integers(0, 2))):
        gen.random_op()
    src = gen.float_val(lambda v: v.dims == {"B", "H"} and v.loop is lp) or h_new
    logits = gen.let(f"{lin_out}({gen.squash(src, 2.0).code}) * 2.0", {"B", "V"}, mag=5.0)
    input_type = gen.pick(["logits", "log_prob", "prob"])
    if input_type == "log_prob":
        logits = gen.let(f"rd.log_softmax({logits.code})", {"B", "V"}, mag=10.0)
    elif input_type == "prob":
        logits = gen.let(f"rd.softmax({logits.code})", {"B", "V"}, mag=1.0)
    y = gen.fresh("y")
    gen.emit(f"{y} = rd.choice({logits.code}, beam_size=1, input_type=\"{input_type}\")")
    gen.emit(f"{lab.name}.assign({y})")
    if counter is not None:
        gen.emit(f"{counter.name}.assign({counter.name}.get() + 1)")
    if not over_frames:
        cond = f"{y} == 0"
        if not eos and "all_empty" in AVOIDED:  # rarely ends every sequence at step 0
            cond = f"({cond}) & ({lp.name}.index >= 1)"
        gen.emit(f"{lp.name}.end({cond}, include_eos={eos})")
    yv = gen.add(Val(y, {"B"}, "int32", lo=0, hi=4, label=True))
    gen.stack_or_last(lp, yv)
    gen.stack_or_last(lp, h_new)
    for _ in range(gen.draw(st.integers(0, 1))):
        gen.stack_or_last(lp, gen.pick(gen.visible(lambda v: "B" in v.dims and v.loop is lp)))
    gen.close_loop()
    if gen.coin(0.5):
        gen.read_state(h)
    gen.flush_decls(at)


def write_program(data, search=False, tracing=True):
    """A random program (source text) and its generator; ``tracing``: it will be traced (see KNOWN_BUGS)."""
    gen = Gen(data, search=search, tracing=tracing)
    kinds = ["unstack", "unstack", "while", "while"]
    if "static_unstack" in ENABLED:
        kinds.append("static")
    if "unstack_end" in ENABLED and not (tracing and "trace_unstack_end" in AVOIDED):
        kinds.append("unstack_end")
    if "tensor_max_seq_len" in ENABLED and not (tracing and "trace_tensor_bound" in AVOIDED):
        kinds.append("bounded")
    gen.pools[0].append(gen.input("ctx"))  # a float {batch, hid} is always at hand
    if gen.coin(0.4):
        gen.pools[0].append(gen.input("enc"))  # attention memory over a dynamic dim
    n_blocks = 2 if gen.coin(0.2) else 1
    for i in range(n_blocks):
        if search and i == n_blocks - 1:
            write_decoder(gen)
        else:
            write_block(gen, kinds)
    head = [HEADER.rstrip("\n")]
    head += [MODULES[c].rstrip("\n") for c in sorted(gen.classes)]
    head.append("with rd.Graph() as g:")
    head += ["    " + f"{name} = {INPUTS[name][0]}" for name in INPUTS if name in gen.inputs]
    return "\n".join(head + gen.lines) + "\n", gen


# --- data ---

@st.composite
def batches(draw):
    """Batch size, per-sequence lengths of time and enc_t (1 included), and a seed for the values."""
    b = draw(st.integers(1, 4))
    t_lens = draw(st.lists(st.integers(1, 4), min_size=b, max_size=b))
    e_lens = draw(st.lists(st.integers(1, 3), min_size=b, max_size=b))
    return b, np.array(t_lens, np.int32), np.array(e_lens, np.int32), draw(st.integers(0, 2**31 - 1))


def make_inputs(g, b, t_lens, e_lens, rng, known_bugs=None):
    """Inputs in each Input's own axis order, with GARBAGE (large values) in the padding frames."""
    sizes = {"B": b, "T": int(t_lens.max()), "E": int(e_lens.max()), "F": 3, "H": 4, "W": 3}
    lens = {"T": t_lens, "E": e_lens}
    known_bugs = AVOIDED if known_bugs is None else known_bugs
    out = {}
    for name in g.inputs:
        _, dims, dtype = INPUTS[name]
        canon = ("B",) + tuple(d for d in dims if d != "B")
        shape = [sizes[d] for d in canon]
        if dtype == "float32":
            arr = rng.standard_normal(shape)
            garbage = rng.choice([-1, 1], shape) * rng.uniform(1e3, 1e4, shape)
        elif name == "lab":  # garbage labels: out of range, unless that is a known bug (then other labels)
            arr = rng.integers(0, 5, shape)
            garbage = rng.integers(0, 5, shape) if "label_padding" in known_bugs else rng.integers(-1000, 1000, shape)
        elif name == "stop":
            arr, garbage = rng.integers(0, 5, shape), None
            if "all_empty" in known_bugs and not arr.any():  # some sequence runs a step
                arr[rng.integers(0, b)] = rng.integers(1, 5)
        else:  # bound: a per-sequence max_seq_len
            arr, garbage = rng.integers(1, 5, shape), None
        for i, d in enumerate(canon):
            if d in lens and garbage is not None:
                for bb in range(b):
                    sl = [bb] + [slice(None)] * (len(canon) - 1)
                    sl[i] = slice(int(lens[d][bb]), None)
                    arr[tuple(sl)] = garbage[tuple(sl)]
        arr = arr.astype(np.float32 if dtype == "float32" else np.int32)
        out[name] = arr.transpose([canon.index(d) for d in dims])
    return out


def make_params(g, rng):
    return {k: (rng.standard_normal(s) * 0.5).astype(np.float32) for k, s in param_shapes(g).items()}


# --- the patterns of KNOWN_BUGS, found in a built graph ---

def _variant_ops(loop) -> set:
    """The ops of ``loop`` (and of its inner loops) whose value changes from step to step of ``loop``: they depend on
    its frames, its index, its rd.choice, or a State it assigns."""
    own = set()
    inner_ops = {op for child in loop.children for op in _all_ops(child)}

    def dep(t):
        return t.op in own

    changed = True
    while changed:
        changed = False
        for op in list(loop.ops) + sorted(inner_ops, key=id):
            if op in own:
                continue
            k = op.kind
            if op.scope is loop:
                if k in ("unstack", "index", "choice"):
                    v = True
                elif k == "state_entry":
                    v = op.attrs["state"] in loop.assigned
                elif k in ("stack", "last", "state_final"):
                    v = op.attrs["loop"] in _dependent_children(loop, own)
                else:
                    v = any(dep(t) for t in op.inputs)
            else:  # in an inner loop: depends on a value of this loop's step
                v = any(dep(t) for t in op.inputs)
            if v:
                own.add(op)
                changed = True
    return own


def _all_ops(loop):
    out = list(loop.ops)
    for child in loop.children:
        out += _all_ops(child)
    return out


def _dependent_children(loop, own):
    """Inner loops that depend on a step value of ``loop`` (inputs, initial values or bounds)."""
    out = set()
    for child in loop.children:
        uses = [t for op in _all_ops(child) for t in op.inputs] + list(child.init.values()) \
            + list(child.entry_source.values()) + [u.op.inputs[0] for u in child.unstacked]
        if isinstance(child.max_seq_len, rd.Tensor):
            uses.append(child.max_seq_len)
        if any(t.op in own for t in uses):
            out.add(child)
    return out


def known_bug_patterns(g) -> set:
    """The KNOWN_BUGS names whose triggering pattern the graph contains (besides all_empty, a matter of data)."""
    found = set()
    for loop in g.loops:
        variant = _variant_ops(loop)
        # (a State's value read from the enclosing scope is fine: an inner loop's States start from it)
        if any(op not in variant and op.kind not in ("state_entry", "sparse") for op in loop.ops):
            found.add("trace_invariant")
        if set(loop.children) - _dependent_children(loop, variant):
            found.add("inner_invariant")
        for op in loop.ops:
            if op.kind == "stack" and not op.attrs["loop"].unstacked:
                found.add("trace_inner_while_stack")
        if loop.parent.is_loop and loop.unstacked and loop.parent.unstacked:
            found.add("nested_unstack")
        if isinstance(loop.max_seq_len, rd.Tensor):
            found.add("trace_tensor_bound")
        used = {t.op for op in loop.ops for t in op.inputs}
        if loop.end_cond is not None and any(u.op not in used for u in loop.unstacked):
            found.add("trace_unstack_end")
        if len(loop.assigned) >= 2 and any(st_.sparse_dim is not None and v.op.kind == "sparse"
                                           for st_, v in loop.assigned.items()):
            found.add("trace_sparse_state")
    for op in g.ops:
        if op.kind == "gather":
            lp = next((lq for lq in g.loops if lq.axis is op.attrs["dim"] and lq.parent.is_loop
                       and (lq.bounded or not lq.unstacked)), None)
            if lp is not None and any(s.is_loop and s.axis in op.inputs[0].dims for s in lp.parent.ancestors()):
                found.add("gather_ragged_axis")
    axes = {lp.axis for lp in g.loops if lp.parent.is_loop and (lp.bounded or not lp.unstacked)}
    if any(op.kind == "last" and op.attrs["value"].dims & axes for op in g.ops):
        found.add("last_inner_stack")
    if any(inp.sparse_dim is not None and inp.dtype == "int32" and any(d.is_dynamic for d in inp.dims)
           for inp in g.inputs.values()):
        found.add("label_padding")  # (the generator keeps such garbage in range, see make_inputs)
    return found


def params_needed(g, loop) -> set:
    """The parameter ops that stepping ``loop`` (a top-level loop) needs: those of its own ops, and those of the
    values it reads (through other loops only what those values depend on)."""
    seen, params, done_loops = set(), set(), set()

    def loop_control(lp):  # what decides a loop's steps
        if lp in done_loops:
            return []
        done_loops.add(lp)
        out = [u.op.inputs[0] for u in lp.unstacked] + ([lp.end_cond] if lp.end_cond is not None else [])
        return out + ([lp.max_seq_len] if isinstance(lp.max_seq_len, rd.Tensor) else [])

    todo = [op.out for op in _all_ops(loop)]
    for lp in [loop] + [c for c in g.loops if loop.contains(c)]:
        todo += loop_control(lp) + list(lp.init.values()) + list(lp.entry_source.values())
    while todo:
        op = todo.pop().op
        if op in seen:
            continue
        seen.add(op)
        if op.kind == "param":
            params.add(op)
        todo.extend(op.inputs)
        a = op.attrs
        if op.kind == "state_entry":
            state, scope = a["state"], op.scope
            if scope.is_loop and state in scope.assigned:
                todo += [scope.assigned[state], scope.init[state]]
            elif scope.is_loop:
                todo.append(scope.entry_source[state])
            elif isinstance(state.initial, rd.Tensor):
                todo.append(state.initial)
        if op.kind in ("stack", "last"):
            todo += [a["value"]] + loop_control(a["loop"])
        if op.kind == "state_final":
            todo += [a["loop"].assigned[a["state"]], a["loop"].init[a["state"]]] + loop_control(a["loop"])
    return params


# --- comparing ---

class Mismatch(AssertionError):
    pass


def compare(what, got, ref, mask, dtype):
    got, ref, mask = np.asarray(got), np.asarray(ref), np.asarray(mask, bool)
    if got.shape != ref.shape:
        # padding lengths may differ (a longer padded axis): compare the common part, all valid must be inside
        if got.ndim != ref.ndim:
            raise Mismatch(f"{what}: shape {got.shape}, expected {ref.shape}")
        common = tuple(slice(0, min(a, b)) for a, b in zip(got.shape, ref.shape))
        outside = mask.copy()
        outside[common] = False
        if outside.any():
            raise Mismatch(f"{what}: shape {got.shape} lacks valid frames of the expected {ref.shape}")
        got, ref, mask = got[common], ref[common], mask[common]
    if dtype == "float32":
        g64, r64 = got.astype(np.float64), ref.astype(np.float64)
        bad = mask & ~(np.abs(g64 - r64) <= ATOL + RTOL * np.abs(r64))
    else:
        bad = mask & (got.astype(np.int64) != ref.astype(np.int64))
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise Mismatch(f"{what}: {int(bad.sum())} of {int(mask.sum())} valid entries differ; first at {idx}: "
                       f"got {got[idx]!r}, expected {ref[idx]!r}\n got:\n{np.where(mask, got, 0)}\n"
                       f" expected:\n{np.where(mask, ref, 0)}")


def canonical(dims):
    return tuple(sorted(dims, key=lambda d: d.order))


def named_values(ns, g):
    """The program's named Tensors (not Inputs) and States, by name."""
    tensors, states = {}, {}
    for k, v in ns.items():
        if isinstance(v, rd.State):
            states[k] = v
        elif isinstance(v, rd.Tensor) and not isinstance(v, rd.Input) and v.graph is g:
            tensors[k] = v
    return tensors, states


def check_program(source, data, optimize=True, checks=("run", "trace", "stepper"), search=False,
                  known_bugs=None):
    """Build the program, interpret it, and compare ``checks`` (g.run, g.trace with ``optimize``, g.stepper) with
    the interpreter. ``data``: (batch size, time lengths, enc_t lengths, seed of the values)."""
    filename = f"<generated-{abs(hash(source)) % 10**8}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    ns = {"rd": rd, "np": np}
    exec(compile(source, filename, "exec"), ns)
    g = ns["g"]
    patterns = known_bug_patterns(g) & (AVOIDED if known_bugs is None else known_bugs) - {"label_padding"}
    if "trace" not in checks:
        patterns -= {"trace_invariant", "trace_inner_while_stack", "trace_sparse_state",
                     "trace_tensor_bound", "trace_unstack_end"}
    if patterns:
        raise AssertionError(f"generator error: the program has the pattern of KNOWN_BUGS {sorted(patterns)}")
    b, t_lens, e_lens, data_seed = data
    t_lens, e_lens = np.asarray(t_lens, np.int32), np.asarray(e_lens, np.int32)
    rng = np.random.default_rng(data_seed)
    inputs = make_inputs(g, b, t_lens, e_lens, rng, known_bugs)
    params = make_params(g, rng)
    dims_by_name = {"time": ns["time"], "enc_t": ns["enc_t"]}
    seq_lens = {dims_by_name["time"]: t_lens, dims_by_name["enc_t"]: e_lens}
    seq_lens = {d: n for d, n in seq_lens.items() if any(d in inp.dims for inp in g.inputs.values())}
    try:
        ref = interpret(g, inputs, seq_lens, params, search=search)
        tensors, states = named_values(ns, g)
        top = {k: v for k, v in tensors.items() if v.scope is g.top}
        expected = {k: ref.value_and_mask(v, canonical(v.dims)) for k, v in top.items()}
        in_loop = {k: v for k, v in tensors.items() if v.scope is not g.top}
        states = {s.path(g): s for s in g.states}
        expected_steps = {}
        if "trace" in checks:
            for k, v in in_loop.items():
                chain = [s for s in v.scope.ancestors() if s.is_loop]
                expected_steps[k] = ref.steps_and_mask(v, canonical(v.dims | {lp.axis for lp in chain}))
            for k, s in states.items():
                if any(s in lp.assigned for lp in g.loops):
                    lp = ref.state_loop(s)
                    axes = {a.axis for a in lp.ancestors() if a.is_loop}
                    expected_steps["State " + k] = ref.steps_and_mask(s, canonical(s.dims | axes))
        loop_lens = {lp: ref.lens(lp.axis) for lp in g.top.children}
        if "all_empty" in (AVOIDED if known_bugs is None else known_bugs) and _a_loop_runs_no_step(g, ref):
            raise IllConditioned("a while loop in which every sequence ends at step 0 (KNOWN_BUGS all_empty)")
    except IllConditioned as e:
        note(f"rejected: {e}")
        g.close()
        STATS["rejected"] += 1
        reject()
    try:
        if "run" in checks:  # every top-level value and every top-level loop's lengths
            res = g.run(inputs, seq_lens=seq_lens, params=params, optimize=optimize, search=search)
            for k, v in top.items():
                compare(f"run(optimize={optimize}) {k}", res.numpy(v, canonical(v.dims)), *expected[k], v.dtype)
            for lp, n in loop_lens.items():
                try:
                    got = res.lens(lp.axis)
                except rd.RunError:
                    if search and any(op.kind == "choice" for op in lp.ops):
                        continue  # a searched loop without a stacked value: its lengths are not fetched
                    raise
                compare(f"run(optimize={optimize}) lengths of {lp.name}", got, n, np.ones(n.shape, bool), "int32")
        if "trace" in checks:  # top-level values too, and every step of in-loop values and States
            # (with search: every hypothesis of every step, here the one of beam size 1)
            tr = g.trace(inputs, seq_lens=seq_lens, params=params, optimize=optimize, search=search)
            for k, v in top.items():
                compare(f"trace(optimize={optimize}) {k}", tr.numpy(v, canonical(v.dims)), *expected[k], v.dtype)
            for k, v in in_loop.items():
                chain = [s for s in v.scope.ancestors() if s.is_loop]
                compare(f"trace(optimize={optimize}) steps of {k}",
                        traced_steps(tr, v, canonical(v.dims | {lp.axis for lp in chain})), *expected_steps[k],
                        v.dtype)
            for k, s in states.items():
                if "State " + k in expected_steps:
                    lp = ref.state_loop(s)
                    axes = {a.axis for a in lp.ancestors() if a.is_loop}
                    compare(f"trace(optimize={optimize}) State {k}", traced_steps(tr, s, canonical(s.dims | axes)),
                            *expected_steps["State " + k], s.dtype)
        if "stepper" in checks and g.top.children:
            check_stepper(g, ref, inputs, seq_lens, params, states, in_loop, search, known_bugs)
    finally:
        g.close()


def traced_steps(tr, x, order):
    """The recorded steps of ``x`` with axes ``order``; a search trace's beam axis (beam size 1) dropped."""
    labels = [tr.label(d) for d in order]
    extra = [lab for lab in tr.entries[tr.key(x)].dims if lab not in labels]  # the beam of a search
    arr = tr.numpy(x, labels + extra)
    if any(n != 1 for n in arr.shape[len(labels):]):
        raise Mismatch(f"{tr.key(x)} has axes {extra} besides {labels}, shape {arr.shape}")
    return arr.reshape(arr.shape[:len(labels)])


def _a_loop_runs_no_step(g, ref):
    """Whether some loop (at some step of its outer loop) runs no step for any sequence."""
    for lp in g.loops:
        if lp.end_cond is None:
            continue
        lens = ref.lens(lp.axis)
        if lp.parent is g.top:
            if (lens == 0).all():
                return True
            continue
        outer = ref.lens(lp.parent.axis)
        if outer.ndim != 1:  # deeper nesting is not generated
            continue
        for t in range(lens.shape[1] if lens.ndim == 2 else 0):
            active = outer > t
            if active.any() and (lens[active, t] == 0).all():
                return True
    return False


def check_stepper(g, ref, inputs, seq_lens, params, states, in_loop, search, known_bugs=None):
    """Live stepping of a top-level loop (the first one the stepper can build): after each step, its States (and a
    few in-loop values) equal the interpreter's step values on the sequences still running."""
    loop = g.top.children[0]
    if "stepper_params" in (AVOIDED if known_bugs is None else known_bugs):
        all_params = {op for op in g.top.ops if op.kind == "param"}
        fit = [lp for lp in g.top.children if params_needed(g, lp) >= all_params]
        if not fit:  # no loop can be stepped (KNOWN_BUGS stepper_params)
            return
        loop = fit[0]
    st_ = g.stepper(inputs, seq_lens=seq_lens, params=params, loop=loop)
    lens = ref.lens(loop.axis)
    carried = [s for s in st_.states]
    if search:
        carried = [s for s in carried]
    expected = {}

    def lead(x):  # a value shared by the batch has no batch axis
        return (batch,) if batch in x.dims else ()

    for s in carried:
        expected[s] = ref.steps_and_mask(s, lead(s) + (loop.axis,) + canonical(s.dims - {batch}), loop=loop)
    values = [v for v in in_loop.values() if v.scope is loop][:3]
    for v in values:
        expected[v] = ref.steps_and_mask(v, lead(v) + (loop.axis,) + canonical(v.dims - {batch}))
    k = 0
    limit = int(lens.max()) if len(lens) else 0
    while k < limit and not st_.finished:
        st_.step()
        k += 1
        for x, (arr, mask) in expected.items():
            what = f"stepper step {k} " + (f"State {x.path(g)}" if isinstance(x, rd.State) else f"{x.name}")
            order = lead(x) + canonical(x.dims - {batch})
            if search and lead(x):
                got = st_.value(x)
                got = got[:, 0] if got.ndim == len(order) + 1 else got
            else:
                got = st_.value(x, order=order)
            if lead(x):
                compare(what, got, arr[:, k - 1], mask[:, k - 1], x.dtype)
            else:
                compare(what, got, arr[k - 1], mask[k - 1], x.dtype)
    if k < limit:
        raise Mismatch(f"stepper finished after {k} steps, the interpreter runs {limit}")
    # the same steps again in the graph (run_to: one loop in TensorFlow): every State after every step
    st_.reset()
    st_.run_to(k)
    if getattr(st_, "loop_error", None) is not None:
        raise Mismatch(f"run_to could not run the loop in the graph: {st_.loop_error}")
    if st_.t != k:
        raise Mismatch(f"run_to({k}) stopped after {st_.t} steps")
    for x in carried:
        order = lead(x) + canonical(x.dims - {batch})
        arr, mask = expected[x]
        for i in range(1, k + 1):
            got = st_.value(x, at=i) if search and lead(x) else st_.value(x, order=order, at=i)
            if search and lead(x) and got.ndim == len(order) + 1:
                got = got[:, 0]
            what = f"run_to: after step {i}, State {x.path(g)}"
            compare(what, got, arr[:, i - 1] if lead(x) else arr[i - 1], mask[:, i - 1] if lead(x) else mask[i - 1],
                    x.dtype)


# --- the tests ---

def _settings(n):
    return settings(max_examples=n, deadline=None, database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much],
                    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target]
                    + ([] if os.environ.get("RECDEBUG_GEN_SHRINK") == "0" else [Phase.shrink]))


STATS = {"programs": 0, "rejected": 0, "seconds": 0.0}


@pytest.fixture(scope="module", autouse=True)
def _report_stats():
    """Prints how many programs ran and how long their checks took (shown with pytest -s)."""
    t0 = _time.perf_counter()
    yield
    if STATS["programs"]:
        line = (f"generative check: {STATS['programs']} programs ({STATS['rejected']} rejected), "
                f"{STATS['seconds']:.0f} s in checks, {_time.perf_counter() - t0:.0f} s in all")
        print("\n" + line)
        if os.environ.get("RECDEBUG_GEN_STATS"):  # a file to append the line to (pytest -n runs print nothing)
            with open(os.environ["RECDEBUG_GEN_STATS"], "a") as f:
                f.write(line + "\n")


def _write_failure(directory: str, source: str, call: str, error: BaseException):
    """A failing program as a script that reproduces it (long runs without shrinking lose nothing to the end)."""
    import traceback

    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"fail_{os.getpid()}_{_time.time_ns()}.py")
    text = "".join(traceback.format_exception_only(type(error), error))[-3000:]
    with open(path, "w") as f:
        f.write("import sys; sys.path.insert(0, %r)\nfrom test_generative import *\nSOURCE = '''%s'''\n%s\n"
                "print('PASS')\n" % (os.path.dirname(os.path.abspath(__file__)), source, call))
        f.write("".join("# " + line + "\n" for line in text.splitlines()))


def _run_one(data, search):
    # g.run or g.trace (one build each costs most of a program's time), and in 45% the stepper too
    checks = ("run",) if data.draw(st.integers(0, 9), label="run or trace") < 5 else ("trace",)
    if data.draw(st.integers(0, 19), label="stepper") < 9:  # 45%: a third build
        checks += ("stepper",)
    source, gen = write_program(data, search=search, tracing="trace" in checks)
    note("program:\n" + source)
    batch_data = data.draw(batches(), label="batch")
    opt = data.draw(st.integers(0, 99), label="optimize") < 50  # (booleans lean to False)
    call = f"check_program(SOURCE, {tuple(int(n) if i == 0 or i == 3 else n.tolist() for i, n in enumerate(batch_data))}, " \
           f"optimize={opt}, checks={checks}, search={search})"
    note(f"reproduce with: {call}")
    t0, outcome = _time.perf_counter(), "failed"
    try:
        check_program(source, batch_data, optimize=opt, checks=checks, search=search)
        outcome = "agreed"
    except rd.RecDebugError as e:
        if os.environ.get("RECDEBUG_GEN_FAILURES"):
            _write_failure(os.environ["RECDEBUG_GEN_FAILURES"], source, call, e)
        raise AssertionError(f"recdebug refused a valid generated program:\n{source}\n{e}") from e
    except BaseException as e:
        if type(e).__name__ in ("UnsatisfiedAssumption", "Rejected"):  # hypothesis' reject()
            outcome = "rejected"
        elif os.environ.get("RECDEBUG_GEN_FAILURES"):  # a directory that gets each failing program as a script
            _write_failure(os.environ["RECDEBUG_GEN_FAILURES"], source, call, e)
        raise
    finally:
        STATS["seconds"] += _time.perf_counter() - t0
        STATS["programs"] += 1
        if os.environ.get("RECDEBUG_GEN_PROGRESS"):  # a file that gets one line per program, as it runs
            with open(os.environ["RECDEBUG_GEN_PROGRESS"], "a") as f:
                f.write(f"{outcome} {_time.perf_counter() - t0:.2f} {'+'.join(checks)} optimize={opt}\n")


# The programs are split into shards (each its own test with its own fixed seed), so that `pytest -n 2` runs them
# side by side: one in six is a greedy decoder (search), the rest loop programs.
SHARDS = int(os.environ.get("RECDEBUG_GEN_SHARDS", "12"))  # small enough for the two workers to even out
BASE_SEED = int(SEED) if SEED is not None else 0


def _shard_test(i: int, search: bool, n: int):
    @seed(BASE_SEED * 1000 + i)
    @_settings(n)
    @given(st.data())
    def test(data):
        _run_one(data, search=search)

    test.__name__ = test.__qualname__ = (f"test_generated_greedy_decoders_agree_with_the_interpreter_{i}" if search
                                         else f"test_generated_loop_programs_agree_with_the_interpreter_{i}")
    return test


for _i in range(SHARDS):
    _n = MAX_EXAMPLES // SHARDS + (1 if _i < MAX_EXAMPLES % SHARDS else 0)
    if _n:
        _t = _shard_test(_i, search=(_i % 6 == 5), n=_n)
        globals()[_t.__name__] = _t


# --- the bugs the generator found, as minimal programs ---
# Each runs as a test: expected to fail (strict xfail) while its KNOWN_BUGS name (before any "/") is in the set, and
# to pass once fixed. Those whose name is no longer in KNOWN_BUGS were found and fixed: they stay as regression tests.
# (source after `with rd.Graph() as g:`, (batch, time lengths, enc_t lengths, data seed), optimize, checks[, search])
BUG_PROGRAMS = {
    "trace_invariant": ('''
    x = rd.Input("x", {batch, time, feat})
    ctx = rd.Input("ctx", {batch, hid})
    with rd.Loop() as loop:
        x_t = loop.unstack(x)
        c = rd.tanh(ctx)                  # the same at every step: the trace has it without the loop's axis
        a = loop.stack(x_t * 2.0)
''', (2, [3, 1], [1, 1], 0), True, ("trace",)),
    "inner_invariant": ('''
    x = rd.Input("x", {batch, time, feat})
    enc = rd.Input("enc", {batch, enc_t, hid})
    s = rd.State({batch, hid})
    with rd.Loop() as outer:
        x_t = outer.unstack(x)
        with rd.Loop() as inner:          # the same in every outer step (s restarts at 0)
            s.assign(s.get() + inner.unstack(enc))
        o = outer.stack(s.get() * rd.reduce_sum(x_t, feat))
''', (2, [3, 1], [2, 1], 0), True, ("run",)),
    "all_empty": ('''
    ctx = rd.Input("ctx", {batch, hid})
    s = rd.State({batch, hid})
    with rd.Loop(max_seq_len=3) as loop:
        s.assign(rd.tanh(s.get() + ctx))
        loop.end(loop.index >= 0)         # every sequence ends at step 0: 0 steps, s keeps its initial value
    h = s.get()
''', (2, [3, 1], [1, 1], 0), False, ("run",)),
    "trace_inner_while_stack": ('''
    x = rd.Input("x", {batch, time, feat})
    s = rd.State({batch, feat})
    with rd.Loop() as outer:
        x_t = outer.unstack(x)
        with rd.Loop(max_seq_len=2) as inner:
            s.assign(s.get() + x_t)
            inner.end(inner.index >= 1)
            ys = inner.stack(s.get())
        o = outer.stack(rd.reduce_sum(ys, inner.axis))
''', (2, [3, 1], [1, 1], 0), False, ("trace",)),
    "nested_unstack": ('''
    x = rd.Input("x", {batch, time, feat})
    enc = rd.Input("enc", {batch, enc_t, hid})
    s = rd.State({batch})
    with rd.Loop() as outer:
        m = rd.reduce_max(outer.unstack(x), feat)
        with rd.Loop() as inner:           # its frame is read as outer's (both layers are named "unstack")
            s.assign(s.get() + m * rd.reduce_sum(inner.unstack(enc), hid))
''', (2, [3, 1], [2, 1], 0), True, ("trace",)),
    "nested_unstack/run": ('''
    x = rd.Input("x", {batch, time, feat})
    enc = rd.Input("enc", {batch, enc_t, hid})
    s = rd.State({batch, hid})
    with rd.Loop() as outer:
        m = rd.reduce_sum(outer.unstack(x), feat)
        with rd.Loop() as inner:
            s.assign(rd.tanh(s.get() + m + inner.unstack(enc)))
        o = outer.stack(s.get())
''', (3, [3, 1, 3], [2, 3, 1], 0), True, ("run",)),
    "last_inner_stack": ('''
    x = rd.Input("x", {batch, time, feat})
    s = rd.State({batch, hid})
    with rd.Loop() as outer:
        m = rd.reduce_sum(outer.unstack(x), feat)
        with rd.Loop(max_seq_len=2, include_eos=True) as inner:
            s.assign(rd.tanh(s.get() + m))
            ys = inner.stack(s.get())
            inner.end(inner.index >= 1)
        last = outer.last(ys)
    r = rd.softmax(last, inner.axis)
''', (3, [3, 1, 3], [2, 3, 1], 0), False, ("run",)),
    "stepper_params": ('''
    x = rd.Input("x", {batch, time, feat})
    s = rd.State({batch})
    lstm = rd.LSTM(hid)
    with rd.Loop() as first:              # the stepper steps this loop
        s.assign(s.get() + rd.reduce_sum(first.unstack(x), feat))
    with rd.Loop() as second:
        h = second.stack(lstm(second.unstack(x)))
''', (2, [3, 1], [1, 1], 0), False, ("stepper",)),
    "label_padding": ('''
    lab = rd.Input("lab", {batch, time}, dtype="int32", sparse_dim=vocab)
    emb = rd.Embedding(vocab, hid)
    h = rd.State({batch, hid})
    with rd.Loop() as loop:               # padding labels of lab are out of range (e.g. -1)
        h.assign(rd.tanh(h.get() + emb(loop.unstack(lab))))
''', (2, [3, 1], [1, 1], 0), False, ("run",)),
    "trace_sparse_state": ('''
    x = rd.Input("x", {batch, time, feat})
    h = rd.State({batch, hid})
    label = rd.State({batch}, initial=0, dtype="int32", sparse_dim=vocab)
    with rd.Loop() as loop:
        x_t = loop.unstack(x)
        h.assign(rd.tanh(h.get() + rd.reduce_sum(x_t, feat)))
        label.assign(label.get() + 1)     # plain ints: made labels of vocab
''', (2, [3, 1], [1, 1], 0), False, ("trace",)),
    "trace_tensor_bound": ('''
    bound = rd.Input("bound", {batch}, dtype="int32")
    s = rd.State({batch, hid})
    with rd.Loop(max_seq_len=bound) as loop:
        s.assign(rd.tanh(s.get() + 1.0))
        loop.end(loop.index >= 5)
''', (2, [1, 1], [1, 1], 0), False, ("trace",)),
    "trace_unstack_end": ('''
    x = rd.Input("x", {batch, time, feat})
    stop = rd.Input("stop", {batch}, dtype="int32")
    s = rd.State({batch, hid}, initial=-1.0)
    with rd.Loop() as loop:
        x_t = loop.unstack(x)             # not used
        s.assign(s.get() * 0.5 + rd.tanh(s.get()))
        loop.end(loop.index >= stop)
''', (2, [1, 3], [1, 3], 282), True, ("trace",)),
    # found and fixed: regression tests
    "fixed/stack_of_invariant": ('''
    x = rd.Input("x", {batch, time, feat})
    ctx = rd.Input("ctx", {batch, hid})
    with rd.Loop() as loop:
        x_t = loop.unstack(x)
        a = loop.stack(x_t)
        b = loop.stack(rd.tanh(ctx))
        c = loop.last(rd.tanh(ctx))
''', (2, [3, 1], [1, 1], 0), True, ("run",)),
    "fixed/state_of_invariant": ('''
    x = rd.Input("x", {batch, time, feat})
    ctx = rd.Input("ctx", {batch, hid})
    h = rd.State({batch, hid})
    with rd.Loop() as loop:
        x_t = loop.unstack(x)
        h.assign(rd.tanh(ctx))
    final = h.get()
''', (2, [3, 1], [1, 1], 0), True, ("run",)),
    "fixed/concat_with_invariant": ('''
    x = rd.Input("x", {batch, time, feat})
    ctx = rd.Input("ctx", {batch, hid})
    with rd.Loop() as loop:
        a = loop.stack(rd.concat(ctx, loop.unstack(x)))
''', (2, [3, 1], [1, 1], 0), True, ("run",)),
    "fixed/trace_index_ge_input": ('''
    stop = rd.Input("stop", {batch}, dtype="int32")
    s = rd.State({batch, feat}, initial=0.5)
    with rd.Loop(max_seq_len=3) as loop:
        s.assign(rd.tanh(s.get()))
        loop.end(loop.index >= stop)
''', (3, [1, 1, 1], [1, 1, 1], 0), False, ("trace",)),
    "fixed/identity_assign": ('''
    x = rd.Input("x", {batch, time, feat})
    s = rd.State({batch}, initial=1, dtype="int32")
    h = rd.State({batch, feat})
    with rd.Loop() as loop:
        h.assign(h.get() + loop.unstack(x))
        s.assign(s.get())
''', (2, [3, 1], [1, 1], 0), False, ("trace",)),
    "fixed/gather_index_stacked": ('''
    x = rd.Input("x", {batch, time, feat})
    s = rd.State({batch, hid})
    with rd.Loop(max_seq_len=2) as loop:
        frame = rd.gather(x, loop.index, time)
        s.assign(s.get() + 1.0)
        loop.end(loop.index >= 1)
        frames = loop.stack(frame)
''', (2, [3, 1], [1, 1], 0), True, ("run",)),
    "fixed/initial_broadcast": ('''
    x = rd.Input("x", {batch, time, feat})
    ctx = rd.Input("ctx", {batch, hid})
    mean = rd.reduce_mean(ctx, hid)
    s = rd.State({batch, hid}, initial=mean)
    with rd.Loop() as loop:
        s.assign(s.get() * 0.5 + rd.reduce_sum(loop.unstack(x), feat))
        o = loop.stack(rd.reduce_sum(s.get(), hid))
''', (2, [3, 1], [1, 1], 0), False, ("run",)),
    "fixed/sparse_assign": ('''
    x = rd.Input("x", {batch, time, feat})
    label = rd.State({batch}, initial=1, dtype="int32", sparse_dim=vocab)
    with rd.Loop() as loop:
        x_t = loop.unstack(x)
        label.assign(rd.cast(rd.reduce_sum(x_t, feat) > 0.0, "int32"))
        labels = loop.stack(label.get())
''', (2, [3, 1], [1, 1], 0), False, ("run",)),
    "fixed/inner_loop_state_cycle": ('''
    enc = rd.Input("enc", {batch, enc_t, hid})
    ctx = rd.Input("ctx", {batch, hid})
    stop = rd.Input("stop", {batch}, dtype="int32")
    s1 = rd.State({batch}, initial=0, dtype="int32", sparse_dim=vocab)
    s2 = rd.State({batch, hid}, initial=0)
    s8 = rd.State({batch, hid}, initial=-1.0)
    with rd.Loop(max_seq_len=3) as outer:
        v4 = s1.get()
        v6 = ctx - s2.get()               # read by the inner loop, and made into s1
        with rd.Loop() as inner:
            v10 = inner.unstack(enc)
            s8.assign(rd.tanh(rd.where(v4 == 0, -1.0, v6)))
        s1.assign(rd.cast(rd.reduce_max(v6, hid) >= 0.7, "int32"))
        s2.assign(rd.tanh(s8.get()))      # made from the inner loop's result
        outer.end(outer.index >= stop)
''', (3, [4, 3, 1], [2, 1, 2], 0), True, ("run",)),
    "fixed/inner_label_state_from_outer": ('''
    ctx = rd.Input("ctx", {batch, hid})
    stop = rd.Input("stop", {batch}, dtype="int32")
    bound = rd.Input("bound", {batch}, dtype="int32")
    s1 = rd.State({batch}, initial=0, dtype="int32", sparse_dim=vocab)
    s7 = rd.State({batch, hid}, initial=0)
    s8 = rd.State({batch}, initial=0, dtype="int32", sparse_dim=vocab)
    with rd.Loop(max_seq_len=bound, include_eos=True) as outer:
        v4 = s1.get()
        with rd.Loop(max_seq_len=1, include_eos=True) as inner:
            s7.assign(s7.get() * 0.5 + rd.tanh(ctx))
            s8.assign(v4)                 # the same at every inner step
            inner.end(inner.index >= 1)
        s8.assign(s8.get())
        outer.end(outer.index >= stop, include_eos=True)
''', (1, [1], [1], 0), False, ("run",)),
    "fixed/trace_inner_invariant": ('''
    stop = rd.Input("stop", {batch}, dtype="int32")
    s7 = rd.State({batch, hid}, initial=0)
    with rd.Loop(max_seq_len=3) as outer:
        with rd.Loop(max_seq_len=2) as inner:
            v10 = s7.get()                # the same at every inner step
            inner.end(inner.index >= 2)
        outer.end(outer.index >= stop)
''', (2, [3, 3], [2, 3], 1), True, ("trace",)),
    "fixed/inner_assign_from_outer": ('''
    ctx = rd.Input("ctx", {batch, hid})
    stop = rd.Input("stop", {batch}, dtype="int32")
    s = rd.State({batch, hid})
    with rd.Loop(max_seq_len=3) as outer:
        v = rd.tanh(ctx + s.get())
        with rd.Loop(max_seq_len=2, include_eos=True) as inner:
            s.assign(v)
            inner.end(inner.index >= 1)
        outer.end(outer.index >= stop)
    f = s.get()
''', (2, [1, 1], [1, 1], 0), False, ("run",)),
    "fixed/label_states_through_where": ('''
    x = rd.Input("x", {batch, time, feat})
    s1 = rd.State({batch}, initial=0, dtype="int32", sparse_dim=vocab)
    s2 = rd.State({batch}, initial=1, dtype="int32", sparse_dim=vocab)
    with rd.Loop() as first:
        v5 = first.unstack(x)
    with rd.Loop() as loop:               # s1 and s2 read each other through rd.where
        v20 = loop.unstack(x)
        v21 = s1.get()
        v25 = rd.where(v21 >= 0, s2.get(), 2)
        s1.assign(v25)
        s2.assign(rd.where(v21 >= 0, v25, 0))
''', (1, [1], [1], 2), False, ("trace",)),
    "gather_ragged_axis": ('''
    x = rd.Input("x", {batch, time, feat})
    ctx = rd.Input("ctx", {batch, hid})
    s = rd.State({batch}, initial=1, dtype="int32", sparse_dim=vocab)
    with rd.Loop() as outer:
        v = outer.unstack(x)
        with rd.Loop(max_seq_len=1, include_eos=True) as inner:
            ys = inner.stack(ctx * 0.5)
            inner.end(inner.index >= 1)
        out = outer.stack(ys)
    picked = rd.gather(out, s.get(), inner.axis)
''', (3, [3, 2, 1], [1, 1, 1], 0), False, ("run",)),
    "stack_own_axis": ('''
    x = rd.Input("x", {batch, time, feat})
    with rd.Loop() as loop:
        x_t = loop.unstack(x)
        seen = loop.stack(rd.reduce_sum(x, feat) * rd.reduce_sum(x_t, feat))   # {batch, time} stacked over time
''', (2, [3, 1], [1, 1], 0), False, ("run",)),
    "fixed/stack_input_axis_in_unstack_end": ('''
    x = rd.Input("x", {batch, time, feat})
    stop = rd.Input("stop", {batch}, dtype="int32")
    with rd.Loop() as loop:               # unstack + end: loop.axis is a new dim, the stacked value keeps time
        x_t = loop.unstack(x)
        seen = loop.stack(rd.reduce_sum(x, feat) * rd.reduce_sum(x_t, feat))
        loop.end(loop.index >= stop)
''', (2, [3, 4], [1, 1], 5), True, ("run",)),
    "fixed/trace_sum_of_outside_values": ('''
    x = rd.Input("x", {batch, time, feat})
    stop = rd.Input("stop", {batch}, dtype="int32")
    with rd.Loop(max_seq_len=1, include_eos=True) as first:
        out = first.stack(rd.gather(x, first.index, time))
        first.end(first.index >= stop, include_eos=True)
    total = rd.reduce_sum(out, first.axis)
    with rd.Loop() as loop:
        x_t = loop.unstack(x)
        twice = total + total             # the same at every step
''', (1, [1], [1], 0), False, ("trace",)),
    "stepper_params/linear": ('''
    x = rd.Input("x", {batch, time, feat})
    h = rd.State({batch, feat})
    lin = rd.Linear(feat)
    with rd.Loop() as first:
        h.assign(rd.tanh(h.get() + first.unstack(x)))
    with rd.Loop() as second:
        h.assign(rd.tanh(lin(h.get()) + second.unstack(x)))
''', (2, [3, 1], [1, 1], 0), False, ("stepper",)),
    "fixed/search_label_read_by_no_step": ('''
    x = rd.Input("x", {batch, time, feat})
    y = rd.State({batch}, initial=1, dtype="int32", sparse_dim=vocab)
    h = rd.State({batch, hid}, initial=0.5)
    lin = rd.Linear(vocab)
    with rd.Loop() as loop:
        x_t = loop.unstack(x)
        # a label no later step reads (RETURNN moved its State out of the loop and failed)
        y.assign(rd.choice(rd.log_softmax(lin(h.get())), beam_size=1, input_type="log_prob"))
''', (2, [2, 1], [1, 1], 0), True, ("run", "stepper"), True),
    # a State no searched label reaches (the same for every hypothesis, but each hypothesis has its own length):
    # RETURNN failed to accumulate it without the beam (its final value is read after the loop); found by
    # minimizing a program of a long run
    "fixed/search_unfed_label": ('''
    ctx = rd.Input("ctx", {batch, hid})
    s2 = rd.State({batch, hid}, initial=ctx)
    lin4, lin8 = rd.Linear(vocab), rd.Linear(hid)
    with rd.Loop(max_seq_len=4) as loop5:
        v9 = rd.tanh(lin8(s2.get()))
        s2.assign(v9)
        y18 = rd.choice(rd.softmax(lin4(v9) * 2.0), beam_size=1, input_type="prob")
        loop5.end((y18 == 0) & (loop5.index >= 1), include_eos=False)
        out = loop5.stack(y18)
    v21 = s2.get()
''', (2, [1, 2], [2, 1], 54898), False, ("run", "stepper"), True),
    # the same traced: the step index and the State, the same for every hypothesis, were accumulated without the beam
    "fixed/search_trace_unfed_label": ('''
    ctx = rd.Input("ctx", {batch, hid})
    s2 = rd.State({batch, hid}, initial=ctx)
    lin4, lin8 = rd.Linear(vocab), rd.Linear(hid)
    with rd.Loop(max_seq_len=4) as loop5:
        i1 = rd.cast(loop5.index, "float32") * 2.0
        v9 = rd.tanh(lin8(s2.get()))
        s2.assign(v9)
        y18 = rd.choice(rd.softmax(lin4(v9) * 2.0), beam_size=1, input_type="prob")
        loop5.end((y18 == 0) & (loop5.index >= 1), include_eos=True)
        out = loop5.stack(y18)
        out2 = loop5.stack(i1)
    v21 = s2.get()
''', (3, [1, 2, 1], [2, 1, 1], 54898), True, ("trace",), True),
    # a search trace read a value that has another loop's axis (stacked there time-major) in the axis order of its
    # template, not in the order RETURNN accumulated it (batch-major): batch and that axis came out swapped. Found
    # by the 5000-program run
    "fixed/search_trace_axis_order": ('''
    x = rd.Input("x", {batch, time, feat})
    ctx = rd.Input("ctx", {batch, hid})
    stop = rd.Input("stop", {batch}, dtype="int32")
    with rd.Loop(max_seq_len=2) as loop1:
        out2 = loop1.stack(rd.reduce_mean(x, time))
        loop1.end(loop1.index >= stop)
    s3 = rd.State({batch}, initial=0, dtype="int32", sparse_dim=vocab)
    emb4, lin5 = rd.Embedding(vocab, hid), rd.Linear(vocab)
    with rd.Loop() as loop6:
        x_t = loop6.unstack(x)
        v7 = rd.where(rd.reduce_sum(ctx, hid) <= 0.0, out2, 0.0)  # the same for every hypothesis
        y8 = rd.choice(rd.softmax(lin5(rd.tanh(emb4(s3.get()))) * 2.0), beam_size=1, input_type="prob")
        s3.assign(y8)
        out9 = loop6.stack(y8)
''', (3, [1, 1, 3], [2, 2, 1], 1), True, ("trace",), True),
    "fixed/search_where_number_and_value": ('''
    ctx = rd.Input("ctx", {batch, hid})
    s1 = rd.State({batch}, initial=3, dtype="int32", sparse_dim=vocab)
    s2 = rd.State({batch, hid}, initial=0.5)
    emb3 = rd.Embedding(vocab, hid)
    lin4 = rd.Linear(vocab)
    lin8 = rd.Linear(hid)
    with rd.Loop(max_seq_len=4) as loop5:
        v6 = emb3(s1.get())
        v7 = s2.get()
        v9 = rd.tanh(lin8(rd.concat(v6, v7)))
        s2.assign(v9)
        v10 = rd.reduce_max(v7, hid)
        v11 = v10 > -0.3
        v12 = v10 > 0.15
        v13 = rd.cast(v11, "int32") + rd.cast(v12, "int32") * 2
        v14 = v13 > 3
        v15 = rd.where(v14, -1.0, v9)     # a number and a value of the step (RETURNN refused to broadcast them)
        v16 = lin4(v15) * 2.0
        v17 = rd.softmax(v16)
        y18 = rd.choice(v17, beam_size=1, input_type="prob")
        s1.assign(y18)
        loop5.end((y18 == 0) & (loop5.index >= 1), include_eos=False)
        last19 = loop5.last(y18)
        last20 = loop5.last(v9)
    v21 = s2.get()
''', (2, [1, 2], [2, 1], 54898), False, ("run",), True),
    "fixed/search_previous_label_read_by_no_step": ('''
    x = rd.Input("x", {batch, time, feat})
    y = rd.State({batch}, initial=1, dtype="int32", sparse_dim=vocab)
    h = rd.State({batch, hid}, initial=0.5)
    emb, lin, lin2 = rd.Embedding(vocab, hid), rd.Linear(vocab), rd.Linear(hid)
    with rd.Loop() as loop:
        x_t = loop.unstack(x)
        e = lin2(emb(y.get()))            # per hypothesis of the previous step, read by no later step
        y.assign(rd.choice(rd.log_softmax(lin(h.get())), beam_size=1, input_type="log_prob"))
        out = loop.stack(e)
''', (2, [3, 1], [1, 1], 0), True, ("run", "stepper"), True),
    "fixed/search_stack_of_a_value_without_the_beam": ('''
    ctx = rd.Input("ctx", {batch, hid})
    y = rd.State({batch}, initial=0, dtype="int32", sparse_dim=vocab)
    h = rd.State({batch, hid}, initial=rd.reduce_mean(ctx, hid))
    emb, lin_h, lin_c, lin_out = rd.Embedding(vocab, hid), rd.Linear(hid), rd.Linear(hid), rd.Linear(vocab)
    with rd.Loop(max_seq_len=2) as loop:
        h.assign(rd.tanh(lin_h(rd.concat(emb(y.get()), h.get()))))
        c = lin_c(rd.tanh(ctx))           # the same for every hypothesis: RETURNN could not stack it in a search
        y.assign(rd.choice(rd.log_softmax(lin_out(h.get()) * 2.0), beam_size=1, input_type="log_prob"))
        loop.end(y.get() == 0, include_eos=True)
        out = loop.stack(c)
''', (2, [3, 2], [2, 2], 17297), True, ("run", "stepper"), True),
    "fixed/broadcast_of_both_sources": ('''
    x = rd.Input("x", {batch, time, feat})
    enc = rd.Input("enc", {batch, enc_t, hid})
    s = rd.State({batch}, initial=0.5)
    with rd.Loop() as loop:
        x_t = loop.unstack(x)
        c = enc <= s.get()                # read by nothing in the loop: RETURNN computes it after it, both sources
        s.assign(rd.tanh(s.get() + rd.reduce_sum(x_t, feat)))  # broadcast (s over enc_t, hid; enc over the steps)
''', (2, [3, 2], [2, 1], 0), True, ("trace",)),
    "fixed/trace_states_that_swap": ('''
    x = rd.Input("x", {batch, time, feat})
    a = rd.State({batch}, initial=1, dtype="int32", sparse_dim=vocab)
    b = rd.State({batch}, initial=2, dtype="int32", sparse_dim=vocab)
    with rd.Loop() as loop:
        x_t = loop.unstack(x)
        a_prev, b_prev = a.get(), b.get()
        a.assign(b_prev)                  # each State's steps were derived from the other's: a ring
        b.assign(a_prev)
        out = loop.stack(a_prev)
''', (3, [2, 3, 1], [1, 1, 1], 0), False, ("trace", "stepper")),
    "fixed/last_of_invariant_dropout": ('''
    ctx = rd.Input("ctx", {batch, hid})
    stop = rd.Input("stop", {batch}, dtype="int32")
    s = rd.State({batch, hid})
    with rd.Loop(max_seq_len=3) as loop:
        d = rd.dropout(rd.tanh(ctx), 0.3)  # the same at every step: RETURNN moves it out of the loop
        s.assign(rd.tanh(s.get() + ctx))
        last = loop.last(d)
        loop.end(loop.index >= stop)
''', (2, [3, 1], [1, 1], 0), True, ("run",)),
    "fixed/shared_state_read_by_an_inner_end": ('''
    x = rd.Input("x", {batch, time, feat})
    s1 = rd.State({batch, feat}, initial=-1.0)
    n = rd.State(set(), initial=0, dtype="int32")  # shared by the batch
    s10 = rd.State({batch, feat}, initial=0.5)
    with rd.Loop() as outer:
        x_t = outer.unstack(x)
        n_prev, v9 = n.get(), rd.tanh(s1.get() + x_t)
        with rd.Loop(max_seq_len=2, include_eos=True) as inner:
            s10.assign(rd.tanh(v9))       # RETURNN worked out the outer unit from s1 (made from the inner loop's
            # result), reached s1.prev through the inner loop and failed: a dependency loop on s1
            inner.end((n_prev != rd.cast(rd.reduce_min(s10.get(), feat) <= 0.7, "int32")) & (inner.index >= 1))
        s1.assign(rd.tanh(s10.get()))
        n.assign(n_prev + 1)
        o = outer.stack(s1.get())
''', (2, [3, 1], [1, 1], 0), True, ("run", "trace", "stepper")),
    "fixed/shared_state_beside_an_inner_loop": ('''
    xt = rd.Input("xt", (time, batch, feat))
    ctx = rd.Input("ctx", {batch, hid})
    n = rd.State(set(), initial=2, dtype="int32")  # shared by the batch, not read by the inner loop
    s2 = rd.State({batch, hid}, initial=ctx)
    s11 = rd.State({batch, hid}, initial=0)
    with rd.Loop() as outer:
        x_t = outer.unstack(xt)
        v7 = s2.get()
        with rd.Loop(max_seq_len=2, include_eos=True) as inner:
            s11.assign(s11.get() * 0.5 + rd.tanh(rd.Linear(hid)(v7)))
            inner.end(inner.index >= 2)
        n.assign(n.get() + 1)             # RETURNN working out the outer unit from n (the shared State first)
        s2.assign(rd.sigmoid(s11.get()) - v7 * 0.25)  # failed: a dependency loop on s2.prev
        out = outer.stack(s11.get())
''', (4, [2, 2, 2, 4], [2, 1, 1, 2], 5759), False, ("trace", "stepper")),
}


def _bug_param(name):
    marks = ()
    if name.split("/")[0] in KNOWN_BUGS:
        marks = pytest.mark.xfail(strict=True, reason=f"KNOWN_BUGS {name.split('/')[0]!r}")
    return pytest.param(name, marks=marks, id=name)


@pytest.mark.parametrize("name", [_bug_param(n) for n in BUG_PROGRAMS])
def test_bug_program(name):
    body, data, optimize, checks, *search = BUG_PROGRAMS[name]  # search (optional): a decoder run with search
    search = bool(search and search[0])
    if name.split("/")[0] in REFUSED:
        with pytest.raises(REFUSED[name.split("/")[0]]):
            check_program(HEADER + "with rd.Graph() as g:" + body, data, optimize=optimize, checks=checks,
                          search=search, known_bugs=set())
        return
    check_program(HEADER + "with rd.Graph() as g:" + body, data, optimize=optimize, checks=checks, search=search,
                  known_bugs=set())
