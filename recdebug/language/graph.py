"""The build context: a graph of ops in nested scopes (the top level and each Loop)."""
from __future__ import annotations

import re
import warnings
import weakref

from .dims import dim_named
from .errors import LoopError, RecDebugError, RecDebugWarning, SourceLine, user_line

_graph_stack: list["Graph"] = []


def current_graph(what: str = "this") -> "Graph":
    if not _graph_stack:
        raise RecDebugError(f"{what} needs an open graph: put it inside `with rd.Graph() as g:`")
    return _graph_stack[-1]


class Scope:
    """A place ops live in: the graph's top level, or the body of one Loop."""

    def __init__(self, graph: "Graph", parent: "Scope | None"):
        self.graph = graph
        self.parent = parent
        self.depth = 0 if parent is None else parent.depth + 1
        self.ops: list[Op] = []
        self.children: list = []  # loops directly inside, in order
        self.state_values: dict = {}  # State -> Tensor: its current value in this scope
        self.entries: dict = {}  # State -> Tensor: its value at the start of this scope (lazy)
        self.assigned: dict = {}  # State -> Tensor assigned in this scope (loops: carried over)
        self.assign_lines: dict = {}
        # layer names: nested loop bodies share their outermost loop's names, as RETURNN may move a layer of an
        # inner loop out into the outer one
        self.names: set[str] = parent.names if parent is not None and parent.is_loop else set()

    @property
    def is_loop(self) -> bool:
        return False

    def ancestors(self):
        s = self
        while s is not None:
            yield s
            s = s.parent

    def contains(self, other: "Scope") -> bool:
        """Whether ``other`` is this scope or nested inside it."""
        return any(s is self for s in other.ancestors())

    def unique_name(self, hint: str) -> str:
        base = re.sub(r"[^A-Za-z0-9_.\-]", "_", hint) or "layer"
        if base in ("output", "end", "data") or base.startswith("data"):
            base = base + "_"
        name, i = base, 1
        while name in self.names:
            i += 1
            name = f"{base}_{i}"
        self.names.add(name)
        return name

    def describe(self) -> str:
        return "the top level"


class Op:
    """One operation of the user's graph; becomes one (or a few) RETURNN layers."""

    def __init__(self, kind: str, inputs, scope: Scope, attrs: dict, line: SourceLine | None, name: str):
        self.kind = kind
        self.inputs = tuple(inputs)
        self.scope = scope
        self.attrs = attrs
        self.line = line
        self.name = name
        self.out = None  # the Tensor it produces

    def __repr__(self):
        return f"Op({self.kind!r}, {self.name!r})"


class Graph:
    """The build context (``with rd.Graph() as g:``); runs what was built on RETURNN."""

    def __init__(self):
        self.top = Scope(self, None)
        self.scope = self.top
        self.ops: list[Op] = []
        self.inputs: dict = {}  # name -> Input tensor
        self.loops: list = []
        self.module_paths: dict = {}  # id(module) -> path
        self._module_keep: list = []  # keep modules alive so ids stay unique
        self.module_stack: list[str] = []
        self.params: dict = {}  # path -> Parameter (filled on use)
        self.states: list = []
        self.choices: list = []  # rd.choice outputs (beam search / teacher forcing)
        self._engines: dict = {}
        self.trained_params: dict | None = None  # path -> array, left by train() or load(): used by default
        self.trained_loss = self.trained_optimizer = None  # what train() trained with (save() writes them)
        self._steppers = weakref.WeakSet()  # live steppers (a dropped one frees its build itself)
        self._warned_states: set = set()  # States read in a loop and never assigned, warned about

    def __enter__(self):
        _graph_stack.append(self)
        return self

    def __exit__(self, exc_type, exc, tb):
        self.scope = self.top  # an error inside a loop body leaves no loop open
        _graph_stack.remove(self)
        if exc_type is None:
            self._warn_unassigned_states()
        return False

    def _warn_unassigned_states(self):
        """A State read inside a loop but assigned nowhere keeps its initial value at every step: most likely an
        ``assign`` was forgotten. Warn once per State, at the line that created it."""
        assigned = {s for scope in [self.top, *self.loops] for s in scope.assigned}
        for loop in reversed(self.loops):  # the innermost loop that reads it first
            for state in loop.entries:
                if state in assigned or state in self._warned_states:
                    continue
                self._warned_states.add(state)
                name = state.path(self)
                where = state.line
                warnings.warn_explicit(
                    f"State {name!r} (created at {where}) is read in {loop.describe()} but never assigned: every "
                    f"get() gives its initial value. Assign it in the loop ({name.rsplit('/', 1)[-1]}.assign(...)) "
                    f"to carry a value to the next step, or use a plain value if it is meant to stay constant",
                    RecDebugWarning, where.filename if where else "<recdebug>", where.lineno if where else 0)

    # --- building ---
    def add_op(self, kind: str, inputs, dims, dtype="float32", sparse_dim=None, attrs=None, name=None,
               scope: Scope | None = None, line: SourceLine | None = None, hint: str | None = None):
        """Add one op; ``name`` is used as given, ``hint`` (default: the kind) gets the module path in front."""
        from .tensor import Tensor

        scope = scope or self.scope
        line = line or user_line()
        for t in inputs:
            check_usable(t, scope, line)
        hint = hint or kind
        if name:
            hint = name
        elif self.module_stack:
            hint = self.module_stack[-1].replace("/", ".") + "." + hint
        op = Op(kind, inputs, scope, dict(attrs or {}), line, scope.unique_name(hint))
        scope.ops.append(op)
        self.ops.append(op)
        op.out = Tensor(op, set(dims), dtype=dtype, sparse_dim=sparse_dim)
        return op.out

    def module_path(self, module) -> str:
        return self.module_paths[id(module)]

    def seq_lens_by_dim(self, seq_lens: dict | None) -> dict | None:
        """``seq_lens`` with a dim given by its name (``"time"``) replaced by the inputs' dynamic dim so named."""
        if not seq_lens or not any(isinstance(k, str) for k in seq_lens):
            return seq_lens
        dynamic = {d for inp in self.inputs.values() for d in inp.dims if d.is_dynamic}
        return {dim_named(k, dynamic, "seq_lens (the inputs' dynamic dims)"): v for k, v in seq_lens.items()}

    # --- emitting and running ---
    def net_dict(self, optimize: bool = True) -> dict:
        """The RETURNN net dict this graph becomes."""
        return _backend("emit")(self, optimize=optimize).net

    def emitted(self, optimize: bool = True):
        """The net dict with its maps (tensor -> layer name, layer -> user line)."""
        return _backend("emit")(self, optimize=optimize)

    def run(self, inputs=None, seq_lens=None, device=None, optimize=True, seed=0, params=None, search=False,
            targets=None, train=False):
        """Run the graph on RETURNN; returns an ``rd.Result``.

        ``search``: rd.choice does beam search (the results are the best hypothesis per sequence). Without it,
        every rd.choice takes the reference labels given in ``targets={label_tensor: int array (batch, steps)}``
        (teacher forcing); their lengths go in ``seq_lens`` under ``label_tensor`` too, default the full axis.
        ``train``: RETURNN's train flag (rd.dropout drops values only then); separate from ``search``.
        """
        seq_lens = self.seq_lens_by_dim(seq_lens)
        return _backend("run")(self, inputs or {}, seq_lens or {}, device=device, optimize=optimize, seed=seed,
                               params=params, search=search, targets=targets or {}, train=train)

    def trace(self, inputs=None, seq_lens=None, device=None, optimize=True, seed=0, params=None, capture=None,
              max_bytes=None, search=False, targets=None, train=False, grad_of=None):
        """Run once on RETURNN and record every step of every in-loop layer and State; returns an ``rd.Trace``.

        ``capture``: name patterns (fnmatch, on the layer name or its path like ``loop/h``) to record fewer
        layers. ``max_bytes``: refuse (with a clear error) a trace that would need more memory (default 2 GiB).
        ``grad_of``: a loss after the loop (e.g. ``rd.cross_entropy(logits, labels)``): also record, per step,
        the gradient of its mean over the valid frames with respect to each State's value (``tr.grad(h)``), for the
        States of a loop over an input's axis.
        """
        seq_lens = self.seq_lens_by_dim(seq_lens)
        return _backend("trace")(self, inputs or {}, seq_lens or {}, device=device, optimize=optimize, seed=seed,
                                 params=params, capture=capture, max_bytes=max_bytes, search=search,
                                 targets=targets, train=train, grad_of=grad_of)

    def stepper(self, inputs=None, seq_lens=None, device=None, seed=0, params=None, loop=None, targets=None):
        """Live stepping of a top-level loop (default: the first); returns an ``rd.Stepper`` at t=0.

        A loop with rd.choice steps its beam search; with ``targets={label: array (batch, steps)}`` (and their
        lengths in ``seq_lens={label: lens}``) it takes the reference labels instead (teacher forcing)."""
        seq_lens = self.seq_lens_by_dim(seq_lens)
        return _backend("stepper")(self, inputs or {}, seq_lens, device=device, seed=seed, params=params,
                                   loop=loop, targets=targets)

    def train(self, inputs=None, seq_lens=None, loss=None, steps=100, learning_rate=1e-3, batch_size=32, seed=0,
              optimize=True, device=None, params=None, targets=None, optimizer=None, progress=True):
        """Train the graph's parameters with RETURNN's own trainer; returns an ``rd.History`` (``losses``: the
        mean loss per valid frame of each step).

        ``inputs``/``seq_lens``: the whole training data (as for run); each step takes ``batch_size`` sequences,
        epoch by epoch in an order drawn from ``seed`` (which also draws the initial parameters, unless the graph
        was trained or loaded before, or ``params=`` are given). ``loss``: a float32 value after the loop with the
        batch dim (e.g. ``rd.cross_entropy(logits, labels)``, per frame); padding frames count for nothing.
        ``optimizer``: RETURNN's optimizer options (default ``{"class": "adam"}``). ``targets``: reference labels
        of an rd.choice (teacher forcing), as for run. Ctrl-C stops after the current step and keeps what was
        learned. Afterwards run, trace, stepper and the debugger use the trained parameters."""
        seq_lens = self.seq_lens_by_dim(seq_lens)
        return _backend("train")(self, inputs or {}, seq_lens, loss, steps=steps, learning_rate=learning_rate,
                                 batch_size=batch_size, seed=seed, optimize=optimize, device=device, params=params,
                                 targets=targets, optimizer=optimizer, progress=progress)

    def save(self, path, loss=None, inputs=None, seq_lens=None, learning_rate=1e-3, batch_size=32, optimizer=None):
        """Write ``path/returnn.config`` (RETURNN's config: dims, extern_data, the net dict with its loss layer,
        the optimizer) and ``path/model.001`` (a RETURNN checkpoint of the current parameters: trained, loaded,
        or the seeded initial ones). ``loss``: default the one g.train used. ``inputs``/``seq_lens``: training
        data to store beside it (``train_data.npz``) as the config's ``train`` dataset, so that RETURNN's command
        line trains on with no more arguments (``python -m returnn returnn.config ++num_epochs 2``). Returns the
        config's path."""
        seq_lens = self.seq_lens_by_dim(seq_lens)
        return _backend("save")(self, path, loss=loss, inputs=inputs, seq_lens=seq_lens,
                                learning_rate=learning_rate, batch_size=batch_size, optimizer=optimizer)

    def load(self, path) -> dict:
        """Load the parameters of the newest checkpoint in ``path`` (a g.save directory, RETURNN's command line
        training on in it included, or a checkpoint prefix); run, trace, stepper use them from now on."""
        self.trained_params = _backend("load")(self, path)
        return self.trained_params

    def close(self, keep_builds: bool = False):
        """Free the TensorFlow sessions this graph holds, its steppers' too (they refuse to step after this).
        ``keep_builds``: keep its builds for a graph of the same net to take over (a %%recloop cell run again);
        without it, the builds kept so from other graphs are freed too."""
        for stepper in list(self._steppers):
            stepper.close(why="its graph was closed (g.close())")
        for engine in self._engines.values():
            engine.release() if keep_builds else engine.close()
        self._engines.clear()
        if not keep_builds and "free_spares" in _BACKEND:
            _BACKEND["free_spares"]()

    def __repr__(self):
        return f"Graph({len(self.ops)} ops, {len(self.loops)} loops)"


_BACKEND: dict = {}  # what a Graph's calls run on: filled by the back end when it is imported (recdebug does)


def connect_backend(**calls) -> None:
    """The back end gives the Graph its calls: ``emit`` (graph -> net dict and maps), ``run``, ``trace``,
    ``stepper``, ``train``, ``save``, ``load``. The language itself imports no back end."""
    _BACKEND.update(calls)


def _backend(call: str):
    if call not in _BACKEND:
        raise RecDebugError(f"g.{call}(...) needs recdebug's back end, which is not loaded",
                            hint="import recdebug (import recdebug as rd) before building the graph")
    return _BACKEND[call]


def check_usable(t, scope: Scope, line) -> None:
    """A value can be used in its own scope and in scopes nested inside it, nowhere else."""
    after = t.op.attrs.get("after_loop")
    if after is not None and after.contains(scope):
        raise LoopError(f"{t!r} is the result of {after.describe()} and is only known after that loop",
                        line=line, hint="use the in-loop value inside the loop, the stacked one after it")
    if not t.scope.contains(scope):
        where = t.op.line
        raise LoopError(
            f"{t!r}, computed at line {where.lineno if where else '?'} inside {t.scope.describe()}, "
            f"is used outside that loop",
            line=line,
            hint="use loop.stack(value) or loop.last(value) inside that loop, and use what it returns",
        )
