"""The Loop/State language: Dim, Tensor, Module, State, Loop, ops and the Graph that records them. It imports no
TensorFlow, no RETURNN and nothing of recdebug's other layers: the back end gives the Graph its calls."""
