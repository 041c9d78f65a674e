"""Pruning methods: compositions of a score, a mask selector and an optional weight update."""

from eggs_ptp.methods import builtin as _builtin  # noqa: F401  (registers the built-in methods)
from eggs_ptp.methods.method import Method, PrunedLayer
from eggs_ptp.methods.registry import (
    build_method,
    method_help,
    method_names,
    register_method,
)

__all__ = ["Method", "PrunedLayer", "build_method", "method_help", "method_names", "register_method"]
