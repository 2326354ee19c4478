"""recdebug: write recurrent loops with Loop/State, run them on RETURNN, and step through them."""
from .dims import Dim, batch_dim
from .errors import DimError, LoopError, RecDebugError, RunError
from .graph import Graph
from .loop import Loop
from .module import Embedding, Linear, Module, Parameter
from .ops import cast, choice, concat, constant, exp, relu, reduce_max, reduce_sum, sigmoid, split, tanh, zeros
from .state import State
from .tensor import Input, Tensor
from .stepper import Stepper, on_nan, on_nonfinite, on_state
from .trace import Trace, TraceDiff



def load_ipython_extension(ip):
    """``%load_ext recdebug``: registers the ``%%recloop`` cell magic."""
    from .magics import load_ipython_extension as load

    load(ip)


def debugger(source, other=None, layers=()):
    """The debugger widget for an ``rd.Trace`` or an ``rd.Stepper`` (imports ipywidgets on first use)."""
    from .widgets import debugger as make

    return make(source, other=other, layers=layers)


__all__ = [
    "Dim", "batch_dim", "Graph", "Input", "Tensor", "Module", "Linear", "Embedding", "Parameter", "State", "Loop",
    "choice", "tanh", "sigmoid", "relu", "exp", "split", "concat", "zeros", "constant", "reduce_sum", "reduce_max", "cast",
    "Trace", "TraceDiff", "Stepper", "on_nan", "on_nonfinite", "on_state", "debugger", "RecDebugError", "LoopError", "DimError", "RunError",
]
