"""The IPython extension: ``%load_ext recdebug`` registers ``%%recloop``, a thin shell over ``run_recloop``, and
``%recdebug``, a thin shell over ``debug_returnn`` (a RETURNN config's rec layer in the debugger)."""
from __future__ import annotations

import linecache
import os

import numpy as np
from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from .cell import RecloopResult, run_recloop
from ..language.errors import BREAK_FILENAME
from .returnn_debug import RecdebugResult, debug_returnn


def _unquote(text: str) -> str:
    """An option value as typed, without the quotes around it (IPython's argument splitting keeps them)."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def _pairs(items, what: str) -> list[tuple[str, str]]:
    out = []
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise UsageError(f"{what} expects NAME=VAR, got {item!r}")
        out.append((key.strip(), value.strip()))
    return out


class NotebookArguments:
    """What the magics' options name, read from the notebook: a config and its extern data, a checkpoint, arrays,
    a breakpoint's predicate; each wrong one a UsageError naming the option."""

    def _config(self, token: str, extern_data_var: str | None):
        """CONFIG of %recdebug: (a config path or a net dict, the extern_data dict or None)."""
        ns = self.shell.user_ns
        extern_data = None
        if extern_data_var is not None:
            extern_data = self._lookup(extern_data_var, "--extern-data")
            if not isinstance(extern_data, dict):
                raise UsageError(f"--extern-data {extern_data_var}: expected a dict as a RETURNN config's "
                                 f"extern_data, got {type(extern_data).__name__}")
        if token.isidentifier() and token in ns:
            value = ns[token]
            if isinstance(value, dict):
                if extern_data is None and not any(k in value for k in ("extern_data", "num_inputs", "num_outputs")):
                    raise UsageError(f"{token} is a net dict: give its extern data with --extern-data VAR (a dict "
                                     "as a RETURNN config's extern_data, e.g. {'data': {'dim': 9}})")
                return value, extern_data
            if not isinstance(value, (str, os.PathLike)):
                raise UsageError(f"{token} is a {type(value).__name__}: give a RETURNN config file's path or a "
                                 "variable holding a net dict")
            token, var = os.fspath(value), token
        else:
            var = None
        path = os.path.expanduser(token)
        if not os.path.isfile(path):
            also = f" (the value of {var})" if var else \
                f" and no notebook variable {token!r}" if token.isidentifier() else ""
            raise UsageError(f"no config file {path!r}{also}: give the path of a RETURNN config file, or the name "
                             "of a variable holding a net dict")
        return path, extern_data

    @staticmethod
    def _checkpoint(prefix: str) -> str:
        prefix = _unquote(prefix)
        path = os.path.expanduser(prefix)
        path = path[:-len(".index")] if path.endswith(".index") else path
        if not os.path.exists(path + ".index"):
            raise UsageError(f"--checkpoint {prefix}: no RETURNN checkpoint there (expected {path}.index); give "
                             "the prefix RETURNN writes, e.g. model/model.001")
        return path

    def _array(self, var: str, option: str, key: str):
        value = self._lookup(var, option)
        try:
            kind = np.asarray(value).dtype.kind
        except ValueError:  # a ragged list
            kind = "O"
        if kind not in "biuf":
            raise UsageError(f"{option} {key}={var}: {var} is a {type(value).__name__}, not an array of numbers "
                             "(give a numpy array, batch first)")
        return value

    def _lookup(self, name: str, option: str):
        if name not in self.shell.user_ns:
            raise UsageError(f"{option}: no variable {name!r} in the notebook")
        return self.shell.user_ns[name]

    def _predicate(self, expr: str):
        from ..records.protocol import on_nonfinite

        expr = _unquote(expr)
        if expr.lower() in ("nan", "inf", "nonfinite"):
            return on_nonfinite()
        linecache.cache[BREAK_FILENAME] = (len(expr), None, [expr + "\n"], BREAK_FILENAME)  # for its errors
        try:
            predicate = eval(compile(expr, BREAK_FILENAME, "eval"), self.shell.user_ns)
        except Exception as e:
            raise UsageError(f"--break {expr!r}: {type(e).__name__}: {e}") from None
        if not callable(predicate):
            raise UsageError(f"--break {expr!r} is not a predicate (a callable taking the stepper)")
        return predicate


@magics_class
class RecloopMagics(NotebookArguments, Magics):
    def __init__(self, shell):
        super().__init__(shell)
        self._last: RecloopResult | None = None  # closed when the next cell runs, unless stored with -o
        self._last_recdebug: RecdebugResult | None = None  # closed when the next %recdebug runs, unless -o

    @magic_arguments()
    @argument("--feed", action="append", metavar="NAME=VAR",
              help="feed the rd.Input NAME with the numpy array VAR from the notebook (repeatable)")
    @argument("--lens", action="append", metavar="DIM=VAR",
              help="per-sequence lengths VAR for the dynamic rd.Dim DIM, a notebook variable or the dim's name "
                   "(repeatable; default: a fed input's whole axis)")
    @argument("--seed", type=int, default=0,
              help="seed of the parameters and of the random data and lengths for inputs not fed (default 0)")
    @argument("-o", "--out", metavar="NAME",
              help="store the result (net dict, outputs, trace, stepper, widget) as NAME")
    @argument("--device", choices=["cpu", "gpu"], help="where to run (default: the GPU when there is one)")
    @argument("--no-optimize", action="store_true",
              help="keep every layer inside the loop (RETURNN's move-out optimization off)")
    @argument("--compare-optimize", action="store_true",
              help="trace with the optimization on and off and show where they differ")
    @argument("--capture", action="append", metavar="PATTERN",
              help="record only in-loop layers matching PATTERN (fnmatch, repeatable; default: all)")
    @argument("--break", dest="break_", metavar="EXPR",
              help="stop the live stepper where EXPR holds: 'nan', or an expression for a predicate "
                   "(e.g. rd.on_state(h, above=5, below=-5))")
    @argument("--live", action="store_true",
              help="show the debugger on the live stepper (step, edit States, continue) instead of the trace")
    @argument("--search", action="store_true",
              help="rd.choice does beam search (the debugger shows the beams); without it, give --targets")
    @argument("--targets", action="append", metavar="LABEL=VAR",
              help="teacher forcing: reference labels VAR (batch, steps) for the rd.choice named LABEL")
    @argument("--params", metavar="DIR",
              help="use the parameters saved with g.save(DIR) (the newest checkpoint there; also a RETURNN "
                   "checkpoint prefix) instead of the seeded initial ones")
    @argument("--static", action="store_true", help="show a static matplotlib figure instead of widgets")
    @argument("--verbose", action="store_true", help="show full tracebacks, recdebug's and RETURNN's frames too")
    @cell_magic
    def recloop(self, line, cell):
        """Build the cell's Loop/State code on RETURNN, run it, and show the step-by-step debugger.

        The cell body runs in the notebook's namespace inside a fresh rd.Graph; dims, modules and arrays of
        earlier cells are visible, and what the body defines stays for later cells. A fed array has the Input's
        axes in order: batch first, then the dims in the order they were created (rd.Input("x", {batch, time,
        feat}) takes x_np of shape (batch, time, feat)); an array in another order goes with its order,
        ``x_in = (x_np, (time, batch, feat))`` and ``--feed x=x_in``. A fed input's lengths are its whole axis
        unless --lens gives them (as in g.run). Inputs not fed get seeded random data, and dims only they have
        random lengths; the cell's output says what was made up (``res.made_up``).

        Example (x_np: float32 (batch, time, feat); lens_np: int32 (batch,), each sequence's number of frames)::

            %%recloop --feed x=x_np --lens time=lens_np -o res
            x = rd.Input("x", {batch, time, feat})
            h = rd.State({batch, hid})
            with rd.Loop() as loop:
                h.assign(rd.tanh(rd.Linear(hid)(loop.unstack(x)) + h.get()))
                out = loop.stack(h.get())

        ``-o res`` keeps the run in ``res``: ``res.numpy(out, order=(batch, time, hid))``, ``res.lens(time)``,
        ``res.scores(loop)``, ``res.param(p)``, ``res.params()`` (a method, {name: array}, as rd.Result's),
        ``res.result`` (the rd.Result itself), ``res.trace`` (every in-loop value per step), ``res.stepper`` (live
        stepping; None when the loop cannot be stepped), ``res.widget`` (the debugger), ``res.net_dict``,
        ``res.made_up``, ``res.show()``. Without -o the result is closed when the next %%recloop cell runs.
        """
        args = parse_argstring(self.recloop, line)
        ns = self.shell.user_ns
        feed_vars = dict(_pairs(args.feed, "--feed"))
        feeds = {name: self._lookup(var, "--feed") for name, var in feed_vars.items()}
        lens = {}
        for dim_name, var in _pairs(args.lens, "--lens"):
            from ..language.dims import Dim

            dim = ns.get(dim_name)
            if not isinstance(dim, Dim):
                dim = dim_name  # the name of an input's dynamic dim: the cell's graph tells which
            elif not dim.is_dynamic:
                raise UsageError(f"--lens {dim_name}=...: {dim_name} is not a dynamic rd.Dim")
            lens[dim] = self._lookup(var, "--lens")
        targets = {name: self._lookup(var, "--targets") for name, var in _pairs(args.targets, "--targets")}
        predicate = self._predicate(args.break_) if args.break_ else None
        if self._last is not None:
            self._last.close("a later %%recloop cell ran and closed the result it belonged to",
                             "use the stepper of the new run, or keep a run's result open with %%recloop -o NAME",
                             keep_builds=True)
            self._last = None
        if args.out and isinstance(ns.get(args.out), RecloopResult):
            ns[args.out].close(f"%%recloop -o {args.out} ran again and closed the result it belonged to",
                               f"use {args.out}.stepper, the new run's stepper", keep_builds=True)
        result = run_recloop(cell, ns, feeds=feeds, seq_lens=lens, seed=args.seed, device=args.device,
                             optimize=not args.no_optimize, compare_optimize=args.compare_optimize,
                             capture=args.capture, breakpoint=predicate, static=args.static,
                             verbose=args.verbose, search=args.search, targets=targets,
                             live=args.live, options=line.strip(), params=args.params, feed_vars=feed_vars)
        if args.out:
            ns[args.out] = result
        else:
            self._last = result
        result.show()
        if args.static:
            import matplotlib.pyplot as plt

            plt.close(result.figure)

    @magic_arguments()
    @argument("config", metavar="CONFIG",
              help="a RETURNN config file (may be quoted; ~ expanded), or a notebook variable holding a net dict")
    @argument("--checkpoint", metavar="PATH",
              help="the RETURNN checkpoint to load (its prefix, e.g. model.001; default: random initialization)")
    @argument("--extern-data", metavar="VAR",
              help="the extern_data dict (as in a RETURNN config) for a net dict CONFIG")
    @argument("--feed", action="append", metavar="DATA=VAR",
              help="feed the extern data DATA with the numpy array VAR, batch-major (repeatable; extern data not "
                   "fed get seeded random data)")
    @argument("--lens", action="append", metavar="DATA=VAR",
              help="per-sequence lengths VAR of DATA's time axis (repeatable; default: the full padded axis)")
    @argument("--seed", type=int, default=0, help="seed of the random data for extern data not fed (default 0)")
    @argument("-o", "--out", metavar="NAME",
              help="store the result (model, run, trace, stepper, widget) as NAME")
    @argument("--rec", metavar="NAME", help="the rec layer to open (needed when the network has several)")
    @argument("--live", action="store_true",
              help="show the debugger on the live stepper (step, edit States, continue) instead of the trace")
    @argument("--search", action="store_true",
              help="step the beam search of the rec layer's choice layer live (the debugger shows the beams)")
    @argument("--beam", type=int, metavar="N", help="with --search: the beam size (default: the choice layer's)")
    @argument("--device", choices=["cpu", "gpu"], help="where to run (default: the GPU when there is one)")
    @argument("--static", action="store_true", help="show a static matplotlib figure of the trace instead of widgets")
    @argument("--verbose", action="store_true", help="show full tracebacks, recdebug's and RETURNN's frames too")
    @line_magic
    def recdebug(self, line):
        """Load a RETURNN config and its checkpoint, trace its rec layer, and show the step-by-step debugger.

        The config is built as RETURNN builds it (rd.from_returnn); inputs and lengths are given by extern_data
        name, arrays batch-major. Extern data not fed (e.g. the targets of a teacher-forced decoder) get seeded
        random data.

        Example (x_np: float32 (batch, time, 9); lens_np: int32 (batch,), each sequence's number of frames)::

            %recdebug demo-tf-rec-explicit-lstm.config --checkpoint model.001 --feed data=x_np --lens data=lens_np -o res

        A net dict in the notebook works too: ``%recdebug net --extern-data ed`` (ed = {"data": {"dim": 9}}).
        ``--live`` steps the rec layer live; ``--search --beam 4`` steps its beam search.

        ``-o res`` keeps the result in ``res``: ``res.trace`` (``res.trace.numpy("lstm/c")``: every layer of the
        unit at every step), ``res.result`` (the top-level layers, ``res.numpy("output")``, ``res.lens(name)``,
        ``res.outputs``), ``res.stepper`` (live stepping, made on first use), ``res.widget`` (the debugger),
        ``res.model`` (to run, trace or step other inputs), ``res.feeds``, ``res.seq_lens``, ``res.show()``.
        Without -o the result is closed when the next %recdebug line runs.
        """
        args = parse_argstring(self.recdebug, line)
        ns = self.shell.user_ns
        config, extern_data = self._config(_unquote(args.config), args.extern_data)
        checkpoint = self._checkpoint(args.checkpoint) if args.checkpoint else None
        feeds = {key: self._array(var, "--feed", key) for key, var in _pairs(args.feed, "--feed")}
        lens = {key: self._array(var, "--lens", key) for key, var in _pairs(args.lens, "--lens")}
        if args.beam is not None and not args.search:
            raise UsageError("--beam sets the beam of the search: add --search")
        if args.beam is not None and args.beam < 1:
            raise UsageError(f"--beam {args.beam}: the beam size must be at least 1")
        if args.static and (args.live or args.search):
            raise UsageError("--static draws the trace; it cannot step live: drop --live/--search or --static")
        if self._last_recdebug is not None:
            self._last_recdebug.close("a later %recdebug line ran and closed the result it belonged to",
                                      "use the stepper of the new result, or keep a result open with %recdebug -o NAME")
            self._last_recdebug = None
        if args.out and isinstance(ns.get(args.out), RecdebugResult):
            ns[args.out].close(f"%recdebug -o {args.out} ran again and closed the result it belonged to",
                               f"use {args.out}.stepper, the new result's stepper")
        result = debug_returnn(config, checkpoint=checkpoint, extern_data=extern_data, feeds=feeds, seq_lens=lens,
                               rec=args.rec, live=args.live, search=args.search, beam_size=args.beam,
                               device=args.device, static=args.static, seed=args.seed, verbose=args.verbose)
        if args.out:
            ns[args.out] = result
        else:
            self._last_recdebug = result
        result.show()
        if args.static:
            import matplotlib.pyplot as plt

            plt.close(result.figure)


def load_ipython_extension(ip):
    ip.register_magics(RecloopMagics)
