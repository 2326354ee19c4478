"""recdebug: write recurrent loops with Loop/State, run them on RETURNN, and step through them."""
from .dims import Dim, batch_dim
from .errors import DimError, FeedError, LoopError, RecDebugError, RecDebugWarning, RunError
from .graph import Graph
from .loop import Loop
from .module import LSTM, Embedding, Linear, Module, Parameter
from .ops import (abs, cast, choice, concat, constant, cross_entropy, dropout, exp, gather, log, log_softmax,
                  reduce_max, reduce_mean, reduce_min, reduce_sum, relu, sigmoid, softmax, split, tanh, where, zeros)
from .state import State
from .tensor import Input, Tensor
from .stepper import Stepper, on_nan, on_nonfinite, on_state
from .trace import Trace, TraceDiff



def load_ipython_extension(ip):
    """``%load_ext recdebug``: registers the ``%%recloop`` cell magic and the ``%recdebug`` line magic."""
    from .magics import load_ipython_extension as load

    load(ip)


def from_returnn(config, checkpoint=None, extern_data=None, device=None):
    """A RETURNN config (a file, or a net dict with ``extern_data``) and its checkpoint, to run, trace and step
    through: see ``recdebug.returnn_model.from_returnn``."""
    from .returnn_model import from_returnn as load

    return load(config, checkpoint=checkpoint, extern_data=extern_data, device=device)


def debugger(source, other=None, layers=(), reveal=None, shared_scale=False, vocab=None):
    """The debugger widget for an ``rd.Trace`` or an ``rd.Stepper`` (imports ipywidgets on first use); see
    ``recdebug.widgets.debugger`` for the options."""
    from .widgets import debugger as make

    return make(source, other=other, layers=layers, reveal=reveal, shared_scale=shared_scale, vocab=vocab)


__all__ = [
    "Dim", "batch_dim", "Graph", "Input", "Tensor", "Module", "Linear", "Embedding", "LSTM", "Parameter", "State",
    "Loop", "choice", "tanh", "sigmoid", "relu", "exp", "log", "abs", "softmax", "log_softmax", "where", "gather",
    "dropout", "cross_entropy", "split", "concat", "zeros", "constant", "reduce_sum", "reduce_max", "reduce_min",
    "reduce_mean", "cast",
    "Trace", "TraceDiff", "from_returnn", "Stepper", "on_nan", "on_nonfinite", "on_state", "debugger", "RecDebugError", "LoopError", "DimError", "RunError",
    "FeedError", "RecDebugWarning",
]
