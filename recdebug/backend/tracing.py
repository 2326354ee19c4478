"""Tracing a build of the language's net: one run of the real rec layers that records every step of the captured
in-loop layers (every hypothesis of a search), read back into a ``Trace`` in the user's dims and names."""
from __future__ import annotations

import fnmatch
from typing import TYPE_CHECKING

import numpy as np

from ..emission.netdict import derived_from
from ..language.errors import RecDebugError, RunError
from .feeding import _batch, _batch_size
from .recording import best_lengths, moved_out, search_steps

if TYPE_CHECKING:
    from ..records.trace import Trace

DEFAULT_TRACE_BYTES = 2 * 1024**3


class Tracing:
    """Mixed into the Engine: ``trace`` and what it reads of RETURNN's rec layers."""

    def trace(self, inputs: dict, seq_lens: dict, max_bytes: int | None, targets=None, with_result=False):
        """The Trace; ``with_result``: (the Trace, the run's Result), both from one session call (a search: two)."""
        from ..records.trace import DimInfo, Entry, Trace

        em = self.emitted
        fd, lens, arrays = self.feed_dict(inputs, seq_lens)
        self.feed_targets(fd, targets or {}, seq_lens, _batch_size(arrays))
        check_trace_budget(em, fd, lens, arrays, max_bytes)
        plain, plain_dims = {}, {}
        if self.search:
            fetch, dims_of, length_fetch = (dict(x) for x in self._beam_fetches())
            # the loops without a search (an encoder before the decoder) are recorded as without search
            plain, plain_dims, plain_lens = self._fetches(
                {k: v for k, v in em.trace_fetch.items() if k not in fetch}, lens)
            length_fetch.update(plain_lens)
        else:
            fetch, dims_of, length_fetch = self._fetches(em.trace_fetch, lens)
        top = self.top_level(lens, loops=with_result)  # what a run fetches, as a run fetches it
        if self.search:  # RETURNN reads its step accumulators once per run: the raw beams need a run of their own
            values = self.run_session(fetch, feed_dict=fd)
            top_values, top_lens, scores, fetched_lens, plain_values = top.run(
                self, fd, more=({d: p for d, (p, _) in length_fetch.items()}, plain))
            values.update(plain_values)
            dims_of.update(plain_dims)
            extra_values = {}
        else:
            extra = self.extra_trace(fd, lens)
            top_values, top_lens, scores, values, fetched_lens, extra_values = top.run(
                self, fd, more=(fetch, {d: p for d, (p, _) in length_fetch.items()}, extra))
        # (the trace labels loops by what its values' dims give, not by a run's loop lengths)
        length_fetch.update(top.sizes)
        fetched_lens.update({d: top_lens[d] for d in top.sizes})
        top_dims = top.dims
        result = self._result(top_values, top_dims, lens, top_lens, scores, arrays) if with_result else None
        alias = self._label_axes()
        if alias:
            dims_of = {k: tuple(alias.get(d, d) for d in dims) for k, dims in dims_of.items()}
            top_dims = {k: tuple(alias.get(d, d) for d in dims) for k, dims in top_dims.items()}
            length_fetch = {alias.get(d, d): (p, tuple(alias.get(x, x) for x in dims))
                            for d, (p, dims) in length_fetch.items()}
            fetched_lens = {alias.get(d, d): n for d, n in fetched_lens.items()}
            lens = {alias.get(d, d): n for d, n in lens.items()}
        labels: dict = {}

        def label(d):
            if id(d) not in labels:
                base, i = d.name, 2
                taken = {lab for lab, _ in labels.values()}
                lab = base
                while lab in taken:
                    lab, i = f"{base}_{i}", i + 1
                labels[id(d)] = (lab, d)
            return labels[id(d)][0]

        entries, lookup = {}, {}
        axis_of = {loop: loop.axis for loop in em.rec_paths}
        beams = {y.op.attrs["beam"] for y in self.graph.choices}
        for key, arr in values.items():
            kind, own, loops = em.trace_info.get(key, em.trace_info.get(key.rsplit(".", 1)[0], (None, None, None)))
            if kind is None or key.endswith((".scores", ".backpointers")):
                kind = "search"
            dims = dims_of[key]
            if None in dims:
                raise RecDebugError(f"trace: RETURNN returned a dim that recdebug does not know for {key!r}")
            if own is not None and _batch() not in own and _batch() in dims:
                # one value for the batch, recorded per sequence (and hypothesis), the same for each: one of them
                for d in [d for d in dims if d is _batch() or d in beams]:
                    arr = np.take(arr, 0, axis=dims.index(d))
                    dims = tuple(x for x in dims if x is not d)
            arr, dims = _spread_over_steps(arr, dims, loops or (), fetched_lens, lens)
            entries[key] = Entry(key, arr, tuple(label(d) for d in dims), kind,
                                 tuple(label(axis_of[lp]) for lp in loops), _line(em.lines.get(key)))
        entries.update(self.extra_entries(extra_values, label))
        for t, arr in top_values.items():
            key = em.fetch[t]
            entries[key] = Entry(key, arr, tuple(label(d) for d in top_dims[t]), "value", (), _line(em.lines.get(key)))
            lookup[id(t)] = key
        pending = dict(em.trace_derived)
        while pending:  # each derived value once the values it comes from are there
            ready = [(k, how) for k, how in pending.items() if all(src in entries for src in derived_from(how))]
            if not ready:
                raise RecDebugError(f"internal: trace values {sorted(pending)} derive from each other")
            for key, how in ready:
                del pending[key]
                kind, _, loops = em.trace_info[key]
                entries[key] = _derived_entry(key, how, entries, arrays, label, kind,
                                              tuple(label(axis_of[lp]) for lp in loops), _line(em.lines.get(key)))
        for t, path in em.layer_of.items():
            if path in entries:
                lookup[id(t)] = path
        for state, paths in em.state_layers.items():
            if paths[-1] in entries:
                lookup[id(state)] = paths[-1]
        loop_lens = {}
        for loop in em.rec_paths:
            if id(loop.axis) in labels:
                arr = fetched_lens.get(loop.axis, lens.get(loop.axis))
                if arr is None:
                    continue
                lens_dims = length_fetch[loop.axis][1] if loop.axis in length_fetch else (_batch(),)
                loop_lens[label(loop.axis)] = (arr, tuple(label(d) for d in lens_dims))
        for lab, d in list(labels.values()):  # an input's dynamic dim a value has (a State over an encoder's axis)
            if d.is_dynamic and not d.is_batch and lab not in loop_lens and d in lens and np.ndim(lens[d]) == 1:
                loop_lens[lab] = (np.asarray(lens[d]), (label(_batch()),))
        dims = {lab: DimInfo(lab, d.name, d.size, d.is_batch, d.order) for lab, d in labels.values()}
        moved_out, in_loop = self.moved_out()
        trace = Trace(entries, dims, loop_lens, moved_out, in_loop, device=self.device, lookup=lookup,
                      dim_labels={i: lab for i, (lab, _) in labels.items()})
        trace.emitted = em
        trace.after_choice = {key for key in entries if key in em.after_choice}
        if self.search:  # a loop's lengths: those of each sequence's best hypothesis
            for y in self.graph.choices:
                axis = y.scope.axis
                if id(axis) in labels and label(axis) not in trace._lens:
                    trace._lens[label(axis)] = (best_lengths(trace, y), (label(_batch()),))
        return (trace, result) if with_result else trace

    def _label_axes(self) -> dict:
        """Dims RETURNN iterates over in place of a loop's axis -> that axis, so that results and traces read as
        the loop's steps: a static axis' dynamic steps; with teacher forcing, the reference labels' axis."""
        alias = {loop.rec_axis: loop.axis for loop in self.emitted.rec_paths if loop.rec_axis is not loop.axis}
        if not self.search:
            alias.update({y.op.attrs["label_time"]: y.scope.axis for y in self.graph.choices})
        return alias

    def _beam_fetches(self):
        """With search: every step's values of every hypothesis, as RETURNN accumulated them before it resolved
        them to the final best ones: [steps, batch, beam, ...], plus per step the scores and backpointers.
        Built once per engine."""
        if getattr(self, "_beam_cache", None) is not None:
            return self._beam_cache
        em, fetch, dims_of = self.emitted, {}, {}
        with self.tf_graph.as_default():
            for loop, path in em.rec_paths.items():
                choices = [op for op in loop.ops if op.kind == "choice"]
                if not choices or loop.parent is not self.graph.top:
                    continue
                cell = self.network.get_layer(path).cell
                beam = choices[0].attrs["beam"]
                # a layer the same for every hypothesis is read from its copy with the beam
                names = {key: em.beam_alias.get(key, key.rsplit("/", 1)[-1])
                         for key, (_, _, loops) in em.trace_info.items() if loops[-1:] == (loop,)}
                found, dims = search_steps(cell, names, {f"{path}/{y.name}": y.name for y in choices}, beam.size,
                                           em.rd_dim, loop.axis, _batch(), beam)
                fetch.update(found)
                dims_of.update(dims)
        self._beam_cache = (fetch, dims_of, {})
        return self._beam_cache

    def moved_out(self) -> tuple[list, list]:
        """(in-loop layers RETURNN moved out of their loop, layers it kept inside), as layer paths."""
        return moved_out(self.network, set(self.emitted.lines) | set(self.emitted.trace_info))


def _derived_entry(key, how, entries, arrays, label, kind, axes, line):
    """The Entry of a value a trace derives from others (see netdict's ``derived``) instead of recording it."""
    from ..records.trace import Entry, _broadcast_to_dims

    if how[0] == "input":
        arr, order = arrays[how[1]]
        return Entry(key, arr, tuple(label(d) for d in order), kind, axes, line)
    if how[0] == "shifted":
        return _shifted_entry(key, entries[how[1]], how, entries, kind, line)
    if how[0] == "same":
        src = entries[how[1]]
        if src.is_derived:
            return Entry(key, None, src.dims, kind, axes, line, derive=lambda: src.array)
        return Entry(key, src.array, src.dims, kind, axes, line)
    if how[0] == "part":
        src, dim, i, n = entries[how[1]], label(how[2]), how[3], how[4]
        size = how[2].size // n
        index = [slice(None)] * len(src.dims)
        index[src.dims.index(dim)] = slice(i * size, (i + 1) * size)
        dims = tuple(label(how[2].divided(n)) if d == dim else d for d in src.dims)
        if src.is_derived:
            return Entry(key, None, dims, kind, axes, line, derive=lambda: src.array[tuple(index)])
        return Entry(key, src.array[tuple(index)], dims, kind, axes, line)
    a, b = (entries[k] for k in how[2])
    dims = a.dims + tuple(d for d in b.dims if d not in a.dims)
    op = {"add": np.add, "sub": np.subtract, "mul": np.multiply}[how[1]]

    def combine():
        with np.errstate(all="ignore"):  # Inf/NaN come out as TensorFlow made them
            return op(_broadcast_to_dims(a.array, a.dims, dims), _broadcast_to_dims(b.array, b.dims, dims),
                      dtype=np.float32)

    return Entry(key, None, dims, kind, axes, line, derive=combine)


def _shifted_entry(key, state, how, entries, kind, line):
    """A State's value read before its assign: its value one step earlier, the initial value at step 0."""
    from ..records.trace import Entry, _broadcast_to_dims

    _, _, init = how
    axis = state.dims.index(state.loop_axes[0])
    top = entries[init]  # (not the dict of entries: it holds this one, and a cycle would keep the arrays alive)

    def derive():
        values = state.array
        first = np.take(values, [0], axis=axis)
        first = np.broadcast_to(_broadcast_to_dims(top.array, top.dims, state.dims), first.shape)
        rest = np.take(values, np.arange(values.shape[axis] - 1), axis=axis)
        return np.concatenate([first.astype(values.dtype), rest], axis=axis)

    return Entry(key, None, state.dims, kind, state.loop_axes, line, derive=derive)


def _line(line) -> str | None:
    return None if line is None else str(line)


def check_trace_budget(em, fd, lens, arrays, max_bytes):
    """Refuse a trace whose capture would exceed ``max_bytes``, saying how much it needs and how to narrow it."""
    if max_bytes is None:
        return
    batch = _batch_size(arrays)
    sizes = {d: int(v.max()) if len(v) else 0 for d, v in lens.items()}
    per_key = {}
    for key, (kind, dims, loops) in em.trace_info.items():
        n = 1
        for d in set(dims) | {lp.axis for lp in loops}:
            if d.is_batch:
                n *= batch
            elif d.size is not None:
                n *= d.size
            elif d in sizes:
                n *= sizes[d]
            else:
                # a while loop's axis (also an inner loop's, stacked in its outer loop): at most max_seq_len steps
                loop = next((lp for lp in em.rec_paths if lp.axis is d), None)
                bound = getattr(loop, "max_seq_len", None)
                n *= bound if isinstance(bound, int) else max(sizes.values(), default=1)
        per_key[key] = 4 * n
    total = sum(per_key.values())
    if total > max_bytes:
        biggest = sorted(per_key, key=per_key.get, reverse=True)[:3]
        raise RecDebugError(
            f"trace needs about {total / 1e6:.1f} MB for {len(per_key)} in-loop values, over the budget of "
            f"{max_bytes / 1e6:.1f} MB (largest: " + ", ".join(f"{k} {per_key[k] / 1e6:.1f} MB" for k in biggest)
            + ")",
            hint="record fewer layers with capture=['h', 'lstm.*'], or allow more with max_bytes=")





def check_capture(g, patterns) -> None:
    """Every capture pattern matches a layer or State inside a loop (by name, or by path like ``loop/h``)."""
    paths = []
    for loop in g.loops:
        prefix = "/".join(s.name for s in reversed(list(loop.ancestors())) if s.is_loop)
        paths += [f"{prefix}/{name}" for name in [op.name for op in loop.ops] + list(loop.state_layers.values())]
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise RunError(f"capture: expected name patterns (str), got {pattern!r}")
        if not any(fnmatch.fnmatchcase(p, pattern) or fnmatch.fnmatchcase(p.rsplit("/", 1)[-1], pattern)
                   for p in paths):
            shown = ", ".join(paths[:12]) + (", ..." if len(paths) > 12 else "")
            raise RunError(f"capture pattern {pattern!r} matches no layer or State inside a loop; they are: {shown}",
                           hint="a pattern (fnmatch) matches a layer's name (h) or its path (loop/h)")


def _spread_over_steps(arr, dims: tuple, loops, fetched_lens: dict, lens: dict) -> tuple:
    """An in-loop value that is the same at every step (made from values outside its loop only) is computed once
    by RETURNN, without the loop's axis: repeat it over the loop's steps, as the user wrote it."""
    for loop in reversed(tuple(loops)):
        if loop.axis in dims:
            continue
        n = fetched_lens.get(loop.axis, lens.get(loop.axis))
        if n is None:
            continue
        steps = int(np.max(n)) if np.size(n) else 0
        arr = np.repeat(np.expand_dims(arr, 0), steps, axis=0)
        dims = (loop.axis,) + tuple(dims)
    return arr, dims
