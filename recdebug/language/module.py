"""Modules own parameters, hidden States and sub-modules; names follow the attribute path."""
from __future__ import annotations

import re

from .dims import Dim, dims_str
from .errors import DimError, user_line
from .graph import Graph, current_graph
from .state import State, used_as_value
from .tensor import Tensor


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


class Parameter:
    """A trainable weight of a module. Its name is the module path plus the attribute name."""

    def __init__(self, module: "Module", attr: str, dims: tuple, init="glorot_uniform", dtype: str = "float32"):
        self.module = module
        self.attr = attr
        self.dims = tuple(dims)  # the order of the numpy array (in, out)
        self.init = init
        self.dtype = dtype

    def path(self, graph: Graph) -> str:
        return f"{graph.module_path(self.module)}/{self.attr}"

    def tensor(self, graph: Graph) -> Tensor:
        """This parameter as a Tensor of ``graph`` (one top-level op per graph)."""
        key = id(self)
        if key not in graph.params:
            t = graph.add_op("param", [], self.dims, dtype=self.dtype, attrs={"param": self},
                             name=self.path(graph).replace("/", "."), scope=graph.top)
            graph.params[key] = t
        return graph.params[key]

    def __repr__(self):
        return f"Parameter({self.attr!r}, {dims_str(self.dims)})"


class Module:
    """Base class: put States, Parameters and sub-modules in attributes; define ``forward``."""

    def __call__(self, *args, **kwargs):
        g = current_graph(f"calling {type(self).__name__}")
        path = name_module(g, self)
        g.module_stack.append(path)
        try:
            return self.forward(*args, **kwargs)
        finally:
            g.module_stack.pop()

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    def __setattr__(self, attr, value):
        # Remember the first module a sub-module or State is put into, so that one used directly
        # (``model.encoder.lin(x)``, the containers never called) still gets its attribute path.
        object.__setattr__(self, attr, value)
        if attr.startswith("_"):
            return
        for v in value if isinstance(value, (list, tuple)) else (value,):
            if isinstance(v, (Module, State)) and getattr(v, "_rd_owner", None) is None:
                object.__setattr__(v, "_rd_owner", self)

    def named_children(self):
        """(attribute name, value) for sub-modules, States and Parameters, in definition order."""
        for attr, value in vars(self).items():
            if attr.startswith("_"):
                continue
            if isinstance(value, (Module, State, Parameter)):
                yield attr, value
            elif isinstance(value, (list, tuple)):
                for i, v in enumerate(value):
                    if isinstance(v, (Module, State)):
                        yield f"{attr}/{i}", v


def name_module(g: Graph, module: Module, path: str | None = None) -> str:
    """The module's path in ``g``: its attribute path, or for a root module its snake-case class name."""
    key = id(module)
    if key in g.module_paths:
        return g.module_paths[key]
    if path is None and owner_root(module) is not module:  # named with the module that holds it
        name_module(g, owner_root(module))
        if key in g.module_paths:
            return g.module_paths[key]
    if path is None:
        base = _snake(type(module).__name__)
        taken = set(g.module_paths.values())
        path, i = base, 1
        while path in taken:
            path = f"{base}_{i}"
            i += 1
    g.module_paths[key] = path
    g._module_keep.append(module)
    for attr, value in module.named_children():
        if isinstance(value, Module):
            name_module(g, value, f"{path}/{attr}")
        elif isinstance(value, State):
            value.set_path(g, f"{path}/{attr}")
    return path


def owner_root(obj):
    """The outermost module that holds ``obj`` (a Module or State) through attributes, or ``obj`` itself."""
    seen = {id(obj)}
    while getattr(obj, "_rd_owner", None) is not None and id(obj._rd_owner) not in seen:
        obj = obj._rd_owner
        seen.add(id(obj))
    return obj


class Linear(Module):
    """``y = x W + b`` over the feature dim of x; ``weight`` {in, out}, ``bias`` {out}."""

    def __init__(self, out_dim: Dim, with_bias: bool = True, in_dim: Dim | None = None):
        super().__init__()
        if not isinstance(out_dim, Dim) or out_dim.size is None:
            raise DimError(f"rd.Linear expects a static rd.Dim as out_dim, got {out_dim!r}")
        self.out_dim = out_dim
        self.in_dim = in_dim
        self.with_bias = with_bias
        self.weight = None
        self.bias = None
        if in_dim is not None:
            self._make_params(in_dim)

    def _make_params(self, in_dim: Dim):
        self.in_dim = in_dim
        w_in = in_dim if in_dim is not self.out_dim else in_dim.derived("in")
        self.weight = Parameter(self, "weight", (w_in, self.out_dim))
        if self.with_bias:
            self.bias = Parameter(self, "bias", (self.out_dim,), init=0.0)

    def forward(self, x: Tensor) -> Tensor:
        line = user_line()
        if isinstance(x, State):
            raise used_as_value(x, "rd.Linear")
        if not isinstance(x, Tensor):
            raise DimError(f"rd.Linear expects an rd.Tensor, got {type(x).__name__}", line=line)
        in_dim = self.in_dim if self.in_dim is not None and self.in_dim in x.dims else x.feature_dim("rd.Linear")
        if self.weight is None:
            self._make_params(in_dim)
        elif in_dim is not self.in_dim:
            raise DimError(f"rd.Linear was first used with input dim {self.in_dim!r}, now with {in_dim!r}",
                           line=line, hint="use a separate Linear for each input dim")
        g = x.graph
        w = self.weight.tensor(g)
        out_dims = (x.dims - {in_dim}) | {self.out_dim}
        name = g.module_path(self).replace("/", ".")
        reduce = (in_dim, self.weight.dims[0])
        if self.bias is None:
            return g.add_op("dot", [x, w], out_dims, attrs={"reduce": reduce}, name=name, line=line)
        y = g.add_op("dot", [x, w], out_dims, attrs={"reduce": reduce}, name=name + ".dot", line=line)
        return g.add_op("add", [y, self.bias.tensor(g)], out_dims, name=name, line=line)


class Embedding(Module):
    """Lookup of a sparse label in ``weight`` {vocab, emb}."""

    def __init__(self, vocab: Dim, emb: Dim):
        super().__init__()
        self.vocab, self.emb = vocab, emb
        self.weight = Parameter(self, "weight", (vocab, emb), init="glorot_uniform")

    def forward(self, x: Tensor) -> Tensor:
        line = user_line()
        if isinstance(x, State):
            raise used_as_value(x, "rd.Embedding")
        if x.sparse_dim is not self.vocab:
            raise DimError(f"rd.Embedding({self.vocab!r}) expects labels with sparse_dim {self.vocab!r}, "
                           f"got {x!r}", line=line)
        g = x.graph
        return g.add_op("embed", [self.weight.tensor(g), x], x.dims | {self.emb}, attrs={"vocab": self.vocab},
                        line=line)


class LSTM(Module):
    """The design text's LSTM cell on one frame: States ``h`` and ``c`` {batch, out_dim}; ``ff_linear`` (input)
    and ``rec_linear`` (previous h) each give 4 * out_dim, split into input, cell input, forget and output gates."""

    def __init__(self, out_dim: Dim):
        super().__init__()
        from .dims import batch_dim

        if not isinstance(out_dim, Dim) or out_dim.size is None:
            raise DimError(f"rd.LSTM expects a static rd.Dim as out_dim, got {out_dim!r}")
        self.out_dim = out_dim
        self.h = State({batch_dim, out_dim})
        self.c = State({batch_dim, out_dim})
        self.ff_linear = Linear(out_dim * 4)
        self.rec_linear = Linear(out_dim * 4)

    def forward(self, x: Tensor) -> Tensor:
        from .ops import sigmoid, split, tanh

        if isinstance(x, State):
            raise used_as_value(x, "rd.LSTM")
        x_in, g_in, g_forget, g_out = split(self.ff_linear(x) + self.rec_linear(self.h.get()), 4)
        c = self.c.get() * sigmoid(g_forget) + tanh(x_in) * sigmoid(g_in)
        self.c.assign(c)
        h = tanh(c) * sigmoid(g_out)
        self.h.assign(h)
        return h
