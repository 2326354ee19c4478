"""The IPython extension: ``%load_ext recdebug`` registers ``%%recloop``, a thin shell over ``run_recloop``."""
from __future__ import annotations

import linecache

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from .cell import RecloopResult, run_recloop
from .errors import BREAK_FILENAME


def _pairs(items, what: str) -> list[tuple[str, str]]:
    out = []
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise UsageError(f"{what} expects NAME=VAR, got {item!r}")
        out.append((key.strip(), value.strip()))
    return out


@magics_class
class RecloopMagics(Magics):
    def __init__(self, shell):
        super().__init__(shell)
        self._last: RecloopResult | None = None  # closed when the next cell runs, unless stored with -o

    @magic_arguments()
    @argument("--feed", action="append", metavar="NAME=VAR",
              help="feed the rd.Input NAME with the numpy array VAR from the notebook (repeatable)")
    @argument("--lens", action="append", metavar="DIM=VAR",
              help="per-sequence lengths VAR for the dynamic rd.Dim DIM (repeatable)")
    @argument("--seed", type=int, default=0,
              help="seed of the parameters and of the random data for inputs not fed (default 0)")
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
                   "(e.g. rd.on_state(h, lambda v: abs(v).max() > 5))")
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
        earlier cells are visible, and what the body defines stays for later cells. Inputs not fed get seeded
        random data. A fed array has the Input's axes in order: batch first, then the dims in the order they were
        created (rd.Input("x", {batch, time, feat}) takes x_np of shape (batch, time, feat)).

        Example (x_np: float32 (batch, time, feat); lens_np: int32 (batch,), each sequence's number of frames)::

            %%recloop --feed x=x_np --lens time=lens_np -o res
            x = rd.Input("x", {batch, time, feat})
            h = rd.State({batch, hid})
            with rd.Loop() as loop:
                h.assign(rd.tanh(rd.Linear(hid)(loop.unstack(x)) + h.get()))
                out = loop.stack(h.get())

        ``-o res`` keeps the run in ``res``: ``res.numpy(out, order=(batch, time, hid))``, ``res.lens(time)``,
        ``res.scores(loop)``, ``res.params()`` (as rd.Result), ``res.result`` (the rd.Result itself),
        ``res.trace`` (every in-loop value per step), ``res.stepper`` (live stepping; None when the loop cannot
        be stepped), ``res.widget`` (the debugger), ``res.net_dict``, ``res.show()``. Without -o the result is
        closed when the next %%recloop cell runs.
        """
        args = parse_argstring(self.recloop, line)
        ns = self.shell.user_ns
        feeds = {name: self._lookup(var, "--feed") for name, var in _pairs(args.feed, "--feed")}
        lens = {}
        for dim_name, var in _pairs(args.lens, "--lens"):
            from .dims import Dim

            dim = self._lookup(dim_name, "--lens")
            if not isinstance(dim, Dim) or not dim.is_dynamic:
                raise UsageError(f"--lens {dim_name}=...: {dim_name} is not a dynamic rd.Dim")
            lens[dim] = self._lookup(var, "--lens")
        targets = {name: self._lookup(var, "--targets") for name, var in _pairs(args.targets, "--targets")}
        predicate = self._predicate(args.break_) if args.break_ else None
        if self._last is not None:
            self._last.close("a later %%recloop cell ran and closed the result it belonged to",
                             "use the stepper of the new run, or keep a run's result open with %%recloop -o NAME")
            self._last = None
        if args.out and isinstance(ns.get(args.out), RecloopResult):
            ns[args.out].close(f"%%recloop -o {args.out} ran again and closed the result it belonged to",
                               f"use {args.out}.stepper, the new run's stepper")
        result = run_recloop(cell, ns, feeds=feeds, seq_lens=lens, seed=args.seed, device=args.device,
                             optimize=not args.no_optimize, compare_optimize=args.compare_optimize,
                             capture=args.capture, breakpoint=predicate, static=args.static,
                             verbose=args.verbose, search=args.search, targets=targets,
                             live=args.live, options=line.strip(), params=args.params)
        if args.out:
            ns[args.out] = result
        else:
            self._last = result
        result.show()
        if args.static:
            import matplotlib.pyplot as plt

            plt.close(result.figure)

    def _lookup(self, name: str, option: str):
        if name not in self.shell.user_ns:
            raise UsageError(f"{option}: no variable {name!r} in the notebook")
        return self.shell.user_ns[name]

    def _predicate(self, expr: str):
        from .stepper import on_nonfinite

        expr = expr.strip()
        if len(expr) >= 2 and expr[0] == expr[-1] and expr[0] in "'\"":
            expr = expr[1:-1]
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


def load_ipython_extension(ip):
    ip.register_magics(RecloopMagics)
