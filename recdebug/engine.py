"""Running an emitted net on RETURNN/TensorFlow: one tf.Graph and Session per build, on the chosen device."""
from __future__ import annotations

import io
import os
import zlib

import numpy as np

from . import _tf_env  # noqa: F401  (before TensorFlow is imported)
from .dims import Dim, sorted_dims
from .errors import DimError, RecDebugError, RunError
from .netdict import Emitted, emit

BEHAVIOR_VERSION = 21
_ready = False


def _setup():
    """Process-wide set-up of TensorFlow and RETURNN, once."""
    global _ready
    if _ready:
        return
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")

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


def gpu_available() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


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


class Engine:
    """One build of a graph: RETURNN TFNetwork in its own tf.Graph and Session."""

    def __init__(self, g, optimize: bool, device: str, seed: int):
        _setup()
        import tensorflow as tf
        from returnn.config import Config
        from returnn.tf.network import TFNetwork

        self.graph = g
        self.optimize = optimize
        self.device = device
        self.emitted: Emitted = emit(g, optimize=optimize)
        config = Config({"extern_data": self.emitted.extern_data, "debug_print_layer_output_template": False,
                         "optimize_move_layers_out": optimize})
        self.tf_graph = tf.Graph()
        with self.tf_graph.as_default(), tf.device("/gpu:0" if device == "gpu" else "/cpu:0"):
            self.network = TFNetwork(config=config, train_flag=False, eval_flag=False, search_flag=False)
            self.network.construct_from_dict(self.emitted.net)
            self.session = tf.compat.v1.Session(
                graph=self.tf_graph, config=tf.compat.v1.ConfigProto(allow_soft_placement=True))
            self.network.initialize_params(self.session)
        self.param_vars = {}  # path -> tf.Variable
        for op in g.top.ops:
            if op.kind == "param":
                param = op.attrs["param"]
                self.param_vars[param.path(g)] = (param, self.network.get_layer(op.name).var)
        self.set_params({}, seed)

    def set_params(self, values: dict, seed: int):
        """Load parameter values: given ones by path or Parameter, the rest from the seeded initializer."""
        from .module import Parameter

        by_path = {}
        for key, value in values.items():
            path = key.path(self.graph) if isinstance(key, Parameter) else key
            if path not in self.param_vars:
                raise RunError(f"params: no parameter {path!r}; the graph has {sorted(self.param_vars)}")
            by_path[path] = value
        for path, (param, var) in self.param_vars.items():
            value = by_path.get(path)
            if value is None:
                value = init_value(path, param.dims, param.init, seed)
            value = np.asarray(value, dtype=np.float32)
            expected = tuple(d.size for d in param.dims)
            if value.shape != expected:
                raise RunError(f"params[{path!r}]: shape {value.shape}, expected {expected} "
                               f"(order {tuple(d.name for d in param.dims)})")
            var.load(value, self.session)

    def params(self) -> dict:
        return {path: self.session.run(var) for path, (param, var) in self.param_vars.items()}

    def feed_dict(self, inputs: dict, seq_lens: dict) -> tuple[dict, dict, dict]:
        """(feed_dict, lengths per dynamic dim, fed arrays) with checks that name the input at fault."""
        g, em = self.graph, self.emitted
        unknown = set(inputs) - set(g.inputs)
        if unknown:
            raise RunError(f"unknown input(s) {sorted(unknown)}; the graph's inputs are {sorted(g.inputs)}")
        missing = [n for n in g.inputs if n not in inputs]
        if missing:
            raise RunError(f"missing input(s) {missing}: pass them as run({{name: array}})")
        sizes: dict = {}
        lens: dict = {}
        fd = {}
        arrays = {}
        for name, inp in g.inputs.items():
            value = inputs[name]
            order = inp.order
            if isinstance(value, tuple) and len(value) == 2 and not isinstance(value[0], (int, float)):
                value, order = value
            arr = np.asarray(value)
            if set(order) != set(inp.dims) or len(order) != len(inp.dims):
                raise DimError(f"input {name!r}: order {order} is not a permutation of its dims")
            if arr.ndim != len(order):
                raise RunError(f"input {name!r}: expected {len(order)} axes {tuple(d.name for d in order)}, "
                               f"got shape {arr.shape}")
            for d, n in zip(order, arr.shape):
                if d.size is not None and n != d.size:
                    raise RunError(f"input {name!r}: axis {d.name!r} has size {n}, the dim says {d.size}")
                if d.size is None:
                    if sizes.setdefault(d, n) != n:
                        raise RunError(f"input {name!r}: dim {d.name!r} has size {n} here, {sizes[d]} elsewhere")
            arr = arr.astype(inp.dtype)
            arrays[name] = (arr, tuple(order))
            data = self.network.extern_data.data[name]
            target = [em.rd_dim(t) for t in data.dim_tags]
            fd[data.placeholder] = arr.transpose([list(order).index(d) for d in target])
        for d, n in sizes.items():
            if d.is_batch:
                continue
            given = seq_lens.get(d)
            if given is None:
                given = np.full([sizes[_batch()]], n, dtype=np.int32)
            given = np.asarray(given, dtype=np.int32)
            if given.shape != (sizes[_batch()],):
                raise RunError(f"seq_lens[{d.name!r}]: expected one length per sequence ({sizes[_batch()]}), "
                               f"got shape {given.shape}")
            if given.min() < 1 or given.max() > n:
                raise RunError(f"seq_lens[{d.name!r}]: lengths must be in 1..{n} (the axis size), got {given}")
            lens[d] = given
            fd[em.dims[d].dyn_size_ext.placeholder] = given
        for d in seq_lens:
            if d not in sizes:
                raise RunError(f"seq_lens: {d!r} is not a dynamic dim of any input")
        return fd, lens, arrays

    def run(self, inputs: dict, seq_lens: dict) -> "Result":
        fd, lens, arrays = self.feed_dict(inputs, seq_lens)
        fetch, dims_of = {}, {}
        length_fetch = {}
        for t, name in self.emitted.fetch.items():
            out = self.network.get_layer(name).output
            dims = tuple(self.emitted.rd_dim(d) for d in out.dim_tags)
            fetch[t] = out.placeholder
            dims_of[t] = dims
            for d, rd in zip(out.dim_tags, dims):
                if rd is not None and rd.is_dynamic and rd not in lens and rd not in length_fetch:
                    length_fetch[rd] = d.dyn_size_ext.placeholder
        values, fetched_lens = self.session.run((fetch, length_fetch), feed_dict=fd)
        lens.update(fetched_lens)
        return Result(self.graph, {t: (values[t], dims_of[t]) for t in fetch}, lens, self.params(), arrays,
                      device=self.device)

    def close(self):
        self.session.close()


def _batch():
    from .dims import batch_dim

    return batch_dim


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
        """The value of ``t`` with axes in ``order`` (default: batch, then dims by creation)."""
        from .tensor import Input, Tensor

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
        order = tuple(order) if order is not None else sorted_dims(t.dims)
        if set(order) != set(t.dims) or len(order) != len(t.dims):
            raise DimError(f"order {tuple(d.short() for d in order)} is not a permutation of the dims of {t!r}")
        if None in dims:
            raise RunError(f"{t!r}: RETURNN returned a dim that recdebug does not know: {dims}")
        return arr.transpose([dims.index(d) for d in order])

    def lens(self, dim: Dim) -> np.ndarray:
        """Per-sequence lengths of a dynamic dim (an input's, or a while loop's axis)."""
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


def get_engine(g, optimize: bool, device: str | None, seed: int) -> Engine:
    if g.scope is not g.top:
        raise RunError("the graph still has an open loop: run it after the `with rd.Loop()` block")
    device = resolve_device(device)
    key = (bool(optimize), device, seed, len(g.ops))
    if key not in g._engines:
        g._engines[key] = Engine(g, optimize=bool(optimize), device=device, seed=seed)
    return g._engines[key]


def run_graph(g, inputs: dict, seq_lens: dict, device=None, optimize=True, seed=0, params=None) -> Result:
    engine = get_engine(g, optimize, device, seed)
    engine.set_params(params or {}, seed)
    return engine.run(inputs, seq_lens)
