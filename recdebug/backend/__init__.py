"""The RETURNN/TensorFlow back end: builds the emitted net dict, runs and traces it (``engine``, ``grads``), steps
it live (``stepcore``: the one stepper of both front ends; ``stepper``, ``stepsearch``), trains, saves and loads
it (``train``, ``checkpoint``), and opens RETURNN configs (``returnn_model``, ``returnn_stepper``). Imported, it
gives the language's Graph its calls."""
from ..emission.netdict import emit
from ..language.graph import connect_backend
from .checkpoint import load_params, save_graph
from .engine import free_spares, run_graph, trace_graph
from .stepper import Stepper
from .train import train_graph

connect_backend(emit=emit, run=run_graph, trace=trace_graph, stepper=Stepper, train=train_graph, save=save_graph,
                load=load_params, free_spares=free_spares)
