"""Running an emitted net on RETURNN/TensorFlow: one tf.Graph and Session per build, on the chosen device."""
from __future__ import annotations


import io
import os
import sys
import threading
import zlib


import numpy as np


from ..emission import _tf_env  # noqa: F401  (before TensorFlow is imported)
from ..language.dims import Dim, dim_named, sorted_dims
from ..language.errors import DimError, RunError, running_cell, user_line
from ..emission.netdict import Emitted, emit
from .build import Build
from .recording import TopLevel, layer_outputs
from .feeding import Feeding, _batch, _batch_size, check_feeds, checked_numbers
from .tracing import DEFAULT_TRACE_BYTES, Tracing, check_capture


BEHAVIOR_VERSION = 21
_ready = False


def _unused_tensor_array_writes(record) -> bool:
    """Logging filter: drop TensorFlow's "Object was never used" report, which a teacher-forced RETURNN rec layer
    triggers (an accumulator it writes and never reads) when its graph is freed, e.g. when a cell is re-run."""
    return "Object was never used" not in record.getMessage()


def _setup():
    """Process-wide set-up of TensorFlow and RETURNN, once."""
    global _ready
    if _ready:
        return
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    tf.get_logger().addFilter(_unused_tensor_array_writes)

    if not tf.config.list_physical_devices("GPU"):
        os.environ.setdefault("DISABLE_CUDA", "1")  # RETURNN would try to compile CUDA ops without a GPU TF
    from returnn.util.basic import BehaviorVersion

    if BehaviorVersion._behavior_version is None:
        BehaviorVersion.set(BEHAVIOR_VERSION)
    from returnn.log import log

    if not log.initialized:
        log.initialize(verbosity=[0])  # RETURNN prints every layer it builds otherwise
    from . import returnn_ext

    returnn_ext.install()
    from returnn.tf.util import basic as tf_util

    # RETURNN sets up TF's thread pools and device list on first use and prints about it; do it quietly here.
    tf_util.setup_tf_thread_pools(log_file=None)
    tf_util.get_tf_list_local_devices(file=io.StringIO())
    _ready = True


_gpu: bool | None = None


def gpu_available() -> bool:
    """Whether TensorFlow sees a GPU (asked once per process: TensorFlow lists its devices slowly)."""
    global _gpu
    if _gpu is None:
        import tensorflow as tf

        _gpu = bool(tf.config.list_physical_devices("GPU"))
    return _gpu


def resolve_device(device: str | None) -> str:
    """``None``: the GPU when TensorFlow sees one, else the CPU; ``"cpu"``/``"gpu"`` force it."""
    if device is None:
        return "gpu" if gpu_available() else "cpu"
    if device not in ("cpu", "gpu"):
        raise RunError(f"device must be None, 'cpu' or 'gpu', got {device!r}")
    if device == "gpu" and not gpu_available():
        raise RunError("device='gpu' asked for, but TensorFlow sees no GPU",
                       hint="install recdebug[gpu] on a machine with a GPU, or use device='cpu'")
    return device


def init_value(path: str, dims, init, seed: int) -> np.ndarray:
    """Deterministic initial parameter values (the same for every build, optimized or not)."""
    shape = tuple(d.size for d in dims)
    if init == "glorot_uniform":
        fan_in = shape[0] if len(shape) > 1 else 1
        fan_out = shape[-1]
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        rng = np.random.default_rng([seed, zlib.crc32(path.encode())])
        return rng.uniform(-limit, limit, size=shape).astype(np.float32)
    return np.full(shape, init, dtype=np.float32)


class Engine(Build, Tracing, Feeding):
    """One build of a graph: RETURNN TFNetwork in its own tf.Graph and Session."""

    def __init__(self, g, optimize: bool, device: str, seed: int, capture=None, search: bool = False,
                 train: bool = False, emitted: Emitted | None = None):
        """``emitted``: the graph's emission with these options, when the caller made it already."""
        _setup()
        self.search, self.train = search, train
        import tensorflow as tf
        from returnn.config import Config
        from returnn.tf.network import TFNetwork

        self.graph = g
        # what makes the build (the seed only gives the parameters' first values: every call sets them)
        self.build_options = dict(optimize=optimize, device=device, capture=capture, search=search, train=train)
        self.optimize = optimize
        self.device = device
        self.capture = capture
        self.emitted: Emitted = emitted if emitted is not None else \
            emit(g, optimize=optimize, capture=capture, search=search, perturb=self.perturb)
        self.returnn_config = config = Config({
            "extern_data": self.emitted.extern_data, "debug_print_layer_output_template": False,
            "optimize_move_layers_out": optimize, **self.config_options()})
        with self.scope():
            net = self.prepare()
            self.network = TFNetwork(config=config, train_flag=self.train_flag(), eval_flag=False,
                                     search_flag=self.search)
            self.network.construct_from_dict(net)
            self.finish()
            self._init_extra = tf.compat.v1.variables_initializer(self.extra_variables)
        self.open()
        self._bind_params(g)
        self.set_params({}, seed)

    def _bind_params(self, g):
        self.param_vars = {}  # path -> (Parameter, tf.Variable)
        self.unbuilt_params = {}  # path -> Parameter: not in this build (a step net has only its loop's)
        for op in g.top.ops:
            if op.kind == "param":
                param = op.attrs["param"]
                layer = self.network.layers.get(op.name)
                if layer is None:
                    self.unbuilt_params[param.path(g)] = param
                else:
                    self.param_vars[param.path(g)] = (param, layer.var)

    def release(self):
        """Its graph is closed: a plain build is kept as a spare that a graph emitting the same net takes over (a
        %%recloop cell run again builds nothing); the oldest spares beyond ``SPARE_BUILDS`` are freed."""
        if type(self) is not Engine or self.session is None:
            self.close()
            return
        if getattr(self, "net_key", None) is None:  # (an adopted build keeps its first emission's)
            self.net_key = _net_key(self.emitted)
        self.graph = None
        _spares.append(self)
        while len(_spares) > SPARE_BUILDS:
            _spares.pop(0).close()

    def adopt(self, g, em: Emitted) -> bool:
        """Take this spare build over for graph ``g`` whose emission ``em`` is the same net as this build's, dim
        for dim: the rd dims of ``g`` then stand for the dims the network was built with. False if it is not."""
        old = self.emitted
        if len(em.dims) != len(old.dims) or _net_key(em) != self.net_key:
            return False
        pairs = list(zip(em.dims, old.dims))
        if any((a.name, a.size, a.is_dynamic, a.is_batch) != (b.name, b.size, b.is_dynamic, b.is_batch)
               for a, b in pairs):
            return False
        em.dims.update({a: old.dims[b] for a, b in pairs})
        self.graph, self.emitted = g, em
        self._bind_params(g)
        return True

    extra_variables: list = []  # TF variables of a subclass, initialized with the network's
    perturb = False  # a subclass' net: every State of a loop over an input plus a perturbation fed as zeros

    def extra_trace(self, fd: dict, lens: dict) -> dict:
        """More tensors a trace fetches (a subclass: gradients), with their feeds added to ``fd``."""
        return {}

    def extra_entries(self, values: dict, label) -> dict:
        """Trace entries made of what extra_trace fetched."""
        return {}

    def train_flag(self):
        """RETURNN's train flag for this build (a subclass may give a tensor, see grads.GradEngine)."""
        return self.train

    def config_options(self) -> dict:
        """More RETURNN config entries for this build (a subclass: the optimizer)."""
        return {}

    def prepare(self) -> dict:
        """The net dict to build (subclasses add TF objects to the graph first)."""
        return self.emitted.net

    def finish(self) -> None:
        """Called after the network is built, inside its graph and device scope."""

    def restore(self):
        self.set_params(*self._loaded)

    def set_params(self, values: dict, seed: int):
        """Load parameter values: given ones by path or Parameter, the rest from the seeded initializer."""
        from ..language.module import Parameter

        self._loaded = (values, seed)
        session = self.live_session()
        by_path = {}
        for key, value in values.items():
            path = key.path(self.graph) if isinstance(key, Parameter) else key
            if path in self.unbuilt_params:
                continue
            if path not in self.param_vars:
                raise RunError(f"params: no parameter {path!r}; the graph has "
                               f"{sorted(set(self.param_vars) | set(self.unbuilt_params))}")
            by_path[path] = value
        for path, (param, var) in self.param_vars.items():
            value = by_path.get(path)
            if value is None:
                value = init_value(path, param.dims, param.init, seed)
            value = checked_numbers(f"params[{path!r}]", value, "float32").astype(np.float32)
            expected = tuple(d.size for d in param.dims)
            if value.shape != expected:
                raise RunError(f"params[{path!r}]: shape {value.shape}, expected {expected} "
                               f"(order {tuple(d.name for d in param.dims)})")
            var.load(value, session)

    def run_session(self, fetches, feed_dict):
        """``session.run`` that Ctrl-C interrupts at once (``Build.run_session``), with TensorFlow's errors about
        the user's data turned into clear ones."""
        import tensorflow as tf

        try:
            return super().run_session(fetches, feed_dict)
        except tf.errors.UnimplementedError as e:
            if "TensorArray has size zero" not in str(e):
                raise
            raise RunError("a while loop ended at step 0 for every sequence of the batch: TensorFlow cannot stack "
                           "the values of a loop that ran no step", line=None,
                           hint="check the loop.end condition, or run a batch in which some sequence takes a step"
                           ) from None

    def params(self) -> dict:
        session = self.live_session()
        return {path: session.run(var) for path, (param, var) in self.param_vars.items()}

    def _fetches(self, layer_names: dict, lens: dict):
        """Output tensors and rd dims of layers, plus the lengths of dynamic dims not fed."""
        fetch, dims_of, sizes = layer_outputs(self.network, layer_names, self.emitted.rd_dim)
        return fetch, dims_of, {d: v for d, v in sizes.items() if self._unfed(d, lens)}

    @staticmethod
    def _unfed(d, lens: dict) -> bool:
        """Whether a run fetches the lengths of ``d``: a dynamic dim of the user's not fed."""
        return d is not None and d.is_dynamic and d not in lens

    def top_level(self, lens: dict, loops: bool = True) -> TopLevel:
        """What a run fetches: every top-level value (a search: its best hypothesis), the lengths of its dynamic dims
        not fed (``lens``) and, with ``loops``, those of every top-level loop (also when nothing is stacked) and a
        searching loop's final scores."""
        em, g = self.emitted, self.graph
        layers = {t: em.decided.get(t, name) if self.search else name for t, name in em.fetch.items()}
        searches = {loop: loop.name for loop in {y.scope for y in g.choices if y.scope.parent is g.top}} \
            if self.search and loops else {}
        top = TopLevel(self.network, layers, em.rd_dim, searches, keep=lambda d: self._unfed(d, lens))
        for loop in g.top.children if loops else ():
            searched = self.search and any(loop.contains(y.scope) for y in g.choices)
            if loop.axis not in lens and loop.axis not in top.sizes and not searched:
                top.more_sizes[loop.axis] = (self.network.get_layer(loop.len_name).output.placeholder, (_batch(),))
        return top

    def run(self, inputs: dict, seq_lens: dict, targets: dict | None = None) -> "Result":
        fd, lens, arrays = self.feed_dict(inputs, seq_lens)
        self.feed_targets(fd, targets or {}, seq_lens, _batch_size(arrays))
        top = self.top_level(lens)
        values, fetched_lens, scores = top.run(self, fd)
        return self._result(values, top.dims, lens, fetched_lens, scores, arrays)

    def _result(self, values: dict, dims_of: dict, lens: dict, fetched_lens: dict, score_values: dict,
                arrays: dict) -> "Result":
        """The run's Result from the fetched top-level values, lengths and search scores."""
        lens = {**lens, **fetched_lens}
        alias = self._label_axes()
        dims_of = {t: tuple(alias.get(d, d) for d in dims) for t, dims in dims_of.items()}
        lens = {alias.get(d, d): n for d, n in lens.items()}
        result = Result(self.graph, {t: (values[t], dims_of[t]) for t in values}, lens, self.params(), arrays,
                        device=self.device)
        result.search_scores = score_values
        return result


class Result:
    """What a run produced: every top-level value, the lengths of dynamic dims, the parameters."""

    def __init__(self, graph, values: dict, lens: dict, params: dict, inputs: dict, device: str):
        self.graph = graph
        self._values = values
        self._lens = lens
        self._params = params
        self._inputs = inputs
        self.device = device

    def numpy(self, t, order=None) -> np.ndarray:
        """The value of ``t`` with axes in ``order`` (default: batch, then dims by creation); dims or their names."""
        from ..language.tensor import Input, Tensor

        if not isinstance(t, Tensor):
            raise RunError(f"Result.numpy expects an rd.Tensor, got {type(t).__name__}")
        if isinstance(t, Input):
            arr, dims = self._inputs[t.input_name]
        elif t in self._values:
            arr, dims = self._values[t]
        elif t.graph is not self.graph:
            raise RunError(f"{t!r} belongs to another graph")
        elif t.scope.parent is not None:
            raise RunError(f"{t!r} is computed inside a loop: run() gives values outside loops only",
                           hint="use loop.stack(value) in the loop, or g.trace(...) for every step")
        else:
            raise RunError(f"{t!r} was not computed by this run")
        order = tuple(dim_named(d, t.dims, f"order of {t!r}") for d in order) if order is not None \
            else sorted_dims(t.dims)
        if set(order) != set(t.dims) or len(order) != len(t.dims):
            raise DimError(f"order {tuple(d.short() for d in order)} is not a permutation of the dims of {t!r}")
        if None in dims:
            raise RunError(f"{t!r}: RETURNN returned a dim that recdebug does not know: {dims}")
        return arr.transpose([dims.index(d) for d in order])

    def scores(self, loop) -> np.ndarray:
        """After ``run(search=True)``: the final log-probability scores [batch, beam] of a loop's hypotheses,
        best first (the outputs are the best hypothesis of each sequence)."""
        if loop not in getattr(self, "search_scores", {}):
            raise RunError(f"no search scores for {loop!r}: run with search=True a top-level loop with rd.choice")
        return self.search_scores[loop]

    def lens(self, dim: Dim | str) -> np.ndarray:
        """Per-sequence lengths of a dynamic dim (an input's, or a while loop's axis), or of the dim so named."""
        dim = dim_named(dim, self._lens, "Result.lens")
        if dim not in self._lens:
            raise RunError(f"no lengths known for {dim!r} in this run")
        return self._lens[dim]

    def param(self, p) -> np.ndarray:
        """A parameter's value, dims in its order (``Linear.weight``: (in, out))."""
        path = p.path(self.graph) if hasattr(p, "path") else p
        return self._params[path]

    def params(self) -> dict:
        """``{name: array}``, names by module hierarchy (``my_rec/x_linear/weight``)."""
        return dict(self._params)

    def __repr__(self):
        return f"Result({len(self._values)} values, device={self.device!r})"


SPARE_BUILDS = 2  # builds of closed graphs kept for a graph that emits the same net
_spares: list = []


def _net_key(em: Emitted) -> str:
    """The net dict and extern data as text, each RETURNN dim named by its place among the emitted dims (two
    emissions of the same code give the same text, though their dims are other objects)."""
    import json

    from returnn.tensor import Dim as ReturnnDim

    place = {id(rdim): i for i, rdim in enumerate(em.dims.values())}

    def plain(x):
        if isinstance(x, dict):
            return {str(k): plain(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        if isinstance(x, ReturnnDim):
            return f"<dim {place[id(x)]}>" if id(x) in place else repr(x)
        return x if isinstance(x, (str, int, float, bool, type(None))) else repr(x)

    return json.dumps([plain(em.net), plain(em.extern_data)], sort_keys=True)


def get_engine(g, optimize: bool, device: str | None, seed: int, capture=None, search: bool = False,
               train: bool = False) -> Engine:
    if g.scope is not g.top:
        raise RunError("the graph still has an open loop: run it after the `with rd.Loop()` block")
    device = resolve_device(device)
    capture_key = capture if capture in (None, "all") else tuple(capture)
    key = (bool(optimize), device, seed, len(g.ops), capture_key, bool(search), bool(train))
    if key not in g._engines:
        options = dict(optimize=bool(optimize), device=device, capture=capture_key, search=bool(search),
                       train=bool(train))
        spare, em = _spare_for(g, options)
        g._engines[key] = spare or build_apart(lambda: Engine(g, seed=seed, emitted=em, **options))
    return g._engines[key]


def free_spares():
    """Free the spare builds (``Engine.release``): a graph closed by the user gives its memory back, all of it."""
    while _spares:
        _spares.pop().close()


def _spare_for(g, options: dict):
    """A spare build (``Engine.release``) of the same net with the same options, taken over for ``g``, or None; and
    the emission it was compared by (for the new build when none fits), or None when there was no spare to compare."""
    fits = [e for e in _spares if e.build_options == options]
    if not fits:
        return None, None
    em = emit(g, optimize=options["optimize"], capture=options["capture"], search=options["search"])
    for engine in fits:
        if engine.adopt(g, em):
            _spares.remove(engine)
            return engine, em
    return None, em


def build_apart(make):
    """``make()``, a build of a TensorFlow graph, run in a helper thread; its result, or its error, comes back.

    TensorFlow keeps for good the Python stacks its ops were built from when code it has not seen before is on
    them. Every run of a notebook cell is new code, so builds called from the cell's stack grew the process with
    every run; the helper's stack holds only recdebug's, RETURNN's and TensorFlow's code. Errors raised there
    name the caller's line."""
    from returnn.config import global_config_ctx

    _setup()  # in the caller's thread: RETURNN turns TensorFlow's eager mode off for the thread it runs in
    line = user_line()
    outcome = {}

    def work():
        try:
            # RETURNN makes each new network's config the global one (and with it that build's graph); the context
            # gives back the global config of before
            with running_cell(line, sys._getframe()), global_config_ctx(None):
                outcome["value"] = make()
        except BaseException as e:  # handed to the caller's thread
            outcome["error"] = e

    worker = threading.Thread(target=work, name="recdebug-build", daemon=True)
    worker.start()
    while worker.is_alive():  # in slices: Ctrl-C reaches the caller (the build finishes unused)
        worker.join(0.05)
    if "error" in outcome:
        raise outcome.pop("error")
    return outcome.pop("value")


def run_graph(g, inputs: dict, seq_lens: dict, device=None, optimize=True, seed=0, params=None, search=False,
              targets=None, train=False) -> Result:
    check_feeds(g, inputs, seq_lens)  # before a build that takes seconds
    engine = get_engine(g, optimize, device, seed, search=search, train=train)
    engine.set_params(default_params(g, params), seed)
    return engine.run(inputs, seq_lens, targets)


def default_params(g, params) -> dict:
    """The parameters a run uses: those given, else the ones g.train or g.load left on the graph, else none (the
    seeded initial values)."""
    if isinstance(params, (str, os.PathLike)):  # a directory of g.save, or a RETURNN checkpoint prefix
        from .checkpoint import load_params

        return load_params(g, params)
    if params is not None:
        return params
    return getattr(g, "trained_params", None) or {}


def trace_graph(g, inputs: dict, seq_lens: dict, device=None, optimize=True, seed=0, params=None, capture=None,
                max_bytes=None, search=False, targets=None, train=False, grad_of=None, with_result=False):
    """One run of the real RecLayer that records every step of the captured in-loop layers (default: all);
    ``grad_of``: a loss whose gradient with respect to each State's value is recorded too, per step;
    ``max_bytes``: default DEFAULT_TRACE_BYTES. ``with_result``: (trace, the run's Result) from the same build and
    session call (not with ``grad_of``)."""
    max_bytes = DEFAULT_TRACE_BYTES if max_bytes is None else max_bytes
    check_feeds(g, inputs, seq_lens)  # before a build that takes seconds
    if grad_of is not None:
        from .grads import grad_trace

        return grad_trace(g, inputs, seq_lens, grad_of, device=device, optimize=optimize, seed=seed,
                          params=default_params(g, params), max_bytes=max_bytes, targets=targets)
    if isinstance(capture, str) and capture != "all":
        capture = [capture]
    if capture not in (None, "all"):
        check_capture(g, capture)
    engine = get_engine(g, optimize, device, seed, capture="all" if capture is None else capture, search=search,
                        train=train)
    engine.set_params(default_params(g, params), seed)
    return engine.trace(inputs, seq_lens, max_bytes, targets, with_result=with_result)
