"""Running an emitted net on RETURNN/TensorFlow: one tf.Graph and Session per build, on the chosen device."""
from __future__ import annotations

import fnmatch
import io
import itertools
import os
import sys
import threading
import zlib

import numpy as np

from ..emission import _tf_env  # noqa: F401  (before TensorFlow is imported)
from ..language.dims import Dim, dim_named, sorted_dims
from ..language.errors import DimError, FeedError, RecDebugError, RunError, running_cell, user_line
from ..emission.netdict import Emitted, derived_from, emit

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


class Engine:
    """One build of a graph: RETURNN TFNetwork in its own tf.Graph and Session."""

    def __init__(self, g, optimize: bool, device: str, seed: int, capture=None, search: bool = False,
                 train: bool = False):
        _setup()
        self.search, self.train = search, train
        import tensorflow as tf
        from returnn.config import Config
        from returnn.tf.network import TFNetwork

        self.graph = g
        self.optimize = optimize
        self.device = device
        self.capture = capture
        self.emitted: Emitted = emit(g, optimize=optimize, capture=capture, search=search, perturb=self.perturb)
        config = Config({"extern_data": self.emitted.extern_data, "debug_print_layer_output_template": False,
                         "optimize_move_layers_out": optimize, **self.config_options()})
        self.tf_graph = tf.Graph()
        with self.tf_graph.as_default(), tf.device("/gpu:0" if device == "gpu" else "/cpu:0"):
            net = self.prepare()
            self.network = TFNetwork(config=config, train_flag=self.train_flag(), eval_flag=False,
                                     search_flag=self.search)
            self.network.construct_from_dict(net)
            self.finish()
            self._init_extra = tf.compat.v1.variables_initializer(self.extra_variables)
        self.session = self._new_session()
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
        self.set_params({}, seed)

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

    def _new_session(self):
        """A session on this build's graph with every variable initialized (parameters: see set_params)."""
        import tensorflow as tf

        session = tf.compat.v1.Session(graph=self.tf_graph,
                                       config=tf.compat.v1.ConfigProto(allow_soft_placement=True))
        with self.tf_graph.as_default(), tf.device("/gpu:0" if self.device == "gpu" else "/cpu:0"):
            self.network.initialize_params(session)
        session.run(self._init_extra)
        return session

    def _open_session(self):
        """The session; after an interrupted call closed it, a fresh one with the last parameters loaded again."""
        if self.session is None:
            self.session = self._new_session()
            self.set_params(*self._loaded)
        return self.session

    def set_params(self, values: dict, seed: int):
        """Load parameter values: given ones by path or Parameter, the rest from the seeded initializer."""
        from ..language.module import Parameter

        self._loaded = (values, seed)
        session = self._open_session()
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
        """``session.run`` that Ctrl-C interrupts at once, with TensorFlow's errors about the user's data turned
        into clear ones."""
        import tensorflow as tf

        try:
            return self._interruptible_run(fetches, feed_dict)
        except tf.errors.UnimplementedError as e:
            if "TensorArray has size zero" not in str(e):
                raise
            raise RunError("a while loop ended at step 0 for every sequence of the batch: TensorFlow cannot stack "
                           "the values of a loop that ran no step", line=None,
                           hint="check the loop.end condition, or run a batch in which some sequence takes a step"
                           ) from None

    def _interruptible_run(self, fetches, feed_dict):
        """``session.run`` in a worker thread, waited for in short slices: Python raises KeyboardInterrupt only
        between its own steps, never inside TensorFlow's call. On Ctrl-C the session is closed, which cancels
        TensorFlow's call (there is no other way to stop it), and the next call opens a fresh session. The
        closing runs in the background: TensorFlow may take a second to reach a point where it can cancel."""
        session = self._open_session()
        outcome = {}

        def work():
            try:
                outcome["value"] = session.run(fetches, feed_dict=feed_dict)
            except BaseException as e:  # handed to the caller's thread
                outcome["error"] = e

        worker = threading.Thread(target=work, name="recdebug-session-run", daemon=True)
        try:
            worker.start()
            while worker.is_alive():
                worker.join(0.05)
        except KeyboardInterrupt:
            self.session = None
            threading.Thread(target=session.close, name="recdebug-session-close", daemon=True).start()
            raise
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]

    def params(self) -> dict:
        session = self._open_session()
        return {path: session.run(var) for path, (param, var) in self.param_vars.items()}

    def feed_targets(self, fd: dict, targets: dict, seq_lens: dict, batch: int) -> None:
        """Teacher forcing: the reference labels of every rd.choice (not used when searching)."""
        if self.search:
            return
        for y in self.graph.choices:
            labels, lens = reference_labels(y, targets, seq_lens, batch)
            a = y.op.attrs
            data = self.network.extern_data.data[a["target_key"]]
            fd[data.placeholder] = labels
            fd[self.emitted.dims[a["label_time"]].dyn_size_ext.placeholder] = lens

    def feed_dict(self, inputs: dict, seq_lens: dict) -> tuple[dict, dict, dict]:
        """(feed_dict, lengths per dynamic dim, fed arrays) with checks that name the input at fault."""
        g, em = self.graph, self.emitted
        checked = check_feeds(g, inputs, seq_lens)
        sizes: dict = {}
        lens: dict = {}
        fd = {}
        arrays = {}
        for name, inp in g.inputs.items():
            arr, order = checked[name]
            for d, n in zip(order, arr.shape):
                if d.size is None:
                    if sizes.setdefault(d, n) != n:
                        raise RunError(f"input {name!r}: dim {d.name!r} has size {n} here, {sizes[d]} elsewhere")
            arrays[name] = (arr.astype(inp.dtype), tuple(order))
        for d, n in sizes.items():
            if d.is_batch:
                continue
            given = seq_lens.get(d)
            if given is None:
                given = np.full([sizes[_batch()]], n, dtype=np.int32)
            given = checked_numbers(f"seq_lens[{d.name!r}]", given, "int32", (_batch(),)).astype(np.int32)
            if given.shape != (sizes[_batch()],):
                raise RunError(f"seq_lens[{d.name!r}]: expected one length per sequence ({sizes[_batch()]}), "
                               f"got shape {given.shape}")
            if given.min() < 1 or given.max() > n:
                raise RunError(f"seq_lens[{d.name!r}]: lengths must be in 1..{n} (the axis size), got {given}")
            lens[d] = given
            fd[em.dims[d].dyn_size_ext.placeholder] = given
        for d in seq_lens:
            if d not in sizes and not any(d is y for y in g.choices):
                dynamic = ", ".join(x.name for x in sorted_dims(sizes) if not x.is_batch) or "none"
                raise RunError(f"seq_lens: {d!r} is not a dynamic dim of any input; the inputs' dynamic dims are: "
                               f"{dynamic}")
        for name, inp in g.inputs.items():
            arr, order = arrays[name]
            for i, d in enumerate(order):  # frames after the longest sequence: RETURNN's axis ends there
                if d in lens and arr.shape[i] > int(lens[d].max()):
                    arr = arr.take(np.arange(int(lens[d].max())), axis=i)
            if inp.sparse_dim is not None:
                arr = valid_labels(name, arr, order, inp.sparse_dim, lens)
            arrays[name] = (arr, order)
            data = self.network.extern_data.data[inp.op.name]  # the extern data key (a reserved name is renamed)
            fd[data.placeholder] = arr.transpose([list(order).index(em.rd_dim(t)) for t in data.dim_tags])
        return fd, lens, arrays

    def _fetches(self, layer_names: dict, lens: dict):
        """Placeholders and rd dims of top-level layers, plus the lengths of dynamic dims not fed."""
        fetch, dims_of, length_fetch = {}, {}, {}
        for key, name in layer_names.items():
            out = self.network.get_layer(name).output
            dims = tuple(self.emitted.rd_dim(d) for d in out.dim_tags)
            fetch[key] = out.placeholder
            dims_of[key] = dims
            for d, rd in zip(out.dim_tags, dims):
                if rd is not None and rd.is_dynamic and rd not in lens and rd not in length_fetch:
                    size = d.dyn_size_ext
                    length_fetch[rd] = (size.placeholder, tuple(self.emitted.rd_dim(s) for s in size.dim_tags))
        return fetch, dims_of, length_fetch

    def run(self, inputs: dict, seq_lens: dict, targets: dict | None = None) -> "Result":
        fd, lens, arrays = self.feed_dict(inputs, seq_lens)
        self.feed_targets(fd, targets or {}, seq_lens, _batch_size(arrays))
        layers = {t: self.emitted.decided.get(t, name) if self.search else name
                  for t, name in self.emitted.fetch.items()}
        fetch, dims_of, length_fetch = self._fetches(layers, lens)
        for loop in self.graph.top.children:  # every top-level loop's lengths, also when nothing is stacked
            searched = self.search and any(loop.contains(y.scope) for y in self.graph.choices)
            if loop.axis not in lens and loop.axis not in length_fetch and not searched:
                length_fetch[loop.axis] = (self.network.get_layer(loop.len_name).output.placeholder, (_batch(),))
        scores = {}
        if self.search:
            for loop in {y.scope for y in self.graph.choices if y.scope.parent is self.graph.top}:
                scores[loop] = self.network.get_layer(loop.name).get_search_choices().beam_scores
        values, fetched_lens, score_values = self.run_session(
            (fetch, {d: p for d, (p, _) in length_fetch.items()}, scores), feed_dict=fd)
        lens.update(fetched_lens)
        alias = self._label_axes()
        dims_of = {t: tuple(alias.get(d, d) for d in dims) for t, dims in dims_of.items()}
        lens = {alias.get(d, d): n for d, n in lens.items()}
        result = Result(self.graph, {t: (values[t], dims_of[t]) for t in fetch}, lens, self.params(), arrays,
                        device=self.device)
        result.search_scores = score_values
        return result

    def trace(self, inputs: dict, seq_lens: dict, max_bytes: int | None, targets=None) -> "Trace":
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
        top_layers = {t: em.decided.get(t, n) if self.search else n for t, n in em.fetch.items()}
        top, top_dims, top_lens = self._fetches(top_layers, lens)
        length_fetch.update(top_lens)
        if self.search:  # RETURNN reads its step accumulators once per run: the raw beams need a run of their own
            values = self.run_session(fetch, feed_dict=fd)
            top_values, fetched_lens, plain_values = self.run_session(
                (top, {d: p for d, (p, _) in length_fetch.items()}, plain), feed_dict=fd)
            values.update(plain_values)
            dims_of.update(plain_dims)
            extra_values = {}
        else:
            extra = self.extra_trace(fd, lens)
            values, top_values, fetched_lens, extra_values = self.run_session(
                (fetch, top, {d: p for d, (p, _) in length_fetch.items()}, extra), feed_dict=fd)
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
        for key, arr in values.items():
            kind, _, loops = em.trace_info.get(key, em.trace_info.get(key.rsplit(".", 1)[0], (None, None, None)))
            if kind is None or key.endswith((".scores", ".backpointers")):
                kind = "search"
            dims = dims_of[key]
            if None in dims:
                raise RecDebugError(f"trace: RETURNN returned a dim that recdebug does not know for {key!r}")
            if key in em.trace_unbatched:  # recorded per sequence, the same for each: one of them
                arr = np.take(arr, 0, axis=dims.index(_batch()))
                dims = tuple(d for d in dims if d is not _batch())
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
                    beams = trace.beams(y)
                    best = beams.scores[-1].argmax(axis=1)
                    lens_best = np.array([beams.hypothesis(b, int(k))["length"] for b, k in enumerate(best)],
                                         dtype=np.int32)
                    trace._lens[label(axis)] = (lens_best, (label(_batch()),))
        return trace

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
        import tensorflow as tf

        if getattr(self, "_beam_cache", None) is not None:
            return self._beam_cache
        em, fetch, dims_of = self.emitted, {}, {}
        with self.tf_graph.as_default():
            for loop, path in em.rec_paths.items():
                choices = [op for op in loop.ops if op.kind == "choice"]
                if not choices or loop.parent is not self.graph.top:
                    continue
                cell = self.network.get_layer(path).cell
                acc = cell.final_acc_tas_dict
                beam = choices[0].attrs["beam"]
                k = beam.size
                keys = [key for key, (_, _, loops) in em.trace_info.items() if loops[-1:] == (loop,)]
                for key in keys:
                    name = em.beam_alias.get(key, key.rsplit("/", 1)[-1])  # the same for every hypothesis: its copy
                    ta = acc.get(f"output_{name}")
                    if ta is None:
                        continue
                    # the axes as accumulated: the layer's own output in the loop (its template may order them
                    # otherwise, e.g. a value stacked by another loop, time-major there, batch-major here)
                    in_loop = cell.net.layers.get(name)
                    template = (in_loop or cell.layer_data_templates[name]).output
                    steps = ta.stack()  # [T, batch * beam, ...] in the in-loop layer's axis order
                    dims = [em.rd_dim(tg) for tg in template.dim_tags]
                    b_axis = template.batch_dim_axis
                    shape = tf.shape(steps)
                    if template.beam is None:  # one value per sequence (a frame of the input): the same for each
                        fetch[key] = tf.repeat(tf.expand_dims(steps, 2 + b_axis), k, axis=2 + b_axis)
                    else:
                        new_shape = tf.concat([shape[:1 + b_axis], [-1, k], shape[2 + b_axis:]], 0)
                        fetch[key] = tf.reshape(steps, new_shape)
                    dims_of[key] = (loop.axis,) + tuple(dims[:b_axis]) + (_batch(), beam) + tuple(dims[b_axis + 1:])
                for y in choices:
                    key = f"{path}/{y.name}"
                    src = acc[f"choice_{y.name}"].stack()  # [T, batch, beam] backpointers
                    fetch[key + ".backpointers"] = src
                    dims_of[key + ".backpointers"] = (loop.axis, _batch(), beam)
                    scores = acc[f"output_{y.name}.scores"].stack()
                    fetch[key + ".scores"] = tf.reshape(scores, [tf.shape(scores)[0], -1, k])
                    dims_of[key + ".scores"] = (loop.axis, _batch(), beam)
        self._beam_cache = (fetch, dims_of, {})
        return self._beam_cache

    def rec_layers(self) -> dict:
        """Rec layer path -> the constructed RETURNN RecLayer (nested ones from their enclosing loop's cell)."""
        from returnn.tf.layers.rec import RecLayer

        found = {}

        def visit(layers: dict, prefix: str):
            for name, layer in layers.items():
                if isinstance(layer, RecLayer) and prefix + name not in found:
                    found[prefix + name] = layer
                    cell = layer.cell
                    for net in (cell.net, cell.input_layers_net, cell.output_layers_net):
                        if net is not None:
                            visit(net.layers, prefix + name + "/")

        visit(self.network.layers, "")
        return found

    def moved_out(self) -> tuple[list, list]:
        """(in-loop layers RETURNN moved out of their loop, layers it kept inside), as layer paths."""
        ours = set(self.emitted.lines) | set(self.emitted.trace_info)
        moved, kept = [], []
        for path, rec in self.rec_layers().items():
            cell = rec.cell
            for name in list(cell.input_layers_moved_out or []) + list(cell.output_layers_moved_out or []):
                if f"{path}/{name}" in ours:
                    moved.append(f"{path}/{name}")
            for name in cell.layers_in_loop or []:
                if f"{path}/{name}" in ours:
                    kept.append(f"{path}/{name}")
        return sorted(set(moved)), sorted(set(kept) - set(moved))

    def close(self):
        if self.session is not None:
            self.session.close()
        from returnn.tensor import batch_dim

        # RETURNN keeps the last build's batch info on its global batch dim, and with it that build's tf.Graph
        built = self.network.extern_data.get_batch_info(allow_none=True)
        if built is not None and batch_dim.batch is not None and batch_dim.batch.get_global_base() is built:
            batch_dim.batch = None


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


def valid_labels(name: str, arr: np.ndarray, order: tuple, sparse_dim, lens: dict) -> np.ndarray:
    """Labels of the input ``name`` checked in 0..size-1 on valid frames; padding frames (whatever they hold) set
    to 0, so that an embedding never reads an index out of range there."""
    valid = np.ones(arr.shape, bool)
    b_axis = order.index(_batch()) if _batch() in order else None
    for i, d in enumerate(order):
        if d in lens and b_axis is not None:
            steps = np.arange(arr.shape[i]).reshape([-1 if j == i else 1 for j in range(arr.ndim)])
            valid &= steps < np.asarray(lens[d]).reshape([-1 if j == b_axis else 1 for j in range(arr.ndim)])
    bad = valid & ((arr < 0) | (arr >= sparse_dim.size))
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        where = ", ".join(f"{d.name}={i}" for d, i in zip(order, idx))
        raise RunError(f"input {name!r}: label {arr[idx]} at {where} is outside the vocabulary "
                       f"{sparse_dim.name!r} (0..{sparse_dim.size - 1}); {int(bad.sum())} valid frame(s) hold "
                       f"such labels", hint="labels are 0..size-1; padding frames may hold anything")
    return np.where(valid, arr, 0).astype(arr.dtype)


def check_feeds(g, inputs: dict, seq_lens: dict | None = None) -> dict:
    """Every input of ``g`` fed, and nothing else; ``{name: (array, its axis order)}``, each checked (against the
    lengths in ``seq_lens`` too)."""
    unknown = set(inputs) - set(g.inputs)
    if unknown:
        raise RunError(f"unknown input(s) {sorted(unknown)}; the graph's inputs are {sorted(g.inputs)}")
    missing = [n for n in g.inputs if n not in inputs]
    if missing:
        raise RunError(f"missing input(s) {missing}: pass them as run({{name: array}})")
    return {name: value_and_order(inputs[name], inp, seq_lens) for name, inp in g.inputs.items()}


def value_and_order(value, inp, seq_lens: dict | None = None) -> tuple:
    """A fed input: (array, its axis order) from an array (the Input's own order) or an (array, order) pair,
    checked against the Input (numbers its dtype holds, one axis per dim, static sizes, as many sequences as
    ``seq_lens`` gives lengths for its dynamic dims, no empty axis)."""
    name, order = inp.input_name, inp.order
    whose = "the Input's axis order"
    if isinstance(value, tuple) and len(value) == 2 and _is_order(value[1]):
        value, order = value[0], tuple(dim_named(d, inp.dims, f"input {name!r}: order") for d in value[1])
        whose = "the axis order given with it"
        if set(order) != set(inp.dims) or len(order) != len(inp.dims):
            raise DimError(f"input {name!r}: order {_order_text(order)} is not a permutation of its dims "
                           f"{_order_text(inp.order)}")
    arr = checked_numbers(f"input {name!r}", value, inp.dtype, order)
    if arr.ndim != len(order):
        raise RunError(f"input {name!r}: expected {len(order)} axes {_order_text(order)}, got shape {arr.shape}")
    counts = _length_counts(order, seq_lens or {})

    def misfit(why: str) -> FeedError:
        fits = _fitting_order(arr.shape, order, counts)
        return FeedError(f"input {name!r}: the array of shape {arr.shape} does not fit {whose} "
                         f"{_order_text(order, sizes=True)}: {why}", name,
                         _order_text(fits) if fits else "(the dims of its axes, in order)")

    for d, n in zip(order, arr.shape):
        if d.size is not None and n != d.size:
            raise misfit(f"axis {d.name!r} has size {n}, the dim says {d.size}")
    if counts and _batch() in order:
        n = arr.shape[order.index(_batch())]
        for d, count in counts.items():
            if count != n:
                raise misfit(f"its batch axis holds {n} sequences, seq_lens[{d.name!r}] has {count} lengths")
    for d, n in zip(order, arr.shape):
        if n == 0:
            raise RunError(f"input {name!r}: axis {d.name!r} has size 0 (shape {arr.shape})",
                           hint="feed at least one sequence" if d.is_batch else
                           "feed at least one frame; shorter sequences get their lengths in seq_lens")
    return arr, order


def _order_text(order, sizes: bool = False) -> str:
    """``(batch, time, feat)``; with ``sizes``: ``(batch, time, feat:4)``."""
    return "(" + ", ".join(d.short() if sizes else d.name for d in order) + ")"


def _length_counts(order, seq_lens: dict) -> dict:
    """{dynamic dim of ``order``: how many lengths ``seq_lens`` gives it}, for those given as one list."""
    counts = {}
    for d in order:
        try:
            shape = np.shape(seq_lens[d]) if d in seq_lens and d.is_dynamic else ()
        except ValueError:  # a ragged list: checked_numbers says so later
            shape = ()
        if len(shape) == 1:
            counts[d] = shape[0]
    return counts


def _fitting_order(shape: tuple, order: tuple, counts: dict) -> tuple | None:
    """Another order of the dims that an array of ``shape`` fits (static sizes, as many sequences as lengths), if
    there is one: what the array most likely holds."""
    if len(order) > 6:
        return None
    batch_size = next(iter(counts.values()), None)
    for other in itertools.permutations(order):
        if other != tuple(order) and all(
                (d.size is None or d.size == n) and not (d.is_batch and batch_size not in (None, n))
                for d, n in zip(other, shape)):
            return other
    return None


def _is_order(x) -> bool:
    return isinstance(x, (tuple, list)) and len(x) > 0 and all(isinstance(d, (Dim, str)) for d in x)


def checked_numbers(what: str, value, dtype: str, order=None) -> np.ndarray:
    """``value`` as a numpy array that ``dtype`` holds without change, else a RunError naming ``what``: ragged
    lists, strings, objects and complex numbers are refused, and for an int dtype fractions and values outside
    its range. ``order``: the dims of the axes, to say where a bad value is."""
    try:
        arr = np.asarray(value)
    except ValueError:  # numpy refuses nested lists of different lengths
        arr = None
    if arr is None or arr.dtype == object:
        raise RunError(f"{what}: not an array of numbers (a ragged list, with rows of different lengths?)",
                       hint="pad the rows to one length (and give the lengths in seq_lens)")
    if arr.dtype.kind == "c":
        raise RunError(f"{what}: complex values ({arr.dtype}); recdebug computes with real numbers",
                       hint="pass the real part (.real) or the magnitude (np.abs) explicitly")
    if arr.dtype.kind not in "biuf":
        raise RunError(f"{what}: expected numbers, got {arr.dtype} values")
    target = np.dtype(dtype)
    if target.kind in "iu" and arr.size:
        bad = None
        if arr.dtype.kind == "f":
            bad = ~np.isfinite(arr) | (arr != np.round(arr))
            if bad.any():
                raise RunError(f"{what}: {dtype} values expected, got {_first(arr, bad, order)}",
                               hint=f"pass whole numbers (e.g. an array of dtype {dtype})")
        info = np.iinfo(target)
        bad = (arr < info.min) | (arr > info.max)
        if bad.any():
            raise RunError(f"{what}: {_first(arr, bad, order)} is outside the range of {dtype}")
    return arr


def _first(arr: np.ndarray, bad: np.ndarray, order=None) -> str:
    """The first value where ``bad`` holds, and where it is (by dim name when ``order`` names the axes)."""
    idx = tuple(int(i) for i in np.argwhere(bad)[0]) if arr.ndim else ()
    value = arr[idx].item()
    if not idx:
        return f"{value!r}"
    if order is not None and len(order) == arr.ndim:
        return f"{value!r} at " + ", ".join(f"{d.name}={i}" for d, i in zip(order, idx))
    return f"{value!r} at index {idx}"


def reference_labels(y, targets: dict, seq_lens: dict, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Teacher forcing: the reference labels of the rd.choice ``y`` [batch, steps] and their lengths, checked."""
    labels = targets.get(y, targets.get(y.name, targets.get(y.op.name)))
    if labels is None:
        raise RunError(f"{y!r} is an rd.choice: pass its reference labels with targets={{label: array}} "
                       f"(batch, steps), or run with search=True")
    labels = checked_numbers(f"targets[{y.name!r}]", labels, "int32").astype(np.int32)
    if labels.ndim != 2 or labels.shape[0] != batch or labels.shape[1] < 1:
        raise RunError(f"targets[{y.name!r}]: expected shape (batch={batch}, steps), got {labels.shape}")
    vocab = y.op.attrs["vocab"].size
    if labels.min() < 0 or labels.max() >= vocab:
        raise RunError(f"targets[{y.name!r}]: labels must be in 0..{vocab - 1}")
    lens = checked_numbers(f"seq_lens[{y.name!r}]", seq_lens.get(y, np.full(batch, labels.shape[1])),
                           "int32", (_batch(),)).astype(np.int32)
    if lens.shape != (batch,) or lens.min() < 1 or lens.max() > labels.shape[1]:
        raise RunError(f"seq_lens[{y.name!r}]: one length in 1..{labels.shape[1]} per sequence, got {lens}")
    return labels, lens


def _shifted_entry(key, state, how, entries, kind, line):
    """A State's value read before its assign: its value one step earlier, the initial value at step 0."""
    from ..records.trace import Entry, _broadcast_to_dims

    _, _, init = how
    axis = state.dims.index(state.loop_axes[0])

    def derive():
        values = state.array
        first = np.take(values, [0], axis=axis)
        top = entries[init]
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


def _batch_size(arrays: dict) -> int:
    """The batch size of the fed arrays ({name: (array, dims order)})."""
    return next((a.shape[o.index(_batch())] for a, o in arrays.values() if _batch() in o), 1)


def _batch():
    from ..language.dims import batch_dim

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


def get_engine(g, optimize: bool, device: str | None, seed: int, capture=None, search: bool = False,
               train: bool = False) -> Engine:
    if g.scope is not g.top:
        raise RunError("the graph still has an open loop: run it after the `with rd.Loop()` block")
    device = resolve_device(device)
    capture_key = capture if capture in (None, "all") else tuple(capture)
    key = (bool(optimize), device, seed, len(g.ops), capture_key, bool(search), bool(train))
    if key not in g._engines:
        g._engines[key] = build_apart(lambda: Engine(g, optimize=bool(optimize), device=device, seed=seed,
                                                     capture=capture_key, search=bool(search), train=bool(train)))
    return g._engines[key]


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


DEFAULT_TRACE_BYTES = 2 * 1024**3


def trace_graph(g, inputs: dict, seq_lens: dict, device=None, optimize=True, seed=0, params=None, capture=None,
                max_bytes=None, search=False, targets=None, train=False, grad_of=None):
    """One run of the real RecLayer that records every step of the captured in-loop layers (default: all);
    ``grad_of``: a loss whose gradient with respect to each State's value is recorded too, per step;
    ``max_bytes``: default DEFAULT_TRACE_BYTES."""
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
    return engine.trace(inputs, seq_lens, max_bytes, targets)


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
