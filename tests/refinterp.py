"""A numpy reference interpreter of recdebug graphs (no RETURNN, no TensorFlow): the oracle of DESIGN.md's
"Semantics" section, written as the plain Python loop of the source text.

It walks the user's ops one sequence at a time: every value of sequence ``b`` is a numpy array without the batch
axis whose dynamic axes have exactly that sequence's frames (an input is cut to ``seq_lens[dim][b]`` frames), and
every loop runs exactly that sequence's number of steps. Padding is never read, so garbage in the padding frames of
an input cannot change a result. The only ragged values are stacks of inner loops (one length per outer step):
they are padded, and a ``valid`` mask says which entries are real.

    ref = interpret(g, inputs={"x": x_np}, seq_lens={time: lens}, params={"linear/weight": w, ...})
    ref.value(out, order=(batch, time, hid))     # a top-level Tensor; ref.mask(out, order): its valid entries
    ref.steps(h, order=(batch, loop.axis, hid))  # a State (value assigned in iteration t) or in-loop Tensor
    ref.lens(loop.axis)                          # per-sequence steps of a loop (nested: [batch, outer steps])

A comparison whose float operands are (nearly) equal, a cast of a float next to an integer and a choice between
(nearly) equal scores raise ``IllConditioned``: float32 rounding could flip them, so such a program says nothing.
"""
from __future__ import annotations

import numbers

import numpy as np

import recdebug as rd
from recdebug.language.dims import sorted_dims

batch_dim = rd.batch_dim

MARGIN = 1e-4  # comparisons closer than this (absolute + relative) may flip in float32


class IllConditioned(Exception):
    """The program's result depends on a decision that float32 rounding could flip."""


class V:
    """One sequence's value: ``arr`` with axes ``dims`` (no batch); ``valid`` (None: all) marks real entries."""

    __slots__ = ("arr", "dims", "valid")

    def __init__(self, arr, dims, valid=None):
        self.arr = np.asarray(arr)
        self.dims = tuple(dims)
        self.valid = None if valid is None or np.all(valid) else np.asarray(valid, dtype=bool)
        assert self.arr.ndim == len(self.dims), (self.arr.shape, self.dims)

    def size(self, d) -> int:
        return self.arr.shape[self.dims.index(d)]

    def __repr__(self):
        return f"V({self.dims}, {self.arr!r})"


def _np_dtype(dtype: str):
    return {"float32": np.float64, "int32": np.int64, "bool": np.bool_}[dtype]


def align(arr, dims, target):
    """``arr`` (axes ``dims``) transposed to ``target`` order, with size-1 axes for the dims it lacks."""
    assert set(dims) <= set(target), (dims, target)
    perm = [dims.index(d) for d in target if d in dims]
    a = np.transpose(arr, perm)
    shape, it = [], iter(a.shape)
    for d in target:
        shape.append(next(it) if d in dims else 1)
    return a.reshape(shape)


def aligned(v: V, target):
    """(array, valid or None) of ``v`` aligned to ``target``."""
    arr = align(v.arr, v.dims, target)
    valid = None if v.valid is None else align(v.valid, v.dims, target)
    return arr, valid


def _and(*masks):
    masks = [m for m in masks if m is not None]
    if not masks:
        return None
    out = masks[0]
    for m in masks[1:]:
        out = out & m
    return out


def _full_valid(valid, shape):
    return np.ones(shape, bool) if valid is None else np.broadcast_to(valid, shape)


def _check_margin(a, b, valid):
    """Reject a float comparison whose operands are closer than MARGIN (exact ties are fine)."""
    a, b = np.broadcast_arrays(np.asarray(a, np.float64), np.asarray(b, np.float64))
    m = _full_valid(valid, a.shape) if valid is not None else np.ones(a.shape, bool)
    d = np.abs(a - b)
    tol = MARGIN * (1.0 + np.maximum(np.abs(a), np.abs(b)))
    # an exact tie is structural (the same ops on the same values, as in float32): it cannot flip
    bad = m & (d < tol) & (d != 0) & np.isfinite(a) & np.isfinite(b)
    if bad.any():
        raise IllConditioned(f"comparison of nearly equal floats: {a[bad][0]!r} vs {b[bad][0]!r}")


def stack_values(frames, axis):
    """Frames (V) stacked along a new first axis ``axis``; ragged frames are padded (marked invalid)."""
    if not frames:
        return None
    dims = frames[0].dims
    frames = [f if f.dims == dims else V(*aligned(f, dims)[:1], dims, aligned(f, dims)[1]) for f in frames]
    shape = [max(f.arr.shape[i] for f in frames) for i in range(len(dims))]
    dtype = frames[0].arr.dtype
    out = np.zeros([len(frames)] + shape, dtype=dtype)
    if dtype == np.float64:
        out[...] = np.nan
    valid = np.zeros(out.shape, bool)
    for i, f in enumerate(frames):
        sl = (i,) + tuple(slice(0, n) for n in f.arr.shape)
        out[sl] = f.arr
        valid[sl] = _full_valid(f.valid, f.arr.shape)
    return V(out, (axis,) + dims, valid)


class LoopRun:
    """One run of a loop for one sequence (in one iteration of its enclosing loops)."""

    def __init__(self, loop, n, iters):
        self.loop, self.n, self.iters = loop, n, iters


class Env:
    """The values of one scope instance: the top level, or one iteration of a loop."""

    def __init__(self, scope, parent, t=None, prev=None):
        self.scope, self.parent, self.t, self.prev = scope, parent, t, prev
        self.vals: dict = {}
        self.runs: dict = {}  # Loop -> LoopRun (loops directly inside this scope)

    def find(self, scope):
        e = self
        while e is not None and e.scope is not scope:
            e = e.parent
        if e is None:
            raise RuntimeError(f"refinterp: no environment of {scope.describe()} here")
        return e


class _Seq:
    """The interpreter for one sequence ``b``."""

    def __init__(self, ref: "Reference", b: int):
        self.ref, self.b = ref, b
        self.top = Env(ref.graph.top, None)

    # --- values ---
    def get(self, t, env: Env) -> V:
        op = t.op
        e = env.find(op.scope)
        v = e.vals.get(op)
        if v is None:
            v = self.eval(op, e)
            want = set(op.out.dims) - {batch_dim}
            assert set(v.dims) == want, (op, v.dims, want)
            e.vals[op] = v
        return v

    def eval(self, op, env: Env) -> V:
        k = op.kind
        a = op.attrs
        out_dims = tuple(d for d in sorted_dims(op.out.dims) if d is not batch_dim)
        if k == "input":
            return self.ref._input(op.out, self.b)
        if k == "param":
            p = a["param"]
            arr = np.asarray(self.ref.params[p.path(self.ref.graph)], dtype=np.float64)
            assert arr.shape == tuple(d.size for d in p.dims), (p.path(self.ref.graph), arr.shape)
            return V(arr, p.dims)
        if k == "constant":
            return V(np.full([d.size for d in out_dims], a["value"], dtype=_np_dtype(op.out.dtype)), out_dims)
        if k == "state_entry":
            return self._state_entry(op, env, out_dims)
        if k in ("state_final", "stack", "last"):
            loop = a["loop"]
            run = self.run_loop(loop, env)
            if batch_dim not in op.out.dims:  # shared by the batch: every step the loop ran, any sequence's
                iters = self.shared_iters(loop, env)
                run = LoopRun(loop, len(iters), iters)
            if k == "state_final":
                state = a["state"]
                if run.n == 0:
                    return self.get(loop.init[state], env)
                return self.get(loop.assigned[state], run.iters[run.n - 1])
            if k == "last":
                if run.n == 0:  # no step: undefined, never compared
                    return self._invalid(a["value"], run, out_dims)
                return self.get(a["value"], run.iters[run.n - 1])
            frames = [self.get(a["value"], run.iters[i]) for i in range(run.n)]
            if not frames:
                inner = self._invalid(a["value"], run, None)
                return V(np.zeros((0,) + inner.arr.shape, inner.arr.dtype), (loop.axis,) + inner.dims)
            return stack_values(frames, loop.axis)
        if k == "unstack":
            x = self.get(op.inputs[0], env)
            axis = a["axis"]
            i = x.dims.index(axis)
            arr = np.take(x.arr, env.t, axis=i)
            valid = None if x.valid is None else np.take(x.valid, env.t, axis=i)
            return V(arr, x.dims[:i] + x.dims[i + 1:], valid)
        if k == "index":
            return V(np.array(env.t, dtype=np.int64), ())
        if k in ("copy", "dropout", "split", "sparse"):  # sparse: the same ints, labels of a sparse dim
            return self.get(op.inputs[0], env)
        if k in ("add", "sub", "mul", "truediv", "equal", "not_equal", "less", "less_equal", "greater",
                 "greater_equal", "logical_and", "logical_or"):
            return self._binary(op, env, out_dims)
        if k == "activation":
            x = self.get(op.inputs[0], env)
            fn = a["activation"]
            arr = x.arr.astype(np.float64)
            with np.errstate(all="ignore"):
                if fn == "tanh":
                    r = np.tanh(arr)
                elif fn == "sigmoid":
                    r = 1.0 / (1.0 + np.exp(-arr))
                elif fn == "relu":
                    r = np.maximum(arr, 0.0)
                elif fn == "exp":
                    r = np.exp(arr)
                elif fn == "log":
                    r = np.log(arr)
                elif fn == "abs":
                    r = np.abs(arr)
                else:
                    raise NotImplementedError(f"refinterp: activation {fn!r}")
            return V(r, x.dims, x.valid)
        if k == "softmax":
            return self._softmax(op, env)
        if k == "where":
            return self._where(op, env, out_dims)
        if k == "gather":
            return self._gather(op, env, out_dims)
        if k == "reduce":
            return self._reduce(op, env, out_dims)
        if k == "cast":
            x = self.get(op.inputs[0], env)
            dtype = a["dtype"]
            if dtype == "int32" and x.arr.dtype == np.float64:
                near = np.abs(x.arr - np.round(x.arr))
                bad = (near < MARGIN) & (near > 0) & _full_valid(x.valid, x.arr.shape)
                if bad.any():
                    raise IllConditioned(f"cast to int32 of {x.arr[bad][0]!r}, next to an integer")
                return V(np.trunc(x.arr).astype(np.int64), x.dims, x.valid)
            if dtype == "bool":
                return V(x.arr != 0, x.dims, x.valid)
            return V(x.arr.astype(_np_dtype(dtype)), x.dims, x.valid)
        if k == "concat":
            xs = [self.get(t, env) for t in op.inputs]
            rest = tuple(d for d in out_dims if d is not a["out_dim"])
            parts, valids = [], []
            for x, f in zip(xs, a["dims"]):
                arr, valid = aligned(x, rest + (f,))
                shape = [max(n, x.size(d) if d in x.dims else 1) for n, d in zip(arr.shape, rest + (f,))]
                parts.append(np.broadcast_to(arr, shape))
                valids.append(None if valid is None else np.broadcast_to(valid, shape))
            valid = None if all(v is None for v in valids) else np.concatenate(
                [_full_valid(v, p.shape) for v, p in zip(valids, parts)], axis=-1)
            return V(np.concatenate(parts, axis=-1), rest + (a["out_dim"],), valid)
        if k == "split_part":
            whole = op.inputs[0].op
            x = self.get(whole.inputs[0], env)
            dim, part, n = whole.attrs["dim"], whole.attrs["part"], whole.attrs["n"]
            i = x.dims.index(dim)
            size = x.arr.shape[i] // n
            sl = [slice(None)] * x.arr.ndim
            sl[i] = slice(a["index"] * size, (a["index"] + 1) * size)
            dims = x.dims[:i] + (part,) + x.dims[i + 1:]
            return V(x.arr[tuple(sl)], dims, None if x.valid is None else x.valid[tuple(sl)])
        if k == "dot":
            return self._dot(op, env, out_dims)
        if k == "embed":
            w, labels = (self.get(t, env) for t in op.inputs)
            wa = align(w.arr, w.dims, (a["vocab"],) + tuple(d for d in w.dims if d is not a["vocab"]))
            idx = labels.arr.astype(np.int64)
            if (idx < 0).any() or (idx >= wa.shape[0]).any():
                raise ValueError(f"refinterp: embedding label out of range: {idx}")
            emb_dims = tuple(d for d in w.dims if d is not a["vocab"])
            valid = None if labels.valid is None else np.broadcast_to(
                labels.valid.reshape(labels.valid.shape + (1,) * len(emb_dims)), idx.shape + wa.shape[1:])
            return V(wa[idx], labels.dims + emb_dims, valid)
        if k == "choice":
            return self._choice(op, env)
        raise NotImplementedError(f"refinterp: op kind {k!r}")

    def _invalid(self, t, run, out_dims) -> V:
        """A value nobody may compare (``last`` of a loop that ran no step), shaped like ``t``."""
        if run.iters:
            v = self.get(t, run.iters[0])
            return V(np.zeros_like(v.arr), v.dims, np.zeros(v.arr.shape, bool))
        dims = out_dims or tuple(d for d in sorted_dims(t.dims) if d is not batch_dim)
        shape = [d.size or 1 for d in dims]
        return V(np.zeros(shape, _np_dtype(t.dtype)), dims, np.zeros(shape, bool))

    def _state_entry(self, op, env: Env, out_dims) -> V:
        state = op.attrs["state"]
        scope = op.scope
        if scope.parent is None:  # the top level: the State's initial value
            init = state.initial
            shape = [d.size for d in out_dims]
            if isinstance(init, rd.Tensor):
                x = self.get(init, env)
                arr, valid = aligned(x, out_dims)
                arr = np.broadcast_to(arr, shape).astype(_np_dtype(state.dtype))
                return V(arr, out_dims, None if valid is None else np.broadcast_to(valid, shape))
            return V(np.full(shape, init, dtype=_np_dtype(state.dtype)), out_dims)
        loop = scope
        if state in loop.assigned:
            if env.t == 0:
                return self.get(loop.init[state], env.parent)
            return self.get(loop.assigned[state], env.prev)
        return self.get(loop.entry_source[state], env.parent)

    # --- loops ---
    def run_loop(self, loop, env: Env) -> LoopRun:
        """Run ``loop`` (a child of env's scope) for this sequence, once per instance of env."""
        run = env.runs.get(loop)
        if run is not None:
            return run
        frames = None
        if loop.unstacked:
            u = loop.unstacked[0].op
            x = self.get(u.inputs[0], env)
            i = x.dims.index(u.attrs["axis"])
            if x.valid is None:
                frames = x.arr.shape[i]
            else:  # a ragged stack: the frames valid anywhere
                other = tuple(j for j in range(x.arr.ndim) if j != i)
                frames = int(np.any(x.valid, axis=other).sum())
        bound = loop.max_seq_len
        if isinstance(bound, rd.Tensor):
            bound = int(self.get(bound, env).arr)
        forced = self.ref._forced_len(loop, self.b)
        if forced is not None:  # teacher forcing: as many steps as the reference labels
            frames, bound = forced, None
        iters, prev, t, n = [], None, 0, None
        while True:
            if (frames is not None and t >= frames) or (bound is not None and t >= bound):
                n = t
                break
            it = Env(loop, env, t, prev)
            iters.append(it)
            for op in loop.ops:
                self.get(op.out, it)
            if loop.end_cond is not None and forced is None:
                if bool(self.get(loop.end_cond, it).arr):
                    n = t + 1 if loop.include_eos else t
                    break
            prev, t = it, t + 1
        run = LoopRun(loop, n, iters)
        env.runs[loop] = run
        return run

    def shared_iters(self, loop, env: Env) -> list:
        """The iterations of ``loop`` (in env) as a value shared by the batch sees them: every step the loop ran for
        any sequence (a top-level loop: its longest sequence's steps; a loop over a static dim: its size). Values
        are computed on demand, so the steps after this sequence's own end compute only what is asked for."""
        key = (loop, "shared")
        if key in env.runs:
            return env.runs[key]
        if loop.unstacked and loop.axis.size is not None and loop.end_cond is None:
            total, base = loop.axis.size, []
        elif loop.parent is self.ref.graph.top:
            total = max(s.run_loop(loop, s.top).n for s in self.ref.seqs)
            base = self.run_loop(loop, env).iters
        else:  # (the language refuses a shared State assigned here: its steps differ per sequence)
            run = self.run_loop(loop, env)
            total, base = run.n, run.iters
        iters = list(base[:total])
        prev = iters[-1] if iters else None
        for t in range(len(iters), total):
            prev = Env(loop, env, t, prev)
            iters.append(prev)
        env.runs[key] = iters
        return iters

    def steps(self, x, chain, env: Env) -> V | None:
        """``x`` at every step of the loops ``chain`` (outermost first), as stacked V (None: no step)."""
        loop = chain[0]
        run = self.run_loop(loop, env)
        if batch_dim not in x.dims:  # shared by the batch: every step the loops ran
            iters = self.shared_iters(loop, env)
            run = LoopRun(loop, len(iters), iters)
        frames = []
        for i in range(run.n):
            if len(chain) == 1:
                frames.append(self.get(x, run.iters[i]))
            else:
                inner = self.steps(x, chain[1:], run.iters[i])
                if inner is None:
                    continue
                frames.append(inner)
        if len(frames) < run.n:  # some outer step ran no inner step: pad those steps as invalid
            return self._steps_padded(x, chain, run)
        return stack_values(frames, loop.axis)

    def _steps_padded(self, x, chain, run):
        frames = []
        template = None
        for i in range(run.n):
            inner = self.steps(x, chain[1:], run.iters[i])
            frames.append(inner)
            if inner is not None:
                template = inner
        if template is None:
            return None
        frames = [f if f is not None else V(template.arr[:0], template.dims) for f in frames]
        return stack_values(frames, chain[0].axis)

    # --- ops ---
    def _binary(self, op, env, out_dims) -> V:
        k, a = op.kind, op.attrs
        x = self.get(op.inputs[0], env)
        xa, xv = aligned(x, out_dims)
        if len(op.inputs) == 2:
            y = self.get(op.inputs[1], env)
            ya, yv = aligned(y, out_dims)
        else:
            ya, yv = np.asarray(a["scalar"]), None
            if a.get("scalar_first"):
                xa, ya = ya, xa
                xv, yv = yv, xv
        valid = _and(xv, yv)
        if valid is not None:
            valid = np.broadcast_to(valid, np.broadcast_shapes(np.shape(xa), np.shape(ya), valid.shape))
        if k in ("less", "less_equal", "greater", "greater_equal", "equal", "not_equal"):
            if op.inputs[0].dtype == "float32":
                _check_margin(xa, ya, valid)
        with np.errstate(all="ignore"):
            if k == "add":
                r = xa + ya
            elif k == "sub":
                r = xa - ya
            elif k == "mul":
                r = xa * ya
            elif k == "truediv":
                r = np.true_divide(xa, ya)
                if op.out.dtype == "int32":
                    raise NotImplementedError("refinterp: int32 truediv")
            elif k == "equal":
                r = xa == ya
            elif k == "not_equal":
                r = xa != ya
            elif k == "less":
                r = xa < ya
            elif k == "less_equal":
                r = xa <= ya
            elif k == "greater":
                r = xa > ya
            elif k == "greater_equal":
                r = xa >= ya
            elif k == "logical_and":
                r = np.logical_and(xa, ya)
            else:
                r = np.logical_or(xa, ya)
        r = np.asarray(r, dtype=_np_dtype(op.out.dtype))
        shape = np.broadcast_shapes(np.shape(xa), np.shape(ya))
        return V(np.broadcast_to(r, shape).copy(), out_dims, valid)

    def _softmax(self, op, env) -> V:
        x = self.get(op.inputs[0], env)
        dim = op.attrs["dim"]
        i = x.dims.index(dim)
        m = _full_valid(x.valid, x.arr.shape)
        arr = np.where(m, x.arr, -np.inf)
        mx = np.max(arr, axis=i, keepdims=True)
        mx = np.where(np.isfinite(mx), mx, 0.0)
        e = np.where(m, np.exp(arr - mx), 0.0)
        s = e.sum(axis=i, keepdims=True)
        with np.errstate(all="ignore"):
            if op.attrs["log"]:
                r = arr - mx - np.log(s)
            else:
                r = e / s
        return V(r, x.dims, x.valid)

    def _where(self, op, env, out_dims) -> V:
        a = op.attrs
        ins = [self.get(t, env) for t in op.inputs]
        cond = ins[0]
        rest = iter(ins[1:])
        tv = next(rest) if a["true_value"] is None else None
        fv = next(rest) if a["false_value"] is None else None
        ca, cv = aligned(cond, out_dims)
        dtype = _np_dtype(op.out.dtype)
        if tv is None:
            ta, tvv = np.asarray(a["true_value"], dtype), None
        else:
            ta, tvv = aligned(tv, out_dims)
        if fv is None:
            fa, fvv = np.asarray(a["false_value"], dtype), None
        else:
            fa, fvv = aligned(fv, out_dims)
        r = np.where(ca, ta, fa).astype(dtype)
        shape = np.broadcast_shapes(ca.shape, np.shape(ta), np.shape(fa))
        valid = _and(cv, tvv, fvv)
        return V(np.broadcast_to(r, shape).copy(), out_dims,
                 None if valid is None else np.broadcast_to(valid, shape))

    def _gather(self, op, env, out_dims) -> V:
        x, idx = (self.get(t, env) for t in op.inputs)
        dim = op.attrs["dim"]
        xa, xv = aligned(x, out_dims + (dim,))
        ia, iv = aligned(idx, out_dims)
        # the valid range: 0..size-1, for a dynamic dim (a ragged stack) the valid frames there
        if xv is None:
            n = np.asarray(xa.shape[-1])
        else:
            n = xv.sum(axis=-1)
        ic = np.clip(ia, 0, np.maximum(n - 1, 0))
        shape = np.broadcast_shapes(xa.shape[:-1], ic.shape)
        xb = np.broadcast_to(xa, shape + (xa.shape[-1],))
        ib = np.broadcast_to(ic, shape)[..., None].astype(np.int64)
        r = np.take_along_axis(xb, ib, axis=-1)[..., 0]
        valid = None
        if xv is not None:
            valid = np.take_along_axis(np.broadcast_to(xv, shape + (xv.shape[-1],)), ib, axis=-1)[..., 0]
        valid = _and(valid, None if iv is None else np.broadcast_to(iv, shape))
        return V(r.copy(), out_dims, valid)

    def _reduce(self, op, env, out_dims) -> V:
        x = self.get(op.inputs[0], env)
        mode, dim = op.attrs["mode"], op.attrs["dim"]
        xa, xv = aligned(x, out_dims + (dim,))
        m = _full_valid(xv, xa.shape)
        count = m.sum(axis=-1)
        if mode == "sum":
            r = np.where(m, xa, 0).sum(axis=-1)
        elif mode == "mean":
            with np.errstate(all="ignore"):
                r = np.where(m, xa, 0).sum(axis=-1) / count
        elif mode == "max":
            fill = -np.inf if xa.dtype == np.float64 else np.iinfo(np.int64).min
            r = np.where(m, xa, fill).max(axis=-1)
        elif mode == "min":
            fill = np.inf if xa.dtype == np.float64 else np.iinfo(np.int64).max
            r = np.where(m, xa, fill).min(axis=-1)
        else:
            raise NotImplementedError(f"refinterp: reduce mode {mode!r}")
        r = np.asarray(r).astype(_np_dtype(op.out.dtype)) if op.out.dtype != "float32" else np.asarray(r, float)
        return V(r, out_dims, count > 0)

    def _dot(self, op, env, out_dims) -> V:
        x, w = (self.get(t, env) for t in op.inputs)
        rx, rw = op.attrs["reduce"]
        letters = {}

        def sub(dims, contracted):
            s = ""
            for d in dims:
                key = "R" if d is contracted else d
                if key not in letters:
                    letters[key] = chr(ord("a") + len(letters))
                s += letters[key]
            return s

        sx, sw = sub(x.dims, rx), sub(w.dims, rw)
        so = "".join(letters[d] for d in out_dims)
        r = np.einsum(f"{sx},{sw}->{so}", x.arr.astype(np.float64), w.arr.astype(np.float64))
        valid = None
        if x.valid is not None:  # an output entry is valid where its whole contracted row is
            xv = align(x.valid, x.dims, tuple(d for d in x.dims if d is not rx) + (rx,)).all(axis=-1)
            rest = tuple(d for d in x.dims if d is not rx)
            valid = np.broadcast_to(align(xv, rest, out_dims), r.shape)
        return V(r, out_dims, valid)

    def _choice(self, op, env) -> V:
        a = op.attrs
        vocab = a["vocab"]
        forced = self.ref._forced_labels(op.out, self.b)
        if forced is not None:
            return V(np.array(forced[env.t], np.int64), ())
        if not self.ref.search:
            raise ValueError("refinterp: rd.choice needs search=True or targets (teacher forcing)")
        if a["beam_size"] != 1:
            raise NotImplementedError("refinterp: only beam_size 1 (greedy) is interpreted")
        x = self.get(op.inputs[0], env)
        scores = align(x.arr, x.dims, (vocab,)).astype(np.float64)
        if a["input_type"] == "logits":
            s = scores - scores.max()
            scores = s - np.log(np.exp(s).sum())
        elif a["input_type"] == "prob":
            with np.errstate(divide="ignore"):
                scores = np.log(scores)
        order = np.argsort(-scores, kind="stable")
        if len(order) > 1:
            best, second = scores[order[0]], scores[order[1]]
            if best - second < MARGIN * (1 + abs(best)):
                raise IllConditioned(f"rd.choice between nearly equal scores {best!r}, {second!r}")
        return V(np.array(int(order[0]), np.int64), ())


class Reference:
    """The interpreted values of a graph for a batch of sequences."""

    def __init__(self, g, inputs: dict, seq_lens: dict, params: dict, targets=None, search=True, target_lens=None):
        if g.scope is not g.top:
            raise ValueError("refinterp: the graph still has an open loop")
        self.graph = g
        self.params = {k: np.asarray(v) for k, v in (params or {}).items()}
        self.targets = dict(targets or {})
        self.target_lens = {y: np.asarray(n) for y, n in (target_lens or {}).items()}
        self.search = search
        self.inputs = {}
        self.seq_lens = {}
        batch = None
        for name, inp in g.inputs.items():
            arr = np.asarray(inputs[name])
            self.inputs[name] = arr
            if batch_dim in inp.order:
                batch = arr.shape[inp.order.index(batch_dim)]
        self.batch = 1 if batch is None else batch
        for name, inp in g.inputs.items():
            arr = self.inputs[name]
            for d, n in zip(inp.order, arr.shape):
                if d.is_dynamic:
                    lens = seq_lens.get(d)
                    lens = np.full(self.batch, n) if lens is None else np.asarray(lens)
                    self.seq_lens[d] = lens.astype(np.int64)
        self.seqs = [_Seq(self, b) for b in range(self.batch)]

    # --- inputs ---
    def _input(self, inp, b) -> V:
        arr = self.inputs[inp.input_name]
        dims = list(inp.order)
        if batch_dim in dims:
            i = dims.index(batch_dim)
            arr = np.take(arr, b, axis=i)
            dims.pop(i)
        for i, d in enumerate(dims):
            if d.is_dynamic:
                sl = [slice(None)] * arr.ndim
                sl[i] = slice(0, int(self.seq_lens[d][b]))
                arr = arr[tuple(sl)]
        return V(np.asarray(arr).astype(_np_dtype(inp.dtype)), dims)

    def _forced_labels(self, y, b):
        if y not in self.targets:
            return None
        return np.asarray(self.targets[y])[b]

    def _forced_len(self, loop, b):
        """With teacher forcing, a loop with an rd.choice runs as many steps as the sequence's reference labels."""
        for y in self.targets:
            if y.scope is loop:
                lens = self.target_lens.get(y)
                return int(np.asarray(self.targets[y]).shape[1] if lens is None else lens[b])
        return None

    # --- results ---
    def _assemble(self, per_seq, dims, order, dtype):
        """Per-sequence V (None: nothing) -> (array in ``order``, valid mask), padding filled."""
        order = tuple(order)
        inner = tuple(d for d in order if d is not batch_dim)
        has_batch = batch_dim in order
        seqs = per_seq if has_batch else per_seq[:1]
        sizes = []
        for d in inner:
            sizes.append(max([v.size(d) for v in seqs if v is not None] + [0 if d.is_dynamic else (d.size or 0)]))
        np_dtype = _np_dtype(dtype)
        out = np.zeros([len(seqs)] + sizes, dtype=np_dtype)
        if np_dtype == np.float64:
            out[...] = np.nan
        valid = np.zeros(out.shape, bool)
        for b, v in enumerate(seqs):
            if v is None:
                continue
            arr, vv = aligned(v, inner)
            sl = (b,) + tuple(slice(0, n) for n in arr.shape)
            out[sl] = arr
            valid[sl] = _full_valid(vv, arr.shape)
        if has_batch:
            perm = [([batch_dim] + list(inner)).index(d) for d in order]
            return out.transpose(perm), valid.transpose(perm)
        return out[0], valid[0]

    @staticmethod
    def _order(x_dims, order):
        order = tuple(order) if order is not None else sorted_dims(x_dims)
        if set(order) != set(x_dims) or len(order) != len(x_dims):
            raise ValueError(f"refinterp: order {order} is not a permutation of {sorted_dims(x_dims)}")
        return order

    def value_and_mask(self, t, order=None):
        if t.scope is not self.graph.top:
            raise ValueError(f"refinterp: {t!r} is inside a loop; use steps()")
        order = self._order(t.dims, order)
        per_seq = [s.get(t, s.top) for s in self.seqs]
        return self._assemble(per_seq, t.dims, order, t.dtype)

    def value(self, t, order=None):
        """A top-level Tensor's value (padding: NaN for floats, 0 otherwise)."""
        return self.value_and_mask(t, order)[0]

    def mask(self, t, order=None):
        return self.value_and_mask(t, order)[1]

    def state_loop(self, state):
        """The loop whose per-step values of ``state`` a trace shows: the last (post-order) loop assigning it."""
        found = []

        def visit(scope):
            for child in scope.children:
                visit(child)
                if state in child.assigned:
                    found.append(child)

        visit(self.graph.top)
        if not found:
            raise ValueError(f"refinterp: {state!r} is assigned in no loop")
        return found[-1]

    def steps_and_mask(self, x, order=None, loop=None):
        """Per step of the loops around ``x`` (a State: its value assigned in iteration t, in ``loop``, default
        ``state_loop(x)``; an in-loop Tensor): the loop axes are more dims (outermost loop's first)."""
        if isinstance(x, rd.State):
            loop = loop or self.state_loop(x)
            t, dims, dtype = loop.assigned[x], x.dims, x.dtype
            scope = loop
        else:
            t, dims, dtype, scope = x, x.dims, x.dtype, x.scope
        chain = [s for s in scope.ancestors() if s.is_loop][::-1]
        if not chain:
            raise ValueError(f"refinterp: {x!r} is not inside a loop")
        all_dims = frozenset(dims) | {lp.axis for lp in chain}
        order = self._order(all_dims, order)
        per_seq = [s.steps(t, chain, s.top) for s in self.seqs]
        return self._assemble(per_seq, all_dims, order, dtype)

    def steps(self, x, order=None, loop=None):
        return self.steps_and_mask(x, order, loop)[0]

    def lens(self, axis):
        """Per-sequence number of steps of the loop whose axis is ``axis`` (nested: [batch, outer steps])."""
        loop = next((lp for lp in self.graph.loops if lp.axis is axis), None)
        if loop is None:
            if axis in self.seq_lens:
                return self.seq_lens[axis]
            raise ValueError(f"refinterp: {axis!r} is no loop's axis")
        chain = [s for s in loop.ancestors() if s.is_loop][::-1]
        out = []
        for s in self.seqs:
            out.append(self._lens_in(s, chain, s.top))
        if len(chain) == 1:
            return np.array(out, dtype=np.int64)
        width = max((len(o) for o in out), default=0)
        arr = np.zeros((len(out), width), np.int64)
        for b, o in enumerate(out):
            arr[b, :len(o)] = o
        return arr

    def _lens_in(self, s, chain, env):
        run = s.run_loop(chain[0], env)
        if len(chain) == 1:
            return run.n
        return [self._lens_in(s, chain[1:], run.iters[i]) for i in range(run.n)]


def interpret(g, inputs: dict, seq_lens: dict | None = None, params: dict | None = None, targets=None,
              search: bool = True, target_lens: dict | None = None) -> Reference:
    """Interpret ``g`` for a batch of sequences. ``inputs``: {name: array in the Input's own axis order};
    ``seq_lens``: {Dim: lengths} (default: the full axis); ``params``: {parameter path: array (Parameter.dims
    order)}; ``targets``: {rd.choice output: int array [batch, steps]} for teacher forcing (``target_lens``: their
    lengths), else every rd.choice is greedy (beam size 1)."""
    return Reference(g, inputs, seq_lens or {}, params or {}, targets=targets, search=search, target_lens=target_lens)


def param_shapes(g) -> dict:
    """{parameter path: shape} of every parameter the graph uses."""
    out = {}
    for t in g.params.values():
        p = t.op.attrs["param"]
        out[p.path(g)] = tuple(d.size for d in p.dims)
    return out


__all__ = ["interpret", "Reference", "IllConditioned", "param_shapes", "MARGIN"]
