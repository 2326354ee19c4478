"""recdebug: write recurrent loops with Loop/State, run them on RETURNN, and step through them."""
from .language.dims import Dim, batch_dim
from .language.errors import DimError, FeedError, LoopError, RecDebugError, RecDebugWarning, RunError
from .language.graph import Graph
from .language.loop import Loop
from .language.module import LSTM, Embedding, Linear, Module, Parameter
from .language.ops import (abs, cast, choice, concat, constant, cross_entropy, dropout, exp, gather, log, log_softmax,
                           reduce_max, reduce_mean, reduce_min, reduce_sum, relu, sigmoid, softmax, split, tanh, where, zeros)
from .language.state import State
from .language.tensor import Input, Tensor
from .records.protocol import on_label, on_nan, on_nonfinite, on_state
from .records.trace import Trace, TraceDiff
from . import backend  # noqa: F401,E402  (imported, it gives the Graph its calls)
from .backend.stepper import Stepper
from .views import plot as _plot  # noqa: F401,E402  (imported, it gives Trace.plot its drawing)



def load_ipython_extension(ip):
    """``%load_ext recdebug``: registers the ``%%recloop`` cell magic and the ``%recdebug`` line magic."""
    from .notebook.magics import load_ipython_extension as load

    load(ip)


def from_returnn(config, checkpoint=None, extern_data=None, device=None):
    """A RETURNN config (a file, or a net dict with ``extern_data``) and its checkpoint, to run, trace and step
    through: see ``recdebug.backend.returnn_model.from_returnn``."""
    from .backend.returnn_model import from_returnn as load

    return load(config, checkpoint=checkpoint, extern_data=extern_data, device=device)


def plot_alignment(source, key, sequence=0, labels=None, vocab=None, t=None, hypothesis=None):
    """A matplotlib Figure of the alignment of a value over the loop's steps and an encoder's frames (attention
    weights, coverage) in a trace or stepper; see ``recdebug.views.alignment.plot_alignment``."""
    from .views.alignment import plot_alignment as plot

    return plot(source, key, sequence=sequence, labels=labels, vocab=vocab, t=t, hypothesis=hypothesis)


def debugger(source, other=None, layers=(), reveal=None, shared_scale=False, vocab=None):
    """The debugger widget for an ``rd.Trace`` or an ``rd.Stepper`` (imports ipywidgets on first use); see
    ``recdebug.views.widgets.debugger`` for the options."""
    from .views.widgets import debugger as make

    return make(source, other=other, layers=layers, reveal=reveal, shared_scale=shared_scale, vocab=vocab)


__all__ = [
    "Dim", "batch_dim", "Graph", "Input", "Tensor", "Module", "Linear", "Embedding", "LSTM", "Parameter", "State",
    "Loop", "choice", "tanh", "sigmoid", "relu", "exp", "log", "abs", "softmax", "log_softmax", "where", "gather",
    "dropout", "cross_entropy", "split", "concat", "zeros", "constant", "reduce_sum", "reduce_max", "reduce_min",
    "reduce_mean", "cast",
    "Trace", "TraceDiff", "from_returnn", "Stepper", "on_nan", "on_nonfinite", "on_state", "on_label", "debugger", "plot_alignment", "RecDebugError", "LoopError", "DimError", "RunError",
    "FeedError", "RecDebugWarning",
]
