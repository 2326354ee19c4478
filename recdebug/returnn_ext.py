"""RETURNN configs that g.save wrote before recdebug was in layers run ``import recdebug.returnn_ext``; the
extension itself is ``recdebug.backend.returnn_ext``."""
from .backend.returnn_ext import install  # noqa: F401
