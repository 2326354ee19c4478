"""What ``%%recloop`` does, as a library function: build a graph from Loop/State code, run, trace, step.

``run_recloop(body, namespace, ...)`` works without IPython; the magic (``recdebug.notebook.magics``) only parses
options and shows the result.
"""
from __future__ import annotations

import itertools
import linecache
import sys
import traceback

import numpy as np

from ..backend.engine import trace_graph
from ..backend.feeding import value_and_order
from ..language.errors import BREAK_FILENAME, CELL_PREFIX, FeedError, RecDebugError, RunError, SourceLine, running_cell
from ..language.graph import Graph

_cell_counter = itertools.count(1)
DEFAULT_BATCH = 3
DEFAULT_MAX_LEN = 8


class RecloopError(Exception):
    """An error in a %%recloop cell, shown as a few lines without recdebug's or RETURNN's frames."""

    def __init__(self, lines: list[str], cause: BaseException | None = None, verbose: bool = False):
        super().__init__("\n".join(lines))
        self.lines = lines
        self.cause = cause
        self.verbose = verbose

    def _render_traceback_(self):  # IPython shows this instead of a traceback
        if self.verbose and self.cause is not None:
            return traceback.format_exception(self.cause) + self.lines
        return self.lines


class RecloopResult:
    """Everything one %%recloop run made (``-o NAME`` keeps it): ``.graph``, ``.net_dict``, ``.result`` (the
    run, an rd.Result; ``numpy``, ``lens``, ``scores``, ``param``, ``params`` answer as it does), ``.trace``,
    ``.stepper`` (None when the loop cannot be stepped live; made when first asked for, unless the debugger
    steps it), ``.widget`` (the debugger), ``.outputs``."""

    def __init__(self, graph, result, trace, stepper, widget, other_trace=None, figure=None, feeds=None,
                 seq_lens=None, random_inputs=(), random_lens=(), seed=0):
        """``stepper``: the live stepper, or a function that makes it (returning it and why not, as
        ``_stepper_if_possible``)."""
        self.graph = graph
        self.result = result
        self.trace = trace
        self._stepper = stepper
        self._closed = None  # (why, hint) once closed
        self.why_not_stepped = None
        self.widget = widget
        self.other_trace = other_trace
        self.figure = figure
        self.feeds = feeds or {}
        self.seq_lens = seq_lens or {}
        self.random_inputs = tuple(random_inputs)  # names of the inputs not fed: seeded random data
        self.random_lens = tuple(random_lens)  # dims only those inputs have: seeded random lengths
        self.seed = seed

    @property
    def made_up(self) -> str:
        """What the run made up for want of --feed/--lens: the random inputs and lengths ("" when nothing)."""
        parts = [f"random input {name} (" + ", ".join(f"{d.name} {n}" for d, n in zip(
            self.graph.inputs[name].order, np.shape(self.feeds[name]))) + ")" for name in self.random_inputs]
        parts += [f"random lengths of {d.name} {np.asarray(self.seq_lens[d]).tolist()}" for d in self.random_lens]
        if not parts:
            return ""
        options = [f"--feed {name}=VAR" for name in self.random_inputs]
        options += [f"--lens {d.name}=VAR" for d in self.random_lens]
        return (f"not fed, made up with --seed {self.seed}: {', '.join(parts)} "
                f"(give your own with {' '.join(options)})")

    @property
    def net_dict(self) -> dict:
        return self.graph.net_dict()

    # the run's values, as rd.Result gives them (``-o res`` then ``res.numpy(out, order=...)``)
    def numpy(self, t, order=None) -> np.ndarray:
        """A top-level value of the run as numpy, axes in ``order`` (default: batch, then dims by creation)."""
        return self.result.numpy(t, order)

    def lens(self, dim) -> np.ndarray:
        """The per-sequence lengths of a dynamic dim or of the dim so named (a loop's axis: how many steps each
        sequence ran)."""
        return self.result.lens(dim)

    def scores(self, loop) -> np.ndarray:
        """With --search: the final score of each sequence's best hypothesis."""
        return self.result.scores(loop)

    def param(self, p) -> np.ndarray:
        return self.result.param(p)

    def params(self) -> dict:
        return self.result.params()

    @property
    def outputs(self) -> dict:
        """Top-level values by layer name (numpy, batch first then dims by creation)."""
        return {name: self.result.numpy(t) for t, name in self.graph.emitted().fetch.items()}

    def show(self):
        """Display what was made up for inputs not fed, and the debugger (or the static figure), again."""
        from IPython.display import display

        if self.made_up:
            print(self.made_up)
        display(self.widget if self.widget is not None else self.figure)

    @property
    def stepper(self):
        """The live stepper of the cell's first loop (None when it cannot be stepped), made when first asked for."""
        if callable(self._stepper):
            if self._closed is not None:
                raise RecDebugError(f"this stepper is closed: {self._closed[0]}", hint=self._closed[1])
            self._stepper, self.why_not_stepped = self._stepper()
        return self._stepper

    def close(self, why: str | None = None, hint: str | None = None, keep_builds: bool = False):
        """Free the TensorFlow sessions and the widgets of this run. ``why``, ``hint``: what its stepper says
        when it is used after this. ``keep_builds``: the cell runs again, whose graph may take over the builds."""
        why = why or "its %%recloop result was closed (close())"
        hint = hint or "run the %%recloop cell again and use its result's stepper"
        self._closed = (why, hint)
        if self.widget is not None:
            self.widget.close()
        if self._stepper is not None and not callable(self._stepper):
            self._stepper.close(why, hint)
        self.graph.close(keep_builds=keep_builds)

    def __repr__(self):
        loops = len(self.graph.loops)
        return f"RecloopResult({len(self.graph.ops)} ops, {loops} loop{'s' if loops != 1 else ''}, trace={self.trace!r})"


def cell_filename() -> str:
    return f"{CELL_PREFIX}{next(_cell_counter)}>"


def default_inputs(graph: Graph, fed: dict, seq_lens: dict, seed: int):
    """Seeded random data for the inputs not fed, and random lengths for the dynamic dims of those only; a fed
    input's lengths default to its whole axis (as in g.run). Returns (feeds, lengths, the names of the inputs made
    up, the dims whose lengths were made up)."""
    rng = np.random.default_rng(seed)
    feeds, lens = dict(fed), dict(seq_lens)
    sizes: dict = {}
    for name, inp in graph.inputs.items():  # sizes already fixed by fed arrays
        if name in fed:
            arr, order = value_and_order(fed[name], inp, seq_lens)
            for d, n in zip(order, arr.shape):
                sizes.setdefault(d, n)
    fed_dims = set(sizes)
    made_up = [name for name in graph.inputs if name not in fed]
    for name in made_up:
        inp = graph.inputs[name]
        shape = []
        for d in inp.order:
            if d not in sizes:
                sizes[d] = DEFAULT_BATCH if d.is_batch else (d.size or DEFAULT_MAX_LEN)
            shape.append(sizes[d])
        if inp.sparse_dim is not None:
            feeds[name] = rng.integers(0, inp.sparse_dim.size, size=shape).astype(inp.dtype)
        else:
            feeds[name] = rng.standard_normal(shape).astype(inp.dtype)
    batch = next((n for d, n in sizes.items() if d.is_batch), DEFAULT_BATCH)
    random_lens = []
    for d, n in sizes.items():
        if not d.is_dynamic or d in lens:
            continue
        if d in fed_dims:
            lens[d] = np.full(batch, n, np.int32)
        else:
            drawn = rng.integers(1, n + 1, size=batch)
            drawn[0] = n  # the first sequence uses the whole axis
            lens[d] = drawn.astype(np.int32)
            random_lens.append(d)
    return feeds, lens, made_up, random_lens


def exec_body(body: str, namespace: dict, filename: str, verbose: bool = False,
              header: str = "%%recloop") -> Graph:
    """Run the cell body in the user's namespace inside a fresh rd.Graph (left closed whatever happens).
    Lines are numbered as in the notebook: line 1 is the ``header`` (the %%recloop line), the body starts on 2."""
    linecache.cache[filename] = (len(body), None, [header + "\n"] + body.splitlines(True), filename)
    code = compile("\n" + body, filename, "exec")
    g = Graph()
    try:
        with g:
            exec(code, namespace)
    except RecDebugError as e:
        raise RecloopError([f"{type(e).__name__}: {e}"], e, verbose) from None
    except Exception as e:
        raise RecloopError(_user_frames(e, filename), e, verbose) from None
    return g


def _user_frames(e: BaseException, filename: str) -> list[str]:
    """The traceback of an error, reduced to the frames in the cell and the --break expression (and the error
    itself)."""
    lines = ["Traceback (cell lines only; --verbose shows all):"]
    for frame in traceback.extract_tb(e.__traceback__):
        if frame.filename == filename:
            lines.append(f"  cell line {frame.lineno}: {frame.line}")
        elif frame.filename == BREAK_FILENAME:
            lines.append(f"  --break {frame.line}")
    lines.append(f"{type(e).__name__}: {e}")
    return lines


def translate_returnn_error(e: BaseException, graph: Graph, verbose: bool) -> RecloopError:
    """A RETURNN/TensorFlow error while building or running, tied to the user's line where the layer is known."""
    text = str(e)
    em = graph.emitted()
    found = None
    for path, line in em.lines.items():
        name = path.rsplit("/", 1)[-1]
        if f"'{name}'" in text or f"/{name}" in text or f"layer {name}" in text:
            if found is None or len(name) > len(found[0].rsplit("/", 1)[-1]):
                found = (path, line)
    last = text.strip().splitlines()[-1] if text.strip() else type(e).__name__
    lines = [f"RETURNN could not build or run the loop: {type(e).__name__}: {last}"]
    if found is not None:
        path, line = found
        lines.append(f"  the layer {path!r} comes from {line}")
    if "dim" in last.lower() or "shape" in last.lower():
        lines.append("  check the dims of the values combined there (rd.Tensor repr shows them)")
    return RecloopError(lines, e, verbose)


def run_recloop(body: str, namespace: dict, feeds: dict | None = None, seq_lens: dict | None = None,
                seed: int = 0, device: str | None = None, optimize: bool = True, compare_optimize: bool = False,
                capture=None, breakpoint=None, static: bool = False, verbose: bool = False,
                show_widget: bool = True, search: bool = False, targets: dict | None = None,
                live: bool = False, options: str = "", params=None, feed_vars: dict | None = None) -> RecloopResult:
    """Build the cell's graph, run it, trace it, make a stepper and the debugger (or a static figure).

    The debugger browses the trace; with ``live`` or a ``breakpoint`` it steps the live stepper instead.
    ``params``: a directory of g.save (or a RETURNN checkpoint prefix) whose parameters the cell's graph uses.
    ``options``: the text after ``%%recloop`` (errors from the options or the fed data name that line);
    ``feed_vars``: {input name: the notebook variable fed to it} (a feed error shows how to feed it another way)."""
    filename = cell_filename()
    header = f"%%recloop {options}".strip()
    g = exec_body(body, namespace, filename, verbose, header)
    try:
        with running_cell(SourceLine(filename, 1, header), sys._getframe()):
            if params is not None:
                g.load(params)
            return _run_cell(g, filename, feeds, seq_lens, seed, device, optimize, compare_optimize, capture,
                             breakpoint, static, verbose, show_widget, search, targets, live, feed_vars or {})
    except BaseException:
        g.close()  # nothing keeps this cell's graph: free its TensorFlow sessions now
        raise


def _run_cell(g, filename, feeds, seq_lens, seed, device, optimize, compare_optimize, capture, breakpoint, static,
              verbose, show_widget, search, targets, live, feed_vars) -> RecloopResult:
    """run_recloop after the body has built the graph ``g``."""
    if not g.loops:
        raise RecloopError(["the cell defines no rd.Loop: there is nothing to step through",
                            "  write `with rd.Loop() as loop:` around the recurrent part"])
    unknown = set(feeds or {}) - set(g.inputs)
    if unknown:
        raise RecloopError([f"--feed names {sorted(unknown)}, but the cell's inputs are {sorted(g.inputs)}"])
    if g.choices and not search and not targets:
        raise RecloopError(["the cell uses rd.choice: run it with --search (beam search), or feed reference labels "
                            "with --targets LABEL=VAR (teacher forcing)"])
    by_name = {}
    for name, value in ({} if search else targets or {}).items():
        found = [y for y in g.choices if name in (y.op.name, y.name)]
        if not found:
            raise RecloopError([f"--targets {name}=...: no rd.choice named {name!r}; the cell's are "
                                f"{[y.op.name for y in g.choices]}"])
        by_name[found[0]] = value
    targets = by_name
    try:
        seq_lens = g.seq_lens_by_dim(seq_lens) or {}
        all_feeds, lens, random_inputs, random_lens = default_inputs(g, feeds or {}, seq_lens, seed)
        # the run's values come with the trace: one build, one session call
        trace, result = trace_graph(g, all_feeds, g.seq_lens_by_dim(lens), device=device, optimize=optimize,
                                    seed=seed, capture=capture, search=search, targets=targets, with_result=True)
        other = None
        if compare_optimize:
            other = g.trace(all_feeds, seq_lens=lens, device=device, optimize=not optimize, seed=seed,
                            capture=capture)
        stepper, why_not = None, None
        if breakpoint is not None or live:  # the debugger steps it; else it is made when first asked for
            stepper, why_not = _stepper_if_possible(g, all_feeds, lens, device, seed, targets)
    except FeedError as e:
        raise RecloopError(_feed_error_lines(e, feed_vars), e, verbose) from None
    except RecDebugError as e:
        raise RecloopError([f"{type(e).__name__}: {e}"], e, verbose) from None
    except Exception as e:  # RETURNN or TensorFlow
        raise translate_returnn_error(e, g, verbose) from None
    widget = figure = None
    if (breakpoint is not None or live) and stepper is None:
        option = "--break" if breakpoint is not None else "--live"
        raise RecloopError([f"{option} needs a stepper, and this loop cannot be stepped live: {why_not}"])
    if static:
        figure = trace.plot()
    elif show_widget:
        from ..views.widgets import debugger

        if breakpoint is not None or live:
            widget = debugger(stepper)
            if breakpoint is not None:
                try:
                    widget.run(breakpoint)
                except BaseException as e:
                    widget.close()
                    if not isinstance(e, Exception):  # Ctrl-C
                        raise
                    raise RecloopError([f"the --break predicate failed at t={stepper.t - 1}:"]
                                       + _user_frames(e, filename)[1:], e, verbose) from None
        else:
            widget = debugger(trace, other=other)
    if stepper is None and why_not is None:
        stepper = lambda: _stepper_if_possible(g, all_feeds, lens, device, seed, targets)  # noqa: E731
    return RecloopResult(g, result, trace, stepper, widget, other, figure, all_feeds, lens, random_inputs,
                         random_lens, seed)


def _feed_error_lines(e: FeedError, feed_vars: dict) -> list[str]:
    """A FeedError as the cell shows it: how to feed another order is said with the cell's own --feed."""
    if e.input_name not in feed_vars:
        return [f"{type(e).__name__}: {e}"]
    name, var = e.input_name, feed_vars[e.input_name]
    return [f"{type(e).__name__}: {e.message}", f"  at {e.line}",
            f"  feed the array in that order, or give its own order with it: {name}_in = ({var}, {e.order_text}), "
            f"then --feed {name}={name}_in"]


def _stepper_if_possible(g, feeds, lens, device, seed, targets: dict):
    """(the live stepper of the first loop, None) or (None, why it cannot be stepped). ``targets``: the
    reference labels when the cell is teacher-forced (else a loop with rd.choice steps its search)."""
    state_dims = [s.dims for loop in g.top.children for s in loop.state_layers]
    if any(d.is_dynamic for dims in state_dims for d in dims):
        return None, "a State with a dynamic dim"
    try:
        return g.stepper(feeds, seq_lens=lens, device=device, seed=seed, targets=targets or None), None
    except RunError as e:
        if not g.choices:
            raise
        return None, str(e).splitlines()[0]
